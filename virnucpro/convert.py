"""The conversion engine: ``convert_checkpoint.py``'s run, paths checked before the original file is read.

:func:`run_conversion` takes one frozen :class:`ConversionRequest` (built by the script from its
command line): SOURCE and TARGET are checked (:func:`check_paths`), then SOURCE is read without
running any code in it and written as a format-2 checkpoint (:mod:`virnucpro.legacy`).  No torch
at import (torch loads when the file is read).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .defaults import DNABERT_S_DIM, DNABERT_S_MODEL, ESM2_3B_MODEL
from .errors import EXIT_OK, CheckpointError, InputError
from .files import require_file, require_writable_dir, same_file

log = logging.getLogger("virnucpro.convert")


@dataclass(frozen=True)
class ConversionRequest:
    """What to convert, and the language models the original was trained with (see ``convert_checkpoint.py``)."""

    source: Path
    target: Path
    chunk_size: int
    protein_model: str = ESM2_3B_MODEL
    dna_model: str = DNABERT_S_MODEL
    dna_dim: int = DNABERT_S_DIM
    force: bool = False


def check_paths(source: Path, target: Path, force: bool) -> None:
    """InputError (one line) for every problem of SOURCE and TARGET that shows before SOURCE is read."""
    require_file(source, "model file", CheckpointError)
    if same_file(target, source):
        raise InputError(f"{target}: TARGET must differ from SOURCE")
    if target.is_dir():
        raise InputError(f"{target}: is a directory (TARGET needs a file name)")
    if target.exists() and not force:
        raise InputError(f"{target}: exists already (use --force to overwrite)")
    require_writable_dir(target.parent, "the folder of TARGET")


def run_conversion(request: ConversionRequest) -> int:
    """Read ``request.source`` safely and write ``request.target``."""
    check_paths(request.source, request.target, request.force)
    from .legacy import convert_legacy_checkpoint

    checkpoint = convert_legacy_checkpoint(request.source, request.target, chunk_size=request.chunk_size,
                                           protein_model=request.protein_model, dna_model=request.dna_model,
                                           dna_dim=request.dna_dim)
    log.info("wrote %s: input %d = DNA %d (%s) + protein %d (%s), %d-bp chunks", request.target,
             checkpoint["input_dim"], checkpoint["dna_dim"], checkpoint["dna_model"], checkpoint["protein_dim"],
             checkpoint["protein_model"], checkpoint["chunk_size"])
    return EXIT_OK
