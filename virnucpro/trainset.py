"""The training-sequence engine: ``make_train_dataset_300.py``'s run, from RefSeq genome pairs to frame files.

:func:`run_trainset` takes one frozen :class:`TrainsetRequest` (built by the script from its command
line).  Every GenBank file is paired with the genome FASTA files it annotates (:func:`find_jobs`);
the output places and the inputs are checked before any genome is processed; an existing output
pair is kept only when :func:`pair_problem` finds nothing wrong with it; each genome is chunked,
translated in six frames, and the stop-free frames matching an annotated CDS translation are
written to ``X.identified_nucleotide.fa`` / ``X.identified_protein.fa`` (:func:`process_job`),
under temporary names renamed when the genome is done.  No torch.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import stat
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from tqdm.auto import tqdm

from . import ids, outputs
from .errors import EXIT_OK, InputError
from .fasta import NUCLEOTIDE_LETTERS, read_fasta, shown_text
from .files import TEXT_ENCODING, TEXT_ERRORS, atomic_write, open_text, require_dir, require_writable_dir
from .frames import chunk_sequence, create_refseq_pro_list, identify_seq

log = logging.getLogger("virnucpro.make_train_dataset")

DEFAULT_CHUNK_SIZE = 300
GBFF_SUFFIX = outputs.GENBANK_SUFFIX
FNA_SUFFIX = outputs.GENOME_FASTA_SUFFIX
NUCLEOTIDE_SUFFIX = outputs.IDENTIFIED_NUCLEOTIDE_SUFFIX
PROTEIN_SUFFIX = outputs.IDENTIFIED_PROTEIN_SUFFIX
#: A GenBank flat file has a ``LOCUS`` line among its first lines (RefSeq files start with one).
GENBANK_START = "LOCUS"
GENBANK_SNIFF_LINES = 100
#: The letters of the outputs: kept frames hold no ambiguous base and no stop codon.
OUTPUT_DNA_BYTES = "".join(sorted(NUCLEOTIDE_LETTERS)).encode()
OUTPUT_PROTEIN_BYTES = b"ACDEFGHIKLMNPQRSTVWY"
NOT_MADE = "not made yet"  # what pair_problem says of a genome with neither output


@dataclass(frozen=True)
class Job:
    """One genome FASTA with the GenBank file that annotates it."""

    gbff: Path
    fna: Path
    chunk_size: int

    @property
    def prefix(self) -> str:
        """The genome file name before ``genomic.fna.gz`` (``viral.1.1.``)."""
        return self.fna.name[: -len(FNA_SUFFIX)]

    @property
    def nucleotide_out(self) -> Path:
        return self.fna.with_name(self.prefix + NUCLEOTIDE_SUFFIX)

    @property
    def protein_out(self) -> Path:
        return self.fna.with_name(self.prefix + PROTEIN_SUFFIX)

    @property
    def outputs(self) -> tuple[Path, Path]:
        return self.nucleotide_out, self.protein_out


@dataclass(frozen=True)
class TrainsetRequest:
    """What a training-sequence run is asked to do (see ``make_train_dataset_300.py --help``)."""

    data_dir: Path = Path("data")
    chunk_size: int = DEFAULT_CHUNK_SIZE
    workers: int = 1
    force: bool = False
    progress: bool = True


def find_jobs(data_dir: Path, chunk_size: int) -> list[Job]:
    """Pair every GenBank file with the genome FASTA files it annotates (sorted, each FASTA once)."""
    require_dir(data_dir)
    files = sorted(p for p in data_dir.rglob("*") if p.is_file())
    gbff_files = [p for p in files if p.name.endswith(GBFF_SUFFIX)]
    fna_files = [p for p in files if p.name.endswith(FNA_SUFFIX)]
    if not gbff_files or not fna_files:
        raise InputError(f"{data_dir}: no *{GBFF_SUFFIX} with matching *{FNA_SUFFIX} files found "
                               "(download them with download_data.py)")
    jobs: list[Job] = []
    claimed: dict[Path, Path] = {}
    for gbff in gbff_files:
        prefix = gbff.name[: -len(GBFF_SUFFIX)]
        for fna in fna_files:
            try:
                relative = fna.relative_to(gbff.parent)
            except ValueError:
                continue
            if not relative.as_posix().startswith(prefix):
                continue
            if fna in claimed:
                log.warning("%s matches both %s and %s; using the first", fna, claimed[fna], gbff)
                continue
            claimed[fna] = gbff
            jobs.append(Job(gbff, fna, chunk_size))
    if not jobs:
        raise InputError(f"{data_dir}: no *{FNA_SUFFIX} file matches a *{GBFF_SUFFIX} file "
                               f"(X.{GBFF_SUFFIX} pairs with X.N.{FNA_SUFFIX})")
    unpaired = sorted(set(fna_files) - set(claimed))
    for fna in unpaired:
        log.warning("%s: no matching *%s file; skipped", fna, GBFF_SUFFIX)
    return jobs


def check_output_places(jobs: Sequence[Job]) -> None:
    """InputError unless every output name is free or a regular file (or link) in a writable folder."""
    for folder in sorted({job.fna.parent for job in jobs}):
        require_writable_dir(folder, "the genome folder (outputs are written beside the genomes)")
    for job in jobs:
        for path in job.outputs:
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:
                continue
            if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                raise InputError(f"{path}: exists and is not a regular file; remove it (an output of {job.fna})")


def check_genbank_start(gbff: Path) -> None:
    """InputError unless ``gbff`` (plain or gzip) has a ``LOCUS`` line among its first lines."""
    try:
        with open_text(gbff) as handle:
            lines = [line for line in itertools.islice(handle, GENBANK_SNIFF_LINES) if line.strip()]
    except (EOFError, OSError, ValueError) as exc:
        raise InputError(f"{gbff}: cannot read GenBank file ({exc})") from None
    if any(line.startswith(GENBANK_START) for line in lines):
        return
    looks = " (it looks like FASTA)" if lines and lines[0].startswith(">") else ""
    raise InputError(f"{gbff}: not a GenBank flat file{looks}: no {GENBANK_START} line in its first "
                     f"{GENBANK_SNIFF_LINES} lines")


def check_genome_start(fna: Path) -> None:
    """InputError (naming the file and record) unless the first record of ``fna`` is DNA."""
    with contextlib.closing(read_fasta(fna, alphabet="dna", check_duplicates=False)) as records:
        next(records)


def check_inputs(jobs: Sequence[Job]) -> None:
    """The cheap checks of every input to be processed, before any genome is processed."""
    for gbff in sorted({job.gbff for job in jobs}):
        check_genbank_start(gbff)
    for job in jobs:
        check_genome_start(job.fna)


def _pair_lines(path: Path) -> Iterator[tuple[bytes, bytes]]:
    """(header, sequence) line pairs of an output file, which holds one line per sequence."""
    with open(path, "rb") as handle:
        while header := handle.readline():
            yield header, handle.readline()


def _record_problem(path: Path, header: bytes, seq: bytes, letters: bytes) -> str | None:
    if not header.startswith(b">") or len(header) < 3 or not header.endswith(b"\n"):
        return f"{path}: a header line is not '>ID'"
    if not seq.endswith(b"\n") or len(seq) < 2 or seq[:-1].translate(None, letters):
        record = shown_text(header[1:].strip().decode(TEXT_ENCODING, TEXT_ERRORS))
        return f"{path}: record '{record}' has no sequence line of the expected letters (truncated?)"
    return None


def pair_problem(job: Job) -> str | None:
    """Why an existing output pair cannot be kept (None: both well formed and matching)."""
    present = [path.is_file() for path in job.outputs]
    if not any(present):
        return NOT_MADE
    if not all(present):
        missing = job.outputs[present.index(False)]
        return f"{missing} is missing"
    records = 0
    try:
        for dna, protein in itertools.zip_longest(_pair_lines(job.nucleotide_out), _pair_lines(job.protein_out)):
            if dna is None or protein is None:
                return f"{job.nucleotide_out} and {job.protein_out} hold different numbers of records"
            problem = (_record_problem(job.nucleotide_out, *dna, OUTPUT_DNA_BYTES)
                       or _record_problem(job.protein_out, *protein, OUTPUT_PROTEIN_BYTES))
            if problem:
                return problem
            if dna[0] != protein[0]:
                return f"{job.nucleotide_out} and {job.protein_out} differ at record {records + 1}"
            records += 1
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    return None if records else f"{job.nucleotide_out} is empty"


def needs_making(job: Job, force: bool) -> bool:
    """False when the genome's existing outputs pass :func:`pair_problem` (and not ``force``)."""
    if force:
        return True
    problem = pair_problem(job)
    if problem is None:
        log.info("%s and %s exist and are well formed; skipped (use --force to remake them)",
                 job.nucleotide_out, job.protein_out)
        return False
    if problem != NOT_MADE:
        log.warning("%s: the existing outputs are not kept (%s); remaking them", job.fna, problem)
    return True


@functools.lru_cache(maxsize=1)
def cds_translations(gbff: Path) -> dict[str, list[str]]:
    """The CDS translations of a GenBank file, cached for the genomes that share it."""
    log.info("reading CDS translations of %s", gbff)
    try:
        refseq = create_refseq_pro_list(gbff)
    except (EOFError, OSError) as exc:
        raise InputError(f"{gbff}: cannot read GenBank file ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - Biopython's parser reports malformed records as any exception
        raise InputError(f"{gbff}: malformed GenBank file ({type(exc).__name__}: "
                         f"{str(exc).strip()[:200] or 'parser failed'})") from None
    if not refseq:
        raise InputError(f"{gbff}: no GenBank record found (not a GenBank flat file?)")
    if not any(protein for proteins in refseq.values() for protein in proteins):
        raise InputError(f"{gbff}: none of its {len(refseq)} GenBank record(s) has a CDS /translation, "
                         "so no frame can be selected")
    return refseq


def no_frames_error(job: Job, records: int, annotated: int, chunks: int, first_id: str) -> InputError:
    """The error of a genome that yielded no frame: which of its records were annotated."""
    if not annotated:
        return InputError(f"{job.fna}: none of its {records} record(s) is annotated in {job.gbff} (first record "
                          f"'{shown_text(first_id)}'); nothing written. Is it paired with the right GenBank file?")
    return InputError(f"{job.fna}: no frame of its {chunks} chunk(s) of {job.chunk_size} bp ({annotated} of "
                      f"{records} record(s) annotated) matches a CDS translation in {job.gbff}; nothing written")


def process_job(job: Job, progress: bool = False) -> tuple[Path, int]:
    """Write the identified nucleotide and protein files of one genome; return (genome, frames)."""
    refseq = cds_translations(job.gbff)
    frames = records = annotated = chunks = 0
    first_id = ""
    reader = read_fasta(job.fna, alphabet="dna", check_duplicates=False)
    # Both outputs are renamed into place only when the genome is done (and only when it gave frames).
    with atomic_write(job.nucleotide_out) as dna_out, atomic_write(job.protein_out) as protein_out:
        for record in tqdm(reader, desc=job.fna.name, unit="record", disable=not progress, leave=False):
            records += 1
            first_id = first_id or record.id
            annotated += ids.training_accession(ids.chunk_id(record.id, 1)) in refseq
            for index, chunk in enumerate(chunk_sequence(record.seq, job.chunk_size), start=1):
                chunks += 1
                chunk_id = ids.chunk_id(record.id, index)
                accession = ids.training_accession(chunk_id)
                selected = identify_seq(chunk_id, chunk.upper(), refseq.get(accession, []),
                                              istraindata=True)
                for item in selected or ():
                    if item["protein"] == "":
                        continue
                    dna_out.write(f">{item['seqid']}\n{item['nucleotide']}\n")
                    protein_out.write(f">{item['seqid']}\n{item['protein']}\n")
                    frames += 1
        if not frames:
            raise no_frames_error(job, records, annotated, chunks, first_id)
    return job.fna, frames


def run_trainset(request: TrainsetRequest) -> int:
    """Write the identified nucleotide and protein files of every genome not yet done."""
    jobs = find_jobs(request.data_dir, request.chunk_size)
    check_output_places(jobs)
    todo = [job for job in jobs if needs_making(job, request.force)]
    if not todo:
        log.info("nothing to do: all %d genome file(s) are done", len(jobs))
        return EXIT_OK
    check_inputs(todo)
    progress = request.progress
    if request.workers == 1 or len(todo) == 1:
        for job in tqdm(todo, desc="genomes", unit="file", disable=not progress):
            fna, frames = process_job(job, progress)
            log.info("%s: %d frames written to %s", fna, frames, job.nucleotide_out.name)
    else:
        with ProcessPoolExecutor(max_workers=min(request.workers, len(todo))) as pool:
            results = pool.map(process_job, todo)
            for job, (fna, frames) in tqdm(zip(todo, results), total=len(todo), desc="genomes",
                                           unit="file", disable=not progress):
                log.info("%s: %d frames written to %s", fna, frames, job.nucleotide_out.name)
    return EXIT_OK
