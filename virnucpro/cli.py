"""Command-line plumbing shared by every script: parser, model options, logging, ``main``.

The exit codes are :mod:`virnucpro.errors`'s (:func:`~virnucpro.errors.exit_code_of`).  No torch here.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any, Callable, NoReturn, Sequence

from . import __version__
from .defaults import (CUDA_BATCH_TOKENS, CUDA_DNA_PRECISION, CUDA_PROTEIN_PRECISION, DEFAULT_BATCH_TOKENS,
                       DNA_PRECISIONS, DNABERT_S_MODEL, ESM_LOADERS, FASTESM_MODEL,
                       PROTEIN_PRECISIONS)
from .options import ModelOptions
# The exit codes are re-exported here for the scripts (cli.EXIT_OK, ...).
from .errors import EXIT_DATA_SOURCE, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED  # noqa: F401
from .errors import EXIT_USAGE, VirNucProError, exit_code_of
from .files import DISK_FULL_ERRNOS

log = logging.getLogger("virnucpro")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so that ``finally`` clean-ups run."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def catch_signals() -> None:
    """SIGTERM raises :class:`Terminated`, SIGINT ``KeyboardInterrupt`` (unless ignored); main thread only."""
    try:
        signal.signal(signal.SIGTERM, _raise_terminated)
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:
        pass  # not the main thread: keep the defaults
VERSION_TEXT = f"%(prog)s (VirNucPro-FastESM) {__version__}"


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults in --help, except for options whose default is worked out at run time (None)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


class CliArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit code 2) and the -q/-v/--version options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=VERSION_TEXT)
        self.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
        self.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def add_model_arguments(parser: argparse.ArgumentParser, checkpoint_models: bool = False) -> None:
    """The language-model options shared by the scripts that embed sequences.

    ``checkpoint_models``: the scripts that score with a classifier default to the models its
    checkpoint records (``None`` here; see :func:`virnucpro.trust.choose_model`).
    """
    group = parser.add_argument_group("language models")
    recorded = " (default: the model the checkpoint records, if it is a default model or a plain ESM-2)"
    group.add_argument("--esm-model", default=None if checkpoint_models else FASTESM_MODEL,
                       help="protein language model: FastESM2 or any ESM-2 model (e.g. "
                            "facebook/esm2_t36_3B_UR50D), as a hub id or local directory"
                            + (recorded if checkpoint_models else ""))
    group.add_argument("--esm-revision", default=None, metavar="REV",
                       help="hub branch, tag or commit of --esm-model (default: the latest, recorded as a commit)")
    group.add_argument("--esm-loader", choices=ESM_LOADERS, default="auto",
                       help="how to load the protein model: its own code, else (when that code does not work with "
                            "the installed transformers) its weights in transformers' own ESM, the same numbers "
                            "(auto); only its own code (remote); only transformers' ESM (native)")
    group.add_argument("--dnabert-model", default=None if checkpoint_models else DNABERT_S_MODEL,
                       help="DNA language model: hub id or local directory" + (recorded if checkpoint_models else ""))
    group.add_argument("--dnabert-revision", default=None, metavar="REV",
                       help="hub branch, tag or commit of --dnabert-model (default: the latest, recorded as a commit)")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--protein-precision", choices=PROTEIN_PRECISIONS, default=None,
                       help=f"protein model precision (default: fp32 on the CPU, {CUDA_PROTEIN_PRECISION} on CUDA)")
    group.add_argument("--fp32", dest="protein_precision", action="store_const", const="fp32",
                       help="same as --protein-precision fp32")
    group.add_argument("--dna-precision", choices=DNA_PRECISIONS, default=None,
                       help=f"DNA model precision; tf32 = fp32 with TF32 matmuls, fp16/bf16 under autocast "
                            f"(default: fp32 on the CPU, {CUDA_DNA_PRECISION} on CUDA)")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the encoder layers (dynamic shapes); falls back to eager on failure")
    group.add_argument("--batch-tokens", type=positive_int, default=None,
                       help=f"padded tokens per language-model batch (default: {DEFAULT_BATCH_TOKENS} on the CPU, "
                            f"{CUDA_BATCH_TOKENS} on CUDA; lower it if GPU memory is short)")


def model_options(args: argparse.Namespace) -> ModelOptions:
    """The options of :func:`add_model_arguments`, as the library takes them."""
    return ModelOptions(
        esm_model=None if args.esm_model is None else str(args.esm_model), esm_revision=args.esm_revision,
        esm_loader=args.esm_loader,
        dnabert_model=None if args.dnabert_model is None else str(args.dnabert_model),
        dnabert_revision=args.dnabert_revision, device=args.device, protein_precision=args.protein_precision,
        dna_precision=args.dna_precision, compile=bool(args.compile), batch_tokens=args.batch_tokens)


def positive_int(text: str) -> int:
    """argparse type: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive integer")
    return value


def number_type(kind: Callable[[str], Any], test: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """argparse type: ``kind(text)`` when ``test`` accepts it, else the error "'TEXT' is not WHAT"."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {what}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"'{text}' is not {what}")
        return value
    return parse


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Log to stderr: warnings only with ``quiet``, debug with ``verbose``, info otherwise."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr, force=True)
    for noisy in ("transformers", "huggingface_hub", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def run_cli(prog: str, body: Callable[[], int | None], interrupted_hint: str = "") -> int:
    """Run a script body: user errors give one line on stderr and exit code 2, others 1."""
    try:
        return int(body() or EXIT_OK)
    except VirNucProError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exit_code_of(exc)
    except KeyboardInterrupt as exc:
        return _interrupted(prog, exc, interrupted_hint)
    except Exception as exc:  # noqa: BLE001 - unexpected: keep the traceback for a bug report
        interrupt = _interrupt_behind(exc)
        if interrupt is not None:  # a signal raised inside code that wrapped it (e.g. an import)
            return _interrupted(prog, interrupt, interrupted_hint)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:  # no bug: one line, as RunFailedError
            where = f" while writing {exc.filename}" if exc.filename else ""
            print(f"{prog}: error: no space left on the device{where} ({exc.strerror}); free some space and "
                  "rerun", file=sys.stderr)
            return EXIT_FAILURE
        log.exception("%s: unexpected failure", prog)
        return EXIT_FAILURE


def _interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (or :class:`Terminated`) an exception was raised from, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _interrupted(prog: str, exc: BaseException, hint: str) -> int:
    print(f"{prog}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


def script_main(prog: str, parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int | None],
                argv: Sequence[str] | None, interrupted_hint: str = "") -> int:
    """The ``main(argv)`` of every script: parse, set up logging, run ``body(args)`` under :func:`run_cli`.

    SIGTERM and SIGINT give one line (``interrupted`` and ``interrupted_hint``) and exit
    codes 143 and 130, at any point, start-up included.
    """
    catch_signals()
    try:
        args = parser.parse_args(argv)
        setup_logging(args.quiet, args.verbose)
    except KeyboardInterrupt as exc:
        return _interrupted(prog, exc, interrupted_hint)
    return run_cli(prog, lambda: body(args), interrupted_hint)
