"""Devices and language models: choice of device, loading once per process, workarounds.

The protein model is FastESM2 (remote code) or any Hugging Face ESM-2 ``EsmModel``; the DNA
model is DNABERT-S (remote code).  Each runs in a precision (``fp32``, ``tf32``, ``fp16``,
``bf16``; defaults: fp32 on the CPU, ``defaults.CUDA_*_PRECISION`` on CUDA).  Both load
with ``AutoModel`` under transformers 4 and 5 (see :func:`virnucpro.hfload.load_pretrained`), pinned to the
revision that :mod:`virnucpro.provenance` resolved.  The workarounds for their remote code
live here and nowhere else.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from .defaults import DNA_PRECISIONS, DNABERT_S_MODEL, ESM_LOADERS, FASTESM_MODEL, PROTEIN_PRECISIONS, TRUNCATION_SEQ_LENGTH
from .errors import ModelLoadError, VirNucProError
from .options import default_precision
from .hfload import (ESM_TOKENIZER_ID, LOAD_ERRORS, check_local_directory, code_requirement,
                     esm_tokenizer_missing_offline, first_line, from_pretrained_error, has_remote_code,
                     is_code_incompatibility, is_esm_shaped, isolated_model_code, load_native_esm, load_pretrained,
                     missing_esm_tokenizer_error, read_model_config, verify_loaded_weights)

log = logging.getLogger("virnucpro")



def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N`` into a usable device, or raise."""
    if isinstance(device, torch.device):
        return device
    spec = (device or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(spec)
    except RuntimeError:
        raise VirNucProError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise VirNucProError(f"device '{device}' requested but CUDA is not available")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise VirNucProError(f"device '{device}' requested but only "
                                 f"{torch.cuda.device_count()} CUDA device(s) exist")
    elif resolved.type != "cpu":
        raise VirNucProError(f"unsupported device '{device}' (use auto, cpu, cuda or cuda:N)")
    return resolved


@dataclass
class LoadedModel:
    """A language model ready for inference, with what is needed to feed it."""

    name: str
    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    hidden_size: int
    #: the resolved revision (hub commit hash, or ``sha256:...`` of a local directory); None if unknown
    revision: str | None = None
    #: fp32, tf32, fp16 or bf16; 16-bit weights with ``autocast`` also run under torch.autocast.
    precision: str = "fp32"
    autocast: bool = False
    compiled: bool = False
    #: how the weights were loaded: ``remote`` (the model's own code) or ``native`` (transformers' own ESM)
    loader: str = "remote"


_MODEL_CACHE: dict[tuple[str, ...], LoadedModel] = {}
PRECISION_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_precision(kind: str, precision: str | None, device: torch.device) -> str:
    """The precision a model runs in: as asked, else fp32 on the CPU and the CUDA default on CUDA."""
    choices = PROTEIN_PRECISIONS if kind == "protein" else DNA_PRECISIONS
    if precision is None:
        return default_precision(kind, device.type)
    if precision not in choices:
        raise VirNucProError(f"unknown {kind} precision '{precision}' (use {', '.join(choices)})")
    return precision


@contextlib.contextmanager
def precision_context(loaded: LoadedModel) -> Iterator[None]:
    """Run a forward pass of ``loaded`` in its precision (autocast for 16-bit DNABERT-S, TF32 flags).

    DNABERT-S adds a float32 ALiBi/mask bias to the attention scores, so with 16-bit
    weights alone the probabilities are float32 and the product with the 16-bit values
    fails; autocast casts both operands of every matmul, which fixes that in the model's
    own code under either transformers major.  ``tf32`` sets the (process-global) TF32
    flags for the duration of the call under :data:`virnucpro.precision.FLAGS_LOCK`, so
    float32 work in other threads (the classifier) never runs while they are on.
    """
    from .precision import tf32_scope

    device_type = loaded.device.type
    if loaded.precision == "tf32":
        with tf32_scope(True):
            yield
    elif loaded.autocast and loaded.precision in ("fp16", "bf16"):
        with torch.autocast(device_type=device_type, dtype=PRECISION_DTYPES[loaded.precision]):
            yield
    else:
        yield


@contextlib.contextmanager
def _remote_code_without(packages: set[str]) -> Iterator[None]:
    """Let transformers import remote code whose optional imports (triton) are absent.

    transformers >= 4.51 refuses remote code importing a missing package even when the
    code guards that import itself (DNABERT-S falls back to PyTorch attention).
    """
    import transformers.dynamic_module_utils as dynamic

    original = dynamic.get_imports

    def get_imports(filename: str | os.PathLike) -> list[str]:
        return [name for name in original(filename) if name not in packages]

    dynamic.get_imports = get_imports
    try:
        yield
    finally:
        dynamic.get_imports = original


# ---------------------------------------------------------------------------
# Loading the two language models (what a failed load means: virnucpro.hfload)
# ---------------------------------------------------------------------------

def _model_hidden_size(model: Any) -> int:
    config = getattr(model, "config", None)
    size = getattr(config, "hidden_size", None)
    if not isinstance(size, int):
        raise ModelLoadError(f"model {type(model).__name__} has no config.hidden_size")
    return size


def _resolve(kind: str, location: str, revision: str | None) -> tuple[str, str | None]:
    """(resolved revision, revision= to load with), after checking a local directory's files."""
    from .provenance import pinned_revision, resolve_model_revision

    from .provenance import COMMIT_HASH, verify_hub_snapshot

    check_local_directory(kind, location)
    resolved = resolve_model_revision(location, revision, kind=kind)
    pin = pinned_revision(location, resolved)
    if pin and COMMIT_HASH.match(pin):  # before any code of the snapshot is imported
        verify_hub_snapshot(location, pin, kind=kind)
    return resolved, pin


@dataclass(frozen=True)
class _LoadRequest:
    """What one loader call asks for, resolved: the model cache key and how to load it."""

    location: str
    resolved: str
    pin: str | None
    precision: str
    dtype: torch.dtype
    key: tuple[str, ...]

    @classmethod
    def of(cls, kind: str, model_location: str, device: torch.device, revision: str | None,
           precision: str | None, loader: str = "auto") -> "_LoadRequest":
        """Resolve the precision and the revision (checking a local directory's files first)."""
        precision = resolve_precision(kind, precision, device)
        location = str(model_location)
        resolved, pin = _resolve("DNA" if kind == "dna" else kind, location, revision)
        return cls(location, resolved, pin, precision, PRECISION_DTYPES[precision],
                   (kind, location, resolved, str(device), precision, loader))


def resolve_esm_loader(loader: str | None) -> str:
    """``--esm-loader``: ``auto`` (the model's own code, else transformers' ESM), ``remote`` or ``native``."""
    loader = loader or "auto"
    if loader not in ESM_LOADERS:
        raise VirNucProError(f"unknown protein model loader '{loader}' (use {', '.join(ESM_LOADERS)})")
    return loader


def load_protein_model(model_location: str = FASTESM_MODEL, device: str | torch.device | None = "auto",
                       fp16: bool | None = None, revision: str | None = None,
                       precision: str | None = None, loader: str | None = None,
                       trust_remote_code: bool = True) -> LoadedModel:
    """Load FastESM2 or any ESM-2 ``EsmModel`` once per process, in ``precision``.

    Without ``precision``: fp16 on CUDA unless ``fp16=False`` (``fp16=True`` on the CPU
    still gives fp32), fp32 on the CPU.  ``revision`` pins a hub branch, tag or commit;
    the loaded model's ``revision`` is the resolved commit (or a local directory's
    content hash).  ``loader`` (:func:`resolve_esm_loader`): ``auto`` tries the model's own
    code and, when that code cannot be imported or built under the installed transformers,
    loads the same weights into transformers' own ``EsmModel`` (same numbers; one INFO line).
    Every load is checked against the weight files.  ``trust_remote_code=False``
    (:mod:`virnucpro.trust`): no code of the model runs; an ESM-shaped model with code of its
    own is then loaded natively.
    """
    device = resolve_device(device)
    if precision is None and fp16 is not None:
        precision = "fp16" if (fp16 and device.type == "cuda") else "fp32"
    loader = resolve_esm_loader(loader)
    request = _LoadRequest.of("protein", model_location, device, revision, precision,
                              f"{loader}{'' if trust_remote_code else '-untrusted'}")
    if request.key in _MODEL_CACHE:
        return _MODEL_CACHE[request.key]
    location, resolved, pin, dtype, precision = (request.location, request.resolved, request.pin,
                                                 request.dtype, request.precision)
    config = read_model_config(location, pin)
    if not trust_remote_code and has_remote_code(config):
        if loader == "remote" or not is_esm_shaped(config):
            raise ModelLoadError(f"cannot load protein model '{location}': it ships code of its own, which is not "
                                 f"trusted here; name it with --esm-model to run its code")
        log.info("protein model %s: its own code is not trusted here; loading its weights with transformers' "
                 "own ESM", location)
        loader = "native"
    if (config.get("model_type") == "fast_esm" and not _has_vocabulary(location, pin)
            and esm_tokenizer_missing_offline()):
        raise missing_esm_tokenizer_error(location)
    log.info("loading protein model %s (%s) on %s (%s)", location, resolved[:19], device, precision)
    try:
        with isolated_model_code(remote=has_remote_code(config) and loader != "native"):
            model, used = _load_protein_weights(location, pin, dtype, loader, config, trust_remote_code)
            tokenizer = getattr(model, "tokenizer", None) if used == "remote" else None
            if tokenizer is None:
                tokenizer = _esm_tokenizer(location, pin)
                model.tokenizer = tokenizer  # as FastESM2's own code has it (model.tokenizer)
    except LOAD_ERRORS as exc:
        raise from_pretrained_error("protein", location, exc) from exc
    model = to_device_keeping_positions_fp32(model, device, dtype)
    loaded = LoadedModel(location, model, tokenizer, device, dtype, _model_hidden_size(model), resolved,
                         precision=precision, loader=used)
    _MODEL_CACHE[request.key] = loaded
    return loaded


def _load_protein_weights(location: str, pin: str | None, dtype: torch.dtype, loader: str,
                          config: dict, trust_remote_code: bool = True) -> tuple[Any, str]:
    """The checked model on the CPU and the loader that made it (``remote`` or ``native``)."""
    remote = has_remote_code(config)
    if loader == "native":  # its weights were copied in by load_checkpoint_weights, which checks them
        return load_native_esm(location, pin, dtype), "native"
    try:
        model = load_pretrained(location, pin, dtype, trust_remote_code)
        verify_loaded_weights(model, location, pin)
        return model, "remote" if remote else "native"
    except LOAD_ERRORS as exc:
        if loader == "remote" or not remote or not is_esm_shaped(config) or not is_code_incompatibility(exc):
            raise
        reason = code_requirement(exc) or f"its code fails under this transformers ({first_line(exc)})"
    from transformers import __version__ as transformers_version

    log.info("protein model %s: %s (transformers %s is installed); loaded with transformers' own ESM instead "
             "(the same weights and numbers)", location, reason, transformers_version)
    return load_native_esm(location, pin, dtype), "native"


#: Buffers that hold positions or frequencies: they stay float32 whatever the precision.
POSITIONAL_BUFFERS = ("inv_freq",)


def to_device_keeping_positions_fp32(model: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """``model.to(device, dtype).eval()``, but rotary ``inv_freq`` buffers stay float32.

    ``.to(bfloat16)`` would cast them too, and the cos/sin tables built from a bf16 ``inv_freq``
    are off by up to 0.23 at positions <= 101 (fp16: 0.017); from float32 ones they are only
    rounded once, at the end.
    """
    kept = {name: buffer.detach().float().clone() for name, buffer in model.named_buffers()
            if name.rsplit(".", 1)[-1] in POSITIONAL_BUFFERS}
    model = model.to(device=device, dtype=dtype).eval()
    if dtype != torch.float32:
        for name, value in kept.items():
            owner, _, attribute = name.rpartition(".")
            module = model.get_submodule(owner) if owner else model
            module._buffers[attribute] = value.to(device)
    return model


def _has_vocabulary(location: str, pin: str | None) -> bool:
    from transformers.utils import cached_file

    try:
        return cached_file(location, "vocab.txt", revision=pin, _raise_exceptions_for_missing_entries=False) is not None
    except OSError:
        return False


def _esm_tokenizer(location: str, pin: str | None) -> Any:
    """The ESM-2 tokenizer: the model's own files when it has them, else FastESM2's (``ESM_TOKENIZER_ID``)."""
    from transformers import EsmTokenizer

    if _has_vocabulary(location, pin):
        return EsmTokenizer.from_pretrained(location, revision=pin)
    if esm_tokenizer_missing_offline():
        raise missing_esm_tokenizer_error(location)
    return EsmTokenizer.from_pretrained(ESM_TOKENIZER_ID)


def load_dnabert_model(model_location: str = DNABERT_S_MODEL, device: str | torch.device | None = "auto",
                       revision: str | None = None, precision: str | None = None) -> LoadedModel:
    """Load DNABERT-S once per process, with its PyTorch attention path (``revision`` as above), in
    ``precision`` (default fp32)."""
    device = resolve_device(device)
    request = _LoadRequest.of("dna", model_location, device, revision, precision)
    if request.key in _MODEL_CACHE:
        return _MODEL_CACHE[request.key]
    location, resolved, pin, dtype, precision = (request.location, request.resolved, request.pin,
                                                 request.dtype, request.precision)
    from transformers import AutoTokenizer

    log.info("loading DNA model %s (%s) on %s (%s)", location, resolved[:19], device, precision)
    try:
        with _remote_code_without({"triton"}), isolated_model_code():
            tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=True, revision=pin)
            model = load_pretrained(location, pin, torch.float32)
            verify_loaded_weights(model, location, pin)
    except LOAD_ERRORS as exc:
        raise from_pretrained_error("DNA", location, exc) from exc
    _disable_triton_attention(model)
    model = model.to(device=device, dtype=dtype).eval()
    loaded = LoadedModel(location, model, tokenizer, device, dtype, _model_hidden_size(model), resolved,
                         precision=precision, autocast=dtype != torch.float32)
    _MODEL_CACHE[request.key] = loaded
    return loaded


def _disable_triton_attention(model: Any) -> None:
    """DNABERT-S's Triton flash attention fails on current Triton and on CPU: use PyTorch's."""
    for cls in type(model).__mro__:
        module = sys.modules.get(cls.__module__)
        if module is not None and getattr(module, "flash_attn_qkvpacked_func", None) is not None:
            module.flash_attn_qkvpacked_func = None
            log.debug("disabled Triton attention in %s", module.__name__)



def model_name_of(model: Any, default: str) -> str:
    """The name or path a loaded model was made from, else ``default``."""
    return str(getattr(getattr(model, "config", None), "_name_or_path", "") or default)


def wrap_loaded_model(model: Any, tokenizer: Any, default_name: str) -> LoadedModel:
    """A :class:`LoadedModel` for a model the caller loaded itself (used as it is, where it is)."""
    from .provenance import revision_of_loaded

    first = next(iter(model.parameters()))
    precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(first.dtype, "fp32")
    loader = "native" if type(model).__module__.startswith("transformers.models.") else "remote"
    return LoadedModel(model_name_of(model, default_name), model, tokenizer, first.device, first.dtype,
                       _model_hidden_size(model), revision_of_loaded(model, default_name),
                       precision=precision, loader=loader)


def _encoder_layers(model: Any) -> list[Any]:
    """The encoder layers of a model: the longest ModuleList with config.num_hidden_layers entries."""
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == count]
    return list(lists[0]) if lists else []


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def fixed_rotary_tables(model: Any, max_positions: int) -> int:
    """Give every rotary module that caches its tables per length (an integer ``_seq_len_cached``,
    ``forward(q, k)``: FastESM2's and transformers 4's ESM rotary) float32 tables for
    ``max_positions`` built once, sliced per call; returns how many were changed.

    Compiled, the integer attribute is a guard: every new length recompiles until PyTorch's
    recompile limit, then the rest run eagerly.  Sliced fixed tables compile once for all
    lengths; the numbers are the module's own up to float rounding.
    """
    changed = 0
    for module in model.modules():
        inv_freq = getattr(module, "inv_freq", None)
        if not (isinstance(inv_freq, torch.Tensor) and hasattr(module, "_seq_len_cached")):
            continue
        positions = torch.arange(max_positions, device=inv_freq.device, dtype=torch.float32)
        angles = torch.outer(positions, inv_freq.float())
        both = torch.cat((angles, angles), dim=-1)
        cos, sin = both.cos()[None, None], both.sin()[None, None]

        def forward(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor = cos, sin: torch.Tensor = sin):
            length = k.shape[-2]
            c, s = cos[:, :, :length], sin[:, :, :length]
            return ((q * c + _rotate_half(q) * s).to(q.dtype), (k * c + _rotate_half(k) * s).to(k.dtype))

        module.forward = forward
        changed += 1
    return changed


def compile_encoder_layers(loaded: LoadedModel, backend: str = "inductor") -> LoadedModel:
    """``--compile``: torch.compile every encoder layer in place (dynamic shapes); compiled lazily.

    Rotary tables are made length-independent first (:func:`fixed_rotary_tables`), so one
    graph serves every protein length.  A failure at compile time leaves the model eager with
    one warning; a failure at the first call is handled by :func:`uncompile_encoder_layers`.
    """
    if loaded.compiled:
        return loaded
    layers = _encoder_layers(loaded.model)
    if not layers:
        log.warning("--compile: no encoder layers found in %s; running eagerly", loaded.name)
        return loaded
    config = getattr(loaded.model, "config", None)
    positions = int(getattr(config, "max_position_embeddings", 0) or 0) or 1026
    fixed_rotary_tables(loaded.model, max(positions, TRUNCATION_SEQ_LENGTH + 2))
    try:
        for layer in layers:
            layer.compile(dynamic=True, backend=backend)
    except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
        uncompile_encoder_layers(loaded, exc)
        return loaded
    loaded.compiled = True
    return loaded


def uncompile_encoder_layers(loaded: LoadedModel, exc: BaseException) -> None:
    """Back to eager execution after a compiler failure, with one warning."""
    for layer in _encoder_layers(loaded.model):
        layer._compiled_call_impl = None
    loaded.compiled = False
    log.warning("torch.compile failed for %s (%s); running eagerly", loaded.name, first_line(exc))

