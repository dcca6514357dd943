"""Chunking, six-frame translation and stop-free frame selection (no torch).

The reference functions keep the original VirNucPro names and are byte-identical to
it (``chunk_sequence``/``split_fasta_chunk``, ``translate_dna``, ``identify_seq``).
:func:`select_frames` gives exactly what the original per-chunk loop gives::

    [(d['seqid'], d['nucleotide'], d['protein'])
     for cid, s in chunks for d in identify_seq(cid, s) if d['protein'] != '']

but translates whole batches of chunks at once with numpy: chunks of one length are
stacked into a ``uint8`` matrix, each base becomes a 2-bit code, every codon a 6-bit
index into a 64-entry table, and stop codons are found for all chunks and frames
together.  Python strings are built only for the stop-free frames.  A chunk holding
anything other than upper-case ``A``/``C``/``G``/``T`` goes through
:func:`identify_seq` itself (codons with other letters are dropped there, which
shifts the protein), so the output is byte-identical for every input.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import numpy as np

from . import ids
from .fasta import read_fasta, write_fasta_record
from .files import atomic_write, open_text


def chunk_sequence(seq: str, chunk_size: int) -> list[str]:
    """Cut ``seq`` into overlapping chunks exactly as the original VirNucPro does."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    seq_length = len(seq)
    num_chunks = -(-seq_length // chunk_size)
    if num_chunks == 0:
        return []
    overlap_total = num_chunks * chunk_size - seq_length
    lower = int(overlap_total / num_chunks)
    upper = lower + 1
    need_upper = overlap_total - lower * (num_chunks - 1)
    shifts = [upper] * need_upper + [lower] * (num_chunks - 1 - need_upper) + [0]
    chunks = []
    moved = 0
    for start, shift in zip(range(0, seq_length, chunk_size), shifts):
        begin = start - moved
        chunks.append(seq[begin:begin + chunk_size])
        moved += shift
    return chunks


def split_fasta_chunk(input_file: str | os.PathLike, output_file: str | os.PathLike, chunk_size: int) -> int:
    """Write every record of ``input_file`` cut into ``chunk_size`` chunks; return the chunk count."""
    count = 0
    with atomic_write(output_file) as out_handle:
        for record in read_fasta(input_file, alphabet=None, check_duplicates=False):
            for index, chunk in enumerate(chunk_sequence(record.seq, int(chunk_size)), start=1):
                write_fasta_record(out_handle, ids.chunk_id(record.id, index), chunk)
                count += 1
    return count


def create_refseq_pro_list(gbff_file: str | os.PathLike) -> dict[str, list[str]]:
    """Map each GenBank record id to the ``/translation`` of its CDS features."""
    from Bio import SeqIO

    refseq_pro_dir: dict[str, list[str]] = {}
    with open_text(gbff_file) as handle:
        for record in SeqIO.parse(handle, "genbank"):
            refseq_pro_dir[record.id] = [
                feature.qualifiers.get("translation", [""])[0]
                for feature in record.features if feature.type == "CDS"
            ]
    return refseq_pro_dir


_COMPLEMENT = str.maketrans("ACGTacgt", "TGCAtgca")


def reverse_complement(sequence: str) -> str:
    """Reverse complement; only A, C, G, T (either case) are complemented."""
    return sequence.translate(_COMPLEMENT)[::-1]


_BASES = "TCAG"
_AMINO_ACIDS = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
CODON_TABLE = {a + b + c: _AMINO_ACIDS[16 * i + 4 * j + k]
               for i, a in enumerate(_BASES) for j, b in enumerate(_BASES) for k, c in enumerate(_BASES)}


def _translate_frame(sequence: str, frame: int) -> str:
    table = CODON_TABLE
    return "".join([table.get(sequence[i:i + 3], "") for i in range(frame, len(sequence) - 2, 3)])


def translate_dna(sequence: str) -> list[str]:
    """Six-frame translation; codons that are not three of A/C/G/T (upper case) are dropped."""
    reverse = reverse_complement(sequence)
    return [_translate_frame(sequence, f) for f in range(3)] + [_translate_frame(reverse, f) for f in range(3)]


def seq_in_reflist(sequence: str, refseq_pro_list: Iterable[str]) -> bool:
    """True when ``sequence`` is a substring of any reference protein."""
    return any(sequence in refpro for refpro in refseq_pro_list)


AMBIGUOUS_BASES = frozenset("NRYMKSWHBVD")


def identify_seq(seqid: str, sequence: str, refseq_pro_list: Sequence[str] | None = None,
                 istraindata: bool = False) -> list[dict[str, str]] | None:
    """Return the stop-free frames of ``sequence`` as ``{'seqid', 'nucleotide', 'protein'}`` dicts.

    In training mode a sequence with an ambiguous base gives None, and only frames
    found in ``refseq_pro_list`` are kept.  Ids get ``F1..F3`` / ``R1..R3``; the DNA
    slice is one base longer than the codons (the original's quirk, kept on purpose).
    """
    if istraindata and any(base in sequence for base in AMBIGUOUS_BASES):
        return None
    reverse = None
    selected = []
    for num, protein in enumerate(translate_dna(sequence), start=1):
        if "*" in protein:
            continue
        if istraindata and not seq_in_reflist(protein, refseq_pro_list or ()):
            continue
        seq_len = 3 * len(protein)
        if num <= 3:
            nucleotide = sequence[num - 1:num + seq_len]
            frame_id = ids.frame_id(seqid, num)
        else:
            if reverse is None:
                reverse = reverse_complement(sequence)
            nucleotide = reverse[num - 4:num - 3 + seq_len]
            frame_id = ids.frame_id(seqid, num)
        selected.append({"seqid": frame_id, "nucleotide": nucleotide, "protein": protein})
    return selected


def process_record(index: int, record: Any, refseq_pro_list: Sequence[str] | None = None,
                   istraindata: bool = False) -> tuple[int, list[dict[str, str]] | None]:
    """Upper-case a record and run :func:`identify_seq` on it; returns ``(index, frames)``."""
    sequence = str(record.seq).upper()
    return index, identify_seq(record.id, sequence, refseq_pro_list, istraindata)


# ---------------------------------------------------------------------------
# Vectorised frame selection
# ---------------------------------------------------------------------------


# Base codes T=0, C=1, A=2, G=3: a codon's index is 16*b1 + 4*b2 + b3, and the
# complement of a code is ``code ^ 2`` (T<->A, C<->G).
_BASE_ORDER = "TCAG"
_BAD = 255
_CODE_BYTES = bytes(_BASE_ORDER.index(chr(c)) if chr(c) in _BASE_ORDER else _BAD for c in range(256))
_CODONS = [a + b + c for a in _BASE_ORDER for b in _BASE_ORDER for c in _BASE_ORDER]
#: False if CODON_TABLE ever gets entries beyond the 64 A/C/G/T codons (then
#: everything goes through identify_seq, which stays the reference).
_VECTORISABLE = set(CODON_TABLE) == set(_CODONS) and all(
    len(CODON_TABLE[c]) == 1 and CODON_TABLE[c].isascii() for c in _CODONS)

if _VECTORISABLE:
    _AA_TABLE = np.frombuffer("".join(CODON_TABLE[c] for c in _CODONS).encode("ascii"),
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
_UPPER_COMPLEMENT = str.maketrans("ACGT", "TGCA")
_ACGT = b"ACGT"

#: Chunks of one length translated together; bounds the temporary arrays (a few
#: bytes per base) and keeps them cache-friendly.
BLOCK_CHUNKS = 1024


def select_frames(chunks: Iterable[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """Stop-free frames of every chunk as ``(frame_id, nucleotide, protein)``.

    ``chunks`` holds ``(chunk_id, sequence)`` pairs, the sequence already upper-cased
    (as the original callers do).  Frames come chunk by chunk in input order, frames
    ``F1, F2, F3, R1, R2, R3`` within a chunk; frames with an empty protein are left
    out.  Identical to running :func:`identify_seq` on each chunk.
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
    for item in identify_seq(chunk_id, sequence):
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
            frame_id = ids.frame_id(chunk_id, frame + 1)
        else:
            offset = frame - 3
            # The reverse complement, sliced without building it: reverse[o:o+end]
            # is the complement of sequence[L-o-end : L-o] read backwards.
            stop = length - offset
            nucleotide = sequence[max(0, stop - end):stop].translate(_UPPER_COMPLEMENT)[::-1]
            frame_id = ids.frame_id(chunk_id, frame + 1)
        keys.append(key)
        rows.append((frame_id, nucleotide, protein))
