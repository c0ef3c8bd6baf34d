"""The vector store: rows of images and texts, their vectors and grid cells, and nearest-row search.

The store knows nothing of models: :mod:`clipsearch.collection` pairs it with its encoder. See
:mod:`clipsearch.store.lance_store` for the layout and :mod:`clipsearch.store.ann` for how
queries are answered.
"""

from __future__ import annotations

from clipsearch.store.lance_store import (
    STORE_ENV,
    Hit,
    Item,
    ModelRecord,
    Neighbours,
    Store,
    Vectors,
    default_store_path,
    resolve_store_uri,
    same_model,
)
from clipsearch.store.schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "STORE_ENV",
    "Hit",
    "Item",
    "ModelRecord",
    "Neighbours",
    "Store",
    "Vectors",
    "default_store_path",
    "resolve_store_uri",
    "same_model",
]
