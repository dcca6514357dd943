"""Score DNA sequences as viral or not with VirNucPro-FastESM.

    python prediction.py INPUT.fasta 300 OUTDIR [options]

Each sequence is cut into LENGTH-bp chunks, every chunk is translated in six frames,
the stop-free frames are embedded with DNABERT-S (DNA) and FastESM2 (protein), and
the classifier scores every frame.  OUTDIR receives prediction_results.txt (one row
per frame), prediction_results_highestscore.csv (one row per chunk),
prediction_summary.tsv (one row per input sequence) and viral_sequences.fa (the input
records called virus).  INPUT may be FASTA or FASTQ, plain or gzip.

Records stream through in shards, so memory stays flat whatever the input size.
A run that is killed resumes from its finished shards when rerun with the same
command; outputs are only ever renamed into place once complete.

The same command runs on many GPUs or nodes under ``torchrun`` (one rank per GPU):
rank 0 opens the run (checks, lock, input pass, shard index), every rank scores its
share of the pending shards, rank 0 finalises; the outputs are those of one process.
"""
from __future__ import annotations

import os
import signal
import sys

PROG = "prediction.py"
RESUME_HINT = "rerun the same command to resume"


def _interrupted_during_imports(signum: int, frame: object) -> None:
    # Nothing is written yet; an exception raised here could be wrapped by the import machinery.
    print(f"{PROG}: interrupted; {RESUME_HINT}", file=sys.stderr, flush=True)
    os._exit(128 + signum)


if __name__ == "__main__" and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    # Ctrl-C or SIGTERM while the modules below load: one line, no traceback
    # (cli.script_main installs the handlers of the run itself).
    signal.signal(signal.SIGINT, _interrupted_during_imports)
    signal.signal(signal.SIGTERM, _interrupted_during_imports)

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Sequence  # noqa: E402

from virnucpro import cli  # noqa: E402
from virnucpro.predict import PredictionRequest  # noqa: E402
from virnucpro.shards import DEFAULT_SHARD_CHUNKS  # noqa: E402


def build_parser() -> cli.CliArgumentParser:
    """The command line of prediction.py."""
    parser = cli.CliArgumentParser(
        prog=PROG,
        description="Identify viral DNA among short sequences (VirNucPro with FastESM2_650).",
        epilog="Example: python prediction.py reads.fasta 300 results/  "
               "(uses 300_model_fastesm650.pth; train one with train.py)",
    )
    parser.add_argument("input", type=Path, help="DNA (or RNA) FASTA or FASTQ file to score, plain or gzip-compressed "
                                                 "(detected from the content; FASTQ qualities are ignored); "
                                                 "'-' or a pipe reads a stream")
    parser.add_argument("length", type=cli.positive_int, metavar="LENGTH",
                        help="chunk length in bp (300 or 500; must match the model's chunk size)")
    parser.add_argument("outdir", type=Path, metavar="OUTDIR", help="directory for the results (created)")
    parser.add_argument("--model", type=Path, default=None,
                        help="classifier checkpoint (default: {LENGTH}_model_fastesm650.pth in the "
                             "current directory, then next to this script)")
    cli.add_model_arguments(parser, checkpoint_models=True)
    parser.add_argument("--shard-size", type=cli.positive_int, default=DEFAULT_SHARD_CHUNKS,
                        help="chunks per shard: the unit of streaming and of resuming after a crash")
    parser.add_argument("--keep-features", action="store_true",
                        help="keep the merged feature files in OUTDIR/features/")
    parser.add_argument("--force", action="store_true",
                        help="discard earlier results of this program in OUTDIR and start over")
    parser.add_argument("--strict-models", action="store_true",
                        help="refuse to run when the language models (their resolved revisions) differ from "
                             "those the checkpoint was trained with, instead of warning")
    return parser


def build_request(args: argparse.Namespace) -> PredictionRequest:
    """The one request the library runs, from the command line."""
    return PredictionRequest(
        input=args.input, length=args.length, outdir=args.outdir, model=args.model, models=cli.model_options(args),
        shard_size=args.shard_size, keep_features=args.keep_features, force=args.force,
        strict_models=args.strict_models, progress=not args.quiet,
        checkpoint_dirs=(Path.cwd(), Path(__file__).resolve().parent))


def predict(args: argparse.Namespace) -> int:
    """Score the input of the command line (see :func:`virnucpro.predict.run_prediction`)."""
    from virnucpro.predict import run_prediction

    return run_prediction(build_request(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python prediction.py INPUT LENGTH OUTDIR [options]``."""
    return cli.script_main(PROG, build_parser(), predict, argv, interrupted_hint=RESUME_HINT)


if __name__ == "__main__":
    sys.exit(main())
