"""An encoder that is loaded on first use.

A store records its model by name; opening the store must not load it (an unchanged folder is
indexed, a store's stats are read, a vector is searched, all without the model). The store's
collection holds a :class:`LazyEncoder`, and indexing and search use it like the encoder itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clipsearch.models.base import Encoder


class LazyEncoder:
    """Stands for the encoder ``load()`` returns; the first attribute read loads it (once, thread-safe)."""

    def __init__(self, load: Callable[[], Encoder]):
        self._load = load
        self._encoder: Encoder | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether the encoder has been loaded."""
        return self._encoder is not None

    def get(self) -> Encoder:
        """The encoder, loaded now if it was not."""
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    self._encoder = self._load()
        return self._encoder

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_load", "_encoder", "_lock"):
            raise AttributeError(name)
        return getattr(self.get(), name)

    def __repr__(self) -> str:
        return f"LazyEncoder({self._encoder!r})" if self._encoder is not None else "LazyEncoder(<not loaded>)"

