"""build_model.py: the step engine (skip what is finished, resume), the hold-out FASTA and the comparison."""
from __future__ import annotations

from pathlib import Path

import pytest

import build_model
from virnucpro import build
from virnucpro.errors import RunFailedError


def test_dry_run_prints_every_step_and_runs_nothing(tmp_path, capsys):
    assert build_model.main(["--dry-run", "--work-dir", str(tmp_path / "w"), "--chunk-size", "500"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "1. download", "2. sequences", "3. features", "4. train", "5. originals", "6. holdout", "7. evaluate",
        "8. compare"]
    assert "--chunk-size 500" in lines[1] and "500_model_esm2_3b.pth" in lines[6]
    assert not (tmp_path / "w").exists()


def test_steps_resume_after_a_failure(tmp_path, caplog):
    calls = []
    fail = {"b": True}

    def step(name):
        def action():
            calls.append(name)
            if fail.get(name):
                raise RunFailedError(f"{name} broke")
        return build.Step(name, f"cmd {name}", action)

    steps = [step("a"), step("b"), step("c")]
    with pytest.raises(RunFailedError):
        build.run_steps(steps, tmp_path)
    fail["b"] = False
    caplog.set_level("INFO")
    assert build.run_steps(steps, tmp_path) == ["b", "c"]
    assert calls == ["a", "b", "b", "c"]
    assert "a: done already; skipped" in caplog.text and "c: finished in" in caplog.text
    assert build.run_steps(steps, tmp_path) == []


def test_script_step_nonzero_exit_stops_the_build(tmp_path):
    step = build.script_step("train", "train.py", lambda argv: 2, ["--x"])
    assert step.command == "python train.py --x"
    with pytest.raises(RunFailedError, match="train.py exited with 2"):
        build.run_steps([step], tmp_path)
    assert not (tmp_path / build.BUILD_STATE_DIR / "train.done").exists()


def test_holdout_fasta_and_comparison(tmp_path):
    data = tmp_path / "data"
    (data / "viral").mkdir(parents=True)
    (data / "bacteria").mkdir()
    (data / "viral" / "viral.1.1.identified_nucleotide.fa").write_text(">v1\nACGT\n>v2\nGGGG\n")
    (data / "bacteria" / "b.1.identified_nucleotide.fa").write_text(">h1\nTTTT\n>h2\nCCCC\n")
    ids = tmp_path / "ids.txt"
    ids.write_text("v2\nh1\n")
    assert build.write_holdout_fasta(data, ids, tmp_path) == 2
    assert (tmp_path / build.HOLDOUT_VIRAL_NAME).read_text() == ">v2\nGGGG\n"
    assert (tmp_path / build.HOLDOUT_HOST_NAME).read_text() == ">h1\nTTTT\n"
    ids.write_text("nothing\n")
    with pytest.raises(Exception, match="none of the hold-out ids"):
        build.write_holdout_fasta(data, ids, tmp_path)

    tsv = tmp_path / "evaluation.tsv"
    cols = ["model", "level", "n", "auroc", "auprc", "accuracy", "f1", "mcc"]
    rows = [["fast", "frame", 9, 0.5, 0.5, 0.5, 0.5, 0.0], ["fast", "chunk", 4, 0.875, 0.9, 0.75, 0.7, 0.5],
            ["orig", "frame", 9, 0.6, 0.5, 0.5, 0.5, 0.0], ["orig", "chunk", 4, 0.9375, 0.95, 1.0, 1.0, 1.0]]
    tsv.write_text("\n".join("\t".join(map(str, r)) for r in [cols, *rows]) + "\n")
    line = build.write_comparison(tsv, tmp_path / "comparison.tsv", {"fastesm": "fast", "esm2_3b": "orig"})
    assert line == "FastESM2 AUROC 0.8750 vs ESM2-3B 0.9375 on 4 hold-out chunks"
    assert (tmp_path / "comparison.tsv").read_text().splitlines()[0] == "\t".join(build.COMPARISON_COLUMNS)


class GoldenSource:
    """NCBI (the golden training genomes) and GitHub (fake originals) in one offline session."""

    def __init__(self, golden_data: Path, originals: dict[str, bytes]):
        from test_download_data import FakeSession
        self.files = {p.name: p.read_bytes() for p in golden_data.iterdir()}
        self.files.update(originals)
        outer = self

        class Session(FakeSession):
            def body(self, url):
                return outer.files.get(url.rsplit("/", 1)[-1], b"")

            def get(self, url, stream=False, timeout=None, headers=None):
                return super().get(url, stream=stream, timeout=timeout)

        self.session_class = Session

    def __call__(self):
        return self.session_class({"bacteria": 1})


@pytest.mark.slow
def test_build_runs_end_to_end_and_resumes(tmp_path, monkeypatch, golden_dir, fake_hub, esm_model_dir, capsys):
    import units
    from test_convert_checkpoint import save_original
    from test_original_models import blob_id
    from virnucpro import download, original_models

    import standins

    # ESM2-3B is a plain EsmModel: a plain ESM-2 stand-in plays it (a file may choose a plain ESM-2)
    esm2 = standins.build_esm2_standin(tmp_path / "esm2_3b_standin", hidden_size=48)
    width = units.load_protein_model(str(esm2), "cpu").hidden_size
    made = tmp_path / "300_model.pth"
    save_original(made, "__main__", monkeypatch, input_dim=768 + width)
    monkeypatch.setattr(original_models, "ORIGINAL_MODELS",
                        (original_models.OriginalModel("300_model.pth", 300, blob_id(made.read_bytes())),))
    monkeypatch.setattr(download, "make_session",
                        GoldenSource(golden_dir / "train_300" / "data", {"300_model.pth": made.read_bytes()}))
    work = tmp_path / "work"
    argv = ["--work-dir", str(work), "--device", "cpu", "--max-genomes", "1", "--sequences-per-file", "6",
            "--epochs", "3", "--original-esm-model", str(esm2), "-q"]
    assert build_model.main(argv) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("FastESM2 AUROC ") and " vs ESM2-3B " in summary and summary.endswith("hold-out chunks")
    n = int(summary.split(" on ")[1].split()[0])
    holdout = (work / "300_model_fastesm650.holdout_ids.txt").read_text().split()
    assert 0 < n <= len(holdout)
    rows = (work / "comparison.tsv").read_text().splitlines()
    assert {r.split("\t")[0] for r in rows[1:]} == {"300_model_fastesm650", "300_model_esm2_3b"}
    assert (work / "eval" / "roc_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (work / "eval" / "precision_recall_curves.png").is_file()
    # a rerun finds every step done and changes nothing
    before = (work / "300_model_fastesm650.pth").stat().st_mtime_ns
    assert build_model.main(argv[:-1]) == 0
    assert (work / "300_model_fastesm650.pth").stat().st_mtime_ns == before
    assert capsys.readouterr().err.count("done already; skipped") == 8
