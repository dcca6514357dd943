"""train.py: warnings about imbalanced or duplicated data, and every foreseeable error before the first epoch."""
from __future__ import annotations

import errno
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch

import train
from test_train import FAST, make_dataset, row_ids, run_train, write_merged
from virnucpro import classifier, trainer, training, training_data


@pytest.fixture()
def merge_dir(tmp_path) -> Path:
    return make_dataset(tmp_path / "data")


@pytest.fixture()
def no_epochs(monkeypatch) -> list:
    """Records every training epoch started (none must start when a run is refused)."""
    epochs: list = []
    monkeypatch.setattr(training, "train_epoch", lambda *a, **k: epochs.append(1) or 0.0)
    return epochs


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("train.py: error:")]
    assert len(lines) == 1, err
    return lines[0]


def warnings_in(err: str, words: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("WARNING:") and words in line]


# ---------------------------------------------------------------------------
# Warnings: class imbalance, duplicated files and rows
# ---------------------------------------------------------------------------


def test_a_1_to_1000_training_set_warns_with_the_class_counts(tmp_path, capsys):
    merge = tmp_path / "data_merge"
    write_merged(merge / "viral.1.1_merged" / "v.pt", row_ids("NC_V", 2), 1, seed=1)  # 8 rows
    write_merged(merge / "bacteria_merged" / "h.pt", row_ids("NC_H", 2000), 0, seed=2)  # 8000 rows
    assert run_train(merge, tmp_path / "m.pth", "--epochs", "1", "--batch-size", "1024") == 0
    lines = warnings_in(capsys.readouterr().err, "class imbalance")
    assert len(lines) == 1 and "8 viral vs 8000 host" in lines[0] and "1:1000" in lines[0]


def test_a_balanced_set_gives_no_imbalance_warning(merge_dir, tmp_path, capsys):
    assert run_train(merge_dir, tmp_path / "m.pth") == 0
    err = capsys.readouterr().err
    assert not warnings_in(err, "imbalance") and not warnings_in(err, "identical") and not warnings_in(err, "row id")


def test_imbalance_threshold_is_one_to_ten(caplog):
    training_data.warn_imbalance(10, 100)
    training_data.warn_imbalance(100, 10)
    assert not caplog.records
    training_data.warn_imbalance(9, 100)
    training_data.warn_imbalance(100, 9)
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]
    assert "call almost everything host" in caplog.records[0].message
    assert "call almost everything viral" in caplog.records[1].message


def test_the_same_merged_file_twice_warns_naming_both(merge_dir, tmp_path, capsys):
    first = merge_dir / "bacteria_merged" / "output_0_merged.pt"
    copy = merge_dir / "bacteria_merged" / "output_0_copy_merged.pt"
    shutil.copyfile(first, copy)
    assert run_train(merge_dir, tmp_path / "m.pth") == 0
    err = capsys.readouterr().err
    lines = warnings_in(err, "identical merged files")
    assert len(lines) == 1 and str(first) in lines[0] and str(copy) in lines[0]
    assert not warnings_in(err, "row id")  # one warning for one problem


def test_two_files_with_the_same_rows_warn_naming_both(merge_dir, tmp_path, capsys):
    source = merge_dir / "viral.1.1_merged" / "output_1_merged.pt"
    obj = torch.load(source, weights_only=True)
    obj["data"] = obj["data"].clone()
    obj["note"] = "saved again"  # other bytes, same rows
    again = merge_dir / "viral.1.1_merged" / "again_merged.pt"
    torch.save(obj, again)
    assert run_train(merge_dir, tmp_path / "m.pth") == 0
    err = capsys.readouterr().err
    assert not warnings_in(err, "identical merged files")
    lines = warnings_in(err, "row id(s) appear in more than one merged file")
    assert len(lines) == 1 and str(source) in lines[0] and str(again) in lines[0] and "24" in lines[0]


# ---------------------------------------------------------------------------
# Outputs refused before the data are read and before the first epoch
# ---------------------------------------------------------------------------


def test_out_equal_to_an_input_is_refused_and_the_input_kept(merge_dir, tmp_path, capsys, no_epochs):
    victim = merge_dir / "viral.1.1_merged" / "output_0_merged.pt"
    before = victim.read_bytes()
    for option in ("--out", "--metrics-json", "--log"):
        argv = ["--data-dir", str(merge_dir), "--out", str(tmp_path / "m.pth"), *FAST, option, str(victim)]
        assert train.main(argv) == 2, option
        line = error_line(capsys)
        assert str(victim) in line and option in line and "training inputs" in line
    assert victim.read_bytes() == before and no_epochs == []


def test_out_as_a_pt_file_in_a_data_folder_is_refused(merge_dir, tmp_path, capsys, no_epochs):
    out = merge_dir / "bacteria_merged" / "model.pt"
    assert run_train(merge_dir, out) == 2
    assert str(out) in error_line(capsys) and not out.exists() and no_epochs == []


@pytest.mark.parametrize("clash", ["log_is_out", "metrics_is_holdout_ids"])
def test_outputs_naming_the_same_file_are_refused(merge_dir, tmp_path, capsys, no_epochs, clash):
    out = tmp_path / "m.pth"
    if clash == "log_is_out":
        argv = ["--data-dir", str(merge_dir), "--out", str(out), "--log", str(out), *FAST]
    else:
        argv = ["--data-dir", str(merge_dir), "--out", str(out), "--metrics-json", str(tmp_path / "m.holdout_ids.txt"),
                "--log", str(tmp_path / "MLP_log.txt"), *FAST]
    assert train.main(argv) == 2
    assert "name the same file" in error_line(capsys) and not out.exists() and no_epochs == []


def test_a_log_that_is_a_link_or_a_fifo_is_refused(merge_dir, tmp_path, capsys, no_epochs):
    target = tmp_path / "someone_elses.txt"
    target.write_text("keep\n")
    link = tmp_path / "link.log"
    link.symlink_to(target)
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)
    for log_path, words in ((link, "symbolic link"), (fifo, "not a regular file")):
        argv = ["--data-dir", str(merge_dir), "--out", str(tmp_path / "m.pth"), "--log", str(log_path), *FAST]
        assert train.main(argv) == 2
        line = error_line(capsys)
        assert str(log_path) in line and words in line
    assert target.read_text() == "keep\n" and no_epochs == []


def test_out_in_a_missing_folder_is_made(merge_dir, tmp_path):
    out = tmp_path / "new" / "deeper" / "m.pth"
    assert run_train(merge_dir, out) == 0
    assert out.is_file() and out.with_suffix(".json").is_file()


# ---------------------------------------------------------------------------
# Sizes and numbers refused before the model is built
# ---------------------------------------------------------------------------


def test_seed_out_of_range_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        train.main(["--seed", str(2**70)])
    assert exc.value.code == 2 and "--seed" in capsys.readouterr().err


def test_a_model_too_big_for_a_checkpoint_is_refused_before_it_is_built(merge_dir, tmp_path, capsys, no_epochs,
                                                                         monkeypatch):
    built = []
    monkeypatch.setattr(classifier.MLPClassifier, "__init__", lambda *a, **k: built.append(1))
    assert run_train(merge_dir, tmp_path / "m.pth", "--hidden-dim", "10000000") == 2
    line = error_line(capsys)
    assert "--hidden-dim 10000000" in line and "GiB" in line and built == [] and no_epochs == []


def test_rows_that_do_not_fit_in_memory_are_refused_before_copying(merge_dir, tmp_path, capsys, no_epochs,
                                                                    monkeypatch):
    monkeypatch.setattr(training_data, "_physical_memory", lambda: 1000)
    assert run_train(merge_dir, tmp_path / "m.pth") == 2
    line = error_line(capsys)
    assert "GiB of memory" in line and "this machine has" in line and no_epochs == []


def test_too_little_disk_for_the_checkpoint_is_refused_before_training(merge_dir, tmp_path, capsys, no_epochs,
                                                                       monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(trainer.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    assert run_train(merge_dir, tmp_path / "m.pth") == 2
    assert "free some space" in error_line(capsys) and no_epochs == []


def test_a_disk_full_while_saving_is_one_line(merge_dir, tmp_path, capsys, monkeypatch):
    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(classifier, "save_checkpoint", full)
    assert run_train(merge_dir, tmp_path / "m.pth") == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.splitlines()[-1].startswith("train.py: error: no space left")
