"""One run per OUTDIR: an exclusive lock held for the whole run (no torch).

The lock is ``fcntl.flock`` on ``OUTDIR/.virnucpro.lock``; the file also records who
holds it (host, pid, start time, command) so a refused run can name the live one.  The
kernel drops the lock when its process dies, however it dies, so a lock file left by a
dead run is simply taken over.  The file is removed when the run ends.

On NFS, Linux turns ``flock`` into a whole-file POSIX lock kept by the server (NFSv4,
or NFSv3 with ``lockd``), so runs on different nodes exclude each other.  A mount with
``nolock`` or ``local_lock=all`` keeps locks on one node only: there, two runs started
on different nodes into one OUTDIR are not detected.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import stat
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from .errors import VirNucProError
from .rundir import RunDir

log = logging.getLogger("virnucpro")


class RunLockedError(VirNucProError):
    """Another live run holds the OUTDIR lock."""


def describe_owner(owner: dict) -> str:
    """'host H, pid P, started T' from a lock file's record."""
    return (f"host {owner.get('host', '?')}, pid {owner.get('pid', '?')}, "
            f"started {owner.get('started', '?')}")


def _read_owner(fd: int) -> dict:
    try:
        data = os.pread(fd, 65536, 0)
        owner = json.loads(data.decode("utf-8", "replace")) if data.strip() else {}
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


class RunLock:
    """The exclusive lock on one OUTDIR; use as a context manager or call :meth:`release`."""

    def __init__(self, outdir: Path):
        self.path = RunDir(Path(outdir)).lock
        self.fd: int | None = None
        self.owner: dict = {}

    def _open(self) -> int:
        """The lock file, never through a symbolic link, and only when it is a regular file."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            fd = None
        if fd is None or not stat.S_ISREG(os.fstat(fd).st_mode):
            if fd is not None:
                os.close(fd)
            raise VirNucProError(f"{self.path}: the lock file is a symbolic link or not a regular file; "
                                 "nothing is written through it: remove it, or choose another OUTDIR")
        return fd

    def acquire(self) -> RunLock:
        """Take the lock, or raise :class:`RunLockedError` naming the live run."""
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                owner = _read_owner(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunLockedError(
                        f"{self.path.parent}: another run is using this OUTDIR ({describe_owner(owner)}); "
                        "wait for it to finish or stop it, or choose another OUTDIR") from None
                raise
            try:  # the file may have been removed by its previous holder after we opened it
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_owner(fd)
        if previous:
            log.info("taking over the lock of an ended run (%s)", describe_owner(previous))
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(),
                      "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "argv": sys.argv, "time": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.owner).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self.fd is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)  # closing the descriptor drops the flock
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc: object) -> None:
        self.release()
