"""Scoring a shard: the classifier and the two language models of a run, loaded once."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .classifier import LoadedCheckpoint, binary_columns, read_checkpoint
from .defaults import OTHERS_CLASS, VIRUS_CLASS
from .embed import embed_tokens
from .errors import CheckpointError, ModelLoadError, RunFailedError
from .models import LoadedModel, compile_encoder_layers, load_dnabert_model, load_protein_model
from .outputs import checkpoint_name
from .precision import tf32_scope
from .provenance import pinned_revision, short
from .shards import Shard
from .tokens import TokenSet, tokenize_dna, tokenize_proteins

MLP_BATCH_ROWS = 4096


@dataclass
class PreparedShard:
    """A shard with the token ids of its frames for both models (built off the device's critical path)."""

    shard: Shard
    dna: TokenSet
    protein: TokenSet


@dataclass
class Scorer:
    """The three models of a run, loaded once."""

    classifier: torch.nn.Module
    meta: dict
    dna: LoadedModel
    protein: LoadedModel
    device: torch.device
    batch_tokens: int
    progress: bool
    #: The classifier's output columns of (others, virus), from its label_map (see :func:`binary_columns`).
    columns: tuple[int, int] = (OTHERS_CLASS, VIRUS_CLASS)

    def prepare(self, shard: Shard) -> PreparedShard:
        """Tokenise a shard's frames for both models (CPU only: run it in the prefetch thread)."""
        return PreparedShard(shard, tokenize_dna(shard.nucleotides, self.dna.tokenizer),
                             tokenize_proteins(shard.proteins, self.protein.tokenizer, shard.frame_ids))

    def features(self, prepared: PreparedShard) -> torch.Tensor:
        """DNA and protein embeddings of a shard's frames, concatenated (N, dna_dim + protein_dim)."""
        dna = embed_tokens(prepared.dna, self.dna, batch_tokens=self.batch_tokens, length_buckets=False,
                           desc="DNA embeddings", progress=self.progress)
        protein = embed_tokens(prepared.protein, self.protein, batch_tokens=self.batch_tokens,
                               desc="protein embeddings", progress=self.progress)
        return torch.cat((dna, protein), dim=1)

    def probabilities(self, features: torch.Tensor) -> np.ndarray:
        """Softmax class probabilities, float32 (N, 2), in the columns of :data:`~virnucpro.defaults.LABEL_MAP`
        (others, virus) whatever the order of the classifier's outputs."""
        raw = classifier_probabilities(self.classifier, features, self.meta["num_class"], self.device)
        return raw if self.columns == (OTHERS_CLASS, VIRUS_CLASS) else np.ascontiguousarray(raw[:, list(self.columns)])


def classifier_probabilities(classifier: torch.nn.Module, features: torch.Tensor, num_class: int,
                             device: torch.device) -> np.ndarray:
    """Softmax class probabilities of a classifier (in eval mode), float32 (N, num_class), in batches.

    Each batch runs in plain float32 (TF32 off, see :mod:`virnucpro.precision`), even while
    another thread runs a ``--dna-precision tf32`` forward, so scores never depend on timing.
    """
    out = np.empty((features.shape[0], num_class), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, features.shape[0], MLP_BATCH_ROWS):
            batch = features[start:start + MLP_BATCH_ROWS].to(device)
            with tf32_scope(False):
                logits = classifier(batch)
            out[start:start + batch.shape[0]] = F.softmax(logits, dim=1).cpu().numpy()
    return out


def check_finite(probabilities: np.ndarray, shard: Shard) -> None:
    """Stop the run (:class:`RunFailedError`) when a score of a shard is NaN or infinite; nothing is written."""
    bad = ~np.isfinite(probabilities).all(axis=1)
    if bad.any():
        first = shard.frame_ids[int(np.flatnonzero(bad)[0])]
        raise RunFailedError(f"shard {shard.index}: {int(bad.sum())} frame(s) got a non-finite score "
                             f"(first {first}); nothing of this shard was written. The models or the "
                             "device give NaN/Inf: check the checkpoint and language models (try --fp32)")


def load_classifier(checkpoint_path: Path, length: int) -> LoadedCheckpoint:
    """The checkpoint, read once, refused before any heavy work when it is foreign, legacy or for another LENGTH."""
    checkpoint = read_checkpoint(checkpoint_path)
    meta = checkpoint.meta
    binary_columns(checkpoint_path, meta)  # a checkpoint of other classes is refused here
    if meta["chunk_size"] != length:
        raise CheckpointError(
            f"{checkpoint_path}: model was trained on {meta['chunk_size']}-bp chunks but LENGTH is "
            f"{length}; use the {checkpoint_name(length)} model or LENGTH {meta['chunk_size']}")
    return checkpoint


def load_scorer(checkpoint: LoadedCheckpoint, device: torch.device, *,
                dnabert_model: str, esm_model: str, batch_tokens: int, progress: bool,
                protein_precision: str | None = None, dna_precision: str | None = None,
                compile_layers: bool = False, revisions: dict[str, str] | None = None,
                esm_loader: str | None = None, trust_esm_code: bool = True) -> Scorer:
    """Load the two language models and check that their widths fit the classifier.

    ``revisions`` (``dna``/``protein`` -> revision resolved by :mod:`virnucpro.provenance`)
    pin hub models to exactly the weights recorded in the run's manifest; ``esm_loader``: see
    :func:`virnucpro.models.load_protein_model`.
    """
    checkpoint_path, meta = checkpoint.path, checkpoint.meta
    revisions = revisions or {}
    pins = {kind: pinned_revision(location, revisions[kind]) if kind in revisions else None
            for kind, location in (("dna", dnabert_model), ("protein", esm_model))}
    dna = load_dnabert_model(dnabert_model, device, revision=pins["dna"], precision=dna_precision)
    protein = load_protein_model(esm_model, device, revision=pins["protein"], precision=protein_precision,
                                 loader=esm_loader, trust_remote_code=trust_esm_code)
    for kind, loaded in (("dna", dna), ("protein", protein)):
        if kind in revisions and loaded.revision != revisions[kind]:  # weights replaced since the start
            raise ModelLoadError(f"{loaded.name}: changed while this run started ({short(loaded.revision)}, "
                                 f"expected {short(revisions[kind])}); rerun the same command")
    if (dna.hidden_size, protein.hidden_size) != (meta["dna_dim"], meta["protein_dim"]):
        raise CheckpointError(
            f"{checkpoint_path}: model expects features {meta['dna_dim']} (DNA, {meta['dna_model']}) + "
            f"{meta['protein_dim']} (protein, {meta['protein_model']}) wide, but the language models "
            f"give {dna.hidden_size} + {protein.hidden_size}; use the language models it was trained with")
    if compile_layers:
        compile_encoder_layers(dna)
        compile_encoder_layers(protein)
    classifier = copy.deepcopy(checkpoint.classifier).to(device)  # the checkpoint's own stays on the CPU
    virus_col, others_col = binary_columns(checkpoint_path, meta)
    return Scorer(classifier, meta, dna, protein, device, batch_tokens, progress, (others_col, virus_col))
