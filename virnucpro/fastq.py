"""FASTQ reading (qualities checked for shape, then dropped) and format detection.

:func:`read_sequences` is the one entry for sequence input: it looks at the first
non-blank character of the (plain or gzip) file and reads it as FASTQ (``@``) or as
FASTA (anything else, validated by :func:`virnucpro.fasta.read_fasta`).  A FASTQ
record yields the same :class:`~virnucpro.fasta.FastaRecord` (id, description,
sequence) and the same validation as the same read written as FASTA.
"""
from __future__ import annotations

import gzip
import os
import zipfile
from pathlib import Path
from typing import IO, Iterator

from .errors import InputError
from .fasta import FastaRecord, _finish_record, check_input_file, read_fasta
from .files import open_text

FASTQ_HEADER = "@"
FASTQ_SEPARATOR = "+"


def detect_format(path: str | os.PathLike) -> str:
    """``"fastq"`` when the first non-blank character of the file is ``@``, else ``"fasta"``."""
    path = Path(path)
    check_input_file(path)
    try:
        with open_text(path) as handle:
            for line in handle:
                stripped = line.lstrip()
                if stripped:
                    return "fastq" if stripped.startswith(FASTQ_HEADER) else "fasta"
    except (EOFError, gzip.BadGzipFile, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: corrupt or truncated gzip file ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return "fasta"


def read_sequences(path: str | os.PathLike, *, alphabet: str | None = "dna", check_duplicates: bool = True,
                   allow_empty: bool = False) -> Iterator[FastaRecord]:
    """Stream the records of a FASTA or FASTQ file (plain or gzip), the format detected from the content."""
    if detect_format(path) == "fastq":
        return read_fastq(path, alphabet=alphabet, check_duplicates=check_duplicates, allow_empty=allow_empty)
    return read_fasta(path, alphabet=alphabet, check_duplicates=check_duplicates, allow_empty=allow_empty)


def read_fastq(path: str | os.PathLike, *, alphabet: str | None = "dna", check_duplicates: bool = True,
               allow_empty: bool = False) -> Iterator[FastaRecord]:
    """Stream records from a FASTQ file (plain or gzip); qualities are checked, then ignored.

    Records may wrap their sequence and quality over several lines.  Raises
    :class:`InputError` naming the file, record and line for a header not starting with
    ``@``, a missing ``+`` line, a ``+`` line naming another record, qualities of another
    length than the sequence, a truncated record, binary data, and everything
    :func:`~virnucpro.fasta.read_fasta` refuses in a record (duplicate ids, letters).
    """
    path = Path(path)
    check_input_file(path)
    seen: set[str] | None = set() if check_duplicates else None
    count = 0
    try:
        with open_text(path) as handle:
            for header, parts in _fastq_records(path, handle):
                yield _finish_record(path, header, parts, alphabet, seen)
                count += 1
    except (EOFError, gzip.BadGzipFile, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: corrupt or truncated gzip file ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if count == 0 and not allow_empty:
        raise InputError(f"{path}: no FASTQ records found (empty file?)")


def _fastq_records(path: Path, handle: IO[str]) -> Iterator[tuple[str, list[str]]]:
    """(header, sequence lines) of each record, the shape of every record checked."""
    lines = enumerate(handle, start=1)
    for line_no, line in lines:
        if "\x00" in line:
            raise InputError(f"{path}: line {line_no}: binary data, not a FASTQ file")
        if not line.strip():
            continue
        if not line.startswith(FASTQ_HEADER):
            raise InputError(f"{path}: line {line_no}: expected a FASTQ record header starting with '@'")
        header = line[1:].rstrip()
        name = _record_name(header, line_no)
        parts: list[str] = []
        separator = None
        for line_no, line in lines:
            if line.startswith(FASTQ_SEPARATOR):
                separator = line[1:].strip()
                break
            if line.startswith(FASTQ_HEADER):
                raise InputError(f"{path}: record {name}: no '+' line before the next record at line {line_no}")
            parts.append(line.strip())
        if separator is None:
            raise InputError(f"{path}: record {name}: truncated (no '+' line and no qualities)")
        if separator and separator != header and separator.split(None, 1)[0] != header.split(None, 1)[0]:
            raise InputError(f"{path}: record {name}: the '+' line at line {line_no} names another record")
        seq_length = sum(len(p) for p in parts)
        qualities = 0
        while qualities < seq_length:
            try:
                line_no, line = next(lines)
            except StopIteration:
                raise InputError(f"{path}: record {name}: truncated ({qualities} quality characters for "
                                 f"{seq_length} bases)") from None
            qualities += len(line.rstrip("\r\n"))
        if qualities != seq_length:
            raise InputError(f"{path}: record {name}: {qualities} quality characters for {seq_length} bases "
                             f"(line {line_no})")
        yield header, parts


def _record_name(header: str, line_no: int) -> str:
    fields = header.split(None, 1)
    return f"'{fields[0]}' (line {line_no})" if fields else f"at line {line_no}"
