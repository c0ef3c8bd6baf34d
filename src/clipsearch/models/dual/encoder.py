"""A ``"dual"`` model folder as an :class:`~clipsearch.models.base.Encoder`, with its spatial grid
of cell vectors exposed (:meth:`DualEncoder.encode_patch_grid`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from clipsearch.models.base import Encoder, ModelInfo, TextRole
from clipsearch.models.dual.config import DualConfig, grid_side
from clipsearch.models.dual.folder import HF_DIR, learned_logit_scale, load_module, read_config

if TYPE_CHECKING:
    import torch
    from PIL import Image


class DualEncoder(Encoder):
    """A ``"dual"`` model folder as an :class:`Encoder`, with its spatial grid exposed."""

    def __init__(self, model: Any, info: ModelInfo):
        self.model = model.eval()
        self.info = info

    def _tensor(self, pixels: npt.NDArray[np.float32]) -> torch.Tensor:
        """A ``(n, 3, S, S)`` batch from :meth:`preprocess_images` on the model's device."""
        import torch

        return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.model.device)

    def _encode_pixels(self, pixels: npt.NDArray[np.float32]) -> npt.NDArray:
        import torch

        with torch.inference_mode():
            return self.model.encode_image(self._tensor(pixels), normalize=False).float().cpu().numpy()

    def _encode_text_batch(self, texts: list[str], role: TextRole) -> npt.NDArray:
        import torch

        with torch.inference_mode():
            return self.model.encode_text(self.model.tokenize(texts), normalize=False).float().cpu().numpy()

    def count_truncated(self, texts: Sequence[str]) -> int:
        ids = self.model.tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]
        return sum(len(row) > self.info.context_length for row in ids)

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(gh, gw)``: cells of :meth:`encode_patch_grid`."""
        gh, gw = self.info.extra["grid"]
        return int(gh), int(gw)

    def encode_patch_grid(self, images: Sequence[Image.Image], *, batch_size: int = 32) -> npt.NDArray[np.float32]:
        """The spatial map: one joint-space unit vector per grid cell.

        Cell ``(r, c)`` covers rows ``r/gh .. (r+1)/gh`` and columns ``c/gw .. (c+1)/gw`` of the
        whole image (the model squashes, never crops); compare it with
        :meth:`encode_texts` vectors by dot product.

        Returns:
            ``(n, gh, gw, dim)`` float32.
        """
        gh, gw = self.grid_shape
        rows = [
            self.patch_grid_from_pixels(self.preprocess_images(list(images[i : i + batch_size])))
            for i in range(0, len(images), batch_size)
        ]
        if not rows:
            return np.zeros((0, gh, gw, self.dim), np.float32)
        return np.concatenate(rows, axis=0)

    def patch_grid_from_pixels(self, pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """:meth:`encode_patch_grid` for a ``(n, 3, S, S)`` batch from :meth:`preprocess_images`."""
        import torch

        with torch.inference_mode():
            return np.ascontiguousarray(self.model.encode_image_grid(self._tensor(pixels)).float().cpu().numpy(), dtype=np.float32)

    def encode_pixels_with_grid(
        self, pixels: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """One forward pass for both: the unit image vectors ``(n, dim)`` (as
        :meth:`encode_pixel_values`) and the unit cell vectors ``(n, gh, gw, dim)`` (as
        :meth:`patch_grid_from_pixels`) of a ``(n, 3, S, S)`` batch."""
        import torch

        with torch.inference_mode():
            vecs, grid = self.model.encode_image_with_grid(self._tensor(pixels))
        return (
            np.ascontiguousarray(vecs.float().cpu().numpy(), dtype=np.float32),
            np.ascontiguousarray(grid.float().cpu().numpy(), dtype=np.float32),
        )


def encoder_from_module(model: Any, *, name: str, extra: dict[str, Any] | None = None) -> DualEncoder:
    """Wrap an in-memory ``"dual"`` module as an :class:`Encoder` (tests, a trainer's own checks).

    Args:
        model: from :func:`~clipsearch.models.dual.build.build_dual` or :func:`load_module`.
        name: the name the encoder reports.
        extra: more entries for ``info.extra``.
    """
    cfg: DualConfig = model.cfg
    grid = grid_side(cfg)
    info = ModelInfo(
        name=name,
        backend="dual",
        dim=cfg.embed_dim,
        modalities=("image", "text"),
        context_length=cfg.context_length,
        preprocess=model.preprocess,
        logit_scale=learned_logit_scale(model),
        extra={"kind": "dual", "image_tower": cfg.image_tower, "text_tower": cfg.text_tower, "grid": [grid, grid]}
        | (extra or {}),
    )
    return DualEncoder(model, info)


def load_dual(folder: str | Path, *, name: str | None = None, device: str = "cpu") -> Encoder:
    """Load a folder written by ``clipsearch train`` as an :class:`Encoder`.

    Args:
        folder: a folder with ``clipsearch_model.json``.
        name: the name to report (default: the folder's absolute path).
        device: the torch device to run on.

    Returns:
        A :class:`DualEncoder` (kind "dual", with :meth:`DualEncoder.encode_patch_grid`) or an
        :class:`~clipsearch.models.hf_clip.HFClipEncoder` (kind "hf_clip").

    Raises:
        ModelNotAvailable: the folder is incomplete, from a newer format, or needs a missing package.
    """
    folder = Path(folder)
    name = name or str(folder.resolve())
    meta = read_config(folder)
    if meta["kind"] == "hf_clip":
        from clipsearch.models.hf_clip import load_hf_clip

        return load_hf_clip(folder / HF_DIR, name=name, device=device)
    model = load_module(folder).to(device)
    return encoder_from_module(model, name=name, extra={"path": str(folder.resolve())})
