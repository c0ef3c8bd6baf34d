"""Search in every direction, query composition, filters, thresholds, and the search CLI."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from test_store import FakeEncoder, solid_image

from clipsearch.search import Query, Term, compose, parse_query
from clipsearch.collection import open_store


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIPSEARCH_STORE", raising=False)
    monkeypatch.delenv("CLIPSEARCH_ANN_THRESHOLD", raising=False)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Four solid-colour photos, a caption table and a text file of paragraphs."""
    root = tmp_path / "corpus"
    for i, colour in enumerate(["red", "green", "blue", "yellow"]):
        solid_image(root / "photos" / ("2023" if i < 2 else "2024") / f"{colour}.png", colour, noise=6, seed=i)
    (root / "notes.txt").write_text(
        "A red car parked outside.\n\nA calm blue sea at dawn.\n\nGreen fields and hills.\n"
    )
    (root / "labels.jsonl").write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"text": "yellow taxi in the rain", "label": "city"},
                {"text": "green forest path", "label": "nature"},
            ]
        )
    )
    return root


@pytest.fixture
def store(tmp_path: Path, corpus: Path):
    s = open_store(tmp_path / "store", model=FakeEncoder())
    summary = s.add([corpus], workers=0)
    assert summary.failed == 0 and len(s) == 9
    return s


# -- every direction -------------------------------------------------------------------------


def test_image_to_image_finds_itself_first(store, corpus: Path) -> None:
    for path in sorted((corpus / "photos").rglob("*.png")):
        hits = store.search(path, k=3, modality="image")
        assert hits[0].path == str(path) and hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert hits[1].score < 0.99


def test_text_to_text_finds_itself_first(store) -> None:
    for text in ("A calm blue sea at dawn.", "yellow taxi in the rain"):
        hits = store.search(text, k=2, modality="text")
        assert hits[0].text == text and hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_text_to_image(store, corpus: Path) -> None:
    for colour in ("red", "green", "blue", "yellow"):
        hits = store.search(f"a {colour} photo", k=1, modality="image")
        assert Path(hits[0].path).name == f"{colour}.png"


def test_image_to_text(store, corpus: Path) -> None:
    hits = store.search(corpus / "photos" / "2024" / "blue.png", k=1, modality="text")
    assert hits[0].text == "A calm blue sea at dawn."
    hits = store.search(corpus / "photos" / "2023" / "red.png", k=1, modality="text")
    assert hits[0].text == "A red car parked outside."


def test_like_an_item_in_the_store(store, corpus: Path) -> None:
    blue = store.search(corpus / "photos" / "2024" / "blue.png", k=1)[0]
    hits = store.search(parse_query(like=[blue.id[:8]]), k=2)
    assert hits[0].id == blue.id and hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_search_by_vector_and_pil_image(store, corpus: Path) -> None:
    from PIL import Image

    path = corpus / "photos" / "2023" / "green.png"
    v = store.get(store.search(path, k=1)[0].id, with_vector=True).vector
    assert store.search(v, k=1)[0].path == str(path)
    with Image.open(path) as im:
        assert store.search(im.convert("RGB"), k=1, modality="image")[0].path == str(path)


# -- composition -------------------------------------------------------------------------------


def test_parse_query_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = solid_image(tmp_path / "snow.jpg", "white")
    monkeypatch.chdir(tmp_path)
    q = parse_query(["2:dog", "+", "snow.jpg", "-", "green", "grass", "+", "id:abc123"])
    assert q.terms == (
        Term("text", "dog", 2.0),
        Term("image", "snow.jpg", 1.0),
        Term("text", "green grass", -1.0),
        Term("item", "abc123", 1.0),
    )
    assert img.exists()
    # one string is split like a shell line; words without operators are one text
    assert parse_query('"0.5:a red car" - "snow.jpg"').terms == (
        Term("text", "a red car", 0.5),
        Term("image", "snow.jpg", -1.0),
    )
    assert parse_query(["a", "red", "car"]).terms == (Term("text", "a red car"),)
    assert parse_query(["-", "night"], images=["x.png"]).terms == (Term("text", "night", -1.0), Term("image", "x.png"))
    assert parse_query(["1:10:30", "meeting"]).terms == (Term("text", "10:30 meeting"),)
    assert parse_query(["notes.txt"]).terms == (Term("text", "notes.txt"),)  # not an image file: text
    long = "x" * 5000 + ".png"  # too long to be a file name: text, not an error
    assert parse_query([long]).terms == (Term("text", long),)


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (["dog", "+"], "the query ends with '+'; put a term after it"),
        (["dog", "+", "-", "cat"], "two operators in a row ('+' then '-'); put a term between them"),
        (["2:"], "weight 2: has no term after it"),
        ([], "empty query: give a text, an image (--image PATH) or an item (--like ID)"),
        (["0:dog"], "term weight must be a non-zero number, got 0.0 for 0 x 'dog'"),
    ],
)
def test_parse_query_errors(tokens: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_query(tokens)


def test_compose_is_a_renormalised_weighted_sum_of_unit_vectors() -> None:
    rng = np.random.default_rng(0)
    v = rng.standard_normal((3, 8)) * np.array([[1.0], [5.0], [0.2]])  # lengths must not matter
    w = [2.0, 1.0, -1.0]
    units = v / np.linalg.norm(v, axis=1, keepdims=True)
    expected = 2 * units[0] + units[1] - units[2]
    np.testing.assert_allclose(compose(v, w), expected / np.linalg.norm(expected), rtol=1e-6)
    assert compose(v, w).dtype == np.float32
    with pytest.raises(
        ValueError, match=re.escape("the query's terms cancel out (their weighted sum is zero); change a weight")
    ):
        compose(np.stack([v[0], v[0]]), [1.0, -1.0])


def test_composed_query_scores_are_cosines_with_the_composed_vector(store, corpus: Path) -> None:
    from clipsearch.search import query_vector

    red = corpus / "photos" / "2023" / "red.png"
    q = parse_query(["2:green", "+", str(red), "-", "blue"])
    enc = store.encoder
    red_vec = store.get(store.search(red, k=1)[0].id, with_vector=True).vector
    green, blue = enc.encode_texts(["green", "blue"])
    expected = compose(np.stack([green, red_vec, blue]), [2.0, 1.0, -1.0])
    np.testing.assert_allclose(query_vector(store.store, store.encoder, q), expected, atol=1e-6)
    hits = store.search(q, k=9)
    vectors = {r["id"]: np.asarray(r["vector"]) for r in store.to_arrow(["id", "vector"]).to_pylist()}
    for h in hits:
        assert h.score == pytest.approx(float(vectors[h.id] @ expected), abs=1e-5)
    # images and texts in one list, ranked by calibrated confidence
    assert [h.confidence for h in hits] == sorted((h.confidence for h in hits), reverse=True)
    assert {h.modality for h in hits} == {"image", "text"}
    # colour arithmetic in the fake joint space: red + green - blue = yellow
    top = store.search(parse_query([str(red), "+", "green", "-", "blue"]), k=1, modality="image")[0]
    assert Path(top.path).name == "yellow.png"


# -- filters and thresholds ----------------------------------------------------------------------


def test_modality_filter(store) -> None:
    assert {h.modality for h in store.search("red", k=20, modality="image")} == {"image"}
    assert {h.modality for h in store.search("red", k=20, modality="text")} == {"text"}
    assert len(store.search("red", k=20)) == 9
    with pytest.raises(ValueError, match=re.escape("unknown modality 'video'; use one of image, text, any")):
        store.search("red", modality="video")


def test_where_filter_on_metadata(store) -> None:
    hits = store.search("green", k=10, where="label = 'nature'")
    assert [h.text for h in hits] == ["green forest path"]
    hits = store.search("red", k=10, where="width >= 40 AND modality = 'image'")
    assert len(hits) == 4
    with pytest.raises(ValueError, match=re.escape("bad --where expression 'colour = 1':")):
        store.search("red", where="colour = 1")


def test_path_glob_filter(store, corpus: Path) -> None:
    hits = store.search("red", k=10, path_glob="*/2024/*.png")
    assert sorted(Path(h.path).name for h in hits) == ["blue.png", "yellow.png"]
    assert store.search("red", k=10, path_glob="*.jsonl", modality="text")[0].label in ("city", "nature")
    assert store.search("red", k=10, path_glob="/nowhere/*") == []


def test_min_score_drops_weak_results(store) -> None:
    everything = store.search("a red car parked outside", k=9)
    cut = everything[2].score
    hits = store.search("a red car parked outside", k=9, min_score=cut)
    assert [h.id for h in hits] == [h.id for h in everything[:3]]
    assert store.search("a red car parked outside", k=9, min_score=0.9999999) == [] or everything[0].score >= 0.9999999
    with pytest.raises(ValueError, match=re.escape("min_score is a cosine between -1 and 1, got 2.0")):
        store.search("red", min_score=2.0)


def test_exact_flag_gives_the_same_results_on_a_small_store(store) -> None:
    a = store.search("blue sea", k=5)
    b = store.search("blue sea", k=5, exact=True)
    assert [(h.id, round(h.score, 6)) for h in a] == [(h.id, round(h.score, 6)) for h in b]


def test_bad_k_and_missing_item(store) -> None:
    from clipsearch.errors import StoreError

    with pytest.raises(ValueError, match=re.escape("k must be a positive whole number, got 0")):
        store.search("red", k=0)
    with pytest.raises(StoreError, match=re.escape(f"no item with id 'abcdef12' in store {store.root}")):
        store.search(parse_query(like=["abcdef12"]))


# -- CLI -----------------------------------------------------------------------------------------


@pytest.fixture
def cli_store(tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    made: dict[str, FakeEncoder] = {}
    monkeypatch.setattr(
        "clipsearch.models.registry.load_model", lambda name, **kw: made.setdefault(name, FakeEncoder(name))
    )
    from typer.testing import CliRunner

    from clipsearch.cli.main import app

    root = tmp_path / "cli-store"
    r = CliRunner().invoke(app, ["index", str(corpus), "--store", str(root), "--model", "fake", "-w", "0"])
    assert r.exit_code == 0, r.output
    return root


def run_cli(*args: str):
    from typer.testing import CliRunner

    from clipsearch.cli.main import app

    return CliRunner().invoke(app, list(args))


def test_cli_search_json_and_table(cli_store: Path, corpus: Path) -> None:
    red = corpus / "photos" / "2023" / "red.png"
    r = run_cli("search", "--image", str(red), "--store", str(cli_store), "-k", "3", "--json")
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    assert len(hits) == 3 and set(hits[0]) == {"id", "path", "text", "modality", "score", "confidence", "caption", "label"}
    assert hits[0]["path"] == str(red) and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert [h["confidence"] for h in hits] == sorted((h["confidence"] for h in hits), reverse=True)
    assert all(0.0 <= h["confidence"] <= 1.0 for h in hits)
    r = run_cli("search", "blue", "sea", "--store", str(cli_store), "--modality", "text", "-k", "2")
    assert r.exit_code == 0 and "A calm blue sea at dawn." in r.stdout and "score" in r.stdout
    # a search of both kinds whose results are all of one kind says where the other kind is
    r = run_cli("search", "--image", str(red), "--store", str(cli_store), "-k", "1")  # itself
    assert r.exit_code == 0
    assert "every result is an image: the store's 5 texts score lower against this query; --modality text lists them" in " ".join(r.stderr.split())
    r = run_cli("search", "--image", str(red), "--store", str(cli_store), "-k", "1", "--modality", "image")
    assert r.exit_code == 0 and "every result" not in r.stderr


def test_cli_composed_query_and_like(cli_store: Path, corpus: Path) -> None:
    r = run_cli(
        "search",
        "2:green",
        "+",
        "fields",
        "-",
        "red",
        "--store",
        str(cli_store),
        "--json",
        "-k",
        "1",
        "--modality",
        "text",
    )
    assert json.loads(r.stdout)[0]["text"] == "Green fields and hills."
    first = json.loads(run_cli("search", "yellow", "--store", str(cli_store), "--json", "-k", "1").stdout)[0]
    r = run_cli("search", "--like", first["id"], "--store", str(cli_store), "--json", "-k", "1")
    assert json.loads(r.stdout)[0]["id"] == first["id"]


def test_cli_min_score_message(cli_store: Path) -> None:
    r = run_cli("search", "red", "--store", str(cli_store), "--min-score", "0.999")
    assert r.exit_code == 0
    assert "no result above the threshold 0.999" in r.stderr
    r = run_cli("search", "red", "--store", str(cli_store), "--min-score", "0.999", "--json")
    assert json.loads(r.stdout) == []


def test_cli_errors_are_one_line(cli_store: Path, tmp_path: Path) -> None:
    r = run_cli("search", "red", "+", "--store", str(cli_store))
    assert r.exit_code == 2 and "the query ends with '+'; put a term after it" in r.stderr
    r = run_cli("search", "red", "--store", str(tmp_path / "none"))
    assert r.exit_code == 2 and "no store at" in r.stderr
    r = run_cli("search", "red", "--store", str(cli_store), "--where", "nonsense ==")
    assert r.exit_code == 2 and "bad --where expression 'nonsense =='" in r.stderr
    r = run_cli("search", "--image", str(tmp_path / "missing.jpg"), "--store", str(cli_store))
    assert r.exit_code == 2 and "missing.jpg: file not found" in r.stderr


def test_cli_grid_writes_a_contact_sheet(cli_store: Path, tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "sheet.png"
    r = run_cli("search", "red", "--store", str(cli_store), "--grid", str(out), "-k", "9")
    assert r.exit_code == 0, r.output
    with Image.open(out) as im:
        assert im.width >= 2 * 192 and im.height >= 2 * 192  # 4 image tiles: a 2x2 grid
    r = run_cli("search", "red", "--store", str(cli_store), "--grid", str(tmp_path / "sheet.gif"))
    assert r.exit_code == 2 and "--grid must end in .png, .jpg, .jpeg, .webp, not '.gif'" in r.stderr


def test_cli_stats_table(cli_store: Path) -> None:
    r = run_cli("stats", "--store", str(cli_store))
    assert r.exit_code == 0
    assert "9 (4 images, 5 texts)" in r.stdout and "fake (32-d)" in r.stdout


# -- a real model, end to end --------------------------------------------------------------------


def test_end_to_end_with_a_tiny_hf_clip(tiny_hf_clip: Path, tmp_path: Path, corpus: Path) -> None:
    """The real CLI path with a real (tiny, random) CLIP: every direction finds the query itself."""
    store_dir = tmp_path / "clip-store"
    r = run_cli(
        "index", str(corpus), "--store", str(store_dir), "--model", str(tiny_hf_clip), "--json", "-w", "2", "-b", "3"
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"added": 9, "updated": 0, "unchanged": 0, "failed": 0, "removed": 0}
    for path in sorted((corpus / "photos").rglob("*.png")):
        hits = json.loads(
            run_cli("search", "--image", str(path), "--store", str(store_dir), "--json", "-k", "2").stdout
        )
        assert hits[0]["path"] == str(path) and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    hits = json.loads(
        run_cli(
            "search", "Green", "fields", "and", "hills.", "--store", str(store_dir), "--json", "--modality", "text"
        ).stdout
    )
    assert hits[0]["text"] == "Green fields and hills." and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    # text -> image and image -> text return the right kind, best first
    hits = json.loads(
        run_cli("search", "a red photo", "--store", str(store_dir), "--json", "--modality", "image").stdout
    )
    assert len(hits) == 4 and {h["modality"] for h in hits} == {"image"}
    red = corpus / "photos" / "2023" / "red.png"
    hits = json.loads(
        run_cli("search", "--image", str(red), "--store", str(store_dir), "--json", "--modality", "text").stdout
    )
    assert len(hits) == 5 and {h["modality"] for h in hits} == {"text"}
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # the same query through the library gives the same ranking
    store = open_store(store_dir)
    assert [h.id for h in store.search(red, k=5, modality="text")] == [h["id"] for h in hits]
    assert json.loads(run_cli("index", str(corpus), "--store", str(store_dir), "--json").stdout)["unchanged"] == 9


def test_query_object_validation() -> None:
    with pytest.raises(ValueError, match=re.escape("empty query")):
        Query(())
    with pytest.raises(
        TypeError, match=re.escape("cannot search for a dict; give a str, Path, PIL image, vector or Query")
    ):
        from clipsearch.search import as_query

        as_query({"a": 1})


# -- grid re-ranking -------------------------------------------------------------------------------
class GridFakeEncoder(FakeEncoder):
    """FakeEncoder with a 2x2 grid: each cell holds its quadrant's colour, as a text names it."""

    def encode_patch_grid(self, images):
        return self.grid_from_pixels(self.preprocess_images(images))

    def grid_from_pixels(self, x):
        """``(n, 3, 16, 16)`` -> ``(n, 2, 2, 32)`` unit cells."""
        quads = [x[:, :, :8, :8], x[:, :, :8, 8:], x[:, :, 8:, :8], x[:, :, 8:, 8:]]
        colour = np.stack([q.mean(axis=(2, 3)) for q in quads], axis=1)  # (n, 4, 3)
        cells = np.zeros((len(x), 4, 32), np.float32)
        cells[:, :, :12] = np.tile(colour, (1, 1, 4))
        cells /= np.linalg.norm(cells, axis=-1, keepdims=True)
        return cells.reshape(len(x), 2, 2, 32)


class StoredGridFakeEncoder(GridFakeEncoder):
    """GridFakeEncoder that also gives its cells in the embedding pass, so indexing stores them."""

    def __init__(self):
        super().__init__()
        self.grid_reads = 0  # images whose grid was computed again after indexing

    def encode_pixels_with_grid(self, pixels):
        return self.encode_pixel_values(pixels), self.grid_from_pixels(pixels)

    def encode_patch_grid(self, images):
        self.grid_reads += len(images)
        return super().encode_patch_grid(images)


def test_grid_scores_by_hand() -> None:
    from clipsearch.similarity import grid_scores

    grids = np.zeros((2, 1, 2, 2), np.float32)
    grids[0, 0] = [[1, 0], [0, 1]]  # one cell on the query, one off it
    grids[1, 0] = [[0.6, 0.8], [0.8, 0.6]]  # both cells half on it
    scores = grid_scores([0.5, 0.7], grids, np.array([1.0, 0.0]))
    np.testing.assert_allclose(scores, [(0.5 + 1.0) / 2, (0.7 + 0.8) / 2], atol=1e-6)
    assert scores.dtype == np.float32
    # a weight on the cell: (vector + w * best cell) / (1 + w); 0 leaves the vector alone
    light = grid_scores([0.5, 0.7], grids, np.array([1.0, 0.0]), cell_weight=0.25)
    np.testing.assert_allclose(light, [(0.5 + 0.25 * 1.0) / 1.25, (0.7 + 0.25 * 0.8) / 1.25], atol=1e-6)
    np.testing.assert_allclose(grid_scores([0.5, 0.7], grids, np.array([1.0, 0.0]), cell_weight=0), [0.5, 0.7])
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="cell_weight must be a number >= 0"):
            grid_scores([0.5, 0.7], grids, np.array([1.0, 0.0]), cell_weight=bad)
    with pytest.raises(ValueError, match=re.escape("grids must be (n, gh, gw, d) for 3 scores, got (2, 1, 2, 2)")):
        grid_scores([0.5, 0.7, 0.1], grids, np.array([1.0, 0.0]))


def _half_photos(root: Path) -> Path:
    """Four 32x32 photos of two halves: a red half scores well for "red" by its cells, a dull
    reddish grey by its mean."""
    from PIL import Image

    root.mkdir()
    for i, (top, bottom) in enumerate([((230, 20, 20), (0, 0, 0)), ((230, 20, 20), (20, 20, 230)),
                                       ((120, 95, 90), (120, 95, 90)), ((20, 20, 230), (20, 230, 20))]):  # fmt: skip
        arr = np.zeros((32, 32, 3), np.uint8)
        arr[:16], arr[16:] = top, bottom
        Image.fromarray(arr).save(root / f"{i}.png")
    return root


def test_rerank_rescores_the_best_images_by_their_grid(tmp_path: Path) -> None:
    from PIL import Image

    from clipsearch.similarity import grid_scores

    root = _half_photos(tmp_path / "photos")
    enc = GridFakeEncoder()
    store = open_store(tmp_path / "store", model=enc)
    assert store.add([root], workers=0).failed == 0
    assert not store.has_cells  # this model gives no cells while embedding: nothing re-ranks by default
    plain = store.search("red", k=4, modality="image")
    assert plain == store.search("red", k=4, modality="image", rerank=0)
    reranked = store.search("red", k=2, modality="image", rerank=3, cell_weight=1)
    # the 3 best by vector, re-scored by the same rule the library documents, best first
    q = enc.encode_texts(["red"])[0]
    images = [Image.open(h.path).convert("RGB") for h in plain[:3]]
    expected = grid_scores([h.score for h in plain[:3]], enc.encode_patch_grid(images), q, cell_weight=1)
    order = np.argsort(-expected, kind="stable")[:2]
    assert [h.id for h in reranked] == [plain[i].id for i in order]
    np.testing.assert_allclose([h.score for h in reranked], expected[order], atol=1e-5)
    assert [h.id for h in reranked] != [h.id for h in plain[:2]]  # the grid changed the order
    assert Path(plain[0].path).name == "2.png" and Path(reranked[0].path).name == "0.png"  # red half first
    # a light cell weight blends the same cells in less; 0.25 is the default weight
    light = store.search("red", k=3, modality="image", rerank=3, cell_weight=0.25)
    expected = grid_scores([h.score for h in plain[:3]], enc.encode_patch_grid(images), q, cell_weight=0.25)
    assert {h.id: h.score for h in light} == pytest.approx({h.id: float(s) for h, s in zip(plain[:3], expected)})
    assert store.search("red", k=3, modality="image", rerank=3) == light
    for bad in (-1, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="cell_weight must be a number >= 0"):
            store.search("red", k=2, modality="image", rerank=3, cell_weight=bad)
    # an image gone from disk keeps its vector score instead of failing the search
    Path(plain[0].path).unlink()
    again = {h.id: h.score for h in store.search("red", k=3, modality="image", rerank=3)}
    assert again[plain[0].id] == pytest.approx(plain[0].score)
    # what cannot be reranked says so
    with pytest.raises(ValueError, match="search with modality 'image' or 'any', not 'text'"):
        store.search("red", k=2, modality="text", rerank=3)
    plain_store = open_store(tmp_path / "store2", model=FakeEncoder())
    plain_store.add([root], workers=0)
    with pytest.raises(ValueError, match="has no grid of cell embeddings to rerank with"):
        plain_store.search("red", k=2, modality="image", rerank=3)


def test_stored_cells_rerank_by_default_without_reading_images(tmp_path: Path) -> None:
    from PIL import Image

    from clipsearch.search import DEFAULT_CELL_WEIGHT, DEFAULT_RERANK
    from clipsearch.similarity import grid_scores

    root = _half_photos(tmp_path / "photos")
    (root / "notes.txt").write_text("a red note\n\na blue note\n")
    enc = StoredGridFakeEncoder()
    store = open_store(tmp_path / "store", model=enc)
    assert store.add([root], workers=0).failed == 0
    assert store.has_cells and store.stats()["cells"] == 4
    images = {h.id: h for h in store.search("red", k=10, modality="image", rerank=0)}
    cells = store.cells(list(images) + ["0123456789abcdef"])  # an unknown id is left out
    assert set(cells) == set(images)  # one grid per image; texts have none
    for item_id, grid in cells.items():
        pixels = enc.preprocess_images([Image.open(images[item_id].path).convert("RGB")])
        np.testing.assert_allclose(grid, enc.grid_from_pixels(pixels)[0], atol=1e-3)  # float16 on disk
    # with no rerank asked, the search re-scores the best DEFAULT_RERANK by their stored cells
    q = enc.encode_texts(["red"])[0]
    plain = list(images.values())
    expected = grid_scores([h.score for h in plain], np.stack([cells[h.id] for h in plain]), q,
                           cell_weight=DEFAULT_CELL_WEIGHT)  # fmt: skip
    default = store.search("red", k=4, modality="image")
    assert len(plain) < DEFAULT_RERANK  # so every image was re-scored
    assert {h.id: h.score for h in default} == pytest.approx({h.id: float(s) for h, s in zip(plain, expected)})
    assert [h.score for h in default] == sorted((h.score for h in default), reverse=True)
    assert default == store.search("red", k=4, modality="image", rerank=DEFAULT_RERANK, cell_weight=DEFAULT_CELL_WEIGHT)
    assert enc.grid_reads == 0  # the cells came from the store, no image was read again
    # texts keep their vector scores when a search of both kinds re-ranks the images among them
    mixed = store.search("red", k=10)
    texts = [h for h in mixed if h.modality == "text"]
    assert texts and {h.id: h.score for h in texts} == pytest.approx(
        {h.id: h.score for h in store.search("red", k=10, modality="text")}
    )
    # an image gone from disk is still re-scored by its stored cells
    Path(default[0].path).unlink()
    assert store.search("red", k=4, modality="image")[0] == default[0]
    # removing an item removes its cells
    gone = default[1]
    assert store.remove([gone.path]) == 1
    assert gone.id not in store.cells([gone.id]) and store.stats()["cells"] == 3
    assert enc.grid_reads == 0
    # cells=False (index --no-cells) keeps vectors only: searches then rank by the vectors
    lean = open_store(tmp_path / "lean", model=enc)
    assert lean.add([root], workers=0, cells=False).failed == 0
    assert not lean.has_cells and lean.stats()["cells"] == 0
    assert lean.search("red", k=3, modality="image") == lean.search("red", k=3, modality="image", rerank=0)


def test_reindexing_gives_stored_images_the_cells_they_lack(tmp_path: Path) -> None:
    from PIL import Image

    root = _half_photos(tmp_path / "photos")
    (root / "notes.txt").write_text("a red note\n")
    enc = StoredGridFakeEncoder()
    store = open_store(tmp_path / "store", model=enc)
    assert store.add([root], workers=0, cells=False).failed == 0
    assert not store.has_cells
    # a store from before the header said whether the model has a grid: the model is asked
    meta_file = tmp_path / "store" / "meta.json"
    meta = json.loads(meta_file.read_text())
    assert meta.pop("grid") is True
    meta_file.write_text(json.dumps(meta))
    store = open_store(tmp_path / "store", model=enc)
    vectors = {r["id"]: r["vector"] for r in store.to_arrow(["id", "vector"]).to_pylist()}
    version = store.version
    broken = root / "3.png"  # unreadable now, same size and mtime: it keeps its vector, gets no cells
    st = broken.stat()
    broken.write_bytes(bytes(st.st_size))
    os.utime(broken, ns=(st.st_atime_ns, st.st_mtime_ns))
    s = store.add([root], workers=0)
    assert s.to_dict() == {"added": 0, "updated": 0, "unchanged": 5, "failed": 0, "removed": 0}
    assert (s.embedded, s.cells_added) == (0, 3)
    assert json.loads(meta_file.read_text())["grid"] is True  # said now, for the runs to come
    assert store.version == version  # the items were not rewritten
    assert vectors == {r["id"]: r["vector"] for r in store.to_arrow(["id", "vector"]).to_pylist()}
    assert store.stats()["cells"] == 3
    images = {h.id: h for h in store.search("red", k=10, modality="image", rerank=0)}
    for item_id, grid in store.cells(list(images)).items():
        pixels = enc.preprocess_images([Image.open(images[item_id].path).convert("RGB")])
        np.testing.assert_allclose(grid, enc.grid_from_pixels(pixels)[0], atol=1e-3)
    # once they have them, another run adds none and reads no image
    again = store.add([root], workers=0)
    assert (again.unchanged, again.cells_added, again.embedded) == (5, 0, 0)


def test_stats_says_when_some_images_lack_cells() -> None:
    from clipsearch.cli.store import _cells_line

    assert _cells_line(0, 4) == "none kept"
    assert _cells_line(3, 4) == "kept for 3 of 4 images; index the same folders again to add the rest"
    assert _cells_line(4, 4) == "kept for 4 images (search re-ranks by them)"
    assert _cells_line(1, 1) == "kept for 1 image (search re-ranks by them)"


def test_cli_search_table_shows_an_images_caption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("clipsearch.models.registry.load_model", lambda name, **kw: FakeEncoder(name))
    solid_image(tmp_path / "pics" / "red.png", "red")
    (tmp_path / "pics" / "captions.jsonl").write_text('{"image": "red.png", "caption": "a red square at dusk"}\n')
    store = tmp_path / "store"
    assert run_cli("index", str(tmp_path / "pics"), "--store", str(store), "--model", "fake", "-w", "0").exit_code == 0
    r = run_cli("search", "red", "--store", str(store), "-k", "1")
    assert r.exit_code == 0, r.output
    cells = re.sub(r"[\s│]", "", r.stdout)  # the table folds long cells over lines
    assert str(tmp_path / "pics" / "red.png") + "aredsquareatdusk" in cells
    hit = json.loads(run_cli("search", "red", "--store", str(store), "-k", "1", "--json").stdout)[0]
    assert (hit["caption"], hit["label"]) == ("a red square at dusk", None)


def test_a_query_naming_a_missing_image_file_says_so(tmp_path: Path) -> None:
    from PIL import Image

    with pytest.raises(ValueError, match=r"^'nope\.jpg' looks like an image file, but there is no file at that path; "):
        parse_query(["nope.jpg"])
    assert parse_query(["nope.jpg", "photo"]).terms[0].kind == "text"  # more words: a text
    image = tmp_path / "here.png"
    Image.new("RGB", (8, 8)).save(image)
    assert parse_query([str(image)]).terms[0].kind == "image"
