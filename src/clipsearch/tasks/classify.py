"""Zero-shot image classification: pick the label whose prompt embedding is nearest the image.

The class embeddings are computed once per :class:`ZeroShotClassifier` (one forward pass over
``n_labels * n_templates`` prompts) and reused for every image batch. Probabilities are
``softmax(logit_scale * cosine)`` over the labels, CLIP's ``logits_per_image``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from clipsearch.tasks.templates import TemplateSpec, class_embeddings, resolve_templates, validate_labels

if TYPE_CHECKING:
    from PIL import Image

    from clipsearch.models.base import Encoder, Vectors

ImageSource = "str | Path | bytes | Image.Image"


@dataclass
class Prediction:
    """One image's outcome: its ``top`` labels with probabilities, best first, or an ``error``."""

    image: str  # the path as given, or "<image #i>" for in-memory images
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    @property
    def label(self) -> str | None:
        """The best label, or None when the image could not be read."""
        return self.top[0][0] if self.top else None

    def to_dict(self, digits: int = 6) -> dict[str, Any]:
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        return {
            "image": self.image,
            "predictions": [{"label": lab, "prob": round(float(p), digits)} for lab, p in self.top],
        }


def softmax(logits: npt.NDArray, axis: int = -1) -> npt.NDArray[np.float32]:
    """Numerically stable softmax along ``axis`` (float32 out)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def require_image_and_text(encoder: "Encoder", task: str) -> None:
    """Raise ValueError unless ``encoder`` embeds both images and texts."""
    for modality in ("image", "text"):
        if not encoder.supports(modality):
            raise ValueError(
                f"model {encoder.name!r} does not embed {modality}s; {task} needs a model that embeds "
                "both images and text (a CLIP model or 'demo')"
            )


class ZeroShotClassifier:
    """Labels turned into a ``(n_classes, dim)`` matrix of class embeddings, ready for images.

    Args:
        encoder: a model that embeds images and texts into one space.
        labels: at least two distinct class names.
        templates: see :func:`clipsearch.tasks.templates.resolve_templates`.
    """

    def __init__(self, encoder: "Encoder", labels: Sequence[str], templates: TemplateSpec = "simple"):
        require_image_and_text(encoder, "classification")
        self.encoder = encoder
        self.labels = validate_labels(labels)
        self.templates = resolve_templates(templates)
        self.class_vectors: Vectors = class_embeddings(encoder, self.labels, self.templates)
        self.logit_scale = float(encoder.info.logit_scale)

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def logits(self, image_vectors: "Vectors") -> npt.NDArray[np.float32]:
        """``logit_scale * cosine`` of ``(n, dim)`` unit image vectors with each class: ``(n, n_classes)``."""
        v = np.atleast_2d(np.asarray(image_vectors, dtype=np.float32))
        return (self.logit_scale * (v @ self.class_vectors.T)).astype(np.float32)

    def probabilities(self, image_vectors: "Vectors") -> npt.NDArray[np.float32]:
        """Softmax over the classes for each image: ``(n, n_classes)``, rows sum to 1."""
        return softmax(self.logits(image_vectors), axis=1)

    def top_labels(self, probs: npt.NDArray, top: int) -> list[list[tuple[str, float]]]:
        """The ``top`` (label, probability) pairs of each row of ``probs`` ``(n, n_classes)``, best first."""
        k = min(check_top(top), self.n_classes)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[(self.labels[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]

    def iter_probabilities(
        self, images: Iterable[Any], *, batch_size: int = 32
    ) -> Iterator[tuple[list[LoadedImage], npt.NDArray[np.float32]]]:
        """Decode and embed ``images`` (paths, bytes or PIL images) one batch at a time.

        Yields:
            ``(batch, probs)``: the batch's inputs in order (unreadable ones carry an ``error``
            and no pixels) and ``(readable inputs, n_classes)`` probabilities of the readable
            ones, in the same order.
        """
        for batch in iter_image_batches(images, batch_size=batch_size, draft=_draft_size(self.encoder)):
            pixels = [item.image for item in batch if item.image is not None]
            if pixels:
                yield batch, self.probabilities(self.encoder.encode_images(pixels))
            else:
                yield batch, np.zeros((0, self.n_classes), dtype=np.float32)

    def classify(
        self,
        images: Sequence[Any],
        *,
        top: int = 5,
        batch_size: int = 32,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[Prediction]:
        """Classify images (paths, bytes or PIL images); one :class:`Prediction` per input, in order.

        Unreadable images come back with ``error`` set; they never stop the run.
        """
        check_top(top)
        out: list[Prediction] = []
        for batch, probs in self.iter_probabilities(images, batch_size=batch_size):
            rows = iter(self.top_labels(probs, top))
            for item in batch:
                if item.image is None:
                    out.append(Prediction(item.name, error=item.error))
                else:
                    out.append(Prediction(item.name, top=next(rows)))
            if on_progress:
                on_progress(len(batch))
        return out


def classify(
    encoder: "Encoder",
    images: Sequence[Any],
    labels: Sequence[str],
    *,
    templates: TemplateSpec = "simple",
    top: int = 5,
    batch_size: int = 32,
    on_progress: Callable[[int], None] | None = None,
) -> list[Prediction]:
    """Zero-shot classify ``images`` among ``labels``.

    Args:
        encoder: a model that embeds images and text (CLIP, open_clip, ``demo``).
        images: file paths, bytes or RGB ``PIL.Image`` objects.
        labels: at least two distinct class names, e.g. ``["dog", "cat"]``.
        templates: ``"simple"``, ``"ensemble"``, a template file, or a list of templates with ``{}``.
        top: how many labels to return per image (at most the number of labels).
        batch_size: images per forward pass.
        on_progress: called with the number of images just finished.

    Returns:
        One :class:`Prediction` per image, in input order; ``top`` labels best first with
        probabilities (softmax over *all* labels, so the top ones sum to at most 1).
    """
    clf = ZeroShotClassifier(encoder, labels, templates)
    return clf.classify(images, top=top, batch_size=batch_size, on_progress=on_progress)


def check_top(top: int) -> int:
    if not isinstance(top, (int, np.integer)) or isinstance(top, bool) or top < 1:
        raise ValueError(f"top must be a whole number >= 1, not {top!r}")
    return int(top)


# -- image loading shared by the tasks ----------------------------------------------------------


@dataclass
class LoadedImage:
    """One input of a batch: its position, display name, and the pixels or why there are none."""

    index: int
    name: str
    image: "Image.Image | None"
    error: str | None = None


def image_name(source: Any, index: int) -> str:
    """How an input is shown in results: the path as given, or ``<image #i>``."""
    if isinstance(source, (str, Path)):
        return str(source)
    return f"<image #{index}>"


def load_one(source: Any, *, draft: int | None = None) -> "Image.Image":
    """Pixels for a path, bytes or PIL image (RGB, EXIF orientation applied by the loader)."""
    from PIL import Image

    if isinstance(source, Image.Image):
        return source if source.mode == "RGB" else source.convert("RGB")
    from clipsearch.images import load_image

    return load_image(source, draft=draft)


def iter_image_batches(
    sources: Iterable[Any], *, batch_size: int = 32, draft: int | None = None
) -> Iterator[list[LoadedImage]]:
    """Decode ``sources`` lazily, ``batch_size`` at a time; unreadable ones carry an ``error``.

    Only one batch of pixels is held in memory at a time, so this streams over any number of files.
    """
    from clipsearch.errors import ClipsearchError

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size!r}")
    batch: list[LoadedImage] = []
    for i, src in enumerate(sources):
        name = image_name(src, i)
        try:
            batch.append(LoadedImage(i, name, load_one(src, draft=draft)))
        except ClipsearchError as exc:
            batch.append(LoadedImage(i, name, None, getattr(exc, "reason", None) or str(exc)))
        except (OSError, ValueError) as exc:  # e.g. a PIL image in an unconvertible mode
            batch.append(LoadedImage(i, name, None, str(exc) or type(exc).__name__))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _draft_size(encoder: "Encoder") -> int | None:
    """JPEG draft target: the model's crop size (decoding larger would be thrown away)."""
    pre = encoder.info.preprocess
    return pre.crop if pre is not None else None
