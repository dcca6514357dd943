"""Prepare VirNucPro training sequences from RefSeq genome releases.

    python make_train_dataset_300.py [--data-dir data] [--chunk-size 300] [--workers N]

Every ``*genomic.gbff.gz`` under the data directory is paired with each
``*genomic.fna.gz`` whose path starts with the GenBank path minus
``genomic.gbff.gz`` (``viral.1.genomic.gbff.gz`` pairs with
``viral.1.1.genomic.fna.gz``).  The genome is cut into chunks, every chunk is
translated in six frames, and the stop-free frames found in an annotated CDS
translation of the same accession are written to ``X.identified_nucleotide.fa``
and ``X.identified_protein.fa`` next to the genome (X = the name before
``.genomic.fna.gz``), one line per sequence.  The gzip files are streamed: no
unzipped copies are made.

Before any genome is processed, every GenBank file must start like one (a ``LOCUS``
line) and every genome FASTA must hold DNA, and every output place must be a
writable folder: otherwise one line naming the file, exit code 2.  A genome that
yields no frame (none of its records is annotated, or no frame matches a CDS
translation), or a GenBank file with no record or no CDS translation, is an error
too, and nothing is left at its output names.  Both outputs are written under
temporary names and renamed when the genome is finished.  An existing pair is
skipped (unless ``--force``) only after it is checked: both non-empty, one line per
sequence, DNA and amino-acid letters, the same ids in the same order; a pair that
fails the check (empty, truncated, or one file missing) is remade.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from virnucpro import cli
from virnucpro.trainset import DEFAULT_CHUNK_SIZE, TrainsetRequest, run_trainset

PROG = "make_train_dataset_300.py"


def build_parser(prog: str = PROG, default_chunk_size: int = DEFAULT_CHUNK_SIZE) -> cli.CliArgumentParser:
    """The command line of make_train_dataset_300.py (and of the 500-bp script, under its own defaults)."""
    parser = cli.CliArgumentParser(
        prog=prog,
        description="Make VirNucPro training sequences (identified nucleotide/protein FASTA files) "
                    "from RefSeq *genomic.gbff.gz + *genomic.fna.gz pairs.",
        epilog=f"Example: python {prog} --data-dir data --workers 4",
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data"),
                        help="folder searched (recursively) for *genomic.gbff.gz and *genomic.fna.gz")
    parser.add_argument("--chunk-size", type=cli.positive_int, default=default_chunk_size,
                        help="chunk length in bp")
    parser.add_argument("--workers", type=cli.positive_int, default=1,
                        help="genome files processed in parallel (output is the same for any value)")
    parser.add_argument("--force", action="store_true",
                        help="remake outputs that already exist (without it, a genome whose two outputs exist and "
                             "pass the check is skipped)")
    return parser


def build_request(args: argparse.Namespace) -> TrainsetRequest:
    """The one request the library runs, from the command line."""
    return TrainsetRequest(data_dir=args.data_dir, chunk_size=args.chunk_size, workers=args.workers,
                           force=args.force, progress=not args.quiet)


def make_dataset(args: argparse.Namespace) -> int:
    """Make the training sequences of the command line (see :func:`virnucpro.trainset.run_trainset`)."""
    return run_trainset(build_request(args))


def main(argv: Sequence[str] | None = None, *, default_chunk_size: int = DEFAULT_CHUNK_SIZE, prog: str = PROG) -> int:
    """Command-line entry point (see --help); the 500-bp script calls it with its own defaults."""
    return cli.script_main(prog, build_parser(prog, default_chunk_size), make_dataset, argv)


if __name__ == "__main__":
    sys.exit(main())
