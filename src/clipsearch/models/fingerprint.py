"""A model's identity is what it computes: its embeddings of a few fixed inputs.

A store records its model by name, but a folder retrained in place, a checkpoint replaced, or
another preprocessing keeps the name and changes the vectors, and new vectors would then mix
silently with the old ones. A store therefore keeps the model's *probe*: its unit vectors of a
few fixed texts and one fixed picture, through the model's own tokenizer and preprocessing.
The same weights give the same probe on any machine and backend (up to float error, and int8's
small drift); changed weights or preprocessing move it. This needs nothing of a backend but
the encoder interface, so every model kind, present and future, is covered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from clipsearch.models.base import Encoder

PROBE_TEXTS = (
    "a photo of a dog",
    "two dogs running across a frosty field",
    "a small red circle next to a blue square",
    "the quarterly tax report",
)
SAME_MODEL_COSINE = 0.99
"""Probe vectors at least this close (each one, by cosine) are the same model: float error
across machines and int8 quantisation stay far above it; retraining does not."""


def probe_image() -> Image.Image:
    """A fixed 96x96 picture (shapes on a gradient), drawn the same on every machine."""
    from PIL import Image, ImageDraw

    y, x = np.mgrid[0:96, 0:96]
    pixels = np.stack([x * 2.5, y * 2.5, 255 - (x + y) * 1.2], axis=-1).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 10, 46, 46), fill=(220, 30, 30))
    draw.rectangle((52, 50, 86, 84), fill=(30, 60, 220))
    return image


def probe(encoder: Encoder) -> dict[str, list[list[float]]]:
    """The model's probe: ``{"text": (4, dim) rows, "image": (1, dim) rows}`` for the
    modalities it embeds, as nested lists (what a JSON file keeps)."""
    out: dict[str, list[list[float]]] = {}
    if encoder.supports("text"):
        out["text"] = np.asarray(encoder.encode_texts(list(PROBE_TEXTS)), np.float32).round(6).tolist()
    if encoder.supports("image"):
        out["image"] = np.asarray(encoder.encode_images([probe_image()]), np.float32).round(6).tolist()
    return out


def probe_agreement(recorded: dict[str, list[list[float]]], current: dict[str, list[list[float]]]) -> float:
    """The lowest cosine between matching rows of two probes (1.0: identical; modalities only
    one of them has are not compared; a changed dimension is -1)."""
    lowest = 1.0
    for modality in recorded.keys() & current.keys():
        a = np.asarray(recorded[modality], np.float64)
        b = np.asarray(current[modality], np.float64)
        if a.shape != b.shape:
            return -1.0
        na = np.linalg.norm(a, axis=1)
        nb = np.linalg.norm(b, axis=1)
        cos = (a * b).sum(axis=1) / np.maximum(na * nb, 1e-12)
        lowest = min(lowest, float(cos.min()))
    return lowest
