"""The shard index published shard by shard while the input pass runs, and followed by every rank (no torch).

Rank 0, or the single process, runs the one validating input pass
(:func:`virnucpro.shardindex.build_index`) in a background thread, :class:`IndexPass`.
Each shard's entry is appended to the work directory's index log (one JSON line, written
whole and fsync'd) as soon as the pass has laid it out and read the next record, so the
models load and the first shards are scored while the rest of the input is still read.
Every process follows the log with an :class:`IndexFollower`: the j-th pending shard of
the log belongs to rank ``j % world size`` (in shard order, whatever the timing).  What
only the whole pass can tell (duplicate ids, the input's hash, the totals) is settled
before the log's ``end`` line, which the final join waits for; the last shard is
published only then.  A pass that fails ends the log with an ``abort`` line; its error
stops the job (rank 0 raises it, the others stop quietly).

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
import socket
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Sequence

from .errors import RunFailedError
from .results import verified_shard
from .rundir import WorkDir
from .runstate import record_input_hash
from .shardindex import InputSource, ShardEntry, ShardIndex, build_index

log = logging.getLogger("virnucpro.predict")

START, SHARD, END, ABORT = "start", "shard", "end", "abort"
#: How often a follower looks for new lines (seconds).
POLL_S = 0.02
#: How long a job that ends waits for its input pass to stop (one blocked on a pipe is left behind).
STOP_WAIT_S = 1.0


class PassCancelled(Exception):
    """The job is ending: the input pass stops at its next shard."""


def previous_entries(work: Path) -> dict[int, dict]:
    """The shard entries (as dicts) an earlier launch published in ``work``'s index log; {} without one."""
    entries: dict[int, dict] = {}
    with contextlib.suppress(OSError):
        for line in WorkDir(work).index_log.read_bytes().split(b"\n"):
            try:
                item = json.loads(line)
                if item["kind"] == SHARD:
                    entries[int(item["k"])] = dict(item["entry"])
            except (ValueError, TypeError, KeyError):
                break  # the torn last line of a killed launch
    return entries


class IndexPass:
    """Rank 0's input pass in a background thread, publishing each shard's entry in the index log.

    ``earlier``: the entries a killed launch published (:func:`previous_entries`);
    ``guard``: a context the pass runs in (it turns a full disk into one line).  At its
    end the pass saves the index and records the input's hash in the manifest.
    """

    def __init__(self, source: InputSource, work: Path, chunk_size: int, shard_chunks: int,
                 earlier: dict[int, dict], guard: Callable[[], ContextManager[Any]] = contextlib.nullcontext):
        self.source, self.work, self.chunk_size, self.shard_chunks = source, work, chunk_size, shard_chunks
        self.log = WorkDir(work).index_log
        self.error: BaseException | None = None
        self._earlier, self._guard = earlier, guard
        self._published = 0
        self._cancel = threading.Event()
        self._lock = threading.Lock()  # the log's descriptor: one writer at a time, never after closing
        self.log.unlink(missing_ok=True)
        self._fd: int | None = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                                       0o666)
        self._thread = threading.Thread(target=self._main, name="input-pass", daemon=True)

    def start(self) -> IndexPass:
        """Begin the pass."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """The job ends: stop the pass if it still runs (followers read an abort line)."""
        self._cancel.set()
        self._thread.join(timeout=STOP_WAIT_S)
        self._close({"kind": ABORT})

    def _main(self) -> None:
        began = time.perf_counter()
        try:
            with self._guard():
                index = build_index(self.source, self.work, self.chunk_size, self.shard_chunks,
                                    on_start=self._started, on_shard=self._shard)
                if self._cancel.is_set():
                    raise PassCancelled()
                # The shards not published yet are decided before the hash makes the pass count as done.
                last = [(k, entry, self._pending(k, entry)) for k, entry in enumerate(index.shards)
                        if k >= self._published]
                index.save(self.work)
                record_input_hash(self.work, index.sha256)
                for k, entry, pending in last:
                    self._write({"kind": SHARD, "k": k, "entry": asdict(entry), "pending": pending})
            log.info("input pass done: %d records, %d chunks, %d shard(s) in %.1f s", index.records, index.chunks,
                     len(index.shards), time.perf_counter() - began)
            self._close({"kind": END, "sha256": index.sha256, "records": index.records, "chunks": index.chunks,
                         "shards": len(index.shards)})
        except BaseException as exc:  # noqa: BLE001 - handed to the followers (rank 0 raises it)
            self.error = exc
            self._close({"kind": ABORT})

    def _started(self, fmt: str, growing: Path | None) -> None:
        self._write({"kind": START, "source": str(self.source.path), "stat_key": self.source.stat_key(),
                     "spooled": self.source.stream, "chunk_size": self.chunk_size, "shard_chunks": self.shard_chunks,
                     "format": fmt, "data": growing.name if growing is not None else None,
                     "host": socket.gethostname()})

    def _shard(self, k: int, entry: ShardEntry) -> None:
        if self._cancel.is_set():
            raise PassCancelled()
        self._write({"kind": SHARD, "k": k, "entry": asdict(entry), "pending": self._pending(k, entry)})
        self._published = k + 1

    def _pending(self, k: int, entry: ShardEntry) -> bool:
        """Whether shard ``k`` is still to score; a marker that cannot be vouched for is removed."""
        if self._earlier.get(k) == asdict(entry) and verified_shard(self.work, k, entry.chunks):
            return False
        WorkDir(self.work).done(k).unlink(missing_ok=True)
        return True

    def _write(self, item: dict) -> None:
        data = (json.dumps(item, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self._fd is None:
                raise PassCancelled()
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)

    def _close(self, last: dict) -> None:
        """Write the log's last line (if it has none yet) and close it; an abort line that cannot be written
        (a full disk) is left out: rank 0 raises the pass's error, the followers time out."""
        with self._lock:
            if self._fd is None:
                return
            fd, self._fd = self._fd, None
            try:
                os.write(fd, (json.dumps(last, separators=(",", ":")) + "\n").encode())
                os.fsync(fd)
            except OSError:
                if last["kind"] != ABORT:
                    raise
            finally:
                os.close(fd)


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
        self._local = True  # the data file may be read while the pass runs
        self._mine: collections.deque[int] = collections.deque()
        self._position, self._partial = 0, b""
        self._last_news = time.monotonic()

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
        """True after an abort line (rank 0 raises the pass's error here, also one that could not be logged)."""
        if self.producer is not None and self.producer.error is not None:
            self._read()
            if not self.ended:
                raise self.producer.error
        if self.aborted and self.producer is not None:
            raise RunFailedError(f"{self.log}: the input pass was stopped")
        return self.aborted

    def _wait(self) -> None:
        if self._read():
            self._last_news = time.monotonic()
            return
        if self.producer is None and time.monotonic() - self._last_news > self.timeout_s:
            raise RunFailedError(f"{self.log}: no word from rank 0's input pass for {self.timeout_s:.0f} s; "
                                 "rerun the same command to resume")
        time.sleep(POLL_S)

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
                self.aborted = True
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
