"""Shared test fixtures: no hub access, and tiny random models built once per session.

The environment is isolated at import time, before anything imports huggingface_hub (which
reads ``HF_HOME`` once, when first imported): the hub is offline and its cache is an empty
temporary folder, so no test can reach the network or see a real cache.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

_HF_HOME = tempfile.mkdtemp(prefix="clipsearch-test-hf-")
atexit.register(shutil.rmtree, _HF_HOME, True)
_ONNX_CACHE = tempfile.mkdtemp(prefix="clipsearch-test-onnx-")
atexit.register(shutil.rmtree, _ONNX_CACHE, True)
# Tests run the torch backend unless they ask for another (tests/test_onnx.py does), and any
# ONNX bundle they export goes to a temporary cache, never the user's.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HOME": _HF_HOME,
    "CLIPSEARCH_BACKEND": "torch",
    "CLIPSEARCH_ONNX_CACHE": _ONNX_CACHE,
}
for _var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "SENTENCE_TRANSFORMERS_HOME"):
    os.environ.pop(_var, None)  # these would override HF_HOME
os.environ.update(OFFLINE_ENV)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings; 2 cores here anyway

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import tiny_models` from any test


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test offline with the temporary HF cache, even if an earlier test changed the env."""
    for var, value in OFFLINE_ENV.items():
        monkeypatch.setenv(var, value)


@pytest.fixture(scope="session")
def hf_cache_dir() -> Path:
    """The (temporary) Hugging Face hub cache the tests see; write fake cached repos here."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


@pytest.fixture(scope="session")
def tiny_hf_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a tiny random HF CLIPModel + CLIPProcessor (30 px, bicubic, 40 text tokens)."""
    from tiny_models import make_tiny_hf_clip

    return make_tiny_hf_clip(tmp_path_factory.mktemp("models") / "tiny_hf_clip")


@pytest.fixture(scope="session")
def tiny_hf_clip_alt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``tiny_hf_clip`` with other preprocessing: resize to 34, crop 30, bilinear, mean 0.5/std 0.25."""
    from tiny_models import make_tiny_hf_clip

    return make_tiny_hf_clip(
        tmp_path_factory.mktemp("models") / "tiny_hf_clip_alt",
        resize_to=34,
        resample=2,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        seed=1,
    )


@pytest.fixture(scope="session")
def tiny_open_clip(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random open_clip model (``tiny_models.TinyOpenClip``); its folder uses bilinear, mean 0.5."""
    from tiny_models import make_tiny_open_clip

    return make_tiny_open_clip(
        tmp_path_factory.mktemp("models") / "tiny_open_clip",
        interpolation="bilinear",
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )


@pytest.fixture(scope="session")
def tiny_sbert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a tiny random sentence-transformers model (BERT 32-d, max_seq_length 24)."""
    from tiny_models import make_tiny_sbert

    return make_tiny_sbert(tmp_path_factory.mktemp("models") / "tiny_sbert")
