"""Prepare VirNucPro training sequences from RefSeq genome releases.

    python make_train_dataset_300.py [--data-dir data] [--chunk-size 300] [--workers N]

Every ``*genomic.gbff.gz`` under the data directory is paired with each
``*genomic.fna.gz`` whose path starts with the GenBank path minus
``genomic.gbff.gz`` (``viral.1.genomic.gbff.gz`` pairs with
``viral.1.1.genomic.fna.gz``).  The genome is cut into chunks, every chunk is
translated in six frames, and the stop-free frames found in an annotated CDS
translation of the same accession are written to ``X.identified_nucleotide.fa``
and ``X.identified_protein.fa`` next to the genome (X = the name before
``.genomic.fna.gz``), one line per sequence.  The gzip files are streamed: no
unzipped copies are made.  A genome whose two outputs exist is skipped unless
``--force``.
"""
from __future__ import annotations

import argparse
import functools
import logging
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from virnucpro import cli, ids, outputs
from virnucpro.errors import InputError
from virnucpro.fasta import read_fasta
from virnucpro.files import atomic_write, require_dir
from virnucpro.frames import chunk_sequence, create_refseq_pro_list, identify_seq

log = logging.getLogger("virnucpro.make_train_dataset")

PROG = "make_train_dataset_300.py"
GBFF_SUFFIX = "genomic.gbff.gz"
FNA_SUFFIX = "genomic.fna.gz"
NUCLEOTIDE_SUFFIX = outputs.IDENTIFIED_NUCLEOTIDE_SUFFIX
PROTEIN_SUFFIX = outputs.IDENTIFIED_PROTEIN_SUFFIX


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

    def done(self) -> bool:
        return self.nucleotide_out.is_file() and self.protein_out.is_file()


def build_parser(prog: str, default_chunk_size: int) -> cli.CliArgumentParser:
    parser = cli.CliArgumentParser(
        prog=prog,
        description="Make VirNucPro training sequences (identified nucleotide/protein FASTA files) "
                    "from RefSeq *genomic.gbff.gz + *genomic.fna.gz pairs.",
        epilog=f"Example: python {prog} --data-dir data --workers 4",
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data"),
                        help="folder searched (recursively) for *genomic.gbff.gz and *genomic.fna.gz")
    parser.add_argument("--chunk-size", type=cli.positive_int, default=default_chunk_size,
                        help="chunk length in bp")
    parser.add_argument("--workers", type=cli.positive_int, default=1,
                        help="genome files processed in parallel (output is the same for any value)")
    parser.add_argument("--force", action="store_true",
                        help="remake outputs that already exist (without it, a genome whose two outputs exist is skipped)")
    return parser


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


@functools.lru_cache(maxsize=1)
def cds_translations(gbff: Path) -> dict[str, list[str]]:
    """The CDS translations of a GenBank file, cached for the genomes that share it."""
    log.info("reading CDS translations of %s", gbff)
    try:
        return create_refseq_pro_list(gbff)
    except (EOFError, OSError, ValueError) as exc:
        raise InputError(f"{gbff}: cannot read GenBank file ({exc})") from None


def process_job(job: Job, progress: bool = False) -> tuple[Path, int]:
    """Write the identified nucleotide and protein files of one genome; return (genome, frames)."""
    refseq = cds_translations(job.gbff)
    frames = 0
    records = read_fasta(job.fna, alphabet=None, check_duplicates=False)
    with atomic_write(job.nucleotide_out) as dna_out, atomic_write(job.protein_out) as protein_out:
        for record in tqdm(records, desc=job.fna.name, unit="record", disable=not progress, leave=False):
            for index, chunk in enumerate(chunk_sequence(record.seq, job.chunk_size), start=1):
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
    return job.fna, frames


def run(args: argparse.Namespace) -> int:
    jobs = find_jobs(args.data_dir, args.chunk_size)
    todo = []
    for job in jobs:
        if job.done() and not args.force:
            log.info("%s and %s exist; skipped (use --force to remake them)", job.nucleotide_out, job.protein_out)
        else:
            todo.append(job)
    if not todo:
        log.info("nothing to do: all %d genome file(s) are done", len(jobs))
        return cli.EXIT_OK
    progress = not args.quiet
    if args.workers == 1 or len(todo) == 1:
        for job in tqdm(todo, desc="genomes", unit="file", disable=not progress):
            fna, frames = process_job(job, progress)
            log.info("%s: %d frames written to %s", fna, frames, job.nucleotide_out.name)
    else:
        with ProcessPoolExecutor(max_workers=min(args.workers, len(todo))) as pool:
            results = pool.map(process_job, todo)
            for job, (fna, frames) in tqdm(zip(todo, results), total=len(todo), desc="genomes",
                                           unit="file", disable=not progress):
                log.info("%s: %d frames written to %s", fna, frames, job.nucleotide_out.name)
    return cli.EXIT_OK


def main(argv: Sequence[str] | None = None, *, default_chunk_size: int = 300, prog: str = PROG) -> int:
    """Command-line entry point (see --help); the 500-bp script calls it with its own defaults."""
    return cli.script_main(prog, build_parser(prog, default_chunk_size), run, argv)


if __name__ == "__main__":
    sys.exit(main())
