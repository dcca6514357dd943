"""Which model code may run: data never chooses code.

Loading a model with its own code (``trust_remote_code=True``) runs Python shipped with
it.  That happens only for the two default hub repos (:data:`DEFAULT_REMOTE_MODELS`) and
for a model the user named on the command line.  A model named only inside a checkpoint
or a feature file is used by default only when it is a default hub id or a plain ESM-2
(``facebook/esm2_*``, or a config with ``model_type: esm`` and no ``auto_map``), which loads
with ``trust_remote_code=False``; otherwise the user is told, in one line, to name it.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .defaults import DNABERT_S_MODEL, FASTESM_MODEL
from .errors import ModelLoadError

#: The hub repos whose own code may run without being named on the command line.
DEFAULT_REMOTE_MODELS = (FASTESM_MODEL, DNABERT_S_MODEL)
#: Meta's ESM-2 models on the hub: plain transformers ``EsmModel``s, no code of their own.
PLAIN_ESM2_HUB_ID = re.compile(r"^facebook/esm2_t\d+_\d+[MB]_UR50D$")
#: The command-line option that names each kind of model.
MODEL_OPTIONS = {"protein": "--esm-model", "dna": "--dnabert-model"}


@dataclass(frozen=True)
class ModelChoice:
    """The model a run loads, whether its own code may run, and who chose it."""

    location: str
    trust_remote_code: bool
    chosen_by: str  # "command line", "checkpoint" or "default"


def is_plain_esm2(location: str) -> bool:
    """A ``facebook/esm2_*`` hub id, or a local folder whose config.json (read as data) is ESM with no auto_map."""
    if PLAIN_ESM2_HUB_ID.match(location):
        return True
    config = Path(location) / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("model_type") == "esm" and not data.get("auto_map")


def choose_model(kind: str, named: str | None, recorded: str | None, default: str, where: str) -> ModelChoice:
    """The model of ``kind`` (``protein``/``dna``): the one named on the command line, else the one
    ``where`` (a checkpoint) records, else ``default``; refused when only a file names remote code."""
    if named:
        return ModelChoice(str(named), not is_plain_esm2(str(named)), "command line")
    if not recorded:
        return ModelChoice(default, True, "default")
    recorded = str(recorded)
    if recorded in DEFAULT_REMOTE_MODELS:
        return ModelChoice(recorded, True, "checkpoint")
    if is_plain_esm2(recorded):
        return ModelChoice(recorded, False, "checkpoint")
    raise ModelLoadError(
        f"{where}: records the {'DNA' if kind == 'dna' else kind} model '{recorded}', which is neither a default "
        f"model nor a plain ESM-2; loading it would run its code, which a file may not choose: name it with "
        f"{MODEL_OPTIONS[kind]} {recorded} (or pass another model)")
