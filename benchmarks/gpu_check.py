#!/usr/bin/env python
"""One-shot GPU verification of the throughput work (issue 12): run it on a CUDA machine.

    python benchmarks/gpu_check.py --out gpu_check.json            # H100/H200, < 10 minutes
    python benchmarks/gpu_check.py --smoke-cpu --out smoke.json    # tiny sizes on the CPU (tests)

Models are random-weight, full-size architectures built locally (no download):
FastESM2_650-size ESM (33 x 1280, rotary, SDPA; ``bench_pipeline.build_model``) and the
DNABERT-S stand-in of ``tests/standins.py`` at full size (12 x 768, ALiBi with the real
code's float32 bias).  Sections (each timed, each one JSON entry; a failing section is
recorded and the others still run):

a smoke       both loaders on the device, pinned memory, Triton attention disabled, finite outputs
b precision   protein fp16/bf16 and DNA tf32/fp16/bf16 against fp32: relative L2, min cosine,
              label agreement of a random classifier split at its median on the fp32 rows
c microbench  FastESM2-size forward at ~160 x 102 tokens: masked (mixed lengths), bucketed
              (one length, no mask), compiled (torch.compile of the layers); TFLOP/s and MFU
d oom         the out-of-memory split under torch.cuda.set_per_process_memory_fraction
e end_to_end  prediction.py on synthetic 300-bp reads: reads/s, GPU busy (nvidia-smi), peak memory
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "tests", ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import bench_pipeline as bench  # noqa: E402
import standins  # noqa: E402
from virnucpro import classifier, embed, models  # noqa: E402
from virnucpro import frames as framing  # noqa: E402

log = logging.getLogger("gpu_check")
SECTIONS = ("smoke", "precision", "microbench", "oom", "end_to_end")


class Context:
    """Sizes, device, work directory and the models built once and shared by the sections."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.cache: dict[str, Any] = {}
        tiny = args.smoke_cpu
        self.esm_arch = bench.Arch("FastESM2_650-size", 2 if tiny else 33, 64 if tiny else 1280)
        self.dna_layers, self.dna_heads, self.dna_ffn = (1, 4, 96) if tiny else (12, 12, 3072)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def esm_dir(self) -> Path:
        """A saved random ESM model of FastESM2_650 size with its tokenizer (plain EsmModel, SDPA)."""
        if "esm_dir" not in self.cache:
            directory = self.work / "esm"
            model = bench.build_model("esm", bench.esm_config(self.esm_arch, "sdpa"), torch.device("cpu"),
                                      torch.float32)
            model.save_pretrained(str(directory), safe_serialization=True)
            bench.esm_tokenizer(self.work).save_pretrained(str(directory))
            self.cache["esm_dir"] = directory
        return self.cache["esm_dir"]

    def dna_dir(self) -> Path:
        """The DNABERT-S stand-in (ALiBi, float32 bias) at full size."""
        if "dna_dir" not in self.cache:
            self.cache["dna_dir"] = standins.build_dnabert_standin(
                self.work / "dna", num_layers=self.dna_layers, num_heads=self.dna_heads,
                intermediate_size=self.dna_ffn, vocab_size=4096 if not self.args.smoke_cpu else 120)
        return self.cache["dna_dir"]

    def frames(self) -> list[tuple[str, str, str]]:
        """Kept frames of real genome reads (--real-dir FASTA files) or, without them, synthetic reads."""
        records, used, _ = bench.real_reads(self.args.real_dir)
        if not records:
            records = bench.synthetic_reads(self.args.precision_reads, 300, 42, 0.7)
        chunks = bench.chunk_records(records, 300)[: self.args.precision_reads]
        self.cache["frames_source"] = used or ["synthetic"]
        return framing.select_frames(chunks)


def timed(results: dict, name: str, body: Callable[[], dict]) -> None:
    start = time.perf_counter()
    try:
        results[name] = {"ok": True, **body()}
    except Exception as exc:  # noqa: BLE001 - record and go on with the other sections
        results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        log.error("section %s failed: %s", name, exc)
    results[name]["seconds"] = round(time.perf_counter() - start, 3)
    log.info("section %s: %s", name, {k: v for k, v in results[name].items() if k != "traceback"})


# ---------------------------------------------------------------------------
# a smoke
# ---------------------------------------------------------------------------


def smoke(ctx: Context) -> dict:
    esm_dir = standins.build_fastesm_standin(ctx.work / "tiny_esm", self_contained=True)
    dna_dir = standins.build_dnabert_standin(ctx.work / "tiny_dna")
    protein = models.load_protein_model(str(esm_dir), ctx.device)
    dna = models.load_dnabert_model(str(dna_dir), ctx.device)
    module = sys.modules[type(dna.model).__module__]
    protein_out = embed.embed_proteins(["MKVLAAGIEFQW" * 3, "MSTNPKPQRK"], protein)
    dna_out = embed.embed_dna(["ACGT" * 40, "TTGACA" * 11], dna)
    pinned = torch.empty(16, pin_memory=True).is_pinned() if ctx.device.type == "cuda" else None
    return {"protein_dtype": str(protein.dtype), "dna_dtype": str(dna.dtype), "pinned_memory": pinned,
            "triton_attention_disabled": getattr(module, "flash_attn_qkvpacked_func", None) is None,
            "finite": bool(torch.isfinite(protein_out).all() and torch.isfinite(dna_out).all()),
            "device_of_models": str(next(protein.model.parameters()).device)}


# ---------------------------------------------------------------------------
# b precision
# ---------------------------------------------------------------------------


def _compare(got: torch.Tensor, reference: torch.Tensor) -> dict:
    return {"relative_l2": float((got - reference).norm() / reference.norm()),
            "min_cosine": float(F.cosine_similarity(got, reference, dim=1).min()),
            "max_abs": float((got - reference).abs().max())}


def _random_classifier(dna_ref: torch.Tensor, protein_ref: torch.Tensor):
    """A seeded random MLP whose decision threshold is the median margin on the fp32 rows (balanced labels)."""
    torch.manual_seed(0)
    mlp = classifier.MLPClassifier(dna_ref.shape[1] + protein_ref.shape[1]).eval()

    def margins(features: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            logits = mlp(features)
        return logits[:, 1] - logits[:, 0]

    threshold = float(margins(torch.cat((dna_ref, protein_ref), 1)).median())
    return lambda dna, protein: (margins(torch.cat((dna, protein), 1)) > threshold)


def precision(ctx: Context) -> dict:
    frames = ctx.frames()
    proteins = [p for _, _, p in frames]
    nucleotides = [n for _, n, _ in frames]
    rows: dict[str, Any] = {"frames": len(frames), "source": ctx.cache["frames_source"]}
    dna_ref = protein_ref = None
    protein_out: dict[str, torch.Tensor] = {}
    for name in ctx.args.protein_precisions:
        loaded = models.load_protein_model(str(ctx.esm_dir()), ctx.device, precision=name)
        protein_out[name] = embed.embed_proteins(proteins, loaded)
        del loaded
        models._MODEL_CACHE.clear()
    dna_out: dict[str, torch.Tensor] = {}
    for name in ctx.args.dna_precisions:
        loaded = models.load_dnabert_model(str(ctx.dna_dir()), ctx.device, precision=name)
        dna_out[name] = embed.embed_dna(nucleotides, loaded)
        del loaded
        models._MODEL_CACHE.clear()
    dna_ref, protein_ref = dna_out["fp32"], protein_out["fp32"]
    labels = _random_classifier(dna_ref, protein_ref)
    reference_labels = labels(dna_ref, protein_ref)
    rows["fp32_label_fraction_1"] = float(reference_labels.float().mean())
    for kind, outputs in (("protein", protein_out), ("dna", dna_out)):
        for name, got in outputs.items():
            if name == "fp32":
                continue
            predicted = labels(got, protein_ref) if kind == "dna" else labels(dna_ref, got)
            rows[f"{kind}_{name}"] = {**_compare(got, outputs["fp32"]),
                                      "label_agreement": float((predicted == reference_labels).float().mean())}
    return rows


# ---------------------------------------------------------------------------
# c microbench
# ---------------------------------------------------------------------------


def _time_forward(ctx: Context, model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None,
                  iters: int) -> float:
    with torch.inference_mode():
        for _ in range(2):
            model(input_ids=ids, attention_mask=mask)
        ctx.sync()
        start = time.perf_counter()
        for _ in range(iters):
            model(input_ids=ids, attention_mask=mask)
        ctx.sync()
    return (time.perf_counter() - start) / iters


def microbench(ctx: Context) -> dict:
    args, device = ctx.args, ctx.device
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = bench.build_model("esm", bench.esm_config(ctx.esm_arch, "sdpa"), device, dtype)
    rng = np.random.default_rng(0)
    rows, width = args.micro_rows, args.micro_tokens
    lengths = rng.integers(int(width * 0.75), width + 1, size=rows)
    lengths[0] = width
    ids = torch.from_numpy(rng.integers(4, 24, size=(rows, width))).to(device)
    mask = (torch.arange(width, device=device)[None, :] < torch.from_numpy(lengths).to(device)[:, None]).long()
    peak = args.peak_tflops or bench.default_peak_tflops(device)
    out: dict[str, Any] = {"rows": rows, "tokens": width, "dtype": str(dtype), "peak_tflops": peak}

    def record(name: str, seconds: float, real_lengths: Sequence[int]) -> None:
        flops = bench.encoder_flops(model, real_lengths)
        tflops = flops / seconds / 1e12
        out[name] = {"seconds": seconds, "tflops": tflops, "mfu": tflops / peak if peak else None,
                     "tokens_per_s": float(sum(real_lengths)) / seconds}

    record("masked", _time_forward(ctx, model, ids, mask, args.micro_iters), lengths.tolist())
    record("bucketed", _time_forward(ctx, model, ids, None, args.micro_iters), [width] * rows)
    if args.compile:
        loaded = models.LoadedModel("micro", model, None, device, dtype, model.config.hidden_size)
        start = time.perf_counter()
        models.compile_encoder_layers(loaded)
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=None)
        ctx.sync()
        out["compile_seconds"] = time.perf_counter() - start
        record("compiled", _time_forward(ctx, model, ids, None, args.micro_iters), [width] * rows)
    else:
        out["compiled"] = "skipped (--no-compile)"
    return out


# ---------------------------------------------------------------------------
# d oom
# ---------------------------------------------------------------------------


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def oom(ctx: Context) -> dict:
    if ctx.device.type != "cuda":
        return {"skipped": "needs CUDA"}
    models._MODEL_CACHE.clear()
    torch.cuda.empty_cache()
    loaded = models.load_protein_model(str(ctx.esm_dir()), ctx.device)
    proteins = ["".join(np.random.default_rng(i).choice(list("ACDEFGHIKLMNPQRSTVWY"), 1000)) for i in range(64)]
    reference = embed.embed_proteins(proteins, loaded, batch_tokens=4 * 1002)
    total = torch.cuda.get_device_properties(ctx.device).total_memory
    cap = torch.cuda.memory_allocated(ctx.device) + ctx.args.oom_headroom_mib * 2**20
    handler = _Count()
    logging.getLogger("virnucpro").addHandler(handler)
    torch.cuda.set_per_process_memory_fraction(cap / total, ctx.device)
    try:
        got = embed.embed_proteins(proteins, loaded, batch_tokens=64 * 1002)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, ctx.device)
        logging.getLogger("virnucpro").removeHandler(handler)
        torch.cuda.empty_cache()
    splits = sum("out of memory" in m for m in handler.messages)
    return {"cap_mib": cap / 2**20, "splits": splits, "exercised": splits > 0,
            **_compare(got, reference), "finite": bool(torch.isfinite(got).all())}


# ---------------------------------------------------------------------------
# e end to end
# ---------------------------------------------------------------------------


class _GpuSampler:
    """nvidia-smi utilisation and memory every 200 ms while the run lasts."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.process: subprocess.Popen | None = None
        self.thread: threading.Thread | None = None

    def __enter__(self) -> "_GpuSampler":
        with contextlib.suppress(OSError):
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 "-lms", "200"], stdout=subprocess.PIPE, text=True)
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                util, memory = (float(x) for x in line.split(",")[:2])
                self.samples.append((util, memory))

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def summary(self) -> dict:
        if not self.samples:
            return {"gpu_busy_fraction": None, "nvidia_smi_samples": 0}
        util = np.array([s[0] for s in self.samples])
        return {"gpu_busy_fraction": float(util.mean() / 100.0), "gpu_util_p10": float(np.percentile(util, 10)),
                "nvidia_smi_samples": len(util), "nvidia_smi_peak_memory_mib": max(s[1] for s in self.samples)}


def end_to_end(ctx: Context) -> dict:
    from virnucpro.predict import run_prediction

    args = ctx.args
    reads = bench.synthetic_reads(args.reads, 300, 7, 0.7)
    fasta = ctx.work / "reads.fa"
    fasta.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in reads))
    checkpoint = ctx.work / "300_model_fastesm650.pth"
    torch.manual_seed(3)
    dna_dim, protein_dim = 768, ctx.esm_arch.hidden
    classifier.save_checkpoint(checkpoint, classifier.MLPClassifier(dna_dim + protein_dim).eval(),
                               dna_model=str(ctx.dna_dir()), dna_dim=dna_dim, protein_model=str(ctx.esm_dir()),
                               protein_dim=protein_dim, chunk_size=300)
    models._MODEL_CACHE.clear()
    request = bench.prediction_request(fasta, ctx.work / "out", checkpoint, ctx.esm_dir(), ctx.dna_dir(),
                                       str(ctx.device), args.e2e_args, force=True)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    with _GpuSampler() as sampler:
        start = time.perf_counter()
        run_prediction(request)
        seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(ctx.device) / 2**20 if ctx.device.type == "cuda" else None
    return {"reads": args.reads, "argv_extra": args.e2e_args, "seconds": seconds, "reads_per_s": args.reads / seconds,
            "torch_peak_memory_mib": peak, **sampler.summary(),
            "note": "includes model loading (from local random-weight directories)"}


# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file for every figure")
    parser.add_argument("--smoke-cpu", action="store_true", help="tiny sizes on the CPU (for the tests)")
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --smoke-cpu")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    parser.add_argument("--reads", type=int, default=100_000, help="end_to_end: synthetic 300-bp reads")
    parser.add_argument("--e2e-args", default="", help="extra language-model options of prediction.py, e.g. '--dna-precision bf16'")
    parser.add_argument("--precision-reads", type=int, default=3000, help="precision: chunks (real genomes first)")
    parser.add_argument("--real-dir", type=Path, default=ROOT.parent / "shared" / "data" / "real")
    parser.add_argument("--protein-precisions", default="fp32,fp16,bf16")
    parser.add_argument("--dna-precisions", default="fp32,tf32,fp16,bf16")
    parser.add_argument("--micro-rows", type=int, default=160)
    parser.add_argument("--micro-tokens", type=int, default=102)
    parser.add_argument("--micro-iters", type=int, default=20)
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="microbench: skip torch.compile")
    parser.add_argument("--oom-headroom-mib", type=int, default=768, help="oom: memory cap above the loaded model")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense fp16 peak for MFU (H100/H200 SXM: 989)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected sections and write the JSON; exit 1 when a section failed."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.smoke_cpu:
        args.device = args.device or "cpu"
        args.reads, args.precision_reads = min(args.reads, 120), min(args.precision_reads, 60)
        args.micro_rows, args.micro_tokens, args.micro_iters = 8, 24, 1
        args.compile = False
        args.protein_precisions, args.dna_precisions = "fp32,bf16", "fp32,bf16"
    args.device = args.device or "cuda"
    args.protein_precisions = args.protein_precisions.split(",")
    args.dna_precisions = args.dna_precisions.split(",")
    if "fp32" not in args.protein_precisions or "fp32" not in args.dna_precisions:
        raise SystemExit("gpu_check.py: the precision lists must include fp32 (the reference)")
    ctx = Context(args)
    results: dict[str, Any] = {"machine": bench.machine_info(ctx.device), "argv": list(argv or sys.argv[1:])}
    bodies = {"smoke": smoke, "precision": precision, "microbench": microbench, "oom": oom, "end_to_end": end_to_end}
    for name in args.sections.split(","):
        timed(results, name, lambda name=name: bodies[name](ctx))
        models._MODEL_CACHE.clear()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=1, default=str)[:6000])
    return 0 if all(r.get("ok") for k, r in results.items() if k in bodies) else 1


if __name__ == "__main__":
    sys.exit(main())
