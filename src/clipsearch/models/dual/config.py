"""The architecture of a ``"dual"`` model: :class:`DualConfig`, saved in ``clipsearch_model.json``.

Plain data (no torch): the trainer's option checks, the model folder's reader and the encoder
read it without building a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from clipsearch.errors import ModelNotAvailable
from clipsearch.models.preprocess import Preprocess

IMAGE_TOWERS = ("cnn", "resnet18", "vit")
POOLS = ("attention", "mean")
DEFAULT_IMAGE_SIZE = {"cnn": 64, "resnet18": 128, "vit": 64}
"""Model input side per image tower when the trainer is not told one, pixels."""

MAX_LOGIT_SCALE = 100.0
"""``exp(logit_scale)`` is capped here, as in CLIP: in the loss (so the logits cannot blow up),
in training and in the saved model."""


@dataclass
class DualConfig:
    """Architecture of a ``"dual"`` model; saved in ``clipsearch_model.json``."""

    image_tower: str = "cnn"  # "cnn", "resnet18" or "vit"
    image_size: int = 64  # square model input (images are squashed to it), pixels
    embed_dim: int = 256  # joint space dimension
    pool: str = "attention"  # grid -> image vector: "attention" (learned cell weights) or "mean"
    pool_positions: bool = False  # attention pool: add a learned embedding of each cell's place (the grid keeps none)
    cnn_widths: tuple[int, ...] = (16, 32, 64, 128)  # channels per stage; each stage after the first halves the grid
    cnn_blocks: tuple[int, ...] = (0, 1, 1, 1)  # residual blocks per stage
    vit_width: int = 192  # ViT tower: token width
    vit_depth: int = 4  # ViT tower: transformer layers
    vit_patch: int = 8  # ViT tower: patch side in pixels
    text_tower: str = "minilm"  # "minilm", a Hugging Face folder or a cached hub id
    text_trainable: bool = False  # fine-tune the text tower (slow on CPU) or keep it frozen
    text_width: int = 384  # hidden size of the text tower (read from it when built)
    text_head_dim: int = 256  # width of the attention-pooling head
    text_head_queries: int = 4  # learned queries that pool the tokens
    text_head_heads: int = 4  # attention heads per query
    text_head_layers: int = 0  # trainable transformer layers over the token states before pooling
    text_head_positions: bool = False  # the head adds a learned embedding of each token's index (word order)
    context_length: int = 64  # text tokens, special tokens included
    logit_scale_init: float = math.log(1 / 0.07)  # CLIP's initial temperature

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DualConfig:
        """The config saved as ``d``; fields added later keep their defaults.

        Raises:
            ModelNotAvailable: ``d`` has fields this version does not know (a newer clipsearch saved it).
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelNotAvailable(f"model config has unknown fields {unknown}; it was saved by a newer clipsearch")
        d = dict(d)
        for key in ("cnn_widths", "cnn_blocks"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def validate(self) -> None:
        """Raise ValueError, naming the field and what is allowed, for an architecture that cannot be built."""
        if self.image_tower not in IMAGE_TOWERS:
            raise ValueError(f"unknown image tower {self.image_tower!r}; use one of {', '.join(IMAGE_TOWERS)}")
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}; use one of {', '.join(POOLS)}")
        if self.pool_positions and self.pool != "attention":
            raise ValueError("pool_positions needs the attention pool: under a mean every place weighs the same")
        if len(self.cnn_widths) != len(self.cnn_blocks) or len(self.cnn_widths) < 1:
            raise ValueError(f"cnn_widths {self.cnn_widths} and cnn_blocks {self.cnn_blocks} need the same length >= 1")
        step = grid_stride(self)
        if self.image_size % step:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of {step} for the {self.image_tower} tower"
            )


def grid_stride(cfg: DualConfig) -> int:
    """Input pixels per grid cell side."""
    if cfg.image_tower == "cnn":
        return 2 ** (len(cfg.cnn_widths) - 1)
    if cfg.image_tower == "vit":
        return cfg.vit_patch
    return 16  # resnet18 without its max-pool


def grid_side(cfg: DualConfig) -> int:
    """Grid cells per side: the image side's cell grid is ``grid_side x grid_side``."""
    return cfg.image_size // grid_stride(cfg)


def dual_preprocess(cfg: DualConfig) -> Preprocess:
    """Squash the whole image to ``image_size`` squared (no crop: objects near edges stay in)."""
    return Preprocess(
        size=cfg.image_size,
        crop=cfg.image_size,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        interpolation="bilinear",
        resize_mode="squash",
    )
