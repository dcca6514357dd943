"""Loading a Hugging Face model under transformers 4 and 5, and saying what went wrong.

transformers >= 5 builds models on the meta device, which leaves tensors that remote code
makes in ``__init__`` unusable (DNABERT-S's ALiBi bias); :func:`load_pretrained` builds
such models for real and copies their weights in.  :func:`from_pretrained_error` turns a
failure into one message: missing or damaged files, hub or network, or the version.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from .errors import ModelLoadError

log = logging.getLogger("virnucpro")

#: The transformers releases this project is tested with (requirements.txt, pixi.toml).
SUPPORTED_TRANSFORMERS = ">=4.47,<6"
_SUPPORTED_MAJORS = (4, 5)
_MIN_VERSION = (4, 47)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
_DAMAGED_SIGNS = ("safetensor", "header", "deserializ", "unpickl", "pytorchstreamreader", "eof", "truncat",
                  "invalid load key", "zip archive", "corrupt", "lacks")
_CODE_ERRORS = (ImportError, AttributeError, TypeError, NameError, NotImplementedError, KeyError)


def transformers_version() -> tuple[str, tuple[int, int]]:
    """The installed transformers version, as text and (major, minor)."""
    import transformers

    text = transformers.__version__
    numbers = re.findall(r"\d+", text)[:2]
    return text, (int(numbers[0]), int(numbers[1]) if len(numbers) > 1 else 0)


def transformers_supported() -> bool:
    """Whether the installed transformers is in :data:`SUPPORTED_TRANSFORMERS`."""
    _, (major, minor) = transformers_version()
    return major in _SUPPORTED_MAJORS and (major, minor) >= _MIN_VERSION


def _version_note() -> str:
    text, _ = transformers_version()
    verdict = "works with" if transformers_supported() else "needs"
    return (f"transformers {text} is installed; VirNucPro-FastESM {verdict} transformers{SUPPORTED_TRANSFORMERS} "
            f"(pip install 'transformers{SUPPORTED_TRANSFORMERS}')")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def check_local_directory(kind: str, location: str) -> None:
    """Missing files of a local model directory, said before transformers says something vaguer."""
    path = Path(location)
    if not path.is_dir():
        return
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"cannot load {kind} model '{location}': the directory has no config.json "
                             "(not a Hugging Face model directory, or an incomplete copy)")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ModelLoadError(f"cannot load {kind} model '{location}': the directory has no weights "
                             f"({' or '.join(WEIGHT_FILES[::2])}; an incomplete copy or download?)")


def from_pretrained_error(kind: str, location: str, exc: Exception) -> ModelLoadError:
    """One message saying what is wrong: damaged files, hub/network, or the transformers version."""
    from .provenance import hub_failure

    text = _first_line(exc)
    lowered = text.lower()
    if "meta" in lowered and "device" in lowered or isinstance(exc, _CODE_ERRORS):
        hint = f"the model's code does not work with this transformers: {_version_note()}"
    elif Path(location).is_dir():
        if isinstance(exc, SafetensorError) or any(sign in lowered for sign in _DAMAGED_SIGNS):
            hint = "a weights file of the local model directory is incomplete or damaged; copy it again"
        else:
            hint = "check that the local model directory holds a complete model"
    else:
        hint = hub_failure(exc)
        if isinstance(exc, OSError) and "(OSError)" in hint:  # transformers' wrapped hub errors
            hint = "check the model id, network access for a first download, or pass a local model directory"
        if not transformers_supported():
            hint += f"; {_version_note()}"
    return ModelLoadError(f"cannot load {kind} model '{location}': {text} ({hint})")


# ---------------------------------------------------------------------------
# Loading: transformers 4 and 5
# ---------------------------------------------------------------------------


def _dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``dtype=`` for transformers 5, ``torch_dtype=`` for 4 (where ``dtype`` is not known everywhere)."""
    return {"dtype": dtype} if transformers_version()[1][0] >= 5 else {"torch_dtype": dtype}


def _builds_on_meta_device() -> bool:
    """transformers >= 5 builds a model on the meta device and then loads its weights.

    Tensors that remote code creates in ``__init__`` are then left on meta (plain attributes)
    or uninitialised (non-persistent buffers), or ``__init__`` fails outright (DNABERT-S: "Tensor
    on device meta is not on the expected device cpu").  Native transformers models set their
    buffers again themselves.
    """
    return transformers_version()[1][0] >= 5


def _is_remote_code(config: Any) -> bool:
    return "AutoModel" in (getattr(config, "auto_map", None) or {})


def load_pretrained(location: str, revision: str | None, dtype: torch.dtype) -> Any:
    """``AutoModel.from_pretrained`` that keeps tensors made in ``__init__`` real under transformers 4 and 5.

    Remote-code models under transformers >= 5 are built on the CPU with their real
    ``__init__`` (``from_config``) and then given the checkpoint's weights; everything
    else goes through ``from_pretrained`` unchanged.
    """
    from transformers import AutoConfig, AutoModel
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    config = AutoConfig.from_pretrained(location, trust_remote_code=True, revision=revision)
    if _is_remote_code(config) and _builds_on_meta_device():
        model_class = get_class_from_dynamic_module(config.auto_map["AutoModel"], location, revision=revision)
        model = model_class._from_config(config, **_dtype_kwargs(dtype))
        load_checkpoint_weights(model, location, revision)
        return model
    return AutoModel.from_pretrained(location, config=config, trust_remote_code=True, revision=revision,
                                     **_dtype_kwargs(dtype))


def _checkpoint_files(location: str, revision: str | None) -> list[str]:
    from transformers.utils import cached_file

    for name in WEIGHT_FILES:
        found = cached_file(location, name, revision=revision, _raise_exceptions_for_missing_entries=False)
        if found is None:
            continue
        if not name.endswith(".index.json"):
            return [found]
        shards = sorted(set(json.loads(Path(found).read_text())["weight_map"].values()))
        return [cached_file(location, shard, revision=revision) for shard in shards]
    raise OSError(f"no weights file ({', '.join(WEIGHT_FILES)}) found")


def _read_weights(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint_weights(model: Any, location: str, revision: str | None) -> None:
    """Copy a model's checkpoint weights into an already built model; every parameter must be found.

    Keys saved with the base-model prefix (``bert.``, ``esm.``) or without it, and the old
    LayerNorm names ``gamma``/``beta``, are accepted, as ``from_pretrained`` accepts them.
    """
    state: dict[str, torch.Tensor] = {}
    for path in _checkpoint_files(location, revision):
        state.update(_read_weights(path))
    expected = set(model.state_dict())
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    if prefix != "." and not expected & set(state):
        if any(k.startswith(prefix) for k in state):  # saved from a model with a head: drop "bert." etc.
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        else:
            state = {prefix + k: v for k, v in state.items()}
    state = {re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k)) if k not in expected else k: v
             for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    parameters = {name for name, _ in model.named_parameters()}
    missing = [k for k in missing if k in parameters]  # buffers keep the values __init__ computed
    if missing:
        raise RuntimeError(f"the checkpoint lacks {len(missing)} of the model's weights (e.g. {missing[0]}): "
                           "incomplete or damaged weights")
    if unexpected:
        log.debug("weights not used by %s: %s", type(model).__name__, ", ".join(unexpected[:5]))
    model.eval()


#: What a failed load can raise (turned into :class:`ModelLoadError` by the loaders).
LOAD_ERRORS = (OSError, ValueError, RuntimeError, SafetensorError, *_CODE_ERRORS)
