"""Our own dual encoder: an image tower and a text tower with projection heads into one space.

Two kinds, both trained by :mod:`clipsearch.train.trainer` and saved in a folder marked by
``clipsearch_model.json`` (layout: :mod:`~clipsearch.models.dual.folder`):

- ``"dual"``: separate towers. The image tower (a small CNN with coordinate channels, a
  torchvision ResNet-18 or a small ViT, all from scratch) ends in a grid of cells; a 1x1
  projection puts every cell into the joint space, and the image vector is the (attention- or
  mean-) pooled grid, so the grid itself is a spatial map in the joint space
  (:meth:`DualEncoder.encode_patch_grid`). The text tower is a Hugging Face text encoder
  (all-MiniLM-L6-v2 by default, frozen or trainable) under an attention-pooling head.
- ``"hf_clip"``: a fine-tuned Hugging Face CLIP checkpoint, saved in ``hf/`` inside the folder
  and loaded by :func:`clipsearch.models.hf_clip.load_hf_clip`.

Modules: :mod:`~clipsearch.models.dual.config` (:class:`DualConfig`, plain data),
:mod:`~clipsearch.models.dual.modules` (the torch modules), :mod:`~clipsearch.models.dual.build`
(a fresh model and its text tower), :mod:`~clipsearch.models.dual.folder` (save and load) and
:mod:`~clipsearch.models.dual.encoder` (:func:`load_dual`, the :class:`Encoder`). Only ``modules``
imports torch at its top, and the others import it when a model is built or loaded, so importing
this package stays light.
"""

from __future__ import annotations

from clipsearch.models.dual.build import MINILM_NAMES, build_dual, load_text_tower, resolve_text_tower
from clipsearch.models.dual.config import (
    DEFAULT_IMAGE_SIZE,
    IMAGE_TOWERS,
    MAX_LOGIT_SCALE,
    POOLS,
    DualConfig,
    dual_preprocess,
    grid_side,
    grid_stride,
)
from clipsearch.models.dual.encoder import DualEncoder, encoder_from_module, load_dual
from clipsearch.models.dual.folder import (
    CONFIG_FILE,
    FORMAT_VERSION,
    HF_DIR,
    TEXT_TOWER_DIR,
    WEIGHTS_FILE,
    is_model_folder,
    learned_logit_scale,
    load_module,
    read_config,
    save_model,
)

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_IMAGE_SIZE",
    "FORMAT_VERSION",
    "HF_DIR",
    "IMAGE_TOWERS",
    "MAX_LOGIT_SCALE",
    "MINILM_NAMES",
    "POOLS",
    "TEXT_TOWER_DIR",
    "WEIGHTS_FILE",
    "DualConfig",
    "DualEncoder",
    "build_dual",
    "dual_preprocess",
    "encoder_from_module",
    "grid_side",
    "grid_stride",
    "is_model_folder",
    "learned_logit_scale",
    "load_dual",
    "load_module",
    "load_text_tower",
    "read_config",
    "resolve_text_tower",
    "save_model",
]
