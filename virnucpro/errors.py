"""Typed errors: a :class:`VirNucProError` is a problem the user can fix.

The command-line wrapper (:func:`virnucpro.cli.run_cli`) prints such an error as one
line and exits with :data:`virnucpro.cli.EXIT_USAGE`; anything else is a bug.
"""
from __future__ import annotations


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
