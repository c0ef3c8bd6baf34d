"""Scores a person can read: a calibrated confidence for every search hit, fitted per store.

A cosine is not a probability, and the two kinds of item sit at different distances from a query
(a text query is nearer to every text than to any image: the modality gap). So a hit's cosine
``s`` between query ``q`` and item ``i`` is turned into a confidence in three explainable steps:

1. **Query side** -- how unusual is ``s`` for this query? ``q`` is scored against a fixed sample
   of the store's own items of the hit's kind (up to :data:`SAMPLE_PER_KIND` images, as many
   texts, and for texts the generic :data:`BACKGROUND_TEXTS` as well, so that a store of a few
   texts still has a background): ``z_q = (s - mean) / sd``. This removes the modality gap:
   each kind is measured against its own kind.
2. **Item side** -- how unusual is ``s`` for this item? The item is scored against a fixed set of
   background queries that match nothing in particular (:data:`BACKGROUND_TEXTS` for text queries,
   the store's sampled images for image queries): ``z_i = (s - mean_i) / sd_i``. An item that
   scores high with every query (a short heading, a "hub") gains nothing from it, and a query
   the model does not understand (a giraffe for a model of shapes) scores like the background.
3. ``z = (z_q + z_i) / 2`` and ``confidence = 1 / (1 + exp(-a * (z - c)))``, with ``a`` and ``c``
   fitted per store and direction (text->image, text->text, image->image, image->text) by
   logistic regression: positives are pairs the store itself says match (an image and its
   caption, a text and a shortened copy of it, an image and a flipped, cropped copy of it),
   negatives are the background queries' best hits. A direction without enough positives gets a
   conservative default (``c`` half a unit above the 95th percentile of the negatives).

A confidence of :data:`MIN_CONFIDENCE` (0.5, where ``z = c``) is the store's default line between
"a good match" and "no good match". The fit is stored with the store
(:mod:`clipsearch.store.calibration`), refitted as the store grows (by :data:`REFIT_GROWTH`) and
when its model's probe changes (``clipsearch reindex``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from clipsearch.store.calibration import read_calibration, write_calibration

if TYPE_CHECKING:
    from clipsearch.models.base import Encoder
    from clipsearch.store import Store

Vectors = npt.NDArray[np.float32]

KINDS = ("image", "text")
DIRECTIONS = ("text->image", "text->text", "image->image", "image->text")
SAMPLE_PER_KIND = 512
"""Items of each kind sampled from the store as the query-side background."""
POSITIVES = 64
"""Most known matching pairs used to fit each direction."""
AUGMENTED_IMAGES = 16
"""Images read again, flipped and cropped, as image->image positives."""
MIN_POSITIVES = 8
"""Fewer known pairs than this: the direction gets the conservative default."""
MIN_CONFIDENCE = 0.5
"""The lowest line between a good match and none: the confidence at ``z = c``."""
NEGATIVE_QUANTILE = 0.9
"""The line is raised, where needed, until at most a tenth (1 - this) of the fit's negatives pass it."""
REFIT_GROWTH = 0.1
"""Refit when the store's row count moved by more than this fraction since the last fit."""
MIN_SD = 0.02
"""Floor on a spread, so that a near-constant background cannot blow a z-score up."""
CENTRE_MARGIN = 0.5
"""The centre ``c`` stays at most this far above the negatives' 95th percentile."""
DEFAULT_SLOPE = 3.0
DEFAULT_CENTRE = 3.0

BACKGROUND_TEXTS: tuple[str, ...] = (
    "a photo of a dog", "a cat sleeping on a sofa", "a city street at night", "a bowl of fruit on a table",
    "a mountain landscape with snow", "people walking on a beach", "a car parked in front of a house",
    "a portrait of a smiling woman", "a plate of pasta", "an old church", "a bird on a branch",
    "a train station", "children playing football", "a screenshot of a website", "a bridge over a river",
    "a birthday cake with candles", "a forest in autumn", "a boat on a lake", "a crowded market",
    "a page of handwritten text", "the minutes of the board meeting", "how to install the software",
    "an invoice for office supplies", "the history of the Roman empire", "a recipe for chocolate cake",
    "the weather forecast for tomorrow", "notes from the lecture on chemistry", "a letter to a friend",
    "the rules of chess", "a review of a new phone", "instructions for assembling a chair",
    "the results of the election", "a summary of the research paper", "travel tips for Italy",
    "symptoms of the common cold", "the annual budget of the school", "a poem about the sea",
    "the plot of a detective novel", "how to change a flat tyre", "the price of houses in the city",
    "a list of things to buy", "what time does the shop open", "Who invented the telephone?",
    "What is the capital of Australia?", "How many legs does a spider have?", "When did the war end?",
    "Where is the nearest hospital?", "Why is the sky blue?", "How do vaccines work?",
    "What does the contract say about holidays?", "introduction", "Chapter 3", "README",
    "see the appendix for details", "thanks for your help", "the quick brown fox jumps over the lazy dog",
    "a diagram of the network", "a chart of monthly sales", "a black and white photograph", "a painting of flowers",
)  # fmt: skip
"""Queries that match nothing in particular: the item-side background for text queries.

Everyday photo searches, document searches and questions on many topics, so that an item that is
near all of them (a hub) or a query that lands where they do is recognised as no match."""


@dataclass
class Calibration:
    """A store's fitted calibration (see the module docstring for the formula).

    ``background[kind]``: ``(m, dim)`` sampled store vectors of that kind; ``queries[kind]``:
    ``(b, dim)`` background queries for queries of that kind; ``fits[query_kind]``:
    ``{"a", "c", "positives", "negatives", "how"}``.
    """

    header: dict[str, Any]
    background: dict[str, Vectors]
    queries: dict[str, Vectors]
    fits: dict[str, dict[str, Any]] = field(default_factory=dict)

    def min_confidence(self, query_kind: str = "text") -> float:
        """The store's default line between a good match and none for queries of ``query_kind``."""
        fit = self.fits.get(query_kind) or {}
        return float(fit.get("line", MIN_CONFIDENCE))

    def z(self, query: Vectors, query_kind: str, target_kind: str, scores: npt.ArrayLike, items: Vectors) -> npt.NDArray[np.float64]:
        """The combined z-score of hits of one kind.

        Args:
            query: ``(dim,)`` unit query vector.
            query_kind: "text" or "image" (what the query is).
            target_kind: "text" or "image" (what the hits are).
            scores: ``(n,)`` the hits' scores (cosines, or grid re-ranked scores).
            items: ``(n, dim)`` the hits' stored vectors.

        Returns:
            ``(n,)`` ``(z_q + z_i) / 2``.
        """
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        return _z(query[None, :], items, s[None, :], self._bg(target_kind), self._queries(query_kind))[0]

    def confidence(self, z: npt.ArrayLike, query_kind: str) -> npt.NDArray[np.float64]:
        """``1 / (1 + exp(-a (z - c)))`` with the ``a`` and ``c`` fitted for queries of
        ``query_kind`` ("text" or "image"); ``(n,)`` in [0, 1]."""
        fit = self.fits.get(query_kind) or {"a": DEFAULT_SLOPE, "c": DEFAULT_CENTRE}
        return _sigmoid(float(fit["a"]) * (np.asarray(z, dtype=np.float64) - float(fit["c"])))

    def _bg(self, kind: str) -> Vectors:
        return self.background.get(kind, np.zeros((0, 1), np.float32))

    def _queries(self, kind: str) -> Vectors:
        return self.queries.get(kind, np.zeros((0, 1), np.float32))

    def describe(self) -> dict[str, Any]:
        """What the fit is, for people: per direction ``a``, ``c``, how fitted and on how many pairs."""
        return {
            "min_confidence": {k: self.min_confidence(k) for k in self.fits},
            "rows": self.header.get("rows"),
            "fits": self.fits,
            "directions": self.header.get("directions", {}),
        }


def confidence_word(confidence: float, line: float | None = None) -> str:
    """A word for a confidence, the same on every face: "strong" (0.8 or more), "good" (at or
    above the store's ``line``, default :data:`MIN_CONFIDENCE`), "weak" (within 0.2 below it),
    else "none"."""
    line = MIN_CONFIDENCE if line is None else float(line)
    if confidence >= max(0.8, line):
        return "strong"
    if confidence >= line:
        return "good"
    return "weak" if confidence >= line - 0.2 else "none"


# -- the z-scores ----------------------------------------------------------------------------


def _z(
    queries: Vectors,
    items: Vectors,
    scores: npt.NDArray[np.float64],
    background: Vectors,
    bg_queries: Vectors,
    leave_out: Sequence[int] | None = None,
) -> npt.NDArray[np.float64]:
    """``(z_q + z_i) / 2`` for every query and item: ``(nq, ni)``.

    ``queries`` ``(nq, d)``, ``items`` ``(ni, d)``, ``scores`` ``(nq, ni)``; ``background``
    ``(m, d)`` the query-side sample of the items' kind; ``bg_queries`` ``(b, d)`` the item-side
    background. ``leave_out[j]``: the row of ``bg_queries`` that query ``j`` is (when fitting on
    the background queries themselves), left out of the item-side background for it. Scores of
    an item with itself (> 0.9999) are left out of both backgrounds.
    """
    q = np.asarray(queries, np.float64)
    x = np.asarray(items, np.float64)
    if background.shape[0] >= 2 and background.shape[1] == q.shape[1]:
        bs = q @ np.asarray(background, np.float64).T  # (nq, m)
        keep = bs < 0.9999
        n = np.maximum(keep.sum(1), 1)
        mu = (bs * keep).sum(1) / n
        sd = np.sqrt(np.maximum(((bs - mu[:, None]) ** 2 * keep).sum(1) / n, 0.0))
        zq = (scores - mu[:, None]) / np.maximum(sd, MIN_SD)[:, None]
    else:
        zq = np.zeros_like(scores)
    if bg_queries.shape[0] >= 2 and bg_queries.shape[1] == x.shape[1]:
        t = x @ np.asarray(bg_queries, np.float64).T  # (ni, b)
        keep = (t < 0.9999).astype(np.float64)
        s1, s2, cnt = (t * keep).sum(1), (t * t * keep).sum(1), keep.sum(1)  # (ni,)
        s1, s2, cnt = (np.broadcast_to(a, scores.shape).copy() for a in (s1, s2, cnt))
        if leave_out is not None:
            lo = np.asarray(leave_out, dtype=np.int64)
            tj, kj = t[:, lo].T, keep[:, lo].T  # (nq, ni)
            s1, s2, cnt = s1 - tj * kj, s2 - tj * tj * kj, cnt - kj
        cnt = np.maximum(cnt, 1)
        mu_i = s1 / cnt
        sd_i = np.sqrt(np.maximum(s2 / cnt - mu_i**2, 0.0))
        zi = (scores - mu_i) / np.maximum(sd_i, MIN_SD)
    else:
        zi = np.zeros_like(scores)
    return (zq + zi) / 2.0


def _sigmoid(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # the logistic function, without overflow


# -- fitting ---------------------------------------------------------------------------------


def fit_logistic(z_pos: npt.ArrayLike, z_neg: npt.ArrayLike) -> dict[str, Any]:
    """``a``, ``c`` of ``P(match | z) = 1 / (1 + exp(-a (z - c)))`` by class-balanced logistic
    regression on positives' and negatives' z-scores (a few Newton steps with a little ridge on
    ``a``: numpy holds the whole fit, two parameters do not need a library).

    With fewer than :data:`MIN_POSITIVES` positives: the conservative default, ``a =``
    :data:`DEFAULT_SLOPE` and ``c`` half a unit above the negatives' 95th percentile (at least
    :data:`DEFAULT_CENTRE`).
    """
    p = np.asarray(z_pos, np.float64).reshape(-1)
    n = np.asarray(z_neg, np.float64).reshape(-1)
    p, n = p[np.isfinite(p)], n[np.isfinite(n)]
    base = {"positives": int(p.size), "negatives": int(n.size)}
    if p.size < MIN_POSITIVES or n.size < 2:
        c = max(DEFAULT_CENTRE, float(np.quantile(n, 0.95)) + 0.5) if n.size else DEFAULT_CENTRE
        return {"a": DEFAULT_SLOPE, "c": round(c, 4), "line": MIN_CONFIDENCE, "how": "default", **base}
    x = np.concatenate([p, n])
    y = np.concatenate([np.ones_like(p), np.zeros_like(n)])
    w = np.concatenate([np.full(p.size, 0.5 / p.size), np.full(n.size, 0.5 / n.size)])
    # parameters of the linear form a * z + b
    theta = np.array([1.0, -float(np.mean(x))])
    feats = np.stack([x, np.ones_like(x)], 1)
    ridge = np.array([1e-3, 0.0])
    for _ in range(50):
        prob = _sigmoid(feats @ theta)
        grad = feats.T @ (w * (prob - y)) + ridge * theta
        hess = (feats * (w * prob * (1 - prob))[:, None]).T @ feats + np.diag(ridge + 1e-9)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    a, b = float(theta[0]), float(theta[1])
    if not (np.isfinite(a) and a > 0.05):
        c = max(DEFAULT_CENTRE, float(np.quantile(n, 0.95)) + 0.5)
        return {"a": DEFAULT_SLOPE, "c": round(c, 4), "line": MIN_CONFIDENCE, "how": "default (no separation)", **base}
    a = min(a, 20.0)  # perfectly separated classes: a steep but finite slope
    # The pairs a store can make of itself (a caption, a shortened copy) match more closely than
    # a person's query does, so the centre is kept within CENTRE_MARGIN of the negatives' 95th
    # percentile rather than halfway to such easy positives.
    c = min(-b / float(theta[0]), float(np.quantile(n, 0.95)) + CENTRE_MARGIN)
    # the line between a good match and none: where P = 0.5, or higher where a tenth of the
    # negatives would still pass it (saying "no good match" wrongly costs less than a bad match)
    line = max(MIN_CONFIDENCE, float(_sigmoid(np.array(a * (np.quantile(n, NEGATIVE_QUANTILE) - c)))))
    return {"a": round(a, 4), "c": round(c, 4), "line": round(line, 4), "how": "fitted", **base}


def probe_signature(store: Store) -> str:
    """A short hash of the store's model probe: a new probe (the model changed) means a refit.

    Every search asks (:func:`is_stale`), so the hash is remembered per probe file and only
    recomputed when that file was replaced (its size or mtime changed)."""
    from clipsearch.store.schema import PROBE_FILE

    try:
        st = (store.root / PROBE_FILE).stat()
    except OSError:
        return ""
    key = ("probe:" + str(store.root), st.st_mtime_ns, st.st_size)
    with _CACHE_LOCK:
        known = _SIGNATURES.get(key[0])
    if known is not None and known[0] == key:
        return known[1]
    probe = store.probe()
    signature = "" if probe is None else hashlib.sha256(json.dumps(probe.get("vectors"), sort_keys=True).encode()).hexdigest()[:16]
    with _CACHE_LOCK:
        _SIGNATURES[key[0]] = (key, signature)
    return signature


def is_stale(store: Store, header: dict[str, Any] | None) -> bool:
    """Whether a fit (its header) no longer fits the store: none, another model or probe, or a
    row count that moved by more than :data:`REFIT_GROWTH`."""
    if not header:
        return True
    if header.get("model") != store.model_name or header.get("probe") != probe_signature(store):
        return True
    rows, now = int(header.get("rows", 0)), len(store)
    return abs(now - rows) > REFIT_GROWTH * max(rows, 1)


def fit_calibration(store: Store, encoder: Encoder, *, seed: int = 0) -> Calibration | None:
    """Fit the calibration of ``store`` from its own items (see the module docstring).

    Returns:
        The :class:`Calibration`, or None for an empty store.
    """
    table = store.to_arrow(["id", "modality", "text", "caption", "path", "vector"])
    if table.num_rows == 0:
        return None
    rng = np.random.default_rng(seed)
    vectors = _matrix(table.column("vector"), store.dim)
    modality = np.asarray(table.column("modality").to_pylist())
    texts = table.column("text").to_pylist()
    captions = table.column("caption").to_pylist()
    paths = table.column("path").to_pylist()
    rows = {k: np.flatnonzero(modality == k) for k in KINDS}
    sample = {k: _sample(rng, r, SAMPLE_PER_KIND) for k, r in rows.items()}
    background = {k: vectors[s] for k, s in sample.items() if len(s)}
    can_text = encoder.supports("text") if hasattr(encoder, "supports") else True
    queries: dict[str, Vectors] = {}
    if can_text:
        queries["text"] = encoder.encode_texts(list(BACKGROUND_TEXTS), role="query").astype(np.float32)
        # the generic texts as passages too: a store of a few texts alone is a noisy background
        generic = encoder.encode_texts(list(BACKGROUND_TEXTS), role="passage").astype(np.float32)
        background["text"] = np.concatenate([background.get("text", np.zeros((0, store.dim), np.float32)), generic])
    if "image" in background:
        queries["image"] = background["image"]
    cal = Calibration({}, background, queries)
    fits: dict[str, dict[str, Any]] = {}

    def negatives(qkind: str, tkind: str) -> npt.NDArray[np.float64]:
        """Each background query's best z over the sample of ``tkind`` (itself left out)."""
        qs, ts = cal._queries(qkind), cal._bg(tkind)
        if not len(qs) or not len(ts):
            return np.zeros(0)
        s = np.asarray(qs, np.float64) @ np.asarray(ts, np.float64).T
        s = np.where(s > 0.9999, -np.inf, s)  # an image never counts as its own negative
        z = _z(qs, ts, np.where(np.isfinite(s), s, 0.0), ts, qs, leave_out=range(len(qs)))
        best = np.where(np.isfinite(s), z, -np.inf).max(1)
        return best[np.isfinite(best)]

    def positives(qs: Vectors, ts: Vectors, qkind: str, tkind: str) -> npt.NDArray[np.float64]:
        """The z of each known pair ``(qs[j], ts[j])``."""
        s = np.sum(np.asarray(qs, np.float64) * np.asarray(ts, np.float64), axis=1)
        return np.array([_z(qs[j : j + 1], ts[j : j + 1], s[j : j + 1, None], cal._bg(tkind), cal._queries(qkind))[0, 0]
                         for j in range(len(qs))])  # fmt: skip

    text_rows = {texts[i]: i for i in rows["text"] if texts[i]}

    def embedded(words: list[str], role: str) -> Vectors:
        """Texts as vectors: a stored text item's own vector when the store holds that text
        (captions indexed as texts too), else embedded now."""
        out = np.zeros((len(words), store.dim), np.float32)
        todo = [j for j, w in enumerate(words) if w not in text_rows]
        for j, w in enumerate(words):
            if w in text_rows:
                out[j] = vectors[text_rows[w]]
        if todo:
            out[todo] = encoder.encode_texts([words[j] for j in todo], role=role)
        return out

    captioned = [i for i in _sample(rng, rows["image"], POSITIVES) if captions[i]]
    pos: dict[str, npt.NDArray[np.float64]] = {}
    neg: dict[str, npt.NDArray[np.float64]] = {}
    # text -> image: an image's own caption finds it
    if "image" in background and can_text:
        qs = embedded([captions[i] for i in captioned], "query") if captioned else np.zeros((0, store.dim), np.float32)
        pos["text->image"], neg["text->image"] = positives(qs, vectors[captioned], "text", "image"), negatives("text", "image")
    # text -> text: a text is found by a shortened copy of itself
    if "text" in background and can_text:
        chosen = [i for i in _sample(rng, rows["text"], POSITIVES) if len((texts[i] or "").split()) >= 4]
        qs = encoder.encode_texts([_shortened(texts[i]) for i in chosen], role="query") if chosen else np.zeros((0, store.dim))
        pos["text->text"], neg["text->text"] = positives(qs, vectors[chosen], "text", "text"), negatives("text", "text")
    # image -> image: an image is found by a flipped, cropped copy of itself
    if "image" in background:
        qs, ts = _augmented(encoder, [(i, paths[i]) for i in sample["image"][:AUGMENTED_IMAGES]], vectors)
        pos["image->image"], neg["image->image"] = positives(qs, ts, "image", "image"), negatives("image", "image")
    # image -> text: an image finds its caption
    if "image" in background and "text" in background:
        ts = embedded([captions[i] for i in captioned], "passage") if (can_text and captioned) else np.zeros((0, store.dim))
        pos["image->text"], neg["image->text"] = positives(vectors[captioned][: len(ts)], ts, "image", "text"), negatives("image", "text")
    # One map per query kind over its directions' pooled pairs: the z-scores already measure each
    # direction against its own background, and one map keeps a fused list in confidence order.
    for qkind in KINDS:
        ds = [d for d in pos if d.startswith(qkind + "->")]
        if ds:
            fits[qkind] = fit_logistic(np.concatenate([pos[d] for d in ds]), np.concatenate([neg[d] for d in ds]))
    directions = {
        d: {"positives": int(pos[d].size), "negatives": int(neg[d].size),
            "positive_median_z": _median(pos[d]), "negative_p95_z": _quantile(neg[d], 0.95)}
        for d in pos
    }  # fmt: skip
    cal.fits = fits
    cal.header = {
        "model": store.model_name,
        "probe": probe_signature(store),
        "rows": int(table.num_rows),
        "fits": fits,
        "directions": directions,
        "background_texts": len(BACKGROUND_TEXTS),
    }
    return cal


def _median(x: npt.NDArray[np.float64]) -> float | None:
    return round(float(np.median(x)), 3) if x.size else None


def _quantile(x: npt.NDArray[np.float64], q: float) -> float | None:
    return round(float(np.quantile(x, q)), 3) if x.size else None


def _shortened(text: str) -> str:
    """The first 60% of a text's words (at least three): a paraphrase the store can make itself."""
    words = text.split()
    return " ".join(words[: max(3, int(round(len(words) * 0.6)))])


def _augmented(encoder: Encoder, items: Sequence[tuple[int, str | None]], vectors: Vectors) -> tuple[Vectors, Vectors]:
    """``(queries, targets)``: flipped, 85%-centre-cropped copies of readable images, embedded,
    with the stored vectors of their originals; empty when the model or the files cannot."""
    empty = np.zeros((0, vectors.shape[1]), np.float32)
    if not items or not (hasattr(encoder, "supports") and encoder.supports("image")):
        return empty, empty
    from PIL import Image, ImageOps

    from clipsearch.errors import ImageRefused
    from clipsearch.images import load_image

    images, rows = [], []
    for i, path in items:
        if not path:
            continue
        try:
            img = load_image(path)
        except (ImageRefused, OSError):
            continue
        w, h = img.size
        box = (int(w * 0.075), int(h * 0.075), int(w * 0.925), int(h * 0.925))
        images.append(ImageOps.mirror(img.convert("RGB")).crop(box).resize((w, h), Image.Resampling.BILINEAR))
        rows.append(i)
    if not images:
        return empty, empty
    qs = encoder.encode_pixel_values(encoder.preprocess_images(images))
    return np.asarray(qs, np.float32), vectors[rows]


def _sample(rng: np.random.Generator, rows: npt.NDArray[np.int64], n: int) -> npt.NDArray[np.int64]:
    return np.sort(rng.choice(rows, n, replace=False)) if len(rows) > n else rows


def _matrix(column: Any, dim: int) -> Vectors:
    if len(column) == 0:
        return np.zeros((0, dim), np.float32)
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, np.float32).reshape(-1, dim)


# -- storing, loading, refreshing ------------------------------------------------------------

_CACHE: dict[str, tuple[tuple[Any, ...], Calibration]] = {}
_SIGNATURES: dict[str, tuple[tuple[Any, ...], str]] = {}
_CACHE_LOCK = threading.Lock()


def _to_arrays(cal: Calibration) -> dict[str, Vectors]:
    out = {f"background_{k}": v for k, v in cal.background.items()}
    out.update({f"queries_{k}": v for k, v in cal.queries.items()})
    return out


def _from_stored(header: dict[str, Any], arrays: dict[str, Vectors]) -> Calibration:
    background = {k[len("background_") :]: v for k, v in arrays.items() if k.startswith("background_")}
    queries = {k[len("queries_") :]: v for k, v in arrays.items() if k.startswith("queries_")}
    return Calibration(header, background, queries, dict(header.get("fits") or {}))


def stored_calibration(store: Store) -> Calibration | None:
    """The calibration recorded with ``store``, or None (none yet, or unreadable)."""
    from clipsearch.store.calibration import CALIBRATION_FILE

    try:
        st = (store.root / CALIBRATION_FILE).stat()
        key: tuple[Any, ...] = (st.st_mtime_ns, st.st_size)
    except OSError:
        return None
    with _CACHE_LOCK:
        hit = _CACHE.get(str(store.root))
        if hit is not None and hit[0] == key:
            return hit[1]
    found = read_calibration(store.root)
    if found is None:
        return None
    cal = _from_stored(*found)
    with _CACHE_LOCK:
        _CACHE[str(store.root)] = (key, cal)
    return cal


def refresh_calibration(store: Store, encoder: Encoder, *, force: bool = False) -> Calibration | None:
    """Fit and record the store's calibration when it has none or it is stale (:func:`is_stale`);
    call it under the store's write lock (indexing does, when it finishes).

    Returns:
        The calibration now recorded (None for an empty store).
    """
    current = stored_calibration(store)
    if not force and current is not None and not is_stale(store, current.header):
        return current
    cal = fit_calibration(store, encoder)
    if cal is not None:
        write_calibration(store, cal.header, _to_arrays(cal))
    return cal


def calibration_for(store: Store, encoder: Encoder) -> Calibration | None:
    """The calibration a search uses: the recorded one when it still fits the store; else one
    fitted now, and recorded when no other process is writing (else kept for this process)."""
    from clipsearch.errors import StoreError

    current = stored_calibration(store)
    if current is not None and not is_stale(store, current.header):
        return current
    key = ("fitted", store.model_name, probe_signature(store), len(store))
    with _CACHE_LOCK:
        hit = _CACHE.get("mem:" + str(store.root))
        if hit is not None and hit[0] == key:
            return hit[1]
    try:
        with store.writing():
            cal = refresh_calibration(store, encoder, force=True)
    except (StoreError, OSError):  # another writer, or a store on a read-only disk
        cal = fit_calibration(store, encoder)
    if cal is not None:
        with _CACHE_LOCK:
            _CACHE["mem:" + str(store.root)] = (key, cal)
    return cal
