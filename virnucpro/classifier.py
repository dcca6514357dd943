"""The MLP classifier and its checkpoints (plain dicts, loaded with ``weights_only=True``).

An original VirNucPro whole-model pickle is recognised by reading its pickle opcodes
(nothing in it runs) and refused with a message saying what it is.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import pickletools
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .defaults import ESM2_3B_MODEL, LABEL_MAP, VIRUS_CLASS
from .errors import CheckpointError, first_line
from .files import atomic_torch_save, require_file
from .models import resolve_device
from .outputs import VERSION_KEY

CHECKPOINT_FORMAT_VERSION = 2


class MLPClassifier(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Dropout(0.5) -> Linear, layer names as in the original."""

    def __init__(self, input_dim: int, hidden_dim: int = 512, num_class: int = 2):
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, num_class)
        self.dropout = nn.Dropout(0.5)
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier-uniform weights on both linear layers."""
        nn.init.xavier_uniform_(self.hidden_layer.weight)
        nn.init.xavier_uniform_(self.output_layer.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hidden_layer(x)
        x = self.bn1(x)
        x = F.relu(x)
        x = self.dropout(x)
        return self.output_layer(x)


CHECKPOINT_KEYS = ("state_dict", "input_dim", "hidden_dim", "num_class", "dna_model", "dna_dim",
                   "protein_model", "protein_dim", "chunk_size", "label_map", "trained_at", "format_version")


def save_checkpoint(path: str | os.PathLike, model: MLPClassifier, *, dna_model: str, dna_dim: int,
                    protein_model: str, protein_dim: int, chunk_size: int,
                    metrics: dict[str, Any] | None = None, label_map: dict[int, str] | None = None,
                    dna_model_revision: str | None = None, protein_model_revision: str | None = None) -> dict:
    """Save a classifier as a plain dict (loadable with ``weights_only=True``), atomically.

    The ``*_model_revision`` arguments record the exact language-model weights the features
    came from (see :mod:`virnucpro.provenance`); prediction.py compares them with its models.
    """
    input_dim = model.hidden_layer.in_features
    if input_dim != dna_dim + protein_dim:
        raise ValueError(f"model input {input_dim} != dna_dim {dna_dim} + protein_dim {protein_dim}")
    checkpoint = {
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "input_dim": int(input_dim),
        "hidden_dim": int(model.hidden_layer.out_features),
        "num_class": int(model.output_layer.out_features),
        "dna_model": str(dna_model),
        "dna_dim": int(dna_dim),
        "protein_model": str(protein_model),
        "protein_dim": int(protein_dim),
        "dna_model_revision": str(dna_model_revision) if dna_model_revision else None,
        "protein_model_revision": str(protein_model_revision) if protein_model_revision else None,
        "chunk_size": int(chunk_size),
        "label_map": {int(k): str(v) for k, v in (label_map or LABEL_MAP).items()},
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "format_version": CHECKPOINT_FORMAT_VERSION,
        VERSION_KEY: __version__,
        "metrics": dict(metrics or {}),
    }
    atomic_torch_save(checkpoint, path)
    return checkpoint


def _pickle_bytes(path: Path) -> bytes | None:
    """The pickle stream of a torch file (zip archive or legacy format), read as bytes."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                return archive.read(names[0]) if names else None
        return path.read_bytes()
    except (OSError, zipfile.BadZipFile, KeyError):
        return None


def describe_legacy_checkpoint(path: str | os.PathLike) -> str | None:
    """Describe an original VirNucPro whole-model pickle without unpickling it, else None.

    The pickle opcodes are scanned (nothing is executed) for the ``MLPClassifier`` class
    and the ``in_features`` of its first layer.
    """
    data = _pickle_bytes(Path(path))
    if not data:
        return None
    strings: list[str] = []
    in_features = None
    expect_int = False
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if "PUT" in opcode.name or "GET" in opcode.name or opcode.name == "MEMOIZE":
                continue  # memo bookkeeping between a key and its value
            if expect_int and isinstance(arg, int) and not isinstance(arg, bool):
                in_features = in_features or arg
            expect_int = False
            if isinstance(arg, str):
                strings.append(arg)
                expect_int = arg == "in_features"
            if opcode.name == "STOP":
                break
    except Exception:  # noqa: BLE001 - a damaged stream is simply not recognised
        pass
    if "MLPClassifier" not in strings and not any(s.endswith(" MLPClassifier") for s in strings):
        return None
    width = f"input width {in_features}" if in_features else "unknown input width"
    origin = " = DNABERT-S 768 + ESM2-3B 2560" if in_features == 3328 else ""
    return f"an original VirNucPro whole-model pickle (MLPClassifier, {width}{origin})"


#: Far above any classifier checkpoint (a 3,328 x 512 MLP is about 7 MB): larger files
#: are refused before anything is read into memory.
MAX_CHECKPOINT_BYTES = 1 << 30
MAX_CHECKPOINT_ENTRIES = 10000
ZIP_MAGIC = b"PK\x03\x04"


def inspect_checkpoint_file(path: Path) -> None:
    """Refuse, before ``torch.load``, a file that cannot be a classifier checkpoint.

    Checks the size, and for a zip archive (torch's format) the entry count and the
    declared uncompressed sizes (a zip bomb), or a truncated archive.
    """
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{path}: {size / 2**30:.1f} GiB is far too large for a classifier checkpoint "
                              f"(at most {MAX_CHECKPOINT_BYTES >> 20} MiB; they are a few MB); refused unread")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if not zipfile.is_zipfile(path):
        if magic == ZIP_MAGIC:
            raise CheckpointError(f"{path}: truncated or damaged checkpoint (its zip archive has no "
                                  f"directory; {size} bytes): copy or save it again")
        return  # torch's legacy format or a foreign file: the weights-only loader refuses what it must
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint archive ({exc}): copy or save it again") from None
    declared = sum(entry.file_size for entry in entries)
    if len(entries) > MAX_CHECKPOINT_ENTRIES or declared > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{path}: cannot be a classifier checkpoint ({len(entries)} archive entries "
                              f"declaring {declared / 2**20:.0f} MiB uncompressed); refused unread")


def check_finite_weights(path: Path, state_dict: dict[str, Any]) -> None:
    """Refuse a checkpoint whose weights hold NaN or infinite values."""
    for name, tensor in state_dict.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: the weights hold NaN or infinite values ({name}); the checkpoint "
                                  "is damaged or its training diverged: retrain it or restore a good copy")


def _load_failure(exc: Exception) -> str:
    """Why torch.load failed, in words."""
    if isinstance(exc, pickle.UnpicklingError):
        return "unsafe or unknown pickle content"
    first = first_line(exc, 1000) if str(exc).strip() else ""
    if "central directory" in first or "zip archive" in first or isinstance(exc, EOFError):
        return f"truncated or damaged file: {first or type(exc).__name__}"
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def _shape(state_dict: dict[str, Any], name: str) -> tuple[int, ...] | None:
    """The shape of a stored tensor, or None when it is absent or not a tensor."""
    tensor = state_dict.get(name)
    return tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else None


@dataclass
class LoadedCheckpoint:
    """A classifier checkpoint read once: the model (CPU, eval mode), its metadata, the file's SHA-256."""

    path: Path
    classifier: MLPClassifier
    meta: dict
    sha256: str


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[MLPClassifier, dict]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``), in eval mode.

    Legacy pickled models and any other file are refused with :class:`CheckpointError`;
    nothing is ever unpickled outside the weights-only loader.
    """
    loaded = read_checkpoint(path)
    return loaded.classifier.to(resolve_device(device)), loaded.meta


def read_checkpoint(path: str | os.PathLike) -> LoadedCheckpoint:
    """Read a checkpoint file once: checked, loaded weights-only on the CPU, and hashed (see :func:`load_checkpoint`)."""
    path = Path(path)
    require_file(path, ".pth checkpoint", CheckpointError)
    inspect_checkpoint_file(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        checkpoint = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        legacy = describe_legacy_checkpoint(path)
        if legacy:
            raise CheckpointError(
                f"{path}: {legacy}. It was trained on ESM2-3B features and cannot score FastESM2 "
                "features (and is not loaded, because unpickling it could run code). Convert it safely "
                f"with: python convert_checkpoint.py {path} {path.stem}_esm2_3b.pth --chunk-size N, then "
                f"predict with --model that file and --esm-model {ESM2_3B_MODEL}; or train a "
                "FastESM2 model with train.py") from None
        raise CheckpointError(f"{path}: not a VirNucPro-FastESM checkpoint ({_load_failure(exc)}); refused "
                              "without running any code in it") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a VirNucPro-FastESM checkpoint (format_version "
                              f"{CHECKPOINT_FORMAT_VERSION} dict expected; train one with train.py)")
    missing = [k for k in CHECKPOINT_KEYS if k not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: checkpoint is missing {', '.join(missing)}")
    label_map = validate_checkpoint_fields(path, checkpoint)
    check_finite_weights(path, checkpoint["state_dict"])
    model = MLPClassifier(checkpoint["input_dim"], checkpoint["hidden_dim"], checkpoint["num_class"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the recorded sizes ({first_line(exc, 1000)})") from None
    model.eval()
    meta = {k: v for k, v in checkpoint.items() if k != "state_dict"}
    meta["label_map"] = label_map
    return LoadedCheckpoint(path, model, meta, hashlib.sha256(raw).hexdigest())


def expected_weight_shapes(input_dim: int, hidden_dim: int, num_class: int) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of :class:`MLPClassifier` with these sizes (without building it)."""
    hidden = (hidden_dim,)
    return {"hidden_layer.weight": (hidden_dim, input_dim), "hidden_layer.bias": hidden,
            "bn1.weight": hidden, "bn1.bias": hidden, "bn1.running_mean": hidden, "bn1.running_var": hidden,
            "bn1.num_batches_tracked": (), "output_layer.weight": (num_class, hidden_dim),
            "output_layer.bias": (num_class,)}


def validate_checkpoint_fields(path: Path, checkpoint: dict) -> dict[int, str]:
    """Check a checkpoint's metadata field by field and its tensors' shapes against the recorded sizes,
    before anything is allocated; returns its label map (class index -> label).  One-line
    :class:`CheckpointError` naming the field otherwise."""
    for key in ("input_dim", "hidden_dim", "num_class", "dna_dim", "protein_dim", "chunk_size"):
        value = checkpoint[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise CheckpointError(f"{path}: checkpoint field {key} must be a positive integer, not {value!r}")
    for key in ("dna_model", "protein_model"):
        if not isinstance(checkpoint[key], str) or not checkpoint[key]:
            raise CheckpointError(f"{path}: checkpoint field {key} must be a model name, not {checkpoint[key]!r}")
    if checkpoint["input_dim"] != checkpoint["dna_dim"] + checkpoint["protein_dim"]:
        raise CheckpointError(f"{path}: inconsistent checkpoint (input_dim {checkpoint['input_dim']} != "
                              f"{checkpoint['dna_dim']} + {checkpoint['protein_dim']})")
    raw = checkpoint["label_map"]
    if not isinstance(raw, dict) or not all(isinstance(v, str) and v for v in raw.values()):
        raise CheckpointError(f"{path}: checkpoint field label_map must map class indices to label names")
    try:
        label_map = {_class_index(k): v for k, v in raw.items()}
    except ValueError:
        raise CheckpointError(f"{path}: checkpoint field label_map has keys {sorted(map(repr, raw))}; class "
                              "indices 0, 1, ... expected") from None
    if len(set(label_map.values())) != len(label_map):
        raise CheckpointError(f"{path}: checkpoint field label_map names a class twice ({label_map})")
    if sorted(label_map) != list(range(checkpoint["num_class"])):
        raise CheckpointError(f"{path}: checkpoint field label_map names classes {sorted(label_map)} but num_class "
                              f"is {checkpoint['num_class']}")
    state = checkpoint["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: checkpoint has no weights dict")
    expected = expected_weight_shapes(checkpoint["input_dim"], checkpoint["hidden_dim"], checkpoint["num_class"])
    for name, shape in expected.items():
        tensor = state.get(name)
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path}: checkpoint weights lack {name}")
        if tuple(tensor.shape) != shape:
            raise CheckpointError(f"{path}: weights do not fit the recorded sizes ({name} is {tuple(tensor.shape)}, "
                                  f"input_dim/hidden_dim/num_class say {shape})")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise CheckpointError(f"{path}: checkpoint weights hold {extra[0]}, which the classifier has not")
    return label_map


def _class_index(key: Any) -> int:
    if isinstance(key, bool):
        raise ValueError(key)
    if isinstance(key, int):
        return key
    raise ValueError(key)  # our checkpoints store int keys; a string key is not ours


def binary_columns(path: str | os.PathLike, meta: dict[str, Any]) -> tuple[int, int]:
    """The output columns of the virus and the others class, read from the checkpoint's ``label_map``.

    Prediction and evaluation know only those two classes: a checkpoint with other classes is refused.
    """
    names = {name: index for index, name in meta["label_map"].items()}
    wanted = set(LABEL_MAP.values())
    if meta["num_class"] != len(wanted) or set(names) != wanted:
        raise CheckpointError(f"{path}: a {meta['num_class']}-class checkpoint (classes "
                              f"{sorted(names)}); prediction and evaluation know only {sorted(wanted)}")
    return names[LABEL_MAP[VIRUS_CLASS]], names[LABEL_MAP[1 - VIRUS_CLASS]]
