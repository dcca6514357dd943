"""The training-feature run of ``features_extract.py``: splits found, split, selected, merged files made.

:func:`run_extraction` takes one :class:`ExtractionRequest` (what the command line asked for)
and, on rank 0, finds the ``*identified_nucleotide.fa`` files (:class:`Source`), splits them,
selects the splits (:class:`Split`), resolves both models' revisions once and decides which
merged files are due; every rank then makes the merged files of its share of the due splits.

A merged file is kept (up to date) only when it is intact (its checksum, when it records
one), holds exactly the rows it would now hold (the split's DNA ids that have a protein, in
order) with the split's label, and was made by this run's models at their resolved revisions.
Its provenance is that of the feature files it was made from: a DNABERT-S file of the
original pipeline (no ``model`` key) was made by ``zhihan1996/DNABERT-S`` at an unrecorded
revision, so it is reused only when this run's DNA model is that hub id, and the merged file
then records ``dna_model_revision:`` :data:`~virnucpro.features.UNRECORDED_REVISION`.

Imports no torch until features are made.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from tqdm.auto import tqdm

from . import distributed, outputs
from .defaults import DNABERT_S_MODEL, FASTESM_MODEL
from .errors import FeatureFileError
from .fasta import read_fasta
from .files import remove_temp_files
from .options import ModelOptions
from .trainsplits import MERGE_DIR_NAME, Source, Split, find_sources, select_splits
from .provenance import REVISION_KEYS, pinned_revision, resolve_model_revision, short

if TYPE_CHECKING:
    import torch

log = logging.getLogger("virnucpro.features_extract")

DEFAULT_SEQUENCES_PER_FILE = 10000
DEFAULT_SEED = 42
#: The files a run writes atomically (so a killed run may leave their temporary files) in split folders
#: and in merge folders (``viral.1.2.output_1_merged.pt`` too).
SPLIT_DIR_OUTPUTS = (outputs.dna_features_name("*"), outputs.protein_features_name("*"))  # type: ignore[arg-type]
MERGE_DIR_OUTPUTS = (outputs.merged_features_name("*", "*"),)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ModelSpec:
    """One language model of the request, as the extraction steps use it."""

    location: str                  # hub id or local directory
    revision: str | None = None    # hub branch, tag or commit asked for (None: the latest)
    precision: str | None = None   # None: the device's default


@dataclass(frozen=True)
class ExtractionRequest:
    """Everything a feature run needs, made once from the command line.

    ``revisions`` (``dna``/``protein`` -> resolved revision) is filled once, on rank 0, by
    :func:`resolve_revisions` after the inputs were found; every rank uses those.
    """

    data_dir: Path
    #: The same language-model options as prediction's (``cli.model_options``); ``None`` models: the defaults.
    models: ModelOptions = ModelOptions()
    sequences_per_file: int = DEFAULT_SEQUENCES_PER_FILE
    seed: int = DEFAULT_SEED
    trust_protein_code: bool = True        # False: a plain ESM-2 is loaded without code of its own
    force: bool = False
    progress: bool = True
    revisions: Mapping[str, str] | None = None

    @property
    def dna(self) -> ModelSpec:
        return ModelSpec(self.models.dnabert_model or DNABERT_S_MODEL, self.models.dnabert_revision,
                         self.models.dna_precision)

    @property
    def protein(self) -> ModelSpec:
        return ModelSpec(self.models.esm_model or FASTESM_MODEL, self.models.esm_revision,
                         self.models.protein_precision)

    @property
    def batch_tokens(self) -> int | None:
        return self.models.batch_tokens  # None: the device's default

    @property
    def esm_loader(self) -> str:
        return self.models.esm_loader

    @property
    def device(self) -> str:
        return self.models.device

    def model(self, kind: str) -> ModelSpec:
        """The ``dna`` or ``protein`` model."""
        return self.dna if kind == "dna" else self.protein

    def pin(self, kind: str) -> str | None:
        """The ``revision=`` every rank loads ``kind``'s model with: exactly the resolved revision."""
        if self.revisions is None:
            raise ValueError("the request's revisions are not resolved yet (see resolve_revisions)")
        return pinned_revision(self.model(kind).location, self.revisions[kind])


@dataclass(frozen=True)
class Plan:
    """What rank 0 decided: the request with its revisions resolved, every selected split, the due ones."""

    request: ExtractionRequest
    splits: list[Split]
    due: list[Split]


@dataclass(frozen=True)
class ExtractionSummary:
    """What a run did (the same on every rank)."""

    selected: int
    made: int
    merge_dir: Path

    @property
    def up_to_date(self) -> int:
        return self.selected - self.made


def remove_leftover_temp_files(sources: list[Source], splits: list[Split]) -> int:
    """Remove the temporary files a killed run left beside the files this run writes; returns the count.

    Only this program's names (``.output_1_ESM.pt.XXXX.tmp``...) in the split folders and the
    merge folders of this run, and only regular files (a link of that name is left alone).
    """
    folders = [(d, SPLIT_DIR_OUTPUTS) for s in sources for d in (s.nucleotide_split_dir, s.protein_split_dir)]
    folders += [(d, MERGE_DIR_OUTPUTS) for d in sorted({s.merged.parent for s in splits})]
    removed = sum(remove_temp_files(folder, name) for folder, names in folders for name in names)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run", removed)
    return removed


# ---------------------------------------------------------------------------
# Models, and whether a merged file is up to date
# ---------------------------------------------------------------------------


def resolve_revisions(request: ExtractionRequest) -> ExtractionRequest:
    """The request with both models' revisions resolved (kept when it has them): every file records them."""
    if request.revisions is not None:
        return request
    return replace(request, revisions={
        "dna": resolve_model_revision(request.dna.location, request.dna.revision, kind="DNA"),
        "protein": resolve_model_revision(request.protein.location, request.protein.revision, kind="protein")})


def provenance_problem(recorded: Mapping[str, Any], request: ExtractionRequest) -> str | None:
    """Why the models a merged file records (its MERGED_NAME_KEYS) are not this run's, else None.

    DNA features of the original pipeline (revision unrecorded) are this run's when its DNA
    model is zhihan1996/DNABERT-S, the model that made them.
    """
    from .features import MODEL_KEYS, UNRECORDED_REVISION

    assert request.revisions is not None
    for kind in ("dna", "protein"):
        location, resolved = request.model(kind).location, request.revisions[kind]
        model, revision = recorded.get(MODEL_KEYS[kind]), recorded.get(REVISION_KEYS[kind])
        if model != location:
            return f"made by the {kind} model {model or '(unrecorded)'}, not {location}"
        accepted = {resolved} | ({UNRECORDED_REVISION} if kind == "dna" and location == DNABERT_S_MODEL else set())
        if revision not in accepted:
            return f"made by another revision of {location} ({short(revision)}, now {short(resolved)})"
    return None


def fasta_ids(path: Path, alphabet: str) -> list[str]:
    """The record ids of a FASTA file, in order."""
    return [record.id for record in read_fasta(path, alphabet=alphabet, allow_empty=True)]


def expected_ids(split: Split) -> list[str]:
    """The rows of the split's merged file: its DNA ids that also have a protein, in order (as merge_data)."""
    proteins = set(fasta_ids(split.protein, "protein"))
    return [i for i in fasta_ids(split.nucleotide, "dna") if i in proteins]


def merged_is_current(split: Split, request: ExtractionRequest) -> bool:
    """True when the split's merged file is intact and exactly what this run would make of the split."""
    from .features import MERGED_NAME_KEYS, read_merged_file

    if request.force or not split.merged.is_file():
        return False
    try:
        merged = read_merged_file(split.merged)
    except FeatureFileError as exc:  # unreadable, malformed or damaged: one warning naming it
        log.warning("%s; it is made again", exc)
        return False
    problem = provenance_problem({key: getattr(merged, key) for key in MERGED_NAME_KEYS}, request)
    if problem is None and merged.labels != [split.label]:
        problem = f"labelled {merged.labels}, not [{split.label}]"
    if problem is None:
        ids = expected_ids(split)
        if merged.ids != ids:
            problem = (f"holds {merged.rows} row(s), not the {len(ids)} of {split.nucleotide} "
                       "(made from other sequences or another --sequences-per-file)")
    if problem is not None:
        log.info("%s: %s; it is made again", split.merged, problem)
        return False
    log.info("%s: up to date", split.merged)
    return True


def legacy_dna_features(split: Split, ids: list[str], request: ExtractionRequest) -> bool:
    """True when the split's DNABERT-S file is one of the original pipeline (no ``model``) that this run
    reuses: it holds exactly ``ids``, all finite, and this run's DNA model is the one that made it."""
    import torch

    from .features import DNA_IDS_KEY, DNA_WHAT, load_feature_object, load_features

    path = split.dna_features
    if not path.is_file():
        return False
    try:
        obj = load_feature_object(path, DNA_WHAT)
        if not isinstance(obj, dict) or "model" in obj:
            return False  # new-format files are checked by extract_DNABERT_S itself
        if request.dna.location != DNABERT_S_MODEL:
            log.info("%s: DNABERT-S features of the original pipeline (made by %s), but this run's DNA model is "
                     "%s; they are made again", path, DNABERT_S_MODEL, request.dna.location)
            return False
        stored_ids, data, _ = load_features(obj, DNA_IDS_KEY, DNA_WHAT, where=path)
    except FeatureFileError as exc:  # unreadable means "make it again"
        log.warning("%s; it is made again", exc)
        return False
    if stored_ids != ids:
        log.info("%s: holds other sequences than %s (stale); it is made again", path, split.nucleotide)
        return False
    if not bool(torch.isfinite(data).all()):
        log.warning("%s: holds NaN or infinite values; it is made again", path)
        return False
    log.info("%s: reusing DNABERT-S features of the original pipeline (%s, revision unrecorded)", path,
             DNABERT_S_MODEL)
    return True


# ---------------------------------------------------------------------------
# Making the merged files
# ---------------------------------------------------------------------------


def make_split(split: Split, request: ExtractionRequest, device: torch.device, progress: bool) -> None:
    """Compute (or reuse) the features of one split and write its merged file."""
    from .extraction import extract_DNABERT_S, extract_esm, merge_data
    from .files import atomic_torch_save

    legacy = legacy_dna_features(split, fasta_ids(split.nucleotide, "dna"), request)
    if not legacy:
        extract_DNABERT_S(split.nucleotide, split.dna_features, model_location=request.dna.location,
                          device=device, batch_tokens=request.batch_tokens, progress=progress,
                          model_revision=request.pin("dna"), precision=request.dna.precision)
    extract_esm(split.protein, model_location=request.protein.location, toks_per_batch=request.batch_tokens,
                out_file=split.protein_features, device=device, precision=request.protein.precision,
                progress=progress, model_revision=request.pin("protein"), loader=request.esm_loader,
                trust_remote_code=request.trust_protein_code)
    merged = merge_data(split.dna_features, split.protein_features, None, split.kind,
                        dna_model=DNABERT_S_MODEL if legacy else None)
    problem = provenance_problem(merged, request)
    if problem is not None:  # the model changed while the run went on (a local directory edited)
        raise FeatureFileError(f"{split.merged}: its features were {problem}")
    atomic_torch_save(merged, split.merged)
    log.info("%s: %d rows of width %d", split.merged, len(merged["ids"]), merged["data"].shape[1])


def warn_about_leftovers(splits: list[Split]) -> None:
    """Merged files of earlier runs that this run did not select would still be read by train.py."""
    wanted = {s.merged for s in splits}
    for folder in sorted({s.merged.parent for s in splits}):
        extra = sorted(p for p in folder.glob(f"*{outputs.MERGED_SUFFIX}") if p not in wanted)
        if extra:
            log.warning("%s holds %d merged file(s) not selected by this run (e.g. %s); train.py will "
                        "read them too: remove them for a balanced training set",
                        folder, len(extra), extra[0].name)


def make_plan(request: ExtractionRequest, progress: bool) -> Plan:
    """Split the inputs, select the splits, resolve the revisions, clean up, and find the due splits."""
    sources = find_sources(request.data_dir)
    splits = select_splits(request.data_dir, sources, request.sequences_per_file, request.seed, progress)
    request = resolve_revisions(request)
    remove_leftover_temp_files(sources, splits)
    return Plan(request, splits, [split for split in splits if not merged_is_current(split, request)])


def load_models(request: ExtractionRequest, device: torch.device) -> None:
    """Load both language models into this process's cache (the feature extractors reuse them);
    with ``--compile`` their encoder layers are compiled there, as prediction's are."""
    from .models import compile_encoder_layers, load_dnabert_model, load_protein_model

    dna = load_dnabert_model(request.dna.location, device, revision=request.pin("dna"),
                             precision=request.dna.precision)
    protein = load_protein_model(request.protein.location, device, revision=request.pin("protein"),
                                 precision=request.protein.precision, loader=request.esm_loader,
                                 trust_remote_code=request.trust_protein_code)
    if request.models.compile:
        compile_encoder_layers(dna)
        compile_encoder_layers(protein)


def run_extraction(request: ExtractionRequest) -> ExtractionSummary:
    """Make the merged feature files; under torchrun the due splits are shared out over the ranks.

    Rank 0 splits the inputs, selects the splits and resolves the revisions; every rank makes
    the merged files of its share of the due splits (round-robin), then rank 0 reports.
    """
    device = distributed.together(lambda: distributed.rank_device(request.device))  # fail early on a bad --device
    if request.force and not distributed.first_launch():  # a restart replays the command line: keep what it made
        log.info("--force applies to the first launch of a job only (%s)", distributed.restart_note())
        request = replace(request, force=False)
    progress = request.progress and distributed.is_main()
    plan = distributed.on_main(lambda: make_plan(request, progress))
    request, mine = plan.request, distributed.my_share(plan.due)
    # The models' first use, before any split: under torchrun one process at a time fills a shared cache.
    distributed.together(lambda: load_models(request, device), turns=True, run=bool(mine))
    if distributed.world_size() > 1:
        log.info("%d of %d due split file(s) for this rank", len(mine), len(plan.due))

    def make_mine() -> None:
        for split in tqdm(mine, desc="feature files", unit="file", disable=not progress):
            make_split(split, request, device, progress)

    distributed.together(make_mine)
    summary = ExtractionSummary(len(plan.splits), len(plan.due), request.data_dir / MERGE_DIR_NAME)
    if distributed.is_main():
        warn_about_leftovers(plan.splits)
        log.info("%d merged file(s) written, %d up to date, under %s", summary.made, summary.up_to_date,
                 summary.merge_dir)
    return summary
