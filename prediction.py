"""Score DNA sequences as viral or not with VirNucPro-FastESM.

    python prediction.py INPUT.fasta 300 OUTDIR [options]

Each sequence is cut into LENGTH-bp chunks, every chunk is translated in six frames,
the stop-free frames are embedded with DNABERT-S (DNA) and FastESM2 (protein), and
the classifier scores every frame.  OUTDIR receives prediction_results.txt (one row
per frame), prediction_results_highestscore.csv (one row per chunk),
prediction_summary.tsv (one row per input sequence) and viral_sequences.fa (the input
records called virus).  INPUT may be FASTA or FASTQ, plain or gzip.

Records stream through in shards, so memory stays flat whatever the input size.
A run that is killed resumes from its finished shards when rerun with the same
command; outputs are only ever renamed into place once complete.

The same command runs on many GPUs or nodes under ``torchrun`` (one rank per GPU):
rank 0 opens the run (checks, lock, input pass, shard index), every rank scores its
share of the pending shards, rank 0 finalises; the outputs are those of one process.
"""
from __future__ import annotations

import os
import signal
import sys

PROG = "prediction.py"
RESUME_HINT = "rerun the same command to resume"


def _interrupted_during_imports(signum: int, frame: object) -> None:
    # Nothing is written yet; an exception raised here could be wrapped by the import machinery.
    print(f"{PROG}: interrupted; {RESUME_HINT}", file=sys.stderr, flush=True)
    os._exit(128 + signum)


if __name__ == "__main__" and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    # Ctrl-C or SIGTERM while the modules below load: one line, no traceback
    # (cli.script_main installs the handlers of the run itself).
    signal.signal(signal.SIGINT, _interrupted_during_imports)
    signal.signal(signal.SIGTERM, _interrupted_during_imports)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import TYPE_CHECKING, Any, Iterator, Sequence  # noqa: E402

from virnucpro import cli, outputs  # noqa: E402
from virnucpro.shards import DEFAULT_SHARD_CHUNKS  # noqa: E402
from virnucpro.errors import CheckpointError, InputError  # noqa: E402

if TYPE_CHECKING:
    from virnucpro.shardindex import InputSource

log = logging.getLogger("virnucpro.predict")


def build_parser() -> cli.CliArgumentParser:
    """The command line of prediction.py."""
    parser = cli.CliArgumentParser(
        prog=PROG,
        description="Identify viral DNA among short sequences (VirNucPro with FastESM2_650).",
        epilog="Example: python prediction.py reads.fasta 300 results/  "
               "(uses 300_model_fastesm650.pth; train one with train.py)",
    )
    parser.add_argument("input", type=Path, help="DNA (or RNA) FASTA or FASTQ file to score, plain or gzip-compressed "
                                                 "(detected from the content; FASTQ qualities are ignored); "
                                                 "'-' or a pipe reads a stream")
    parser.add_argument("length", type=cli.positive_int, metavar="LENGTH",
                        help="chunk length in bp (300 or 500; must match the model's chunk size)")
    parser.add_argument("outdir", type=Path, metavar="OUTDIR", help="directory for the results (created)")
    parser.add_argument("--model", type=Path, default=None,
                        help="classifier checkpoint (default: {LENGTH}_model_fastesm650.pth in the "
                             "current directory, then next to this script)")
    cli.add_model_arguments(parser, checkpoint_models=True)
    parser.add_argument("--shard-size", type=cli.positive_int, default=DEFAULT_SHARD_CHUNKS,
                        help="chunks per shard: the unit of streaming and of resuming after a crash")
    parser.add_argument("--keep-features", action="store_true",
                        help="keep the merged feature files in OUTDIR/features/")
    parser.add_argument("--force", action="store_true",
                        help="discard earlier results of this program in OUTDIR and start over")
    parser.add_argument("--strict-models", action="store_true",
                        help="refuse to run when the language models (their resolved revisions) differ from "
                             "those the checkpoint was trained with, instead of warning")
    return parser



def find_checkpoint(model: Path | None, length: int) -> Path:
    """``--model`` (a file, or a folder holding ``{LENGTH}_model_*.pth``), else the default checkpoint
    in the current directory, then next to this script."""
    name = outputs.checkpoint_name(length)
    if model is not None and not model.is_dir():
        return model
    if model is not None:
        found = sorted(model.glob(f"{length}_model_*.pth"))
        preferred = [path for path in found if path.name == name]
        if len(found) == 1 or preferred:
            return (preferred or found)[0]
        if found:
            raise CheckpointError(f"{model}: holds several {length}-bp checkpoints "
                                  f"({', '.join(p.name for p in found)}); pass --model with one of them")
        raise CheckpointError(f"{model}: holds no {length}_model_*.pth checkpoint")
    for candidate in (Path.cwd() / name, Path(__file__).resolve().parent / name):
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"no classifier checkpoint {name} in the current directory or next to {PROG}; pass --model PATH. "
        f"To get one: fetch the original VirNucPro models (python download_data.py --original-models, then "
        f"--model {length}_model_esm2_3b.pth), or build a FastESM2 model (python build_model.py --chunk-size {length}, or train one with train.py)")


def prepare_outdir(outdir: Path) -> bool:
    """Create OUTDIR, or say why it cannot be used; True when this call created it."""
    from virnucpro.files import require_writable_dir

    if outdir.suffix == ".pth" and not outdir.exists():
        raise InputError(f"{outdir}: the third argument is OUTDIR (a directory); pass a "
                               "checkpoint with --model")
    created = not outdir.exists()
    require_writable_dir(outdir, "OUTDIR")
    return created


def run_settings(args: argparse.Namespace, checkpoint: Path, device_type: str, revisions: dict[str, str],
                 models: dict) -> dict:
    """Everything that determines the output bytes, but the input's hash (the shard index has it).

    ``revisions`` (``dna``/``protein`` -> resolved revision) identify the language-model
    weights, so a resume with other weights at the same path is refused.
    """
    import torch

    from virnucpro.embed import default_batch_tokens
    from virnucpro.files import file_sha256
    from virnucpro.models import resolve_precision
    from virnucpro.runstate import MANIFEST_VERSION

    return {
        "manifest_version": MANIFEST_VERSION,
        "chunk_size": args.length,
        "checkpoint_sha256": file_sha256(checkpoint),
        "esm_model": models["protein"].location,
        "dnabert_model": models["dna"].location,
        "esm_model_revision": revisions["protein"],
        "dnabert_model_revision": revisions["dna"],
        "device_type": device_type,
        "protein_precision": resolve_precision("protein", args.protein_precision, torch.device(device_type)),
        "dna_precision": resolve_precision("dna", args.dna_precision, torch.device(device_type)),
        "compile": bool(args.compile),
        "batch_tokens": args.batch_tokens or default_batch_tokens(device_type),
        "shard_size": args.shard_size,
        "keep_features": bool(args.keep_features),
    }


def run_models(args: argparse.Namespace, checkpoint: Path, meta: dict) -> dict:
    """``dna``/``protein`` -> :class:`~virnucpro.trust.ModelChoice`: the options, else the checkpoint's
    models when a file may choose them (default hub models, plain ESM-2s), else the defaults."""
    from virnucpro.defaults import DNABERT_S_MODEL, FASTESM_MODEL
    from virnucpro.trust import choose_model

    return {"dna": choose_model("dna", args.dnabert_model, meta.get("dna_model"), DNABERT_S_MODEL, str(checkpoint)),
            "protein": choose_model("protein", args.esm_model, meta.get("protein_model"), FASTESM_MODEL,
                                    str(checkpoint))}


def model_revisions(args: argparse.Namespace, checkpoint: Path, meta: dict, models: dict) -> dict[str, str]:
    """The two models' resolved revisions, checked against the checkpoint's (``--strict-models``: refused).

    A hub model the checkpoint records a commit for is loaded at that commit (code and weights),
    unless ``--esm-revision`` / ``--dnabert-revision`` say otherwise.
    """
    from virnucpro.provenance import check_against_checkpoint, checkpoint_pin, resolve_model_revision

    given = {"dna": args.dnabert_revision, "protein": args.esm_revision}
    revisions = {kind: resolve_model_revision(choice.location, given[kind] or checkpoint_pin(meta, kind, choice.location),
                                              kind="DNA" if kind == "dna" else kind)
                 for kind, choice in models.items()}
    check_against_checkpoint(checkpoint, meta, {kind: (choice.location, revisions[kind])
                                                for kind, choice in models.items()}, args.strict_models)
    return revisions


def check_length(length: int) -> None:
    """Refuse a chunk LENGTH the language models cannot embed, before any work."""
    from virnucpro.defaults import MAX_CHUNK_LENGTH

    if length > MAX_CHUNK_LENGTH:
        raise InputError(f"LENGTH {length}: chunks longer than {MAX_CHUNK_LENGTH} bp cannot be embedded "
                         f"(FastESM2 sees at most {MAX_CHUNK_LENGTH // 3} residues of a frame, and a chunk's DNA "
                         "is embedded whole); use 300 or 500")


def output_stem(source: InputSource) -> str:
    """The name the outputs are called by: the input's stem; ``stdin`` for ``-`` and unnamed pipes (``<(...)``)."""
    import re

    if source.is_stdin or re.fullmatch(r"/(dev|proc/[^/]+)/fd/[0-9]+|/dev/stdin", str(source.path)):
        return "stdin"
    return outputs.input_stem(source.path)


@dataclass
class RunPlan:
    """What rank 0 opened, handed to every rank: where the shards are and which are still to score."""

    checkpoint: Path
    work: Path
    index: Any  # virnucpro.shardindex.ShardIndex
    stem: str
    pending: list[int]
    finished: bool
    revisions: dict[str, str]
    models: dict  # dna/protein -> virnucpro.trust.ModelChoice


def predict(args: argparse.Namespace) -> int:
    """Score ``args.input`` into ``args.outdir``, resuming from finished shards; alone or under torchrun."""
    from virnucpro import distributed

    return int(distributed.launch(lambda: _predict(args)) or cli.EXIT_OK)


def _predict(args: argparse.Namespace) -> int:
    """Rank 0 opens the run (alone, under the OUTDIR lock), every rank scores its share, rank 0 finalises."""
    from virnucpro import distributed
    from virnucpro.runstate import finalise

    device = distributed.together(lambda: distributed.rank_device(args.device))
    with contextlib.ExitStack() as held:  # on rank 0: the OUTDIR lock, held until the job ends
        plan = distributed.on_main(lambda: open_the_run(args, device, held))
        if plan.finished:
            log.info("%s is complete already (use --force to recompute)", args.outdir)
            return cli.EXIT_OK
        mine = distributed.my_share(plan.pending)
        if distributed.world_size() > 1:
            log.info("%d of %d pending shard(s) for this rank", len(mine), len(plan.pending))
        # the models' first use: one process at a time writes a shared Hugging Face cache
        scorer = distributed.together(lambda: load_run_scorer(args, plan, device), turns=True, run=bool(mine))
        distributed.together(lambda: score_shards(args, plan, scorer, mine))

        def close() -> None:
            with disk_full_says(args.outdir, "the final outputs"):
                finalise(args.outdir, plan.work, plan.index, plan.stem, args.length)
            log.info("results in %s", args.outdir)

        distributed.on_main(close)
    return cli.EXIT_OK


def open_the_run(args: argparse.Namespace, device, held: contextlib.ExitStack) -> RunPlan:
    """Input checks, OUTDIR lock, manifest, --force, validation pass and shard index: once, on rank 0.

    The lock joins ``held``, so it lasts until the whole job (every rank) is done.
    """
    from virnucpro import distributed
    from virnucpro.runlock import RunLock
    from virnucpro.shardindex import input_source

    check_length(args.length)
    source = input_source(args.input)
    created = prepare_outdir(args.outdir)
    if not (args.outdir / outputs.WORK_DIR_NAME).exists():

        def remove_on_failure(kind: type | None, *_: object) -> bool:  # runs after the lock is released
            if kind is not None:
                remove_if_unused(args.outdir, remove_outdir=created)
            return False  # the error goes on

        held.push(remove_on_failure)
    held.enter_context(RunLock(args.outdir))
    force = args.force and distributed.first_launch()
    if args.force and not force:
        log.info("--force applies to the first launch of a job only (%s): resuming", distributed.restart_note())
    return _open_locked(args, source, device, force)


def remove_if_unused(outdir: Path, remove_outdir: bool) -> None:
    """After a failed run: remove the work directory it made if no shard was finished, and OUTDIR if empty."""
    import shutil

    work = outdir / outputs.WORK_DIR_NAME
    if any(work.glob("shard_*.done")):
        return  # a rerun resumes from these
    shutil.rmtree(work, ignore_errors=True)
    if remove_outdir:
        try:
            outdir.rmdir()
        except OSError:
            pass  # not empty: someone else's files


def _open_locked(args: argparse.Namespace, source: InputSource, device, force: bool) -> RunPlan:
    from virnucpro.runstate import open_run, pending_shards
    from virnucpro.scoring import load_classifier
    from virnucpro.shardindex import build_index, load_index

    checkpoint = find_checkpoint(args.model, args.length)
    _, meta = load_classifier(checkpoint, args.length)  # a wrong checkpoint is refused before the input is read
    models = run_models(args, checkpoint, meta)
    revisions = model_revisions(args, checkpoint, meta, models)
    stem = output_stem(source)
    settings = run_settings(args, checkpoint, device.type, revisions, models)

    def get_index(work: Path):
        # One pass validates the whole input, so bad records are reported before models load.
        index = load_index(work, source, args.length, args.shard_size)
        return index or build_index(source, work, args.length, args.shard_size)

    with disk_full_says(args.outdir, "the shard index (or a piped input's spool)"):
        work, index, finished = open_run(args.outdir, settings, force, stem, args.length, get_index,
                                         protected=run_inputs(source, checkpoint, models))
    return RunPlan(checkpoint, work, index, stem, pending_shards(work, index), finished, revisions, models)


def run_inputs(source: InputSource, checkpoint: Path, models: dict) -> list[tuple[str, Path]]:
    """The files the run reads (input, checkpoint, local models): none may lie among the files it writes."""
    named = [("input", source.path)] if not source.is_stdin else []
    named.append(("checkpoint", checkpoint))
    for what, kind in (("protein model", "protein"), ("DNA model", "dna")):
        if Path(models[kind].location).exists():
            named.append((what, Path(models[kind].location)))
    return named


def load_run_scorer(args: argparse.Namespace, plan: RunPlan, device):
    """The classifier and both language models (at the revisions rank 0 resolved), in this process."""
    from virnucpro import distributed
    from virnucpro.runstate import record_esm_loader
    from virnucpro.scoring import load_classifier, load_scorer

    classifier, meta = load_classifier(plan.checkpoint, args.length)
    scorer = load_scorer(plan.checkpoint, classifier, meta, device, dnabert_model=plan.models["dna"].location,
                       esm_model=plan.models["protein"].location, protein_precision=args.protein_precision,
                       dna_precision=args.dna_precision, compile_layers=args.compile, revisions=plan.revisions,
                       batch_tokens=args.batch_tokens, progress=not args.quiet and distributed.is_main(),
                       esm_loader=args.esm_loader, trust_esm_code=plan.models["protein"].trust_remote_code)
    if distributed.is_main():
        record_esm_loader(plan.work, scorer.protein.loader)
    return scorer


def score_shards(args: argparse.Namespace, plan: RunPlan, scorer, shards: list[int]) -> None:
    """Score the given shards of the plan, writing each one's files and then its ``done`` marker."""
    from virnucpro.results import write_shard
    from virnucpro.scoring import check_finite
    from virnucpro.shardindex import ShardReader
    from virnucpro.shards import preprocess_shard

    features_dir = args.outdir / outputs.FEATURES_DIR_NAME if args.keep_features else None
    meta = scorer.meta if shards else {}

    def prepare(k):
        return scorer.prepare(preprocess_shard(k, reader.read(k), args.length))

    def write(prepared, features) -> None:
        shard = prepared.shard
        probabilities = scorer.probabilities(features)
        check_finite(probabilities, shard)
        with disk_full_says(plan.work, f"shard {shard.index}"):
            write_shard(plan.work, shard, probabilities, meta["label_map"], features, features_dir, meta)
        log.info("shard %d: %d sequences, %d chunks, %d frames scored", shard.index, len(shard.sequences),
                 shard.chunk_count, len(shard.frame_ids))

    # Three stages overlap: the prefetch thread reads, frames and tokenises shard k+1 while
    # this thread embeds shard k and the writer thread scores and writes shard k-1.  The
    # reader is closed only after the prefetch thread, its only user (in shard order), stopped.
    with ShardReader(plan.index, plan.work) as reader, ThreadPoolExecutor(max_workers=1) as prefetch, \
            ThreadPoolExecutor(max_workers=1) as writer:
        pending = written = None

        def embed_and_hand_over(prepared):
            features = scorer.features(prepared)
            if written is not None:
                written.result()  # one shard in the writer at a time; its errors surface here
            return writer.submit(write, prepared, features)

        for k in shards:
            next_shard = prefetch.submit(prepare, k)
            if pending is not None:
                written = embed_and_hand_over(pending.result())
            pending = next_shard
        if pending is not None:
            written = embed_and_hand_over(pending.result())
        if written is not None:
            written.result()


@contextlib.contextmanager
def disk_full_says(where: Path, what: str) -> Iterator[None]:
    """Turn a full disk (or quota) into one line naming what was being written."""
    from virnucpro.errors import DiskFullError
    from virnucpro.files import DISK_FULL_ERRNOS

    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        raise DiskFullError(f"{where}: no space left on the device while writing {what} "
                            f"({exc.strerror}); free some space and rerun the same command to resume") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python prediction.py INPUT LENGTH OUTDIR [options]``."""
    return cli.script_main(PROG, build_parser(), predict, argv, interrupted_hint=RESUME_HINT)


if __name__ == "__main__":
    sys.exit(main())
