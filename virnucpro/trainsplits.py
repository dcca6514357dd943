"""The training splits of ``features_extract.py``: the identified files found, split and sampled (no torch).

:func:`find_sources` finds the ``*identified_nucleotide.fa`` files (:class:`Source`: viral, or
host by category), :func:`split_source` splits each with its protein twin into full
``output_{k}.fa`` files, and :func:`select_splits` keeps every viral split and a seeded sample
of host splits (:class:`Split`: where each one's features and merged file go).
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from . import outputs
from .defaults import OTHERS_CLASS, VIRUS_CLASS
from .errors import InputError
from .fasta import SPLIT_FILE_TEMPLATE, split_fasta_file
from .files import open_text, require_dir

log = logging.getLogger("virnucpro.features_extract")

NUCLEOTIDE_SUFFIX = outputs.IDENTIFIED_NUCLEOTIDE_SUFFIX
PROTEIN_SUFFIX = outputs.IDENTIFIED_PROTEIN_SUFFIX
VIRAL_PREFIX = "viral"
HOST_CATEGORIES = ("vertebrate", "protozoa", "plant", "invertebrate", "fungi", "bacteria", "archaea")
MERGE_DIR_NAME = outputs.MERGE_DIR_NAME
VIRAL_MERGED_DIR_NAME = outputs.VIRAL_MERGED_DIR_NAME  # the folder train.py reads as viral
VIRAL_MAIN_NAME = "viral.1.1"


@dataclass(frozen=True)
class Source:
    """One ``X.identified_nucleotide.fa`` file and what it is."""

    nucleotide: Path
    kind: str  # 'viral' or 'host'
    category: str

    @property
    def name(self) -> str:
        """``X`` without the trailing dot: ``viral.1.1``."""
        return self.nucleotide.name[: -len(NUCLEOTIDE_SUFFIX)].rstrip(".") or self.nucleotide.name

    @property
    def protein(self) -> Path:
        return self.nucleotide.with_name(self.nucleotide.name[: -len(NUCLEOTIDE_SUFFIX)] + PROTEIN_SUFFIX)

    @property
    def nucleotide_split_dir(self) -> Path:
        return self.nucleotide.with_suffix("")

    @property
    def protein_split_dir(self) -> Path:
        return self.protein.with_suffix("")


@dataclass(frozen=True)
class Split:
    """One full ``output_{k}.fa`` split of a source, and where its features go."""

    source: Source
    index: int
    merged: Path

    @property
    def kind(self) -> str:
        return self.source.kind

    @property
    def label(self) -> int:
        """The label of its rows: 1 viral, 0 host."""
        return VIRUS_CLASS if self.kind == "viral" else OTHERS_CLASS

    @property
    def nucleotide(self) -> Path:
        return self.source.nucleotide_split_dir / SPLIT_FILE_TEMPLATE.format(index=self.index)

    @property
    def protein(self) -> Path:
        return self.source.protein_split_dir / SPLIT_FILE_TEMPLATE.format(index=self.index)

    @property
    def dna_features(self) -> Path:
        return self.source.nucleotide_split_dir / outputs.dna_features_name(self.index)

    @property
    def protein_features(self) -> Path:
        return self.source.protein_split_dir / outputs.protein_features_name(self.index)


# ---------------------------------------------------------------------------
# Finding and splitting the inputs
# ---------------------------------------------------------------------------


def find_sources(data_dir: Path) -> list[Source]:
    """The identified nucleotide files under ``data_dir``, classified, in sorted order."""
    require_dir(data_dir)
    merge_dir = data_dir / MERGE_DIR_NAME
    sources = []
    for path in sorted(data_dir.rglob(f"*{NUCLEOTIDE_SUFFIX}")):
        if not path.is_file() or merge_dir in path.parents:
            continue
        relative = path.relative_to(data_dir).as_posix()
        if relative.startswith(VIRAL_PREFIX):
            sources.append(Source(path, "viral", VIRAL_PREFIX))
            continue
        category = next((c for c in HOST_CATEGORIES if relative.startswith(c)), None)
        if category is None:
            log.warning("%s: neither viral nor a known host category (%s); not used",
                        path, ", ".join(HOST_CATEGORIES))
            continue
        sources.append(Source(path, "host", category))
    if not sources:
        raise InputError(f"{data_dir}: no *{NUCLEOTIDE_SUFFIX} files found "
                         "(make them with make_train_dataset_300.py)")
    return sources


def count_records(path: Path) -> int:
    """The number of FASTA records of a file."""
    with open_text(path) as handle:
        return sum(1 for line in handle if line.startswith(">"))


def split_source(source: Source, sequences_per_file: int) -> list[int]:
    """Split a source and its protein twin; return the indices of the full split files."""
    if not source.protein.is_file():
        raise InputError(f"{source.protein}: not found (the protein twin of {source.nucleotide})")
    nucleotide_files = split_fasta_file(source.nucleotide, source.nucleotide_split_dir, sequences_per_file)
    protein_files = split_fasta_file(source.protein, source.protein_split_dir, sequences_per_file)
    counts = [count_records(p) for p in nucleotide_files]
    protein_counts = [count_records(p) for p in protein_files]
    if counts != protein_counts:
        raise InputError(f"{source.protein} has {sum(protein_counts)} sequences but "
                         f"{source.nucleotide} has {sum(counts)}; remake both with "
                         "make_train_dataset_300.py --force")
    full = [k for k, n in enumerate(counts, start=1) if n == sequences_per_file]
    log.info("%s: %d sequences, %d full split file(s) of %d", source.nucleotide, sum(counts), len(full),
             sequences_per_file)
    return full


def merged_path(data_dir: Path, source: Source, index: int, viral_sources: int) -> Path:
    """Where the merged file of split ``index`` of ``source`` goes."""
    merge_dir = data_dir / MERGE_DIR_NAME
    if source.kind == "viral":
        if viral_sources == 1 or source.name == VIRAL_MAIN_NAME:
            return merge_dir / VIRAL_MERGED_DIR_NAME / outputs.merged_features_name(index)
        return merge_dir / VIRAL_MERGED_DIR_NAME / outputs.merged_features_name(index, f"{source.name}.")
    return merge_dir / f"{source.name}_merged" / outputs.merged_features_name(index)


def select_splits(data_dir: Path, sources: list[Source], sequences_per_file: int, seed: int,
                  progress: bool = False) -> list[Split]:
    """Every full viral split plus a seeded sample of as many host splits."""
    viral_sources = sum(1 for s in sources if s.kind == "viral")
    if viral_sources == 0:
        raise InputError(f"{data_dir}: no viral *{NUCLEOTIDE_SUFFIX} file (expected under "
                         f"{data_dir / VIRAL_PREFIX}*)")
    viral: list[Split] = []
    hosts: dict[str, list[Split]] = {c: [] for c in HOST_CATEGORIES}
    for source in tqdm(sources, desc="splitting", unit="file", disable=not progress):
        for index in split_source(source, sequences_per_file):
            split = Split(source, index, merged_path(data_dir, source, index, viral_sources))
            (viral if source.kind == "viral" else hosts[source.category]).append(split)
    if not viral:
        raise InputError(f"{data_dir}: the viral files hold fewer than {sequences_per_file} sequences "
                         "each, so no full split file; lower --sequences-per-file")
    rng = random.Random(seed)
    per_category = math.ceil(len(viral) / len(HOST_CATEGORIES))
    pool: list[Split] = []
    short_categories = []
    for category in HOST_CATEGORIES:
        available = hosts[category]
        if len(available) < per_category:
            short_categories.append(f"{category} {len(available)}")
        pool.extend(rng.sample(available, min(per_category, len(available))))
    if short_categories:
        log.warning("fewer full host split files than the %d per category asked for (%s); all of those "
                    "are used", per_category, ", ".join(short_categories))
    if len(pool) < len(viral):
        log.warning("only %d host split file(s) for %d viral ones: the training set is unbalanced",
                    len(pool), len(viral))
    chosen = rng.sample(pool, min(len(viral), len(pool)))
    order = {c: i for i, c in enumerate(HOST_CATEGORIES)}
    chosen.sort(key=lambda s: (order[s.source.category], s.source.nucleotide, s.index))
    merged = [s.merged for s in viral + chosen]
    if len(set(merged)) != len(merged):
        duplicate = next(m for m in merged if merged.count(m) > 1)
        raise InputError(f"{duplicate}: two input files would write this merged file; "
                         "give the identified_nucleotide.fa files distinct names")
    log.info("%d viral and %d host split file(s) selected", len(viral), len(chosen))
    return viral + chosen
