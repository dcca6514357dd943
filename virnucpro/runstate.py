"""Run state of a prediction OUTDIR: the manifest, resuming, ``--force``, which shards are still due.

The work directory (:class:`~virnucpro.rundir.WorkDir`) holds the manifest (every setting
that determines the output bytes), the shard index and the finished shards' files;
:mod:`virnucpro.assemble` joins those into the final outputs.

A run opens in two halves: :func:`check_run` (before the input is read), then either
:func:`record_index` after one whole input pass (a resume of a run whose pass ended), or
:func:`begin_run` before a pass that is published while it runs (:mod:`virnucpro.indexstream`),
whose end adds the input's hash to the manifest (:func:`record_input_hash`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import threading
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .errors import InputError, VirNucProError
from .files import atomic_write, remove_temp_files, same_file
from .outputs import VERSION_KEY
from .results import verified_shard
from .rundir import SHARD_FEATURES_GLOB, WORK_DIR_NAME, RunDir, WorkDir
from .shardindex import ShardIndex

log = logging.getLogger("virnucpro.predict")

MANIFEST_VERSION = 2  # 2: shard index, long records split across shards
INPUT_HASH_KEY = "input_sha256"
FINISHED_KEY = "finished"
ESM_LOADERS_KEY = "esm_loaders"
#: Manifest entries that are information only (a resume never compares them).
#: (A program version that changed the output bytes would raise MANIFEST_VERSION.)
INFO_KEYS = (FINISHED_KEY, VERSION_KEY, ESM_LOADERS_KEY)
#: Rank 0 may update the manifest from more than one thread (the input's hash, the loader): one at a time.
_MANIFEST_UPDATE = threading.Lock()


def _own_work_files(work: WorkDir) -> list[Path]:
    if work.path.is_symlink() or not work.path.is_dir():
        return []
    return sorted({p for pattern in work.own_file_patterns() for p in work.path.glob(pattern)
                   if p.is_symlink() or p.is_file()})


def _own_feature_files(run: RunDir) -> list[Path]:
    features = run.features_dir
    if features.is_symlink() or not features.is_dir():
        return []  # never anything through a linked folder
    return [p for p in features.glob(SHARD_FEATURES_GLOB) if p.is_symlink() or p.is_file()]


def remove_own_files(run: RunDir) -> None:
    """--force: delete only what this program writes in OUTDIR (never through a symbolic link to a folder)."""
    work = run.work
    for path in _own_work_files(work):
        path.unlink()
    if not work.path.is_symlink():
        with contextlib.suppress(OSError):
            work.path.rmdir()  # not empty: files this program did not write stay
    for path in run.final_outputs():
        if path.is_symlink() or path.is_file():
            path.unlink()  # a link itself, never its target
    features = run.features_dir
    if features.is_symlink():
        log.info("%s is a symbolic link: the feature files it leads to are kept", features)
    for path in _own_feature_files(run):
        path.unlink()
    if features.is_dir() and not features.is_symlink():
        with contextlib.suppress(OSError):
            features.rmdir()  # the user keeps other files there


def check_inputs_are_not_outputs(run: RunDir, protected: Sequence[tuple[str, Path]]) -> None:
    """Refuse (one line) when an input of the run (``(what, path)`` pairs) lies among the files it writes or removes.

    Compared by resolved path and by inode, against the final outputs, everything in
    the work directory and the kept feature files; nothing is deleted before this check.
    """
    work = run.work.path.resolve()
    ours = run.final_outputs() + _own_feature_files(run)
    resolved = {p.resolve(): p for p in ours}
    for what, path in protected:
        if not path.exists():
            continue
        real = path.resolve()
        hit = resolved.get(real) or next((p for p in ours if same_file(p, path)), None)
        if hit is not None:
            raise InputError(f"{path}: the {what} is inside OUTDIR under an output's name ({hit.name}); move or "
                             "rename it, or choose another OUTDIR")
        if real == work or work in real.parents:
            raise InputError(f"{path}: the {what} is inside OUTDIR's work directory {WORK_DIR_NAME}, which this "
                             "program writes and removes; move it, or choose another OUTDIR")


def check_state_names(run: RunDir) -> None:
    """Refuse (one line) a symbolic link or a special file where this program keeps its run state."""
    work = run.work.path
    if work.is_symlink() or (work.exists() and not work.is_dir()):
        raise InputError(f"{work}: is a symbolic link or not a directory where this program keeps its run state; "
                         "remove it, or choose another OUTDIR")
    for path in run.work.state_files():
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


def write_manifest(path: Path, manifest: dict) -> None:
    """Write a run manifest atomically."""
    with atomic_write(path) as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)


def remove_stale_temp_files(run: RunDir) -> None:
    """Remove the temporary files a killed run of this program left (final outputs, work files, features)."""
    removed = 0 if run.work.path.is_symlink() else remove_temp_files(run.work.path)
    for path in run.final_outputs():
        removed += remove_temp_files(run.outdir, path.name)
    if not run.features_dir.is_symlink():
        removed += remove_temp_files(run.features_dir, SHARD_FEATURES_GLOB)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run", removed)


def _changed(old: dict, new: dict, skip: str = "") -> list[str]:
    keys = (set(old) | set(new)) - {*INFO_KEYS, skip}
    return sorted(k for k in keys if old.get(k) != new.get(k))


def check_run(run: RunDir, settings: dict, force: bool,
              protected: Sequence[tuple[str, Path]] = ()) -> dict | None:
    """Everything before the input is read; returns the earlier run's manifest, or None for a new run.

    ``protected`` (``(what, path)``: the input, the checkpoint, local models) must not lie
    among the run's files (:func:`check_inputs_are_not_outputs`), checked before anything
    is removed.  ``settings`` (everything but the input's hash) are checked against an
    earlier run's manifest.  The work directory exists afterwards.
    """
    work = run.work
    check_inputs_are_not_outputs(run, protected)
    check_state_names(run)
    if force:
        remove_own_files(run)
    remove_stale_temp_files(run)
    previous = read_manifest(work.manifest) if work.manifest.exists() else None
    if previous is not None:
        changed = _changed(previous, settings, skip=INPUT_HASH_KEY)
        if changed:
            raise _changed_error(run.outdir, changed)
    elif any(p.exists() for p in run.final_outputs()):
        raise VirNucProError(f"{run.outdir}: already holds results not made by this run "
                             "(no run manifest); use --force to overwrite them or choose another OUTDIR")
    work.path.mkdir(parents=True, exist_ok=True)
    return previous


def input_pass_recorded(previous: dict | None) -> bool:
    """True when an earlier launch read the whole input (its manifest records the input's hash)."""
    return previous is not None and INPUT_HASH_KEY in previous


def record_index(run: RunDir, settings: dict, previous: dict | None, index: ShardIndex) -> bool:
    """After a whole input pass: check its hash against the earlier run's, save the index; True if finished."""
    work = run.work
    settings = {**settings, INPUT_HASH_KEY: index.sha256}
    if previous is not None:
        changed = _changed(previous, settings)
        if changed:
            raise _changed_error(run.outdir, changed)
        index.save(work.path)
        finished = bool(previous.get(FINISHED_KEY)) and all(p.is_file() for p in run.final_outputs())
        if finished:
            work.spool.unlink(missing_ok=True)  # a stream read again only to check its hash
        else:
            _resuming(run, previous)
        return finished
    index.save(work.path)
    write_manifest(work.manifest, {**settings, VERSION_KEY: __version__})
    return False


def begin_run(run: RunDir, settings: dict, previous: dict | None) -> None:
    """Before an input pass published while it runs: the manifest of a new run, without the input's hash yet.

    Shards are scored from then on, so the settings are on disk before any shard is; the
    pass adds the hash at its end (:func:`record_input_hash`).
    """
    if previous is None:
        write_manifest(run.work.manifest, {**settings, VERSION_KEY: __version__})
    else:
        _resuming(run, previous)


def record_input_hash(work: Path, sha256: str) -> None:
    """At the end of an input pass published while it ran: record the input's hash in the manifest."""
    _set_in_manifest(work, INPUT_HASH_KEY, sha256)


def _resuming(run: RunDir, previous: dict) -> None:
    log.info("resuming the run in %s (begun by version %s)", run.outdir, previous.get(VERSION_KEY, "unknown"))


def _update_manifest(work: Path, change: Callable[[dict], bool]) -> None:
    """Read, ``change`` (True: it changed something) and write the manifest, one update at a time."""
    with _MANIFEST_UPDATE:
        manifest_path = WorkDir(work).manifest
        manifest = read_manifest(manifest_path)
        if change(manifest):
            write_manifest(manifest_path, manifest)


def _set_in_manifest(work: Path, key: str, value: object) -> None:
    def put(manifest: dict) -> bool:
        manifest[key] = value
        return True

    _update_manifest(work, put)


def open_run(run: RunDir, settings: dict, force: bool, get_index: Callable[[Path], ShardIndex],
             protected: Sequence[tuple[str, Path]] = ()) -> tuple[Path, ShardIndex, bool]:
    """Create or resume the work directory around one whole input pass; returns (work_dir, index, finished).

    :func:`check_run`, then ``get_index(work)`` reads the input, then :func:`record_index`.
    """
    previous = check_run(run, settings, force, protected)
    index = get_index(run.work.path)
    return run.work.path, index, record_index(run, settings, previous, index)


def record_esm_loader(work: Path, loader: str) -> None:
    """Note in the manifest how this launch loaded the protein model (``remote``/``native``: the same numbers)."""
    def note(manifest: dict) -> bool:
        used = [str(name) for name in manifest.get(ESM_LOADERS_KEY, []) if isinstance(name, str)]
        if loader in used:
            return False
        if used:
            log.info("the protein model was loaded with the %s loader by an earlier launch and with %s now "
                     "(the same weights and numbers)", "/".join(used), loader)
        manifest[ESM_LOADERS_KEY] = [*used, loader]
        return True

    _update_manifest(work, note)


def mark_finished(work: Path) -> None:
    """Record in the manifest that the final outputs are complete."""
    _set_in_manifest(work, FINISHED_KEY, True)


def _changed_error(outdir: Path, changed: list[str]) -> VirNucProError:
    return VirNucProError(f"{outdir}: holds a run with different {', '.join(changed)}; rerun with --force to "
                          "start over, or choose another OUTDIR")


def pending_shards(work: Path, index: ShardIndex) -> list[int]:
    """The shards of the index not verified done, in order (recomputed at every start).

    A finished shard whose files fail its ``done`` marker's sizes and hashes is pending
    again (one WARNING names the file).
    """
    return [k for k, entry in enumerate(index.shards) if not verified_shard(work, k, entry.chunks)]
