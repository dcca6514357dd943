"""The shard index published shard by shard while the input pass runs, and followed by every rank (no torch).

Rank 0, or the single process, runs the one validating input pass
(:func:`virnucpro.shardindex.build_index`) in a child process of its own, :class:`IndexPass`
(it shares no interpreter lock with the model loading and scoring of rank 0, and dies with it).  Each shard's entry is appended to the work directory's
index log (one JSON line, written whole and fsync'd) as soon as the pass has laid it out and
read the next record, so the models load and the first shards are scored while the rest of
the input is still read.  Every process follows the log with an :class:`IndexFollower`: the
j-th pending shard of the log belongs to rank ``j % world size`` (in shard order, whatever
the timing).  What only the whole pass can tell (duplicate ids, the input's hash, the totals)
is settled before the log's ``end`` line, which the final join waits for; the last shard is
published only then, and rank 0 saves the index and records the input's hash on reading it.
A pass that fails ends the log with an ``abort`` line naming its error: rank 0 raises it,
the other ranks stop quietly.

Log lines: ``start`` (the input, its format, the data file to read shards from while the
pass runs: the input, or the growing spool of a stream), one ``shard`` line per shard
(its :class:`~virnucpro.shardindex.ShardEntry` and whether it is pending), then ``end``
(hash and totals) or ``abort``.  A growing spool is read only on rank 0's host (the page
cache makes its bytes visible at once); other hosts read a stream's shards once it ended.

A killed run's finished shards: the next launch's pass publishes every entry again; a
shard stays done only if its entry (records' digest included: the same input bytes up to
its end) is the one the killed launch published and its files pass their ``done``
marker's check.  Otherwise its marker is removed before the entry is published, so a
marker next to a published entry always belongs to it.
"""
from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Sequence

from .errors import EXIT_FAILURE, EXIT_INTERRUPTED, RunFailedError, VirNucProError, exit_code_of
from .results import verified_shard
from .rundir import WorkDir
from .runstate import record_input_hash
from .shardindex import InputSource, ShardEntry, ShardIndex, build_index

log = logging.getLogger("virnucpro.predict")

START, SHARD, END, ABORT = "start", "shard", "end", "abort"
#: How often a follower looks for new lines (seconds).
POLL_S = 0.02
#: How long a follower waits at most between two looks (it waits longer while nothing comes).
POLL_MAX_S = 0.25
#: How long a job that ends waits for its input pass to stop after asking it to.
STOP_WAIT_S = 5.0
#: Inputs read through a descriptor the child process inherits (``-``, ``/dev/fd/N``, ``<(...)``).
_INHERITED = re.compile(r"/(?:dev|proc/self)/fd/([0-9]+)")
_INTERRUPTS = ("builtins:KeyboardInterrupt", "virnucpro.cli:Terminated")


def _error_kind(error: BaseException) -> str:
    return f"{type(error).__module__}:{type(error).__qualname__}"


def _line(item: dict) -> bytes:
    return (json.dumps(item, separators=(",", ":")) + "\n").encode()


def _write_line(fd: int, item: dict) -> None:
    """Append one whole line (one write, then fsync: followers on other hosts read it after a new open)."""
    view = memoryview(_line(item))
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def _last_kind(path: Path) -> str | None:
    """The kind of the log's last complete line (None for an empty or torn log)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - 4096))
            tail = handle.read().rsplit(b"\n", 2)
        return str(json.loads(tail[-2])["kind"]) if len(tail) >= 2 else None
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


class IndexPass:
    """Rank 0's handle on the input pass, which runs in a child process and publishes the index log.

    ``resume``: the run was begun by an earlier launch, whose index log says which finished
    shards may be kept.  ``guard``: a context for what this process writes for the pass (it
    turns a full disk into one line): the index and the input's hash, saved by :meth:`record`
    when the log ends.  ``outdir`` names the run in the child's full-disk message; the child
    logs at ``log_level``, its lines starting with ``log_prefix``.
    """

    def __init__(self, source: InputSource, work: Path, chunk_size: int, shard_chunks: int, *, outdir: Path,
                 resume: bool, guard: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
                 log_level: int = logging.INFO, log_prefix: str = ""):
        self.work, self.log, self._guard = work, WorkDir(work).index_log, guard
        self._recorded = False
        self._child: subprocess.Popen | None = None
        # The child sees the input as this process does: its standard input, the same descriptor, the path.
        inherited = _INHERITED.fullmatch(str(source.path))
        descriptor = int(inherited.group(1)) if inherited else None
        if source.is_stdin or str(source.path) == "/dev/stdin" or descriptor == 0:
            self._stdin: Any = sys.stdin.fileno() if source.is_stdin else 0
            descriptor = None
        else:
            self._stdin = subprocess.DEVNULL
        self._inherited = [descriptor] if descriptor is not None else []
        self._earlier = None
        if resume:
            with contextlib.suppress(FileNotFoundError):
                self._earlier = os.open(self.log, os.O_RDONLY | os.O_NOFOLLOW)  # a killed launch's entries
        self.log.unlink(missing_ok=True)
        self._fd: int | None = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                                       0o666)
        self._config = {"path": str(source.path), "stream": source.stream, "work": str(work),
                        "chunk_size": chunk_size, "shard_chunks": shard_chunks, "outdir": str(outdir),
                        "earlier_fd": self._earlier, "log_fd": self._fd, "parent": os.getpid(),
                        "log_level": log_level, "log_prefix": log_prefix}

    def start(self) -> IndexPass:
        """Begin the pass (in the child process, which imports this very package, whatever its directory)."""
        root = str(Path(__file__).resolve().parent.parent)
        code = (f"import sys; sys.path.insert(0, {root!r}); from {__name__} import _child_main; "
                "sys.exit(_child_main(sys.argv[1:]))")
        fds = [*self._inherited, self._fd, *([self._earlier] if self._earlier is not None else [])]
        self._child = subprocess.Popen([sys.executable, "-c", code, json.dumps(self._config)],
                                       pass_fds=tuple(fds), stdin=self._stdin)
        if self._earlier is not None:
            os.close(self._earlier)
            self._earlier = None
        return self

    def stop(self) -> None:
        """The job ends: stop the pass if it still runs; a log without its last line gets an abort line."""
        child = self._child
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.abort()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def abort(self) -> None:
        """End the log with an abort line unless the pass ended it (the child is gone or going)."""
        if self._fd is not None and _last_kind(self.log) not in (END, ABORT):
            with contextlib.suppress(OSError):  # a full disk: followers time out
                _write_line(self._fd, {"kind": ABORT})

    def exit_code(self) -> int | None:
        """The child's exit code once it ended, else None."""
        return None if self._child is None else self._child.poll()

    def record(self, index: ShardIndex) -> None:
        """The pass ended well: save the whole index and record the input's hash in the manifest (once)."""
        if not self._recorded:
            with self._guard():
                index.save(self.work)
                record_input_hash(self.work, index.sha256)
            self._recorded = True


class _Publisher:
    """The child's side: runs the pass, decides each shard's pending state, writes the log's lines."""

    def __init__(self, config: dict):
        self.config = config
        self.source = InputSource(Path(config["path"]), bool(config["stream"]))
        self.work = Path(config["work"])
        self.log_fd = int(config["log_fd"])
        self.earlier = self._earlier(config["earlier_fd"])
        self.published = 0

    @staticmethod
    def _earlier(fd: int | None) -> dict[int, dict]:
        if fd is None:
            return {}
        with os.fdopen(fd, "rb") as handle:
            return _entries(handle.read())

    def run(self) -> int:
        """The whole pass; the exit code of the child process."""
        from .predict import disk_full_says

        began = time.perf_counter()
        try:
            with disk_full_says(Path(self.config["outdir"]), "the shard index (or a piped input's spool)"):
                index = build_index(self.source, self.work, int(self.config["chunk_size"]),
                                    int(self.config["shard_chunks"]), on_start=self._started, on_shard=self._shard)
                last = [(k, entry, self._pending(k, entry)) for k, entry in enumerate(index.shards)
                        if k >= self.published]  # published only now: after every check of the input
                for k, entry, pending in last:
                    _write_line(self.log_fd, {"kind": SHARD, "k": k, "entry": asdict(entry), "pending": pending})
                log.info("input pass done: %d records, %d chunks, %d shard(s) in %.1f s", index.records,
                         index.chunks, len(index.shards), time.perf_counter() - began)
                _write_line(self.log_fd, {"kind": END, "sha256": index.sha256, "records": index.records,
                                          "chunks": index.chunks, "shards": len(index.shards)})
            return 0
        except BaseException as exc:  # noqa: BLE001 - named in the abort line; rank 0 raises it
            with contextlib.suppress(OSError):
                _write_line(self.log_fd, {"kind": ABORT, "error": _error_kind(exc), "message": str(exc)})
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                return EXIT_INTERRUPTED
            if not isinstance(exc, VirNucProError):
                traceback.print_exc()  # a bug: its traceback, from where it happened
            return exit_code_of(exc)

    def _started(self, fmt: str, growing: Path | None) -> None:
        _write_line(self.log_fd, {"kind": START, "source": str(self.source.path), "stat_key": self.source.stat_key(),
                                  "spooled": self.source.stream, "chunk_size": int(self.config["chunk_size"]),
                                  "shard_chunks": int(self.config["shard_chunks"]), "format": fmt,
                                  "data": growing.name if growing is not None else None,
                                  "host": socket.gethostname()})

    def _shard(self, k: int, entry: ShardEntry) -> None:
        if os.getppid() != self.config["parent"]:
            raise SystemExit(EXIT_FAILURE)  # rank 0 is gone: so is its run
        _write_line(self.log_fd, {"kind": SHARD, "k": k, "entry": asdict(entry), "pending": self._pending(k, entry)})
        self.published = k + 1

    def _pending(self, k: int, entry: ShardEntry) -> bool:
        """Whether shard ``k`` is still to score; a marker that cannot be vouched for is removed."""
        if self.earlier.get(k) == asdict(entry) and verified_shard(self.work, k, entry.chunks):
            return False
        WorkDir(self.work).done(k).unlink(missing_ok=True)
        return True


def _die_with_parent(parent: int) -> None:
    """Linux: this process is killed when rank 0's process dies (elsewhere it stops at its next shard)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(EXIT_FAILURE)


def _child_main(argv: Sequence[str]) -> int:
    """The child process of :class:`IndexPass` (``CONFIG``: its JSON); not for users."""
    config = json.loads(argv[0])
    _die_with_parent(int(config["parent"]))
    logging.basicConfig(level=int(config["log_level"]), stream=sys.stderr,
                        format=str(config["log_prefix"]) + "%(levelname)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is rank 0's to handle; it stops this process
    signal.signal(signal.SIGTERM, _terminated)  # stopped: the growing spool and the spill files are removed
    return _Publisher(config).run()


def _terminated(signum: int, frame: Any) -> None:
    from .cli import Terminated

    raise Terminated()


def _entries(data: bytes) -> dict[int, dict]:
    """The shard entries (as dicts) of an index log's bytes, up to a torn last line."""
    entries: dict[int, dict] = {}
    for line in data.split(b"\n"):
        try:
            item = json.loads(line)
            if item["kind"] == SHARD:
                entries[int(item["k"])] = dict(item["entry"])
        except (ValueError, TypeError, KeyError):
            break
    return entries


class ListedShards:
    """This rank's shards of a complete index, in the form of an :class:`IndexFollower`."""

    def __init__(self, index: ShardIndex, shards: Sequence[int]):
        self.index, self._shards = index, list(shards)
        self.data_paths: tuple[Path, ...] | None = None
        self.taken = 0

    def wait_for_work(self) -> bool:
        """True when this rank has a shard to score."""
        return bool(self._shards)

    def shards(self, stop: threading.Event | None = None) -> Iterator[int]:
        """This rank's shards, in order."""
        for k in self._shards:
            self.taken += 1
            yield k

    def complete_index(self) -> ShardIndex:
        """The whole index."""
        return self.index


class IndexFollower:
    """One process's view of the index log: the entries so far, and its own pending shards as they appear.

    ``producer``: this process's :class:`IndexPass` (rank 0), whose error it raises; other
    ranks stop quietly on an abort line (rank 0 reports it).  ``timeout_s``: how long to
    wait for a new line before giving up (rank 0 may be gone).
    """

    def __init__(self, log: Path, work: Path, rank: int, world: int, producer: IndexPass | None = None,
                 timeout_s: float = 6 * 3600.0):
        self.log, self.work, self.rank, self.world, self.producer = log, work, rank, world, producer
        self.timeout_s = timeout_s
        self.index: ShardIndex | None = None
        self.data_paths: tuple[Path, ...] | None = None
        self.pending_total = self.taken = 0
        self.ended = self.aborted = False
        self._abort: dict = {}
        self._local = True  # the data file may be read while the pass runs
        self._mine: collections.deque[int] = collections.deque()
        self._position, self._partial = 0, b""
        self._last_news, self._pause = time.monotonic(), POLL_S

    def wait_for_work(self) -> bool:
        """Wait until this rank owns a pending shard (True) or the log ended without one, or aborted (False)."""
        while not self._stopped():
            if self._mine:
                return True
            if self.ended:
                return False
            self._wait()
        return False

    def shards(self, stop: threading.Event | None = None) -> Iterator[int]:
        """This rank's pending shards as they are published (until the end line, an abort or ``stop``)."""
        while not self._stopped() and not (stop is not None and stop.is_set()):
            if self._mine and (self._local or self.ended):
                self.taken += 1
                yield self._mine.popleft()
            elif self.ended:
                return
            else:
                self._wait()

    def complete_index(self) -> ShardIndex:
        """The whole index, once the pass ended (its hash and totals settled)."""
        while not self.ended:
            if self._stopped():
                raise RunFailedError(f"{self.log}: the input pass stopped before its end")
            self._wait()
        assert self.index is not None
        return self.index

    def _stopped(self) -> bool:
        """True after an abort line; rank 0 raises the pass's error instead (also when the pass died unheard)."""
        if not self.aborted and not self.ended and self.producer is not None and self.producer.exit_code() is not None:
            self._read()  # the pass is over: its last lines are in
            if not (self.ended or self.aborted):
                self.producer.abort()
                raise RunFailedError(f"the input pass ended unexpectedly (exit code {self.producer.exit_code()}); "
                                     "rerun the same command to resume")
        if self.aborted and self.producer is not None:
            raise self._abort_error()
        return self.aborted

    def _abort_error(self) -> BaseException:
        """The pass's error as rank 0 raises it: a user error as it was, a bug as one (its traceback is above)."""
        from .distributed import rebuild_error

        kind, message = self._abort.get("error"), str(self._abort.get("message", ""))
        if kind is None:
            return RunFailedError(f"{self.log}: the input pass was stopped")
        if kind in _INTERRUPTS:
            from .cli import Terminated

            return Terminated() if kind == _error_kind(Terminated()) else KeyboardInterrupt()
        error = rebuild_error(kind, message)
        if type(error) is VirNucProError and kind != _error_kind(error):
            return RuntimeError(f"the input pass failed: {kind}: {message} (its traceback is above)")
        return error

    def _wait(self) -> None:
        if self._read():
            self._last_news, self._pause = time.monotonic(), POLL_S
            return
        if self.producer is None and time.monotonic() - self._last_news > self.timeout_s:
            raise RunFailedError(f"{self.log}: no word from rank 0's input pass for {self.timeout_s:.0f} s; "
                                 "rerun the same command to resume")
        time.sleep(self._pause)
        self._pause = min(POLL_MAX_S, self._pause * 1.5)

    def _read(self) -> bool:
        """Take the log's new complete lines; True when there were any.  Opened afresh each time (shared file
        systems show another host's appends to a new open)."""
        try:
            with open(self.log, "rb") as handle:
                handle.seek(self._position)
                data = handle.read()
        except OSError as exc:
            raise RunFailedError(f"{self.log}: cannot read the index log ({exc.strerror or exc})") from None
        self._position += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            self._take(line)
        return bool(lines)

    def _take(self, line: bytes) -> None:
        try:
            item = json.loads(line)
            kind = item["kind"]
            if kind == START:
                self._begin(item)
            elif kind == SHARD:
                self._add(int(item["k"]), ShardEntry(**item["entry"]), bool(item["pending"]))
            elif kind == END:
                self._end(item)
            elif kind == ABORT:
                self.aborted, self._abort = True, item
            else:
                raise ValueError(kind)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise RunFailedError(f"{self.log}: damaged index log ({exc}); rerun the same command") from None

    def _begin(self, item: dict) -> None:
        self.index = ShardIndex(str(item["source"]), item["stat_key"], "", bool(item["spooled"]),
                                int(item["chunk_size"]), int(item["shard_chunks"]), 0, 0, format=str(item["format"]))
        final = self.index.data_path(self.work)
        growing = item["data"]
        if growing is None:
            self.data_paths = (final,)
            return
        if Path(growing).name != growing or growing in ("", ".", ".."):
            raise ValueError(f"data file {growing!r} is not a name in the work directory")
        self._local = item["host"] == socket.gethostname()
        self.data_paths = (self.work / growing, final) if self._local else (final,)

    def _add(self, k: int, entry: ShardEntry, pending: bool) -> None:
        if self.index is None or k != len(self.index.shards):
            raise ValueError(f"shard {k} out of order")
        self.index.shards.append(entry)
        if pending:
            if self.pending_total % self.world == self.rank:
                self._mine.append(k)
            self.pending_total += 1

    def _end(self, item: dict) -> None:
        if self.index is None or int(item["shards"]) != len(self.index.shards):
            raise ValueError("end line before the last shard")
        self.index.sha256, self.index.records, self.index.chunks = (str(item["sha256"]), int(item["records"]),
                                                                    int(item["chunks"]))
        self.ended = True
        if self.producer is not None:
            self.producer.record(self.index)
