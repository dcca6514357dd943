#!/usr/bin/env python
"""One-shot GPU verification of the throughput work (issues 12 and 21): run it on a CUDA machine.

    python3 benchmarks/gpu_check.py --out gpu_check.json            # H100/H200; see benchmarks/README.md
    python3 benchmarks/gpu_check.py --smoke-cpu --out smoke.json    # tiny sizes on the CPU (tests)

The models are random-weight, full-size stand-ins of the real ones, built locally (no
download) and loaded through the loaders prediction uses (``virnucpro.models.load_protein_model``
/ ``load_dnabert_model``), so what is timed is the code path that runs:

* protein: the FastESM2 stand-in of ``tests/fastesm_eras.py`` (era ``d``, the FastPLMs 1.0 hub
  code, unless ``--esm-era c``) at FastESM2_650's size: 33 layers x 1280, 20 heads, 5120
  intermediate.  Its own code under transformers 5 (era d) or 4 (era c), else transformers'
  own ESM (the ``native`` loader); the JSON's ``loaders`` says which ran.
* DNA: the unpadding DNABERT-S stand-in below (:data:`DNABERT_UNPAD_MODELING`) at DNABERT-S's
  size: 12 layers x 768, 12 heads, 3072 intermediate (gated), BPE vocabulary up to 4096.

Sections (``--sections``; each timed and one JSON entry; a failing section is recorded and
the others still run; the JSON is rewritten, atomically, after every section):

a smoke       both loaders on tiny stand-ins: pinned memory, Triton attention disabled, finite outputs
b matmul      the GEMM peak of this device (``--matmul-size``^3 per precision): the second MFU reference
c precision   protein fp16/bf16 and DNA tf32/fp16/bf16 against fp32 on ``--precision-reads`` frames:
              relative L2, min cosine, label agreement of a random classifier split at its median
d end_to_end  ``virnucpro.predict.run_prediction`` on synthetic 300-bp reads: seconds of each phase
              (index pass, model load, scoring, finalise), steady-state reads/s of the scoring phase,
              GPU busy fraction (nvidia-smi) over the scoring phase only, peak memory
e oom         the out-of-memory split under ``torch.cuda.set_per_process_memory_fraction`` (CUDA only)
f microbench  forward passes of both models: protein masked (mixed lengths), bucketed (one length,
              no mask) and compiled (the first of ``--micro-precisions``); DNA masked (300-bp reads);
              TFLOP/s and MFU against the spec peak (``--peak-tflops``) and the measured GEMM peak

Every file it makes (models, reads, the prediction OUTDIR, the remote-code module cache when
transformers is not imported yet) lies in one work folder it creates under ``--workdir`` and
removes at the end, also when stopped by SIGTERM or Ctrl-C (``--keep-workdir`` keeps it).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

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
from virnucpro.defaults import CUDA_PROTEIN_PRECISION, DNABERT_S_DIM  # noqa: E402
from virnucpro.precision import tf32_scope  # noqa: E402
from virnucpro.shards import DEFAULT_SHARD_CHUNKS  # noqa: E402

log = logging.getLogger("gpu_check")
#: In this order: the figures that decide defaults first, torch.compile's long first call last.
SECTIONS = ("smoke", "matmul", "precision", "end_to_end", "oom", "microbench")
CHUNK_SIZE = 300
ESM_ERAS = ("c", "d")
#: nvidia-smi's ``timestamp`` field (local time, milliseconds).
NVIDIA_SMI_TIME = "%Y/%m/%d %H:%M:%S.%f"


@dataclass(frozen=True)
class Sizes:
    """Model sizes: the real models' (FULL) or tiny ones for the CPU smoke run."""

    esm_layers: int
    esm_hidden: int
    esm_heads: int
    esm_ffn: int
    dna_layers: int
    dna_heads: int
    dna_ffn: int
    dna_vocab: int


#: FastESM2_650 (33 x 1280, 20 heads, 5120) and DNABERT-S (12 x 768, 12 heads, 3072, vocabulary 4096).
FULL = Sizes(33, 1280, 20, 5120, 12, 12, 3072, 4096)
TINY = Sizes(2, 64, 4, 128, 1, 4, 96, 120)


# ---------------------------------------------------------------------------
# The DNABERT-S stand-in with unpadding
# ---------------------------------------------------------------------------

#: Written for this check, not copied; read from MAGICS-LAB/DNABERT_S ``evaluate/model_codes/bert_layers.py``
#: and ``train/pretrain/DNABERT2_MIX/bert_padding.py`` (the MosaicBERT code DNABERT-S ships).  What
#: ``tests/standins.py``'s DNABERT-S stand-in mirrors already, this one mirrors too: the guarded
#: ``from .flash_attn_triton import flash_attn_qkvpacked_func`` (its sibling imports triton) used when
#: not None; ALiBi built in ``__init__`` as a plain float32 attribute from ``torch.arange`` and a legacy
#: ``torch.Tensor(list)`` of slopes (so transformers 5's meta-device init fails on it), rebuilt when an
#: input is longer, moved to the input's device on first use, never cast by ``model.half()``; a TUPLE
#: output whose ``[0]`` is (B, T, 768) with padded positions zero; the gated GELU MLP with post-LN.
#: What this one adds, as the real code does it:
#:
#: * unpadding at the encoder's entry: lengths from ``mask.sum``, kept positions from ``torch.nonzero``
#:   (a host sync: its size depends on the data), ``int(lengths.max().item())`` (another), cumulative
#:   lengths, and the kept rows taken with ``torch.gather`` over expanded indices (``index_first_axis``);
#: * in every layer: the QKV projection, the output projection and the MLP on the unpadded rows; QKV
#:   padded back for attention by index_put into zeros (``pad_input``), attention in PyTorch on the
#:   padded (B, heads, S, S) scores plus a float32 bias (ALiBi + ``(1 - mask) * -10000``), then unpadded
#:   again through a second ``torch.nonzero`` of the mask (one more host sync per layer);
#: * the hidden states padded back (index_put into zeros) after the last layer;
#: * the real weight names (``attention.self.Wqkv``, ``attention.output.dense/LayerNorm``,
#:   ``mlp.gated_layers/wo/layernorm``, ``pooler.dense``) and ALiBi slopes (for a head count that is
#:   not a power of two, 12: those of the power below, then every other slope of the power above).
DNABERT_UNPAD_MODELING = '''\
"""MosaicBERT-style encoder with ALiBi and unpadding, written for VirNucPro-FastESM's GPU check (a DNABERT-S stand-in)."""
import math

import torch
from torch import nn
from transformers import PreTrainedModel

from .configuration_bert import BertConfig

try:
    from .flash_attn_triton import flash_attn_qkvpacked_func
except ImportError:
    flash_attn_qkvpacked_func = None


def alibi_slopes(heads):
    def power_of_two(n):
        first = 2.0 ** (-8.0 / n)
        return [first ** (i + 1) for i in range(n)]

    if math.log2(heads).is_integer():
        return power_of_two(heads)
    below = 2 ** math.floor(math.log2(heads))
    return power_of_two(below) + alibi_slopes(2 * below)[0::2][:heads - below]


def gather_rows(values, indices):
    flat = values.reshape(values.shape[0], -1)
    picked = torch.gather(flat, 0, indices[:, None].expand(-1, flat.shape[1]))
    return picked.reshape(-1, *values.shape[1:])


def scatter_rows(values, indices, rows):
    out = torch.zeros(rows, *values.shape[1:], device=values.device, dtype=values.dtype)
    out[indices] = values
    return out


def unpad(hidden, mask):
    lengths = mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()
    longest = int(lengths.max().item())
    cu_seqlens = nn.functional.pad(torch.cumsum(lengths, dim=0, dtype=torch.int32), (1, 0))
    return gather_rows(hidden.reshape(-1, *hidden.shape[2:]), indices), indices, cu_seqlens, longest


class BertEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids):
        embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(embeddings))


class BertUnpadSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.p_dropout = config.attention_probs_dropout_prob
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)

    def forward(self, hidden, cu_seqlens, seqlen, indices, attn_mask, bias):
        batch = cu_seqlens.shape[0] - 1
        qkv = scatter_rows(self.Wqkv(hidden), indices, batch * seqlen)
        qkv = qkv.view(batch, seqlen, 3, self.num_heads, self.head_dim)
        if self.p_dropout or flash_attn_qkvpacked_func is None:
            q = qkv[:, :, 0].permute(0, 2, 1, 3)
            k = qkv[:, :, 1].permute(0, 2, 3, 1)
            v = qkv[:, :, 2].permute(0, 2, 1, 3)
            scores = torch.matmul(q, k) / math.sqrt(self.head_dim) + bias
            probs = self.dropout(nn.functional.softmax(scores, dim=-1))
            context = torch.matmul(probs, v).permute(0, 2, 1, 3)
        else:
            context = flash_attn_qkvpacked_func(qkv, bias)
        kept = torch.nonzero((attn_mask == 1).flatten(), as_tuple=False).flatten()
        context = gather_rows(context.reshape(batch * seqlen, self.num_heads, self.head_dim), kept)
        return context.reshape(context.shape[0], -1)


class BertSelfOutput(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden, residual):
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class BertUnpadAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = BertUnpadSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, hidden, cu_seqlens, seqlen, indices, attn_mask, bias):
        return self.output(self.self(hidden, cu_seqlens, seqlen, indices, attn_mask, bias), hidden)


class BertGatedLinearUnitMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.act = nn.GELU(approximate="none")
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden):
        both = self.gated_layers(hidden)
        mixed = self.act(both[:, :self.intermediate_size]) * both[:, self.intermediate_size:]
        return self.layernorm(self.wo(self.dropout(mixed)) + hidden)


class BertLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = BertUnpadAttention(config)
        self.mlp = BertGatedLinearUnitMLP(config)

    def forward(self, hidden, cu_seqlens, seqlen, indices, attn_mask, bias):
        return self.mlp(self.attention(hidden, cu_seqlens, seqlen, indices, attn_mask, bias))


class BertEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])
        self.num_attention_heads = config.num_attention_heads
        self._current_alibi_size = int(config.alibi_starting_size)
        self.alibi = torch.zeros((1, self.num_attention_heads, self._current_alibi_size, self._current_alibi_size))
        self.rebuild_alibi_tensor(self._current_alibi_size)

    def rebuild_alibi_tensor(self, size, device=None):
        positions = torch.arange(size, device=device)
        distance = (positions[None, :] - positions[:, None]).abs()
        distance = distance.unsqueeze(0).expand(self.num_attention_heads, -1, -1)
        slopes = torch.Tensor(alibi_slopes(self.num_attention_heads)).to(device)
        self.alibi = (slopes[:, None, None] * -distance).unsqueeze(0)
        self._current_alibi_size = size

    def forward(self, hidden, attention_mask):
        extended = attention_mask[:, None, None, :].to(dtype=torch.float32)
        extended = (1.0 - extended) * -10000.0
        batch, seqlen = hidden.shape[:2]
        hidden, indices, cu_seqlens, _ = unpad(hidden, attention_mask.bool())
        if self._current_alibi_size < seqlen:
            self.rebuild_alibi_tensor(seqlen, hidden.device)
        elif self.alibi.device != hidden.device:
            self.alibi = self.alibi.to(hidden.device)
        bias = extended[:, :, :seqlen, :seqlen] + self.alibi[:, :, :seqlen, :seqlen]
        for layer in self.layer:
            hidden = layer(hidden, cu_seqlens, seqlen, indices, attention_mask, bias)
        return scatter_rows(hidden, indices, batch * seqlen).view(batch, seqlen, -1)


class BertPooler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden):
        return self.activation(self.dense(hidden[:, 0]))


class BertPreTrainedModel(PreTrainedModel):
    config_class = BertConfig
    base_model_prefix = "bert"

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.normal_(0.0, std)
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(0.0, 1.0)
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()


class BertModel(BertPreTrainedModel):
    def __init__(self, config, add_pooling_layer=True):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None,
                output_all_encoded_layers=False, masked_tokens_mask=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        hidden = self.encoder(self.embeddings(input_ids, token_type_ids), attention_mask)
        pooled = self.pooler(hidden) if self.pooler is not None else None
        return hidden, pooled
'''


def build_dnabert_unpad(directory: Path, sizes: Sizes, seed: int = 0) -> Path:
    """Write the unpadding DNABERT-S stand-in (hidden 768, ``sizes``' layers/heads/MLP) and its BPE tokenizer."""
    standins._write_sources(directory, {"configuration_bert.py": standins.DNABERT_CONFIGURATION,
                                        "bert_layers.py": DNABERT_UNPAD_MODELING,
                                        "flash_attn_triton.py": standins.DNABERT_FLASH_ATTN_TRITON})
    tokenizer = standins._dna_tokenizer(seed, sizes.dna_vocab)
    tokenizer.save_pretrained(str(directory))
    config = {"model_type": "bert", "architectures": ["BertModel"],
              "auto_map": {"AutoConfig": "configuration_bert.BertConfig", "AutoModel": "bert_layers.BertModel"},
              "vocab_size": len(tokenizer), "hidden_size": DNABERT_S_DIM, "num_hidden_layers": sizes.dna_layers,
              "num_attention_heads": sizes.dna_heads, "intermediate_size": sizes.dna_ffn,
              "pad_token_id": tokenizer.pad_token_id, "torch_dtype": "float32"}
    standins._save_seeded_model(directory, config, seed)
    return directory


def build_fastesm(directory: Path, sizes: Sizes, era: str) -> Path:
    """Write the FastESM2 stand-in of ``era`` at ``sizes`` (its tokenizer inside: no hub cache needed)."""
    return standins.build_fastesm_standin(directory, hidden_size=sizes.esm_hidden, num_layers=sizes.esm_layers,
                                          num_heads=sizes.esm_heads, intermediate_size=sizes.esm_ffn, era=era,
                                          self_contained=True)


# ---------------------------------------------------------------------------
# Context, JSON, sections
# ---------------------------------------------------------------------------


class Context:
    """Sizes, device, work folder and the model folders built once and shared by the sections."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.work = work
        self.sizes = TINY if args.smoke_cpu else FULL
        self.cache: dict[str, Any] = {}
        self.loaders: dict[str, str] = {}
        self.gemm: dict[str, float] = {}

    def sync(self) -> None:
        """Wait for the device (CUDA); nothing on the CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _built(self, key: str, build: Callable[[], Path]) -> Path:
        if key not in self.cache:
            start = time.perf_counter()
            self.cache[key] = build()
            self.cache[f"{key}_build_seconds"] = round(time.perf_counter() - start, 3)
        return self.cache[key]

    def esm_dir(self) -> Path:
        """The FastESM2 stand-in of ``--esm-era`` at full size (tiny with --smoke-cpu)."""
        return self._built("esm_dir", lambda: build_fastesm(self.work / "esm", self.sizes, self.args.esm_era))

    def dna_dir(self) -> Path:
        """The unpadding DNABERT-S stand-in at full size (tiny with --smoke-cpu)."""
        return self._built("dna_dir", lambda: build_dnabert_unpad(self.work / "dna", self.sizes))

    def protein(self, precision: str) -> models.LoadedModel:
        """The protein stand-in loaded as prediction loads it; the loader used is noted for the JSON."""
        loaded = models.load_protein_model(str(self.esm_dir()), self.device, precision=precision)
        self.loaders["protein"] = loaded.loader
        return loaded

    def dna(self, precision: str) -> models.LoadedModel:
        """The DNA stand-in loaded as prediction loads it (remote code, Triton attention off)."""
        loaded = models.load_dnabert_model(str(self.dna_dir()), self.device, precision=precision)
        self.loaders["dna"] = loaded.loader
        return loaded

    def gemm_peak(self, precision: str) -> float:
        """The measured GEMM TFLOP/s of ``precision`` (measured once per run)."""
        if precision not in self.gemm:
            self.gemm[precision] = gemm_tflops(self.device, precision, self.args.matmul_size, self.args.matmul_iters)
        return self.gemm[precision]

    def spec_peak(self) -> float | None:
        """``--peak-tflops``, else the dense fp16/bf16 datasheet figure of this GPU (None on the CPU)."""
        return self.args.peak_tflops or bench.default_peak_tflops(self.device)

    def summary(self) -> dict[str, Any]:
        """What the JSON says about the models: sizes, era, build seconds, loaders used so far."""
        built = {k: v for k, v in self.cache.items() if k.endswith("_build_seconds")}
        return {"sizes": asdict(self.sizes), "esm_era": self.args.esm_era, "loaders": dict(self.loaders), **built}


def write_json(path: Path, results: dict[str, Any]) -> None:
    """Write ``results`` to ``path`` atomically: a temporary file beside it, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            handle.write(json.dumps(results, indent=1, default=str) + "\n")
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


class Terminated(BaseException):
    """SIGTERM (``timeout``'s signal) as an exception, so the figures so far are written and the work folder removed."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"signal {signum}")


def timed(results: dict, name: str, body: Callable[[], dict]) -> None:
    """Run one section into ``results[name]``: its figures, or its error; an interruption is noted and raised."""
    start = time.perf_counter()
    try:
        results[name] = {"ok": True, **body()}
    except Exception as exc:  # noqa: BLE001 - record and go on with the other sections
        results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        log.error("section %s failed: %s", name, exc)
    except BaseException as exc:  # SIGTERM, Ctrl-C: say where it stopped, then stop
        results[name] = {"ok": False, "error": f"interrupted ({type(exc).__name__}: {exc})"}
        raise
    finally:
        if name in results:
            results[name]["seconds"] = round(time.perf_counter() - start, 3)
    log.info("section %s: %s", name, {k: v for k, v in results[name].items() if k != "traceback"})


# ---------------------------------------------------------------------------
# a smoke
# ---------------------------------------------------------------------------


def smoke(ctx: Context) -> dict:
    """Both loaders on tiny stand-ins of the same code: which loader ran, finite outputs, Triton attention off."""
    esm_dir = build_fastesm(ctx.work / "tiny_esm", TINY, ctx.args.esm_era)
    dna_dir = build_dnabert_unpad(ctx.work / "tiny_dna", TINY)
    protein = models.load_protein_model(str(esm_dir), ctx.device)
    dna = models.load_dnabert_model(str(dna_dir), ctx.device)
    module = sys.modules[type(dna.model).__module__]
    protein_out = embed.embed_proteins(["MKVLAAGIEFQW" * 3, "MSTNPKPQRK"], protein)
    dna_out = embed.embed_dna(["ACGT" * 40, "TTGACA" * 11], dna)
    pinned = torch.empty(16, pin_memory=True).is_pinned() if ctx.device.type == "cuda" else None
    return {"protein_dtype": str(protein.dtype), "dna_dtype": str(dna.dtype), "pinned_memory": pinned,
            "protein_loader": protein.loader, "protein_class": type(protein.model).__name__,
            "dna_loader": dna.loader, "dna_class": type(dna.model).__name__,
            "triton_attention_disabled": getattr(module, "flash_attn_qkvpacked_func", None) is None,
            "finite": bool(torch.isfinite(protein_out).all() and torch.isfinite(dna_out).all()),
            "device_of_models": str(next(protein.model.parameters()).device)}


# ---------------------------------------------------------------------------
# b matmul
# ---------------------------------------------------------------------------


def gemm_tflops(device: torch.device, precision: str, size: int, iters: int) -> float:
    """TFLOP/s of ``size``^3 products of random matrices in ``precision`` (tf32: float32 with TF32 on)."""
    dtype = models.PRECISION_DTYPES[precision]
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    out = torch.empty(size, size, device=device, dtype=dtype)
    with tf32_scope(precision == "tf32"):
        for _ in range(3):
            torch.matmul(a, b, out=out)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(iters):
            torch.matmul(a, b, out=out)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    return 2.0 * size ** 3 * iters / seconds / 1e12


def matmul(ctx: Context) -> dict:
    """The measured GEMM peak per precision (the reference of ``mfu_matmul``) and the spec peak."""
    return {"size": ctx.args.matmul_size, "iters": ctx.args.matmul_iters,
            "tflops": {name: ctx.gemm_peak(name) for name in ctx.args.matmul_precisions},
            "spec_peak_tflops": ctx.spec_peak()}


# ---------------------------------------------------------------------------
# c precision
# ---------------------------------------------------------------------------


def precision_frames(real_dir: Path, count: int) -> tuple[list[tuple[str, str, str]], list[str]]:
    """``count`` kept frames: of the real genomes in ``real_dir`` first, then of synthetic reads until there are enough."""
    frames: list[tuple[str, str, str]] = []
    records, used, _ = bench.real_reads(real_dir)
    sources: list[str] = []
    for record in records:
        if len(frames) >= count:
            break
        chunks = bench.chunk_records([record], CHUNK_SIZE)
        for start in range(0, len(chunks), 1024):
            frames.extend(framing.select_frames(chunks[start:start + 1024]))
            if len(frames) >= count:
                break
        sources = used
    seed, synthetic = 42, 0
    while len(frames) < count:
        reads = [(f"s{seed}_{rid}", seq) for rid, seq in bench.synthetic_reads(max(64, count - len(frames)),
                                                                               CHUNK_SIZE, seed, 0.7)]
        found = framing.select_frames(bench.chunk_records(reads, CHUNK_SIZE))
        if not found:
            raise RuntimeError("synthetic reads gave no frame")
        frames.extend(found)
        synthetic += len(reads)
        seed += 1
    if synthetic:
        sources = [*sources, f"synthetic ({synthetic} reads)"]
    return frames[:count], sources


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
    """Each 16-bit (and TF32) precision against fp32 on ``--precision-reads`` frames, for both models."""
    frames, sources = precision_frames(ctx.args.real_dir, ctx.args.precision_reads)
    proteins = [p for _, _, p in frames]
    nucleotides = [n for _, n, _ in frames]
    rows: dict[str, Any] = {"frames": len(frames), "source": sources}
    protein_out: dict[str, torch.Tensor] = {}
    for name in ctx.args.protein_precisions:
        loaded = ctx.protein(name)
        protein_out[name] = embed.embed_proteins(proteins, loaded)
        rows[f"protein_{name}_loader"] = loaded.loader
        del loaded
        models._MODEL_CACHE.clear()
    dna_out: dict[str, torch.Tensor] = {}
    for name in ctx.args.dna_precisions:
        loaded = ctx.dna(name)
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
                                      "label_agreement": int((predicted == reference_labels).sum()) / len(reference_labels)}
    return rows


# ---------------------------------------------------------------------------
# d microbench
# ---------------------------------------------------------------------------


def _time_forward(ctx: Context, loaded: models.LoadedModel, ids: torch.Tensor, mask: torch.Tensor | None,
                  iters: int) -> float:
    """Seconds per forward of ``loaded`` on one batch, in its precision (autocast, TF32 scope), after 2 warm-ups."""
    with torch.inference_mode():
        for _ in range(2):
            with models.precision_context(loaded):
                loaded.model(input_ids=ids, attention_mask=mask)
        ctx.sync()
        start = time.perf_counter()
        for _ in range(iters):
            with models.precision_context(loaded):
                loaded.model(input_ids=ids, attention_mask=mask)
        ctx.sync()
    return (time.perf_counter() - start) / iters


def _figures(ctx: Context, model: torch.nn.Module, precision: str, seconds: float,
             lengths: Sequence[int]) -> dict[str, Any]:
    """TFLOP/s of one timed forward, and MFU against the spec peak and the GEMM peak measured in this run."""
    tflops = bench.encoder_flops(model, lengths) / seconds / 1e12
    spec, gemm = ctx.spec_peak(), ctx.gemm_peak(precision)
    return {"seconds": seconds, "tflops": tflops, "tokens_per_s": float(sum(lengths)) / seconds,
            "mfu_spec": tflops / spec if spec else None, "mfu_matmul": tflops / gemm if gemm else None,
            "matmul_peak_tflops": gemm}


def _protein_batch(ctx: Context, tokenizer: Any, mixed: bool) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """``--micro-rows`` random proteins (CLS ... EOS) of ``--micro-tokens`` tokens, or with ``mixed`` of 75-100 %
    of that (padded), and their attention mask."""
    rng = np.random.default_rng(0)
    rows, width = ctx.args.micro_rows, ctx.args.micro_tokens
    lengths = rng.integers(int(width * 0.75), width + 1, size=rows) if mixed else np.full(rows, width)
    lengths[0] = width
    residues = tokenizer.convert_tokens_to_ids(list("ACDEFGHIKLMNPQRSTVWY"))
    ids = np.asarray(residues)[rng.integers(0, len(residues), size=(rows, width))]
    ids[:, 0] = tokenizer.cls_token_id
    ids[np.arange(rows), lengths - 1] = tokenizer.eos_token_id
    ids[np.arange(width)[None, :] >= lengths[:, None]] = tokenizer.pad_token_id
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    return torch.from_numpy(ids).to(ctx.device), torch.from_numpy(mask).to(ctx.device), lengths


def microbench(ctx: Context) -> dict:
    """Timed forward passes of both models per precision: TFLOP/s and both MFUs."""
    args, device = ctx.args, ctx.device
    out: dict[str, Any] = {"protein_rows": args.micro_rows, "protein_tokens": args.micro_tokens,
                           "dna_rows": args.micro_dna_rows, "spec_peak_tflops": ctx.spec_peak(),
                           "spec_peak_note": "dense fp16/bf16 datasheet figure (also the reference of fp32 rows)"}
    for position, name in enumerate(args.micro_precisions):
        loaded = ctx.protein(name)
        ids, mask, lengths = _protein_batch(ctx, loaded.tokenizer, mixed=True)
        same, _, same_lengths = _protein_batch(ctx, loaded.tokenizer, mixed=False)
        row: dict[str, Any] = {"loader": loaded.loader, "class": type(loaded.model).__name__}
        row["masked"] = _figures(ctx, loaded.model, name, _time_forward(ctx, loaded, ids, mask, args.micro_iters),
                                 lengths.tolist())
        row["bucketed"] = _figures(ctx, loaded.model, name, _time_forward(ctx, loaded, same, None, args.micro_iters),
                                   same_lengths.tolist())
        if args.compile and position == 0:  # one compiled precision: each costs a compilation
            start = time.perf_counter()
            models.compile_encoder_layers(loaded, backend=args.compile_backend)
            with torch.inference_mode(), models.precision_context(loaded):
                loaded.model(input_ids=same, attention_mask=None)
            ctx.sync()
            row["compile_seconds"] = time.perf_counter() - start
            row["compiled"] = {**_figures(ctx, loaded.model, name,
                                          _time_forward(ctx, loaded, same, None, args.micro_iters),
                                          same_lengths.tolist()),
                               "still_compiled": loaded.compiled, "backend": args.compile_backend}
        elif not args.compile:
            row["compiled"] = "skipped (--no-compile)"
        out[f"protein_{name}"] = row
        del loaded
        models._MODEL_CACHE.clear()
    reads = [seq for _, seq in bench.synthetic_reads(args.micro_dna_rows, CHUNK_SIZE, 11, 0.7)]
    for name in args.micro_dna_precisions:
        loaded = ctx.dna(name)
        batch = loaded.tokenizer(reads, padding=True, return_tensors="pt")
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        lengths = batch["attention_mask"].sum(1).tolist()
        out[f"dna_{name}"] = {"loader": loaded.loader, "tokens": int(ids.shape[1]),
                              "masked": _figures(ctx, loaded.model, name,
                                                 _time_forward(ctx, loaded, ids, mask, args.micro_iters), lengths)}
        del loaded
        models._MODEL_CACHE.clear()
    return out


# ---------------------------------------------------------------------------
# e oom
# ---------------------------------------------------------------------------


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def oom(ctx: Context) -> dict:
    """The out-of-memory split of a batch that cannot fit under a memory cap (CUDA only)."""
    if ctx.device.type != "cuda":
        return {"skipped": "needs CUDA"}
    models._MODEL_CACHE.clear()
    torch.cuda.empty_cache()
    loaded = ctx.protein(CUDA_PROTEIN_PRECISION)
    proteins = ["".join(np.random.default_rng(i).choice(list("ACDEFGHIKLMNPQRSTVWY"), 1000)) for i in range(64)]
    reference = embed.embed_proteins(proteins, loaded, batch_tokens=4 * 1002)
    total = torch.cuda.get_device_properties(ctx.device).total_memory
    cap = torch.cuda.memory_allocated(ctx.device) + ctx.args.oom_headroom_mib * 2**20
    handler = _Messages()
    logging.getLogger("virnucpro").addHandler(handler)
    torch.cuda.set_per_process_memory_fraction(cap / total, ctx.device)
    try:
        got = embed.embed_proteins(proteins, loaded, batch_tokens=64 * 1002)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, ctx.device)
        logging.getLogger("virnucpro").removeHandler(handler)
        torch.cuda.empty_cache()
    splits = sum("out of memory" in m for m in handler.messages)
    return {"cap_mib": cap / 2**20, "splits": splits, "exercised": splits > 0, "loader": loaded.loader,
            **_compare(got, reference), "finite": bool(torch.isfinite(got).all())}


# ---------------------------------------------------------------------------
# f end to end
# ---------------------------------------------------------------------------


def _sample_time(field: str) -> float:
    """nvidia-smi's timestamp as seconds since the epoch (``time.time()``'s clock); now when unreadable."""
    try:
        return datetime.datetime.strptime(field.strip(), NVIDIA_SMI_TIME).timestamp()
    except ValueError:
        return time.time()


class GpuSampler:
    """nvidia-smi's utilisation and memory every ``interval_ms`` while the block lasts (none without nvidia-smi)."""

    def __init__(self, device: torch.device, interval_ms: int = 200) -> None:
        line_buffered = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []  # no samples lost in a pipe buffer
        self.command = [*line_buffered, "nvidia-smi", "--query-gpu=timestamp,utilization.gpu,memory.used",
                        "--format=csv,noheader,nounits", "-lms", str(interval_ms)]
        if device.type == "cuda":
            self.command += ["-i", str(device.index or 0)]
        self.samples: list[tuple[float, float, float]] = []  # (time.time(), utilisation %, memory MiB)
        self.process: subprocess.Popen | None = None
        self.thread: threading.Thread | None = None

    def __enter__(self) -> "GpuSampler":
        with contextlib.suppress(OSError):
            self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                            text=True)
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            fields = line.split(",")
            with contextlib.suppress(ValueError, IndexError):
                self.samples.append((_sample_time(fields[0]), float(fields[1]), float(fields[2])))

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
        if self.thread is not None:
            self.thread.join(timeout=10)


def busy_summary(samples: Sequence[tuple[float, float, float]], start: float, end: float) -> dict[str, Any]:
    """GPU busy fraction and memory over the samples taken in ``[start, end]`` only (``time.time()`` seconds)."""
    inside = [sample for sample in samples if start <= sample[0] <= end]
    if not inside:
        return {"gpu_busy_fraction": None, "gpu_util_p10": None, "nvidia_smi_samples": 0,
                "nvidia_smi_peak_memory_mib": None}
    util = np.array([sample[1] for sample in inside])
    return {"gpu_busy_fraction": float(util.mean() / 100.0), "gpu_util_p10": float(np.percentile(util, 10)),
            "nvidia_smi_samples": len(inside), "nvidia_smi_peak_memory_mib": max(sample[2] for sample in inside)}


@contextlib.contextmanager
def engine_clock(phases: dict[str, list[float]], shards: list[tuple[float, int]],
                 returned: dict[str, Any]) -> Iterator[None]:
    """Time the engine's steps by wrapping the library functions ``run_prediction`` calls.

    ``phases``: ``open`` (checks, lock, index pass), ``load`` (the three models), ``score`` (every
    shard), ``finalise`` -> ``[start, end]`` in ``time.time()`` seconds; ``shards``: when each shard's
    files were written and how many reads it held; ``returned``: each step's return value.
    """
    import virnucpro.assemble as assemble
    import virnucpro.predict as predict
    import virnucpro.results as results

    def timing(original: Callable, phase: str) -> Callable:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            start = time.time()
            try:
                returned[phase] = original(*args, **kwargs)
                return returned[phase]
            finally:
                phases[phase] = [start, time.time()]
        return wrapped

    def counting(original: Callable) -> Callable:
        def wrapped(work: Path, shard: Any, *args: Any, **kwargs: Any) -> Any:
            value = original(work, shard, *args, **kwargs)
            shards.append((time.time(), len(shard.sequences)))
            return value
        return wrapped

    patches = [(predict, "open_the_run", timing(predict.open_the_run, "open")),
               (predict, "load_run_scorer", timing(predict.load_run_scorer, "load")),
               (predict, "score_shards", timing(predict.score_shards, "score")),
               (assemble, "finalise", timing(assemble.finalise, "finalise")),
               (results, "write_shard", counting(results.write_shard))]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    for module, name, replacement in patches:
        setattr(module, name, replacement)
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


def steady_rate(shards: Sequence[tuple[float, int]]) -> tuple[float | None, int]:
    """Reads/s between the first and the last shard written (the first shard's warm-up left out), and the shards used."""
    if len(shards) < 2:
        return None, 0
    ordered = sorted(shards)
    seconds = ordered[-1][0] - ordered[0][0]
    reads = sum(count for _, count in ordered[1:])
    return (reads / seconds if seconds > 0 else None), len(ordered) - 1


def end_to_end(ctx: Context) -> dict:
    """``run_prediction`` on synthetic reads: each phase timed, steady-state reads/s, busy fraction while scoring."""
    from virnucpro.predict import run_prediction

    args = ctx.args
    reads = bench.synthetic_reads(args.reads, CHUNK_SIZE, 7, 0.7)
    fasta = ctx.work / "reads.fa"
    fasta.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in reads))
    checkpoint = ctx.work / "300_model_fastesm650.pth"
    torch.manual_seed(3)
    dna_dim, protein_dim = DNABERT_S_DIM, ctx.sizes.esm_hidden
    classifier.save_checkpoint(checkpoint, classifier.MLPClassifier(dna_dim + protein_dim).eval(),
                               dna_model=str(ctx.dna_dir()), dna_dim=dna_dim, protein_model=str(ctx.esm_dir()),
                               protein_dim=protein_dim, chunk_size=CHUNK_SIZE)
    models._MODEL_CACHE.clear()
    request = bench.prediction_request(fasta, ctx.work / "out", checkpoint, ctx.esm_dir(), ctx.dna_dir(),
                                       str(ctx.device), args.e2e_args, force=True, shard_size=args.shard_chunks)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    phases: dict[str, list[float]] = {}
    shards: list[tuple[float, int]] = []
    returned: dict[str, Any] = {}
    with GpuSampler(ctx.device) as sampler, engine_clock(phases, shards, returned):
        start = time.time()
        run_prediction(request)
        seconds = time.time() - start
    peak = torch.cuda.max_memory_allocated(ctx.device) / 2**20 if ctx.device.type == "cuda" else None
    steady, steady_shards = steady_rate(shards)
    begin, end = phases.get("score", (0.0, 0.0))
    scorer = returned.get("load")
    loaders = {"protein": scorer.protein.loader, "dna": scorer.dna.loader} if scorer is not None else {}
    ctx.loaders.update(loaders)
    return {"reads": args.reads, "argv_extra": args.e2e_args, "shard_chunks": args.shard_chunks,
            "seconds": seconds, "reads_per_s": args.reads / seconds,
            "phase_seconds": {name: round(end - begin, 3) for name, (begin, end) in phases.items()},
            "loaders": loaders, "scoring_reads_per_s": args.reads / (end - begin) if end > begin else None,
            "steady_reads_per_s": steady, "steady_shards": steady_shards, "shards": len(shards),
            "torch_peak_memory_mib": peak, "nvidia_smi_samples_total": len(sampler.samples),
            **busy_summary(sampler.samples, begin, end),
            "note": "steady_reads_per_s: reads of shards 2..n over the time from shard 1's end to shard n's; "
                    "gpu_busy_fraction: nvidia-smi samples of the scoring phase only"}


# ---------------------------------------------------------------------------


BODIES: dict[str, Callable[[Context], dict]] = {"smoke": smoke, "matmul": matmul, "precision": precision,
                                                "microbench": microbench, "oom": oom, "end_to_end": end_to_end}


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file for every figure (rewritten after each section)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder under which the run's own work folder is made (default: the system's temp folder)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the work folder (models, reads, OUTDIR)")
    parser.add_argument("--smoke-cpu", action="store_true", help="tiny sizes on the CPU (for the tests)")
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --smoke-cpu")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    parser.add_argument("--esm-era", choices=ESM_ERAS, default="d",
                        help="FastESM2 code of the stand-in: d (FastPLMs 1.0, on the hub now) or c (the 2026-03 file)")
    parser.add_argument("--reads", type=int, default=100_000, help="end_to_end: synthetic 300-bp reads")
    parser.add_argument("--shard-chunks", type=int, default=DEFAULT_SHARD_CHUNKS, help="end_to_end: chunks per shard")
    parser.add_argument("--e2e-args", default="", help="extra language-model options of prediction.py, e.g. '--dna-precision bf16'")
    parser.add_argument("--precision-reads", type=int, default=3000, help="precision: frames (real genomes first, then synthetic reads)")
    parser.add_argument("--real-dir", type=Path, default=ROOT.parent / "shared" / "data" / "real")
    parser.add_argument("--protein-precisions", default="fp32,fp16,bf16")
    parser.add_argument("--dna-precisions", default="fp32,tf32,fp16,bf16")
    parser.add_argument("--matmul-size", type=int, default=8192, help="matmul: n of the n x n x n products")
    parser.add_argument("--matmul-iters", type=int, default=10)
    parser.add_argument("--matmul-precisions", default="fp16,bf16,tf32,fp32")
    parser.add_argument("--micro-precisions", default="fp16,bf16", help="microbench: protein precisions (the first is also compiled)")
    parser.add_argument("--micro-dna-precisions", default="fp32,tf32,fp16,bf16")
    parser.add_argument("--micro-rows", type=int, default=160)
    parser.add_argument("--micro-tokens", type=int, default=102)
    parser.add_argument("--micro-dna-rows", type=int, default=448)
    parser.add_argument("--micro-iters", type=int, default=20)
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="microbench: skip torch.compile")
    parser.add_argument("--compile-backend", default="inductor", help="microbench: torch.compile backend")
    parser.add_argument("--oom-headroom-mib", type=int, default=768, help="oom: memory cap above the loaded model")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="dense fp16/bf16 spec peak for MFU (default by GPU name; H100/H200 SXM: 989)")
    return parser


def _precisions(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options, with --smoke-cpu's tiny sizes applied and the lists split."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.smoke_cpu:
        args.device = args.device or "cpu"
        args.reads, args.precision_reads = min(args.reads, 120), min(args.precision_reads, 60)
        args.shard_chunks = min(args.shard_chunks, 30)
        args.micro_rows, args.micro_tokens, args.micro_dna_rows, args.micro_iters = 8, 24, 8, 1
        args.matmul_size, args.matmul_iters = min(args.matmul_size, 128), 1
        args.matmul_precisions = "fp32,bf16"
        args.micro_precisions, args.micro_dna_precisions = "fp32", "fp32,bf16"
        args.protein_precisions, args.dna_precisions = "fp32,bf16", "fp32,bf16"
        args.compile_backend = "eager"  # dynamo's tracing and guards without inductor's code generation
    args.device = args.device or "cuda"
    for name in ("protein_precisions", "dna_precisions", "matmul_precisions", "micro_precisions",
                 "micro_dna_precisions"):
        setattr(args, name, _precisions(getattr(args, name)))
    args.sections = _precisions(args.sections)
    unknown = [name for name in args.sections if name not in BODIES]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)} (use {', '.join(SECTIONS)})")
    if "fp32" not in args.protein_precisions or "fp32" not in args.dna_precisions:
        parser.error("the precision lists must include fp32 (the reference)")
    if min(args.reads, args.precision_reads, args.shard_chunks, args.matmul_size, args.matmul_iters) <= 0:
        parser.error("sizes and counts must be positive")
    return args


@contextlib.contextmanager
def work_folder(work: Path, keep: bool) -> Iterator[None]:
    """Every temporary file of the run under ``work`` (tempfile's folder; the remote-code module cache when
    transformers is not imported yet), removed at the end unless ``keep``."""
    saved_tempdir = tempfile.tempdir
    (work / "tmp").mkdir()
    tempfile.tempdir = str(work / "tmp")
    modules_cache = "transformers" not in sys.modules and "HF_MODULES_CACHE" not in os.environ
    if modules_cache:
        os.environ["HF_MODULES_CACHE"] = str(work / "hf_modules")
    try:
        yield
    finally:
        models._MODEL_CACHE.clear()
        tempfile.tempdir = saved_tempdir
        if modules_cache:
            os.environ.pop("HF_MODULES_CACHE", None)
        if keep:
            log.info("work folder kept: %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def terminated_by_sigterm() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the block (main thread only), so the ``finally`` clauses run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _run_sections(args: argparse.Namespace, work: Path, argv: list[str]) -> int:
    """The sections in order, the JSON rewritten after each (also after an interrupted one)."""
    ctx = Context(args, work)
    results: dict[str, Any] = {"machine": bench.machine_info(ctx.device), "argv": argv,
                               "workdir": str(work), "finished": False, "models": ctx.summary()}
    write_json(args.out, results)
    for name in args.sections:
        try:
            timed(results, name, lambda name=name: BODIES[name](ctx))
        finally:
            results["models"] = ctx.summary()
            write_json(args.out, results)
        models._MODEL_CACHE.clear()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    results["finished"] = True
    write_json(args.out, results)
    log.info("figures in %s", args.out)
    return 0 if all(results[name].get("ok") for name in args.sections) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected sections, rewriting the JSON after each; exit 1 when a section failed."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    parent = args.workdir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_", dir=parent))
    with work_folder(work, args.keep_workdir), terminated_by_sigterm():
        return _run_sections(args, work, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
