"""Reliability: CUDA OOM splitting, atomic writes, --force scope, and prediction's hard faults (lock, signals,
full disk, non-finite scores, damaged checkpoints and manifests, temp files)."""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import prediction
import units
from test_prediction import _cli, write_fasta
from virnucpro import rundir, runstate, scoring
from virnucpro.runlock import RunLock


class OomAbove(torch.nn.Module):
    """Wraps a model and raises CUDA out-of-memory for batches larger than ``limit``."""

    def __init__(self, inner: torch.nn.Module, limit: int):
        super().__init__()
        self.inner, self.limit, self.calls = inner, limit, []

    @property
    def config(self):
        return self.inner.config

    def forward(self, *args, **kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls.append(input_ids.shape[0])
        if input_ids.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(*args, **kwargs)


def test_out_of_memory_batches_are_split_and_retried(esm_model_dir, dnabert_model_dir):
    proteins = ["MKVLAAGIEFQW" * k for k in range(1, 12)]
    dna = ["ACGTTGCA" * k for k in range(3, 14)]
    for loaded, seqs, embed in ((units.load_protein_model(str(esm_model_dir), "cpu"), proteins, units.embed_proteins),
                                (units.load_dnabert_model(str(dnabert_model_dir), "cpu"), dna, units.embed_dna)):
        expected = embed(seqs, loaded, batch_tokens=100_000)
        flaky = OomAbove(loaded.model, limit=3)
        wrapped = units.LoadedModel(loaded.name, flaky, loaded.tokenizer, loaded.device, loaded.dtype,
                                    loaded.hidden_size)
        got = embed(seqs, wrapped, batch_tokens=100_000)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert flaky.calls[0] == len(seqs) and max(flaky.calls[1:]) <= len(seqs) // 2 + 1


def test_out_of_memory_on_a_single_sequence_is_raised(esm_model_dir):
    loaded = units.load_protein_model(str(esm_model_dir), "cpu")
    wrapped = units.LoadedModel(loaded.name, OomAbove(loaded.model, limit=0), loaded.tokenizer, loaded.device,
                                loaded.dtype, loaded.hidden_size)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        units.embed_proteins(["MKV", "MKVL"], wrapped)


class AllocationFailsAbove(torch.nn.Module):
    """Wraps a model and fails to allocate for batches of more than ``limit`` padded tokens."""

    def __init__(self, inner: torch.nn.Module, limit: int, error):
        super().__init__()
        self.inner, self.limit, self.error, self.calls = inner, limit, error, []

    @property
    def config(self):
        return self.inner.config

    def forward(self, *args, **kwargs):
        input_ids = kwargs["input_ids"]
        self.calls.append(input_ids.numel())
        if input_ids.numel() > self.limit:
            raise type(self.error)(*self.error.args)  # a fresh one: a kept instance would keep its traceback
        return self.inner(*args, **kwargs)


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory (simulated)"),
                                   RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling "
                                                "`cublasCreate(handle)`"),
                                   RuntimeError("CUDA error: out of memory (SDPA workspace, simulated)")],
                         ids=["OutOfMemoryError", "cublas", "workspace"])
def test_out_of_memory_halves_the_budget_for_the_rest_of_the_shard(esm_model_dir, error, caplog):
    """64 rows that fit 4 at a time: the budget falls once per failure, so 4 failures, not 15."""
    loaded = units.load_protein_model(str(esm_model_dir), "cpu")
    rng = np.random.default_rng(3)
    proteins = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 30)) for _ in range(64)]  # 32 tokens each
    expected = units.embed_proteins(proteins, loaded, batch_tokens=100_000)
    flaky = AllocationFailsAbove(loaded.model, limit=4 * 32, error=error)
    wrapped = units.LoadedModel(loaded.name, flaky, loaded.tokenizer, loaded.device, loaded.dtype, loaded.hidden_size)
    with caplog.at_level(logging.INFO, logger="virnucpro"):
        got = units.embed_proteins(proteins, wrapped, batch_tokens=100_000)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert flaky.calls == [64 * 32, 32 * 32, 16 * 32, 8 * 32] + [4 * 32] * 16  # 20 forwards (was 31)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "token budget lowered to 1024" in warnings[0].getMessage()


def test_memory_is_freed_once_the_failed_batch_is_gone(esm_model_dir, monkeypatch):
    """The cache is emptied after the handler: the traceback no longer holds the failed batch's tensors."""
    import weakref

    from virnucpro import embed

    loaded = units.load_protein_model(str(esm_model_dir), "cpu")

    class Remembering(AllocationFailsAbove):
        def forward(self, *args, **kwargs):
            self.last = weakref.ref(kwargs["input_ids"])
            return super().forward(*args, **kwargs)

    flaky = Remembering(loaded.model, limit=2 * 8, error=torch.OutOfMemoryError("CUDA out of memory (simulated)"))
    wrapped = units.LoadedModel(loaded.name, flaky, loaded.tokenizer, loaded.device, loaded.dtype, loaded.hidden_size)
    failed_batch_alive = []
    monkeypatch.setattr(embed, "free_cached_memory", lambda device: failed_batch_alive.append(flaky.last() is not None))
    units.embed_proteins(["MKVLAW"] * 1 + ["MKVLAA", "MKVLAC", "MKVLAD"], wrapped, batch_tokens=1000)
    assert failed_batch_alive == [False]


def test_other_runtime_errors_are_not_taken_for_out_of_memory(esm_model_dir):
    loaded = units.load_protein_model(str(esm_model_dir), "cpu")
    flaky = AllocationFailsAbove(loaded.model, limit=0, error=RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    wrapped = units.LoadedModel(loaded.name, flaky, loaded.tokenizer, loaded.device, loaded.dtype, loaded.hidden_size)
    with pytest.raises(RuntimeError, match="shapes"):
        units.embed_proteins(["MKVL", "MKVA", "MKVW"], wrapped)
    assert len(flaky.calls) == 1


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("old complete content\n")
    with pytest.raises(RuntimeError):
        with units.atomic_write(target) as handle:
            handle.write("half of the new")
            raise RuntimeError("killed")
    assert target.read_text() == "old complete content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["result.txt"]


def test_force_removes_only_this_programs_files(tmp_path):
    outdir = tmp_path / "out"
    (outdir / rundir.WORK_DIR_NAME).mkdir(parents=True)
    (outdir / rundir.WORK_DIR_NAME / "shard_000000.done").write_text("{}")
    ours = rundir.RunDir(outdir, "reads", 300).final_outputs()
    for path in ours:
        path.write_text("x")
    (outdir / "features").mkdir()
    (outdir / "features" / "shard_000000_merged.pt").write_text("x")
    (outdir / "features" / "my_notes.txt").write_text("keep")
    (outdir / "reads_identified_protein.faa.bak").write_text("keep")
    outside = tmp_path / "prediction_results.txt"
    outside.write_text("keep")
    runstate.remove_own_files(rundir.RunDir(outdir, "reads", 300))
    assert not any(p.exists() for p in ours)
    assert not (outdir / rundir.WORK_DIR_NAME).exists()
    assert sorted(p.name for p in outdir.rglob("*")) == ["features", "my_notes.txt", "reads_identified_protein.faa.bak"]
    assert outside.read_text() == "keep"


# --- hard faults of prediction.py: one run per OUTDIR, no silent wrong results, one line --------------

REPO = Path(__file__).resolve().parent.parent
HOLD_LOCK = ("import sys, time; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
             "from virnucpro.runlock import RunLock; RunLock(Path(sys.argv[2])).acquire(); "
             "print('locked', flush=True); time.sleep(120)")


def outputs_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_a_live_run_locks_its_outdir_and_a_dead_ones_lock_is_taken_over(run, tmp_path, golden_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(REPO), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for extra in ((), ("--force",)):
            assert run(golden_dir / "reads.fa", 300, out, *extra) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and "another run is using this OUTDIR" in err
            assert f"pid {holder.pid}" in err and socket.gethostname() in err and "started 20" in err
        assert not (out / rundir.WORK_DIR_NAME).exists()
    finally:
        holder.kill()
        holder.wait()
    owner = json.loads((out / rundir.LOCK_NAME).read_text())
    assert owner["pid"] == holder.pid  # the dead run's record is still there...
    assert run(golden_dir / "reads.fa", 300, out) == 0  # ...and its lock is taken over
    assert (out / rundir.SUMMARY_NAME).is_file() and not (out / rundir.LOCK_NAME).exists()


def test_lock_is_exclusive_between_two_holders(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(runstate.VirNucProError, match=f"pid {os.getpid()}"):
        RunLock(tmp_path).acquire()
    first.release()
    with RunLock(tmp_path) as again:
        assert json.loads((tmp_path / rundir.LOCK_NAME).read_text())["pid"] == os.getpid()
    assert again.fd is None and not (tmp_path / rundir.LOCK_NAME).exists()


@pytest.mark.slow
def test_two_runs_into_one_outdir_the_second_is_refused(tmp_path, esm_model_dir, dnabert_model_dir,
                                                          checkpoint_300, golden_dir):
    cli = lambda out, *extra: _cli(esm_model_dir, dnabert_model_dir, checkpoint_300, golden_dir / "reads.fa", out,
                                   "--shard-size", "10", *extra)
    subprocess.run(cli(tmp_path / "clean"), check=True, cwd=REPO)
    out = tmp_path / "out"
    first = subprocess.Popen(cli(out), cwd=REPO)
    deadline = time.monotonic() + 60
    while not (out / rundir.LOCK_NAME).is_file():
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    second = subprocess.run(cli(out, "--force"), cwd=REPO, capture_output=True, text=True)
    assert second.returncode == 2 and f"pid {first.pid}" in second.stderr
    assert first.wait() == 0
    assert outputs_of(out) == outputs_of(tmp_path / "clean")


def _wait_for(proc: subprocess.Popen, condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.parametrize("sig, code, delay", [(signal.SIGINT, 130, 0.15), (signal.SIGTERM, 143, 0.15),
                                              (signal.SIGINT, 130, 1.5)])
def test_signal_during_start_up_gives_one_line(tmp_path, esm_model_dir, dnabert_model_dir, checkpoint_300,
                                               golden_dir, sig, code, delay):
    """The input is a pipe this test holds open and never writes: the run cannot finish before the
    signal, however fast the machine (during the imports at 0.15 s, waiting for input at 1.5 s)."""
    out = tmp_path / "out"
    pipe = tmp_path / "reads.fa"
    os.mkfifo(pipe)
    held = os.open(pipe, os.O_RDWR | os.O_NONBLOCK)  # a writer that never writes: reads block, never end
    try:
        proc = subprocess.Popen(_cli(esm_model_dir, dnabert_model_dir, checkpoint_300, pipe, out),
                                cwd=REPO, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        assert proc.poll() is None  # still starting up
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(held)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == "prediction.py: interrupted; rerun the same command to resume"
    assert "Traceback" not in err
    assert not out.exists()  # created by this run, nothing finished in it


@pytest.mark.slow
def test_sigterm_mid_run_then_rerun_is_byte_identical(tmp_path, esm_model_dir, dnabert_model_dir, checkpoint_300,
                                                       golden_dir):
    cli = lambda out: _cli(esm_model_dir, dnabert_model_dir, checkpoint_300, golden_dir / "reads.fa", out,
                           "--shard-size", "6")
    subprocess.run(cli(tmp_path / "clean"), check=True, cwd=REPO)
    out = tmp_path / "out"
    proc = subprocess.Popen(cli(out), cwd=REPO, stderr=subprocess.PIPE, text=True)
    _wait_for(proc, lambda: any((out / rundir.WORK_DIR_NAME).glob("shard_*.done")))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "prediction.py: interrupted; rerun the same command to resume"
    assert not list(out.rglob("*.tmp")) and not (out / rundir.LOCK_NAME).exists()
    subprocess.run(cli(out), check=True, cwd=REPO)
    assert outputs_of(out) == outputs_of(tmp_path / "clean")


def _fail_fsync_for(monkeypatch, marker: str) -> list[str]:
    """os.fsync raises ENOSPC for files whose path contains ``marker`` (as a full disk does)."""
    real, hits = os.fsync, []

    def fsync(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        if marker in name:
            hits.append(name)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return hits


@pytest.mark.parametrize("marker, what", [(".shard_000001.", "shard 1"),
                                          pytest.param(f".{rundir.SUMMARY_NAME}.", "the final outputs",
                                                       marks=pytest.mark.slow)])
def test_full_disk_gives_one_line_removes_temp_files_and_resumes(run, tmp_path, golden_dir, capsys, monkeypatch,
                                                                 marker, what):
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        hits = _fail_fsync_for(patch, marker)
        assert run(golden_dir / "reads.fa", 300, out, "--shard-size", "20") == 1
    err = capsys.readouterr().err.strip()
    assert hits and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "no space left" in err and what in err and "rerun the same command to resume" in err
    assert not list(out.rglob("*.tmp")) and not (out / rundir.SUMMARY_NAME).exists()
    assert run(golden_dir / "reads.fa", 300, out, "--shard-size", "20") == 0
    assert run(golden_dir / "reads.fa", 300, tmp_path / "clean", "--shard-size", "20") == 0
    assert outputs_of(out) == outputs_of(tmp_path / "clean")


def test_non_finite_weights_are_refused_at_load(run, tmp_path, golden_dir, capsys, checkpoint_300):
    bad = torch.load(checkpoint_300, weights_only=True)
    bad["state_dict"]["output_layer.bias"][1] = float("nan")
    torch.save(bad, tmp_path / "nan.pth")
    assert run(golden_dir / "reads.fa", 300, tmp_path / "out", model=tmp_path / "nan.pth") == 2
    err = capsys.readouterr().err
    assert "NaN or infinite" in err and "output_layer.bias" in err


def test_a_non_finite_score_stops_the_run_and_is_never_written(run, tmp_path, golden_dir, capsys, monkeypatch):
    real = scoring.Scorer.probabilities

    def poisoned(self, features):
        out = real(self, features)
        out[len(out) // 2, 1] = np.inf
        return out

    monkeypatch.setattr(scoring.Scorer, "probabilities", poisoned)
    out = tmp_path / "out"
    assert run(golden_dir / "reads.fa", 300, out) == 1
    err = capsys.readouterr().err.strip()
    assert "non-finite score" in err and len(err.splitlines()) == 1
    assert not out.exists() or not list(out.rglob("*results*"))


def test_checkpoints_that_cannot_be_classifiers_are_refused_unread(run, tmp_path, golden_dir, capsys,
                                                                    checkpoint_300, monkeypatch):
    from virnucpro import classifier

    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or pytest.fail("torch.load called"))
    huge = tmp_path / "huge.pth"
    with huge.open("wb") as handle:
        handle.truncate(classifier.MAX_CHECKPOINT_BYTES + 1)  # sparse: no disk used
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(bomb, "w") as archive:
        archive.writestr("archive/data.pkl", b"x" * 10)
    data = bytearray(bomb.read_bytes())
    central = data.rindex(b"PK\x01\x02")
    data[central + 24:central + 28] = (0xFFFFFFF0).to_bytes(4, "little")  # declared uncompressed size: 4 GB
    bomb.write_bytes(bytes(data))
    many = tmp_path / "many.pth"
    with zipfile.ZipFile(many, "w") as archive:
        for i in range(classifier.MAX_CHECKPOINT_ENTRIES + 1):
            archive.writestr(f"e{i}", b"")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(checkpoint_300.read_bytes()[:5000])
    for path, words in ((huge, "too large"), (bomb, "4096 MiB"), (many, "archive entries"),
                        (truncated, "truncated")):
        assert run(golden_dir / "reads.fa", 300, tmp_path / "out", model=path) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and str(path) in err and len(err.splitlines()) == 1, err
    assert not loads


def test_damaged_manifest_says_so_and_how_to_start_over(run, tmp_path, golden_dir, capsys):
    out = tmp_path / "out"
    (out / rundir.WORK_DIR_NAME).mkdir(parents=True)
    (out / rundir.WORK_DIR_NAME / rundir.MANIFEST_NAME).write_text('{"chunk_si')
    assert run(golden_dir / "reads.fa", 300, out) == 2
    err = capsys.readouterr().err
    assert "manifest is damaged" in err and "--force" in err and "different" not in err
    assert run(golden_dir / "reads.fa", 300, out, "--force") == 0


def test_stale_temp_files_are_removed_on_fresh_and_resumed_runs(run, tmp_path, golden_dir):
    out = tmp_path / "out"
    work = out / rundir.WORK_DIR_NAME
    for resumed in (False, True):
        if resumed:
            (work / rundir.MANIFEST_NAME).write_text(
                (work / rundir.MANIFEST_NAME).read_text().replace('"finished": true', '"finished": false'))
        else:
            work.mkdir(parents=True)
        ours = [out / ".prediction_results.txt.k2j3h4.tmp", out / ".reads_chunked300.fa.x1.tmp",
                work / ".shard_000003.results.tsv.ab12.tmp", work / ".manifest.json.zz.tmp"]
        theirs = [out / ".notes.txt.x.tmp", out / "draft.tmp"]
        for path in ours + theirs:
            path.write_text("left by a killed run")
        assert run(golden_dir / "reads.fa", 300, out) == 0
        assert not any(p.exists() for p in ours) and all(p.exists() for p in theirs)


def test_failed_run_removes_the_outdir_it_created_only(run, tmp_path, capsys):
    bad = tmp_path / "bad.fa"
    bad.write_bytes(b">r1\nACGT\n>r1\nACGT\n")
    assert run(bad, 300, tmp_path / "new" / "out") == 2
    assert not (tmp_path / "new" / "out").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    assert run(bad, 300, existing) == 2
    assert existing.is_dir() and not any(existing.iterdir())


def test_chunk_length_too_long_to_embed_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    from virnucpro.defaults import MAX_CHUNK_LENGTH

    from virnucpro import predict

    monkeypatch.setattr(predict, "find_checkpoint", lambda *a: pytest.fail("work started"))
    fasta = write_fasta(tmp_path / "in.fa", [("r1", "ACGT" * 10)])
    assert prediction.main([str(fasta), str(MAX_CHUNK_LENGTH + 1), str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot be embedded" in err and str(MAX_CHUNK_LENGTH) in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
