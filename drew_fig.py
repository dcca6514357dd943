"""Plot the virus score along each input sequence from a VirNucPro prediction.

    python drew_fig.py OUTDIR/prediction_results.txt [--chunk-size N] [-o PNG] [--max-sequences 5]

For each of the first ``--max-sequences`` sequences of prediction_results.txt, every
chunk is drawn as a horizontal segment over the bases it covers, at the chunk's
virus score (score2, the highest over its stop-free frames), red where the chunk is
called virus and dark blue otherwise.  The chunk size comes from ``--chunk-size``,
else from the run record prediction.py keeps in the OUTDIR of the results
(``.virnucpro_work/manifest.json``), else it is inferred from
``prediction_summary.tsv`` (sequence lengths and chunk counts); with that file the
exact chunk positions (including the overlap of the last chunks) are drawn.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from virnucpro import cli, rundir
from virnucpro.plot import DEFAULT_FIGURE_NAME, DEFAULT_MAX_SEQUENCES, SUMMARY_NAME, PlotRequest, run_plot

PROG = "drew_fig.py"


def build_parser() -> cli.CliArgumentParser:
    """The command line of drew_fig.py."""
    parser = cli.CliArgumentParser(
        prog=PROG,
        description="Plot the per-chunk virus score (score2) along each sequence of a prediction.",
        epilog=f"Example: python drew_fig.py results/{rundir.RESULTS_NAME}  (writes results/{DEFAULT_FIGURE_NAME})",
    )
    parser.add_argument("results", type=Path, metavar="RESULTS",
                        help=f"{rundir.RESULTS_NAME} written by prediction.py")
    parser.add_argument("--chunk-size", type=cli.positive_int, default=None,
                        help="chunk length used for the prediction; None: the one prediction.py recorded "
                             f"in the OUTDIR of RESULTS, else inferred from {SUMMARY_NAME} next to RESULTS")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help=f"PNG file to write, or a directory to write {DEFAULT_FIGURE_NAME} in; "
                             f"None: {DEFAULT_FIGURE_NAME} next to RESULTS")
    parser.add_argument("--max-sequences", type=cli.positive_int, default=DEFAULT_MAX_SEQUENCES,
                        help="plot at most this many sequences (the first ones of RESULTS)")
    return parser


def build_request(args: argparse.Namespace) -> PlotRequest:
    """The one request the library runs, from the command line."""
    return PlotRequest(results=args.results, chunk_size=args.chunk_size, output=args.output,
                       max_sequences=args.max_sequences)


def plot(args: argparse.Namespace) -> int:
    """Draw the figure of the command line (see :func:`virnucpro.plot.run_plot`)."""
    return run_plot(build_request(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see --help)."""
    return cli.script_main(PROG, build_parser(), plot, argv)


if __name__ == "__main__":
    sys.exit(main())
