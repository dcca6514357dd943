"""Build a FastESM2 VirNucPro model from RefSeq and compare it with the converted ESM2-3B original.

    python build_model.py --chunk-size 300 --work-dir work/ [--device cuda] [--dry-run]

Runs download -> training sequences -> features -> train -> original models -> hold-out
sequences -> evaluation of both models on the same hold-out chunks, each step skipped when
finished (a rerun resumes), a progress line per step with its time on stderr.  WORK/ ends
with the checkpoint, comparison.tsv, eval/roc_curves.png and eval/precision_recall_curves.png,
and the last line says "FastESM2 AUROC x vs ESM2-3B y on N hold-out chunks".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from virnucpro import cli
from virnucpro.build import CHUNK_SIZES, BuildRequest, run_build

PROG = "build_model.py"
DEFAULTS = BuildRequest()


def build_parser() -> cli.CliArgumentParser:
    """The command line of build_model.py."""
    parser = cli.CliArgumentParser(prog=PROG, description="Build a FastESM2 model end to end and compare it with "
                                   "the converted ESM2-3B original on the same hold-out chunks.")
    parser.add_argument("--chunk-size", type=int, choices=CHUNK_SIZES, default=DEFAULTS.chunk_size, help="chunk length")
    parser.add_argument("--work-dir", type=Path, default=DEFAULTS.work_dir,
                        help="folder for everything the build makes")
    parser.add_argument("--device", default=DEFAULTS.device, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--max-genomes", type=cli.positive_int, default=None, metavar="N",
                        help="download_data.py --max-genomes: at most N GenBank files per host group (rehearsal)")
    parser.add_argument("--sequences-per-file", type=cli.positive_int, default=None,
                        help="features_extract.py --sequences-per-file (default: its own)")
    parser.add_argument("--epochs", type=cli.positive_int, default=None, help="train.py --epochs (default: its own)")
    parser.add_argument("--original-esm-model", default=DEFAULTS.original_esm_model,
                        help="protein model of the original (recorded in its converted checkpoint and used to "
                             "compute its features for the hold-out; a local copy of ESM2-3B may be given)")
    parser.add_argument("--dry-run", action="store_true", help="print the steps and their commands, run nothing")
    return parser


def build_request(args: argparse.Namespace) -> BuildRequest:
    """The one request the library runs, from the command line."""
    return BuildRequest(work_dir=args.work_dir, chunk_size=args.chunk_size, device=args.device,
                        max_genomes=args.max_genomes, sequences_per_file=args.sequences_per_file, epochs=args.epochs,
                        original_esm_model=args.original_esm_model, dry_run=args.dry_run, progress=not args.quiet)


def build(args: argparse.Namespace) -> int:
    """Run the build of the command line (see :func:`virnucpro.build.run_build`)."""
    return run_build(build_request(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see --help)."""
    return cli.script_main(PROG, build_parser(), build, argv)


if __name__ == "__main__":
    sys.exit(main())
