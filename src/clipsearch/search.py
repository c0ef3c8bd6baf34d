"""Queries in every direction: parse, embed, compose, and search a store.

A query is one or more *terms*, each a text, an image file, a stored item or a vector, with a
weight. The query vector is the weighted sum of the terms' unit vectors, renormalised::

    "2:dog" + snow.jpg - "grass"   ->   normalise(2 * u("dog") + u(snow.jpg) - u("grass"))

Syntax (see ``docs/search.md``): terms are separated by ``+`` or ``-`` as separate words;
consecutive words form one text; ``N:`` in front of a term is its weight; a term naming an
existing image file is that image; ``id:ITEM`` is an item already in the store.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from clipsearch.models.base import Encoder
    from clipsearch.store import Hit, Store

TermKind = Literal["text", "image", "item", "vector", "pil"]
OPERATORS = ("+", "-")
_WEIGHT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*:(.*)$", re.DOTALL)
ITEM_PREFIX = "id:"


@dataclass(frozen=True)
class Term:
    """One part of a query: ``weight`` times the unit vector of ``value``."""

    kind: TermKind
    value: Any  # the text, the image path, the item id, a (dim,) vector, or a PIL image
    weight: float = 1.0

    def describe(self) -> str:
        what = {
            "text": lambda v: repr(v),
            "image": lambda v: f"image {v}",
            "item": lambda v: f"item {v}",
            "vector": lambda v: "a vector",
            "pil": lambda v: "an image",
        }[self.kind](self.value)
        return f"{self.weight:g} x {what}"


@dataclass(frozen=True)
class Query:
    """A weighted combination of terms; build it with :func:`parse_query` or directly."""

    terms: tuple[Term, ...]

    def __post_init__(self) -> None:
        if not self.terms:
            raise ValueError("empty query: give a text, an image (--image PATH) or an item (--like ID)")
        for t in self.terms:
            if not math.isfinite(t.weight) or t.weight == 0:
                raise ValueError(f"term weight must be a non-zero number, got {t.weight!r} for {t.describe()}")

    def describe(self) -> str:
        return " + ".join(t.describe() for t in self.terms).replace("+ -", "- ")


def parse_query(
    query: str | Sequence[str] = (),
    *,
    images: Sequence[str | os.PathLike[str]] = (),
    like: Sequence[str] = (),
) -> Query:
    """Parse a composed query.

    Args:
        query: the words of the query as the shell split them (``["2:dog", "+", "snow.jpg", "-",
            "grass"]``), or one string that is split like a shell line (quotes group words).
        images: image files to add as terms of weight 1 (``--image``).
        like: stored item ids (or unique prefixes) to add as terms of weight 1 (``--like``).

    Returns:
        The :class:`Query`.

    Raises:
        ValueError: an operator without a term on its right, two operators in a row, a weight
            without a term, or nothing at all.
    """
    if isinstance(query, str):
        try:
            tokens = shlex.split(query)
        except ValueError as exc:
            raise ValueError(f"cannot parse query {query!r}: {exc}") from None
    else:
        tokens = [str(t) for t in query]
    terms: list[Term] = []
    words: list[str] = []
    sign = 1.0
    pending_op: str | None = None
    for tok in tokens:
        if tok in OPERATORS:
            if words:
                terms.append(_term(" ".join(words), sign))
                words = []
            elif pending_op is not None:
                raise ValueError(f"two operators in a row ({pending_op!r} then {tok!r}); put a term between them")
            pending_op = tok
            sign = 1.0 if tok == "+" else -1.0
        else:
            words.append(tok)
            pending_op = None
    if words:
        terms.append(_term(" ".join(words), sign))
    elif pending_op is not None:
        raise ValueError(f"the query ends with {pending_op!r}; put a term after it")
    terms += [Term("image", os.fspath(p)) for p in images]
    terms += [Term("item", str(i)) for i in like]
    return Query(tuple(terms))


def _term(text: str, sign: float) -> Term:
    weight = 1.0
    m = _WEIGHT.match(text)
    if m:
        weight = float(m.group(1))
        text = m.group(2).strip()
        if not text:
            raise ValueError(f"weight {m.group(1)}: has no term after it")
    text = text.strip()
    if text.lower().startswith(ITEM_PREFIX) and len(text) > len(ITEM_PREFIX):
        return Term("item", text[len(ITEM_PREFIX) :].strip(), sign * weight)
    if _is_image_file(text):
        return Term("image", text, sign * weight)
    if _names_a_missing_image(text):
        raise ValueError(
            f"{text!r} looks like an image file, but there is no file at that path; give an existing image "
            "(or, to search for these words, add another word)"
        )
    return Term("text", text, sign * weight)


def _names_a_missing_image(text: str) -> bool:
    """One word with an image file's extension (``nope.jpg``, ``~/x/cat.png``) that is no file:
    meant as an image, not as text to search for."""
    from clipsearch.images import is_image_path

    if " " in text.strip() or not is_image_path(Path(text)):
        return False
    try:
        Path(text).expanduser().stat()
    except FileNotFoundError:
        return True
    except (OSError, ValueError):  # a name too long to be a file, a NUL byte: text
        return False
    return False


def _is_image_file(text: str) -> bool:
    from clipsearch.images import is_image_path

    path = Path(text).expanduser()
    try:
        return is_image_path(path) and path.is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte: not a file, so text
        return False


# -- embedding --------------------------------------------------------------------------------


def compose(vectors: npt.ArrayLike, weights: Sequence[float]) -> npt.NDArray[np.float32]:
    """``normalise(sum_i weights[i] * normalise(vectors[i]))``.

    Args:
        vectors: ``(m, d)`` term vectors (normalised here, whatever their length).
        weights: ``m`` non-zero weights; negative ones subtract.

    Returns:
        ``(d,)`` float32 unit vector.

    Raises:
        ValueError: the terms cancel out (the sum has no length).
    """
    v = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if v.shape[0] != w.shape[0]:
        raise ValueError(f"{v.shape[0]} vectors but {w.shape[0]} weights")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    if np.any(norms < 1e-12):
        raise ValueError("a query term has a zero vector")
    total = (w[:, None] * (v / norms)).sum(axis=0)
    length = float(np.linalg.norm(total))
    if length < 1e-6:
        raise ValueError("the query's terms cancel out (their weighted sum is zero); change a weight")
    return (total / length).astype(np.float32)


def term_vectors(store: Store, encoder: Encoder, query: Query) -> npt.NDArray[np.float32]:
    """The unit vector of each term ``(len(query.terms), dim)``, texts embedded in one batch.

    ``encoder`` is the store's model (a :class:`~clipsearch.models.lazy.LazyEncoder` is loaded
    only for a term that needs it: a text or an image, not a stored item or a vector)."""
    from clipsearch.errors import StoreError

    out = np.zeros((len(query.terms), store.dim), np.float32)
    texts = [(i, t) for i, t in enumerate(query.terms) if t.kind == "text"]
    if texts:
        vecs = encoder.encode_texts([t.value for _, t in texts], role="query")
        for (i, _), v in zip(texts, vecs):
            out[i] = v
    for i, t in enumerate(query.terms):
        if t.kind == "image":
            out[i] = embed_image_file(encoder, t.value)
        elif t.kind == "pil":
            out[i] = encoder.encode_pixel_values(encoder.preprocess_images([t.value.convert("RGB")]))[0]
        elif t.kind == "item":
            item = store.get(str(t.value), with_vector=True)
            if item is None or item.vector is None:
                raise StoreError(f"no item with id {t.value!r} in store {store.root}")
            out[i] = item.vector
        elif t.kind == "vector":
            v = np.asarray(t.value, dtype=np.float32).reshape(-1)
            if v.shape[0] != store.dim:
                raise ValueError(f"query vector has {v.shape[0]} dimensions; this store holds {store.dim}-d vectors")
            out[i] = v
    return out


def embed_image_file(encoder: Encoder, path: str | os.PathLike[str]) -> npt.NDArray[np.float32]:
    """An image file's unit vector ``(dim,)``, decoded as indexing decodes it (the safe loader,
    with JPEG draft to the model's input size, then the model's preprocessing).

    Raises:
        ImageRefused: the file cannot be read or decoded.
        ValueError: the model embeds text only.
    """
    from clipsearch.images import load_image
    from clipsearch.models.preprocess import to_pixel_values

    if not encoder.supports("image"):
        raise ValueError(f"model {encoder.name!r} embeds text only; it cannot embed the image {os.fspath(path)}")
    pre = encoder.info.preprocess
    pixels = to_pixel_values(load_image(os.fspath(path), draft=pre.crop), pre)
    return encoder.encode_pixel_values(pixels[None])[0]


def as_query(query: Any) -> Query:
    """Accept what :meth:`Store.search` accepts and return a :class:`Query`.

    A ``str`` is one text (not parsed: use :func:`parse_query` for ``+``/``-``); a ``Path`` is
    an image file; a ``PIL.Image`` an image; a 1-d array a vector; a list of words is parsed.
    """
    if isinstance(query, Query):
        return query
    if isinstance(query, Term):
        return Query((query,))
    if isinstance(query, str):
        if not query.strip():
            raise ValueError("empty query text; give at least one non-space character")
        return Query((Term("text", query),))
    if isinstance(query, os.PathLike):
        return Query((Term("image", os.fspath(query)),))
    if isinstance(query, np.ndarray):
        return Query((Term("vector", query),))
    if hasattr(query, "convert") and hasattr(query, "size"):  # a PIL image
        return Query((Term("pil", query),))
    if isinstance(query, (list, tuple)) and all(isinstance(t, str) for t in query):
        return parse_query(query)
    raise TypeError(f"cannot search for a {type(query).__name__}; give a str, Path, PIL image, vector or Query")


def query_vector(store: Store, encoder: Encoder, query: Any) -> npt.NDArray[np.float32]:
    """The unit ``(dim,)`` vector that :func:`search_store` searches with."""
    q = as_query(query)
    return compose(term_vectors(store, encoder, q), [t.weight for t in q.terms])


DEFAULT_RERANK = 20
"""Images re-scored by their stored grid cells in a search that does not say ``rerank``."""
DEFAULT_CELL_WEIGHT = 0.25
"""How much the best cell counts beside the vector when a search does not say ``cell_weight``.

Chosen on the demo model (``clipsearch evaluate demo``, seed 1's stream, confirmed on seeds 2
and 3): over the 20 best by vector it lifts "{colour} {shape}" precision@5 from 0.73 to 0.83
and keeps whole-caption recall (R@1 0.50 -> 0.51); every weight from 0.2 to 0.35 does both.
Weight 1 finds one object among several best (P@5 0.94) but ranks whole captions worse."""


SAME_ITEM = 0.9999
"""A cosine at least this high is the query itself: first in a fused list, whatever its confidence."""

READ_ATTEMPTS = 3
"""Reads of the store a search makes before an error from concurrent writes is reported."""


def search_store(
    store: Store,
    encoder: Encoder,
    query: Any,
    *,
    k: int = 10,
    modality: str = "any",
    where: str | None = None,
    path_glob: str | None = None,
    min_score: float | None = None,
    exact: bool = False,
    rerank: int | None = None,
    cell_weight: float | None = None,
    recall: float | None = None,
    min_confidence: float | None = None,
    calibrate: bool = True,
    query_kind: str | None = None,
) -> SearchResults:
    """The ``k`` items of ``store`` most similar to ``query``, best first.

    Args:
        store: the store to search.
        encoder: its model (embeds text and image terms; its grid re-ranks images).
        query: a text (``str``), an image (``pathlib.Path`` or ``PIL.Image``), a unit vector
            ``(dim,)``, or a composed :class:`Query` (see :func:`parse_query` for
            ``"2:dog" + snow.jpg - grass``).
        k: results wanted.
        modality: "image", "text" or "any".
        where: SQL filter on metadata columns, e.g. ``"label = 'cat' AND width >= 640"``.
        path_glob: keep items whose path (or another path of the same bytes) matches this
            shell pattern; ``*`` also crosses ``/``.
        min_score: drop results whose score is below this.
        exact: scan every vector even when an ANN index exists.
        recall: with an ANN index, the recall@10 to promise: 0.95 (default, the fast operating
            point) or 0.99 (slower); see :mod:`clipsearch.store.ann`.
        rerank: re-score the best ``max(k, rerank)`` images by their best-matching grid cell
            as well (:func:`clipsearch.similarity.grid_scores`): finds one object among several
            more precisely. Needs a model with a grid; 0 turns it off. Given (> 0) with
            ``modality="any"``, the search is of images: only they have cells. ``None`` (the
            default): :data:`DEFAULT_RERANK` when the store kept grid cells at indexing (models
            with a grid do), else off.
        cell_weight: how much the best cell counts beside the vector when re-scoring (default
            :data:`DEFAULT_CELL_WEIGHT`, which helps whole captions and single objects alike;
            1 finds one object among several best).
        min_confidence: drop results whose calibrated confidence (0-1, see
            :mod:`clipsearch.calibration`) is below this; None keeps them, flagged by
            ``no_good_match`` when none reaches the store's default threshold.
        calibrate: give each hit a calibrated ``confidence`` and, for ``modality="any"``, rank
            images and texts together by it (one fused list); False: raw cosines only, as
            before calibration existed.
        query_kind: "text" or "image": what the query is, for calibration; None: told by its
            terms (:func:`query_kind`). Give it when the terms are vectors made from images.

    Returns:
        :class:`SearchResults`: up to ``k`` :class:`~clipsearch.store.Hit` objects (fewer when
        filters, ``min_score`` or ``min_confidence`` leave fewer), with ``no_good_match`` and
        the ``min_confidence`` it was judged by.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive whole number, got {k!r}")
    if min_score is not None and not (-1.0 <= float(min_score) <= 1.0):
        raise ValueError(f"min_score is a cosine between -1 and 1, got {min_score!r}")
    if rerank is not None and (not isinstance(rerank, int) or isinstance(rerank, bool) or rerank < 0):
        raise ValueError(f"rerank is a number of results (0: off), got {rerank!r}")
    from clipsearch.similarity import check_cell_weight

    weight = DEFAULT_CELL_WEIGHT if cell_weight is None else check_cell_weight(cell_weight)  # before any work
    from clipsearch.store.ann import check_recall

    check_recall(recall)
    if rerank and modality == "text":
        raise ValueError(
            "rerank: only images have grid cells to re-score by; search with modality 'image' or 'any', not 'text'"
        )
    if rerank and modality == "any":
        modality = "image"  # an explicit re-rank is asked of images (CLI, server and library alike)
    if rerank and not has_grid(encoder):
        raise ValueError(
            f"rerank: model {encoder.name!r} has no grid of cell embeddings to rerank with; "
            "the demo model and dual encoders from `clipsearch train` have one"
        )
    if min_confidence is not None and not (0.0 <= float(min_confidence) <= 1.0):
        raise ValueError(f"min_confidence is a calibrated confidence between 0 and 1, got {min_confidence!r}")
    depth = default_rerank(store, encoder, modality) if rerank is None else rerank
    q_parsed = as_query(query)
    q = query_vector(store, encoder, q_parsed)
    cal = None
    if calibrate:
        from clipsearch.calibration import calibration_for

        cal = calibration_for(store, encoder)
    # Fused ranking: each kind is searched on its own, so that texts (nearer to a text query by
    # cosine) cannot crowd the images out before the calibrated scores compare them.
    kinds = ["image", "text"] if (cal is not None and modality == "any") else [modality]
    for attempt in range(READ_ATTEMPTS):
        version = store.version
        try:
            hits = []
            for kind in kinds:
                found = store.nearest(
                    q, max(k, depth), modality=kind, where=where, path_glob=path_glob, exact=exact, recall=recall
                )
                hits += store.hits_at(found, with_vector=cal is not None)
            stored = store.cells([h.id for h in hits if h.modality == "image"]) if depth else {}
            break
        except (OSError, ValueError):
            # A writer that committed and cleaned up meanwhile deleted the files of the version
            # read: read the newest one. The same error on an unchanged store is the caller's.
            if attempt + 1 == READ_ATTEMPTS or store.version == version:
                raise
    if depth:
        hits = rerank_by_grid(encoder, hits, q, cell_weight=weight, stored=stored)
    threshold = None
    if cal is not None:
        if query_kind not in (None, "text", "image"):
            raise ValueError(f"query_kind is 'text' or 'image', got {query_kind!r}")
        qkind = query_kind or kind_of_query(store, q_parsed)
        hits = calibrate_hits(cal, q, qkind, hits, fuse=len(kinds) > 1)
        threshold = cal.min_confidence(qkind)
    hits = hits[:k]
    if min_score is not None:
        hits = [h for h in hits if h.score >= float(min_score)]
    if min_confidence is not None:
        hits = [h for h in hits if h.confidence is not None and h.confidence >= float(min_confidence)]
    judged_by = threshold if min_confidence is None else float(min_confidence)
    no_good = judged_by is not None and not any((h.confidence or 0.0) >= judged_by for h in hits)
    return SearchResults(hits, no_good_match=no_good, min_confidence=judged_by)


class SearchResults(list):
    """The hits of a search, best first (a ``list`` of :class:`~clipsearch.store.Hit`), and
    whether any of them is a good match.

    ``no_good_match``: no hit reaches ``min_confidence`` (the store's calibrated default unless
    the search gave one): what the CLI, the API and the page say as "No good match".
    ``min_confidence``: the line judged by; None when the search was not calibrated.
    """

    def __init__(self, hits: Sequence[Hit] = (), *, no_good_match: bool = False, min_confidence: float | None = None):
        super().__init__(hits)
        self.no_good_match = no_good_match
        self.min_confidence = min_confidence


def kind_of_query(store: Store, query: Query) -> str:
    """"image" when the query holds an image (a file, a picture, or a stored image item), else
    "text" (a vector counts as a text query: it is most often an embedded text)."""
    for t in query.terms:
        if t.weight > 0 and t.kind in ("image", "pil"):
            return "image"
        if t.weight > 0 and t.kind == "item":
            item = store.get(str(t.value))
            if item is not None and item.modality == "image":
                return "image"
    return "text"


def calibrate_hits(
    cal: Any, query: npt.NDArray[np.float32], qkind: str, hits: Sequence[Hit], *, fuse: bool = True
) -> list[Hit]:
    """``hits`` with their calibrated ``confidence``, their vectors dropped again; with ``fuse``
    ordered by confidence (best first; the raw score breaks ties; the query itself, cosine
    :data:`SAME_ITEM` or more, first of all), else in the order given (a search of one kind keeps
    its ranking by score).

    Args:
        cal: the store's :class:`clipsearch.calibration.Calibration`.
        query: ``(dim,)`` unit query vector.
        qkind: "text" or "image".
        hits: hits of either kind that carry their stored vectors.
    """
    from dataclasses import replace

    out: list[Hit] = []
    for kind in ("image", "text"):
        group = [h for h in hits if h.modality == kind]
        if not group:
            continue
        vecs = np.stack([np.asarray(h.vector, np.float32) for h in group])
        z = cal.z(query, qkind, kind, [h.score for h in group], vecs)
        conf = cal.confidence(z, qkind)
        for h, c in zip(group, conf):
            out.append(replace(h, confidence=float(c), vector=None))
    if fuse:  # the query itself (a stored item, the same image), when found, first
        out.sort(key=lambda h: (h.score < SAME_ITEM, -(h.confidence or 0.0), -h.score))
    else:
        by_id = {h.id: h for h in out}
        out = [by_id[h.id] for h in hits]
    return out


def default_rerank(store: Store, encoder: Encoder, modality: str = "any") -> int:
    """How many images a search re-scores by grid cells when it does not say: :data:`DEFAULT_RERANK`
    for a store that keeps cells (indexed with a model that has a grid), else 0."""
    if modality == "text" or not store.has_cells:
        return 0
    return DEFAULT_RERANK if has_grid(encoder) else 0


def has_grid(encoder: Any) -> bool:
    """Whether ``encoder`` embeds a grid of cells (``encode_patch_grid``), which ``rerank`` needs."""
    return hasattr(encoder, "encode_patch_grid")


def rerank_by_grid(
    encoder: Any,
    hits: Sequence[Hit],
    query: npt.NDArray[np.float32],
    *,
    cell_weight: float = DEFAULT_CELL_WEIGHT,
    stored: dict[str, npt.NDArray[np.float32]] | None = None,
) -> list[Hit]:
    """``hits`` re-scored by :func:`clipsearch.similarity.grid_scores`, best first.

    An image's grid comes from ``stored`` (id -> ``(gh, gw, dim)`` cells, what the store
    kept at indexing), else the image is read again and run through the model. Text hits, and
    images that can no longer be read, keep their vector score.
    """
    from dataclasses import replace

    from clipsearch.errors import ImageRefused
    from clipsearch.images import load_image
    from clipsearch.similarity import grid_scores

    stored = stored or {}
    draft: int | None = None
    grids: dict[int, npt.NDArray[np.float32]] = {}
    to_read, images = [], []
    for i, h in enumerate(hits):
        if h.modality != "image":
            continue
        if h.id in stored:
            grids[i] = stored[h.id]
            continue
        if not images:  # asked only now: a search whose images all have stored cells needs no model
            pre = encoder.info.preprocess
            draft = pre.crop if pre is not None else None  # decoding larger than the model's input is wasted
        try:
            images.append(load_image(h.path, draft=draft))
        except (ImageRefused, OSError):
            continue
        to_read.append(i)
    if images:
        grids.update(zip(to_read, encoder.encode_patch_grid(images)))
    scores = np.array([h.score for h in hits], dtype=np.float32)
    if grids:
        at = sorted(grids)
        scores[at] = grid_scores(scores[at], np.stack([grids[i] for i in at]), query, cell_weight=cell_weight)
    order = np.argsort(-scores, kind="stable")
    return [replace(hits[i], score=float(scores[i])) for i in order]


def image_hits(hits: Sequence[Hit]) -> list[Hit]:
    """The hits that are images with a path (what a contact sheet can show)."""
    return [h for h in hits if h.modality == "image" and h.path]
