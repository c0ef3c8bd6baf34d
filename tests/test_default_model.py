"""The model a new store gets when none is named: one choice in the library, for the CLI and
Python alike, said in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_store import solid_image
from typer.testing import CliRunner

from clipsearch.collection import CLIP_MODEL, default_model, open_store
from clipsearch.models.registry import clear_cache


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIPSEARCH_MODEL", raising=False)
    monkeypatch.delenv("CLIPSEARCH_STORE", raising=False)


@pytest.fixture
def cached_clip(tiny_hf_clip: Path, hf_cache_dir: Path):
    """A (tiny, random) CLIP in the Hugging Face cache under the real CLIP's id, for one test."""
    repo = hf_cache_dir / ("models--" + CLIP_MODEL.replace("/", "--"))
    snapshot = repo / "snapshots" / ("2" * 40)
    shutil.copytree(tiny_hf_clip, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("2" * 40)
    clear_cache()
    try:
        yield
    finally:
        shutil.rmtree(repo)
        clear_cache()


def _photos(root: Path) -> Path:
    for i in range(3):
        solid_image(root / f"img{i}.png", (60 * i, 90, 200), noise=8, seed=i)
    return root


def test_images_get_real_clip_when_it_can_be_had(cached_clip, tmp_path: Path) -> None:
    choice = default_model([_photos(tmp_path / "photos")])
    assert (choice.name, choice.why) == (CLIP_MODEL, "real CLIP") and choice.encoder is not None
    store = open_store(tmp_path / "store")  # Python: the same choice
    assert store.model_name == CLIP_MODEL


def test_images_get_the_demo_model_when_clip_cannot_be_had(tmp_path: Path) -> None:
    choice = default_model([_photos(tmp_path / "photos")])
    assert choice.name == "demo"
    assert choice.why.startswith(f"the bundled offline model, since {CLIP_MODEL} cannot be had: model '{CLIP_MODEL}' ")


def test_text_alone_and_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "notes.txt").write_text("Canberra is the capital of Australia.\n")
    assert default_model([tmp_path / "notes.txt"]).name == "minilm"
    monkeypatch.setenv("CLIPSEARCH_MODEL", "my-model")
    assert default_model([tmp_path / "notes.txt"]).name == "my-model"


def test_cli_says_which_model_a_new_store_uses_and_why(cached_clip, tmp_path: Path) -> None:
    from clipsearch.cli.main import app

    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["index", str(_photos(tmp_path / "photos")), "--store", str(store), "--json", "-w", "0"])
    assert result.exit_code == 0, result.output
    assert f"new store {store}: model {CLIP_MODEL} (real CLIP)" in result.stderr
    stats = CliRunner().invoke(app, ["stats", "--store", str(store), "--json"])
    assert json.loads(stats.stdout)["model"] == CLIP_MODEL  # recorded: later commands need no --model
    again = CliRunner().invoke(app, ["index", str(tmp_path / "photos"), "--store", str(store), "--json", "-w", "0"])
    assert json.loads(again.stdout)["unchanged"] == 3 and "new store" not in again.stderr
