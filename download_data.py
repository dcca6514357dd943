"""Download the RefSeq genomes VirNucPro is trained on.

    python download_data.py [--out-dir data] [--dry-run]

Downloads the viral release (viral.1.1.genomic.fna.gz + viral.1.genomic.gbff.gz) and
a seeded sample of host genomes from the NCBI RefSeq release listings: one GenBank
file (plus its ``.1.genomic.fna.gz`` sequences) for bacteria, archaea, fungi and
protozoa, ten for plant, invertebrate, vertebrate_mammalian and vertebrate_other, as
the original VirNucPro did (seed 42).  A file already present with the size the
server reports is skipped, so an interrupted run resumes; each file is written to a
temporary name and renamed when complete.  Then run make_train_dataset_300.py.

    python download_data.py --original-models [--out-dir .]

instead fetches the published VirNucPro models (300_model.pth, 500_model.pth) from the
original repository at a pinned commit, checks each against its git blob id (a file that
does not match is removed and refused, exit 3, as any data-source failure), and converts
them into 300_model_esm2_3b.pth / 500_model_esm2_3b.pth (see virnucpro/original_models.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from virnucpro import cli
from virnucpro.download import GENOMES_DIR, ORIGINAL_MODELS_DIR, DownloadRequest, run_download

PROG = "download_data.py"
DEFAULTS = DownloadRequest()


def build_parser() -> cli.CliArgumentParser:
    """The command line of download_data.py."""
    parser = cli.CliArgumentParser(
        prog=PROG,
        description="Download the RefSeq viral release and a seeded sample of host genomes for training.",
        epilog="Example: python download_data.py --out-dir data && python make_train_dataset_300.py",
    )
    parser.add_argument("--out-dir", type=Path, default=None,
                        help=f"folder the files are saved in (default: {GENOMES_DIR}, or {ORIGINAL_MODELS_DIR} "
                             "with --original-models)")
    parser.add_argument("--original-models", action="store_true",
                        help="fetch the published VirNucPro 300/500 models instead (verified, then converted to "
                             "300_model_esm2_3b.pth / 500_model_esm2_3b.pth)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the files that would be downloaded (URL and local path) and stop")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of the host-genome sampling")
    parser.add_argument("--max-genomes", type=cli.positive_int, default=None, metavar="N",
                        help="sample at most N GenBank files per host group (a small rehearsal; default: the "
                             "original counts)")
    parser.add_argument("--base-url", default=DEFAULTS.base_url, help="RefSeq release folder")
    parser.add_argument("--timeout", type=float, default=DEFAULTS.timeout,
                        help="seconds to wait for the server before giving up")
    return parser


def build_request(args: argparse.Namespace) -> DownloadRequest:
    """The one request the library runs, from the command line."""
    return DownloadRequest(out_dir=args.out_dir, original_models=args.original_models, dry_run=args.dry_run,
                           seed=args.seed, max_genomes=args.max_genomes, base_url=args.base_url,
                           timeout=args.timeout, progress=not args.quiet)


def download(args: argparse.Namespace) -> int:
    """Fetch what the command line asks (see :func:`virnucpro.download.run_download`)."""
    return run_download(build_request(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see --help)."""
    return cli.script_main(PROG, build_parser(), download, argv)


if __name__ == "__main__":
    sys.exit(main())
