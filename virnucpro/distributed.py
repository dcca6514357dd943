"""Running under ``torchrun``: the process group, ranks, shared errors, turn-taking.

``python script.py ...`` is a world of one rank: no process group is made and every
helper here is a no-op.  Under ``torchrun`` (``WORLD_SIZE`` > 1) :func:`launch` makes
the process group (``cpu:gloo,cuda:nccl`` when CUDA is available, ``gloo`` otherwise;
the small Python objects exchanged here always travel over gloo), prefixes every log
line with ``[rank r/w]`` and destroys the group at exit.

Errors reach every rank: :func:`on_main` runs a step on rank 0 and hands its result,
or its error, to all ranks; :func:`together` runs a step on every rank (or, with
turns, rank 0 first, then the first rank of every node, then the rest) and stops all
ranks when one failed.  Only rank 0 prints a user error; the other ranks stop quietly
with the same exit code, so a job never hangs on a rank that gave up.

Environment: ``VIRNUCPRO_DIST_TIMEOUT`` (seconds, default 6 hours) bounds every wait
for another rank, e.g. while rank 0 validates a large input alone.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, Sequence, Tuple, TypeVar

from .errors import VirNucProError, exit_code_of

if TYPE_CHECKING:
    import torch

log = logging.getLogger("virnucpro")

T = TypeVar("T")
TIMEOUT_ENV = "VIRNUCPRO_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 6 * 3600
PEER_FAILURE_GRACE_S = 2.0  # a rank stopping for another rank's error waits this long before exiting
RESTART_ENVS = ("TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT")  # torchrun restarts, SLURM requeues
# Turns of :func:`together` with ``turns=True``: rank 0 writes a shared cache first, then one
# rank per node fills a node-local cache, then every other rank only reads.
TURN_FIRST, TURN_NODE, TURN_REST = 0, 1, 2
# The exit race (why :func:`launch` imports ``torch._dynamo`` before it makes the process group; torch 2.13): a
# ``torch._dynamo`` imported while a group exists (transformers imports it when it loads a model) keeps
# references to that group, so ``destroy_process_group`` leaves gloo's worker threads running.  One of
# them then releases the last collective's tensors during interpreter exit, cannot take the GIL, and the
# rank dies of SIGABRT ("terminate called without an active exception") after its work is done: a
# finished job that torchrun reports as failed.  Imported first, the group is freed (its threads joined)
# by ``destroy_process_group``.  tests/test_distributed.py::test_process_group_threads_end_at_destroy.


class PeerFailure(Exception):
    """Another rank failed and reported it: this rank stops quietly with ``exit_code``."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(f"another rank failed (exit {exit_code})")
        self.exit_code = exit_code


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def world_size() -> int:
    """Number of ranks of the job (1 outside torchrun)."""
    return max(1, _env_int("WORLD_SIZE", 1))


def rank() -> int:
    """This process's global rank (0 outside torchrun)."""
    return _env_int("RANK", 0) if world_size() > 1 else 0


def local_rank() -> int:
    """This process's rank on its node: the index of its CUDA device."""
    return _env_int("LOCAL_RANK", 0) if world_size() > 1 else 0


def is_main() -> bool:
    """True on rank 0, the rank that opens and closes a run, prints errors and progress bars."""
    return rank() == 0


def _active() -> bool:
    if world_size() <= 1:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def first_launch() -> bool:
    """False when torchrun restarted the job or SLURM requeued it (the command line is replayed)."""
    return all(_env_int(name, 0) <= 0 for name in RESTART_ENVS)


def restart_note() -> str:
    """Which restart this launch is, for a log line ('' on a first launch)."""
    counts = [f"{name}={os.environ[name]}" for name in RESTART_ENVS if _env_int(name, 0) > 0]
    return ", ".join(counts)


def timeout() -> timedelta:
    """The process-group timeout: ``VIRNUCPRO_DIST_TIMEOUT`` seconds, else 6 hours."""
    return timedelta(seconds=max(1, _env_int(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))


def rank_device(requested: str) -> "torch.device":
    """The device of this rank: ``cuda:LOCAL_RANK`` for auto/cuda under torchrun, else ``requested``.

    ``CUDA_VISIBLE_DEVICES`` is never changed: LOCAL_RANK indexes the devices the
    scheduler made visible.
    """
    import torch

    from .models import resolve_device

    device = resolve_device(requested)
    if world_size() <= 1 or device.type != "cuda":
        return device
    spec = str(requested).strip().lower()
    if spec not in ("auto", "cuda"):
        raise VirNucProError(f"--device {requested}: under torchrun every rank uses cuda:LOCAL_RANK; "
                             "pass --device cuda (or auto), and choose GPUs with CUDA_VISIBLE_DEVICES")
    count = torch.cuda.device_count()
    if local_rank() >= count:
        raise VirNucProError(
            f"rank {rank()} has LOCAL_RANK {local_rank()} but only {count} CUDA device(s) are visible "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); start at most "
            f"{count} process(es) per node (torchrun --nproc-per-node=gpu)")
    return torch.device("cuda", local_rank())


def log_prefix() -> str:
    """What starts this rank's log lines: ``[rank r/w] `` under torchrun, else nothing."""
    return f"[rank {rank()}/{world_size()}] " if world_size() > 1 else ""


def _rank_log_prefix() -> None:
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(log_prefix() + "%(levelname)s: %(message)s"))


def launch(body: Callable[[], int | None]) -> int | None:
    """Run a script body, inside a process group when started by torchrun with several ranks."""
    if world_size() <= 1:
        return body()
    import torch
    import torch._dynamo  # noqa: F401 - before the process group: see 'The exit race' above
    import torch.distributed as dist

    _rank_log_prefix()
    cuda = torch.cuda.is_available()
    if cuda and local_rank() < torch.cuda.device_count():
        torch.cuda.set_device(local_rank())
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    dist.init_process_group(backend, timeout=timeout())
    log.debug("process group up: %s, %d ranks", backend, world_size())
    if not is_main():  # only rank 0 says "interrupted" when the job is stopped (SLURM, torchrun)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        return body()
    except PeerFailure as failure:
        if not is_main():  # let rank 0 print its line and be the failure torchrun reports first
            time.sleep(PEER_FAILURE_GRACE_S)
        return failure.exit_code
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (no-op outside torchrun)."""
    if _active():
        import torch.distributed as dist

        dist.barrier()


def broadcast(value: T | None = None) -> T:
    """Rank 0's ``value`` on every rank (any picklable Python object)."""
    if not _active():
        return value  # type: ignore[return-value]
    import torch.distributed as dist

    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def gather(value: T) -> list[T]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not _active():
        return [value]
    import torch.distributed as dist

    box: list[Any] = [None] * world_size()
    dist.all_gather_object(box, value)
    return box


Outcome = Tuple[int, bool, str, str]  # exit code, printed as one line?, error class path, message


def _outcome(error: BaseException | None) -> Outcome | None:
    """What the other ranks need to know of an error."""
    if error is None:
        return None
    kind = f"{type(error).__module__}:{type(error).__qualname__}"
    return exit_code_of(error), isinstance(error, VirNucProError), kind, str(error)


def rebuild_error(kind: str, message: str) -> VirNucProError:
    """The same user error here as in the process that raised it (its ``module:Class`` and message)."""
    import importlib

    module, _, name = kind.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
        if isinstance(cls, type) and issubclass(cls, VirNucProError):
            return cls(message)
    except (ImportError, AttributeError, TypeError):
        pass
    return VirNucProError(message)


def _stop_if_failed(outcomes: Sequence[Outcome | None], own: BaseException | None) -> None:
    """After an exchange of outcomes: raise on every rank when any rank failed.

    A bug keeps its traceback on the rank where it happened; rank 0 raises the first
    user error (its own first), which the CLI prints as one line; every other rank
    stops quietly with the exit code of the first failure.
    """
    failed = [(r, o) for r, o in enumerate(outcomes) if o is not None]
    if not failed:
        return
    if own is not None and not isinstance(own, VirNucProError):
        raise own
    first_rank, (code, printable, kind, message) = failed[0]
    if is_main():
        if own is not None:
            raise own
        if printable:
            raise rebuild_error(kind, message)
        log.error("rank %d failed unexpectedly (see its log above)", first_rank)
    raise PeerFailure(code)


def on_main(step: Callable[[], T]) -> T:
    """Run ``step`` on rank 0 only; every rank gets its result, or stops when it failed."""
    if not _active():
        return step()
    result: Any = None
    error: BaseException | None = None
    if is_main():
        try:
            result = step()
        except Exception as exc:  # noqa: BLE001 - handed to every rank, then raised again below
            error = exc
    outcome, result = broadcast((_outcome(error), result if error is None else None))
    _stop_if_failed([outcome], error)
    return result  # type: ignore[no-any-return]


def _turn() -> int:
    if is_main():
        return TURN_FIRST
    return TURN_NODE if local_rank() == 0 else TURN_REST


def together(step: Callable[[], T], *, turns: bool = False, run: bool = True) -> T | None:
    """Run ``step`` on every rank (where ``run``) and stop every rank when one failed.

    With ``turns`` the ranks take turns: rank 0 first, then the first rank of each
    node, then all others, so that a model download or a cache shared by every rank
    (or by the ranks of a node) is written by one process while no other reads it.
    """
    if not _active():
        return step() if run else None
    result: T | None = None
    mine = _turn() if turns else TURN_FIRST
    for turn in ((TURN_FIRST, TURN_NODE, TURN_REST) if turns else (TURN_FIRST,)):
        error: BaseException | None = None
        if run and turn == mine:
            try:
                result = step()
            except Exception as exc:  # noqa: BLE001 - shared with every rank below
                error = exc
        _stop_if_failed(gather(_outcome(error)), error)
    return result


def my_share(items: Sequence[T]) -> list[T]:
    """This rank's items of a list shared out round-robin (every item exactly once over the ranks)."""
    return list(items[rank()::world_size()])
