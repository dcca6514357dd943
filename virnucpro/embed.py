"""Token-budget batching and the two embeddings (protein and DNA), float32 on the CPU.

Protein: mean of FastESM2's last hidden state over residues 1..min(L, 1024), the WHOLE
protein fed to the model (as the original did; a protein longer than the token budget
is a batch of its own).  DNA: DNABERT-S mean over all non-padding tokens, [CLS] and
[SEP] included.  Identical sequences are embedded once (see :mod:`virnucpro.tokens`).

The device loop sends one (pinned, non-blocking on CUDA) int64 tensor per batch
holding the ids, the lengths and the pooled counts; masks are built on the device;
results go into a length-sorted buffer by slices and are permuted back once per call,
so the host never waits for the device inside the loop.  With ``length_buckets``
(default on CUDA) batches hold proteins of one exact length and run without an
attention mask, so SDPA can use its flash kernel (a long protein alone included);
lengths too rare to fill a batch (under ``MIN_BUCKET_ROWS`` rows) share padded, masked
batches instead of running as many tiny ones.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import options
from .defaults import TRUNCATION_SEQ_LENGTH
from .models import LoadedModel, precision_context, uncompile_encoder_layers
from .tokens import TokenSet, tokenize_dna, tokenize_proteins

log = logging.getLogger("virnucpro")

#: Lower-cased fragments of RuntimeError messages that mean an allocation failed.
ALLOCATION_FAILURE_SIGNS = ("out of memory", "alloc_failed", "not enough memory", "failed to allocate")
#: With length buckets, lengths with fewer rows than this (and than a full batch) share padded batches.
MIN_BUCKET_ROWS = 64


def default_batch_tokens(device: torch.device | str) -> int:
    """Padded tokens per batch when none is given (:func:`virnucpro.options.default_batch_tokens`)."""
    return options.default_batch_tokens(torch.device(device).type)


def plan_batches(lengths: Sequence[int] | np.ndarray, max_tokens: int, exact_lengths: bool = False,
                 min_bucket_rows: int = MIN_BUCKET_ROWS) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Rows in batch order, and ``(start, stop)`` slices of that order, one per batch.

    A batch's padded size (count x longest) fits ``max_tokens``; a single item longer
    than the budget gets a batch of its own.  Rows are sorted longest first.  With
    ``exact_lengths`` every length with at least ``min_bucket_rows`` rows (or a full
    batch of them) is a bucket split into equal batches of that length only (no padding);
    the rarer lengths follow, sorted longest first and padded together, so no batch is tiny.
    """
    if max_tokens <= 0:
        raise ValueError("max_tokens must be positive")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.lexsort((np.arange(len(lengths)), -lengths))
    if not exact_lengths:
        return order, _padded_bounds(lengths[order], max_tokens)
    values, counts = np.unique(lengths, return_counts=True)
    full = np.minimum(min_bucket_rows, np.maximum(1, max_tokens // np.maximum(values, 1)))
    rare = np.isin(lengths[order], values[counts < full])
    bucketed, merged = order[~rare], order[rare]
    bounds = _bucket_bounds(lengths[bucketed], max_tokens)
    bounds += [(len(bucketed) + a, len(bucketed) + b) for a, b in _padded_bounds(lengths[merged], max_tokens)]
    return np.concatenate((bucketed, merged)), bounds


def _padded_bounds(sorted_lengths: np.ndarray, max_tokens: int) -> list[tuple[int, int]]:
    """Greedy batches of rows sorted longest first whose padded size fits ``max_tokens``."""
    bounds: list[tuple[int, int]] = []
    start = 0
    for position, size in enumerate(sorted_lengths.tolist()):
        if position == start:
            longest = size
            continue
        if longest * (position - start + 1) > max_tokens:
            bounds.append((start, position))
            start, longest = position, size
    if len(sorted_lengths):
        bounds.append((start, len(sorted_lengths)))
    return bounds


def _bucket_bounds(sorted_lengths: np.ndarray, max_tokens: int) -> list[tuple[int, int]]:
    """Every run of one length split into the fewest batches that fit ``max_tokens``, of equal size."""
    edges = [0, *(np.flatnonzero(np.diff(sorted_lengths)) + 1).tolist(), len(sorted_lengths)]
    bounds: list[tuple[int, int]] = []
    for start, stop in zip(edges[:-1], edges[1:]):
        if start == stop:
            continue
        per_batch = max(1, max_tokens // int(sorted_lengths[start]))
        parts = -(-(stop - start) // per_batch)
        cuts = [start + i * (stop - start) // parts for i in range(parts + 1)]
        bounds += list(zip(cuts[:-1], cuts[1:]))
    return bounds


def token_budget_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group indices into batches whose padded size (count x longest) fits ``max_tokens``.

    Indices are sorted by length, longest first, so padding stays small; a single item
    longer than the budget gets a batch of its own.
    """
    order, bounds = plan_batches(lengths, max_tokens)
    return [order[a:b].tolist() for a, b in bounds]


def _last_hidden_state(output: Any) -> torch.Tensor:
    """The last hidden state of a model output (object with the attribute, or tuple)."""
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None:
        hidden = output[0]
    if isinstance(hidden, (list, tuple)):
        hidden = hidden[-1]
    return hidden


def _host_batch(tokens: TokenSet, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """The packed batch on ``device``: built straight into pinned memory and copied without blocking on CUDA."""
    width = int(tokens.lengths[rows].max()) + 2
    if device.type != "cuda":
        return torch.from_numpy(tokens.padded(rows))
    pinned = torch.empty((len(rows), width), dtype=torch.int64, pin_memory=True)
    tokens.padded(rows, out=pinned.numpy())
    return pinned.to(device, non_blocking=True)


def _pooled(loaded: LoadedModel, packed: torch.Tensor, pool_start: int, masked: bool) -> torch.Tensor:
    """Masked mean of the last hidden state over the pooled positions of one packed batch."""
    width = packed.shape[1] - 2
    input_ids, lengths, pooled = packed[:, :width].contiguous(), packed[:, width], packed[:, width + 1]
    positions = torch.arange(width, device=packed.device)
    attention = (positions[None, :] < lengths[:, None]).long() if masked else None
    pool_mask = ((positions[None, :] >= pool_start)
                 & (positions[None, :] < pool_start + pooled[:, None])).to(torch.float32)
    with torch.inference_mode(), precision_context(loaded):
        hidden = _last_hidden_state(loaded.model(input_ids=input_ids, attention_mask=attention)).float()
    return (hidden * pool_mask.unsqueeze(-1)).sum(1) / pool_mask.sum(1, keepdim=True)


def embed_tokens(tokens: TokenSet, loaded: LoadedModel, *, batch_tokens: int | None = None,
                 length_buckets: bool | None = None, desc: str = "embeddings",
                 progress: bool = False) -> torch.Tensor:
    """Pooled last hidden state of every input row of ``tokens``, float32 (N, hidden) on the CPU.

    When a batch fails to allocate memory (see :func:`is_out_of_memory`), the token budget
    is halved (to below the failed batch's padded size) for the rest of the call and the
    remaining rows are planned again; a single row that does not fit is raised.  A
    torch.compile failure falls back to eager execution once.
    """
    device = loaded.device
    if tokens.rows == 0:
        return torch.empty((0, loaded.hidden_size), dtype=torch.float32)
    budget = batch_tokens or default_batch_tokens(device)
    buckets = device.type == "cuda" if length_buckets is None else length_buckets
    lengths = tokens.lengths
    order, bounds = plan_batches(lengths, budget, exact_lengths=buckets)
    out = torch.empty((len(order), loaded.hidden_size), dtype=torch.float32, device=device)
    batch, lowered = 0, False
    with tqdm(total=len(order), desc=desc, unit="seq", disable=not progress, leave=False) as bar:
        while batch < len(bounds):
            start, stop = bounds[batch]
            rows = order[start:stop]
            masked = not (buckets and lengths[rows[0]] == lengths[rows[-1]])
            try:
                out[start:stop] = _forward(loaded, _host_batch(tokens, rows, device), tokens.pool_start, masked)
                failed = False
            except Exception as exc:  # noqa: BLE001 - allocation failures only, the rest is raised
                if stop - start == 1 or not is_out_of_memory(exc):
                    raise
                failed = True
            if not failed:
                bar.update(stop - start)
                batch += 1
                continue
            # Out of the handler, whose traceback held the failed batch's tensors: now they can be freed.
            padded = (stop - start) * int(lengths[rows].max())
            budget = max(1, min(budget, padded) // 2)
            if not lowered:
                log.warning("%s: out of memory on a batch of %d sequences (%d padded tokens); token budget "
                            "lowered to %d for the rest of this shard", desc, stop - start, padded, budget)
            else:
                log.info("%s: out of memory again; token budget now %d", desc, budget)
            lowered = True
            tail, tail_bounds = plan_batches(lengths[order[start:]], budget, exact_lengths=buckets)
            order[start:] = order[start:][tail]
            bounds = bounds[:batch] + [(start + a, start + b) for a, b in tail_bounds]
            free_cached_memory(device)
    sorted_position = np.empty(len(order), dtype=np.int64)
    sorted_position[order] = np.arange(len(order))
    index = torch.from_numpy(sorted_position[tokens.inverse])
    if device.type == "cuda":
        index = index.pin_memory().to(device, non_blocking=True)
    return out.index_select(0, index).cpu()


def free_cached_memory(device: torch.device) -> None:
    """Give the caching allocator's unused blocks back to the device (CUDA; nothing elsewhere)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed allocation: torch's OutOfMemoryError, or a RuntimeError saying so.

    cuBLAS/cuDNN handle and workspace allocations (``CUBLAS_STATUS_ALLOC_FAILED``,
    ``CUDNN_STATUS_ALLOC_FAILED``), kernels' own workspaces and driver-level failures
    (``CUDA error: out of memory``) arrive as a plain ``RuntimeError`` naming the failure.
    """
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(sign in message for sign in ALLOCATION_FAILURE_SIGNS)


def _forward(loaded: LoadedModel, packed: torch.Tensor, pool_start: int, masked: bool) -> torch.Tensor:
    if not loaded.compiled:
        return _pooled(loaded, packed, pool_start, masked)
    try:
        return _pooled(loaded, packed, pool_start, masked)
    except Exception as exc:  # noqa: BLE001 - any compiler failure: eager from now on
        if is_out_of_memory(exc):
            raise
        uncompile_encoder_layers(loaded, exc)
        return _pooled(loaded, packed, pool_start, masked)


def embed_proteins(sequences: Sequence[str], loaded: LoadedModel, *,
                   truncation_seq_length: int = TRUNCATION_SEQ_LENGTH,
                   batch_tokens: int | None = None, ids: Sequence[str] | None = None,
                   progress: bool = False, length_buckets: bool | None = None) -> torch.Tensor:
    """Mean of the last hidden state over residues 1..min(L, truncation), float32 (N, D).

    Each residue is one token (the sequence is upper-cased and looked up letter by
    letter), so the pooled positions are exactly the residues; the model sees the
    whole protein, ``truncation_seq_length`` limits the pooling only.
    """
    tokens = tokenize_proteins(sequences, loaded.tokenizer, ids, truncation_seq_length)
    return embed_tokens(tokens, loaded, batch_tokens=batch_tokens, length_buckets=length_buckets,
                        desc="protein embeddings", progress=progress)


def embed_dna(sequences: Sequence[str], loaded: LoadedModel, *, batch_tokens: int | None = None,
              progress: bool = False) -> torch.Tensor:
    """DNABERT-S mean over all non-padding tokens ([CLS] and [SEP] included), float32 (N, 768).

    Batched with an attention mask; equal to the original one-sequence-at-a-time mean.
    """
    tokens = tokenize_dna(sequences, loaded.tokenizer)
    return embed_tokens(tokens, loaded, batch_tokens=batch_tokens, length_buckets=False,
                        desc="DNA embeddings", progress=progress)
