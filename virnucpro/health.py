"""The health check: both language models loaded as a run loads them, one frame embedded and scored.

What a user runs after installing (``python check_models.py``), and what a GPU session
runs first: it says which versions, device, models, revisions, loaders and widths a run
would get, or the one-line reason it would fail.  :func:`run_model_check` takes one frozen
:class:`ModelCheckRequest` (built by ``check_models.py``, its model options as prediction's).
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path

from .defaults import DNABERT_S_MODEL, FASTESM_MODEL
from .errors import EXIT_OK, CheckpointError
from .options import ModelOptions

#: The frame the check embeds: a 300-bp chunk whose first forward frame has no stop codon.
CHECK_DNA = ("ATGGCTAGCAAAGGAGAAGAACTTTTCACTGGAGTTGTCCCAATTCTTGTTGAATTAGATGGTGATGTTAATGGGCACAAATTTTCTGTC"
             "AGTGGAGAGGGTGAAGGTGATGCAACATACGGAAAACTTACCCTTAAATTTATTTGCACTACTGGAAAACTACCTGTTCCATGGCCAACA"
             "CTTGTCACTACTTTCTCTTATGGTGTTCAATGCTTTTCAAGATACCCAGATCATATGAAACAGCATGACTTTTTCAAGAGTGCCATGCCC"
             "GAAGGTTATGTACAGGAAAGAACTATATTTTTCAAAGAT")[:300]


@dataclass(frozen=True)
class ModelCheckRequest:
    """What to check: the models and how a run would load them (``None`` models: the defaults), and a classifier."""

    models: ModelOptions = field(default_factory=ModelOptions)
    checkpoint: Path | None = None


def environment_report() -> list[tuple[str, str]]:
    """Python, torch, transformers, CUDA and GPU, as (name, value) rows."""
    import torch
    import transformers

    from . import __version__

    cuda = torch.cuda.is_available()
    rows = [("virnucpro", __version__), ("python", platform.python_version()), ("torch", torch.__version__),
            ("transformers", transformers.__version__),
            ("cuda", f"{torch.version.cuda} ({torch.cuda.device_count()} device(s))" if cuda else "not available")]
    if cuda:
        rows.append(("gpu", torch.cuda.get_device_name(0)))
    return rows


def check_models(request: ModelCheckRequest) -> list[tuple[str, str]]:
    """Load both models as a run would, embed :data:`CHECK_DNA`'s first frame, score it; the report rows.

    Raises the typed errors a run would (:class:`~virnucpro.errors.ModelLoadError`,
    :class:`~virnucpro.errors.CheckpointError`, ...).
    """
    import torch

    from .classifier import load_checkpoint
    from .embed import embed_dna, embed_proteins
    from .frames import translate_dna
    from .models import compile_encoder_layers, load_dnabert_model, load_protein_model, resolve_device
    from .provenance import short
    from .scoring import classifier_probabilities

    options = request.models
    device = resolve_device(options.device)
    rows = environment_report() + [("device", str(device))]
    dna = load_dnabert_model(options.dnabert_model or DNABERT_S_MODEL, device, revision=options.dnabert_revision,
                             precision=options.dna_precision)
    protein = load_protein_model(options.esm_model or FASTESM_MODEL, device, revision=options.esm_revision,
                                 precision=options.protein_precision, loader=options.esm_loader)
    for kind, loaded in (("DNA model", dna), ("protein model", protein)):
        rows.append((kind, f"{loaded.name} ({short(loaded.revision)}; {loaded.loader} code; {loaded.precision}; "
                           f"{loaded.hidden_size}-d)"))
        if options.compile:
            compile_encoder_layers(loaded)
    frame = next(p for p in translate_dna(CHECK_DNA) if "*" not in p)
    features = torch.cat((embed_dna([CHECK_DNA], dna, progress=False),
                          embed_proteins([frame], protein, progress=False)), dim=1)
    if not torch.isfinite(features).all():
        raise CheckpointError("the language models gave NaN/Inf for the check frame (try --fp32 / --dna-precision fp32)")
    rows.append(("features", f"{features.shape[1]} values per frame ({dna.hidden_size} DNA + "
                             f"{protein.hidden_size} protein)"))
    if options.compile:  # after the first calls: a compiler that failed there has fallen back to eager
        rows.append(("compile", ", ".join(f"{kind} {'compiled' if loaded.compiled else 'eager (compile failed)'}"
                                          for kind, loaded in (("DNA", dna), ("protein", protein)))))
    if request.checkpoint is not None:
        classifier, meta = load_checkpoint(request.checkpoint, device)
        if meta["input_dim"] != features.shape[1]:
            raise CheckpointError(f"{request.checkpoint}: the classifier takes {meta['input_dim']} values per frame "
                                  f"({meta['dna_dim']} + {meta['protein_dim']}), these models give "
                                  f"{features.shape[1]}; use the language models it was trained with "
                                  f"({meta['dna_model']}, {meta['protein_model']})")
        scores = classifier_probabilities(classifier, features, meta["num_class"], device)[0]
        best = int(scores.argmax())
        rows.append(("classifier", f"{request.checkpoint} ({meta['chunk_size']}-bp; check frame scored "
                                   f"{meta['label_map'].get(best, best)} {scores[best]:.3f})"))
    return rows


def run_model_check(request: ModelCheckRequest) -> int:
    """Run :func:`check_models` and print its report on stdout, one aligned row per line, then the verdict."""
    rows = check_models(request)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("OK: the models load and embed; prediction.py can run with these options")
    return EXIT_OK
