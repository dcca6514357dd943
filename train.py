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
import io
import json
import logging
import math
import os
import shutil
import stat
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from virnucpro import cli, outputs
from virnucpro.defaults import DNABERT_S_MODEL, FASTESM_MODEL, SPLIT_CHOICES
from virnucpro.errors import InputError

if TYPE_CHECKING:  # torch and the training modules are imported when training starts, not for --help
    import numpy as np
    import torch

    from virnucpro.training import FitResult
    from virnucpro.training_data import TrainingData

log = logging.getLogger("virnucpro.train")

PROG = "train.py"
DEFAULT_DATA_DIR = Path("data") / outputs.MERGE_DIR_NAME
DEFAULT_VIRAL_DIR = outputs.VIRAL_MERGED_DIR_NAME
DEFAULT_CHUNK_SIZE = 300
DEFAULT_OUT_TEMPLATE = outputs.checkpoint_name("{chunk_size}")  # type: ignore[arg-type]
DEFAULT_LOG = Path(outputs.TRAINING_LOG_NAME)
NUM_CLASS = 2
#: An interrupted run writes its best epoch so far beside --out: NAME.interrupted.pth.
INTERRUPTED_INFIX = ".interrupted"
#: Room kept on the checkpoint's disk beyond its weights (metrics, hold-out ids, the log).
SAVE_MARGIN_BYTES = 16 << 20
#: The seeds torch.manual_seed takes.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _number(kind: type, test, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {what}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"'{text}' is not {what}")
        return value
    return parse


positive_int = cli.positive_int
non_negative_int = _number(int, lambda v: v >= 0, "a non-negative integer")
positive_float = _number(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
fraction = _number(float, lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)")
seed_type = _number(int, lambda v: SEED_MIN <= v <= SEED_MAX, "an integer from -2**63 to 2**64-1")


def batch_size_type(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError("the batch size must be at least 2 (the model has a BatchNorm layer)")
    return value


def build_parser() -> cli.CliArgumentParser:
    parser = cli.CliArgumentParser(
        prog=PROG,
        description="Train the VirNucPro-FastESM viral/host classifier (an MLP over merged DNABERT-S + "
                    "FastESM2 features) and save the best epoch as a checkpoint for prediction.py.",
        epilog="Example: python train.py --data-dir data/data_merge --chunk-size 300 --device cuda",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                      help="folder whose sub-folders hold the merged feature files (*.pt) made by "
                           "features_extract.py")
    data.add_argument("--viral-dir", default=DEFAULT_VIRAL_DIR,
                      help="name of the sub-folder holding viral rows (label 1); every other sub-folder "
                           "is host (label 0)")
    data.add_argument("--test-fraction", type=fraction, default=0.1,
                      help="share of the rows held out to evaluate each epoch and for early stopping")
    data.add_argument("--split-by", choices=SPLIT_CHOICES, default="sequence",
                      help="'sequence': all frames and chunks of one source sequence (row id up to "
                           "'_chunk_') stay on the same side, the hold-out taken per class; 'record': "
                           "the original per-row random split (same rows as the original for the same "
                           "files and seed)")
    data.add_argument("--seed", type=seed_type, default=42,
                      help="seed of the split, weight initialisation, shuffling and dropout")

    model = parser.add_argument_group("model and training")
    model.add_argument("--epochs", type=positive_int, default=200, help="maximum number of epochs")
    model.add_argument("--batch-size", type=batch_size_type, default=32, help="training rows per batch")
    model.add_argument("--lr", type=positive_float, default=2e-4, help="SGD learning rate (initial; decayed by StepLR)")
    model.add_argument("--momentum", type=_number(float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
                       default=0.9, help="SGD momentum")
    model.add_argument("--lr-step", type=positive_int, default=10,
                       help="epochs between learning-rate decays (StepLR step size)")
    model.add_argument("--lr-gamma", type=_number(float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
                       default=0.85, help="learning-rate decay factor (StepLR gamma)")
    model.add_argument("--patience", type=non_negative_int, default=5,
                       help="stop after this many epochs without a lower hold-out loss (0: never stop "
                            "early; the best epoch is saved either way)")
    model.add_argument("--hidden-dim", type=positive_int, default=512, help="width of the hidden layer")
    model.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    model.add_argument("--workers", type=non_negative_int, default=0,
                       help="DataLoader worker processes (0: load batches in the main process)")

    out = parser.add_argument_group("outputs")
    out.add_argument("--chunk-size", type=positive_int, default=DEFAULT_CHUNK_SIZE,
                     help="chunk length (bp) the features were made for (300 or 500); recorded in the "
                          "checkpoint, which prediction.py only uses with this LENGTH")
    out.add_argument("--out", type=Path, default=None,
                     help=f"checkpoint to write (default: {DEFAULT_OUT_TEMPLATE} in the current folder)")
    out.add_argument("--log", type=Path, default=DEFAULT_LOG,
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




# ---------------------------------------------------------------------------
# The steps of a run
# ---------------------------------------------------------------------------


def _file_key(path: Path) -> tuple:
    """What makes two names the same file: device and inode when it exists, else the resolved path."""
    try:
        found = path.stat()
    except OSError:
        return ("path", str(path.resolve()))
    return ("inode", found.st_dev, found.st_ino)


def check_log_file(path: Path) -> None:
    """InputError unless ``path`` is absent or a writable regular file (never a link: the log is appended to)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise InputError(f"{path}: --log is a symbolic link; the log is not appended through a link "
                         "(remove it or name another file)")
    if not stat.S_ISREG(mode):
        raise InputError(f"{path}: --log exists and is not a regular file")
    if not os.access(path, os.W_OK):
        raise InputError(f"{path}: --log is not writable")


def output_paths(args: argparse.Namespace, inputs: Sequence[Path] = ()) -> tuple[Path, Path]:
    """(checkpoint, metrics JSON), checked before any work against each other and the ``inputs``.

    Each output must be a file name in a writable folder (made if missing), no two the same
    file, none a training input, none a ``*.pt`` in a sub-folder of --data-dir (the next run
    would read it as training data); the log must be absent or a regular file.
    """
    from virnucpro.files import require_writable_dir

    out_path: Path = args.out if args.out is not None else Path(outputs.checkpoint_name(args.chunk_size))
    metrics_path: Path = args.metrics_json if args.metrics_json is not None else out_path.with_suffix(".json")
    named = (("--out", out_path), ("--metrics-json", metrics_path), ("--log", args.log),
             ("the hold-out ids file", outputs.holdout_ids_path(out_path)))
    for what, path in named:
        if path.is_dir():
            raise InputError(f"{path}: is a directory ({what} needs a file name)")
    seen: dict[tuple, str] = {}
    for what, path in named:
        other = seen.setdefault(_file_key(path), what)
        if other != what:
            raise InputError(f"{path}: {what} and {other} name the same file; give them different names")
    input_keys = {_file_key(path) for path in inputs}
    data_dir = args.data_dir.resolve()
    for what, path in named:
        if _file_key(path) in input_keys:
            raise InputError(f"{path}: {what} is one of the training inputs (a merged feature file); "
                             "writing it would destroy the data")
        if path.suffix == ".pt" and path.resolve().parent.parent == data_dir:
            raise InputError(f"{path}: {what} is a *.pt file in a sub-folder of --data-dir, so the next run would "
                             "read it as training data; write it elsewhere")
    for what, path in named[:3]:
        require_writable_dir(path.parent, f"the folder of {what}")
    check_log_file(args.log)
    return out_path, metrics_path


def check_model_size(input_dim: int, hidden_dim: int, out_dir: Path) -> None:
    """InputError when the MLP would not fit in a checkpoint prediction.py loads, or on ``out_dir``'s disk.

    Checked before the model is built and trained, so a run never ends unable to save.
    """
    from virnucpro.classifier import MAX_CHECKPOINT_BYTES, expected_weight_shapes

    weights = sum(math.prod(shape) for shape in expected_weight_shapes(input_dim, hidden_dim, NUM_CLASS).values())
    size = 4 * weights  # float32
    if size > MAX_CHECKPOINT_BYTES:
        raise InputError(f"--hidden-dim {hidden_dim}: with {input_dim} input features the model holds {weights:,} "
                         f"weights ({size / 2**30:.1f} GiB), more than a checkpoint may hold "
                         f"({MAX_CHECKPOINT_BYTES >> 20} MiB); use a smaller --hidden-dim")
    free = shutil.disk_usage(out_dir).free
    if free < size + SAVE_MARGIN_BYTES:
        raise InputError(f"{out_dir}: {free / 2**20:.1f} MiB free, the checkpoint needs about "
                         f"{(size + SAVE_MARGIN_BYTES) / 2**20:.1f} MiB; free some space before training")


def resolve_model_names(args: argparse.Namespace, data: TrainingData) -> tuple[str, str]:
    """The model names to record: the flags, else the names in the merged files, else the defaults."""
    chosen = []
    for flag, given, recorded, default in (("--dna-model", args.dna_model, data.dna_model, DNABERT_S_MODEL),
                                           ("--esm-model", args.esm_model, data.protein_model, FASTESM_MODEL)):
        if given is not None and recorded is not None and str(given) != recorded:
            log.warning("%s %s differs from the model recorded in the merged files (%s); recording %s",
                        flag, given, recorded, given)
        chosen.append(str(given if given is not None else recorded if recorded is not None else default))
    return chosen[0], chosen[1]


def describe_data(data: TrainingData, train_rows: np.ndarray, test_rows: np.ndarray, args: argparse.Namespace,
                  device: torch.device) -> dict[str, Any]:
    """Log the sizes of the data and the split; returns them for the report."""
    from virnucpro.training_data import VIRAL_LABEL, warn_imbalance

    n_rows = int(data.labels.shape[0])
    n_viral = int((data.labels == VIRAL_LABEL).sum())
    test_viral = int((data.labels[test_rows] == VIRAL_LABEL).sum())
    log.info("%d rows (%d viral, %d host) from %d files, %d features (DNA %d + protein %d)",
             n_rows, n_viral, n_rows - n_viral, len(data.files), data.input_dim, data.dna_dim, data.protein_dim)
    log.info("hold-out: %d rows (%d viral, %d host), split by %s; training: %d rows; device %s",
             len(test_rows), test_viral, len(test_rows) - test_viral, args.split_by, len(train_rows), device)
    warn_imbalance(n_viral, n_rows - n_viral)
    if test_viral in (0, len(test_rows)):
        log.warning("the hold-out holds only one class: AUROC is undefined (reported as nan)")
    return {"dir": str(args.data_dir), "files": len(data.files), "rows": n_rows, "viral_rows": n_viral,
            "train_rows": int(len(train_rows)), "test_rows": int(len(test_rows)), "test_viral_rows": test_viral}


def best_metrics(fitted: FitResult, args: argparse.Namespace, n_train: int) -> dict[str, Any]:
    """The metrics recorded in the checkpoint: the best epoch's, and how the run went."""
    from virnucpro.training import METRIC_NAMES

    best = fitted.best
    return {
        "epoch": best["epoch"],
        **{name: best[name] for name in METRIC_NAMES},
        "correct": best["correct"],
        "n_test": best["n"],
        "train_loss": best["train_loss"],
        "n_train": int(n_train),
        "epochs_run": len(fitted.history),
        "stopped_early": fitted.stopped_early,
        "interrupted": fitted.interrupted is not None,
        "split_by": args.split_by,
        "test_fraction": float(args.test_fraction),
        "seed": int(args.seed),
    }


def write_report(path: Path, out_path: Path, metrics: dict[str, Any], data: TrainingData, names: tuple[str, str],
                 counts: dict[str, Any], fitted: FitResult, args: argparse.Namespace) -> None:
    """The metrics JSON beside the checkpoint: best epoch, data, options, history."""
    from virnucpro import __version__
    from virnucpro.files import atomic_write
    from virnucpro.training import json_safe

    report = {
        "checkpoint": str(out_path),
        "virnucpro_version": __version__,
        "best": metrics,
        "input_dim": data.input_dim,
        "dna_model": names[0], "dna_dim": data.dna_dim,
        "protein_model": names[1], "protein_dim": data.protein_dim,
        "dna_model_revision": data.dna_model_revision, "protein_model_revision": data.protein_model_revision,
        "chunk_size": args.chunk_size,
        "data": counts,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())},
        "history": fitted.history,
    }
    if data.ids is not None:
        report["holdout_ids"] = str(outputs.holdout_ids_path(out_path))
    with atomic_write(path) as handle:
        json.dump(json_safe(report), handle, indent=2)
        handle.write("\n")


def write_holdout_ids(out_path: Path, data: TrainingData, test_rows: np.ndarray) -> None:
    """The hold-out's row ids beside the checkpoint, so exactly it can be evaluated later (evaluate.py --ids)."""
    from virnucpro.files import atomic_write

    if data.ids is None:
        return
    with atomic_write(outputs.holdout_ids_path(out_path)) as handle:
        handle.writelines(f"{data.ids[row]}\n" for row in sorted(test_rows.tolist()))


def run(args: argparse.Namespace) -> int:
    """Load the data, split it, train, save the best epoch with its metrics."""
    from virnucpro import training, training_data
    from virnucpro.classifier import MLPClassifier, save_checkpoint
    from virnucpro.models import resolve_device

    progress = not args.quiet
    files = training_data.find_merged_files(args.data_dir, args.viral_dir)
    out_path, metrics_path = output_paths(args, [path for path, _ in files])
    device = resolve_device(args.device)

    training.seed_everything(args.seed)
    data = training_data.load_training_data(args.data_dir, args.viral_dir, need_ids=args.split_by == "sequence",
                                            progress=progress, files=files,
                                            check_width=lambda width: check_model_size(width, args.hidden_dim, out_path.parent))
    names = resolve_model_names(args, data)
    train_rows, test_rows = training_data.make_split(data, args.split_by, args.test_fraction, args.seed)
    counts = describe_data(data, train_rows, test_rows, args, device)

    training.seed_everything(args.seed)
    model = MLPClassifier(data.input_dim, args.hidden_dim, NUM_CLASS).to(device)
    loader = training.make_train_loader(data, train_rows, args.batch_size, args.seed, args.workers, device)
    schedule = training.Schedule(args.epochs, args.lr, args.momentum, args.lr_step, args.lr_gamma, args.patience)

    with open_log(args.log) as log_file:
        def write_line(message: str) -> None:
            log_file.write(message + "\n")
            log_file.flush()

        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_line(f"# {PROG} {started}: {counts['rows']} rows ({counts['viral_rows']} viral) from {args.data_dir}, "
                   f"input {data.input_dim}, hold-out {len(test_rows)} rows split by {args.split_by}, "
                   f"seed {args.seed}, lr {args.lr}, batch {args.batch_size}, device {device}")
        fitted = training.fit(model, data, loader, test_rows, schedule, device, write_line, progress)
        if fitted.interrupted is not None:  # a finished checkpoint at --out stays: the best epoch so far goes beside it
            out_path, metrics_path = interrupted_path(out_path), interrupted_path(metrics_path)
        metrics = best_metrics(fitted, args, len(train_rows))
        save_checkpoint(out_path, model, dna_model=names[0], dna_dim=data.dna_dim, protein_model=names[1],
                        protein_dim=data.protein_dim, chunk_size=args.chunk_size, metrics=metrics,
                        dna_model_revision=data.dna_model_revision,
                        protein_model_revision=data.protein_model_revision)
        write_holdout_ids(out_path, data, test_rows)
        write_report(metrics_path, out_path, metrics, data, names, counts, fitted, args)
        best = fitted.best
        write_line(f"Best epoch {best['epoch']}: Test Loss {best['loss']:.4f}, "
                   f"Test AUROC {best['auroc']:.4f}; saved to {out_path}")
    log.info("best epoch %d (hold-out loss %.4f, accuracy %.4f, AUROC %.4f) saved to %s; metrics in %s",
             best["epoch"], best["loss"], best["accuracy"], best["auroc"], out_path, metrics_path)
    if fitted.interrupted is not None:
        log.warning("the best epoch so far is in %s; %s is unchanged. Training does not resume: rerun the "
                    "same command to train again from epoch 1", out_path, args.out or outputs.checkpoint_name(
                        args.chunk_size))
        raise fitted.interrupted
    return cli.EXIT_OK


def open_log(path: Path) -> io.TextIOWrapper:
    """The training log opened for appending, never through a link (one line, exit 2, if it cannot be)."""
    from virnucpro.files import TEXT_ENCODING, open_for_append

    try:
        return io.TextIOWrapper(open_for_append(path), encoding=TEXT_ENCODING, newline="\n")
    except OSError as exc:
        raise InputError(f"{path}: cannot append to --log ({exc.strerror or exc})") from None


def interrupted_path(path: Path) -> Path:
    """Where an interrupted run writes ``path`` (beside it: NAME.interrupted.SUFFIX)."""
    return path.with_name(f"{path.stem}{INTERRUPTED_INFIX}{path.suffix}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see --help)."""
    return cli.script_main(PROG, build_parser(), run, argv,
                           "rerun the same command to train again (training restarts from epoch 1)")


if __name__ == "__main__":
    sys.exit(main())
