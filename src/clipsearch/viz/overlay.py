"""A relevance map drawn over its image, with the best box and the peak."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from clipsearch.tasks.localize import Localization


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


def relevance_overlay_png(
    image: "Image.Image",
    loc: "Localization",
    out: str | Path,
    *,
    alpha: float = 0.55,
    cmap: str = "inferno",
    target: tuple[float, float, float, float] | None = None,
) -> Path:
    """Save the image beside the image with its relevance map, box and peak drawn over it.

    Args:
        image: the RGB image that was localised (same size as ``loc.image_size``).
        loc: the result of :func:`clipsearch.tasks.localize`.
        out: PNG path.
        alpha: opacity of the map at its peak.
        cmap: a matplotlib colormap name.
        target: an optional known box drawn dashed (evaluation overlays).
    """
    from matplotlib.patches import Rectangle

    from clipsearch.viz import pyplot

    if tuple(image.size) != tuple(loc.image_size):
        raise ValueError(f"image size {image.size} does not match the localisation's {loc.image_size}")
    plt = pyplot()
    view = image
    scale = 1.0
    if max(image.size) > 1024:  # keep the PNG reasonable; boxes are scaled with it
        scale = 1024 / max(image.size)
        view = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    overlay = blend(view, loc.map, alpha=alpha, cmap=cmap)
    aspect = view.height / view.width
    panel = 4.2
    fig, axes = plt.subplots(1, 2, figsize=(2 * panel + 0.9, panel * aspect + 0.9))
    small = max(view.size) < 256  # tiny images: show the pixels as they are
    interp = "nearest" if small else "antialiased"
    axes[0].imshow(view, interpolation=interp)
    axes[0].set_title("image", fontsize=10)
    axes[1].imshow(overlay, interpolation=interp)
    x0, y0, x1, y1 = (v * scale for v in loc.bbox)
    axes[1].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="#00e5ff", linewidth=2.2))
    if target is not None:
        tx0, ty0, tx1, ty1 = (v * scale for v in target)
        for ax in axes:
            ax.add_patch(Rectangle((tx0 - 0.5, ty0 - 0.5), tx1 - tx0, ty1 - ty0, fill=False, edgecolor="#7CFC00",
                                   linewidth=1.6, linestyle="--"))
    px, py = loc.peak[0] * scale, loc.peak[1] * scale
    axes[1].plot([px], [py], marker="+", color="white", markersize=14, markeredgewidth=2.2)
    axes[1].plot([px], [py], marker="+", color="black", markersize=9, markeredgewidth=1.0)
    axes[1].set_title(f"box score {loc.score:.3f} (cosine)", fontsize=10)
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    lo, hi = float(np.min(loc.map)), float(np.max(loc.map))
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    cax = make_axes_locatable(axes[1]).append_axes("right", size="4%", pad=0.06)
    bar = fig.colorbar(ScalarMappable(Normalize(lo, hi if hi > lo else lo + 1), cmap), cax=cax)
    bar.set_label("relevance", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    make_axes_locatable(axes[0]).append_axes("right", size="4%", pad=0.06).axis("off")  # keep panels equal
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"“{loc.prompt}”", fontsize=12)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
