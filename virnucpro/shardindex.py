"""The shard index: one validating pass over the input, then any shard read on its own (no torch).

:func:`build_index` reads the input once: it hashes the bytes, validates every record,
finds duplicate ids in bounded memory (:mod:`virnucpro.dupcheck`), spools a pipe to the
work directory, and cuts the chunks into shards.  The :class:`ShardIndex` (byte offset,
first chunk, record and chunk counts of every shard) is saved in the work directory and
reused on resume while the input file's size, modification time and inode are unchanged.
Each entry also holds the digest of every record up to the end of its shard, so an entry
says which input bytes its shard was scored from (:mod:`virnucpro.indexstream` publishes
the entries while the pass runs, and checks a killed run's finished shards with them).

:class:`ShardReader` gives the record pieces of any shard: it seeks to the shard's offset
(for gzip it decompresses forward without parsing) and reads on sequentially without
seeking.  Every shard read is checked against the index.  Typical use: one process
builds or loads the index (:func:`load_index` / :func:`build_index`; under torchrun,
rank 0, which hands it to the other ranks), and every process reads its shards with
``ShardReader(index, work).read(k)``.  The index's file names are :mod:`virnucpro.rundir`'s.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import stat
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterator, Sequence

from .dupcheck import DEFAULT_BUFFER_ENTRIES, DuplicateIds
from .errors import InputError
from .fasta import FastaRecord, check_input_file, shown_text
from .fastq import FASTA, parse_sequences, sniff_format
from .files import (DISK_FULL_ERRNOS, TEXT_ENCODING, TEXT_ERRORS, atomic_write, atomic_write_named, decompressed,
                    open_binary)
from .rundir import WorkDir
from .shards import RecordPiece, chunk_count

log = logging.getLogger("virnucpro.predict")

INDEX_VERSION = 1
#: Bytes of the records' digest in each shard entry (BLAKE2b: it tells a changed input from the same one).
RECORDS_DIGEST_BYTES = 16
STDIN_NAME = "-"
_READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class InputSource:
    """The input: a regular file, or a stream (``-``, a pipe, ``<(zcat x.gz)``) read once."""

    path: Path
    stream: bool

    @property
    def is_stdin(self) -> bool:
        return str(self.path) == STDIN_NAME

    def open_raw(self) -> IO[bytes]:
        """The raw bytes (unbuffered file or stream)."""
        if self.is_stdin:
            return os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0)
        return open(self.path, "rb", buffering=0)

    def stat_key(self) -> list[int] | None:
        """(size, mtime_ns, inode) of a regular file; None for a stream (its bytes may change)."""
        if self.stream:
            return None
        info = os.stat(self.path)
        return [info.st_size, info.st_mtime_ns, info.st_ino]


def input_source(path: Path) -> InputSource:
    """Classify the input; :class:`InputError` for anything neither a regular file nor a readable stream."""
    if str(path) == STDIN_NAME:
        if sys.stdin is None or sys.stdin.isatty():
            raise InputError("-: standard input is a terminal; pipe a FASTA file into it "
                             "(zcat reads.fa.gz | python prediction.py - ...)")
        return InputSource(path, True)
    check_input_file(path)
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        return InputSource(path, False)
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return InputSource(path, True)
    raise InputError(f"{path}: not a regular file or a pipe (a device?); give a FASTA file, '-' or a pipe")


@dataclass(frozen=True)
class ShardEntry:
    """Where a shard starts (its first record's header, and the chunk of that record) and what it holds.

    ``digest``: of the ids and sequences of every record of the input up to the one that
    closed the shard, so equal entries of two passes mean the shard's records are the same.
    """

    offset: int
    first_chunk: int
    records: int
    chunks: int
    first_id: str
    digest: str = ""


@dataclass
class ShardIndex:
    """Every shard of one input at one chunk size and shard size."""

    source: str
    stat_key: list[int] | None
    sha256: str
    spooled: bool
    chunk_size: int
    shard_chunks: int
    records: int
    chunks: int
    shards: list[ShardEntry] = field(default_factory=list)
    version: int = INDEX_VERSION
    format: str = FASTA  # of the data file: fasta or fastq

    def data_path(self, work: Path) -> Path:
        """The file the shards are read from: the input, or its spool in the work directory."""
        return WorkDir(work).spool if self.spooled else Path(self.source)

    def save(self, work: Path) -> None:
        """Write the index to the work directory (atomically)."""
        with atomic_write(WorkDir(work).index) as handle:
            json.dump(asdict(self), handle, separators=(",", ":"))


def read_saved_index(work: Path) -> ShardIndex | None:
    """The index saved in ``work`` as it is (for a process that did not build it); None if absent or damaged."""
    path = WorkDir(work).index
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        raw["shards"] = [ShardEntry(**entry) for entry in raw["shards"]]
        return ShardIndex(**raw)
    except (OSError, ValueError, TypeError, KeyError):
        log.warning("%s: damaged shard index; it is made again", path)
        return None


def load_index(work: Path, source: InputSource, chunk_size: int, shard_chunks: int) -> ShardIndex | None:
    """The saved index when it is for this input file, unchanged, at these sizes; else None (streams: None)."""
    index = None if source.stream else read_saved_index(work)
    if index is None or (index.version, index.source, index.stat_key, index.chunk_size, index.shard_chunks,
                         index.spooled) != (INDEX_VERSION, str(source.path), source.stat_key(), chunk_size,
                                            shard_chunks, False):
        return None
    return index


class _TeeReader(io.RawIOBase):
    """Raw bytes of ``inner`` passed through a SHA-256 and, optionally, copied to ``spool``."""

    def __init__(self, inner: IO[bytes], spool: IO[bytes] | None):
        self.inner, self.spool, self.digest = inner, spool, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        # straight into the reader's buffer: no block-sized allocation per read
        view = memoryview(buffer).cast("B")
        count = self.inner.readinto(view)
        if not count:
            return 0
        self.digest.update(view[:count])
        if self.spool is not None:
            self.spool.write(view[:count])
        return count


def _digest_text(update: Callable[[bytes], None], record_id: str, seq: str) -> None:
    """Feed ``id\nseq\n`` to a digest in blocks: a copy of a 100 Mbp sequence would double its memory."""
    update(f"{record_id}\n".encode(TEXT_ENCODING, TEXT_ERRORS))
    for start in range(0, len(seq), _READ_BLOCK):
        update(seq[start:start + _READ_BLOCK].encode(TEXT_ENCODING, TEXT_ERRORS))
    update(b"\n")


class _ArrivedBytes(io.BufferedReader):
    """A buffered reader whose ``read(n)`` gives the bytes at hand (at most one read of a pipe), so that a
    gzip stream's reader decompresses what has arrived instead of waiting for a whole block of it."""

    def read(self, size: int | None = -1) -> bytes:
        return super().read1(size) if size is not None and size > 0 else super().read(size)


class _Layout:
    """Cuts records into shards of about ``shard_chunks`` chunks (a record longer than that is split).

    ``digest`` gives the digest of the records read so far, for each shard closed.
    """

    def __init__(self, shard_chunks: int, digest: Callable[[], str]):
        self.shard_chunks, self.shards, self.digest = shard_chunks, [], digest
        self._start: tuple[int, int, str] | None = None
        self._records = self._chunks = 0

    def add(self, offset: int, record_id: str, total: int) -> None:
        if total <= self.shard_chunks:
            self._take(offset, record_id, 0, total)
            return
        first = 0
        while first < total:
            take = min(self.shard_chunks - self._chunks, total - first)
            self._take(offset, record_id, first, take)
            first += take

    def _take(self, offset: int, record_id: str, first: int, count: int) -> None:
        if self._start is None:
            self._start = (offset, first, record_id)
        self._records += 1
        self._chunks += count
        if self._chunks >= self.shard_chunks:
            self.close()

    def close(self) -> None:
        if self._start is not None:
            offset, first, record_id = self._start
            self.shards.append(ShardEntry(offset, first, self._records, self._chunks, record_id, self.digest()))
        self._start, self._records, self._chunks = None, 0, 0


def build_index(source: InputSource, work: Path, chunk_size: int, shard_chunks: int,
                dup_buffer_entries: int | None = None, *,
                on_start: Callable[[str, Path | None], None] | None = None,
                on_shard: Callable[[int, ShardEntry], None] | None = None) -> ShardIndex:
    """Read the input once: hash, validate, check ids, spool a stream, and lay out the shards.

    Raises :class:`InputError` for a bad record, a duplicate id or an empty input.  The
    index is returned, not saved (see :meth:`ShardIndex.save`).

    While the pass runs, ``on_start(format, growing spool or None)`` is called once the
    format is known, and ``on_shard(k, entry)`` for each shard, in order, once the next
    record has been read (the spool then holds the shard's bytes); the last shard is not
    published: it comes with the returned index, after every check.
    """
    work.mkdir(parents=True, exist_ok=True)
    records_digest = hashlib.blake2b(digest_size=RECORDS_DIGEST_BYTES)
    digest_record = records_digest.update
    layout = _Layout(shard_chunks, records_digest.hexdigest)
    duplicates = DuplicateIds(work, dup_buffer_entries or DEFAULT_BUFFER_ENTRIES)
    records = chunks = published = 0
    shown = source.path
    try:
        with contextlib.ExitStack() as stack:
            raw = stack.enter_context(source.open_raw())
            spool, growing = (stack.enter_context(atomic_write_named(WorkDir(work).spool, "wb")) if source.stream
                              else (None, None))
            tee = _TeeReader(raw, spool)
            handle = stack.enter_context(decompressed(_ArrivedBytes(tee, _READ_BLOCK)))
            fmt = sniff_format(handle)
            if on_start is not None:
                on_start(fmt, growing)
            for offset, record in parse_sequences(handle, shown, alphabet="dna", fmt=fmt):
                if on_shard is not None and published < len(layout.shards):
                    if spool is not None:
                        spool.flush()
                    for k in range(published, len(layout.shards)):
                        on_shard(k, layout.shards[k])
                    published = len(layout.shards)
                total = chunk_count(len(record.seq), chunk_size)
                _digest_text(digest_record, record.id, record.seq)
                duplicates.add(record.id, offset)
                layout.add(offset, record.id, total)
                records += 1
                chunks += total
            while tee.readinto(bytearray(_READ_BLOCK)):
                pass  # bytes after the end of the compressed data still count in the hash
        layout.close()
        if records == 0:
            raise InputError(f"{shown}: no FASTA records found (empty file?)")
        index = ShardIndex(str(source.path), source.stat_key(), tee.digest.hexdigest(), source.stream,
                           chunk_size, shard_chunks, records, chunks, layout.shards, format=fmt)
        duplicate = duplicates.first_duplicate(lambda offsets: _ids_at(index.data_path(work), offsets, fmt))
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise  # the spool or the duplicate check filled the disk: the caller says so
        raise InputError(f"{shown}: cannot read ({exc.strerror or exc})") from None
    finally:
        duplicates.close()
    if duplicate is not None:
        raise InputError(f"{shown}: duplicate record id '{shown_text(duplicate)}' (ids must be unique)")
    return index


def _ids_at(path: Path, offsets: list[int], fmt: str) -> dict[int, str]:
    """The record ids whose header lines start at ``offsets`` (sorted), read back from ``path``."""
    found = {}
    with open_binary(path) as handle:
        for offset in offsets:
            handle.seek(offset)
            for _, record in parse_sequences(handle, path, alphabet=None, start=offset, fmt=fmt):
                found[offset] = record.id
                break
    return found


class ShardReader:
    """Reads the record pieces of shards from the index's data file; sequential reads never seek.

    ``data``: the files to read instead, the first that exists when the reader opens (a
    spool still growing, then its final name); ``index.shards`` may grow meanwhile.
    """

    def __init__(self, index: ShardIndex, work: Path, data: Sequence[Path] | None = None):
        self.index, self._paths = index, tuple(data or (index.data_path(work),))
        self.path = self._paths[-1]
        self._handle: IO[bytes] | None = None
        self._records: Iterator[tuple[int, FastaRecord]] | None = None
        self._current: tuple[FastaRecord, int, int] | None = None  # record, total chunks, next chunk
        self._next_shard = -1

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the data file."""
        if self._handle is not None:
            self._handle.close()
        self._handle = self._records = self._current = None

    def _open(self) -> IO[bytes]:
        for path in self._paths[:-1]:
            with contextlib.suppress(FileNotFoundError):
                handle = open_binary(path)
                self.path = path
                return handle
        self.path = self._paths[-1]
        return open_binary(self.path)

    def _restart(self, entry: ShardEntry) -> None:
        if self._handle is None:
            self._handle = self._open()
        self._handle.seek(entry.offset)
        if self._records is not None:
            self._records.close()
        self._records = parse_sequences(self._handle, self.path, alphabet="dna", start=entry.offset,
                                        fmt=self.index.format)
        self._current = None
        first = self._next_record()
        self._current = (first[0], first[1], entry.first_chunk)

    def _next_record(self) -> tuple[FastaRecord, int, int]:
        assert self._records is not None
        item = next(self._records, None)
        if item is None:
            raise self._changed()
        return item[1], chunk_count(len(item[1].seq), self.index.chunk_size), 0

    def _changed(self) -> InputError:
        return InputError(f"{self.index.source}: the input changed since its shard index was made; "
                          "rerun with --force to start over")

    def read(self, k: int) -> list[RecordPiece]:
        """The record pieces of shard ``k``, checked against the index."""
        entry = self.index.shards[k]
        try:
            if k != self._next_shard or self._handle is None:
                self._restart(entry)
            pieces: list[RecordPiece] = []
            need = entry.chunks
            while need > 0:
                if self._current is None:
                    self._current = self._next_record()
                record, total, first = self._current
                take = min(total - first, need)
                pieces.append(RecordPiece(record, first, take, total))
                need -= take
                self._current = (record, total, first + take) if first + take < total else None
        except OSError as exc:
            raise InputError(f"{self.path}: cannot read ({exc.strerror or exc})") from None
        if (pieces[0].record.id, pieces[0].first_chunk, len(pieces)) != (entry.first_id, entry.first_chunk,
                                                                         entry.records):
            raise self._changed()
        self._next_shard = k + 1
        return pieces
