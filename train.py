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
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import random
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler
from tqdm.auto import tqdm

from virnucpro import cli, outputs
from virnucpro.classifier import MLPClassifier, save_checkpoint
from virnucpro.defaults import DNABERT_S_MODEL, FASTESM_MODEL
from virnucpro.errors import FeatureFileError, InputError
from virnucpro.files import atomic_write
from virnucpro.models import resolve_device
from virnucpro.features import load_feature_object

log = logging.getLogger("virnucpro.train")

PROG = "train.py"
DEFAULT_DATA_DIR = Path("data") / "data_merge"
DEFAULT_VIRAL_DIR = "viral.1.1_merged"
DEFAULT_CHUNK_SIZE = 300
DEFAULT_OUT_TEMPLATE = "{chunk_size}_model_fastesm650.pth"
DEFAULT_LOG = Path("MLP_log.txt")
LEGACY_DNA_DIM = 768  # DNABERT-S; used only for merged files that do not record their widths
VIRAL_LABEL, HOST_LABEL = 1, 0
NUM_CLASS = 2
EVAL_BATCH_ROWS = 4096
SPLIT_CHOICES = ("sequence", "record")
CHUNK_TAG = "_chunk_"
FRAME_TAG = re.compile(r"[FR][1-3]$")
METRIC_NAMES = ("loss", "accuracy", "precision", "recall", "f1", "auroc")


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


positive_int = _number(int, lambda v: v > 0, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "a non-negative integer")
positive_float = _number(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
fraction = _number(float, lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)")


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
    data.add_argument("--seed", type=int, default=42,
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
# Loading the merged feature files
# ---------------------------------------------------------------------------


@dataclass
class TrainingData:
    """All rows of all merged files in one tensor, with what is known about them."""

    features: torch.Tensor          # float32 (N, D)
    labels: torch.Tensor            # int64 (N,)
    groups: np.ndarray              # int64 (N,): index of the source sequence of each row
    files: list[Path]
    dna_dim: int
    protein_dim: int
    dna_model: str | None = None
    protein_model: str | None = None
    dna_model_revision: str | None = None
    protein_model_revision: str | None = None
    has_ids: bool = True
    rows_per_file: list[int] = field(default_factory=list)
    ids: list[str] | None = None    # the row ids (None when a file records none)

    @property
    def input_dim(self) -> int:
        return int(self.features.shape[1])


def source_sequence_id(row_id: str) -> str:
    """The source sequence of a row id ``{seq}_chunk_{k}F1``: everything before the last ``_chunk_``.

    An id without ``_chunk_`` loses only its frame tag (``F1``..``R3``).
    """
    head, sep, _ = row_id.rpartition(CHUNK_TAG)
    if sep:
        return head
    return FRAME_TAG.sub("", row_id)


def find_merged_files(data_dir: Path, viral_dir: str) -> list[tuple[Path, int]]:
    """``(file, label)`` for every ``*.pt`` in the sub-folders: viral folder first, then the others, sorted."""
    if not data_dir.exists():
        raise InputError(f"{data_dir}: data directory not found (make it with features_extract.py, "
                               "or point --data-dir at the folder holding the *_merged sub-folders)")
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: not a directory")
    viral: list[Path] = []
    host: list[Path] = []
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.glob("*.pt") if p.is_file() and not p.name.startswith("."))
        (viral if folder.name == viral_dir else host).extend(files)
    loose = sorted(p.name for p in data_dir.glob("*.pt"))
    if loose:
        log.warning("%s: %d .pt file(s) directly in the data directory are ignored (only sub-folders are "
                    "read): %s", data_dir, len(loose), ", ".join(loose[:3]) + (" ..." if len(loose) > 3 else ""))
    if not viral and not host:
        raise FeatureFileError(f"{data_dir}: no merged feature files (*.pt) in its sub-folders; "
                                     "make them with features_extract.py")
    if not viral:
        raise FeatureFileError(f"{data_dir}: no viral data: no *.pt files in a '{viral_dir}' sub-folder "
                                     "(see --viral-dir)")
    if not host:
        raise FeatureFileError(f"{data_dir}: no host data: every *.pt file is in the viral folder "
                                     f"'{viral_dir}'; host files go in other sub-folders")
    return [(p, VIRAL_LABEL) for p in viral] + [(p, HOST_LABEL) for p in host]


def _as_matrix(path: Path, data: Any) -> torch.Tensor:
    if isinstance(data, (list, tuple)):
        if not data:
            return torch.empty(0, 0)
        if not all(isinstance(row, torch.Tensor) and row.dim() == 1 for row in data):
            raise FeatureFileError(f"{path}: 'data' is a list but not of 1-D tensors")
        try:
            data = torch.stack(list(data))
        except RuntimeError:
            raise FeatureFileError(f"{path}: rows of 'data' have different widths") from None
    if not isinstance(data, torch.Tensor) or data.dim() != 2:
        shape = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
        raise FeatureFileError(f"{path}: 'data' must be a 2-D tensor (rows x features), got {shape}")
    if not (data.is_floating_point()):
        raise FeatureFileError(f"{path}: 'data' holds {data.dtype} values, expected floating point")
    return data


def _check_labels(path: Path, labels: Any, expected: int, rows: int, viral_dir: str) -> None:
    if labels is None:
        return
    if isinstance(labels, torch.Tensor):
        labels = labels.tolist()
    if not isinstance(labels, (list, tuple)) or not labels or len(labels) not in (1, rows):
        raise FeatureFileError(f"{path}: 'labels' must be [0] or [1] (or one label per row), got "
                                     f"{str(labels)[:60]}")
    found = sorted({int(v) for v in labels})
    if found != [expected]:
        where = f"inside the viral folder '{viral_dir}'" if expected == VIRAL_LABEL else \
            f"outside the viral folder '{viral_dir}'"
        raise FeatureFileError(f"{path}: its 'labels' {found} disagree with its folder ({where}, so "
                                     f"label {expected}); move the file or check --viral-dir")


def load_training_data(data_dir: Path, viral_dir: str = DEFAULT_VIRAL_DIR, *, need_ids: bool = True,
                       progress: bool = True) -> TrainingData:
    """Read and validate every merged file into one float32 tensor (rows of all files, in order)."""
    files = find_merged_files(data_dir, viral_dir)
    blocks: list[tuple[Path, int, torch.Tensor]] = []
    width: int | None = None
    width_file: Path | None = None
    dims: tuple[int, int] | None = None
    dims_file: Path | None = None
    names: dict[str, tuple[str, Path]] = {}
    group_index: dict[str, int] = {}
    groups: list[np.ndarray] = []
    has_ids = True
    row_ids: list[str] = []
    for path, label in tqdm(files, desc="reading features", unit="file", disable=not progress):
        obj = load_feature_object(path, "merged feature file", mmap=True)
        if not isinstance(obj, dict) or "data" not in obj:
            raise FeatureFileError(f"{path}: not a merged feature file (a dict with 'ids' and 'data' "
                                         "expected)")
        data = _as_matrix(path, obj["data"])
        rows = int(data.shape[0])
        ids = obj.get("ids")
        if ids is not None and (not isinstance(ids, (list, tuple)) or len(ids) != rows):
            count = len(ids) if isinstance(ids, (list, tuple)) else type(ids).__name__
            raise FeatureFileError(f"{path}: 'ids' ({count}) does not list the {rows} rows of 'data'")
        if ids is None:
            if need_ids:
                raise FeatureFileError(f"{path}: no 'ids', so rows cannot be grouped by source "
                                             "sequence; use --split-by record")
            has_ids = False
        _check_labels(path, obj.get("labels"), label, rows, viral_dir)
        if rows == 0:
            log.warning("%s: holds no rows; skipped", path)
            continue
        if width is None:
            width, width_file = int(data.shape[1]), path
        elif data.shape[1] != width:
            raise FeatureFileError(
                f"{path}: feature width {data.shape[1]} differs from {width} in {width_file}; all merged "
                "files must be made with the same DNA and protein models")
        if "dna_dim" in obj or "protein_dim" in obj:
            try:
                file_dims = (int(obj["dna_dim"]), int(obj["protein_dim"]))
            except (KeyError, TypeError, ValueError):
                raise FeatureFileError(f"{path}: 'dna_dim'/'protein_dim' missing or not integers") from None
            if sum(file_dims) != width:
                raise FeatureFileError(f"{path}: dna_dim {file_dims[0]} + protein_dim {file_dims[1]} "
                                             f"!= feature width {width}")
            if dims is None:
                dims, dims_file = file_dims, path
            elif file_dims != dims:
                raise FeatureFileError(f"{path}: dna_dim/protein_dim {file_dims} differ from {dims} in "
                                             f"{dims_file}")
        for key in ("dna_model", "protein_model", "dna_model_revision", "protein_model_revision"):
            value = obj.get(key)
            if value is None:
                continue
            if key in names and names[key][0] != str(value):
                raise FeatureFileError(f"{path}: made with {key} '{value}' but {names[key][1]} with "
                                             f"'{names[key][0]}'; features of different models cannot be mixed")
            names.setdefault(key, (str(value), path))
        if ids is not None:
            keys = [group_index.setdefault(source_sequence_id(str(i)), len(group_index)) for i in ids]
        else:
            start = len(group_index) + sum(len(g) for g in groups)
            keys = range(start, start + rows)  # each row its own group (only used with --split-by record)
        groups.append(np.fromiter(keys, dtype=np.int64, count=rows))
        blocks.append((path, label, data))
        if has_ids:
            row_ids.extend(str(i) for i in ids)
    if not blocks:
        raise FeatureFileError(f"{data_dir}: the merged feature files hold no rows")
    labels_present = {label for _, label, _ in blocks}
    if VIRAL_LABEL not in labels_present:
        raise FeatureFileError(f"{data_dir}: no viral rows (the files in '{viral_dir}' are empty)")
    if HOST_LABEL not in labels_present:
        raise FeatureFileError(f"{data_dir}: no host rows (the host files are empty)")
    assert width is not None
    if dims is None:
        if width <= LEGACY_DNA_DIM:
            raise FeatureFileError(f"{width_file}: feature width {width} is too small for DNABERT-S "
                                         f"({LEGACY_DNA_DIM}) + protein features, and the files do not "
                                         "record dna_dim/protein_dim")
        dims = (LEGACY_DNA_DIM, width - LEGACY_DNA_DIM)
        log.warning("the merged files do not record dna_dim/protein_dim; assuming DNABERT-S %d + protein %d",
                    dims[0], dims[1])

    total = sum(int(data.shape[0]) for _, _, data in blocks)
    features = torch.empty(total, width, dtype=torch.float32)
    labels = torch.empty(total, dtype=torch.int64)
    start = 0
    for path, label, data in blocks:
        stop = start + int(data.shape[0])
        features[start:stop].copy_(data)
        bad = int((~torch.isfinite(features[start:stop])).any(dim=1).sum())
        if bad:
            raise FeatureFileError(f"{path}: {bad} row(s) hold NaN or infinite values; remake the file")
        labels[start:stop] = label
        start = stop
    # Group ids count up in order of first appearance, which is deterministic for a given set of files.
    return TrainingData(features=features, labels=labels, groups=np.concatenate(groups),
                        files=[p for p, _, _ in blocks], dna_dim=dims[0], protein_dim=dims[1],
                        dna_model=names.get("dna_model", (None,))[0],
                        protein_model=names.get("protein_model", (None,))[0],
                        dna_model_revision=names.get("dna_model_revision", (None,))[0],
                        protein_model_revision=names.get("protein_model_revision", (None,))[0],
                        has_ids=has_ids, rows_per_file=[int(d.shape[0]) for _, _, d in blocks],
                        ids=row_ids if has_ids else None)


# ---------------------------------------------------------------------------
# Hold-out split
# ---------------------------------------------------------------------------


def split_records(n_rows: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The original split: shuffle row indices with ``random`` seeded by ``seed``, hold out the first share."""
    indices = list(range(n_rows))
    random.Random(seed).shuffle(indices)
    n_test = int(n_rows * test_fraction)
    test, train = np.array(indices[:n_test], dtype=np.int64), np.array(indices[n_test:], dtype=np.int64)
    return np.sort(train), np.sort(test)


def split_groups(groups: Sequence[Hashable] | np.ndarray, labels: Sequence[int] | np.ndarray,
                 test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole groups (source sequences), about ``test_fraction`` of the rows of each class.

    Groups of each class are shuffled (seeded) and taken until the class's share of rows
    is reached; a class keeps at least one group in training.  Returns sorted
    ``(train_rows, test_rows)``; no group has rows on both sides.
    """
    labels = np.asarray(labels)
    if len(labels) != len(groups):
        raise ValueError("groups and labels must have the same length")
    keys, first, inverse = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    sizes = np.bincount(inverse, minlength=len(keys))
    group_label = labels[first]
    rng = random.Random(seed)
    test_groups: list[int] = []
    for label in sorted(set(group_label.tolist())):
        members = np.flatnonzero(group_label == label).tolist()
        target = max(1, int(sizes[members].sum() * test_fraction))
        rng.shuffle(members)
        taken = 0
        for count, group in enumerate(members):
            if taken >= target or count == len(members) - 1:
                break  # enough rows, or only one group of this class left: it stays in training
            test_groups.append(group)
            taken += int(sizes[group])
    is_test = np.zeros(len(keys), dtype=bool)
    is_test[test_groups] = True
    row_is_test = is_test[inverse]
    return np.flatnonzero(~row_is_test), np.flatnonzero(row_is_test)


def make_split(data: TrainingData, split_by: str, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n_rows = int(data.labels.shape[0])
    if split_by == "record":
        train, test = split_records(n_rows, test_fraction, seed)
    else:
        train, test = split_groups(data.groups, data.labels.numpy(), test_fraction, seed)
    if len(test) == 0:
        raise InputError(f"the hold-out is empty ({n_rows} rows, --test-fraction {test_fraction}, "
                               f"--split-by {split_by}); add data or raise --test-fraction")
    if len(train) < 2:
        raise InputError(f"only {len(train)} training row(s) left after the hold-out; add data or "
                               "lower --test-fraction")
    return train, test


# ---------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------


class RowBatches(Dataset):
    """Fetch whole batches by vectorised indexing (the sampler yields lists of positions)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, rows: np.ndarray):
        self.features = features
        self.labels = labels
        self.rows = torch.as_tensor(rows, dtype=torch.int64)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __getitem__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows[torch.as_tensor(positions, dtype=torch.int64)]
        return self.features[rows], self.labels[rows]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _seed_worker(worker_id: int) -> None:
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def make_train_loader(data: TrainingData, rows: np.ndarray, batch_size: int, seed: int, workers: int,
                      device: torch.device) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    # A last batch of one row would break BatchNorm in training mode: drop it in that case only.
    drop_last = len(rows) % batch_size == 1
    sampler = BatchSampler(RandomSampler(range(len(rows)), generator=generator), batch_size, drop_last)
    return DataLoader(RowBatches(data.features, data.labels, rows), batch_size=None, sampler=sampler,
                      num_workers=workers, pin_memory=device.type == "cuda", worker_init_fn=_seed_worker,
                      generator=generator, persistent_workers=workers > 0)


def compute_metrics(labels: np.ndarray, predictions: np.ndarray, virus_scores: np.ndarray,
                    loss: float) -> dict[str, Any]:
    """Hold-out metrics; AUROC is NaN when the hold-out holds only one class."""
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    if len(np.unique(labels)) >= 2:
        auroc = float(roc_auc_score(labels, virus_scores))
    else:
        auroc = float("nan")
    return {
        "loss": float(loss),
        "accuracy": float(accuracy_score(labels, predictions)),
        "precision": float(precision_score(labels, predictions, average="binary", zero_division=0)),
        "recall": float(recall_score(labels, predictions, average="binary", zero_division=0)),
        "f1": float(f1_score(labels, predictions, average="binary", zero_division=0)),
        "auroc": auroc,
        "correct": int((labels == predictions).sum()),
        "n": int(len(labels)),
    }


def evaluate(model: nn.Module, features: torch.Tensor, labels: torch.Tensor, rows: np.ndarray,
             device: torch.device) -> dict[str, Any]:
    """Loss (mean over rows) and metrics of ``model`` on the given rows, in eval mode."""
    model.eval()
    rows_t = torch.as_tensor(rows, dtype=torch.int64)
    total_loss = 0.0
    predictions, scores = [], []
    with torch.no_grad():
        for start in range(0, len(rows_t), EVAL_BATCH_ROWS):
            batch_rows = rows_t[start:start + EVAL_BATCH_ROWS]
            x = features[batch_rows].to(device)
            y = labels[batch_rows].to(device)
            logits = model(x).float()
            total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
            predictions.append(logits.argmax(dim=1).cpu())
            scores.append(F.softmax(logits, dim=1)[:, VIRAL_LABEL].cpu())
    y_true = labels[rows_t].numpy()
    return compute_metrics(y_true, torch.cat(predictions).numpy(), torch.cat(scores).numpy(),
                           total_loss / max(1, len(rows_t)))


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, device: torch.device,
                desc: str, progress: bool) -> float:
    model.train()
    criterion = nn.CrossEntropyLoss()
    running, batches = 0.0, 0
    for x, y in tqdm(loader, total=len(loader), desc=desc, unit="batch", leave=False, disable=not progress):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        running += float(loss.detach())
        batches += 1
    return running / max(1, batches)


class EarlyStopping:
    """Track the lowest hold-out loss and keep a COPY of the weights of that epoch."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best_loss = math.inf
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0

    def step(self, loss: float, epoch: int, model: nn.Module) -> bool:
        """Record an epoch; True when training should stop."""
        if self.best_epoch is None or (not math.isnan(loss) and loss < self.best_loss):
            self.best_loss = loss if not math.isnan(loss) else math.inf
            self.best_epoch = epoch
            self.best_state = copy.deepcopy(model.state_dict())
            self.bad_epochs = 0
            return False
        self.bad_epochs += 1
        return self.patience > 0 and self.bad_epochs >= self.patience


def _log_line(handle, message: str) -> None:
    handle.write(message + "\n")
    handle.flush()


def _metric_lines(metrics: dict[str, Any]) -> str:
    return (f"Test Loss: {metrics['loss']:.4f}\n"
            f"Test Accuracy: {metrics['accuracy']:.4f}\n"
            f"Test Precision: {metrics['precision']:.4f}\n"
            f"Test Recall: {metrics['recall']:.4f}\n"
            f"Test F1 Score: {metrics['f1']:.4f}\n"
            f"Test AUROC: {metrics['auroc']:.4f}\n"
            f"Correct predictions: {metrics['correct']}/{metrics['n']}")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def resolve_model_names(args: argparse.Namespace, data: TrainingData) -> tuple[str, str]:
    chosen = []
    for flag, given, recorded, default in (("--dna-model", args.dna_model, data.dna_model, DNABERT_S_MODEL),
                                           ("--esm-model", args.esm_model, data.protein_model, FASTESM_MODEL)):
        if given is not None and recorded is not None and str(given) != recorded:
            log.warning("%s %s differs from the model recorded in the merged files (%s); recording %s",
                        flag, given, recorded, given)
        chosen.append(str(given if given is not None else recorded if recorded is not None else default))
    return chosen[0], chosen[1]


def run(args: argparse.Namespace) -> int:
    progress = not args.quiet
    out_path: Path = args.out if args.out is not None else Path(DEFAULT_OUT_TEMPLATE.format(chunk_size=args.chunk_size))
    metrics_path: Path = args.metrics_json if args.metrics_json is not None else out_path.with_suffix(".json")
    for path, what in ((out_path, "--out"), (metrics_path, "--metrics-json"), (args.log, "--log")):
        if path.is_dir():
            raise InputError(f"{path}: is a directory ({what} needs a file name)")
    if out_path.resolve() == metrics_path.resolve():
        raise InputError(f"{out_path}: --metrics-json must differ from the checkpoint path")
    device = resolve_device(args.device)

    seed_everything(args.seed)
    data = load_training_data(args.data_dir, args.viral_dir, need_ids=args.split_by == "sequence",
                              progress=progress)
    dna_model, protein_model = resolve_model_names(args, data)
    train_rows, test_rows = make_split(data, args.split_by, args.test_fraction, args.seed)
    n_viral = int((data.labels == VIRAL_LABEL).sum())
    n_rows = int(data.labels.shape[0])
    test_viral = int((data.labels[torch.as_tensor(test_rows)] == VIRAL_LABEL).sum())
    log.info("%d rows (%d viral, %d host) from %d files, %d features (DNA %d + protein %d)",
             n_rows, n_viral, n_rows - n_viral, len(data.files), data.input_dim, data.dna_dim, data.protein_dim)
    log.info("hold-out: %d rows (%d viral, %d host), split by %s; training: %d rows; device %s",
             len(test_rows), test_viral, len(test_rows) - test_viral, args.split_by, len(train_rows), device)
    if test_viral in (0, len(test_rows)):
        log.warning("the hold-out holds only one class: AUROC is undefined (reported as nan)")

    seed_everything(args.seed)
    model = MLPClassifier(data.input_dim, args.hidden_dim, NUM_CLASS).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step, gamma=args.lr_gamma)
    loader = make_train_loader(data, train_rows, args.batch_size, args.seed, args.workers, device)
    stopper = EarlyStopping(args.patience)
    history: list[dict[str, Any]] = []
    stopped_early = interrupted = False

    args.log.parent.mkdir(parents=True, exist_ok=True)
    with open(args.log, "a", encoding="utf-8") as log_file:
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        _log_line(log_file, f"# {PROG} {started}: {n_rows} rows ({n_viral} viral) from {args.data_dir}, "
                            f"input {data.input_dim}, hold-out {len(test_rows)} rows split by {args.split_by}, "
                            f"seed {args.seed}, lr {args.lr}, batch {args.batch_size}, device {device}")
        try:
            for epoch in range(1, args.epochs + 1):
                train_loss = train_epoch(model, loader, optimizer, device, f"epoch {epoch}/{args.epochs}", progress)
                message = f"Epoch {epoch}/{args.epochs}, Loss: {train_loss:.4f}"
                _log_line(log_file, message)
                metrics = evaluate(model, data.features, data.labels, test_rows, device)
                _log_line(log_file, _metric_lines(metrics))
                log.info("%s, hold-out loss %.4f, accuracy %.4f, F1 %.4f, AUROC %.4f", message, metrics["loss"],
                         metrics["accuracy"], metrics["f1"], metrics["auroc"])
                history.append({"epoch": epoch, "train_loss": train_loss,
                                "lr": float(optimizer.param_groups[0]["lr"]), **metrics})
                if stopper.step(metrics["loss"], epoch, model):
                    stopped_early = True
                    _log_line(log_file, "Early stopping triggered")
                    log.info("early stopping: no lower hold-out loss for %d epochs", args.patience)
                    break
                scheduler.step()
        except KeyboardInterrupt:
            if stopper.best_state is None:
                raise
            interrupted = True
            log.warning("interrupted: saving the best epoch so far")

        assert stopper.best_state is not None and stopper.best_epoch is not None
        model.load_state_dict(stopper.best_state)
        best = history[stopper.best_epoch - 1]
        metrics = {
            "epoch": best["epoch"],
            **{name: best[name] for name in METRIC_NAMES},
            "correct": best["correct"],
            "n_test": best["n"],
            "train_loss": best["train_loss"],
            "n_train": int(len(train_rows)),
            "epochs_run": len(history),
            "stopped_early": stopped_early,
            "interrupted": interrupted,
            "split_by": args.split_by,
            "test_fraction": float(args.test_fraction),
            "seed": int(args.seed),
        }
        save_checkpoint(out_path, model, dna_model=dna_model, dna_dim=data.dna_dim,
                              protein_model=protein_model, protein_dim=data.protein_dim,
                              chunk_size=args.chunk_size, metrics=metrics,
                              dna_model_revision=data.dna_model_revision,
                              protein_model_revision=data.protein_model_revision)
        report = {
            "checkpoint": str(out_path),
            "best": metrics,
            "input_dim": data.input_dim,
            "dna_model": dna_model, "dna_dim": data.dna_dim,
            "protein_model": protein_model, "protein_dim": data.protein_dim,
            "dna_model_revision": data.dna_model_revision, "protein_model_revision": data.protein_model_revision,
            "chunk_size": args.chunk_size,
            "data": {"dir": str(args.data_dir), "files": len(data.files), "rows": n_rows, "viral_rows": n_viral,
                     "train_rows": int(len(train_rows)), "test_rows": int(len(test_rows)),
                     "test_viral_rows": test_viral},
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())},
            "history": history,
        }
        if data.ids is not None:  # so that exactly this hold-out can be evaluated later (evaluate.py --ids)
            report["holdout_ids"] = str(outputs.holdout_ids_path(out_path))
            with atomic_write(outputs.holdout_ids_path(out_path)) as handle:
                handle.writelines(f"{data.ids[row]}\n" for row in sorted(test_rows.tolist()))
        with atomic_write(metrics_path) as handle:
            json.dump(_json_safe(report), handle, indent=2)
            handle.write("\n")
        _log_line(log_file, f"Best epoch {best['epoch']}: Test Loss {best['loss']:.4f}, "
                            f"Test AUROC {best['auroc']:.4f}; saved to {out_path}")
    log.info("best epoch %d (hold-out loss %.4f, accuracy %.4f, AUROC %.4f) saved to %s; metrics in %s",
             best["epoch"], best["loss"], best["accuracy"], best["auroc"], out_path, metrics_path)
    if interrupted:
        raise KeyboardInterrupt
    return cli.EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see --help)."""
    return cli.script_main(PROG, build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
