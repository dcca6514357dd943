"""units.py model loading and embeddings, with the tiny stand-ins loaded through the real remote-code path."""
from __future__ import annotations

import random
import re
import sys
import uuid
from pathlib import Path

import pytest
import torch

import fastesm_eras
import standins

TRANSFORMERS_MAJOR = int(__import__("transformers").__version__.split(".")[0])
import units
import virnucpro.hfload
import virnucpro.models
from virnucpro import provenance


@pytest.fixture(scope="module")
def esm(esm_model_dir):
    return units.load_protein_model(str(esm_model_dir), "cpu")


@pytest.fixture(scope="module")
def dna(dnabert_model_dir):
    return units.load_dnabert_model(str(dnabert_model_dir), "cpu")


AMINO = "ACDEFGHIKLMNPQRSTVWY"


def random_proteins(n: int, seed: int, max_len: int = 120) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(AMINO) for _ in range(rng.randint(1, max_len))) for _ in range(n)]


def random_dnas(n: int, seed: int, max_len: int = 400) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("ACGT") for _ in range(rng.randint(1, max_len))) for _ in range(n)]


def write_fasta(path: Path, records: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f">{i}\n{s}\n" for i, s in records))
    return path


@pytest.fixture()
def no_loading(monkeypatch):
    """Forget loaded models and make every from_pretrained call fail loudly."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError(f"from_pretrained called: {args!r}")

    monkeypatch.setattr(virnucpro.models, "_MODEL_CACHE", {})
    for cls in (transformers.AutoModel, transformers.AutoTokenizer, transformers.AutoConfig,
                transformers.EsmTokenizer, transformers.PreTrainedTokenizerFast):
        monkeypatch.setattr(cls, "from_pretrained", refuse)


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------


def test_load_protein_model_from_directory(esm, esm_model_dir):
    from transformers import EsmTokenizer

    assert esm.hidden_size == 64 and esm.dtype == torch.float32 and esm.device.type == "cpu"
    assert isinstance(esm.tokenizer, EsmTokenizer)
    assert not esm.model.training
    # era c's code imports RotaryEmbedding from transformers' ESM: fine under 4.x, gone in 5.6
    expected = "remote" if TRANSFORMERS_MAJOR < 5 else "native"
    assert esm.loader == expected
    module = type(esm.model).__module__
    assert module.startswith("transformers_modules.") if expected == "remote" else module.endswith("modeling_esm")
    assert units.load_protein_model(str(esm_model_dir), "cpu") is esm  # loaded once per process


def test_load_dnabert_model_from_directory(dna, dnabert_model_dir):
    assert dna.hidden_size == 768 and dna.dtype == torch.float32 and dna.device.type == "cpu"
    assert not dna.model.training
    assert units.load_dnabert_model(str(dnabert_model_dir), "cpu") is dna  # loaded once per process


def test_default_hub_ids_resolve_offline(fake_hub, esm, dna):
    protein = units.load_protein_model(units.FASTESM_MODEL, "cpu")
    nucleotide = units.load_dnabert_model(units.DNABERT_S_MODEL, "cpu")
    assert protein.hidden_size == 64 and nucleotide.hidden_size == 768
    assert protein.tokenizer.name_or_path == fastesm_eras.ESM_TOKENIZER_ID  # as the real code: a class attribute
    proteins = random_proteins(5, 3)
    torch.testing.assert_close(units.embed_proteins(proteins, protein), units.embed_proteins(proteins, esm))
    seqs = random_dnas(5, 3)
    torch.testing.assert_close(units.embed_dna(seqs, nucleotide), units.embed_dna(seqs, dna))


@pytest.mark.skipif(standins.triton_is_installed(), reason="needs an environment without triton")
def test_dnabert_hub_code_refused_without_workaround_but_units_loads_it(fake_hub, dnabert_model_dir, monkeypatch):
    from huggingface_hub import constants
    from transformers import AutoModel

    repo_id = f"standin/DNABERT-S-{uuid.uuid4().hex[:8]}"  # a fresh remote-code module, never cached
    standins.add_to_fake_hub(constants.HF_HUB_CACHE, repo_id, dnabert_model_dir)
    with pytest.raises(ImportError, match="triton"):
        AutoModel.from_pretrained(repo_id, trust_remote_code=True)
    monkeypatch.setattr(virnucpro.models, "_MODEL_CACHE", {})
    loaded = units.load_dnabert_model(repo_id, "cpu")
    assert loaded.hidden_size == 768
    reference = units.load_dnabert_model(str(dnabert_model_dir), "cpu")
    seqs = random_dnas(3, 9)
    torch.testing.assert_close(units.embed_dna(seqs, loaded), units.embed_dna(seqs, reference))


@pytest.mark.parametrize("loader", [units.load_protein_model, units.load_dnabert_model])
def test_missing_model_offline_raises_model_load_error(loader, fake_hub, tmp_path):
    with pytest.raises(units.ModelLoadError) as err:
        loader("nobody/no-such-model", "cpu")
    message = str(err.value)
    assert "nobody/no-such-model" in message and "cache" in message and "local model directory" in message
    missing_dir = tmp_path / "not_here"
    with pytest.raises(units.ModelLoadError, match="not_here"):
        loader(str(missing_dir), "cpu")


def test_model_directory_without_weights_raises_model_load_error(esm_model_dir, tmp_path):
    broken = standins.copy_model_dir(esm_model_dir, tmp_path / "esm_no_weights")
    (broken / "model.safetensors").unlink()
    with pytest.raises(units.ModelLoadError, match="esm_no_weights"):
        units.load_protein_model(str(broken), "cpu")


def test_triton_attention_is_disabled(monkeypatch, tmp_path, dnabert_model_dir, dna):
    from transformers import AutoConfig, AutoModel

    for name, module in standins.fake_triton_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(virnucpro.models, "_MODEL_CACHE", {})
    copy = standins.copy_model_dir(dnabert_model_dir, tmp_path / f"dnabert_triton_{uuid.uuid4().hex[:8]}")
    config = AutoConfig.from_pretrained(str(copy), trust_remote_code=True)
    raw = AutoModel.from_config(config, trust_remote_code=True)  # the remote code as it is, real init
    module = sys.modules[type(raw).__module__]
    assert module.flash_attn_qkvpacked_func is not None  # the stand-in took the Triton path
    ids = torch.tensor([dna.tokenizer("ACGTTGCA")["input_ids"]])
    with pytest.raises((AssertionError, RuntimeError)):
        raw(ids)
    loaded = units.load_dnabert_model(str(copy), "cpu")
    assert sys.modules[type(loaded.model).__module__].flash_attn_qkvpacked_func is None
    seqs = random_dnas(6, 4)
    torch.testing.assert_close(units.embed_dna(seqs, loaded), units.embed_dna(seqs, dna), atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------
# protein embeddings
# ---------------------------------------------------------------------------


def manual_protein(esm, protein: str) -> torch.Tensor:
    tok = esm.tokenizer
    ids = [tok.cls_token_id, *tok.convert_tokens_to_ids(list(protein)), tok.eos_token_id]
    with torch.no_grad():
        hidden = esm.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    return hidden[1:len(protein) + 1].mean(0)


@pytest.fixture(scope="module")
def protein_reference(esm):
    """Proteins of mixed lengths and their one-at-a-time embeddings (each its own batch)."""
    proteins = random_proteins(30, 1, max_len=150)
    return proteins, units.embed_proteins(proteins, esm, batch_tokens=1)


@pytest.mark.parametrize("budget", [100, 700, 3000])
def test_embed_proteins_batched_equals_one_at_a_time(esm, protein_reference, budget):
    proteins, single = protein_reference
    batched = units.embed_proteins(proteins, esm, batch_tokens=budget)
    assert batched.dtype == torch.float32 and batched.shape == (30, 64)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    batches = units.token_budget_batches([len(p) + 2 for p in proteins], budget)
    assert len(batches) < 30 and any(len({len(proteins[i]) for i in b}) > 1 for b in batches)


def test_embed_proteins_pooling_is_residue_mean(esm):
    proteins = random_proteins(6, 2)
    got = units.embed_proteins(proteins, esm)
    expected = torch.stack([manual_protein(esm, p) for p in proteins])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (got[0] - got[1]).abs().max() > 1e-3  # embeddings are not all the same


def full_context_protein(esm, protein: str, pooled: int = 1024) -> torch.Tensor:
    """The original's rule, one protein at a time: the WHOLE protein in, mean over residues 1..min(L, 1024)."""
    tok = esm.tokenizer
    ids = [tok.cls_token_id, *tok.convert_tokens_to_ids(list(protein)), tok.eos_token_id]
    with torch.no_grad():
        hidden = esm.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    return hidden[1:min(len(protein), pooled) + 1].mean(0)


@pytest.mark.parametrize("buckets", [False, True])
def test_embed_proteins_long_proteins_see_their_whole_sequence(esm, buckets):
    rng = random.Random(5)
    long = "".join(rng.choice(AMINO) for _ in range(1500))
    proteins = [long, "".join(rng.choice(AMINO) for _ in range(1100)), long[:1024], "MKVLAW", long[:1025]]
    # 1200 tokens: the long proteins are each a batch of their own, the short ones share one
    got = units.embed_proteins(proteins, esm, batch_tokens=1200, length_buckets=buckets)
    expected = torch.stack([full_context_protein(esm, p) for p in proteins])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # the residues beyond 1024 change the pooled residues' context: not the truncated input
    assert (got[0] - got[2]).abs().max() > 1e-4
    assert (got[4] - got[2]).abs().max() > 1e-5
    pooled_500 = units.embed_proteins([long], esm, truncation_seq_length=500)
    torch.testing.assert_close(pooled_500[0], full_context_protein(esm, long, 500), atol=1e-5, rtol=0)


def test_embed_proteins_case_stop_and_rare_letters(esm):
    got = units.embed_proteins(["MKVLAW", "mkvlaw", "MKVLAW*", "MKXUBZOA", "MKJ*A"], esm)
    torch.testing.assert_close(got[1], got[0])
    torch.testing.assert_close(got[2], got[0])
    torch.testing.assert_close(got[3], manual_protein(esm, "MKXUBZOA"), atol=1e-5, rtol=0)
    torch.testing.assert_close(got[4], manual_protein(esm, "MKXXA"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad", ["", "*", "MK1V", "MK V", "MK#"])
def test_embed_proteins_rejects_empty_or_invalid(esm, bad):
    with pytest.raises(units.InputError):
        units.embed_proteins(["MKV", bad], esm, ids=["ok", "bad_one"])


def test_embed_empty_lists(esm, dna):
    assert units.embed_proteins([], esm).shape == (0, 64)
    assert units.embed_dna([], dna).shape == (0, 768)


# ---------------------------------------------------------------------------
# DNA embeddings
# ---------------------------------------------------------------------------


def manual_dna(dna, seq: str) -> torch.Tensor:
    """The original method: one sequence at a time, no mask, mean over all tokens."""
    ids = torch.tensor(dna.tokenizer(seq)["input_ids"]).unsqueeze(0)
    with torch.no_grad():
        return dna.model(ids)[0].mean(dim=1)[0]


@pytest.fixture(scope="module")
def dna_reference(dna):
    """DNA of mixed lengths and its one-at-a-time embeddings (each its own batch)."""
    seqs = random_dnas(20, 7, max_len=500)
    return seqs, units.embed_dna(seqs, dna, batch_tokens=1)


@pytest.mark.parametrize("budget", [200, 1000, 5000])
def test_embed_dna_batched_equals_one_at_a_time(dna, dna_reference, budget):
    seqs, single = dna_reference
    batched = units.embed_dna(seqs, dna, batch_tokens=budget)
    assert batched.dtype == torch.float32 and batched.shape == (20, 768)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    lengths = [len(dna.tokenizer(s)["input_ids"]) for s in seqs]
    batches = units.token_budget_batches(lengths, budget)
    assert len(batches) < 20 and any(len({lengths[i] for i in b}) > 1 for b in batches)


def test_embed_dna_pooling_matches_original_method(dna):
    seqs = random_dnas(8, 8, max_len=400)
    got = units.embed_dna(seqs, dna)
    expected = torch.stack([manual_dna(dna, s) for s in seqs])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (got[0] - got[1]).abs().max() > 1e-3


def test_embed_dna_lowercase_equals_uppercase(dna):
    seqs = random_dnas(4, 10)
    torch.testing.assert_close(units.embed_dna([s.lower() for s in seqs], dna), units.embed_dna(seqs, dna))


# ---------------------------------------------------------------------------
# extract_esm / extract_DNABERT_S
# ---------------------------------------------------------------------------


def test_extract_esm_writes_and_returns_in_file_order(esm, esm_model_dir, tmp_path):
    proteins = random_proteins(12, 11)
    records = [(f"prot_{i}|x", p) for i, p in enumerate(proteins)]
    fasta = write_fasta(tmp_path / "p.faa", records)
    out = tmp_path / "p.pt"
    ids, data = units.extract_esm(fasta, model_location=str(esm_model_dir), out_file=out,
                                  device="cpu", progress=False, toks_per_batch=300)
    assert ids == [r[0] for r in records]
    assert data.dtype == torch.float32 and data.shape == (12, 64)
    torch.testing.assert_close(data, units.embed_proteins(proteins, esm), atol=1e-5, rtol=0)
    saved = torch.load(out, weights_only=True)
    assert saved["proteins"] == ids
    assert units.load_protein_features(out)[0] == ids
    torch.testing.assert_close(units.load_protein_features(out)[1], data)


def test_extract_dnabert_writes_and_returns_in_file_order(dna, dnabert_model_dir, tmp_path):
    seqs = random_dnas(10, 12)
    records = [(f"seq{i}_chunk_1F1", s) for i, s in enumerate(seqs)]
    fasta = write_fasta(tmp_path / "n.fa", records)
    out = tmp_path / "n.pt"
    ids, data = units.extract_DNABERT_S(fasta, out, model_location=str(dnabert_model_dir), device="cpu",
                                        progress=False, batch_tokens=500)
    assert ids == [r[0] for r in records]
    assert data.dtype == torch.float32 and data.shape == (10, 768)
    torch.testing.assert_close(data, torch.stack([manual_dna(dna, s) for s in seqs]), atol=1e-5, rtol=0)
    saved = torch.load(out, weights_only=True)
    assert saved["nucleotide"] == ids
    assert units.load_dna_features(out)[0] == ids


def test_extract_with_loaded_models_never_calls_from_pretrained(esm, dna, tmp_path, no_loading, monkeypatch):
    proteins = random_proteins(5, 13)
    pfasta = write_fasta(tmp_path / "p.faa", [(f"p{i}", p) for i, p in enumerate(proteins)])
    ids, data = units.extract_esm(pfasta, out_file=tmp_path / "p.pt", model_loaded=True, model=esm.model,
                                  alphabet=esm.tokenizer, progress=False)
    assert ids == [f"p{i}" for i in range(5)]
    torch.testing.assert_close(data, torch.stack([manual_protein(esm, p) for p in proteins]), atol=1e-5, rtol=0)
    # the original passed the alphabet; without it, model.tokenizer is used
    ids2, data2 = units.extract_esm(pfasta, out_file=None, model_loaded=True, model=esm.model, progress=False)
    torch.testing.assert_close(data2, data)

    seqs = random_dnas(5, 13)
    nfasta = write_fasta(tmp_path / "n.fa", [(f"n{i}", s) for i, s in enumerate(seqs)])
    ids, data = units.extract_DNABERT_S(nfasta, tmp_path / "n.pt", True, dna.tokenizer, dna.model, progress=False)
    assert ids == [f"n{i}" for i in range(5)]
    torch.testing.assert_close(data, torch.stack([manual_dna(dna, s) for s in seqs]), atol=1e-5, rtol=0)


def test_extract_esm_reuses_only_valid_matching_out_file(esm, esm_model_dir, tmp_path, monkeypatch):
    proteins = random_proteins(4, 14)
    fasta = write_fasta(tmp_path / "p.faa", [(f"p{i}", p) for i, p in enumerate(proteins)])
    out = tmp_path / "p.pt"
    location = str(esm_model_dir)
    ids, real = units.extract_esm(fasta, model_location=location, out_file=out, device="cpu", progress=False)
    written = torch.load(out, weights_only=True)
    name, revision = written["model"], written["model_revision"]
    assert revision == provenance.resolve_model_revision(location) and revision.startswith("sha256:")

    def run() -> torch.Tensor:
        return units.extract_esm(fasta, model_location=location, out_file=out, device="cpu", progress=False)[1]

    sentinel = torch.zeros(4, 64)
    torch.save({"proteins": ids, "data": sentinel, "model": name, "model_revision": revision}, out)
    torch.testing.assert_close(run(), sentinel)  # valid file of the same model, revision and ids: reused

    for stale in (
        {"proteins": ids, "data": sentinel, "model": "some/other-model"},       # another model
        {"proteins": ids, "data": sentinel, "model": name},                      # revision not recorded
        {"proteins": ids, "data": sentinel, "model": name, "model_revision": "sha256:" + "0" * 64},
        {"proteins": ids[::-1], "data": sentinel, "model": name},                # other ids / order
        {"proteins": ids[:3], "data": sentinel[:3], "model": name},             # fewer ids
        {"proteins": ids, "data": [t for t in sentinel]},                        # original format, no model
        {"proteins": ids, "data": torch.full((4, 64), float("nan")), "model": name},
        {"nucleotide": ids, "data": sentinel, "model": name},                    # wrong kind
    ):
        torch.save(stale, out)
        torch.testing.assert_close(run(), real, atol=1e-5, rtol=0)
        assert torch.load(out, weights_only=True)["model"] == name
        assert torch.load(out, weights_only=True)["model_revision"] == revision
    out.write_bytes(b"not a torch file")
    torch.testing.assert_close(run(), real, atol=1e-5, rtol=0)


def test_extract_dnabert_reuses_only_valid_matching_out_file(dna, dnabert_model_dir, tmp_path):
    seqs = random_dnas(3, 15)
    fasta = write_fasta(tmp_path / "n.fa", [(f"n{i}", s) for i, s in enumerate(seqs)])
    out = tmp_path / "n.pt"
    location = str(dnabert_model_dir)
    ids, real = units.extract_DNABERT_S(fasta, out, model_location=location, device="cpu", progress=False)
    written = torch.load(out, weights_only=True)
    name, revision = written["model"], written["model_revision"]
    assert revision == provenance.resolve_model_revision(location)
    sentinel = torch.zeros(3, 768)
    torch.save({"nucleotide": ids, "data": sentinel, "model": name, "model_revision": revision}, out)
    got = units.extract_DNABERT_S(fasta, out, model_location=location, device="cpu", progress=False)[1]
    torch.testing.assert_close(got, sentinel)
    for stale in ({"nucleotide": ids, "data": sentinel, "model": "other", "model_revision": revision},
                  {"nucleotide": ids, "data": sentinel, "model": name, "model_revision": "f" * 40}):
        torch.save(stale, out)
        got = units.extract_DNABERT_S(fasta, out, model_location=location, device="cpu", progress=False)[1]
        torch.testing.assert_close(got, real, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["protein", "dna"])
def test_extract_rejects_duplicate_ids(kind, esm_model_dir, dnabert_model_dir, tmp_path):
    if kind == "protein":
        fasta = write_fasta(tmp_path / "d.faa", [("a", "MKV"), ("b", "MKW"), ("a", "MKL")])
        with pytest.raises(units.InputError, match="duplicate"):
            units.extract_esm(fasta, model_location=str(esm_model_dir), out_file=tmp_path / "o.pt",
                              device="cpu", progress=False)
    else:
        fasta = write_fasta(tmp_path / "d.fa", [("a", "ACGT"), ("a", "ACGG")])
        with pytest.raises(units.InputError, match="duplicate"):
            units.extract_DNABERT_S(fasta, tmp_path / "o.pt", model_location=str(dnabert_model_dir),
                                    device="cpu", progress=False)
    assert not (tmp_path / "o.pt").exists()


@pytest.mark.parametrize("kind", ["protein", "dna"])
def test_corrupt_weights_file_raises_model_load_error(kind, esm_model_dir, dnabert_model_dir, tmp_path):
    """A truncated/corrupt model.safetensors (e.g. an interrupted download) is a user-fixable problem."""
    source, loader = (esm_model_dir, units.load_protein_model) if kind == "protein" else \
        (dnabert_model_dir, units.load_dnabert_model)
    broken = standins.copy_model_dir(source, tmp_path / f"{kind}_corrupt_weights")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(units.ModelLoadError, match=f"{kind}_corrupt_weights"):
        loader(str(broken), "cpu")


# ---------------------------------------------------------------------------
# transformers 4 and 5
# ---------------------------------------------------------------------------



def test_dnabert_standin_fails_in_plain_from_pretrained_of_transformers_5_as_upstream(dnabert_model_dir, tmp_path,
                                                                                      monkeypatch):
    """The stand-in makes its ALiBi tensor in __init__ like the real DNABERT-S; the project loads it anyway."""
    from transformers import AutoModel

    copy = standins.copy_model_dir(dnabert_model_dir, tmp_path / f"dnabert_raw_{uuid.uuid4().hex[:8]}")
    if TRANSFORMERS_MAJOR >= 5:
        with pytest.raises(RuntimeError, match="Tensor on device meta is not on the expected device cpu"):
            AutoModel.from_pretrained(str(copy), trust_remote_code=True)
    else:
        assert AutoModel.from_pretrained(str(copy), trust_remote_code=True).encoder.alibi.device.type == "cpu"
    monkeypatch.setattr(virnucpro.models, "_MODEL_CACHE", {})
    alibi = units.load_dnabert_model(str(copy), "cpu").model.encoder.alibi
    assert alibi.device.type == "cpu" and torch.isfinite(alibi).all() and alibi.abs().max() > 0


@pytest.mark.parametrize("real_init", [False, True], ids=["from_pretrained", "from_config"])
@pytest.mark.parametrize("kind", ["dna"])  # FastESM2's eras: tests/test_fastesm_eras.py
def test_both_loading_paths_equal_a_model_built_by_hand(kind, real_init, esm_model_dir, dnabert_model_dir,
                                                         monkeypatch):
    """Whichever path loads it, the model equals its class built on the CPU with the saved weights."""
    import transformers
    from safetensors.torch import load_file

    monkeypatch.setattr(virnucpro.models, "_MODEL_CACHE", {})
    monkeypatch.setattr(virnucpro.hfload, "_builds_on_meta_device", lambda: real_init)
    source, loader = (esm_model_dir, units.load_protein_model) if kind == "protein" else \
        (dnabert_model_dir, units.load_dnabert_model)
    if kind == "dna" and not real_init and TRANSFORMERS_MAJOR >= 5:  # the upstream failure, said clearly
        with pytest.raises(units.ModelLoadError) as err:
            loader(str(source), "cpu")
        message = str(err.value)
        assert f"transformers {transformers.__version__} is installed" in message and ">=4.47,<6" in message
        assert "damaged" not in message
        return
    loaded = loader(str(source), "cpu")
    reference = type(loaded.model)(loaded.model.config)
    reference.load_state_dict(load_file(str(source / "model.safetensors")), strict=True)
    reference.eval()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    by_hand = units.LoadedModel("by hand", reference, loaded.tokenizer, loaded.device, loaded.dtype, loaded.hidden_size)
    if kind == "protein":
        proteins = random_proteins(5, 21)
        torch.testing.assert_close(units.embed_proteins(proteins, loaded), units.embed_proteins(proteins, by_hand),
                                   atol=0, rtol=0)
    else:
        seqs = random_dnas(5, 21)
        torch.testing.assert_close(units.embed_dna(seqs, loaded), units.embed_dna(seqs, by_hand), atol=0, rtol=0)


def test_from_config_path_takes_prefixed_keys_and_refuses_missing_weights(dna, dnabert_model_dir, tmp_path,
                                                                         monkeypatch):
    """Checkpoints saved from a model with a head ("bert." keys) load; a missing pooler is fine (the
    embedding does not use it), any other missing weight is an error naming it."""
    from safetensors.torch import load_file, save_file

    monkeypatch.setattr(virnucpro.hfload, "_builds_on_meta_device", lambda: True)
    state = load_file(str(dnabert_model_dir / "model.safetensors"))
    prefixed = standins.copy_model_dir(dnabert_model_dir, tmp_path / f"dnabert_prefixed_{uuid.uuid4().hex[:8]}")
    save_file({f"bert.{k}": v for k, v in state.items()}, str(prefixed / "model.safetensors"), metadata={"format": "pt"})
    monkeypatch.setattr(virnucpro.models, "_MODEL_CACHE", {})
    seqs = random_dnas(3, 23)
    torch.testing.assert_close(units.embed_dna(seqs, units.load_dnabert_model(str(prefixed), "cpu")),
                               units.embed_dna(seqs, dna), atol=0, rtol=0)
    no_pooler = standins.copy_model_dir(dnabert_model_dir, tmp_path / f"dnabert_no_pooler_{uuid.uuid4().hex[:8]}")
    save_file({k: v for k, v in state.items() if "pooler" not in k}, str(no_pooler / "model.safetensors"),
              metadata={"format": "pt"})
    torch.testing.assert_close(units.embed_dna(seqs, units.load_dnabert_model(str(no_pooler), "cpu")),
                               units.embed_dna(seqs, dna), atol=0, rtol=0)
    lacking = standins.copy_model_dir(dnabert_model_dir, tmp_path / f"dnabert_lacking_{uuid.uuid4().hex[:8]}")
    save_file({k: v for k, v in state.items() if "Wqkv.weight" not in k}, str(lacking / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(units.ModelLoadError, match="lacks 1 of .* weights .*Wqkv.weight.*incomplete or damaged"):
        units.load_dnabert_model(str(lacking), "cpu")


CROSS_MAJOR_PROTEINS = ["MKVLAWTTQ", "ACDEFGHIKLMNPQRSTVWY" * 3, "MSTNPKPQRKTKRNTNRRPQDVKFPGG"]
CROSS_MAJOR_DNA = ["ACGTACGTTAGC" * 20, "GGCATTACAGATTACA" * 9, "TTGACA"]
CROSS_MAJOR_COMPARED = "compared"  # written once the second environment compared; .ci/run requires it


def test_embeddings_identical_under_both_transformers_majors(monkeypatch):
    """With VIRNUCPRO_CROSS_MAJOR_DIR set (.ci/run sets it for both environments), the first
    environment builds the stand-ins there and records their embeddings; an environment with
    the other transformers major loads the same directories and must give identical numbers."""
    import os

    import transformers

    folder = os.environ.get("VIRNUCPRO_CROSS_MAJOR_DIR")
    if not folder:
        pytest.skip("set VIRNUCPRO_CROSS_MAJOR_DIR to the same folder in two environments (see .ci/run)")
    folder = Path(folder)
    record = folder / "embeddings.pt"
    dirs = {"esm": folder / "fastesm", "esm2": folder / "esm2", "dna": folder / "dnabert"}
    if not record.exists():
        standins.build_fastesm_standin(dirs["esm"], seed=3)
        standins.build_esm2_standin(dirs["esm2"], seed=3)
        standins.build_dnabert_standin(dirs["dna"], seed=3)
    monkeypatch.setattr(virnucpro.models, "_MODEL_CACHE", {})
    got = {"esm": units.embed_proteins(CROSS_MAJOR_PROTEINS, units.load_protein_model(str(dirs["esm"]), "cpu")),
           "esm2": units.embed_proteins(CROSS_MAJOR_PROTEINS, units.load_protein_model(str(dirs["esm2"]), "cpu")),
           "dna": units.embed_dna(CROSS_MAJOR_DNA, units.load_dnabert_model(str(dirs["dna"]), "cpu"))}
    if not record.exists():
        torch.save({"transformers": transformers.__version__, **got}, record)
        pytest.skip(f"embeddings recorded under transformers {transformers.__version__}; the environment with "
                    "the other major compares them")
    stored = torch.load(record, weights_only=True)
    if stored["transformers"].split(".")[0] == transformers.__version__.split(".")[0]:
        pytest.fail(f"{record} was recorded under the same transformers major ({stored['transformers']}): "
                    "the second environment must have the other one")
    for name, value in got.items():
        torch.testing.assert_close(value, stored[name], atol=1e-6, rtol=0,
                                   msg=f"{name}: transformers {transformers.__version__} vs {stored['transformers']}")
    # .ci/run checks that this comparison happened (a run where it was skipped would prove nothing)
    (folder / CROSS_MAJOR_COMPARED).write_text(f"{stored['transformers']} vs {transformers.__version__}\n")


# ---------------------------------------------------------------------------
# loading errors say what is wrong
# ---------------------------------------------------------------------------


def test_directory_without_config_or_weights_says_which(esm_model_dir, tmp_path):
    no_config = standins.copy_model_dir(esm_model_dir, tmp_path / "no_config")
    (no_config / "config.json").unlink()
    with pytest.raises(units.ModelLoadError, match="no_config.*has no config.json"):
        units.load_protein_model(str(no_config), "cpu")
    no_weights = standins.copy_model_dir(esm_model_dir, tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(units.ModelLoadError, match="no_weights.*has no weights"):
        units.load_protein_model(str(no_weights), "cpu")


@pytest.mark.parametrize("kind", ["protein", "dna"])
def test_damaged_weights_say_damaged(kind, esm_model_dir, dnabert_model_dir, tmp_path):
    source, loader = (esm_model_dir, units.load_protein_model) if kind == "protein" else \
        (dnabert_model_dir, units.load_dnabert_model)
    broken = standins.copy_model_dir(source, tmp_path / f"{kind}_damaged")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(units.ModelLoadError, match="incomplete or damaged"):
        loader(str(broken), "cpu")


def test_incompatible_transformers_names_installed_version_and_range(esm_model_dir, monkeypatch):
    import transformers

    def code_failure(*args, **kwargs):
        raise ImportError("cannot import name 'SomethingNew' from 'transformers'")

    monkeypatch.setattr(virnucpro.models, "_MODEL_CACHE", {})
    monkeypatch.setattr(virnucpro.models, "load_pretrained", code_failure)
    monkeypatch.setattr(transformers, "__version__", "6.1.0")
    with pytest.raises(units.ModelLoadError) as err:
        units.load_protein_model(str(esm_model_dir), "cpu", loader="remote")
    message = str(err.value)
    assert "SomethingNew" in message and "transformers 6.1.0 is installed" in message
    assert "needs transformers>=4.47,<6" in message and "damaged" not in message


# ---------------------------------------------------------------------------
# plain ESM-2 models (facebook/esm2_*)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def esm2_model_dir(tmp_path_factory) -> Path:
    """A tiny plain EsmModel (32-d, no remote code) with its EsmTokenizer."""
    return standins.build_esm2_standin(tmp_path_factory.mktemp("esm2_standin"))


@pytest.fixture(scope="module")
def esm2(esm2_model_dir):
    return units.load_protein_model(str(esm2_model_dir), "cpu")


def test_plain_esm2_loads_with_its_tokenizer(esm2):
    from transformers import EsmModel, EsmTokenizer

    assert type(esm2.model) is EsmModel and isinstance(esm2.tokenizer, EsmTokenizer)
    assert esm2.hidden_size == 32 and esm2.revision.startswith("sha256:")


def test_plain_esm2_embeddings_equal_a_manual_computation(esm2, esm2_model_dir):
    from safetensors.torch import load_file
    from transformers import EsmConfig, EsmModel

    model = EsmModel(EsmConfig.from_pretrained(str(esm2_model_dir)))
    state = load_file(str(esm2_model_dir / "model.safetensors"))  # transformers 5 saves LayerNorm gamma/beta
    model.load_state_dict({re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k)): v
                           for k, v in state.items()})
    model.eval()
    proteins = random_proteins(7, 31)
    expected = []
    for protein in proteins:
        ids = [0, *[standins.ESM_VOCAB.index(a) for a in protein], 2]  # <cls> residues <eos>
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        expected.append(hidden[1:len(protein) + 1].mean(0))
    got = units.embed_proteins(proteins, esm2, batch_tokens=300)
    assert got.shape == (7, 32)
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-5, rtol=0)


def test_prediction_and_features_run_with_a_plain_esm2(esm2, esm2_model_dir, dna, dnabert_model_dir, tmp_path,
                                                       golden_dir):
    import prediction

    proteins = random_proteins(3, 41)
    fasta = write_fasta(tmp_path / "p.faa", [(f"p{i}", p) for i, p in enumerate(proteins)])
    ids, data = units.extract_esm(fasta, model_location=str(esm2_model_dir), out_file=tmp_path / "p.pt",
                                  device="cpu", progress=False)
    assert data.shape == (3, 32)
    torch.testing.assert_close(data, units.embed_proteins(proteins, esm2))

    torch.manual_seed(11)
    classifier = units.MLPClassifier(768 + 32).eval()
    checkpoint = tmp_path / "300_model.pth"
    units.save_checkpoint(checkpoint, classifier, dna_model=str(dnabert_model_dir), dna_dim=768,
                          protein_model=str(esm2_model_dir), protein_dim=32, chunk_size=300)
    reads = tmp_path / "reads.fa"
    reads.write_text("".join((golden_dir / "reads.fa").read_text().splitlines(True)[:8]))
    out = tmp_path / "out"
    assert prediction.main([str(reads), "300", str(out), "--model", str(checkpoint), "--esm-model",
                            str(esm2_model_dir), "--dnabert-model", str(dnabert_model_dir), "--device", "cpu",
                            "-q"]) == 0
    rows = (out / "prediction_results.txt").read_text().splitlines()
    assert len(rows) > 1 and rows[0].split("\t") == ["Sequence_ID", "Prediction", "score1", "score2"]
