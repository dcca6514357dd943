#!/usr/bin/env python
"""Peak memory of prediction's input pass (validation, hash, duplicate ids, shard index).

    python benchmarks/input_pass_memory.py make reads_5M.fa 5000000      # 150-bp random reads
    /usr/bin/time -v python benchmarks/input_pass_memory.py index reads_5M.fa
    /usr/bin/time -v python benchmarks/input_pass_memory.py set reads_5M.fa   # the old way: a set of ids

``index`` runs :func:`virnucpro.shardindex.build_index` as prediction.py does (300-bp
chunks, default shard size) into a temporary work directory; ``set`` reads the file with
``read_fasta``'s in-memory duplicate check, as prediction's validation pass did before the
shard index.  Each prints the record count, the seconds and the process's peak RSS
(VmHWM).  The models are not involved (no torch).
"""
from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM) in MiB."""
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return kib / 1024


def make(path: Path, records: int, length: int = 150) -> None:
    """Write ``records`` random reads of ``length`` bp with Illumina-like ids."""
    rng = random.Random(0)
    block = "".join(rng.choices("ACGT", k=1 << 16))
    with open(path, "w") as out:
        for i in range(records):
            start = rng.randrange(0, len(block) - length)
            out.write(f">M00123:45:000000000-A1B2C:1:{1101 + i % 19}:{i}:{rng.randrange(99999)} 1:N:0:1\n"
                      f"{block[start:start + length]}\n")


def main(argv: list[str]) -> int:
    mode, path = argv[0], Path(argv[1])
    if mode == "make":
        make(path, int(argv[2]))
        return 0
    start = time.perf_counter()
    if mode == "index":
        from virnucpro.shardindex import build_index, input_source
        from virnucpro.shards import DEFAULT_SHARD_CHUNKS

        with tempfile.TemporaryDirectory() as work:
            index = build_index(input_source(path), Path(work), 300, DEFAULT_SHARD_CHUNKS)
        count = index.records
    elif mode == "set":
        from virnucpro.fasta import read_fasta

        count = sum(1 for _ in read_fasta(path, alphabet="dna", check_duplicates=True))
    else:
        raise SystemExit(f"unknown mode {mode!r}: make, index or set")
    print(f"{mode}: {count} records in {time.perf_counter() - start:.1f} s, peak RSS {peak_rss_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
