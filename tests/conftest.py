"""Shared fixtures: offline Hugging Face environment, tiny stand-in models, golden data, a prediction run.

The Hugging Face environment is set at import time, BEFORE transformers or
huggingface_hub are imported (they read HF_HOME when imported): a fresh temporary
HF_HOME per test session, HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1, so nothing
ever touches the network or the user's real cache.
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
for _path in (str(ROOT), str(TESTS)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

if "huggingface_hub" in sys.modules or "transformers" in sys.modules:  # pragma: no cover
    import warnings
    warnings.warn("huggingface_hub/transformers were imported before tests/conftest.py; "
                  "the test HF_HOME may not be used", stacklevel=1)

_HF_HOME = Path(tempfile.mkdtemp(prefix="virnucpro-test-hf-"))
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
for _var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_MODULES_CACHE",
             "HF_DATASETS_CACHE", "HF_TOKEN", "HF_ENDPOINT"):
    os.environ.pop(_var, None)
os.environ["HF_HOME"] = str(_HF_HOME)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

import fastesm_eras  # noqa: E402
import standins  # noqa: E402

# The stand-in models are tiny: on a small, busy CPU one intra-op thread is much faster
# than several (thread start-up and spinning dominate).  VIRNUCPRO_TEST_THREADS overrides.
torch.set_num_threads(max(1, int(os.environ.get("VIRNUCPRO_TEST_THREADS", "1"))))


@pytest.fixture(scope="session")
def hf_home() -> Path:
    """The session's temporary HF_HOME."""
    return _HF_HOME


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """tests/data: golden outputs of the original VirNucPro (see GOLDEN_README.md)."""
    return TESTS / "data"


@pytest.fixture(scope="session", autouse=True)
def esm_tokenizer_cached() -> Path:
    """``facebook/esm2_t6_8M_UR50D``'s tokenizer in the session's offline cache: every era of FastESM2's
    code loads it on import, as the real one does."""
    from huggingface_hub import constants

    return fastesm_eras.install_esm_tokenizer(constants.HF_HUB_CACHE)


@pytest.fixture(scope="session")
def esm_model_dir(tmp_path_factory) -> Path:
    """A local directory holding a tiny FastESM2 stand-in of the era most likely on the hub (64-d, 2 layers)."""
    return standins.build_fastesm_standin(tmp_path_factory.mktemp("fastesm_standin"))


@pytest.fixture(scope="session")
def dnabert_model_dir(tmp_path_factory) -> Path:
    """A local directory holding a tiny DNABERT-S stand-in (768-d, 1 layer, BPE tokenizer)."""
    return standins.build_dnabert_standin(tmp_path_factory.mktemp("dnabert_standin"))


@pytest.fixture(scope="session")
def fake_hub(esm_model_dir, dnabert_model_dir) -> Path:
    """Make the default hub ids resolve offline from the session cache; returns HF_HOME."""
    from huggingface_hub import constants

    hub_cache = Path(constants.HF_HUB_CACHE)
    standins.install_fake_hub(hub_cache, esm_model_dir, dnabert_model_dir)
    return _HF_HOME


@pytest.fixture(scope="session")
def checkpoint_300(tmp_path_factory, esm_model_dir, dnabert_model_dir) -> Path:
    """A seeded random classifier for the stand-ins' widths (768 + protein width)."""
    import units

    dna = units.load_dnabert_model(str(dnabert_model_dir), "cpu")
    protein = units.load_protein_model(str(esm_model_dir), "cpu")
    torch.manual_seed(7)
    model = units.MLPClassifier(dna.hidden_size + protein.hidden_size)
    model.eval()
    with torch.no_grad():  # make the batch-norm statistics non-trivial so scores vary
        model.bn1.running_mean.uniform_(-0.05, 0.05)
    path = tmp_path_factory.mktemp("ckpt") / "300_model_fastesm650.pth"
    units.save_checkpoint(path, model, dna_model=str(dnabert_model_dir), dna_dim=dna.hidden_size,
                          protein_model=str(esm_model_dir), protein_dim=protein.hidden_size, chunk_size=300)
    return path


@pytest.fixture()
def run(esm_model_dir, dnabert_model_dir, checkpoint_300):
    """Call prediction.main with the stand-in models; returns the exit code."""
    import prediction

    def _run(*args: str | Path, model: Path | None = None) -> int:
        argv = [str(a) for a in args] + ["--model", str(model or checkpoint_300), "--esm-model", str(esm_model_dir),
                                         "--dnabert-model", str(dnabert_model_dir), "--device", "cpu", "-q"]
        return prediction.main(argv)
    return _run


@pytest.fixture()
def compile_eagerly(monkeypatch: pytest.MonkeyPatch) -> list[torch.nn.Module]:
    """torch.compile with the eager backend (no C compiler, seconds) and a model cache of the test's own
    (the models it compiles stay there); the modules compiled, in order."""
    import virnucpro.models

    monkeypatch.setattr(virnucpro.models, "_MODEL_CACHE", {})
    compiled: list[torch.nn.Module] = []
    original = torch.nn.Module.compile

    def compile_with_eager_backend(self, *args, **kwargs):
        compiled.append(self)
        return original(self, *args, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(torch.nn.Module, "compile", compile_with_eager_backend)
    return compiled
