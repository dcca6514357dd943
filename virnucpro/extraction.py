"""Feature files made with the language models: DNABERT-S, protein, and the merge of the two.

The original ``units.py`` functions (``extract_DNABERT_S``, ``extract_esm``, ``merge_data``)
with this project's additions: batched embedding, the model identity (name and resolved
revision) every file records, and reuse of an existing output only when it holds features of
the same model at the same revision for exactly the same ids, intact (see
:mod:`virnucpro.features`, which owns the formats).  A merged file records the provenance of
the feature files it was made from, never that of the model of the run.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from .defaults import (DEFAULT_BATCH_TOKENS, DNABERT_S_MODEL, FASTESM_MODEL, OTHERS_CLASS, TRUNCATION_SEQ_LENGTH,
                       VIRUS_CLASS)
from .embed import embed_dna, embed_proteins
from .errors import FeatureFileError
from .fasta import read_fasta
from .features import (DNA_IDS_KEY, DNA_WHAT, MODEL_KEYS, PROTEIN_IDS_KEY, PROTEIN_WHAT, UNRECORDED_REVISION,
                       feature_object, load_features, merged_object)
from .files import atomic_torch_save
from .models import load_dnabert_model, load_protein_model, model_name_of, wrap_loaded_model
from .provenance import LOADER_KEY, LOADER_KEYS, REVISION_KEYS, resolve_model_revision, revision_of_loaded

log = logging.getLogger("virnucpro")


def _fasta_ids_and_seqs(path: str | os.PathLike, alphabet: str) -> tuple[list[str], list[str]]:
    ids, seqs = [], []
    for record in read_fasta(path, alphabet=alphabet, allow_empty=True):
        ids.append(record.id)
        seqs.append(record.seq)
    return ids, seqs


def _reusable(out_file: str | os.PathLike | None, id_key: str, ids: list[str], model_name: str,
              revision: str | None) -> torch.Tensor | None:
    """Return the data of ``out_file`` if it holds features of ``model_name`` at ``revision`` for exactly ``ids``."""
    if out_file is None or not Path(out_file).is_file():
        return None
    try:
        stored_ids, data, obj = load_features(out_file, id_key, "feature file")
    except FeatureFileError as exc:  # unreadable, malformed or damaged: one warning naming it
        log.warning("%s; it is made again", exc)
        return None
    if obj.get("model") != model_name or stored_ids != ids or not torch.isfinite(data).all():
        log.info("recomputing %s: made by another model or for other sequences", out_file)
        return None
    if obj.get("model_revision") != revision:
        log.info("recomputing %s: made by another revision of %s (%s, now %s)", out_file, model_name,
                 obj.get("model_revision") or "unrecorded", revision)
        return None
    return data


def _model_identity(model_loaded: bool, model: Any, location: str, revision: str | None,
                    kind: str) -> tuple[str, str | None]:
    """The (name, resolved revision) that feature files record for the model about to be used."""
    if model_loaded:
        return model_name_of(model, location), revision_of_loaded(model, location)
    return str(location), resolve_model_revision(location, revision, kind=kind)


def extract_DNABERT_S(input_file: str | os.PathLike, out_file: str | os.PathLike | None,
                      model_loaded: bool = False, tokenizer: Any = None, model: Any = None, *,
                      model_location: str = DNABERT_S_MODEL, device: str | torch.device | None = "auto",
                      batch_tokens: int | None = DEFAULT_BATCH_TOKENS, progress: bool = True,
                      model_revision: str | None = None, precision: str | None = None) -> tuple[list[str], torch.Tensor]:
    """Embed every sequence of a nucleotide FASTA with DNABERT-S; save and return ``(ids, data)``.

    With ``model_loaded=True`` the given ``model``/``tokenizer`` are used as they are
    (on the device they sit on); ``model_revision`` pins a hub revision otherwise.
    ``out_file`` is written as ``{'nucleotide': ids, 'data': tensor(N, 768), 'model': ...,
    'model_revision': ..., ...}`` (:func:`virnucpro.features.feature_object`); an existing one is
    reused only when it holds features of the same model at the same revision for exactly these ids.
    """
    ids, seqs = _fasta_ids_and_seqs(input_file, "dna")
    name, revision = _model_identity(model_loaded, model, model_location, model_revision, "DNA")
    reused = _reusable(out_file, DNA_IDS_KEY, ids, name, revision)
    if reused is not None:
        return ids, reused
    if model_loaded:
        if model is None or tokenizer is None:
            raise ValueError("model_loaded=True needs both model and tokenizer")
        loaded = wrap_loaded_model(model, tokenizer, model_location)
    else:
        loaded = load_dnabert_model(model_location, device, revision=model_revision, precision=precision)
    data = embed_dna(seqs, loaded, batch_tokens=batch_tokens, progress=progress)
    if out_file is not None:
        atomic_torch_save(feature_object(DNA_IDS_KEY, ids, data, model=loaded.name, revision=loaded.revision,
                                         loader=loaded.loader), out_file)
    return ids, data


def extract_esm(fasta_file: str | os.PathLike, model_location: str = FASTESM_MODEL,
                truncation_seq_length: int = TRUNCATION_SEQ_LENGTH, toks_per_batch: int = DEFAULT_BATCH_TOKENS,
                out_file: str | os.PathLike | None = None, model_loaded: bool = False, model: Any = None,
                alphabet: Any = None, *, device: str | torch.device | None = "auto",
                fp16: bool | None = None, progress: bool = True,
                model_revision: str | None = None, precision: str | None = None,
                loader: str | None = None, trust_remote_code: bool = True) -> tuple[list[str], torch.Tensor]:
    """Embed every protein of a FASTA file with FastESM2 (or an ESM-2); save and return ``(proteins, data)``.

    ``alphabet`` is the tokenizer when ``model_loaded`` (the original passed the ESM
    alphabet there); when it is None, ``model.tokenizer`` is used.  The model is used as
    passed, never reloaded.  An existing ``out_file`` is reused only when it holds
    features of the same model at the same revision for exactly the same ids (``model_revision``
    pins a hub revision).  ``data`` is float32 (N, D).  ``trust_remote_code=False`` runs no code of
    the model (:mod:`virnucpro.trust`).
    """
    ids, seqs = _fasta_ids_and_seqs(fasta_file, "protein")
    name, revision = _model_identity(model_loaded, model, model_location, model_revision, "protein")
    reused = _reusable(out_file, PROTEIN_IDS_KEY, ids, name, revision)
    if reused is not None:
        return ids, reused
    if model_loaded:
        tokenizer = alphabet if alphabet is not None else getattr(model, "tokenizer", None)
        if model is None or tokenizer is None:
            raise ValueError("model_loaded=True needs a model and a tokenizer (alphabet or model.tokenizer)")
        loaded = wrap_loaded_model(model, tokenizer, name)
    else:
        loaded = load_protein_model(model_location, device, fp16, revision=model_revision, precision=precision,
                                    loader=loader, trust_remote_code=trust_remote_code)
    log.info("read %s with %d sequences", fasta_file, len(ids))
    data = embed_proteins(seqs, loaded, truncation_seq_length=truncation_seq_length,
                          batch_tokens=toks_per_batch, ids=ids, progress=progress)
    if out_file is not None:
        atomic_torch_save(feature_object(PROTEIN_IDS_KEY, ids, data, model=loaded.name, revision=loaded.revision,
                                         loader=loaded.loader), out_file)
    return ids, data


def merge_data(DNABERT_S_data: str | os.PathLike | dict, ESM_data: str | os.PathLike | dict,
               merged_file: str | os.PathLike | None, data_type: str | None = None, *,
               dna_model: str | None = None, protein_model: str | None = None) -> dict[str, Any]:
    """Concatenate DNA and protein vectors of the ids present in both; save and return the dict.

    Output: ``{'ids', 'data': tensor(N, dna_dim + protein_dim), 'dna_dim', 'protein_dim'}``
    plus ``'labels': [1]`` for ``viral`` or ``[0]`` for ``host``, and the provenance the
    feature files record: each part's model, revision and loader.  ``dna_model`` /
    ``protein_model`` name the model of a file that records none (an original-pipeline
    file; its revision is then :data:`~virnucpro.features.UNRECORDED_REVISION`); naming
    another model than the one a file records is a FeatureFileError.  ``ids`` are exactly
    the rows kept, in DNA-file order.
    """
    if data_type not in (None, "viral", "host"):
        raise ValueError(f"data_type must be None, 'viral' or 'host', got {data_type!r}")
    dna_where = DNABERT_S_data if not isinstance(DNABERT_S_data, dict) else "<DNA features>"
    protein_where = ESM_data if not isinstance(ESM_data, dict) else "<protein features>"
    dna_ids, dna, dna_obj = load_features(DNABERT_S_data, DNA_IDS_KEY, DNA_WHAT)
    protein_ids, protein, protein_obj = load_features(ESM_data, PROTEIN_IDS_KEY, PROTEIN_WHAT)
    provenance = {**part_provenance("dna", dna_obj, dna_model, dna_where),
                  **part_provenance("protein", protein_obj, protein_model, protein_where)}
    protein_row = {pid: row for row, pid in enumerate(protein_ids)}
    keep = [(row, protein_row[i]) for row, i in enumerate(dna_ids) if i in protein_row]
    missing = len(dna_ids) - len(keep)
    where = f"{dna_where} + {protein_where}"
    if not keep:
        raise FeatureFileError(f"{where}: no id is present in both feature files "
                               f"({len(dna_ids)} DNA ids, {len(protein_ids)} protein ids)")
    if missing:
        log.warning("%s: %d of %d DNA ids have no protein vector and are left out", where, missing, len(dna_ids))
    dna_rows = torch.tensor([r for r, _ in keep])
    protein_rows = torch.tensor([p for _, p in keep])
    names = {key: provenance.pop(key) for key in MODEL_KEYS.values() if key in provenance}
    merged = merged_object([dna_ids[r] for r, _ in keep], torch.cat((dna[dna_rows], protein[protein_rows]), dim=1),
                           int(dna.shape[1]), int(protein.shape[1]),
                           labels=None if data_type is None else [VIRUS_CLASS if data_type == "viral" else OTHERS_CLASS],
                           revisions=provenance, **names)
    if merged_file is not None:
        atomic_torch_save(merged, merged_file)
    return merged


def part_provenance(kind: str, obj: dict, named: str | None, where: str | os.PathLike) -> dict[str, str]:
    """The merged-file keys of one part (``dna``/``protein``): its model, revision and loader as its file
    records them; ``named`` stands for the model of a file that records none (revision unrecorded)."""
    recorded = obj.get("model")
    if recorded is not None and named is not None and str(recorded) != str(named):
        raise FeatureFileError(f"{where}: the {'DNA' if kind == 'dna' else kind} features were made by "
                               f"'{recorded}', not '{named}'")
    keys: dict[str, str] = {}
    model = recorded if recorded is not None else named
    if model is not None:
        keys[MODEL_KEYS[kind]] = str(model)
    if obj.get("model_revision"):
        keys[REVISION_KEYS[kind]] = str(obj["model_revision"])
    elif recorded is None and named is not None:
        keys[REVISION_KEYS[kind]] = UNRECORDED_REVISION
    if obj.get(LOADER_KEY):  # information: how the file's model was loaded
        keys[LOADER_KEYS[kind]] = str(obj[LOADER_KEY])
    return keys
