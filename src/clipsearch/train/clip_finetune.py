"""Fine-tuning a Hugging Face CLIP checkpoint (``clipsearch train --base CLIP``).

:class:`HFClipModel` puts a transformers ``CLIPModel`` behind the interface the trainer uses
for a ``"dual"`` model (:class:`clipsearch.models.dual.modules.DualModel`): ``preprocess``,
``encode_image``, ``text_inputs`` / ``encode_text``, ``logit_scale``, ``lock_image``. The
result is saved as a model folder of kind ``"hf_clip"``
(:func:`clipsearch.models.dual.save_model`) and loads for search as a plain CLIP.

This module imports torch; the trainer imports it only for a CLIP base.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipsearch.errors import ModelNotAvailable
from clipsearch.models.preprocess import Preprocess


class HFClipModel(nn.Module):
    """A transformers ``CLIPModel`` behind the same training interface as a ``"dual"`` model."""

    kind = "hf_clip"

    def __init__(self, clip: Any, tokenizer: Any, image_processor: Any, preprocess: Preprocess, freeze_text: bool):
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.preprocess = preprocess
        self.context_length = int(clip.config.text_config.max_position_embeddings)
        if freeze_text:
            self.clip.text_model.requires_grad_(False)
        self.image_locked = False

    def train(self, mode: bool = True) -> HFClipModel:
        super().train(mode)
        self.clip.vision_model.train(mode and not self.image_locked)
        return self

    def lock_image(self) -> None:
        """Train the text side only from now on (LiT): the vision tower and its projection stay fixed."""
        self.clip.vision_model.requires_grad_(False)
        self.clip.visual_projection.requires_grad_(False)
        self.image_locked = True
        self.train(self.training)

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``(n, 3, S, S)`` -> ``(n, D)``."""
        out = self.clip.vision_model(pixel_values=pixels)
        v = self.clip.visual_projection(out.pooler_output)
        return F.normalize(v, dim=-1) if normalize else v

    def text_inputs(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids for :meth:`encode_text`, cut to the context length, on the model's device."""
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    def encode_text(self, inputs: dict[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
        """:meth:`text_inputs` of n texts -> ``(n, D)``."""
        out = self.clip.text_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        v = self.clip.text_projection(out.pooler_output)
        return F.normalize(v, dim=-1) if normalize else v


def build_hf_clip(base: str, *, freeze_text: bool = False) -> HFClipModel:
    """A ``CLIPModel`` to fine-tune, from a local folder or a cached hub id.

    Args:
        base: a folder saved with ``save_pretrained`` (or the ``hf/`` of a saved model folder),
            or a hub id in the local Hugging Face cache.
        freeze_text: keep the text tower fixed.

    Raises:
        ModelNotAvailable: the checkpoint is not on this machine or is not a CLIP model.
    """
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    from clipsearch.models.hf_clip import preprocess_from_hf
    from clipsearch.models.hf_progress import quiet_transformers
    from clipsearch.models.hub import hub_folder

    path = Path(base).expanduser()
    if not path.is_dir():
        path = hub_folder(base, name=base)
    try:
        with quiet_transformers():
            clip = CLIPModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelNotAvailable(f"base model {base!r} cannot be loaded as a CLIP checkpoint: {e}") from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    preprocess = preprocess_from_hf(image_processor, name=base)
    return HFClipModel(clip, tokenizer, image_processor, preprocess, freeze_text)
