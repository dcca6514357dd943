"""convert_checkpoint.py: original VirNucPro whole-model pickles converted without running their code."""
from __future__ import annotations

import json
import os
import shutil
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convert_checkpoint
import units
from virnucpro import outputs, rundir
from virnucpro.defaults import ESM2_3B_MODEL
from virnucpro.errors import CheckpointError
from virnucpro.legacy import convert_legacy_checkpoint, read_legacy_state

MARKER_VAR = "VIRNUCPRO_TEST_CONVERT_MARKER"


def original_class(module_name: str) -> type:
    """The MLPClassifier of the original train.py, defined in a module named ``module_name``."""

    class MLPClassifier(nn.Module):
        def __init__(self, input_dim, hidden_dim, num_class):
            super(MLPClassifier, self).__init__()
            self.hidden_layer = nn.Linear(input_dim, hidden_dim)
            self.bn1 = nn.BatchNorm1d(hidden_dim)
            self.output_layer = nn.Linear(hidden_dim, num_class)
            self.dropout = nn.Dropout(0.5)
            self.init_weights()

        def init_weights(self):
            nn.init.xavier_uniform_(self.hidden_layer.weight)
            nn.init.xavier_uniform_(self.output_layer.weight)

        def forward(self, x):
            x = self.hidden_layer(x)
            x = self.bn1(x)
            x = F.relu(x)
            x = self.dropout(x)
            x = self.output_layer(x)
            return x

        def __setstate__(self, state):  # would run if the file were ever unpickled for real
            marker = os.environ.get(MARKER_VAR)
            if marker:
                open(marker, "w").close()
            super().__setstate__(state)

    MLPClassifier.__module__ = module_name
    MLPClassifier.__qualname__ = "MLPClassifier"
    return MLPClassifier


def save_original(path, module_name: str, monkeypatch, input_dim: int = 3328, seed: int = 0) -> nn.Module:
    """``torch.save(model, path)`` exactly as the original train.py did, the class living in ``module_name``."""
    cls = original_class(module_name)
    module = sys.modules.get(module_name) if module_name == "__main__" else types.ModuleType(module_name)
    monkeypatch.setitem(sys.modules, module_name, module)
    monkeypatch.setattr(module, "MLPClassifier", cls, raising=False)
    torch.manual_seed(seed)
    model = cls(input_dim, 512, 2)
    with torch.no_grad():  # trained-looking batch-norm statistics
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
        model.bn1.weight.uniform_(0.5, 1.5)
        model.bn1.bias.uniform_(-0.1, 0.1)
        model.bn1.num_batches_tracked.fill_(1234)
    model.eval()
    torch.save(model, path)
    return model


@pytest.mark.parametrize("module_name", ["__main__", "train"])
def test_original_pickle_converts_and_scores_identically(tmp_path, monkeypatch, module_name):
    source = tmp_path / "300_model.pth"
    original = save_original(source, module_name, monkeypatch)
    marker = tmp_path / "ran"
    monkeypatch.setenv(MARKER_VAR, str(marker))
    target = tmp_path / "300_model_esm2_3b.pth"
    assert convert_checkpoint.main([str(source), str(target), "--chunk-size", "300", "-q"]) == 0
    assert not marker.exists()  # the file's own class never ran
    model, meta = units.load_checkpoint(target)
    assert (meta["dna_dim"], meta["protein_dim"], meta["input_dim"]) == (768, 2560, 3328)
    assert meta["protein_model"] == ESM2_3B_MODEL and meta["dna_model"] == "zhihan1996/DNABERT-S"
    assert meta["chunk_size"] == 300 and meta["format_version"] == 2
    x = torch.randn(64, 3328)
    with torch.no_grad():
        torch.testing.assert_close(F.softmax(model(x), dim=1), F.softmax(original(x), dim=1), rtol=0, atol=0)
    state = read_legacy_state(source)
    assert int(state["bn1.num_batches_tracked"]) == 1234


def test_widths_come_from_the_weights(tmp_path, monkeypatch):
    source = tmp_path / "m.pth"
    save_original(source, "__main__", monkeypatch, input_dim=768 + 64)
    checkpoint = convert_legacy_checkpoint(source, tmp_path / "out.pth", chunk_size=500)
    assert (checkpoint["dna_dim"], checkpoint["protein_dim"], checkpoint["chunk_size"]) == (768, 64, 500)


class _Payload:
    """Pickles as a call of os.system writing a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_refused_and_never_run(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    os.system(f"touch {tmp_path / 'proof'}")  # the payload command itself works
    assert (tmp_path / "proof").exists()

    # the original model carrying a payload
    cls = original_class("__main__")
    monkeypatch.setattr(sys.modules["__main__"], "MLPClassifier", cls, raising=False)
    model = cls(3328, 512, 2)
    model.extra = _Payload(marker)
    infected = tmp_path / "300_model.pth"
    torch.save(model, infected)
    # a look-alike class from another module
    impostor = tmp_path / "impostor.pth"
    save_original(impostor, "evil_module", monkeypatch)
    # a bare payload, as a torch file and as a plain pickle
    bare = tmp_path / "bare.pth"
    torch.save({"state_dict": _Payload(marker)}, bare)
    plain = tmp_path / "plain.pth"
    import pickle
    plain.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    for path in (infected, impostor, bare, plain):
        target = tmp_path / f"{path.stem}_converted.pth"
        with pytest.raises(CheckpointError, match="refused|not an original"):
            convert_legacy_checkpoint(path, target, chunk_size=300)
        assert not marker.exists(), path
        assert not target.exists()


def test_cli_errors_and_help(tmp_path, monkeypatch, capsys, checkpoint_300):
    with pytest.raises(SystemExit) as exit_info:
        convert_checkpoint.main(["--help"])
    assert exit_info.value.code == 0 and "--chunk-size" in capsys.readouterr().out
    source = tmp_path / "300_model.pth"
    save_original(source, "__main__", monkeypatch)
    target = tmp_path / "t.pth"
    target.write_text("keep")
    assert convert_checkpoint.main([str(source), str(target), "--chunk-size", "300"]) == 2
    assert "exists" in capsys.readouterr().err and target.read_text() == "keep"
    # a format-2 checkpoint needs no conversion
    assert convert_checkpoint.main([str(checkpoint_300), str(tmp_path / "x.pth"), "--chunk-size", "300"]) == 2
    assert "no conversion" in capsys.readouterr().err
    assert convert_checkpoint.main([str(tmp_path / "none.pth"), str(tmp_path / "y.pth"), "--chunk-size", "300"]) == 2


def test_legacy_refusal_names_the_converter(tmp_path, monkeypatch):
    source = tmp_path / "300_model.pth"
    save_original(source, "__main__", monkeypatch)
    with pytest.raises(CheckpointError) as err:
        units.load_checkpoint(source)
    assert "convert_checkpoint.py" in str(err.value) and ESM2_3B_MODEL in str(err.value)


def test_converted_model_predicts(run, tmp_path, monkeypatch, golden_dir, esm_model_dir, dnabert_model_dir):
    source = tmp_path / "300_model.pth"
    save_original(source, "__main__", monkeypatch, input_dim=768 + 64)
    target = tmp_path / "converted.pth"
    convert_legacy_checkpoint(source, target, chunk_size=300, protein_model=str(esm_model_dir),
                              dna_model=str(dnabert_model_dir))
    reads = tmp_path / "reads.fa"
    shutil.copy(golden_dir / "reads.fa", reads)
    assert run(reads, 300, tmp_path / "out", model=target) == 0
    assert (tmp_path / "out" / rundir.RESULTS_NAME).stat().st_size > 0


@pytest.mark.slow
def test_converted_original_beside_a_fastesm_model(tmp_path, monkeypatch, golden_dir, checkpoint_300, fake_hub):
    """The migration check: an original model (plain ESM-2) and a FastESM2 model, each scored with the
    models its checkpoint records (the default hub models and a plain ESM-2 may be chosen by a file)."""
    import standins

    import evaluate
    from virnucpro.fasta import read_fasta

    classifier, meta = units.load_checkpoint(checkpoint_300)
    fastesm = tmp_path / "300_model_fastesm650.pth"  # records the default hub ids (the fake hub has them)
    units.save_checkpoint(fastesm, classifier, dna_model=units.DNABERT_S_MODEL, dna_dim=meta["dna_dim"],
                          protein_model=units.FASTESM_MODEL, protein_dim=meta["protein_dim"], chunk_size=300)
    esm2 = standins.build_esm2_standin(tmp_path / "esm2_standin")
    source = tmp_path / "300_model.pth"
    save_original(source, "__main__", monkeypatch, input_dim=768 + 32)
    converted = tmp_path / "300_model_esm2.pth"
    assert convert_checkpoint.main([str(source), str(converted), "--chunk-size", "300", "--protein-model",
                                    str(esm2), "--dna-model", units.DNABERT_S_MODEL, "-q"]) == 0
    records = list(read_fasta(golden_dir / "reads.fa"))
    viral, host = tmp_path / "viral.fa", tmp_path / "host.fa"
    viral.write_text("".join(f">{r.description}\n{r.seq}\n" for r in records[::2]))
    host.write_text("".join(f">{r.description}\n{r.seq}\n" for r in records[1::2]))
    out = tmp_path / "eval"
    assert evaluate.main(["--viral", str(viral), "--host", str(host), "--model", str(fastesm), "--model",
                          str(converted), "--outdir", str(out), "--device", "cpu", "-q"]) == 0
    report = json.loads((out / outputs.EVALUATION_JSON_NAME).read_text())
    assert report["models"]["300_model_esm2"]["esm_model"] == str(esm2)
    assert report["models"]["300_model_fastesm650"]["esm_model"] == units.FASTESM_MODEL
    assert {row["model"] for row in report["metrics"]} == {"300_model_esm2", "300_model_fastesm650"}
    assert len(report["agreement"]) == 3


def test_converted_original_predicts_with_no_model_option(tmp_path, monkeypatch, golden_dir, fake_hub):
    """The first run of issue 18: the converted original records DNABERT-S and ESM2-3B (a plain ESM-2),
    so prediction.py runs it with no model option."""
    import json

    from huggingface_hub import constants

    import prediction
    import standins
    from virnucpro.defaults import ESM2_3B_MODEL

    esm2 = standins.build_esm2_standin(tmp_path / "esm2_3b_standin")  # stands in for facebook/esm2_t36_3B_UR50D
    standins.add_to_fake_hub(constants.HF_HUB_CACHE, ESM2_3B_MODEL, esm2)
    source = tmp_path / "300_model.pth"
    save_original(source, "__main__", monkeypatch, input_dim=768 + 32)
    converted = tmp_path / "300_model_esm2_3b.pth"
    assert convert_checkpoint.main([str(source), str(converted), "--chunk-size", "300", "-q"]) == 0
    reads = tmp_path / "in.fa"
    reads.write_text("".join((golden_dir / "reads.fa").read_text().splitlines(True)[:6]))
    out = tmp_path / "out"
    assert prediction.main([str(reads), "300", str(out), "--model", str(converted), "--device", "cpu", "-q"]) == 0
    manifest = json.loads((out / rundir.WORK_DIR_NAME / rundir.MANIFEST_NAME).read_text())
    assert manifest["esm_model"] == ESM2_3B_MODEL and manifest["dnabert_model"] == units.DNABERT_S_MODEL
    assert manifest["esm_loaders"] == ["native"]  # transformers' own EsmModel, no remote code
    assert (out / "prediction_results.txt").read_text().count("\n") > 1
