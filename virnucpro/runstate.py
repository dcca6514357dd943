"""Run state of a prediction OUTDIR: the manifest, resuming, ``--force``, which shards are still due.

The work directory (:class:`~virnucpro.rundir.WorkDir`) holds the manifest (every setting
that determines the output bytes), the shard index and the finished shards' files;
:mod:`virnucpro.assemble` joins those into the final outputs.
"""
from __future__ import annotations

import contextlib
import json
import logging
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


def open_run(run: RunDir, settings: dict, force: bool, get_index: Callable[[Path], ShardIndex],
             protected: Sequence[tuple[str, Path]] = ()) -> tuple[Path, ShardIndex, bool]:
    """Create or resume the work directory; returns (work_dir, shard index, already_finished).

    ``protected`` (``(what, path)``: the input, the checkpoint, local models) must not lie
    among the run's files (:func:`check_inputs_are_not_outputs`), checked before anything
    is removed.

    ``settings`` (everything but the input's hash) are checked against an earlier run's
    manifest before ``get_index(work)`` reads the input; the index's hash is then
    checked and recorded as ``input_sha256``.
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
    index = get_index(work.path)
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
            log.info("resuming the run in %s (begun by version %s)", run.outdir,
                     previous.get(VERSION_KEY, "unknown"))
        return work.path, index, finished
    index.save(work.path)
    write_manifest(work.manifest, {**settings, VERSION_KEY: __version__})
    return work.path, index, False


def record_esm_loader(work: Path, loader: str) -> None:
    """Note in the manifest how this launch loaded the protein model (``remote``/``native``: the same numbers)."""
    manifest_path = WorkDir(work).manifest
    manifest = read_manifest(manifest_path)
    used = [str(name) for name in manifest.get(ESM_LOADERS_KEY, []) if isinstance(name, str)]
    if loader in used:
        return
    if used:
        log.info("the protein model was loaded with the %s loader by an earlier launch and with %s now "
                 "(the same weights and numbers)", "/".join(used), loader)
    manifest[ESM_LOADERS_KEY] = [*used, loader]
    write_manifest(manifest_path, manifest)


def mark_finished(work: Path) -> None:
    """Record in the manifest that the final outputs are complete."""
    manifest_path = WorkDir(work).manifest
    manifest = read_manifest(manifest_path)
    manifest[FINISHED_KEY] = True
    write_manifest(manifest_path, manifest)


def _changed_error(outdir: Path, changed: list[str]) -> VirNucProError:
    return VirNucProError(f"{outdir}: holds a run with different {', '.join(changed)}; rerun with --force to "
                          "start over, or choose another OUTDIR")


def pending_shards(work: Path, index: ShardIndex) -> list[int]:
    """The shards of the index not verified done, in order (recomputed at every start).

    A finished shard whose files fail its ``done`` marker's sizes and hashes is pending
    again (one WARNING names the file).
    """
    return [k for k, entry in enumerate(index.shards) if not verified_shard(work, k, entry.chunks)]
