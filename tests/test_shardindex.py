"""The one-pass shard index, bounded duplicate-id detection and the shard reader (no models)."""
from __future__ import annotations

import gzip
import hashlib
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from virnucpro import dupcheck, rundir, shardindex
from virnucpro.errors import InputError
from virnucpro.fasta import read_fasta
from virnucpro.shards import chunk_count

REPO = Path(__file__).resolve().parent.parent


def fasta_bytes(records: list[tuple[str, str]], width: int = 60) -> bytes:
    lines = []
    for name, seq in records:
        lines.append(f">{name} some description")
        lines += [seq[i:i + width] for i in range(0, len(seq), width)]
    return ("\n".join(lines) + "\n").encode()


def random_records(n: int, seed: int = 1, low: int = 50, high: int = 1500) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(f"r{i}", "".join(rng.choices("ACGT", k=rng.randint(low, high)))) for i in range(n)]


def build(path: Path, work: Path, chunk_size: int = 300, shard_chunks: int = 7, **kwargs) -> shardindex.ShardIndex:
    return shardindex.build_index(shardindex.input_source(path), work, chunk_size, shard_chunks, **kwargs)


def all_pieces(index, work, order=None):
    with shardindex.ShardReader(index, work) as reader:
        return {k: reader.read(k) for k in (order or range(len(index.shards)))}


def flatten(pieces_by_shard) -> list[tuple[str, int]]:
    """(record id, chunk index) of every chunk, shard after shard."""
    return [(p.record.id, p.first_chunk + i) for k in sorted(pieces_by_shard) for p in pieces_by_shard[k]
            for i in range(p.chunk_count)]


@pytest.mark.parametrize("compress", [False, True])
def test_index_covers_every_chunk_once_and_any_shard_reads_alone(tmp_path, compress):
    records = random_records(40) + [("long", "ACGT" * 1000)]  # 14 chunks: split across shards
    data = fasta_bytes(records)
    path = tmp_path / ("in.fa.gz" if compress else "in.fa")
    path.write_bytes(gzip.compress(data) if compress else data)
    work = tmp_path / "work"
    index = build(path, work)
    assert index.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    expected = [(name, k) for name, seq in records for k in range(chunk_count(len(seq), 300))]
    assert index.records == len(records) and index.chunks == len(expected)
    assert sum(s.chunks for s in index.shards) == len(expected)
    assert max(s.chunks for s in index.shards) < 2 * 7
    assert sum(1 for s in index.shards if s.first_id == "long") >= 2
    sequential = all_pieces(index, work)
    assert flatten(sequential) == expected
    backwards = all_pieces(index, work, order=list(range(len(index.shards)))[::-1])
    assert flatten(backwards) == expected
    for k in range(len(index.shards)):  # each shard alone, as another process would read it
        assert flatten({k: all_pieces(index, work, [k])[k]}) == flatten({k: sequential[k]})
    seqs = dict(records)
    assert all(p.record.seq == seqs[p.record.id] for ps in sequential.values() for p in ps)


def test_index_is_saved_and_reused_only_for_the_unchanged_file(tmp_path):
    path = tmp_path / "in.fa"
    path.write_bytes(fasta_bytes(random_records(20)))
    work = tmp_path / "work"
    source = shardindex.input_source(path)
    index = build(path, work)
    index.save(work)
    assert shardindex.load_index(work, source, 300, 7) == index
    assert shardindex.load_index(work, source, 500, 7) is None
    assert shardindex.load_index(work, source, 300, 8) is None
    with path.open("ab") as handle:
        handle.write(b">extra\nACGT\n")
    assert shardindex.load_index(work, source, 300, 7) is None
    rundir.WorkDir(work).index.write_text("{not json")
    assert shardindex.load_index(work, shardindex.input_source(path), 300, 7) is None


def test_reader_refuses_an_input_changed_behind_the_index(tmp_path):
    path = tmp_path / "in.fa"
    records = random_records(30)
    path.write_bytes(fasta_bytes(records))
    work = tmp_path / "work"
    index = build(path, work)
    path.write_bytes(fasta_bytes(records[:5] + [("intruder", "ACGT" * 100)] + records[5:]))
    with pytest.raises(InputError, match="changed since"):
        all_pieces(index, work)


@pytest.mark.parametrize("buffer_entries", [None, 3])
def test_duplicate_ids_are_found_across_spills(tmp_path, buffer_entries):
    records = random_records(200, low=10, high=40)
    records.insert(150, ("r17", "ACGTACGT"))
    path = tmp_path / "dup.fa"
    path.write_bytes(fasta_bytes(records))
    work = tmp_path / "work"
    with pytest.raises(InputError, match="duplicate record id 'r17'"):
        build(path, work, dup_buffer_entries=buffer_entries)
    assert not list(work.glob("dupcheck_*"))  # spill files removed


def test_hash_collisions_are_confirmed_not_reported(tmp_path, monkeypatch):
    """Every id gets the same hash: only a real duplicate may be reported."""
    monkeypatch.setattr(dupcheck, "hash", lambda _: 42, raising=False)
    checker = dupcheck.DuplicateIds(tmp_path, buffer_entries=4)
    names = {i * 10: f"id{i}" for i in range(10)}
    for offset, name in names.items():
        checker.add(name, offset)
    assert checker.first_duplicate(lambda offsets: {o: names[o] for o in offsets}) is None
    checker = dupcheck.DuplicateIds(tmp_path, buffer_entries=4)
    names[95] = "id3"
    names[99] = "id1"
    for offset in sorted(names):
        checker.add(names[offset], offset)
    assert checker.first_duplicate(lambda offsets: {o: names[o] for o in offsets}) == "id3"


def test_stream_input_is_read_once_and_spooled(tmp_path, monkeypatch):
    data = fasta_bytes(random_records(25))
    read, write = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write, gzip.compress(data)), os.close(write)))
    writer.start()
    source = shardindex.input_source(Path(f"/dev/fd/{read}"))
    assert source.stream
    work = tmp_path / "work"
    index = shardindex.build_index(source, work, 300, 7)
    writer.join()
    os.close(read)
    plain = tmp_path / "in.fa"
    plain.write_bytes(data)
    reference = build(plain, tmp_path / "w2")
    assert index.spooled and rundir.WorkDir(work).spool.is_file()
    assert [s.chunks for s in index.shards] == [s.chunks for s in reference.shards]
    assert flatten(all_pieces(index, work)) == flatten(all_pieces(reference, tmp_path / "w2"))


def test_devices_and_terminals_are_refused(tmp_path):
    with pytest.raises(InputError, match="not a regular file or a pipe"):
        shardindex.input_source(Path("/dev/null"))
    with pytest.raises(InputError, match="directory"):
        shardindex.input_source(tmp_path)


def test_bom_and_non_utf8_headers(tmp_path):
    bom = tmp_path / "bom.fa"
    bom.write_bytes(b"\xef\xbb\xbf>r1\nACGT\n>r2\nAC\n")
    assert [r.id for r in read_fasta(bom)] == ["r1", "r2"]
    index = build(bom, tmp_path / "w")
    assert flatten(all_pieces(index, tmp_path / "w")) == [("r1", 0), ("r2", 0)]
    latin = tmp_path / "latin.fa"
    latin.write_bytes(b">caf\xe9\nAC1T\n")
    with pytest.raises(InputError) as err:
        list(read_fasta(latin))
    assert "caf\\xe9" in str(err.value) and "\\udce9" not in str(err.value)


def test_lone_carriage_returns_end_lines(tmp_path):
    path = tmp_path / "mac.fa"
    path.write_bytes(b">r1 x\rACGT\rAC\r>r2\rGG\r")
    assert [(r.id, r.seq) for r in read_fasta(path)] == [("r1", "ACGTAC"), ("r2", "GG")]


# VmHWM, not ru_maxrss: after fork + exec, ru_maxrss still counts the parent's pages.
INDEX_RSS_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from virnucpro import shardindex
path, work = Path(sys.argv[2]), Path(sys.argv[3])
index = shardindex.build_index(shardindex.input_source(path), work, 300, 10000, dup_buffer_entries=4096)
peak = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(index.records, peak)
"""


def _index_peak_rss_kib(path: Path, work: Path) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", INDEX_RSS_SCRIPT, str(REPO), str(path), str(work)],
                         check=True, capture_output=True, text=True).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.slow
def test_index_pass_memory_does_not_grow_with_the_number_of_records(tmp_path):
    """300,000 records cost about 40 MB more than 30,000 if every id is kept in memory."""
    rng = random.Random(2)
    records = [(f"read_{i:08d}_{rng.getrandbits(40):x}", "ACGT" * 25) for i in range(300_000)]
    small, large = tmp_path / "small.fa", tmp_path / "large.fa"
    small.write_bytes(fasta_bytes(records[:30_000]))
    large.write_bytes(fasta_bytes(records))
    (n_small, rss_small), (n_large, rss_large) = (_index_peak_rss_kib(p, tmp_path / p.stem) for p in (small, large))
    assert (n_small, n_large) == (30_000, 300_000)
    assert rss_large - rss_small < 12 * 1024, (rss_small, rss_large)
