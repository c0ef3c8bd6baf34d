"""Contrastive training, training data, and the demo world.

Modules: :mod:`~clipsearch.train.demo_world` (generated captioned scenes),
:mod:`~clipsearch.train.loss` (symmetric contrastive loss), :mod:`~clipsearch.train.data`
(pairs and on-the-fly batches), :mod:`~clipsearch.train.trainer` (``clipsearch train``),
:mod:`~clipsearch.train.evaluate` (recall@k). Imported lazily: nothing here loads torch
until it is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "render_scene": "clipsearch.train.demo_world",
    "generate_world": "clipsearch.train.demo_world",
    "claim_holds": "clipsearch.train.demo_world",
    "object_query": "clipsearch.train.demo_world",
    "contrastive_loss": "clipsearch.train.loss",
    "read_pairs": "clipsearch.train.data",
    "TrainOptions": "clipsearch.train.trainer",
    "train": "clipsearch.train.trainer",
    "recall_at_k": "clipsearch.train.evaluate",
    "evaluate_retrieval": "clipsearch.train.evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'clipsearch.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
