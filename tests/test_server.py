"""The HTTP API in process (FastAPI's TestClient) over a store built with a tiny random CLIP.

Also home of the helpers the other server tests share (``from test_server import ...``):
:func:`make_collection`, :func:`build_store`, :func:`running_server` and :data:`TOKEN`.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from images_helpers import HOSTILE_IMAGES
from PIL import Image, ImageDraw

from clipsearch.server import create_app

TOKEN = "test-token-0123456789abcdef"
BASE = "http://127.0.0.1"

SHAPES = {
    "red_circle": ((220, 30, 30), "ellipse"),
    "blue_square": ((30, 60, 220), "rectangle"),
    "green_triangle": ((30, 170, 60), "triangle"),
    "yellow_circle": ((235, 215, 20), "ellipse"),
    "purple_square": ((140, 40, 170), "rectangle"),
    "orange_triangle": ((245, 140, 20), "triangle"),
}
NOTES = (
    "The lighthouse keeper climbed the stairs every evening.\n\n"
    "Red foxes hunt at dawn. They are quick and clever.\n\n"
    "A green garden grows beside the old stone wall."
)


# -- shared helpers ----------------------------------------------------------------------------


def shape_image(colour: tuple[int, int, int], kind: str, size: tuple[int, int] = (96, 72), seed: int = 0) -> Image.Image:
    """A coloured shape on a pale background (with a little noise so every file differs)."""
    w, h = size
    rng = np.random.default_rng(seed)
    base = np.full((h, w, 3), 245, np.uint8)
    base = np.clip(base.astype(int) + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
    im = Image.fromarray(base, "RGB")
    d = ImageDraw.Draw(im)
    box = (w // 5, h // 6, 4 * w // 5, 5 * h // 6)
    if kind == "ellipse":
        d.ellipse(box, fill=colour)
    elif kind == "rectangle":
        d.rectangle(box, fill=colour)
    else:
        d.polygon([(w // 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=colour)
    return im


def make_collection(folder: Path) -> Path:
    """Six drawn shapes (PNG), three photos from the hostile test images (JPEG, JPEG, 16-bit TIFF), and notes.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, (colour, kind)) in enumerate(SHAPES.items()):
        shape_image(colour, kind, seed=i).save(folder / f"{name}.png")
    for name in ("hopper.jpg", "flower.jpg", "16bit.cropped.tif"):
        shutil.copy(HOSTILE_IMAGES / name, folder / name)
    (folder / "notes.txt").write_text(NOTES, encoding="utf-8")
    return folder


def build_store(model: Path, root: Path, collection: Path):
    """A store at ``root`` holding ``collection``, embedded with the model folder ``model``."""
    from clipsearch.collection import open_store

    store = open_store(root, model=str(model))
    summary = store.add([collection], workers=0)
    assert summary.failed == 0, summary.failures
    return store


def client_for(app) -> TestClient:
    return TestClient(app, base_url=BASE)


@contextmanager
def running_server(app) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    import uvicorn

    # proto=IPPROTO_TCP, or asyncio leaves Nagle on for accepted connections (it checks sock.proto),
    # and every keep-alive response after the first waits ~40 ms for a delayed ACK
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def item_by_name(store, name: str):
    table = store.to_arrow(columns=["id", "path"]).to_pylist()
    (row,) = [r for r in table if r["path"] and Path(r["path"]).name == name]
    return store.get(row["id"])


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_collection(tmp_path_factory.mktemp("collection"))


@pytest.fixture(scope="module")
def store(tiny_hf_clip: Path, collection: Path, tmp_path_factory: pytest.TempPathFactory):
    return build_store(tiny_hf_clip, tmp_path_factory.mktemp("stores") / "main", collection)


@pytest.fixture(scope="module")
def client(store) -> TestClient:
    return client_for(create_app(store, token=TOKEN))


@pytest.fixture
def fresh_store(tiny_hf_clip: Path, collection: Path, tmp_path: Path):
    """A store of its own over a copy of the collection, for tests that change either."""
    return build_store(tiny_hf_clip, tmp_path / "store", shutil.copytree(collection, tmp_path / "collection"))


def confident_first(hits: list[dict]) -> bool:
    """Ordered by calibrated confidence (the fused ranking of a search of both kinds)."""
    confidences = [h["confidence"] for h in hits]
    return confidences == sorted(confidences, reverse=True)


def ranked(hits: list[dict]) -> bool:
    scores = [h["score"] for h in hits]
    return scores == sorted(scores, reverse=True)


# -- basics ----------------------------------------------------------------------------------------


def test_health_config_and_stats(client: TestClient, store) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    config = client.get("/api/config").json()
    assert config["features"] == {
        "search_by_image": True,
        "classify": True,
        "localize": True,
        "ask": True,
        "add": True,
        "rerank": False,  # the tiny CLIP has no grid of cell embeddings
    }
    assert config["auth"] == {"reads": False, "writes": "token"}
    assert config["max_k"] == 1000
    stats = client.get("/api/stats").json()
    assert (stats["count"], stats["images"], stats["texts"]) == (12, 9, 3)
    assert stats["model"] == store.model_name


def test_get_search_is_the_library_search(client: TestClient, store) -> None:
    response = client.get("/api/search", params={"q": "a red circle", "k": 5})
    assert response.status_code == 200
    assert response.headers["server-timing"].startswith("search;dur=")
    hits = response.json()
    keys = {"id", "path", "text", "modality", "score", "confidence", "good_match", "match", "caption", "label"}
    assert [set(h) for h in hits] == [keys] * 5
    assert confident_first(hits)
    expected = [h.to_dict() for h in store.search("a red circle", k=5)]
    assert [h["id"] for h in hits] == [h["id"] for h in expected]
    np.testing.assert_allclose([h["score"] for h in hits], [h["score"] for h in expected], atol=1e-5)


def test_modality_and_min_score_filter(client: TestClient) -> None:
    images = client.get("/api/search", params={"q": "garden", "k": 50, "modality": "image"}).json()
    texts = client.get("/api/search", params={"q": "garden", "k": 50, "modality": "text"}).json()
    assert len(images) == 9 and {h["modality"] for h in images} == {"image"}
    assert len(texts) == 3 and {h["modality"] for h in texts} == {"text"}
    assert all(h["text"] for h in texts)
    everything = client.get("/api/search", params={"q": "garden", "k": 50}).json()
    cut = everything[5]["score"]
    kept = client.get("/api/search", params={"q": "garden", "k": 50, "min_score": cut}).json()
    assert kept == [h for h in everything if h["score"] >= cut]


def test_search_rerank_by_grid_cells(client: TestClient, collection: Path, tiny_sbert: Path, tmp_path: Path) -> None:
    import torch

    from clipsearch.models import dual

    # the tiny CLIP has no grid of cell embeddings: a clear 422, and the server stays up
    response = client.get("/api/search", params={"q": "a red circle", "k": 3, "rerank": 5})
    assert response.status_code == 422 and "no grid of cell embeddings" in response.json()["detail"]
    assert client.get("/api/config").json()["features"]["rerank"] is False  # the page hides its toggle
    # a dual encoder has one: GET and POST give the library's re-ranked images
    torch.manual_seed(0)
    cfg = dual.DualConfig(image_size=16, cnn_widths=(8, 16), cnn_blocks=(0, 1), embed_dim=16, text_tower=str(tiny_sbert),
                          text_head_dim=16, text_head_queries=2, text_head_heads=2)  # fmt: skip
    folder = dual.save_model(dual.build_dual(cfg).eval(), tmp_path / "tiny_dual")
    store = build_store(folder, tmp_path / "store", collection)
    grid_client = client_for(create_app(store, token=TOKEN))
    hits = grid_client.get("/api/search", params={"q": "a red circle", "k": 4, "rerank": 8}).json()
    expected = [h.to_dict() for h in store.search("a red circle", k=4, modality="image", rerank=8)]
    assert [h["id"] for h in hits] == [h["id"] for h in expected] and {h["modality"] for h in hits} == {"image"}
    np.testing.assert_allclose([h["score"] for h in hits], [h["score"] for h in expected], atol=1e-5)
    posted = grid_client.post("/api/search", json={"q": "a red circle", "k": 4, "rerank": 8}).json()
    assert [h["id"] for h in posted] == [h["id"] for h in hits]
    form = grid_client.post("/api/search", data={"q": "a red circle", "k": "4", "rerank": "8"},
                            files={"image": ("red.png", png_bytes(shape_image((220, 30, 30), "circle")), "image/png")})  # fmt: skip
    assert form.status_code == 200 and {h["modality"] for h in form.json()} == {"image"}
    assert grid_client.get("/api/config").json()["features"]["rerank"] is True
    response = grid_client.get("/api/search", params={"q": "a red circle", "modality": "text", "rerank": 8})
    assert response.status_code == 422 and "only images have grid cells" in response.json()["detail"]
    assert grid_client.get("/api/search", params={"q": "x", "rerank": -1}).status_code == 422
    # cell_weight reaches the library (GET, JSON and form alike), and bad ones are a 422
    for weight in (0, 1):
        expected = [h.to_dict() for h in store.search("a red circle", k=4, modality="image", rerank=8, cell_weight=weight)]
        params = {"q": "a red circle", "k": 4, "rerank": 8, "cell_weight": weight}
        got = grid_client.get("/api/search", params=params).json()
        assert [h["id"] for h in got] == [h["id"] for h in expected]
        np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in expected], atol=1e-5)
        assert [h["id"] for h in grid_client.post("/api/search", json=params).json()] == [h["id"] for h in got]
    form = grid_client.post("/api/search", data={"q": "a red circle", "k": "4", "rerank": "8", "cell_weight": "1"},
                            files={"image": ("red.png", png_bytes(shape_image((220, 30, 30), "circle")), "image/png")})  # fmt: skip
    assert form.status_code == 200
    for bad in (-1, "nan", "heavy", 1000):
        response = grid_client.get("/api/search", params={"q": "x", "cell_weight": bad})
        assert response.status_code == 422, (bad, response.text)
    # with neither option, the store's stored cells re-rank the images of a search
    assert store.has_cells
    default = grid_client.get("/api/search", params={"q": "a red circle", "k": 4, "modality": "image"}).json()
    expected = [h.to_dict() for h in store.search("a red circle", k=4, modality="image")]
    assert [h["id"] for h in default] == [h["id"] for h in expected]
    np.testing.assert_allclose([h["score"] for h in default], [h["score"] for h in expected], atol=1e-5)


def test_post_search_with_an_uploaded_image_finds_that_image_first(client: TestClient, store, collection: Path) -> None:
    data = (collection / "hopper.jpg").read_bytes()
    response = client.post("/api/search", files={"image": ("query.jpg", data, "image/jpeg")}, data={"k": "3"})
    assert response.status_code == 200, response.text
    hits = response.json()
    assert len(hits) == 3 and ranked(hits)
    assert Path(hits[0]["path"]).name == "hopper.jpg"
    assert hits[0]["score"] > 0.999


def test_post_search_composes_weighted_terms_like_the_library(client: TestClient, store) -> None:
    from clipsearch.search import Query, Term

    red = item_by_name(store, "red_circle.png")
    blue = item_by_name(store, "blue_square.png")
    body = {
        "q": "a circle",
        "text_weight": 0.5,
        "terms": [{"id": red.id, "weight": 2}, {"id": blue.id, "weight": -1}, {"text": "bright", "weight": 1.5}],
        "k": 6,
        "modality": "image",
    }
    hits = client.post("/api/search", json=body).json()
    query = Query(
        (
            Term("text", "a circle", 0.5),
            Term("item", red.id, 2.0),
            Term("item", blue.id, -1.0),
            Term("text", "bright", 1.5),
        )
    )
    expected = store.search(query, k=6, modality="image")
    assert [h["id"] for h in hits] == [h.id for h in expected]
    np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in expected], atol=1e-5)


def test_post_search_form_with_image_and_text(client: TestClient, store, collection: Path) -> None:
    data = (collection / "flower.jpg").read_bytes()
    only_image = client.post("/api/search", files={"image": ("f.jpg", data, "image/jpeg")}, data={"k": "12"}).json()
    mixed = client.post(
        "/api/search",
        files={"image": ("f.jpg", data, "image/jpeg")},
        data={"q": "the lighthouse keeper", "text_weight": "3", "k": "12"},
    ).json()
    assert confident_first(mixed) and len(mixed) == 12
    assert [h["id"] for h in mixed] != [h["id"] for h in only_image]  # the text term moved the query


def test_post_search_errors(client: TestClient) -> None:
    cases = [
        ({"json": {}}, 422, "empty query: give q, terms, or an image"),
        ({"json": {"q": "x", "bogus": 1}}, 422, "bogus: Extra inputs are not permitted"),
        ({"json": {"terms": [{"text": "a", "weight": 0}]}}, 422, "terms.0: weight must be non-zero (negative weights subtract)"),
        ({"json": {"terms": [{"text": "a", "id": "0123456789abcdef"}]}}, 422, "terms.0: a term has either a text or an id, not both and not neither"),
        ({"json": {"terms": [{"id": "0123456789abcdef"}]}}, 404, "no item with id 0123456789abcdef in this store"),
        ({"json": {"q": "   "}}, 422, "q: must contain a non-space character"),
        ({"content": b'{"q": "\\ud800"}', "headers": {"content-type": "application/json"}}, 422, "q: Input should be a valid string, unable to parse raw data as a unicode string"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, None),
        ({"content": b"q=dog", "headers": {"content-type": "text/plain"}}, 415, "send the query as application/json or multipart/form-data, not text/plain"),
        ({"data": {"q": "dog", "terms": "[oops"}}, 422, 'terms: must be a JSON list such as [{"text": "dog", "weight": 2}]'),
        ({"data": {"q": "dog", "color": "red"}}, 422, None),
        ({"files": {"image": ("x.png", b"not an image", "image/png")}}, 422, "image: not a recognised image format"),
    ]
    for kwargs, status, detail in cases:
        response = client.post("/api/search", **kwargs)
        assert response.status_code == status, (kwargs, response.text)
        body = response.json()
        assert isinstance(body["detail"], str) and body["detail"]
        if detail is not None:
            assert body["detail"] == detail, kwargs


def test_get_search_validation_messages(client: TestClient) -> None:
    for params, detail in [
        ({"q": "dog", "k": 0}, "k: Input should be greater than or equal to 1"),
        ({"q": "dog", "k": 1001}, "k: Input should be less than or equal to 1000"),
        ({"q": "dog", "modality": "video"}, "modality: Input should be 'image', 'text' or 'any'"),
        ({"q": "dog", "min_score": 2}, "min_score: Input should be less than or equal to 1"),
        ({}, "q: is required"),
    ]:
        response = client.get("/api/search", params=params)
        assert response.status_code == 422
        assert response.json()["detail"] == detail


# -- items --------------------------------------------------------------------------------------------


def test_item_metadata_and_unknown_ids(client: TestClient, store) -> None:
    hopper = item_by_name(store, "hopper.jpg")
    body = client.get(f"/api/items/{hopper.id}").json()
    assert body["id"] == hopper.id and body["modality"] == "image"
    assert (body["width"], body["height"]) == (128, 128)
    assert "vector" not in body
    response = client.get("/api/items/0000000000000000")
    assert response.status_code == 404
    assert response.json() == {"detail": "no item with id 0000000000000000 in this store"}


def test_thumbnail_is_made_once_and_cached_on_disk(tiny_hf_clip: Path, collection: Path, tmp_path: Path, monkeypatch) -> None:
    from clipsearch.server.thumbnails import Thumbnails

    store = build_store(tiny_hf_clip, tmp_path / "store", collection)
    client = client_for(create_app(store))
    flower = item_by_name(store, "flower.jpg")
    calls = []
    real_render = Thumbnails.render

    def counting_render(self, item):
        calls.append(item.id)
        return real_render(self, item)

    monkeypatch.setattr(Thumbnails, "render", counting_render)
    first = client.get(f"/api/items/{flower.id}/thumbnail")
    second = client.get(f"/api/items/{flower.id}/thumbnail")
    assert first.status_code == second.status_code == 200
    assert first.headers["content-type"] == "image/webp"
    assert "immutable" in first.headers["cache-control"]
    assert first.content == second.content
    assert calls == [flower.id]
    cached = store.root / "thumbnails" / f"{flower.id}.webp"
    assert cached.read_bytes() == first.content
    thumb = Image.open(io.BytesIO(first.content))
    assert max(thumb.size) <= 320
    assert not [p for p in cached.parent.iterdir() if p.name.endswith(".tmp")]


def test_image_is_the_indexed_file_and_odd_formats_become_png(client: TestClient, store, collection: Path) -> None:
    hopper = item_by_name(store, "hopper.jpg")
    response = client.get(f"/api/items/{hopper.id}/image")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert response.content == (collection / "hopper.jpg").read_bytes()
    tiff = item_by_name(store, "16bit.cropped.tif")
    response = client.get(f"/api/items/{tiff.id}/image")
    assert response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (tiff.width, tiff.height)


def test_text_items_have_no_image(client: TestClient, store) -> None:
    text_id = client.get("/api/search", params={"q": "foxes", "modality": "text", "k": 1}).json()[0]["id"]
    for what in ("thumbnail", "image"):
        response = client.get(f"/api/items/{text_id}/{what}")
        assert response.status_code == 404
        assert response.json() == {"detail": f"item {text_id} is a text passage, not an image"}


def test_a_file_changed_since_indexing_is_not_served(fresh_store) -> None:
    client = client_for(create_app(fresh_store))
    item = item_by_name(fresh_store, "red_circle.png")
    shape_image((0, 0, 0), "rectangle").save(item.path)
    for what in ("image", "thumbnail"):
        response = client.get(f"/api/items/{item.id}/{what}")
        assert response.status_code == 404
        assert response.json() == {
            "detail": f"the image file of item {item.id} is missing or has changed since it was indexed; index it again"
        }


def test_similar_excludes_the_item_itself(client: TestClient, store) -> None:
    red = item_by_name(store, "red_circle.png")
    hits = client.get(f"/api/items/{red.id}/similar", params={"k": 4}).json()
    assert len(hits) == 4 and confident_first(hits)
    assert red.id not in {h["id"] for h in hits}
    like = store.search(store.vectors([red.id])[0], k=5, query_kind="image")  # an image's vector: an image query
    expected = [h.id for h in like if h.id != red.id][:4]
    assert [h["id"] for h in hits] == expected


# -- tasks --------------------------------------------------------------------------------------------------


def test_classify_a_stored_image_and_an_upload(client: TestClient, store, collection: Path) -> None:
    red = item_by_name(store, "red_circle.png")
    body = client.post("/api/classify", data={"id": red.id, "labels": "circle, square, triangle", "top": "2"}).json()
    assert body["id"] == red.id
    assert len(body["predictions"]) == 2
    assert {p["label"] for p in body["predictions"]} <= {"circle", "square", "triangle"}
    assert body["predictions"][0]["prob"] >= body["predictions"][1]["prob"]
    upload = client.post(
        "/api/classify",
        files={"image": ("r.png", (collection / "red_circle.png").read_bytes(), "image/png")},
        data={"labels": "circle\nsquare\ntriangle", "top": "3"},
    ).json()
    assert upload["predictions"][0]["label"] == body["predictions"][0]["label"]
    assert sum(p["prob"] for p in upload["predictions"]) == pytest.approx(1.0, abs=1e-4)
    response = client.post("/api/classify", data={"id": red.id, "labels": "circle"})
    assert response.status_code == 422
    assert response.json()["detail"] == "labels: give at least two labels to choose between, not 1"
    response = client.post("/api/classify", data={"labels": "a, b"})
    assert response.status_code == 422
    assert response.json()["detail"] == "give either an uploaded image (field 'image') or an item id (field 'id'), not both"


def test_localize_json_map_and_png_overlay(client: TestClient, store) -> None:
    flower = item_by_name(store, "flower.jpg")
    loc = client.get(f"/api/items/{flower.id}/localize", params={"prompt": "a flower"}).json()
    width, height = loc["size"]
    assert (width, height) == (flower.width, flower.height)
    x0, y0, x1, y1 = loc["bbox"]
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    grid = np.asarray(loc["map"])
    assert grid.ndim == 2 and max(grid.shape) == 32
    png = client.get(f"/api/items/{flower.id}/localize", params={"prompt": "a flower", "format": "png"})
    assert png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (width, height)
    posted = client.post("/api/localize", data={"id": flower.id, "prompt": "a flower"}).json()
    assert posted["bbox"] == loc["bbox"]


def test_ask_answers_from_the_text_passages(client: TestClient) -> None:
    response = client.post("/api/ask", json={"question": "Who climbed the stairs?", "k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kind"] == "sentence"
    assert body["answer"] in NOTES
    assert len(body["passages"]) == 3


# -- adding images ----------------------------------------------------------------------------------------------


def test_adding_images_needs_the_token(fresh_store) -> None:
    image = png_bytes(shape_image((10, 200, 200), "ellipse", seed=42))
    files = {"files": ("teal.png", image, "image/png")}
    no_token_app = client_for(create_app(fresh_store))
    response = no_token_app.post("/api/items", files=files)
    assert response.status_code == 403
    assert response.json() == {"detail": "adding images is disabled: start the server with --token (or $CLIPSEARCH_TOKEN)"}
    client = client_for(create_app(fresh_store, token=TOKEN))
    response = client.post("/api/items", files=files)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    response = client.post("/api/items", files=files, headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401 and response.json() == {"detail": "wrong token"}
    assert len(fresh_store) == 12

    response = client.post("/api/items", files=files, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["summary"]["added"] == 1 and body["failed"] == []
    (added,) = body["added"]
    assert Path(added["path"]).parent == fresh_store.root / "uploads"
    hits = client.post("/api/search", files={"image": ("q.png", image, "image/png")}, data={"k": "1"}).json()
    assert hits[0]["id"] == added["id"] and hits[0]["score"] > 0.999
    assert client.get(f"/api/items/{added['id']}/thumbnail").status_code == 200


def test_session_cookie_carries_the_token(fresh_store) -> None:
    client = client_for(create_app(fresh_store, token=TOKEN, private=True))
    assert client.get("/api/stats").status_code == 401
    assert client.post("/api/session", json={"token": "nope"}).status_code == 401
    response = client.post("/api/session", json={"token": TOKEN})
    assert response.status_code == 204
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert client.get("/api/stats").status_code == 200


def test_private_mode_guards_every_api_route(store) -> None:
    client = client_for(create_app(store, token=TOKEN, private=True))
    hopper = item_by_name(store, "hopper.jpg")
    for path in ("/api/stats", "/api/search?q=dog", f"/api/items/{hopper.id}", f"/api/items/{hopper.id}/thumbnail"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200, path
    assert client.get("/health").status_code == 200
    assert client.get("/").status_code == 200
    with pytest.raises(ValueError, match=re.escape("private=True needs a token: every API call must present it")):
        create_app(store, private=True)


# -- concurrency ---------------------------------------------------------------------------------------------------


def test_searches_keep_working_while_indexing_runs(fresh_store, tmp_path: Path) -> None:
    from clipsearch.collection import open_store

    client = client_for(create_app(fresh_store))
    more = tmp_path / "more"
    more.mkdir()
    for i in range(40):
        shape_image((7 * i % 256, 200, 90), "ellipse" if i % 2 else "rectangle", seed=100 + i).save(more / f"extra_{i:02d}.png")
    writer = open_store(fresh_store.root)  # another Store object on the same folder, as `clipsearch index` would be
    errors: list[BaseException] = []

    def index() -> None:
        try:
            writer.add([more], workers=0, batch_size=2)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=index)
    thread.start()
    seen_counts = set()
    statuses = []
    while True:  # at least one search, then as many as fit while the 20 commits go in
        running = thread.is_alive()
        response = client.get("/api/search", params={"q": "a shape", "k": 100})
        statuses.append(response.status_code)
        seen_counts.add(len(response.json()) if response.status_code == 200 else -1)
        if not running:
            break
    thread.join()
    assert not errors
    assert statuses and set(statuses) == {200}
    final = client.get("/api/search", params={"q": "a shape", "k": 100}).json()
    assert len(final) == 52
    assert {Path(h["path"]).name for h in final} >= {f"extra_{i:02d}.png" for i in range(40)}
    assert all(n in range(12, 53) for n in seen_counts)


def test_uploads_and_searches_at_once(fresh_store) -> None:
    client = client_for(create_app(fresh_store, token=TOKEN))
    images = [png_bytes(shape_image((i * 20, 90, 200), "triangle", seed=300 + i)) for i in range(6)]
    results: list[int] = []

    def upload(i: int) -> None:
        response = client.post(
            "/api/items",
            files={"files": (f"u{i}.png", images[i], "image/png")},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        results.append(response.status_code)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        assert client.get("/api/search", params={"q": "triangle", "k": 20}).status_code == 200
    for t in threads:
        t.join()
    assert results == [200] * 6
    assert len(fresh_store) == 18


# -- errors, headers, the page ---------------------------------------------------------------------------------------


def test_internal_errors_are_one_json_line_without_a_trace(store, monkeypatch) -> None:
    app = create_app(store)
    client = TestClient(app, base_url=BASE, raise_server_exceptions=False)

    def explode() -> dict:
        raise RuntimeError("secret detail /home/someone/private")

    monkeypatch.setattr(app.state.clipsearch.store, "stats", explode)
    response = client.get("/api/stats")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error (RuntimeError); the server's log has the details"}
    assert "secret" not in response.text and "Traceback" not in response.text


def test_unknown_routes_and_methods_answer_json(client: TestClient) -> None:
    response = client.get("/api/nope")
    assert response.status_code == 404
    assert response.json() == {"detail": "no such page or API route: /api/nope"}
    response = client.delete("/api/search")
    assert response.status_code == 405
    assert response.json() == {"detail": "method DELETE is not allowed here"}


def test_cors_is_same_origin_unless_configured(store) -> None:
    origin = {"Origin": "https://elsewhere.example"}
    plain = client_for(create_app(store))
    response = plain.get("/api/search", params={"q": "dog"}, headers=origin)
    assert "access-control-allow-origin" not in response.headers
    preflight = {**origin, "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in plain.options("/api/search", headers=preflight).headers
    opened = client_for(create_app(store, cors_origins=("https://elsewhere.example",)))
    response = opened.get("/api/search", params={"q": "dog"}, headers=origin)
    assert response.headers["access-control-allow-origin"] == "https://elsewhere.example"
    other = opened.get("/api/search", params={"q": "dog"}, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_page_and_static_files_work_offline(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    for name, ctype in (("app.js", "javascript"), ("style.css", "text/css")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and ctype in response.headers["content-type"]
    texts = [page.text, client.get("/static/app.js").text, client.get("/static/style.css").text]
    for text in texts:  # nothing fetched from anywhere but this server
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
        assert not re.search(r"""url\(\s*["']?(https?:)?//""", text)
        assert not re.search(r"""(fetch|import)\(\s*["'`](https?:)?//""", text)
    assert 'loading: "lazy"' in texts[1]


def test_openapi_schema_describes_the_error_shape(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ("/health", "/api/search", "/api/items/{item_id}", "/api/items/{item_id}/thumbnail",
                 "/api/items/{item_id}/image", "/api/items/{item_id}/similar", "/api/stats", "/api/items",
                 "/api/classify", "/api/localize", "/api/items/{item_id}/localize", "/api/ask"):  # fmt: skip
        assert path in paths, path
    assert set(paths["/api/search"]["post"]["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    error = schema["components"]["schemas"]["HTTPValidationError"]
    assert error["properties"]["detail"]["type"] == "string"
    assert json.dumps(schema)  # serialisable as served


def test_what_a_new_user_tripped_on(client: TestClient, store, fresh_store) -> None:
    # HEAD / answers as GET / does (uptime checks use it)
    assert client.head("/").status_code == 200
    # a POST search takes its settings from the query string, as the GET does; the body wins
    assert len(client.post("/api/search?k=1", json={"q": "a shape"}).json()) == 1
    assert len(client.post("/api/search?k=1", json={"q": "a shape", "k": 2}).json()) == 2
    assert len(client.post("/api/search?k=1", data={"q": "a shape"}).json()) == 1
    bad = client.post("/api/search?kk=1", json={"q": "a shape"})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("unknown query parameter 'kk'")
    # an item by a unique prefix of its id, as the CLI prints and takes them
    hit = client.get("/api/search", params={"q": "a shape", "k": 1}).json()[0]
    assert client.get(f"/api/items/{hit['id'][:8]}").json()["id"] == hit["id"]
    assert client.get(f"/api/items/{hit['id'][:6]}/similar", params={"k": 2}).status_code == 200
    # an upload's summary counts the files refused before indexing among the failed
    writer = client_for(create_app(fresh_store, token=TOKEN))
    files = [("files", ("good.png", png_bytes(shape_image((250, 10, 10), "rectangle", seed=77)), "image/png")),
             ("files", ("bad.png", b"not an image", "image/png"))]  # fmt: skip
    body = writer.post("/api/items", files=files, headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert len(body["failed"]) == 1 and body["summary"]["failed"] == 1 and body["summary"]["added"] == 1


def test_a_server_other_machines_reach_shows_paths_relative_to_the_indexed_folders(fresh_store) -> None:
    local = client_for(create_app(fresh_store)).get("/api/search", params={"q": "a shape", "k": 3}).json()
    assert all(Path(h["path"]).is_absolute() for h in local)  # on this machine: where the files are
    headers = {"Authorization": f"Bearer {TOKEN}"}
    reachable = client_for(create_app(fresh_store, token=TOKEN, private=True))
    hits = reachable.get("/api/search", params={"q": "a shape", "k": 3}, headers=headers).json()
    indexed = Path(fresh_store.meta["roots"][0])  # the copy of the collection that was indexed
    assert hits and all(h["path"].startswith(indexed.name + "/") for h in hits), hits
    assert str(indexed) not in reachable.get(f"/api/items/{hits[0]['id']}", headers=headers).text
