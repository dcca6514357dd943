"""check_models.py: the health check a user runs after installing."""
from __future__ import annotations

import torch
import transformers

import check_models
import virnucpro.models
import standins


def test_health_check_reports_versions_models_loaders_widths_and_a_score(esm_model_dir, dnabert_model_dir,
                                                                         checkpoint_300, capsys):
    rc = check_models.main(["--model", str(checkpoint_300), "--esm-model", str(esm_model_dir),
                            "--dnabert-model", str(dnabert_model_dir), "--device", "cpu", "-q"])
    out = capsys.readouterr().out
    assert rc == 0, out
    loader = "remote" if transformers.__version__.startswith("4.") else "native"  # era c stand-in
    assert any(line.split() == ["transformers", transformers.__version__] for line in out.splitlines())
    assert f"{esm_model_dir} (content " in out and f"{loader} code; fp32; 64-d" in out
    assert "832 values per frame (768 DNA + 64 protein)" in out
    assert "check frame scored" in out and out.rstrip().endswith("prediction.py can run with these options")


def test_health_check_says_why_in_one_line(esm_model_dir, dnabert_model_dir, checkpoint_300, tmp_path, capsys):
    rc = check_models.main(["--esm-model", str(tmp_path / "absent"), "--dnabert-model", str(dnabert_model_dir),
                            "--device", "cpu", "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2  # offline: not in the cache
    assert len(err.splitlines()) == 1 and "absent" in err
    esm2 = standins.build_esm2_standin(tmp_path / "esm2")  # 32-d: the classifier wants 64
    rc = check_models.main(["--model", str(checkpoint_300), "--esm-model", str(esm2),
                            "--dnabert-model", str(dnabert_model_dir), "--device", "cpu", "-q"])
    captured = capsys.readouterr()
    assert rc == 2 and len(captured.err.strip().splitlines()) == 1
    assert "takes 832 values per frame" in captured.err and "these models give 800" in captured.err


def test_every_model_option_reaches_the_loaders(esm_model_dir, dnabert_model_dir, capsys):
    """The check loads the models with the command line's options (as prediction.py's ModelOptions)."""
    rc = check_models.main(["--esm-model", str(esm_model_dir), "--dnabert-model", str(dnabert_model_dir),
                            "--device", "cpu", "--protein-precision", "bf16", "-q"])
    out = capsys.readouterr().out
    assert rc == 0, out
    protein = next(line for line in out.splitlines() if line.startswith("protein model"))
    assert "; bf16; 64-d" in protein
    request = check_models.build_request(check_models.build_parser().parse_args(
        ["--esm-loader", "native", "--dna-precision", "tf32", "--esm-revision", "r1"]))
    assert (request.models.esm_loader, request.models.dna_precision, request.models.esm_revision) == (
        "native", "tf32", "r1")


def test_compile_is_checked_and_reported(esm_model_dir, dnabert_model_dir, capsys, monkeypatch, compile_eagerly):
    """--compile: both models' encoder layers compiled, then used; a compiler that fails says so."""
    argv = ["--esm-model", str(esm_model_dir), "--dnabert-model", str(dnabert_model_dir), "--device", "cpu",
            "--compile", "-q"]
    assert check_models.main(argv) == 0
    out = capsys.readouterr().out
    assert "DNA compiled, protein compiled" in out and compile_eagerly, out
    virnucpro.models._MODEL_CACHE.clear()  # the check compiled the cached models: load them afresh

    def broken(self, *args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch.nn.Module, "compile", broken)
    assert check_models.main(argv) == 0
    out = capsys.readouterr().out
    assert "DNA eager (compile failed), protein eager (compile failed)" in out, out
