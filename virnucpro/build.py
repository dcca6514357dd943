"""Building a FastESM2 classifier end to end and comparing it with the converted ESM2-3B original.

Steps (each skipped when its done-marker in WORK/.build/ exists, so a rerun resumes):
download (download_data.py) -> sequences (make_train_dataset_300.py) -> features
(features_extract.py) -> train (train.py) -> originals (download_data.py --original-models)
-> holdout (the hold-out rows' sequences as labelled FASTA) -> evaluate (evaluate.py, both
models on the same hold-out sequences, each with the language models its checkpoint records)
-> compare (comparison.tsv and the summary line).

:func:`run_build` takes one frozen :class:`BuildRequest` (built by ``build_model.py``); each
script step runs that script's ``main`` with the command line it shows (:func:`script_step`),
the module imported when the step runs (:func:`virnucpro.commands.script_main`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from . import outputs
from .defaults import ESM2_3B_MODEL
from .errors import EXIT_OK, RunFailedError, VirNucProError
from .files import atomic_write

log = logging.getLogger("virnucpro.build")

BUILD_STATE_DIR = ".build"
COMPARISON_NAME = "comparison.tsv"
COMPARISON_COLUMNS = ("model", "level", "n", "auroc", "auprc", "accuracy", "f1", "mcc")
HOLDOUT_VIRAL_NAME, HOLDOUT_HOST_NAME = "holdout_viral.fa", "holdout_host.fa"
CHUNK_SIZES = (300, 500)


@dataclass(frozen=True)
class BuildRequest:
    """What a build is asked to do (see ``build_model.py --help``); ``None``: each script's own default."""

    work_dir: Path = Path("work")
    chunk_size: int = CHUNK_SIZES[0]
    device: str = "auto"
    max_genomes: int | None = None
    sequences_per_file: int | None = None
    epochs: int | None = None
    original_esm_model: str = ESM2_3B_MODEL
    dry_run: bool = False
    progress: bool = True


@dataclass(frozen=True)
class Step:
    """One build step: a name, the command it stands for (shown by --dry-run) and its action."""

    name: str
    command: str
    action: Callable[[], None]


def script_step(name: str, script: str, main: Callable[[list[str]], int], argv: list[str]) -> Step:
    """A step that runs a flat script's ``main(argv)``; a non-zero exit stops the build."""
    def action() -> None:
        code = main(argv)
        if code != 0:
            raise RunFailedError(f"step '{name}' failed ({script} exited with {code}); fix it and run again "
                                 "(finished steps are kept)")
    return Step(name, " ".join(["python", script, *argv]), action)


def _script(name: str, command: str, argv: list[str]) -> Step:
    """The step that runs the script behind ``virnucpro COMMAND`` with ``argv``."""
    from . import commands

    return script_step(name, f"{commands.COMMANDS[command].module}.py",
                       lambda given: commands.script_main(command)(given), argv)


def build_plan(request: BuildRequest) -> list[Step]:
    """The build's steps for this request."""
    from . import download, original_models

    work, chunk = request.work_dir, request.chunk_size
    data = work / "data"
    checkpoint = work / outputs.checkpoint_name(chunk)
    original = work / f"{chunk}_model_esm2_3b.pth"
    holdout = work / "holdout"
    evaldir = work / "eval"
    quiet = [] if request.progress else ["-q"]
    extract_options = [] if request.sequences_per_file is None else ["--sequences-per-file",
                                                                      str(request.sequences_per_file)]
    download_options = [] if request.max_genomes is None else ["--max-genomes", str(request.max_genomes)]
    train_options = [] if request.epochs is None else ["--epochs", str(request.epochs)]
    extract_options += quiet
    train_options += quiet
    names = {"fastesm": checkpoint.stem, "esm2_3b": original.stem}

    def originals() -> None:
        session = download.make_session()
        try:
            original_models.fetch_and_convert(session, work, models=[m for m in original_models.ORIGINAL_MODELS
                                                                      if m.chunk_size == chunk],
                                              progress=request.progress, protein_model=request.original_esm_model)
        finally:
            session.close()

    def holdout_fasta() -> None:
        holdout.mkdir(parents=True, exist_ok=True)
        log.info("%d hold-out sequences", write_holdout_fasta(data, outputs.holdout_ids_path(checkpoint), holdout))

    def compare() -> None:
        print(write_comparison(evaldir / outputs.EVALUATION_TSV_NAME, work / COMPARISON_NAME, names))

    return [
        _script("download", "download", ["--out-dir", str(data), *download_options, *quiet]),
        _script("sequences", "make-dataset", ["--data-dir", str(data), "--chunk-size", str(chunk), *quiet]),
        _script("features", "features", ["--data-dir", str(data), "--device", request.device, *extract_options]),
        _script("train", "train", ["--data-dir", str(data / outputs.MERGE_DIR_NAME), "--chunk-size", str(chunk),
                                   "--out", str(checkpoint), "--log", str(work / outputs.TRAINING_LOG_NAME),
                                   "--device", request.device, *train_options]),
        Step("originals", f"python download_data.py --original-models --out-dir {work}", originals),
        Step("holdout", f"(hold-out ids {outputs.holdout_ids_path(checkpoint)} -> {holdout}/*.fa)", holdout_fasta),
        _script("evaluate", "evaluate", ["--viral", str(holdout / HOLDOUT_VIRAL_NAME), "--host",
                                         str(holdout / HOLDOUT_HOST_NAME), "--model", str(checkpoint), "--model",
                                         str(original), "--outdir", str(evaldir), "--device", request.device,
                                         *quiet]),
        Step("compare", f"(comparison {work / COMPARISON_NAME})", compare),
    ]


def run_build(request: BuildRequest) -> int:
    """Run the steps of the build not yet done (or list them all, ``dry_run``)."""
    run_steps(build_plan(request), request.work_dir, dry_run=request.dry_run)
    return EXIT_OK


def run_steps(steps: Sequence[Step], work_dir: Path, dry_run: bool = False) -> list[str]:
    """Run the steps not yet done (markers in WORK/.build/); returns the names of those that ran."""
    state = work_dir / BUILD_STATE_DIR
    ran = []
    for number, step in enumerate(steps, 1):
        marker = state / f"{step.name}.done"
        if dry_run:
            print(f"{number}. {step.name}{' (done)' if marker.is_file() else ''}: {step.command}")
            continue
        if marker.is_file():
            log.info("[%d/%d] %s: done already; skipped", number, len(steps), step.name)
            continue
        start = time.monotonic()
        log.info("[%d/%d] %s: %s", number, len(steps), step.name, step.command)
        step.action()
        state.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{time.monotonic() - start:.1f}\n")
        log.info("[%d/%d] %s: finished in %.1f s", number, len(steps), step.name, time.monotonic() - start)
        ran.append(step.name)
    return ran


def write_holdout_fasta(data_dir: Path, holdout_ids: Path, out_dir: Path, viral_prefix: str = "viral") -> int:
    """The hold-out rows' nucleotide sequences, split into viral and host FASTA files; returns their count."""
    wanted = set(holdout_ids.read_text().split())
    found = 0
    with atomic_write(out_dir / HOLDOUT_VIRAL_NAME) as viral, atomic_write(out_dir / HOLDOUT_HOST_NAME) as host:
        for path in sorted(data_dir.rglob(f"*{outputs.IDENTIFIED_NUCLEOTIDE_SUFFIX}")):
            out = viral if path.relative_to(data_dir).parts[0].startswith(viral_prefix) else host
            record = None
            for line in path.read_text().splitlines():
                if line.startswith(">"):
                    record = line[1:].split()[0]
                elif record in wanted and line:
                    out.write(f">{record}\n{line}\n")
                    wanted.discard(record)
                    found += 1
    if not found:
        raise VirNucProError(f"{holdout_ids}: none of the hold-out ids is in {data_dir}")
    return found


def write_comparison(evaluation_tsv: Path, target: Path, names: dict[str, str], level: str = "chunk") -> str:
    """comparison.tsv from evaluate.py's evaluation.tsv; returns the summary line."""
    import pandas as pd

    table = pd.read_csv(evaluation_tsv, sep="\t")
    with atomic_write(target) as out:
        out.write("\t".join(COMPARISON_COLUMNS) + "\n")
        for _, row in table.iterrows():
            out.write("\t".join(str(row[c]) for c in COMPARISON_COLUMNS) + "\n")
    at = table[table["level"] == level].set_index("model")
    fast, orig = at.loc[names["fastesm"]], at.loc[names["esm2_3b"]]
    return (f"FastESM2 AUROC {float(fast['auroc']):.4f} vs ESM2-3B {float(orig['auroc']):.4f} "
            f"on {int(fast['n'])} hold-out {level}s")
