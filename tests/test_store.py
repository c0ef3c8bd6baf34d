"""The store: creation, model and schema checks, get/remove/stats, exact and ANN search.

Also home of :class:`FakeEncoder`, the small deterministic model the store, ingest and search
tests share (``from test_store import FakeEncoder``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch.store.ann import KIND
from clipsearch.models.base import Encoder, ModelInfo, Preprocess

# -- a fake model with a real joint space --------------------------------------------------------

COLOURS = {
    "red": (1.0, -1.0, -1.0),
    "green": (-1.0, 1.0, -1.0),
    "blue": (-1.0, -1.0, 1.0),
    "white": (1.0, 1.0, 1.0),
    "black": (-1.0, -1.0, -1.0),
    "yellow": (1.0, 1.0, -1.0),
}
SOLID = {
    "red": (230, 20, 20),
    "green": (20, 230, 20),
    "blue": (20, 20, 230),
    "white": (250, 250, 250),
    "yellow": (240, 240, 10),
}


class FakeEncoder(Encoder):
    """32-d joint space: 12 dims of colour (2x2 quadrants x RGB), 20 of texture / words.

    An image's colour dims are its quadrant means; a text's are the colour words it names, so
    "red" finds red images. The other 20 dims are a fixed random projection of the pixels (so
    distinct images differ) or a hashed bag of words (so texts sharing words are close).
    """

    def __init__(self, name: str = "fake", modalities: tuple[str, ...] = ("image", "text")):
        self.info = ModelInfo(
            name=name,
            backend="fake",
            dim=32,
            modalities=modalities,
            context_length=64,
            preprocess=Preprocess(size=16, crop=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear")
            if "image" in modalities
            else None,
            logit_scale=100.0,
        )
        self._proj = np.random.default_rng(0).standard_normal((3 * 16 * 16, 20)).astype(np.float32) / 16.0
        self.image_calls = 0
        self.text_calls = 0
        self.texts_seen: list[str] = []

    def _encode_pixels(self, pixels):
        self.image_calls += len(pixels)
        x = np.asarray(pixels, dtype=np.float32)
        quads = [x[:, :, :8, :8], x[:, :, :8, 8:], x[:, :, 8:, :8], x[:, :, 8:, 8:]]
        colour = np.concatenate([q.mean(axis=(2, 3)) for q in quads], axis=1)  # (n, 12)
        texture = x.reshape(len(x), -1) @ self._proj  # (n, 20)
        return np.concatenate([colour, 0.3 * texture], axis=1)

    def _encode_text_batch(self, texts, role):
        self.text_calls += len(texts)
        self.texts_seen += list(texts)
        out = np.zeros((len(texts), 32), np.float32)
        for i, t in enumerate(texts):
            for word in re.findall(r"\w+", t.lower()):
                if word in COLOURS:
                    out[i, :12] += np.tile(COLOURS[word], 4)
                seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little")
                out[i, 12:] += np.random.default_rng(seed).standard_normal(20).astype(np.float32)
        return out


def solid_image(path: Path, colour: str | tuple[int, int, int], size=(40, 30), noise: int = 0, seed: int = 0) -> Path:
    """Write a solid-colour image (with optional per-pixel noise so files differ)."""
    rgb = SOLID[colour] if isinstance(colour, str) else colour
    arr = np.empty((size[1], size[0], 3), np.int16)
    arr[:] = rgb
    if noise:
        arr += np.random.default_rng(seed).integers(-noise, noise + 1, arr.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path)
    return path


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def enc() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture
def store_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("CLIPSEARCH_STORE", raising=False)
    monkeypatch.delenv("CLIPSEARCH_ANN_THRESHOLD", raising=False)
    return tmp_path / "store"


def clustered(n: int, dim: int, clusters: int, rng: np.random.Generator, spread: float = 0.75) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres of uneven size (cosine to centre ~0.8)."""
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.zipf(1.6, clusters).astype(float)
    labels = rng.choice(clusters, size=n, p=weights / weights.sum())
    x = centres[labels] + rng.standard_normal((n, dim)).astype(np.float32) * (spread / np.sqrt(dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def put_vectors(store, vectors: np.ndarray, *, modality: str = "image", prefix: str = "v") -> list[str]:
    """Write raw rows (ids ``{prefix}{i}`` hashed to hex) straight into the store."""
    rows = []
    for i in range(len(vectors)):
        item_id = hashlib.sha256(f"{prefix}{i}".encode()).hexdigest()[:16]
        rows.append(
            {"id": item_id, "modality": modality, "path": f"/data/{prefix}/{i}.jpg", "extra_paths": [], "source": None}
        )
    with store.writing():
        for start in range(0, len(rows), 5000):
            chunk = rows[start : start + 5000]
            seqs = store.allocate_seqs(len(chunk))
            for r, s in zip(chunk, seqs):
                r["seq"] = int(s)
            store.commit_items(chunk, vectors[start : start + len(chunk)])
    return [r["id"] for r in rows]


# -- opening and the header ----------------------------------------------------------------------


def test_new_store_records_model_dim_and_schema(store_dir: Path, enc: FakeEncoder) -> None:
    from clipsearch.collection import open_store
    from clipsearch.store import SCHEMA_VERSION

    store = open_store(store_dir, model=enc)
    meta = json.loads((store_dir / "meta.json").read_text())
    assert meta["schema_version"] == SCHEMA_VERSION
    assert (meta["model"], meta["dim"]) == ("fake", 32)
    assert len(store) == 0 and store.stats()["count"] == 0


def test_other_model_is_refused(store_dir: Path) -> None:
    from clipsearch.errors import StoreError
    from clipsearch.collection import open_store

    open_store(store_dir, model=FakeEncoder("model-a"))
    msg = f"store {store_dir} was built with model model-a; use --model model-a or a new --store"
    with pytest.raises(StoreError, match=re.escape(msg)):
        open_store(store_dir, model=FakeEncoder("model-b"))
    with pytest.raises(StoreError, match=re.escape(msg)):
        open_store(store_dir, model="model-b")
    assert open_store(store_dir).model_name == "model-a"  # no model given: the store's own


def test_newer_schema_is_refused_and_left_untouched(store_dir: Path, enc: FakeEncoder) -> None:
    from clipsearch.errors import StoreError
    from clipsearch.collection import open_store

    open_store(store_dir, model=enc)
    meta = json.loads((store_dir / "meta.json").read_text())
    meta["schema_version"] = 99
    (store_dir / "meta.json").write_text(json.dumps(meta))
    before = (store_dir / "meta.json").read_bytes()
    msg = f"store {store_dir} has schema version 99, newer than this clipsearch reads (1); upgrade clipsearch to use it"
    with pytest.raises(StoreError, match=re.escape(msg)):
        open_store(store_dir, model=enc)
    assert (store_dir / "meta.json").read_bytes() == before


def test_missing_store_and_non_store_folders(tmp_path: Path, enc: FakeEncoder) -> None:
    from clipsearch.errors import StoreError
    from clipsearch.collection import open_store

    missing = tmp_path / "nope"
    with pytest.raises(
        StoreError, match=re.escape(f"no store at {missing}; build one with: clipsearch index PATH --store {missing}")
    ):
        open_store(missing, create=False)
    assert not missing.exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "photo.jpg").write_bytes(b"x")
    with pytest.raises(
        StoreError, match=re.escape(f"cannot create a store at {busy}: the folder is not empty and has no meta.json")
    ):
        open_store(busy, model=enc)
    with pytest.raises(
        StoreError,
        match=re.escape("store URI 'gs://bucket/x': local folders, file:// and s3:// URIs are supported, not gs://"),
    ):
        open_store("gs://bucket/x", model=enc)


def test_file_uri_and_env_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, enc: FakeEncoder) -> None:
    from clipsearch.collection import open_store
    from clipsearch.store import default_store_path

    store = open_store(f"file://{tmp_path}/a", model=enc)
    assert store.root == tmp_path / "a"
    monkeypatch.setenv("CLIPSEARCH_STORE", str(tmp_path / "b"))
    assert default_store_path() == tmp_path / "b"
    assert open_store(model=enc).root == tmp_path / "b"


def test_dimension_mismatch_is_refused(store_dir: Path) -> None:
    from clipsearch.errors import StoreError
    from clipsearch.collection import open_store

    open_store(store_dir, model=FakeEncoder("m"))
    other = FakeEncoder("m")
    other.info.dim = 64
    with pytest.raises(
        StoreError, match=re.escape(f"store {store_dir} holds 32-d vectors but model 'm' makes 64-d ones")
    ):
        open_store(store_dir, model=other)


def test_one_writer_at_a_time(store_dir: Path, enc: FakeEncoder) -> None:
    from clipsearch.errors import StoreError
    from clipsearch.collection import open_store

    a = open_store(store_dir, model=enc)
    b = open_store(store_dir, model=enc)
    with a.writing():
        with pytest.raises(StoreError, match="is being written by another"):
            with b.writing():
                pass
    with b.writing():  # released
        pass


# -- rows: get, remove, stats --------------------------------------------------------------------


def test_get_remove_and_stats(store_dir: Path, enc: FakeEncoder, tmp_path: Path) -> None:
    from clipsearch.errors import StoreError
    from clipsearch.collection import open_store

    store = open_store(store_dir, model=enc)
    red = solid_image(tmp_path / "pics" / "red.png", "red")
    solid_image(tmp_path / "pics" / "sub" / "blue.png", "blue")
    store.add([tmp_path / "pics"], texts=["a note about nothing"], workers=0)
    stats = store.stats()
    assert {k: stats[k] for k in ("count", "images", "texts", "model", "dim")} == {
        "count": 3, "images": 2, "texts": 1, "model": "fake", "dim": 32,
    }  # fmt: skip
    assert stats["index"]["kind"] == "exact" and stats["size_bytes"] > 0
    item = store.search(red, k=1)[0]
    assert store.get(item.id).path == str(red)
    assert store.get(item.id[:6]).id == item.id  # a unique prefix
    assert store.get(item.id, with_vector=True).vector.shape == (32,)
    assert store.get("ffffffffffffffff") is None
    assert store.remove([item.id]) == 1
    assert store.get(item.id) is None
    assert store.remove([tmp_path / "pics" / "sub"]) == 1  # a folder: everything under it
    assert store.stats()["images"] == 0 and len(store) == 1
    with pytest.raises(StoreError, match=re.escape(f"nothing in store {store_dir} has the id or path 'zzz'")):
        store.remove(["zzz"])


def test_glob_to_regex() -> None:
    from clipsearch.store.lance_store import glob_to_regex

    cases = {
        "*.png": ["/a/b.png", "x.png"],
        "/data/*/2023/*.jpg": ["/data/x/2023/a.jpg", "/data/x/y/2023/b.jpg"],
        "*/img_[0-9]?.jpg": ["/a/img_12.jpg"],
        "*[!a].txt": ["/b.txt"],
    }
    misses = {"*.png": ["/a/b.png.jpg"], "*/img_[0-9]?.jpg": ["/a/img_x1.jpg"], "*[!a].txt": ["/a.txt"]}
    for pat, paths in cases.items():
        for p in paths:
            assert re.fullmatch(glob_to_regex(pat), p), (pat, p)
    for pat, paths in misses.items():
        for p in paths:
            assert not re.fullmatch(glob_to_regex(pat), p), (pat, p)


# -- nearest neighbours: exact and ANN ---------------------------------------------------------


def test_exact_search_matches_numpy(store_dir: Path) -> None:
    from clipsearch.collection import open_store

    rng = np.random.default_rng(1)
    store = open_store(store_dir, model=FakeEncoder())
    vecs = clustered(500, 32, 20, rng)
    ids = put_vectors(store, vecs)
    q = vecs[7] + 0.1 * rng.standard_normal(32).astype(np.float32)
    q /= np.linalg.norm(q)
    found = store.nearest(q, 10)
    hits = store.hits_at(found)
    truth = np.argsort(-(vecs @ q))[:10]
    assert [h.id for h in hits] == [ids[i] for i in truth]
    np.testing.assert_allclose([h.score for h in hits], (vecs @ q)[truth], rtol=1e-5)


def test_ann_index_recall_tail_and_deletions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At reduced size (6k rows, threshold 3k): recall@10 >= 0.95 on clustered vectors, rows added
    after the build are found, deleted rows never come back, filters still hold."""
    from clipsearch.collection import open_store

    rng = np.random.default_rng(0)
    dim = 32
    monkeypatch.setenv("CLIPSEARCH_ANN_THRESHOLD", "3000")
    store = open_store(tmp_path / "s", model=FakeEncoder())
    data = clustered(6300, dim, 60, rng)
    base, extra = data[:6000], data[6000:]
    ids = put_vectors(store, base)
    assert store.update_index() == "built"
    state = store.index_state()
    assert state["kind"] == KIND and state["indexed"] == 6000
    queries = clustered(200, dim, 60, np.random.default_rng(0))[:200]  # same centres: fresh points
    recall = []
    for q in queries:
        truth = set(np.argsort(-(base @ q))[:10].tolist())
        got = {ids.index(h.id) for h in store.hits_at(store.nearest(q, 10))}
        assert store.last_plan == "ann"
        recall.append(len(truth & got) / 10)
    assert np.mean(recall) >= 0.95
    exact = store.hits_at(store.nearest(queries[0], 10, exact=True))
    assert store.last_plan == "exact"
    assert [h.id for h in exact] == [ids[i] for i in np.argsort(-(base @ queries[0]))[:10]]

    # a tail of new rows (not yet in the index) is searched exactly beside it
    new_ids = put_vectors(store, extra, prefix="new")
    assert store.index_state()["indexed"] == 6000
    hit = store.hits_at(store.nearest(extra[5], 1))[0]
    assert hit.id == new_ids[5] and hit.score == pytest.approx(1.0, abs=1e-5)
    # deleted rows disappear at once, before the index is rewritten
    with store.writing():
        store.commit_items([], None, [ids[3], new_ids[5]])
    assert ids[3] not in {h.id for h in store.hits_at(store.nearest(base[3], 5))}
    assert new_ids[5] not in {h.id for h in store.hits_at(store.nearest(extra[5], 5))}
    # a filter that keeps a small subset is answered exactly from the index's vectors
    glob_hits = store.hits_at(store.nearest(base[10], 5, path_glob="/data/*/1?.jpg"))
    assert store.last_plan == "ann-subset-exact"
    assert glob_hits[0].id == ids[10] and glob_hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert {h.path for h in glob_hits} <= {f"/data/{p}/{i}.jpg" for p in ("v", "new") for i in range(10, 20)}
    assert store.update_index(force=True) in ("updated", "built")
    assert store.index_state()["indexed"] == 6300 - 2
    # below the threshold again: back to exact search
    monkeypatch.setenv("CLIPSEARCH_ANN_THRESHOLD", "100000")
    assert open_store(tmp_path / "s").update_index() == "dropped"


def test_hits_come_from_the_snapshot_that_was_searched(store_dir: Path) -> None:
    """A write landing between nearest() and hits_at() (another thread) must not shift the rows."""
    from clipsearch.collection import open_store

    rng = np.random.default_rng(3)
    store = open_store(store_dir, model=FakeEncoder())
    vecs = clustered(200, 32, 8, rng)
    ids = put_vectors(store, vecs)
    found = store.nearest(vecs[42], 5)
    store.remove(ids[:100])  # the next search sees a new version with other positions
    store.nearest(vecs[150], 1)
    assert store.hits_at(found)[0].id == ids[42]


def test_threads_sharing_a_store_take_turns_writing(store_dir: Path) -> None:
    import threading

    from clipsearch.collection import open_store

    store = open_store(store_dir, model=FakeEncoder())
    inside, overlaps = [0], []
    lock = threading.Lock()

    def writer() -> None:
        with store.writing():
            with lock:
                inside[0] += 1
                overlaps.append(inside[0])
            threading.Event().wait(0.05)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [1, 1, 1, 1]
