"""The identifier format, built and parsed here only.

A chunk of input record ``R`` is ``R_chunk_K`` (K = 1, 2, ...); a kept frame of a
chunk appends its two-character tag ``F1``, ``F2``, ``F3`` (forward strand, offset
0-2) or ``R1``, ``R2``, ``R3`` (reverse complement).  ``prediction_results.txt``
rows, feature-file ids and the training FASTA files all use these ids.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

CHUNK_TAG = "_chunk_"
FRAME_TAGS = ("F1", "F2", "F3", "R1", "R2", "R3")
FRAME_TAG_LENGTH = 2
_FRAME_TAG = re.compile(r"[FR][1-3]$")
_FRAME_ID = re.compile(r"^(?P<sequence>.+)_chunk_(?P<chunk>[1-9][0-9]*)(?P<tag>[FR][1-3])$")


def chunk_id(record_id: str, index: int) -> str:
    """Id of chunk ``index`` (1-based) of a record."""
    return f"{record_id}{CHUNK_TAG}{index}"


def frame_id(chunk: str, frame: int) -> str:
    """Id of frame ``frame`` (1-6: F1, F2, F3, R1, R2, R3) of a chunk."""
    return chunk + FRAME_TAGS[frame - 1]


def chunk_of_frame(frame: str) -> str:
    """The chunk id of a frame id (its last two characters removed)."""
    return frame[:-FRAME_TAG_LENGTH]


def source_sequence_id(row_id: str) -> str:
    """The input record of a frame or chunk id: everything before the last ``_chunk_``.

    An id without ``_chunk_`` loses only its frame tag (``F1``..``R3``).
    """
    head, sep, _ = row_id.rpartition(CHUNK_TAG)
    if sep:
        return head
    return _FRAME_TAG.sub("", row_id)


def training_accession(chunk: str) -> str:
    """The GenBank accession the original training script looked up for a chunk id.

    The original split at the FIRST ``_chunk_`` (unlike :func:`source_sequence_id`);
    kept so that training data stay byte-identical.
    """
    return chunk.split(CHUNK_TAG)[0]


@dataclass(frozen=True)
class FrameId:
    """A parsed frame id."""

    sequence: str
    chunk: int
    tag: str


def parse_frame_id(text: str) -> FrameId | None:
    """Parse ``SEQ_chunk_K`` + ``F1..R3``; None when ``text`` is not a frame id."""
    match = _FRAME_ID.match(text)
    if match is None:
        return None
    return FrameId(match["sequence"], int(match["chunk"]), match["tag"])
