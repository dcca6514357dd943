#!/usr/bin/env python
"""The per-run and per-shard costs of prediction.py that do not scale with GPUs (CPU, no models).

    python benchmarks/rank0_overhead.py --reads 1000000 [--shard-size 10000] [--json out.json]

On 150-bp random reads (as ``input_pass_memory.py make`` writes them) at LENGTH 300:

index     rank 0's one pass over the input (hash, validation, duplicate ids, shard layout),
          plus saving the index; and loading the saved index again (what a resume costs)
plan      the pickled size of the index, which rank 0 broadcasts to every rank
shard     per shard, on the rank that owns it: reading it from its offset, chunking and
          six-frame selection (overlapped with the GPU by the prefetch thread), and
          writing its six files and ``done`` marker (scores are random numbers: no model)
finalise  rank 0 alone: checking every shard against the index and joining them into the
          final outputs

Every figure is printed per run, per shard and per million reads, so that the rank-0
overhead of a larger input can be extrapolated (both passes are linear in the input).
Wall seconds suffer on a shared machine; the ``cpu_*`` figures (this process's CPU
time, per shard for the ``shard_*`` steps) do much less, and the code is single-threaded.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from input_pass_memory import make  # noqa: E402
from virnucpro.assemble import finalise  # noqa: E402
from virnucpro.results import write_shard  # noqa: E402
from virnucpro.rundir import RunDir  # noqa: E402
from virnucpro.shardindex import ShardReader, build_index, input_source, load_index  # noqa: E402
from virnucpro.shards import preprocess_shard  # noqa: E402

CHUNK = 300


CPU_SECONDS: dict[str, float] = {}


def timed(step, name: str):
    """Run ``step``; returns (its result, wall seconds) and adds its CPU seconds to ``CPU_SECONDS[name]``."""
    start, cpu = time.perf_counter(), time.process_time()
    result = step()
    CPU_SECONDS[name] = CPU_SECONDS.get(name, 0.0) + time.process_time() - cpu
    return result, time.perf_counter() - start


def run(reads: int, shard_size: int, root: Path) -> dict:
    fasta = root / "reads.fa"
    make(fasta, reads)
    source = input_source(fasta)
    run_dir = RunDir(root / "out", "reads", CHUNK)
    work = run_dir.work.path
    index, index_s = timed(lambda: build_index(source, work, CHUNK, shard_size), "index_pass")
    _, save_s = timed(lambda: index.save(work), "index_save")
    _, reload_s = timed(lambda: load_index(work, source, CHUNK, shard_size), "index_reload")
    run_dir.manifest.write_text("{}")
    shards = len(index.shards)
    rng = np.random.default_rng(0)
    read_s = prep_s = write_s = 0.0
    with ShardReader(index, work) as reader:
        for k in range(shards):
            pieces, seconds = timed(lambda: reader.read(k), "shard_read")
            read_s += seconds
            shard, seconds = timed(lambda: preprocess_shard(k, pieces, CHUNK), "shard_preprocess")
            prep_s += seconds
            scores = rng.random((len(shard.frame_ids), 1), dtype=np.float32)
            probabilities = np.hstack([scores, 1 - scores])
            _, seconds = timed(lambda: write_shard(work, shard, probabilities, None, None, {}), "shard_write")
            write_s += seconds
    _, finalise_s = timed(lambda: finalise(run_dir, index), "finalise")
    per_million = 1e6 / reads
    figures = {
        "reads": reads, "chunks": index.chunks, "shard_size": shard_size, "shards": shards,
        "input_mib": round(fasta.stat().st_size / 2**20, 1),
        "index_pass_s": index_s, "index_save_s": save_s, "index_reload_s": reload_s,
        "plan_pickle_bytes": len(pickle.dumps(index)),
        "shard_read_s": read_s / shards, "shard_preprocess_s": prep_s / shards, "shard_write_s": write_s / shards,
        "finalise_s": finalise_s, "finalise_per_shard_s": finalise_s / shards,
        "index_pass_s_per_million_reads": index_s * per_million,
        "finalise_s_per_million_reads": finalise_s * per_million,
        **{f"cpu_{name}_s": seconds / (shards if name.startswith("shard_") else 1)
           for name, seconds in CPU_SECONDS.items()},
        "load_average": os.getloadavg(),
    }
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=1_000_000, help="150-bp reads in the synthetic input")
    parser.add_argument("--shard-size", type=int, default=10_000, help="chunks per shard (prediction's default)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rank0-overhead-") as tmp:
        figures = run(args.reads, args.shard_size, Path(tmp))
    for key, value in figures.items():
        print(f"{key:34s} {value:.4g}" if isinstance(value, float) else f"{key:34s} {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
