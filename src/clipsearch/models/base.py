"""The one interface every model backend implements.

An :class:`Encoder` turns images and texts into float32 unit vectors in one joint space.
Backends (Hugging Face CLIP, open_clip, sentence-transformers, the demo model, DPR) live in
their own modules and are created by :func:`clipsearch.models.registry.load_model`.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from clipsearch.models.preprocess import Preprocess, to_pixel_values

if TYPE_CHECKING:
    from PIL import Image

Vectors = npt.NDArray[np.float32]
"""A ``(n, dim)`` float32 array, one row per input; unit length when ``normalize=True``."""

Modality = Literal["image", "text"]
ImageInput = "str | Path | bytes | Image.Image"
TextRole = Literal["query", "passage"]


@dataclass
class ModelInfo:
    """What a loaded model reports about itself (``clipsearch models info``, the store header)."""

    name: str  # the name it was loaded by, as the store records it
    backend: str  # "hf_clip", "open_clip", "sentence_transformers", "demo", "dpr", ...
    dim: int  # embedding dimension
    modalities: tuple[str, ...]  # ("image", "text") or ("text",)
    context_length: int  # text tokens, including special tokens
    preprocess: Preprocess | None  # None for text-only models
    logit_scale: float  # multiplies cosines before a softmax (CLIP's learned temperature)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["preprocess"] = self.preprocess.to_dict() if self.preprocess else None
        return out


class Encoder(ABC):
    """Turns images and texts into vectors in one joint space.

    Subclasses set ``info`` and implement :meth:`_encode_image_batch` and/or
    :meth:`_encode_text_batch`; batching, normalisation and validation live here.
    """

    info: ModelInfo

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.info.modalities

    def supports(self, modality: str) -> bool:
        return modality in self.info.modalities

    # -- images ------------------------------------------------------------------------------
    def encode_images(
        self,
        images: Sequence["Image.Image"],
        *,
        batch_size: int = 32,
        normalize: bool = True,
    ) -> Vectors:
        """Embed already-decoded RGB images.

        Args:
            images: n RGB ``PIL.Image`` objects (use :func:`clipsearch.images.load_image`).
            batch_size: images per forward pass.
            normalize: L2-normalise each row.

        Returns:
            ``(n, dim)`` float32 array.
        """
        if not self.supports("image"):
            raise ValueError(f"model {self.name!r} embeds text only; it cannot embed images")
        rows = [
            self._encode_image_batch(list(images[i : i + batch_size]))
            for i in range(0, len(images), batch_size)
        ]
        return _finish(rows, self.dim, normalize)

    def preprocess_images(self, images: Sequence["Image.Image"]) -> npt.NDArray[np.float32]:
        """``(n, 3, crop, crop)`` float32 model input for n RGB images (worker-process safe)."""
        if self.info.preprocess is None:
            raise ValueError(f"model {self.name!r} embeds text only; it has no image preprocessing")
        return np.stack([to_pixel_values(im, self.info.preprocess) for im in images])

    def encode_pixel_values(self, pixels: npt.NDArray[np.float32], *, normalize: bool = True) -> Vectors:
        """Embed a ``(n, 3, crop, crop)`` batch from :meth:`preprocess_images`; ``(n, dim)`` out."""
        return _finish([self._encode_pixels(pixels)], self.dim, normalize)

    # -- texts -------------------------------------------------------------------------------
    def encode_texts(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        normalize: bool = True,
        role: TextRole = "query",
    ) -> Vectors:
        """Embed texts; each is truncated to the model's context length.

        Args:
            texts: n non-empty strings.
            batch_size: texts per forward pass; each batch is padded to its longest member.
            normalize: L2-normalise each row.
            role: "query" or "passage"; asymmetric retrievers (DPR) use a different encoder
                for each, symmetric models ignore it.

        Returns:
            ``(n, dim)`` float32 array.

        Raises:
            EmptyText: if any text is empty or whitespace only.
        """
        from clipsearch.errors import EmptyText

        if not self.supports("text"):
            raise ValueError(f"model {self.name!r} embeds images only; it cannot embed text")
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise EmptyText(f"text #{i} is empty; give at least one non-space character")
        rows = [
            self._encode_text_batch(list(texts[i : i + batch_size]), role)
            for i in range(0, len(texts), batch_size)
        ]
        return _finish(rows, self.dim, normalize)

    def count_truncated(self, texts: Sequence[str]) -> int:
        """How many of ``texts`` exceed the context length and will be truncated."""
        return 0

    # -- backend hooks -----------------------------------------------------------------------
    def _encode_image_batch(self, images: list["Image.Image"]) -> npt.NDArray:
        return self._encode_pixels(self.preprocess_images(images))

    def _encode_pixels(self, pixels: npt.NDArray[np.float32]) -> npt.NDArray:
        raise NotImplementedError(f"{type(self).__name__} does not embed images")

    def _encode_text_batch(self, texts: list[str], role: TextRole) -> npt.NDArray:
        raise NotImplementedError(f"{type(self).__name__} does not embed text")


def _finish(rows: list[npt.NDArray], dim: int, normalize: bool) -> Vectors:
    out = np.concatenate(rows, axis=0).astype(np.float32, copy=False) if rows else np.zeros((0, dim), np.float32)
    if normalize and len(out):
        out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(out, dtype=np.float32)


def cosine_similarity(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Cosine similarity of every row of ``a`` ``(n, d)`` with every row of ``b`` ``(m, d)``.

    Returns:
        ``(n, m)`` float32 matrix.
    """
    a = np.atleast_2d(np.asarray(a, dtype=np.float32))
    b = np.atleast_2d(np.asarray(b, dtype=np.float32))
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a @ b.T).astype(np.float32)


def embeds_grid(encoder: object) -> bool:
    """Whether ``encoder`` gives a grid of joint-space cells in the pass that embeds an image
    (``encode_pixels_with_grid``: the demo and dual models), so a store can keep the cells.
    (:func:`clipsearch.search.has_grid` asks less: a grid from images, for re-ranking.)"""
    return hasattr(encoder, "encode_pixels_with_grid")


def encode_pixels(
    encoder: Encoder, pixels: npt.NDArray[np.float32], *, grid: bool
) -> tuple[Vectors, npt.NDArray[np.float32] | None]:
    """Embed a ``(n, 3, crop, crop)`` batch from :meth:`Encoder.preprocess_images`.

    Returns:
        ``(n, dim)`` unit image vectors and, with ``grid`` on a model that has one, the
        ``(n, gh, gw, dim)`` unit cell vectors from the same forward pass (else ``None``).
    """
    if grid and embeds_grid(encoder):
        vecs, cells = encoder.encode_pixels_with_grid(pixels)  # type: ignore[attr-defined]
        return np.asarray(vecs, dtype=np.float32), np.asarray(cells, dtype=np.float32)
    return encoder.encode_pixel_values(pixels), None
