"""evaluate.py: models side by side on labelled sequences (through prediction.py) and on feature files."""
from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score, matthews_corrcoef, roc_auc_score

import evaluate
import units
from test_fastq import fastq_text
from test_train import make_dataset, run_train
from virnucpro import outputs, rundir
from virnucpro.evaluation import chunk_table, compute_metrics, frame_table, level_tables, sequence_table
from virnucpro.fasta import read_fasta

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_roll_up_follows_prediction_rules():
    frame_ids = ["a_chunk_1F1", "a_chunk_1R2", "a_chunk_2F1", "b_x_chunk_1F3", "b_x_chunk_1R1", "c_chunk_1F1"]
    virus = np.array([0.2, 0.6, 0.1, 0.5, 0.3, 0.7], dtype=np.float32)
    frames = frame_table(frame_ids, [1, 1, 1, 0, 0, 0], virus, 1 - virus)
    assert frames["predicted"].tolist() == [0, 1, 0, 0, 0, 1]  # a tie (0.5/0.5) is not viral at frame level
    chunks = chunk_table(frames).set_index("id")
    # a_chunk_1: max virus 0.6 >= max other 0.8? no; b_x_chunk_1: 0.5 >= 0.7? no; c: 0.7 >= 0.3
    assert chunks.loc["a_chunk_1", "predicted"] == 0 and chunks.loc["c_chunk_1", "predicted"] == 1
    assert chunks.loc["a_chunk_1", "score"] == pytest.approx((1 + 0.6 - 0.8) / 2)
    assert ((chunks["score"] >= 0.5) == (chunks["predicted"] == 1)).all()
    sequences = sequence_table(chunk_table(frames)).set_index("id")
    assert sorted(sequences.index) == ["a", "b_x", "c"]
    assert sequences.loc["a", "score"] == 0 and sequences.loc["c", "predicted"] == 1
    metrics = compute_metrics(frames)
    assert metrics["n"] == 6 and (metrics["tn"], metrics["fp"], metrics["fn"], metrics["tp"]) == (2, 1, 2, 1)
    assert metrics["mcc"] == pytest.approx(matthews_corrcoef(frames["label"], frames["predicted"]))
    assert metrics["auroc"] == pytest.approx(roc_auc_score(frames["label"], virus))
    assert set(level_tables(frame_table(["r1", "r2"], [1, 0], virus[:2], 1 - virus[:2]))) == {"frame"}


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory, checkpoint_300):
    model, meta = units.load_checkpoint(checkpoint_300)
    torch.manual_seed(99)
    other = units.MLPClassifier(meta["input_dim"])
    other.eval()
    with torch.no_grad():
        other.bn1.running_mean.uniform_(-0.05, 0.05)
    path = tmp_path_factory.mktemp("second") / "other_model.pth"
    units.save_checkpoint(path, other, dna_model=meta["dna_model"], dna_dim=meta["dna_dim"],
                          protein_model=meta["protein_model"], protein_dim=meta["protein_dim"], chunk_size=300)
    return path


def read_tsv(path):
    return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["NA"])


@pytest.mark.slow
def test_sequences_side_by_side(tmp_path, golden_dir, checkpoint_300, second_checkpoint, esm_model_dir,
                                dnabert_model_dir):
    records = list(read_fasta(golden_dir / "reads.fa"))
    half = len(records) // 2
    viral = tmp_path / "viral.fastq.gz"  # FASTQ input too
    viral.write_bytes(gzip.compress(fastq_text([(r.description, r.seq) for r in records[:half]]).encode()))
    host = tmp_path / "host.fa"
    host.write_text("".join(f">{r.description}\n{r.seq}\n" for r in records[half:]))
    out = tmp_path / "eval"
    argv = ["--viral", str(viral), "--host", str(host), "--model", str(checkpoint_300), "--model",
            str(second_checkpoint), "--model", str(checkpoint_300), "--outdir", str(out), "--device", "cpu", "-q",
            "--esm-model", str(esm_model_dir), "--dnabert-model", str(dnabert_model_dir)]
    assert evaluate.main(argv) == 0  # the stand-ins' code runs because they are named here, not by the checkpoints

    names = ["300_model_fastesm650", "other_model", "300_model_fastesm650_2"]
    table = read_tsv(out / outputs.EVALUATION_TSV_NAME)
    assert list(table.columns[:3]) == ["model", "level", "n"]
    assert [(m, lv) for m, lv in zip(table["model"], table["level"])] == \
        [(m, lv) for m in names for lv in ("frame", "chunk", "sequence")]
    labels = {r.id: int(i < half) for i, r in enumerate(records)}
    for name in names[:2]:
        run_dir = out / name
        results = pd.read_csv(run_dir / rundir.RESULTS_NAME, sep="\t")
        y = [labels[i.rsplit("_chunk_", 1)[0]] for i in results["Sequence_ID"]]
        frame = table[(table["model"] == name) & (table["level"] == "frame")].iloc[0]
        assert frame["n"] == len(results)
        assert frame["f1"] == pytest.approx(f1_score(y, results["Prediction"] == "virus"), abs=1e-6)
        assert frame["auroc"] == pytest.approx(roc_auc_score(y, results["score2"]), abs=1e-6)
        # chunk and sequence calls agree with prediction.py's own roll-up files
        tables = level_tables(evaluate_frames(run_dir, labels))
        consensus = pd.read_csv(run_dir / rundir.CONSENSUS_NAME, sep="\t")
        assert dict(zip(tables["chunk"]["id"], tables["chunk"]["predicted"] == 1)) == \
            dict(zip(consensus["Modified_ID"], consensus["Is_Virus"]))
        summary = pd.read_csv(run_dir / rundir.SUMMARY_NAME, sep="\t", keep_default_na=False)
        called = summary[summary["Prediction"] != "no_call"]
        assert dict(zip(tables["sequence"]["id"], tables["sequence"]["predicted"] == 1)) == \
            dict(zip(called["Sequence_ID"], called["Prediction"] == "virus"))
        sequence = table[(table["model"] == name) & (table["level"] == "sequence")].iloc[0]
        assert sequence["unscored"] == (summary["Prediction"] == "no_call").sum() > 0
        assert sequence["tn"] + sequence["fp"] + sequence["fn"] + sequence["tp"] == sequence["n"] == len(called)

    agreement = read_tsv(out / outputs.AGREEMENT_TSV_NAME)
    assert len(agreement) == 9  # 3 pairs x 3 levels
    same = agreement[(agreement["model_a"] == names[0]) & (agreement["model_b"] == names[2])]
    assert (same["agreement"] == 1.0).all()
    different = agreement[(agreement["model_a"] == names[0]) & (agreement["model_b"] == names[1])]
    assert (different["agreement"] < 1.0).any()
    report = json.loads((out / outputs.EVALUATION_JSON_NAME).read_text())
    assert report["sequences"] == {"viral": half, "host": len(records) - half}
    assert len(report["metrics"]) == 9 and report["models"][names[1]]["chunk_size"] == 300
    for figure in (outputs.ROC_FIGURE_NAME, outputs.PR_FIGURE_NAME):
        assert (out / figure).read_bytes()[:8] == PNG_MAGIC
    before = (out / outputs.EVALUATION_TSV_NAME).read_bytes()
    assert evaluate.main(argv) == 0  # a rerun reuses the finished prediction runs
    assert (out / outputs.EVALUATION_TSV_NAME).read_bytes() == before


def evaluate_frames(run_dir, labels):
    from virnucpro.evaluation import read_prediction_frames
    return read_prediction_frames(run_dir, labels)


def test_duplicate_ids_across_viral_and_host_are_refused(tmp_path, checkpoint_300, capsys):
    viral = tmp_path / "v.fa"
    viral.write_text(">r1\nACGT\n")
    host = tmp_path / "h.fa"
    host.write_text(">r1\nACGA\n")
    argv = ["--viral", str(viral), "--host", str(host), "--model", str(checkpoint_300), "--outdir", str(tmp_path / "e")]
    assert evaluate.main(argv) == 2
    assert "'r1'" in capsys.readouterr().err
    assert evaluate.main(["--viral", str(viral), "--model", str(checkpoint_300), "--outdir", str(tmp_path)]) == 2


def make_feature_model(path, width, seed, dims=(24, 16)):
    torch.manual_seed(seed)
    model = units.MLPClassifier(width, 16)
    model.eval()
    units.save_checkpoint(path, model, dna_model="d", dna_dim=dims[0], protein_model="p", protein_dim=dims[1],
                          chunk_size=300)
    return model


def test_feature_files_and_the_train_holdout(tmp_path, capsys):
    merge = make_dataset(tmp_path / "data")
    trained = tmp_path / "300_model_fastesm650.pth"
    assert run_train(merge, trained) == 0
    holdout = outputs.holdout_ids_path(trained)
    report = json.loads(trained.with_suffix(".json").read_text())
    ids = holdout.read_text().split()
    assert len(ids) == report["best"]["n_test"] == report["data"]["test_rows"] and report["holdout_ids"] == str(holdout)

    other = tmp_path / "other.pth"
    make_feature_model(other, 40, seed=5)
    out = tmp_path / "eval"
    argv = ["--features", str(merge), "--ids", str(holdout), "--model", str(trained), "--model", str(other),
            "--outdir", str(out), "--device", "cpu", "-q"]
    assert evaluate.main(argv) == 0
    table = read_tsv(out / outputs.EVALUATION_TSV_NAME)
    mine = table[(table["model"] == "300_model_fastesm650") & (table["level"] == "frame")].iloc[0]
    # exactly train.py's hold-out: the same numbers train.py reported for its best epoch
    assert mine["n"] == report["best"]["n_test"]
    for key in ("accuracy", "precision", "recall", "f1", "auroc"):
        assert mine[key] == pytest.approx(report["best"][key], abs=1e-6), key
    assert set(table["level"]) == {"frame", "chunk", "sequence"}

    # without --ids every row is scored
    assert evaluate.main(argv[:2] + argv[4:]) == 0
    table = read_tsv(out / outputs.EVALUATION_TSV_NAME)
    assert table[(table["level"] == "frame")]["n"].tolist() == [4 * 6 * 2 * 2] * 2

    wrong = tmp_path / "wrong.pth"
    make_feature_model(wrong, 50, seed=1, dims=(24, 26))
    assert evaluate.main(["--features", str(merge), "--model", str(wrong), "--outdir", str(out)]) == 2
    assert "24 + 26" in capsys.readouterr().err
    missing = tmp_path / "ids.txt"
    missing.write_text("no_such_chunk_1F1\n")
    assert evaluate.main(["--features", str(merge), "--ids", str(missing), "--model", str(other),
                          "--outdir", str(out)]) == 2
    assert "no_such_chunk_1F1" in capsys.readouterr().err


def test_metrics_with_one_class_are_nan():
    frames = frame_table(["a_chunk_1F1", "b_chunk_1F1"], [1, 1], np.array([0.9, 0.2]), np.array([0.1, 0.8]))
    metrics = compute_metrics(frames)
    assert math.isnan(metrics["auroc"]) and metrics["recall"] == 0.5


def test_sequences_one_model(tmp_path, golden_dir, checkpoint_300, esm_model_dir, dnabert_model_dir):
    records = sorted(read_fasta(golden_dir / "reads.fa"), key=lambda r: len(r.seq))[-6:]
    viral, host = tmp_path / "viral.fa", tmp_path / "host.fa"
    viral.write_text("".join(f">{r.description}\n{r.seq}\n" for r in records[::2]))
    host.write_text("".join(f">{r.description}\n{r.seq}\n" for r in records[1::2]))
    out = tmp_path / "eval"
    assert evaluate.main(["--viral", str(viral), "--host", str(host), "--model", str(checkpoint_300),
                          "--outdir", str(out), "--device", "cpu", "-q", "--esm-model", str(esm_model_dir),
                          "--dnabert-model", str(dnabert_model_dir)]) == 0
    table = read_tsv(out / outputs.EVALUATION_TSV_NAME)
    assert table["level"].tolist() == ["frame", "chunk", "sequence"]
    assert table.iloc[2]["n"] == 6 and table.iloc[2]["n_viral"] == 3
    assert len(read_tsv(out / outputs.AGREEMENT_TSV_NAME)) == 0
    labelled = list(read_fasta(out / outputs.EVALUATION_INPUT_NAME))
    assert [r.id for r in labelled] == [r.id for r in records[::2] + records[1::2]]


def test_label_map_decides_which_output_is_virus(tmp_path):
    """Output rows swapped together with label_map {0: virus, 1: others}: the same metrics."""
    merge = make_dataset(tmp_path / "data")
    plain = tmp_path / "plain.pth"
    make_feature_model(plain, 40, seed=3)
    checkpoint = torch.load(plain, weights_only=True)
    for key in ("output_layer.weight", "output_layer.bias"):
        checkpoint["state_dict"][key] = checkpoint["state_dict"][key].flip(0).clone()
    checkpoint["label_map"] = {0: "virus", 1: "others"}
    swapped = tmp_path / "swapped.pth"
    torch.save(checkpoint, swapped)
    tables = []
    for model in (plain, swapped):
        out = tmp_path / model.stem
        assert evaluate.main(["--features", str(merge), "--model", str(model), "--outdir", str(out), "-q"]) == 0
        tables.append(read_tsv(out / outputs.EVALUATION_TSV_NAME).drop(columns="model"))
    pd.testing.assert_frame_equal(tables[0], tables[1])


def test_three_class_checkpoint_is_refused(tmp_path, capsys):
    merge = make_dataset(tmp_path / "data")
    torch.manual_seed(0)
    model = units.MLPClassifier(40, 16, num_class=3)
    path = tmp_path / "three.pth"
    units.save_checkpoint(path, model, dna_model="d", dna_dim=24, protein_model="p", protein_dim=16, chunk_size=300,
                          label_map={0: "others", 1: "virus", 2: "phage"})
    assert evaluate.main(["--features", str(merge), "--model", str(path), "--outdir", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "3-class" in err and len(err.strip().splitlines()) == 1


def test_outdir_that_is_a_file_is_refused_before_scoring(tmp_path, monkeypatch, capsys):
    merge = make_dataset(tmp_path / "data")
    model = tmp_path / "m.pth"
    make_feature_model(model, 40, seed=3)
    taken = tmp_path / "taken"
    taken.write_text("mine")
    scored = []
    from virnucpro import evaluate as engine

    monkeypatch.setattr(engine, "feature_tables", lambda *a: scored.append(1) or pytest.fail("scored"))
    assert evaluate.main(["--features", str(merge), "--model", str(model), "--outdir", str(taken)]) == 2
    err = capsys.readouterr().err
    assert scored == [] and taken.read_text() == "mine" and str(taken) in err and len(err.strip().splitlines()) == 1
