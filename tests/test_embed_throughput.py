"""Precision, device loop, length buckets, duplicates and --compile of the embedding path."""
from __future__ import annotations

import dataclasses
import logging
import random
import threading

import numpy as np
import pytest
import torch

import units
import virnucpro.models
from virnucpro import cli, embed, models, tokens
from virnucpro.defaults import CUDA_DNA_PRECISION, CUDA_PROTEIN_PRECISION

AMINO = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture(scope="module")
def esm(esm_model_dir):
    return units.load_protein_model(str(esm_model_dir), "cpu")


@pytest.fixture(scope="module")
def dna(dnabert_model_dir):
    return units.load_dnabert_model(str(dnabert_model_dir), "cpu")


def proteins_of(count: int, seed: int, low: int = 5, high: int = 120) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(AMINO) for _ in range(rng.randint(low, high))) for _ in range(count)]


def dnas_of(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("ACGT") for _ in range(rng.randint(30, 300))) for _ in range(count)]


def relative_l2(got: torch.Tensor, reference: torch.Tensor) -> float:
    return float((got - reference).norm() / reference.norm())


# ---------------------------------------------------------------------------
# precision
# ---------------------------------------------------------------------------


def test_precision_defaults_and_choices():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert models.resolve_precision("protein", None, cpu) == models.resolve_precision("dna", None, cpu) == "fp32"
    assert models.resolve_precision("protein", None, cuda) == CUDA_PROTEIN_PRECISION
    assert models.resolve_precision("dna", None, cuda) == CUDA_DNA_PRECISION
    with pytest.raises(units.VirNucProError):
        models.resolve_precision("protein", "tf32", cuda)


def test_cli_precision_options():
    parser = cli.CliArgumentParser(prog="x")
    cli.add_model_arguments(parser)
    args = parser.parse_args([])
    assert (args.protein_precision, args.dna_precision, args.batch_tokens, args.compile) == (None, None, None, False)
    assert parser.parse_args(["--fp32"]).protein_precision == "fp32"
    args = parser.parse_args(["--protein-precision", "bf16", "--dna-precision", "tf32", "--compile"])
    assert (args.protein_precision, args.dna_precision, args.compile) == ("bf16", "tf32", True)
    with pytest.raises(SystemExit):
        parser.parse_args(["--dna-precision", "fp8"])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_dna_16_bit_needs_autocast_and_stays_close(dnabert_model_dir, dna, precision):
    """DNABERT-S's float32 ALiBi bias breaks plain 16-bit weights; autocast fixes it."""
    seqs = dnas_of(6, 3)
    reference = units.embed_dna(seqs, dna)
    low = models.load_dnabert_model(str(dnabert_model_dir), "cpu", precision=precision)
    assert low.dtype == models.PRECISION_DTYPES[precision] and low.autocast
    with pytest.raises(RuntimeError, match="dtype"):
        units.embed_dna(seqs, dataclasses.replace(low, autocast=False))
    got = units.embed_dna(seqs, low)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert relative_l2(got, reference) < 3e-2


def test_protein_bf16_stays_close(esm_model_dir, esm):
    proteins = proteins_of(8, 4)
    low = models.load_protein_model(str(esm_model_dir), "cpu", precision="bf16")
    assert low.dtype == torch.bfloat16 and low.precision == "bf16"
    assert relative_l2(units.embed_proteins(proteins, low), units.embed_proteins(proteins, esm)) < 3e-2


def test_legacy_fp16_flag_on_cpu_is_fp32(esm_model_dir):
    assert models.load_protein_model(str(esm_model_dir), "cpu", fp16=True).dtype == torch.float32


class FlagRecorder(torch.nn.Module):
    """A linear classifier that records the TF32 matmul flag at every forward."""

    def __init__(self, width: int):
        super().__init__()
        self.linear, self.seen = torch.nn.Linear(width, 2), []

    def forward(self, x):
        self.seen.append(torch.backends.cuda.matmul.allow_tf32)
        return self.linear(x)


def test_tf32_dna_forward_never_leaks_into_the_classifier_thread(dna):
    """While a tf32 DNA forward holds the flags on, the classifier in another thread runs with TF32 off."""
    from virnucpro import scoring

    tf32 = dataclasses.replace(dna, precision="tf32")
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    inside, classified, seen_inside = threading.Event(), threading.Event(), []

    def dna_forward():
        with models.precision_context(tf32):
            seen_inside.append(torch.backends.cuda.matmul.allow_tf32)
            inside.set()
            classified.wait(timeout=0.5)  # a long forward: the classifier starts meanwhile

    thread = threading.Thread(target=dna_forward)
    thread.start()
    assert inside.wait(timeout=10)
    classifier = FlagRecorder(8).eval()
    features = torch.randn(5, 8)
    got = scoring.classifier_probabilities(classifier, features, 2, torch.device("cpu"))
    classified.set()
    thread.join(timeout=10)
    assert seen_inside == [True]  # the DNA forward itself does run in TF32
    assert classifier.seen == [False]
    with torch.inference_mode():
        expected = torch.softmax(classifier.linear(features), dim=1).numpy()
    np.testing.assert_array_equal(got, expected)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


# ---------------------------------------------------------------------------
# tokens and the device loop
# ---------------------------------------------------------------------------


def test_protein_tokens_match_the_tokenizer(esm):
    proteins = ["MKV*", "mkv", "AXJ*B", "W" * 30]
    got = tokens.tokenize_proteins(proteins, esm.tokenizer)
    assert got.rows == 4 and len(got.lengths) == 3  # MKV* and mkv are one protein
    tok = esm.tokenizer
    for row, protein in enumerate(["MKV", "MKV", "AXXXB", "W" * 30]):
        u = got.inverse[row]
        expected = [tok.cls_token_id, *tok.convert_tokens_to_ids(list(protein)), tok.eos_token_id]
        assert got.tokens[got.offsets[u]:got.offsets[u + 1]].tolist() == expected
    packed = got.padded(np.array([2, 0]))
    assert packed.shape == (2, 32 + 2) and packed[1, 5:32].tolist() == [tok.pad_token_id] * 27
    assert packed[:, -2].tolist() == [32, 5] and packed[:, -1].tolist() == [30, 3]


def reference_embeddings(token_lists, loaded, pad_id, skip, budget):
    """Today's (before this change) padded batches: a Python loop per row, masks on the host."""
    out = torch.empty((len(token_lists), loaded.hidden_size))
    for batch in units.token_budget_batches([len(t) for t in token_lists], budget):
        width = max(len(token_lists[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        pool = torch.zeros((len(batch), width))
        for row, index in enumerate(batch):
            t = token_lists[index]
            ids[row, :len(t)] = torch.tensor(t)
            attention[row, :len(t)] = 1
            pool[row, skip:len(t) - skip] = 1.0
        with torch.inference_mode():
            hidden = embed._last_hidden_state(loaded.model(input_ids=ids, attention_mask=attention)).float()
        out[torch.tensor(batch)] = (hidden * pool.unsqueeze(-1)).sum(1) / pool.sum(1, keepdim=True)
    return out


@pytest.mark.parametrize("budget", [300, 4000])
def test_same_numbers_for_the_same_batches(esm, dna, budget):
    proteins = proteins_of(25, 6)
    tok = esm.tokenizer
    lists = [[tok.cls_token_id, *tok.convert_tokens_to_ids(list(p)), tok.eos_token_id] for p in proteins]
    expected = reference_embeddings(lists, esm, tok.pad_token_id, 1, budget)
    assert torch.equal(units.embed_proteins(proteins, esm, batch_tokens=budget), expected)
    seqs = dnas_of(15, 7)
    lists = dna.tokenizer(seqs)["input_ids"]
    expected = reference_embeddings(lists, dna, dna.tokenizer.pad_token_id, 0, budget)
    assert torch.equal(units.embed_dna(seqs, dna, batch_tokens=budget), expected)


def test_duplicates_are_embedded_once_with_identical_rows(esm, dna):
    unique = proteins_of(6, 8)
    rows = [unique[i] for i in (0, 1, 0, 2, 3, 1, 4, 5, 0)]
    calls = []
    hook = esm.model.register_forward_pre_hook(lambda m, a, k: calls.append(k["input_ids"].shape[0]),
                                               with_kwargs=True)
    try:
        got = units.embed_proteins(rows, esm, batch_tokens=1)  # one protein per batch
    finally:
        hook.remove()
    assert len(calls) == 6  # each distinct protein once
    assert torch.equal(got, units.embed_proteins(unique, esm, batch_tokens=1)[[0, 1, 0, 2, 3, 1, 4, 5, 0]])
    batched = units.embed_proteins(rows, esm)
    assert torch.equal(batched[0], batched[2]) and torch.equal(batched[0], batched[8])
    seqs = dnas_of(4, 9)
    dna_rows = [seqs[i] for i in (3, 0, 3, 1, 2, 0)]
    assert torch.equal(units.embed_dna(dna_rows, dna, batch_tokens=1),
                       units.embed_dna(seqs, dna, batch_tokens=1)[[3, 0, 3, 1, 2, 0]])


def test_exact_length_buckets_run_without_a_mask(esm):
    proteins = proteins_of(400, 10, 20, 24)  # few distinct lengths, each with at least 64 rows
    order, bounds = embed.plan_batches([len(p) for p in proteins], 500, exact_lengths=True)
    assert all(len({len(proteins[i]) for i in order[a:b]}) == 1 for a, b in bounds)
    assert sorted(order.tolist()) == list(range(400))
    masks = []
    hook = esm.model.register_forward_pre_hook(lambda m, a, k: masks.append(k["attention_mask"]), with_kwargs=True)
    try:
        got = units.embed_proteins(proteins, esm, batch_tokens=500, length_buckets=True)
    finally:
        hook.remove()
    assert masks and all(m is None for m in masks)
    torch.testing.assert_close(got, units.embed_proteins(proteins, esm, batch_tokens=500), atol=1e-5, rtol=0)


def test_rare_lengths_share_masked_batches_instead_of_tiny_buckets(esm):
    """Variable lengths: lengths with under 64 rows are padded together; a common length stays a bucket."""
    proteins = proteins_of(300, 13, 5, 120) + proteins_of(100, 14, 50, 50)  # ~116 rare lengths, one common
    tokens_per_row = [len(p) + 2 for p in proteins]
    order, bounds = embed.plan_batches(tokens_per_row, 4000, exact_lengths=True)
    assert sorted(order.tolist()) == list(range(400))
    assert all(max(tokens_per_row[i] for i in order[a:b]) * (b - a) <= 4000 for a, b in bounds)
    distinct = len(set(tokens_per_row))
    assert len(bounds) <= distinct // 4  # one bucket per distinct length was 111 batches
    common = [(a, b) for a, b in bounds if all(len(proteins[i]) == 50 for i in order[a:b])]
    assert sum(b - a for a, b in common) >= 100 and all(b - a >= 50 for a, b in common)  # 2 equal batches
    calls = []
    hook = esm.model.register_forward_pre_hook(
        lambda m, a, k: calls.append((k["input_ids"].shape[0], k["attention_mask"] is None)), with_kwargs=True)
    try:
        got = units.embed_proteins(proteins, esm, batch_tokens=4000, length_buckets=True)
    finally:
        hook.remove()
    assert len(calls) == len(bounds)
    assert sum(rows for rows, unmasked in calls if unmasked) >= 100  # the common length, without a mask
    assert sum(rows < 20 for rows, _ in calls) <= 1
    torch.testing.assert_close(got, units.embed_proteins(proteins, esm, batch_tokens=1), atol=1e-5, rtol=0)


def test_plan_batches_equals_token_budget_batches():
    lengths = [random.Random(11).randint(1, 60) for _ in range(200)]
    order, bounds = embed.plan_batches(lengths, 256)
    assert [order[a:b].tolist() for a, b in bounds] == units.token_budget_batches(lengths, 256)
    assert all(max(lengths[i] for i in order[a:b]) * (b - a) <= 256 for a, b in bounds)


# ---------------------------------------------------------------------------
# --compile
# ---------------------------------------------------------------------------


def test_compile_failure_falls_back_to_eager_with_one_warning(esm_model_dir, monkeypatch, caplog):
    monkeypatch.setattr(virnucpro.models, "_MODEL_CACHE", {})
    loaded = models.load_protein_model(str(esm_model_dir), "cpu")
    proteins = proteins_of(10, 12)
    expected = units.embed_proteins(proteins, loaded)

    def broken_compile(self, *args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("inductor exploded (simulated)")
        self._compiled_call_impl = fail

    monkeypatch.setattr(torch.nn.Module, "compile", broken_compile)
    models.compile_encoder_layers(loaded)
    assert loaded.compiled
    with caplog.at_level(logging.WARNING, logger="virnucpro"):
        got = units.embed_proteins(proteins, loaded, batch_tokens=200)
        again = units.embed_proteins(proteins, loaded, batch_tokens=200)
    assert not loaded.compiled
    assert sum("torch.compile failed" in r.getMessage() for r in caplog.records) == 1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert torch.equal(got, again)
