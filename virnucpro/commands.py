"""The ``virnucpro`` command (``pip install .``): one subcommand per flat script.

``virnucpro predict ARGS`` runs ``prediction.main(ARGS)``, the same ``main`` as
``python prediction.py ARGS``: same options, messages, outputs and exit codes.  The script
module is imported only when its command runs, so ``virnucpro --help`` imports no torch.
No torch here.
"""
from __future__ import annotations

import difflib
import importlib
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from . import __version__
from .cli import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, EXIT_USAGE, Terminated, catch_signals

PROG = "virnucpro"


@dataclass(frozen=True)
class Command:
    """A subcommand: the flat script module whose ``main`` it runs, and one line about it."""

    module: str
    summary: str


COMMANDS: dict[str, Command] = {
    "predict": Command("prediction", "score DNA sequences (FASTA/FASTQ) as viral or not"),
    "train": Command("train", "train the MLP classifier on merged feature files"),
    "features": Command("features_extract", "DNABERT-S + FastESM2 features of the training sequences"),
    "make-dataset": Command("make_train_dataset_300", "training sequences from RefSeq genomes (300 bp chunks)"),
    "make-dataset-500": Command("make_train_dataset_500", "the same with 500 bp chunks by default"),
    "evaluate": Command("evaluate", "score classifiers on labelled data and compare them"),
    "convert": Command("convert_checkpoint", "convert an original VirNucPro checkpoint, safely"),
    "download": Command("download_data", "download RefSeq training data, or the original models"),
    "build-model": Command("build_model", "build a FastESM2 model end to end and compare it with ESM2-3B"),
    "check-models": Command("check_models", "check that the language models load and work"),
    "plot": Command("drew_fig", "plot the virus score along sequences (prediction.png)"),
}


def help_text() -> str:
    """The text of ``virnucpro --help``."""
    width = max(map(len, COMMANDS))
    script_width = max(len(command.module) for command in COMMANDS.values()) + 3
    lines = [f"usage: {PROG} COMMAND [ARGS ...]",
             f"       {PROG} --version | --help",
             "",
             "VirNucPro-FastESM: identify viral DNA among short sequences. Each command runs one of the",
             f"scripts with the same arguments: `{PROG} predict ARGS` is `python prediction.py ARGS`.",
             f"`{PROG} COMMAND --help` shows a command's options.",
             "",
             "commands:"]
    lines += [f"  {name:<{width}}  {command.module + '.py':<{script_width}}  {command.summary}"
              for name, command in COMMANDS.items()]
    lines += ["", "Exit codes, as the scripts': 0 success, 1 failure, 2 bad usage or input,",
              "3 a remote data source failed, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM)."]
    return "\n".join(lines) + "\n"


def script_main(name: str) -> Callable[[Sequence[str] | None], int]:
    """The ``main`` of the script behind command ``name``, importing its module now."""
    return importlib.import_module(COMMANDS[name].module).main


def _usage_error(message: str) -> int:
    print(f"{PROG}: error: {message} (see --help)", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``virnucpro COMMAND [ARGS]``: runs the script's ``main(ARGS)`` and returns its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        return _usage_error(f"a command is required: {', '.join(COMMANDS)}")
    name, rest = args[0], args[1:]
    if name in ("-h", "--help"):
        sys.stdout.write(help_text())
        return EXIT_OK
    if name == "--version":
        print(f"{PROG} (VirNucPro-FastESM) {__version__}")
        return EXIT_OK
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        return _usage_error(f"unknown command '{name}'" + (f"; did you mean '{close[0]}'?" if close else
                                                             f"; commands: {', '.join(COMMANDS)}"))
    catch_signals()  # Ctrl-C or SIGTERM while the script loads: one line, as the scripts do
    try:
        entry = script_main(name)
    except KeyboardInterrupt as exc:
        print(f"{PROG} {name}: interrupted", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except ModuleNotFoundError as exc:
        if exc.name != COMMANDS[name].module:
            raise
        print(f"{PROG} {name}: error: the script module {exc.name} is not installed; "
              f"install the package (pip install .) or run {PROG} from the repository", file=sys.stderr)
        return EXIT_FAILURE
    return entry(rest)
