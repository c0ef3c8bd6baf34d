"""Drawing demo-world scenes: backgrounds, antialiased shapes, and each object's exact box.

``bbox`` is the tight box of the drawn object in pixels of the image, PIL style: ``x0, y0``
inclusive, ``x1, y1`` exclusive (pixels with at least a quarter of the object's coverage count
as drawn).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.world.captions import caption_scene
from clipsearch.world.scene import (
    BACKGROUND_COLORS,
    BACKGROUND_KINDS,
    COLORS,
    POSITIONS,
    SHAPES,
    Background,
    Scene,
    sample_canvas_size,
    sample_scene,
)

if TYPE_CHECKING:
    from PIL import Image

COVERAGE_THRESHOLD = 64  # mask value (of 255) from which a pixel counts as drawn, for bboxes
SUPERSAMPLE = 4  # object masks are drawn this many times larger, then box-filtered down

# Unit-box geometry of each shape, in [-1, 1]^2 (y down): polygons, or ellipse radii for circle/ring.
_STAR = [
    ((0.42 if k % 2 else 1.0) * math.cos(-math.pi / 2 + k * math.pi / 5),
     (0.42 if k % 2 else 1.0) * math.sin(-math.pi / 2 + k * math.pi / 5) + 0.095)
    for k in range(10)
]  # fmt: skip


def _heart() -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    x = x / 16.0
    y = (y - (y.max() + y.min()) / 2) / 16.0
    return [(float(a), float(b)) for a, b in zip(x, y)]


SHAPE_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)],
    "triangle": [(0.0, -0.95), (0.97, 0.8), (-0.97, 0.8)],
    "star": _STAR,
    "heart": _heart(),
    "cross": [
        (-0.3, -0.95), (0.3, -0.95), (0.3, -0.3), (0.95, -0.3), (0.95, 0.3), (0.3, 0.3),
        (0.3, 0.95), (-0.3, 0.95), (-0.3, 0.3), (-0.95, 0.3), (-0.95, -0.3), (-0.3, -0.3),
    ],
    "diamond": [(0.0, -1.0), (0.66, 0.0), (0.0, 1.0), (-0.66, 0.0)],
}  # fmt: skip
RING_INNER = 0.55  # inner radius of a ring, relative to the outer
_THRESHOLD_LUT = [255 if v >= COVERAGE_THRESHOLD else 0 for v in range(256)]


# -- drawing -----------------------------------------------------------------------------------
def _second_tone(rgb: tuple[int, int, int], tone: str) -> tuple[int, int, int]:
    target = 255.0 if tone == "lighter" else 0.0
    if (tone == "lighter" and min(rgb) > 235) or (tone == "darker" and max(rgb) < 20):
        target = 255.0 - target  # no room that way: shade the other way
    return tuple(int(round(c + 0.2 * (target - c))) for c in rgb)  # type: ignore[return-value]


def draw_background(bg: Background, width: int, height: int) -> "Image.Image":
    """The background of a scene as an RGB image of ``width`` x ``height``."""
    from PIL import Image

    base = np.asarray(BACKGROUND_COLORS[bg.color], dtype=np.float32)
    if bg.kind == "plain":
        return Image.new("RGB", (width, height), BACKGROUND_COLORS[bg.color])
    other = np.asarray(_second_tone(BACKGROUND_COLORS[bg.color], bg.params["tone"]), dtype=np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    p = bg.params
    if bg.kind == "gradient":
        t = ys / max(height - 1, 1) if p["direction"] == "vertical" else xs / max(width - 1, 1)
    elif bg.kind == "striped":
        coord = {"horizontal": ys, "vertical": xs, "diagonal": (xs + ys) / math.sqrt(2)}[p["orientation"]]
        t = (np.floor(coord / (p["period"] / 2.0)) % 2).astype(np.float32)
    elif bg.kind == "dotted":
        per = float(p["period"])
        dx = xs - (np.floor(xs / per) + 0.5) * per
        dy = ys - (np.floor(ys / per) + 0.5) * per
        t = np.clip(p["radius"] + 0.5 - np.sqrt(dx * dx + dy * dy), 0.0, 1.0)
    else:
        raise ValueError(f"unknown background kind {bg.kind!r}; use one of {', '.join(BACKGROUND_KINDS)}")
    arr = base + t[..., None] * (other - base)
    return Image.fromarray(np.round(arr).astype(np.uint8), "RGB")


def shape_mask(shape: str, side: float, offset: tuple[float, float], box: int) -> "Image.Image":
    """An antialiased ``"L"`` mask ``box`` x ``box`` pixels with ``shape`` drawn in a square of
    ``side`` pixels whose top-left corner is at ``offset`` inside the mask."""
    from PIL import Image, ImageDraw

    ss = SUPERSAMPLE
    big = Image.new("L", (box * ss, box * ss), 0)
    draw = ImageDraw.Draw(big)
    half = side * ss / 2.0
    cx, cy = (offset[0] * ss + half), (offset[1] * ss + half)

    def pt(u: float, v: float) -> tuple[float, float]:
        return (cx + u * half, cy + v * half)

    if shape in ("circle", "ring"):
        draw.ellipse([pt(-1, -1), pt(1, 1)], fill=255)
        if shape == "ring":
            draw.ellipse([pt(-RING_INNER, -RING_INNER), pt(RING_INNER, RING_INNER)], fill=0)
    elif shape in SHAPE_POLYGONS:
        draw.polygon([pt(u, v) for u, v in SHAPE_POLYGONS[shape]], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; use one of {', '.join(SHAPES)}")
    return big.reduce(ss)


def draw_scene(rng: np.random.Generator, scene: Scene, width: int, height: int) -> "Image.Image":
    """Draw ``scene`` on a ``width`` x ``height`` canvas; sets each object's ``bbox``.

    Objects are squares in image pixels (a circle stays round whatever the aspect ratio):
    large ones span 75-95% of the smaller side of their grid cell, small ones 42-55%, with a
    random offset that keeps them inside the cell.
    """
    img = draw_background(scene.background, width, height)
    cell_w, cell_h = width / 3.0, height / 3.0
    for obj in scene.objects:
        row, col = divmod(POSITIONS.index(obj.position), 3)
        lo, hi = (0.75, 0.95) if obj.size == "large" else (0.42, 0.55)
        side = float(rng.uniform(lo, hi)) * min(cell_w, cell_h)
        cx = (col + 0.5) * cell_w + float(rng.uniform(-0.5, 0.5)) * (cell_w - side)
        cy = (row + 0.5) * cell_h + float(rng.uniform(-0.5, 0.5)) * (cell_h - side)
        x0f, y0f = cx - side / 2.0, cy - side / 2.0
        x0, y0 = int(math.floor(x0f)), int(math.floor(y0f))
        box = int(math.ceil(side)) + 2
        mask = shape_mask(obj.shape, side, (x0f - x0, y0f - y0), box)
        jitter = rng.integers(-10, 11, size=3)
        rgb = tuple(int(v) for v in np.clip(np.asarray(COLORS[obj.color]) + jitter, 0, 255))
        img.paste(rgb, (x0, y0, x0 + box, y0 + box), mask)
        tight = mask.point(_THRESHOLD_LUT).getbbox()
        if tight is None:  # cannot happen for sides >= 2 px; keep the record well formed anyway
            tight = (0, 0, box, box)
        bx0, by0, bx1, by1 = tight
        obj.bbox = [max(0, x0 + bx0), max(0, y0 + by0), min(width, x0 + bx1), min(height, y0 + by1)]
    return img


def render_scene(
    rng: np.random.Generator,
    split: str = "train",
    size: tuple[int, int] | None = None,
    *,
    claim: dict | None = None,
    caption: bool = True,
) -> tuple["Image.Image", dict[str, Any]]:
    """Sample, draw and caption one scene in memory.

    Args:
        rng: the source of all randomness.
        split: "train" or "eval".
        size: ``(width, height)`` of the image; ``None``: random, sides 160-640 px.
        claim: a claim the scene must satisfy (see :func:`~clipsearch.world.scene.sample_scene`).
        caption: also write a fresh caption and claim into the record.

    Returns:
        ``(image, record)``: an RGB ``PIL.Image`` and its metadata record (as in
        ``metadata.jsonl``, without ``file``).
    """
    scene = sample_scene(rng, split, claim)
    w, h = size if size is not None else sample_canvas_size(rng)
    img = draw_scene(rng, scene, int(w), int(h))
    record: dict[str, Any] = {"split": split, "width": int(w), "height": int(h)}
    if caption:
        text, made_claim, phrasing = caption_scene(rng, scene)
        record = {"caption": text, **record, "phrasing": phrasing}
        record.update(scene.to_record())
        record["claim"] = made_claim
    else:
        record.update(scene.to_record())
    return img, record
