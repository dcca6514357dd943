"""Run state of a prediction OUTDIR: the manifest, resuming, ``--force``, finalising.

The work directory ``OUTDIR/.virnucpro_work`` holds the manifest (every setting that
determines the output bytes) and the finished shards' files; the final outputs are
concatenated (and, for the consensus, merged) from them and renamed into place.
"""
from __future__ import annotations

import contextlib
import heapq
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator, Sequence

from . import __version__
from .errors import VirNucProError
from .fasta import write_fasta_record
from .fastq import read_sequences
from .dupcheck import SPILL_TEMPLATE
from .errors import InputError
from .files import (HASH_BLOCK, TEMP_SUFFIX, TEXT_ENCODING, TEXT_ERRORS, atomic_write, fdopen_text_output,
                    remove_temp_files)
from .outputs import (CONSENSUS_COLUMNS, FEATURES_DIR_NAME, MANIFEST_NAME, RESULTS_COLUMNS, SHARD_FEATURES_GLOB,
                      SUMMARY_COLUMNS, VERSION_KEY, VIRAL_CALL, WORK_DIR_NAME, final_outputs, header_line)
from .results import SHARD_PARTS, merge_summaries, shard_path, verified_shard
from .shardindex import INDEX_NAME, SPOOL_NAME, ShardIndex

log = logging.getLogger("virnucpro.predict")

MANIFEST_VERSION = 2  # 2: shard index, long records split across shards
INPUT_HASH_KEY = "input_sha256"
#: Manifest entries that are information, not settings: a rerun need not match them.
#: (A program version that changed the output bytes would raise MANIFEST_VERSION.)
#: Manifest entries that are information only (a resume never compares them).
ESM_LOADERS_KEY = "esm_loaders"
INFO_KEYS = ("finished", VERSION_KEY, ESM_LOADERS_KEY)
#: At most this many shard files are open at once while the consensus is merged.
MERGE_FAN_IN = 64


#: What this program writes in its work directory; --force removes these and nothing else there.
OWN_WORK_FILES = (MANIFEST_NAME, INDEX_NAME, SPOOL_NAME, "shard_*", SPILL_TEMPLATE.replace("{:03d}", "*"),
                  f".*{TEMP_SUFFIX}")


def _own_work_files(work: Path) -> list[Path]:
    if work.is_symlink() or not work.is_dir():
        return []
    return sorted({p for pattern in OWN_WORK_FILES for p in work.glob(pattern) if p.is_symlink() or p.is_file()})


def _own_feature_files(outdir: Path) -> list[Path]:
    features = outdir / FEATURES_DIR_NAME
    if features.is_symlink() or not features.is_dir():
        return []  # never anything through a linked folder
    return [p for p in features.glob(SHARD_FEATURES_GLOB) if p.is_symlink() or p.is_file()]


def remove_own_files(outdir: Path, stem: str, length: int) -> None:
    """--force: delete only what this program writes in OUTDIR (never through a symbolic link to a folder)."""
    work = outdir / WORK_DIR_NAME
    for path in _own_work_files(work):
        path.unlink()
    if not work.is_symlink():
        with contextlib.suppress(OSError):
            work.rmdir()  # not empty: files this program did not write stay
    for path in final_outputs(outdir, stem, length):
        if path.is_symlink() or path.is_file():
            path.unlink()  # a link itself, never its target
    features = outdir / FEATURES_DIR_NAME
    if features.is_symlink():
        log.info("%s is a symbolic link: the feature files it leads to are kept", features)
    for path in _own_feature_files(outdir):
        path.unlink()
    if features.is_dir() and not features.is_symlink():
        with contextlib.suppress(OSError):
            features.rmdir()  # the user keeps other files there


def _same_file(a: Path, b: Path) -> bool:
    try:
        first, second = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def check_inputs_are_not_outputs(outdir: Path, stem: str, length: int,
                                 protected: Sequence[tuple[str, Path]]) -> None:
    """Refuse (one line) when an input of the run (``(what, path)`` pairs) lies among the files it writes or removes.

    Compared by resolved path and by inode, against the final outputs, everything in
    the work directory and the kept feature files; nothing is deleted before this check.
    """
    work = (outdir / WORK_DIR_NAME).resolve()
    ours = final_outputs(outdir, stem, length) + _own_feature_files(outdir)
    resolved = {p.resolve(): p for p in ours}
    for what, path in protected:
        if not path.exists():
            continue
        real = path.resolve()
        hit = resolved.get(real) or next((p for p in ours if _same_file(p, path)), None)
        if hit is not None:
            raise InputError(f"{path}: the {what} is inside OUTDIR under an output's name ({hit.name}); move or "
                             "rename it, or choose another OUTDIR")
        if real == work or work in real.parents:
            raise InputError(f"{path}: the {what} is inside OUTDIR's work directory {WORK_DIR_NAME}, which this "
                             "program writes and removes; move it, or choose another OUTDIR")


def check_state_names(outdir: Path) -> None:
    """Refuse (one line) a symbolic link or a special file where this program keeps its run state."""
    work = outdir / WORK_DIR_NAME
    if work.is_symlink() or (work.exists() and not work.is_dir()):
        raise InputError(f"{work}: is a symbolic link or not a directory where this program keeps its run state; "
                         "remove it, or choose another OUTDIR")
    for path in (work / MANIFEST_NAME, work / INDEX_NAME, work / SPOOL_NAME):
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise InputError(f"{path}: is a symbolic link or not a regular file where this program keeps its "
                             "run state; remove it, or choose another OUTDIR")


def read_manifest(path: Path) -> dict:
    """The manifest of an earlier run; :class:`VirNucProError` when it is damaged."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict):
        raise VirNucProError(f"{path}: the run manifest is damaged (unreadable JSON); rerun with --force "
                             "to start over (this discards the earlier run's shards)")
    return manifest


def remove_stale_temp_files(outdir: Path, stem: str, length: int) -> None:
    """Remove the temporary files a killed run of this program left (final outputs, work files, features)."""
    removed = 0 if (outdir / WORK_DIR_NAME).is_symlink() else remove_temp_files(outdir / WORK_DIR_NAME)
    for path in final_outputs(outdir, stem, length):
        removed += remove_temp_files(outdir, path.name)
    if not (outdir / FEATURES_DIR_NAME).is_symlink():
        removed += remove_temp_files(outdir / FEATURES_DIR_NAME, SHARD_FEATURES_GLOB)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run", removed)


def _changed(old: dict, new: dict, skip: str = "") -> list[str]:
    keys = (set(old) | set(new)) - {*INFO_KEYS, skip}
    return sorted(k for k in keys if old.get(k) != new.get(k))


def open_run(outdir: Path, settings: dict, force: bool, stem: str, length: int,
             get_index: Callable[[Path], ShardIndex],
             protected: Sequence[tuple[str, Path]] = ()) -> tuple[Path, ShardIndex, bool]:
    """Create or resume the work directory; returns (work_dir, shard index, already_finished).

    ``protected`` (``(what, path)``: the input, the checkpoint, local models) must not lie
    among the run's files (:func:`check_inputs_are_not_outputs`), checked before anything
    is removed.

    ``settings`` (everything but the input's hash) are checked against an earlier run's
    manifest before ``get_index(work)`` reads the input; the index's hash is then
    checked and recorded as ``input_sha256``.
    """
    work = outdir / WORK_DIR_NAME
    manifest_path = work / MANIFEST_NAME
    check_inputs_are_not_outputs(outdir, stem, length, protected)
    check_state_names(outdir)
    if force:
        remove_own_files(outdir, stem, length)
    remove_stale_temp_files(outdir, stem, length)
    previous = read_manifest(manifest_path) if manifest_path.exists() else None
    if previous is not None:
        changed = _changed(previous, settings, skip=INPUT_HASH_KEY)
        if changed:
            raise _changed_error(outdir, changed)
    elif any(p.exists() for p in final_outputs(outdir, stem, length)):
        raise VirNucProError(f"{outdir}: already holds results not made by this run "
                             "(no run manifest); use --force to overwrite them or choose another OUTDIR")
    work.mkdir(parents=True, exist_ok=True)
    index = get_index(work)
    settings = {**settings, INPUT_HASH_KEY: index.sha256}
    if previous is not None:
        changed = _changed(previous, settings)
        if changed:
            raise _changed_error(outdir, changed)
        index.save(work)
        finished = bool(previous.get("finished")) and all(p.is_file() for p in final_outputs(outdir, stem, length))
        if finished:
            (work / SPOOL_NAME).unlink(missing_ok=True)  # a stream read again only to check its hash
        else:
            log.info("resuming the run in %s (begun by version %s)", outdir, previous.get(VERSION_KEY, "unknown"))
        return work, index, finished
    index.save(work)
    with atomic_write(manifest_path) as handle:
        json.dump({**settings, VERSION_KEY: __version__}, handle, indent=1, sort_keys=True)
    return work, index, False


def record_esm_loader(work: Path, loader: str) -> None:
    """Note in the manifest how this launch loaded the protein model (``remote``/``native``: the same numbers)."""
    manifest_path = work / MANIFEST_NAME
    manifest = read_manifest(manifest_path)
    used = [str(name) for name in manifest.get(ESM_LOADERS_KEY, []) if isinstance(name, str)]
    if loader in used:
        return
    if used:
        log.info("the protein model was loaded with the %s loader by an earlier launch and with %s now "
                 "(the same weights and numbers)", "/".join(used), loader)
    manifest[ESM_LOADERS_KEY] = [*used, loader]
    with atomic_write(manifest_path) as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)


def _changed_error(outdir: Path, changed: list[str]) -> VirNucProError:
    return VirNucProError(f"{outdir}: holds a run with different {', '.join(changed)}; rerun with --force to "
                          "start over, or choose another OUTDIR")


def concatenate(parts: list[Path], target: Path, header: str = "") -> None:
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


def pending_shards(work: Path, index: ShardIndex) -> list[int]:
    """The shards of the index not verified done, in order (recomputed at every start).

    A finished shard whose files fail its ``done`` marker's sizes and hashes is pending
    again (one WARNING names the file).
    """
    return [k for k, entry in enumerate(index.shards) if not verified_shard(work, k, entry.chunks)]


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


def check_shards_done(work: Path, index: ShardIndex) -> None:
    """Raise unless every shard of the index is done and its files match their ``done`` marker.

    A shard that fails the check loses its marker (a rerun scores it again).
    """
    for k, entry in enumerate(index.shards):
        if not verified_shard(work, k, entry.chunks):
            raise VirNucProError(f"{work}: shard {k} is missing or incomplete; rerun the same command to "
                                 "finish it")


def finalise(outdir: Path, work: Path, index: ShardIndex, stem: str, length: int) -> None:
    """Check every shard, join them into the final outputs, mark the run finished, remove the shards."""
    check_shards_done(work, index)
    shard_count = len(index.shards)
    parts = {part: [shard_path(work, i, part) for i in range(shard_count)] for part in SHARD_PARTS}
    chunked, nucleotide, protein, results, consensus, summary, viral = final_outputs(outdir, stem, length)
    concatenate(parts["chunked.fa"], chunked)
    concatenate(parts["nucleotide.fa"], nucleotide)
    concatenate(parts["protein.faa"], protein)
    concatenate(parts["results.tsv"], results, header_line(RESULTS_COLUMNS))
    merge_sorted(parts["consensus.tsv"], consensus, header_line(CONSENSUS_COLUMNS))
    with atomic_write(summary) as out:
        out.write(header_line(SUMMARY_COLUMNS))
        merge_summaries(parts["summary.tsv"], out)
    write_viral_sequences(index.data_path(work), summary, viral)
    manifest_path = work / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["finished"] = True
    with atomic_write(manifest_path) as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
    for path in work.glob("shard_*"):
        path.unlink()
    (work / SPOOL_NAME).unlink(missing_ok=True)
    remove_temp_files(work)

