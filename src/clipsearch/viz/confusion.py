"""Classification pictures: the confusion matrix and a grid of the most confident mistakes."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image


def confusion_matrix_png(
    confusion: np.ndarray, labels: Sequence[str], out: str | Path, *, title: str = "confusion matrix"
) -> Path:
    """Draw a ``(n, n)`` count matrix (rows true, columns predicted) as a PNG.

    Colour is the row-normalised rate (so rare classes are as visible as common ones); counts are
    written in the cells when there are at most 25 labels, label names shown up to 80 labels.
    """
    from clipsearch.viz import pyplot

    plt = pyplot()
    counts = np.asarray(confusion, dtype=np.int64)
    n = counts.shape[0]
    if counts.shape != (n, n) or n != len(labels):
        raise ValueError(f"confusion matrix of shape {counts.shape} does not match {len(labels)} labels")
    rows = counts.sum(axis=1, keepdims=True)
    rate = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    side = float(np.clip(0.42 * n + 3.0, 5.0, 24.0))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(rate, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    show_names = n <= 80
    font = float(np.clip(12 - 0.12 * n, 5, 10))
    names = [textwrap.shorten(str(x), 28, placeholder="…") for x in labels]
    if show_names:
        ax.set_xticks(range(n), names, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center", fontsize=font)
        ax.set_yticks(range(n), [f"{x} ({int(r)})" for x, r in zip(names, rows[:, 0])], fontsize=font)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if n <= 25:
        for (i, j), c in np.ndenumerate(counts):
            if c:
                ax.text(j, i, str(c), ha="center", va="center", fontsize=font,
                        color="white" if rate[i, j] > 0.55 else "black")
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label (images)" if show_names else "true label")
    ax.set_title(title, fontsize=11)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="share of the true label's images")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def mistakes_grid_png(
    cells: Sequence[tuple["Image.Image | None", str, str, float, str]],
    out: str | Path,
    *,
    title: str = "most confident mistakes",
    columns: int = 4,
) -> Path:
    """Draw mistakes as a grid of thumbnails captioned with the true and predicted labels.

    Args:
        cells: ``(image or None, true label, predicted label, probability of the prediction,
            image name)`` per mistake, worst first. ``None`` draws an empty frame.
        out: PNG path.
        title: figure title.
        columns: thumbnails per row.
    """
    from clipsearch.viz import pyplot

    plt = pyplot()
    out = Path(out)
    if not cells:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no mistakes: every image was classified correctly", ha="center", va="center", fontsize=11)
        ax.set_title(title, fontsize=11)
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out
    cols = max(1, min(columns, len(cells)))
    rows = (len(cells) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.7 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, true, pred, prob, name) in zip(axes.flat, cells):
        if image is not None:
            ax.imshow(_letterbox(image, 256))
        else:
            ax.text(0.5, 0.5, "(unreadable)", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(
            f"true: {textwrap.shorten(true, 26, placeholder='…')}\n"
            f"predicted: {textwrap.shorten(pred, 20, placeholder='…')} ({prob:.0%})",
            fontsize=9,
            color="#b00020",
        )
        ax.text(0.5, -0.03, textwrap.shorten("/".join(Path(name).parts[-2:]), 40, placeholder="…"), transform=ax.transAxes,
                ha="center", va="top", fontsize=7, color="#555555")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (3.7 * rows + 0.5)), h_pad=1.2)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _letterbox(image: "Image.Image", side: int) -> "Image.Image":
    """``image`` scaled to fit a ``side`` x ``side`` square and centred on light grey, so cells line up."""
    from PIL import Image

    thumb = image.convert("RGB")
    fit = side / max(thumb.size)  # enlarge small images too, so every cell is filled the same way
    size = (max(1, round(thumb.width * fit)), max(1, round(thumb.height * fit)))
    thumb = thumb.resize(size, Image.Resampling.LANCZOS if fit < 1 else Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (side, side), (235, 235, 235))
    canvas.paste(thumb, ((side - thumb.width) // 2, (side - thumb.height) // 2))
    return canvas
