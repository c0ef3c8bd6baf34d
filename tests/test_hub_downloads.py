"""Models from the Hub on first use, against a stand-in Hub on 127.0.0.1 that the test starts
and stops: the first run downloads (and says so), the second asks the Hub nothing, and a Hub
that cannot be reached, or HF_HUB_OFFLINE=1, is one sentence within seconds."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from stand_in_hub import StandInHub

REPO = "clipsearch-test/tiny-clip"


@pytest.fixture
def repo_folder(tiny_hf_clip) -> Path:
    return tiny_hf_clip


def _env(hf_home: Path, endpoint: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "CLIPSEARCH_"))}
    # torch, as every test but tests/test_onnx.py: an ONNX export would write into the user's cache
    env.update(CLIPSEARCH_BACKEND=os.environ["CLIPSEARCH_BACKEND"], CLIPSEARCH_ONNX_CACHE=os.environ["CLIPSEARCH_ONNX_CACHE"])
    env.update(HF_HOME=str(hf_home), HF_ENDPOINT=endpoint, HF_HUB_ETAG_TIMEOUT="5", **extra)
    return env


def _info(env: dict[str, str], name: str = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clipsearch", "info", "--model", name], env=env, capture_output=True, text=True, timeout=120
    )


def test_first_use_downloads_and_the_second_run_asks_nothing(repo_folder: Path, tmp_path: Path) -> None:
    with StandInHub({REPO: repo_folder}) as hub:
        env = _env(tmp_path / "hf", hub.url)
        first = _info(env)
        assert first.returncode == 0, first.stderr
        assert f"downloading model {REPO} from the Hugging Face Hub (first use; later runs use the local copy)" in first.stderr
        assert any(r.startswith("GET /clipsearch-test/tiny-clip/resolve/") for r in hub.requests)
        snapshots = list((tmp_path / "hf" / "hub" / "models--clipsearch-test--tiny-clip" / "snapshots").iterdir())
        assert len(snapshots) == 1 and (snapshots[0] / "model.safetensors").exists()  # the standard cache

        hub.requests.clear()
        second = _info(env)
        assert second.returncode == 0, second.stderr
        assert "downloading" not in second.stderr
        assert [r for r in hub.requests if "/api/agent" not in r] == []  # the model is not asked for again
        assert second.stdout == first.stdout


def test_a_hub_that_cannot_be_reached_is_one_sentence_quickly(repo_folder: Path, tmp_path: Path) -> None:
    with StandInHub({REPO: repo_folder}) as hub:
        url = hub.url
    t0 = time.monotonic()  # the stand-in is stopped: nothing listens there any more
    out = _info(_env(tmp_path / "hf", url))
    took = time.monotonic() - t0
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith(
        f"error: model '{REPO}' is not in the local Hugging Face cache and the Hugging Face Hub cannot be reached ("
    )
    assert lines[0].endswith(
        f"check the connection, copy it with `hf download {REPO}` on a machine with internet, or use a local model "
        "folder, 'minilm' (text only) or 'demo'"
    )
    assert took < 10  # a process start and one refused connection, no retry loop (about 0.6 s here)


def test_offline_mode_is_one_sentence(tmp_path: Path) -> None:
    out = _info(_env(tmp_path / "hf", "http://127.0.0.1:9", HF_HUB_OFFLINE="1"))
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"error: model '{REPO}' is not in the local Hugging Face cache and downloads are off (HF_HUB_OFFLINE=1): "
        f"copy it with `hf download {REPO}` on a machine with internet, or use a local model folder, "
        "'minilm' (text only) or 'demo'"
    )


def test_a_repository_the_hub_does_not_have_is_named(repo_folder: Path, tmp_path: Path) -> None:
    with StandInHub({REPO: repo_folder}) as hub:
        out = _info(_env(tmp_path / "hf", hub.url), "clipsearch-test/no-such-model")
    assert out.returncode == 2
    assert "the Hugging Face Hub has no model 'clipsearch-test/no-such-model' that can be downloaded" in out.stderr
