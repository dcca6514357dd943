"""Trust and integrity of a prediction OUTDIR: finished shards are verified before they are reused or joined,
nothing is written through a planted link, --force removes only the run's own files."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import torch

import prediction
from virnucpro import assemble, results, rundir, runstate

SHARD_SIZE = "10"


def outputs_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


@pytest.fixture()
def clean_run(run, tmp_path, golden_dir) -> dict[str, bytes]:
    """The outputs of one uninterrupted run of the golden reads."""
    assert run(golden_dir / "reads.fa", 300, tmp_path / "clean", "--shard-size", SHARD_SIZE) == 0
    return outputs_of(tmp_path / "clean")


def killed_before_the_join(run, golden_dir, out: Path, monkeypatch) -> Path:
    """A run whose every shard is finished but whose outputs were never joined (as when killed then)."""
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(assemble, "finalise", killed)
        assert run(golden_dir / "reads.fa", 300, out, "--shard-size", SHARD_SIZE) == 130
    work = out / rundir.WORK_DIR_NAME
    assert len(list(work.glob("shard_*.done"))) >= 3 and not (out / rundir.SUMMARY_NAME).exists()
    return work


def rescored_shards(monkeypatch) -> list[int]:
    """The indexes of the shards scored from now on."""
    scored: list[int] = []
    real = results.write_shard

    def write_shard(work, shard, *args, **kwargs):
        scored.append(shard.index)
        return real(work, shard, *args, **kwargs)

    monkeypatch.setattr(results, "write_shard", write_shard)
    return scored


def _truncate_results(work: Path) -> Path:
    path = results.shard_path(work, 1, "results.tsv")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def _change_a_digit_of_the_summary(work: Path) -> Path:
    path = results.shard_path(work, 1, "summary.tsv")
    text = path.read_text()
    at = max(i for i, c in enumerate(text) if c.isdigit() and c != "9")
    path.write_text(text[:at] + str(int(text[at]) + 1) + text[at + 1:])
    return path


def _empty_the_marker(work: Path) -> Path:
    path = results.shard_path(work, 1, "done")
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize("damage", [_truncate_results, _change_a_digit_of_the_summary, _empty_the_marker])
def test_a_damaged_finished_shard_is_redone_with_one_warning(run, tmp_path, golden_dir, capsys, monkeypatch,
                                                            clean_run, damage):
    out = tmp_path / "out"
    work = killed_before_the_join(run, golden_dir, out, monkeypatch)
    damaged = damage(work)
    capsys.readouterr()
    scored = rescored_shards(monkeypatch)
    assert run(golden_dir / "reads.fa", 300, out, "--shard-size", SHARD_SIZE) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("WARNING: ") and str(damaged) in err[0], err
    assert scored == [1]  # only the damaged shard is scored again
    assert outputs_of(out) == clean_run


def test_a_clean_resume_reuses_every_finished_shard(run, tmp_path, golden_dir, capsys, monkeypatch, clean_run):
    out = tmp_path / "out"
    killed_before_the_join(run, golden_dir, out, monkeypatch)
    capsys.readouterr()
    scored = rescored_shards(monkeypatch)
    assert run(golden_dir / "reads.fa", 300, out, "--shard-size", SHARD_SIZE) == 0
    assert scored == [] and capsys.readouterr().err == ""
    assert outputs_of(out) == clean_run


def test_the_join_refuses_a_shard_damaged_after_it_was_checked(run, tmp_path, golden_dir, monkeypatch, capsys):
    out = tmp_path / "out"
    work = killed_before_the_join(run, golden_dir, out, monkeypatch)
    from virnucpro.shardindex import read_saved_index

    saved = read_saved_index(work)
    _truncate_results(work)
    with pytest.raises(runstate.VirNucProError, match="shard 1 is missing or incomplete"):
        assemble.finalise(rundir.RunDir(out, "reads", 300), saved)
    assert not (out / rundir.RESULTS_NAME).exists()
    assert not results.shard_path(work, 1, "done").exists()  # so a rerun scores it again


def test_an_old_format_marker_counts_as_not_done(tmp_path):
    work = tmp_path
    for part in results.SHARD_PARTS:
        results.shard_path(work, 0, part).write_text("x\n")
    results.shard_path(work, 0, "done").write_text(json.dumps({"sequences": 1, "chunks": 1, "frames": 1}))
    assert results.damaged_shard_file(work, 0, 1) == results.shard_path(work, 0, "done")


# --- no writing through links ----------------------------------------------------------------------------


def test_a_lock_that_is_a_symlink_is_refused_and_its_target_untouched(run, tmp_path, golden_dir, capsys):
    outside = tmp_path / "precious.txt"
    outside.write_text("not the run's\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / rundir.LOCK_NAME).symlink_to(outside)
    assert run(golden_dir / "reads.fa", 300, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "symbolic link" in err and rundir.LOCK_NAME in err, err
    assert outside.read_text() == "not the run's\n"
    assert (out / rundir.LOCK_NAME).is_symlink()


def test_a_run_state_name_that_is_a_symlink_is_refused(run, tmp_path, golden_dir, capsys):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / rundir.WORK_DIR_NAME).symlink_to(outside)
    for extra in ((), ("--force",)):
        assert run(golden_dir / "reads.fa", 300, out, *extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "symbolic link" in err, err
    assert not any(outside.iterdir())


# --- --force removes only the run's own files -------------------------------------------------------------


def test_an_input_under_an_outputs_name_is_refused_before_anything_is_deleted(run, tmp_path, golden_dir, capsys):
    out = tmp_path / "out"
    assert run(golden_dir / "reads.fa", 300, out) == 0
    reads = out / rundir.VIRAL_FASTA_NAME
    reads.write_bytes((golden_dir / "reads.fa").read_bytes())
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for extra in ((), ("--force",)):
        assert run(reads, 300, out, *extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "the input is inside OUTDIR under an output's name" in err, err
        assert "--force" not in err
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_force_keeps_a_checkpoint_in_the_work_directory(run, tmp_path, golden_dir, capsys, checkpoint_300):
    out = tmp_path / "out"
    work = out / rundir.WORK_DIR_NAME
    work.mkdir(parents=True)
    kept = work / "300_model_fastesm650.pth"
    kept.write_bytes(checkpoint_300.read_bytes())
    assert run(golden_dir / "reads.fa", 300, out, "--force", model=kept) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint" in err and "work directory" in err, err
    assert kept.read_bytes() == checkpoint_300.read_bytes()


def test_force_never_deletes_through_a_linked_features_folder(run, tmp_path, golden_dir):
    out = tmp_path / "out"
    assert run(golden_dir / "reads.fa", 300, out) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    theirs = elsewhere / rundir.shard_features_name(0)
    theirs.write_bytes(b"someone else's features")
    (out / rundir.FEATURES_DIR_NAME).symlink_to(elsewhere)
    runstate.remove_own_files(rundir.RunDir(out, "reads", 300))
    assert theirs.read_bytes() == b"someone else's features"
    assert not (out / rundir.SUMMARY_NAME).exists() and not (out / rundir.WORK_DIR_NAME).exists()


def test_a_worker_thread_scores_with_the_torch_threads_of_the_run(checkpoint_300):
    """The writer thread's first matmul ran with OpenMP's default thread count, not torch's: on some
    CPUs (this AMD EPYC with conftest's 1 torch thread: 1.3e-6 off) a resumed shard's scores differed."""
    from virnucpro.classifier import load_checkpoint
    from virnucpro.predict import torch_threads_of_this_thread

    classifier, _ = load_checkpoint(checkpoint_300, torch.device("cpu"))
    features = torch.randn(10, classifier.hidden_layer.in_features, generator=torch.Generator().manual_seed(0))

    def hidden() -> torch.Tensor:
        with torch.inference_mode():
            return classifier.hidden_layer(features)

    here, there = hidden(), {}
    same_threads = torch_threads_of_this_thread()

    def worker() -> None:
        same_threads()
        there["hidden"] = hidden()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert torch.equal(there["hidden"], here)
