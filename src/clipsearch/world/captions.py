"""Captions of demo-world scenes, with the claim each makes, and single-object queries.

Captions vary in which objects they name, which attributes they give, word choice, object
order and template. The eval split's captions use eval-only phrasings (:data:`EVAL_TEMPLATES`,
:data:`EVAL_QUERY_TEMPLATES`) for about half of them; no train caption ever does.
:func:`claim_likelihood` follows :func:`caption_scene`'s choices to say how likely a caption's
claim is for any scene.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from clipsearch.world.scene import COLORS, SHAPES, SPLITS, Scene, claim_matchings, pick

EVAL_PHRASING_PROB = 0.5  # eval split: share of captions in eval-only phrasings

# -- vocabulary -------------------------------------------------------------------------------
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


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def object_phrase(rng: np.random.Generator, obj: dict[str, str], say_color: str | None = None) -> str:
    """Words for one (partial) object description such as ``{"color": "red", "shape": "star"}``,
    with an article: "a small red star in the top left corner".

    ``say_color`` names another colour in place of the object's with the same random draws.
    """
    words = []
    if obj.get("size"):
        words.append(pick(rng, SIZE_WORDS[obj["size"]]))
    if obj.get("color"):
        word = pick(rng, COLOR_WORDS[obj["color"]])
        words.append(word if say_color in (None, obj["color"]) else COLOR_WORDS[say_color][0])
    words.append(obj.get("shape") or pick(rng, ("shape", "object")))
    phrase = _article(" ".join(words))
    if obj.get("position"):
        phrase += " " + pick(rng, POSITION_PHRASES[obj["position"]])
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
            :func:`~clipsearch.world.scene.binding_twin`) in the same words. The claim names these colours too.

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
    template = pick(rng, templates)
    count = None
    if phrasing == "train" and mention_all and n > 1 and rng.random() < 0.15:
        template, count = "{count} shapes: {objs}", n
    bg_claim = None
    bg_text = ""
    if "{bg}" in template:
        bg = scene.background
        named_kind = bg.kind != "plain" or rng.random() < 0.5
        bg_text = bg.color + (" " + pick(rng, BACKGROUND_WORDS[bg.kind]) if named_kind else "")
        bg_claim = {"color": bg.color} | ({"kind": bg.kind} if named_kind else {})
    text = template.format(objs=objs, bg=bg_text, be="is" if k == 1 else "are", count=COUNT_WORDS.get(n, str(n)))
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:] + ("" if text.endswith("?") else ".")
    return text, {"objects": claimed, "count": count, "background": bg_claim}, phrasing


def object_query(color: str, shape: str, phrasing: str = "train", variant: int = 0) -> str:
    """A single-object query such as "there is a red star somewhere in this picture".

    Args:
        color, shape: names from :data:`~clipsearch.world.scene.COLORS` and :data:`~clipsearch.world.scene.SHAPES`.
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
    orderings = claim_matchings(claim, record)
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
