"""The similarity heatmap: texts down the side, image thumbnails (or texts) across the top."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clipsearch.similarity import SimilarityTable


def similarity_heatmap(table: "SimilarityTable", out: str | Path) -> Path:
    """Draw ``table.cosine`` as the classic CLIP notebook figure and save it as PNG.

    Texts label the rows; image thumbnails (or the texts again) label the columns.
    """
    import numpy as np

    from clipsearch.viz import pyplot

    plt = pyplot()
    n_rows, n_cols = table.cosine.shape
    width = max(6.0, 1.6 * n_cols + 4.5)
    height = max(4.0, 0.6 * n_rows + (2.2 if table.thumbnails else 2.5))
    fig, ax = plt.subplots(figsize=(width, height))
    im = ax.imshow(table.cosine, cmap="viridis", aspect="auto", vmin=min(0.0, float(table.cosine.min())))
    ax.set_yticks(range(n_rows), [_wrap(t) for t in table.row_labels], fontsize=9)
    for (i, j), v in np.ndenumerate(table.cosine):
        light = im.norm(v) > 0.6  # viridis is light at its top end: dark text there
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="black" if light else "white")
    if table.thumbnails:
        ax.set_xticks([])
        ax.set_xlim(-0.5, n_cols - 0.5)
        ax.set_ylim(n_rows - 0.5, -1.6)
        for j, thumb in enumerate(table.thumbnails):
            ax.imshow(thumb, extent=(j - 0.45, j + 0.45, -0.6, -1.55), aspect="auto")
    else:
        ax.set_xticks(range(n_cols), [_wrap(t, 18) for t in table.column_labels], rotation=40, ha="right", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label="cosine similarity")
    ax.set_title(f"{table.model}: cosine similarity", fontsize=11)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _wrap(text: str, width: int = 40) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:3]) or text
