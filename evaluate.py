"""Evaluate classifiers side by side on the same labelled sequences.

    python evaluate.py --viral viral_test.fa --host host_test.fa --model A.pth --model B.pth --outdir eval/
    python evaluate.py --features data/data_merge --ids 300_model_fastesm650.holdout_ids.txt \\
        --model 300_model_fastesm650.pth --outdir eval/

With ``--viral``/``--host`` (FASTA or FASTQ, plain or gzip) the records are written once
to OUTDIR/labelled_input.fa and the prediction pipeline (``prediction.py``'s engine) scores
them with each model into OUTDIR/<model name>/, with the language models recorded in that
model's checkpoint (``--esm-model``/``--dnabert-model`` override them for every model, and
every precision, revision and loader option applies as in prediction.py); a rerun resumes or
reuses those runs.  With ``--features`` the merged feature files
(as ``train.py`` reads them) are scored directly by every model sharing their feature
space; ``--ids`` keeps only the rows listed (e.g. the hold-out ids ``train.py`` writes).
Language models that differ from those a checkpoint was trained with give a warning
(``--strict-models``: an error), as in prediction.py; the report names the models of the
features and of each checkpoint.

OUTDIR receives evaluation.tsv (per model and level: accuracy, precision, recall, F1,
MCC, AUROC, AUPRC, confusion matrix), agreement.tsv (per pair of models), evaluation.json
(both, with the settings) and roc_curves.png / precision_recall_curves.png.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from virnucpro import cli, outputs
from virnucpro.evaluate import EvaluationRequest

PROG = "evaluate.py"


def build_parser() -> cli.CliArgumentParser:
    """The command line of evaluate.py."""
    parser = cli.CliArgumentParser(
        prog=PROG,
        description="Compare VirNucPro classifiers on the same labelled sequences or feature files.",
        epilog="Example: python evaluate.py --viral viral_test.fa --host host_test.fa --model "
               "300_model_fastesm650.pth --model 300_model_esm2_3b.pth --outdir eval/",
    )
    data = parser.add_argument_group("labelled data (either sequences or feature files)")
    data.add_argument("--viral", type=Path, help="viral sequences (FASTA or FASTQ, plain or gzip)")
    data.add_argument("--host", type=Path, help="host (non-viral) sequences (FASTA or FASTQ, plain or gzip)")
    data.add_argument("--features", type=Path, metavar="DIR",
                      help="folder of merged feature files in sub-folders, as train.py --data-dir reads them")
    data.add_argument("--viral-dir", default=outputs.VIRAL_MERGED_DIR_NAME,
                      help="with --features: the sub-folder holding the viral files")
    data.add_argument("--ids", type=Path, metavar="FILE",
                      help="with --features: evaluate only the rows whose ids are listed, one per line "
                           "(e.g. the .holdout_ids.txt train.py writes beside its checkpoint)")
    parser.add_argument("--model", type=Path, action="append", required=True, metavar="CHECKPOINT",
                        help="classifier checkpoint; give it once per model")
    parser.add_argument("--outdir", type=Path, required=True, help="directory for the evaluation (created)")
    cli.add_model_arguments(parser, checkpoint_models=True)
    parser.add_argument("--force", action="store_true", help="recompute the prediction runs in OUTDIR")
    parser.add_argument("--strict-models", action="store_true",
                        help="refuse a model whose language models (their resolved revisions) differ from those "
                             "that made the features or that the run loads, instead of warning")
    return parser


def build_request(args: argparse.Namespace) -> EvaluationRequest:
    """The one request the library runs, from the command line."""
    return EvaluationRequest(checkpoints=tuple(args.model), outdir=args.outdir, viral=args.viral, host=args.host,
                             features=args.features, viral_dir=args.viral_dir, ids=args.ids,
                             models=cli.model_options(args), force=args.force, strict_models=args.strict_models,
                             progress=not args.quiet)


def evaluate(args: argparse.Namespace) -> int:
    """Score every model, then write the metrics, the agreement and the curves."""
    from virnucpro.evaluate import run_evaluation

    return run_evaluation(build_request(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see --help)."""
    return cli.script_main(PROG, build_parser(), evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
