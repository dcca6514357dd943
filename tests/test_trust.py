"""Data never chooses code: which model code may run, and checkpoints pin the revision they were trained on."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch

import fastesm_eras
import standins
import units
import virnucpro.models
from virnucpro.trust import choose_model


@pytest.fixture(autouse=True)
def fresh_model_cache(monkeypatch):
    monkeypatch.setattr(virnucpro.models, "_MODEL_CACHE", {})


def booby_trapped_model(tmp_path: Path) -> tuple[Path, Path]:
    """A FastESM2-shaped folder whose code writes a marker file when imported (then works as era a)."""
    folder = fastesm_eras.build_fastesm_era(tmp_path / f"trapped_{uuid.uuid4().hex[:8]}", "a")
    marker = tmp_path / f"code_ran_{uuid.uuid4().hex[:8]}"
    code = folder / "modeling_fastesm.py"
    code.write_text(f"open({str(marker)!r}, 'w').close()\n" + code.read_text())
    return folder, marker


def checkpoint_recording(path: Path, protein_model: str, dna_model: str, source: Path, **revisions) -> Path:
    classifier, meta = units.load_checkpoint(source)
    units.save_checkpoint(path, classifier, dna_model=dna_model, dna_dim=meta["dna_dim"], protein_model=protein_model,
                          protein_dim=meta["protein_dim"], chunk_size=300, **revisions)
    return path


def test_choose_model_lets_a_file_pick_only_default_models_and_plain_esm2(tmp_path):
    esm2 = standins.build_esm2_standin(tmp_path / "esm2")
    assert choose_model("protein", None, units.FASTESM_MODEL, units.FASTESM_MODEL, "ckpt").trust_remote_code
    assert choose_model("dna", None, None, units.DNABERT_S_MODEL, "ckpt").location == units.DNABERT_S_MODEL
    for plain in ("facebook/esm2_t36_3B_UR50D", str(esm2)):
        choice = choose_model("protein", None, plain, units.FASTESM_MODEL, "ckpt")
        assert choice.location == plain and not choice.trust_remote_code and choice.chosen_by == "checkpoint"
    named = choose_model("protein", "/models/mine", "elsewhere/other", units.FASTESM_MODEL, "ckpt")
    assert named.location == "/models/mine" and named.trust_remote_code and named.chosen_by == "command line"
    with pytest.raises(units.ModelLoadError, match="ckpt: records the protein model 'someone/remote-code'.*"
                                                   "name it with --esm-model someone/remote-code"):
        choose_model("protein", None, "someone/remote-code", units.FASTESM_MODEL, "ckpt")


def test_a_checkpoint_never_picks_code_that_runs(tmp_path, golden_dir, checkpoint_300, dnabert_model_dir, capsys):
    import evaluate
    import prediction

    trapped, marker = booby_trapped_model(tmp_path)
    checkpoint = checkpoint_recording(tmp_path / "300_model_x.pth", str(trapped), str(dnabert_model_dir),
                                      checkpoint_300)
    reads = golden_dir / "reads.fa"
    rc = prediction.main([str(reads), "300", str(tmp_path / "out"), "--model", str(checkpoint), "--dnabert-model",
                          str(dnabert_model_dir), "--device", "cpu", "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and f"--esm-model {trapped}" in err
    assert not marker.exists() and not (tmp_path / "out").exists()
    rc = evaluate.main(["--viral", str(reads), "--model", str(checkpoint), "--dnabert-model", str(dnabert_model_dir),
                        "--outdir", str(tmp_path / "eval"), "--device", "cpu", "-q"])
    assert rc == 2 and not marker.exists()
    # named on the command line, the same model is the user's choice: its code runs
    rc = prediction.main([str(reads), "300", str(tmp_path / "named"), "--model", str(checkpoint), "--esm-model",
                          str(trapped), "--dnabert-model", str(dnabert_model_dir), "--device", "cpu", "-q"])
    assert rc == 0 and marker.exists()


def test_untrusted_code_never_runs_an_esm_shaped_model_loads_natively(tmp_path):
    trapped, marker = booby_trapped_model(tmp_path)
    loaded = units.load_protein_model(str(trapped), "cpu", trust_remote_code=False)
    assert loaded.loader == "native" and not marker.exists()
    with pytest.raises(units.ModelLoadError, match="not trusted here"):
        units.load_protein_model(str(trapped), "cpu", loader="remote", trust_remote_code=False)
    assert not marker.exists()


def test_checkpoint_models_by_default_and_pinned_to_the_recorded_commit(tmp_path, golden_dir, checkpoint_300,
                                                                        fake_hub, capsys):
    """No model option: the checkpoint's default hub models, at the commit it records; --esm-revision wins."""
    from huggingface_hub import constants

    import prediction

    old = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    older = standins.build_fastesm_standin(tmp_path / "older_fastesm", seed=21)
    standins.add_to_fake_hub(constants.HF_HUB_CACHE, units.FASTESM_MODEL, older, sha=old, ref="v-old")
    checkpoint = checkpoint_recording(tmp_path / "300_model_fastesm650.pth", units.FASTESM_MODEL,
                                      units.DNABERT_S_MODEL, checkpoint_300, protein_model_revision=old)
    reads = tmp_path / "reads.fa"
    reads.write_text("".join((golden_dir / "reads.fa").read_text().splitlines(True)[:6]))

    def manifest(out: Path) -> dict:
        return json.loads((out / ".virnucpro_work" / "manifest.json").read_text())

    pinned = tmp_path / "pinned"
    assert prediction.main([str(reads), "300", str(pinned), "--model", str(checkpoint), "--device", "cpu", "-q"]) == 0
    assert manifest(pinned)["esm_model"] == units.FASTESM_MODEL
    assert manifest(pinned)["esm_model_revision"] == old  # not refs/main's commit
    assert manifest(pinned)["dnabert_model"] == units.DNABERT_S_MODEL
    latest = tmp_path / "latest"
    assert prediction.main([str(reads), "300", str(latest), "--model", str(checkpoint), "--device", "cpu",
                            "--esm-revision", "main", "-q"]) == 0
    assert manifest(latest)["esm_model_revision"] == standins.FAKE_SHAS[units.FASTESM_MODEL]
    assert "differ from those the classifier was trained with" in capsys.readouterr().err
    rows = [(pinned / "prediction_results.txt").read_text(), (latest / "prediction_results.txt").read_text()]
    assert rows[0] != rows[1]  # other weights, other numbers
    missing = checkpoint_recording(tmp_path / "300_model_gone.pth", units.FASTESM_MODEL, units.DNABERT_S_MODEL,
                                   checkpoint_300, protein_model_revision="b" * 40)
    rc = prediction.main([str(reads), "300", str(tmp_path / "gone"), "--model", str(missing), "--device", "cpu", "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and f"at revision {'b' * 40}" in err


def lay_out_as_real_cache(hub_cache: Path, repo_id: str, source: Path, sha: str) -> Path:
    """``source`` as the hub client lays it out: snapshot files are links to blobs named by their hash."""
    import hashlib

    from virnucpro.files import git_blob_id

    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    for item in source.iterdir():
        big = item.suffix == ".safetensors"
        name = hashlib.sha256(item.read_bytes()).hexdigest() if big else git_blob_id(item)
        (repo / "blobs" / name).write_bytes(item.read_bytes())
        (snapshot / item.name).symlink_to(Path("../../blobs") / name)
    return snapshot


def test_a_modified_hub_cache_is_refused_before_its_code_is_imported(tmp_path):
    from huggingface_hub import constants

    trapped, marker = booby_trapped_model(tmp_path)
    clean = fastesm_eras.build_fastesm_era(tmp_path / "clean", "a", seed=4)
    repo_id, sha = f"standin/fastesm-{uuid.uuid4().hex[:8]}", "c" * 40
    snapshot = lay_out_as_real_cache(Path(constants.HF_HUB_CACHE), repo_id, clean, sha)
    assert units.load_protein_model(repo_id, "cpu").revision == sha  # intact: loads
    virnucpro.models._MODEL_CACHE.clear()
    (snapshot / "modeling_fastesm.py").resolve().write_text((trapped / "modeling_fastesm.py").read_text())
    with pytest.raises(units.ModelLoadError, match="modeling_fastesm.py does not match its recorded hash"):
        units.load_protein_model(repo_id, "cpu", revision=sha)
    assert not marker.exists()
