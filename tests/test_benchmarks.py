"""The benchmark harness runs (tiny preset) and reports every stage for both strategies."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_pipeline  # noqa: E402


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_pipeline.main(["--help"])
    assert exc.value.code == 0
    assert "--stages" in capsys.readouterr().out


def test_bad_stage_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        bench_pipeline.main(["--stages", "nope"])
    assert exc.value.code == 2


def test_fair_esm_batches_sort_and_budget():
    batches = bench_pipeline.fair_esm_batches([100, 5, 100, 50, 2000], 2048, extra_toks_per_seq=1)
    assert batches[0][0] == 1                          # shortest first
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    assert batches[-1] == [4]                          # over budget: alone
    for batch in batches[:-1]:
        assert len(batch) * (max([100, 5, 100, 50, 2000][i] for i in batch) + 1) <= 2048


def test_preprocess_only(tmp_path, capsys):
    out = tmp_path / "pre.json"
    assert bench_pipeline.main(["--stages", "preprocess", "--reads", "200", "--no-real", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    stages = {(r["strategy"], r["stage"]): r for r in report["stages"]}
    assert stages["ours", "preprocess"]["items"] == stages["original", "preprocess"]["items"] > 0
    assert stages["ours", "preprocess"]["chunks"] == 200
    assert "speed-up" in capsys.readouterr().out


@pytest.mark.slow
def test_tiny_full_pipeline(tmp_path):
    out = tmp_path / "tiny.json"
    assert bench_pipeline.main(["--tiny", "--reads", "30", "--no-real", "--reload-every", "10",
                                "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    seen = {(r["strategy"], r["stage"]) for r in report["stages"]}
    for strategy in ("ours", "original"):
        for stage in ("preprocess", "dna", "protein", "mlp", "end_to_end"):
            assert (strategy, stage) in seen
    original_dna = next(r for r in report["stages"] if r["strategy"] == "original" and r["stage"] == "dna")
    assert original_dna["loads"] == -(-original_dna["items"] // 10)


def test_gpu_check_smoke_cpu_runs_every_section(tmp_path, monkeypatch):
    """benchmarks/gpu_check.py --smoke-cpu: every section runs (oom is skipped without CUDA)."""
    import gpu_check
    import virnucpro.models

    monkeypatch.setattr(virnucpro.models, "_MODEL_CACHE", {})
    out = tmp_path / "smoke.json"
    assert gpu_check.main(["--smoke-cpu", "--out", str(out), "--reads", "40", "--precision-reads", "30"]) == 0
    figures = json.loads(out.read_text())
    assert all(figures[name]["ok"] for name in gpu_check.SECTIONS)
    assert figures["smoke"]["finite"] and figures["smoke"]["triton_attention_disabled"]
    row = figures["precision"]["dna_bf16"]
    assert 0 < row["relative_l2"] < 0.05 and 0.9 <= row["label_agreement"] <= 1.0
    assert figures["microbench"]["bucketed"]["tflops"] > 0
    assert figures["oom"]["skipped"] == "needs CUDA"
    assert figures["end_to_end"]["reads"] == 40 and figures["end_to_end"]["reads_per_s"] > 0
