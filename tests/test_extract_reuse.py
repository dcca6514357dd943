"""features_extract.py reuses a feature file only when it is exact, intact and of true provenance.

Merged files are kept only for exactly the rows they would now hold; DNABERT-S files of the
original pipeline count as zhihan1996/DNABERT-S features at an unrecorded revision; every
written file carries a checksum, so a changed one is made again (or refused by train.py);
temporary files of a killed run are removed.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

import features_extract
import standins
import train
import units
from test_features_extract import SPF, data_dir, merged_files, model_args  # noqa: F401 - fixtures
from virnucpro import extract, extraction, features, provenance
from virnucpro.defaults import DNABERT_S_MODEL
from virnucpro.errors import FeatureFileError
from virnucpro.extract import ExtractionRequest

LEGACY_VALUE = 7.25
VIRAL_SPLITS = Path("viral.1.1.identified_nucleotide")
VIRAL_PROTEIN_SPLITS = Path("viral.1.1.identified_protein")
VIRAL_MERGED = Path("data_merge") / "viral.1.1_merged"


def run_extract(data: Path, args: list[str], *extra: str) -> int:
    return features_extract.main(["--data-dir", str(data), *args, *extra])


def viral_ids(data: Path, index: int) -> list[str]:
    return [r.id for r in units.read_fasta(data / VIRAL_SPLITS / f"output_{index}.fa")]


def save_legacy_dna(path: Path, ids: list[str]) -> dict:
    """A DNABERT-S file as the original pipeline wrote it (no model, list of dicts)."""
    legacy = {"nucleotide": ids, "data": [{"label": i, "mean_representation": [LEGACY_VALUE] * 768} for i in ids]}
    torch.save(legacy, path)
    return legacy


def change_one_float(path: Path) -> None:
    """Change one number of a written feature file, keeping everything else (its checksum too)."""
    obj = torch.load(path, weights_only=True)
    obj["data"][0, 0] += 1.0
    torch.save(obj, path)


def lines_naming(err: str, path: Path) -> list[str]:
    return [line for line in err.splitlines() if str(path) in line]


@pytest.fixture
def default_dna_args(fake_hub, esm_model_dir: Path) -> list[str]:
    """The stand-in protein model and the default DNA model (zhihan1996/DNABERT-S, from the fake hub)."""
    return ["--esm-model", str(esm_model_dir), "--device", "cpu", "--sequences-per-file", str(SPF), "-q"]


# --- (a) exact ids ----------------------------------------------------------------------------


def test_another_sequences_per_file_remakes_the_merged_files(data_dir: Path, model_args: list[str]) -> None:
    assert run_extract(data_dir, model_args, "--sequences-per-file", str(SPF // 2)) == 0
    small = merged_files(data_dir)
    assert small["viral.1.1_merged/output_1_merged.pt"]["data"].shape[0] == SPF // 2
    assert run_extract(data_dir, model_args) == 0  # SPF rows per file now: files of SPF / 2 rows are redone
    for k in range(1, 5):
        merged = merged_files(data_dir)[f"viral.1.1_merged/output_{k}_merged.pt"]
        assert merged["ids"] == viral_ids(data_dir, k) and merged["data"].shape[0] == SPF


def test_a_merged_file_is_kept_only_for_exactly_its_rows(data_dir: Path, model_args: list[str]) -> None:
    assert run_extract(data_dir, model_args) == 0
    target = data_dir / VIRAL_MERGED / "output_1_merged.pt"
    whole = torch.load(target, weights_only=True)
    features.save_merged(target, whole["ids"][:2], whole["data"][:2], whole["dna_dim"], whole["protein_dim"],
                         labels=whole["labels"], dna_model=whole["dna_model"], protein_model=whole["protein_model"],
                         revisions={key: whole[key] for key in provenance.REVISION_KEYS.values()})
    assert run_extract(data_dir, model_args) == 0
    again = torch.load(target, weights_only=True)
    assert again["ids"] == whole["ids"] and torch.equal(again["data"], whole["data"])


# --- (b) true provenance -----------------------------------------------------------------------


def test_original_dna_features_under_another_dna_model_are_recomputed(data_dir: Path, model_args: list[str],
                                                                      tmp_path: Path, dnabert_model_dir: Path,
                                                                      esm_model_dir: Path) -> None:
    clean = tmp_path / "clean" / "data"
    shutil.copytree(data_dir, clean)
    assert run_extract(clean, model_args) == 0
    assert run_extract(data_dir, model_args) == 0
    legacy_path = data_dir / VIRAL_SPLITS / "output_1_DNABERT_S.pt"
    save_legacy_dna(legacy_path, viral_ids(data_dir, 1))
    assert run_extract(data_dir, model_args, "--force") == 0
    merged = merged_files(data_dir)["viral.1.1_merged/output_1_merged.pt"]
    assert torch.equal(merged["data"], merged_files(clean)["viral.1.1_merged/output_1_merged.pt"]["data"])
    assert merged["dna_model"] == str(dnabert_model_dir) and merged["protein_model"] == str(esm_model_dir)
    assert merged["dna_model_revision"] == provenance.resolve_model_revision(str(dnabert_model_dir))
    assert torch.load(legacy_path, weights_only=True)["model"] == str(dnabert_model_dir)  # made by the run's model


def test_original_dna_features_under_the_default_model_are_reused_at_an_unrecorded_revision(
        data_dir: Path, default_dna_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    clean = tmp_path / "clean" / "data"
    shutil.copytree(data_dir, clean)
    assert run_extract(clean, default_dna_args) == 0
    extract.select_splits(data_dir, extract.find_sources(data_dir), SPF, 42)
    legacy_path = data_dir / VIRAL_SPLITS / "output_1_DNABERT_S.pt"
    legacy = save_legacy_dna(legacy_path, viral_ids(data_dir, 1))
    save_legacy_dna(data_dir / VIRAL_SPLITS / "output_2_DNABERT_S.pt", ["a", "b", "c", "d"])  # stale: other ids
    assert run_extract(data_dir, default_dna_args) == 0
    made, reference = merged_files(data_dir), merged_files(clean)
    first = made["viral.1.1_merged/output_1_merged.pt"]
    assert torch.all(first["data"][:, :768] == LEGACY_VALUE)
    assert torch.equal(first["data"][:, 768:], reference["viral.1.1_merged/output_1_merged.pt"]["data"][:, 768:])
    assert first["dna_model"] == DNABERT_S_MODEL and first["dna_model_revision"] == features.UNRECORDED_REVISION
    assert "dna_model_loader" not in first  # the original file records no loader either
    assert torch.load(legacy_path, weights_only=True) == legacy  # left untouched
    second = made["viral.1.1_merged/output_2_merged.pt"]
    assert torch.equal(second["data"], reference["viral.1.1_merged/output_2_merged.pt"]["data"])  # recomputed
    assert second["dna_model_revision"] == standins.FAKE_SHAS[DNABERT_S_MODEL]

    # a rerun keeps the merged file made from the original features: it is what the run would make
    target = data_dir / VIRAL_MERGED / "output_1_merged.pt"
    stamp = target.stat().st_mtime_ns
    assert run_extract(data_dir, default_dna_args) == 0
    assert target.stat().st_mtime_ns == stamp

    # train.py: one warning for the mix of unrecorded and recorded DNA revisions; the checkpoint records none
    out = tmp_path / "model.pth"
    capsys.readouterr()
    assert train.main(train_argv(data_dir, out)) == 0
    err = capsys.readouterr().err.strip().splitlines()
    mixed = [line for line in err if "unrecorded revision" in line]
    assert len(mixed) == 1 and mixed[0].startswith("WARNING: 1 merged file(s)") and DNABERT_S_MODEL in mixed[0], err
    meta = units.load_checkpoint(out)[1]
    assert meta["dna_model_revision"] is None and meta["dna_model"] == DNABERT_S_MODEL
    assert meta["protein_model_revision"] == second["protein_model_revision"]


def train_argv(data: Path, out: Path) -> list[str]:
    return ["--data-dir", str(data / "data_merge"), "--out", str(out), "--log", str(out.with_suffix(".log")),
            "--epochs", "1", "--batch-size", "4", "--hidden-dim", "8", "--device", "cpu", "--split-by", "record",
            "-q"]


def test_merge_records_the_provenance_of_its_files(tmp_path: Path) -> None:
    ids = ["a", "b"]
    dna = features.feature_object(features.DNA_IDS_KEY, ids, torch.randn(2, 8), model="dna/x", revision="r1",
                                  loader="remote")
    protein = features.feature_object(features.PROTEIN_IDS_KEY, ids, torch.randn(2, 4), model="prot/y",
                                      revision="r2", loader="native")
    merged = extraction.merge_data(dna, protein, None, "host")
    assert (merged["dna_model"], merged["dna_model_revision"], merged["dna_model_loader"]) == ("dna/x", "r1", "remote")
    assert (merged["protein_model"], merged["protein_model_revision"]) == ("prot/y", "r2")
    with pytest.raises(FeatureFileError, match="made by 'dna/x', not 'dna/other'"):  # never re-stamped
        extraction.merge_data(dna, protein, None, "host", dna_model="dna/other")
    original = {"nucleotide": ids, "data": [{"label": i, "mean_representation": [1.0] * 8} for i in ids]}
    named = extraction.merge_data(original, protein, None, "host", dna_model=DNABERT_S_MODEL)
    assert named["dna_model"] == DNABERT_S_MODEL and named["dna_model_revision"] == features.UNRECORDED_REVISION
    anonymous = extraction.merge_data(original, protein, None, "host")  # the original units.merge_data
    assert "dna_model" not in anonymous and "dna_model_revision" not in anonymous


# --- (c, d) checksums --------------------------------------------------------------------------


@pytest.mark.parametrize("part", ["dna", "protein"])
def test_a_changed_feature_file_is_made_again_with_one_warning(data_dir: Path, model_args: list[str],
                                                               capsys: pytest.CaptureFixture, part: str) -> None:
    assert run_extract(data_dir, model_args) == 0
    clean = merged_files(data_dir)
    damaged = (data_dir / VIRAL_SPLITS / "output_1_DNABERT_S.pt" if part == "dna"
               else data_dir / VIRAL_PROTEIN_SPLITS / "output_1_ESM.pt")
    before = torch.load(damaged, weights_only=True)["data"]
    change_one_float(damaged)
    capsys.readouterr()
    assert run_extract(data_dir, model_args, "--force") == 0  # merged files remade from the feature files
    named = lines_naming(capsys.readouterr().err, damaged)
    assert named == [f"WARNING: {damaged}: damaged (checksum mismatch); it is made again"], named
    again = merged_files(data_dir)
    assert list(again) == list(clean)
    for name in clean:
        assert torch.equal(again[name]["data"], clean[name]["data"]), name
    assert torch.equal(torch.load(damaged, weights_only=True)["data"], before)


def test_a_changed_merged_file_is_made_again_with_one_warning(data_dir: Path, model_args: list[str],
                                                              capsys: pytest.CaptureFixture) -> None:
    assert run_extract(data_dir, model_args) == 0
    clean = merged_files(data_dir)
    damaged = data_dir / VIRAL_MERGED / "output_1_merged.pt"
    change_one_float(damaged)
    capsys.readouterr()
    assert run_extract(data_dir, model_args) == 0
    named = lines_naming(capsys.readouterr().err, damaged)
    assert named == [f"WARNING: {damaged}: damaged (checksum mismatch); it is made again"], named
    again = merged_files(data_dir)
    for name in clean:
        assert torch.equal(again[name]["data"], clean[name]["data"]), name


def test_training_refuses_a_damaged_merged_file(data_dir: Path, model_args: list[str], tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    assert run_extract(data_dir, model_args) == 0
    damaged = data_dir / VIRAL_MERGED / "output_2_merged.pt"
    change_one_float(damaged)
    capsys.readouterr()
    out = tmp_path / "model.pth"
    assert train.main(train_argv(data_dir, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"train.py: error: {damaged}: damaged (checksum mismatch)"], err
    assert not out.exists()


def test_written_files_verify_and_files_without_a_checksum_are_read_as_before(tmp_path: Path) -> None:
    ids = ["a", "b", "c"]
    path = tmp_path / "p.pt"
    torch.save(features.feature_object(features.PROTEIN_IDS_KEY, ids, torch.randn(3, 4), model="m", revision="r",
                                       loader="remote"), path)
    assert features.load_protein_features(path)[0] == ids
    obj = torch.load(path, weights_only=True)
    obj["proteins"] = ["a", "c", "b"]  # ids swapped: the rows no longer belong to them
    torch.save(obj, path)
    with pytest.raises(FeatureFileError, match="damaged"):
        features.load_protein_features(path)
    del obj[features.CHECKSUM_KEY]  # older files: cannot be checked, read as they are
    torch.save(obj, path)
    assert features.load_protein_features(path)[0] == ["a", "c", "b"]
    merged = tmp_path / "m.pt"
    features.save_merged(merged, ids, torch.zeros(3, 6), 2, 4, labels=[1])
    assert features.read_merged_file(merged).ids == ids


# --- (e) temporary files of a killed run --------------------------------------------------------


def test_temporary_files_of_a_killed_run_are_removed(data_dir: Path, model_args: list[str], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    assert run_extract(data_dir, model_args) == 0
    temps = [data_dir / VIRAL_PROTEIN_SPLITS / ".output_1_ESM.pt.k2j4h6g8.tmp",
             data_dir / VIRAL_SPLITS / ".output_3_DNABERT_S.pt.a1b2c3d4.tmp",
             data_dir / VIRAL_MERGED / ".output_1_merged.pt.zz99yy88.tmp"]
    others = [data_dir / VIRAL_MERGED / ".notes.txt.a1b2c3d4.tmp",   # not a name of this program
              data_dir / VIRAL_PROTEIN_SPLITS / "output_1_ESM.pt.tmp", data_dir / "keep.tmp"]
    for path in temps + others:
        path.write_bytes(b"half a file")
    outside = tmp_path / "precious.pt"
    outside.write_bytes(b"not ours")
    link = data_dir / VIRAL_MERGED / ".output_2_merged.pt.linklink.tmp"
    os.symlink(outside, link)
    capsys.readouterr()
    assert run_extract(data_dir, [a for a in model_args if a != "-q"]) == 0
    assert "INFO: removed 3 temporary file(s) left by an interrupted run" in capsys.readouterr().err
    assert not any(p.exists() for p in temps)
    assert all(p.exists() for p in others) and link.is_symlink() and outside.read_bytes() == b"not ours"


# --- the command line builds one request ---------------------------------------------------------


def test_the_request_is_built_from_the_options_only(tmp_path: Path) -> None:
    esm2 = standins.build_esm2_standin(tmp_path / "esm2")
    args = features_extract.build_parser().parse_args(["--data-dir", str(tmp_path), "--esm-model", str(esm2),
                                                       "--seed", "7", "--force", "-q"])
    request = features_extract.build_request(args)
    assert isinstance(request, ExtractionRequest) and request.revisions is None
    assert (request.data_dir, request.seed, request.force, request.progress) == (tmp_path, 7, True, False)
    assert request.dna.location == DNABERT_S_MODEL and request.protein.location == str(esm2)
    assert request.trust_protein_code is False  # a plain ESM-2 runs no code of its own
    with pytest.raises(AttributeError):
        request.force = False  # type: ignore[misc]
