"""Transformers' own progress bars ("Loading weights", "Writing model shards").

The library never draws progress itself, and a bar from transformers would break that rule
from below: loading hides them, and saving shows them only where the face asks for them (a
terminal, not a log).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_transformers(quiet: bool = True) -> Iterator[None]:
    """Hide transformers' progress bars inside the block when ``quiet``, then restore the setting."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
