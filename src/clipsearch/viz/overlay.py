"""A relevance map drawn over its image, with the best box and the peak.

Everything here draws from plain data: the image, the ``(gh, gw)`` map, boxes ``[x0, y0, x1,
y1)`` and points ``(x, y)`` in the image's pixels (a localisation hands over its parts:
``Localization.overlay_png`` in :mod:`clipsearch.tasks.localize`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

MAX_SIDE = 1024  # overlays of larger images are drawn at this longest side, boxes scaled with them
BOX_COLOUR = "#00e5ff"
TARGET_COLOUR = "#7CFC00"


def upsample_map(rel: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a ``(gh, gw)`` map to ``size = (width, height)``; ``(height, width)`` float32 in [0, 1].

    Values are min-max scaled first (a flat map becomes all zeros).
    """
    from PIL import Image

    m = np.asarray(rel, dtype=np.float32)
    lo, hi = float(m.min()), float(m.max())
    m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    up = Image.fromarray(m, mode="F").resize(size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(up, dtype=np.float32), 0.0, 1.0)


def blend(image: "Image.Image", rel: np.ndarray, *, alpha: float = 0.55, cmap: str = "inferno") -> "Image.Image":
    """The image with the map's colours laid over it, more opaque where relevance is high.

    Returns:
        An RGB image the size of ``image``.
    """
    from matplotlib import colormaps
    from PIL import Image

    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], not {alpha!r}")
    heat = upsample_map(rel, image.size)
    colours = colormaps[cmap](heat)[..., :3]  # (h, w, 3) in [0, 1]
    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    # a floor of opacity keeps low-relevance areas visibly tinted; the peak gets ``alpha``
    a = (alpha * (0.35 + 0.65 * heat))[..., None]
    out = (1 - a) * base + a * colours
    return Image.fromarray(np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def fit_within(image: "Image.Image", max_side: int | None) -> tuple["Image.Image", float]:
    """``image`` scaled down so its longest side is at most ``max_side`` (never enlarged), and the
    factor applied (1.0 when it already fits or ``max_side`` is None)."""
    if max_side is None or max(image.size) <= max_side:
        return image, 1.0
    scale = max_side / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale)))), scale


def map_over_image(
    image: "Image.Image",
    rel: np.ndarray,
    box: Sequence[float] | None = None,
    *,
    max_side: int | None = MAX_SIDE,
    alpha: float = 0.55,
    cmap: str = "inferno",
) -> "Image.Image":
    """The map blended over the image with ``box`` outlined: one RGB picture (what the web page shows).

    Args:
        image: the RGB image.
        rel: ``(gh, gw)`` relevance map over the whole image.
        box: ``[x0, y0, x1, y1)`` in the image's pixels, or None.
        max_side: longest side of the picture (larger images are scaled down, the box with them).
        alpha, cmap: as in :func:`blend`.
    """
    from PIL import ImageDraw

    view, scale = fit_within(image, max_side)
    out = blend(view, rel, alpha=alpha, cmap=cmap)
    if box is not None:
        x0, y0, x1, y1 = (v * scale for v in box)
        width = max(2, round(max(view.size) / 200))
        ImageDraw.Draw(out).rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=BOX_COLOUR, width=width)
    return out


def relevance_overlay_png(
    image: "Image.Image",
    rel: np.ndarray,
    out: str | Path,
    *,
    box: Sequence[float] | None = None,
    peak: Sequence[float] | None = None,
    target: Sequence[float] | None = None,
    title: str = "",
    caption: str = "",
    alpha: float = 0.55,
    cmap: str = "inferno",
) -> Path:
    """Save the image beside the image with its relevance map, box and peak drawn over it.

    Args:
        image: the RGB image the map is of.
        rel: ``(gh, gw)`` relevance map over the whole image.
        out: PNG path.
        box: the found box ``[x0, y0, x1, y1)`` in the image's pixels, drawn solid on the map.
        peak: the map's best pixel ``(x, y)``, drawn as a cross.
        target: a known box drawn dashed on both panels (evaluation overlays).
        title: the figure's title (such as the prompt).
        caption: the title of the map's panel (such as the box's score).
        alpha: opacity of the map at its peak.
        cmap: a matplotlib colormap name.
    """
    from matplotlib.patches import Rectangle

    from clipsearch.viz import pyplot

    plt = pyplot()
    view, scale = fit_within(image, MAX_SIDE)
    overlay = blend(view, rel, alpha=alpha, cmap=cmap)
    aspect = view.height / view.width
    panel = 4.2
    fig, axes = plt.subplots(1, 2, figsize=(2 * panel + 0.9, panel * aspect + 0.9))
    small = max(view.size) < 256  # tiny images: show the pixels as they are
    interp = "nearest" if small else "antialiased"
    axes[0].imshow(view, interpolation=interp)
    axes[0].set_title("image", fontsize=10)
    axes[1].imshow(overlay, interpolation=interp)
    if box is not None:
        x0, y0, x1, y1 = (v * scale for v in box)
        axes[1].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=BOX_COLOUR, linewidth=2.2))
    if target is not None:
        tx0, ty0, tx1, ty1 = (v * scale for v in target)
        for ax in axes:
            ax.add_patch(Rectangle((tx0 - 0.5, ty0 - 0.5), tx1 - tx0, ty1 - ty0, fill=False, edgecolor=TARGET_COLOUR,
                                   linewidth=1.6, linestyle="--"))
    if peak is not None:
        px, py = peak[0] * scale, peak[1] * scale
        axes[1].plot([px], [py], marker="+", color="white", markersize=14, markeredgewidth=2.2)
        axes[1].plot([px], [py], marker="+", color="black", markersize=9, markeredgewidth=1.0)
    axes[1].set_title(caption or "relevance", fontsize=10)
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    lo, hi = float(np.min(rel)), float(np.max(rel))
    cax = make_axes_locatable(axes[1]).append_axes("right", size="4%", pad=0.06)
    bar = fig.colorbar(ScalarMappable(Normalize(lo, hi if hi > lo else lo + 1), cmap), cax=cax)
    bar.set_label("relevance", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    make_axes_locatable(axes[0]).append_axes("right", size="4%", pad=0.06).axis("off")  # keep panels equal
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
