"""Shards, the unit of streaming and resuming: records grouped, chunked and framed (no torch)."""
from __future__ import annotations

from dataclasses import dataclass, field

from . import ids
from .fasta import FastaRecord
from .frames import chunk_sequence, select_frames

DEFAULT_SHARD_CHUNKS = 10000
_RNA_AS_DNA = str.maketrans("U", "T")


@dataclass
class SequenceInfo:
    """One record's part of a shard: all its chunks, or (a long record) ``chunk_ids`` from ``first_chunk``."""

    seq_id: str
    length: int
    chunk_ids: list[str]
    first_chunk: int = 0
    total_chunks: int = -1  # -1: the chunk_ids are all of them

    @property
    def whole(self) -> bool:
        """True when this shard holds every chunk of the record."""
        return self.first_chunk == 0 and self.total_chunks in (-1, len(self.chunk_ids))


@dataclass
class Shard:
    index: int
    sequences: list[SequenceInfo] = field(default_factory=list)
    chunks: list[tuple[str, str]] = field(default_factory=list)  # (chunk id, chunk as in the input)
    frame_ids: list[str] = field(default_factory=list)
    nucleotides: list[str] = field(default_factory=list)
    proteins: list[str] = field(default_factory=list)

    @property
    def chunk_count(self) -> int:
        return len(self.chunks)


def chunk_count(length: int, chunk_size: int) -> int:
    """Chunks of a sequence of ``length`` bp (as :func:`chunk_sequence` cuts it; at least 1)."""
    return max(1, -(-length // chunk_size))


@dataclass(frozen=True)
class RecordPiece:
    """Chunks ``first_chunk .. first_chunk + chunk_count - 1`` (0-based) of a record of ``total_chunks``."""

    record: FastaRecord
    first_chunk: int
    chunk_count: int
    total_chunks: int


def preprocess_shard(index: int, pieces: list[RecordPiece], chunk_size: int) -> Shard:
    """Chunk, translate and select frames for the record pieces of one shard (CPU only).

    RNA is read as DNA: ``U``/``u`` are translated and embedded as ``T``/``t`` (the
    chunk FASTA keeps the input's letters).
    """
    shard = Shard(index)
    for piece in pieces:
        record = piece.record
        chunks = chunk_sequence(record.seq, chunk_size)[piece.first_chunk:piece.first_chunk + piece.chunk_count]
        chunk_ids = [ids.chunk_id(record.id, piece.first_chunk + k) for k in range(1, len(chunks) + 1)]
        shard.sequences.append(SequenceInfo(record.id, len(record.seq), chunk_ids, piece.first_chunk,
                                            piece.total_chunks))
        shard.chunks.extend(zip(chunk_ids, chunks))
    upper_chunks = [(chunk_id, chunk.upper().translate(_RNA_AS_DNA)) for chunk_id, chunk in shard.chunks]
    for frame_id, nucleotide, protein in select_frames(upper_chunks):
        shard.frame_ids.append(frame_id)
        shard.nucleotides.append(nucleotide)
        shard.proteins.append(protein)
    return shard
