"""features_extract.py with the tiny stand-in models (CPU, offline)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import features_extract
import virnucpro
from virnucpro import extract
import units

SPF = 4  # sequences per split file in these tests


def copy_identified(golden_dir: Path, source: str, data: Path, target: str, keep: int | None = None) -> None:
    """Copy a golden identified nucleotide/protein pair under another name (first ``keep`` records)."""
    for kind in ("nucleotide", "protein"):
        lines = (golden_dir / "train_300" / f"{source}.identified_{kind}.fa").read_text().splitlines(True)
        if keep is not None:
            lines = lines[: 2 * keep]  # the files hold one line per sequence
        (data / f"{target}.identified_{kind}.fa").write_text("".join(lines))


@pytest.fixture
def data_dir(golden_dir: Path, tmp_path: Path) -> Path:
    """viral (18 sequences -> 4 full splits), bacteria and fungi hosts (22 -> 5 full splits each)."""
    data = tmp_path / "data"
    data.mkdir()
    copy_identified(golden_dir, "viral.1.1", data, "viral.1.1")
    copy_identified(golden_dir, "bacteria.1.1", data, "bacteria.1.1")
    copy_identified(golden_dir, "bacteria.1.1", data, "fungi.1.1")
    (data / "other.1.1.identified_nucleotide.fa").write_text(">x\nACGT\n")  # unknown category: ignored
    return data


@pytest.fixture
def model_args(esm_model_dir: Path, dnabert_model_dir: Path) -> list[str]:
    return ["--esm-model", str(esm_model_dir), "--dnabert-model", str(dnabert_model_dir),
            "--device", "cpu", "--sequences-per-file", str(SPF), "-q"]


def merged_files(data: Path) -> dict[str, dict]:
    root = data / "data_merge"
    return {p.relative_to(root).as_posix(): torch.load(p, weights_only=True)
            for p in sorted(root.rglob("*.pt"))}


def test_selection_is_seeded_and_balanced(data_dir: Path) -> None:
    sources = extract.find_sources(data_dir)
    assert [(s.name, s.kind, s.category) for s in sources] == [
        ("bacteria.1.1", "host", "bacteria"), ("fungi.1.1", "host", "fungi"), ("viral.1.1", "viral", "viral")]
    splits = extract.select_splits(data_dir, sources, SPF, 42)
    viral = [s for s in splits if s.kind == "viral"]
    host = [s for s in splits if s.kind == "host"]
    assert [s.index for s in viral] == [1, 2, 3, 4]  # the 2 leftover sequences are not used
    assert sorted(s.source.category for s in host) == ["bacteria", "fungi"]  # ceil(4/7) = 1 each
    again = extract.select_splits(data_dir, sources, SPF, 42)
    assert [(s.source.nucleotide, s.index) for s in again] == [(s.source.nucleotide, s.index) for s in splits]
    assert viral[0].merged == data_dir / "data_merge" / "viral.1.1_merged" / "output_1_merged.pt"
    assert {s.merged.parent.name for s in host} == {"bacteria.1.1_merged", "fungi.1.1_merged"}
    # splits sit in sibling folders, and stale split files of an earlier run are gone
    assert sorted(p.name for p in (data_dir / "viral.1.1.identified_nucleotide").iterdir()) == \
        [f"output_{k}.fa" for k in range(1, 6)]


def test_host_sample_is_cut_down_to_the_viral_count(data_dir: Path, golden_dir: Path) -> None:
    copy_identified(golden_dir, "viral.1.1", data_dir, "viral.1.1", keep=SPF + 1)  # one viral split
    sources = extract.find_sources(data_dir)
    picks = set()
    for seed in range(6):
        splits = extract.select_splits(data_dir, sources, SPF, seed)
        assert [s.kind for s in splits] == ["viral", "host"]
        picks.add(splits[1].source.category)
    assert picks == {"bacteria", "fungi"}


def test_no_viral_file_is_an_error(data_dir: Path, capsys: pytest.CaptureFixture) -> None:
    for path in [*data_dir.glob("viral*"), data_dir / "other.1.1.identified_nucleotide.fa"]:
        path.unlink()
    assert features_extract.main(["--data-dir", str(data_dir), "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("features_extract.py: error:") and "viral" in err[0]


def test_missing_data_dir_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert features_extract.main(["--data-dir", str(tmp_path / "nope"), "--device", "cpu", "-q"]) == 2
    assert "nope" in capsys.readouterr().err


def test_merged_features_labels_and_determinism(data_dir: Path, model_args: list[str], tmp_path: Path) -> None:
    twin = tmp_path / "twin" / "data"
    shutil.copytree(data_dir, twin)
    assert features_extract.main(["--data-dir", str(data_dir), *model_args]) == 0
    merged = merged_files(data_dir)
    viral_names = [f"viral.1.1_merged/output_{k}_merged.pt" for k in range(1, 5)]
    assert [n for n in merged if n.startswith("viral")] == viral_names
    hosts = [n for n in merged if not n.startswith("viral")]
    assert len(hosts) == 2 and {n.split("/")[0] for n in hosts} == {"bacteria.1.1_merged", "fungi.1.1_merged"}
    for name, obj in merged.items():
        assert obj["labels"] == ([1] if name.startswith("viral") else [0])
        assert obj["data"].shape == (len(obj["ids"]), 768 + 64)
        assert obj["dna_dim"] == 768 and obj["protein_dim"] == 64
        assert len(obj["ids"]) == SPF and torch.isfinite(obj["data"]).all()
        assert obj["virnucpro_version"] == virnucpro.__version__
    for features in [*data_dir.glob("*/output_*_DNABERT_S.pt"), *data_dir.glob("*/output_*_ESM.pt")]:
        assert torch.load(features, weights_only=True)["virnucpro_version"] == virnucpro.__version__, features
    viral_ids = [r.id for r in units.read_fasta(data_dir / "viral.1.1.identified_nucleotide.fa")]
    assert merged[viral_names[0]]["ids"] == viral_ids[:SPF]

    # a second run on a copy gives identical files
    assert features_extract.main(["--data-dir", str(twin), *model_args]) == 0
    other = merged_files(twin)
    assert list(other) == list(merged)
    for name in merged:
        assert other[name]["ids"] == merged[name]["ids"]
        assert torch.equal(other[name]["data"], merged[name]["data"])


def test_old_protein_features_are_recomputed(data_dir: Path, model_args: list[str]) -> None:
    """ESM2-3B features of the original (2560-d, no model name) are not mixed with FastESM2 ones."""
    extract.select_splits(data_dir, extract.find_sources(data_dir), SPF, 42)
    protein_dir = data_dir / "viral.1.1.identified_protein"
    ids = [r.id for r in units.read_fasta(protein_dir / "output_1.fa", alphabet="protein")]
    torch.save({"proteins": ids, "data": [torch.ones(2560) for _ in ids]}, protein_dir / "output_1_ESM.pt")
    assert features_extract.main(["--data-dir", str(data_dir), *model_args]) == 0
    target = data_dir / "data_merge" / "viral.1.1_merged" / "output_1_merged.pt"
    merged = torch.load(target, weights_only=True)
    assert merged["data"].shape[1] == 768 + 64
    assert merged["protein_model"] == model_args[1] and merged["dna_model"] == model_args[3]
    # a rerun keeps merged files made from the same split by the same models
    stamp = target.stat().st_mtime_ns
    assert features_extract.main(["--data-dir", str(data_dir), *model_args]) == 0
    assert target.stat().st_mtime_ns == stamp


def test_compile_reaches_both_extractors_with_the_eager_numbers(data_dir: Path, model_args: list[str],
                                                                tmp_path: Path, monkeypatch, request) -> None:
    """--compile compiles both models' encoder layers before the first split, as prediction.py does."""
    from virnucpro import extraction

    twin = tmp_path / "twin" / "data"
    shutil.copytree(data_dir, twin)
    assert features_extract.main(["--data-dir", str(twin), *model_args]) == 0
    compiled = request.getfixturevalue("compile_eagerly")  # from here on: compiled, in a cache of its own
    used: list[tuple[str, bool]] = []
    for name in ("embed_dna", "embed_proteins"):
        def spy(seqs, loaded, *args, _name=name, _real=getattr(extraction, name), **kwargs):
            used.append((_name, loaded.compiled))
            return _real(seqs, loaded, *args, **kwargs)
        monkeypatch.setattr(extraction, name, spy)
    assert features_extract.main(["--data-dir", str(data_dir), "--compile", *model_args]) == 0
    assert compiled and {kind for kind, _ in used} == {"embed_dna", "embed_proteins"}
    assert all(is_compiled for _, is_compiled in used), used
    eager, merged = merged_files(twin), merged_files(data_dir)
    assert list(merged) == list(eager)
    for name in merged:
        torch.testing.assert_close(merged[name]["data"], eager[name]["data"], atol=1e-5, rtol=0)
