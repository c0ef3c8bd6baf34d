"""A store knows its model by what it computes: a model changed under the same name is refused
with the way out (clipsearch reindex), and re-embedding is crash-safe."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_store import FakeEncoder, solid_image

from clipsearch.collection import open_store
from clipsearch.errors import StoreError


class RetrainedEncoder(FakeEncoder):
    """The same name as the store's model, other weights (a folder retrained in place)."""

    def __init__(self, seed: int = 1, **kw) -> None:
        super().__init__(**kw)
        self._proj = np.random.default_rng(seed).standard_normal((3 * 16 * 16, 20)).astype(np.float32) / 16.0

    def _encode_text_batch(self, texts, role):
        out = super()._encode_text_batch(texts, role)
        return out[:, ::-1].copy()  # another text tower too


class FailingAfter(RetrainedEncoder):
    """Dies after ``n`` image forward passes: a re-embedding killed part way."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.left = n

    def _encode_pixels(self, pixels):
        if self.left <= 0:
            raise KeyboardInterrupt("killed")
        self.left -= 1
        return super()._encode_pixels(pixels)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIPSEARCH_STORE", raising=False)
    monkeypatch.delenv("CLIPSEARCH_ANN_THRESHOLD", raising=False)


def _store_with_photos(tmp_path: Path, n: int = 6):
    photos = tmp_path / "photos"
    for i in range(n):
        solid_image(photos / f"img{i}.png", (40 * i, 255 - 40 * i, 90), noise=8, seed=i)
    store = open_store(tmp_path / "store", model=FakeEncoder())
    store.add([photos], texts=["a red note", "a blue note"], workers=0, batch_size=2)
    return store, photos


def test_a_model_changed_under_the_same_name_is_refused_with_the_way_out(tmp_path: Path) -> None:
    store, _ = _store_with_photos(tmp_path)
    assert open_store(store.root, model=FakeEncoder()).search("red", k=1)  # the same weights: accepted
    changed = open_store(store.root, model=RetrainedEncoder())
    message = (
        f"model 'fake' is not the one store {store.root} was built with: its weights or preprocessing changed "
        f"(cosine {{}} on reference inputs); re-embed every item with: clipsearch reindex --store {store.root}"
    )
    with pytest.raises(StoreError, match="^" + re.escape(message).replace(r"\{\}", r"-?[0-9.]+") + "$"):
        changed.search("red", k=1)


def test_reindex_re_embeds_every_item_and_reports_what_it_could_not(tmp_path: Path) -> None:
    store, photos = _store_with_photos(tmp_path)
    ids = {r["id"] for r in store.to_arrow(["id"]).to_pylist()}
    (photos / "img5.png").unlink()  # its source is gone: it cannot be re-embedded
    retrained = RetrainedEncoder()

    summary = open_store(store.root, model=retrained).reindex(workers=0, batch_size=3)
    assert summary.to_dict() == {"reembedded": 7, "lost": 1}
    assert summary.lost[0].path == str(photos / "img5.png")

    reopened = open_store(store.root, model=RetrainedEncoder())
    assert reopened.search("a red note", k=1, modality="text")[0].text == "a red note"  # accepted now
    kept = reopened.items(sorted(ids))
    assert len(kept) == 7 and len(reopened) == 7  # the lost image is gone, every other item kept its id
    for item in reopened.items([i.id for i in kept], with_vector=True):
        if item.modality == "image":
            with Image.open(item.path) as image:
                want = retrained.encode_pixel_values(retrained.preprocess_images([image.convert("RGB")]))[0]
        else:
            want = retrained.encode_texts([item.text])[0]
        np.testing.assert_allclose(item.vector, want, atol=1e-5)
    with pytest.raises(StoreError, match="is not the one store"):
        open_store(store.root, model=FakeEncoder()).search("red", k=1)  # now the old weights are the stranger


def test_a_killed_reindex_leaves_a_store_that_says_so_and_a_rerun_finishes(tmp_path: Path) -> None:
    store, _ = _store_with_photos(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        open_store(store.root, model=FailingAfter(1)).reindex(workers=0, batch_size=2)
    meta = json.loads((store.root / "meta.json").read_text())
    assert meta["reembedding"]["done_seq"] >= 0  # part of the store is re-embedded
    with pytest.raises(StoreError, match=r"is being re-embedded with the changed model 'fake' and holds vectors of both; "
                       r"finish with: clipsearch reindex --store "):
        open_store(store.root, model=FakeEncoder()).search("red", k=1)

    summary = open_store(store.root, model=RetrainedEncoder()).reindex(workers=0, batch_size=2)
    assert summary.lost == []
    assert "reembedding" not in json.loads((store.root / "meta.json").read_text())
    assert len(open_store(store.root, model=RetrainedEncoder()).search("red", k=10)) == 8


def test_a_store_from_before_probes_learns_its_model_at_the_next_run(tmp_path: Path) -> None:
    store, photos = _store_with_photos(tmp_path)
    (store.root / "probe.json").unlink()
    changed = open_store(store.root, model=RetrainedEncoder())
    assert changed.search("red", k=1)  # nothing recorded to compare with: accepted, as before
    solid_image(photos / "new.png", "green", noise=8, seed=99)
    open_store(store.root, model=FakeEncoder()).add([photos], workers=0)  # loads the model: records it
    assert (store.root / "probe.json").exists()
    with pytest.raises(StoreError, match="is not the one store"):
        open_store(store.root, model=RetrainedEncoder()).search("red", k=1)


def test_cli_reindex(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from clipsearch.cli.main import app

    store, photos = _store_with_photos(tmp_path)
    monkeypatch.setattr("clipsearch.models.registry.load_model", lambda name, **kw: RetrainedEncoder())
    runner = CliRunner()
    refused = runner.invoke(app, ["search", "red", "--store", str(store.root)])
    assert refused.exit_code == 2 and "clipsearch reindex --store" in refused.stderr
    (photos / "img0.png").unlink()
    done = runner.invoke(app, ["reindex", "--store", str(store.root), "--workers", "0", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {"reembedded": 7, "lost": 1}
    assert f"lost {photos / 'img0.png'}: cannot be re-embedded: file not found" in done.stderr
    assert runner.invoke(app, ["search", "red", "--store", str(store.root)]).exit_code == 0
