"""The benchmark harness runs (tiny preset) and reports every stage for both strategies."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

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


def _fake_nvidia_smi(folder: Path) -> Path:
    """An ``nvidia-smi`` that prints a timestamped 100 % sample every 20 ms, as ``--query-gpu=timestamp,...`` does."""
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text(f"#!{sys.executable}\n"
                      "import datetime, time\n"
                      "while True:\n"
                      "    now = datetime.datetime.now().strftime('%Y/%m/%d %H:%M:%S.%f')[:-3]\n"
                      "    print(f'{now}, 100, 1234', flush=True)\n"
                      "    time.sleep(0.02)\n")
    script.chmod(0o755)
    return folder


def test_gpu_check_smoke_cpu_runs_every_section(tmp_path, monkeypatch):
    """benchmarks/gpu_check.py --smoke-cpu: every section runs on the era stand-ins through the real loaders and
    gives every figure (oom is skipped without CUDA); its work folder is gone afterwards."""
    import gpu_check
    import virnucpro.models
    from virnucpro.hfload import transformers_version

    monkeypatch.setattr(virnucpro.models, "_MODEL_CACHE", {})
    monkeypatch.setenv("PATH", f"{_fake_nvidia_smi(tmp_path / 'bin')}:{os.environ['PATH']}")
    out, work = tmp_path / "smoke.json", tmp_path / "work"
    assert gpu_check.main(["--smoke-cpu", "--out", str(out), "--workdir", str(work), "--reads", "40",
                           "--precision-reads", "30", "--peak-tflops", "1"]) == 0
    figures = json.loads(out.read_text())
    assert figures["finished"] and all(figures[name]["ok"] for name in gpu_check.SECTIONS)
    assert list(work.iterdir()) == []  # the run's own folder (models, reads, OUTDIR) removed
    # era d (the hub's FastPLMs 1.0 code) runs its own code under transformers 5 only
    protein_loader = "remote" if transformers_version()[1][0] >= 5 else "native"
    assert figures["models"]["loaders"] == {"protein": protein_loader, "dna": "remote"}
    smoke = figures["smoke"]
    assert smoke["finite"] and smoke["triton_attention_disabled"] and smoke["protein_loader"] == protein_loader
    assert figures["matmul"]["tflops"]["fp32"] > 0 and figures["matmul"]["tflops"]["bf16"] > 0
    precision = figures["precision"]
    assert precision["frames"] == 30 and precision["protein_fp32_loader"] == protein_loader
    row = precision["dna_bf16"]
    assert 0 < row["relative_l2"] < 0.05 and 0.8 <= row["label_agreement"] <= 1.0  # 30 frames near a median split: a few flip
    micro = figures["microbench"]
    assert micro["protein_fp32"]["loader"] == protein_loader
    for figure in (micro["protein_fp32"]["masked"], micro["protein_fp32"]["bucketed"],
                   micro["protein_fp32"]["compiled"], micro["dna_fp32"]["masked"], micro["dna_bf16"]["masked"]):
        assert figure["tflops"] > 0 and figure["mfu_spec"] == pytest.approx(figure["tflops"])  # spec peak 1 TFLOP/s
        assert figure["mfu_matmul"] == pytest.approx(figure["tflops"] / figure["matmul_peak_tflops"])
    assert micro["dna_bf16"]["masked"]["matmul_peak_tflops"] == figures["matmul"]["tflops"]["bf16"]
    assert figures["oom"]["skipped"] == "needs CUDA"
    e2e = figures["end_to_end"]
    assert e2e["reads"] == 40 and e2e["reads_per_s"] > 0 and e2e["shards"] == 2 and e2e["steady_shards"] == 1
    assert set(e2e["phase_seconds"]) == {"open", "load", "score", "finalise"}
    assert e2e["steady_reads_per_s"] > 0 and e2e["scoring_reads_per_s"] > e2e["reads_per_s"]
    assert e2e["loaders"] == {"protein": protein_loader, "dna": "remote"}
    # the (fake) nvidia-smi samples were read; only those of the scoring phase count
    assert e2e["nvidia_smi_samples_total"] >= 1 and e2e["nvidia_smi_samples"] <= e2e["nvidia_smi_samples_total"]
    assert e2e["gpu_busy_fraction"] == (1.0 if e2e["nvidia_smi_samples"] else None)


@pytest.mark.parametrize("stop", ["failure", "interruption"])
def test_gpu_check_json_holds_the_sections_before_a_failing_one(tmp_path, monkeypatch, stop):
    """The JSON is written after every section: a later section's failure, or a stop in it (SIGTERM from a
    timeout), leaves the earlier figures on disk; the work folder is removed either way."""
    import gpu_check
    import virnucpro.models

    monkeypatch.setattr(virnucpro.models, "_MODEL_CACHE", {})
    out, work = tmp_path / "figures.json", tmp_path / "work"
    seen_on_disk: list[dict] = []

    def broken(ctx):
        seen_on_disk.append(json.loads(out.read_text()))  # written before this section began
        if stop == "failure":
            raise RuntimeError("injected")
        raise gpu_check.Terminated("signal 15")

    monkeypatch.setitem(gpu_check.BODIES, "microbench", broken)
    argv = ["--smoke-cpu", "--out", str(out), "--workdir", str(work), "--sections", "matmul,microbench,oom"]
    if stop == "failure":
        assert gpu_check.main(argv) == 1
    else:
        with pytest.raises(gpu_check.Terminated):
            gpu_check.main(argv)
    assert seen_on_disk[0]["matmul"]["ok"] and "microbench" not in seen_on_disk[0]
    figures = json.loads(out.read_text())
    assert figures["matmul"]["ok"] and figures["matmul"]["tflops"]["fp32"] > 0
    assert figures["microbench"]["ok"] is False
    if stop == "failure":
        assert figures["microbench"]["error"] == "RuntimeError: injected" and figures["oom"]["ok"]
        assert figures["finished"]
    else:
        assert figures["microbench"]["error"].startswith("interrupted (Terminated")
        assert "oom" not in figures and not figures["finished"]
    assert list(work.iterdir()) == []
    assert not list(tmp_path.glob(".figures.json.*"))  # no temporary JSON left beside it


@pytest.mark.slow
def test_gpu_check_sigterm_keeps_the_figures_and_removes_the_work_folder(tmp_path):
    """A real SIGTERM (what ``timeout`` sends) in the middle of a run: the finished sections are in the JSON,
    the run says it did not finish, and its work folder is removed."""
    out, work = tmp_path / "figures.json", tmp_path / "work"
    process = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke-cpu",
                                "--out", str(out), "--workdir", str(work), "--sections",
                                "smoke,matmul,precision,microbench,end_to_end", "--reads", "3000"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if out.exists() and "smoke" in json.loads(out.read_text()):
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be stopped"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) != 0
    finally:
        if process.poll() is None:
            process.kill()
    figures = json.loads(out.read_text())
    assert figures["smoke"]["ok"] and not figures["finished"]
    assert list(work.iterdir()) == []


def test_busy_summary_counts_the_scoring_window_only():
    """The GPU busy fraction is the mean utilisation of the samples inside the scoring phase, no others."""
    import gpu_check

    samples = [(float(t), 100.0 if 3 <= t <= 6 else 0.0, 1000.0 + t) for t in range(10)]
    summary = gpu_check.busy_summary(samples, 3.0, 6.0)
    assert summary["gpu_busy_fraction"] == 1.0 and summary["nvidia_smi_samples"] == 4
    assert summary["nvidia_smi_peak_memory_mib"] == 1006.0
    assert gpu_check.busy_summary(samples, 20.0, 30.0)["gpu_busy_fraction"] is None


def test_steady_rate_leaves_the_first_shard_out():
    """Steady-state reads/s: the reads of shards 2..n over the time from the first shard's end to the last's."""
    import gpu_check

    assert gpu_check.steady_rate([(13.0, 50), (10.0, 500), (12.0, 100)]) == (pytest.approx(150 / 3.0), 2)
    assert gpu_check.steady_rate([(10.0, 500)]) == (None, 0)


def test_precision_frames_are_topped_up_to_the_count(tmp_path):
    """--precision-reads is a number of frames: real genomes first, then synthetic reads until there are enough."""
    import gpu_check

    real = tmp_path / "real"
    real.mkdir()
    (real / "tiny.fna").write_text(">g1\n" + "ATG" + "GCT" * 199 + "\n")  # 600 bp: 2 chunks, a few frames
    frames, sources = gpu_check.precision_frames(real, 40)
    assert len(frames) == 40 and sources[0] == "tiny.fna" and sources[-1].startswith("synthetic")
    assert frames[0][0].startswith("g1")
    assert len({frame_id for frame_id, _, _ in frames}) == 40
    frames, sources = gpu_check.precision_frames(tmp_path / "absent", 25)
    assert len(frames) == 25 and len(sources) == 1 and sources[0].startswith("synthetic")


def test_dnabert_unpad_standin_unpads_like_the_real_code(tmp_path, monkeypatch):
    """gpu_check's DNABERT-S stand-in, loaded by the real loader: unpadding (torch.nonzero once at the entry and
    once per layer), padding-independent embeddings, zero padded positions, the real ALiBi slopes for 12 heads."""
    import gpu_check
    import virnucpro.models
    from virnucpro import embed

    monkeypatch.setattr(virnucpro.models, "_MODEL_CACHE", {})
    sizes = gpu_check.Sizes(2, 64, 4, 128, 2, 4, 96, 120)
    loaded = virnucpro.models.load_dnabert_model(str(gpu_check.build_dnabert_unpad(tmp_path / "dna", sizes)), "cpu")
    module = sys.modules[type(loaded.model).__module__]
    expected = [2.0 ** -k for k in range(1, 9)] + [2.0 ** -(k + 0.5) for k in range(4)]
    assert module.alibi_slopes(12) == pytest.approx(expected)
    short, long = "ACGTTGCA" * 5, "TTGACAGG" * 30
    alone = embed.embed_dna([short], loaded)
    together = embed.embed_dna([short, long], loaded)
    assert torch.allclose(alone[0], together[0], atol=1e-5)
    batch = loaded.tokenizer([short, long], padding=True, return_tensors="pt")
    calls = []
    original = torch.nonzero

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "nonzero", counting)
    with torch.inference_mode():
        hidden = loaded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
    assert len(calls) == 1 + sizes.dna_layers
    padded = batch["attention_mask"] == 0
    assert padded.any() and hidden.shape[-1] == 768 and bool((hidden[padded] == 0).all())
    # MFU counts what each token passes through: the encoder, not the embeddings or the pooler
    encoder = sum(p.numel() for name, p in loaded.model.named_parameters() if name.startswith("encoder."))
    assert bench_pipeline.non_embedding_params(loaded.model) == encoder
