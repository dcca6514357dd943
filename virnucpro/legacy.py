"""Converting an original VirNucPro whole-model pickle into a format-2 checkpoint, safely.

The original ``train.py`` saved ``torch.save(model)`` of its own ``MLPClassifier``
(defined in the script, so pickled as ``__main__.MLPClassifier``, or
``train.MLPClassifier`` when imported).  Such a file is read with
``torch.load(weights_only=True)`` and an allowlist of exactly what it holds: that class
and the three ``torch.nn`` layers it uses are mapped onto :class:`_StateOnly`, a plain
class that only receives the pickled attributes (no ``__setstate__``, no code of the
file's classes runs); containers and tensor rebuilds are the loader's own.  Anything
else in the file is refused by the weights-only unpickler.
"""
from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any

import torch

from .classifier import MLPClassifier, check_finite_weights, inspect_checkpoint_file, save_checkpoint
from .defaults import DNABERT_S_DIM, DNABERT_S_MODEL, ESM2_3B_MODEL
from .errors import CheckpointError, first_line

#: The module names the original train.py's class was pickled under.
LEGACY_CLASS_PATHS = ("__main__.MLPClassifier", "train.MLPClassifier")
LEGACY_LAYER_PATHS = {"hidden_layer": "torch.nn.modules.linear.Linear",
                      "bn1": "torch.nn.modules.batchnorm.BatchNorm1d",
                      "output_layer": "torch.nn.modules.linear.Linear",
                      "dropout": "torch.nn.modules.dropout.Dropout"}


class _StateOnly:
    """Receives the pickled attributes of one module of the original file; runs nothing."""

    def __init__(self) -> None:  # never called by the unpickler (it uses __new__)
        raise TypeError("not constructible")


def _allowlist() -> list[Any]:
    """Exactly the globals an original whole-model pickle refers to."""
    stand_ins = [(_StateOnly, name) for name in (*LEGACY_CLASS_PATHS, *sorted(set(LEGACY_LAYER_PATHS.values())))]
    containers = [collections.OrderedDict, set]
    rebuilds = [torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter,
                torch.FloatStorage, torch.LongStorage]
    return [*stand_ins, *containers, *rebuilds]


def _tensors(module: _StateOnly, attribute: str, path: Path, name: str) -> dict[str, torch.Tensor]:
    values = module.__dict__.get(attribute) or {}
    if not isinstance(values, dict):
        raise CheckpointError(f"{path}: layer '{name}' has no {attribute} dict")
    return {key: value for key, value in values.items() if value is not None}


def read_legacy_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights of an original VirNucPro whole-model pickle, as an ``MLPClassifier`` state dict.

    Nothing in the file is executed; a file holding anything but the original classifier
    is refused with :class:`CheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    inspect_checkpoint_file(path)  # size and archive structure, before anything is unpickled
    try:
        with torch.serialization.safe_globals(_allowlist()):
            root = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the loader refuses is refused
        first = first_line(exc)
        if "Weights only load failed" in first:
            first = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line or "Unsupported" in line
                          or "Trying" in line or "Can only" in line), first)[:200]
        raise CheckpointError(f"{path}: not an original VirNucPro model, refused without running any code "
                              f"in it ({first})") from None
    if isinstance(root, dict) and "format_version" in root:
        raise CheckpointError(f"{path}: already a checkpoint of this project (it records a format_version); "
                              "format-2 checkpoints need no conversion")
    if not isinstance(root, _StateOnly):
        raise CheckpointError(f"{path}: not an original VirNucPro whole-model pickle (it holds a "
                              f"{type(root).__name__}, not the original MLPClassifier)")
    children = root.__dict__.get("_modules")
    if not isinstance(children, dict) or set(children) != set(LEGACY_LAYER_PATHS):
        found = sorted(children) if isinstance(children, dict) else []
        raise CheckpointError(f"{path}: MLPClassifier with layers {found}, expected {sorted(LEGACY_LAYER_PATHS)}")
    state: dict[str, torch.Tensor] = {}
    for name, child in children.items():
        if not isinstance(child, _StateOnly) or child.__dict__.get("_modules"):
            raise CheckpointError(f"{path}: layer '{name}' is not a plain torch.nn layer")
        for key, value in {**_tensors(child, "_parameters", path, name), **_tensors(child, "_buffers", path, name)}.items():
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{path}: {name}.{key} is not a tensor")
            state[f"{name}.{key}"] = value.detach().clone()
    check_finite_weights(path, state)
    bn = children["bn1"].__dict__
    if (bn.get("eps"), bn.get("momentum"), bn.get("affine"), bn.get("track_running_stats")) != (1e-5, 0.1, True, True):
        raise CheckpointError(f"{path}: bn1 has settings this classifier does not reproduce "
                              f"(eps {bn.get('eps')}, momentum {bn.get('momentum')})")
    return state


def convert_legacy_checkpoint(source: str | os.PathLike, target: str | os.PathLike, *, chunk_size: int,
                              protein_model: str = ESM2_3B_MODEL, dna_model: str = DNABERT_S_MODEL,
                              dna_dim: int = DNABERT_S_DIM) -> dict:
    """Convert an original whole-model pickle into a format-2 checkpoint at ``target``; returns it.

    The widths come from the weights: input = rows of ``hidden_layer.weight``'s input side,
    ``protein_dim`` = input - ``dna_dim``.
    """
    state = read_legacy_state(source)
    try:
        hidden_dim, input_dim = state["hidden_layer.weight"].shape
        num_class = state["output_layer.weight"].shape[0]
    except (KeyError, ValueError):
        raise CheckpointError(f"{source}: the layers lack 2-D weights") from None
    if input_dim <= dna_dim:
        raise CheckpointError(f"{source}: input width {input_dim} is not DNA {dna_dim} + a protein width")
    model = MLPClassifier(int(input_dim), int(hidden_dim), int(num_class))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: weights do not fit an MLPClassifier ({first_line(exc, 1000)})") from None
    model.eval()
    return save_checkpoint(target, model, dna_model=dna_model, dna_dim=dna_dim, protein_model=protein_model,
                           protein_dim=int(input_dim) - dna_dim, chunk_size=chunk_size,
                           metrics={"converted_from": Path(source).name})
