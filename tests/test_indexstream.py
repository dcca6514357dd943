"""The shard index published while the input pass runs (virnucpro.indexstream): no models, one process.

A pipe fed by the test keeps the pass running for as long as the test wants, so "before the
pass ended" is a fact of each test, not a race it may lose.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from test_shardindex import fasta_bytes, random_records
from virnucpro import indexstream, rundir, runstate, shardindex
from virnucpro.errors import InputError
from virnucpro.results import verified_shard, write_shard
from virnucpro.shards import preprocess_shard

CHUNK, SHARD = 300, 7
WAIT_S = 30


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


class Feeder:
    """Writes ``data`` into a pipe in two parts: the second only once ``release`` is set (or the test ends)."""

    def __init__(self, data: bytes, split: int):
        read_end, self.write_end = os.pipe()
        self.path = Path(f"/dev/fd/{read_end}")
        self.read_end, self.data, self.split = read_end, data, split
        self.release, self.closed = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._feed, daemon=True)
        self.thread.start()

    def _feed(self) -> None:
        with os.fdopen(self.write_end, "wb") as pipe:
            pipe.write(self.data[:self.split])
            pipe.flush()
            self.release.wait(WAIT_S)
            pipe.write(self.data[self.split:])
        self.closed.set()

    def close(self) -> None:
        self.release.set()
        self.thread.join(WAIT_S)
        os.close(self.read_end)


def start_pass(source: shardindex.InputSource, work: Path, resume: bool = False) -> indexstream.IndexPass:
    """A pass into ``work``, as a run begun without the input's hash would start it (``resume``: as a
    relaunch of one killed during its pass)."""
    work.mkdir(parents=True, exist_ok=True)
    if not resume:
        runstate.write_manifest(rundir.WorkDir(work).manifest, {"chunk_size": CHUNK})
    index_pass = indexstream.IndexPass(source, work, CHUNK, SHARD, outdir=work.parent, resume=resume)
    PASSES.append(index_pass)
    return index_pass.start()


PASSES: list[indexstream.IndexPass] = []


@pytest.fixture(autouse=True)
def stop_passes():
    """Every pass a test started is stopped (its child process gone) when the test ends."""
    yield
    while PASSES:
        PASSES.pop().stop()


def follower(index_pass: indexstream.IndexPass, rank: int = 0, world: int = 1, producer: bool = True):
    return indexstream.IndexFollower(index_pass.log, index_pass.work, rank, world,
                                     producer=index_pass if producer else None, timeout_s=WAIT_S)


def pieces_of(index, work, k, data=None) -> list[tuple[str, int, int, str]]:
    with shardindex.ShardReader(index, work, data) as reader:
        return [(p.record.id, p.first_chunk, p.chunk_count, p.record.seq) for p in reader.read(k)]


@pytest.mark.parametrize("compress", [False, True])
def test_shards_are_published_and_readable_while_the_stream_is_still_open(tmp_path, compress):
    records = random_records(60, seed=5) + [("long", "ACGT" * 900)]  # a record split over shards
    records += [(f"tail{i}", seq) for i, (_, seq) in enumerate(random_records(20, seed=6))]
    plain = fasta_bytes(records)
    fed = gzip.compress(plain) if compress else plain
    reference_file = tmp_path / "in.fa"
    reference_file.write_bytes(plain)
    reference = shardindex.build_index(shardindex.input_source(reference_file), tmp_path / "ref", CHUNK, SHARD)

    feeder = Feeder(fed, len(fed) // 2)
    try:
        work = tmp_path / "work"
        index_pass = start_pass(shardindex.input_source(feeder.path), work)
        ranks = [follower(index_pass, r, 3, producer=r == 0) for r in range(3)]
        wait_until(lambda: (ranks[0]._read() or True) and ranks[0].index is not None
                   and len(ranks[0].index.shards) >= 3, "three shards published from the first half")
        assert not feeder.closed.is_set() and not ranks[0].ended  # the pass is still reading the pipe
        assert ranks[0].data_paths[0].name.endswith(".tmp")  # the spool, still growing
        for k in range(len(ranks[0].index.shards)):  # each shard reads whole from the growing spool
            assert pieces_of(ranks[0].index, work, k, ranks[0].data_paths) == \
                pieces_of(reference, tmp_path / "ref", k)
        feeder.release.set()
        shares = [list(rank.shards()) for rank in ranks]
        complete = ranks[0].complete_index()
    finally:
        feeder.close()
    assert shares == [list(range(len(reference.shards)))[r::3] for r in range(3)]  # round robin by shard
    assert complete.shards == reference.shards  # entries, records' digests included
    assert (complete.records, complete.chunks) == (reference.records, reference.chunks)
    assert complete.sha256 == hashlib.sha256(fed).hexdigest() and complete.spooled
    assert shardindex.read_saved_index(work) == complete
    assert json.loads(rundir.WorkDir(work).manifest.read_text())["input_sha256"] == complete.sha256
    for k in range(len(complete.shards)):
        assert pieces_of(complete, work, k) == pieces_of(reference, tmp_path / "ref", k)
    # a rank that opens the data file only now finds the spool under its final name
    assert not ranks[1].data_paths[0].exists()
    assert pieces_of(ranks[1].index, work, 1, ranks[1].data_paths) == pieces_of(reference, tmp_path / "ref", 1)


def test_a_late_duplicate_stops_the_followers_and_its_shard_is_never_published(tmp_path):
    records = random_records(40, seed=2)
    records.append(("r3", "ACGT" * 30))  # a duplicate id, in the last shard
    path = tmp_path / "dup.fa"
    path.write_bytes(fasta_bytes(records))
    work = tmp_path / "work"
    index_pass = start_pass(shardindex.input_source(path), work)
    rank0, rank1 = follower(index_pass, 0, 2), follower(index_pass, 1, 2, producer=False)
    with pytest.raises(InputError, match="duplicate record id 'r3'"):
        rank0.complete_index()  # rank 0 raises the pass's error (the CLI prints it as one line)
    with pytest.raises(InputError, match="duplicate record id 'r3'"):
        list(rank0.shards())
    assert not rank1.wait_for_work() and list(rank1.shards()) == []  # the others stop quietly
    assert rank1.aborted and not rank1.ended
    lines = [json.loads(line) for line in index_pass.log.read_text().splitlines()]
    assert lines[0]["kind"] == "start" and lines[-1]["kind"] == "abort"
    assert lines[-1]["error"] == "virnucpro.errors:InputError" and "'r3'" in lines[-1]["message"]
    published = [line["k"] for line in lines if line["kind"] == "shard"]
    renamed = write(tmp_path / "ok.fa", [*records[:-1], ("r3b", records[-1][1])])  # the same layout
    reference = shardindex.build_index(shardindex.input_source(renamed), tmp_path / "ref", CHUNK, SHARD)
    assert published == list(range(len(reference.shards) - 1))  # all but the last: it waits for every check
    assert "input_sha256" not in json.loads(rundir.WorkDir(work).manifest.read_text())
    assert not rundir.WorkDir(work).index.exists()


def write(path: Path, records) -> Path:
    path.write_bytes(fasta_bytes(records))
    return path


def finish_shards(index: shardindex.ShardIndex, work: Path, shards: list[int]) -> None:
    """Write shard files and done markers for ``shards`` (random scores), as a scoring rank would."""
    rng = np.random.default_rng(0)
    with shardindex.ShardReader(index, work) as reader:
        for k in shards:
            shard = preprocess_shard(k, reader.read(k), CHUNK)
            scores = rng.random((len(shard.frame_ids), 1), dtype=np.float32)
            write_shard(work, shard, np.hstack([scores, 1 - scores]), None, None, {})


def pending_of(index_pass: indexstream.IndexPass) -> dict[int, bool]:
    follower(index_pass).complete_index()
    return {line["k"]: line["pending"] for line in map(json.loads, index_pass.log.read_text().splitlines())
            if line["kind"] == "shard"}


def test_a_killed_launchs_shards_stay_done_only_for_the_same_records(tmp_path):
    """A launch killed during its pass left done shards: the next pass keeps a shard only if every record up
    to its end is unchanged and its files pass their marker; it removes the other markers."""
    records = random_records(60, seed=9, low=100, high=700)
    original = tmp_path / "in.fa"
    original.write_bytes(fasta_bytes(records))
    work = tmp_path / "work"
    killed = start_pass(shardindex.input_source(original), work)
    index = follower(killed).complete_index()
    count = len(index.shards)
    finish_shards(index, work, [0, 1, 2, 5, count - 2])

    same = pending_of(start_pass(shardindex.input_source(original), work, resume=True))
    assert [k for k, pending in same.items() if not pending] == [0, 1, 2, 5, count - 2]

    # the same lengths and layout, another base in the first record of a shard j >= 3: the shards
    # before j stay done, the others are pending again and lose their markers
    j = next(k for k in range(3, count) if index.shards[k].first_chunk == 0)
    changed = [list(r) for r in records]
    position = next(i for i, (name, _) in enumerate(records) if name == index.shards[j].first_id)
    seq = changed[position][1]
    changed[position][1] = ("C" if seq[0] != "C" else "G") + seq[1:]
    edited = write(tmp_path / "edited.fa", [tuple(r) for r in changed])
    kept = pending_of(start_pass(shardindex.input_source(edited), work, resume=True))
    expected = [k for k in (0, 1, 2, 5, count - 2) if k < j]
    assert [k for k, pending in kept.items() if not pending] == expected
    assert {p.name for p in rundir.WorkDir(work).done_markers()} == {rundir.WorkDir(work).done(k).name
                                                                     for k in expected}
    assert all(verified_shard(work, k, index.shards[k].chunks) for k in expected)

    # a new run (no manifest: the log is not read), or a lost log: no marker is trusted
    fresh = pending_of(start_pass(shardindex.input_source(original), work))
    assert all(fresh.values()) and not rundir.WorkDir(work).done_markers()


def test_a_stopped_pass_tells_the_followers_and_leaves_no_spool(tmp_path):
    data = fasta_bytes(random_records(30, seed=3))
    feeder = Feeder(data, len(data) // 2)
    try:
        work = tmp_path / "work"
        index_pass = start_pass(shardindex.input_source(feeder.path), work)
        other = follower(index_pass, 1, 2, producer=False)
        wait_until(lambda: (other._read() or True) and other.index is not None and other.index.shards,
                   "a shard published")
        index_pass.stop()  # the job ends (an error elsewhere, a signal) while the pass waits for the pipe
        other._read()  # once it has read the abort line, a follower takes no more shards
        assert other.aborted and not other.wait_for_work() and list(other.shards()) == []
    finally:
        feeder.close()
    assert index_pass.exit_code() is not None  # the pass process is gone ...
    assert not list(work.glob(".*.tmp")) and not list(work.glob("dupcheck_*"))  # ... and removed its files
    assert not rundir.WorkDir(work).index.exists()  # a stopped pass saves nothing
