"""The evaluation engine: classifiers scored side by side on the same labelled data.

:func:`run_evaluation` takes one frozen :class:`EvaluationRequest` (built by ``evaluate.py``).
Labelled sequences are written once and scored by the prediction engine
(:func:`virnucpro.predict.run_prediction`) with each model, every model, precision and revision
option passed on; merged feature files are scored directly by every model of their feature
space, under the same provenance rule as prediction (:func:`virnucpro.provenance.check_against_checkpoint`:
a warning, or refused with ``strict_models``).  The metrics come from :mod:`virnucpro.evaluation`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import outputs
from .defaults import OTHERS_CLASS, VIRUS_CLASS
from .errors import EXIT_OK, CheckpointError, InputError
from .options import ModelOptions

if TYPE_CHECKING:
    from .classifier import LoadedCheckpoint
    from .training_data import TrainingData

log = logging.getLogger("virnucpro.evaluate")


@dataclass(frozen=True)
class EvaluationRequest:
    """What evaluate.py is asked to compare (see ``evaluate.py --help``)."""

    checkpoints: tuple[Path, ...]
    outdir: Path
    viral: Path | None = None
    host: Path | None = None
    features: Path | None = None
    viral_dir: str = outputs.VIRAL_MERGED_DIR_NAME
    ids: Path | None = None
    models: ModelOptions = field(default_factory=ModelOptions)
    force: bool = False
    strict_models: bool = False
    progress: bool = True

    @property
    def sequences(self) -> bool:
        return self.viral is not None or self.host is not None


def model_names(paths: list[Path] | tuple[Path, ...]) -> list[str]:
    """A distinct name per checkpoint: its file stem, numbered when two are equal."""
    names: list[str] = []
    for path in paths:
        name, k = path.stem, 2
        while name in names:
            name, k = f"{path.stem}_{k}", k + 1
        names.append(name)
    return names


def write_labelled_input(viral: Path, host: Path, target: Path) -> dict[str, int]:
    """Write the viral then the host records to ``target``; returns id -> label (1 viral, 0 host)."""
    from .fasta import write_fasta_record
    from .fastq import read_sequences
    from .files import atomic_write

    labels: dict[str, int] = {}
    with atomic_write(target) as out:
        for path, label in ((viral, VIRUS_CLASS), (host, OTHERS_CLASS)):
            for record in read_sequences(path, alphabet="dna"):
                if record.id in labels:
                    raise InputError(f"{path}: record '{record.id}' is also in {viral}; ids must be unique "
                                     "across --viral and --host")
                labels[record.id] = label
                write_fasta_record(out, record.description, record.seq)
    return labels


def describe_models(meta: dict) -> dict[str, str | None]:
    """The language models a checkpoint records (names and revisions), for the report."""
    from .provenance import REVISION_KEYS

    return {"dna_model": meta.get("dna_model"), "dna_model_revision": meta.get(REVISION_KEYS["dna"]),
            "protein_model": meta.get("protein_model"), "protein_model_revision": meta.get(REVISION_KEYS["protein"])}


def sequence_tables(request: EvaluationRequest, names: list[str],
                    checkpoints: list[LoadedCheckpoint]) -> tuple[dict, dict, dict]:
    """Run the prediction engine for each model on the labelled sequences; read its outputs back."""
    from .evaluation import level_tables, read_prediction_frames
    from .predict import PredictionRequest, run_prediction

    assert request.viral is not None and request.host is not None
    request.outdir.mkdir(parents=True, exist_ok=True)
    labelled = request.outdir / outputs.EVALUATION_INPUT_NAME
    labels = write_labelled_input(request.viral, request.host, labelled)
    expected = {"viral": sum(labels.values()), "host": len(labels) - sum(labels.values())}
    log.info("%d viral and %d host sequences", expected["viral"], expected["host"])
    tables, runs = {}, {}
    for name, checkpoint in zip(names, checkpoints):
        run_dir = request.outdir / name
        # without --esm-model/--dnabert-model the prediction engine takes the models the checkpoint
        # records when a file may choose them (virnucpro.trust): a checkpoint never picks code that runs
        prediction = PredictionRequest(input=labelled, length=checkpoint.meta["chunk_size"], outdir=run_dir,
                                       model=checkpoint.path, models=request.models, force=request.force,
                                       strict_models=request.strict_models, progress=request.progress)
        log.info("model %s: predicting into %s", name, run_dir)
        run_prediction(prediction)
        tables[name] = level_tables(read_prediction_frames(run_dir, labels))
        runs[name] = {"checkpoint": str(checkpoint.path), "outdir": str(run_dir),
                      "chunk_size": checkpoint.meta["chunk_size"], "trained_with": describe_models(checkpoint.meta),
                      **run_models_of(run_dir)}
    return tables, runs, expected


def run_models_of(run_dir: Path) -> dict[str, str]:
    """The language models a prediction run used, from its manifest."""
    from .rundir import RunDir
    from .runstate import read_manifest

    manifest = read_manifest(RunDir(run_dir).manifest)
    return {"esm_model": manifest["esm_model"], "dnabert_model": manifest["dnabert_model"],
            "esm_model_revision": manifest.get("esm_model_revision"),
            "dnabert_model_revision": manifest.get("dnabert_model_revision")}


def read_id_list(path: Path) -> set[str]:
    """The ids of an ``--ids`` file, one per line (blank lines ignored)."""
    from .files import open_text

    if not path.is_file():
        raise InputError(f"{path}: --ids file not found")
    with open_text(path) as handle:
        wanted = {line.strip() for line in handle if line.strip()}
    if not wanted:
        raise InputError(f"{path}: lists no ids")
    return wanted


def features_models(data: TrainingData) -> dict[str, str | None]:
    """The language models the merged feature files record (names and revisions), for the report."""
    return {"dna_model": data.dna_model, "dna_model_revision": data.dna_model_revision,
            "protein_model": data.protein_model, "protein_model_revision": data.protein_model_revision}


def feature_tables(request: EvaluationRequest, names: list[str],
                   checkpoints: list[LoadedCheckpoint]) -> tuple[dict, dict, None, dict]:
    """Score the merged feature files with each model (they must share the files' feature space)."""
    import torch

    from .classifier import binary_columns
    from .evaluation import frame_table, level_tables
    from .models import resolve_device
    from .provenance import check_against_checkpoint
    from .scoring import classifier_probabilities
    from .training_data import load_training_data

    assert request.features is not None
    data = load_training_data(request.features, request.viral_dir, need_ids=request.ids is not None,
                              progress=request.progress)
    made_by = features_models(data)
    log.info("features in %s were made by %s (%s) and %s (%s)", request.features,
             made_by["dna_model"] or "an unrecorded DNA model", made_by["dna_model_revision"] or "revision unrecorded",
             made_by["protein_model"] or "an unrecorded protein model",
             made_by["protein_model_revision"] or "revision unrecorded")
    rows = torch.arange(data.features.shape[0])
    row_ids = data.ids if data.ids is not None else [str(i) for i in range(len(rows))]
    if request.ids is not None:
        wanted = read_id_list(request.ids)
        rows = torch.tensor([r for r, i in enumerate(row_ids) if i in wanted], dtype=torch.long)
        found = {row_ids[r] for r in rows.tolist()}
        if len(found) < len(wanted):
            raise InputError(f"{request.ids}: {len(wanted) - len(found)} of {len(wanted)} ids are not in "
                             f"{request.features} (e.g. '{sorted(wanted - found)[0]}')")
    features, labels = data.features[rows], data.labels[rows].numpy()
    selected_ids = [row_ids[r] for r in rows.tolist()]
    device = resolve_device(request.models.device)
    tables, runs = {}, {}
    for name, checkpoint in zip(names, checkpoints):
        meta = checkpoint.meta
        if (meta["dna_dim"], meta["protein_dim"]) != (data.dna_dim, data.protein_dim):
            raise CheckpointError(f"{checkpoint.path}: expects features {meta['dna_dim']} + {meta['protein_dim']} "
                                  f"wide, but {request.features} holds {data.dna_dim} + {data.protein_dim}; "
                                  "compare models of other feature spaces with --viral/--host")
        check_against_checkpoint(checkpoint.path, meta, {
            "dna": (made_by["dna_model"] or "unrecorded", made_by["dna_model_revision"]),
            "protein": (made_by["protein_model"] or "unrecorded", made_by["protein_model_revision"])},
            request.strict_models, used_by=f"the features in {request.features} were made by")
        virus_col, others_col = binary_columns(checkpoint.path, meta)
        probabilities = classifier_probabilities(checkpoint.classifier.to(device), features, meta["num_class"],
                                                 device)
        frames = frame_table(selected_ids, labels, probabilities[:, virus_col], probabilities[:, others_col])
        tables[name] = level_tables(frames) if data.ids is not None else {"frame": frames}
        runs[name] = {"checkpoint": str(checkpoint.path), "chunk_size": meta["chunk_size"],
                      "trained_with": describe_models(meta)}
    return tables, runs, None, made_by


def check_request(request: EvaluationRequest) -> list[LoadedCheckpoint]:
    """Refuse a request that cannot be carried out, before any scoring; returns the checkpoints, read once."""
    from .classifier import binary_columns, read_checkpoint
    from .files import require_writable_dir

    if request.sequences == (request.features is not None):
        raise InputError("give either --viral and --host (sequences) or --features DIR (merged feature files)")
    if request.sequences and (request.viral is None or request.host is None):
        raise InputError("--viral and --host are both needed")
    if request.ids is not None and not request.features:
        raise InputError("--ids selects rows of --features files")
    for path in request.checkpoints:
        if not path.is_file():
            raise InputError(f"{path}: checkpoint not found")
    require_writable_dir(request.outdir, "--outdir")
    checkpoints = [read_checkpoint(path) for path in request.checkpoints]
    for checkpoint in checkpoints:  # every checkpoint is checked before the scoring starts
        binary_columns(checkpoint.path, checkpoint.meta)
    return checkpoints


def run_evaluation(request: EvaluationRequest) -> int:
    """Score every model, then write the metrics, the agreement and the curves into ``request.outdir``."""
    from .evaluation import evaluate_models, plot_curves, write_report

    checkpoints = check_request(request)
    names = model_names(request.checkpoints)
    if request.sequences:
        tables, runs, expected = sequence_tables(request, names, checkpoints)
        data = {"viral": str(request.viral), "host": str(request.host)}
    else:
        tables, runs, expected, made_by = feature_tables(request, names, checkpoints)
        data = {"features": str(request.features), "ids": str(request.ids) if request.ids else None,
                "made_by": made_by}
    metric_rows, agreement_rows = evaluate_models(tables, expected)
    request.outdir.mkdir(parents=True, exist_ok=True)
    write_report(request.outdir, metric_rows, agreement_rows, {"input": data, "sequences": expected, "models": runs})
    plot_curves(tables, request.outdir)
    for row in metric_rows:
        log.info("%s %-8s n=%d accuracy %.4f F1 %.4f MCC %.4f AUROC %.4f", row["model"], row["level"], row["n"],
                 row["accuracy"], row["f1"], row["mcc"], row["auroc"])
    for row in agreement_rows:
        log.info("%s vs %s %-8s agree on %.4f of %d", row["model_a"], row["model_b"], row["level"],
                 row["agreement"], row["n_common"])
    for name, run in runs.items():
        trained = run["trained_with"]
        log.info("%s was trained with %s (%s) and %s (%s)", name, trained["dna_model"],
                 trained["dna_model_revision"] or "revision unrecorded", trained["protein_model"],
                 trained["protein_model_revision"] or "revision unrecorded")
    log.info("evaluation in %s", request.outdir)
    return EXIT_OK
