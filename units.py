"""VirNucPro-FastESM library: preprocessing, feature extraction, merging, classifier.

Every public name of the original VirNucPro ``units.py`` is kept with the same
argument order (``split_fasta_chunk``, ``translate_dna``, ``identify_seq``,
``extract_DNABERT_S``, ``extract_esm``, ``merge_data``, ...), so ``from units import *``
keeps working.  The protein model is FastESM2_650 (1280-d) instead of ESM2-3B;
feature widths are always read from the data.

This module never prints: it logs through ``logging`` and shows progress with tqdm
on stderr.  Problems with user input are raised as :class:`VirNucProError`
subclasses, which the command-line scripts turn into one-line messages.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import logging
import os
import pickle
import pickletools
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, NoReturn, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from safetensors import SafetensorError
from tqdm.auto import tqdm

__all__ = [
    # constants
    "DNABERT_S_MODEL", "FASTESM_MODEL", "TRUNCATION_SEQ_LENGTH", "LABEL_MAP",
    "CHECKPOINT_FORMAT_VERSION", "DEFAULT_BATCH_TOKENS",
    # errors
    "VirNucProError", "InputError", "FeatureFileError", "CheckpointError", "ModelLoadError",
    # FASTA I/O
    "FastaRecord", "check_input_file", "read_fasta", "open_text", "write_fasta_record", "atomic_write", "atomic_torch_save",
    # preprocessing (original names)
    "split_fasta_chunk", "chunk_sequence", "create_refseq_pro_list", "reverse_complement",
    "translate_dna", "seq_in_reflist", "identify_seq", "process_record", "split_fasta_file",
    # models and features
    "resolve_device", "load_protein_model", "load_dnabert_model", "token_budget_batches",
    "embed_proteins", "embed_dna", "extract_DNABERT_S", "extract_esm",
    "load_feature_object", "load_dna_features", "load_protein_features", "merge_data",
    # classifier
    "MLPClassifier", "save_checkpoint", "load_checkpoint", "describe_legacy_checkpoint",
    # command-line plumbing
    "CliArgumentParser", "add_model_arguments", "positive_int", "setup_logging", "run_cli", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE",
]

log = logging.getLogger("virnucpro")

DNABERT_S_MODEL = "zhihan1996/DNABERT-S"
FASTESM_MODEL = "Synthyra/FastESM2_650"
TRUNCATION_SEQ_LENGTH = 1024
DEFAULT_BATCH_TOKENS = 16384
CHECKPOINT_FORMAT_VERSION = 2
LABEL_MAP = {0: "others", 1: "virus"}
FASTA_LINE_WIDTH = 60  # what Biopython's FASTA writer uses, and so the original chunk files

# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class VirNucProError(Exception):
    """A problem the user can fix (bad input, wrong model, ...); the CLI exits with 2."""


class InputError(VirNucProError):
    """An input file or record is unusable."""


class FeatureFileError(VirNucProError):
    """A feature file is missing, malformed or inconsistent."""


class CheckpointError(VirNucProError):
    """A classifier checkpoint is missing, foreign, legacy or does not fit the features."""


class ModelLoadError(VirNucProError):
    """A language model could not be loaded."""


# ---------------------------------------------------------------------------
# FASTA reading and writing
# ---------------------------------------------------------------------------

GZIP_MAGIC = b"\x1f\x8b"
NUCLEOTIDE_LETTERS = frozenset("ACGTURYKMSWBDHVN-")
PROTEIN_ONLY_LETTERS = frozenset("EFIJLOPQXZ*")
TEXT_ENCODING = "utf-8"
TEXT_ERRORS = "surrogateescape"  # non-UTF-8 header bytes round-trip unchanged


@dataclass(frozen=True)
class FastaRecord:
    """One FASTA record: ``id`` is the header up to the first whitespace."""

    id: str
    description: str
    seq: str


def open_text(path: str | os.PathLike, mode: str = "r") -> IO[str]:
    """Open a plain or gzip-compressed text file (detected by content, not name)."""
    path = Path(path)
    if "r" in mode:
        with open(path, "rb") as probe:
            magic = probe.read(2)
        if magic == GZIP_MAGIC:
            return gzip.open(path, "rt", encoding=TEXT_ENCODING, errors=TEXT_ERRORS, newline=None)
        return open(path, "r", encoding=TEXT_ENCODING, errors=TEXT_ERRORS, newline=None)
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding=TEXT_ENCODING, errors=TEXT_ERRORS)
    return open(path, mode, encoding=TEXT_ENCODING, errors=TEXT_ERRORS, newline="\n")


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
    path = Path(path)
    check_input_file(path)
    seen: set[str] | None = set() if check_duplicates else None
    count = 0
    try:
        with open_text(path) as handle:
            header: str | None = None
            parts: list[str] = []
            line_no = 0
            for line_no, line in enumerate(handle, start=1):
                if "\x00" in line:
                    raise InputError(f"{path}: line {line_no}: binary data, not a FASTA file")
                if line.startswith(">"):
                    if header is not None:
                        yield _finish_record(path, header, parts, alphabet, seen)
                        count += 1
                    header = line[1:].rstrip()
                    parts = []
                elif header is None:
                    if not line.strip():
                        continue
                    if line.startswith("@"):
                        raise InputError(f"{path}: looks like FASTQ (first record starts with '@'); "
                                         "convert it to FASTA first (e.g. seqkit fq2fa)")
                    raise InputError(f"{path}: line {line_no}: text before the first '>' header; "
                                     "not a FASTA file")
                else:
                    parts.append(line)
            if header is not None:
                yield _finish_record(path, header, parts, alphabet, seen)
                count += 1
    except (EOFError, gzip.BadGzipFile, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: corrupt or truncated gzip file ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if count == 0 and not allow_empty:
        raise InputError(f"{path}: no FASTA records found (empty file?)")


_WHITESPACE_TABLE = str.maketrans("", "", " \t\r\n\v\f")


def _finish_record(path: Path, header: str, parts: list[str], alphabet: str | None,
                   seen: set[str] | None) -> FastaRecord:
    seq = "".join(parts).translate(_WHITESPACE_TABLE)
    fields = header.split(None, 1)
    record_id = fields[0] if fields else ""
    description = header
    if not record_id:
        raise InputError(f"{path}: a record has an empty header (no id after '>')")
    if not seq:
        raise InputError(f"{path}: record '{record_id}' has a header but no sequence")
    if seen is not None:
        if record_id in seen:
            raise InputError(f"{path}: duplicate record id '{record_id}' (ids must be unique)")
        seen.add(record_id)
    if alphabet == "dna":
        letters = set(seq.upper())
        bad = letters - NUCLEOTIDE_LETTERS
        if bad:
            if bad & PROTEIN_ONLY_LETTERS and len(bad) <= 12 and all(c.isalpha() or c == "*" for c in bad):
                raise InputError(f"{path}: record '{record_id}' looks like a protein sequence "
                                 f"(letters {''.join(sorted(bad))}); a DNA FASTA is expected")
            shown = "".join(sorted(repr(c)[1:-1] for c in bad))[:40]
            raise InputError(f"{path}: record '{record_id}' has characters that are not "
                             f"nucleotide codes: {shown}")
    elif alphabet == "protein":
        bad = set(seq.upper()) - set(_PROTEIN_ALPHABET) - set(_PROTEIN_REPLACEMENTS)
        if bad:
            shown = "".join(sorted(repr(c)[1:-1] for c in bad))[:40]
            raise InputError(f"{path}: record '{record_id}' has characters that are not "
                             f"amino-acid codes: {shown}")
    return FastaRecord(record_id, description, seq)


def write_fasta_record(handle: IO[str], record_id: str, seq: str, width: int | None = FASTA_LINE_WIDTH) -> None:
    """Write one record; ``width=None`` writes the sequence on one line."""
    handle.write(f">{record_id}\n")
    if width is None:
        handle.write(f"{seq}\n")
        return
    for start in range(0, len(seq), width):
        handle.write(seq[start:start + width])
        handle.write("\n")


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file beside ``path`` and rename it into place on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        if "b" in mode:
            handle = open(tmp, mode)
        else:
            handle = open(tmp, mode, encoding=TEXT_ENCODING, errors=TEXT_ERRORS, newline="\n")
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file, so ``path`` is never half-written."""
    with atomic_write(path, "wb") as handle:
        torch.save(obj, handle)


# ---------------------------------------------------------------------------
# Chunking, translation, frame selection (byte-identical to the original)
# ---------------------------------------------------------------------------


def chunk_sequence(seq: str, chunk_size: int) -> list[str]:
    """Cut ``seq`` into overlapping chunks exactly as the original VirNucPro does."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    seq_length = len(seq)
    num_chunks = -(-seq_length // chunk_size)
    if num_chunks == 0:
        return []
    overlap_total = num_chunks * chunk_size - seq_length
    lower = int(overlap_total / num_chunks)
    upper = lower + 1
    need_upper = overlap_total - lower * (num_chunks - 1)
    shifts = [upper] * need_upper + [lower] * (num_chunks - 1 - need_upper) + [0]
    chunks = []
    moved = 0
    for start, shift in zip(range(0, seq_length, chunk_size), shifts):
        begin = start - moved if start > 1 else start
        chunks.append(seq[begin:begin + chunk_size])
        moved += shift
    return chunks


def split_fasta_chunk(input_file: str | os.PathLike, output_file: str | os.PathLike, chunk_size: int) -> int:
    """Write every record of ``input_file`` cut into ``chunk_size`` chunks; return the chunk count."""
    count = 0
    with atomic_write(output_file) as out_handle:
        for record in read_fasta(input_file, alphabet=None, check_duplicates=False):
            for index, chunk in enumerate(chunk_sequence(record.seq, int(chunk_size)), start=1):
                write_fasta_record(out_handle, f"{record.id}_chunk_{index}", chunk)
                count += 1
    return count


def create_refseq_pro_list(gbff_file: str | os.PathLike) -> dict[str, list[str]]:
    """Map each GenBank record id to the ``/translation`` of its CDS features."""
    from Bio import SeqIO

    refseq_pro_dir: dict[str, list[str]] = {}
    with open_text(gbff_file) as handle:
        for record in SeqIO.parse(handle, "genbank"):
            refseq_pro_dir[record.id] = [
                feature.qualifiers.get("translation", [""])[0]
                for feature in record.features if feature.type == "CDS"
            ]
    return refseq_pro_dir


_COMPLEMENT = str.maketrans("ACGTacgt", "TGCAtgca")


def reverse_complement(sequence: str) -> str:
    """Reverse complement; only A, C, G, T (either case) are complemented."""
    return sequence.translate(_COMPLEMENT)[::-1]


_BASES = "TCAG"
_AMINO_ACIDS = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
CODON_TABLE = {a + b + c: _AMINO_ACIDS[16 * i + 4 * j + k]
               for i, a in enumerate(_BASES) for j, b in enumerate(_BASES) for k, c in enumerate(_BASES)}


def _translate_frame(sequence: str, frame: int) -> str:
    table = CODON_TABLE
    return "".join([table.get(sequence[i:i + 3], "") for i in range(frame, len(sequence) - 2, 3)])


def translate_dna(sequence: str) -> list[str]:
    """Six-frame translation; codons that are not three of A/C/G/T (upper case) are dropped."""
    reverse = reverse_complement(sequence)
    return [_translate_frame(sequence, f) for f in range(3)] + [_translate_frame(reverse, f) for f in range(3)]


def seq_in_reflist(sequence: str, refseq_pro_list: Iterable[str]) -> bool:
    """True when ``sequence`` is a substring of any reference protein."""
    return any(sequence in refpro for refpro in refseq_pro_list)


AMBIGUOUS_BASES = frozenset("NRYMKSWHBVD")


def identify_seq(seqid: str, sequence: str, refseq_pro_list: Sequence[str] | None = None,
                 istraindata: bool = False) -> list[dict[str, str]] | None:
    """Return the stop-free frames of ``sequence`` as ``{'seqid', 'nucleotide', 'protein'}`` dicts.

    In training mode a sequence with an ambiguous base gives None, and only frames
    found in ``refseq_pro_list`` are kept.  Ids get ``F1..F3`` / ``R1..R3``; the DNA
    slice is one base longer than the codons (the original's quirk, kept on purpose).
    """
    if istraindata and any(base in sequence for base in AMBIGUOUS_BASES):
        return None
    reverse = None
    selected = []
    for num, protein in enumerate(translate_dna(sequence), start=1):
        if "*" in protein:
            continue
        if istraindata and not seq_in_reflist(protein, refseq_pro_list or ()):
            continue
        seq_len = 3 * len(protein)
        if num <= 3:
            nucleotide = sequence[num - 1:num + seq_len]
            frame_id = f"{seqid}F{num}"
        else:
            if reverse is None:
                reverse = reverse_complement(sequence)
            nucleotide = reverse[num - 4:num - 3 + seq_len]
            frame_id = f"{seqid}R{num - 3}"
        selected.append({"seqid": frame_id, "nucleotide": nucleotide, "protein": protein})
    return selected


def process_record(index: int, record: Any, refseq_pro_list: Sequence[str] | None = None,
                   istraindata: bool = False) -> tuple[int, list[dict[str, str]] | None]:
    """Upper-case a record and run :func:`identify_seq` on it; returns ``(index, frames)``."""
    sequence = str(record.seq).upper()
    return index, identify_seq(record.id, sequence, refseq_pro_list, istraindata)


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
    for stale in output_dir.glob("output_*.fa"):
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
                        written.append(output_dir / f"output_{len(written) + 1}.fa")
                        current = open(written[-1], "w", encoding=TEXT_ENCODING, errors=TEXT_ERRORS)
                    sequence_count += 1
                if current:
                    current.write(line)
    finally:
        if current:
            current.close()
    return written


# ---------------------------------------------------------------------------
# Devices, model loading, batching
# ---------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N`` into a usable device, or raise."""
    if isinstance(device, torch.device):
        return device
    spec = (device or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(spec)
    except RuntimeError:
        raise VirNucProError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise VirNucProError(f"device '{device}' requested but CUDA is not available")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise VirNucProError(f"device '{device}' requested but only "
                                 f"{torch.cuda.device_count()} CUDA device(s) exist")
    elif resolved.type != "cpu":
        raise VirNucProError(f"unsupported device '{device}' (use auto, cpu, cuda or cuda:N)")
    return resolved


@dataclass
class LoadedModel:
    """A language model ready for inference, with what is needed to feed it."""

    name: str
    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    hidden_size: int


_MODEL_CACHE: dict[tuple[str, str, str, str], LoadedModel] = {}


@contextlib.contextmanager
def _preserved_torch_backend_flags() -> Iterator[None]:
    """FastESM2's remote code flips global TF32/cudnn settings on import; undo that."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision())
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved[:3]
        torch.set_float32_matmul_precision(saved[3])


@contextlib.contextmanager
def _remote_code_without(packages: set[str]) -> Iterator[None]:
    """Let transformers import remote code whose optional imports (triton) are absent.

    transformers >= 4.51 refuses remote code importing a missing package even when the
    code guards that import itself (DNABERT-S falls back to PyTorch attention).
    """
    import transformers.dynamic_module_utils as dynamic

    original = dynamic.get_imports

    def get_imports(filename: str | os.PathLike) -> list[str]:
        return [name for name in original(filename) if name not in packages]

    dynamic.get_imports = get_imports
    try:
        yield
    finally:
        dynamic.get_imports = original


def _from_pretrained_error(kind: str, location: str, exc: Exception) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    if Path(location).is_dir():
        hint = "the local model directory is incomplete or damaged"
    elif offline:
        hint = ("the files are not in the local Hugging Face cache; run once with internet "
                "access (without HF_HUB_OFFLINE) or pass a local model directory")
    else:
        hint = "check the model id or local directory, and network access for a first download"
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelLoadError(f"cannot load {kind} model '{location}': {first_line} ({hint})")


def _model_hidden_size(model: Any) -> int:
    config = getattr(model, "config", None)
    size = getattr(config, "hidden_size", None)
    if not isinstance(size, int):
        raise ModelLoadError(f"model {type(model).__name__} has no config.hidden_size")
    return size


def load_protein_model(model_location: str = FASTESM_MODEL, device: str | torch.device | None = "auto",
                       fp16: bool | None = None) -> LoadedModel:
    """Load FastESM2 (or a compatible model) once per process: fp16 on CUDA unless ``fp16=False``."""
    device = resolve_device(device)
    use_fp16 = device.type == "cuda" if fp16 is None else (fp16 and device.type == "cuda")
    dtype = torch.float16 if use_fp16 else torch.float32
    key = ("protein", str(model_location), str(device), str(dtype))
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    from transformers import AutoModel, AutoTokenizer

    log.info("loading protein model %s on %s (%s)", model_location, device, dtype)
    try:
        with _preserved_torch_backend_flags():
            model = AutoModel.from_pretrained(str(model_location), trust_remote_code=True,
                                              torch_dtype=dtype)
            tokenizer = getattr(model, "tokenizer", None)
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(str(model_location), trust_remote_code=True)
    except (OSError, ValueError, ImportError, RuntimeError, SafetensorError) as exc:
        raise _from_pretrained_error("protein", str(model_location), exc) from exc
    model = model.to(device=device, dtype=dtype).eval()
    loaded = LoadedModel(str(model_location), model, tokenizer, device, dtype, _model_hidden_size(model))
    _MODEL_CACHE[key] = loaded
    return loaded


def load_dnabert_model(model_location: str = DNABERT_S_MODEL,
                       device: str | torch.device | None = "auto") -> LoadedModel:
    """Load DNABERT-S once per process, in fp32, with its PyTorch attention path."""
    device = resolve_device(device)
    key = ("dna", str(model_location), str(device), str(torch.float32))
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    from transformers import AutoModel, AutoTokenizer

    log.info("loading DNA model %s on %s", model_location, device)
    try:
        with _remote_code_without({"triton"}):
            tokenizer = AutoTokenizer.from_pretrained(str(model_location), trust_remote_code=True)
            model = AutoModel.from_pretrained(str(model_location), trust_remote_code=True)
    except (OSError, ValueError, ImportError, RuntimeError, SafetensorError) as exc:
        raise _from_pretrained_error("DNA", str(model_location), exc) from exc
    _disable_triton_attention(model)
    model = model.to(device=device, dtype=torch.float32).eval()
    loaded = LoadedModel(str(model_location), model, tokenizer, device, torch.float32, _model_hidden_size(model))
    _MODEL_CACHE[key] = loaded
    return loaded


def _disable_triton_attention(model: Any) -> None:
    """DNABERT-S's Triton flash attention fails on current Triton and on CPU: use PyTorch's."""
    for cls in type(model).__mro__:
        module = sys.modules.get(cls.__module__)
        if module is not None and getattr(module, "flash_attn_qkvpacked_func", None) is not None:
            module.flash_attn_qkvpacked_func = None
            log.debug("disabled Triton attention in %s", module.__name__)


def token_budget_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group indices into batches whose padded size (count x longest) fits ``max_tokens``.

    Indices are sorted by length, longest first, so padding stays small; a single item
    longer than the budget gets a batch of its own.
    """
    if max_tokens <= 0:
        raise ValueError("max_tokens must be positive")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        size = lengths[index]
        if current and max(longest, size) * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(index)
        longest = max(longest, size)
    if current:
        batches.append(current)
    return batches


def _run_batches(batches: list[list[int]], compute: Callable[[list[int]], torch.Tensor],
                 rows: int, width: int, device: torch.device, desc: str, progress: bool) -> torch.Tensor:
    """Embed every batch into a (rows, width) float32 tensor returned on the CPU.

    Results stay on ``device`` until the end, so on CUDA the host prepares the next
    batch while the GPU works (one copy back, no per-batch synchronisation).  On CUDA
    out-of-memory a batch is split in two and retried.
    """
    out = torch.empty((rows, width), dtype=torch.float32, device=device)
    pending = list(reversed(batches))
    with tqdm(total=rows, desc=desc, unit="seq", disable=not progress, leave=False) as bar:
        while pending:
            batch = pending.pop()
            try:
                out[torch.tensor(batch, device=device)] = compute(batch)
            except torch.cuda.OutOfMemoryError:
                if len(batch) == 1:
                    raise
                torch.cuda.empty_cache()
                half = len(batch) // 2
                log.warning("CUDA out of memory on a batch of %d; retrying as two halves", len(batch))
                pending.extend([batch[half:], batch[:half]])
                continue
            bar.update(len(batch))
    return out.cpu()


_PROTEIN_ALPHABET = "ACDEFGHIKLMNPQRSTVWYXBUZO"
_PROTEIN_REPLACEMENTS = {"*": "X", "J": "X"}


def _clean_protein(record_id: str, sequence: str) -> str:
    """Upper-case, drop one trailing stop, map internal stops and J to X; reject the rest."""
    protein = sequence.upper()
    if protein.endswith("*"):
        protein = protein[:-1]
    if not protein:
        raise InputError(f"protein '{record_id}' is empty")
    for old, new in _PROTEIN_REPLACEMENTS.items():
        protein = protein.replace(old, new)
    bad = set(protein) - set(_PROTEIN_ALPHABET)
    if bad:
        raise InputError(f"protein '{record_id}' has characters that are not amino-acid codes: "
                         f"{''.join(sorted(bad))}")
    return protein


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def embed_proteins(sequences: Sequence[str], loaded: LoadedModel, *,
                   truncation_seq_length: int = TRUNCATION_SEQ_LENGTH,
                   batch_tokens: int = DEFAULT_BATCH_TOKENS, ids: Sequence[str] | None = None,
                   progress: bool = False) -> torch.Tensor:
    """Mean of the last hidden state over residues 1..min(L, truncation), float32 (N, D).

    Each residue is one token (the sequence is upper-cased and looked up letter by
    letter), so the pooled positions are exactly the residues; the input is truncated
    to ``truncation_seq_length`` residues before the model sees it.
    """
    ids = list(ids) if ids is not None else [str(i) for i in range(len(sequences))]
    tokenizer = loaded.tokenizer
    cls_id, eos_id, pad_id = _special_ids(tokenizer)
    residue_id = _residue_token_ids(tokenizer)
    token_ids: list[list[int]] = []
    for record_id, sequence in zip(ids, sequences):
        protein = _clean_protein(record_id, sequence)[:truncation_seq_length]
        try:
            token_ids.append([cls_id, *map(residue_id.__getitem__, protein), eos_id])
        except KeyError as exc:
            raise InputError(f"protein '{record_id}': the tokenizer does not know {exc.args[0]}") from None
    if not token_ids:
        return torch.empty((0, loaded.hidden_size), dtype=torch.float32)
    model, device = loaded.model, loaded.device

    def compute(batch: list[int]) -> torch.Tensor:
        width = max(len(token_ids[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        residue_mask = torch.zeros((len(batch), width), dtype=torch.float32)
        for row, index in enumerate(batch):
            tokens = token_ids[index]
            input_ids[row, :len(tokens)] = torch.tensor(tokens)
            attention[row, :len(tokens)] = 1
            residue_mask[row, 1:len(tokens) - 1] = 1.0
        input_ids, attention = _to_device(input_ids, device), _to_device(attention, device)
        residue_mask = _to_device(residue_mask, device)
        with torch.inference_mode():
            output = model(input_ids=input_ids, attention_mask=attention)
            hidden = _last_hidden_state(output).float()
            pooled = (hidden * residue_mask.unsqueeze(-1)).sum(1) / residue_mask.sum(1, keepdim=True)
        return pooled

    batches = token_budget_batches([len(t) for t in token_ids], batch_tokens)
    return _run_batches(batches, compute, len(token_ids), loaded.hidden_size, device, "protein embeddings", progress)


def _residue_token_ids(tokenizer: Any) -> dict[str, int]:
    """One token id per amino-acid letter the tokenizer knows (unknown letters left out)."""
    unk_id = getattr(tokenizer, "unk_token_id", None)
    ids = dict(zip(_PROTEIN_ALPHABET, tokenizer.convert_tokens_to_ids(list(_PROTEIN_ALPHABET))))
    return {letter: token for letter, token in ids.items() if token is not None and token != unk_id}


def _special_ids(tokenizer: Any) -> tuple[int, int, int]:
    cls_id = getattr(tokenizer, "cls_token_id", None)
    if cls_id is None:
        cls_id = getattr(tokenizer, "bos_token_id", None)
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if eos_id is None:
        eos_id = getattr(tokenizer, "sep_token_id", None)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if cls_id is None or eos_id is None or pad_id is None:
        raise ModelLoadError("protein tokenizer lacks cls/eos/pad tokens")
    return cls_id, eos_id, pad_id


def _last_hidden_state(output: Any) -> torch.Tensor:
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None:
        hidden = output[0]
    if isinstance(hidden, (list, tuple)):
        hidden = hidden[-1]
    return hidden


def embed_dna(sequences: Sequence[str], loaded: LoadedModel, *, batch_tokens: int = DEFAULT_BATCH_TOKENS,
              progress: bool = False) -> torch.Tensor:
    """DNABERT-S mean over all non-padding tokens ([CLS] and [SEP] included), float32 (N, 768).

    Batched with an attention mask; equal to the original one-sequence-at-a-time mean.
    """
    tokenizer = loaded.tokenizer
    encoded = tokenizer([seq.upper() for seq in sequences])["input_ids"] if sequences else []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if not encoded:
        return torch.empty((0, loaded.hidden_size), dtype=torch.float32)
    model, device = loaded.model, loaded.device

    def compute(batch: list[int]) -> torch.Tensor:
        width = max(len(encoded[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, index in enumerate(batch):
            tokens = encoded[index]
            input_ids[row, :len(tokens)] = torch.tensor(tokens)
            attention[row, :len(tokens)] = 1
        input_ids, attention = _to_device(input_ids, device), _to_device(attention, device)
        with torch.inference_mode():
            hidden = _last_hidden_state(model(input_ids, attention_mask=attention)).float()
            mask = attention.unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
        return pooled

    batches = token_budget_batches([len(t) for t in encoded], batch_tokens)
    return _run_batches(batches, compute, len(encoded), loaded.hidden_size, device, "DNA embeddings", progress)


# ---------------------------------------------------------------------------
# Feature files (original names and formats)
# ---------------------------------------------------------------------------


def load_feature_object(path: str | os.PathLike, what: str = "feature file", *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, or :class:`FeatureFileError` naming the file.

    With ``mmap`` the tensors are memory-mapped when the file format allows it.
    """
    path = Path(path)
    if not path.is_file():
        raise FeatureFileError(f"{path}: {what} not found")
    if mmap:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - old (non-zip) files cannot be memory-mapped; load them plainly
            pass
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not usable
        raise FeatureFileError(f"{path}: not a readable {what} ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None


def _rows_to_tensor(path: Path, rows: Any, what: str) -> torch.Tensor:
    if isinstance(rows, torch.Tensor):
        data = rows.detach().to(torch.float32)
        if data.dim() != 2:
            raise FeatureFileError(f"{path}: {what} data must be 2-D, got shape {tuple(data.shape)}")
        return data
    vectors = []
    for row in rows:
        if isinstance(row, dict):
            row = row.get("mean_representation", row.get("mean_representations"))
            if isinstance(row, dict):  # fair-esm style {layer: tensor}
                row = next(iter(row.values()))
        vectors.append(torch.as_tensor(row, dtype=torch.float32).reshape(-1))
    if not vectors:
        return torch.empty((0, 0), dtype=torch.float32)
    widths = {v.numel() for v in vectors}
    if len(widths) != 1:
        raise FeatureFileError(f"{path}: {what} rows have different widths {sorted(widths)}")
    return torch.stack(vectors)


def _load_features(source: str | os.PathLike | dict, id_key: str, what: str) -> tuple[list[str], torch.Tensor, dict]:
    path = Path("<memory>") if isinstance(source, dict) else Path(source)
    obj = source if isinstance(source, dict) else load_feature_object(path, what)
    if not isinstance(obj, dict) or id_key not in obj or "data" not in obj:
        raise FeatureFileError(f"{path}: not a {what} (expected keys '{id_key}' and 'data')")
    ids = [str(i) for i in obj[id_key]]
    data = _rows_to_tensor(path, obj["data"], what)
    if data.shape[0] != len(ids):
        raise FeatureFileError(f"{path}: {what} has {len(ids)} ids but {data.shape[0]} rows")
    if len(set(ids)) != len(ids):
        raise FeatureFileError(f"{path}: {what} has duplicate ids")
    return ids, data, obj


def load_dna_features(source: str | os.PathLike | dict) -> tuple[list[str], torch.Tensor]:
    """Read a DNABERT-S feature file (new tensor format or the original list of dicts)."""
    ids, data, _ = _load_features(source, "nucleotide", "DNABERT-S feature file")
    return ids, data


def load_protein_features(source: str | os.PathLike | dict) -> tuple[list[str], torch.Tensor]:
    """Read a protein feature file (new tensor format or the original list of tensors)."""
    ids, data, _ = _load_features(source, "proteins", "protein feature file")
    return ids, data


def _fasta_ids_and_seqs(path: str | os.PathLike, alphabet: str) -> tuple[list[str], list[str]]:
    ids, seqs = [], []
    for record in read_fasta(path, alphabet=alphabet, allow_empty=True):
        ids.append(record.id)
        seqs.append(record.seq)
    return ids, seqs


def _reusable(out_file: str | os.PathLike | None, id_key: str, ids: list[str], model_name: str) -> torch.Tensor | None:
    """Return the data of ``out_file`` if it holds features of ``model_name`` for exactly ``ids``."""
    if out_file is None or not Path(out_file).is_file():
        return None
    try:
        stored_ids, data, obj = _load_features(out_file, id_key, "feature file")
    except FeatureFileError as exc:
        log.warning("recomputing %s: %s", out_file, exc)
        return None
    if obj.get("model") != model_name or stored_ids != ids or not torch.isfinite(data).all():
        log.info("recomputing %s: made by another model or for other sequences", out_file)
        return None
    return data


def extract_DNABERT_S(input_file: str | os.PathLike, out_file: str | os.PathLike | None,
                      model_loaded: bool = False, tokenizer: Any = None, model: Any = None, *,
                      model_location: str = DNABERT_S_MODEL, device: str | torch.device | None = "auto",
                      batch_tokens: int = DEFAULT_BATCH_TOKENS, progress: bool = True,
                      ) -> tuple[list[str], torch.Tensor]:
    """Embed every sequence of a nucleotide FASTA with DNABERT-S; save and return ``(ids, data)``.

    With ``model_loaded=True`` the given ``model``/``tokenizer`` are used as they are
    (on the device they sit on).  ``out_file`` is written as
    ``{'nucleotide': ids, 'data': tensor(N, 768), 'model': ...}``.
    """
    ids, seqs = _fasta_ids_and_seqs(input_file, "dna")
    reused = _reusable(out_file, "nucleotide", ids, model_location if not model_loaded else _name_of(model, model_location))
    if reused is not None:
        return ids, reused
    if model_loaded:
        if model is None or tokenizer is None:
            raise ValueError("model_loaded=True needs both model and tokenizer")
        loaded = _wrap_loaded(model, tokenizer, model_location)
    else:
        loaded = load_dnabert_model(model_location, device)
    data = embed_dna(seqs, loaded, batch_tokens=batch_tokens, progress=progress)
    if out_file is not None:
        atomic_torch_save({"nucleotide": ids, "data": data, "model": loaded.name}, out_file)
    return ids, data


def _name_of(model: Any, default: str) -> str:
    return str(getattr(getattr(model, "config", None), "_name_or_path", "") or default)


def _wrap_loaded(model: Any, tokenizer: Any, default_name: str) -> LoadedModel:
    first = next(iter(model.parameters()))
    return LoadedModel(_name_of(model, default_name), model, tokenizer, first.device, first.dtype,
                       _model_hidden_size(model))


def extract_esm(fasta_file: str | os.PathLike, model_location: str = FASTESM_MODEL,
                truncation_seq_length: int = TRUNCATION_SEQ_LENGTH, toks_per_batch: int = DEFAULT_BATCH_TOKENS,
                out_file: str | os.PathLike | None = None, model_loaded: bool = False, model: Any = None,
                alphabet: Any = None, *, device: str | torch.device | None = "auto",
                fp16: bool | None = None, progress: bool = True) -> tuple[list[str], torch.Tensor]:
    """Embed every protein of a FASTA file with FastESM2; save and return ``(proteins, data)``.

    ``alphabet`` is the tokenizer when ``model_loaded`` (the original passed the ESM
    alphabet there); when it is None, ``model.tokenizer`` is used.  The model is used as
    passed, never reloaded.  An existing ``out_file`` is reused only when it holds
    features of the same model for exactly the same ids.  ``data`` is float32 (N, D).
    """
    ids, seqs = _fasta_ids_and_seqs(fasta_file, "protein")
    name = _name_of(model, model_location) if model_loaded else str(model_location)
    reused = _reusable(out_file, "proteins", ids, name)
    if reused is not None:
        return ids, reused
    if model_loaded:
        tokenizer = alphabet if alphabet is not None else getattr(model, "tokenizer", None)
        if model is None or tokenizer is None:
            raise ValueError("model_loaded=True needs a model and a tokenizer (alphabet or model.tokenizer)")
        loaded = _wrap_loaded(model, tokenizer, name)
    else:
        loaded = load_protein_model(model_location, device, fp16)
    log.info("read %s with %d sequences", fasta_file, len(ids))
    data = embed_proteins(seqs, loaded, truncation_seq_length=truncation_seq_length,
                          batch_tokens=toks_per_batch, ids=ids, progress=progress)
    if out_file is not None:
        atomic_torch_save({"proteins": ids, "data": data, "model": loaded.name}, out_file)
    return ids, data


def merge_data(DNABERT_S_data: str | os.PathLike | dict, ESM_data: str | os.PathLike | dict,
               merged_file: str | os.PathLike | None, data_type: str | None = None) -> dict[str, Any]:
    """Concatenate DNA and protein vectors of the ids present in both; save and return the dict.

    Output: ``{'ids', 'data': tensor(N, dna_dim + protein_dim), 'dna_dim', 'protein_dim'}``
    plus ``'labels': [1]`` for ``viral`` or ``[0]`` for ``host``.  ``ids`` are exactly the
    rows kept, in DNA-file order.
    """
    if data_type not in (None, "viral", "host"):
        raise ValueError(f"data_type must be None, 'viral' or 'host', got {data_type!r}")
    dna_ids, dna = load_dna_features(DNABERT_S_data)
    protein_ids, protein = load_protein_features(ESM_data)
    protein_row = {pid: row for row, pid in enumerate(protein_ids)}
    keep = [(row, protein_row[i]) for row, i in enumerate(dna_ids) if i in protein_row]
    missing = len(dna_ids) - len(keep)
    where = f"{DNABERT_S_data if not isinstance(DNABERT_S_data, dict) else '<DNA features>'} + " \
            f"{ESM_data if not isinstance(ESM_data, dict) else '<protein features>'}"
    if not keep:
        raise FeatureFileError(f"{where}: no id is present in both feature files "
                               f"({len(dna_ids)} DNA ids, {len(protein_ids)} protein ids)")
    if missing:
        log.warning("%s: %d of %d DNA ids have no protein vector and are left out", where, missing, len(dna_ids))
    dna_rows = torch.tensor([r for r, _ in keep])
    protein_rows = torch.tensor([p for _, p in keep])
    merged = {
        "ids": [dna_ids[r] for r, _ in keep],
        "data": torch.cat((dna[dna_rows], protein[protein_rows]), dim=1),
        "dna_dim": int(dna.shape[1]),
        "protein_dim": int(protein.shape[1]),
    }
    if data_type is not None:
        merged["labels"] = [1 if data_type == "viral" else 0]
    if merged_file is not None:
        atomic_torch_save(merged, merged_file)
    return merged


# ---------------------------------------------------------------------------
# Classifier and checkpoints
# ---------------------------------------------------------------------------


class MLPClassifier(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Dropout(0.5) -> Linear, layer names as in the original."""

    def __init__(self, input_dim: int, hidden_dim: int = 512, num_class: int = 2):
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, num_class)
        self.dropout = nn.Dropout(0.5)
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier-uniform weights on both linear layers."""
        nn.init.xavier_uniform_(self.hidden_layer.weight)
        nn.init.xavier_uniform_(self.output_layer.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hidden_layer(x)
        x = self.bn1(x)
        x = F.relu(x)
        x = self.dropout(x)
        return self.output_layer(x)


CHECKPOINT_KEYS = ("state_dict", "input_dim", "hidden_dim", "num_class", "dna_model", "dna_dim",
                   "protein_model", "protein_dim", "chunk_size", "label_map", "trained_at", "format_version")


def save_checkpoint(path: str | os.PathLike, model: MLPClassifier, *, dna_model: str, dna_dim: int,
                    protein_model: str, protein_dim: int, chunk_size: int,
                    metrics: dict[str, Any] | None = None, label_map: dict[int, str] | None = None) -> dict:
    """Save a classifier as a plain dict (loadable with ``weights_only=True``), atomically."""
    input_dim = model.hidden_layer.in_features
    if input_dim != dna_dim + protein_dim:
        raise ValueError(f"model input {input_dim} != dna_dim {dna_dim} + protein_dim {protein_dim}")
    checkpoint = {
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "input_dim": int(input_dim),
        "hidden_dim": int(model.hidden_layer.out_features),
        "num_class": int(model.output_layer.out_features),
        "dna_model": str(dna_model),
        "dna_dim": int(dna_dim),
        "protein_model": str(protein_model),
        "protein_dim": int(protein_dim),
        "chunk_size": int(chunk_size),
        "label_map": {int(k): str(v) for k, v in (label_map or LABEL_MAP).items()},
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "metrics": dict(metrics or {}),
    }
    atomic_torch_save(checkpoint, path)
    return checkpoint


def _pickle_bytes(path: Path) -> bytes | None:
    """The pickle stream of a torch file (zip archive or legacy format), read as bytes."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                return archive.read(names[0]) if names else None
        return path.read_bytes()
    except (OSError, zipfile.BadZipFile, KeyError):
        return None


def describe_legacy_checkpoint(path: str | os.PathLike) -> str | None:
    """Describe an original VirNucPro whole-model pickle without unpickling it, else None.

    The pickle opcodes are scanned (nothing is executed) for the ``MLPClassifier`` class
    and the ``in_features`` of its first layer.
    """
    data = _pickle_bytes(Path(path))
    if not data:
        return None
    strings: list[str] = []
    in_features = None
    expect_int = False
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if "PUT" in opcode.name or "GET" in opcode.name or opcode.name == "MEMOIZE":
                continue  # memo bookkeeping between a key and its value
            if expect_int and isinstance(arg, int) and not isinstance(arg, bool):
                in_features = in_features or arg
            expect_int = False
            if isinstance(arg, str):
                strings.append(arg)
                expect_int = arg == "in_features"
            if opcode.name == "STOP":
                break
    except Exception:  # noqa: BLE001 - a damaged stream is simply not recognised
        pass
    if "MLPClassifier" not in strings and not any(s.endswith(" MLPClassifier") for s in strings):
        return None
    width = f"input width {in_features}" if in_features else "unknown input width"
    origin = " = DNABERT-S 768 + ESM2-3B 2560" if in_features == 3328 else ""
    return f"an original VirNucPro whole-model pickle (MLPClassifier, {width}{origin})"


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[MLPClassifier, dict]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``), in eval mode.

    Legacy pickled models and any other file are refused with :class:`CheckpointError`;
    nothing is ever unpickled outside the weights-only loader.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a .pth checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        legacy = describe_legacy_checkpoint(path)
        if legacy:
            raise CheckpointError(
                f"{path}: {legacy}. It was trained on ESM2-3B features and cannot score FastESM2 "
                "features (and is not loaded, because unpickling it could run code). Train a "
                "FastESM2 model with train.py, or use a *_model_fastesm650.pth checkpoint") from None
        reason = "unsafe or unknown pickle content" if isinstance(exc, pickle.UnpicklingError) else type(exc).__name__
        raise CheckpointError(f"{path}: not a VirNucPro-FastESM checkpoint ({reason}); refused without "
                              "running any code in it") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a VirNucPro-FastESM checkpoint (format_version "
                              f"{CHECKPOINT_FORMAT_VERSION} dict expected; train one with train.py)")
    missing = [k for k in CHECKPOINT_KEYS if k not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: checkpoint is missing {', '.join(missing)}")
    if checkpoint["input_dim"] != checkpoint["dna_dim"] + checkpoint["protein_dim"]:
        raise CheckpointError(f"{path}: inconsistent checkpoint (input_dim {checkpoint['input_dim']} != "
                              f"{checkpoint['dna_dim']} + {checkpoint['protein_dim']})")
    model = MLPClassifier(checkpoint["input_dim"], checkpoint["hidden_dim"], checkpoint["num_class"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the recorded sizes ({str(exc).splitlines()[0]})") from None
    model.to(resolve_device(device)).eval()
    meta = {k: v for k, v in checkpoint.items() if k != "state_dict"}
    meta["label_map"] = {int(k): v for k, v in meta["label_map"].items()}
    return model, meta


# ---------------------------------------------------------------------------
# Command-line plumbing shared by the scripts
# ---------------------------------------------------------------------------

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults in --help, except for options whose default is worked out at run time (None)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


class CliArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``prog: error: ...``, exit code 2) and -q/-v options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
        self.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The language-model options shared by the scripts that embed sequences."""
    group = parser.add_argument_group("language models")
    group.add_argument("--esm-model", default=FASTESM_MODEL, help="protein language model: hub id or local directory")
    group.add_argument("--dnabert-model", default=DNABERT_S_MODEL, help="DNA language model: hub id or local directory")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--fp32", action="store_true", help="run the protein model in fp32 on CUDA instead of fp16")
    group.add_argument("--batch-tokens", type=positive_int, default=DEFAULT_BATCH_TOKENS,
                       help="padded tokens per language-model batch (lower it if GPU memory is short)")


def positive_int(text: str) -> int:
    """argparse type: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive integer")
    return value


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Log to stderr: warnings only with ``quiet``, debug with ``verbose``, info otherwise."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr, force=True)
    for noisy in ("transformers", "huggingface_hub", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def run_cli(prog: str, body: Callable[[], int | None]) -> int:
    """Run a script body: user errors give one line on stderr and exit code 2, others 1."""
    try:
        return int(body() or EXIT_OK)
    except VirNucProError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - unexpected: keep the traceback for a bug report
        log.exception("%s: unexpected failure", prog)
        return EXIT_FAILURE
