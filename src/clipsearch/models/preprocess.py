"""Image -> model input with PIL and numpy only (safe to run in worker processes: no torch).

The pipeline is CLIP's: resize the shortest side with a PIL filter, centre crop, scale to [0, 1],
normalise per channel. It reproduces transformers' ``CLIPImageProcessorPil`` (crop offsets
rounded down) and open_clip's torchvision transform on PIL images (crop offsets rounded to the
nearest even pixel, Python's ``round``), chosen by ``crop_rounding``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from PIL import Image

RESAMPLING_NAMES = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")
"""PIL filter names that :attr:`Preprocess.interpolation` may take."""

PIL_RESAMPLE_CODES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
"""PIL's integer resampling codes (what transformers saves as ``resample``) -> filter name."""

RESIZE_MODES = ("shortest", "squash")
CROP_ROUNDINGS = ("floor", "round")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input tensor; travels with the weights.

    Matches CLIP's recipe: resize the shortest side to ``size`` with ``interpolation``, centre
    crop to ``crop`` x ``crop``, scale to [0, 1], subtract ``mean`` and divide by ``std`` per channel.
    """

    size: int = 224  # shortest side after resize, in pixels
    crop: int = 224  # square centre crop, in pixels
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    interpolation: str = "bicubic"  # a PIL resampling filter name
    resize_mode: str = "shortest"  # "shortest" (resize+crop, CLIP) or "squash" (resize to crop x crop)
    crop_rounding: str = "floor"  # crop offset: "floor" (transformers) or "round" (torchvision, open_clip)

    def to_dict(self) -> dict:
        return asdict(self)


def resampling_filter(name: str) -> int:
    """The ``PIL.Image.Resampling`` member for a filter name such as ``"bicubic"``."""
    from PIL import Image

    if name not in RESAMPLING_NAMES:
        raise ValueError(f"unknown interpolation {name!r}; use one of {', '.join(RESAMPLING_NAMES)}")
    return Image.Resampling[name.upper()]


def resized_size(width: int, height: int, p: Preprocess) -> tuple[int, int]:
    """``(width, height)`` after the resize step, before the crop.

    "shortest": the shorter side becomes ``p.size`` and the longer one ``int(p.size * long / short)``
    (truncated, as transformers and torchvision do). "squash": ``(p.crop, p.crop)``.
    """
    if p.resize_mode == "squash":
        return p.crop, p.crop
    if p.resize_mode != "shortest":
        raise ValueError(f"unknown resize_mode {p.resize_mode!r}; use one of {', '.join(RESIZE_MODES)}")
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = p.size, int(p.size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def crop_box(width: int, height: int, crop: int, rounding: str = "floor") -> tuple[int, int]:
    """``(left, top)`` of a centred ``crop`` x ``crop`` box in a ``width`` x ``height`` image.

    ``rounding="floor"`` is transformers' ``(size - crop) // 2``; ``"round"`` is torchvision's
    ``int(round((size - crop) / 2))`` (half to even), which open_clip uses. They differ by one
    pixel when ``size - crop`` is 3 modulo 4.
    """
    if rounding == "floor":
        return (width - crop) // 2, (height - crop) // 2
    if rounding == "round":
        return int(round((width - crop) / 2.0)), int(round((height - crop) / 2.0))
    raise ValueError(f"unknown crop_rounding {rounding!r}; use one of {', '.join(CROP_ROUNDINGS)}")


def to_pixel_values(
    img: "Image.Image",
    p: Preprocess,
    *,
    crop_rounding: str | None = None,
) -> npt.NDArray[np.float32]:
    """Turn one RGB image into a normalised ``(3, p.crop, p.crop)`` float32 array.

    Args:
        img: a decoded ``PIL.Image`` (converted to RGB if it is in another mode).
        p: the model's preprocessing settings.
        crop_rounding: overrides ``p.crop_rounding`` ("floor" as transformers, "round" as
            torchvision and open_clip).

    Returns:
        ``(3, p.crop, p.crop)`` float32 array, channels first.
    """
    if crop_rounding is None:
        crop_rounding = p.crop_rounding
    if img.mode != "RGB":
        img = img.convert("RGB")
    new_w, new_h = resized_size(img.width, img.height, p)
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), resample=resampling_filter(p.interpolation))
    arr = np.asarray(img, dtype=np.uint8)  # (h, w, 3)
    arr = _centre_crop(arr, p.crop, crop_rounding)
    # float64 scale then float32, as transformers' rescale does, so results match it bit for bit.
    x = (arr.astype(np.float64) * (1.0 / 255.0)).astype(np.float32)
    mean = np.asarray(p.mean, dtype=np.float32)
    std = np.asarray(p.std, dtype=np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def _centre_crop(arr: npt.NDArray[np.uint8], crop: int, rounding: str) -> npt.NDArray[np.uint8]:
    """Centre crop an ``(h, w, 3)`` array to ``(crop, crop, 3)``, padding with black if smaller."""
    h, w = arr.shape[:2]
    if h < crop or w < crop:
        # Only reachable when Preprocess.size < crop; both references pad with zeros (black).
        ph, pw = max(crop, h), max(crop, w)
        top, left = (ph - h + 1) // 2, (pw - w + 1) // 2  # ceil, as transformers pads
        padded = np.zeros((ph, pw, 3), dtype=arr.dtype)
        padded[top : top + h, left : left + w] = arr
        arr, h, w = padded, ph, pw
    left, top = crop_box(w, h, crop, rounding)
    return arr[top : top + crop, left : left + crop]
