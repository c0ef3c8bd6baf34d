"""The embed stage: a batch of decoded pixels or texts in, unit vectors (and grid cells) out.

Each function is one forward pass over one batch, with the encoder passed in: what an engine's
actor holds and calls (the local driver calls them in its own process).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.models.base import encode_pixels

if TYPE_CHECKING:
    from clipsearch.models.base import Encoder, Vectors
    from clipsearch.store import Store

GUARD_KEY = "onnx"
"""The store's meta key for its ONNX record: ``{"bundle", "guard": {"image", "text"}, "precision"}``."""
DEMO_MODEL = "demo"
DEMO_CALIBRATION = 64
"""Demo-world scenes the demo model's int8 guard compares (its users' images are those scenes)."""

log = logging.getLogger("clipsearch")


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


def guard_store(store: Store, encoder: Any, pixels: np.ndarray) -> dict[str, Any] | None:
    """Run the int8 guard of an ONNX encoder's image tower once per store and bundle, on a
    calibration sample: this batch of the user's images (``(n, 3, crop, crop)`` pixels being
    indexed), or demo-world scenes for the demo model. The result goes into the store's meta
    (:data:`GUARD_KEY`, the caller holds the write lock) and the encoder follows it; a failed
    guard keeps the image tower on fp32 and says why in one log line.

    Returns:
        The store's ONNX record (its image guard None when the bundle has no int8 image graph:
        nothing to check, fp32 throughout), or None for a torch encoder.
    """
    guard = getattr(encoder, "guard_images", None)
    if guard is None:
        return None
    key = encoder.info.extra.get("onnx_bundle")
    record = store.meta.get(GUARD_KEY)
    if isinstance(record, dict) and record.get("bundle") == key:
        encoder.follow_guard((record.get("guard") or {}).get("image"))  # checked for this bundle already
        return record
    sample, source = pixels, "first batch"
    if not encoder.bundle["image"].get("onnx_int8"):  # nothing to guard: no int8 graph (a convolutional tower)
        sample = None
    elif encoder.name == DEMO_MODEL:
        from clipsearch.world import render_scene

        rng = np.random.default_rng(0)
        scenes = [render_scene(rng, "eval", caption=False)[0] for _ in range(DEMO_CALIBRATION)]
        sample, source = encoder.preprocess_images(scenes), "demo world"
    result = guard(sample, source) if sample is not None else None
    if result is not None and not result["int8_ok"]:
        log.warning(
            "model %s: int8 image vectors drift from fp32 on %d %s images (cosine %.4f < 0.995): indexing with fp32",
            encoder.name, result["sample"], source, result["min_cosine"],
        )  # fmt: skip
    record = {
        "bundle": key,
        "guard": {"image": result, "text": (encoder.bundle.get("guard") or {}).get("text")},
        "precision": encoder.precision(),
    }
    store.update_meta(**{GUARD_KEY: record})
    return record
