"""Tiny FastESM2 stand-ins shaped like each era of the code the hub repo may hold.

``Synthyra/FastESM2_650``'s modeling file is generated from Synthyra/FastPLMs; which era
sits on the hub (or in a user's cache, or in a copied model folder) is not ours to choose.
Each stand-in below is written for these tests (no upstream code is copied) and mirrors
the properties of its era that decide whether and how it loads.  Read from FastPLMs'
history: ``modeling_fastesm.py`` at 2de7d1f (2025-11), b535160 (2026-02-20), 88ea005
(2026-02-27) and 0a5ffc4 (2026-03-05); the 1.0 artifact builder
``tools/artifacts/build.py`` at 1f78282 (2026-08).

Properties every era shares (what the real checkpoint and code have):

* ``model.safetensors`` has the key layout of transformers' ``EsmForMaskedLM``
  (``esm.embeddings.*``, ``esm.encoder.*`` with ``rotary_embeddings.inv_freq`` buffers,
  ``esm.contact_head.*``, ``lm_head.*``) and NO pooler weights; here it is written from a
  seeded native ``EsmForMaskedLM``, so the layout is transformers' own.
* ``config.json``: ``model_type: fast_esm``, ``auto_map.AutoModel`` pointing into the
  modeling file, ``position_embedding_type: rotary``, ``token_dropout: true``.
* Importing the modeling file loads the tokenizer of ``facebook/esm2_t6_8M_UR50D``
  (:data:`ESM_TOKENIZER_ID`, a class attribute), so an offline cache must hold it; the
  model folder itself ships no tokenizer files.
* ``FastEsmModel`` = ``esm`` (embeddings, encoder, contact head) + ``pooler`` (an
  ``EsmPooler``); pre-LayerNorm layers built from transformers' ``EsmSelfOutput``,
  ``EsmIntermediate``, ``EsmOutput``; the same numbers as native ``EsmModel``.

Era by era:

=====  ==================================  ===========================================
era    real code                           mirrored here
=====  ==================================  ===========================================
a      2025 single file                    own ``RotaryEmbedding`` (integer
                                           ``_seq_len_cached``, ``inv_freq`` buffer);
                                           imports EsmIntermediate, EsmOutput, EsmPooler,
                                           EsmLMHead, EsmSelfOutput, EsmClassificationHead;
                                           ``base_model_prefix = "fastesm"``; touches no
                                           global state
b      2026-02-19..27                      ``from transformers import initialization``
                                           (transformers >= 5 only) and ``RotaryEmbedding``,
                                           ``EsmEmbeddings``, ``EsmContactPredictionHead``
                                           from transformers' ESM module (gone in 5.6);
                                           on import: ``set_float32_matmul_precision
                                           ('high')``, TF32 flags, ``cudnn.benchmark``,
                                           dynamo settings, a line printed to stdout
c      2026-02-27..03-07 (likely on hub)   as b without the ``initialization`` import
d      FastPLMs 1.0 bundle                 ``modeling_fastplms.py`` importing only the
                                           standard library plus ``fastplms_bundle.py``
                                           (a base85 zip of a ``fastplms`` package that
                                           it unpacks and imports); the package calls
                                           ``_check_and_adjust_attn_implementation(...,
                                           allow_all_kernels=...)`` (transformers >= 5.13);
                                           ``base_model_prefix = "esm"``,
                                           ``add_pooling_layer: false`` in the config
=====  ==================================  ===========================================

Under transformers 4.57: a and c load with their own code, b fails on the
``initialization`` import, d on ``allow_all_kernels``.  Under 5.24: a and d load, b and c
fail on the ``RotaryEmbedding`` import.  Plain ESM-2 loads under both.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

from standins import ESM_VOCAB, add_to_fake_hub

ESM_TOKENIZER_ID = "facebook/esm2_t6_8M_UR50D"
ERAS = ("a", "b", "c", "d")
ERA_NAMES = {"a": "2025 single file", "b": "2026-02-19..27", "c": "2026-02-27..03-07",
             "d": "FastPLMs 1.0 bundle"}

# ---------------------------------------------------------------------------
# Source pieces
# ---------------------------------------------------------------------------

_HEADER = '''\
"""Test stand-in for FastESM2's modeling code, era {era} ({era_name}); written for VirNucPro-FastESM's tests."""
'''

#: What the 2026 files do on import (they run their own "entrypoint setup").
_GLOBAL_STATE = '''
import torch
import torch._dynamo as _dynamo

torch.set_float32_matmul_precision("high")
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
torch.backends.cudnn.benchmark = True
_dynamo.config.capture_scalar_outputs = True
_dynamo.config.recompile_limit = 16
print("stand-in FastESM2: TF32 matmuls and cudnn.benchmark enabled")
'''

_IMPORTS = {
    "a": '''
import torch
from torch import nn
from torch.nn import functional as F
from transformers import EsmTokenizer, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions
from transformers.models.esm.modeling_esm import (EsmClassificationHead, EsmIntermediate, EsmLMHead, EsmOutput,
                                                  EsmPooler, EsmSelfOutput)
''',
    "b": '''
import torch
from torch import nn
from torch.nn import functional as F
from transformers import EsmTokenizer, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions
from transformers.models.esm.modeling_esm import (EsmClassificationHead, EsmContactPredictionHead, EsmEmbeddings,
                                                  EsmIntermediate, EsmLMHead, EsmOutput, EsmPooler, EsmSelfOutput,
                                                  RotaryEmbedding)
''',
    "c": '''
import torch
from torch import nn
from torch.nn import functional as F
from transformers import EsmTokenizer, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions
from transformers.models.esm.modeling_esm import (EsmClassificationHead, EsmContactPredictionHead, EsmEmbeddings,
                                                  EsmIntermediate, EsmLMHead, EsmOutput, EsmPooler, EsmSelfOutput,
                                                  RotaryEmbedding)
''',
}
_IMPORTS["d"] = _IMPORTS["a"]

_CONFIG = '''

TOKENIZER_ID = "{tokenizer_id}"


class FastEsmConfig(PretrainedConfig):
    model_type = "fast_esm"

    def __init__(self, vocab_size=None, mask_token_id=None, pad_token_id=None, hidden_size=768,
                 num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, hidden_dropout_prob=0.1,
                 attention_probs_dropout_prob=0.1, max_position_embeddings=1026, initializer_range=0.02,
                 layer_norm_eps=1e-12, position_embedding_type="absolute", emb_layer_norm_before=None,
                 token_dropout=True, add_pooling_layer=True, **kwargs):
        super().__init__(pad_token_id=pad_token_id, mask_token_id=mask_token_id, **kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.position_embedding_type = position_embedding_type
        self.emb_layer_norm_before = emb_layer_norm_before
        self.token_dropout = token_dropout
        self.add_pooling_layer = add_pooling_layer
        self.tie_word_embeddings = False
'''

#: Era a and the 1.0 package define these themselves; b and c import them from transformers.
_OWN_ROTARY_EMBEDDINGS_CONTACTS = '''

def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary tables cached per sequence length (an integer attribute), from an inv_freq buffer."""

    def __init__(self, dim):
        super().__init__()
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        self.register_buffer("inv_freq", inv_freq)
        self._seq_len_cached = None
        self._cos_cached = None
        self._sin_cached = None

    def _tables(self, x):
        length = x.shape[-2]
        if length != self._seq_len_cached or self._cos_cached.device != x.device:
            self._seq_len_cached = length
            positions = torch.arange(length, device=x.device).type_as(self.inv_freq)
            angles = torch.outer(positions, self.inv_freq)
            both = torch.cat((angles, angles), dim=-1)
            self._cos_cached = both.cos()[None, None].to(x.dtype)
            self._sin_cached = both.sin()[None, None].to(x.dtype)
        return self._cos_cached, self._sin_cached

    def forward(self, q, k):
        cos, sin = self._tables(k)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class EsmEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.layer_norm = (nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
                           if config.emb_layer_norm_before else None)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)),
                             persistent=False)
        self.token_dropout = config.token_dropout
        self.mask_token_id = config.mask_token_id

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None):
        embeddings = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.token_dropout:
            masked = (input_ids == self.mask_token_id)
            embeddings = embeddings.masked_fill(masked.unsqueeze(-1), 0)
            observed = masked.sum(-1).float() / attention_mask.sum(-1)
            embeddings = (embeddings * (1 - 0.15 * 0.8) / (1 - observed)[:, None, None]).to(embeddings.dtype)
        if self.layer_norm is not None:
            embeddings = self.layer_norm(embeddings)
        return (embeddings * attention_mask.unsqueeze(-1)).to(embeddings.dtype)


class EsmContactPredictionHead(nn.Module):
    def __init__(self, in_features, bias=True, eos_idx=2):
        super().__init__()
        self.regression = nn.Linear(in_features, 1, bias)
'''

_ENCODER = '''

class EsmSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.rotary_embeddings = RotaryEmbedding(dim=self.head_size)
        self.dropout_prob = config.attention_probs_dropout_prob

    def forward(self, hidden, key_mask):
        batch, length, width = hidden.shape

        def heads(x):
            return x.view(batch, length, self.num_heads, self.head_size).transpose(1, 2)

        q = heads(self.query(hidden)) * self.head_size ** -0.5
        k, v = heads(self.key(hidden)), heads(self.value(hidden))
        q, k = self.rotary_embeddings(q, k)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=1.0,
                                                 dropout_p=self.dropout_prob if self.training else 0.0)
        return context.transpose(1, 2).reshape(batch, length, width)


class EsmAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = EsmSelfAttention(config)
        self.output = EsmSelfOutput(config)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden, key_mask):
        return self.output(self.self(self.LayerNorm(hidden), key_mask), hidden)


class EsmLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = EsmAttention(config)
        self.intermediate = EsmIntermediate(config)
        self.output = EsmOutput(config)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden, key_mask):
        attended = self.attention(hidden, key_mask)
        return self.output(self.intermediate(self.LayerNorm(attended)), attended)


class EsmEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([EsmLayer(config) for _ in range(config.num_hidden_layers)])
        self.emb_layer_norm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden, key_mask):
        for layer in self.layer:
            hidden = layer(hidden, key_mask)
        return self.emb_layer_norm_after(hidden)
'''

_MODELS = '''

class FastEsmPreTrainedModel(PreTrainedModel):
    config_class = FastEsmConfig
    base_model_prefix = "{prefix}"
    all_tied_weights_keys = {{}}
    tokenizer = EsmTokenizer.from_pretrained(TOKENIZER_ID)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            {init_normal}
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()


class FAST_ESM_ENCODER(FastEsmPreTrainedModel):
    def __init__(self, config, **kwargs):
        FastEsmPreTrainedModel.__init__(self, config, **kwargs){attn_check}
        self.embeddings = EsmEmbeddings(config)
        self.encoder = EsmEncoder(config)
        self.contact_head = EsmContactPredictionHead(config.num_hidden_layers * config.num_attention_heads, bias=True)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        key_mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        hidden = self.embeddings(input_ids=input_ids, attention_mask=attention_mask)
        return self.encoder(hidden, key_mask)


class FastEsmModel(FastEsmPreTrainedModel):
    def __init__(self, config, add_pooling_layer=None, **kwargs):
        FastEsmPreTrainedModel.__init__(self, config, **kwargs)
        if add_pooling_layer is None:
            add_pooling_layer = getattr(config, "add_pooling_layer", True)
        self.esm = FAST_ESM_ENCODER(config)
        self.pooler = EsmPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.esm.embeddings.word_embeddings

    def forward(self, input_ids=None, attention_mask=None, output_hidden_states=None, output_attentions=None,
                return_dict=None, **kwargs):
        hidden = self.esm(input_ids, attention_mask=attention_mask)
        pooled = self.pooler(hidden) if self.pooler is not None else None
        return BaseModelOutputWithPoolingAndCrossAttentions(last_hidden_state=hidden, pooler_output=pooled)


class FastEsmForMaskedLM(FastEsmPreTrainedModel):
    def __init__(self, config, **kwargs):
        FastEsmPreTrainedModel.__init__(self, config, **kwargs)
        self.esm = FAST_ESM_ENCODER(config)
        self.lm_head = EsmLMHead(config)
        self.post_init()
'''

_INIT_NORMAL = {
    "a": "module.weight.data.normal_(mean=0.0, std=self.config.initializer_range)",
    "b": "init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)",
    "c": "module.weight.data.normal_(mean=0.0, std=self.config.initializer_range)",
    "d": "module.weight.data.normal_(mean=0.0, std=self.config.initializer_range)",
}

#: The 1.0 package resolves its attention backend through a transformers >= 5.13 hook.
_ATTN_CHECK = '''
        self._check_and_adjust_attn_implementation(getattr(config, "_attn_implementation", None),
                                                   is_init_check=True, allow_all_kernels=False)'''

#: The 1.0 bridge: standard library only, plus the data module beside it.
_BUNDLE_BRIDGE = '''\
"""Test stand-in for the FastPLMs 1.0 bridge: unpacks the embedded runtime and exposes its classes."""
import atexit
import base64
import hashlib
import importlib
import shutil
import sys
import tempfile
from io import BytesIO
from pathlib import Path
from zipfile import ZipFile

from .fastplms_bundle import RUNTIME_DATA, RUNTIME_HASH

_payload = base64.b85decode("".join(RUNTIME_DATA))
if hashlib.sha256(_payload).hexdigest() != RUNTIME_HASH:
    raise RuntimeError("Embedded FastPLMs runtime hash mismatch.")
_root = Path(tempfile.mkdtemp(prefix="fastplms-standin-runtime-"))
atexit.register(shutil.rmtree, _root, True)
with ZipFile(BytesIO(_payload)) as _archive:
    _archive.extractall(_root)
if str(_root) not in sys.path:
    sys.path.insert(0, str(_root))
for _name in [name for name in sys.modules if name == "fastplms" or name.startswith("fastplms.")]:
    del sys.modules[_name]
_module = importlib.import_module("fastplms.esm2")
FastEsmConfig = _module.FastEsmConfig
FastEsmModel = _module.FastEsmModel
FastEsmForMaskedLM = _module.FastEsmForMaskedLM
'''


def era_source(era: str, tokenizer_id: str = ESM_TOKENIZER_ID) -> str:
    """The Python source of era ``era``'s model code (for the 1.0 bundle: the packaged module)."""
    if era not in ERAS:
        raise ValueError(f"unknown era {era!r}")
    parts = [_HEADER.format(era=era, era_name=ERA_NAMES[era])]
    if era in ("b", "c"):  # first thing in the file, as their "entrypoint setup": it runs even where an import fails
        parts.append(_GLOBAL_STATE)
    parts.append(_IMPORTS[era])
    parts.append(_CONFIG.format(tokenizer_id=tokenizer_id))
    if era in ("a", "d"):
        parts.append(_OWN_ROTARY_EMBEDDINGS_CONTACTS)
    parts.append(_ENCODER)
    parts.append(_MODELS.format(prefix="esm" if era == "d" else "fastesm", init_normal=_INIT_NORMAL[era],
                                attn_check=_ATTN_CHECK if era == "d" else ""))
    return "".join(parts)


def _bundle_module(package_source: str) -> str:
    """``fastplms_bundle.py``: a docstring and two data assignments (a base85 zip of the package)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("fastplms/__init__.py", '"""Stand-in FastPLMs runtime package."""\n')
        archive.writestr("fastplms/esm2.py", package_source)
    payload = buffer.getvalue()
    encoded = base64.b85encode(payload).decode("ascii")
    chunks = "\n".join(f"    {encoded[i:i + 100]!r}" for i in range(0, len(encoded), 100))
    return ('"""Generated archive of the stand-in FastPLMs runtime sources."""\n\n'
            f'RUNTIME_HASH = "{hashlib.sha256(payload).hexdigest()}"\n'
            f"RUNTIME_DATA = (\n{chunks}\n)\n")


# ---------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------


def _native_masked_lm_state(hidden_size: int, num_layers: int, num_heads: int, seed: int,
                            intermediate_size: int | None = None):
    """Seeded weights of a native ``EsmForMaskedLM`` (the real checkpoint's key layout), inv_freq included
    (``intermediate_size``: 2 x hidden unless told; the real FastESM2_650 has 4 x)."""
    import torch
    from transformers import EsmConfig, EsmForMaskedLM

    config = EsmConfig(vocab_size=len(ESM_VOCAB), hidden_size=hidden_size, num_hidden_layers=num_layers,
                       num_attention_heads=num_heads, intermediate_size=intermediate_size or 2 * hidden_size,
                       max_position_embeddings=1026, position_embedding_type="rotary", token_dropout=True,
                       emb_layer_norm_before=False, layer_norm_eps=1e-5, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0, pad_token_id=ESM_VOCAB.index("<pad>"),
                       mask_token_id=ESM_VOCAB.index("<mask>"))
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = EsmForMaskedLM(config).eval()
        with torch.no_grad():  # non-trivial LayerNorms, so a dropped or re-initialised one shows
            for module in model.modules():
                if isinstance(module, torch.nn.LayerNorm):
                    module.weight.normal_(1.0, 0.1)
                    module.bias.normal_(0.0, 0.1)
    finally:
        torch.random.set_rng_state(state)
    weights = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    head_size = hidden_size // num_heads
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_size, 2, dtype=torch.int64).float() / head_size))
    for layer in range(num_layers):  # the hub checkpoints carry the rotary buffers
        weights.setdefault(f"esm.encoder.layer.{layer}.attention.self.rotary_embeddings.inv_freq", inv_freq.clone())
    assert not any(name.startswith(("pooler.", "esm.pooler.")) for name in weights)
    return weights


def build_fastesm_era(directory: str | os.PathLike, era: str, *, hidden_size: int = 64, num_layers: int = 2,
                      num_heads: int = 4, seed: int = 0, tokenizer_id: str = ESM_TOKENIZER_ID,
                      intermediate_size: int | None = None) -> Path:
    """Write a tiny FastESM2 model folder of era ``era`` (code, config.json, model.safetensors) into ``directory``.

    ``intermediate_size`` is 2 x ``hidden_size`` unless told (the real FastESM2_650: 1280 hidden, 5120).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    source = era_source(era, tokenizer_id)
    if era == "d":
        (directory / "modeling_fastplms.py").write_text(_BUNDLE_BRIDGE)
        (directory / "fastplms_bundle.py").write_text(_bundle_module(source))
        module = "modeling_fastplms"
    else:
        (directory / "modeling_fastesm.py").write_text(source)
        module = "modeling_fastesm"
    config = {
        "architectures": ["FastEsmForMaskedLM"],
        "auto_map": {"AutoConfig": f"{module}.FastEsmConfig", "AutoModel": f"{module}.FastEsmModel",
                     "AutoModelForMaskedLM": f"{module}.FastEsmForMaskedLM"},
        "model_type": "fast_esm",
        "vocab_size": len(ESM_VOCAB),
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "intermediate_size": intermediate_size or 2 * hidden_size,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": 1026,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-5,
        "position_embedding_type": "rotary",
        "emb_layer_norm_before": False,
        "token_dropout": True,
        "pad_token_id": ESM_VOCAB.index("<pad>"),
        "mask_token_id": ESM_VOCAB.index("<mask>"),
        "torch_dtype": "float32",
    }
    if era == "d":
        config["add_pooling_layer"] = False
        config["transformers_version"] = "5.13.0"
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(_native_masked_lm_state(hidden_size, num_layers, num_heads, seed, intermediate_size),
              str(directory / "model.safetensors"),
              metadata={"format": "pt"})
    return directory


def install_esm_tokenizer(hub_cache: str | os.PathLike, tokenizer_id: str = ESM_TOKENIZER_ID) -> Path:
    """Put the ESM-2 tokenizer every era's code loads (``facebook/esm2_t6_8M_UR50D``) into an offline hub cache."""
    import tempfile

    from transformers import EsmTokenizer

    with tempfile.TemporaryDirectory(prefix="esm_tokenizer_") as scratch:
        vocab = Path(scratch) / "vocab.txt"
        vocab.write_text("\n".join(ESM_VOCAB) + "\n")
        EsmTokenizer(str(vocab)).save_pretrained(scratch)
        return add_to_fake_hub(hub_cache, tokenizer_id, scratch)


def native_last_hidden_state(directory: str | os.PathLike, input_ids, attention_mask=None):
    """The reference: the era's weights in transformers' own ``EsmModel`` (no remote code), fp32 on the CPU."""
    import torch
    from safetensors.torch import load_file
    from transformers import EsmConfig, EsmModel

    raw = json.loads((Path(directory) / "config.json").read_text())
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "layer_norm_eps", "position_embedding_type", "emb_layer_norm_before",
            "token_dropout", "pad_token_id", "mask_token_id", "hidden_dropout_prob", "attention_probs_dropout_prob")
    model = EsmModel(EsmConfig(**{k: raw[k] for k in keys}), add_pooling_layer=False).eval()
    state = {k[len("esm."):]: v for k, v in load_file(str(Path(directory) / "model.safetensors")).items()
             if k.startswith("esm.")}
    missing, _ = model.load_state_dict(state, strict=False)
    assert not [k for k in missing if "inv_freq" not in k], missing
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
