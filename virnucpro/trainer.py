"""The training engine: ``train.py``'s run, from checked outputs to the saved best epoch.

:func:`run_training` takes one frozen :class:`TrainingRequest` (built by ``train.py`` from its
command line, or by a notebook).  Before the data are read the outputs are checked
(:func:`output_paths`); before the rows are copied into memory the model must fit in a
checkpoint prediction loads and on the checkpoint's disk (:func:`check_model_size`).  The
data are read and split by :mod:`virnucpro.training_data`, trained by :mod:`virnucpro.training`;
the best epoch is saved as a checkpoint with its metrics JSON and hold-out ids beside it, and
per-epoch lines are appended to the training log.  No torch at import (``train.py --help``).
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import shutil
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from . import outputs
from .defaults import DNABERT_S_MODEL, FASTESM_MODEL
from .errors import EXIT_OK, InputError

if TYPE_CHECKING:  # torch and the training modules are imported when training starts
    import numpy as np
    import torch

    from .training import FitResult
    from .training_data import TrainingData

log = logging.getLogger("virnucpro.train")

#: The program named in the header line of each run in the training log.
PROG = "train.py"
NUM_CLASS = 2
#: An interrupted run writes its best epoch so far beside --out: NAME.interrupted.pth.
INTERRUPTED_INFIX = ".interrupted"
#: Room kept on the checkpoint's disk beyond its weights (metrics, hold-out ids, the log).
SAVE_MARGIN_BYTES = 16 << 20


@dataclass(frozen=True)
class TrainingRequest:
    """Everything a training run is asked to do (see ``train.py --help`` for each option).

    The field names are ``train.py``'s option names: the metrics JSON records them all under
    ``options``, as the command line gave them.
    """

    data_dir: Path = Path("data") / outputs.MERGE_DIR_NAME
    viral_dir: str = outputs.VIRAL_MERGED_DIR_NAME
    test_fraction: float = 0.1
    split_by: str = "sequence"
    seed: int = 42
    epochs: int = 200
    batch_size: int = 32
    lr: float = 2e-4
    momentum: float = 0.9
    lr_step: int = 10
    lr_gamma: float = 0.85
    patience: int = 5
    hidden_dim: int = 512
    device: str = "auto"
    workers: int = 0
    chunk_size: int = 300
    out: Path | None = None            # None: {chunk_size}_model_fastesm650.pth in the current folder
    log: Path = Path(outputs.TRAINING_LOG_NAME)
    metrics_json: Path | None = None   # None: the checkpoint path with a .json suffix
    dna_model: str | None = None       # None: the name recorded in the merged files, else DNABERT-S
    esm_model: str | None = None       # None: the name recorded in the merged files, else FastESM2_650
    quiet: bool = False                # no progress bars
    verbose: bool = False              # debug logging was asked (the command layer's; recorded only)

    @property
    def checkpoint(self) -> Path:
        """The checkpoint to write: ``out``, else the default name for the chunk size."""
        return self.out if self.out is not None else Path(outputs.checkpoint_name(self.chunk_size))

    def recorded_options(self) -> dict[str, Any]:
        """The options as the metrics JSON records them (paths as text), sorted by name."""
        return {name: (str(value) if isinstance(value, Path) else value)
                for name, value in sorted((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))}


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


def output_paths(request: TrainingRequest, inputs: Sequence[Path] = ()) -> tuple[Path, Path]:
    """(checkpoint, metrics JSON), checked before any work against each other and the ``inputs``.

    Each output must be a file name in a writable folder (made if missing), no two the same
    file, none a training input, none a ``*.pt`` in a sub-folder of --data-dir (the next run
    would read it as training data); the log must be absent or a regular file.
    """
    from .files import file_identity, require_writable_dir

    out_path = request.checkpoint
    metrics_path = request.metrics_json if request.metrics_json is not None else out_path.with_suffix(".json")
    named = (("--out", out_path), ("--metrics-json", metrics_path), ("--log", request.log),
             ("the hold-out ids file", outputs.holdout_ids_path(out_path)))
    for what, path in named:
        if path.is_dir():
            raise InputError(f"{path}: is a directory ({what} needs a file name)")
    seen: dict[tuple, str] = {}
    for what, path in named:
        other = seen.setdefault(file_identity(path), what)
        if other != what:
            raise InputError(f"{path}: {what} and {other} name the same file; give them different names")
    input_keys = {file_identity(path) for path in inputs}
    data_dir = request.data_dir.resolve()
    for what, path in named:
        if file_identity(path) in input_keys:
            raise InputError(f"{path}: {what} is one of the training inputs (a merged feature file); "
                             "writing it would destroy the data")
        if path.suffix == ".pt" and path.resolve().parent.parent == data_dir:
            raise InputError(f"{path}: {what} is a *.pt file in a sub-folder of --data-dir, so the next run would "
                             "read it as training data; write it elsewhere")
    for what, path in named[:3]:
        require_writable_dir(path.parent, f"the folder of {what}")
    check_log_file(request.log)
    return out_path, metrics_path


def check_model_size(input_dim: int, hidden_dim: int, out_dir: Path) -> None:
    """InputError when the MLP would not fit in a checkpoint prediction.py loads, or on ``out_dir``'s disk.

    Checked before the model is built and trained, so a run never ends unable to save.
    """
    from .classifier import MAX_CHECKPOINT_BYTES, expected_weight_shapes

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


def resolve_model_names(request: TrainingRequest, data: TrainingData) -> tuple[str, str]:
    """The model names to record: the request's, else the names in the merged files, else the defaults."""
    chosen = []
    for flag, given, recorded, default in (("--dna-model", request.dna_model, data.dna_model, DNABERT_S_MODEL),
                                           ("--esm-model", request.esm_model, data.protein_model, FASTESM_MODEL)):
        if given is not None and recorded is not None and str(given) != recorded:
            log.warning("%s %s differs from the model recorded in the merged files (%s); recording %s",
                        flag, given, recorded, given)
        chosen.append(str(given if given is not None else recorded if recorded is not None else default))
    return chosen[0], chosen[1]


def describe_data(data: TrainingData, train_rows: np.ndarray, test_rows: np.ndarray, request: TrainingRequest,
                  device: torch.device) -> dict[str, Any]:
    """Log the sizes of the data and the split; returns them for the report."""
    from .training_data import VIRAL_LABEL, warn_imbalance

    n_rows = int(data.labels.shape[0])
    n_viral = int((data.labels == VIRAL_LABEL).sum())
    test_viral = int((data.labels[test_rows] == VIRAL_LABEL).sum())
    log.info("%d rows (%d viral, %d host) from %d files, %d features (DNA %d + protein %d)",
             n_rows, n_viral, n_rows - n_viral, len(data.files), data.input_dim, data.dna_dim, data.protein_dim)
    log.info("hold-out: %d rows (%d viral, %d host), split by %s; training: %d rows; device %s",
             len(test_rows), test_viral, len(test_rows) - test_viral, request.split_by, len(train_rows), device)
    warn_imbalance(n_viral, n_rows - n_viral)
    if test_viral in (0, len(test_rows)):
        log.warning("the hold-out holds only one class: AUROC is undefined (reported as nan)")
    return {"dir": str(request.data_dir), "files": len(data.files), "rows": n_rows, "viral_rows": n_viral,
            "train_rows": int(len(train_rows)), "test_rows": int(len(test_rows)), "test_viral_rows": test_viral}


def best_metrics(fitted: FitResult, request: TrainingRequest, n_train: int) -> dict[str, Any]:
    """The metrics recorded in the checkpoint: the best epoch's, and how the run went."""
    from .training import METRIC_NAMES

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
        "split_by": request.split_by,
        "test_fraction": float(request.test_fraction),
        "seed": int(request.seed),
    }


def write_report(path: Path, out_path: Path, metrics: dict[str, Any], data: TrainingData, names: tuple[str, str],
                 counts: dict[str, Any], fitted: FitResult, request: TrainingRequest) -> None:
    """The metrics JSON beside the checkpoint: best epoch, data, options, history."""
    from . import __version__
    from .files import atomic_write
    from .training import json_safe

    report = {
        "checkpoint": str(out_path),
        "virnucpro_version": __version__,
        "best": metrics,
        "input_dim": data.input_dim,
        "dna_model": names[0], "dna_dim": data.dna_dim,
        "protein_model": names[1], "protein_dim": data.protein_dim,
        "dna_model_revision": data.dna_model_revision, "protein_model_revision": data.protein_model_revision,
        "chunk_size": request.chunk_size,
        "data": counts,
        "options": request.recorded_options(),
        "history": fitted.history,
    }
    if data.ids is not None:
        report["holdout_ids"] = str(outputs.holdout_ids_path(out_path))
    with atomic_write(path) as handle:
        json.dump(json_safe(report), handle, indent=2)
        handle.write("\n")


def write_holdout_ids(out_path: Path, data: TrainingData, test_rows: np.ndarray) -> None:
    """The hold-out's row ids beside the checkpoint, so exactly it can be evaluated later (evaluate.py --ids)."""
    from .files import atomic_write

    if data.ids is None:
        return
    with atomic_write(outputs.holdout_ids_path(out_path)) as handle:
        handle.writelines(f"{data.ids[row]}\n" for row in sorted(test_rows.tolist()))


def run_training(request: TrainingRequest) -> int:
    """Load the data, split it, train, save the best epoch with its metrics; re-raise an interruption after saving."""
    from . import training, training_data
    from .classifier import MLPClassifier, save_checkpoint
    from .models import resolve_device

    progress = not request.quiet
    files = training_data.find_merged_files(request.data_dir, request.viral_dir)
    out_path, metrics_path = output_paths(request, [path for path, _ in files])
    device = resolve_device(request.device)

    training.seed_everything(request.seed)
    data = training_data.load_training_data(
        request.data_dir, request.viral_dir, need_ids=request.split_by == "sequence", progress=progress, files=files,
        check_width=lambda width: check_model_size(width, request.hidden_dim, out_path.parent))
    names = resolve_model_names(request, data)
    train_rows, test_rows = training_data.make_split(data, request.split_by, request.test_fraction, request.seed)
    counts = describe_data(data, train_rows, test_rows, request, device)

    training.seed_everything(request.seed)
    model = MLPClassifier(data.input_dim, request.hidden_dim, NUM_CLASS).to(device)
    loader = training.make_train_loader(data, train_rows, request.batch_size, request.seed, request.workers, device)
    schedule = training.Schedule(request.epochs, request.lr, request.momentum, request.lr_step, request.lr_gamma,
                                 request.patience)

    with open_log(request.log) as log_file:
        def write_line(message: str) -> None:
            log_file.write(message + "\n")
            log_file.flush()

        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_line(f"# {PROG} {started}: {counts['rows']} rows ({counts['viral_rows']} viral) from "
                   f"{request.data_dir}, input {data.input_dim}, hold-out {len(test_rows)} rows split by "
                   f"{request.split_by}, seed {request.seed}, lr {request.lr}, batch {request.batch_size}, "
                   f"device {device}")
        fitted = training.fit(model, data, loader, test_rows, schedule, device, write_line, progress)
        if fitted.interrupted is not None:  # a finished checkpoint at --out stays: the best epoch so far goes beside it
            out_path, metrics_path = interrupted_path(out_path), interrupted_path(metrics_path)
        metrics = best_metrics(fitted, request, len(train_rows))
        save_checkpoint(out_path, model, dna_model=names[0], dna_dim=data.dna_dim, protein_model=names[1],
                        protein_dim=data.protein_dim, chunk_size=request.chunk_size, metrics=metrics,
                        dna_model_revision=data.dna_model_revision,
                        protein_model_revision=data.protein_model_revision)
        write_holdout_ids(out_path, data, test_rows)
        write_report(metrics_path, out_path, metrics, data, names, counts, fitted, request)
        best = fitted.best
        write_line(f"Best epoch {best['epoch']}: Test Loss {best['loss']:.4f}, "
                   f"Test AUROC {best['auroc']:.4f}; saved to {out_path}")
    log.info("best epoch %d (hold-out loss %.4f, accuracy %.4f, AUROC %.4f) saved to %s; metrics in %s",
             best["epoch"], best["loss"], best["accuracy"], best["auroc"], out_path, metrics_path)
    if fitted.interrupted is not None:
        log.warning("the best epoch so far is in %s; %s is unchanged. Training does not resume: rerun the "
                    "same command to train again from epoch 1", out_path, request.checkpoint)
        raise fitted.interrupted
    return EXIT_OK


def open_log(path: Path) -> io.TextIOWrapper:
    """The training log opened for appending, never through a link (one line, exit 2, if it cannot be)."""
    from .files import TEXT_ENCODING, open_for_append

    try:
        return io.TextIOWrapper(open_for_append(path), encoding=TEXT_ENCODING, newline="\n")
    except OSError as exc:
        raise InputError(f"{path}: cannot append to --log ({exc.strerror or exc})") from None


def interrupted_path(path: Path) -> Path:
    """Where an interrupted run writes ``path`` (beside it: NAME.interrupted.SUFFIX)."""
    return path.with_name(f"{path.stem}{INTERRUPTED_INFIX}{path.suffix}")
