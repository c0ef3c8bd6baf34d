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
