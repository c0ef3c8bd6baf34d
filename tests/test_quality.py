"""``clipsearch evaluate demo``: the metric arithmetic, and a full run with tiny models."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clipsearch import world as dw
from clipsearch.models import dual
from clipsearch.models.base import Encoder, ModelInfo, Preprocess
from clipsearch.tasks.metrics import expected_recall_at_k, precision_at_k, recall_at_k, strict_accuracy
from clipsearch.train.quality import ALL_PAIRS, evaluate_demo_quality

TINY_SIZES = dict(n_gallery=12, n_scenes=8, n_single=11)
METRIC_IDS = {
    "retrieval_r1": 0.5,
    "retrieval_r10": 0.9,
    "retrieval_vector_r1": None,  # the same rankings by the image vectors alone
    "retrieval_vector_r10": None,
    "retrieval_true_r1": None,
    "retrieval_true_r10": None,
    "retrieval_best_r1": None,
    "retrieval_best_r10": None,
    "zero_shot_shape": 0.95,
    "zero_shot_color": 0.95,
    "zero_shot_pair_all": None,
    "zero_shot_position": None,
    "zero_shot_size": None,
    "held_out_retrieval_p10": 0.9,
    "held_out_retrieval_p10_vector": None,
    "held_out_zero_shot_pair": 0.70,
    "phrasing_eval_p5": 0.8,
    "phrasing_train_p5": None,
    "phrasing_gap": 0.05,
    "phrasing_eval_p5_vector": None,
    "phrasing_train_p5_vector": None,
    "phrasing_eval_p5_rerank": None,  # models with a grid only: search --rerank 50 --cell-weight 1
    "phrasing_train_p5_rerank": None,
}


# -- arithmetic on hand-made matrices ------------------------------------------------------------
def test_precision_and_recall_at_k_on_a_hand_made_matrix() -> None:
    scores = np.array(
        [
            [0.9, 0.8, 0.7, 0.6, 0.5],  # ranking 0 1 2 3 4
            [0.1, 0.9, 0.3, 0.8, 0.2],  # ranking 1 3 2 4 0
            [0.5, 0.5, 0.5, 0.1, 0.0],  # a three-way tie at the top
            [0.3, 0.2, 0.1, 0.0, -1.0],
        ]
    )
    relevant = np.array(
        [
            [True, False, True, True, False],  # top 2: hit, miss
            [True, False, False, False, False],  # the only relevant item ranks last
            [False, True, False, False, False],  # tied with two irrelevant items: ranks third
            [False, False, False, False, False],  # nothing relevant: left out
        ]
    )
    p2 = precision_at_k(scores, relevant, 2)
    np.testing.assert_allclose(p2[:3], [1 / 2, 0 / 1, 0 / 1])  # min(k, relevant) = 2, 1, 1
    assert math.isnan(p2[3])
    p3 = precision_at_k(scores, relevant, 3)
    np.testing.assert_allclose(p3[:3], [2 / 3, 0 / 1, 1 / 1])
    np.testing.assert_allclose(precision_at_k(scores, relevant, 5)[:3], [3 / 3, 1 / 1, 1 / 1])
    np.testing.assert_allclose(precision_at_k(scores, relevant, 3, capped=False)[:3], [2 / 3, 0 / 3, 1 / 3])
    r1 = recall_at_k(scores, relevant, 1)
    np.testing.assert_array_equal(r1[:3], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(recall_at_k(scores, relevant, 3)[:3], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(recall_at_k(scores, relevant, 4)[:3], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(recall_at_k(scores, relevant, 5)[:3], [1.0, 1.0, 1.0])
    assert math.isnan(recall_at_k(scores, relevant, 1)[3])

    with pytest.raises(ValueError, match=re.escape("k must be at least 1, got 0")):
        precision_at_k(scores, relevant, 0)
    with pytest.raises(
        ValueError, match=re.escape("scores and relevant must be (queries, items) of one shape; got (4, 5) and (4, 4)")
    ):
        recall_at_k(scores, relevant[:, :4], 1)


def test_expected_recall_breaks_ties_at_random() -> None:
    scores = np.array(
        [
            [0.9, 0.5, 0.5, 0.5, 0.1],  # one item above, then a three-way tie holding the hit
            [0.5, 0.5, 0.5, 0.5, 0.5],  # five-way tie, two hits
            [0.9, 0.8, 0.1, 0.0, 0.0],  # no tie: the plain recall
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    relevant = np.array(
        [
            [False, False, True, False, False],
            [True, True, False, False, False],
            [False, True, False, False, False],
            [False, False, False, False, False],  # nothing relevant: left out
        ]
    )
    r1 = expected_recall_at_k(scores, relevant, 1)
    np.testing.assert_allclose(r1[:3], [0.0, 2 / 5, 0.0])
    r2 = expected_recall_at_k(scores, relevant, 2)
    np.testing.assert_allclose(r2[:3], [1 / 3, 1 - (3 / 5) * (2 / 4), 1.0])
    np.testing.assert_allclose(expected_recall_at_k(scores, relevant, 4)[:3], [1.0, 1.0, 1.0])
    assert math.isnan(r1[3])
    # without ties it is recall_at_k
    np.testing.assert_array_equal(expected_recall_at_k(scores[2:3], relevant[2:3], 1), recall_at_k(scores[2:3], relevant[2:3], 1))


def test_strict_accuracy_counts_ties_as_wrong() -> None:
    logits = np.array([[3.0, 1.0, 2.0], [1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    np.testing.assert_array_equal(strict_accuracy(logits, [0, 0, 2]), [True, False, False])


# -- full runs with tiny models --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory, tiny_sbert: Path) -> tuple[Encoder, Path]:
    """A tiny random dual encoder (as tests/test_train.py builds one), in memory and saved."""
    torch.manual_seed(0)
    cfg = dual.DualConfig(
        image_size=16, cnn_widths=(8, 16), cnn_blocks=(0, 1), embed_dim=16, text_tower=str(tiny_sbert),
        text_head_dim=16, text_head_queries=2, text_head_heads=2,
    )  # fmt: skip
    model = dual.build_dual(cfg).eval()
    folder = dual.save_model(model, tmp_path_factory.mktemp("models") / "tiny_dual")
    return dual.encoder_from_module(model, name="tiny"), Path(folder)


def _check_structure(result: dict, sizes: dict) -> None:
    assert set(result) == {"model", "seed", "sizes", "metrics", "details", "all_pass", "notes"}
    assert result["sizes"] == sizes
    assert set(result["metrics"]) == set(METRIC_IDS)
    for mid, m in result["metrics"].items():
        assert m["id"] == mid and m["name"] and m["section"]
        assert m["target"] == METRIC_IDS[mid]
        lo = -1.0 if mid == "phrasing_gap" else 0.0
        assert lo <= m["value"] <= 1.0, (mid, m["value"])
        if m["target"] is None:
            assert m["passed"] is None
        else:
            ok = m["value"] <= m["target"] if m["op"] == "<=" else m["value"] >= m["target"]
            assert m["passed"] is ok
    judged = [m["passed"] for m in result["metrics"].values() if m["passed"] is not None]
    assert result["all_pass"] is all(judged)
    gap = result["metrics"]["phrasing_train_p5"]["value"] - result["metrics"]["phrasing_eval_p5"]["value"]
    assert result["metrics"]["phrasing_gap"]["value"] == pytest.approx(gap)
    # a caption true of its own image makes the lenient recall at least the strict one
    for k in (1, 10):
        assert result["metrics"][f"retrieval_true_r{k}"]["value"] >= result["metrics"][f"retrieval_r{k}"]["value"]
        assert result["metrics"][f"retrieval_best_r{k}"]["value"] >= 0.5  # tiny galleries: few captions tie


def test_tiny_model_run_is_well_formed_and_deterministic(tiny_encoder) -> None:
    encoder, _ = tiny_encoder
    stages: list[str] = []
    result = evaluate_demo_quality(encoder, seed=3, **TINY_SIZES, batch_size=5, on_progress=lambda e: stages.append(e.message))
    _check_structure(result, TINY_SIZES)
    assert result["model"] == "tiny" and result["seed"] == 3
    assert result["details"]["retrieval"]["queries"] == 12
    assert stages and stages[0] == "rendering and embedding 12 captioned scenes"
    # a random model is nowhere near the bars
    assert result["all_pass"] is False
    assert json.loads(json.dumps(result)) == result  # plain JSON all the way down

    again = evaluate_demo_quality(encoder, seed=3, **TINY_SIZES, batch_size=7)
    assert again == result  # batch size changes nothing, the same seed gives the same numbers


def test_sizes_are_checked(tiny_encoder) -> None:
    encoder, _ = tiny_encoder
    with pytest.raises(ValueError, match=re.escape("n_gallery must be a whole number >= 10, not 9")):
        evaluate_demo_quality(encoder, n_gallery=9)
    with pytest.raises(ValueError, match=re.escape("n_single must be a whole number >= 1, not 0")):
        evaluate_demo_quality(encoder, n_single=0)


def test_grid_reranked_rescores_only_the_best_by_vector() -> None:
    from clipsearch.similarity import grid_scores
    from clipsearch.train.quality import grid_reranked

    rng = np.random.default_rng(0)
    sims = rng.uniform(-1, 1, (3, 6)).astype(np.float32)
    grids = rng.standard_normal((6, 2, 2, 4)).astype(np.float32)
    grids /= np.linalg.norm(grids, axis=-1, keepdims=True)
    queries = rng.standard_normal((3, 4)).astype(np.float32)
    out = grid_reranked(sims, grids, queries, depth=2)
    for row, q, o in zip(sims, queries, out):
        top = np.argsort(-row)[:2]
        np.testing.assert_allclose(o[top], grid_scores(row[top], grids[top], q), atol=1e-6)
        assert np.isneginf(np.delete(o, top)).all()  # the rest rank after every re-scored scene
    light = grid_reranked(sims, grids, queries, depth=2, cell_weight=0.25)
    for row, q, o in zip(sims, queries, light):
        top = np.argsort(-row)[:2]
        np.testing.assert_allclose(o[top], grid_scores(row[top], grids[top], q, cell_weight=0.25), atol=1e-6)


def test_default_ranking_is_what_search_does_by_default() -> None:
    from clipsearch.search import DEFAULT_CELL_WEIGHT, DEFAULT_RERANK
    from clipsearch.train.quality import default_ranking, grid_reranked

    rng = np.random.default_rng(1)
    n = DEFAULT_RERANK + 5  # some scenes beyond the re-scored ones
    sims = rng.uniform(-1, 1, (2, n)).astype(np.float32)
    grids = rng.standard_normal((n, 2, 2, 4)).astype(np.float32)
    grids /= np.linalg.norm(grids, axis=-1, keepdims=True)
    queries = rng.standard_normal((2, 4)).astype(np.float32)
    assert default_ranking(sims, None, queries) is sims  # no grid: the vectors alone
    expected = grid_reranked(sims, grids, queries, DEFAULT_RERANK, cell_weight=DEFAULT_CELL_WEIGHT)
    np.testing.assert_array_equal(default_ranking(sims, grids, queries), expected)
    assert np.isneginf(expected).sum(axis=1).tolist() == [5, 5]


class ColourOracle(Encoder):
    """Sees only colours: an image is the share of its pixels near each object colour, a text
    the colour words it names; shapes are invisible to it."""

    def __init__(self) -> None:
        pre = Preprocess(size=48, crop=48, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="nearest",
                         resize_mode="squash")  # fmt: skip
        self.info = ModelInfo("oracle", "test", len(dw.COLORS), ("image", "text"), 77, pre, 100.0)
        self.rgb = np.asarray(list(dw.COLORS.values()), dtype=np.float32) / 255.0  # (11, 3)

    def _encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        px = pixels.transpose(0, 2, 3, 1).reshape(len(pixels), -1, 1, 3)  # (n, hw, 1, 3)
        share = (np.abs(px - self.rgb[None, None]) <= 14 / 255.0).all(-1).mean(axis=1)  # (n, 11)
        return np.where(share > 0.3, 0.0, share)  # one object covers at most a ninth: more is background

    def _encode_text_batch(self, texts: list[str], role: str) -> np.ndarray:
        words = [set(re.findall(r"[a-z]+", t.lower())) for t in texts]
        return np.array([[name in w for name in dw.COLORS] for w in words], dtype=np.float32)


def test_an_oracle_for_colour_scores_on_colour_and_not_on_shape() -> None:
    """The truth lines up with the pixels: a colour detector gets colours right, shapes never."""
    sizes = dict(n_gallery=10, n_scenes=5, n_single=22)
    result = evaluate_demo_quality(ColourOracle(), seed=1, **sizes)
    m = {k: v["value"] for k, v in result["metrics"].items()}
    assert "phrasing_eval_p5_rerank" not in m  # no grid cells to re-rank with, so the judged
    for judged, vector in (("retrieval_r1", "retrieval_vector_r1"), ("retrieval_r10", "retrieval_vector_r10"),
                           ("phrasing_eval_p5", "phrasing_eval_p5_vector"),
                           ("held_out_retrieval_p10", "held_out_retrieval_p10_vector")):  # fmt: skip
        assert m[judged] == m[vector]  # rankings are the vectors' own
    assert m["zero_shot_color"] >= 0.9  # dark dots on black backgrounds fool it now and then
    assert m["zero_shot_shape"] == 0.0  # every shape prompt embeds to zero: all ties, all wrong
    assert result["details"]["zero_shot"]["color_accuracy_by_color"].keys() == set(dw.COLORS)
    assert len(ALL_PAIRS) == 88


def test_cli_prints_json_and_a_table(tiny_encoder) -> None:
    from clipsearch.cli.main import app

    _, folder = tiny_encoder
    args = ["evaluate", "demo", "--model", str(folder), "--n-gallery", "10", "--n-scenes", "5", "--n-single", "3"]
    runner = CliRunner()
    out = runner.invoke(app, [*args, "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    _check_structure(result, {"n_gallery": 10, "n_scenes": 5, "n_single": 3})
    assert result["seed"] == 1 and result["all_pass"] is False  # exit 0 even when targets are missed

    table = runner.invoke(app, args)
    assert table.exit_code == 0, table.output
    assert "R@1 text->image, own image" in table.stdout and "FAIL" in table.stdout
    assert "all_pass: false" in table.stdout

    bad = runner.invoke(app, ["evaluate", "demo", "--model", str(folder / "missing")])
    assert bad.exit_code == 2


def test_evaluate_retrieval_ranks_text_to_image_as_search_does(tiny_encoder, tmp_path: Path) -> None:
    import json

    from clipsearch.collection import open_store
    from clipsearch.world import generate_world
    from clipsearch.train.evaluate import evaluate_retrieval

    encoder, _ = tiny_encoder
    world = tmp_path / "world"
    generate_world(world, 30, seed=2, size_range=(40, 80))
    ranked = evaluate_retrieval(encoder, str(world))
    plain = evaluate_retrieval(encoder, str(world), rerank=False)
    assert (ranked["ranking"], plain["ranking"]) == ("grid re-rank", "vectors")
    assert plain["text_to_image"] == ranked["text_to_image_vectors"] and "text_to_image_vectors" not in plain
    assert plain["image_to_text"] == ranked["image_to_text"]  # only images have cells to re-rank by
    # the same pairs indexed into a store (its metadata.jsonl captions the images) and searched
    store = open_store(tmp_path / "store", model=encoder)
    assert store.add([world], workers=0).failed == 0 and store.has_cells
    records = [json.loads(line) for line in (world / "metadata.jsonl").read_text().splitlines()]
    relevant: dict[str, set[str]] = {}  # caption -> its images (identical captions are interchangeable)
    for r in records:
        relevant.setdefault(r["caption"], set()).add(str(world / r["file"]))
    for metrics, rerank in ((ranked, None), (plain, 0)):
        for k in (1, 5, 10):
            found = [
                any(h.path in relevant[r["caption"]] for h in store.search(r["caption"], k=k, modality="image", rerank=rerank))
                for r in records
            ]
            assert metrics["text_to_image"][f"R@{k}"] == pytest.approx(np.mean(found)), (rerank, k)
