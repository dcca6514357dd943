"""Tiny, randomly initialised stand-ins for the language models.

Nothing here is copied from the real models: the source files below are small models
written for the tests that have the same *interfaces* as the real ones, and they are
loaded through the same path as the real ones,
``AutoModel.from_pretrained(directory_or_hub_id, trust_remote_code=True)``.

* FastESM2 stand-ins (real: ``Synthyra/FastESM2_650``, model_type ``fast_esm``): one per era of
  the code the hub repo may hold, with the real checkpoint's layout (no pooler weights) and
  the real code's imports and side effects: see ``fastesm_eras.py``, which lists what each
  mirrors.
* DNABERT-S stand-in (real: ``zhihan1996/DNABERT-S``, MosaicBERT with ALiBi): hidden size 768,
  one layer; ``model(input_ids, attention_mask=...)`` returns a TUPLE whose ``[0]`` is the
  (B, T, 768) hidden states with padded positions zeroed.  Like the real ``bert_layers.py`` it
  guards ``from .flash_attn_triton import flash_attn_qkvpacked_func`` with ``try/except
  ImportError`` and calls that function in attention when it is not None; the sibling
  ``flash_attn_triton.py`` does ``import triton`` at top level, so transformers >= 4.51 refuses
  the code by hub id when triton is absent (unless ``units`` works around it).  The stand-in
  ``flash_attn_qkvpacked_func`` raises on CPU tensors, as the real Triton kernel asserts.
  The tokenizer is a ``PreTrainedTokenizerFast`` (small BPE over DNA, ``[CLS] $A [SEP]``).
  Like the real model, the encoder builds its ALiBi tensor in ``__init__`` (a plain attribute
  from ``torch.arange`` and a legacy ``torch.Tensor(list)``), so transformers 5's meta-device
  ``from_pretrained`` fails on it with "Tensor on device meta is not on the expected device cpu".

* ESM-2 stand-in (real: ``facebook/esm2_t33_650M_UR50D`` and kin): a tiny plain
  ``transformers.EsmModel`` (no remote code, no ``tokenizer`` attribute) with an
  ``EsmTokenizer`` saved beside it.

``install_fake_hub`` lays such directories out as an offline Hugging Face cache
(``HF_HOME/hub/models--owner--name/{refs/main, snapshots/<sha>/...}``) so the default hub
ids resolve with ``HF_HUB_OFFLINE=1``.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
import types
import importlib.machinery
from pathlib import Path

ESM_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>",
             "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y",
             "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>"]

FASTESM_HUB_ID = "Synthyra/FastESM2_650"
DNABERT_HUB_ID = "zhihan1996/DNABERT-S"
FAKE_SHAS = {
    FASTESM_HUB_ID: "0123456789abcdef0123456789abcdef01234567",
    DNABERT_HUB_ID: "89abcdef0123456789abcdef0123456789abcdef",
}

# ---------------------------------------------------------------------------
# DNABERT-S stand-in source
# ---------------------------------------------------------------------------

DNABERT_CONFIGURATION = '''\
"""Configuration of a tiny DNABERT-S-like test model (stand-in; not the real DNABERT-S)."""
from transformers import PretrainedConfig


class BertConfig(PretrainedConfig):
    model_type = "bert"

    def __init__(self, vocab_size=100, hidden_size=768, num_hidden_layers=1, num_attention_heads=4,
                 intermediate_size=96, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                 max_position_embeddings=512, type_vocab_size=2, initializer_range=0.05,
                 layer_norm_eps=1e-12, pad_token_id=3, alibi_starting_size=512, **kwargs):
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.alibi_starting_size = alibi_starting_size
'''

DNABERT_MODELING = '''\
"""A one-layer BERT with ALiBi attention and a gated MLP, written for tests (stand-in for DNABERT-S)."""
import math

import torch
from torch import nn
from transformers import PreTrainedModel

from .configuration_bert import BertConfig

try:
    from .flash_attn_triton import flash_attn_qkvpacked_func
except ImportError:
    flash_attn_qkvpacked_func = None


def _alibi_slopes(num_heads):
    return [2.0 ** (-8.0 * (i + 1) / num_heads) for i in range(num_heads)]


class BertEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids):
        return self.dropout(self.LayerNorm(self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)))


class BertSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.p_dropout = config.attention_probs_dropout_prob
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)

    def forward(self, hidden, bias):
        batch, length, width = hidden.shape
        qkv = self.Wqkv(hidden).view(batch, length, 3, self.num_heads, self.head_dim)
        if self.p_dropout or flash_attn_qkvpacked_func is None:
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + bias
            probs = nn.functional.dropout(torch.softmax(scores, dim=-1), self.p_dropout, self.training)
            return (probs @ v).transpose(1, 2).reshape(batch, length, width)
        return flash_attn_qkvpacked_func(qkv, bias).reshape(batch, length, width)


class BertLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self_attention = BertSelfAttention(config)
        self.attention_output = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.intermediate_size = config.intermediate_size

    def forward(self, hidden, bias):
        hidden = self.attention_norm(hidden + self.dropout(self.attention_output(self.self_attention(hidden, bias))))
        gated = self.gated_layers(hidden)
        mlp = nn.functional.gelu(gated[..., :self.intermediate_size]) * gated[..., self.intermediate_size:]
        return self.mlp_norm(hidden + self.dropout(self.wo(mlp)))


class BertEncoder(nn.Module):
    """The layers plus the ALiBi bias, which is made HERE, in __init__, as the real model makes it.

    As in the real ``bert_layers.py``: a plain tensor attribute (not a registered buffer) built
    from ``torch.arange(size, device=device)`` (which follows the default device) and a legacy
    ``torch.Tensor(list)`` of slopes (always on the CPU); rebuilt when a longer input comes,
    moved to the input's device on first use.  Under a meta-device model init (transformers 5)
    the two tensors meet on different devices and __init__ fails.
    """

    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])
        self.num_attention_heads = config.num_attention_heads
        self._alibi_size = int(config.alibi_starting_size)
        self.build_alibi(self._alibi_size)

    def build_alibi(self, size, device=None):
        positions = torch.arange(size, device=device)
        distance = (positions[None, :] - positions[:, None]).abs()
        slopes = torch.Tensor(_alibi_slopes(self.num_attention_heads)).to(device)
        self.alibi = (slopes[:, None, None] * -distance[None]).unsqueeze(0)  # (1, heads, size, size)
        self._alibi_size = size

    def forward(self, hidden, attention_mask):
        length = hidden.shape[1]
        if length > self._alibi_size:
            self.build_alibi(length, hidden.device)
        elif self.alibi.device != hidden.device:
            self.alibi = self.alibi.to(hidden.device)
        # As in the real code the bias added to the scores stays float32 (model.half() does not
        # touch a plain attribute), so 16-bit weights alone fail in attention (autocast fixes it).
        bias = self.alibi[:, :, :length, :length].to(torch.float32)
        keys = attention_mask.to(torch.bool)[:, None, None, :]
        bias = bias.masked_fill(~keys, torch.finfo(torch.float32).min)
        for layer in self.layer:
            hidden = layer(hidden, bias)
        return hidden


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
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if add_pooling_layer else None
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
        hidden = hidden * attention_mask.to(hidden.dtype).unsqueeze(-1)
        pooled = torch.tanh(self.pooler(hidden[:, 0])) if self.pooler is not None else None
        return hidden, pooled
'''

DNABERT_FLASH_ATTN_TRITON = '''\
"""Stand-in for DNABERT-S's Triton flash attention: needs the triton package, refuses CPU tensors."""
import triton
import triton.language as tl


def flash_attn_qkvpacked_func(qkv, bias=None, causal=False, softmax_scale=None):
    assert qkv.is_cuda, "Triton flash attention needs CUDA tensors"
    raise RuntimeError("stand-in Triton flash attention must never be used in these tests")
'''


# ---------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------


def _write_sources(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def _save_seeded_model(directory: Path, config: dict, seed: int) -> None:
    """Instantiate the model from the written source (remote-code path) and save its weights."""
    import torch
    from transformers import AutoConfig, AutoModel

    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    cfg = AutoConfig.from_pretrained(str(directory), trust_remote_code=True)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = AutoModel.from_config(cfg, trust_remote_code=True)
    finally:
        torch.random.set_rng_state(state)
    model.eval()
    model.save_pretrained(str(directory), safe_serialization=True)
    # save_pretrained rewrites config.json; make sure the remote-code map survived
    saved = json.loads((directory / "config.json").read_text())
    assert saved.get("auto_map", {}).get("AutoModel") == config["auto_map"]["AutoModel"], saved


def build_fastesm_standin(directory: str | os.PathLike, *, hidden_size: int = 64, num_layers: int = 2,
                          num_heads: int = 4, seed: int = 0, era: str = "c", self_contained: bool = False,
                          intermediate_size: int | None = None) -> Path:
    """Write a tiny FastESM2 model folder shaped like the hub's (era ``c`` unless told; see fastesm_eras).

    Its code loads the tokenizer of ``facebook/esm2_t6_8M_UR50D`` when imported: the hub cache
    must hold it (``fastesm_eras.install_esm_tokenizer``; the test session's cache does).
    ``self_contained`` (benchmarks, a machine with no cache): the tokenizer files are written
    into the folder and the code loads them from there instead.
    """
    import fastesm_eras

    directory = Path(directory)
    tokenizer_id = fastesm_eras.ESM_TOKENIZER_ID
    if self_contained:
        from transformers import EsmTokenizer

        directory.mkdir(parents=True, exist_ok=True)
        (directory / "vocab.txt").write_text("\n".join(ESM_VOCAB) + "\n")
        EsmTokenizer(str(directory / "vocab.txt")).save_pretrained(str(directory))
        tokenizer_id = str(directory.resolve())
    return fastesm_eras.build_fastesm_era(directory, era, hidden_size=hidden_size, num_layers=num_layers,
                                          num_heads=num_heads, seed=seed, tokenizer_id=tokenizer_id,
                                          intermediate_size=intermediate_size)


def _dna_tokenizer(seed: int, vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    corpus = ["".join(rng.choice("ACGT") for _ in range(rng.randint(50, 400))) for _ in range(300)]
    special = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=list("ACGTN"), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    for index, name in enumerate(special):
        assert tok.token_to_id(name) == index, (name, tok.token_to_id(name))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]",
                                   model_max_length=512)


def build_dnabert_standin(directory: str | os.PathLike, *, num_heads: int = 4, intermediate_size: int = 96,
                          vocab_size: int = 120, seed: int = 0, num_layers: int = 1,
                          weights_file: str = "model.safetensors", bert_prefix: bool = False,
                          pooler: bool = True, hidden_size: int = 768) -> Path:
    """Write a DNABERT-S-like model (hidden 768, one layer unless told) and its BPE tokenizer into ``directory``.

    The real checkpoint is a ``pytorch_model.bin`` of about 470 MB whose key prefix and pooler
    we could not see: ``weights_file="pytorch_model.bin"``, ``bert_prefix`` (keys saved from a
    model with a head, ``bert.embeddings...``) and ``pooler=False`` give each variant.
    """
    directory = Path(directory)
    _write_sources(directory, {"configuration_bert.py": DNABERT_CONFIGURATION,
                               "bert_layers.py": DNABERT_MODELING,
                               "flash_attn_triton.py": DNABERT_FLASH_ATTN_TRITON})
    tokenizer = _dna_tokenizer(seed, vocab_size)
    tokenizer.save_pretrained(str(directory))
    config = {
        "model_type": "bert",
        "architectures": ["BertModel"],
        "auto_map": {"AutoConfig": "configuration_bert.BertConfig",
                     "AutoModel": "bert_layers.BertModel"},
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "intermediate_size": intermediate_size,
        "pad_token_id": 3,
        "torch_dtype": "float32",
    }
    _save_seeded_model(directory, config, seed)
    if (weights_file, bert_prefix, pooler) != ("model.safetensors", False, True):
        _rewrite_weights(directory, weights_file, "bert." if bert_prefix else "", pooler)
    return directory


def _rewrite_weights(directory: Path, weights_file: str, prefix: str, pooler: bool) -> None:
    """Re-save ``model.safetensors`` as ``weights_file`` with ``prefix`` on every key, without the pooler if told."""
    import torch
    from safetensors.torch import load_file, save_file

    saved = directory / "model.safetensors"
    state = {prefix + k: v for k, v in load_file(str(saved)).items() if pooler or not k.startswith("pooler.")}
    saved.unlink()
    if weights_file == "pytorch_model.bin":
        torch.save(state, directory / weights_file)
    elif weights_file == "model.safetensors":
        save_file(state, str(directory / weights_file), metadata={"format": "pt"})
    else:
        raise ValueError(f"unknown weights file {weights_file!r}")


def build_esm2_standin(directory: str | os.PathLike, *, hidden_size: int = 32, num_layers: int = 2,
                       num_heads: int = 4, seed: int = 0) -> Path:
    """Write a tiny plain ``transformers.EsmModel`` (no remote code, like facebook/esm2_*) and its EsmTokenizer."""
    import torch
    from transformers import EsmConfig, EsmModel, EsmTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(ESM_VOCAB) + "\n")
    EsmTokenizer(str(directory / "vocab.txt")).save_pretrained(str(directory))
    config = EsmConfig(vocab_size=len(ESM_VOCAB), hidden_size=hidden_size, num_hidden_layers=num_layers,
                       num_attention_heads=num_heads, intermediate_size=2 * hidden_size,
                       max_position_embeddings=1026, position_embedding_type="rotary", token_dropout=True,
                       emb_layer_norm_before=False, layer_norm_eps=1e-5, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0, pad_token_id=ESM_VOCAB.index("<pad>"),
                       mask_token_id=ESM_VOCAB.index("<mask>"), architectures=["EsmModel"])
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = EsmModel(config)
    finally:
        torch.random.set_rng_state(state)
    model.eval().save_pretrained(str(directory), safe_serialization=True)
    return directory


def copy_model_dir(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """A copy of a stand-in directory under another name (a fresh remote-code module for transformers)."""
    target = Path(target)
    shutil.copytree(source, target)
    return target


# ---------------------------------------------------------------------------
# Fake offline Hugging Face cache
# ---------------------------------------------------------------------------


def add_to_fake_hub(hub_cache: str | os.PathLike, repo_id: str, source_dir: str | os.PathLike,
                    sha: str | None = None, ref: str = "main") -> Path:
    """Lay ``source_dir`` out as ``hub_cache/models--owner--name`` (refs/<ref> + snapshots/<sha>)."""
    import hashlib

    sha = sha or FAKE_SHAS.get(repo_id) or hashlib.sha1(repo_id.encode()).hexdigest()
    repo = Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(sha)
    for item in Path(source_dir).iterdir():
        if item.is_file():
            target = snapshot / item.name
            if target.exists():
                continue
            try:
                os.link(item, target)
            except OSError:
                shutil.copy2(item, target)
    return snapshot


def install_fake_hub(hub_cache: str | os.PathLike, esm_dir: str | os.PathLike,
                     dnabert_dir: str | os.PathLike) -> dict[str, Path]:
    """Make ``Synthyra/FastESM2_650`` and ``zhihan1996/DNABERT-S`` resolve offline from ``hub_cache``."""
    return {FASTESM_HUB_ID: add_to_fake_hub(hub_cache, FASTESM_HUB_ID, esm_dir),
            DNABERT_HUB_ID: add_to_fake_hub(hub_cache, DNABERT_HUB_ID, dnabert_dir)}


def fake_triton_modules() -> dict[str, types.ModuleType]:
    """Module objects for ``triton`` and ``triton.language`` (to put in ``sys.modules``)."""
    triton = types.ModuleType("triton")
    triton.__spec__ = importlib.machinery.ModuleSpec("triton", None, is_package=True)
    triton.__path__ = []
    triton.__version__ = "0.0.0-standin"
    language = types.ModuleType("triton.language")
    language.__spec__ = importlib.machinery.ModuleSpec("triton.language", None)
    triton.language = language
    return {"triton": triton, "triton.language": language}


def triton_is_installed() -> bool:
    import importlib.util
    if "triton" in sys.modules:
        return True
    return importlib.util.find_spec("triton") is not None
