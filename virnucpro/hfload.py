"""Loading a Hugging Face model under transformers 4 and 5, checking it, and saying what went wrong.

Two ways in:

* :func:`load_pretrained`: ``AutoModel.from_pretrained(..., trust_remote_code=True)``, the
  model's own code.  Under transformers >= 5 a model whose ``__init__`` fails on the meta
  device (DNABERT-S's ALiBi tensor) is built on the CPU and given its weights instead.
* :func:`load_native_esm`: an ESM-2-shaped checkpoint (FastESM2's is ``EsmForMaskedLM``'s
  layout) in transformers' own ``EsmModel``, no remote code: the same numbers, for when the
  model's code cannot be imported under the installed transformers.

A load by ``from_pretrained`` is then checked parameter by parameter against the weight
files (:func:`verify_loaded_weights`: never trusted blindly); weights copied in here
(:func:`load_checkpoint_weights`) are checked as they are copied.  :func:`isolated_model_code` keeps what
model code changes on import (TF32, cudnn, dynamo settings, prints) out of the process.
:func:`from_pretrained_error` turns a failure into one message that tells the truth.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError

from . import errors
from .errors import ModelLoadError

log = logging.getLogger("virnucpro")

#: The transformers releases this project is tested with (requirements.txt, pixi.toml).
SUPPORTED_TRANSFORMERS = ">=4.47,<6"
_SUPPORTED_MAJORS = (4, 5)
_MIN_VERSION = (4, 47)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
#: The tokenizer every era of FastESM2's code loads when imported (ESM-2 models share one vocabulary).
ESM_TOKENIZER_ID = "facebook/esm2_t6_8M_UR50D"
#: Parameters a checkpoint may lack: the embedding never uses them (FastESM2's file has no pooler).
UNUSED_PARAMETER_PREFIXES = ("pooler.",)
_DAMAGED_SIGNS = ("safetensor", "header", "deserializ", "unpickl", "pytorchstreamreader", "eof", "truncat",
                  "invalid load key", "zip archive", "corrupt", "lacks")
_CODE_ERRORS = (ImportError, AttributeError, TypeError, NameError, NotImplementedError, KeyError)
#: What a model's code needs, from the error it fails with: (pattern, requirement).
_CODE_NEEDS = (
    (re.compile(r"cannot import name 'initialization' from 'transformers'"),
     "this FastESM2 code needs transformers >= 5 (it imports transformers.initialization)"),
    (re.compile(r"cannot import name 'RotaryEmbedding' from 'transformers\.models\.esm"),
     "this FastESM2 code needs transformers < 5.6 (it imports RotaryEmbedding from transformers' ESM, "
     "which 5.6 renamed)"),
    (re.compile(r"unexpected keyword argument 'allow_all_kernels'"),
     "this FastESM2 code needs transformers >= 5.13 (it passes allow_all_kernels to transformers)"),
    (re.compile(r"cannot import name '(\w+)' from '(transformers[\w.]*)'"),
     "the model's code imports {0} from {1}, which this transformers lacks"),
)


class WeightsMismatchError(RuntimeError):
    """A loaded model's parameters are not the checkpoint file's (missing, re-initialised or changed)."""


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
    """The installed version, and an install hint only when it is outside the supported range."""
    text, _ = transformers_version()
    if transformers_supported():
        return f"transformers {text} is installed (supported: {SUPPORTED_TRANSFORMERS})"
    return (f"transformers {text} is installed; VirNucPro-FastESM needs transformers{SUPPORTED_TRANSFORMERS} "
            f"(pip install 'transformers{SUPPORTED_TRANSFORMERS}')")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), at most 300 characters."""
    return errors.first_line(exc, 300)


def code_requirement(exc: BaseException) -> str | None:
    """What the model's code needs of transformers, read from the error it failed with; None if unknown."""
    text = str(exc)
    for pattern, need in _CODE_NEEDS:
        found = pattern.search(text)
        if found:
            return need.format(*found.groups())
    return None


def is_code_incompatibility(exc: BaseException) -> bool:
    """Whether a load failed because the model's code does not work with this transformers (not its files)."""
    if isinstance(exc, WeightsMismatchError):
        return True
    if isinstance(exc, OSError) or isinstance(exc, SafetensorError):
        return False
    text = str(exc).lower()
    return isinstance(exc, _CODE_ERRORS) or ("meta" in text and "device" in text)


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


def read_model_config(location: str, revision: str | None) -> dict[str, Any]:
    """A model's ``config.json`` as plain data (no code runs); empty when it cannot be read."""
    from transformers.utils import cached_file

    try:
        path = cached_file(location, "config.json", revision=revision, _raise_exceptions_for_missing_entries=False)
        return json.loads(Path(path).read_text()) if path else {}
    except (OSError, ValueError):
        return {}


def is_esm_shaped(config: dict[str, Any]) -> bool:
    """Whether a config describes an ESM-2 encoder that transformers' own ``EsmModel`` can run."""
    return (config.get("model_type") in ("esm", "fast_esm")
            and config.get("position_embedding_type", "rotary") == "rotary"
            and all(isinstance(config.get(k), int) for k in ("hidden_size", "num_hidden_layers",
                                                               "num_attention_heads", "vocab_size")))


def has_remote_code(config: dict[str, Any]) -> bool:
    """Whether loading the model with ``AutoModel`` runs code shipped with it (an ``auto_map``)."""
    return "AutoModel" in (config.get("auto_map") or {})


def esm_tokenizer_missing_offline() -> bool:
    """True when HF_HUB_OFFLINE is set and :data:`ESM_TOKENIZER_ID`'s vocabulary is not in the cache."""
    from huggingface_hub import constants, try_to_load_from_cache

    if not constants.HF_HUB_OFFLINE:
        return False
    return not isinstance(try_to_load_from_cache(ESM_TOKENIZER_ID, "vocab.txt"), str)


def missing_esm_tokenizer_error(location: str) -> ModelLoadError:
    """The one line for an offline FastESM2 whose code (and the native loader) needs an uncached tokenizer."""
    return ModelLoadError(
        f"cannot load protein model '{location}': FastESM2's code loads the tokenizer of '{ESM_TOKENIZER_ID}', "
        "which is not in the Hugging Face cache, and HF_HUB_OFFLINE is set; fetch it once with network access: "
        f"python -c \"from transformers import EsmTokenizer; EsmTokenizer.from_pretrained('{ESM_TOKENIZER_ID}')\"")


def from_pretrained_error(kind: str, location: str, exc: BaseException) -> ModelLoadError:
    """One message saying what is wrong: damaged files, hub/network, or what the model's code needs."""
    from .provenance import hub_failure

    text = first_line(exc)
    lowered = text.lower()
    need = code_requirement(exc)
    if need:
        hint = f"{need}; {_version_note()}"
        if kind == "protein":
            hint += "; --esm-loader native loads its weights with transformers' own ESM instead"
    elif isinstance(exc, WeightsMismatchError):
        hint = f"the loaded model does not hold the checkpoint's weights; {_version_note()}"
    elif is_code_incompatibility(exc):
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
# What model code may change in the process
# ---------------------------------------------------------------------------


def _config_copy(module: Any) -> dict[str, Any]:
    try:
        return dict(module.get_config_copy())
    except Exception:  # noqa: BLE001 - an unusual torch build: nothing to restore
        return {}


def _restore_config(module: Any, saved: dict[str, Any]) -> None:
    for name, value in _config_copy(module).items():
        if name in saved and saved[name] is not value:
            try:
                if saved[name] != value:
                    setattr(module, name, saved[name])
            except Exception:  # noqa: BLE001 - incomparable or read-only entries stay
                continue


@contextlib.contextmanager
def isolated_model_code(remote: bool = True) -> Iterator[None]:
    """Undo what a model's code changes in the process on import or load; keep its prints off stdout.

    FastESM2's 2026 code sets ``torch.set_float32_matmul_precision('high')`` (TF32 for every
    later fp32 matmul, DNABERT-S's included), the TF32 and ``cudnn.benchmark`` flags and
    dynamo settings, and prints to stdout.  All of these are restored; printed lines go to
    the log at DEBUG.  ``remote`` snapshots the dynamo/inductor settings too (their import costs ~2 s).
    """
    configs = []
    if remote:
        import importlib

        configs = [(module, _config_copy(module)) for module in
                   (importlib.import_module("torch._dynamo.config"), importlib.import_module("torch._inductor.config"))]
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic, torch.get_float32_matmul_precision())
    printed = io.StringIO()
    # transformers' "newly initialized: pooler..." warnings: verify_loaded_weights is the real check
    hf_logger = logging.getLogger("transformers")
    hf_level = hf_logger.level
    hf_logger.setLevel(max(hf_level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        hf_logger.setLevel(hf_level)
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
         torch.backends.cudnn.deterministic) = flags[:4]
        torch.set_float32_matmul_precision(flags[4])
        for module, saved in configs:
            _restore_config(module, saved)
        for line in printed.getvalue().splitlines():
            if line.strip():
                log.debug("model code printed: %s", line)


# ---------------------------------------------------------------------------
# Loading: transformers 4 and 5, remote code or native ESM
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


def _fails_on_meta_device(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, NotImplementedError)) and "meta" in text


def load_pretrained(location: str, revision: str | None, dtype: torch.dtype, trust_remote_code: bool = True) -> Any:
    """``AutoModel.from_pretrained(..., trust_remote_code=True)``, on the CPU, under transformers 4 and 5.

    Under transformers >= 5 a remote-code model whose ``__init__`` does not survive the meta
    device is built on the CPU with its real ``__init__`` and given the checkpoint's weights
    (the parameters the embedding does not use, the pooler, may be absent, as
    ``from_pretrained`` allows).  The caller checks the result with :func:`verify_loaded_weights`.
    ``trust_remote_code=False`` (see :mod:`virnucpro.trust`) loads transformers' own classes only.
    """
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code, revision=revision)
    remote = trust_remote_code and has_remote_code({"auto_map": getattr(config, "auto_map", None)})
    try:
        return AutoModel.from_pretrained(location, config=config, trust_remote_code=trust_remote_code,
                                         revision=revision,
                                         **_dtype_kwargs(dtype))
    except Exception as exc:  # noqa: BLE001 - only the meta-device failure has another way
        if not (remote and _builds_on_meta_device() and _fails_on_meta_device(exc)):
            raise
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    log.debug("%s: its code does not build on the meta device; building it on the CPU", location)
    model_class = get_class_from_dynamic_module(config.auto_map["AutoModel"], location, revision=revision)
    model = model_class._from_config(config, **_dtype_kwargs(dtype))
    load_checkpoint_weights(model, location, revision)
    return model


#: config.json keys of an ESM-2 encoder that transformers' ``EsmConfig`` takes as they are.
_ESM_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                    "initializer_range", "layer_norm_eps", "position_embedding_type", "emb_layer_norm_before",
                    "token_dropout", "pad_token_id", "mask_token_id")


def no_init_weights() -> Any:
    """transformers' ``no_init_weights()`` context (it moved to ``transformers.initialization`` in 5.x)."""
    try:
        from transformers.initialization import no_init_weights as context  # transformers >= 5
    except ImportError:
        from transformers.modeling_utils import no_init_weights as context
    return context()


def load_native_esm(location: str, revision: str | None, dtype: torch.dtype) -> Any:
    """An ESM-2-shaped checkpoint (FastESM2 or ``facebook/esm2_*``) in transformers' own ``EsmModel``.

    Only ``config.json`` (as data) and the weight files are read; no code of the model runs.
    Every parameter is copied from the files (:func:`load_checkpoint_weights`), so nothing is left unchecked.
    """
    from transformers import EsmConfig, EsmModel

    raw = read_model_config(location, revision)
    if not is_esm_shaped(raw):
        raise ModelLoadError(f"cannot load protein model '{location}' with transformers' own ESM: its config.json "
                             f"(model_type {raw.get('model_type')!r}) does not describe an ESM-2 encoder")
    settings = {key: raw[key] for key in _ESM_CONFIG_KEYS if key in raw}
    settings.update(position_embedding_type="rotary", is_folding_model=False, architectures=["EsmModel"])
    config = EsmConfig(**settings)
    config._name_or_path = location
    with no_init_weights():
        model = EsmModel(config, add_pooling_layer=False)
    load_checkpoint_weights(model, location, revision)
    return model.to(dtype)


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


@contextlib.contextmanager
def _weight_tensors(location: str, revision: str | None) -> Iterator[dict[str, Any]]:
    """Name -> a function returning that tensor of the checkpoint, read lazily (memory-mapped)."""
    from safetensors import safe_open

    getters: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        for path in _checkpoint_files(location, revision):
            if path.endswith(".safetensors"):
                handle = stack.enter_context(safe_open(path, framework="pt"))
                getters.update({name: (lambda h=handle, n=name: h.get_tensor(n)) for name in handle.keys()})
            else:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                getters.update({name: (lambda t=tensor: t) for name, tensor in state.items()})
        yield getters


def checkpoint_key_map(model_keys: list[str], file_keys: set[str], prefix: str) -> dict[str, str]:
    """Model state key -> checkpoint key: the same name, with or without the base-model prefix
    (``esm.``, ``bert.``), and the old LayerNorm names ``gamma``/``beta``, as ``from_pretrained`` accepts."""
    def candidates(key: str) -> Iterator[str]:
        yield key
        if prefix:
            yield prefix + key
            if key.startswith(prefix):
                yield key[len(prefix):]

    found: dict[str, str] = {}
    for key in model_keys:
        old = re.sub(r"\.weight$", ".gamma", re.sub(r"\.bias$", ".beta", key))
        for name in (*candidates(key), *candidates(old)):
            if name in file_keys:
                found[key] = name
                break
    return found


def _model_prefix(model: Any) -> str:
    prefix = getattr(model, "base_model_prefix", "") or ""
    return f"{prefix}." if prefix else ""


def load_checkpoint_weights(model: Any, location: str, revision: str | None) -> None:
    """Copy a model's checkpoint weights into an already built model; every parameter the embedding
    uses must be found (see :func:`checkpoint_key_map` for the names accepted)."""
    with _weight_tensors(location, revision) as tensors:
        keys = checkpoint_key_map(list(model.state_dict()), set(tensors), _model_prefix(model))
        state = {key: tensors[name]() for key, name in keys.items()}
    _, unexpected = model.load_state_dict(state, strict=False)
    missing = [name for name, _ in model.named_parameters() if name not in keys and not _unused(name)]
    if missing:
        raise WeightsMismatchError(f"the checkpoint lacks {len(missing)} of the model's weights "
                                   f"(e.g. {missing[0]}): incomplete or damaged weights")
    model.eval()


def _unused(name: str) -> bool:
    return name.startswith(UNUSED_PARAMETER_PREFIXES)


def verify_loaded_weights(model: Any, location: str, revision: str | None) -> int:
    """Check that a loaded model (on the CPU) holds exactly the checkpoint's tensors; returns how many matched.

    Every parameter must be in the files (but :data:`UNUSED_PARAMETER_PREFIXES`), and every
    parameter and persistent buffer found there must equal the file's tensor in the model's
    dtype; nothing may be left on the meta device.  Raises :class:`WeightsMismatchError`.
    """
    named = dict(model.named_parameters())
    on_meta = [name for name, tensor in (*named.items(), *model.named_buffers()) if tensor.device.type == "meta"]
    if on_meta:
        raise WeightsMismatchError(f"{len(on_meta)} tensor(s) of the loaded model were left on the meta device "
                                   f"(e.g. {on_meta[0]})")
    state = model.state_dict()
    with _weight_tensors(location, revision) as tensors:
        keys = checkpoint_key_map(list(state), set(tensors), _model_prefix(model))
        missing = [name for name in named if name not in keys and not _unused(name)]
        if missing:
            raise WeightsMismatchError(f"the checkpoint lacks {len(missing)} of the model's weights "
                                       f"(e.g. {missing[0]}): incomplete or damaged weights")
        differ = []
        for key, name in keys.items():
            loaded = state[key]
            stored = tensors[name]()
            if stored.shape != loaded.shape or not torch.equal(stored.to(loaded.dtype), loaded):
                differ.append(key)
    if differ:
        raise WeightsMismatchError(f"{len(differ)} of {len(keys)} loaded tensors differ from the checkpoint "
                                   f"(e.g. {differ[0]}): the load re-initialised or changed them")
    return len(keys)


#: What a failed load can raise (turned into :class:`ModelLoadError` by the loaders).
LOAD_ERRORS = (OSError, ValueError, RuntimeError, SafetensorError, *_CODE_ERRORS)
