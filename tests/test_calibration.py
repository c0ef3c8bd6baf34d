"""Calibrated confidence (clipsearch.calibration): the fit on a synthetic store whose matches are
known, the fused ranking and "no good match" on the demo store, and ``ask`` declining."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clipsearch.calibration import (
    MIN_CONFIDENCE,
    Calibration,
    _z,
    confidence_word,
    fit_logistic,
    is_stale,
    stored_calibration,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def synthetic():
    """A 64-d store of 300 images and 300 texts on 30 topics, texts shifted along one shared
    direction (the modality gap: every text is nearer a text query than any image is), and
    background queries on no topic. Item ``j`` of either kind is on topic ``j % 30``."""
    rng = np.random.default_rng(7)
    topics = _unit(rng.standard_normal((30, 64)))
    gap = _unit(rng.standard_normal(64))
    n = 300
    images = _unit(topics[np.arange(n) % 30] + 0.5 * _unit(rng.standard_normal((n, 64))))
    texts = _unit(topics[np.arange(n) % 30] + 0.5 * _unit(rng.standard_normal((n, 64))) + 1.2 * gap)
    background_queries = _unit(_unit(rng.standard_normal((60, 64))) + 1.2 * gap)  # text queries about nothing here
    return topics, gap, images, texts, background_queries


def _calibration(synthetic) -> Calibration:
    _, _, images, texts, bq = synthetic
    return Calibration({}, {"image": images, "text": texts}, {"text": bq, "image": images})


def test_the_fit_separates_known_matches_from_non_matches(synthetic) -> None:
    topics, gap, images, texts, bq = synthetic
    cal = _calibration(synthetic)
    rng = np.random.default_rng(1)
    # known matches: a text query on topic t against an image on topic t; non-matches: background
    # queries (on no topic) against their best image, themselves left out of the item side
    queries = _unit(topics[np.arange(60) % 30] + 0.5 * _unit(rng.standard_normal((60, 64))) + 1.2 * gap)
    on_topic = np.array([j for j in range(len(images)) if j % 30 == 0])
    z_pos = np.concatenate([cal.z(q, "text", "image", images[on_topic + t % 30] @ q, images[on_topic + t % 30])
                            for t, q in enumerate(queries)])  # fmt: skip
    scores = bq.astype(np.float64) @ images.T
    z_neg = _z(bq, images, scores, images, bq, leave_out=range(len(bq))).max(1)
    fit = fit_logistic(z_pos, z_neg)
    assert fit["how"] == "fitted" and fit["a"] > 0
    cal.fits["text"] = fit
    assert np.mean(cal.confidence(z_pos, "text") >= fit["line"]) > 0.9  # matches are called good
    assert np.mean(cal.confidence(z_neg, "text") < fit["line"]) >= 0.9  # the best of nothing is not
    assert np.median(z_pos) > np.quantile(z_neg, 0.9)


def test_z_removes_the_modality_gap(synthetic) -> None:
    """A text query about topic 3: by cosine every text outranks the best image; by z, the
    images of topic 3 stand beside the texts of topic 3, above every text of another topic."""
    topics, gap, images, texts, _ = synthetic
    cal = _calibration(synthetic)
    q = _unit(topics[3] + 1.2 * gap)
    s_img, s_txt = images @ q, texts @ q
    off_topic = np.arange(len(texts)) % 30 != 3
    assert s_txt[off_topic].max() > s_img.max()  # the gap: raw cosines put a wrong text first
    z_img = cal.z(q, "text", "image", s_img, images)
    z_txt = cal.z(q, "text", "text", s_txt, texts)
    on = np.arange(len(images)) % 30 == 3
    assert z_img[on].min() > z_txt[off_topic].max()
    assert z_txt[~off_topic].min() > z_img[~on].max()


def test_item_side_z_discounts_a_hub(synthetic) -> None:
    """A text near every text query (a heading, a hub) has a high cosine with everything, and a
    low item-side z."""
    _, gap, images, texts, bq = synthetic
    cal = _calibration(synthetic)
    hub = _unit(bq.mean(0, keepdims=True))  # where all the text queries point, more or less
    q = _unit(_unit(np.random.default_rng(3).standard_normal(64)) + 1.2 * gap)  # a query on no topic
    raw_hub, raw_best = float(hub[0] @ q), float((texts @ q).max())
    assert raw_hub > raw_best
    z_hub = cal.z(q, "text", "text", [raw_hub], hub)[0]
    z_texts = cal.z(q, "text", "text", texts @ q, texts)
    assert z_hub < z_texts.max() and z_hub < 2.0  # first by cosine, not by z, and far from a match


def test_fit_logistic_defaults_when_positives_are_few() -> None:
    fit = fit_logistic([5.0, 6.0], np.random.default_rng(0).normal(0, 1, 200))
    assert fit["how"] == "default" and fit["c"] >= 3.0 and fit["line"] == MIN_CONFIDENCE
    assert confidence_word(0.9) == "strong" and confidence_word(0.55, 0.5) == "good"
    assert confidence_word(0.4, 0.5) == "weak" and confidence_word(0.1, 0.5) == "none"


def test_store_keeps_its_fit_and_refits_as_it_grows(tmp_path: Path) -> None:
    from test_store import FakeEncoder, solid_image

    from clipsearch.collection import open_store

    corpus = tmp_path / "corpus"
    for i, colour in enumerate(["red", "green", "blue", "yellow"]):
        solid_image(corpus / f"{colour}.png", colour, noise=6, seed=i)
    (corpus / "notes.txt").write_text("A red car parked outside.\n\nA calm blue sea at dawn.\n\nGreen fields and hills.\n")
    store = open_store(tmp_path / "store", model=FakeEncoder())
    store.add([corpus], workers=0)
    cal = stored_calibration(store.store)
    assert cal is not None and (tmp_path / "store" / "calibration.json").is_file()
    header = json.loads((tmp_path / "store" / "calibration.json").read_text())
    assert header["rows"] == 7 and set(header["fits"]) == {"text", "image"}
    assert not is_stale(store.store, cal.header)
    hits = store.search("a red photo", k=7)
    assert all(0.0 <= h.confidence <= 1.0 for h in hits) and hits.min_confidence == cal.min_confidence("text")
    assert [h.confidence for h in hits] == sorted((h.confidence for h in hits), reverse=True)
    # the store grows by more than a tenth: indexing refits
    for i in range(3):
        solid_image(corpus / f"more{i}.png", (40 * i, 200, 90), noise=6, seed=10 + i)
    store.add([corpus], workers=0)
    assert json.loads((tmp_path / "store" / "calibration.json").read_text())["rows"] == 10
    # another model (its probe moved): the fit no longer holds
    assert is_stale(store.store, {**stored_calibration(store.store).header, "probe": "another"})
    # raw cosines are still there, and the old behaviour on request
    raw = store.search("a red photo", k=3, calibrate=False)
    assert all(h.confidence is None for h in raw) and raw.min_confidence is None
    assert [h.score for h in raw] == sorted((h.score for h in raw), reverse=True)
    with pytest.raises(ValueError, match="min_confidence is a calibrated confidence between 0 and 1"):
        store.search("a red photo", min_confidence=2.0)
    kept = store.search("a red photo", k=7, min_confidence=0.0001)
    assert all(h.confidence >= 0.0001 for h in kept)


# -- the demo store: images, their captions and a few off-topic notes ----------------------------


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory):
    from clipsearch.collection import open_store
    from clipsearch.demo import run_demo

    report = run_demo(tmp_path_factory.mktemp("demo"), n=300, seed=0)
    return open_store(report.store)


def _relevant(hit, colour: str, shape: str) -> bool:
    """An image showing a ``colour`` ``shape``, or a caption saying so (the notes never are)."""
    from clipsearch.world.notes import NOTES_FILE

    if (hit.source or "").endswith(NOTES_FILE):
        return False
    objects = hit.extra.get("objects", []) if hit.modality == "image" else (hit.extra.get("claim") or {}).get("objects", [])
    return any(o.get("color") == colour and o.get("shape") == shape for o in objects)


def test_fused_ranking_on_the_demo_store_is_as_precise_as_images_alone(demo_store) -> None:
    """Every "{colour} {shape}" query in the held-out (eval) phrasing: precision@5 of the fused
    list of images and texts within 5 points of the image-only list's; by raw cosine the texts
    (notes included) take the top places."""
    from clipsearch.world import COLORS, SHAPES, object_query

    p = {"image": [], "fused": [], "raw": []}
    for colour in COLORS:
        for shape in SHAPES:
            q = object_query(colour, shape, "eval")
            for name, options in (("image", {"modality": "image"}), ("fused", {}), ("raw", {"calibrate": False})):
                hits = demo_store.search(q, k=5, **options)
                p[name].append(np.mean([_relevant(h, colour, shape) for h in hits]))
    image, fused, raw = (float(np.mean(p[n])) for n in ("image", "fused", "raw"))
    assert fused >= image - 0.05, (fused, image)
    assert raw < image - 0.2, (raw, image)  # what the fusion mends


def test_absent_things_get_no_confident_result_on_the_demo_store(demo_store) -> None:
    for query in ("a photo of a giraffe", "the quarterly tax report"):
        hits = demo_store.search(query, k=5)
        assert hits and hits.no_good_match, [(h.modality, h.score, h.confidence) for h in hits]
        assert all(h.confidence < hits.min_confidence for h in hits)
        assert demo_store.search(query, k=5, min_confidence=hits.min_confidence) == []
    present = demo_store.search("a red circle", k=5)
    assert not present.no_good_match and max(h.confidence for h in present) >= present.min_confidence
    assert sum(_relevant(h, "red", "circle") for h in present) >= 3


def test_cli_and_api_say_no_good_match(demo_store) -> None:
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from clipsearch.cli.main import app
    from clipsearch.server import create_app

    root = str(demo_store.root)
    r = CliRunner().invoke(app, ["search", "a", "photo", "of", "a", "giraffe", "--store", root, "-k", "3"])
    assert r.exit_code == 0 and "No good match" in r.stderr and "confidence" in r.stdout
    r = CliRunner().invoke(app, ["search", "a", "red", "circle", "--store", root, "-k", "3", "--json"])
    assert r.exit_code == 0 and "No good match" not in r.stderr
    hits = json.loads(r.stdout)
    assert all(0 <= h["confidence"] <= 1 for h in hits)
    r = CliRunner().invoke(app, ["search", "a", "photo", "of", "a", "giraffe", "--store", root, "--min-confidence", "0.99"])
    assert r.exit_code == 0 and "no result with confidence 0.99 or more" in r.stderr

    client = TestClient(create_app(demo_store), base_url="http://127.0.0.1")
    response = client.get("/api/search", params={"q": "a photo of a giraffe", "k": 5})
    assert response.status_code == 200 and response.headers["x-no-good-match"] == "1"
    assert all(h["good_match"] is False and h["match"] in ("weak", "none") for h in response.json())
    response = client.get("/api/search", params={"q": "a red circle", "k": 5})
    assert response.headers["x-no-good-match"] == "0" and any(h["good_match"] for h in response.json())
    line = float(response.headers["x-min-confidence"])
    kept = client.post("/api/search", json={"q": "a red circle", "k": 5, "min_confidence": line}).json()
    assert kept and all(h["confidence"] >= line for h in kept)


# -- ask declines ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def notes_store(tmp_path_factory: pytest.TempPathFactory):
    """The demo notes in a store of their own, with the sentence encoder a text store gets."""
    from clipsearch.collection import open_store
    from clipsearch.world.notes import NOTES, NOTES_FILE

    root = tmp_path_factory.mktemp("notes")
    (root / "docs").mkdir()
    (root / "docs" / NOTES_FILE).write_text(NOTES, encoding="utf-8")
    store = open_store(root / "store", model="minilm")
    store.add([root / "docs"], workers=0)
    return store


def test_ask_declines_an_unanswerable_question_with_the_sentence_fallback(notes_store) -> None:
    from clipsearch.tasks.qa import StoreRetriever, ask

    retriever = StoreRetriever(notes_store)
    off = ask("Who painted the Mona Lisa?", retriever, k=3)
    assert off.declined and "no passage matches the question well" in off.declined_because
    assert off.to_dict()["declined"] is True and off.answer.kind == "sentence"
    on = ask("How long do red lentils take to cook?", retriever, k=3)
    assert not on.declined and "fifteen minutes" in on.answer.text
    assert ask("Who painted the Mona Lisa?", retriever, k=3, decline=False).declined is False


def test_ask_declines_an_unanswerable_question_with_the_tiny_reader(notes_store, tmp_path: Path) -> None:
    from qa_tiny_models import save_tiny_qa

    from clipsearch.models.reader import load_reader
    from clipsearch.tasks.qa import StoreRetriever, ask

    reader = load_reader(str(save_tiny_qa(tmp_path / "reader", seed=2)))
    result = ask("How many moons does Neptune have?", StoreRetriever(notes_store), k=3, reader=reader)
    assert result.answer.kind == "span" and result.answer.no_answer_logit is not None
    assert result.declined and result.to_dict()["declined_because"].startswith("no passage matches")


def test_ask_held_out_questions_on_the_notes(notes_store) -> None:
    """The notes' held-out questions: at least 80% of the unanswerable ones declined; of the
    answerable ones, no more than one (of 12) lost to a wrong decline."""
    from clipsearch.tasks.qa import StoreRetriever, ask, normalize_answer
    from clipsearch.world.notes import NOTE_QUESTIONS, OFF_TOPIC_QUESTIONS

    retriever = StoreRetriever(notes_store)
    declined = [ask(q, retriever, k=3).declined for q in OFF_TOPIC_QUESTIONS]
    assert np.mean(declined) >= 0.8
    right_before = right_after = 0
    for question, answer in NOTE_QUESTIONS:
        result = ask(question, retriever, k=3)
        found = normalize_answer(answer) in normalize_answer(result.answer.text)
        right_before += found
        right_after += found and not result.declined
    assert right_before - right_after <= 1, (right_before, right_after)


def test_ask_cli_says_no_good_answer(notes_store) -> None:
    from typer.testing import CliRunner

    from clipsearch.cli.main import app

    root = str(notes_store.root)
    r = CliRunner().invoke(app, ["ask", "Who painted the Mona Lisa?", "--store", root])
    assert r.exit_code == 0 and "No good answer" in r.stdout and "no passage matches the question well" in r.stdout
    r = CliRunner().invoke(app, ["ask", "When should garlic be planted?", "--store", root, "--json"])
    out = json.loads(r.stdout)
    assert r.exit_code == 0 and out["declined"] is False and "October" in out["answer"]
    r = CliRunner().invoke(app, ["ask", "When should garlic be planted?", "--store", root, "--json", "--min-confidence", "1"])
    assert json.loads(r.stdout)["declined"] is True
