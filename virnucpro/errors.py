"""Typed errors and the exit code of each: a :class:`VirNucProError` is a problem the user can fix.

The command-line wrapper (:func:`virnucpro.cli.run_cli`) prints such an error as one
line and exits with :func:`exit_code_of` it; anything else is a bug (exit code 1, traceback).

Exit codes: 0 success; 1 unexpected failure (a bug: traceback kept), or a run that cannot
go on (:class:`RunFailedError`: disk full, non-finite scores; one line); 2 bad usage or bad
input (one line); 3 a remote data source failed (network, server); 130 interrupted
(SIGINT, Ctrl-C); 143 terminated (SIGTERM, e.g. a SLURM time limit).  No torch here.
"""
from __future__ import annotations

import signal

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_DATA_SOURCE = 0, 1, 2, 3
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM


class VirNucProError(Exception):
    """A problem the user can fix (bad input, wrong model, ...); the CLI exits with 2."""


class InputError(VirNucProError):
    """An input file or record is unusable."""


class FeatureFileError(VirNucProError):
    """A feature file is missing, malformed or inconsistent."""


class CheckpointError(VirNucProError):
    """A classifier checkpoint is missing, foreign, legacy or does not fit the features."""


class ModelLoadError(VirNucProError):
    """A language model could not be loaded."""


class DataSourceError(VirNucProError):
    """A remote data source (network, server) failed; the CLI exits with 3."""


class RunFailedError(VirNucProError):
    """The run cannot go on (non-finite scores, a full disk); the CLI prints one line and exits with 1."""


class DiskFullError(RunFailedError):
    """A file system filled up while writing; rerunning the same command resumes."""


def exit_code_of(error: BaseException) -> int:
    """The exit code of a run that ended with ``error``."""
    if isinstance(error, RunFailedError):
        return EXIT_FAILURE
    if isinstance(error, DataSourceError):
        return EXIT_DATA_SOURCE
    return EXIT_USAGE if isinstance(error, VirNucProError) else EXIT_FAILURE


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an error's message (at most ``limit`` characters), else its class name."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
