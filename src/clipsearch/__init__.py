"""clipsearch: search and organise images and text by meaning with CLIP-style dual encoders.

The public API is imported lazily, so ``import clipsearch`` (and ``clipsearch --help``) never
pulls in torch or transformers until a model is actually needed::

    import clipsearch
    model = clipsearch.load_model("minilm")
    vecs = model.encode_texts(["two dogs in the snow"])   # (1, 384) float32, unit rows
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from clipsearch.version import __version__

# public name -> module that defines it
_EXPORTS = {
    "load_model": "clipsearch.models.registry",
    "Encoder": "clipsearch.models.base",
    "ModelInfo": "clipsearch.models.base",
    "Preprocess": "clipsearch.models.base",
    "cosine_similarity": "clipsearch.models.base",
    "load_image": "clipsearch.images",
    "similarity_table": "clipsearch.similarity",
    "embed_inputs": "clipsearch.embed",
    "open_store": "clipsearch.collection",
    "Collection": "clipsearch.collection",
    "Store": "clipsearch.store",
    "classify": "clipsearch.tasks",
    "evaluate_classification": "clipsearch.tasks",
    "localize": "clipsearch.tasks",
    "caption": "clipsearch.tasks",
    "moderate": "clipsearch.tasks",
    "ask": "clipsearch.tasks.qa",
    "ClipsearchError": "clipsearch.errors",
    "ModelNotAvailable": "clipsearch.errors",
    "ImageRefused": "clipsearch.errors",
}

__all__ = [
    "ClipsearchError",
    "Collection",
    "Encoder",
    "ImageRefused",
    "ModelInfo",
    "ModelNotAvailable",
    "Preprocess",
    "Store",
    "ask",
    "caption",
    "classify",
    "cosine_similarity",
    "embed_inputs",
    "evaluate_classification",
    "load_image",
    "load_model",
    "localize",
    "moderate",
    "open_store",
    "similarity_table",
    "__version__",
]

if TYPE_CHECKING:
    from clipsearch.embed import embed_inputs
    from clipsearch.errors import ClipsearchError, ImageRefused, ModelNotAvailable
    from clipsearch.images import load_image
    from clipsearch.models.base import Encoder, ModelInfo, Preprocess, cosine_similarity
    from clipsearch.models.registry import load_model
    from clipsearch.similarity import similarity_table
    from clipsearch.collection import Collection, open_store
    from clipsearch.store import Store
    from clipsearch.tasks import caption, classify, evaluate_classification, localize, moderate
    from clipsearch.tasks.qa import ask


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'clipsearch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
