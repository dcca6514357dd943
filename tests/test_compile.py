"""--compile across protein lengths: one graph for all lengths, the eager numbers."""
from __future__ import annotations

import random

import pytest
import torch

import fastesm_eras
import units
import virnucpro.models
from virnucpro.models import compile_encoder_layers

AMINO = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture(autouse=True)
def fresh_model_cache(monkeypatch):
    monkeypatch.setattr(virnucpro.models, "_MODEL_CACHE", {})


@pytest.mark.parametrize("era", ["a", "c"])
def test_forty_lengths_compile_a_few_graphs_and_give_the_eager_numbers(era, tmp_path):
    from torch._dynamo.utils import counters

    loaded = units.load_protein_model(str(fastesm_eras.build_fastesm_era(tmp_path / f"era_{era}", era)), "cpu")
    if not any(hasattr(m, "_seq_len_cached") for m in loaded.model.modules()):
        pytest.skip("this loader's rotary keeps no per-length state (transformers 5's native ESM)")
    rng = random.Random(5)
    proteins = ["".join(rng.choice(AMINO) for _ in range(length)) for length in range(20, 100, 2)]
    assert len({len(p) for p in proteins}) == 40
    eager = torch.cat([units.embed_proteins([p], loaded, progress=False) for p in proteins])
    torch._dynamo.reset()
    counters.clear()
    compile_encoder_layers(loaded, backend="eager")
    assert loaded.compiled
    compiled = torch.cat([units.embed_proteins([p], loaded, progress=False) for p in proteins])
    graphs = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    assert 0 < graphs <= 2 * 3, f"{graphs} graphs for 40 lengths (2 layers)"
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)
