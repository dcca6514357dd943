"""Which language-model weights a run used: the resolved revision of a model.

The classifier is only valid for the exact weights it was trained on, so every feature
file, checkpoint and prediction manifest records the *resolved revision* of both models:

- a model from the Hugging Face Hub (or its local cache): the 40-hex commit hash of the
  snapshot the files come from (``--esm-revision`` / ``--dnabert-revision`` pin one);
- a local directory: ``sha256:`` + a hash over the names and SHA-256 of its weight,
  config, tokenizer and code files.  File hashes are cached by (path, size, mtime) in
  ``$HF_HOME/virnucpro/file_hashes.json``, so a large model is hashed once.

No torch here; huggingface_hub is imported only when a hub id is resolved.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ModelLoadError, first_line
from .files import atomic_write, file_sha256, git_blob_id

log = logging.getLogger("virnucpro")

LOCAL_PREFIX = "sha256:"
COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")
#: Files of a local model directory that determine its numbers (weights, configs, vocabularies, code).
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".txt", ".model", ".py")
HASH_CACHE_NAME = "file_hashes.json"
HASH_CACHE_LIMIT = 5000
#: The checkpoint / manifest keys of the two revisions.
REVISION_KEYS = {"dna": "dna_model_revision", "protein": "protein_model_revision"}
#: How a feature file's model was loaded (``remote`` or ``native``; the same numbers): its key, and the merged keys.
LOADER_KEY = "model_loader"
LOADER_KEYS = {"dna": "dna_model_loader", "protein": "protein_model_loader"}

_hub_resolved: dict[tuple[str, str | None], str] = {}
_cache_lock = threading.Lock()


def is_local_model(location: str | os.PathLike) -> bool:
    """True when ``location`` is a local directory (transformers reads it instead of the hub)."""
    return Path(location).is_dir()


def short(revision: str | None) -> str:
    """A revision for messages: commit hashes and content hashes cut to 12 characters."""
    if not revision:
        return "unrecorded"
    if revision.startswith(LOCAL_PREFIX):
        return f"content {revision[:len(LOCAL_PREFIX) + 12]}"
    return f"commit {revision[:12]}" if COMMIT_HASH.match(revision) else revision


def resolve_model_revision(location: str | os.PathLike, revision: str | None = None, *, kind: str = "model") -> str:
    """The identity of a model: its hub commit hash, or ``sha256:...`` for a local directory.

    ``revision`` (a branch, tag or commit of a hub model) is resolved to its commit hash.
    A hub id is resolved once per process (later calls return the same commit).
    """
    location = str(location)
    if is_local_model(location):
        if revision:
            raise ModelLoadError(f"{kind} model '{location}' is a local directory; a revision "
                                 f"('{revision}') applies to hub ids only")
        return directory_content_hash(location, kind=kind)
    key = (location, revision or None)
    if key not in _hub_resolved:
        _hub_resolved[key] = _hub_commit_hash(location, revision, kind)
    return _hub_resolved[key]


def forget_resolved_revisions() -> None:
    """Forget the hub revisions resolved so far (tests; a long-lived process that wants updates)."""
    _hub_resolved.clear()


def checkpoint_pin(meta: dict, kind: str, location: str) -> str | None:
    """The hub commit a checkpoint records for ``location`` (the same hub model it was trained with), else None."""
    recorded = meta.get(REVISION_KEYS[kind])
    trained = meta.get("dna_model" if kind == "dna" else "protein_model")
    if (isinstance(recorded, str) and COMMIT_HASH.match(recorded) and str(trained) == str(location)
            and not is_local_model(location)):
        return recorded
    return None


def pinned_revision(location: str | os.PathLike, resolved: str) -> str | None:
    """The ``revision=`` to load ``location`` with so the files are exactly ``resolved``."""
    return None if is_local_model(location) else resolved


def _hub_commit_hash(repo_id: str, revision: str | None, kind: str) -> str:
    from huggingface_hub import hf_hub_download

    try:
        config_path = Path(hf_hub_download(repo_id, "config.json", revision=revision))
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes one clear message
        raise ModelLoadError(f"cannot load {kind} model '{repo_id}'"
                             f"{f' at revision {revision}' if revision else ''}: {hub_failure(exc)}") from None
    if config_path.parent.parent.name == "snapshots" and COMMIT_HASH.match(config_path.parent.name):
        return config_path.parent.name
    # not a standard cache layout (a custom HF_HUB_CACHE tool): fall back to the files' content
    return directory_content_hash(config_path.parent, kind=kind)


def hub_failure(exc: BaseException) -> str:
    """What went wrong when a hub model could not be found: offline cache miss, network, id, revision."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    if isinstance(exc, LocalEntryNotFoundError):
        if constants.HF_HUB_OFFLINE:
            return ("not in the local Hugging Face cache and HF_HUB_OFFLINE is set; run once with internet "
                    "access (without HF_HUB_OFFLINE) or pass a local model directory")
        return ("no network: the Hugging Face Hub could not be reached and the files are not in the local "
                "cache; check the connection (or proxy), or pass a local model directory")
    if isinstance(exc, GatedRepoError):
        return "the model is gated on the Hub; accept its terms and log in (huggingface-cli login)"
    if isinstance(exc, RepositoryNotFoundError):
        return "no such model on the Hugging Face Hub (check the id), and no such local directory"
    if isinstance(exc, RevisionNotFoundError):
        return "no such revision (branch, tag or commit) of this model on the Hub"
    if isinstance(exc, EntryNotFoundError):
        return "the model has no config.json: not a Hugging Face model"
    return f"{first_line(exc, 1000)} ({type(exc).__name__})"


# ---------------------------------------------------------------------------
# Local directories: content hash, file hashes cached by (path, size, mtime)
# ---------------------------------------------------------------------------


def model_files(directory: str | os.PathLike) -> list[Path]:
    """The files of a model directory that its revision covers, sorted by name."""
    return sorted(p for p in Path(directory).iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix in MODEL_FILE_SUFFIXES)


def directory_content_hash(directory: str | os.PathLike, *, kind: str = "model") -> str:
    """``sha256:`` + the SHA-256 over ``name<TAB>sha256`` lines of :func:`model_files`."""
    files = model_files(directory)
    if not files:
        raise ModelLoadError(f"cannot load {kind} model '{directory}': the directory holds no model files "
                             "(config.json, weights)")
    digest = hashlib.sha256()
    with _cache_lock:
        cache = _HashCache.load()
        for path in files:
            digest.update(f"{path.name}\t{cache.sha256(path)}\n".encode())
        cache.save()
    return LOCAL_PREFIX + digest.hexdigest()


def verify_hub_snapshot(repo_id: str, commit: str, *, kind: str = "model") -> int:
    """Check the cached files of ``repo_id`` at ``commit`` against the hashes their blobs are named by.

    The Hugging Face cache stores each file as a blob named by its hash (sha256 for large
    files, the git blob id for the others) and links the snapshot to it; a file changed in
    the cache no longer matches that name.  Run before any code of the snapshot is imported.
    Returns the number of files checked; raises :class:`ModelLoadError` on a mismatch.
    """
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo_id, "config.json", revision=commit)
    if not isinstance(config, str):
        return 0  # not cached (yet): transformers downloads it, verified by huggingface_hub
    snapshot = Path(config).parent
    checked = 0
    with _cache_lock:
        cache = _HashCache.load()
        for link in sorted(snapshot.rglob("*")):
            if not link.is_symlink():
                continue
            blob = link.resolve()
            name = blob.name
            if re.fullmatch(r"[0-9a-f]{64}", name):
                actual = cache.sha256(blob)
            elif re.fullmatch(r"[0-9a-f]{40}", name):
                actual = git_blob_id(blob)
            else:
                continue
            if actual != name:
                raise ModelLoadError(f"cannot load {kind} model '{repo_id}' at {short(commit)}: the cached file "
                                     f"{link.relative_to(snapshot)} does not match its recorded hash (the cache was "
                                     f"modified); delete {snapshot.parent.parent} and download it again")
            checked += 1
        cache.save()
    return checked


def hash_cache_path() -> Path:
    """Where file hashes are cached: ``$HF_HOME/virnucpro/file_hashes.json``."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "virnucpro" / HASH_CACHE_NAME


class _HashCache:
    """File SHA-256s keyed by resolved path, valid while size and mtime are unchanged."""

    def __init__(self, path: Path, entries: dict[str, Any]):
        self.path, self.entries, self.changed = path, entries, False

    @classmethod
    def load(cls) -> "_HashCache":
        path = hash_cache_path()
        try:
            entries = json.loads(path.read_text())
            if not isinstance(entries, dict):
                entries = {}
        except (OSError, ValueError):
            entries = {}
        return cls(path, entries)

    def sha256(self, file: Path) -> str:
        key = str(file.resolve())
        stat = file.stat()
        entry = self.entries.get(key)
        if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
            return str(entry["sha256"])
        log.info("hashing %s (%.1f MB; once, then cached)", file, stat.st_size / 1e6)
        value = file_sha256(file)
        self.entries[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": value}
        self.changed = True
        return value

    def save(self) -> None:
        if not self.changed:
            return
        entries = {k: v for k, v in self.entries.items() if os.path.exists(k)}
        entries = dict(list(entries.items())[-HASH_CACHE_LIMIT:])
        try:
            with atomic_write(self.path) as handle:
                json.dump(entries, handle, indent=0, sort_keys=True)
        except OSError as exc:  # a read-only home only costs hashing again next time
            log.debug("cannot write the hash cache %s: %s", self.path, exc)


# ---------------------------------------------------------------------------
# Comparing with what a checkpoint was trained on
# ---------------------------------------------------------------------------


def revision_of_loaded(model: Any, default_location: str) -> str | None:
    """The revision of a model the caller loaded: its hub commit, else its directory's content hash."""
    config = getattr(model, "config", None)
    commit = getattr(config, "_commit_hash", None)
    if isinstance(commit, str) and COMMIT_HASH.match(commit):
        return commit
    location = str(getattr(config, "_name_or_path", "") or default_location)
    return directory_content_hash(location) if is_local_model(location) else None


def checkpoint_mismatches(meta: dict, loaded: dict[str, tuple[str, str | None]],
                          used_by: str = "this run loads") -> list[str]:
    """Descriptions of the models that differ from the checkpoint's recorded revisions.

    ``loaded`` maps ``dna``/``protein`` to ``(location, revision)``.  A checkpoint that
    records no revision for a model, or a ``None`` revision in ``loaded`` (unknown), gives no
    mismatch for it (see :func:`unrecorded`).
    """
    problems = []
    for kind, (location, revision) in loaded.items():
        recorded = meta.get(REVISION_KEYS[kind])
        if recorded and revision and recorded != revision:
            trained = meta.get("dna_model" if kind == "dna" else "protein_model", "?")
            problems.append(f"{'DNA' if kind == 'dna' else 'protein'} model: trained with {trained} "
                            f"({short(recorded)}), {used_by} {location} ({short(revision)})")
    return problems


def unrecorded(meta: dict) -> list[str]:
    """The models whose revision the checkpoint does not record (made before provenance)."""
    return [kind for kind, key in REVISION_KEYS.items() if not meta.get(key)]


def check_against_checkpoint(checkpoint: Path, meta: dict, loaded: dict[str, tuple[str, str | None]],
                             strict: bool, used_by: str = "this run loads") -> None:
    """Warn when the language models differ from those the checkpoint was trained on; raise if ``strict``.

    The one provenance rule of prediction, evaluation and training data: ``loaded`` maps
    ``dna``/``protein`` to the ``(location, revision)`` that made (or will make) the features
    (``used_by`` says which, in the message); a ``None`` revision cannot be checked.
    """
    problems = checkpoint_mismatches(meta, loaded, used_by)
    if problems:
        text = (f"{checkpoint}: the language models differ from those the classifier was trained with, so "
                f"its scores may be wrong: {'; '.join(problems)}")
        if strict:
            raise CheckpointError(text + " (refused: --strict-models)")
        log.warning("%s (--strict-models makes this an error; a local copy of the same weights also "
                    "differs from its hub commit)", text)
    missing = unrecorded(meta)
    if missing:
        text = (f"{checkpoint}: records no {' or '.join(missing)} model revision (trained before model "
                "provenance was recorded), so the language models cannot be checked")
        if strict:
            raise CheckpointError(text + " (refused: --strict-models; retrain with train.py)")
        log.info("%s", text)
    unknown = [kind for kind, (_, revision) in loaded.items() if not revision and kind not in missing]
    if unknown:
        text = (f"{checkpoint}: {used_by} {' and '.join(loaded[kind][0] for kind in unknown)} at an unrecorded "
                f"revision, so the {' and '.join(unknown)} model cannot be checked against the classifier's")
        if strict:
            raise CheckpointError(text + " (refused: --strict-models)")
        log.info("%s", text)
