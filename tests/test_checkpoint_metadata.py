"""The one checkpoint loader validates metadata field by field, sizes before anything is allocated."""
from __future__ import annotations

import pytest
import torch

import evaluate
import units
from virnucpro import classifier
from virnucpro.errors import CheckpointError


def small_checkpoint(tmp_path, **changes):
    torch.manual_seed(0)
    model = units.MLPClassifier(40, 16)
    path = tmp_path / "c.pth"
    checkpoint = units.save_checkpoint(path, model, dna_model="d", dna_dim=24, protein_model="p", protein_dim=16,
                                       chunk_size=300)
    checkpoint.update(changes)
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("changes, field", [({"label_map": {"0": "others", "1": "virus"}}, "label_map"),
                                            ({"hidden_dim": -5}, "hidden_dim"),
                                            ({"hidden_dim": "16"}, "hidden_dim"),
                                            ({"num_class": 3}, "label_map"),
                                            ({"label_map": {0: "others", 1: 7}}, "label_map")])
def test_bad_fields_are_one_line_naming_the_field(tmp_path, changes, field):
    path = small_checkpoint(tmp_path, **changes)
    with pytest.raises(CheckpointError, match=field) as info:
        classifier.load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_recorded_sizes_are_checked_before_the_model_is_built(tmp_path, monkeypatch):
    """A 2,000,000-wide hidden_dim in a small file must not allocate the MLP it describes."""
    built = []
    monkeypatch.setattr(classifier, "MLPClassifier",
                        lambda *a, **k: built.append(a) or pytest.fail(f"model built with sizes {a}"))
    path = small_checkpoint(tmp_path, hidden_dim=2_000_000)
    with pytest.raises(CheckpointError, match="hidden_layer.weight"):
        classifier.load_checkpoint(path)
    assert built == []


def test_a_good_checkpoint_still_loads(tmp_path):
    model, meta = classifier.load_checkpoint(small_checkpoint(tmp_path))
    assert meta["label_map"] == {0: "others", 1: "virus"} and model.output_layer.out_features == 2

