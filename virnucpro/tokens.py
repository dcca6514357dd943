"""Token ids of a shard's sequences as numpy arrays, each distinct sequence once (no torch).

Proteins are looked up letter by letter through a byte table (one token per residue,
between the tokenizer's CLS and EOS); DNA goes through its tokenizer.  A
:class:`TokenSet` holds the distinct sequences' ids concatenated, their offsets, the
pooled positions and, for every input row, which distinct sequence it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .defaults import TRUNCATION_SEQ_LENGTH
from .errors import InputError, ModelLoadError
from .fasta import PROTEIN_ALPHABET, PROTEIN_REPLACEMENTS


@dataclass
class TokenSet:
    """Distinct token sequences of a list of inputs, and the pooling rule of their embeddings."""

    tokens: np.ndarray        # int64 (total,): the distinct sequences' ids, concatenated
    offsets: np.ndarray       # int64 (U + 1,)
    pool_start: int           # first pooled position (0: pool from the first token)
    pool_lengths: np.ndarray  # int64 (U,): positions pooled from pool_start
    inverse: np.ndarray       # int64 (N,): distinct sequence of every input row
    pad_id: int

    @property
    def lengths(self) -> np.ndarray:
        """Tokens of every distinct sequence."""
        return np.diff(self.offsets)

    @property
    def rows(self) -> int:
        """Input rows (duplicates included)."""
        return len(self.inverse)

    def padded(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``rows`` packed as int64 (B, W + 2): ids padded to W (the longest), then length, pooled count."""
        lengths = self.lengths[rows]
        width = int(lengths.max())
        if out is None:
            out = np.empty((len(rows), width + 2), dtype=np.int64)
        positions = np.arange(width)
        valid = positions[None, :] < lengths[:, None]
        index = np.minimum(self.offsets[rows][:, None] + positions[None, :], len(self.tokens) - 1)
        out[:, :width] = np.where(valid, self.tokens[index], self.pad_id)
        out[:, width] = lengths
        out[:, width + 1] = self.pool_lengths[rows]
        return out


def _distinct(keys: Sequence[str]) -> tuple[list[int], np.ndarray]:
    """First row of every distinct key, and the distinct index of every row."""
    seen: dict[str, int] = {}
    first: list[int] = []
    inverse = np.empty(len(keys), dtype=np.int64)
    for row, key in enumerate(keys):
        index = seen.get(key)
        if index is None:
            index = seen[key] = len(first)
            first.append(row)
        inverse[row] = index
    return first, inverse


def _token_set(token_lists: Sequence[Sequence[int]], inverse: np.ndarray, pool_start: int,
               pool_lengths: np.ndarray | None, pad_id: int) -> TokenSet:
    lengths = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=len(token_lists))
    offsets = np.zeros(len(token_lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.fromiter((t for ids in token_lists for t in ids), dtype=np.int64, count=int(offsets[-1]))
    return TokenSet(tokens, offsets, pool_start, lengths if pool_lengths is None else pool_lengths, inverse, pad_id)


def clean_protein(record_id: str, sequence: str) -> str:
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


def special_ids(tokenizer: Any) -> tuple[int, int, int]:
    """CLS (or BOS), EOS (or SEP) and PAD ids of a protein tokenizer."""
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


def residue_table(tokenizer: Any) -> np.ndarray:
    """Byte -> token id of every amino-acid letter the tokenizer knows; -1 elsewhere."""
    unk_id = getattr(tokenizer, "unk_token_id", None)
    table = np.full(256, -1, dtype=np.int64)
    for letter, token in zip(PROTEIN_ALPHABET, tokenizer.convert_tokens_to_ids(list(PROTEIN_ALPHABET))):
        if token is not None and token != unk_id:
            table[ord(letter)] = token
    return table


def tokenize_proteins(sequences: Sequence[str], tokenizer: Any, ids: Sequence[str] | None = None,
                      truncation_seq_length: int = TRUNCATION_SEQ_LENGTH) -> TokenSet:
    """CLS + one token per residue + EOS of every distinct protein (the WHOLE protein).

    Pooling covers residues 1..min(L, ``truncation_seq_length``), as the original did.
    """
    ids = list(ids) if ids is not None else [str(i) for i in range(len(sequences))]
    cls_id, eos_id, pad_id = special_ids(tokenizer)
    raw_first, raw_inverse = _distinct(sequences)
    cleaned = [clean_protein(ids[row], sequences[row]) for row in raw_first]
    first, clean_inverse = _distinct(cleaned)
    proteins = [cleaned[i] for i in first]
    lengths = np.fromiter(map(len, proteins), dtype=np.int64, count=len(proteins))
    offsets = np.zeros(len(proteins) + 1, dtype=np.int64)
    np.cumsum(lengths + 2, out=offsets[1:])
    residues = residue_table(tokenizer)[np.frombuffer("".join(proteins).encode("ascii"), dtype=np.uint8)]
    if (residues < 0).any():
        bad = int(np.flatnonzero(residues < 0)[0])
        index = int(np.searchsorted(np.cumsum(lengths), bad, side="right"))
        letter = "".join(proteins)[bad]
        row = raw_first[first[index]]
        raise InputError(f"protein '{ids[row]}': the tokenizer does not know '{letter}'")
    tokens = np.empty(int(offsets[-1]), dtype=np.int64)
    inner = np.ones(len(tokens), dtype=bool)
    inner[offsets[:-1]] = inner[offsets[1:] - 1] = False
    tokens[offsets[:-1]], tokens[offsets[1:] - 1] = cls_id, eos_id
    tokens[inner] = residues
    inverse = clean_inverse[raw_inverse]
    return TokenSet(tokens, offsets, 1, np.minimum(lengths, truncation_seq_length), inverse, pad_id)


def tokenize_dna(sequences: Sequence[str], tokenizer: Any) -> TokenSet:
    """Tokenizer ids of every distinct upper-cased DNA sequence; pooling covers every token."""
    upper = [seq.upper() for seq in sequences]
    first, inverse = _distinct(upper)
    encoded = tokenizer([upper[row] for row in first])["input_ids"] if first else []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return _token_set(encoded, inverse, 0, None, pad_id)
