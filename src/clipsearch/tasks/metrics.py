"""The measures every evaluation shares: ranks, recall, precision, accuracy and box overlap.

Retrieval (``clipsearch evaluate retrieval``, ``evaluate demo``), classification (``evaluate
classify``) and localisation (``evaluate localize``) all score through these functions, so one
rule holds everywhere. Ranking measures take a ``(queries, items)`` score matrix, higher is
better, and a boolean matrix of the same shape saying which items are relevant to each query.

Ties count against the query unless a function says otherwise: an irrelevant item scoring the
same as the best relevant one ranks above it, so a model that scores everything alike finds
nothing. An item scored ``-inf`` is unranked (a re-ranking leaves the items beyond its depth
so) and is never found.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

Ties = Literal["against", "for"]


def _check_pair(scores: npt.ArrayLike, relevant: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    s = np.asarray(scores, dtype=np.float64)
    r = np.asarray(relevant, dtype=bool)
    if s.ndim != 2 or s.shape != r.shape:
        raise ValueError(f"scores and relevant must be (queries, items) of one shape; got {s.shape} and {r.shape}")
    return s, r


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")


def relevant_rank(scores: npt.ArrayLike, relevant: npt.ArrayLike, *, ties: Ties = "against") -> npt.NDArray[np.float64]:
    """Per query, how many irrelevant items rank above its best relevant item (0: it comes first).

    Args:
        scores: ``(q, n)`` similarities, higher is better.
        relevant: ``(q, n)`` bool, which items count as hits for each query.
        ties: ``"against"``: an irrelevant item scoring the same as the best relevant one ranks
            above it; ``"for"``: only irrelevant items scoring strictly higher do.

    Returns:
        ``(q,)`` float64: the rank; NaN for a query with no relevant item; ``inf`` when every
        relevant item of the query is unranked (scored ``-inf``).
    """
    s, r = _check_pair(scores, relevant)
    best = np.where(r, s, -np.inf).max(axis=1, keepdims=True) if s.shape[1] else np.full((len(s), 1), -np.inf)
    above = (s >= best) if ties == "against" else (s > best)
    rank = (above & ~r).sum(axis=1).astype(np.float64)
    rank[~np.isfinite(best[:, 0])] = np.inf
    rank[~r.any(axis=1)] = np.nan
    return rank


def recall_at_k(scores: npt.ArrayLike, relevant: npt.ArrayLike, k: int) -> npt.NDArray[np.float64]:
    """Per query, 1.0 when a relevant item is among the ``k`` best, else 0.0.

    Args:
        scores: ``(q, n)`` similarities, higher is better.
        relevant: ``(q, n)`` bool, which items count as hits for each query.
        k: the cut-off (at least 1).

    Returns:
        ``(q,)`` float64; NaN for a query with no relevant item at all (left out of
        :func:`mean_over_queries`).
    """
    _check_k(k)
    rank = relevant_rank(scores, relevant)
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(rank), np.nan, (rank < k).astype(np.float64))


def expected_recall_at_k(scores: npt.ArrayLike, relevant: npt.ArrayLike, k: int) -> npt.NDArray[np.float64]:
    """Like :func:`recall_at_k`, but ties are broken at random: the expected value per query.

    For a query whose best relevant item scores ``s``, with ``a`` items scoring above ``s``
    and ``b`` items scoring exactly ``s`` (``h`` of them relevant), a relevant item is among the
    ``k`` best unless the ``k - a`` tied slots all go to irrelevant items.
    """
    s, r = _check_pair(scores, relevant)
    _check_k(k)
    out = np.full(len(s), np.nan)
    for q in range(len(s)):
        if not r[q].any():
            continue
        best = s[q][r[q]].max()
        above, tied = int((s[q] > best).sum()), s[q] == best
        b, h = int(tied.sum()), int((tied & r[q]).sum())
        slots = min(max(k - above, 0), b)
        out[q] = 1.0 - (math.comb(b - h, slots) / math.comb(b, slots) if slots <= b - h else 0.0)
    return out


def _ranked_relevance(scores: npt.NDArray, relevant: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """``relevant`` reordered along each row by descending score; ties put irrelevant items first."""
    order = np.lexsort((relevant.astype(np.int8), -scores), axis=-1)
    return np.take_along_axis(relevant, order, axis=-1)


def precision_at_k(
    scores: npt.ArrayLike, relevant: npt.ArrayLike, k: int, *, capped: bool = True
) -> npt.NDArray[np.float64]:
    """Per query, hits among the ``k`` best divided by ``min(k, number of relevant items)``.

    Args:
        scores: ``(q, n)`` similarities, higher is better.
        relevant: ``(q, n)`` bool.
        k: the cut-off (at least 1).
        capped: divide by ``min(k, relevant)``; False: by ``k`` (the textbook P@k, which
            cannot reach 1 for a query with fewer than k relevant items).

    Returns:
        ``(q,)`` float64 in [0, 1]; NaN for a query with no relevant item.
    """
    s, r = _check_pair(scores, relevant)
    _check_k(k)
    hits = _ranked_relevance(s, r)[:, :k].sum(axis=1).astype(np.float64)
    n_rel = r.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, hits / (np.minimum(k, n_rel) if capped else k), np.nan)


def mean_over_queries(values: npt.ArrayLike) -> float:
    """The mean of per-query values over the queries that have one (not NaN); 0.0 when none has."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else 0.0


def class_rank(scores: npt.ArrayLike, truth: Sequence[int] | npt.ArrayLike, *, ties: Ties = "against") -> npt.NDArray[np.float64]:
    """Per row of ``(n, classes)`` scores, how many other classes rank above the true one.

    ``truth`` holds each row's true class index; ``ties`` as in :func:`relevant_rank`. Top-k
    accuracy is ``class_rank(...) < k``.
    """
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(truth, dtype=np.int64)
    if s.ndim != 2 or t.shape != (len(s),):
        raise ValueError(f"need (n, classes) scores and n true classes; got {s.shape} and {t.shape}")
    onehot = np.zeros(s.shape, dtype=bool)
    onehot[np.arange(len(t)), t] = True
    return relevant_rank(s, onehot, ties=ties)


def strict_accuracy(logits: npt.ArrayLike, truth: Sequence[int]) -> npt.NDArray[np.bool_]:
    """``(n,)``: whether each row's true class scores strictly above every other class."""
    return class_rank(logits, truth) == 0


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x0, y0, x1, y1)`` boxes (0 when either is empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def inside(point: Sequence[float], box: Sequence[float]) -> bool:
    """Whether pixel ``(x, y)`` lies in box ``[x0, y0, x1, y1)``."""
    return box[0] <= point[0] < box[2] and box[1] <= point[1] < box[3]
