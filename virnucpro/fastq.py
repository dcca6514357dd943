"""FASTQ reading (qualities checked for shape, then dropped) and FASTA/FASTQ detection.

:func:`parse_sequences` is the one parser of sequence input: it reads an open binary
stream as FASTQ when its first non-blank byte is ``@`` and as FASTA otherwise
(:func:`virnucpro.fasta.parse_fasta`); :func:`read_sequences` does the same for a file
and checks duplicate ids.  A FASTQ record gives the same
:class:`~virnucpro.fasta.FastaRecord` (id, description, sequence), with the same
validation and messages, as the same read written as FASTA.
"""
from __future__ import annotations

import gzip
import itertools
import os
import zipfile
import zlib
from typing import IO, Iterator

from .errors import InputError
from .fasta import (UTF8_BOM, FastaRecord, LineReader, _binary, _clean, _decoder, _finish_record, parse_fasta,
                    read_records, shown_text, whole_line)
from .files import TEXT_ENCODING, TEXT_ERRORS

FASTA, FASTQ = "fasta", "fastq"
_SNIFF_BYTES = 1 << 16
_HEADER, _SEPARATOR = b"@", b"+"


def sniff_format(handle: IO[bytes]) -> str:
    """:data:`FASTQ` when the first non-blank byte the stream holds is ``@``, else :data:`FASTA`; consumes nothing."""
    peek = getattr(handle, "peek", None)
    head = peek(_SNIFF_BYTES) if peek is not None else b""
    if head.startswith(UTF8_BOM):
        head = head[len(UTF8_BOM):]
    return FASTQ if head.lstrip().startswith(_HEADER) else FASTA


def parse_sequences(handle: IO[bytes], path: str | os.PathLike, *, alphabet: str | None = "dna", start: int = 0,
                    fmt: str | None = None) -> Iterator[tuple[int, FastaRecord]]:
    """``(byte offset of the record's first line, record)`` of a FASTA or FASTQ stream (``fmt``, else sniffed)."""
    if (fmt or sniff_format(handle)) == FASTQ:
        return parse_fastq(handle, path, alphabet=alphabet, start=start)
    return parse_fasta(handle, path, alphabet=alphabet, start=start)


def read_sequences(path: str | os.PathLike, *, alphabet: str | None = "dna", check_duplicates: bool = True,
                   allow_empty: bool = False) -> Iterator[FastaRecord]:
    """Stream the records of a FASTA or FASTQ file (plain or gzip), the format detected from the content."""
    return read_records(path, parse_sequences, "records", alphabet=alphabet, check_duplicates=check_duplicates,
                        allow_empty=allow_empty)


def parse_fastq(handle: IO[bytes], path: str | os.PathLike, *, alphabet: str | None = "dna",
                start: int = 0) -> Iterator[tuple[int, FastaRecord]]:
    """Parse a FASTQ stream into ``(byte offset of the '@' line, record)``; qualities are checked, then ignored.

    Sequence and quality may wrap over several lines.  Raises :class:`InputError` naming
    the file, record and line for a header not starting with ``@``, a missing ``+`` line,
    a ``+`` line naming another record, qualities of another length than the sequence, a
    truncated record, binary data, and what :func:`~virnucpro.fasta.parse_fasta` refuses
    in a record (letters, an empty id or sequence).  Duplicate ids are the caller's check.  Read in
    pieces like :func:`~virnucpro.fasta.parse_fasta`.
    """
    lines = LineReader(handle, start)
    try:
        while (item := lines.line()) is not None:
            at, line = item
            line_no = lines.line_no
            if b"\x00" in line:
                raise _binary(path, line_no, "FASTQ")
            if not line.strip():
                for piece in lines.rest():
                    if b"\x00" in piece:
                        raise _binary(path, line_no, "FASTQ")
                    if piece.strip():
                        raise InputError(f"{path}: line {line_no}: expected a FASTQ record header starting with '@'")
                continue
            if not line.startswith(_HEADER):
                raise InputError(f"{path}: line {line_no}: expected a FASTQ record header starting with '@'")
            line = whole_line(line, lines, path, what="FASTQ")
            header = line[1:].decode(TEXT_ENCODING, TEXT_ERRORS).rstrip()
            name = _record_name(header, line_no)
            decoder, bad = _decoder(), set()
            seq = ""
            length = 0
            while True:  # the sequence lines up to the '+' line (checked against the header)
                item = lines.line()
                if item is None:
                    raise InputError(f"{path}: record {name}: truncated (no '+' line and no qualities)")
                line = item[1]
                if line.startswith(_SEPARATOR):
                    repeated = whole_line(line, lines, path, nul_check=False)[1:].strip().decode(TEXT_ENCODING,
                                                                                               TEXT_ERRORS)
                    if repeated and repeated.split(None, 1)[0] != (header.split(None, 1) or [''])[0]:
                        raise InputError(f"{path}: record {name}: the '+' line at line {lines.line_no} names "
                                         "another record")
                    break
                if line.startswith(_HEADER):
                    raise InputError(f"{path}: record {name}: no '+' line before the next record at line "
                                     f"{lines.line_no}")
                counter = _StrippedLength()
                for piece in itertools.chain((line,), lines.rest()):
                    counter.add(piece)
                    seq += _clean(piece, decoder, alphabet, bad)
                length += counter.length
            _skip_qualities(path, lines, name, length)
            seq += _clean(b"", decoder, alphabet, bad, final=True)
            yield at, _finish_record(path, header, seq, bad, alphabet)
    except (EOFError, gzip.BadGzipFile, zipfile.BadZipFile, zlib.error) as exc:
        raise InputError(f"{path}: corrupt or truncated gzip file ({exc})") from None


class _StrippedLength:
    """The length of a line without white space at either end, added up piece by piece."""

    def __init__(self) -> None:
        self.length, self._gap, self._started = 0, 0, False

    def add(self, piece: bytes) -> None:
        if not self._started:
            piece = piece.lstrip()
            if not piece:
                return
            self._started = True
        body = piece.rstrip()
        if body:
            self.length += self._gap + len(body)
            self._gap = len(piece) - len(body)
        else:
            self._gap += len(piece)


def _skip_qualities(path, lines: LineReader, name: str, length: int) -> None:
    """Read quality lines until they cover ``length`` bases; refuse another length or the end of the file."""
    qualities = 0
    line_no = 0
    while qualities < length:
        item = lines.line()
        if item is None:
            raise InputError(f"{path}: record {name}: truncated ({qualities} quality characters for "
                             f"{length} bases)")
        line_no = lines.line_no
        qualities += len(item[1].rstrip(b"\r\n")) + sum(len(piece.rstrip(b"\r\n")) for piece in lines.rest())
    if qualities != length:
        raise InputError(f"{path}: record {name}: {qualities} quality characters for {length} bases "
                         f"(line {line_no})")


def _record_name(header: str, line_no: int) -> str:
    fields = header.split(None, 1)
    return f"'{shown_text(fields[0])}' (line {line_no})" if fields else f"'' (line {line_no})"
