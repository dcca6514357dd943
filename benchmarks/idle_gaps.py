#!/usr/bin/env python
"""Idle gaps between language-model forward passes during prediction.py, from torch.profiler (CPU).

A forward pass is what would keep a GPU busy; the time between the end of one and the
start of the next is time the device would wait for Python (tokenising, writing files,
the MLP, waiting on the next shard).  The script only uses interfaces that exist before
and after issue 12, so the same command measures both trees:

    python benchmarks/idle_gaps.py --reads 4000 --shard-size 500 --json gaps.json
    PYTHONPATH=/path/to/old/tree python /path/to/old/tree/benchmarks/idle_gaps.py ...

Models: the tiny stand-ins of tests/standins.py (``--esm-hidden``/``--esm-layers`` scale the
protein one), random classifier, synthetic 300-bp reads, ``--device cpu``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "tests", ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

import bench_pipeline as bench  # noqa: E402
import standins  # noqa: E402
from virnucpro import classifier, models  # noqa: E402
from virnucpro.predict import run_prediction  # noqa: E402

MARK = "lm_forward"


def hook(model: torch.nn.Module) -> None:
    """Wrap every forward of ``model`` in a profiler range named MARK."""
    open_ranges: list = []

    def before(module, args, kwargs):
        context = record_function(MARK)
        context.__enter__()
        open_ranges.append(context)

    def after(module, args, kwargs, output):
        open_ranges.pop().__exit__(None, None, None)

    model.register_forward_pre_hook(before, with_kwargs=True)
    model.register_forward_hook(after, with_kwargs=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=4000)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--esm-hidden", type=int, default=128)
    parser.add_argument("--esm-layers", type=int, default=2)
    parser.add_argument("--extra", default="", help="extra language-model options of prediction.py, e.g. "
                                                    "'--batch-tokens 8192'")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="idle_gaps_"))
    esm_dir = standins.build_fastesm_standin(work / "esm", hidden_size=args.esm_hidden, num_layers=args.esm_layers,
                                             self_contained=True)
    dna_dir = standins.build_dnabert_standin(work / "dna")
    protein = models.load_protein_model(str(esm_dir), "cpu")
    dna = models.load_dnabert_model(str(dna_dir), "cpu")
    hook(protein.model)
    hook(dna.model)
    torch.manual_seed(1)
    checkpoint = work / "300_model_fastesm650.pth"
    classifier.save_checkpoint(checkpoint, classifier.MLPClassifier(768 + protein.hidden_size).eval(),
                               dna_model=str(dna_dir), dna_dim=768, protein_model=str(esm_dir),
                               protein_dim=protein.hidden_size, chunk_size=300)
    reads = bench.synthetic_reads(args.reads, 300, 11, 0.7)
    fasta = work / "reads.fa"
    fasta.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in reads))
    request = bench.prediction_request(fasta, work / "out", checkpoint, esm_dir, dna_dir, "cpu", args.extra,
                                       shard_size=args.shard_size)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        run_prediction(request)
        wall = time.perf_counter() - start
    ranges = sorted((e.time_range.start, e.time_range.end) for e in prof.events() if e.name == MARK)
    starts = np.array([r[0] for r in ranges], dtype=np.float64)
    ends = np.array([r[1] for r in ranges], dtype=np.float64)
    gaps = (starts[1:] - ends[:-1]) / 1e3  # ms
    busy = float((ends - starts).sum() / 1e3)
    span = float((ends[-1] - starts[0]) / 1e3)
    result = {"reads": args.reads, "shard_size": args.shard_size, "forwards": len(ranges), "wall_s": wall,
              "first_to_last_forward_ms": span, "forward_ms": busy, "idle_ms": float(gaps.sum()),
              "idle_fraction": float(gaps.sum() / span), "max_gap_ms": float(gaps.max()),
              "gaps_over_5ms": int((gaps > 5).sum()), "gaps_over_5ms_ms": float(gaps[gaps > 5].sum()),
              "median_gap_ms": float(np.median(gaps))}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
