"""Hugging Face ``transformers`` CLIP (``CLIPModel``) as an :class:`Encoder`.

The image preprocessing (size, crop, mean, std, resample filter) is read from the image
processor saved beside the weights, so it travels with the model. Images go through our
PIL/numpy :func:`~clipsearch.models.preprocess.to_pixel_values`, which reproduces
``CLIPImageProcessorPil`` exactly; texts go through the model's own tokenizer, truncated to the
model's context length with the end-of-text token kept last (CLIP pools at that token), and
each batch is padded only to its longest member.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from clipsearch.errors import ModelNotAvailable
from clipsearch.models.base import Encoder, ModelInfo, Preprocess, TextRole
from clipsearch.models.hf_progress import quiet_transformers
from clipsearch.models.preprocess import PIL_RESAMPLE_CODES, RESAMPLING_NAMES


class HFClipEncoder(Encoder):
    """A loaded ``transformers.CLIPModel`` with its tokenizer and preprocessing."""

    def __init__(self, model: Any, tokenizer: Any, info: ModelInfo, device: str = "cpu"):
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.device = device

    def _encode_pixels(self, pixels: npt.NDArray[np.float32]) -> npt.NDArray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.device)
            out = self.model.get_image_features(pixel_values=x)
            return _features(out).float().cpu().numpy()

    def _encode_text_batch(self, texts: list[str], role: TextRole) -> npt.NDArray:
        import torch

        batch = self.tokenize(texts)
        with torch.inference_mode():
            out = self.model.get_text_features(
                input_ids=batch["input_ids"].to(self.device),
                attention_mask=batch["attention_mask"].to(self.device),
            )
            return _features(out).float().cpu().numpy()

    def tokenize(self, texts: Sequence[str], *, padding: str = "longest") -> Any:
        """Token ids for ``texts``: ``input_ids`` and ``attention_mask``, ``(n, L)`` int64 tensors.

        Each text is cut to ``info.context_length`` tokens with the end-of-text token kept last;
        ``padding="longest"`` pads to the longest text in the batch, ``"max_length"`` to the full
        context.
        """
        return self.tokenizer(
            list(texts),
            padding=padding,
            truncation=True,
            max_length=self.info.context_length,
            return_tensors="pt",
        )

    def count_truncated(self, texts: Sequence[str]) -> int:
        ids = self.tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]
        return sum(len(row) > self.info.context_length for row in ids)


def load_hf_clip(folder: str | Path, *, name: str, device: str = "cpu") -> HFClipEncoder:
    """Load a CLIP model saved with ``save_pretrained`` (a local folder or a hub cache snapshot).

    Args:
        folder: a folder with ``config.json`` (model_type "clip"), the weights, the tokenizer
            files and the image processor config.
        name: the name the model was asked for by; recorded in :attr:`ModelInfo.name`.
        device: torch device for inference.
    """
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    folder = Path(folder)
    with quiet_transformers():
        model = CLIPModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        try:
            image_processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ModelNotAvailable(f"model {name!r} has no image processor config in {folder}: {e}") from e
    model.eval().to(device)
    if tokenizer.pad_token_id is None:  # batches need padding; CLIP pools at EOS so the pad id is never read
        tokenizer.pad_token = tokenizer.eos_token

    cfg = model.config
    info = ModelInfo(
        name=name,
        backend="hf_clip",
        dim=int(cfg.projection_dim),
        modalities=("image", "text"),
        context_length=int(cfg.text_config.max_position_embeddings),
        preprocess=preprocess_from_hf(image_processor, name=name),
        logit_scale=float(model.logit_scale.detach().exp().item()),
        extra={"path": str(folder), "eos_token_id": tokenizer.eos_token_id},
    )
    return HFClipEncoder(model, tokenizer, info, device)


class HFClipTextEncoder(HFClipEncoder):
    """The text tower of a CLIP checkpoint alone (``CLIPTextModelWithProjection``): what a text
    query needs, without the vision tower's weights or transformers' image processing."""

    def _encode_text_batch(self, texts: list[str], role: TextRole) -> npt.NDArray:
        import torch

        batch = self.tokenize(texts)
        with torch.inference_mode():
            out = self.model(
                input_ids=batch["input_ids"].to(self.device), attention_mask=batch["attention_mask"].to(self.device)
            )
            return out.text_embeds.float().cpu().numpy()


def load_hf_clip_text(folder: str | Path, *, name: str, device: str = "cpu") -> HFClipTextEncoder:
    """Load only the text tower of a CLIP model saved with ``save_pretrained``: the same text
    vectors as :func:`load_hf_clip`'s model, ``info.modalities == ("text",)``.

    Args:
        folder: a folder with ``config.json`` (model_type "clip"), the weights and the tokenizer files.
        name: the name the model was asked for by; recorded in :attr:`ModelInfo.name`.
        device: torch device for inference.
    """
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPTextModelWithProjection
    from transformers.utils import logging as hf_logging

    folder = Path(folder)
    with quiet_transformers():
        config = CLIPConfig.from_pretrained(folder, local_files_only=True)
        text_config = config.text_config
        text_config.projection_dim = config.projection_dim  # kept at the top of a CLIPModel's config
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # its load report lists every vision weight as unused: left out on purpose
        try:
            model = CLIPTextModelWithProjection.from_pretrained(
                folder, config=text_config, local_files_only=True, dtype=torch.float32
            )
        finally:
            hf_logging.set_verbosity(verbosity)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model.eval().to(device)
    if tokenizer.pad_token_id is None:  # as in load_hf_clip
        tokenizer.pad_token = tokenizer.eos_token
    info = ModelInfo(
        name=name,
        backend="hf_clip",
        dim=int(config.projection_dim),
        modalities=("text",),
        context_length=int(text_config.max_position_embeddings),
        preprocess=None,
        logit_scale=float(np.exp(config.logit_scale_init_value)),  # the learned value lives beside the vision tower
        extra={"path": str(folder), "eos_token_id": tokenizer.eos_token_id, "text_tower_only": True},
    )
    return HFClipTextEncoder(model, tokenizer, info, device)


def preprocess_from_hf(image_processor: Any, *, name: str) -> Preprocess:
    """Our :class:`Preprocess` from a transformers CLIP image processor's settings.

    Raises:
        ModelNotAvailable: settings that a shortest-side resize, square centre crop and
            per-channel normalisation cannot express (non-square output, unusual rescale).
    """

    def unsupported(what: str) -> ModelNotAvailable:
        return ModelNotAvailable(f"model {name!r} uses image preprocessing clipsearch does not support: {what}")

    ip = image_processor
    size, crop_size = getattr(ip, "size", None), getattr(ip, "crop_size", None)
    shortest = _get(size, "shortest_edge")
    height, width = _get(size, "height"), _get(size, "width")
    if getattr(ip, "do_resize", True) is False:
        raise unsupported("do_resize is off")
    if getattr(ip, "do_rescale", True) is False or abs(float(getattr(ip, "rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise unsupported(f"rescale_factor {getattr(ip, 'rescale_factor', None)} (only 1/255)")
    do_crop = getattr(ip, "do_center_crop", True)
    crop_h, crop_w = _get(crop_size, "height"), _get(crop_size, "width")
    if shortest:
        if not do_crop or not crop_h or crop_h != crop_w:
            raise unsupported(f"shortest-edge resize without a square centre crop (crop_size {crop_size})")
        resize_mode, side, crop = "shortest", int(shortest), int(crop_h)
    elif height and width and height == width:
        side = int(height)
        crop = int(crop_h) if do_crop and crop_h else side
        if do_crop and (crop_h != crop_w or crop != side):
            raise unsupported(f"square resize to {side} followed by a {crop_h}x{crop_w} crop")
        resize_mode = "squash"
    else:
        raise unsupported(f"resize size {size}")

    resample = getattr(ip, "resample", 3)
    resample_name = PIL_RESAMPLE_CODES.get(int(resample)) if not isinstance(resample, str) else resample.lower()
    if resample_name not in RESAMPLING_NAMES:
        raise unsupported(f"resample {resample!r}")
    if getattr(ip, "do_normalize", True) is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    else:
        mean, std = _triple(ip.image_mean), _triple(ip.image_std)
    return Preprocess(
        size=side, crop=crop, mean=mean, std=std, interpolation=resample_name, resize_mode=resize_mode
    )


def _features(out: Any) -> Any:
    """The ``(n, dim)`` projected features from ``get_*_features``.

    transformers 4 returned a tensor; transformers 5 returns a model output whose
    ``pooler_output`` holds the projected features.
    """
    import torch

    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None and isinstance(out, tuple):
        pooled = out[1] if len(out) > 1 else out[0]
    if pooled is None:
        raise TypeError(f"unexpected output type {type(out).__name__} from a CLIP feature method")
    return pooled


def _get(d: Any, key: str) -> Any:
    if d is None:
        return None
    if isinstance(d, dict):
        return d.get(key)
    return getattr(d, key, None)


def _triple(v: Any) -> tuple[float, float, float]:
    vals = [float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * 3)]
    if len(vals) != 3:
        raise ValueError(f"expected 3 per-channel values, got {vals}")
    return vals[0], vals[1], vals[2]

