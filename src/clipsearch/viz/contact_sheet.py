"""A contact sheet of search results: the top images in a grid, each with its rank and score.

What CLIP tutorials draw by hand with matplotlib, done with Pillow alone (fast to import, no
display backend). Images are read with :func:`clipsearch.images.load_image`, so a file that
became unreadable since indexing shows as a grey tile instead of failing the sheet.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from PIL import Image

SHEET_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class SheetItem(Protocol):
    """What the sheet reads of a search hit (a store's ``Hit`` has it): only image items are
    drawn, from their file, labelled with their score."""

    @property
    def modality(self) -> str: ...

    @property
    def path(self) -> str | None: ...

    @property
    def score(self) -> float: ...


def contact_sheet(
    hits: Sequence[SheetItem],
    out_path: str | os.PathLike[str],
    *,
    tile: int = 192,
    columns: int | None = None,
    title: str | None = None,
) -> Path:
    """Save the image hits as a grid with "rank. score" under each; text hits are skipped.

    Args:
        hits: search results, best first.
        out_path: ``.png``, ``.jpg`` or ``.webp`` file to write.
        tile: size in pixels of each thumbnail's square cell.
        columns: tiles per row; default about the square root of the count (at most 6).
        title: a line of text above the grid (e.g. the query).

    Returns:
        The path written.

    Raises:
        ValueError: no image among ``hits``, or an unsupported file suffix.
    """
    from PIL import Image, ImageDraw

    out = Path(out_path)
    if out.suffix.lower() not in SHEET_SUFFIXES:
        raise ValueError(f"--grid must end in {', '.join(SHEET_SUFFIXES)}, not {out.suffix or out.name!r}")
    images = [h for h in hits if h.modality == "image" and h.path]
    if not images:
        raise ValueError("no image among the results to put on a contact sheet")
    if tile < 32:
        raise ValueError(f"tile must be at least 32 pixels, got {tile}")
    n = len(images)
    cols = columns or min(6, max(1, math.ceil(math.sqrt(n))))
    rows = math.ceil(n / cols)
    font = _font(max(12, tile // 12))
    label_h = int(font.size * 1.6) if hasattr(font, "size") else 18
    title_h = label_h + 6 if title else 0
    pad = 6
    width = cols * (tile + pad) + pad
    height = title_h + rows * (tile + label_h + pad) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, pad), _fit(draw, title, font, width - 2 * pad), fill=(0, 0, 0), font=font)
    for i, hit in enumerate(images):
        r, c = divmod(i, cols)
        x = pad + c * (tile + pad)
        y = title_h + pad + r * (tile + label_h + pad)
        thumb = _thumbnail(hit.path, tile)
        sheet.paste(thumb, (x + (tile - thumb.width) // 2, y + (tile - thumb.height) // 2))
        label = f"{i + 1}. {hit.score:.3f}  {Path(hit.path).name}"
        draw.text((x, y + tile + 2), _fit(draw, label, font, tile), fill=(0, 0, 0), font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def _thumbnail(path: str, tile: int) -> Image.Image:
    from PIL import Image

    from clipsearch.errors import ImageRefused
    from clipsearch.images import load_image

    try:
        img = load_image(path, draft=tile)
    except ImageRefused:
        return Image.new("RGB", (tile, tile), (200, 200, 200))
    img.thumbnail((tile, tile), Image.Resampling.LANCZOS)
    return img


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: a fixed bitmap font
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:
    """``text`` cut with an ellipsis so that it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."
