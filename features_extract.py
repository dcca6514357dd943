"""Extract and merge DNABERT-S + FastESM2 features for training VirNucPro.

    python features_extract.py [--data-dir data] [--sequences-per-file 10000] [options]

Finds the ``*identified_nucleotide.fa`` files made by make_train_dataset_300.py
under the data directory.  Files under ``data/viral*`` are viral; the others are
host sequences grouped by category (vertebrate, protozoa, plant, invertebrate,
fungi, bacteria, archaea).  Each file and its ``identified_protein.fa`` twin are
split into ``output_{k}.fa`` files of ``--sequences-per-file`` sequences in a
sibling folder (``X.identified_nucleotide/``, ``X.identified_protein/``); only
full files are used.  Every viral split is used; host splits are sampled (seeded)
to ceil(n_viral / 7) per category, then down to n_viral in total.  For each used
split the DNABERT-S features (``output_{k}_DNABERT_S.pt``) and protein features
(``output_{k}_ESM.pt``) are computed and merged into
``data/data_merge/<name>_merged/output_{k}_merged.pt`` (viral files go to
``viral.1.1_merged``, the folder train.py reads as viral).

DNABERT-S feature files left by the original pipeline (they record no model) are reused
as they are when they hold exactly the split's sequence ids and this run's DNA model is
``zhihan1996/DNABERT-S`` (the default, which made them; their revision was never recorded,
and the merged file says so: ``dna_model_revision: unrecorded``); under another DNA model
they are recomputed.  Other DNABERT-S and protein feature files are recomputed unless they
were made by the same model at the same revision for the same ids.  Unless ``--force``, a
merged file is kept only when it holds exactly the rows it would now hold (the split's DNA
ids that have a protein, in order) and was made by the same models at the same revisions;
it records the models and revisions of the feature files it was made from, so one merged
set never mixes features of different weights.  Every feature file written here records a
checksum of its content: a file changed since (damaged) is made again, with one warning
naming it.  Temporary files a killed run left in the split and merge folders are removed.

Under ``torchrun --nproc-per-node=N features_extract.py ...`` rank 0 splits and
selects, every rank makes the merged files of its share of the due splits (each on
its own ``cuda:LOCAL_RANK``), and rank 0 reports; the files are those of one process.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Sequence

from virnucpro import cli, distributed, trust
from virnucpro.defaults import DNABERT_S_MODEL, FASTESM_MODEL
from virnucpro.extract import (DEFAULT_SEED, DEFAULT_SEQUENCES_PER_FILE, ExtractionRequest,
                               run_extraction)  # torch only when features are made, not for --help

PROG = "features_extract.py"


def build_parser() -> cli.CliArgumentParser:
    """The command line of features_extract.py."""
    parser = cli.CliArgumentParser(
        prog=PROG,
        description="Compute DNABERT-S + FastESM2 features of the training sequences and merge them "
                    "into DATA_DIR/data_merge/ for train.py.",
        epilog="Example: python features_extract.py --data-dir data --device cuda",
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data"),
                        help="folder with the *identified_nucleotide.fa / *identified_protein.fa files "
                             "made by make_train_dataset_300.py")
    parser.add_argument("--sequences-per-file", type=cli.positive_int, default=DEFAULT_SEQUENCES_PER_FILE,
                        help="sequences per split file (the unit of sampling; a last, shorter file is not used)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the host-file sampling")
    cli.add_model_arguments(parser)
    parser.add_argument("--force", action="store_true",
                        help="remake merged files that already exist (feature files are still reused "
                             "when they hold the same ids and model; delete them to recompute)")
    return parser


def build_request(args: argparse.Namespace) -> ExtractionRequest:
    """The run the command line asks for; its models are the ones the options name (defaults otherwise)."""
    dna = trust.choose_model("dna", args.dnabert_model, None, DNABERT_S_MODEL, PROG)
    protein = trust.choose_model("protein", args.esm_model, None, FASTESM_MODEL, PROG)
    models = dataclasses.replace(cli.model_options(args), dnabert_model=dna.location, esm_model=protein.location)
    return ExtractionRequest(
        data_dir=args.data_dir, models=models, sequences_per_file=args.sequences_per_file, seed=args.seed,
        trust_protein_code=protein.trust_remote_code, force=args.force, progress=not args.quiet)


def run(args: argparse.Namespace) -> int:
    """The body of main: one process, or one rank of a torchrun job."""
    request = build_request(args)

    def body() -> int:
        run_extraction(request)
        return cli.EXIT_OK

    return int(distributed.launch(body) or cli.EXIT_OK)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see --help)."""
    return cli.script_main(PROG, build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
