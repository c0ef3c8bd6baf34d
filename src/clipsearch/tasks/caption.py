"""Caption by retrieval: the candidate texts nearest each image in the joint space.

Candidates are either a list of captions (embedded once per run, as passages) or the text items
of a store (searched image -> text with the store's own index).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from clipsearch.models.base import Encoder, Vectors


@dataclass
class Captioned:
    """One image's best captions with their cosine scores, best first, or an ``error``."""

    image: str
    captions: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self, digits: int = 6) -> dict[str, Any]:
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        return {"image": self.image, "captions": [{"text": t, "score": round(float(s), digits)} for t, s in self.captions]}


def read_candidates(path: str | Path) -> list[str]:
    """Candidate captions from a text file, one per line (blank lines skipped, duplicates dropped)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"candidates file {str(p)!r} does not exist")
    lines = [line.strip() for line in p.read_text(encoding="utf-8-sig").splitlines()]
    out = list(dict.fromkeys(x for x in lines if x))
    if not out:
        raise ValueError(f"candidates file {str(p)!r} has no captions; put one per line")
    return out


def caption(
    encoder: "Encoder",
    images: Sequence[Any],
    candidates: Sequence[str] | Any,
    *,
    k: int = 5,
    batch_size: int = 32,
    on_progress: Callable[[int], None] | None = None,
) -> list[Captioned]:
    """The ``k`` best-matching captions for each image.

    Args:
        encoder: a model that embeds images and text.
        images: file paths, bytes or RGB ``PIL.Image`` objects.
        candidates: caption strings, or a store (from :func:`clipsearch.store.open_store`)
            whose text items are searched.
        k: captions per image.
        batch_size: images per forward pass.
        on_progress: called with the number of images just finished.

    Returns:
        One :class:`Captioned` per image, in input order; scores are cosine similarities.
    """
    from clipsearch.tasks.classify import _draft_size, check_top, iter_image_batches, require_image_and_text

    require_image_and_text(encoder, "captioning")
    k = check_top(k)
    if isinstance(candidates, (str, bytes)):
        raise TypeError("candidates must be a list of captions or a store, not a single string")
    store = None if isinstance(candidates, Sequence) else candidates
    if store is None:
        texts = [str(t) for t in candidates]
        if not texts:
            raise ValueError("give at least one candidate caption")
        text_vectors = encoder.encode_texts(texts, role="passage")
    out: list[Captioned] = []
    for batch in iter_image_batches(images, batch_size=batch_size, draft=_draft_size(encoder)):
        ok = [item for item in batch if item.image is not None]
        vecs = encoder.encode_images([item.image for item in ok]) if ok else np.zeros((0, encoder.dim), np.float32)
        found = dict(
            zip(
                (item.index for item in ok),
                _search_store(store, vecs, k) if store is not None else _best(texts, text_vectors, vecs, k),
            )
        )
        for item in batch:
            if item.image is None:
                out.append(Captioned(item.name, error=item.error))
            else:
                out.append(Captioned(item.name, found[item.index]))
        if on_progress:
            on_progress(len(batch))
    return out


def _best(texts: list[str], text_vectors: "Vectors", image_vectors: "Vectors", k: int) -> list[list[tuple[str, float]]]:
    """Top ``k`` texts per image row by cosine, best first (ties keep candidate order)."""
    if not len(image_vectors):
        return []
    cos = image_vectors @ text_vectors.T  # (n_images, n_texts); rows are unit vectors
    order = np.argsort(-cos, axis=1, kind="stable")[:, : min(k, len(texts))]
    return [[(texts[j], float(row[j])) for j in idx] for row, idx in zip(cos, order)]


def _search_store(store: Any, image_vectors: "Vectors", k: int) -> list[list[tuple[str, float]]]:
    """Image -> text search in a store, one query vector at a time."""
    results = []
    for v in image_vectors:
        hits = store.search(v, k=k, modality="text")
        results.append([(_hit_text(h), float(_hit_field(h, "score"))) for h in hits])
    return results


def _hit_field(hit: Any, name: str) -> Any:
    return hit[name] if isinstance(hit, dict) else getattr(hit, name)


def _hit_text(hit: Any) -> str:
    text = _hit_field(hit, "text")
    return str(text) if text is not None else str(_hit_field(hit, "path"))
