"""Writing a demo world to a folder: images and ``metadata.jsonl``.

Layout of a generated world folder: ``OUT/000000.jpg``, ``OUT/000001.png``, ... and
``OUT/metadata.jsonl`` with one JSON object per image::

    {"file": "000000.jpg", "caption": "...", "split": "train", "phrasing": "train",
     "width": 412, "height": 230,
     "objects": [{"shape": "star", "color": "red", "size": "small", "position": "top left",
                  "bbox": [x0, y0, x1, y1]}],
     "background": {"kind": "striped", "color": "light blue", ...},
     "claim": {"objects": [{"shape": "star", "color": "red"}], "count": null, "background": null}}

``bbox`` is the tight box of the drawn object in pixels of the saved image (see
:mod:`~clipsearch.world.drawing`). The same seed gives the same world byte for byte (PNG and
JPEG encodings are deterministic at fixed settings).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipsearch.events import ProgressCallback, Reporter
from clipsearch.world.drawing import render_scene
from clipsearch.world.scene import check_split, sample_canvas_size

if TYPE_CHECKING:
    from PIL import Image

JPEG_QUALITY = 90


def encode_image(img: "Image.Image", fmt: str) -> bytes:
    """Deterministic bytes of ``img`` as "jpeg" (quality :data:`JPEG_QUALITY`) or "png"."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    elif fmt == "png":
        img.save(buf, format="PNG")
    else:
        raise ValueError(f"unknown image format {fmt!r}; use jpeg or png")
    return buf.getvalue()


SPLIT_STREAMS = {"train": 0, "eval": 1}  # a split's stream id, so train and eval never repeat


def generate_world(
    out: str | Path,
    n: int = 1000,
    *,
    seed: int = 0,
    split: str = "train",
    size_range: tuple[int, int] = (160, 640),
    on_progress: ProgressCallback | None = None,
) -> Path:
    """Write ``n`` scenes (images and ``metadata.jsonl``) into the folder ``out``.

    Images are JPEG or PNG at random (about half each), named ``000000.jpg`` etc. The same
    ``(n, seed, split, size_range)`` gives byte-identical files.

    Args:
        out: the folder to write; created if missing; must not hold a metadata.jsonl already.
        n: number of images.
        seed: world seed.
        split: "train" or "eval".
        size_range: smallest and largest image side in pixels.
        on_progress: called with the events of the task ``"demo world (SPLIT)"``: the total,
            then one advance per image written.

    Returns:
        The path of ``metadata.jsonl``.
    """
    check_split(split)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    out = Path(out)
    meta_path = out / "metadata.jsonl"
    if meta_path.exists():
        raise ValueError(f"{meta_path} already exists; choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(seed), SPLIT_STREAMS[split]])
    report = Reporter(on_progress, f"demo world ({split})")
    report.total(n)
    lines = []
    for i in range(n):
        img, record = render_scene(rng, split, sample_canvas_size(rng, *size_range))
        fmt = "jpeg" if rng.random() < 0.5 else "png"
        name = f"{i:06d}.{'jpg' if fmt == 'jpeg' else 'png'}"
        (out / name).write_bytes(encode_image(img, fmt))
        lines.append(json.dumps({"file": name, **record}, ensure_ascii=False))
        report.advance()
    meta_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report.done()
    return meta_path
