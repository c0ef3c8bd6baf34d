"""Rerank retrieved passages with a cross-encoder (``--rerank M``).

A dual encoder embeds the question and each passage separately; a cross-encoder reads the
question and one passage together and scores their relevance, which is slower but usually
ranks better. It therefore reorders the few passages the retriever returned, never the store.
Models: ``sentence_transformers.CrossEncoder`` checkpoints with one output (e.g.
``cross-encoder/ms-marco-MiniLM-L6-v2``) from a local folder or the local Hugging Face cache,
loaded by :func:`clipsearch.models.cross_encoder.load_reranker`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from clipsearch.errors import EmptyText
from clipsearch.models.cross_encoder import Reranker, load_reranker


def rerank(
    question: str,
    passages: Sequence[Any],
    reranker: Reranker | str,
    *,
    batch_size: int = 32,
) -> list[tuple[int, float]]:
    """Score every ``(question, passage)`` pair and sort.

    Args:
        question: the question.
        passages: strings, or objects with a ``.text``.
        reranker: a :class:`Reranker` or a name for :func:`load_reranker`.
        batch_size: pairs per forward pass.

    Returns:
        ``(index into passages, score)`` for every passage, best first; ties keep retrieval
        order. Scores are the cross-encoder's output after its activation (a sigmoid for most
        one-output models), so higher is more relevant.
    """
    model = reranker if isinstance(reranker, Reranker) else load_reranker(reranker)
    if not isinstance(question, str) or not question.strip():
        raise EmptyText("the question is empty; ask something")
    texts = [p if isinstance(p, str) else p.text for p in passages]
    if not texts:
        return []
    scores = np.asarray(
        model.model.predict([(question, t) for t in texts], batch_size=batch_size, show_progress_bar=False),
        dtype=np.float32,
    ).reshape(len(texts))
    order = np.argsort(-scores, kind="stable")
    return [(int(i), float(scores[i])) for i in order]
