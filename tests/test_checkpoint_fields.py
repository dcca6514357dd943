"""A classifier checkpoint is validated field by field, and its sizes against its tensors before anything is built."""
from __future__ import annotations

import pytest
import torch

import prediction
import units
import virnucpro.classifier


def altered(checkpoint_300, tmp_path, **changes):
    checkpoint = torch.load(checkpoint_300, weights_only=True)
    checkpoint.update(changes)
    path = tmp_path / "300_model_altered.pth"
    torch.save(checkpoint, path)
    return path


def test_recorded_sizes_are_checked_before_the_model_is_built(checkpoint_300, tmp_path, monkeypatch, run, golden_dir,
                                                              capsys):
    """A small file whose hidden_dim says 2,000,000 used to allocate ~1 GB before the shape check."""
    path = altered(checkpoint_300, tmp_path, hidden_dim=2_000_000)
    built = []
    real_init = virnucpro.classifier.MLPClassifier.__init__

    def counting_init(self, *args, **kwargs):
        built.append(args)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(virnucpro.classifier.MLPClassifier, "__init__", counting_init)
    with pytest.raises(units.CheckpointError, match="weights do not fit the recorded sizes .*hidden_layer.weight"):
        units.load_checkpoint(path)
    assert built == []
    assert run(golden_dir / "reads.fa", "300", tmp_path / "out", model=path) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "recorded sizes" in err and built == []


@pytest.mark.parametrize("changes, field", [
    ({"label_map": {"a": "others", "b": "virus"}}, "label_map"),
    ({"label_map": {0: "virus", 1: "virus"}}, "label_map"),
    ({"hidden_dim": -5}, "hidden_dim"),
    ({"num_class": True}, "num_class"),
    ({"label_map": {0: "others"}}, "label_map"),
    ({"protein_model": 7}, "protein_model"),
])
def test_bad_fields_are_one_line_naming_the_field(changes, field, checkpoint_300, tmp_path, run, golden_dir, capsys):
    path = altered(checkpoint_300, tmp_path, **changes)
    assert run(golden_dir / "reads.fa", "300", tmp_path / "out", model=path) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err and "Traceback" not in err
