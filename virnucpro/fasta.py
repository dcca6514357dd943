"""FASTA reading (streamed and validated) and writing, and splitting FASTA files."""
from __future__ import annotations

import codecs
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
#: Input is read in pieces of at most this many bytes: a longer line comes in several.
LINE_BLOCK = 1 << 16
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
    duplicate-id check (the caller's job).  The stream is read in blocks of at most
    :data:`LINE_BLOCK` bytes, so text before the first header is refused after one
    block, and a record needs about one byte per base (a 100 Mbp line is fine).
    """
    header: str | None = None
    header_at = 0
    seq, bad, decoder = "", set(), _decoder()
    lines = LineReader(handle, start)
    try:
        while (item := lines.line()) is not None:
            at, line = item
            if b"\x00" in line:
                raise _binary(path, lines.line_no)
            if line.startswith(b">"):
                if header is not None:
                    seq += _clean(b"", decoder, alphabet, bad, final=True)
                    yield header_at, _finish_record(path, header, seq, bad, alphabet)
                header = whole_line(line, lines, path)[1:].decode(TEXT_ENCODING, TEXT_ERRORS).rstrip()
                header_at = at
                seq, bad, decoder = "", set(), _decoder()
            elif header is None:
                if not line.strip():
                    line = _first_text(lines, path)
                    if not line:
                        continue
                if line.startswith(b"@"):
                    raise InputError(f"{path}: looks like FASTQ (first record starts with '@'); this step "
                                     "reads FASTA only (prediction.py and evaluate.py take FASTQ): convert it "
                                     "first (e.g. seqkit fq2fa)")
                raise InputError(f"{path}: line {lines.line_no}: text before the first '>' header; "
                                 "not a FASTA file")
            else:
                seq += _clean(line, decoder, alphabet, bad)
                for piece in lines.rest():
                    if b"\x00" in piece:
                        raise _binary(path, lines.line_no)
                    seq += _clean(piece, decoder, alphabet, bad)
        if header is not None:
            seq += _clean(b"", decoder, alphabet, bad, final=True)
            yield header_at, _finish_record(path, header, seq, bad, alphabet)
    except (EOFError, gzip.BadGzipFile, zipfile.BadZipFile, zlib.error) as exc:
        raise InputError(f"{path}: corrupt or truncated gzip file ({exc})") from None


def _binary(path: str | os.PathLike, line_no: int, what: str = "FASTA") -> InputError:
    return InputError(f"{path}: line {line_no}: binary data, not a {what} file")


def _first_text(lines: LineReader, path: str | os.PathLike) -> bytes:
    """The rest of a line that began blank, from its first non-blank piece (b"" when it is all blank)."""
    for piece in lines.rest():
        if b"\x00" in piece:
            raise _binary(path, lines.line_no)
        if piece.strip():
            return piece
    return b""


def whole_line(first: bytes, lines: LineReader, path: str | os.PathLike, nul_check: bool = True,
               what: str = "FASTA") -> bytes:
    """A line (a header) whole: ``first`` and the pieces of the line still to come."""
    rest = list(lines.rest())
    if nul_check and any(b"\x00" in piece for piece in rest):
        raise _binary(path, lines.line_no, what)
    return first + b"".join(rest) if rest else first


class LineReader:
    """The lines of a binary stream in pieces of at most about :data:`LINE_BLOCK` bytes.

    :meth:`line` gives ``(offset, first piece)`` of the next line (skipping what is left
    of the current one) and counts it in :attr:`line_no`; :meth:`rest` gives the
    current line's further pieces.  A line is cut only when it is longer than a block.
    """

    def __init__(self, handle: IO[bytes], start: int):
        self._pieces = _lines(handle, start)
        self._next = next(self._pieces, None)
        self.line_no = 0

    def line(self) -> tuple[int, bytes] | None:
        """The next line's offset and first piece; None at the end."""
        while self._next is not None and self._next[2]:
            self._next = next(self._pieces, None)
        if self._next is None:
            return None
        at, piece, _ = self._next
        self._next = next(self._pieces, None)
        self.line_no += 1
        return at, piece

    def rest(self) -> Iterator[bytes]:
        """The current line's pieces after the first."""
        while self._next is not None and self._next[2]:
            piece = self._next[1]
            self._next = next(self._pieces, None)
            yield piece


def _lines(handle: IO[bytes], start: int) -> Iterator[tuple[int, bytes, bool]]:
    """``(offset, piece, continues the previous line)``; a leading UTF-8 byte order mark is dropped.

    A line up to :data:`LINE_BLOCK` bytes is one piece; a longer one comes in pieces of
    that size (a ``\r`` at a piece's end is held back, so ``\r\n`` stays together).
    """
    offset = start
    carry = b""
    continued = False
    first = True
    while True:
        raw = carry + handle.readline(LINE_BLOCK)
        carry = b""
        if first:
            first = False
            if offset == 0 and raw.startswith(UTF8_BOM):
                offset, raw = len(UTF8_BOM), raw[len(UTF8_BOM):]
                if not raw:
                    raw = handle.readline(LINE_BLOCK)
        if not raw:
            return
        partial = not raw.endswith(b"\n") and len(raw) >= LINE_BLOCK  # more of this line may follow
        if partial and raw.endswith(b"\r"):
            carry, raw = b"\r", raw[:-1]  # perhaps the first half of a "\r\n"
        # A lone carriage return ends a line too: as in text mode for a line of one piece (a "\r" run
        # just before the "\n" stays with it); in a line cut in pieces, every "\r" ends a line.
        if b"\r" in raw and (continued or partial or b"\r" in raw.rstrip(b"\r\n")):
            pieces = raw.splitlines(keepends=True)
        else:
            pieces = [raw]
        for piece in pieces:
            yield offset, piece, continued
            offset += len(piece)
            continued = not piece.endswith((b"\n", b"\r"))


def _decoder() -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder(TEXT_ENCODING)(TEXT_ERRORS)


_PROTEIN_CODES = frozenset(PROTEIN_ALPHABET) | frozenset(PROTEIN_REPLACEMENTS)


def _clean(piece: bytes, decoder: codecs.IncrementalDecoder, alphabet: str | None, bad: set[str],
           final: bool = False) -> str:
    """A piece of sequence without white space, as text; letters outside ``alphabet`` are added to ``bad``."""
    raw = piece.translate(None, _WHITESPACE_BYTES)
    text = decoder.decode(raw, final)
    if alphabet == "dna":
        if raw.translate(None, _NUCLEOTIDE_BYTES) or (final and text):  # fast path: only nucleotide codes
            bad.update(set(text.upper()) - NUCLEOTIDE_LETTERS)
    elif alphabet == "protein":
        bad.update(set(text.upper()) - _PROTEIN_CODES)
    return text


def _finish_record(path: Path, header: str, seq: str, bad: set[str], alphabet: str | None) -> FastaRecord:
    fields = header.split(None, 1)
    record_id = fields[0] if fields else ""
    if not record_id:
        raise InputError(f"{path}: a record has an empty header (no id after '>')")
    if not seq:
        raise InputError(f"{path}: record '{shown_text(record_id)}' has a header but no sequence")
    if bad and alphabet == "dna":
        refuse_dna_letters(path, record_id, bad)
    elif bad and alphabet == "protein":
        raise InputError(f"{path}: record '{shown_text(record_id)}' has characters that are not "
                         f"amino-acid codes: {_shown(bad)}")
    return FastaRecord(record_id, header, seq)


def shown_text(text: str) -> str:
    """Text for a message: undecodable input bytes (kept as surrogates) shown as ``\\xe9``."""
    return text.encode(TEXT_ENCODING, TEXT_ERRORS).decode(TEXT_ENCODING, "backslashreplace")


def check_dna_letters(path: Path, record_id: str, seq: str) -> None:
    """Raise :class:`InputError` when ``seq`` holds letters that are not nucleotide codes."""
    refuse_dna_letters(path, record_id, set(seq.upper()) - NUCLEOTIDE_LETTERS)


def refuse_dna_letters(path: Path, record_id: str, bad: set[str]) -> None:
    """Raise :class:`InputError` naming ``bad``, the letters of a record that are not nucleotide codes (if any)."""
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
