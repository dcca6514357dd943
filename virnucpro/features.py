"""The feature-file formats: the one reader, writer and validator of each (no model here).

- DNABERT-S: ``{'nucleotide': ids, 'data': tensor(N, 768), 'model', 'model_revision', 'model_loader'}``
  (the original list of ``{'label', 'mean_representation'}`` dicts is read too);
- protein: ``{'proteins': ids, 'data': tensor(N, D), 'model', 'model_revision', 'model_loader'}``
  (original lists too);
- merged: ``{'ids', 'data': tensor(N, dna_dim + protein_dim), 'dna_dim',
  'protein_dim', 'labels', 'dna_model_revision', 'protein_model_revision'}`` (plus the loaders,
  ``dna_model_loader``/``protein_model_loader``, and
  ``dna_model``/``protein_model`` when known); ``ids`` lists exactly the rows of
  ``data``.  :func:`save_merged` writes it and :func:`read_merged_file` reads and
  validates it.

``model_revision`` is the resolved revision of :mod:`virnucpro.provenance`; a feature
file is reused only for the same model at the same revision.  A merged file made from a
DNABERT-S file of the original pipeline (which records no model) says
``dna_model: zhihan1996/DNABERT-S`` and ``dna_model_revision:`` :data:`UNRECORDED_REVISION`.
``model_loader`` says how the weights were loaded (``remote``: the model's own code; ``native``:
transformers' own ESM): information only, as both give the same numbers.  Every file written
here records the version of this program (``virnucpro_version``) and :data:`CHECKSUM_KEY`, the
SHA-256 of its ids and float32 data (:func:`content_sha256`), checked whenever the file is read:
a file changed after it was written is refused as damaged.  Files without it (the original
pipeline's, older versions') cannot be checked and are read as they are.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from . import __version__
from .errors import FeatureFileError, first_line
from .files import atomic_torch_save
from .outputs import VERSION_KEY
from .provenance import LOADER_KEY, REVISION_KEYS

log = logging.getLogger("virnucpro")

MERGED_WHAT = "merged feature file"
#: The merged-file key of each part's model name.
MODEL_KEYS = {"dna": "dna_model", "protein": "protein_model"}
#: What a merged file may record about the models that made it (all files of a training set must agree).
MERGED_NAME_KEYS = (*MODEL_KEYS.values(), *REVISION_KEYS.values())
#: The id keys of the DNABERT-S and protein feature files (the original's).
DNA_IDS_KEY, PROTEIN_IDS_KEY = "nucleotide", "proteins"
DNA_WHAT, PROTEIN_WHAT = "DNABERT-S feature file", "protein feature file"
#: The key of every written file's content checksum (see :func:`content_sha256`).
CHECKSUM_KEY = "content_sha256"
#: What a file whose content no longer matches its checksum is called in messages.
DAMAGED = "damaged (checksum mismatch)"
#: The revision a merged file records for DNA features of the original pipeline (made by
#: zhihan1996/DNABERT-S at a revision nobody recorded).
UNRECORDED_REVISION = "unrecorded"


def load_feature_object(path: str | os.PathLike, what: str = "feature file", *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, or :class:`FeatureFileError` naming the file.

    With ``mmap`` the tensors are memory-mapped when the file format allows it.
    """
    path = Path(path)
    if not path.is_file():
        raise FeatureFileError(f"{path}: {what} not found")
    if mmap:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - old (non-zip) files cannot be memory-mapped; load them plainly
            pass
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not usable
        raise FeatureFileError(f"{path}: not a readable {what} ({type(exc).__name__}: "
                               f"{first_line(exc) if str(exc).strip() else ''})") from None


def _rows_to_tensor(path: Path, rows: Any, what: str) -> torch.Tensor:
    if isinstance(rows, torch.Tensor):
        data = rows.detach().to(torch.float32)
        if data.dim() != 2:
            raise FeatureFileError(f"{path}: {what} data must be 2-D, got shape {tuple(data.shape)}")
        return data
    vectors = []
    for row in rows:
        if isinstance(row, dict):
            row = row.get("mean_representation", row.get("mean_representations"))
            if isinstance(row, dict):  # fair-esm style {layer: tensor}
                row = next(iter(row.values()))
        vectors.append(torch.as_tensor(row, dtype=torch.float32).reshape(-1))
    if not vectors:
        return torch.empty((0, 0), dtype=torch.float32)
    widths = {v.numel() for v in vectors}
    if len(widths) != 1:
        raise FeatureFileError(f"{path}: {what} rows have different widths {sorted(widths)}")
    return torch.stack(vectors)


def load_features(source: str | os.PathLike | dict, id_key: str, what: str, *,
                  where: str | os.PathLike | None = None) -> tuple[list[str], torch.Tensor, dict]:
    """``(ids, float32 data, the whole object)`` of a DNABERT-S or protein feature file (or its dict).

    FeatureFileError naming the file (``where`` names a dict's file) when it is unreadable,
    malformed or damaged (its :data:`CHECKSUM_KEY`, when it records one, does not match its content).
    """
    path = Path(where if where is not None else "<memory>") if isinstance(source, dict) else Path(source)
    obj = source if isinstance(source, dict) else load_feature_object(path, what)
    if not isinstance(obj, dict) or id_key not in obj or "data" not in obj:
        raise FeatureFileError(f"{path}: not a {what} (expected keys '{id_key}' and 'data')")
    ids = [str(i) for i in obj[id_key]]
    data = _rows_to_tensor(path, obj["data"], what)
    if data.shape[0] != len(ids):
        raise FeatureFileError(f"{path}: {what} has {len(ids)} ids but {data.shape[0]} rows")
    if len(set(ids)) != len(ids):
        raise FeatureFileError(f"{path}: {what} has duplicate ids")
    check_content(path, obj, ids, data)
    return ids, data, obj


def load_dna_features(source: str | os.PathLike | dict) -> tuple[list[str], torch.Tensor]:
    """Read a DNABERT-S feature file (new tensor format or the original list of dicts)."""
    ids, data, _ = load_features(source, DNA_IDS_KEY, DNA_WHAT)
    return ids, data


def load_protein_features(source: str | os.PathLike | dict) -> tuple[list[str], torch.Tensor]:
    """Read a protein feature file (new tensor format or the original list of tensors)."""
    ids, data, _ = load_features(source, PROTEIN_IDS_KEY, PROTEIN_WHAT)
    return ids, data


def feature_object(id_key: str, ids: Sequence[str], data: torch.Tensor, *, model: str, revision: str | None,
                   loader: str) -> dict[str, Any]:
    """The dict of a DNABERT-S (``id_key`` ``nucleotide``) or protein (``proteins``) feature file."""
    return {id_key: list(ids), "data": data, "model": model, "model_revision": revision, LOADER_KEY: loader,
            VERSION_KEY: __version__, CHECKSUM_KEY: content_sha256(ids, data)}


# ---------------------------------------------------------------------------
# Content checksums
# ---------------------------------------------------------------------------


def content_sha256(ids: Sequence[str] | None, data: torch.Tensor) -> str:
    """SHA-256 over the ids (as JSON), the shape and the float32 bytes of ``data``."""
    digest = hashlib.sha256()
    digest.update(json.dumps([str(i) for i in ids] if ids is not None else None).encode("ascii"))
    matrix = data.detach().to(device="cpu", dtype=torch.float32).contiguous()
    digest.update(f"\n{tuple(matrix.shape)}\n".encode("ascii"))
    digest.update(matrix.reshape(-1).numpy().view("uint8"))
    return digest.hexdigest()


def check_content(path: str | os.PathLike, obj: dict, ids: Sequence[str] | None, data: torch.Tensor) -> bool:
    """True when ``obj`` records a checksum that matches ``ids`` and ``data``; False when it records none
    (it cannot be checked); FeatureFileError ``<path>: damaged (checksum mismatch)`` otherwise."""
    recorded = obj.get(CHECKSUM_KEY)
    if recorded is None:
        return False
    if recorded != content_sha256(ids, data):
        raise FeatureFileError(f"{path}: {DAMAGED}")
    return True


# ---------------------------------------------------------------------------
# The merged format
# ---------------------------------------------------------------------------


def merged_object(ids: list[str], data: torch.Tensor, dna_dim: int, protein_dim: int, *,
                  labels: list[int] | None = None, dna_model: str | None = None,
                  protein_model: str | None = None, revisions: dict[str, str] | None = None) -> dict[str, Any]:
    """The dict of a merged feature file (what :func:`save_merged` writes); ``revisions``: the models' revisions."""
    if data.dim() != 2 or data.shape[0] != len(ids) or (len(ids) and data.shape[1] != dna_dim + protein_dim):
        raise ValueError(f"merged data {tuple(data.shape)} does not fit {len(ids)} ids x "
                         f"({dna_dim} + {protein_dim})")
    merged: dict[str, Any] = {"ids": list(ids), "data": data, "dna_dim": int(dna_dim),
                              "protein_dim": int(protein_dim)}
    if labels is not None:
        merged["labels"] = list(labels)
    if dna_model is not None:
        merged["dna_model"] = str(dna_model)
    if protein_model is not None:
        merged["protein_model"] = str(protein_model)
    merged.update(revisions or {})
    merged[VERSION_KEY] = __version__
    merged[CHECKSUM_KEY] = content_sha256(merged["ids"], data)
    return merged


def save_merged(path: str | os.PathLike, ids: list[str], data: torch.Tensor, dna_dim: int, protein_dim: int,
                **optional: Any) -> dict[str, Any]:
    """Write a merged feature file atomically (``optional``: labels, dna_model, protein_model); returns it."""
    merged = merged_object(ids, data, dna_dim, protein_dim, **optional)
    atomic_torch_save(merged, path)
    return merged


@dataclass
class MergedFile:
    """A validated merged feature file; ``None`` for what the file does not record."""

    path: Path
    ids: list[str] | None
    data: torch.Tensor          # floating point (rows, width); memory-mapped when possible
    dna_dim: int | None
    protein_dim: int | None
    labels: list[int] | None    # [label] for the whole file, or one per row
    dna_model: str | None = None
    protein_model: str | None = None
    dna_model_revision: str | None = None
    protein_model_revision: str | None = None

    @property
    def rows(self) -> int:
        return int(self.data.shape[0])

    @property
    def width(self) -> int:
        return int(self.data.shape[1])


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
    if not data.is_floating_point():
        raise FeatureFileError(f"{path}: 'data' holds {data.dtype} values, expected floating point")
    return data


def _merged_dims(path: Path, obj: dict, rows: int, width: int) -> tuple[int | None, int | None]:
    if "dna_dim" not in obj and "protein_dim" not in obj:
        return None, None
    try:
        dims = (int(obj["dna_dim"]), int(obj["protein_dim"]))
    except (KeyError, TypeError, ValueError):
        raise FeatureFileError(f"{path}: 'dna_dim'/'protein_dim' missing or not integers") from None
    if rows and sum(dims) != width:
        raise FeatureFileError(f"{path}: dna_dim {dims[0]} + protein_dim {dims[1]} != feature width {width}")
    return dims


def _merged_labels(path: Path, labels: Any, rows: int) -> list[int] | None:
    if labels is None:
        return None
    if isinstance(labels, torch.Tensor):
        labels = labels.tolist()
    if not isinstance(labels, (list, tuple)) or not labels or len(labels) not in (1, rows):
        raise FeatureFileError(f"{path}: 'labels' must be [0] or [1] (or one label per row), got "
                               f"{str(labels)[:60]}")
    try:
        return [int(v) for v in labels]
    except (TypeError, ValueError):
        raise FeatureFileError(f"{path}: 'labels' must be integers, got {str(labels)[:60]}") from None


def read_merged_file(path: str | os.PathLike, *, mmap: bool = True) -> MergedFile:
    """Read and validate a merged feature file (data matrix, ids, widths, labels, its checksum when it
    records one), or FeatureFileError naming the file."""
    path = Path(path)
    obj = load_feature_object(path, MERGED_WHAT, mmap=mmap)
    if not isinstance(obj, dict) or "data" not in obj:
        raise FeatureFileError(f"{path}: not a merged feature file (a dict with 'ids' and 'data' expected)")
    data = _as_matrix(path, obj["data"])
    rows, width = int(data.shape[0]), int(data.shape[1])
    ids = obj.get("ids")
    if ids is not None:
        if not isinstance(ids, (list, tuple)) or len(ids) != rows:
            count = len(ids) if isinstance(ids, (list, tuple)) else type(ids).__name__
            raise FeatureFileError(f"{path}: 'ids' ({count}) does not list the {rows} rows of 'data'")
        ids = [str(i) for i in ids]
    dna_dim, protein_dim = _merged_dims(path, obj, rows, width)
    check_content(path, obj, ids, data)
    names = {key: (None if obj.get(key) is None else str(obj[key])) for key in MERGED_NAME_KEYS}
    return MergedFile(path, ids, data, dna_dim, protein_dim, _merged_labels(path, obj.get("labels"), rows),
                      **names)


def require_finite(path: str | os.PathLike, data: torch.Tensor) -> None:
    """FeatureFileError naming ``path`` when a row of ``data`` holds NaN or infinite values."""
    bad = int((~torch.isfinite(data)).any(dim=1).sum()) if data.numel() else 0
    if bad:
        raise FeatureFileError(f"{path}: {bad} row(s) hold NaN or infinite values; remake the file")
