"""Run state of a prediction OUTDIR: the manifest, resuming, ``--force``, finalising.

The work directory ``OUTDIR/.virnucpro_work`` holds the manifest (every setting that
determines the output bytes) and the finished shards' files; the final outputs are
concatenated (and, for the consensus, merged) from them and renamed into place.
"""
from __future__ import annotations

import heapq
import json
import logging
import shutil
from pathlib import Path
from typing import IO

from .errors import VirNucProError
from .fasta import write_fasta_record
from .fastq import read_sequences
from .files import HASH_BLOCK, TEXT_ENCODING, TEXT_ERRORS, atomic_write
from .outputs import (CONSENSUS_COLUMNS, FEATURES_DIR_NAME, MANIFEST_NAME, RESULTS_COLUMNS, SHARD_FEATURES_GLOB,
                      SUMMARY_COLUMNS, VIRAL_CALL, WORK_DIR_NAME, final_outputs, header_line)
from .results import SHARD_PARTS, shard_path

log = logging.getLogger("virnucpro.predict")

MANIFEST_VERSION = 1


def remove_own_files(outdir: Path, stem: str, length: int) -> None:
    """--force: delete only what this program writes in OUTDIR."""
    shutil.rmtree(outdir / WORK_DIR_NAME, ignore_errors=True)
    for path in final_outputs(outdir, stem, length):
        path.unlink(missing_ok=True)
    features = outdir / FEATURES_DIR_NAME
    if features.is_dir():
        for path in features.glob(SHARD_FEATURES_GLOB):
            path.unlink()
        try:
            features.rmdir()
        except OSError:
            pass  # the user keeps other files there


def open_run(outdir: Path, settings: dict, force: bool, stem: str, length: int) -> tuple[Path, bool]:
    """Create or resume the work directory; returns (work_dir, already_finished)."""
    work = outdir / WORK_DIR_NAME
    manifest_path = work / MANIFEST_NAME
    if force:
        remove_own_files(outdir, stem, length)
    elif manifest_path.is_file():
        try:
            previous = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            previous = {}
        old = {k: v for k, v in previous.items() if k != "finished"}
        if old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise VirNucProError(
                f"{outdir}: holds a run with different {', '.join(changed)}; rerun with --force to "
                "start over, or choose another OUTDIR")
        finished = bool(previous.get("finished")) and all(p.is_file() for p in final_outputs(outdir, stem, length))
        if not finished:
            log.info("resuming the run in %s", outdir)
        return work, finished
    elif any(p.exists() for p in final_outputs(outdir, stem, length)):
        raise VirNucProError(f"{outdir}: already holds results not made by this run "
                                   "(no run manifest); use --force to overwrite them or choose another OUTDIR")
    work.mkdir(parents=True, exist_ok=True)
    for stale in work.glob(".*.tmp"):
        stale.unlink()
    with atomic_write(manifest_path) as handle:
        json.dump(settings, handle, indent=1, sort_keys=True)
    return work, False


def concatenate(parts: list[Path], target: Path, header: str = "") -> None:
    with atomic_write(target, "wb") as out:
        out.write(header.encode())
        for part in parts:
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, out, HASH_BLOCK)


def merge_sorted(parts: list[Path], target: Path, header: str) -> None:
    """Merge per-shard sorted consensus files into one file sorted by chunk id."""
    handles: list[IO[str]] = [open(p, encoding=TEXT_ENCODING, errors=TEXT_ERRORS, newline="\n")
                              for p in parts]
    try:
        with atomic_write(target) as out:
            out.write(header)
            out.writelines(heapq.merge(*handles, key=lambda line: line.split("\t", 1)[0]))
    finally:
        for handle in handles:
            handle.close()


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
            if fields[-1] == VIRAL_CALL:
                write_fasta_record(out, record.description, record.seq)
                count += 1
    log.info("%d viral sequences in %s", count, target)
    return count


def finalise(outdir: Path, work: Path, shard_count: int, stem: str, length: int, input_path: Path) -> None:
    """Make the final outputs from the finished shards, then mark the run finished."""
    parts = {part: [shard_path(work, i, part) for i in range(shard_count)] for part in SHARD_PARTS}
    chunked, nucleotide, protein, results, consensus, summary, viral = final_outputs(outdir, stem, length)
    concatenate(parts["chunked.fa"], chunked)
    concatenate(parts["nucleotide.fa"], nucleotide)
    concatenate(parts["protein.faa"], protein)
    concatenate(parts["results.tsv"], results, header_line(RESULTS_COLUMNS))
    merge_sorted(parts["consensus.tsv"], consensus, header_line(CONSENSUS_COLUMNS))
    concatenate(parts["summary.tsv"], summary, header_line(SUMMARY_COLUMNS))
    write_viral_sequences(input_path, summary, viral)
    manifest_path = work / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["finished"] = True
    with atomic_write(manifest_path) as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
    for path in work.glob("shard_*"):
        path.unlink()

