"""Convert an original VirNucPro model (300_model.pth / 500_model.pth) into a checkpoint of this project.

    python convert_checkpoint.py 300_model.pth 300_model_esm2_3b.pth --chunk-size 300

The original files are whole pickled models; loading them the usual way can run any code
the file holds.  This converter reads them with ``torch.load(weights_only=True)`` and an
allowlist of exactly what such a file holds, so nothing in the file runs, and writes a
format-2 checkpoint (weights plus the language models it was trained with: DNABERT-S and
ESM2-3B).  Predict with it through this project's pipeline:

    python prediction.py in.fa 300 out/ --model 300_model_esm2_3b.pth --esm-model facebook/esm2_t36_3B_UR50D
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from virnucpro import cli
from virnucpro.convert import ConversionRequest, run_conversion
from virnucpro.defaults import DNABERT_S_DIM, DNABERT_S_MODEL, ESM2_3B_MODEL

PROG = "convert_checkpoint.py"


def build_parser() -> cli.CliArgumentParser:
    """The command line of convert_checkpoint.py."""
    parser = cli.CliArgumentParser(
        prog=PROG,
        description="Convert an original VirNucPro whole-model pickle into a VirNucPro-FastESM checkpoint, "
                    "without running any code from the file.",
        epilog="Example: python convert_checkpoint.py 300_model.pth 300_model_esm2_3b.pth --chunk-size 300; then "
               f"python prediction.py in.fa 300 out/ --model 300_model_esm2_3b.pth --esm-model {ESM2_3B_MODEL}",
    )
    parser.add_argument("source", type=Path, help="original model file (300_model.pth or 500_model.pth)")
    parser.add_argument("target", type=Path, help="checkpoint to write (format 2)")
    parser.add_argument("--chunk-size", type=cli.positive_int, required=True,
                        help="chunk length the model was trained on (300 for 300_model.pth, 500 for 500_model.pth)")
    parser.add_argument("--protein-model", default=ESM2_3B_MODEL,
                        help="protein language model the original was trained with (recorded in the checkpoint)")
    parser.add_argument("--dna-model", default=DNABERT_S_MODEL,
                        help="DNA language model the original was trained with (recorded in the checkpoint)")
    parser.add_argument("--dna-dim", type=cli.positive_int, default=DNABERT_S_DIM,
                        help="width of the DNA features; the protein width is the rest of the input")
    parser.add_argument("--force", action="store_true", help="overwrite TARGET if it exists")
    return parser


def build_request(args: argparse.Namespace) -> ConversionRequest:
    """The one request the library runs, from the command line."""
    return ConversionRequest(source=args.source, target=args.target, chunk_size=args.chunk_size,
                             protein_model=args.protein_model, dna_model=args.dna_model, dna_dim=args.dna_dim,
                             force=args.force)


def convert(args: argparse.Namespace) -> int:
    """Convert the file of the command line (see :func:`virnucpro.convert.run_conversion`)."""
    return run_conversion(build_request(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see --help)."""
    return cli.script_main(PROG, build_parser(), convert, argv)


if __name__ == "__main__":
    sys.exit(main())
