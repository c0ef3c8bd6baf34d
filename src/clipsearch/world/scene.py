"""What a demo-world scene is, and drawing one at random.

A scene holds 1-3 coloured shapes on a 3x3 grid over a plain, striped, dotted or gradient
background. Every caption of a scene comes with a *claim*, the structured content of the
caption (which objects with which attributes, maybe a count and the background), so
:func:`claim_holds` can tell for any other scene whether the caption is true of it. The trainer
uses that to mark every matching caption-image pair of a batch as a positive.

The eval split differs from the train split in its images: some (colour, shape) pairs
(:data:`HELD_OUT_PAIRS`) never appear in a train image (and, in :mod:`~clipsearch.world.captions`,
some phrasings never in a train caption).

Everything is drawn from the ``numpy.random.Generator`` passed in; the same seed gives the
same scene.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

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


# -- claims ------------------------------------------------------------------------------------
def claim_matchings(claim: dict[str, Any], record: dict[str, Any]) -> int:
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
    return claim_matchings(claim, record) > 0


# -- sampling scenes ---------------------------------------------------------------------------
def check_split(split: str) -> None:
    """Raise ValueError unless ``split`` is one of :data:`SPLITS`."""
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
        claim: optional :func:`~clipsearch.world.captions.caption_scene` claim the scene must satisfy; attributes it does
            not fix are drawn at random. ``None``: an unconstrained scene.

    Returns:
        A :class:`Scene` with 1-3 objects in distinct grid cells.
    """
    check_split(split)
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
    twin[k] = replace(objs[k], color=pick(rng, options), bbox=None)
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
        claim: its caption's claim (:func:`~clipsearch.world.captions.caption_scene`), true of ``scene``.

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
                    objs[k] = replace(objs[k], position=pick(rng, free))
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



def pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    """One of ``options``, drawn from ``rng``."""
    return options[int(rng.integers(len(options)))]
