"""The demo world: generated picture scenes with captions and exact ground truth.

Shapes of known colour, size and place on simple backgrounds, each image with a caption, the
claim the caption makes and every object's box. The demo model is trained on it
(:mod:`clipsearch.train`), ``clipsearch demo`` searches it, and the task evaluations
(:mod:`clipsearch.tasks.localize`, ``clipsearch evaluate demo``) measure against its truth::

    import numpy as np
    from clipsearch import world

    image, record = world.render_scene(np.random.default_rng(0), "eval")
    record["caption"], record["objects"][0]["bbox"]
    world.generate_world("scenes/", n=100, seed=0)  # images and metadata.jsonl

Modules by what they hold: :mod:`~clipsearch.world.scene` (what a scene is, its claims, and
drawing one at random), :mod:`~clipsearch.world.captions` (captions, queries and how likely a
caption is), :mod:`~clipsearch.world.drawing` (pixels and boxes) and
:mod:`~clipsearch.world.folder` (a world written to disk). Only numpy and, when drawing,
Pillow: nothing here loads a model.
"""

from __future__ import annotations

from clipsearch.world.captions import (
    BACKGROUND_WORDS,
    COLOR_WORDS,
    EVAL_ONLY_MARKERS,
    EVAL_QUERY_TEMPLATES,
    EVAL_TEMPLATES,
    POSITION_PHRASES,
    SIZE_WORDS,
    TRAIN_QUERY_TEMPLATES,
    TRAIN_TEMPLATES,
    caption_scene,
    claim_likelihood,
    object_phrase,
    object_query,
)
from clipsearch.world.drawing import draw_background, draw_scene, render_scene, shape_mask
from clipsearch.world.folder import JPEG_QUALITY, SPLIT_STREAMS, encode_image, generate_world
from clipsearch.world.scene import (
    BACKGROUND_COLORS,
    BACKGROUND_KINDS,
    COLORS,
    HELD_OUT_PAIRS,
    POSITIONS,
    SHAPES,
    SIZES,
    SPLITS,
    TWIN_CHANGES,
    Background,
    Scene,
    SceneObject,
    binding_twin,
    claim_holds,
    contrast_twin,
    pair_allowed,
    sample_canvas_size,
    sample_scene,
)

__all__ = [
    "BACKGROUND_COLORS",
    "BACKGROUND_KINDS",
    "BACKGROUND_WORDS",
    "COLORS",
    "COLOR_WORDS",
    "EVAL_ONLY_MARKERS",
    "EVAL_QUERY_TEMPLATES",
    "EVAL_TEMPLATES",
    "HELD_OUT_PAIRS",
    "JPEG_QUALITY",
    "POSITIONS",
    "POSITION_PHRASES",
    "SHAPES",
    "SIZES",
    "SIZE_WORDS",
    "SPLITS",
    "SPLIT_STREAMS",
    "TRAIN_QUERY_TEMPLATES",
    "TRAIN_TEMPLATES",
    "TWIN_CHANGES",
    "Background",
    "Scene",
    "SceneObject",
    "binding_twin",
    "caption_scene",
    "claim_holds",
    "claim_likelihood",
    "contrast_twin",
    "draw_background",
    "draw_scene",
    "encode_image",
    "generate_world",
    "object_phrase",
    "object_query",
    "pair_allowed",
    "render_scene",
    "sample_canvas_size",
    "sample_scene",
    "shape_mask",
]
