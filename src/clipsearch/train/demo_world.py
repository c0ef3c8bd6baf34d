"""The demo world: generated picture scenes with captions and exact ground truth.

A scene holds 1-3 coloured shapes on a 3x3 grid over a plain, striped, dotted or gradient
background. Every scene comes with a caption and a *claim*, the structured content of the
caption (which objects with which attributes, maybe a count and the background), so
:func:`claim_holds` can tell for any other scene whether the caption is true of it. The trainer
uses that to mark every matching caption-image pair of a batch as a positive.

The eval split differs from the train split in two ways: some (colour, shape) pairs
(:data:`HELD_OUT_PAIRS`) never appear in a train image, and some caption phrasings
(:data:`EVAL_TEMPLATES`, :data:`EVAL_QUERY_TEMPLATES`) are never used for train captions.

Everything is drawn from the ``numpy.random.Generator`` passed in; the same seed gives the
same world byte for byte (PNG and JPEG encodings are deterministic at fixed settings).

Layout of a generated world folder: ``OUT/000000.jpg``, ``OUT/000001.png``, ... and
``OUT/metadata.jsonl`` with one JSON object per image::

    {"file": "000000.jpg", "caption": "...", "split": "train", "phrasing": "train",
     "width": 412, "height": 230,
     "objects": [{"shape": "star", "color": "red", "size": "small", "position": "top left",
                  "bbox": [x0, y0, x1, y1]}],
     "background": {"kind": "striped", "color": "light blue", ...},
     "claim": {"objects": [{"shape": "star", "color": "red"}], "count": null, "background": null}}

``bbox`` is the tight box of the drawn object in pixels of the saved image, PIL style:
``x0, y0`` inclusive, ``x1, y1`` exclusive (pixels with at least a quarter of the object's
coverage count as drawn).
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross", "diamond", "ring")

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "orange": (245, 135, 20),
    "yellow": (245, 215, 35),
    "green": (35, 155, 60),
    "blue": (35, 80, 215),
    "purple": (125, 45, 170),
    "pink": (245, 125, 185),
    "brown": (120, 72, 30),
    "black": (20, 20, 20),
    "white": (250, 250, 250),
    "gray": (128, 128, 128),
}
"""Object colour names and their nominal RGB (each object jitters a little around it)."""

SIZES = ("small", "large")

POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
"""The 3x3 grid, row-major: ``POSITIONS[3 * row + col]``."""

BACKGROUND_KINDS = ("plain", "striped", "dotted", "gradient")

BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "light gray": (205, 205, 205),
    "dark gray": (70, 70, 70),
    "black": (0, 0, 0),
    "beige": (235, 222, 190),
    "light blue": (185, 215, 240),
    "light green": (195, 235, 195),
    "dark blue": (25, 35, 80),
}

HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "star"),
        ("blue", "heart"),
        ("green", "triangle"),
        ("yellow", "cross"),
        ("purple", "circle"),
        ("orange", "ring"),
        ("pink", "square"),
        ("white", "diamond"),
    }
)
"""(colour, shape) pairs that never appear in a train-split image; each colour and each shape
still appears in train images in other pairs."""

SPLITS = ("train", "eval")

MIN_CONTRAST = 110.0  # Euclidean RGB distance an object keeps from every background colour
HELD_OUT_WEIGHT = 4.0  # eval split: how much likelier a held-out pair is than any other pair
EVAL_PHRASING_PROB = 0.5  # eval split: share of captions in eval-only phrasings
COVERAGE_THRESHOLD = 64  # mask value (of 255) from which a pixel counts as drawn, for bboxes
SUPERSAMPLE = 4  # object masks are drawn this many times larger, then box-filtered down
JPEG_QUALITY = 90

# -- caption vocabulary ----------------------------------------------------------------------
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
COLOR_WORDS = {name: (name,) for name in COLORS} | {"gray": ("gray", "grey")}
POSITION_PHRASES = {
    "top left": ("in the top left corner", "at the top left", "in the upper left corner"),
    "top": ("at the top", "at the top center", "in the upper middle"),
    "top right": ("in the top right corner", "at the top right", "in the upper right corner"),
    "left": ("on the left", "on the left side", "at the left"),
    "center": ("in the center", "in the middle", "at the center"),
    "right": ("on the right", "on the right side", "at the right"),
    "bottom left": ("in the bottom left corner", "at the bottom left", "in the lower left corner"),
    "bottom": ("at the bottom", "at the bottom center", "in the lower middle"),
    "bottom right": ("in the bottom right corner", "at the bottom right", "in the lower right corner"),
}
BACKGROUND_WORDS = {
    "plain": ("plain",),
    "striped": ("striped",),
    "dotted": ("dotted", "polka dot"),
    "gradient": ("gradient",),
}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}

TRAIN_TEMPLATES = (
    "{objs}",
    "a picture of {objs}",
    "a photo of {objs}",
    "an image with {objs}",
    "an image showing {objs}",
    "a drawing of {objs}",
    "{objs} on a {bg} background",
    "a {bg} background with {objs}",
    "{objs}, {bg} background",
)
"""Caption phrasings of the train split (``{objs}``: object list, ``{bg}``: background)."""

EVAL_TEMPLATES = (
    "there {be} {objs} somewhere in this picture",
    "somewhere in this picture you can see {objs}",
    "this scene contains {objs}",
    "can you spot {objs}?",
    "{objs} against a {bg} backdrop",
    "look closely: {objs}",
)
"""Caption phrasings used only in the eval split; never in a train caption."""

TRAIN_QUERY_TEMPLATES = ("{obj}", "a photo of {obj}", "an image showing {obj}")
"""Single-object queries in train phrasings (``{obj}`` like "a red star")."""

EVAL_QUERY_TEMPLATES = (
    "there is {obj} somewhere in this picture",
    "this scene contains {obj}",
    "can you spot {obj}?",
)
"""Single-object queries in eval-only phrasings."""

EVAL_ONLY_MARKERS = ("somewhere in this picture", "this scene contains", "can you spot", "backdrop", "look closely")
"""Substrings that occur in eval-only phrasings and in no train caption."""

TRAIN_JOINERS = ((" and ", ", ", " and "), (" with ", ", ", " and "), (" as well as ", ", ", " and "))
"""How two objects are joined, then how three are: ``(pair, first_of_three, last_of_three)``."""

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


@dataclass
class SceneObject:
    """One shape in a scene; ``bbox`` is filled in when the scene is drawn."""

    shape: str
    color: str
    size: str
    position: str
    bbox: list[int] | None = None  # [x0, y0, x1, y1] in pixels, x1/y1 exclusive


@dataclass
class Background:
    kind: str  # one of BACKGROUND_KINDS
    color: str  # a BACKGROUND_COLORS name (the base colour of a pattern)
    params: dict[str, Any] = field(default_factory=dict)  # pattern details (orientation, period...)


@dataclass
class Scene:
    objects: list[SceneObject]
    background: Background
    split: str

    def to_record(self) -> dict[str, Any]:
        return {
            "objects": [asdict(o) for o in self.objects],
            "background": {"kind": self.background.kind, "color": self.background.color, **self.background.params},
        }


# -- sampling scenes ---------------------------------------------------------------------------
def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


@functools.lru_cache(maxsize=None)
def _contrasts(color: str, bg_color: str) -> bool:
    a = np.asarray(COLORS[color], dtype=float)
    b = np.asarray(BACKGROUND_COLORS[bg_color], dtype=float)
    return float(np.linalg.norm(a - b)) >= MIN_CONTRAST


@functools.lru_cache(maxsize=None)
def _allowed_pairs(split: str, bg_color: str, color: str | None, shape: str | None) -> tuple[tuple[str, str], ...]:
    """(colour, shape) pairs an object may take: allowed in ``split``, contrasting with the background."""
    return tuple(
        (c, s)
        for s in ([shape] if shape else SHAPES)
        for c in ([color] if color else COLORS)
        if pair_allowed(c, s, split) and _contrasts(c, bg_color)
    )


def pair_allowed(color: str, shape: str, split: str) -> bool:
    """Whether a (colour, shape) object may appear in an image of ``split``."""
    return split != "train" or (color, shape) not in HELD_OUT_PAIRS


def sample_scene(rng: np.random.Generator, split: str, claim: dict | None = None) -> Scene:
    """Draw a random scene description (no pixels yet) that makes ``claim`` true.

    Args:
        rng: the source of all randomness.
        split: "train" (held-out pairs never appear) or "eval" (held-out pairs are likelier).
        claim: optional :func:`caption_scene` claim the scene must satisfy; attributes it does
            not fix are drawn at random. ``None``: an unconstrained scene.

    Returns:
        A :class:`Scene` with 1-3 objects in distinct grid cells.
    """
    _check_split(split)
    claim = claim or {}
    claimed = [dict(o) for o in claim.get("objects") or []]
    count = claim.get("count")
    n_min = max(1, len(claimed))
    n = int(count) if count else int(rng.integers(n_min, 4))
    if n < n_min or n > 3:
        raise ValueError(f"claim needs {len(claimed)} objects but a count of {count}; scenes hold 1-3 objects")

    bg_claim = claim.get("background") or {}
    kind = bg_claim.get("kind") or BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    claimed_colors = {o["color"] for o in claimed if o.get("color")}
    bg_names = [bg_claim["color"]] if bg_claim.get("color") else list(BACKGROUND_COLORS)
    bg_ok = [b for b in bg_names if all(_contrasts(c, b) for c in claimed_colors)]
    if not bg_ok:
        raise ValueError(f"no background colour contrasts with the claimed colours {sorted(claimed_colors)}")
    bg_color = bg_ok[int(rng.integers(len(bg_ok)))]
    background = Background(kind, bg_color, _background_params(rng, kind))

    taken = {o["position"] for o in claimed if o.get("position")}
    specs = claimed + [{} for _ in range(n - len(claimed))]
    objects = []
    for spec in specs:
        pairs = _allowed_pairs(split, bg_color, spec.get("color"), spec.get("shape"))
        if not pairs:
            raise ValueError(f"no allowed (colour, shape) for {spec} in split {split!r}")
        weights = np.asarray([HELD_OUT_WEIGHT if split == "eval" and p in HELD_OUT_PAIRS else 1.0 for p in pairs])
        color, shape = pairs[int(rng.choice(len(pairs), p=weights / weights.sum()))]
        size = spec.get("size") or SIZES[int(rng.integers(len(SIZES)))]
        position = spec.get("position")
        if not position:
            free = [p for p in POSITIONS if p not in taken]
            position = free[int(rng.integers(len(free)))]
            taken.add(position)
        objects.append(SceneObject(shape, color, size, position))
    # Object order in the record is the drawing order; shuffle so claimed objects are not first.
    order = rng.permutation(len(objects))
    return Scene([objects[i] for i in order], background, split)


def binding_twin(rng: np.random.Generator, scene: Scene) -> Scene | None:
    """A copy of ``scene`` whose colours are bound to other shapes: a hard negative for training.

    With two or more colours among the objects, the colours are permuted among the objects so
    that at least one (colour, shape) pair changes ("a red star and a blue circle" becomes "a
    blue star and a red circle"): every colour and shape is still present, in the same places,
    so only the binding tells the two apart. Otherwise one object takes another colour that
    contrasts with the background. Sizes, positions and the background are kept, and every
    new pair is allowed in the scene's split (held-out pairs stay out of train images).

    Returns:
        The twin, or ``None`` when no allowed change exists.
    """
    objs = scene.objects
    bg = scene.background.color
    colors = [o.color for o in objs]
    if len(set(colors)) > 1:
        for _ in range(8):
            perm = [colors[i] for i in rng.permutation(len(objs))]
            pairs = [(c, o.shape) for c, o in zip(perm, objs)]
            changed = sorted(pairs) != sorted((o.color, o.shape) for o in objs)
            if changed and all(pair_allowed(c, s, scene.split) for c, s in pairs):
                return Scene([replace(o, color=c, bbox=None) for c, o in zip(perm, objs)], scene.background, scene.split)
    k = int(rng.integers(len(objs)))
    options = [c for c, _ in _allowed_pairs(scene.split, bg, None, objs[k].shape) if c != objs[k].color]
    if not options:
        return None
    twin = [replace(o, bbox=None) for o in objs]
    twin[k] = replace(objs[k], color=_pick(rng, options), bbox=None)
    return Scene(twin, scene.background, scene.split)


TWIN_CHANGES = ("position", "size", "binding")
"""What :func:`contrast_twin` may change, each only when the claim names it."""


def contrast_twin(rng: np.random.Generator, scene: Scene, claim: dict[str, Any]) -> Scene | None:
    """A copy of ``scene`` of which ``claim`` is false, changed in one thing the claim names.

    Random batches almost never hold two scenes that only a position, a size or the binding
    of colours to shapes tells apart, so a contrastive loss over them never needs those
    words. This twin, drawn with the identical layout, is such a scene for its own caption:
    a claimed object moved to a free cell of the 3x3 grid, given the other size, or the
    colours bound to other shapes (:func:`binding_twin`). The kinds the claim names are tried
    in random order, a move or resize on each object in turn; held-out pairs stay out of train
    images.

    Args:
        rng: the source of all randomness.
        scene: the captioned scene.
        claim: its caption's claim (:func:`caption_scene`), true of ``scene``.

    Returns:
        The twin, or ``None`` when no such change makes the claim false.
    """
    parts = claim.get("objects") or []
    named = {key for part in parts for key in part}
    kinds = [k for k in TWIN_CHANGES if (k == "binding" and "color" in named) or k in named]
    for kind in [kinds[i] for i in rng.permutation(len(kinds))]:
        tries = range(4) if kind == "binding" else rng.permutation(len(scene.objects))  # every object once
        for k in tries:
            if kind == "binding":
                twin = binding_twin(rng, scene)
            else:
                objs = [replace(o, bbox=None) for o in scene.objects]
                if kind == "size":
                    objs[k] = replace(objs[k], size=SIZES[1 - SIZES.index(objs[k].size)])
                else:
                    free = [p for p in POSITIONS if p not in {o.position for o in objs}]
                    objs[k] = replace(objs[k], position=_pick(rng, free))
                twin = Scene(objs, scene.background, scene.split)
            if twin is not None and not claim_holds(claim, twin.to_record()):
                return twin
    return None


def _background_params(rng: np.random.Generator, kind: str) -> dict[str, Any]:
    if kind == "plain":
        return {}
    tone = "lighter" if rng.random() < 0.5 else "darker"
    if kind == "striped":
        return {
            "orientation": ("horizontal", "vertical", "diagonal")[int(rng.integers(3))],
            "period": int(rng.integers(8, 25)),
            "tone": tone,
        }
    if kind == "dotted":
        return {"period": int(rng.integers(10, 25)), "radius": round(float(rng.uniform(1.5, 3.5)), 2), "tone": tone}
    if kind == "gradient":
        return {"direction": ("vertical", "horizontal")[int(rng.integers(2))], "tone": tone}
    raise ValueError(f"unknown background kind {kind!r}; use one of {', '.join(BACKGROUND_KINDS)}")


def sample_canvas_size(rng: np.random.Generator, lo: int = 160, hi: int = 640) -> tuple[int, int]:
    """A random ``(width, height)`` with sides in ``[lo, hi]`` and aspect ratio within 1:2..2:1."""
    if not 16 <= lo <= hi:
        raise ValueError(f"canvas side range {lo}..{hi} is invalid; need 16 <= lo <= hi")
    w = int(rng.integers(lo, hi + 1))
    h = int(rng.integers(max(lo, (w + 1) // 2), min(hi, 2 * w) + 1))
    if rng.random() < 0.5:
        w, h = h, w
    return w, h


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
        claim: a claim the scene must satisfy (see :func:`sample_scene`).
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


# -- captions ----------------------------------------------------------------------------------
def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def object_phrase(rng: np.random.Generator, obj: dict[str, str], say_color: str | None = None) -> str:
    """Words for one (partial) object description such as ``{"color": "red", "shape": "star"}``,
    with an article: "a small red star in the top left corner".

    ``say_color`` names another colour in place of the object's with the same random draws.
    """
    words = []
    if obj.get("size"):
        words.append(_pick(rng, SIZE_WORDS[obj["size"]]))
    if obj.get("color"):
        word = _pick(rng, COLOR_WORDS[obj["color"]])
        words.append(word if say_color in (None, obj["color"]) else COLOR_WORDS[say_color][0])
    words.append(obj.get("shape") or _pick(rng, ("shape", "object")))
    phrase = _article(" ".join(words))
    if obj.get("position"):
        phrase += " " + _pick(rng, POSITION_PHRASES[obj["position"]])
    return phrase


def _join(rng: np.random.Generator, phrases: list[str]) -> str:
    pair, first, last = TRAIN_JOINERS[int(rng.integers(len(TRAIN_JOINERS)))]
    if len(phrases) == 1:
        return phrases[0]
    if len(phrases) == 2:
        return phrases[0] + pair + phrases[1]
    return first.join(phrases[:-1]) + last + phrases[-1]


def caption_scene(
    rng: np.random.Generator, scene: Scene, phrasing: str | None = None, recolor: Sequence[str] | None = None
) -> tuple[str, dict[str, Any], str]:
    """A random caption of ``scene``, true of it, and the claim it makes.

    Captions vary in which objects they name (all, or only some), which attributes they give
    (the shape nearly always, the colour usually, size and position sometimes), word choice
    (big/large, small/little/tiny, gray/grey, several position phrasings), object order and
    template. Train scenes use :data:`TRAIN_TEMPLATES`; eval scenes use
    :data:`EVAL_TEMPLATES` for about half of their captions.

    Args:
        rng: the source of all randomness.
        scene: the scene to describe.
        phrasing: "train" or "eval" to force the template family; ``None``: by split.
        recolor: a colour per object of the scene to name instead of its own, with the very
            same random choices: the caption of a recoloured scene (such as its
            :func:`binding_twin`) in the same words. The claim names these colours too.

    Returns:
        ``(caption, claim, phrasing)``; the claim is ``{"objects": [partial attribute dicts],
        "count": int | None, "background": {"kind"?, "color"} | None}``.
    """
    if phrasing is None:
        phrasing = "eval" if scene.split == "eval" and rng.random() < EVAL_PHRASING_PROB else "train"
    if phrasing not in SPLITS:
        raise ValueError(f"unknown phrasing {phrasing!r}; use one of {', '.join(SPLITS)}")
    n = len(scene.objects)
    if recolor is not None and len(recolor) != n:
        raise ValueError(f"recolor needs a colour for each of the {n} objects, got {len(recolor)}")
    mention_all = n == 1 or rng.random() < 0.7
    k = n if mention_all else int(rng.integers(1, n))
    order = rng.permutation(n)[:k]
    chosen = [scene.objects[i] for i in order]
    said = [recolor[i] for i in order] if recolor is not None else [o.color for o in chosen]
    claimed = []
    for obj in chosen:
        part: dict[str, str] = {}
        shape_named = rng.random() < 0.95
        if shape_named:
            part["shape"] = obj.shape
        if rng.random() < 0.85 or not shape_named:
            part["color"] = obj.color
        if rng.random() < 0.5:
            part["size"] = obj.size
        if rng.random() < 0.35:
            part["position"] = obj.position
        claimed.append(part)
    objs = _join(rng, [object_phrase(rng, p, c) for p, c in zip(claimed, said)])
    claimed = [p | {"color": c} if "color" in p else p for p, c in zip(claimed, said)]

    templates = TRAIN_TEMPLATES if phrasing == "train" else EVAL_TEMPLATES
    template = _pick(rng, templates)
    count = None
    if phrasing == "train" and mention_all and n > 1 and rng.random() < 0.15:
        template, count = "{count} shapes: {objs}", n
    bg_claim = None
    bg_text = ""
    if "{bg}" in template:
        bg = scene.background
        named_kind = bg.kind != "plain" or rng.random() < 0.5
        bg_text = bg.color + (" " + _pick(rng, BACKGROUND_WORDS[bg.kind]) if named_kind else "")
        bg_claim = {"color": bg.color} | ({"kind": bg.kind} if named_kind else {})
    text = template.format(objs=objs, bg=bg_text, be="is" if k == 1 else "are", count=COUNT_WORDS.get(n, str(n)))
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:] + ("" if text.endswith("?") else ".")
    return text, {"objects": claimed, "count": count, "background": bg_claim}, phrasing


def object_query(color: str, shape: str, phrasing: str = "train", variant: int = 0) -> str:
    """A single-object query such as "there is a red star somewhere in this picture".

    Args:
        color, shape: names from :data:`COLORS` and :data:`SHAPES`.
        phrasing: "train" (:data:`TRAIN_QUERY_TEMPLATES`) or "eval" (:data:`EVAL_QUERY_TEMPLATES`).
        variant: which template of the family (taken modulo its length).
    """
    if color not in COLORS:
        raise ValueError(f"unknown colour {color!r}; use one of {', '.join(COLORS)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; use one of {', '.join(SHAPES)}")
    if phrasing not in SPLITS:
        raise ValueError(f"unknown phrasing {phrasing!r}; use one of {', '.join(SPLITS)}")
    templates = TRAIN_QUERY_TEMPLATES if phrasing == "train" else EVAL_QUERY_TEMPLATES
    return templates[variant % len(templates)].format(obj=_article(f"{color} {shape}"))


def _orderings(claim: dict[str, Any], record: dict[str, Any]) -> int:
    """In how many orders the claimed objects map onto distinct scene objects that match every
    attribute they name; 0 when a claimed count or background does not match either."""
    objects = record["objects"]
    if claim.get("count") is not None and claim["count"] != len(objects):
        return 0
    bg = claim.get("background")
    if bg and any(record["background"].get(key) != value for key, value in bg.items()):
        return 0
    wanted = claim.get("objects") or []
    if len(wanted) > len(objects):
        return 0
    fits = [[j for j, o in enumerate(objects) if all(o[key] == v for key, v in w.items())] for w in wanted]
    return sum(1 for chosen in itertools.product(*fits) if len(set(chosen)) == len(chosen))


def claim_holds(claim: dict[str, Any], record: dict[str, Any]) -> bool:
    """Whether a caption's claim is true of a scene record (``objects`` and ``background``).

    Each claimed object must match a distinct scene object on every attribute it names; a
    claimed count must equal the number of objects; a claimed background must match on the
    attributes it names.
    """
    return _orderings(claim, record) > 0


def claim_likelihood(claim: dict[str, Any], record: dict[str, Any], phrasing: str = "train") -> float:
    """How likely :func:`caption_scene` is to make ``claim`` for the scene ``record``, up to a
    factor that depends on the claim alone.

    It follows the choices :func:`caption_scene` makes that depend on the scene: how many of
    its n objects are named (all of them with probability 0.7 when n > 1, else k of n with
    0.3 / (n - 1) each), which ones in which order (every ordering of a matching selection
    counts), the "{count} shapes" template (0.15 of full mentions with train phrasing) and
    whether the background's kind is named. What it leaves out (which attributes are named,
    word choice, template) has the same probability for every scene, so ratios between scenes
    are exact: ranking scenes by it is the Bayes-optimal answer to "which scene is this
    caption of?". Zero when the claim is false of the scene.
    """
    orderings = _orderings(claim, record)
    if orderings == 0:
        return 0.0
    p = 1.0
    bg = claim.get("background")
    if bg:
        if record["background"]["kind"] == "plain":
            p *= 0.5  # a plain background's kind is named half the time
        elif "kind" not in bg:
            return 0.0  # a patterned background always has its kind named
    n, k = len(record["objects"]), len(claim.get("objects") or [])
    if n == 1:
        p_k = 1.0
    elif k == n:
        full_count = 0.15 if phrasing == "train" else 0.0
        p_k = 0.7 * (full_count if claim.get("count") is not None else 1.0 - full_count)
    else:
        p_k = 0.3 / (n - 1)
    return p * p_k * orderings * math.factorial(n - k) / math.factorial(n)


# -- writing a world to disk -------------------------------------------------------------------
def encode_image(img: "Image.Image", fmt: str) -> bytes:
    """Deterministic bytes of ``img`` as "jpeg" (quality :data:`JPEG_QUALITY`) or "png"."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    elif fmt == "png":
        img.save(buf, format="PNG")
    else:
        raise ValueError(f"unknown image format {fmt!r}; use jpeg or png")
    return buf.getvalue()


SPLIT_STREAMS = {"train": 0, "eval": 1}  # a split's stream id, so train and eval never repeat


def generate_world(
    out: str | Path,
    n: int = 1000,
    *,
    seed: int = 0,
    split: str = "train",
    size_range: tuple[int, int] = (160, 640),
    progress: bool = False,
) -> Path:
    """Write ``n`` scenes (images and ``metadata.jsonl``) into the folder ``out``.

    Images are JPEG or PNG at random (about half each), named ``000000.jpg`` etc. The same
    ``(n, seed, split, size_range)`` gives byte-identical files.

    Args:
        out: the folder to write; created if missing; must not hold a metadata.jsonl already.
        n: number of images.
        seed: world seed.
        split: "train" or "eval".
        size_range: smallest and largest image side in pixels.
        progress: show a progress bar on stderr.

    Returns:
        The path of ``metadata.jsonl``.
    """
    _check_split(split)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    out = Path(out)
    meta_path = out / "metadata.jsonl"
    if meta_path.exists():
        raise ValueError(f"{meta_path} already exists; choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(seed), SPLIT_STREAMS[split]])
    steps = range(n)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc=f"demo world ({split})", unit="img")
    lines = []
    for i in steps:
        img, record = render_scene(rng, split, sample_canvas_size(rng, *size_range))
        fmt = "jpeg" if rng.random() < 0.5 else "png"
        name = f"{i:06d}.{'jpg' if fmt == 'jpeg' else 'png'}"
        (out / name).write_bytes(encode_image(img, fmt))
        lines.append(json.dumps({"file": name, **record}, ensure_ascii=False))
    meta_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return meta_path
