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
import logging
import sys
from pathlib import Path
from typing import Sequence

from virnucpro import cli, outputs
from virnucpro.defaults import ESM2_3B_MODEL

log = logging.getLogger("virnucpro.build_model")

PROG = "build_model.py"


def build_parser() -> cli.CliArgumentParser:
    """The command line of build_model.py."""
    parser = cli.CliArgumentParser(prog=PROG, description="Build a FastESM2 model end to end and compare it with "
                                   "the converted ESM2-3B original on the same hold-out chunks.")
    parser.add_argument("--chunk-size", type=int, choices=(300, 500), default=300, help="chunk length")
    parser.add_argument("--work-dir", type=Path, default=Path("work"), help="folder for everything the build makes")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--max-genomes", type=cli.positive_int, default=None, metavar="N",
                        help="download_data.py --max-genomes: at most N GenBank files per host group (rehearsal)")
    parser.add_argument("--sequences-per-file", type=cli.positive_int, default=None,
                        help="features_extract.py --sequences-per-file (default: its own)")
    parser.add_argument("--epochs", type=cli.positive_int, default=None, help="train.py --epochs (default: its own)")
    parser.add_argument("--original-esm-model", default=ESM2_3B_MODEL,
                        help="protein model of the original (recorded in its converted checkpoint and used to "
                             "compute its features for the hold-out; a local copy of ESM2-3B may be given)")
    parser.add_argument("--dry-run", action="store_true", help="print the steps and their commands, run nothing")
    return parser


def plan(args: argparse.Namespace) -> list:
    """The build's steps for these options."""
    import download_data
    import evaluate
    import features_extract
    import make_train_dataset_300
    import train
    from virnucpro import build, original_models

    work, chunk = args.work_dir, args.chunk_size
    data = work / "data"
    checkpoint = work / outputs.checkpoint_name(chunk)
    original = work / f"{chunk}_model_esm2_3b.pth"
    holdout = work / "holdout"
    evaldir = work / "eval"
    extract_options = [] if args.sequences_per_file is None else ["--sequences-per-file", str(args.sequences_per_file)]
    download_options = [] if args.max_genomes is None else ["--max-genomes", str(args.max_genomes)]
    train_options = [] if args.epochs is None else ["--epochs", str(args.epochs)]
    quiet = ["-q"] if args.quiet else []
    extract_options += quiet
    train_options += quiet
    names = {"fastesm": checkpoint.stem, "esm2_3b": original.stem}

    def originals() -> None:
        session = download_data.make_session()
        try:
            original_models.fetch_and_convert(session, work, models=[m for m in original_models.ORIGINAL_MODELS
                                                                      if m.chunk_size == chunk],
                                              progress=not args.quiet, protein_model=args.original_esm_model)
        finally:
            session.close()

    def holdout_fasta() -> None:
        holdout.mkdir(parents=True, exist_ok=True)
        log.info("%d hold-out sequences", build.write_holdout_fasta(data, outputs.holdout_ids_path(checkpoint),
                                                                    holdout))

    def compare() -> None:
        print(build.write_comparison(evaldir / outputs.EVALUATION_TSV_NAME, work / build.COMPARISON_NAME, names))

    return [
        build.script_step("download", "download_data.py", download_data.main,
                          ["--out-dir", str(data), *download_options, *quiet]),
        build.script_step("sequences", "make_train_dataset_300.py", make_train_dataset_300.main,
                          ["--data-dir", str(data), "--chunk-size", str(chunk), *quiet]),
        build.script_step("features", "features_extract.py", features_extract.main,
                          ["--data-dir", str(data), "--device", args.device, *extract_options]),
        build.script_step("train", "train.py", train.main,
                          ["--data-dir", str(data / outputs.MERGE_DIR_NAME), "--chunk-size", str(chunk),
                           "--out", str(checkpoint), "--log", str(work / outputs.TRAINING_LOG_NAME),
                           "--device", args.device, *train_options]),
        build.Step("originals", f"python download_data.py --original-models --out-dir {work}", originals),
        build.Step("holdout", f"(hold-out ids {outputs.holdout_ids_path(checkpoint)} -> {holdout}/*.fa)",
                   holdout_fasta),
        build.script_step("evaluate", "evaluate.py", evaluate.main,
                          ["--viral", str(holdout / build.HOLDOUT_VIRAL_NAME), "--host",
                           str(holdout / build.HOLDOUT_HOST_NAME), "--model", str(checkpoint), "--model",
                           str(original), "--outdir", str(evaldir), "--device", args.device, *quiet]),
        build.Step("compare", f"(comparison {work / build.COMPARISON_NAME})", compare),
    ]


def run(args: argparse.Namespace) -> int:
    from virnucpro import build

    build.run_steps(plan(args), args.work_dir, dry_run=args.dry_run)
    return cli.EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see --help)."""
    return cli.script_main(PROG, build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
