"""Reliability details that cut across scripts: CUDA OOM splitting, atomic writes, --force scope."""
from __future__ import annotations

import torch
import pytest

from virnucpro import outputs, runstate
import units


class OomAbove(torch.nn.Module):
    """Wraps a model and raises CUDA out-of-memory for batches larger than ``limit``."""

    def __init__(self, inner: torch.nn.Module, limit: int):
        super().__init__()
        self.inner, self.limit, self.calls = inner, limit, []

    @property
    def config(self):
        return self.inner.config

    def forward(self, *args, **kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls.append(input_ids.shape[0])
        if input_ids.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(*args, **kwargs)


def test_out_of_memory_batches_are_split_and_retried(esm_model_dir, dnabert_model_dir):
    proteins = ["MKVLAAGIEFQW" * k for k in range(1, 12)]
    dna = ["ACGTTGCA" * k for k in range(3, 14)]
    for loaded, seqs, embed in ((units.load_protein_model(str(esm_model_dir), "cpu"), proteins, units.embed_proteins),
                                (units.load_dnabert_model(str(dnabert_model_dir), "cpu"), dna, units.embed_dna)):
        expected = embed(seqs, loaded, batch_tokens=100_000)
        flaky = OomAbove(loaded.model, limit=3)
        wrapped = units.LoadedModel(loaded.name, flaky, loaded.tokenizer, loaded.device, loaded.dtype,
                                    loaded.hidden_size)
        got = embed(seqs, wrapped, batch_tokens=100_000)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert flaky.calls[0] == len(seqs) and max(flaky.calls[1:]) <= len(seqs) // 2 + 1


def test_out_of_memory_on_a_single_sequence_is_raised(esm_model_dir):
    loaded = units.load_protein_model(str(esm_model_dir), "cpu")
    wrapped = units.LoadedModel(loaded.name, OomAbove(loaded.model, limit=0), loaded.tokenizer, loaded.device,
                                loaded.dtype, loaded.hidden_size)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        units.embed_proteins(["MKV", "MKVL"], wrapped)


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("old complete content\n")
    with pytest.raises(RuntimeError):
        with units.atomic_write(target) as handle:
            handle.write("half of the new")
            raise RuntimeError("killed")
    assert target.read_text() == "old complete content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["result.txt"]


def test_force_removes_only_this_programs_files(tmp_path):
    outdir = tmp_path / "out"
    (outdir / outputs.WORK_DIR_NAME).mkdir(parents=True)
    (outdir / outputs.WORK_DIR_NAME / "shard_000000.done").write_text("{}")
    ours = outputs.final_outputs(outdir, "reads", 300)
    for path in ours:
        path.write_text("x")
    (outdir / "features").mkdir()
    (outdir / "features" / "shard_000000_merged.pt").write_text("x")
    (outdir / "features" / "my_notes.txt").write_text("keep")
    (outdir / "reads_identified_protein.faa.bak").write_text("keep")
    outside = tmp_path / "prediction_results.txt"
    outside.write_text("keep")
    runstate.remove_own_files(outdir, "reads", 300)
    assert not any(p.exists() for p in ours)
    assert not (outdir / outputs.WORK_DIR_NAME).exists()
    assert sorted(p.name for p in outdir.rglob("*")) == ["features", "my_notes.txt", "reads_identified_protein.faa.bak"]
    assert outside.read_text() == "keep"
