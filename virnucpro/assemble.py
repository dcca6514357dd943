"""Joining a prediction run's finished shards into its final outputs (no torch).

The per-shard files are concatenated (the consensus k-way merged, the summary's parts of
long sequences joined) and renamed into place; the viral records are streamed from the
input beside the summary.  Memory stays flat whatever the number of shards.
"""
from __future__ import annotations

import contextlib
import heapq
import logging
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator

from .defaults import VIRUS_LABEL
from .errors import VirNucProError
from .fasta import write_fasta_record
from .fastq import read_sequences
from .files import (HASH_BLOCK, TEMP_SUFFIX, TEXT_ENCODING, TEXT_ERRORS, atomic_write, fdopen_text_output,
                    remove_temp_files)
from .outputs import CONSENSUS_COLUMNS, RESULTS_COLUMNS, SUMMARY_COLUMNS, header_line
from .results import merge_summaries, verified_shard
from .rundir import (CHUNKED_PART, CONSENSUS_PART, NUCLEOTIDE_PART, PROTEIN_PART, RESULTS_PART, SHARD_PARTS,
                     SUMMARY_PART, RunDir)
from .runstate import mark_finished
from .shardindex import ShardIndex

log = logging.getLogger("virnucpro.predict")

#: At most this many shard files are open at once while the consensus is merged.
MERGE_FAN_IN = 64


def concatenate(parts: list[Path], target: Path, header: str = "") -> None:
    """Write ``header`` then the bytes of every part, in order, to ``target`` (atomically)."""
    with atomic_write(target, "wb") as out:
        out.write(header.encode())
        for part in parts:
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, out, HASH_BLOCK)


def _chunk_key(line: str) -> str:
    return line.split("\t", 1)[0]


@contextlib.contextmanager
def _opened(parts: list[Path]) -> Iterator[list[IO[str]]]:
    handles: list[IO[str]] = []
    try:
        for part in parts:
            handles.append(open(part, encoding=TEXT_ENCODING, errors=TEXT_ERRORS, newline="\n"))
        yield handles
    finally:
        for handle in handles:
            handle.close()


def _merge_round(parts: list[Path], scratch: Path, round_no: int, fan_in: int, made: list[Path]) -> list[Path]:
    """Merge each run of ``fan_in`` consecutive parts into one temporary file in ``scratch`` (listed in ``made``)."""
    merged = []
    for group_no, start in enumerate(range(0, len(parts), fan_in)):
        fd, name = tempfile.mkstemp(prefix=f".consensus_merge_{round_no}_{group_no}.", suffix=TEMP_SUFFIX,
                                    dir=scratch)
        made.append(Path(name))
        merged.append(Path(name))
        with fdopen_text_output(fd) as out, _opened(parts[start:start + fan_in]) as handles:
            out.writelines(heapq.merge(*handles, key=_chunk_key))
    return merged


def merge_sorted(parts: list[Path], target: Path, header: str, *, fan_in: int = MERGE_FAN_IN,
                 scratch: Path | None = None) -> None:
    """Merge per-shard sorted consensus files into one file sorted by chunk id.

    At most ``fan_in`` files are open at once: with more parts, consecutive runs of
    parts are merged into temporary files in ``scratch`` (default: the parts' folder)
    first, in rounds.  Lines with equal keys keep the order of their parts, so the
    result is the same as one merge of all parts.
    """
    if fan_in < 2:
        raise ValueError("fan_in must be at least 2")
    scratch = scratch if scratch is not None else (parts[0].parent if parts else target.parent)
    made: list[Path] = []
    try:
        round_no = 0
        while len(parts) > fan_in:
            inputs = parts
            parts = _merge_round(inputs, scratch, round_no, fan_in, made)
            if round_no:
                for old in inputs:  # the previous round's temporary files
                    old.unlink()
            round_no += 1
        with _opened(parts) as handles, atomic_write(target) as out:
            out.write(header)
            out.writelines(heapq.merge(*handles, key=_chunk_key))
    finally:
        for path in made:
            path.unlink(missing_ok=True)


def write_viral_sequences(input_path: Path, summary: Path, target: Path) -> int:
    """Write the input records called ``virus`` in ``summary`` to ``target``; returns their count.

    The summary lists the input records in input order, so both are streamed side by side
    (memory stays flat); headers and sequences are written as in the input.
    """
    count = 0
    with open(summary, encoding=TEXT_ENCODING, errors=TEXT_ERRORS, newline="\n") as rows, \
            atomic_write(target) as out:
        next(rows)  # the header line
        for record in read_sequences(input_path, alphabet=None, check_duplicates=False):
            fields = next(rows, "").rstrip("\n").split("\t")
            if fields[0] != record.id:
                raise VirNucProError(f"{summary}: row '{fields[0]}' does not match input record "
                                     f"'{record.id}' of {input_path}; rerun with --force")
            if fields[-1] == VIRUS_LABEL:
                write_fasta_record(out, record.description, record.seq)
                count += 1
    log.info("%d viral sequences in %s", count, target)
    return count


def check_shards_done(work: Path, index: ShardIndex) -> None:
    """Raise unless every shard of the index is done and its files match their ``done`` marker.

    A shard that fails the check loses its marker (a rerun scores it again).
    """
    for k, entry in enumerate(index.shards):
        if not verified_shard(work, k, entry.chunks):
            raise VirNucProError(f"{work}: shard {k} is missing or incomplete; rerun the same command to "
                                 "finish it")


def finalise(run: RunDir, index: ShardIndex) -> None:
    """Check every shard, join them into the final outputs, mark the run finished, remove the shards (and the
    spool and index log)."""
    work = run.work
    check_shards_done(work.path, index)
    parts = {part: [work.shard(i, part) for i in range(len(index.shards))] for part in SHARD_PARTS}
    concatenate(parts[CHUNKED_PART], run.chunked_fasta)
    concatenate(parts[NUCLEOTIDE_PART], run.identified_nucleotide)
    concatenate(parts[PROTEIN_PART], run.identified_protein)
    concatenate(parts[RESULTS_PART], run.results, header_line(RESULTS_COLUMNS))
    merge_sorted(parts[CONSENSUS_PART], run.consensus, header_line(CONSENSUS_COLUMNS))
    with atomic_write(run.summary) as out:
        out.write(header_line(SUMMARY_COLUMNS))
        merge_summaries(parts[SUMMARY_PART], out)
    write_viral_sequences(index.data_path(work.path), run.summary, run.viral_fasta)
    mark_finished(work.path)
    for path in work.shard_files():
        path.unlink()
    work.spool.unlink(missing_ok=True)
    work.index_log.unlink(missing_ok=True)  # a finished run resumes from its saved index
    remove_temp_files(work.path)
