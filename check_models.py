"""Check that the language models (and a classifier) load and work, as a prediction run would use them.

    python check_models.py [--model 300_model_fastesm650.pth] [model options]

Loads DNABERT-S and the protein model with the same options as prediction.py (device,
precisions, --esm-loader, revisions), embeds one frame, scores it with the checkpoint if
given, and prints the versions (torch, transformers, CUDA/GPU), model names, revisions,
loaders and widths.  Exit code 0 when everything works; otherwise one line saying why
(2: models or checkpoint; 3: network or hub).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from virnucpro import cli

PROG = "check_models.py"


def build_parser() -> cli.CliArgumentParser:
    """The command line of check_models.py."""
    parser = cli.CliArgumentParser(prog=PROG, description="Check the language models (and a classifier) as a "
                                                          "prediction run would load them.")
    parser.add_argument("--model", type=Path, default=None, help="a classifier checkpoint to score the check frame with")
    cli.add_model_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Build the request from the command line, run the check, print the report."""
    from virnucpro.health import ModelCheckRequest, check_models

    request = ModelCheckRequest(esm_model=str(args.esm_model), dnabert_model=str(args.dnabert_model),
                                esm_revision=args.esm_revision, dnabert_revision=args.dnabert_revision,
                                esm_loader=args.esm_loader, device=args.device,
                                protein_precision=args.protein_precision, dna_precision=args.dna_precision,
                                checkpoint=args.model)
    rows = check_models(request)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("OK: the models load and embed; prediction.py can run with these options")
    return cli.EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python check_models.py [options]``."""
    return cli.script_main(PROG, build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
