"""prediction.py scores shards while its input pass still runs (issue 19), with the tiny stand-in models.

The input is a pipe this test feeds in two parts and holds open in between, so "the first
shard was scored before the input pass ended" is forced by the test, not won in a race: the
rest of the input is written only once a shard is done (or after WAIT_S, when it never is).
"""
from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import threading
import time
from pathlib import Path

import pytest

import prediction
from test_prediction import outputs_by_kind, random_dna, write_fasta
from virnucpro import results, rundir, runstate

WAIT_S = 60


def argv(esm_model_dir, dnabert_model_dir, checkpoint, fasta: Path, out: Path, *extra: str) -> list[str]:
    return [str(fasta), "300", str(out), "--model", str(checkpoint), "--esm-model", str(esm_model_dir),
            "--dnabert-model", str(dnabert_model_dir), "--device", "cpu", *extra]


@pytest.fixture()
def predict(esm_model_dir, dnabert_model_dir, checkpoint_300):
    """prediction.main on INPUT OUTDIR with the stand-ins (logging at INFO: not -q)."""
    return lambda fasta, out, *extra: prediction.main(argv(esm_model_dir, dnabert_model_dir, checkpoint_300,
                                                           fasta, out, *extra))


class HeldPipe:
    """A pipe fed with ``first``, held open until ``ready()`` holds (at most WAIT_S), then fed ``rest``."""

    def __init__(self, first: bytes, rest: bytes, ready):
        read_end, write_end = os.pipe()
        self.read_end, self.path = read_end, Path(f"/dev/fd/{read_end}")
        self.ready_in_time = False
        self.rest_sent = threading.Event()

        def feed() -> None:
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(first)
                pipe.flush()
                deadline = time.monotonic() + WAIT_S
                while not ready() and time.monotonic() < deadline:
                    time.sleep(0.01)
                self.ready_in_time = ready()
                self.rest_sent.set()
                pipe.write(rest)

        self.thread = threading.Thread(target=feed, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.thread.join(WAIT_S)
        os.close(self.read_end)


def done_markers(out: Path) -> set[int]:
    return {int(p.name.split("_")[1].split(".")[0]) for p in (out / rundir.WORK_DIR_NAME).glob("shard_*.done")}


def test_the_first_shard_is_scored_before_the_input_pass_ends(predict, tmp_path, golden_dir, capfd, monkeypatch):
    """The log of both processes (this one scores, the pass's child process reads the input) says so, in order."""
    from virnucpro import predict as engine

    data = gzip.compress((golden_dir / "reads.fa").read_bytes())  # a gzip stream: its spool is read as it grows
    out = tmp_path / "stream"
    pipe = HeldPipe(data[:len(data) // 2], data[len(data) // 2:], lambda: 0 in done_markers(out))
    loaded_while_reading = []
    real_load = engine.load_run_scorer

    def load_run_scorer(*args):
        scorer = real_load(*args)
        loaded_while_reading.append(not pipe.rest_sent.is_set())
        return scorer

    monkeypatch.setattr(engine, "load_run_scorer", load_run_scorer)
    try:
        assert predict(pipe.path, out, "--shard-size", "10") == 0
    finally:
        pipe.close()
    err = capfd.readouterr().err.splitlines()
    assert pipe.ready_in_time, "shard 0 was not scored while the input was still being read"
    assert loaded_while_reading == [True]  # the models loaded while the pass waited for the rest
    scored = [i for i, line in enumerate(err) if "INFO: shard 0: " in line]
    ended = [i for i, line in enumerate(err) if "INFO: input pass done: " in line]
    assert len(scored) == 1 and len(ended) == 1 and scored[0] < ended[0], err  # the log says so, in order

    assert predict(golden_dir / "reads.fa", tmp_path / "file", "--shard-size", "10", "-q") == 0
    for name, streamed in outputs_by_kind(tmp_path / "file", out, "stdin"):
        assert streamed.read_bytes() == (tmp_path / "file" / name).read_bytes(), name
    assert not (out / rundir.WORK_DIR_NAME / rundir.SPOOL_NAME).exists()


def scored_shards(monkeypatch) -> list[int]:
    """The indexes of the shards scored from now on."""
    scored: list[int] = []
    real = results.write_shard

    def write_shard(work, shard, *args, **kwargs):
        scored.append(shard.index)
        return real(work, shard, *args, **kwargs)

    monkeypatch.setattr(results, "write_shard", write_shard)
    return scored


def outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_a_late_duplicate_stops_the_job_and_a_corrected_rerun_keeps_the_shards_before_it(
        predict, tmp_path, capsys, monkeypatch):
    rng = random.Random(19)
    records = [(f"s{i}", random_dna(rng, rng.randint(200, 1400))) for i in range(40)]
    text = "".join(f">{name}\n{seq}\n" for name, seq in records)
    late = ">s3\nACGTACGTAAACCCGGGTTT\n"  # a duplicate id, read when shards are finished already
    out = tmp_path / "out"
    pipe = HeldPipe(text.encode(), late.encode(), lambda: len(done_markers(out)) >= 2)
    try:
        assert predict(pipe.path, out, "--shard-size", "8", "-q") == 2
    finally:
        pipe.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert pipe.ready_in_time and len(err) == 1 and "duplicate record id 's3'" in err[0], err
    assert not [p for p in out.iterdir() if p.is_file()]  # nothing final
    work = out / rundir.WORK_DIR_NAME
    done = done_markers(out)
    assert len(done) >= 2
    assert runstate.INPUT_HASH_KEY not in json.loads((work / rundir.MANIFEST_NAME).read_text())  # pass unfinished
    twin = tmp_path / "twin"
    shutil.copytree(out, twin)

    # corrected at the end: the shards scored before stay done (their records are the same)
    corrected = write_fasta(tmp_path / "corrected.fa", [*records, ("s3b", "ACGTACGTAAACCCGGGTTT")])
    with monkeypatch.context() as patch:
        scored = scored_shards(patch)
        assert predict(corrected, out, "--shard-size", "8", "-q") == 0
    assert scored and not set(scored) & done and sorted([*scored, *done]) == list(range(len(scored) + len(done)))
    assert predict(corrected, tmp_path / "clean", "--shard-size", "8", "-q") == 0
    assert outputs(out) == outputs(tmp_path / "clean")

    # changed at the start (the same lengths): no shard of the killed pass may be reused
    changed = [("s0", ("C" if records[0][1][0] != "C" else "G") + records[0][1][1:]), *records[1:],
               ("s3b", "ACGTACGTAAACCCGGGTTT")]
    other = write_fasta(tmp_path / "corrected2.fa", changed)
    with monkeypatch.context() as patch:
        scored = scored_shards(patch)
        assert predict(other, twin, "--shard-size", "8", "-q") == 0
    assert sorted(scored) == list(range(len(scored))) and set(done) <= set(scored)
    assert predict(other, tmp_path / "clean2", "--shard-size", "8", "-q") == 0
    assert outputs(twin) == outputs(tmp_path / "clean2")
