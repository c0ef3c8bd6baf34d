"""Cross-encoders (``sentence_transformers.CrossEncoder``) for re-ranking retrieved passages.

:func:`load_reranker` finds the model in a local folder or the local Hugging Face cache (never
downloads) and checks that it gives one relevance score per pair (e.g.
``cross-encoder/ms-marco-MiniLM-L6-v2``). Re-ranking itself is a task:
:func:`clipsearch.tasks.rerank.rerank`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipsearch.errors import ModelNotAvailable
from clipsearch.models.hub import local_source


@dataclass
class Reranker:
    """A loaded ``sentence_transformers.CrossEncoder`` with one relevance output."""

    model: Any
    name: str


def load_reranker(name_or_folder: str | Path, *, device: str | None = None) -> Reranker:
    """Load a cross-encoder from a local folder or the Hugging Face Hub (downloaded on first use).

    Args:
        name_or_folder: a folder, or a hub id (downloaded on first use, then loaded offline).
        device: torch device (``None``: ``$CLIPSEARCH_DEVICE``, else cpu; see
            :func:`clipsearch.models.device.resolve_device`).

    Raises:
        ModelNotAvailable: not on this machine, or a classifier with more than one output.
        DeviceUnavailable: a device that is malformed or not on this machine.
    """
    from sentence_transformers import CrossEncoder

    from clipsearch.models.device import resolve_device
    from clipsearch.models.hf_progress import quiet_transformers

    device = resolve_device(device)

    name = str(name_or_folder)
    source = local_source(name, "rerank")
    try:
        with quiet_transformers():
            model = CrossEncoder(source, device=device, local_files_only=True)
    except OSError as exc:
        raise ModelNotAvailable(
            f"rerank model {name!r} cannot be loaded from {source} ({str(exc).strip().splitlines()[0][:160]}); "
            "give a folder saved by sentence-transformers or a cross-encoder's hub id"
        ) from exc
    except ValueError as exc:  # a config without a sequence-classification head
        raise ModelNotAvailable(f"rerank model {name!r} is not a cross-encoder: {str(exc).splitlines()[0]}") from exc
    labels = int(getattr(model, "num_labels", 1))
    if labels != 1:
        raise ModelNotAvailable(
            f"rerank model {name!r} has {labels} outputs; reranking needs a cross-encoder with one relevance score"
        )
    return Reranker(model, name)
