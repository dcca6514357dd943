"""Extract and merge DNABERT-S + FastESM2 features for training VirNucPro.

    python features_extract.py [--data-dir data] [--sequences-per-file 10000] [options]

Finds the ``*identified_nucleotide.fa`` files made by make_train_dataset_300.py
under the data directory.  Files under ``data/viral*`` are viral; the others are
host sequences grouped by category (vertebrate, protozoa, plant, invertebrate,
fungi, bacteria, archaea).  Each file and its ``identified_protein.fa`` twin are
split into ``output_{k}.fa`` files of ``--sequences-per-file`` sequences in a
sibling folder (``X.identified_nucleotide/``, ``X.identified_protein/``); only
full files are used.  Every viral split is used; host splits are sampled (seeded)
to ceil(n_viral / 7) per category, then down to n_viral in total.  For each used
split the DNABERT-S features (``output_{k}_DNABERT_S.pt``) and protein features
(``output_{k}_ESM.pt``) are computed and merged into
``data/data_merge/<name>_merged/output_{k}_merged.pt`` (viral files go to
``viral.1.1_merged``, the folder train.py reads as viral).

DNABERT-S feature files left by the original pipeline are reused as they are when
they hold the split's sequence ids; protein features are recomputed unless they were
made by the same protein model at the same revision for the same ids.  Merged files
already made by the same models at the same revisions for the same split are kept
unless ``--force``; every merged file records both models' revisions, so one merged set
never mixes features of different weights.

Under ``torchrun --nproc-per-node=N features_extract.py ...`` rank 0 splits and
selects, every rank makes the merged files of its share of the due splits (each on
its own ``cuda:LOCAL_RANK``), and rank 0 reports; the files are those of one process.
"""
from __future__ import annotations

import argparse
import logging
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from tqdm.auto import tqdm

from virnucpro import cli, distributed, outputs
from virnucpro.errors import FeatureFileError, InputError
from virnucpro.fasta import SPLIT_FILE_TEMPLATE, read_fasta, split_fasta_file
from virnucpro.files import atomic_torch_save, open_text, require_dir
from virnucpro.provenance import REVISION_KEYS, resolve_model_revision

# virnucpro.features and virnucpro.models (torch) are imported when features are made, not for --help.
if TYPE_CHECKING:
    import torch

log = logging.getLogger("virnucpro.features_extract")

PROG = "features_extract.py"
NUCLEOTIDE_SUFFIX = outputs.IDENTIFIED_NUCLEOTIDE_SUFFIX
PROTEIN_SUFFIX = outputs.IDENTIFIED_PROTEIN_SUFFIX
VIRAL_PREFIX = "viral"
HOST_CATEGORIES = ("vertebrate", "protozoa", "plant", "invertebrate", "fungi", "bacteria", "archaea")
MERGE_DIR_NAME = outputs.MERGE_DIR_NAME
VIRAL_MERGED_DIR_NAME = outputs.VIRAL_MERGED_DIR_NAME  # the folder name train.py reads as viral
VIRAL_MAIN_NAME = "viral.1.1"
DEFAULT_SEQUENCES_PER_FILE = 10000
DEFAULT_SEED = 42


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


def build_parser() -> cli.CliArgumentParser:
    parser = cli.CliArgumentParser(
        prog=PROG,
        description="Compute DNABERT-S + FastESM2 features of the training sequences and merge them "
                    "into DATA_DIR/data_merge/ for train.py.",
        epilog="Example: python features_extract.py --data-dir data --device cuda",
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data"),
                        help="folder with the *identified_nucleotide.fa / *identified_protein.fa files "
                             "made by make_train_dataset_300.py")
    parser.add_argument("--sequences-per-file", type=cli.positive_int, default=DEFAULT_SEQUENCES_PER_FILE,
                        help="sequences per split file (the unit of sampling; a last, shorter file is not used)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the host-file sampling")
    cli.add_model_arguments(parser)
    parser.add_argument("--force", action="store_true",
                        help="remake merged files that already exist (feature files are still reused "
                             "when they hold the same ids and model; delete them to recompute)")
    return parser


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
    short = []
    for category in HOST_CATEGORIES:
        available = hosts[category]
        if len(available) < per_category:
            short.append(f"{category} {len(available)}")
        pool.extend(rng.sample(available, min(per_category, len(available))))
    if short:
        log.warning("fewer full host split files than the %d per category asked for (%s); all of those "
                    "are used", per_category, ", ".join(short))
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


# ---------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------


def fasta_ids(path: Path, alphabet: str) -> list[str]:
    return [record.id for record in read_fasta(path, alphabet=alphabet)]


def merged_is_current(split: Split, ids: list[str], args: argparse.Namespace) -> bool:
    """True when the merged file was made from this split by the same models."""
    from virnucpro.features import read_merged_file

    if args.force or not split.merged.is_file():
        return False
    try:
        merged = read_merged_file(split.merged)
    except FeatureFileError as exc:  # unreadable or malformed means "make it again"
        log.warning("%s; it is made again", exc)
        return False
    revisions = args.resolved_revisions
    current = (merged.dna_model == str(args.dnabert_model)
               and merged.protein_model == str(args.esm_model)
               and merged.dna_model_revision == revisions["dna"]
               and merged.protein_model_revision == revisions["protein"]
               and merged.labels == [1 if split.kind == "viral" else 0]
               and merged.ids and set(merged.ids) <= set(ids))
    if not current:
        log.info("%s: made from other sequences, models or model revisions; it is made again", split.merged)
    return bool(current)


def reusable_legacy_dna_features(split: Split, ids: list[str]) -> bool:
    """An original-pipeline DNABERT-S file (no 'model' key) holding exactly this split's ids."""
    import torch

    from virnucpro.features import load_dna_features, load_feature_object

    path = split.dna_features
    if not path.is_file():
        return False
    try:
        obj = load_feature_object(path)
        if not isinstance(obj, dict) or "model" in obj:
            return False  # new-format files are checked by extract_DNABERT_S itself
        stored_ids, data = load_dna_features(obj)
    except FeatureFileError as exc:  # unreadable means "make it again"
        log.warning("%s; it is made again", exc)
        return False
    if stored_ids != ids or not bool(torch.isfinite(data).all()):
        log.warning("%s: holds other sequences than %s (stale); it is made again", path, split.nucleotide)
        return False
    log.info("%s: reusing DNABERT-S features from the original pipeline", path)
    return True


def is_current(split: Split, args: argparse.Namespace) -> bool:
    """True when the split's merged file is up to date (made from its sequences by the same models)."""
    if merged_is_current(split, fasta_ids(split.nucleotide, "dna"), args):
        log.info("%s: up to date", split.merged)
        return True
    return False


def make_split(split: Split, args: argparse.Namespace, device: torch.device, progress: bool) -> None:
    """Compute the features of one split and write its merged file."""
    from virnucpro.features import extract_DNABERT_S, extract_esm, merge_data

    ids = fasta_ids(split.nucleotide, "dna")
    if not reusable_legacy_dna_features(split, ids):
        extract_DNABERT_S(split.nucleotide, split.dna_features, model_location=args.dnabert_model,
                                device=device, batch_tokens=args.batch_tokens, progress=progress,
                                model_revision=args.dnabert_revision, precision=args.dna_precision)
    extract_esm(split.protein, model_location=args.esm_model, toks_per_batch=args.batch_tokens,
                      out_file=split.protein_features, device=device,
                      precision=args.protein_precision, progress=progress, model_revision=args.esm_revision,
                      loader=args.esm_loader)
    merged = merge_data(split.dna_features, split.protein_features, None, split.kind,
                        dna_model=str(args.dnabert_model), protein_model=str(args.esm_model))
    for kind, revision in args.resolved_revisions.items():  # a reused original-pipeline DNA file records none
        if merged.get(REVISION_KEYS[kind], revision) != revision:
            raise FeatureFileError(f"{split.merged}: the {kind} features were made at revision "
                                   f"{merged[REVISION_KEYS[kind]]} but the model is now at {revision}")
        merged[REVISION_KEYS[kind]] = revision
    atomic_torch_save(merged, split.merged)
    log.info("%s: %d rows of width %d", split.merged, len(merged["ids"]), merged["data"].shape[1])


def warn_about_leftovers(splits: list[Split]) -> None:
    """Merged files of earlier runs that this run did not select would still be read by train.py."""
    wanted = {s.merged for s in splits}
    for folder in sorted({s.merged.parent for s in splits}):
        extra = sorted(p for p in folder.glob("*_merged.pt") if p not in wanted)
        if extra:
            log.warning("%s holds %d merged file(s) not selected by this run (e.g. %s); train.py will "
                        "read them too: remove them for a balanced training set",
                        folder, len(extra), extra[0].name)


def plan(args: argparse.Namespace, progress: bool) -> tuple[list[Split], list[Split]]:
    """Split the inputs and select the splits: (every selected split, those whose merged file is due)."""
    sources = find_sources(args.data_dir)
    splits = select_splits(args.data_dir, sources, args.sequences_per_file, args.seed, progress)
    args.resolved_revisions = resolved_revisions(args)
    return splits, [split for split in splits if not is_current(split, args)]


def resolved_revisions(args: argparse.Namespace) -> dict[str, str]:
    """Both models' resolved revisions: every merged file records them."""
    return {"dna": resolve_model_revision(args.dnabert_model, args.dnabert_revision, kind="DNA"),
            "protein": resolve_model_revision(args.esm_model, args.esm_revision, kind="protein")}


def load_models(args: argparse.Namespace, device: torch.device) -> None:
    """Load both language models into this process's cache (the feature extractors reuse them)."""
    from virnucpro.models import load_dnabert_model, load_protein_model

    load_dnabert_model(args.dnabert_model, device, revision=args.dnabert_revision, precision=args.dna_precision)
    load_protein_model(args.esm_model, device, revision=args.esm_revision, precision=args.protein_precision,
                       loader=args.esm_loader)


def extract(args: argparse.Namespace) -> int:
    """Make the merged feature files; under torchrun the due splits are shared out over the ranks.

    Rank 0 splits the inputs and selects the splits; every rank makes the merged files
    of its share of the due splits (round-robin), then rank 0 reports.
    """
    device = distributed.together(lambda: distributed.rank_device(args.device))  # fail early on a bad --device
    if args.force and not distributed.first_launch():  # a restart replays the command line: keep what it made
        log.info("--force applies to the first launch of a job only (%s)", distributed.restart_note())
        args.force = False
    progress = not args.quiet and distributed.is_main()
    splits, due, args.resolved_revisions = distributed.on_main(
        lambda: (*plan(args, progress), args.resolved_revisions))  # the revisions rank 0 resolved
    mine = distributed.my_share(due)
    if distributed.world_size() > 1:  # first use of the models: one process at a time fills a shared cache
        distributed.together(lambda: load_models(args, device), turns=True, run=bool(mine))
        log.info("%d of %d due split file(s) for this rank", len(mine), len(due))

    def make_mine() -> None:
        for split in tqdm(mine, desc="feature files", unit="file", disable=not progress):
            make_split(split, args, device, progress)

    distributed.together(make_mine)
    if distributed.is_main():
        warn_about_leftovers(splits)
        log.info("%d merged file(s) written, %d up to date, under %s", len(due), len(splits) - len(due),
                 args.data_dir / MERGE_DIR_NAME)
    return cli.EXIT_OK


def run(args: argparse.Namespace) -> int:
    """The body of main: one process, or one rank of a torchrun job."""
    return int(distributed.launch(lambda: extract(args)) or cli.EXIT_OK)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see --help)."""
    return cli.script_main(PROG, build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
