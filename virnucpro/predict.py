"""The prediction engine: score an input into a prediction OUTDIR, resuming, alone or under torchrun.

:func:`run_prediction` takes one frozen :class:`PredictionRequest` (built by ``prediction.py``
from its command line, or by evaluate.py, the benchmarks, a notebook).  Rank 0 opens the run
(checks, OUTDIR lock, manifest) and reads the checkpoint once; the models, revisions,
precisions and batch size are resolved once there and handed to every rank in the
:class:`RunPlan`.  The one validating input pass then runs in a child process of rank 0
and publishes each shard as it lays it out (:mod:`virnucpro.indexstream`): every rank loads
its models meanwhile and scores its share of the pending shards as they appear, in a
three-stage pipeline; rank 0 joins them into the final outputs once the pass has ended
(duplicate ids, the input's hash).  A resume of a run whose pass ended uses its saved index
(or, for a stream, one whole pass checked against the recorded hash before anything is scored).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import queue
import re
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, Union

from . import distributed, outputs
from .defaults import DNABERT_S_MODEL, FASTESM_MODEL, MAX_CHUNK_LENGTH
from .errors import EXIT_OK, CheckpointError, DiskFullError, InputError
from .files import DISK_FULL_ERRNOS, require_writable_dir
from .options import ModelOptions
from .rundir import RunDir
from .shards import DEFAULT_SHARD_CHUNKS

if TYPE_CHECKING:
    import torch

    from .classifier import LoadedCheckpoint
    from .indexstream import IndexFollower, IndexPass, ListedShards
    from .scoring import Scorer
    from .shardindex import InputSource, ShardIndex
    from .trust import ModelChoice

log = logging.getLogger("virnucpro.predict")


@dataclass(frozen=True)
class PredictionRequest:
    """Everything a prediction run is asked to do (see ``prediction.py --help`` for each option)."""

    input: Path
    length: int
    outdir: Path
    model: Path | None = None  # a checkpoint file, a folder holding one, or None: search checkpoint_dirs
    models: ModelOptions = field(default_factory=ModelOptions)
    shard_size: int = DEFAULT_SHARD_CHUNKS
    keep_features: bool = False
    force: bool = False
    strict_models: bool = False
    progress: bool = True
    #: Where a default checkpoint ``{LENGTH}_model_fastesm650.pth`` is looked for, in order.
    checkpoint_dirs: tuple[Path, ...] = ()


@dataclass
class RunPlan:
    """What rank 0 opened, handed to every rank: the run's files, its resolved settings, what is still to score.

    Either the whole ``index`` and its ``pending`` shards, or (``index`` None) the ``index_log``
    that rank 0's input pass (``index_pass``, on rank 0 only) is publishing the shards in.
    """

    run: RunDir
    checkpoint: LoadedCheckpoint
    index: ShardIndex | None
    pending: list[int]
    finished: bool
    revisions: dict[str, str]
    models: dict[str, ModelChoice]  # dna/protein
    options: ModelOptions  # precisions and batch size resolved for the device
    index_log: Path | None = None
    index_pass: IndexPass | None = field(default=None, repr=False, compare=False)

    @property
    def work(self) -> Path:
        return self.run.work.path

    def __getstate__(self) -> dict:
        return {**self.__dict__, "index_pass": None}  # the pass (a child process of rank 0) stays with rank 0


#: This rank's shards: listed (a complete index) or followed as the input pass publishes them.
ShardFeed = Union["ListedShards", "IndexFollower"]


def run_prediction(request: PredictionRequest) -> int:
    """Score ``request.input`` into ``request.outdir``, resuming from finished shards; alone or under torchrun."""
    return int(distributed.launch(lambda: _predict(request)) or EXIT_OK)


def find_checkpoint(model: Path | None, length: int, search: Sequence[Path] = ()) -> Path:
    """``model`` (a file, or a folder holding ``{LENGTH}_model_*.pth``), else the default checkpoint in the
    ``search`` folders, in order."""
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
    for folder in search:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(
        f"no classifier checkpoint {name} in {' or '.join(str(f) for f in search) or 'any folder'}; pass "
        f"--model PATH. To get one: fetch the original VirNucPro models (python download_data.py "
        f"--original-models, then --model {length}_model_esm2_3b.pth), or build a FastESM2 model (python "
        f"build_model.py --chunk-size {length}, or train one with train.py)")


def check_length(length: int) -> None:
    """Refuse a chunk LENGTH the language models cannot embed, before any work."""
    if length > MAX_CHUNK_LENGTH:
        raise InputError(f"LENGTH {length}: chunks longer than {MAX_CHUNK_LENGTH} bp cannot be embedded "
                         f"(FastESM2 sees at most {MAX_CHUNK_LENGTH // 3} residues of a frame, and a chunk's DNA "
                         "is embedded whole); use 300 or 500")


def prepare_outdir(outdir: Path) -> bool:
    """Create OUTDIR, or say why it cannot be used; True when this call created it."""
    if outdir.suffix == ".pth" and not outdir.exists():
        raise InputError(f"{outdir}: the third argument is OUTDIR (a directory); pass a checkpoint with --model")
    created = not outdir.exists()
    require_writable_dir(outdir, "OUTDIR")
    return created


def output_stem(source: InputSource) -> str:
    """The name the outputs are called by: the input's stem; ``stdin`` for ``-`` and unnamed pipes (``<(...)``)."""
    if source.is_stdin or re.fullmatch(r"/(dev|proc/[^/]+)/fd/[0-9]+|/dev/stdin", str(source.path)):
        return "stdin"
    return outputs.input_stem(source.path)


def run_models(options: ModelOptions, checkpoint: LoadedCheckpoint) -> dict[str, ModelChoice]:
    """``dna``/``protein`` -> :class:`~virnucpro.trust.ModelChoice`: the options, else the checkpoint's
    models when a file may choose them (default hub models, plain ESM-2s), else the defaults."""
    from .trust import choose_model

    meta, where = checkpoint.meta, str(checkpoint.path)
    return {"dna": choose_model("dna", options.dnabert_model, meta.get("dna_model"), DNABERT_S_MODEL, where),
            "protein": choose_model("protein", options.esm_model, meta.get("protein_model"), FASTESM_MODEL, where)}


def model_revisions(options: ModelOptions, checkpoint: LoadedCheckpoint, models: dict[str, ModelChoice],
                    strict: bool) -> dict[str, str]:
    """The two models' resolved revisions, checked against the checkpoint's (``strict``: refused).

    A hub model the checkpoint records a commit for is loaded at that commit (code and weights),
    unless ``--esm-revision`` / ``--dnabert-revision`` say otherwise.
    """
    from .provenance import check_against_checkpoint, checkpoint_pin, resolve_model_revision

    meta = checkpoint.meta
    given = {"dna": options.dnabert_revision, "protein": options.esm_revision}
    revisions = {kind: resolve_model_revision(choice.location, given[kind] or checkpoint_pin(meta, kind, choice.location),
                                              kind="DNA" if kind == "dna" else kind)
                 for kind, choice in models.items()}
    check_against_checkpoint(checkpoint.path, meta, {kind: (choice.location, revisions[kind])
                                                     for kind, choice in models.items()}, strict)
    return revisions


def run_settings(request: PredictionRequest, checkpoint: LoadedCheckpoint, device_type: str,
                 revisions: dict[str, str], models: dict[str, ModelChoice], options: ModelOptions) -> dict:
    """Everything that determines the output bytes, but the input's hash (the shard index has it).

    ``revisions`` (``dna``/``protein`` -> resolved revision) identify the language-model
    weights, so a resume with other weights at the same path is refused.
    """
    from .runstate import MANIFEST_VERSION

    return {
        "manifest_version": MANIFEST_VERSION,
        "chunk_size": request.length,
        "checkpoint_sha256": checkpoint.sha256,
        "esm_model": models["protein"].location,
        "dnabert_model": models["dna"].location,
        "esm_model_revision": revisions["protein"],
        "dnabert_model_revision": revisions["dna"],
        "device_type": device_type,
        "protein_precision": options.protein_precision,
        "dna_precision": options.dna_precision,
        "compile": options.compile,
        "batch_tokens": options.batch_tokens,
        "shard_size": request.shard_size,
        "keep_features": request.keep_features,
    }


def _predict(request: PredictionRequest) -> int:
    """Rank 0 opens the run (alone, under the OUTDIR lock), every rank scores its share, rank 0 finalises."""
    from .assemble import finalise

    device = distributed.together(lambda: distributed.rank_device(request.models.device))
    with contextlib.ExitStack() as held:  # on rank 0: the OUTDIR lock (and the input pass), until the job ends
        plan = distributed.on_main(lambda: open_the_run(request, device, held))
        if plan.finished:
            log.info("%s is complete already (use --force to recompute)", request.outdir)
            return EXIT_OK
        feed = shard_feed(plan)
        if distributed.world_size() > 1 and plan.index is not None:
            log.info("%d of %d pending shard(s) for this rank", len(distributed.my_share(plan.pending)),
                     len(plan.pending))
        # The models' first use: one process at a time writes a shared Hugging Face cache.  A rank loads
        # them once it owns a pending shard (while the input pass goes on), never when it has none.
        scorer = distributed.together(lambda: load_run_scorer(request, plan, device) if feed.wait_for_work()
                                      else None, turns=True)
        distributed.together(lambda: score_shards(request, plan, scorer, feed))
        if distributed.world_size() > 1 and plan.index is None:
            log.info("%d of %d pending shard(s) were this rank's", feed.taken, feed.pending_total)

        def close() -> None:
            index = feed.complete_index()  # the input pass has ended: every record checked, its hash recorded
            with disk_full_says(request.outdir, "the final outputs"):
                finalise(plan.run, index)
            log.info("results in %s", request.outdir)

        distributed.on_main(close)
    return EXIT_OK


def shard_feed(plan: RunPlan) -> ShardFeed:
    """This rank's pending shards: its round-robin share of a complete index, or of the shards as published."""
    from .indexstream import IndexFollower, ListedShards

    if plan.index_log is None:
        assert plan.index is not None
        return ListedShards(plan.index, distributed.my_share(plan.pending))
    return IndexFollower(plan.index_log, plan.work, distributed.rank(), distributed.world_size(),
                         producer=plan.index_pass, timeout_s=distributed.timeout().total_seconds())


def open_the_run(request: PredictionRequest, device: torch.device, held: contextlib.ExitStack) -> RunPlan:
    """Input checks, OUTDIR lock, manifest, --force, and the validation pass: once, on rank 0.

    The pass is one whole pass before anything is scored when an earlier launch's pass ended,
    else it is started in a child process that publishes the shards as it lays them out.  The
    lock and the pass join ``held``, so they last until the whole job (every rank) is done.
    """
    from .runlock import RunLock
    from .shardindex import input_source

    check_length(request.length)
    source = input_source(request.input)
    outdir = request.outdir
    created = prepare_outdir(outdir)
    run = RunDir(outdir, output_stem(source), request.length)
    if not run.work.path.exists():

        def remove_on_failure(kind: type | None, *_: object) -> bool:  # runs after the lock is released
            if kind is not None:
                remove_if_unused(run, remove_outdir=created)
            return False  # the error goes on

        held.push(remove_on_failure)
    held.enter_context(RunLock(outdir))
    force = request.force and distributed.first_launch()
    if request.force and not force:
        log.info("--force applies to the first launch of a job only (%s): resuming", distributed.restart_note())
    return _open_locked(request, run, source, device, force, held)


def remove_if_unused(run: RunDir, remove_outdir: bool) -> None:
    """After a failed run: remove the work directory it made if no shard was finished, and OUTDIR if empty."""
    if run.work.done_markers():
        return  # a rerun resumes from these
    shutil.rmtree(run.work.path, ignore_errors=True)
    if remove_outdir:
        with contextlib.suppress(OSError):
            run.outdir.rmdir()  # not empty: someone else's files


def _open_locked(request: PredictionRequest, run: RunDir, source: InputSource, device: torch.device,
                 force: bool, held: contextlib.ExitStack) -> RunPlan:
    from .indexstream import IndexPass
    from .runstate import begin_run, check_run, input_pass_recorded, pending_shards, record_index
    from .scoring import load_classifier
    from .shardindex import build_index, load_index

    path = find_checkpoint(request.model, request.length, request.checkpoint_dirs)
    checkpoint = load_classifier(path, request.length)  # a wrong checkpoint is refused before the input is read
    models = run_models(request.models, checkpoint)
    revisions = model_revisions(request.models, checkpoint, models, request.strict_models)
    options = request.models.resolved_for(device.type)
    settings = run_settings(request, checkpoint, device.type, revisions, models, options)
    index_says = functools.partial(disk_full_says, request.outdir, "the shard index (or a piped input's spool)")

    with index_says():
        previous = check_run(run, settings, force, protected=run_inputs(source, path, models))
        work = run.work.path
        if input_pass_recorded(previous):
            # An earlier launch read the whole input: its saved index, else (a stream, a touched file) one
            # whole pass whose hash must be the recorded one before anything is scored.
            index = load_index(work, source, request.length, request.shard_size)
            index = index or build_index(source, work, request.length, request.shard_size)
            finished = record_index(run, settings, previous, index)
            return RunPlan(run, checkpoint, index, pending_shards(work, index), finished, revisions, models,
                           options)
        begin_run(run, settings, previous)
        # previous: a launch killed during its pass, whose index log says which finished shards may be kept
        index_pass = IndexPass(source, work, request.length, request.shard_size, outdir=request.outdir,
                               resume=previous is not None, guard=index_says, log_level=log.getEffectiveLevel(),
                               log_prefix=distributed.log_prefix())
        held.callback(index_pass.stop)
        index_pass.start()
    return RunPlan(run, checkpoint, None, [], False, revisions, models, options, index_log=index_pass.log,
                   index_pass=index_pass)


def run_inputs(source: InputSource, checkpoint: Path, models: dict[str, ModelChoice]) -> list[tuple[str, Path]]:
    """The files the run reads (input, checkpoint, local models): none may lie among the files it writes."""
    named = [("input", source.path)] if not source.is_stdin else []
    named.append(("checkpoint", checkpoint))
    for what, kind in (("protein model", "protein"), ("DNA model", "dna")):
        if Path(models[kind].location).exists():
            named.append((what, Path(models[kind].location)))
    return named


def load_run_scorer(request: PredictionRequest, plan: RunPlan, device: torch.device) -> Scorer:
    """The classifier and both language models (at the revisions rank 0 resolved), in this process."""
    from .runstate import record_esm_loader
    from .scoring import load_scorer

    options = plan.options
    scorer = load_scorer(plan.checkpoint, device, dnabert_model=plan.models["dna"].location,
                         esm_model=plan.models["protein"].location, protein_precision=options.protein_precision,
                         dna_precision=options.dna_precision, compile_layers=options.compile,
                         revisions=plan.revisions, batch_tokens=int(options.batch_tokens or 0),
                         progress=request.progress and distributed.is_main(), esm_loader=options.esm_loader,
                         trust_esm_code=plan.models["protein"].trust_remote_code)
    if distributed.is_main():
        record_esm_loader(plan.work, scorer.protein.loader)
    return scorer


class _Failed:
    """An error of the prefetch thread, handed to the scoring loop."""

    def __init__(self, error: BaseException):
        self.error = error


_NO_MORE = object()


def score_shards(request: PredictionRequest, plan: RunPlan, scorer: Scorer | None,
                 shards: Sequence[int] | ShardFeed) -> None:
    """Score the given shards of the plan (a list, or a feed publishing them while the input pass runs),
    writing each one's files and then its ``done`` marker."""
    from .indexstream import ListedShards
    from .results import write_shard
    from .scoring import check_finite
    from .shardindex import ShardReader
    from .shards import preprocess_shard

    if scorer is None:
        return
    if isinstance(shards, Sequence):
        assert plan.index is not None
        shards = ListedShards(plan.index, shards)
    feed = shards
    features_dir = plan.run.features_dir if request.keep_features else None
    meta = scorer.meta

    def write(prepared: Any, features: Any) -> None:
        shard = prepared.shard
        probabilities = scorer.probabilities(features)
        check_finite(probabilities, shard)
        with disk_full_says(plan.work, f"shard {shard.index}"):
            write_shard(plan.work, shard, probabilities, features, features_dir, meta)
        log.info("shard %d: %d sequences, %d chunks, %d frames scored", shard.index, len(shard.sequences),
                 shard.chunk_count, len(shard.frame_ids))

    # Three stages overlap: the prefetch thread waits for, reads, frames and tokenises shard k+1
    # while this thread embeds shard k and the writer thread scores and writes shard k-1.  The
    # prefetch thread is one shard ahead at most (``ahead``); the reader is its own.
    ready: queue.Queue = queue.Queue()
    ahead, stop = threading.Semaphore(1), threading.Event()

    same_threads = torch_threads_of_this_thread()

    def prefetch() -> None:
        try:
            same_threads()
            with contextlib.ExitStack() as stack:
                reader = None
                for k in feed.shards(stop):
                    ahead.acquire()
                    if stop.is_set():
                        return
                    if reader is None:
                        reader = stack.enter_context(ShardReader(feed.index, plan.work, feed.data_paths))
                    ready.put(scorer.prepare(preprocess_shard(k, reader.read(k), request.length)))
            ready.put(_NO_MORE)
        except BaseException as exc:  # noqa: BLE001 - raised again by the scoring loop
            ready.put(_Failed(exc))

    reading = threading.Thread(target=prefetch, name="shard-prefetch", daemon=True)
    with ThreadPoolExecutor(max_workers=1, initializer=same_threads) as writer:
        reading.start()
        written = None
        try:
            while (prepared := ready.get()) is not _NO_MORE:
                if isinstance(prepared, _Failed):
                    raise prepared.error
                ahead.release()
                features = scorer.features(prepared)
                if written is not None:
                    written.result()  # one shard in the writer at a time; its errors surface here
                written = writer.submit(write, prepared, features)
            if written is not None:
                written.result()
        finally:
            stop.set()
            ahead.release()
            reading.join()


def torch_threads_of_this_thread() -> Callable[[], None]:
    """What a worker thread calls first to run torch with this thread's thread count.

    A new thread's first CPU matmul otherwise runs with OpenMP's default count (the logical
    CPUs) rather than torch's (``torch.set_num_threads``, by default the physical cores), and
    on some CPUs that changes the last bits of the classifier's scores: a shard scored first
    by the writer thread would differ from the same shard scored later, or on a resume.
    """
    import torch

    count = torch.get_num_threads()
    return lambda: torch.set_num_threads(count)


@contextlib.contextmanager
def disk_full_says(where: Path, what: str) -> Iterator[None]:
    """Turn a full disk (or quota) into one line naming what was being written."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        raise DiskFullError(f"{where}: no space left on the device while writing {what} "
                            f"({exc.strerror}); free some space and rerun the same command to resume") from None
