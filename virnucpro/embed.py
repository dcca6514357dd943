"""Token-budget batching and the two embeddings (protein and DNA), float32 on the CPU.

Protein: mean of FastESM2's last hidden state over residues 1..min(L, 1024).
DNA: DNABERT-S mean over all non-padding tokens, [CLS] and [SEP] included.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from .defaults import DEFAULT_BATCH_TOKENS, TRUNCATION_SEQ_LENGTH
from .errors import InputError, ModelLoadError
from .fasta import PROTEIN_ALPHABET, PROTEIN_REPLACEMENTS
from .models import LoadedModel

log = logging.getLogger("virnucpro")



def token_budget_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group indices into batches whose padded size (count x longest) fits ``max_tokens``.

    Indices are sorted by length, longest first, so padding stays small; a single item
    longer than the budget gets a batch of its own.
    """
    if max_tokens <= 0:
        raise ValueError("max_tokens must be positive")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        size = lengths[index]
        if current and max(longest, size) * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(index)
        longest = max(longest, size)
    if current:
        batches.append(current)
    return batches


def _run_batches(batches: list[list[int]], compute: Callable[[list[int]], torch.Tensor],
                 rows: int, width: int, device: torch.device, desc: str, progress: bool) -> torch.Tensor:
    """Embed every batch into a (rows, width) float32 tensor returned on the CPU.

    Results stay on ``device`` until the end, so on CUDA the host prepares the next
    batch while the GPU works (one copy back, no per-batch synchronisation).  On CUDA
    out-of-memory a batch is split in two and retried.
    """
    out = torch.empty((rows, width), dtype=torch.float32, device=device)
    pending = list(reversed(batches))
    with tqdm(total=rows, desc=desc, unit="seq", disable=not progress, leave=False) as bar:
        while pending:
            batch = pending.pop()
            try:
                out[torch.tensor(batch, device=device)] = compute(batch)
            except torch.cuda.OutOfMemoryError:
                if len(batch) == 1:
                    raise
                torch.cuda.empty_cache()
                half = len(batch) // 2
                log.warning("CUDA out of memory on a batch of %d; retrying as two halves", len(batch))
                pending.extend([batch[half:], batch[:half]])
                continue
            bar.update(len(batch))
    return out.cpu()



def _clean_protein(record_id: str, sequence: str) -> str:
    """Upper-case, drop one trailing stop, map internal stops and J to X; reject the rest."""
    protein = sequence.upper()
    if protein.endswith("*"):
        protein = protein[:-1]
    if not protein:
        raise InputError(f"protein '{record_id}' is empty")
    for old, new in PROTEIN_REPLACEMENTS.items():
        protein = protein.replace(old, new)
    bad = set(protein) - set(PROTEIN_ALPHABET)
    if bad:
        raise InputError(f"protein '{record_id}' has characters that are not amino-acid codes: "
                         f"{''.join(sorted(bad))}")
    return protein


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def _padded_batch(token_lists: Sequence[Sequence[int]], batch: list[int], pad_id: int,
                  pool_special_tokens: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input ids, attention mask and pooling mask of one batch, padded to its longest member.

    The pooling mask covers every real token, or with ``pool_special_tokens=False``
    every token but the first and the last (the residues between CLS and EOS).
    """
    width = max(len(token_lists[i]) for i in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    pool_mask = torch.zeros((len(batch), width), dtype=torch.float32)
    skip = 0 if pool_special_tokens else 1
    for row, index in enumerate(batch):
        tokens = token_lists[index]
        input_ids[row, :len(tokens)] = torch.tensor(tokens)
        attention[row, :len(tokens)] = 1
        pool_mask[row, skip:len(tokens) - skip] = 1.0
    return input_ids, attention, pool_mask


def embed_token_lists(token_lists: Sequence[Sequence[int]], loaded: LoadedModel, pad_id: int, *,
                      pool_special_tokens: bool, batch_tokens: int, desc: str, progress: bool) -> torch.Tensor:
    """Masked mean of the last hidden state of every token list, float32 (N, hidden) on the CPU."""
    if not token_lists:
        return torch.empty((0, loaded.hidden_size), dtype=torch.float32)
    model, device = loaded.model, loaded.device

    def compute(batch: list[int]) -> torch.Tensor:
        tensors = _padded_batch(token_lists, batch, pad_id, pool_special_tokens)
        input_ids, attention, pool_mask = (_to_device(t, device) for t in tensors)
        with torch.inference_mode():
            hidden = _last_hidden_state(model(input_ids=input_ids, attention_mask=attention)).float()
            return (hidden * pool_mask.unsqueeze(-1)).sum(1) / pool_mask.sum(1, keepdim=True)

    batches = token_budget_batches([len(t) for t in token_lists], batch_tokens)
    return _run_batches(batches, compute, len(token_lists), loaded.hidden_size, device, desc, progress)


def embed_proteins(sequences: Sequence[str], loaded: LoadedModel, *,
                   truncation_seq_length: int = TRUNCATION_SEQ_LENGTH,
                   batch_tokens: int = DEFAULT_BATCH_TOKENS, ids: Sequence[str] | None = None,
                   progress: bool = False) -> torch.Tensor:
    """Mean of the last hidden state over residues 1..min(L, truncation), float32 (N, D).

    Each residue is one token (the sequence is upper-cased and looked up letter by
    letter), so the pooled positions are exactly the residues; the input is truncated
    to ``truncation_seq_length`` residues before the model sees it.
    """
    ids = list(ids) if ids is not None else [str(i) for i in range(len(sequences))]
    tokenizer = loaded.tokenizer
    cls_id, eos_id, pad_id = _special_ids(tokenizer)
    residue_id = _residue_token_ids(tokenizer)
    token_ids: list[list[int]] = []
    for record_id, sequence in zip(ids, sequences):
        protein = _clean_protein(record_id, sequence)[:truncation_seq_length]
        try:
            token_ids.append([cls_id, *map(residue_id.__getitem__, protein), eos_id])
        except KeyError as exc:
            raise InputError(f"protein '{record_id}': the tokenizer does not know {exc.args[0]}") from None
    return embed_token_lists(token_ids, loaded, pad_id, pool_special_tokens=False, batch_tokens=batch_tokens,
                             desc="protein embeddings", progress=progress)


def _residue_token_ids(tokenizer: Any) -> dict[str, int]:
    """One token id per amino-acid letter the tokenizer knows (unknown letters left out)."""
    unk_id = getattr(tokenizer, "unk_token_id", None)
    ids = dict(zip(PROTEIN_ALPHABET, tokenizer.convert_tokens_to_ids(list(PROTEIN_ALPHABET))))
    return {letter: token for letter, token in ids.items() if token is not None and token != unk_id}


def _special_ids(tokenizer: Any) -> tuple[int, int, int]:
    cls_id = getattr(tokenizer, "cls_token_id", None)
    if cls_id is None:
        cls_id = getattr(tokenizer, "bos_token_id", None)
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if eos_id is None:
        eos_id = getattr(tokenizer, "sep_token_id", None)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if cls_id is None or eos_id is None or pad_id is None:
        raise ModelLoadError("protein tokenizer lacks cls/eos/pad tokens")
    return cls_id, eos_id, pad_id


def _last_hidden_state(output: Any) -> torch.Tensor:
    """The last hidden state of a model output (object with the attribute, or tuple)."""
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None:
        hidden = output[0]
    if isinstance(hidden, (list, tuple)):
        hidden = hidden[-1]
    return hidden


def embed_dna(sequences: Sequence[str], loaded: LoadedModel, *, batch_tokens: int = DEFAULT_BATCH_TOKENS,
              progress: bool = False) -> torch.Tensor:
    """DNABERT-S mean over all non-padding tokens ([CLS] and [SEP] included), float32 (N, 768).

    Batched with an attention mask; equal to the original one-sequence-at-a-time mean.
    """
    tokenizer = loaded.tokenizer
    encoded = tokenizer([seq.upper() for seq in sequences])["input_ids"] if sequences else []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return embed_token_lists(encoded, loaded, pad_id, pool_special_tokens=True, batch_tokens=batch_tokens,
                             desc="DNA embeddings", progress=progress)
