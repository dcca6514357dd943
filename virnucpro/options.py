"""The language-model options of a run, as one frozen value (no torch).

Built once from the command line (:func:`virnucpro.cli.model_options`) or by a caller of the
library; the precisions and batch size left at ``None`` are resolved once per run, for its
device (:func:`resolved_for`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .defaults import CUDA_BATCH_TOKENS, CUDA_DNA_PRECISION, CUDA_PROTEIN_PRECISION, DEFAULT_BATCH_TOKENS


@dataclass(frozen=True)
class ModelOptions:
    """Which language models to load and how (``None``: the default, or the checkpoint's model)."""

    esm_model: str | None = None
    esm_revision: str | None = None
    esm_loader: str = "auto"
    dnabert_model: str | None = None
    dnabert_revision: str | None = None
    device: str = "auto"
    protein_precision: str | None = None
    dna_precision: str | None = None
    compile: bool = False
    batch_tokens: int | None = None

    def resolved_for(self, device_type: str) -> ModelOptions:
        """These options with the precisions and the batch size resolved for a device type (``cpu``, ``cuda``)."""
        return replace(self,
                       protein_precision=self.protein_precision or default_precision("protein", device_type),
                       dna_precision=self.dna_precision or default_precision("dna", device_type),
                       batch_tokens=self.batch_tokens or default_batch_tokens(device_type))


def default_precision(kind: str, device_type: str) -> str:
    """The precision a ``protein`` or ``dna`` model runs in when none is asked: fp32 on the CPU."""
    if device_type != "cuda":
        return "fp32"
    return CUDA_PROTEIN_PRECISION if kind == "protein" else CUDA_DNA_PRECISION


def default_batch_tokens(device_type: str) -> int:
    """Padded tokens per language-model batch when none is given."""
    return CUDA_BATCH_TOKENS if device_type == "cuda" else DEFAULT_BATCH_TOKENS
