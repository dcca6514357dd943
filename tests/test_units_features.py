"""units.merge_data (original and new feature formats) and classifier checkpoints."""
from __future__ import annotations

import os
import pickle

import pytest
import torch
from torch import nn

import units
from virnucpro.features import read_merged_file, require_finite, save_merged


# ---------------------------------------------------------------------------
# merge_data
# ---------------------------------------------------------------------------


def original_dna_file(path, ids, width=768, seed=0):
    """The ORIGINAL DNABERT-S format: list of {'label', 'mean_representation': [floats]}."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(len(ids), width, generator=gen)
    torch.save({"nucleotide": list(ids),
                "data": [{"label": i, "mean_representation": r.tolist()} for i, r in zip(ids, rows)]}, path)
    return rows


def original_protein_file(path, ids, width=64, seed=1):
    """The ORIGINAL protein format: list of per-sequence tensors."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(len(ids), width, generator=gen)
    torch.save({"proteins": list(ids), "data": [r.clone() for r in rows]}, path)
    return rows


@pytest.mark.parametrize("data_type, label", [("viral", [1]), ("host", [0])])
def test_merge_original_formats(tmp_path, data_type, label):
    dna_ids = ["c1F1", "c1R2", "c2F3", "c3R1"]
    protein_ids = ["c3R1", "c1F1", "c2F3", "zzz"]  # other order; c1R2 has no protein vector
    dna = original_dna_file(tmp_path / "dna.pt", dna_ids)
    protein = original_protein_file(tmp_path / "prot.pt", protein_ids)
    merged_path = tmp_path / "merged.pt"
    merged = units.merge_data(tmp_path / "dna.pt", tmp_path / "prot.pt", merged_path, data_type)
    assert merged["ids"] == ["c1F1", "c2F3", "c3R1"]
    assert merged["data"].shape == (3, 768 + 64) and merged["data"].dtype == torch.float32
    assert merged["dna_dim"] == 768 and merged["protein_dim"] == 64
    assert merged["labels"] == label
    for row, (d, p) in enumerate([(0, 1), (2, 2), (3, 0)]):
        torch.testing.assert_close(merged["data"][row], torch.cat((dna[d], protein[p])))
    saved = torch.load(merged_path, weights_only=True)
    assert saved["ids"] == merged["ids"] and saved["labels"] == label
    torch.testing.assert_close(saved["data"], merged["data"])
    assert saved["virnucpro_version"] == units.__version__
    read = read_merged_file(merged_path)
    assert (read.ids, read.dna_dim, read.protein_dim, read.labels) == (merged["ids"], 768, 64, label)
    torch.testing.assert_close(read.data, merged["data"])


def test_merge_new_tensor_formats_and_no_label(tmp_path):
    ids = ["a", "b"]
    dna = torch.randn(2, 768)
    protein = torch.randn(2, 1280)
    torch.save({"nucleotide": ids, "data": dna, "model": "x"}, tmp_path / "d.pt")
    torch.save({"proteins": ids, "data": protein, "model": "y"}, tmp_path / "p.pt")
    merged = units.merge_data(tmp_path / "d.pt", tmp_path / "p.pt", None)
    assert merged["data"].shape == (2, 2048) and "labels" not in merged
    assert (merged["dna_dim"], merged["protein_dim"]) == (768, 1280)
    torch.testing.assert_close(merged["data"], torch.cat((dna, protein), 1))


def test_merge_nothing_matches(tmp_path):
    original_dna_file(tmp_path / "dna.pt", ["a", "b"])
    original_protein_file(tmp_path / "prot.pt", ["c"])
    with pytest.raises(units.FeatureFileError, match="no id"):
        units.merge_data(tmp_path / "dna.pt", tmp_path / "prot.pt", tmp_path / "m.pt", "viral")
    assert not (tmp_path / "m.pt").exists()


def test_merge_bad_inputs(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x00junk")
    original_protein_file(tmp_path / "prot.pt", ["a"])
    with pytest.raises(units.FeatureFileError):
        units.merge_data(tmp_path / "junk.pt", tmp_path / "prot.pt", None)
    with pytest.raises(units.FeatureFileError):
        units.merge_data(tmp_path / "missing.pt", tmp_path / "prot.pt", None)
    with pytest.raises(units.FeatureFileError):  # files swapped: wrong keys
        units.merge_data(tmp_path / "prot.pt", tmp_path / "prot.pt", None)
    with pytest.raises(ValueError):
        original_dna_file(tmp_path / "dna.pt", ["a"])
        units.merge_data(tmp_path / "dna.pt", tmp_path / "prot.pt", None, "virus")


# ---------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------


def test_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = units.MLPClassifier(768 + 64)
    assert [name.split(".")[0] for name in model.state_dict()][:1] == ["hidden_layer"]
    assert {name.split(".")[0] for name in model.state_dict()} == {"hidden_layer", "bn1", "output_layer"}
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-1, 1)
    model.eval()
    path = tmp_path / "300_model_fastesm650.pth"
    units.save_checkpoint(path, model, dna_model="dna/x", dna_dim=768, protein_model="prot/y", protein_dim=64,
                          chunk_size=300, metrics={"f1": 0.5})
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw, dict) and raw["format_version"] == 2
    for key in units.CHECKPOINT_KEYS:
        assert key in raw
    assert raw["input_dim"] == 832 and raw["label_map"] == {0: "others", 1: "virus"}
    assert raw["virnucpro_version"] == units.__version__
    loaded, meta = units.load_checkpoint(path)
    assert not loaded.training
    assert meta["chunk_size"] == 300 and meta["protein_model"] == "prot/y" and meta["metrics"] == {"f1": 0.5}
    x = torch.randn(5, 832)
    torch.testing.assert_close(loaded(x), model(x))


def test_save_checkpoint_rejects_inconsistent_widths(tmp_path):
    with pytest.raises(ValueError):
        units.save_checkpoint(tmp_path / "m.pth", units.MLPClassifier(100), dna_model="a", dna_dim=768,
                              protein_model="b", protein_dim=64, chunk_size=300)


class MLPClassifier(nn.Module):
    """The original VirNucPro classifier class (as a user's pickled model refers to it)."""

    def __init__(self, input_dim=3328, hidden_dim=512, num_class=2):
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, num_class)
        self.dropout = nn.Dropout(0.5)

    def __setstate__(self, state):  # would run if the pickle were ever unpickled
        marker = os.environ.get("VIRNUCPRO_TEST_LEGACY_MARKER")
        if marker:
            open(marker, "w").close()
        super().__setstate__(state)


def test_legacy_whole_model_pickle_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "300_model.pth"
    torch.save(MLPClassifier(3328), path)
    marker = tmp_path / "ran"
    monkeypatch.setenv("VIRNUCPRO_TEST_LEGACY_MARKER", str(marker))
    with pytest.raises(units.CheckpointError) as err:
        units.load_checkpoint(path)
    message = str(err.value)
    assert "3328" in message and "ESM2-3B" in message and "train.py" in message
    assert not marker.exists()
    assert "3328" in units.describe_legacy_checkpoint(path)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Evil(str(proof))))  # the payload is live: plain unpickling runs it
    assert proof.exists()

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"format_version": 2, "state_dict": _Evil(str(marker))}, path)
    with pytest.raises(units.CheckpointError, match="refused"):
        units.load_checkpoint(path)
    assert not marker.exists()
    # the same payload in a plain (non-zip) pickle file
    plain = tmp_path / "evil_plain.pth"
    plain.write_bytes(pickle.dumps(_Evil(str(marker)), protocol=2))
    with pytest.raises(units.CheckpointError):
        units.load_checkpoint(plain)
    assert not marker.exists()


def test_other_files_are_refused(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(units.CheckpointError, match="not a VirNucPro-FastESM checkpoint"):
        units.load_checkpoint(junk)
    plain = tmp_path / "plain.pth"
    torch.save({"state_dict": units.MLPClassifier(8).state_dict(), "input_dim": 8}, plain)
    with pytest.raises(units.CheckpointError, match="format_version"):
        units.load_checkpoint(plain)
    weights = tmp_path / "weights.pth"
    torch.save(units.MLPClassifier(8).state_dict(), weights)
    with pytest.raises(units.CheckpointError):
        units.load_checkpoint(weights)
    with pytest.raises(units.CheckpointError, match="not found"):
        units.load_checkpoint(tmp_path / "none.pth")
    with pytest.raises(units.CheckpointError, match="directory"):
        units.load_checkpoint(tmp_path)


def test_checkpoint_with_mismatched_weights_is_refused(tmp_path):
    path = tmp_path / "m.pth"
    units.save_checkpoint(path, units.MLPClassifier(832), dna_model="a", dna_dim=768, protein_model="b",
                          protein_dim=64, chunk_size=300)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["input_dim"], checkpoint["protein_dim"] = 868, 100
    torch.save(checkpoint, path)
    with pytest.raises(units.CheckpointError, match="do not fit"):
        units.load_checkpoint(path)


@pytest.mark.parametrize("change, words", [
    ({"ids": ["a"]}, "'ids' (1) does not list the 2 rows"),
    ({"dna_dim": 10}, "dna_dim 10 + protein_dim 6 != feature width 14"),
    ({"dna_dim": "wide"}, "not integers"),
    ({"labels": [0, 1, 1]}, "'labels' must be [0] or [1]"),
    ({"data": torch.zeros(2, 14, dtype=torch.int64)}, "expected floating point"),
    ({"data": torch.zeros(14)}, "must be a 2-D tensor"),
])
def test_read_merged_file_names_the_file_and_the_fault(tmp_path, change, words):
    path = tmp_path / "m.pt"
    good = save_merged(path, ["a", "b"], torch.zeros(2, 14), 8, 6, labels=[1])
    assert read_merged_file(path).labels == [1]
    torch.save({**good, **change}, path)
    with pytest.raises(units.FeatureFileError) as err:
        read_merged_file(path)
    assert str(path) in str(err.value) and words in str(err.value)


def test_require_finite_counts_bad_rows(tmp_path):
    data = torch.zeros(3, 4)
    require_finite(tmp_path / "m.pt", data)
    data[1, 2], data[2, 0] = float("nan"), float("inf")
    with pytest.raises(units.FeatureFileError, match="2 row"):
        require_finite(tmp_path / "m.pt", data)
