"""The vector store behind :func:`open_store`: items, their vectors, and search over them.

See :mod:`clipsearch.store.lance_store` for the layout and :mod:`clipsearch.store.ann` for how
queries are answered.
"""

from __future__ import annotations

from clipsearch.store.lance_store import (
    STORE_ENV,
    Hit,
    Item,
    Store,
    default_store_path,
    open_store,
    resolve_store_uri,
)
from clipsearch.store.schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "STORE_ENV",
    "Hit",
    "Item",
    "Store",
    "default_store_path",
    "open_store",
    "resolve_store_uri",
]
