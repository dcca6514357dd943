"""The feature-file formats: the one reader, writer and validator of each.

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
file is reused only for the same model at the same revision.  ``model_loader`` says how the
weights were loaded (``remote``: the model's own code; ``native``: transformers' own ESM):
information only, as both give the same numbers.  Every file written here
records the version of this program (``virnucpro_version``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .defaults import DEFAULT_BATCH_TOKENS, DNABERT_S_MODEL, FASTESM_MODEL, TRUNCATION_SEQ_LENGTH
from .embed import embed_dna, embed_proteins
from .errors import FeatureFileError
from .fasta import read_fasta
from .files import atomic_torch_save
from .models import load_dnabert_model, load_protein_model, model_name_of, wrap_loaded_model
from .outputs import VERSION_KEY
from .provenance import LOADER_KEY, LOADER_KEYS, REVISION_KEYS, resolve_model_revision, revision_of_loaded

log = logging.getLogger("virnucpro")

MERGED_WHAT = "merged feature file"
#: What a merged file may record about the models that made it (all files of a training set must agree).
MERGED_NAME_KEYS = ("dna_model", "protein_model", "dna_model_revision", "protein_model_revision")


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
                               f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None


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


def _load_features(source: str | os.PathLike | dict, id_key: str, what: str) -> tuple[list[str], torch.Tensor, dict]:
    path = Path("<memory>") if isinstance(source, dict) else Path(source)
    obj = source if isinstance(source, dict) else load_feature_object(path, what)
    if not isinstance(obj, dict) or id_key not in obj or "data" not in obj:
        raise FeatureFileError(f"{path}: not a {what} (expected keys '{id_key}' and 'data')")
    ids = [str(i) for i in obj[id_key]]
    data = _rows_to_tensor(path, obj["data"], what)
    if data.shape[0] != len(ids):
        raise FeatureFileError(f"{path}: {what} has {len(ids)} ids but {data.shape[0]} rows")
    if len(set(ids)) != len(ids):
        raise FeatureFileError(f"{path}: {what} has duplicate ids")
    return ids, data, obj


def load_dna_features(source: str | os.PathLike | dict) -> tuple[list[str], torch.Tensor]:
    """Read a DNABERT-S feature file (new tensor format or the original list of dicts)."""
    ids, data, _ = _load_features(source, "nucleotide", "DNABERT-S feature file")
    return ids, data


def load_protein_features(source: str | os.PathLike | dict) -> tuple[list[str], torch.Tensor]:
    """Read a protein feature file (new tensor format or the original list of tensors)."""
    ids, data, _ = _load_features(source, "proteins", "protein feature file")
    return ids, data


def _fasta_ids_and_seqs(path: str | os.PathLike, alphabet: str) -> tuple[list[str], list[str]]:
    ids, seqs = [], []
    for record in read_fasta(path, alphabet=alphabet, allow_empty=True):
        ids.append(record.id)
        seqs.append(record.seq)
    return ids, seqs


def _reusable(out_file: str | os.PathLike | None, id_key: str, ids: list[str], model_name: str,
              revision: str | None) -> torch.Tensor | None:
    """Return the data of ``out_file`` if it holds features of ``model_name`` at ``revision`` for exactly ``ids``."""
    if out_file is None or not Path(out_file).is_file():
        return None
    try:
        stored_ids, data, obj = _load_features(out_file, id_key, "feature file")
    except FeatureFileError as exc:
        log.warning("recomputing %s: %s", out_file, exc)
        return None
    if obj.get("model") != model_name or stored_ids != ids or not torch.isfinite(data).all():
        log.info("recomputing %s: made by another model or for other sequences", out_file)
        return None
    if obj.get("model_revision") != revision:
        log.info("recomputing %s: made by another revision of %s (%s, now %s)", out_file, model_name,
                 obj.get("model_revision") or "unrecorded", revision)
        return None
    return data


def _model_identity(model_loaded: bool, model: Any, location: str, revision: str | None,
                    kind: str) -> tuple[str, str | None]:
    """The (name, resolved revision) that feature files record for the model about to be used."""
    if model_loaded:
        return model_name_of(model, location), revision_of_loaded(model, location)
    return str(location), resolve_model_revision(location, revision, kind=kind)


def extract_DNABERT_S(input_file: str | os.PathLike, out_file: str | os.PathLike | None,
                      model_loaded: bool = False, tokenizer: Any = None, model: Any = None, *,
                      model_location: str = DNABERT_S_MODEL, device: str | torch.device | None = "auto",
                      batch_tokens: int | None = DEFAULT_BATCH_TOKENS, progress: bool = True,
                      model_revision: str | None = None, precision: str | None = None) -> tuple[list[str], torch.Tensor]:
    """Embed every sequence of a nucleotide FASTA with DNABERT-S; save and return ``(ids, data)``.

    With ``model_loaded=True`` the given ``model``/``tokenizer`` are used as they are
    (on the device they sit on); ``model_revision`` pins a hub revision otherwise.
    ``out_file`` is written as ``{'nucleotide': ids, 'data': tensor(N, 768), 'model': ...,
    'model_revision': ...}``.
    """
    ids, seqs = _fasta_ids_and_seqs(input_file, "dna")
    name, revision = _model_identity(model_loaded, model, model_location, model_revision, "DNA")
    reused = _reusable(out_file, "nucleotide", ids, name, revision)
    if reused is not None:
        return ids, reused
    if model_loaded:
        if model is None or tokenizer is None:
            raise ValueError("model_loaded=True needs both model and tokenizer")
        loaded = wrap_loaded_model(model, tokenizer, model_location)
    else:
        loaded = load_dnabert_model(model_location, device, revision=model_revision, precision=precision)
    data = embed_dna(seqs, loaded, batch_tokens=batch_tokens, progress=progress)
    if out_file is not None:
        atomic_torch_save({"nucleotide": ids, "data": data, "model": loaded.name,
                           "model_revision": loaded.revision, LOADER_KEY: loaded.loader, VERSION_KEY: __version__},
                          out_file)
    return ids, data


def extract_esm(fasta_file: str | os.PathLike, model_location: str = FASTESM_MODEL,
                truncation_seq_length: int = TRUNCATION_SEQ_LENGTH, toks_per_batch: int = DEFAULT_BATCH_TOKENS,
                out_file: str | os.PathLike | None = None, model_loaded: bool = False, model: Any = None,
                alphabet: Any = None, *, device: str | torch.device | None = "auto",
                fp16: bool | None = None, progress: bool = True,
                model_revision: str | None = None, precision: str | None = None,
                loader: str | None = None) -> tuple[list[str], torch.Tensor]:
    """Embed every protein of a FASTA file with FastESM2 (or an ESM-2); save and return ``(proteins, data)``.

    ``alphabet`` is the tokenizer when ``model_loaded`` (the original passed the ESM
    alphabet there); when it is None, ``model.tokenizer`` is used.  The model is used as
    passed, never reloaded.  An existing ``out_file`` is reused only when it holds
    features of the same model at the same revision for exactly the same ids (``model_revision``
    pins a hub revision).  ``data`` is float32 (N, D).
    """
    ids, seqs = _fasta_ids_and_seqs(fasta_file, "protein")
    name, revision = _model_identity(model_loaded, model, model_location, model_revision, "protein")
    reused = _reusable(out_file, "proteins", ids, name, revision)
    if reused is not None:
        return ids, reused
    if model_loaded:
        tokenizer = alphabet if alphabet is not None else getattr(model, "tokenizer", None)
        if model is None or tokenizer is None:
            raise ValueError("model_loaded=True needs a model and a tokenizer (alphabet or model.tokenizer)")
        loaded = wrap_loaded_model(model, tokenizer, name)
    else:
        loaded = load_protein_model(model_location, device, fp16, revision=model_revision, precision=precision,
                                    loader=loader)
    log.info("read %s with %d sequences", fasta_file, len(ids))
    data = embed_proteins(seqs, loaded, truncation_seq_length=truncation_seq_length,
                          batch_tokens=toks_per_batch, ids=ids, progress=progress)
    if out_file is not None:
        atomic_torch_save({"proteins": ids, "data": data, "model": loaded.name,
                           "model_revision": loaded.revision, LOADER_KEY: loaded.loader, VERSION_KEY: __version__},
                          out_file)
    return ids, data


def merge_data(DNABERT_S_data: str | os.PathLike | dict, ESM_data: str | os.PathLike | dict,
               merged_file: str | os.PathLike | None, data_type: str | None = None, *,
               dna_model: str | None = None, protein_model: str | None = None) -> dict[str, Any]:
    """Concatenate DNA and protein vectors of the ids present in both; save and return the dict.

    Output: ``{'ids', 'data': tensor(N, dna_dim + protein_dim), 'dna_dim', 'protein_dim'}``
    plus ``'labels': [1]`` for ``viral`` or ``[0]`` for ``host``, the two models'
    revisions when the feature files record them (and the model names when given).
    ``ids`` are exactly the rows kept, in DNA-file order.
    """
    if data_type not in (None, "viral", "host"):
        raise ValueError(f"data_type must be None, 'viral' or 'host', got {data_type!r}")
    dna_ids, dna, dna_obj = _load_features(DNABERT_S_data, "nucleotide", "DNABERT-S feature file")
    protein_ids, protein, protein_obj = _load_features(ESM_data, "proteins", "protein feature file")
    protein_row = {pid: row for row, pid in enumerate(protein_ids)}
    keep = [(row, protein_row[i]) for row, i in enumerate(dna_ids) if i in protein_row]
    missing = len(dna_ids) - len(keep)
    where = f"{DNABERT_S_data if not isinstance(DNABERT_S_data, dict) else '<DNA features>'} + " \
            f"{ESM_data if not isinstance(ESM_data, dict) else '<protein features>'}"
    if not keep:
        raise FeatureFileError(f"{where}: no id is present in both feature files "
                               f"({len(dna_ids)} DNA ids, {len(protein_ids)} protein ids)")
    if missing:
        log.warning("%s: %d of %d DNA ids have no protein vector and are left out", where, missing, len(dna_ids))
    dna_rows = torch.tensor([r for r, _ in keep])
    protein_rows = torch.tensor([p for _, p in keep])
    revisions = {REVISION_KEYS[kind]: str(obj["model_revision"])
                 for kind, obj in (("dna", dna_obj), ("protein", protein_obj)) if obj.get("model_revision")}
    revisions.update({LOADER_KEYS[kind]: str(obj[LOADER_KEY])  # information: how each file's model was loaded
                      for kind, obj in (("dna", dna_obj), ("protein", protein_obj)) if obj.get(LOADER_KEY)})
    merged = merged_object([dna_ids[r] for r, _ in keep], torch.cat((dna[dna_rows], protein[protein_rows]), dim=1),
                           int(dna.shape[1]), int(protein.shape[1]),
                           labels=None if data_type is None else [1 if data_type == "viral" else 0],
                           dna_model=dna_model, protein_model=protein_model, revisions=revisions)
    if merged_file is not None:
        atomic_torch_save(merged, merged_file)
    return merged


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
    """Read and validate a merged feature file (data matrix, ids, widths, labels), or FeatureFileError."""
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
    names = {key: (None if obj.get(key) is None else str(obj[key])) for key in MERGED_NAME_KEYS}
    return MergedFile(path, ids, data, dna_dim, protein_dim, _merged_labels(path, obj.get("labels"), rows),
                      **names)


def require_finite(path: str | os.PathLike, data: torch.Tensor) -> None:
    """FeatureFileError naming ``path`` when a row of ``data`` holds NaN or infinite values."""
    bad = int((~torch.isfinite(data)).any(dim=1).sum()) if data.numel() else 0
    if bad:
        raise FeatureFileError(f"{path}: {bad} row(s) hold NaN or infinite values; remake the file")
