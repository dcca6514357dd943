"""train.py on small synthetic merged feature files: outputs, determinism, best weights, split, errors."""
from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import train
import units
from virnucpro import training, training_data
from virnucpro.ids import source_sequence_id

DNA_DIM, PROTEIN_DIM = 24, 16
WIDTH = DNA_DIM + PROTEIN_DIM
FAST = ["--epochs", "4", "--batch-size", "8", "--lr", "0.05", "--hidden-dim", "16", "--device", "cpu", "-q"]


def row_ids(prefix: str, n_seqs: int, chunks: int = 2, frames: tuple[str, ...] = ("F1", "R2")) -> list[str]:
    return [f"{prefix}{s}.1_chunk_{k}{f}" for s in range(n_seqs) for k in range(1, chunks + 1) for f in frames]


def write_merged(path: Path, ids: list[str], label: int | None, *, seed: int, width: int = WIDTH,
                 dims: tuple[int, int] | None = (DNA_DIM, PROTEIN_DIM), shift: float | None = None,
                 **extra) -> Path:
    """A merged feature file: class-separable rows (viral shifted up, host down)."""
    gen = torch.Generator().manual_seed(seed)
    data = torch.randn(len(ids), width, generator=gen)
    if shift is None:
        shift = 1.5 if label == 1 else -1.5
    data[:, :8] += shift
    obj = {"ids": list(ids), "data": data}
    if label is not None:
        obj["labels"] = [label]
    if dims is not None:
        obj["dna_dim"], obj["protein_dim"] = dims
    obj.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def make_dataset(root: Path, n_seqs: int = 6, **kwargs) -> Path:
    """data_merge/ with two viral and two host files (n_seqs sequences x 2 chunks x 2 frames each)."""
    merge = root / "data_merge"
    for k in range(2):
        write_merged(merge / "viral.1.1_merged" / f"output_{k}_merged.pt", row_ids(f"NC_V{k}_", n_seqs), 1,
                     seed=10 + k, **kwargs)
        write_merged(merge / "bacteria_merged" / f"output_{k}_merged.pt", row_ids(f"NC_B{k}_", n_seqs), 0,
                     seed=20 + k, **kwargs)
    return merge


@pytest.fixture()
def merge_dir(tmp_path) -> Path:
    return make_dataset(tmp_path / "data")


def run_train(merge: Path, out: Path, *extra: str | Path) -> int:
    argv = ["--data-dir", str(merge), "--out", str(out), "--log", str(out.parent / "MLP_log.txt"), *FAST,
            *[str(e) for e in extra]]
    return train.main(argv)


# ---------------------------------------------------------------------------
# Command line and outputs
# ---------------------------------------------------------------------------


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        train.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for expected in ("default: 200", "default: 32", "default: 0.0002", "default: 42", "default: 5",
                     "default: 300", "viral.1.1_merged", "MLP_log.txt", "{chunk_size}_model_fastesm650.pth",
                     units.FASTESM_MODEL, units.DNABERT_S_MODEL):
        assert expected in text, expected


def test_bad_option_exits_2(capsys):
    assert_exit = pytest.raises(SystemExit)
    with assert_exit as exc:
        train.main(["--test-fraction", "1.5"])
    assert exc.value.code == 2
    assert "test-fraction" in capsys.readouterr().err


def test_end_to_end_outputs(merge_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--data-dir", str(merge_dir), "--chunk-size", "500", *FAST]
    assert train.main(argv) == 0
    out = tmp_path / "500_model_fastesm650.pth"
    assert out.is_file()

    model, meta = units.load_checkpoint(out)
    assert isinstance(model, units.MLPClassifier)
    assert meta["input_dim"] == WIDTH and meta["dna_dim"] == DNA_DIM and meta["protein_dim"] == PROTEIN_DIM
    assert meta["hidden_dim"] == 16 and meta["num_class"] == 2
    assert meta["chunk_size"] == 500
    assert meta["dna_model"] == units.DNABERT_S_MODEL and meta["protein_model"] == units.FASTESM_MODEL
    assert meta["label_map"] == units.LABEL_MAP

    raw = torch.load(out, weights_only=True)
    assert raw["format_version"] == units.CHECKPOINT_FORMAT_VERSION
    metrics = raw["metrics"]
    for key in ("epoch", "loss", "accuracy", "precision", "recall", "f1", "auroc", "n_train", "n_test"):
        assert key in metrics, key
    assert 1 <= metrics["epoch"] <= 4
    assert metrics["accuracy"] > 0.9  # the synthetic classes are easy to separate
    assert metrics["n_train"] + metrics["n_test"] == 4 * 24

    report = json.loads((tmp_path / "500_model_fastesm650.json").read_text())
    assert report["best"]["epoch"] == metrics["epoch"]
    assert report["best"]["loss"] == pytest.approx(metrics["loss"])
    assert report["input_dim"] == WIDTH and report["chunk_size"] == 500
    assert [h["epoch"] for h in report["history"]] == list(range(1, metrics["epochs_run"] + 1))

    log_text = (tmp_path / "MLP_log.txt").read_text()
    assert "Epoch 1/4, Loss: " in log_text and "Test AUROC: " in log_text and "Correct predictions: " in log_text
    assert train.main(argv) == 0  # appended, not overwritten
    log_again = (tmp_path / "MLP_log.txt").read_text()
    assert log_again.startswith(log_text) and log_again.count("Epoch 1/4, Loss: ") == 2


def test_model_names_recorded_in_merged_files_are_used(tmp_path):
    merge = make_dataset(tmp_path / "data", dna_model="/models/dnabert-s", protein_model="/models/fastesm")
    out = tmp_path / "m.pth"
    assert run_train(merge, out, "--metrics-json", tmp_path / "metrics.json") == 0
    meta = torch.load(out, weights_only=True)
    assert meta["dna_model"] == "/models/dnabert-s" and meta["protein_model"] == "/models/fastesm"
    assert (tmp_path / "metrics.json").is_file() and not (tmp_path / "m.json").exists()
    assert run_train(merge, out, "--esm-model", "other/esm") == 0
    assert torch.load(out, weights_only=True)["protein_model"] == "other/esm"


def test_width_comes_from_the_data(tmp_path):
    merge = make_dataset(tmp_path / "data", width=56, dims=(40, 16))
    out = tmp_path / "m.pth"
    assert run_train(merge, out) == 0
    _, meta = units.load_checkpoint(out)
    assert (meta["input_dim"], meta["dna_dim"], meta["protein_dim"]) == (56, 40, 16)


def test_old_files_without_dims_assume_dnabert_width(tmp_path, capsys):
    merge = make_dataset(tmp_path / "data", n_seqs=3, width=800, dims=None)
    out = tmp_path / "m.pth"
    assert run_train(merge, out) == 0
    _, meta = units.load_checkpoint(out)
    assert (meta["input_dim"], meta["dna_dim"], meta["protein_dim"]) == (800, 768, 32)
    assert "do not record dna_dim" in capsys.readouterr().err  # setup_logging logs to stderr


def test_the_report_records_every_option_of_the_command_line(merge_dir, tmp_path):
    """The metrics JSON's options are the command line's, under train.py's option names (as before the engine
    moved into the library), whatever a later option adds."""
    out = tmp_path / "m.pth"
    assert run_train(merge_dir, out, "--seed", "7") == 0
    options = json.loads(out.with_suffix(".json").read_text())["options"]
    argv = ["--data-dir", str(merge_dir), "--out", str(out), "--log", str(tmp_path / "MLP_log.txt"), *FAST,
            "--seed", "7"]
    given = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(train.build_parser().parse_args(argv)).items()}
    assert list(options) == sorted(given) and options == given
    assert (options["quiet"], options["verbose"], options["metrics_json"]) == (True, False, None)


def test_the_engine_runs_without_a_command_line(merge_dir, tmp_path):
    """A notebook builds a TrainingRequest and gets the weights train.py gives for the same options."""
    from virnucpro.trainer import TrainingRequest, run_training

    assert run_train(merge_dir, tmp_path / "cli.pth") == 0
    request = TrainingRequest(data_dir=merge_dir, out=tmp_path / "lib.pth", log=tmp_path / "MLP_log.txt", epochs=4,
                              batch_size=8, lr=0.05, hidden_dim=16, device="cpu", quiet=True)
    assert run_training(request) == 0
    a, b = (torch.load(tmp_path / name, weights_only=True)["state_dict"] for name in ("cli.pth", "lib.pth"))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert (tmp_path / "lib.holdout_ids.txt").read_text() == (tmp_path / "cli.holdout_ids.txt").read_text()


# ---------------------------------------------------------------------------
# Reproducibility and best weights
# ---------------------------------------------------------------------------


def test_same_seed_gives_identical_weights(merge_dir, tmp_path):
    first, second, other = tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "c.pth"
    assert run_train(merge_dir, first) == 0
    assert run_train(merge_dir, second) == 0
    assert run_train(merge_dir, other, "--seed", "7") == 0
    a = torch.load(first, weights_only=True)
    b = torch.load(second, weights_only=True)
    c = torch.load(other, weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert a["metrics"]["loss"] == b["metrics"]["loss"]
    assert not torch.equal(a["state_dict"]["hidden_layer.weight"], c["state_dict"]["hidden_layer.weight"])


def test_saved_metrics_match_reevaluation_of_saved_model(merge_dir, tmp_path):
    out = tmp_path / "m.pth"
    assert run_train(merge_dir, out, "--epochs", "8", "--patience", "2") == 0
    model, meta = units.load_checkpoint(out)
    data = training_data.load_training_data(merge_dir, progress=False)
    _, test_rows = training_data.make_split(data, "sequence", 0.1, 42)
    again = training.evaluate(model, data.features, data.labels, test_rows, torch.device("cpu"))
    recorded = meta["metrics"]
    assert recorded["n_test"] == again["n"] == len(test_rows)
    assert again["loss"] == pytest.approx(recorded["loss"], rel=1e-6, abs=1e-9)
    for name in ("accuracy", "precision", "recall", "f1", "auroc"):
        assert again[name] == pytest.approx(recorded[name], rel=1e-6, abs=1e-9), name


@pytest.mark.parametrize("losses, patience, best_epoch, epochs_run, stopped",
                         [([0.5, 0.3, 0.4, 0.6, 0.7, 0.8], 2, 2, 4, True),
                          ([0.1, 0.5, 0.6], 0, 1, 3, False)])
def test_best_epoch_weights_are_copied_restored_and_saved(merge_dir, tmp_path, monkeypatch, losses, patience,
                                                           best_epoch, epochs_run, stopped):
    """Hold-out losses are scripted; the checkpoint must hold the weights of the best epoch."""
    real_evaluate = training.evaluate
    snapshots = []

    def scripted(model, features, labels, rows, device):
        metrics = real_evaluate(model, features, labels, rows, device)
        snapshots.append(copy.deepcopy(model.state_dict()))
        metrics["loss"] = losses[len(snapshots) - 1]
        return metrics

    monkeypatch.setattr(training, "evaluate", scripted)
    out = tmp_path / "m.pth"
    assert run_train(merge_dir, out, "--epochs", str(len(losses)), "--patience", str(patience)) == 0
    saved = torch.load(out, weights_only=True)
    assert len(snapshots) == epochs_run
    assert saved["metrics"]["epoch"] == best_epoch
    assert saved["metrics"]["loss"] == losses[best_epoch - 1]
    assert saved["metrics"]["epochs_run"] == epochs_run and saved["metrics"]["stopped_early"] is stopped
    best = snapshots[best_epoch - 1]
    for key, value in saved["state_dict"].items():
        assert torch.equal(value, best[key]), key
    last = snapshots[-1]
    assert not torch.equal(best["hidden_layer.weight"], last["hidden_layer.weight"])
    if stopped:
        assert "Early stopping triggered" in (tmp_path / "MLP_log.txt").read_text()


def test_one_class_hold_out_reports_nan_auroc(merge_dir, tmp_path, monkeypatch):
    def viral_only_hold_out(data, split_by, test_fraction, seed):
        viral = np.flatnonzero(data.labels.numpy() == 1)
        rest = np.setdiff1d(np.arange(len(data.labels)), viral[:6])
        return rest, viral[:6]

    monkeypatch.setattr(training_data, "make_split", viral_only_hold_out)
    out = tmp_path / "m.pth"
    assert run_train(merge_dir, out) == 0
    assert math.isnan(torch.load(out, weights_only=True)["metrics"]["auroc"])
    assert json.loads(out.with_suffix(".json").read_text())["best"]["auroc"] is None
    assert "Test AUROC: nan" in (tmp_path / "MLP_log.txt").read_text()


def test_compute_metrics_one_class():
    metrics = training.compute_metrics(np.array([1, 1, 1]), np.array([1, 0, 1]), np.array([0.9, 0.2, 0.8]), 0.5)
    assert math.isnan(metrics["auroc"])
    assert metrics["accuracy"] == pytest.approx(2 / 3) and metrics["correct"] == 2 and metrics["n"] == 3
    both = training.compute_metrics(np.array([0, 1]), np.array([0, 1]), np.array([0.1, 0.9]), 0.1)
    assert both["auroc"] == 1.0 and both["f1"] == 1.0


# ---------------------------------------------------------------------------
# Split
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("row_id, source", [
    ("NC_001.1_chunk_3F1", "NC_001.1"),
    ("NC_001.1_chunk_12R3", "NC_001.1"),
    ("odd_chunk_name_chunk_2F2", "odd_chunk_name"),
    ("seqA_F1", "seqA_"),
    ("plain", "plain"),
])
def test_source_sequence_id(row_id, source):
    assert source_sequence_id(row_id) == source


def test_group_split_keeps_every_frame_and_chunk_of_a_sequence_together():
    rng = random.Random(3)
    ids, labels = [], []
    for s in range(60):
        label = s % 2
        for k in range(1, rng.randint(1, 5) + 1):
            for frame in rng.sample(["F1", "F2", "F3", "R1", "R2", "R3"], rng.randint(1, 6)):
                ids.append(f"seq{s}.1_chunk_{k}{frame}")
                labels.append(label)
    groups = [source_sequence_id(i) for i in ids]
    train_rows, test_rows = training_data.split_groups(groups, labels, 0.1, 42)
    assert sorted(np.concatenate([train_rows, test_rows]).tolist()) == list(range(len(ids)))
    train_seqs = {groups[i] for i in train_rows}
    test_seqs = {groups[i] for i in test_rows}
    assert train_seqs and test_seqs and not train_seqs & test_seqs
    assert {labels[i] for i in test_rows} == {0, 1}  # the hold-out is taken per class
    assert 0.05 < len(test_rows) / len(ids) < 0.25
    again = training_data.split_groups(groups, labels, 0.1, 42)
    assert np.array_equal(again[1], test_rows)
    other = training_data.split_groups(groups, labels, 0.1, 43)
    assert not np.array_equal(other[1], test_rows)


def test_group_split_keeps_a_lone_sequence_of_a_class_in_training():
    groups = ["v1"] * 4 + ["h1"] * 3 + ["h2"] * 3 + ["h3"] * 3
    labels = [1] * 4 + [0] * 9
    train_rows, test_rows = training_data.split_groups(groups, labels, 0.5, 0)
    assert set(range(4)) <= set(train_rows.tolist())
    assert len(test_rows) > 0 and all(labels[i] == 0 for i in test_rows)


def test_record_split_is_the_original_row_split():
    train_rows, test_rows = training_data.split_records(1000, 0.1, 42)
    indices = list(range(1000))
    random.seed(42)
    random.shuffle(indices)  # what the original train.py does
    assert test_rows.tolist() == sorted(indices[:100])
    assert train_rows.tolist() == sorted(indices[100:])


def test_sequences_spanning_files_are_grouped_together(tmp_path):
    merge = tmp_path / "data_merge"
    shared = row_ids("NC_V_", 4)
    write_merged(merge / "viral.1.1_merged" / "output_1_merged.pt", shared[:5], 1, seed=1)
    write_merged(merge / "viral.1.1_merged" / "output_2_merged.pt", shared[5:], 1, seed=2)
    write_merged(merge / "host_merged" / "output_1_merged.pt", row_ids("NC_H_", 4), 0, seed=3)
    data = training_data.load_training_data(merge, progress=False)
    assert data.features.shape == (32, WIDTH) and data.features.dtype == torch.float32
    assert data.labels.tolist() == [1] * 16 + [0] * 16
    assert len(set(data.groups.tolist())) == 8
    assert data.groups[4] == data.groups[5]  # NC_V_1.1 has rows in both viral files
    train_rows, test_rows = training_data.make_split(data, "sequence", 0.25, 42)
    assert not set(data.groups[train_rows].tolist()) & set(data.groups[test_rows].tolist())


def test_record_split_run_and_files_without_ids(tmp_path, capsys):
    merge = make_dataset(tmp_path / "data", n_seqs=4)
    for path in merge.rglob("*.pt"):
        obj = torch.load(path, weights_only=True)
        del obj["ids"]
        torch.save(obj, path)
    out = tmp_path / "m.pth"
    assert run_train(merge, out) == 2
    assert "--split-by record" in capsys.readouterr().err
    assert run_train(merge, out, "--split-by", "record") == 0
    assert torch.load(out, weights_only=True)["metrics"]["split_by"] == "record"


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("train.py: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_mismatched_widths_exit_2_naming_the_file(merge_dir, tmp_path, capsys):
    bad = write_merged(merge_dir / "bacteria_merged" / "output_9_merged.pt", row_ids("NC_X", 2), 0, seed=5,
                       width=WIDTH + 4, dims=(DNA_DIM, PROTEIN_DIM + 4))
    assert run_train(merge_dir, tmp_path / "m.pth") == 2
    line = _one_line_error(capsys)
    assert str(bad) in line and str(WIDTH + 4) in line and str(WIDTH) in line
    assert not (tmp_path / "m.pth").exists()


@pytest.mark.parametrize("layout", ["missing", "empty", "empty_subfolders", "no_viral", "no_host"])
def test_missing_data_exit_2(tmp_path, capsys, layout):
    merge = tmp_path / "data_merge"
    if layout != "missing":
        merge.mkdir()
    if layout == "empty_subfolders":
        (merge / "viral.1.1_merged").mkdir()
        (merge / "bacteria_merged").mkdir()
    if layout == "no_viral":
        write_merged(merge / "bacteria_merged" / "a.pt", row_ids("H", 3), 0, seed=1)
    if layout == "no_host":
        write_merged(merge / "viral.1.1_merged" / "a.pt", row_ids("V", 3), 1, seed=1)
    assert run_train(merge, tmp_path / "m.pth") == 2
    line = _one_line_error(capsys)
    assert str(merge) in line
    if layout in ("no_viral", "no_host"):
        assert layout.split("_")[1] in line


def test_labels_disagreeing_with_folder_exit_2(merge_dir, tmp_path, capsys):
    bad = write_merged(merge_dir / "bacteria_merged" / "output_5_merged.pt", row_ids("NC_Y", 2), 1, seed=6)
    assert run_train(merge_dir, tmp_path / "m.pth") == 2
    line = _one_line_error(capsys)
    assert str(bad) in line and "labels" in line


def test_non_finite_rows_exit_2(merge_dir, tmp_path, capsys):
    path = merge_dir / "viral.1.1_merged" / "output_0_merged.pt"
    obj = torch.load(path, weights_only=True)
    obj["data"][3, 5] = float("nan")
    torch.save(obj, path)
    assert run_train(merge_dir, tmp_path / "m.pth") == 2
    assert str(path) in _one_line_error(capsys)


def test_not_a_feature_file_exit_2(merge_dir, tmp_path, capsys):
    junk = merge_dir / "bacteria_merged" / "junk.pt"
    junk.write_bytes(b"not a torch file")
    assert run_train(merge_dir, tmp_path / "m.pth") == 2
    assert str(junk) in _one_line_error(capsys)


# ---------------------------------------------------------------------------
# Refusing before the long work; signals (issue 25)
# ---------------------------------------------------------------------------


@pytest.mark.skipif(hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0,
                    reason="root writes anywhere")
def test_unwritable_out_folder_exit_2_before_the_first_epoch(merge_dir, tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    epochs = []
    monkeypatch.setattr(training, "train_epoch", lambda *a, **k: epochs.append(1) or 0.0)
    try:
        code = train.main(["--data-dir", str(merge_dir), "--out", str(locked / "m.pth"),
                           "--log", str(tmp_path / "MLP_log.txt"), *FAST])
    finally:
        locked.chmod(0o700)
    err = capsys.readouterr().err
    assert code == 2 and epochs == []
    assert len(err.strip().splitlines()) == 1 and "not writable" in err and str(locked) in err


def test_sigterm_gives_143_and_keeps_a_finished_checkpoint(merge_dir, tmp_path, monkeypatch, capsys):
    from virnucpro import cli

    out = tmp_path / "m.pth"
    assert run_train(merge_dir, out) == 0
    finished = out.read_bytes()
    real_evaluate = training.evaluate
    calls = []

    def terminated_in_epoch_two(*args):
        calls.append(1)
        if len(calls) == 2:
            raise cli.Terminated()
        return real_evaluate(*args)

    monkeypatch.setattr(training, "evaluate", terminated_in_epoch_two)
    capsys.readouterr()
    assert run_train(merge_dir, out) == 143
    err = capsys.readouterr().err
    assert out.read_bytes() == finished  # the finished checkpoint stays
    beside = tmp_path / "m.interrupted.pth"
    saved = torch.load(beside, weights_only=True)
    assert saved["metrics"]["interrupted"] is True and saved["metrics"]["epoch"] == 1
    assert str(beside) in err and "rerun the same command" in err


def test_out_under_a_file_exit_2_before_the_first_epoch(merge_dir, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    epochs = []
    monkeypatch.setattr(training, "train_epoch", lambda *a, **k: epochs.append(1) or 0.0)
    code = train.main(["--data-dir", str(merge_dir), "--out", str(blocker / "m.pth"),
                       "--log", str(tmp_path / "MLP_log.txt"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and epochs == [] and len(err.strip().splitlines()) == 1 and str(blocker) in err
