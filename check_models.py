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
from virnucpro.health import ModelCheckRequest, run_model_check  # torch only when the check runs

PROG = "check_models.py"


def build_parser() -> cli.CliArgumentParser:
    """The command line of check_models.py."""
    parser = cli.CliArgumentParser(prog=PROG, description="Check the language models (and a classifier) as a "
                                                          "prediction run would load them.")
    parser.add_argument("--model", type=Path, default=None, help="a classifier checkpoint to score the check frame with")
    cli.add_model_arguments(parser)
    return parser


def build_request(args: argparse.Namespace) -> ModelCheckRequest:
    """The one request the library runs, from the command line."""
    return ModelCheckRequest(models=cli.model_options(args), checkpoint=args.model)


def check(args: argparse.Namespace) -> int:
    """Run the check of the command line and print the report (see :func:`virnucpro.health.run_model_check`)."""
    return run_model_check(build_request(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python check_models.py [options]``."""
    return cli.script_main(PROG, build_parser(), check, argv)


if __name__ == "__main__":
    sys.exit(main())
