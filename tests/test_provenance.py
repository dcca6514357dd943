"""Model provenance: resolved revisions (hub commit / local content hash) in features, checkpoints, manifests."""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
import torch

import features_extract
import prediction
import standins
import train
import units
import virnucpro.models
from virnucpro import provenance, rundir

SPF = 4


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    """No hub revision or loaded model carried over from another test."""
    provenance.forget_resolved_revisions()
    monkeypatch.setattr(virnucpro.models, "_MODEL_CACHE", {})
    yield
    provenance.forget_resolved_revisions()


def perturb_weights(model_dir: Path) -> None:
    """Change one weight of a model directory in place (same path, other weights)."""
    from safetensors.torch import load_file, save_file

    path = model_dir / "model.safetensors"
    state = load_file(str(path))
    name = sorted(k for k, v in state.items() if v.is_floating_point() and "encoder" in k)[0]  # used by the embedding
    state[name] = state[name] + 0.5
    save_file(state, str(path), metadata={"format": "pt"})


def save_classifier(path: Path, dna_dir: Path, esm_dir: Path, **revisions) -> Path:
    dna = units.load_dnabert_model(str(dna_dir), "cpu")
    protein = units.load_protein_model(str(esm_dir), "cpu")
    torch.manual_seed(3)
    model = units.MLPClassifier(dna.hidden_size + protein.hidden_size).eval()
    units.save_checkpoint(path, model, dna_model=str(dna_dir), dna_dim=dna.hidden_size, protein_model=str(esm_dir),
                          protein_dim=protein.hidden_size, chunk_size=300, **revisions)
    return path


def predict(reads: Path, out: Path, checkpoint: Path, dna_dir: Path, esm_dir: Path, *extra: str) -> int:
    return prediction.main([str(reads), "300", str(out), "--model", str(checkpoint), "--esm-model", str(esm_dir),
                            "--dnabert-model", str(dna_dir), "--device", "cpu", "-q", *extra])


# ---------------------------------------------------------------------------
# Resolving revisions
# ---------------------------------------------------------------------------


def test_fake_hub_ids_resolve_to_their_snapshot_commit(fake_hub):
    for repo_id in (standins.FASTESM_HUB_ID, standins.DNABERT_HUB_ID):
        assert provenance.resolve_model_revision(repo_id) == standins.FAKE_SHAS[repo_id]
    assert units.load_protein_model(units.FASTESM_MODEL, "cpu").revision == standins.FAKE_SHAS[units.FASTESM_MODEL]
    assert units.load_dnabert_model(units.DNABERT_S_MODEL, "cpu").revision == standins.FAKE_SHAS[units.DNABERT_S_MODEL]


def test_a_pinned_hub_revision_loads_that_snapshot(fake_hub, esm_model_dir, tmp_path):
    from huggingface_hub import constants

    repo_id = f"standin/esm-{uuid.uuid4().hex[:8]}"
    other_dir = standins.build_fastesm_standin(tmp_path / "esm_v2", seed=5)
    main_sha, v2_sha = "1" * 40, "2" * 40
    standins.add_to_fake_hub(constants.HF_HUB_CACHE, repo_id, esm_model_dir, sha=main_sha)
    standins.add_to_fake_hub(constants.HF_HUB_CACHE, repo_id, other_dir, sha=v2_sha, ref="v2")
    assert provenance.resolve_model_revision(repo_id) == main_sha
    assert provenance.resolve_model_revision(repo_id, "v2") == v2_sha
    assert provenance.resolve_model_revision(repo_id, v2_sha) == v2_sha
    proteins = ["MKVLAWTTQ", "ACDEFGHIKLMNPQRSTVWY"]
    pinned = units.load_protein_model(repo_id, "cpu", revision="v2")
    assert pinned.revision == v2_sha
    torch.testing.assert_close(units.embed_proteins(proteins, pinned),
                               units.embed_proteins(proteins, units.load_protein_model(str(other_dir), "cpu")))
    latest = units.load_protein_model(repo_id, "cpu")
    assert latest.revision == main_sha
    assert (units.embed_proteins(proteins, latest) - units.embed_proteins(proteins, pinned)).abs().max() > 1e-3
    with pytest.raises(units.ModelLoadError, match="revision v9.*HF_HUB_OFFLINE"):
        units.load_protein_model(repo_id, "cpu", revision="v9")


def test_local_directory_content_hash_is_cached_and_follows_the_files(dnabert_model_dir, tmp_path, monkeypatch):
    copy = standins.copy_model_dir(dnabert_model_dir, tmp_path / "dna")
    first = provenance.resolve_model_revision(str(copy))
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 64
    assert provenance.hash_cache_path().is_file()
    hashed = []
    monkeypatch.setattr(provenance, "file_sha256", lambda path: hashed.append(Path(path).name) or "x")
    assert provenance.resolve_model_revision(str(copy)) == first  # (path, size, mtime) unchanged: from the cache
    assert hashed == []
    (copy / "README.md").write_text("notes")  # not a model file
    assert provenance.resolve_model_revision(str(copy)) == first
    monkeypatch.undo()
    perturb_weights(copy)
    changed = provenance.resolve_model_revision(str(copy))
    assert changed != first and changed.startswith("sha256:")
    assert provenance.resolve_model_revision(str(dnabert_model_dir)) == first  # the same files elsewhere


def test_revision_of_a_local_directory_is_refused(esm_model_dir):
    with pytest.raises(units.ModelLoadError, match="local directory.*hub ids only"):
        units.load_protein_model(str(esm_model_dir), "cpu", revision="main")


def test_no_network_says_so(monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(units.ModelLoadError, match="no network.*not in the local cache"):
        units.load_dnabert_model("nobody/unreachable", "cpu")


# ---------------------------------------------------------------------------
# Checkpoints and prediction
# ---------------------------------------------------------------------------


def test_checkpoint_records_revisions(tmp_path, dnabert_model_dir, esm_model_dir):
    path = save_classifier(tmp_path / "c.pth", dnabert_model_dir, esm_model_dir,
                           dna_model_revision="a" * 40, protein_model_revision="sha256:" + "b" * 64)
    _, meta = units.load_checkpoint(path)
    assert meta["dna_model_revision"] == "a" * 40 and meta["protein_model_revision"] == "sha256:" + "b" * 64
    old = save_classifier(tmp_path / "old.pth", dnabert_model_dir, esm_model_dir)
    assert units.load_checkpoint(old)[1]["dna_model_revision"] is None


@pytest.fixture()
def reads(tmp_path, golden_dir) -> Path:
    """The first 3 golden reads."""
    lines = (golden_dir / "reads.fa").read_text().splitlines(True)
    starts = [i for i, line in enumerate(lines) if line.startswith(">")]
    path = tmp_path / "reads.fa"
    path.write_text("".join(lines[:starts[3]]))
    return path


def test_changed_weights_at_the_same_path_refuse_a_resume(tmp_path, reads, dnabert_model_dir, esm_model_dir, capsys):
    dna = standins.copy_model_dir(dnabert_model_dir, tmp_path / "dna_model")
    revisions = {"dna_model_revision": provenance.resolve_model_revision(str(dna)),
                 "protein_model_revision": provenance.resolve_model_revision(str(esm_model_dir))}
    checkpoint = save_classifier(tmp_path / "c.pth", dna, esm_model_dir, **revisions)
    out = tmp_path / "out"
    assert predict(reads, out, checkpoint, dna, esm_model_dir) == 0
    assert "differ" not in capsys.readouterr().err
    manifest = json.loads((out / rundir.WORK_DIR_NAME / rundir.MANIFEST_NAME).read_text())
    assert manifest["dnabert_model_revision"] == revisions["dna_model_revision"]
    assert manifest["esm_model_revision"] == revisions["protein_model_revision"]
    assert predict(reads, out, checkpoint, dna, esm_model_dir) == 0  # same weights: nothing to do

    perturb_weights(dna)
    assert predict(reads, out, checkpoint, dna, esm_model_dir) == 2
    err = capsys.readouterr().err
    assert "dnabert_model_revision" in err and "esm_model_revision" not in err and "--force" in err


def test_models_other_than_the_checkpoints_warn_or_with_strict_models_exit_2(tmp_path, reads, dnabert_model_dir,
                                                                             esm_model_dir, capsys):
    checkpoint = save_classifier(tmp_path / "c.pth", dnabert_model_dir, esm_model_dir,
                                 dna_model_revision="c" * 40,
                                 protein_model_revision=provenance.resolve_model_revision(str(esm_model_dir)))
    assert predict(reads, tmp_path / "warned", checkpoint, dnabert_model_dir, esm_model_dir) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "DNA model: trained with" in err and "commit cccccccccccc" in err
    assert "protein model" not in err and "--strict-models" in err
    assert (tmp_path / "warned" / rundir.RESULTS_NAME).is_file()

    out = tmp_path / "strict"
    assert predict(reads, out, checkpoint, dnabert_model_dir, esm_model_dir, "--strict-models") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "refused: --strict-models" in err
    assert not (out / rundir.RESULTS_NAME).exists()

    unrecorded = save_classifier(tmp_path / "old.pth", dnabert_model_dir, esm_model_dir)
    assert predict(reads, tmp_path / "old", unrecorded, dnabert_model_dir, esm_model_dir) == 0
    assert predict(reads, tmp_path / "old_strict", unrecorded, dnabert_model_dir, esm_model_dir,
                   "--strict-models") == 2
    assert "records no" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# features_extract.py and train.py never mix revisions
# ---------------------------------------------------------------------------


def test_features_extract_records_revisions_and_remakes_other_revisions(tmp_path, golden_dir, dnabert_model_dir,
                                                                        esm_model_dir):
    data = tmp_path / "data"
    data.mkdir()
    for source in ("viral.1.1", "bacteria.1.1"):
        for kind in ("nucleotide", "protein"):
            lines = (golden_dir / "train_300" / f"{source}.identified_{kind}.fa").read_text().splitlines(True)
            (data / f"{source}.identified_{kind}.fa").write_text("".join(lines[:2 * SPF]))
    esm = standins.copy_model_dir(esm_model_dir, tmp_path / "esm_model")
    argv = ["--data-dir", str(data), "--esm-model", str(esm), "--dnabert-model", str(dnabert_model_dir),
            "--device", "cpu", "--sequences-per-file", str(SPF), "-q"]

    def merged() -> list[dict]:
        files = sorted((data / "data_merge").rglob("*_merged.pt"))
        assert len(files) == 2
        return [torch.load(p, weights_only=True) for p in files]

    assert features_extract.main(argv) == 0
    dna_rev = provenance.resolve_model_revision(str(dnabert_model_dir))
    first_rev = provenance.resolve_model_revision(str(esm))
    assert all(m["dna_model_revision"] == dna_rev and m["protein_model_revision"] == first_rev for m in merged())
    before = [m["data"] for m in merged()]

    perturb_weights(esm)
    assert features_extract.main(argv) == 0
    second_rev = provenance.resolve_model_revision(str(esm))
    after = merged()
    assert second_rev != first_rev
    assert all(m["protein_model_revision"] == second_rev for m in after)
    for old, new in zip(before, after):
        torch.testing.assert_close(new["data"][:, :768], old[:, :768])  # DNA features reused
        assert (new["data"][:, 768:] - old[:, 768:]).abs().max() > 1e-4  # protein features remade
    protein_files = sorted(data.rglob("output_*_ESM.pt"))
    assert protein_files and all(torch.load(p, weights_only=True)["model_revision"] == second_rev
                                 for p in protein_files)


def write_merged(path: Path, label: int, seed: int, **revisions) -> None:
    gen = torch.Generator().manual_seed(seed)
    ids = [f"S{seed}_{s}_chunk_1F1" for s in range(8)]
    data = torch.randn(len(ids), 12, generator=gen) + (1.5 if label else -1.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"ids": ids, "data": data, "labels": [label], "dna_dim": 8, "protein_dim": 4, **revisions}, path)


def test_train_records_revisions_and_refuses_mixed_ones(tmp_path, capsys):
    merge = tmp_path / "data_merge"
    revisions = {"dna_model_revision": "d" * 40, "protein_model_revision": "e" * 40}
    write_merged(merge / "viral.1.1_merged" / "output_1_merged.pt", 1, 1, **revisions)
    write_merged(merge / "bacteria_merged" / "output_1_merged.pt", 0, 2, **revisions)
    out = tmp_path / "model.pth"
    argv = ["--data-dir", str(merge), "--out", str(out), "--log", str(tmp_path / "log.txt"), "--epochs", "2",
            "--batch-size", "4", "--hidden-dim", "8", "--device", "cpu", "--split-by", "record", "-q"]
    assert train.main(argv) == 0
    meta = units.load_checkpoint(out)[1]
    assert (meta["dna_model_revision"], meta["protein_model_revision"]) == ("d" * 40, "e" * 40)

    write_merged(merge / "bacteria_merged" / "output_2_merged.pt", 0, 3, **{**revisions,
                                                                          "protein_model_revision": "f" * 40})
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert "protein_model_revision" in err and "cannot be mixed" in err
