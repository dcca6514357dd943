"""Opening text files (plain or gzip, detected from the bytes), atomic writes, hashes."""
from __future__ import annotations

import contextlib
import errno
import functools
import gzip
import hashlib
import io
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from .errors import InputError, VirNucProError

GZIP_MAGIC = b"\x1f\x8b"
TEXT_ENCODING = "utf-8"
TEXT_ERRORS = "surrogateescape"  # non-UTF-8 header bytes round-trip unchanged
HASH_BLOCK = 1 << 20
TEMP_SUFFIX = ".tmp"
#: ``OSError.errno`` values that mean the file system is full (or the user's quota is).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def require_file(path: Path, what: str, error: type[VirNucProError] = InputError) -> None:
    """Raise ``error`` naming ``path`` unless it is an existing file (``what`` says what it should be)."""
    if not path.exists():
        raise error(f"{path}: {what} not found")
    if not path.is_file():
        raise error(f"{path}: is a directory or special file, expected a {what}")


def require_dir(path: Path, what: str = "data directory", hint: str = "") -> None:
    """Raise InputError naming ``path`` unless it is an existing directory (``hint``: how to make it)."""
    if not path.exists():
        raise InputError(f"{path}: {what} not found{hint}")
    if not path.is_dir():
        raise InputError(f"{path}: not a directory")


def open_text(path: str | os.PathLike) -> IO[str]:
    """Open a plain or gzip-compressed text file for reading (detected by content, not name)."""
    path = Path(path)
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == GZIP_MAGIC:
        return gzip.open(path, "rt", encoding=TEXT_ENCODING, errors=TEXT_ERRORS, newline=None)
    return open(path, "r", encoding=TEXT_ENCODING, errors=TEXT_ERRORS, newline=None)


def open_binary(path: str | os.PathLike) -> IO[bytes]:
    """Open a plain or gzip-compressed file for reading bytes (decompressed; detected by content)."""
    return decompressed(open(path, "rb"))


def decompressed(handle: io.BufferedReader) -> IO[bytes]:
    """``handle`` itself, or a gzip reader over it when its bytes are gzip; closing it closes ``handle``."""
    if handle.peek(2)[:2] != GZIP_MAGIC:
        return handle
    reader = gzip.GzipFile(fileobj=handle, mode="rb")
    reader.myfileobj = handle  # GzipFile closes the file it owns: make it own ``handle``
    return reader  # type: ignore[return-value]


def open_text_output(path: str | os.PathLike) -> IO[str]:
    """Open a text file for writing with the project's encoding and ``\\n`` line ends."""
    return open(path, "w", encoding=TEXT_ENCODING, errors=TEXT_ERRORS, newline="\n")


def fdopen_text_output(fd: int) -> IO[str]:
    """:func:`open_text_output` for a descriptor already open for writing (it is closed with the file)."""
    return os.fdopen(fd, "w", encoding=TEXT_ENCODING, errors=TEXT_ERRORS, newline="\n")


def open_for_append(path: Path) -> IO[bytes]:
    """Append to a file of this run, never through a symbolic link or into anything but a regular file."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise VirNucProError(f"{path}: not a regular file; remove it")
    return os.fdopen(fd, "ab")


@functools.lru_cache(maxsize=1)
def process_umask() -> int:
    """The process umask, read once (reading it means setting it, so do it only once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_name_prefix(path: Path) -> str:
    """The prefix of the temporary files :func:`atomic_write` makes beside ``path``."""
    return f".{path.name}."


@contextlib.contextmanager
def atomic_write_named(path: str | os.PathLike, mode: str = "w") -> Iterator[tuple[IO[Any], Path]]:
    """:func:`atomic_write` that also names its temporary file (for a reader of a file that is still growing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=temp_name_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~process_umask())  # mkstemp makes 0600; outputs get the usual permissions
        # the descriptor mkstemp opened (O_EXCL, O_NOFOLLOW): the name is never opened again
        handle = os.fdopen(fd, mode) if "b" in mode else fdopen_text_output(fd)
        fd = -1
        with handle:
            yield handle, tmp
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file beside ``path`` and rename it into place on success."""
    with atomic_write_named(path, mode) as (handle, _):
        yield handle


def require_writable_dir(directory: Path, what: str) -> None:
    """Create ``directory`` (and its parents) and check that a file can be made in it, else InputError.

    Runs before long work, so an unwritable output place is one line, not a lost run.
    """
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{directory}: {what} exists and is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test_", suffix=TEMP_SUFFIX, dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"{directory}: {what} is not writable ({exc.strerror or exc})") from None


def remove_temp_files(folder: Path, name_glob: str = "*") -> int:
    """Remove the temporary files :func:`atomic_write` left in ``folder`` (a killed run); returns the count.

    Only regular files: a link of such a name is left alone."""
    removed = 0
    if folder.is_dir():
        for stale in folder.glob(f".{name_glob}.*{TEMP_SUFFIX}"):
            if stale.is_file() and not stale.is_symlink():
                stale.unlink()
                removed += 1
    return removed


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file, so ``path`` is never half-written."""
    import torch

    with atomic_write(path, "wb") as handle:
        torch.save(obj, handle)


def git_blob_id(path: str | os.PathLike) -> str:
    """The git blob id of a file: sha1 of ``b"blob <size>\\0"`` + its content, read in blocks."""
    digest = hashlib.sha1(b"blob %d\0" % os.stat(path).st_size)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def file_identity(path: Path) -> tuple:
    """What makes two names the same file: device and inode when it exists, else the resolved path."""
    try:
        found = os.stat(path)
    except OSError:
        return ("path", str(Path(path).resolve()))
    return ("inode", found.st_dev, found.st_ino)


def same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name the same file (hard and symbolic links included, or the same path)."""
    return file_identity(a) == file_identity(b)
