"""Vectorised six-frame translation and frame selection (prediction mode).

:func:`select_frames` gives exactly what the original per-chunk loop gives::

    [(d['seqid'], d['nucleotide'], d['protein'])
     for cid, s in chunks for d in units.identify_seq(cid, s) if d['protein'] != '']

but translates whole batches of chunks at once with numpy: chunks of one length
are stacked into a ``uint8`` matrix, each base becomes a 2-bit code, every codon a
6-bit index into a 64-entry table, and stop codons are found for all chunks and
frames together.  Python strings are built only for the stop-free frames, which are
a small minority of the frames of real or random DNA.

A chunk holding anything other than upper-case ``A``/``C``/``G``/``T`` goes through
:func:`units.identify_seq` itself: codons with other letters are dropped there, which
shifts the protein and changes the length of the DNA slice, so those (rare) chunks
are left to the reference implementation.  The output is therefore byte-identical
to the original for every input.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

import units

__all__ = ["select_frames", "BLOCK_CHUNKS"]

# Base codes T=0, C=1, A=2, G=3: a codon's index is 16*b1 + 4*b2 + b3, and the
# complement of a code is ``code ^ 2`` (T<->A, C<->G).
_BASE_ORDER = "TCAG"
_BAD = 255
_CODE_BYTES = bytes(_BASE_ORDER.index(chr(c)) if chr(c) in _BASE_ORDER else _BAD for c in range(256))
_CODONS = [a + b + c for a in _BASE_ORDER for b in _BASE_ORDER for c in _BASE_ORDER]
#: False if units.CODON_TABLE ever gets entries beyond the 64 A/C/G/T codons (then
#: everything goes through units.identify_seq, which stays the reference).
_VECTORISABLE = set(units.CODON_TABLE) == set(_CODONS) and all(
    len(units.CODON_TABLE[c]) == 1 and units.CODON_TABLE[c].isascii() for c in _CODONS)

if _VECTORISABLE:
    _AA_TABLE = np.frombuffer("".join(units.CODON_TABLE[c] for c in _CODONS).encode("ascii"),
                              dtype=np.uint8).copy()
else:  # pragma: no cover
    _AA_TABLE = np.zeros(64, dtype=np.uint8)
_STOP_TABLE = _AA_TABLE == ord("*")
# The amino acid read on the reverse strand at a forward codon position: the
# reverse complement of codon (b1, b2, b3) is (~b3, ~b2, ~b1) with ~b = b ^ 2.
_RC_INDEX = np.array([(((i & 3) ^ 2) << 4) | ((((i >> 2) & 3) ^ 2) << 2) | ((i >> 4) ^ 2)
                      for i in range(64)], dtype=np.uint8)
_RC_AA_TABLE = _AA_TABLE[_RC_INDEX]
# Codon index -> bit 0: stop on the forward strand, bit 1: stop on the reverse strand.
_STOP_FLAGS = _STOP_TABLE.astype(np.uint8) | (_STOP_TABLE[_RC_INDEX].astype(np.uint8) << 1)
_STOP_FLAG_BYTES = bytes(_STOP_FLAGS.tolist()) + bytes(192)
_COMPLEMENT = str.maketrans("ACGT", "TGCA")
_ACGT = b"ACGT"

#: Chunks of one length translated together; bounds the temporary arrays (a few
#: bytes per base) and keeps them cache-friendly.
BLOCK_CHUNKS = 1024


def select_frames(chunks: Iterable[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """Stop-free frames of every chunk as ``(frame_id, nucleotide, protein)``.

    ``chunks`` holds ``(chunk_id, sequence)`` pairs, the sequence already upper-cased
    (as the original callers do).  Frames come chunk by chunk in input order, frames
    ``F1, F2, F3, R1, R2, R3`` within a chunk; frames with an empty protein are left
    out.  Identical to running :func:`units.identify_seq` on each chunk.
    """
    chunks = chunks if isinstance(chunks, Sequence) else list(chunks)
    keys: list[int] = []          # chunk_index * 6 + rank of the frame within the chunk
    rows: list[tuple[str, str, str]] = []
    if not chunks:
        return rows
    sequences = [sequence for _, sequence in chunks]
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    if not (_VECTORISABLE and all(map(str.isascii, sequences))):
        for index, sequence in enumerate(sequences):
            if not (_VECTORISABLE and sequence.isascii()):
                _fallback(index, chunks[index][0], sequence, keys, rows)
                lengths[index] = -1
    # Chunks grouped by length (usually one group: all chunks but the last of each
    # record have the chunk size), in input order within a group.
    order = np.argsort(lengths, kind="stable")
    sorted_lengths = lengths[order]
    bounds = [0, *(np.flatnonzero(np.diff(sorted_lengths)) + 1).tolist(), len(order)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        length = int(sorted_lengths[lo])
        if length < 3:
            continue  # no codon in any frame (or a fallback chunk, length -1)
        for start in range(lo, hi, BLOCK_CHUNKS):
            members = order[start:min(hi, start + BLOCK_CHUNKS)]
            _select_block(chunks, sequences, members, length, keys, rows)
    # Blocks of different lengths and fallback chunks come out of input order:
    # put the frames back in (chunk, frame) order.  Keys are unique.
    if len(keys) > 1:
        key_array = np.asarray(keys, dtype=np.int64)
        if (key_array[1:] < key_array[:-1]).any():
            rows = [rows[i] for i in np.argsort(key_array, kind="stable").tolist()]
    return rows


def _fallback(index: int, chunk_id: str, sequence: str, keys: list[int],
              rows: list[tuple[str, str, str]]) -> None:
    """Run the reference implementation on one chunk (ambiguity codes, lowercase, ...)."""
    rank = 0
    for item in units.identify_seq(chunk_id, sequence):
        if item["protein"] != "":
            keys.append(index * 6 + rank)
            rows.append((item["seqid"], item["nucleotide"], item["protein"]))
            rank += 1


def _select_block(chunks: Sequence[tuple[str, str]], all_sequences: list[str], members: np.ndarray,
                  length: int, keys: list[int], rows: list[tuple[str, str, str]]) -> None:
    """Translate ``members`` (indices of ASCII chunks of ``length`` >= 3 bases) and
    append their kept frames."""
    sequences = [all_sequences[i] for i in members.tolist()]
    joined = "".join(sequences).encode()  # ASCII, so one byte per base
    if joined.translate(None, _ACGT):
        # Some chunk has another letter: those go to the reference implementation.
        clean = [row for row, seq in enumerate(sequences) if not seq.encode().translate(None, _ACGT)]
        for row in sorted(set(range(len(members))) - set(clean)):
            index = int(members[row])
            _fallback(index, chunks[index][0], sequences[row], keys, rows)
        if not clean:
            return
        members = members[clean]
        sequences = [sequences[row] for row in clean]
        joined = "".join(sequences).encode()
    n = len(members)
    codes = np.frombuffer(joined.translate(_CODE_BYTES), dtype=np.uint8).reshape(n, length)

    # Codon index at every start position p = 0..L-3 (forward strand).  A frame reads
    # every position of one residue class mod 3: forward frame f the class f, reverse
    # frame o (codon j of the reverse complement starts at p = L-3-j) the class
    # (L-3-o) mod 3.  Stop detection is then one table lookup and one OR per class.
    positions = length - 2
    codon_index = np.empty((n, positions), dtype=np.uint8)
    scratch = np.empty((n, positions), dtype=np.uint8)
    np.left_shift(codes[:, :positions], 4, out=codon_index)
    np.left_shift(codes[:, 1:positions + 1], 2, out=scratch)
    np.bitwise_or(codon_index, scratch, out=codon_index)
    np.bitwise_or(codon_index, codes[:, 2:], out=codon_index)
    flags = np.frombuffer(codon_index.tobytes().translate(_STOP_FLAG_BYTES),
                          dtype=np.uint8).reshape(n, positions)
    class_flags = [np.bitwise_or.reduce(flags[:, k::3], axis=1) if k < positions else None
                   for k in range(3)]

    # keep[:, k]: frame k+1 (F1..F3, R1..R3) is stop-free and non-empty.
    keep = np.zeros((n, 6), dtype=bool)
    for frame in range(6):
        offset = frame % 3
        if (length - offset) // 3 <= 0:
            continue
        if frame < 3:
            keep[:, frame] = (class_flags[offset] & 1) == 0
        else:
            keep[:, frame] = (class_flags[(length - 3 - offset) % 3] & 2) == 0
    if not keep.any():
        return

    kept_rows, kept_frames = np.nonzero(keep)  # row-major: chunk order, then frame order
    # Rank of each kept frame within its chunk, so keys sort back into input order.
    ranks = np.cumsum(keep, axis=1)[kept_rows, kept_frames] - 1
    kept_members = members[kept_rows]
    frame_keys = (kept_members * 6 + ranks).tolist()

    # Protein strings: one decode per frame for the rows that keep it.
    protein_text: dict[int, list[str]] = {}
    for frame in range(6):
        rows_here = np.flatnonzero(keep[:, frame])
        if rows_here.size == 0:
            continue
        offset = frame % 3
        codons = (length - offset) // 3
        if frame < 3:
            amino = _AA_TABLE[codon_index[rows_here, offset:offset + 3 * codons:3]]
        else:
            first = (length - offset) - 3 * codons
            amino = _RC_AA_TABLE[codon_index[rows_here, first:positions - offset:3]][:, ::-1]
        text = np.ascontiguousarray(amino).tobytes().decode("ascii")
        protein_text[frame] = [text[k * codons:(k + 1) * codons] for k in range(rows_here.size)]

    cursor = [0] * 6
    for row, frame, key, index in zip(kept_rows.tolist(), kept_frames.tolist(), frame_keys,
                                      kept_members.tolist()):
        protein = protein_text[frame][cursor[frame]]
        cursor[frame] += 1
        chunk_id = chunks[index][0]
        sequence = sequences[row]
        end = 3 * len(protein) + 1
        if frame < 3:
            nucleotide = sequence[frame:frame + end]
            frame_id = f"{chunk_id}F{frame + 1}"
        else:
            offset = frame - 3
            # The reverse complement, sliced without building it: reverse[o:o+end]
            # is the complement of sequence[L-o-end : L-o] read backwards.
            stop = length - offset
            nucleotide = sequence[max(0, stop - end):stop].translate(_COMPLEMENT)[::-1]
            frame_id = f"{chunk_id}R{offset + 1}"
        keys.append(key)
        rows.append((frame_id, nucleotide, protein))
