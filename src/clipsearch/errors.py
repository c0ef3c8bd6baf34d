"""Exceptions that clipsearch raises for problems a user can fix.

The CLI turns each of these into one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations


class ClipsearchError(Exception):
    """Base class: a problem with the user's input, model or store, stated in one sentence."""


class ModelNotAvailable(ClipsearchError):
    """The model name is unknown, or names a hub model whose weights are not on this machine."""


class ImageRefused(ClipsearchError):
    """An image could not be turned into pixels; ``reason`` says why in a few words."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class EmptyText(ClipsearchError, ValueError):
    """Text that is empty or only whitespace cannot be embedded."""


class StoreError(ClipsearchError):
    """The store cannot be opened or written as asked (wrong model, newer schema, ...)."""
