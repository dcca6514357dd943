"""Per-shard result files and the roll-up frame -> chunk -> sequence.

The per-frame rows of ``prediction_results.txt``, the per-chunk consensus of
``prediction_results_highestscore.csv`` (the original's rule: a chunk is viral when
its highest virus score >= its highest other score) and the per-sequence rows of
``prediction_summary.tsv``.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, Sequence

import numpy as np

from . import ids
from .defaults import LABEL_MAP, NO_CALL, OTHERS_CLASS, OTHERS_LABEL, VIRUS_CLASS, VIRUS_LABEL
from .fasta import write_fasta_record
from .files import TEXT_ENCODING, TEXT_ERRORS, atomic_write, file_sha256
from .rundir import (CHUNKED_PART, CONSENSUS_PART, DONE_PART, NUCLEOTIDE_PART, PROTEIN_PART, RESULTS_PART,
                     SHARD_PARTS, SUMMARY_PART, WorkDir, shard_features_name)
from .shards import SequenceInfo, Shard

if TYPE_CHECKING:
    import torch

log = logging.getLogger("virnucpro.predict")

#: The key of a ``done`` marker listing the size and SHA-256 of every file it vouches for.
DONE_FILES_KEY = "files"


def shard_path(work: Path, index: int, part: str) -> Path:
    """One file of a shard in the work directory (see :class:`~virnucpro.rundir.WorkDir`)."""
    return WorkDir(work).shard(index, part)


def write_shard(work: Path, shard: Shard, probabilities: np.ndarray, features: torch.Tensor | None,
                features_dir: Path | None, meta: dict) -> None:
    """Write every file of one shard atomically, then its ``done`` marker.

    ``probabilities`` are (others, virus) per frame, the columns of :data:`~virnucpro.defaults.LABEL_MAP`.
    """
    with atomic_write(shard_path(work, shard.index, CHUNKED_PART)) as handle:
        for chunk_id, chunk in shard.chunks:
            write_fasta_record(handle, chunk_id, chunk)
    with atomic_write(shard_path(work, shard.index, NUCLEOTIDE_PART)) as handle:
        handle.writelines(f">{i}\n{s}\n" for i, s in zip(shard.frame_ids, shard.nucleotides))
    with atomic_write(shard_path(work, shard.index, PROTEIN_PART)) as handle:
        handle.writelines(f">{i}\n{s}\n" for i, s in zip(shard.frame_ids, shard.proteins))

    predicted = probabilities.argmax(axis=1) if len(probabilities) else np.empty(0, dtype=int)
    with atomic_write(shard_path(work, shard.index, RESULTS_PART)) as handle:
        for frame_id, label, row in zip(shard.frame_ids, predicted, probabilities):
            scores = "\t".join(format_score(p) for p in row)
            handle.write(f"{frame_id}\t{LABEL_MAP[int(label)]}\t{scores}\n")

    best = chunk_best_scores(shard.frame_ids, probabilities)
    with atomic_write(shard_path(work, shard.index, CONSENSUS_PART)) as handle:
        handle.writelines(consensus_lines(best))
    with atomic_write(shard_path(work, shard.index, SUMMARY_PART)) as handle:
        handle.writelines(summary_part_line(info, best) for info in shard.sequences)
    if features_dir is not None and features is not None:
        from .features import save_merged  # torch: only when features are kept

        save_merged(features_dir / shard_features_name(shard.index), shard.frame_ids, features,
                    meta["dna_dim"], meta["protein_dim"])
    files = {part: _file_record(shard_path(work, shard.index, part)) for part in SHARD_PARTS}
    with atomic_write(shard_path(work, shard.index, DONE_PART)) as handle:
        json.dump({"sequences": len(shard.sequences), "chunks": shard.chunk_count,
                   "frames": len(shard.frame_ids), DONE_FILES_KEY: files}, handle)


def _file_record(path: Path) -> dict:
    return {"size": path.stat().st_size, "sha256": file_sha256(path)}


def damaged_shard_file(work: Path, index: int, chunks: int) -> Path | None:
    """The first file of finished shard ``index`` that fails its ``done`` marker's check, else None.

    The marker itself is returned when it is unreadable, of an older format, or for
    another chunk count; a shard file when its size or SHA-256 differs from the marker's.
    """
    marker = shard_path(work, index, DONE_PART)
    try:
        done = json.loads(marker.read_text())
        files = done[DONE_FILES_KEY]
        if done["chunks"] != chunks or set(files) != set(SHARD_PARTS):
            return marker
        expected = {part: (int(files[part]["size"]), str(files[part]["sha256"])) for part in SHARD_PARTS}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return marker
    for part in SHARD_PARTS:
        path = shard_path(work, index, part)
        try:
            if os.stat(path).st_size != expected[part][0] or file_sha256(path) != expected[part][1]:
                return path
        except OSError:
            return path
    return None


def verified_shard(work: Path, index: int, chunks: int) -> bool:
    """True when shard ``index`` is finished and every file it vouches for is intact.

    A shard with a marker that fails the check is not done: one WARNING names the file
    and the marker is removed, so the shard is scored again.
    """
    marker = shard_path(work, index, DONE_PART)
    if not marker.is_file() and not marker.is_symlink():
        return False
    damaged = damaged_shard_file(work, index, chunks)
    if damaged is None:
        return True
    log.warning("%s: damaged or unverifiable finished shard file; shard %d is scored again", damaged, index)
    marker.unlink(missing_ok=True)
    return False


def chunk_best_scores(frame_ids: Sequence[str], probabilities: np.ndarray) -> dict[str, list[np.float32]]:
    """Per chunk (frame id minus its 2-character frame tag): [max score1, max score2]."""
    best: dict[str, list[np.float32]] = {}
    for frame_id, row in zip(frame_ids, probabilities):
        chunk_id = ids.chunk_of_frame(frame_id)
        current = best.get(chunk_id)
        if current is None:
            best[chunk_id] = [row[OTHERS_CLASS], row[VIRUS_CLASS]]
        else:
            current[0] = max(current[0], row[OTHERS_CLASS])
            current[1] = max(current[1], row[VIRUS_CLASS])
    return best


def consensus_lines(best: dict[str, list[np.float32]]) -> list[str]:
    """prediction_results_highestscore.csv rows, sorted by chunk id: Is_Virus = max(score2) >= max(score1)."""
    return [f"{chunk_id}\t{bool(best[chunk_id][1] >= best[chunk_id][0])}\n" for chunk_id in sorted(best)]


def summary_row(info: SequenceInfo, best: dict[str, list[np.float32]]) -> list[str]:
    """One prediction_summary.tsv row for an input sequence."""
    scored = [best[c] for c in info.chunk_ids if c in best]
    viral = sum(1 for others, virus in scored if virus >= others)
    if scored:
        fraction = viral / len(scored)
        max_virus = format_score(max(virus for _, virus in scored))
        mean_virus = f"{float(np.mean([float(virus) for _, virus in scored])):.6f}"
        call = VIRUS_LABEL if fraction >= 0.5 else OTHERS_LABEL
        fraction_text = f"{fraction:.4f}"
    else:
        fraction_text, max_virus, mean_virus, call = "NA", "NA", "NA", NO_CALL
    return [info.seq_id, str(info.length), str(len(info.chunk_ids)), str(len(scored)), str(viral),
            fraction_text, max_virus, mean_virus, call]



SPAN_MARK = "#span"


def summary_part_line(info: SequenceInfo, best: dict[str, list[np.float32]]) -> str:
    """A shard's summary line for a sequence: its row, or for part of a long sequence a ``#span`` line.

    A span line holds the sequence's id, length, chunk count, and the first chunk and
    scored chunks ``(index, max score1, max score2)`` of this part;
    :func:`merge_summaries` joins the parts into the row.
    """
    if info.whole:
        return "\t".join(summary_row(info, best)) + "\n"
    scored = ";".join(f"{k},{format_score(best[c][0])},{format_score(best[c][1])}"
                      for k, c in enumerate(info.chunk_ids, start=info.first_chunk) if c in best)
    return "\t".join((SPAN_MARK, info.seq_id, str(info.length), str(info.total_chunks), str(info.first_chunk),
                      str(len(info.chunk_ids)), scored)) + "\n"


def merge_summaries(parts: Sequence[Path], out: IO[str]) -> None:
    """Copy the shards' summary lines to ``out`` in order, joining the parts of a long sequence into one row."""
    open_span: tuple[str, int, int] | None = None  # seq id, length, total chunks
    covered = 0
    best: dict[str, list[np.float32]] = {}
    for part in parts:
        with open(part, encoding=TEXT_ENCODING, errors=TEXT_ERRORS, newline="\n") as handle:
            for line in handle:
                if not line.startswith(SPAN_MARK + "\t"):
                    out.write(line)
                    continue
                _, seq_id, length, total, first, count, scored = line.rstrip("\n").split("\t")
                if open_span is None:
                    open_span, covered, best = (seq_id, int(length), int(total)), 0, {}
                if open_span[0] != seq_id or int(first) != covered:
                    raise ValueError(f"{part}: summary part of {seq_id} out of order")
                for item in filter(None, scored.split(";")):
                    k, others, virus = item.split(",")
                    best[ids.chunk_id(seq_id, int(k) + 1)] = [np.float32(others), np.float32(virus)]
                covered += int(count)
                if covered == open_span[2]:
                    chunk_ids = [ids.chunk_id(seq_id, k) for k in range(1, covered + 1)]
                    out.write("\t".join(summary_row(SequenceInfo(seq_id, open_span[1], chunk_ids), best)) + "\n")
                    open_span = None
    if open_span is not None:
        raise ValueError(f"summary parts of {open_span[0]} end before its last chunk")


def format_score(value: np.float32) -> str:
    """Scores are written as the original did: ``str`` of a numpy float32."""
    return str(np.float32(value))

