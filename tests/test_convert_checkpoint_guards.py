"""convert_checkpoint.py: every bad SOURCE/TARGET is one line and exit 2, checked before SOURCE is read."""
from __future__ import annotations

import os

import pytest
import torch

import convert_checkpoint
from test_convert_checkpoint import save_original
from virnucpro import legacy


@pytest.fixture()
def source(tmp_path, monkeypatch):
    path = tmp_path / "300_model.pth"
    save_original(path, "__main__", monkeypatch, input_dim=800)
    return path


@pytest.fixture()
def never_read(monkeypatch) -> list:
    """Records every conversion started (none must start when the paths are refused)."""
    calls: list = []
    monkeypatch.setattr(legacy, "convert_legacy_checkpoint", lambda *a, **k: calls.append(a))
    return calls


def convert(*args) -> int:
    return convert_checkpoint.main([str(a) for a in args] + ["--chunk-size", "300", "-q"])


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and err.startswith("convert_checkpoint.py: error:"), err
    return err


def test_target_equal_to_source_says_so_with_or_without_force(source, capsys, never_read):
    before = source.read_bytes()
    for extra in ((), ("--force",)):
        assert convert(source, source.parent / "." / source.name, *extra) == 2
        assert "must differ" in error_line(capsys)
    hard = source.parent / "hard.pth"
    os.link(source, hard)
    assert convert(source, hard, "--force") == 2
    assert "must differ" in error_line(capsys)
    assert source.read_bytes() == before and never_read == []


def test_target_that_is_a_directory_is_refused_even_with_force(source, tmp_path, capsys, never_read):
    folder = tmp_path / "models"
    folder.mkdir()
    assert convert(source, folder, "--force") == 2
    assert "is a directory" in error_line(capsys) and folder.is_dir() and never_read == []


def test_target_under_a_file_is_refused(source, tmp_path, capsys, never_read):
    assert convert(source, source / "x.pth") == 2
    assert "not a directory" in error_line(capsys) and never_read == []


def test_source_that_is_a_directory_is_named_as_such(tmp_path, capsys, never_read):
    assert convert(tmp_path, tmp_path / "out.pth") == 2
    assert "is a directory" in error_line(capsys) and never_read == []


def test_a_pickle_that_is_no_model_is_not_called_a_checkpoint(tmp_path, capsys):
    path = tmp_path / "dict.pth"
    torch.save({"weights": torch.zeros(3)}, path)
    assert convert(path, tmp_path / "out.pth") == 2
    line = error_line(capsys)
    assert "holds a dict" in line and "no conversion" not in line and not (tmp_path / "out.pth").exists()


def test_target_in_a_missing_folder_is_made(source, tmp_path):
    target = tmp_path / "new" / "300_model_esm2_3b.pth"
    assert convert(source, target) == 0
    assert torch.load(target, weights_only=True)["input_dim"] == 800
