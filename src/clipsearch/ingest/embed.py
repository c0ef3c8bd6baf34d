"""The embed stage: a batch of decoded pixels or texts in, unit vectors (and grid cells) out.

Each function is one forward pass over one batch, with the encoder passed in: what an engine's
actor holds and calls (the local driver calls them in its own process).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from clipsearch.models.base import encode_pixels

if TYPE_CHECKING:
    from clipsearch.models.base import Encoder, Vectors


def embed_images(
    encoder: Encoder, pixels: np.ndarray, *, cells: bool = True
) -> tuple[Vectors, np.ndarray | None]:
    """Embed decoded images.

    Args:
        encoder: the store's model.
        pixels: ``(n, 3, crop, crop)`` float32, from the decode stage.
        cells: also return each image's grid of cell vectors, for a model with a grid.

    Returns:
        ``(vectors, grids)``: ``(n, dim)`` float32 unit rows, and ``(n, rows, cols, dim)`` cells
        or None (no grid, or ``cells`` False).
    """
    return encode_pixels(encoder, pixels, grid=cells)


def embed_texts(encoder: Encoder, texts: Sequence[str], *, batch_size: int = 32) -> Vectors:
    """Embed texts as stored passages: ``(len(texts), dim)`` float32 unit rows."""
    if not texts:
        return np.zeros((0, encoder.dim), np.float32)
    return encoder.encode_texts(list(texts), batch_size=batch_size, role="passage")
