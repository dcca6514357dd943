"""The real FastESM2 loads whatever era of its code the hub holds, under transformers 4 and 5.

The matrix era x transformers major runs in CI under both majors (``.ci/run``); each cell
is checked against a direct computation with transformers' own ``EsmModel`` on the same
weights.  The stand-ins and what they mirror: ``tests/fastesm_eras.py``.
"""
from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path

import pytest
import torch

import fastesm_eras
import standins
import units
import virnucpro.hfload
import virnucpro.models

TRANSFORMERS_MAJOR = int(__import__("transformers").__version__.split(".")[0])
#: How each era loads under each major with --esm-loader auto (see fastesm_eras' table).
EXPECTED_LOADER = {4: {"a": "remote", "b": "native", "c": "remote", "d": "native"},
                   5: {"a": "remote", "b": "native", "c": "native", "d": "remote"}}[TRANSFORMERS_MAJOR]
#: What the remote code of the eras that fail under this major needs, as the message says it.
EXPECTED_NEED = {4: {"b": "needs transformers >= 5", "d": "needs transformers >= 5.13"},
                 5: {"b": "needs transformers < 5.6", "c": "needs transformers < 5.6"}}[TRANSFORMERS_MAJOR]
PROTEINS = ["MKVLAWTTQ", "ACDEFGHIKLMNPQRSTVWY" * 2, "MSTNPKPQRKTKRNTNRRPQDVKFPGG", "W"]


@pytest.fixture(autouse=True)
def fresh_model_cache(monkeypatch):
    monkeypatch.setattr(virnucpro.models, "_MODEL_CACHE", {})


@pytest.fixture(scope="module")
def era_dirs(tmp_path_factory) -> dict[str, Path]:
    """One folder per era, the same seeded weights in each."""
    return {era: fastesm_eras.build_fastesm_era(tmp_path_factory.mktemp(f"fastesm_era_{era}"), era, seed=11)
            for era in fastesm_eras.ERAS}


def fresh_copy(source: Path, tmp_path: Path, name: str) -> Path:
    """A copy under a new name: transformers imports its code afresh (its module cache is keyed by folder name)."""
    return standins.copy_model_dir(source, tmp_path / f"{name}_{uuid.uuid4().hex[:8]}")


def native_embeddings(directory: Path, tokenizer, proteins: list[str]) -> torch.Tensor:
    """Mean over the residues (CLS/EOS left out) of transformers' own EsmModel's last hidden state."""
    rows = []
    for protein in proteins:
        ids = torch.tensor([tokenizer(protein)["input_ids"]])
        rows.append(fastesm_eras.native_last_hidden_state(directory, ids)[0, 1:-1].mean(0))
    return torch.stack(rows)


def write_fasta(path: Path, records: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in records))
    return path


@pytest.mark.parametrize("era", fastesm_eras.ERAS)
def test_every_era_loads_through_extract_esm_with_the_native_numbers(era, era_dirs, tmp_path, caplog):
    fasta = write_fasta(tmp_path / "p.faa", [(f"p{i}", p) for i, p in enumerate(PROTEINS)])
    out = tmp_path / "p.pt"
    with caplog.at_level(logging.INFO, logger="virnucpro"):
        ids, data = units.extract_esm(fasta, model_location=str(era_dirs[era]), out_file=out, device="cpu",
                                      progress=False)
    loaded = units.load_protein_model(str(era_dirs[era]), "cpu")
    assert loaded.loader == EXPECTED_LOADER[era]
    assert ids == [f"p{i}" for i in range(len(PROTEINS))]
    torch.testing.assert_close(data, native_embeddings(era_dirs[era], loaded.tokenizer, PROTEINS),
                               atol=1e-5, rtol=0)
    saved = torch.load(out, weights_only=True)
    assert saved["model_loader"] == EXPECTED_LOADER[era]
    fallback = [r.getMessage() for r in caplog.records if "transformers' own ESM instead" in r.getMessage()]
    if era in EXPECTED_NEED:  # one INFO line saying why, and what the code needs
        assert len(fallback) == 1 and EXPECTED_NEED[era] in fallback[0]
    else:
        assert not fallback


@pytest.mark.parametrize("era", fastesm_eras.ERAS)
def test_native_loader_equals_the_remote_code_where_that_loads(era, era_dirs):
    native = units.load_protein_model(str(era_dirs[era]), "cpu", loader="native")
    assert native.loader == "native" and type(native.model).__name__ == "EsmModel"
    got = units.embed_proteins(PROTEINS, native)
    torch.testing.assert_close(got, native_embeddings(era_dirs[era], native.tokenizer, PROTEINS), atol=1e-5, rtol=0)
    if era not in EXPECTED_NEED:
        remote = units.load_protein_model(str(era_dirs[era]), "cpu", loader="remote")
        assert remote.loader == "remote" and type(remote.model).__name__ == "FastEsmModel"
        torch.testing.assert_close(units.embed_proteins(PROTEINS, remote), got, atol=1e-5, rtol=0)


@pytest.mark.parametrize("era", sorted(EXPECTED_NEED))
def test_remote_loader_says_what_the_code_needs_and_no_install_of_what_is_installed(era, era_dirs):
    import transformers

    with pytest.raises(units.ModelLoadError) as err:
        units.load_protein_model(str(era_dirs[era]), "cpu", loader="remote")
    message = str(err.value)
    assert EXPECTED_NEED[era] in message and f"transformers {transformers.__version__} is installed" in message
    assert "pip install" not in message  # the installed version is in the supported range
    assert "--esm-loader native" in message and "\n" not in message


def test_native_loader_runs_none_of_the_model_code(era_dirs, tmp_path, capfd):
    folder = fresh_copy(era_dirs["a"], tmp_path, "era_a_poisoned")
    marker = tmp_path / "imported"
    (folder / "modeling_fastesm.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError('no')\n")
    loaded = units.load_protein_model(str(folder), "cpu", loader="native")
    assert not marker.exists() and loaded.loader == "native"
    assert capfd.readouterr().out == ""


def _global_state() -> tuple:
    import torch._dynamo.config as dynamo_config

    return (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
            dynamo_config.capture_scalar_outputs, dynamo_config.recompile_limit)


def test_model_code_leaves_no_global_state_and_stdout_clean(era_dirs, dnabert_model_dir, tmp_path, capfd):
    """Era c changes TF32, cudnn and dynamo settings and prints when imported (under either major,
    before its imports can fail); none of it outlives the load, and DNABERT-S's fp32 numbers stay."""
    dna = units.load_dnabert_model(str(dnabert_model_dir), "cpu")
    seqs = ["ACGTACGTTAGC" * 20, "GGCATTACAGATTACA" * 9, "TTGACA"]
    before_numbers = units.embed_dna(seqs, dna)
    before = _global_state()
    capfd.readouterr()
    folder = fresh_copy(era_dirs["c"], tmp_path, "era_c_state")
    loaded = units.load_protein_model(str(folder), "cpu")
    assert loaded.loader == EXPECTED_LOADER["c"]
    assert _global_state() == before
    assert capfd.readouterr().out == ""
    torch.testing.assert_close(units.embed_dna(seqs, dna), before_numbers, atol=0, rtol=0)


def test_a_load_that_changes_weights_is_never_trusted(era_dirs, monkeypatch, caplog):
    """transformers 5.5.4 silently re-initialised FastESM classes: a load is checked against the files."""
    real = virnucpro.hfload.load_pretrained

    def reinitialising(*args, **kwargs):
        model = real(*args, **kwargs)
        with torch.no_grad():
            next(p for n, p in model.named_parameters() if "query.weight" in n).normal_()
        return model

    monkeypatch.setattr(virnucpro.models, "load_pretrained", reinitialising)
    era = "a"  # loads with its own code under both majors
    with pytest.raises(units.ModelLoadError, match="differ from the checkpoint .*query.weight"):
        units.load_protein_model(str(era_dirs[era]), "cpu", loader="remote")
    with caplog.at_level(logging.INFO, logger="virnucpro"):
        loaded = units.load_protein_model(str(era_dirs[era]), "cpu", loader="auto")
    assert loaded.loader == "native"
    assert any("differ from the checkpoint" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(units.embed_proteins(PROTEINS, loaded),
                               native_embeddings(era_dirs[era], loaded.tokenizer, PROTEINS), atol=1e-5, rtol=0)


@pytest.mark.parametrize("loader", ["auto", "native"])
def test_a_missing_weight_other_than_the_pooler_is_an_error_naming_it(loader, era_dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = fresh_copy(era_dirs["a"], tmp_path, "era_a_lacking")
    state = load_file(str(folder / "model.safetensors"))
    del state["esm.encoder.layer.1.attention.self.value.weight"]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(units.ModelLoadError, match=r"lacks 1 of .*layer\.1\.attention\.self\.value\.weight"):
        units.load_protein_model(str(folder), "cpu", loader=loader)


def test_uncached_tokenizer_offline_is_named_with_how_to_fetch_it(era_dirs, monkeypatch):
    """Offline, a copied FastESM2 folder needs the ESM-2 tokenizer its code loads: the message says so."""
    monkeypatch.setattr(virnucpro.hfload, "ESM_TOKENIZER_ID", "standin/esm2-tokenizer-never-cached")
    with pytest.raises(units.ModelLoadError) as err:
        units.load_protein_model(str(era_dirs["a"]), "cpu")
    message = str(err.value)
    assert "standin/esm2-tokenizer-never-cached" in message and "HF_HUB_OFFLINE" in message
    assert "EsmTokenizer.from_pretrained('standin/esm2-tokenizer-never-cached')" in message


@pytest.mark.parametrize("pooler", [True, False], ids=["pooler", "no_pooler"])
@pytest.mark.parametrize("prefix", [False, True], ids=["bare_keys", "bert_prefix"])
def test_dnabert_checkpoint_variants_all_load_with_the_same_numbers(prefix, pooler, dnabert_model_dir, tmp_path):
    """The real DNABERT-S file is a pytorch_model.bin whose key prefix and pooler we could not see."""
    folder = standins.build_dnabert_standin(tmp_path / f"dnabert_{prefix}_{pooler}_{uuid.uuid4().hex[:8]}",
                                            weights_file="pytorch_model.bin", bert_prefix=prefix, pooler=pooler)
    keys = torch.load(folder / "pytorch_model.bin", weights_only=True).keys()
    assert not (folder / "model.safetensors").exists()
    assert all(k.startswith("bert.") for k in keys) == prefix and any("pooler" in k for k in keys) == pooler
    seqs = ["ACGTACGTTAGC" * 20, "GGCATTACAGATTACA" * 9]
    reference = units.load_dnabert_model(str(dnabert_model_dir), "cpu")  # same seed, model.safetensors
    torch.testing.assert_close(units.embed_dna(seqs, units.load_dnabert_model(str(folder), "cpu")),
                               units.embed_dna(seqs, reference), atol=0, rtol=0)


@pytest.mark.slow
def test_prediction_runs_every_era_and_outputs_do_not_depend_on_the_loader(era_dirs, dnabert_model_dir,
                                                                           checkpoint_300, golden_dir, tmp_path):
    """prediction.py with each era; the outputs of --esm-loader native equal auto's, byte for byte, and a
    finished run given the other loader counts as complete (the loader is information, not a setting)."""
    import prediction

    reads = golden_dir / "reads.fa"

    def predict(outdir: Path, era: str, loader: str) -> int:
        return prediction.main([str(reads), "300", str(outdir), "--model", str(checkpoint_300),
                                "--esm-model", str(era_dirs[era]), "--esm-loader", loader,
                                "--dnabert-model", str(dnabert_model_dir), "--device", "cpu", "-q"])

    for era in fastesm_eras.ERAS:
        auto, native = tmp_path / f"{era}_auto", tmp_path / f"{era}_native"
        assert predict(auto, era, "auto") == 0 and predict(native, era, "native") == 0
        for name in ("prediction_results.txt", "prediction_results_highestscore.csv", "prediction_summary.tsv"):
            assert (auto / name).read_bytes() == (native / name).read_bytes(), (era, name)
        manifest = json.loads((auto / ".virnucpro_work" / "manifest.json").read_text())
        assert manifest["esm_loaders"] == [EXPECTED_LOADER[era]]
        assert predict(auto, era, "native") == 0  # complete already: not refused as "different settings"
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_16_bit_precisions_keep_rotary_frequencies_in_fp32(precision, era_dirs):
    """.to(bf16) would cast inv_freq too: cos/sin tables off by up to 0.23; from fp32 frequencies they are
    rounded once (era a's own rotary class, as in the 2025 file)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    loaded = units.load_protein_model(str(era_dirs["a"]), "cpu", precision=precision, loader="remote")
    rotaries = [m for m in loaded.model.modules() if type(m).__name__ == "RotaryEmbedding"]
    assert rotaries and all(r.inv_freq.dtype == torch.float32 for r in rotaries)
    assert next(loaded.model.parameters()).dtype == dtype
    length = 102
    probe = torch.zeros(1, 1, length, rotaries[0].inv_freq.numel() * 2, dtype=dtype)
    cos, _ = rotaries[0]._tables(probe)
    positions = torch.arange(length, dtype=torch.float32)
    exact = torch.cat([torch.outer(positions, rotaries[0].inv_freq)] * 2, dim=-1).cos()
    cast_first = torch.cat([torch.outer(positions.to(dtype), rotaries[0].inv_freq.to(dtype))] * 2, dim=-1).cos()
    assert (cos[0, 0].float() - exact).abs().max() < 0.01  # one rounding of the table
    if precision == "bf16":
        assert (cast_first.float() - exact).abs().max() > 0.05  # what casting the buffer gives
    fp32 = units.load_protein_model(str(era_dirs["a"]), "cpu", loader="remote")
    got, want = units.embed_proteins(PROTEINS, loaded), units.embed_proteins(PROTEINS, fp32)
    relative = (got - want).norm() / want.norm()
    assert relative < (0.02 if precision == "bf16" else 0.003)
