"""Training the classifier: seeding, batches, the epoch loop, hold-out metrics, early stopping.

The loop writes the original ``MLP_log.txt`` lines (``Epoch k/n, Loss: ...`` and the
``Test ...`` block) through a callback and keeps a copy of the weights of the epoch
with the lowest hold-out loss.  Two runs with the same data and seed on the CPU give
identical weights.
"""
from __future__ import annotations

import copy
import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler
from tqdm.auto import tqdm

from .training_data import VIRAL_LABEL, TrainingData

log = logging.getLogger("virnucpro.train")

EVAL_BATCH_ROWS = 4096
METRIC_NAMES = ("loss", "accuracy", "precision", "recall", "f1", "auroc")


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
    """Seed ``random``, numpy and torch (and CUDA when present)."""
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
    """Seeded shuffled batches of the training rows."""
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
    """One pass over the training batches; returns the mean batch loss."""
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


def metric_lines(metrics: dict[str, Any]) -> str:
    """The original's per-epoch ``Test ...`` block of MLP_log.txt."""
    return (f"Test Loss: {metrics['loss']:.4f}\n"
            f"Test Accuracy: {metrics['accuracy']:.4f}\n"
            f"Test Precision: {metrics['precision']:.4f}\n"
            f"Test Recall: {metrics['recall']:.4f}\n"
            f"Test F1 Score: {metrics['f1']:.4f}\n"
            f"Test AUROC: {metrics['auroc']:.4f}\n"
            f"Correct predictions: {metrics['correct']}/{metrics['n']}")


@dataclass
class FitResult:
    """What the epoch loop did; ``best`` is the history entry of the epoch whose weights the model holds."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    stopped_early: bool = False
    #: The KeyboardInterrupt (or cli.Terminated, SIGTERM) that stopped the loop, else None.
    interrupted: KeyboardInterrupt | None = None


@dataclass
class Schedule:
    """The optimiser settings of a run."""

    epochs: int
    lr: float
    momentum: float
    lr_step: int
    lr_gamma: float
    patience: int


def fit(model: nn.Module, data: TrainingData, loader: DataLoader, test_rows: np.ndarray, schedule: Schedule,
        device: torch.device, write_line: Callable[[str], None], progress: bool = True) -> FitResult:
    """SGD with a step schedule and early stopping; leaves the best epoch's weights in ``model``.

    A KeyboardInterrupt after the first epoch stops the loop with ``interrupted`` set.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=schedule.lr, momentum=schedule.momentum)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=schedule.lr_step, gamma=schedule.lr_gamma)
    stopper = EarlyStopping(schedule.patience)
    result = FitResult()
    try:
        for epoch in range(1, schedule.epochs + 1):
            train_loss = train_epoch(model, loader, optimizer, device, f"epoch {epoch}/{schedule.epochs}", progress)
            message = f"Epoch {epoch}/{schedule.epochs}, Loss: {train_loss:.4f}"
            write_line(message)
            metrics = evaluate(model, data.features, data.labels, test_rows, device)
            write_line(metric_lines(metrics))
            log.info("%s, hold-out loss %.4f, accuracy %.4f, F1 %.4f, AUROC %.4f", message, metrics["loss"],
                     metrics["accuracy"], metrics["f1"], metrics["auroc"])
            result.history.append({"epoch": epoch, "train_loss": train_loss,
                                   "lr": float(optimizer.param_groups[0]["lr"]), **metrics})
            if stopper.step(metrics["loss"], epoch, model):
                result.stopped_early = True
                write_line("Early stopping triggered")
                log.info("early stopping: no lower hold-out loss for %d epochs", schedule.patience)
                break
            scheduler.step()
    except KeyboardInterrupt as exc:
        if stopper.best_state is None:
            raise
        result.interrupted = exc
        log.warning("interrupted: saving the best epoch so far")
    assert stopper.best_state is not None and stopper.best_epoch is not None
    model.load_state_dict(stopper.best_state)
    result.best = result.history[stopper.best_epoch - 1]
    return result


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
