"""Train the VirNucPro-FastESM classifier on merged DNABERT-S + FastESM2 features.

    python train.py [--data-dir data/data_merge] [--chunk-size 300] [options]

Reads every ``*.pt`` merged feature file (made by features_extract.py) in the
sub-folders of the data directory.  Rows of the folder named ``viral.1.1_merged``
(``--viral-dir``) are viral (label 1), rows of every other folder host (label 0).
The input width is read from the data (768 + 1280 = 2048 for DNABERT-S +
FastESM2_650).  A seeded hold-out (10 %) is split off; by default every frame and
every chunk of one source sequence stay on the same side of the split.  An MLP is
trained with SGD (momentum 0.9) and a step learning-rate schedule, with early
stopping on the hold-out loss; the weights of the best epoch are restored and saved
as a checkpoint that prediction.py loads (``{chunk_size}_model_fastesm650.pth``),
with its metrics beside it in a JSON file.  Per-epoch lines are appended to
``MLP_log.txt`` as in the original.

Two runs with the same data, options and seed on the CPU give identical weights.

Before the data are read, the outputs are checked: each a file name in a writable
folder (made if missing), no two the same file, none of them a training input (or a
``*.pt`` in a data sub-folder, which the next run would read), the log no link or
special file.  Before the rows are copied into memory, the model must fit in a
checkpoint prediction.py loads and the rows in this machine's memory.  A WARNING
reports a class imbalance beyond 1:10 (:data:`virnucpro.training_data.IMBALANCE_RATIO`),
merged files with identical content, and row ids found in more than one file.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

from virnucpro import cli, outputs
from virnucpro.defaults import DNABERT_S_MODEL, FASTESM_MODEL, SPLIT_CHOICES
from virnucpro.trainer import PROG, TrainingRequest, run_training  # no torch until training starts

DEFAULTS = TrainingRequest()
DEFAULT_OUT_TEMPLATE = outputs.checkpoint_name("{chunk_size}")  # type: ignore[arg-type]
#: The seeds torch.manual_seed takes.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


positive_int = cli.positive_int
non_negative_int = cli.number_type(int, lambda v: v >= 0, "a non-negative integer")
positive_float = cli.number_type(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
fraction = cli.number_type(float, lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)")
seed_type = cli.number_type(int, lambda v: SEED_MIN <= v <= SEED_MAX, "an integer from -2**63 to 2**64-1")


def batch_size_type(text: str) -> int:
    """argparse type: a batch size of at least 2."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError("the batch size must be at least 2 (the model has a BatchNorm layer)")
    return value


def build_parser() -> cli.CliArgumentParser:
    """The command line of train.py."""
    parser = cli.CliArgumentParser(
        prog=PROG,
        description="Train the VirNucPro-FastESM viral/host classifier (an MLP over merged DNABERT-S + "
                    "FastESM2 features) and save the best epoch as a checkpoint for prediction.py.",
        epilog="Example: python train.py --data-dir data/data_merge --chunk-size 300 --device cuda",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", type=Path, default=DEFAULTS.data_dir,
                      help="folder whose sub-folders hold the merged feature files (*.pt) made by "
                           "features_extract.py")
    data.add_argument("--viral-dir", default=DEFAULTS.viral_dir,
                      help="name of the sub-folder holding viral rows (label 1); every other sub-folder "
                           "is host (label 0)")
    data.add_argument("--test-fraction", type=fraction, default=DEFAULTS.test_fraction,
                      help="share of the rows held out to evaluate each epoch and for early stopping")
    data.add_argument("--split-by", choices=SPLIT_CHOICES, default=DEFAULTS.split_by,
                      help="'sequence': all frames and chunks of one source sequence (row id up to "
                           "'_chunk_') stay on the same side, the hold-out taken per class; 'record': "
                           "the original per-row random split (same rows as the original for the same "
                           "files and seed)")
    data.add_argument("--seed", type=seed_type, default=DEFAULTS.seed,
                      help="seed of the split, weight initialisation, shuffling and dropout")

    model = parser.add_argument_group("model and training")
    model.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs, help="maximum number of epochs")
    model.add_argument("--batch-size", type=batch_size_type, default=DEFAULTS.batch_size,
                       help="training rows per batch")
    model.add_argument("--lr", type=positive_float, default=DEFAULTS.lr,
                       help="SGD learning rate (initial; decayed by StepLR)")
    model.add_argument("--momentum", type=cli.number_type(float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
                       default=DEFAULTS.momentum, help="SGD momentum")
    model.add_argument("--lr-step", type=positive_int, default=DEFAULTS.lr_step,
                       help="epochs between learning-rate decays (StepLR step size)")
    model.add_argument("--lr-gamma", type=cli.number_type(float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
                       default=DEFAULTS.lr_gamma, help="learning-rate decay factor (StepLR gamma)")
    model.add_argument("--patience", type=non_negative_int, default=DEFAULTS.patience,
                       help="stop after this many epochs without a lower hold-out loss (0: never stop "
                            "early; the best epoch is saved either way)")
    model.add_argument("--hidden-dim", type=positive_int, default=DEFAULTS.hidden_dim, help="width of the hidden layer")
    model.add_argument("--device", default=DEFAULTS.device, help="auto, cpu, cuda or cuda:N")
    model.add_argument("--workers", type=non_negative_int, default=DEFAULTS.workers,
                       help="DataLoader worker processes (0: load batches in the main process)")

    out = parser.add_argument_group("outputs")
    out.add_argument("--chunk-size", type=positive_int, default=DEFAULTS.chunk_size,
                     help="chunk length (bp) the features were made for (300 or 500); recorded in the "
                          "checkpoint, which prediction.py only uses with this LENGTH")
    out.add_argument("--out", type=Path, default=None,
                     help=f"checkpoint to write (default: {DEFAULT_OUT_TEMPLATE} in the current folder)")
    out.add_argument("--log", type=Path, default=DEFAULTS.log,
                     help="training log; per-epoch lines are appended")
    out.add_argument("--metrics-json", type=Path, default=None,
                     help="where to write the metrics of the best epoch and the per-epoch history "
                          "(default: the checkpoint path with a .json suffix)")
    out.add_argument("--dna-model", "--dnabert-model", dest="dna_model", default=None,
                     help="DNA language model name recorded in the checkpoint (default: the name recorded "
                          f"in the merged files, else {DNABERT_S_MODEL})")
    out.add_argument("--esm-model", dest="esm_model", default=None,
                     help="protein language model name recorded in the checkpoint (default: the name "
                          f"recorded in the merged files, else {FASTESM_MODEL})")
    return parser


def build_request(args: argparse.Namespace) -> TrainingRequest:
    """The one request the library runs, from the command line (every option, under its own name)."""
    return TrainingRequest(**vars(args))


def train(args: argparse.Namespace) -> int:
    """Train on the data of the command line (see :func:`virnucpro.trainer.run_training`)."""
    return run_training(build_request(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see --help)."""
    return cli.script_main(PROG, build_parser(), train, argv,
                           "rerun the same command to train again (training restarts from epoch 1)")


if __name__ == "__main__":
    sys.exit(main())
