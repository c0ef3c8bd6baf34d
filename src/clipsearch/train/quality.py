"""The quality bars of the demo model, measured on fresh eval-split demo worlds.

:func:`evaluate_demo_quality` draws new eval-split scenes in memory (held-out colour-shape
pairs, eval-only phrasings) from ``rng([seed, QUALITY_STREAM, part])``: a stream no training
batch, caption pool or training-time evaluation uses, so the scenes are fresh for any seed.
Every number is a pure function of the model and the sizes and seed.

What is measured (each metric has an id, a value in [0, 1], and a target or ``None`` for
numbers that are reported but not judged):

Every ranking of images is the one ``clipsearch search`` returns by default for a store indexed
with the model (:func:`default_ranking`): for a model with a grid of cell embeddings, the
:data:`~clipsearch.search.DEFAULT_RERANK` best by vector re-scored with their best grid cell at
:data:`~clipsearch.search.DEFAULT_CELL_WEIGHT`; for any other model, the vectors alone. The
vector-only numbers are reported beside the judged ones.

1. Retrieval over a gallery of ``n_gallery`` captioned scenes of 1-3 objects, each queried
   with its own caption (text -> image). ``retrieval_r1`` / ``retrieval_r10`` (judged): a hit
   is the caption's own image, or an image whose caption has the identical text (duplicates
   are interchangeable); this is the definition of ``clipsearch evaluate retrieval``.
   ``retrieval_true_r1`` / ``retrieval_true_r10`` (reported): a hit is any image of which the
   caption is true (:func:`~clipsearch.world.claim_holds`); many captions name
   only some objects or attributes, so they fit several images.
2. Zero-shot classification of ``n_single`` single-object images, balanced over all 88
   (colour, shape) pairs, through :class:`~clipsearch.tasks.classify.ZeroShotClassifier`:
   the shape among 8 ("a photo of a {shape}"), the colour among 11 ("a photo of a {colour}
   object"), and (reported) the pair among 88 ("a photo of a {colour} {shape}"), the position
   among 9 ("a photo of an object in the top left corner") and the size among 2.
3. Held-out pairs (:data:`~clipsearch.world.HELD_OUT_PAIRS`, never in a training
   image): precision@10 of the query "{colour} {shape}" over the retrieval gallery (a hit: a
   scene holding an object of that colour and shape), and the 88-way colour+shape
   classification of ``n_single`` single-object images of held-out pairs only.
4. Phrasing: every "{colour} {shape}" pair queried in the three eval-only phrasings
   (:func:`~clipsearch.world.object_query` with "eval") and, for comparison, the
   three train phrasings, over ``n_scenes`` fresh scenes of 1-3 objects: precision@5 (a hit:
   a scene holding such an object), and the gap train - eval. For models with a grid of cell
   embeddings, also (reported) the same precision@5 after ``clipsearch search --rerank 50
   --cell-weight 1``: the 50 best scenes by vector re-scored by
   :func:`~clipsearch.similarity.grid_scores` with the best cell counted as much as the vector
   (which trades whole-caption recall for object precision).

Precision@k of one query is ``hits in the top k / min(k, relevant)``: it equals the usual
hits / k whenever a query has at least k relevant scenes, and a query with fewer can still
reach 1. Queries with no relevant scene are left out (and counted). In every ranking, ties
count against the query: an irrelevant item scoring the same as a relevant one ranks first.
A classification is correct only when the true class scores strictly above every other.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from clipsearch import world as dw
from clipsearch.events import ProgressCallback, Reporter
from clipsearch.models.base import embeds_grid, encode_pixels
from clipsearch.search import DEFAULT_CELL_WEIGHT, DEFAULT_RERANK
from clipsearch.tasks.metrics import (
    expected_recall_at_k,
    mean_over_queries,
    precision_at_k,
    recall_at_k,
    strict_accuracy,
)

if TYPE_CHECKING:
    from PIL import Image

    from clipsearch.models.base import Encoder, Vectors

QUALITY_STREAM = 20  # rng([seed, QUALITY_STREAM, part]); training uses streams 1, 2, 3 and 7
PART_GALLERY, PART_SCENES, PART_SINGLE, PART_HELD_OUT = 0, 1, 2, 3
JPEG_PROB = 0.5  # share of images that go through a JPEG round trip, as in a saved world

SHAPE_TEMPLATE = "a photo of a {}"
COLOR_TEMPLATE = "a photo of a {} object"
PAIR_TEMPLATE = "a photo of a {}"  # label "{colour} {shape}"
PLACE_TEMPLATE = "a photo of an object {}"  # label: the first phrase of a position, "in the top left corner"
SIZE_TEMPLATE = "a photo of a {} object"  # label "small" or "large"
HELD_OUT_K = 10
PHRASING_K = 5
RERANK_DEPTH, RERANK_WEIGHT = 50, 1.0  # the phrasings' "grid re-rank": search --rerank 50 --cell-weight 1
MIN_SIZES = {"n_gallery": 10, "n_scenes": 5, "n_single": 1}

NOTES = (
    "retrieval: each caption of the gallery queries its images; 'own image' counts the caption's own image "
    "(or one with the identical caption text), 'caption true' any image the caption is true of; 'best possible' "
    "ranks by the generator's likelihood of the caption for each scene (ties at random), the ceiling of 'own image'",
    f"zero-shot prompts: '{SHAPE_TEMPLATE.format('{shape}')}', '{COLOR_TEMPLATE.format('{colour}')}', "
    f"'{PAIR_TEMPLATE.format('{colour} {shape}')}', '{PLACE_TEMPLATE.format('{position}')}', "
    f"'{SIZE_TEMPLATE.format('{size}')}'; correct only when the true class scores strictly highest",
    "held-out pairs: query '{colour} {shape}' over the retrieval gallery; classification of single-object "
    "images of those pairs among all 88 colour-shape classes",
    "phrasings: every colour-shape pair in the gallery queried in 3 eval-only and 3 train phrasings; "
    "the gap passes when eval-only phrasings are at most 5 points below train phrasings; 'grid re-rank' "
    f"re-scores the {RERANK_DEPTH} best scenes by vector with their best grid cell counted as much as the "
    f"vector (search --rerank {RERANK_DEPTH} --cell-weight {RERANK_WEIGHT:g})",
    "rankings: as clipsearch search ranks a store by default; for a model with a grid of cells, the "
    f"{DEFAULT_RERANK} best by vector re-scored by (vector + {DEFAULT_CELL_WEIGHT:g} x best cell) / "
    f"{1 + DEFAULT_CELL_WEIGHT:g}; 'vector only' ranks by the image vectors alone",
    "P@k = hits in the top k / min(k, relevant scenes) (the details also give hits / k); in every ranking, "
    "ties count against the query",
)
"""One line per section on how it is measured (printed under the table, and in the JSON)."""

ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for s in dw.SHAPES for c in dw.COLORS)
"""Every (colour, shape) combination: 88 classes, shape-major."""


@dataclass
class Metric:
    """One reported number; ``target`` None means reported, not judged."""

    id: str
    section: str
    name: str
    value: float
    target: float | None = None
    op: str = ">="  # how value compares with target to pass: ">=" or "<="

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        ok = self.value >= self.target if self.op == ">=" else self.value <= self.target
        return bool(ok)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"passed": self.passed}


# -- scenes ----------------------------------------------------------------------------------
def _rng(seed: int, part: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), QUALITY_STREAM, part])


def _render(rng: np.random.Generator, claim: dict | None, caption: bool) -> tuple["Image.Image", dict[str, Any]]:
    from PIL import Image

    img, rec = dw.render_scene(rng, "eval", dw.sample_canvas_size(rng), claim=claim, caption=caption)
    if rng.random() < JPEG_PROB:
        img = Image.open(io.BytesIO(dw.encode_image(img, "jpeg"))).convert("RGB")
    return img, rec


def _encode_scenes(
    encoder: "Encoder",
    rng: np.random.Generator,
    claims: Sequence[dict | None],
    *,
    caption: bool,
    batch_size: int,
    grids: bool = False,
) -> tuple["Vectors", list[dict[str, Any]], npt.NDArray[np.float32] | None]:
    """Render one eval-split scene per claim and embed it; pixels are dropped batch by batch.

    Returns:
        ``(len(claims), dim)`` unit image vectors, the scene records in order, and with
        ``grids`` the ``(len(claims), gh, gw, dim)`` cell vectors (else ``None``).
    """
    rows, records, cells = [], [], []
    for start in range(0, len(claims), batch_size):
        images = []
        for claim in claims[start : start + batch_size]:
            img, rec = _render(rng, claim, caption)
            images.append(img)
            records.append(rec)
        vecs, grid = encode_pixels(encoder, encoder.preprocess_images(images), grid=grids)
        rows.append(vecs)
        cells.append(grid)
    vecs = np.concatenate(rows).astype(np.float32, copy=False)
    return vecs, records, (np.concatenate(cells) if grids else None)


def grid_reranked(
    sims: npt.NDArray[np.float32],
    grids: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    depth: int,
    *,
    cell_weight: float = 1.0,
) -> npt.NDArray[np.float32]:
    """``(q, n)`` vector scores with each query's ``depth`` best re-scored by
    :func:`~clipsearch.similarity.grid_scores` and the rest ranked after them, as
    ``clipsearch search --rerank depth --cell-weight W`` orders a store."""
    from clipsearch.similarity import grid_scores

    out = np.full(sims.shape, -np.inf, dtype=np.float32)
    for i, (row, query) in enumerate(zip(sims, queries)):
        top = np.argsort(-row, kind="stable")[:depth]
        out[i, top] = grid_scores(row[top], grids[top], query, cell_weight=cell_weight)
    return out


def default_ranking(
    sims: npt.NDArray[np.float32], grids: npt.NDArray[np.float32] | None, queries: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """``(q, n)`` scores in the order ``clipsearch search`` ranks a store by default: the
    vector scores ``sims`` alone for a model without a grid (``grids`` None), else the
    :data:`~clipsearch.search.DEFAULT_RERANK` best re-scored at
    :data:`~clipsearch.search.DEFAULT_CELL_WEIGHT` (:func:`grid_reranked`)."""
    if grids is None:
        return sims
    return grid_reranked(sims, grids, queries, DEFAULT_RERANK, cell_weight=DEFAULT_CELL_WEIGHT)


def _single_object_claims(pairs: Sequence[tuple[str, str]], n: int, rng: np.random.Generator) -> list[dict]:
    """``n`` one-object claims cycling through ``pairs`` in a fresh random order each round."""
    order: list[tuple[str, str]] = []
    while len(order) < n:
        order += [pairs[i] for i in rng.permutation(len(pairs))]
    return [{"objects": [{"color": c, "shape": s}], "count": 1} for c, s in order[:n]]


def contains_pair(record: dict[str, Any], color: str, shape: str) -> bool:
    """Whether a scene record holds an object of ``color`` and ``shape``."""
    return any(o["color"] == color and o["shape"] == shape for o in record["objects"])


class TextCache:
    """Text embeddings computed once per distinct text, longest texts batched together."""

    def __init__(self, encoder: "Encoder", batch_size: int = 64):
        self.encoder = encoder
        self.batch_size = batch_size
        self.vectors: dict[str, npt.NDArray[np.float32]] = {}

    def __call__(self, texts: Sequence[str]) -> "Vectors":
        """``(len(texts), dim)`` unit vectors, in order."""
        todo = sorted({t for t in texts if t not in self.vectors}, key=len, reverse=True)
        if todo:
            vecs = self.encoder.encode_texts(todo, batch_size=self.batch_size)
            self.vectors.update(zip(todo, vecs))
        if not texts:
            return np.zeros((0, self.encoder.dim), np.float32)
        return np.stack([self.vectors[t] for t in texts]).astype(np.float32, copy=False)


# -- the evaluation ------------------------------------------------------------------------------
def evaluate_demo_quality(
    encoder: "Encoder",
    *,
    seed: int = 1,
    n_gallery: int = 1000,
    n_scenes: int = 400,
    n_single: int = 400,
    batch_size: int = 64,
    on_progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Measure every quality bar of the demo model (see the module docstring).

    Args:
        encoder: a model that embeds images and text (the demo model, or any dual encoder).
        seed: world seed; the scenes are fresh eval-split scenes for every seed.
        n_gallery: captioned scenes in the retrieval gallery (at least 10).
        n_scenes: scenes in the gallery of the phrasing queries (at least 5).
        n_single: single-object images for zero-shot classification, and again as many of
            held-out pairs (at least 1).
        batch_size: images or texts per forward pass.
        on_progress: called with a ``message`` event of the task ``"demo quality"`` before
            each stage, saying what it does.

    Returns:
        ``{"model", "seed", "sizes", "metrics": {id: Metric.to_dict()}, "details", "all_pass",
        "notes"}``;
        ``all_pass`` is true when every judged metric meets its target.
    """
    from clipsearch.tasks.classify import ZeroShotClassifier, require_image_and_text

    require_image_and_text(encoder, "the demo quality evaluation")
    sizes = {"n_gallery": n_gallery, "n_scenes": n_scenes, "n_single": n_single}
    for key, value in sizes.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < MIN_SIZES[key]:
            raise ValueError(f"{key} must be a whole number >= {MIN_SIZES[key]}, not {value!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size!r}")
    say = Reporter(on_progress, "demo quality").message
    texts = TextCache(encoder, batch_size)
    metrics: list[Metric] = []
    details: dict[str, Any] = {}

    # 1. retrieval with the gallery's own captions
    say(f"rendering and embedding {n_gallery} captioned scenes")
    has_grid = embeds_grid(encoder)
    gallery_vecs, gallery, gallery_grids = _encode_scenes(
        encoder, _rng(seed, PART_GALLERY), [None] * n_gallery, caption=True, batch_size=batch_size, grids=has_grid
    )
    captions = [r["caption"] for r in gallery]
    say(f"embedding {len(set(captions))} distinct captions")
    caption_vecs = texts(captions)
    vector_sims = caption_vecs @ gallery_vecs.T  # (captions, images)
    sims = default_ranking(vector_sims, gallery_grids, caption_vecs)
    cap = np.asarray(captions, dtype=object)
    own = cap[:, None] == cap[None, :]
    true_rel = np.array([[dw.claim_holds(q["claim"], g) for g in gallery] for q in gallery], dtype=bool)
    true_rel |= own  # a caption is always true of its own image; this only guards odd claims
    sec = "retrieval"
    for k, target in ((1, 0.5), (10, 0.9)):
        recall = mean_over_queries(recall_at_k(sims, own, k))
        metrics.append(Metric(f"retrieval_r{k}", sec, f"R@{k} text->image, own image", recall, target))
    # The best any model can do on the own-image recall: rank by how likely the generator is
    # to write each caption for each scene (many captions fit several scenes equally well).
    likelihood = np.array(
        [[dw.claim_likelihood(q["claim"], g, q.get("phrasing", "train")) for g in gallery] for q in gallery]
    )
    reported = (
        ("vector", "R@{k} own image, vector only", lambda k: recall_at_k(vector_sims, own, k)),
        ("true", "R@{k} text->image, caption true", lambda k: recall_at_k(sims, true_rel, k)),
        ("best", "R@{k} own image, best possible", lambda k: expected_recall_at_k(likelihood, own, k)),
    )
    for kind, name, recall in reported:
        for k in (1, 10):
            metrics.append(Metric(f"retrieval_{kind}_r{k}", sec, name.format(k=k), mean_over_queries(recall(k))))
    details["retrieval"] = {
        "queries": n_gallery,
        "distinct_captions": len(set(captions)),
        "mean_images_caption_is_true_of": float(true_rel.sum(axis=1).mean()),
        "eval_phrasing_share": float(np.mean([r.get("phrasing") == "eval" for r in gallery])),
    }

    # 2. zero-shot shape and colour on single-object images of all pairs
    say(f"rendering and embedding {n_single} single-object scenes")
    rng = _rng(seed, PART_SINGLE)
    single_vecs, singles, _ = _encode_scenes(
        encoder, rng, _single_object_claims(ALL_PAIRS, n_single, rng), caption=False, batch_size=batch_size
    )
    shapes = [r["objects"][0]["shape"] for r in singles]
    colors = [r["objects"][0]["color"] for r in singles]
    obj_sizes = [r["objects"][0]["size"] for r in singles]
    say("zero-shot classification")
    shape_clf = ZeroShotClassifier(encoder, list(dw.SHAPES), [SHAPE_TEMPLATE])
    color_clf = ZeroShotClassifier(encoder, list(dw.COLORS), [COLOR_TEMPLATE])
    pair_labels = [f"{c} {s}" for c, s in ALL_PAIRS]
    pair_clf = ZeroShotClassifier(encoder, pair_labels, [PAIR_TEMPLATE])
    shape_ok = strict_accuracy(shape_clf.logits(single_vecs), [dw.SHAPES.index(s) for s in shapes])
    color_ok = strict_accuracy(color_clf.logits(single_vecs), [list(dw.COLORS).index(c) for c in colors])
    pair_ok = strict_accuracy(
        pair_clf.logits(single_vecs), [pair_labels.index(f"{c} {s}") for c, s in zip(colors, shapes)]
    )
    sec = "zero-shot"
    metrics += [
        Metric("zero_shot_shape", sec, "shape (8 classes)", float(shape_ok.mean()), 0.95),
        Metric("zero_shot_color", sec, "colour (11 classes)", float(color_ok.mean()), 0.95),
        Metric("zero_shot_pair_all", sec, "colour+shape (88), all pairs", float(pair_ok.mean())),
    ]  # fmt: skip
    # Reported: the attributes captions name beside colour and shape (half the gallery's captions
    # name a position, half a size).
    places = [r["objects"][0]["position"] for r in singles]
    place_labels = [dw.POSITION_PHRASES[p][0] for p in dw.POSITIONS]
    place_clf = ZeroShotClassifier(encoder, place_labels, [PLACE_TEMPLATE])
    size_clf = ZeroShotClassifier(encoder, list(dw.SIZES), [SIZE_TEMPLATE])
    place_ok = strict_accuracy(place_clf.logits(single_vecs), [dw.POSITIONS.index(p) for p in places])
    size_ok = strict_accuracy(size_clf.logits(single_vecs), [dw.SIZES.index(z) for z in obj_sizes])
    metrics += [
        Metric("zero_shot_position", sec, "position (9 cells of a 3x3 grid)", float(place_ok.mean())),
        Metric("zero_shot_size", sec, "size (small or large)", float(size_ok.mean())),
    ]

    def by(keys: Sequence[str], ok: npt.NDArray[np.bool_], order: Sequence[str]) -> dict[str, float]:
        return {key: float(np.mean([o for k2, o in zip(keys, ok) if k2 == key])) for key in order if key in keys}

    details["zero_shot"] = {
        "images": n_single,
        "shape_accuracy_by_shape": by(shapes, shape_ok, dw.SHAPES),
        "shape_accuracy_by_size": by(obj_sizes, shape_ok, dw.SIZES),
        "color_accuracy_by_color": by(colors, color_ok, list(dw.COLORS)),
        "color_accuracy_by_size": by(obj_sizes, color_ok, dw.SIZES),
    }

    # 3. held-out pairs: retrieval over the gallery, 88-way classification of their own images
    held_out = sorted(dw.HELD_OUT_PAIRS, key=ALL_PAIRS.index)
    say("held-out pairs")
    ho_queries = [f"{c} {s}" for c, s in held_out]
    ho_rel = np.array([[contains_pair(g, c, s) for g in gallery] for c, s in held_out], dtype=bool)
    ho_vecs_text = texts(ho_queries)
    ho_vector_sims = ho_vecs_text @ gallery_vecs.T
    ho_sims = default_ranking(ho_vector_sims, gallery_grids, ho_vecs_text)
    ho_p = precision_at_k(ho_sims, ho_rel, HELD_OUT_K)
    say(f"rendering and embedding {n_single} single-object scenes of held-out pairs")
    rng = _rng(seed, PART_HELD_OUT)
    ho_vecs, ho_singles, _ = _encode_scenes(
        encoder, rng, _single_object_claims(held_out, n_single, rng), caption=False, batch_size=batch_size
    )
    ho_truth = [pair_labels.index(f"{r['objects'][0]['color']} {r['objects'][0]['shape']}") for r in ho_singles]
    ho_ok = strict_accuracy(pair_clf.logits(ho_vecs), ho_truth)
    sec = "held-out pairs"
    metrics += [
        Metric("held_out_retrieval_p10", sec, f"retrieval P@{HELD_OUT_K}", mean_over_queries(ho_p), 0.9),
        Metric("held_out_retrieval_p10_vector", sec, f"retrieval P@{HELD_OUT_K}, vector only",
               mean_over_queries(precision_at_k(ho_vector_sims, ho_rel, HELD_OUT_K))),
        Metric("held_out_zero_shot_pair", sec, "colour+shape (88 classes)", float(ho_ok.mean()), 0.70),
    ]  # fmt: skip
    details["held_out"] = {
        "p10_by_pair": {q: (None if np.isnan(p) else float(p)) for q, p in zip(ho_queries, ho_p)},
        "relevant_scenes_by_pair": dict(zip(ho_queries, ho_rel.sum(axis=1).tolist())),
        "p10_hits_over_k": mean_over_queries(precision_at_k(ho_sims, ho_rel, HELD_OUT_K, capped=False)),
        "zero_shot_by_pair": by([pair_labels[t] for t in ho_truth], ho_ok, ho_queries),
    }

    # 4. eval-only vs train phrasings over a gallery of plain scenes
    say(f"rendering and embedding {n_scenes} scenes")
    scene_vecs, scenes, scene_grids = _encode_scenes(
        encoder, _rng(seed, PART_SCENES), [None] * n_scenes, caption=False, batch_size=batch_size, grids=has_grid
    )
    pair_rel = np.array([[contains_pair(g, c, s) for g in scenes] for c, s in ALL_PAIRS], dtype=bool)
    present = pair_rel.any(axis=1)
    n_templates = {"eval": len(dw.EVAL_QUERY_TEMPLATES), "train": len(dw.TRAIN_QUERY_TEMPLATES)}
    p5: dict[str, float] = {}
    p5_over_k: dict[str, float] = {}
    p5_vector: dict[str, float] = {}
    p5_rerank: dict[str, float] = {}
    for phrasing in ("eval", "train"):
        say(f"{phrasing} phrasings")
        qs = [
            (i, dw.object_query(c, s, phrasing, v))
            for i, (c, s) in enumerate(ALL_PAIRS)
            if present[i]
            for v in range(n_templates[phrasing])
        ]
        rel = pair_rel[[i for i, _ in qs]]
        q_vecs = texts([q for _, q in qs])
        q_vector_sims = q_vecs @ scene_vecs.T
        q_sims = default_ranking(q_vector_sims, scene_grids, q_vecs)
        p5[phrasing] = mean_over_queries(precision_at_k(q_sims, rel, PHRASING_K))
        p5_over_k[phrasing] = mean_over_queries(precision_at_k(q_sims, rel, PHRASING_K, capped=False))
        p5_vector[phrasing] = mean_over_queries(precision_at_k(q_vector_sims, rel, PHRASING_K))
        if scene_grids is not None:
            reranked = grid_reranked(q_vector_sims, scene_grids, q_vecs, RERANK_DEPTH, cell_weight=RERANK_WEIGHT)
            p5_rerank[phrasing] = mean_over_queries(precision_at_k(reranked, rel, PHRASING_K))
    sec = "phrasings"
    metrics += [
        Metric("phrasing_eval_p5", sec, f"P@{PHRASING_K} eval-only phrasings", p5["eval"], 0.8),
        Metric("phrasing_train_p5", sec, f"P@{PHRASING_K} train phrasings", p5["train"]),
        Metric("phrasing_gap", sec, "gap: train - eval", p5["train"] - p5["eval"], 0.05, "<="),
        Metric("phrasing_eval_p5_vector", sec, f"P@{PHRASING_K} eval-only phrasings, vector only", p5_vector["eval"]),
        Metric("phrasing_train_p5_vector", sec, f"P@{PHRASING_K} train phrasings, vector only", p5_vector["train"]),
    ]
    if p5_rerank:
        metrics += [
            Metric("phrasing_eval_p5_rerank", sec, f"P@{PHRASING_K} eval-only phrasings, grid re-rank", p5_rerank["eval"]),
            Metric("phrasing_train_p5_rerank", sec, f"P@{PHRASING_K} train phrasings, grid re-rank", p5_rerank["train"]),
        ]  # fmt: skip
    n_rel = pair_rel.sum(axis=1)
    details["phrasing"] = {
        "pairs_queried": int(present.sum()),
        "pairs_absent_from_gallery": int((~present).sum()),
        "pairs_with_fewer_than_k_scenes": int(((n_rel > 0) & (n_rel < PHRASING_K)).sum()),
        "p5_hits_over_k": p5_over_k,
        "eval_templates": list(dw.EVAL_QUERY_TEMPLATES),
        "train_templates": list(dw.TRAIN_QUERY_TEMPLATES),
    }

    judged = [m.passed for m in metrics if m.passed is not None]
    return {
        "model": encoder.name,
        "seed": int(seed),
        "sizes": sizes,
        "metrics": {m.id: m.to_dict() for m in metrics},
        "details": details,
        "all_pass": all(judged),
        "notes": list(NOTES),
    }


__all__ = [
    "ALL_PAIRS",
    "Metric",
    "TextCache",
    "contains_pair",
    "default_ranking",
    "evaluate_demo_quality",
    "grid_reranked",
]
