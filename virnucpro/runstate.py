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
from .files import HASH_BLOCK, TEXT_ENCODING, TEXT_ERRORS, atomic_write
from .outputs import (CONSENSUS_COLUMNS, FEATURES_DIR_NAME, MANIFEST_NAME, RESULTS_COLUMNS, SHARD_FEATURES_GLOB,
                      SUMMARY_COLUMNS, WORK_DIR_NAME, final_outputs, header_line)
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


def finalise(outdir: Path, work: Path, shard_count: int, stem: str, length: int) -> None:
    parts = {part: [shard_path(work, i, part) for i in range(shard_count)] for part in SHARD_PARTS}
    chunked, nucleotide, protein, results, consensus, summary = final_outputs(outdir, stem, length)
    concatenate(parts["chunked.fa"], chunked)
    concatenate(parts["nucleotide.fa"], nucleotide)
    concatenate(parts["protein.faa"], protein)
    concatenate(parts["results.tsv"], results, header_line(RESULTS_COLUMNS))
    merge_sorted(parts["consensus.tsv"], consensus, header_line(CONSENSUS_COLUMNS))
    concatenate(parts["summary.tsv"], summary, header_line(SUMMARY_COLUMNS))
    manifest_path = work / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["finished"] = True
    with atomic_write(manifest_path) as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
    for path in work.glob("shard_*"):
        path.unlink()

