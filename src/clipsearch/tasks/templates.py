"""Prompt templates and class embeddings for zero-shot classification.

A template is a sentence with ``{}`` where the label goes ("a photo of a {}."). With several
templates, each class embedding is the mean of the *normalised* text embeddings of its prompts,
normalised again (CLIP's prompt ensembling; Radford et al. 2021, section 3.1.4).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from clipsearch.models.base import Encoder, Vectors

SIMPLE: tuple[str, ...] = ("a photo of a {}.",)
"""The single prompt CLIP's paper starts from."""

ENSEMBLE: tuple[str, ...] = (
    # The 80 prompts OpenAI used for ImageNet (CLIP repo, notebooks/Prompt_Engineering_for_ImageNet).
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)
"""CLIP's 80 ImageNet prompts: slower to embed, usually a few points better than ``SIMPLE``."""

BUILTIN: dict[str, tuple[str, ...]] = {"simple": SIMPLE, "ensemble": ENSEMBLE}

TemplateSpec = str | Path | Sequence[str]
"""``"simple"``, ``"ensemble"``, a file with one template per line, or the templates themselves."""


def resolve_templates(spec: TemplateSpec) -> list[str]:
    """Turn a template spec into a list of templates, each containing ``{}``.

    Args:
        spec: ``"simple"`` or ``"ensemble"`` (built in), a path to a UTF-8 text file with one
            template per line (blank lines and lines starting with ``#`` are skipped), or a
            sequence of template strings.

    Raises:
        ValueError: unknown name, missing file, no templates, or a template without ``{}``.
    """
    if isinstance(spec, str) and spec in BUILTIN:
        return list(BUILTIN[spec])
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.is_file():
            raise ValueError(
                f"templates {str(spec)!r} is neither a built-in set ({', '.join(BUILTIN)}) nor a file"
            )
        lines = path.read_text(encoding="utf-8").splitlines()
        templates = [t.strip() for t in lines if t.strip() and not t.lstrip().startswith("#")]
        where = f" in {path}"
    else:
        templates = [str(t) for t in spec]
        where = ""
    if not templates:
        raise ValueError(f"no templates{where}; give at least one, such as 'a photo of a {{}}.'")
    for t in templates:
        if "{}" not in t:
            raise ValueError(f"template {t!r}{where} has no '{{}}' where the label goes")
    return templates


def fill(template: str, label: str) -> str:
    """Put ``label`` into every ``{}`` of ``template`` (no other brace is interpreted)."""
    return template.replace("{}", label)


def parse_labels(text: str) -> list[str]:
    """Labels written in one string: one per line when it holds a line break, else separated
    by commas (``"dog, cat, horse"``); spaces around each label and empty entries are dropped."""
    sep = "\n" if "\n" in text else ","
    return [x.strip() for x in text.split(sep) if x.strip()]


def read_labels(path: str | Path) -> list[str]:
    """Labels from a text file, one per line; blank lines and lines starting with ``#`` are skipped.

    Raises:
        ValueError: there is no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such labels file: {path}")
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return [x.strip() for x in lines if x.strip() and not x.lstrip().startswith("#")]


def validate_labels(labels: Sequence[str]) -> list[str]:
    """Strip the labels and check there are at least two, none empty and none repeated."""
    clean = [str(x).strip() for x in labels]
    if len(clean) < 2:
        raise ValueError(f"give at least two labels to choose between, not {len(clean)}")
    for i, x in enumerate(clean):
        if not x:
            raise ValueError(f"label #{i} is empty; every label needs at least one non-space character")
    seen: set[str] = set()
    for x in clean:
        if x in seen:
            raise ValueError(f"label {x!r} is given twice; labels must be distinct")
        seen.add(x)
    return clean


def ensemble_embeddings(text_vectors: "Vectors", n_classes: int) -> "Vectors":
    """Average prompt embeddings per class, then renormalise.

    Args:
        text_vectors: ``(n_classes * n_templates, dim)``, class-major (all prompts of class 0,
            then class 1, ...); rows need not be normalised, they are normalised here first.
        n_classes: number of classes.

    Returns:
        ``(n_classes, dim)`` float32, unit rows.
    """
    v = np.asarray(text_vectors, dtype=np.float32)
    if v.ndim != 2 or n_classes < 1 or v.shape[0] % n_classes:
        raise ValueError(f"cannot split {v.shape} text vectors into {n_classes} classes of equal size")
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    mean = v.reshape(n_classes, v.shape[0] // n_classes, v.shape[1]).mean(axis=1)
    return (mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def class_embeddings(
    encoder: "Encoder",
    labels: Sequence[str],
    templates: TemplateSpec = "simple",
    *,
    batch_size: int = 256,
) -> "Vectors":
    """Embed every label with every template and ensemble them.

    Returns:
        ``(len(labels), dim)`` float32 unit rows, in label order.
    """
    labels = validate_labels(labels)
    temps = resolve_templates(templates)
    prompts = [fill(t, label) for label in labels for t in temps]
    vectors = encoder.encode_texts(prompts, batch_size=batch_size, role="query")
    return ensemble_embeddings(vectors, len(labels))
