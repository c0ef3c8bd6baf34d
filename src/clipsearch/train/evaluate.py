"""Retrieval recall@k in both directions over a set of image-caption pairs.

Each pair's caption queries the gallery of all the pairs' images (text -> image), and each
image queries all the captions (image -> text). A hit at k: one of the k best-scored items is
*relevant*. Relevant means the pair's own partner, or any other pair with the identical
caption text (duplicate captions are interchangeable) or the identical image file. That is all:
a caption that merely also fits another image does not count that image. Ties count
against the query: an irrelevant item scoring the same as the best relevant one ranks above it.

For a model with a grid of cell embeddings (the demo model, dual encoders from ``clipsearch
train``), text -> image is ranked as ``clipsearch search`` ranks a store by default: the best
:data:`~clipsearch.search.DEFAULT_RERANK` images by vector re-scored with their grid cells
(:func:`clipsearch.train.quality.default_ranking`); the vectors' own recall is reported beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from clipsearch.models.base import embeds_grid, encode_pixels
from clipsearch.tasks.metrics import mean_over_queries, recall_at_k

if TYPE_CHECKING:
    from clipsearch.models.base import Encoder

KS = (1, 5, 10)


def relevance(captions: Sequence[str], image_keys: Sequence[str] | None = None) -> npt.NDArray[np.bool_]:
    """``(n, n)``: ``rel[i, j]`` when pair j's image is relevant to pair i's caption (symmetric)."""
    c = np.asarray(list(captions), dtype=object)
    rel = c[:, None] == c[None, :]
    if image_keys is not None:
        k = np.asarray(list(image_keys), dtype=object)
        rel |= k[:, None] == k[None, :]
    return rel


def retrieval_recall(
    image_vecs: npt.ArrayLike,
    text_vecs: npt.ArrayLike,
    captions: Sequence[str],
    image_keys: Sequence[str] | None = None,
    ks: Sequence[int] = KS,
) -> dict[str, Any]:
    """Recall@k both ways for n image-caption pairs (each caption's hits: see :func:`relevance`).

    Args:
        image_vecs: ``(n, d)`` image embeddings (row i: pair i's image).
        text_vecs: ``(n, d)`` caption embeddings (row i: pair i's caption).
        captions: the n captions, to find duplicates.
        image_keys: optional n image identities (paths), to find repeated images.
        ks: cut-offs.

    Returns:
        ``{"n": n, "text_to_image": {"R@1": ..., ...}, "image_to_text": {...}}`` with floats in [0, 1].
    """
    img, txt = _pair_arrays(image_vecs, text_vecs, captions)
    return _recall_both_ways(txt @ img.T, relevance(captions, image_keys), ks)


def _pair_arrays(
    image_vecs: npt.ArrayLike, text_vecs: npt.ArrayLike, captions: Sequence[str]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """float32 ``(n, d)`` image and text arrays, one row per caption (ValueError otherwise)."""
    img = np.asarray(image_vecs, dtype=np.float32)
    txt = np.asarray(text_vecs, dtype=np.float32)
    n = len(captions)
    if img.shape[0] != n or txt.shape[0] != n:
        raise ValueError(
            f"need one image and one text vector per caption: {img.shape[0]} images, {txt.shape[0]} texts, {n} captions"
        )
    if n == 0:
        raise ValueError("cannot measure recall on zero pairs")
    return img, txt


def recall_as_search(
    image_vecs: npt.ArrayLike,
    text_vecs: npt.ArrayLike,
    captions: Sequence[str],
    image_keys: Sequence[str] | None = None,
    grids: npt.NDArray[np.float32] | None = None,
) -> dict[str, Any]:
    """:func:`retrieval_recall`, with text -> image ranked as ``clipsearch search`` ranks a store.

    Args:
        image_vecs, text_vecs, captions, image_keys: as for :func:`retrieval_recall`.
        grids: ``(n, gh, gw, d)`` unit cell vectors of the images, for a model with a grid: the
            best images by vector are then re-scored by their cells
            (:func:`clipsearch.train.quality.default_ranking`); ``None``: the vectors alone.

    Returns:
        :func:`retrieval_recall`'s dict plus ``"ranking"`` (``"vectors"`` or ``"grid re-rank"``);
        re-ranked, ``"text_to_image"`` is the search ranking's recall and
        ``"text_to_image_vectors"`` the vectors' own.
    """
    img, txt = _pair_arrays(image_vecs, text_vecs, captions)
    sims, rel = txt @ img.T, relevance(captions, image_keys)  # (texts, images)
    out = _recall_both_ways(sims, rel) | {"ranking": "vectors"}
    if grids is not None:
        from clipsearch.train.quality import default_ranking

        out["text_to_image_vectors"] = out["text_to_image"]
        out["text_to_image"] = recall_from_scores(default_ranking(sims, np.asarray(grids, np.float32), txt), rel)
        out["ranking"] = "grid re-rank"
    return out


def _recall_both_ways(
    sims: npt.NDArray[np.float32], rel: npt.NDArray[np.bool_], ks: Sequence[int] = KS
) -> dict[str, Any]:
    """:func:`retrieval_recall`'s dict from ``(texts, images)`` similarities and relevance."""
    return {
        "n": len(sims),
        "text_to_image": recall_from_scores(sims, rel, ks),
        "image_to_text": recall_from_scores(sims.T, rel.T, ks),
    }


def recall_from_scores(
    scores: npt.NDArray[np.float32], relevant: npt.NDArray[np.bool_], ks: Sequence[int] = KS
) -> dict[str, float]:
    """``{"R@k": ...}``: :func:`~clipsearch.tasks.metrics.recall_at_k` of ``(queries, items)``
    scores and relevance, averaged over the queries."""
    return {f"R@{k}": mean_over_queries(recall_at_k(scores, relevant, k)) for k in ks}


def evaluate_retrieval(
    encoder: "Encoder",
    pairs: str,
    *,
    n: int = 1000,
    seed: int = 0,
    limit: int | None = None,
    batch_size: int = 64,
    rerank: bool | None = None,
) -> dict[str, Any]:
    """Recall@1/5/10 both ways of ``encoder`` on a pairs source.

    Args:
        encoder: an image-and-text model.
        pairs: a folder with ``metadata.jsonl``, a ``.csv``/``.jsonl`` pairs file, or
            ``"demo-world"`` (``n`` eval-split scenes drawn in memory with ``seed``).
        n, seed: size and seed of the in-memory demo world.
        limit: use only the first ``limit`` pairs of a file source.
        batch_size: images or texts per forward pass.
        rerank: rank text -> image as search does by default, re-scoring the best images by
            their grid cells; None: when the model has a grid (see the module docstring).

    Returns:
        :func:`retrieval_recall`'s dict plus ``"skipped"`` (images that could not be decoded) and
        ``"ranking"`` (``"vectors"`` or ``"grid re-rank"``); re-ranked, also
        ``"text_to_image_vectors"``, the vectors' own text -> image recall.

    Raises:
        ValueError: ``rerank`` asked of a model without a grid.
    """
    from clipsearch.train.data import DEMO_WORLD, demo_eval_set, pairs_eval_set, read_pairs

    if not encoder.supports("image") or not encoder.supports("text"):
        raise ValueError(f"model {encoder.name!r} does not embed both images and text; retrieval needs both")
    preprocess = encoder.info.preprocess
    assert preprocess is not None
    if pairs == DEMO_WORLD:
        pixels, captions = demo_eval_set(seed, n, preprocess)
        keys, skipped = None, 0
    else:
        items = read_pairs(pairs)
        if limit is not None:
            items = items[:limit]
        pixels, captions, keys = pairs_eval_set(items, preprocess)
        skipped = len(items) - len(captions)
    has_grid = embeds_grid(encoder)
    if rerank and not has_grid:
        raise ValueError(f"model {encoder.name!r} has no grid of cell embeddings to rerank with")
    rerank = has_grid if rerank is None else rerank
    image_vecs, grids = _encode_images(encoder, pixels, batch_size, grids=rerank)
    text_vecs = encoder.encode_texts(captions, batch_size=batch_size)
    return recall_as_search(image_vecs, text_vecs, captions, keys, grids) | {"skipped": skipped}


def _encode_images(
    encoder: "Encoder", pixels: npt.NDArray[np.float32], batch_size: int, *, grids: bool
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
    """``(n, dim)`` image vectors and, with ``grids``, ``(n, rows, cols, dim)`` cells (one pass)."""
    vecs, cells = [], []
    for i in range(0, len(pixels), batch_size):
        v, g = encode_pixels(encoder, pixels[i : i + batch_size], grid=grids)
        vecs.append(v)
        cells.append(g)
    return np.concatenate(vecs), (np.concatenate(cells) if grids else None)
