"""The whole flow with the stand-in models, as the README walks a user through it:
make_train_dataset_300 -> features_extract -> train -> prediction -> drew_fig."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import drew_fig
import features_extract
import make_train_dataset_300
import prediction
import train
import units
from test_prediction import original_consensus, read_rows


@pytest.mark.slow
def test_training_to_prediction_flow(tmp_path, golden_dir, esm_model_dir, dnabert_model_dir):
    data = tmp_path / "data"
    shutil.copytree(golden_dir / "train_300" / "data", data)
    models = ["--esm-model", str(esm_model_dir), "--dnabert-model", str(dnabert_model_dir), "--device", "cpu"]

    assert make_train_dataset_300.main(["--data-dir", str(data), "-q"]) == 0
    for name in ("viral.1.1.identified_nucleotide.fa", "bacteria.1.1.identified_protein.fa"):
        assert (data / name).read_bytes() == (golden_dir / "train_300" / name).read_bytes()

    assert features_extract.main(["--data-dir", str(data), "--sequences-per-file", "6", "-q", *models]) == 0
    merged = sorted((data / "data_merge").glob("*/*.pt"))
    assert {p.parent.name for p in merged} == {"viral.1.1_merged", "bacteria.1.1_merged"}
    for path in merged:
        content = torch.load(path, weights_only=True)
        assert content["data"].shape == (len(content["ids"]), 768 + units.load_protein_model(
            str(esm_model_dir), "cpu").hidden_size)
        assert content["labels"] == [1 if path.parent.name == "viral.1.1_merged" else 0]

    checkpoint = tmp_path / "300_model_fastesm650.pth"
    assert train.main(["--data-dir", str(data / "data_merge"), "--epochs", "3", "--batch-size", "4",
                       "--out", str(checkpoint), "--log", str(tmp_path / "MLP_log.txt"), "--device", "cpu",
                       "-q"]) == 0
    _, meta = units.load_checkpoint(checkpoint)
    assert meta["chunk_size"] == 300 and meta["input_dim"] == meta["dna_dim"] + meta["protein_dim"]
    assert "Epoch 1/3, Loss:" in (tmp_path / "MLP_log.txt").read_text()

    out = tmp_path / "out"
    reads = tmp_path / "reads.fa"
    shutil.copy(golden_dir / "reads.fa", reads)
    assert prediction.main([str(reads), "300", str(out), "--model", str(checkpoint), "-q", *models]) == 0
    results = read_rows(out / "prediction_results.txt")
    assert results[0] == ["Sequence_ID", "Prediction", "score1", "score2"] and len(results) > 1
    for _, label, score1, score2 in results[1:]:
        assert label in ("virus", "others")
        assert abs(float(np.float32(score1)) + float(np.float32(score2)) - 1) < 1e-5
    assert (out / "prediction_results_highestscore.csv").read_text() == original_consensus(
        out / "prediction_results.txt")
    summary = read_rows(out / "prediction_summary.tsv")
    assert len(summary) - 1 == sum(1 for _ in units.read_fasta(reads))
    assert {row[-1] for row in summary[1:]} <= {"virus", "others", "no_call"}

    assert drew_fig.main([str(out / "prediction_results.txt"), "-q"]) == 0
    assert (out / "prediction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
