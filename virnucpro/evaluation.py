"""Scoring classifiers against known labels: frame, chunk and sequence tables, metrics, agreement, plots.

A *level table* is a DataFrame with one row per frame, chunk or sequence and the columns
``label`` (1 viral, 0 host), ``id``, ``score`` (the virus score, higher = more viral) and
``predicted`` (the call).  Frames are called as ``prediction_results.txt`` does (virus
when its score beats the other class); chunks and sequences roll up as prediction does:
a chunk is viral when its highest virus score >= its highest other score (its score is
``(1 + max virus - max other) / 2``, so the call is ``score >= 0.5``), a sequence when
at least half of its scored chunks are (its score is that fraction).
"""
from __future__ import annotations

import json
import logging
import math
from itertools import combinations
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import ids as idfmt
from .defaults import VIRUS_CLASS
from .files import atomic_write
from .outputs import (AGREEMENT_TSV_NAME, EVALUATION_JSON_NAME, EVALUATION_TSV_NAME, PR_FIGURE_NAME,
                      RESULTS_COLUMNS, ROC_FIGURE_NAME)
from .rundir import RunDir

log = logging.getLogger("virnucpro.evaluate")

LEVELS = ("frame", "chunk", "sequence")
METRIC_COLUMNS = ("model", "level", "n", "n_viral", "n_host", "unscored", "accuracy", "precision", "recall",
                  "f1", "mcc", "auroc", "auprc", "tn", "fp", "fn", "tp")
AGREEMENT_COLUMNS = ("model_a", "model_b", "level", "n_common", "agreement", "cohen_kappa", "both_virus",
                     "only_a_virus", "only_b_virus", "both_others")


def frame_table(frame_ids: Sequence[str], labels: Sequence[int] | np.ndarray, virus: np.ndarray,
                others: np.ndarray) -> pd.DataFrame:
    """The frame-level table from per-frame labels and class probabilities."""
    virus = np.asarray(virus, dtype=np.float32)
    others = np.asarray(others, dtype=np.float32)
    return pd.DataFrame({"label": np.asarray(labels, dtype=np.int64), "id": [str(i) for i in frame_ids],
                         "virus": virus, "others": others, "score": virus.astype(np.float64),
                         "predicted": (virus > others).astype(np.int64)})


def chunk_table(frames: pd.DataFrame) -> pd.DataFrame:
    """Frames rolled up to chunks (the consensus rule of prediction_results_highestscore.csv)."""
    chunks = frames.assign(id=[idfmt.chunk_of_frame(i) for i in frames["id"]])
    best = chunks.groupby(["label", "id"], sort=False)[["virus", "others"]].max().reset_index()
    best["predicted"] = (best["virus"] >= best["others"]).astype(np.int64)
    best["score"] = (1.0 + best["virus"].astype(np.float64) - best["others"].astype(np.float64)) / 2.0
    return best


def sequence_table(chunks: pd.DataFrame) -> pd.DataFrame:
    """Chunks rolled up to input sequences (the call of prediction_summary.tsv)."""
    sequences = chunks.assign(id=[idfmt.source_sequence_id(i) for i in chunks["id"]])
    grouped = sequences.groupby(["label", "id"], sort=False)["predicted"]
    table = pd.DataFrame({"viral": grouped.sum(), "scored": grouped.count()}).reset_index()
    table["score"] = table["viral"] / table["scored"]
    table["predicted"] = (table["score"] >= 0.5).astype(np.int64)
    return table


def level_tables(frames: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Frame, chunk and sequence tables; only the frame level when the ids are not frame ids."""
    if len(frames) == 0 or not all(idfmt.parse_frame_id(i) for i in frames["id"]):
        return {"frame": frames}
    chunks = chunk_table(frames)
    return {"frame": frames, "chunk": chunks, "sequence": sequence_table(chunks)}


def read_prediction_frames(outdir: Path, labels: dict[str, int]) -> pd.DataFrame:
    """The frame table of a prediction OUTDIR, labelled by input record id."""
    path = RunDir(outdir).results
    other_col, virus_col = RESULTS_COLUMNS[2], RESULTS_COLUMNS[2 + VIRUS_CLASS]
    results = pd.read_csv(path, sep="\t", dtype={RESULTS_COLUMNS[0]: str, other_col: np.float32,
                                                 virus_col: np.float32}, keep_default_na=False)
    frame_ids = results[RESULTS_COLUMNS[0]].tolist()
    frame_labels = [labels[idfmt.source_sequence_id(i)] for i in frame_ids]
    return frame_table(frame_ids, frame_labels, results[virus_col].to_numpy(), results[other_col].to_numpy())


def _nan_if_single_class(function, labels: np.ndarray, scores: np.ndarray) -> float:
    if len(np.unique(labels)) < 2:
        return math.nan
    return float(function(labels, scores))


def compute_metrics(table: pd.DataFrame) -> dict[str, Any]:
    """Accuracy, precision, recall, F1, MCC, AUROC, AUPRC and the confusion matrix of one level table.

    Viral is the positive class; AUROC and AUPRC are NaN when only one class is present.
    """
    from sklearn.metrics import (accuracy_score, average_precision_score, confusion_matrix, f1_score,
                                 matthews_corrcoef, precision_score, recall_score, roc_auc_score)

    y = table["label"].to_numpy()
    predicted = table["predicted"].to_numpy()
    scores = table["score"].to_numpy()
    n_viral = int(y.sum())
    if len(y) == 0:
        return {"n": 0, "n_viral": 0, "n_host": 0, **{k: math.nan for k in METRIC_COLUMNS[6:13]},
                "tn": 0, "fp": 0, "fn": 0, "tp": 0}
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, predicted, labels=[0, 1]).ravel())
    return {
        "n": int(len(y)), "n_viral": n_viral, "n_host": int(len(y)) - n_viral,
        "accuracy": float(accuracy_score(y, predicted)),
        "precision": float(precision_score(y, predicted, zero_division=0)),
        "recall": float(recall_score(y, predicted, zero_division=0)),
        "f1": float(f1_score(y, predicted, zero_division=0)),
        "mcc": float(matthews_corrcoef(y, predicted)),
        "auroc": _nan_if_single_class(roc_auc_score, y, scores),
        "auprc": _nan_if_single_class(average_precision_score, y, scores),
        "tn": tn, "fp": fp, "fn": fn, "tp": tp,
    }


def compute_agreement(name_a: str, table_a: pd.DataFrame, name_b: str, table_b: pd.DataFrame,
                      level: str) -> dict[str, Any]:
    """How often two models make the same call on the items both scored."""
    from sklearn.metrics import cohen_kappa_score

    both = table_a[["label", "id", "predicted"]].merge(table_b[["label", "id", "predicted"]],
                                                       on=["label", "id"], suffixes=("_a", "_b"))
    a, b = both["predicted_a"].to_numpy(), both["predicted_b"].to_numpy()
    n = int(len(both))
    kappa = float(cohen_kappa_score(a, b)) if n and len(np.unique(np.concatenate([a, b]))) > 1 else math.nan
    return {"model_a": name_a, "model_b": name_b, "level": level, "n_common": n,
            "agreement": float((a == b).mean()) if n else math.nan, "cohen_kappa": kappa,
            "both_virus": int(((a == 1) & (b == 1)).sum()), "only_a_virus": int(((a == 1) & (b == 0)).sum()),
            "only_b_virus": int(((a == 0) & (b == 1)).sum()), "both_others": int(((a == 0) & (b == 0)).sum())}


def evaluate_models(tables: dict[str, dict[str, pd.DataFrame]],
                    expected: dict[str, int] | None = None) -> tuple[list[dict], list[dict]]:
    """Metric rows per model and level, and agreement rows per pair of models and level.

    ``expected`` (label -> count of input sequences) gives the ``unscored`` column: input
    sequences without any scored frame, left out of the sequence level.
    """
    metric_rows = []
    for model, levels in tables.items():
        for level, table in levels.items():
            unscored = 0
            if level == "sequence" and expected is not None:
                unscored = sum(expected.values()) - len(table)
            metric_rows.append({"model": model, "level": level, "unscored": unscored, **compute_metrics(table)})
    agreement_rows = []
    for name_a, name_b in combinations(tables, 2):
        for level in LEVELS:
            if level in tables[name_a] and level in tables[name_b]:
                agreement_rows.append(compute_agreement(name_a, tables[name_a][level], name_b,
                                                        tables[name_b][level], level))
    return metric_rows, agreement_rows


def _tsv_value(value: Any) -> str:
    if isinstance(value, float):
        return "NA" if math.isnan(value) else f"{value:.6f}"
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


def write_tsv(path: Path, columns: Sequence[str], rows: list[dict]) -> None:
    """A tab-separated table (NaN written as NA), atomically."""
    with atomic_write(path) as out:
        out.write("\t".join(columns) + "\n")
        for row in rows:
            out.write("\t".join(_tsv_value(row[c]) for c in columns) + "\n")


def write_report(outdir: Path, metric_rows: list[dict], agreement_rows: list[dict], info: dict) -> None:
    """evaluation.tsv, agreement.tsv and evaluation.json (NaN as null) in ``outdir``."""
    write_tsv(outdir / EVALUATION_TSV_NAME, METRIC_COLUMNS, metric_rows)
    write_tsv(outdir / AGREEMENT_TSV_NAME, AGREEMENT_COLUMNS, agreement_rows)
    with atomic_write(outdir / EVALUATION_JSON_NAME) as out:
        json.dump(_json_value({**info, "metrics": metric_rows, "agreement": agreement_rows}), out, indent=2)
        out.write("\n")


def plot_curves(tables: dict[str, dict[str, pd.DataFrame]], outdir: Path) -> list[Path]:
    """ROC and precision-recall curves of every model, one panel per level, as PNG files."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    levels = [level for level in LEVELS if any(level in t for t in tables.values())]
    written = []
    for name, title in ((ROC_FIGURE_NAME, "ROC"), (PR_FIGURE_NAME, "precision-recall")):
        figure, axes = plt.subplots(1, len(levels), figsize=(4.5 * len(levels), 4.2), squeeze=False)
        for axis, level in zip(axes[0], levels):
            for model, model_tables in tables.items():
                table = model_tables.get(level)
                if table is None or table["label"].nunique() < 2:
                    continue
                y, s = table["label"].to_numpy(), table["score"].to_numpy()
                if title == "ROC":
                    x_values, y_values, _ = roc_curve(y, s)
                else:
                    y_values, x_values, _ = precision_recall_curve(y, s)
                axis.plot(x_values, y_values, label=model)
            axis.set_title(f"{title}: {level}")
            axis.set_xlabel("false positive rate" if title == "ROC" else "recall")
            axis.set_ylabel("true positive rate" if title == "ROC" else "precision")
            axis.set_xlim(0, 1)
            axis.set_ylim(0, 1.02)
            if axis.get_legend_handles_labels()[0]:
                axis.legend(loc="lower right" if title == "ROC" else "lower left", fontsize="small")
        figure.tight_layout()
        with atomic_write(outdir / name, "wb") as out:
            figure.savefig(out, format="png", dpi=100)
        plt.close(figure)
        written.append(outdir / name)
    return written
