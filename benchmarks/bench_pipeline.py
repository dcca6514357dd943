#!/usr/bin/env python
"""Benchmark the VirNucPro-FastESM prediction pipeline against the original strategy.

Both strategies run in one invocation on the same chunks, with randomly initialised
models of the real architectures (no weights are downloaded), so compute equals the
real models' unless the ``--esm-*``/``--dna-*`` scale flags (or ``--tiny``) shrink them:

ours      chunking + ``virnucpro.frames.select_frames`` (vectorised six frames); DNA encoder
          (DNABERT-S size: 12 layers, 768 hidden) batched by token budget through
          ``embed.embed_dna``; FastESM2_650-size protein model (33 layers, 1280 hidden,
          rotary, SDPA) through ``embed.embed_proteins`` (fp16 on CUDA); MLP on
          768 + 1280 features in large batches; every model loaded once.
original  chunking + ``virnucpro.frames.identify_seq`` per chunk (the original Python loop); the
          DNA encoder one sequence at a time without a mask; an ESM2-3B-size model
          (36 layers, 2560 hidden, eager attention) in fp32 with fair-esm batches of
          2048 tokens (sorted by length, a batch closed when the next sequence would
          exceed the budget); both models re-instantiated every 10,000 sequences as
          the original does per split file; MLP on 768 + 2560 features through a
          DataLoader of batch 256.

Reported per stage (preprocess, dna, protein, mlp) and end to end: wall seconds,
chunks/s, tokens/s, host RSS (current and process peak), and on CUDA peak GPU memory,
achieved TFLOP/s and model FLOP utilisation (MFU = (2 * non-embedding params * tokens
+ 4 * layers * hidden * sum(L^2)) / seconds / --peak-tflops).

Examples::

    python benchmarks/bench_pipeline.py --stages preprocess --reads 20000
    python benchmarks/bench_pipeline.py --tiny --reads 500
    python benchmarks/bench_pipeline.py --reads 100000 --json out.json   # GPU, full size
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from virnucpro import classifier, defaults, embed, fasta, ids, models  # noqa: E402
from virnucpro import frames as framing  # noqa: E402

STAGES = ("preprocess", "dna", "protein", "mlp")
ESM_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPNQKFYMHWCXBUZO", ".", "-", "<null_1>", "<mask>"]
# Dense fp16/bf16 tensor-core peaks (TFLOP/s, no sparsity) by device-name fragment.
PEAK_TFLOPS = [("H200", 989.0), ("H100 PCIE", 756.0), ("H100", 989.0), ("A100", 312.0),
               ("L40S", 362.0), ("L4", 121.0), ("A10G", 125.0), ("V100", 125.0), ("T4", 65.0)]
REAL_SUFFIXES = (".fna", ".fa", ".fasta", ".fna.gz", ".fa.gz", ".fasta.gz")
ORIGINAL_FILE_SEQUENCES = 10_000   # the original split files (and model reloads) per 10,000 sequences
ORIGINAL_ESM_BATCH_TOKENS = 2048
ORIGINAL_MLP_BATCH = 256


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


def prediction_request(fasta_path: Path, outdir: Path, checkpoint: Path, esm_dir: Path, dna_dir: Path, device: str,
                       options_text: str = "", **settings: Any):
    """A prediction request for the library (:func:`virnucpro.predict.run_prediction`) over the given models.

    ``options_text`` holds extra language-model options as on prediction.py's command line
    (``"--dna-precision bf16 --batch-tokens 65536"``), read by the library's own option parser.
    """
    from virnucpro import cli
    from virnucpro.predict import PredictionRequest

    parser = argparse.ArgumentParser(prog="model options", exit_on_error=False)
    cli.add_model_arguments(parser)
    options = cli.model_options(parser.parse_args(["--esm-model", str(esm_dir), "--dnabert-model", str(dna_dir),
                                                   "--device", device, *options_text.split()]))
    return PredictionRequest(input=fasta_path, length=300, outdir=outdir, model=checkpoint, models=options,
                             progress=False, **settings)


def synthetic_reads(count: int, length: int, seed: int, orf_fraction: float) -> list[tuple[str, str]]:
    """Seeded random reads; a fraction carries a stop-free ORF in a random frame and strand."""
    rng = np.random.default_rng(seed)
    bases = np.frombuffer(b"ACGT", dtype=np.uint8)
    sense = [c for c, aa in framing.CODON_TABLE.items() if aa != "*"]
    sense_bytes = np.frombuffer("".join(sense).encode(), dtype=np.uint8).reshape(-1, 3)
    reads = []
    for index in range(count):
        if rng.random() < orf_fraction:
            codons = sense_bytes[rng.integers(0, len(sense), size=length // 3 + 2)].reshape(-1)
            shift = int(rng.integers(0, 3))
            seq = codons[shift:shift + length].tobytes().decode()
            if rng.random() < 0.5:
                seq = framing.reverse_complement(seq)
        else:
            seq = bases[rng.integers(0, 4, size=length)].tobytes().decode()
        reads.append((f"read{index}", seq))
    return reads


def real_reads(directory: Path) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """FASTA records of ``directory`` (GenBank files are skipped); returns records, used, skipped."""
    records, used, skipped = [], [], []
    if not directory.is_dir():
        return records, used, skipped
    for path in sorted(directory.iterdir()):
        if path.name.endswith(REAL_SUFFIXES):
            for record in fasta.read_fasta(path, alphabet=None, check_duplicates=False):
                records.append((record.id, record.seq))
            used.append(path.name)
        elif path.is_file():
            skipped.append(path.name)
    return records, used, skipped


def chunk_records(records: Sequence[tuple[str, str]], chunk_size: int) -> list[tuple[str, str]]:
    """``(chunk_id, upper-cased chunk)`` pairs, as split_fasta_chunk + the callers' upper()."""
    return [(ids.chunk_id(rid, k), chunk.upper())
            for rid, seq in records for k, chunk in enumerate(framing.chunk_sequence(seq, chunk_size), start=1)]


# ---------------------------------------------------------------------------
# Models of the real architectures with random weights
# ---------------------------------------------------------------------------


@dataclass
class Arch:
    name: str
    layers: int
    hidden: int

    @property
    def heads(self) -> int:
        return max(1, self.hidden // 64)

    @property
    def ffn(self) -> int:
        return 4 * self.hidden


def esm_tokenizer(workdir: Path):
    from transformers import EsmTokenizer

    vocab = workdir / "esm_vocab.txt"
    vocab.write_text("\n".join(ESM_VOCAB) + "\n")
    return EsmTokenizer(str(vocab))


def dna_tokenizer(seed: int, vocab_size: int = 4096):
    """A BPE tokenizer over A/C/G/T (DNABERT-2/-S style: no pre-tokenizer, [CLS] x [SEP])."""
    from tokenizers import Tokenizer, models, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    corpus = [seq for _, seq in synthetic_reads(3000, 300, seed + 1, 0.5)]
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")),
                                                 ("[SEP]", tokenizer.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def esm_config(arch: Arch, attention: str):
    from transformers import EsmConfig

    config = EsmConfig(vocab_size=len(ESM_VOCAB), hidden_size=arch.hidden, num_hidden_layers=arch.layers,
                       num_attention_heads=arch.heads, intermediate_size=arch.ffn,
                       position_embedding_type="rotary", max_position_embeddings=1026, pad_token_id=1,
                       mask_token_id=32, token_dropout=False, emb_layer_norm_before=False)
    config._attn_implementation = attention
    return config


def bert_config(arch: Arch, vocab_size: int, attention: str):
    from transformers import BertConfig

    config = BertConfig(vocab_size=vocab_size, hidden_size=arch.hidden, num_hidden_layers=arch.layers,
                        num_attention_heads=arch.heads, intermediate_size=arch.ffn,
                        max_position_embeddings=512, pad_token_id=0)
    config._attn_implementation = attention
    return config


def build_model(kind: str, config: Any, device: torch.device, dtype: torch.dtype,
                state: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """Instantiate (random init, or without init + ``state`` copied in, like from_pretrained)."""
    from transformers import BertModel, EsmModel

    from virnucpro.hfload import no_init_weights

    cls = EsmModel if kind == "esm" else BertModel
    torch.manual_seed(0)
    if state is None:
        with torch.device(device):
            model = cls(config, add_pooling_layer=False)
    else:
        with no_init_weights():
            model = cls(config, add_pooling_layer=False)
        model.load_state_dict(state)
    return model.to(device=device, dtype=dtype).eval()


def non_embedding_params(model: torch.nn.Module) -> int:
    """Parameters a token passes through: all but the embeddings and a pooler (which sees one token per row)."""
    return sum(p.numel() for n, p in model.named_parameters()
               if "embeddings" not in n and not n.startswith(("pooler.", "esm.pooler.")))


def encoder_flops(model: torch.nn.Module, lengths: Sequence[int]) -> float:
    """2 * non-embedding params per token + QK^T and AV (4 * hidden * L^2 per layer)."""
    config = model.config
    tokens = float(sum(lengths))
    square = float(sum(length * length for length in lengths))
    return 2.0 * non_embedding_params(model) * tokens + 4.0 * config.num_hidden_layers * config.hidden_size * square


# ---------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------


@dataclass
class StageResult:
    dataset: str
    strategy: str
    stage: str
    seconds: float
    chunks: int
    items: int = 0
    tokens: int = 0
    flops: float = 0.0
    loads: int = 0
    load_seconds: float = 0.0
    rss_mib: float = 0.0
    maxrss_mib: float = 0.0
    gpu_peak_mib: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self, peak_tflops: float | None) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "extra"}
        out.update(self.extra)
        out["chunks_per_s"] = self.chunks / self.seconds if self.seconds else None
        out["items_per_s"] = self.items / self.seconds if self.seconds else None
        out["tokens_per_s"] = self.tokens / self.seconds if self.seconds and self.tokens else None
        compute = self.seconds - self.load_seconds
        out["achieved_tflops"] = self.flops / compute / 1e12 if self.flops and compute > 0 else None
        out["mfu"] = (out["achieved_tflops"] / peak_tflops
                      if out["achieved_tflops"] is not None and peak_tflops else None)
        return out


def current_rss_mib() -> float:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def measured(result_holder: list, device: torch.device, **fields: Any):
    """Time a stage (with CUDA sync and peak-memory reset) and append a StageResult."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    info: dict[str, Any] = {}
    start = time.perf_counter()
    yield info
    synchronize(device)
    seconds = time.perf_counter() - start
    result = StageResult(seconds=seconds, rss_mib=current_rss_mib(), maxrss_mib=max_rss_mib(),
                         gpu_peak_mib=(torch.cuda.max_memory_allocated(device) / 2**20
                                       if device.type == "cuda" else None), **fields)
    for key in ("chunks", "items", "tokens", "flops", "loads", "load_seconds"):
        if key in info:
            setattr(result, key, info.pop(key))
    result.extra.update(info)
    result_holder.append(result)


class ModelFactory:
    """Loads each model architecture once for 'ours', and re-instantiates for 'original'."""

    def __init__(self, args: argparse.Namespace, device: torch.device, workdir: Path):
        self.args, self.device, self.workdir = args, device, workdir
        self._esm_tok: Any = None
        self._dna_tok: Any = None
        self.states: dict[str, dict[str, torch.Tensor]] = {}
        self.configs: dict[str, Any] = {}

    @property
    def esm_tok(self) -> Any:
        if self._esm_tok is None:
            self._esm_tok = esm_tokenizer(self.workdir)
        return self._esm_tok

    @property
    def dna_tok(self) -> Any:
        if self._dna_tok is None:
            self._dna_tok = dna_tokenizer(self.args.seed)
        return self._dna_tok

    def warm_up(self, which: str, attention: str, dtype: torch.dtype) -> float:
        """Build ``which`` once (random weights, kept on the host for later loads) and run
        a forward pass, outside any measurement: imports, kernel selection and the
        random initialisation are not charged to either strategy."""
        start = time.perf_counter()
        loaded, _ = self.load(which, attention, dtype)
        if which == "dna":
            embed.embed_dna(["ACGT" * 75] * 4, loaded)
        else:
            embed.embed_proteins(["MKV" * 33] * 4, loaded)
        del loaded
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return time.perf_counter() - start

    def arch(self, which: str) -> Arch:
        a = self.args
        if which == "esm650":
            return Arch("FastESM2_650-size", a.esm_layers, a.esm_hidden)
        if which == "esm3b":
            return Arch("ESM2-3B-size", max(1, round(36 * a.esm_layers / 33)), 2 * a.esm_hidden)
        return Arch("DNABERT-S-size", a.dna_layers, a.dna_hidden)

    def config(self, which: str, attention: str):
        arch = self.arch(which)
        if which == "dna":
            return bert_config(arch, len(self.dna_tok), attention)
        return esm_config(arch, attention)

    def load(self, which: str, attention: str, dtype: torch.dtype) -> tuple[models.LoadedModel, float]:
        """Build the model; the first build per architecture keeps a host copy of the
        weights so that later builds ('reloads') copy them in like from_pretrained."""
        start = time.perf_counter()
        kind = "bert" if which == "dna" else "esm"
        config = self.config(which, attention)
        state = self.states.get(which)
        model = build_model(kind, config, self.device, dtype, state)
        if state is None:
            self.states[which] = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        synchronize(self.device)
        tokenizer = self.dna_tok if which == "dna" else self.esm_tok
        loaded = models.LoadedModel(f"random-{self.arch(which).name}", model, tokenizer, self.device, dtype,
                                   model.config.hidden_size)
        return loaded, time.perf_counter() - start


# ---------------------------------------------------------------------------
# The two strategies
# ---------------------------------------------------------------------------


def run_ours(dataset: str, records: list[tuple[str, str]], factory: ModelFactory, args: argparse.Namespace,
             stages: Sequence[str], results: list[StageResult]) -> list[tuple[str, str, str]]:
    device = factory.device
    with measured(results, device, stage="preprocess", dataset=dataset, strategy="ours", chunks=0) as info:
        chunks = chunk_records(records, args.chunk_size)
        frames = framing.select_frames(chunks)
        info.update(items=len(frames), chunks=len(chunks))
    common = dict(dataset=dataset, strategy="ours", chunks=len(chunks))
    dna_features = protein_features = None
    if "dna" in stages:
        with measured(results, device, stage="dna", **common) as info:
            dtype = torch.bfloat16 if (args.dna_bf16 and device.type == "cuda") else torch.float32
            loaded, load_s = factory.load("dna", "sdpa", dtype)
            seqs = [nucleotide for _, nucleotide, _ in frames]
            dna_features = embed.embed_dna(seqs, loaded, batch_tokens=args.batch_tokens)
            info.update(items=len(seqs), loads=1, load_seconds=load_s, dtype=str(dtype))
        # Token counts (for tokens/s and FLOPs) are taken outside the timed region.
        if args.count_tokens:
            lengths = [len(tokens) for tokens in factory.dna_tok([s.upper() for s in seqs])["input_ids"]]
            results[-1].tokens = sum(lengths)
            results[-1].flops = encoder_flops(loaded.model, lengths)
        del loaded
    if "protein" in stages:
        with measured(results, device, stage="protein", **common) as info:
            dtype = torch.float16 if (device.type == "cuda" and not args.fp32) else torch.float32
            loaded, load_s = factory.load("esm650", "sdpa", dtype)
            proteins = [protein for _, _, protein in frames]
            protein_features = embed.embed_proteins(proteins, loaded, batch_tokens=args.batch_tokens)
            lengths = [min(len(p), defaults.TRUNCATION_SEQ_LENGTH) + 2 for p in proteins]
            info.update(items=len(proteins), loads=1, load_seconds=load_s, tokens=sum(lengths),
                        flops=encoder_flops(loaded.model, lengths), dtype=str(dtype))
        del loaded
    if "mlp" in stages:
        dna_dim, protein_dim = factory.arch("dna").hidden, factory.arch("esm650").hidden
        with measured(results, device, stage="mlp", **common) as info:
            features = _features(dna_features, protein_features, len(frames), dna_dim, protein_dim)
            model = classifier.MLPClassifier(dna_dim + protein_dim).to(device).eval()
            scores = []
            with torch.inference_mode():
                for start in range(0, features.shape[0], 65536):
                    batch = features[start:start + 65536].to(device, non_blocking=True)
                    scores.append(torch.softmax(model(batch), dim=1).cpu())
            info.update(items=features.shape[0])
    return frames


def _features(dna: torch.Tensor | None, protein: torch.Tensor | None, rows: int, dna_dim: int,
              protein_dim: int) -> torch.Tensor:
    """Merged features; stages that were skipped contribute random vectors."""
    generator = torch.Generator().manual_seed(0)
    dna = dna if dna is not None else torch.randn(rows, dna_dim, generator=generator)
    protein = protein if protein is not None else torch.randn(rows, protein_dim, generator=generator)
    return torch.cat((dna, protein), dim=1)


def fair_esm_batches(lengths: Sequence[int], toks_per_batch: int, extra_toks_per_seq: int = 1) -> list[list[int]]:
    """fair-esm's FastaBatchedDataset.get_batch_indices: sort by length, close a batch
    when (longest + extra) * (count + 1) would exceed the budget."""
    batches, buf, longest = [], [], 0
    for size, index in sorted((length, i) for i, length in enumerate(lengths)):
        size += extra_toks_per_seq
        if buf and max(size, longest) * (len(buf) + 1) > toks_per_batch:
            batches.append(buf)
            buf, longest = [], 0
        longest = max(longest, size)
        buf.append(index)
    if buf:
        batches.append(buf)
    return batches


def run_original(dataset: str, records: list[tuple[str, str]], factory: ModelFactory, args: argparse.Namespace,
                 stages: Sequence[str], results: list[StageResult]) -> list[tuple[str, str, str]]:
    device = factory.device
    with measured(results, device, stage="preprocess", dataset=dataset, strategy="original", chunks=0) as info:
        chunks = chunk_records(records, args.chunk_size)
        frames = []
        for chunk_id, sequence in chunks:
            for item in framing.identify_seq(chunk_id, sequence):
                if item.get("protein", "") != "":
                    frames.append((item["seqid"], item["nucleotide"], item["protein"]))
        info.update(items=len(frames), chunks=len(chunks))
    common = dict(dataset=dataset, strategy="original", chunks=len(chunks))
    per_file = args.reload_every
    files = [frames[i:i + per_file] for i in range(0, len(frames), per_file)]
    dna_rows: list[list[float]] = []
    if "dna" in stages:
        with measured(results, device, stage="dna", **common) as info:
            loads = load_total = 0.0
            lengths = []
            model = None
            for part in files:  # extract_DNABERT_S per split file: reload, then one at a time
                model = loaded = None
                gc.collect()
                loaded, load_s = factory.load("dna", "sdpa", torch.float32)
                loads, load_total = loads + 1, load_total + load_s
                model, tokenizer = loaded.model, loaded.tokenizer
                for _, nucleotide, _ in part:
                    inputs = tokenizer(nucleotide, return_tensors="pt")
                    input_ids = inputs["input_ids"].to(device)
                    with torch.no_grad():
                        hidden = model(input_ids)[0]
                        mean = torch.mean(hidden, dim=1)
                    dna_rows.append(mean.squeeze().cpu().tolist())
                    lengths.append(input_ids.shape[1])
            info.update(items=len(frames), loads=int(loads), load_seconds=load_total, tokens=sum(lengths),
                        flops=encoder_flops(model, lengths) if model is not None else 0.0, dtype="torch.float32")
            del model, loaded
    protein_rows: list[torch.Tensor] = []
    if "protein" in stages:
        with measured(results, device, stage="protein", **common) as info:
            loads = load_total = 0.0
            lengths, batch_sizes = [], []
            model = None
            for part in files:  # extract_esm per split file: reload, fair-esm batches, fp32
                model = loaded = None
                gc.collect()
                loaded, load_s = factory.load("esm3b", "eager", torch.float32)
                loads, load_total = loads + 1, load_total + load_s
                model, tokenizer = loaded.model, loaded.tokenizer
                cls_id, eos_id, pad_id = tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
                proteins = [protein for _, _, protein in part]
                for batch in fair_esm_batches([len(p) for p in proteins], args.original_batch_tokens):
                    strs = [proteins[i] for i in batch]
                    width = max(len(s) for s in strs) + 2
                    toks = torch.full((len(strs), width), pad_id, dtype=torch.long)
                    for row, s in enumerate(strs):
                        toks[row, :len(s) + 2] = torch.tensor([cls_id, *tokenizer.convert_tokens_to_ids(list(s)), eos_id])
                    toks = toks.to(device, non_blocking=True)
                    with torch.no_grad():
                        hidden = model(input_ids=toks, attention_mask=(toks != pad_id).long()).last_hidden_state
                        for row, s in enumerate(strs):
                            truncate = min(defaults.TRUNCATION_SEQ_LENGTH, len(s))
                            protein_rows.append(hidden[row, 1:truncate + 1].mean(0).clone().to("cpu"))
                    lengths.extend(len(s) + 2 for s in strs)
                    batch_sizes.append(len(strs))
            info.update(items=len(frames), loads=int(loads), load_seconds=load_total, tokens=sum(lengths),
                        flops=encoder_flops(model, lengths) if model is not None else 0.0,
                        dtype="torch.float32", mean_batch=float(np.mean(batch_sizes)) if batch_sizes else 0.0)
            del model, loaded
    if "mlp" in stages:
        dna_dim, protein_dim = factory.arch("dna").hidden, factory.arch("esm3b").hidden
        with measured(results, device, stage="mlp", **common) as info:
            dna = torch.tensor(dna_rows) if dna_rows else None
            protein = torch.stack(protein_rows) if protein_rows else None
            features = _features(dna, protein, len(frames), dna_dim, protein_dim)
            frame_ids = [frame_id for frame_id, _, _ in frames]
            dataset_items = list(zip(features, frame_ids))
            loader = torch.utils.data.DataLoader(dataset_items, batch_size=ORIGINAL_MLP_BATCH, shuffle=False)
            model = classifier.MLPClassifier(dna_dim + protein_dim).to(device).eval()
            labels, probabilities = [], []
            with torch.no_grad():
                for batch, _ in loader:
                    probs = torch.softmax(model(batch.to(device)), dim=1)
                    _, predicted = torch.max(probs.data, 1)
                    labels.extend(defaults.LABEL_MAP[p.item()] for p in predicted)
                    probabilities.extend(probs.cpu().numpy())
            info.update(items=features.shape[0])
    return frames


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------


def end_to_end(results: list[StageResult]) -> list[StageResult]:
    totals = []
    keys = sorted({(r.dataset, r.strategy) for r in results}, key=lambda k: (k[0], k[1] != "ours"))
    for dataset, strategy in keys:
        rows = [r for r in results if r.dataset == dataset and r.strategy == strategy]
        total = StageResult(dataset=dataset, strategy=strategy, stage="end_to_end",
                            seconds=sum(r.seconds for r in rows), chunks=rows[0].chunks,
                            items=rows[0].items, tokens=sum(r.tokens for r in rows),
                            flops=sum(r.flops for r in rows), loads=sum(r.loads for r in rows),
                            load_seconds=sum(r.load_seconds for r in rows), rss_mib=rows[-1].rss_mib,
                            maxrss_mib=max(r.maxrss_mib for r in rows),
                            gpu_peak_mib=max((r.gpu_peak_mib for r in rows if r.gpu_peak_mib is not None),
                                             default=None))
        totals.append(total)
    return totals


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def print_table(rows: list[dict[str, Any]], speedups: list[dict[str, Any]], out: Any = None) -> None:
    out = out or sys.stdout
    columns = [("dataset", "dataset"), ("strategy", "strategy"), ("stage", "stage"), ("seconds", "wall_s"),
               ("chunks", "chunks"), ("items", "frames"), ("chunks_per_s", "chunks/s"),
               ("tokens_per_s", "tokens/s"), ("loads", "loads"), ("load_seconds", "load_s"),
               ("rss_mib", "rss_MiB"), ("maxrss_mib", "peakRSS_MiB"), ("gpu_peak_mib", "gpu_peak_MiB"),
               ("achieved_tflops", "TFLOP/s"), ("mfu", "MFU")]
    table = [[title for _, title in columns]] + [[fmt(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths)), file=out)
    if speedups:
        print("\nspeed-up, ours vs original (original wall time / ours; > 1 means ours is faster):", file=out)
        for item in speedups:
            print(f"  {item['dataset']:>10}  {item['stage']:>11}  {item['speedup']:.2f}x", file=out)


def speedup_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        if row["strategy"] != "ours":
            continue
        match = [r for r in rows if r["strategy"] == "original" and r["dataset"] == row["dataset"]
                 and r["stage"] == row["stage"]]
        if match and row["seconds"] > 0:
            out.append({"dataset": row["dataset"], "stage": row["stage"],
                        "speedup": match[0]["seconds"] / row["seconds"]})
    return out


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "device": str(device)}
    with contextlib.suppress(Exception):
        from importlib.metadata import version
        info["transformers"] = version("transformers")
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def default_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).upper()
    for fragment, peak in PEAK_TFLOPS:
        if fragment in name:
            return peak
    return None


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_pipeline.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--reads", type=int, default=2000, help="synthetic reads")
    parser.add_argument("--read-length", type=int, default=300, help="synthetic read length (bp)")
    parser.add_argument("--chunk-size", type=int, default=300, help="chunk size (300 or 500)")
    parser.add_argument("--orf-fraction", type=float, default=0.7,
                        help="fraction of synthetic reads carrying a stop-free ORF")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--real-dir", type=Path, default=ROOT.parent / "shared" / "data" / "real",
                        help="directory of real genomes (FASTA *.fna/*.fa/*.fasta[.gz]; GenBank skipped)")
    parser.add_argument("--no-real", action="store_true", help="skip --real-dir")
    parser.add_argument("--no-synthetic", action="store_true", help="skip the synthetic reads")
    parser.add_argument("--stages", default="all",
                        help="comma list of preprocess,dna,protein,mlp, or 'all'; preprocessing always runs")
    parser.add_argument("--strategies", default="ours,original", help="ours, original or both")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny models (ESM 2x64, DNA 2x64) to check the harness in seconds")
    parser.add_argument("--esm-layers", type=int, default=None, help="FastESM2_650 layers (33); ESM2-3B gets 36/33 of it")
    parser.add_argument("--esm-hidden", type=int, default=None, help="FastESM2_650 hidden (1280); ESM2-3B gets 2x")
    parser.add_argument("--dna-layers", type=int, default=None, help="DNABERT-S layers (12)")
    parser.add_argument("--dna-hidden", type=int, default=None, help="DNABERT-S hidden (768)")
    parser.add_argument("--batch-tokens", type=int, default=defaults.DEFAULT_BATCH_TOKENS,
                        help="token budget per batch, ours (both models)")
    parser.add_argument("--original-batch-tokens", type=int, default=ORIGINAL_ESM_BATCH_TOKENS,
                        help="fair-esm toks_per_batch of the original")
    parser.add_argument("--reload-every", type=int, default=ORIGINAL_FILE_SEQUENCES,
                        help="original: sequences per split file (one model load each)")
    parser.add_argument("--fp32", action="store_true", help="ours: protein model in fp32 on CUDA too")
    parser.add_argument("--dna-bf16", action="store_true",
                        help="ours: DNA encoder in bf16 on CUDA (virnucpro.embed uses fp32; what-if measurement)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="dense fp16 peak for MFU (default by GPU name, e.g. H100 SXM 989)")
    parser.add_argument("--no-token-count", dest="count_tokens", action="store_false",
                        help="skip re-tokenising DNA to count tokens (ours)")
    parser.add_argument("--json", type=Path, default=None, help="write all figures to this JSON file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    stages = STAGES if args.stages == "all" else tuple(s.strip() for s in args.stages.split(",") if s.strip())
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stage(s): {', '.join(sorted(unknown))}")
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if set(strategies) - {"ours", "original"} or not strategies:
        parser.error("--strategies takes ours, original or ours,original")
    defaults = (2, 64, 2, 64) if args.tiny else (33, 1280, 12, 768)
    for name, value in zip(("esm_layers", "esm_hidden", "dna_layers", "dna_hidden"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("esm_hidden", "dna_hidden"):
        if getattr(args, name) % 64 and getattr(args, name) > 64:
            parser.error(f"--{name.replace('_', '-')} must be a multiple of 64 (head size 64)")
    if args.reads < 0 or args.read_length <= 0 or args.chunk_size <= 0:
        parser.error("--reads, --read-length and --chunk-size must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = models.resolve_device(args.device)
    peak = args.peak_tflops if args.peak_tflops is not None else default_peak_tflops(device)

    datasets: list[tuple[str, list[tuple[str, str]]]] = []  # (name, records)
    notes: list[str] = []
    if not args.no_synthetic and args.reads:
        reads = synthetic_reads(args.reads, args.read_length, args.seed, args.orf_fraction)
        datasets.append(("synthetic", reads))
    if not args.no_real:
        records, used, skipped = real_reads(args.real_dir)
        if skipped:
            notes.append(f"{args.real_dir}: skipped non-FASTA files {', '.join(skipped)}")
        if records:
            datasets.append(("real", records))
            notes.append(f"real genomes from {', '.join(used)}: {len(records)} records")
        else:
            notes.append(f"{args.real_dir}: no FASTA genome found; real-genome run skipped")

    results: list[StageResult] = []
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as workdir:
        factory = ModelFactory(args, device, Path(workdir))
        archs = {k: factory.arch(k).__dict__ | {"heads": factory.arch(k).heads, "ffn": factory.arch(k).ffn}
                 for k in ("dna", "esm650", "esm3b")}
        warm = {}
        needs = []
        if "dna" in stages:
            if "ours" in strategies:
                needs.append(("dna", "sdpa", torch.bfloat16 if (args.dna_bf16 and device.type == "cuda")
                              else torch.float32))
            if "original" in strategies:
                needs.append(("dna", "sdpa", torch.float32))
        if "protein" in stages:
            if "ours" in strategies:
                needs.append(("esm650", "sdpa", torch.float16 if (device.type == "cuda" and not args.fp32)
                              else torch.float32))
            if "original" in strategies:
                needs.append(("esm3b", "eager", torch.float32))
        for which, attention, dtype in dict.fromkeys(needs):
            warm[f"{which}/{attention}/{dtype}"] = factory.warm_up(which, attention, dtype)
        for name, chunks in datasets:
            for strategy in strategies:
                runner = run_ours if strategy == "ours" else run_original
                runner(name, chunks, factory, args, stages, results)
    results += end_to_end(results)
    order = {s: i for i, s in enumerate((*STAGES, "end_to_end"))}
    results.sort(key=lambda r: (r.dataset != "synthetic", r.dataset, order[r.stage], r.strategy != "ours"))
    rows = [r.row(peak) for r in results]
    speedups = speedup_rows(rows)
    report = {"machine": machine_info(device), "peak_tflops": peak, "argv": list(argv or sys.argv[1:]),
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "architectures": archs, "warm_up_seconds": warm, "notes": notes, "stages": rows, "speedups": speedups,
              "frames_per_chunk": {r["dataset"]: r["items"] / max(1, r["chunks"])
                                   for r in rows if r["stage"] == "preprocess"}}
    machine = report["machine"]
    print(f"# {machine['cpu']} ({machine['cpu_cores']} cores), device {machine['device']}"
          f"{' ' + machine['gpu'] if 'gpu' in machine else ''}; torch {machine['torch']}")
    print("# models: " + "; ".join(f"{k}: {v['layers']}x{v['hidden']} ({v['heads']} heads)" for k, v in archs.items()))
    for note in notes:
        print(f"# {note}")
    print_table(rows, speedups)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
