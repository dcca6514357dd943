#!/usr/bin/env python
"""The per-run and per-shard costs of prediction.py that do not scale with GPUs; and, end to end, how
soon the first shard is scored.

    python benchmarks/rank0_overhead.py --reads 1000000 [--shard-size 10000] [--json out.json]
    python benchmarks/rank0_overhead.py --end-to-end --reads 300000 --ranks 1,3 [--tree CHECKOUT] [--json out.json]

On 150-bp random reads (as ``input_pass_memory.py make`` writes them) at LENGTH 300, without
``--end-to-end`` (CPU, no models):

index     rank 0's one pass over the input (hash, validation, duplicate ids, shard layout),
          plus saving the index; and loading the saved index again (what a resume costs)
plan      the pickled size of the index, which rank 0 broadcasts to every rank when it
          resumes a run whose pass ended (a first launch publishes it shard by shard instead)
shard     per shard, on the rank that owns it: reading it from its offset, chunking and
          six-frame selection (overlapped with the GPU by the prefetch thread), and
          writing its six files and ``done`` marker (scores are random numbers: no model)
finalise  rank 0 alone: checking every shard against the index and joining them into the
          final outputs

Every figure is printed per run, per shard and per million reads, so that the rank-0
overhead of a larger input can be extrapolated (both passes are linear in the input).
Wall seconds suffer on a shared machine; the ``cpu_*`` figures (this process's CPU
time, per shard for the ``shard_*`` steps) do much less, and the code is single-threaded.

``--end-to-end`` runs the whole of ``prediction.py`` of ``--tree`` (default: this checkout;
give an older checkout to measure "before") on 1 and more CPU ranks (torchrun, gloo) with
random-weight stand-ins of reduced size (tests/standins.py: DNABERT-S-like ``--dna-hidden``,
FastESM2-like ``--esm-hidden`` x ``--esm-layers``) and a random classifier, and timestamps its
log lines as they arrive: seconds from the launch to the first scored shard, to the end of the
input pass (when the tree logs it), to the first model load and to the end of the job; and the
CPU seconds of all the job's processes (on a machine with few cores the overlap competes for them).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import resource
import shutil
import subprocess
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


SCORED = re.compile(r"INFO: shard \d+: \d+ sequences, \d+ chunks, \d+ frames scored")
PASS_DONE = "INFO: input pass done: "
LOADING = "INFO: loading "
RANK_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT")


def build_models(root: Path, dna_hidden: int, esm_hidden: int, esm_layers: int) -> tuple[Path, Path, Path]:
    """Random-weight stand-ins (reduced size) and a random classifier; returns (DNA dir, protein dir, checkpoint)."""
    sys.path.insert(0, str(BENCH.parent / "tests"))
    import standins
    import torch

    from virnucpro import classifier

    dna = standins.build_dnabert_standin(root / "dna", hidden_size=dna_hidden)
    esm = standins.build_fastesm_standin(root / "esm", hidden_size=esm_hidden, num_layers=esm_layers,
                                         self_contained=True)
    torch.manual_seed(1)
    checkpoint = root / f"{CHUNK}_model_fastesm650.pth"
    classifier.save_checkpoint(checkpoint, classifier.MLPClassifier(dna_hidden + esm_hidden).eval(),
                               dna_model=str(dna), dna_dim=dna_hidden, protein_model=str(esm),
                               protein_dim=esm_hidden, chunk_size=CHUNK)
    return dna, esm, checkpoint


def timed_job(tree: Path, ranks: int, argv: list[str], env: dict[str, str]) -> dict:
    """Run ``tree``'s prediction.py on ``ranks`` CPU ranks; seconds from the launch to its milestones."""
    script = [str(tree / "prediction.py"), *argv]
    cmd = [sys.executable, *(["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
                             if ranks > 1 else []), *script]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first_shard = pass_done = loading = None
    scored = 0
    assert proc.stderr is not None
    for line in proc.stderr:  # universal newlines: progress bars' carriage returns end lines too
        now = time.perf_counter() - start
        if SCORED.search(line):
            scored += 1
            first_shard = now if first_shard is None else first_shard
        elif PASS_DONE in line:
            pass_done = now
        elif LOADING in line and loading is None:
            loading = now
    code = proc.wait()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # every process of the job, once reaped
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"ranks": ranks, "returncode": code, "models_loading_s": loading, "first_shard_s": first_shard,
            "pass_done_s": pass_done, "wall_s": wall, "cpu_s": cpu, "shards_scored": scored}


def end_to_end(args: argparse.Namespace, root: Path) -> list[dict]:
    """The whole prediction.py of ``args.tree`` on each rank count, ``args.repeats`` times."""
    dna, esm, checkpoint = build_models(root, args.dna_hidden, args.esm_hidden, args.esm_layers)
    fasta = root / "reads.fa"
    make(fasta, args.reads)
    env = {k: v for k, v in os.environ.items() if k not in RANK_ENV}
    env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HOME=str(root / "hf"), PYTHONPATH=str(args.tree))
    runs = []
    for repeat in range(args.repeats):
        for ranks in args.ranks:
            out = root / f"out_{ranks}_{repeat}"
            argv = [str(fasta), str(CHUNK), str(out), "--model", str(checkpoint), "--esm-model", str(esm),
                    "--dnabert-model", str(dna), "--device", "cpu", "--shard-size", str(args.shard_size)]
            figures = {"tree": str(args.tree), "reads": args.reads, "shard_size": args.shard_size,
                       **timed_job(args.tree, ranks, argv, env), "load_average": os.getloadavg()}
            print(json.dumps(figures), flush=True)
            runs.append(figures)
            shutil.rmtree(out, ignore_errors=True)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=1_000_000, help="150-bp reads in the synthetic input")
    parser.add_argument("--shard-size", type=int, default=10_000, help="chunks per shard (prediction's default)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    whole = parser.add_argument_group("--end-to-end: the whole prediction.py, stand-in models of reduced size")
    whole.add_argument("--end-to-end", action="store_true", help="run prediction.py (see above)")
    whole.add_argument("--ranks", type=lambda text: [int(n) for n in text.split(",")], default=[1, 3],
                       help="CPU rank counts, comma-separated (more than 1: torchrun)")
    whole.add_argument("--tree", type=Path, default=BENCH.parent, help="the checkout whose prediction.py runs")
    whole.add_argument("--repeats", type=int, default=1)
    whole.add_argument("--dna-hidden", type=int, default=64)
    whole.add_argument("--esm-hidden", type=int, default=64)
    whole.add_argument("--esm-layers", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rank0-overhead-") as tmp:
        if args.end_to_end:
            args.tree = args.tree.resolve()
            figures: dict | list = end_to_end(args, Path(tmp))
        else:
            figures = run(args.reads, args.shard_size, Path(tmp))
            for key, value in figures.items():
                print(f"{key:34s} {value:.4g}" if isinstance(value, float) else f"{key:34s} {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
