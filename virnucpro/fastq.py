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
import os
import zipfile
import zlib
from typing import IO, Iterator

from .errors import InputError
from .fasta import UTF8_BOM, FastaRecord, _finish_record, _lines, parse_fasta, read_records, shown_text
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
    in a record (letters, an empty id or sequence).  Duplicate ids are the caller's check.
    """
    try:
        lines = enumerate(_lines(handle, start), start=1)
        for line_no, (at, line) in lines:
            if b"\x00" in line:
                raise InputError(f"{path}: line {line_no}: binary data, not a FASTQ file")
            if not line.strip():
                continue
            if not line.startswith(_HEADER):
                raise InputError(f"{path}: line {line_no}: expected a FASTQ record header starting with '@'")
            header = line[1:].decode(TEXT_ENCODING, TEXT_ERRORS).rstrip()
            name = _record_name(header, line_no)
            parts = _sequence_lines(path, lines, header, name)
            _skip_qualities(path, lines, name, sum(len(p) for p in parts))
            yield at, _finish_record(path, header, parts, alphabet)
    except (EOFError, gzip.BadGzipFile, zipfile.BadZipFile, zlib.error) as exc:
        raise InputError(f"{path}: corrupt or truncated gzip file ({exc})") from None


def _sequence_lines(path, lines, header: str, name: str) -> list[bytes]:
    """The sequence lines up to the ``+`` line (checked against the header), stripped."""
    parts: list[bytes] = []
    for line_no, (_, line) in lines:
        if line.startswith(_SEPARATOR):
            repeated = line[1:].strip().decode(TEXT_ENCODING, TEXT_ERRORS)
            if repeated and repeated.split(None, 1)[0] != (header.split(None, 1) or [''])[0]:
                raise InputError(f"{path}: record {name}: the '+' line at line {line_no} names another record")
            return parts
        if line.startswith(_HEADER):
            raise InputError(f"{path}: record {name}: no '+' line before the next record at line {line_no}")
        parts.append(line.strip())
    raise InputError(f"{path}: record {name}: truncated (no '+' line and no qualities)")


def _skip_qualities(path, lines, name: str, length: int) -> None:
    """Read quality lines until they cover ``length`` bases; refuse another length or the end of the file."""
    qualities = 0
    line_no = 0
    while qualities < length:
        item = next(lines, None)
        if item is None:
            raise InputError(f"{path}: record {name}: truncated ({qualities} quality characters for "
                             f"{length} bases)")
        line_no, (_, line) = item
        qualities += len(line.rstrip(b"\r\n"))
    if qualities != length:
        raise InputError(f"{path}: record {name}: {qualities} quality characters for {length} bases "
                         f"(line {line_no})")


def _record_name(header: str, line_no: int) -> str:
    fields = header.split(None, 1)
    return f"'{shown_text(fields[0])}' (line {line_no})" if fields else f"'' (line {line_no})"
