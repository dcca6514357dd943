"""Shards, the unit of streaming and resuming: records grouped, chunked and framed (no torch)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from . import ids
from .fasta import FastaRecord
from .fastq import read_sequences
from .frames import chunk_sequence, select_frames

DEFAULT_SHARD_CHUNKS = 10000


@dataclass
class SequenceInfo:
    seq_id: str
    length: int
    chunk_ids: list[str]


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


def iter_shards(input_path: Path, chunk_size: int, shard_chunks: int) -> Iterator[tuple[int, list[FastaRecord]]]:
    """Group input records into shards of about ``shard_chunks`` chunks (whole records only)."""
    batch: list[FastaRecord] = []
    chunks = 0
    index = 0
    for record in read_sequences(input_path, alphabet="dna"):
        batch.append(record)
        chunks += max(1, math.ceil(len(record.seq) / chunk_size))
        if chunks >= shard_chunks:
            yield index, batch
            index += 1
            batch, chunks = [], 0
    if batch:
        yield index, batch


def preprocess_shard(index: int, records: list[FastaRecord], chunk_size: int) -> Shard:
    """Chunk, translate and select frames for the records of one shard (CPU only)."""
    shard = Shard(index)
    for record in records:
        chunks = chunk_sequence(record.seq, chunk_size)
        chunk_ids = [ids.chunk_id(record.id, k) for k in range(1, len(chunks) + 1)]
        shard.sequences.append(SequenceInfo(record.id, len(record.seq), chunk_ids))
        shard.chunks.extend(zip(chunk_ids, chunks))
    upper_chunks = [(chunk_id, chunk.upper()) for chunk_id, chunk in shard.chunks]
    for frame_id, nucleotide, protein in select_frames(upper_chunks):
        shard.frame_ids.append(frame_id)
        shard.nucleotides.append(nucleotide)
        shard.proteins.append(protein)
    return shard

