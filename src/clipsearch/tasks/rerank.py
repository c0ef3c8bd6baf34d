"""Rerank retrieved passages with a cross-encoder (``--rerank M``).

A dual encoder embeds the question and each passage separately; a cross-encoder reads the
question and one passage together and scores their relevance, which is slower but usually
ranks better. It therefore reorders the few passages the retriever returned, never the store.
Models: ``sentence_transformers.CrossEncoder`` checkpoints with one output (e.g.
``cross-encoder/ms-marco-MiniLM-L6-v2``) from a local folder or the local Hugging Face cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.errors import EmptyText, ModelNotAvailable


@dataclass
class Reranker:
    """A loaded ``sentence_transformers.CrossEncoder`` with one relevance output."""

    model: Any
    name: str


def load_reranker(name_or_folder: str | Path, *, device: str | None = None) -> Reranker:
    """Load a cross-encoder from a local folder or the local Hugging Face cache (never downloads).

    Args:
        name_or_folder: a folder, or a hub id in the local cache.
        device: torch device (``None``: ``$CLIPSEARCH_DEVICE``, else cpu; see
            :func:`clipsearch.models.device.resolve_device`).

    Raises:
        ModelNotAvailable: not on this machine, or a classifier with more than one output.
        DeviceUnavailable: a device that is malformed or not on this machine.
    """
    from sentence_transformers import CrossEncoder

    from clipsearch.models.device import resolve_device
    from clipsearch.models.hf_clip import quiet_transformers
    from clipsearch.tasks.reader import local_source

    device = resolve_device(device)

    name = str(name_or_folder)
    source = local_source(name, "rerank")
    try:
        with quiet_transformers():
            model = CrossEncoder(source, device=device, local_files_only=True)
    except OSError as exc:
        where = "folder" if Path(source).exists() else "Hugging Face cache"
        raise ModelNotAvailable(
            f"rerank model {name!r} cannot be loaded from the local {where}; clipsearch never "
            "downloads weights, so copy it into the cache from a connected machine or pass a local folder"
        ) from exc
    except ValueError as exc:  # a config without a sequence-classification head
        raise ModelNotAvailable(f"rerank model {name!r} is not a cross-encoder: {str(exc).splitlines()[0]}") from exc
    labels = int(getattr(model, "num_labels", 1))
    if labels != 1:
        raise ModelNotAvailable(
            f"rerank model {name!r} has {labels} outputs; reranking needs a cross-encoder with one relevance score"
        )
    return Reranker(model, name)


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
