"""Contrastive training, training data, and retrieval evaluation.

Modules: :mod:`~clipsearch.train.loss` (symmetric contrastive loss), :mod:`~clipsearch.train.data`
(pairs and on-the-fly batches), :mod:`~clipsearch.train.trainer` (``clipsearch train``),
:mod:`~clipsearch.train.evaluate` (recall@k). The scenes it trains the demo model on are
:mod:`clipsearch.world`. Imported lazily: nothing here loads torch
until it is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "contrastive_loss": "clipsearch.train.loss",
    "read_pairs": "clipsearch.train.data",
    "TrainOptions": "clipsearch.train.trainer",
    "train": "clipsearch.train.trainer",
    "retrieval_recall": "clipsearch.train.evaluate",
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
