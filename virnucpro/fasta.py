"""FASTA reading (streamed and validated) and writing, and splitting FASTA files."""
from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from .errors import InputError
from .files import TEXT_ENCODING, TEXT_ERRORS, open_binary, open_text, open_text_output

FASTA_LINE_WIDTH = 60  # what Biopython's FASTA writer uses, and so the original chunk files
NUCLEOTIDE_LETTERS = frozenset("ACGTURYKMSWBDHVN-")
PROTEIN_ONLY_LETTERS = frozenset("EFIJLOPQXZ*")
#: The amino-acid letters a protein language model is given, and the letters mapped onto them.
PROTEIN_ALPHABET = "ACDEFGHIKLMNPQRSTVWYXBUZO"
PROTEIN_REPLACEMENTS = {"*": "X", "J": "X"}
SPLIT_FILE_TEMPLATE = "output_{index}.fa"
_WHITESPACE_BYTES = b" \t\r\n\v\f"
UTF8_BOM = b"\xef\xbb\xbf"
_NUCLEOTIDE_BYTES = "".join(NUCLEOTIDE_LETTERS).encode() + "".join(NUCLEOTIDE_LETTERS).lower().encode()


@dataclass(frozen=True)
class FastaRecord:
    """One FASTA record: ``id`` is the header up to the first whitespace."""

    id: str
    description: str
    seq: str


def check_input_file(path: Path) -> None:
    """Raise :class:`InputError` unless ``path`` is an existing, readable file."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a FASTA file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: not readable")


def read_fasta(path: str | os.PathLike, *, alphabet: str | None = "dna",
               check_duplicates: bool = True, allow_empty: bool = False) -> Iterator[FastaRecord]:
    """Stream records from a FASTA file (plain or gzip), validating as it goes.

    Parsing matches Biopython's FASTA parser (id = header up to the first whitespace,
    white space removed from sequence lines).  ``alphabet`` is ``"dna"``, ``"protein"``
    or None (no letter check).  Raises :class:`InputError` naming the file and record
    for text before the first header, FASTQ or binary input, a header without
    sequence, duplicate ids, letters that do not fit the alphabet, or a file with no
    records (unless ``allow_empty``); truncated gzip streams are reported too.
    """
    return read_records(path, parse_fasta, "FASTA records", alphabet=alphabet, check_duplicates=check_duplicates,
                        allow_empty=allow_empty)


def read_records(path: str | os.PathLike, parse, what: str, *, alphabet: str | None, check_duplicates: bool,
                 allow_empty: bool) -> Iterator[FastaRecord]:
    """Stream the records ``parse(handle, path, alphabet=...)`` finds in a file, checking ids and emptiness."""
    path = Path(path)
    check_input_file(path)
    seen: set[str] | None = set() if check_duplicates else None
    count = 0
    try:
        with open_binary(path) as handle:
            for _, record in parse(handle, path, alphabet=alphabet):
                if seen is not None:
                    if record.id in seen:
                        raise InputError(f"{path}: duplicate record id '{shown_text(record.id)}' "
                                         "(ids must be unique)")
                    seen.add(record.id)
                count += 1
                yield record
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if count == 0 and not allow_empty:
        raise InputError(f"{path}: no {what} found (empty file?)")


def parse_fasta(handle: IO[bytes], path: str | os.PathLike, *, alphabet: str | None = "dna",
                start: int = 0) -> Iterator[tuple[int, FastaRecord]]:
    """Parse an open binary stream into ``(byte offset of the header line, record)`` pairs.

    ``start`` is the stream's position (offsets count decompressed bytes); a UTF-8 byte
    order mark at offset 0 is skipped.  Lines end at ``\n``, ``\r\n`` or ``\r`` (as in
    text mode).  Validation and messages are those of :func:`read_fasta`, without the
    duplicate-id check (the caller's job).
    """
    header: str | None = None
    header_at = 0
    parts: list[bytes] = []
    try:
        for line_no, (at, line) in enumerate(_lines(handle, start), start=1):
            if b"\x00" in line:
                raise InputError(f"{path}: line {line_no}: binary data, not a FASTA file")
            if line.startswith(b">"):
                if header is not None:
                    yield header_at, _finish_record(path, header, parts, alphabet)
                header = line[1:].decode(TEXT_ENCODING, TEXT_ERRORS).rstrip()
                header_at = at
                parts = []
            elif header is None:
                if not line.strip():
                    continue
                if line.startswith(b"@"):
                    raise InputError(f"{path}: looks like FASTQ (first record starts with '@'); "
                                     "convert it to FASTA first (e.g. seqkit fq2fa)")
                raise InputError(f"{path}: line {line_no}: text before the first '>' header; "
                                 "not a FASTA file")
            else:
                parts.append(line)
        if header is not None:
            yield header_at, _finish_record(path, header, parts, alphabet)
    except (EOFError, gzip.BadGzipFile, zipfile.BadZipFile, zlib.error) as exc:
        raise InputError(f"{path}: corrupt or truncated gzip file ({exc})") from None


def _lines(handle: IO[bytes], start: int) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` for every line; a leading UTF-8 byte order mark is dropped."""
    offset = start
    for raw in handle:
        if offset == 0 and raw.startswith(UTF8_BOM):
            offset, raw = len(UTF8_BOM), raw[len(UTF8_BOM):]
        if b"\r" in raw and b"\r" in raw.rstrip(b"\r\n"):  # a lone carriage return ends a line too
            for line in raw.splitlines(keepends=True):
                yield offset, line
                offset += len(line)
            continue
        yield offset, raw
        offset += len(raw)


def _finish_record(path: Path, header: str, parts: list[bytes], alphabet: str | None) -> FastaRecord:
    raw = b"".join(parts).translate(None, _WHITESPACE_BYTES)
    seq = raw.decode(TEXT_ENCODING, TEXT_ERRORS)
    fields = header.split(None, 1)
    record_id = fields[0] if fields else ""
    if not record_id:
        raise InputError(f"{path}: a record has an empty header (no id after '>')")
    if not seq:
        raise InputError(f"{path}: record '{shown_text(record_id)}' has a header but no sequence")
    if alphabet == "dna":
        if raw.translate(None, _NUCLEOTIDE_BYTES):  # fast path: nothing but nucleotide codes left
            check_dna_letters(path, record_id, seq)
    elif alphabet == "protein":
        bad = set(seq.upper()) - set(PROTEIN_ALPHABET) - set(PROTEIN_REPLACEMENTS)
        if bad:
            raise InputError(f"{path}: record '{shown_text(record_id)}' has characters that are not "
                             f"amino-acid codes: {_shown(bad)}")
    return FastaRecord(record_id, header, seq)


def shown_text(text: str) -> str:
    """Text for a message: undecodable input bytes (kept as surrogates) shown as ``\\xe9``."""
    return text.encode(TEXT_ENCODING, TEXT_ERRORS).decode(TEXT_ENCODING, "backslashreplace")


def check_dna_letters(path: Path, record_id: str, seq: str) -> None:
    """Raise :class:`InputError` when ``seq`` holds letters that are not nucleotide codes."""
    bad = set(seq.upper()) - NUCLEOTIDE_LETTERS
    if not bad:
        return
    if bad & PROTEIN_ONLY_LETTERS and len(bad) <= 12 and all(c.isalpha() or c == "*" for c in bad):
        raise InputError(f"{path}: record '{shown_text(record_id)}' looks like a protein sequence "
                         f"(letters {''.join(sorted(bad))}); a DNA FASTA is expected")
    raise InputError(f"{path}: record '{shown_text(record_id)}' has characters that are not "
                     f"nucleotide codes: {_shown(bad)}")


def _shown(letters: set[str]) -> str:
    return "".join(sorted(repr(shown_text(c))[1:-1].replace("\\\\", "\\") for c in letters))[:40]


def write_fasta_record(handle: IO[str], record_id: str, seq: str, width: int | None = FASTA_LINE_WIDTH) -> None:
    """Write one record; ``width=None`` writes the sequence on one line."""
    handle.write(f">{record_id}\n")
    if width is None:
        handle.write(f"{seq}\n")
        return
    for start in range(0, len(seq), width):
        handle.write(seq[start:start + width])
        handle.write("\n")


def split_fasta_file(input_file: str | os.PathLike, output_dir: str | os.PathLike,
                     sequences_per_file: int) -> list[Path]:
    """Split a FASTA file into ``output_{k}.fa`` files of ``sequences_per_file`` records.

    Stale ``output_*.fa`` files from an earlier split are removed first; the new
    files are returned in order.
    """
    if sequences_per_file <= 0:
        raise ValueError("sequences_per_file must be positive")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in output_dir.glob(SPLIT_FILE_TEMPLATE.format(index="*")):
        stale.unlink()
    written: list[Path] = []
    current: IO[str] | None = None
    sequence_count = 0
    try:
        with open_text(input_file) as infile:
            for line in infile:
                if line.startswith(">"):
                    if sequence_count % sequences_per_file == 0:
                        if current:
                            current.close()
                        written.append(output_dir / SPLIT_FILE_TEMPLATE.format(index=len(written) + 1))
                        current = open_text_output(written[-1])
                    sequence_count += 1
                if current:
                    current.write(line)
    finally:
        if current:
            current.close()
    return written
