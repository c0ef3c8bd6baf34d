"""Where in an image is the prompt? Relevance maps from multi-scale sliding windows.

The classic method, which works with any image encoder: cut the image into overlapping square
windows at several scales, embed every window, score each against the prompt by cosine, and
collate the scores into a map on a coarse grid where each cell is the average score of the
windows that cover the cell's centre.

Score normalisation: windows of different sizes hold different amounts of context, so their
cosines can sit at different levels and spreads. Before collating, each scale's scores are
standardised (z-scores: minus that scale's mean over windows, divided by its standard
deviation), so every scale votes with the same weight whatever the encoder, and the map reads
"standard deviations above this image's average window". Alternatives measured on 60
two-object demo-world scenes with an oracle encoder that measures the prompted colour's share
of each window (peak inside the object's box / box IoU >= 0.5, default windows): z-scores
0.93 / 0.65, raw cosines 0.93 / 0.72, a softmax over each scale's windows (temperature 10 or
50) 0.92-0.87 / 0.77. A softmax lets a handful of windows decide, which moved the peak off the
object more often; raw cosines only work when every scale's cosines share one level, as the
oracle's do.

Windows reach past the image edges (``overhang``), filled with the image's mean colour:
without that, a pixel near an edge is covered only by windows that hug the edge, so an object
near a corner drags the peak into the corner.

A model with its own spatial grid of cell embeddings (the demo model, dual encoders from
``clipsearch train``) gives a map in one forward pass instead: the cosine of each of its cells
with the prompt (``method="patches"``). ``method="auto"``, the default, uses the grid when the
model has one and no window setting (``scales``, ``stride``, ``overhang``) is given, else the
windows (:func:`choose_method`).

The box: cells at or above ``peak - box_threshold * (peak - min)`` form a mask; the box is the
extent of the mask's 4-connected component holding the peak. Its ``score`` is the cosine of the
prompt with the box's own crop (one extra forward pass), a number comparable across images.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from clipsearch.search import has_grid
from clipsearch.tasks.classify import load_one, require_image_and_text
from clipsearch.tasks.metrics import box_iou, inside
from clipsearch.viz.overlay import relevance_overlay_png
from clipsearch.world import render_scene

if TYPE_CHECKING:
    from PIL import Image

    from clipsearch.models.base import Encoder

Box = tuple[int, int, int, int]

DEFAULT_SCALES: tuple[float, ...] = (0.25, 0.4, 0.6)  # window side as a fraction of the short side
DEFAULT_STRIDE = 1 / 3  # step between windows as a fraction of the window side
DEFAULT_GRID = 32  # map cells along the long side
DEFAULT_BOX_THRESHOLD = 0.3  # box region: cells >= peak - 0.3 * (peak - min)
DEFAULT_OVERHANG = 0.5  # windows may reach half their side past the image edge (filled with the mean colour)
METHODS = ("auto", "windows", "patches")

SMALL_OBJECTS = {"scales": (0.15, 0.25, 0.35), "stride": 0.25, "box_threshold": 0.12}
"""Settings for objects a few percent of the image wide, such as the demo world's shapes.

Chosen on demo-world two-object scenes with the demo model (seed 0, n=100), then measured on
fresh scenes (seed 1, n=200): peak in the object's box 0.895, box IoU >= 0.5 0.77. The defaults
above gave 0.78 and 0.16 there (large windows blur small objects and the box grows), but they
fit objects that fill a good part of the frame, as in photos, where these settings give boxes
that are too small. They are window settings, so ``method="auto"`` slides windows with them."""


@dataclass
class Localization:
    """The relevance map of one prompt over one image, and its best box.

    Pixel coordinates are in the input image as given (after EXIF orientation when it came from
    a file), ``x`` to the right and ``y`` down; boxes are ``[x0, y0, x1, y1)``, end exclusive.
    """

    prompt: str
    map: npt.NDArray[np.float32]  # (gh, gw) relevance, higher = more like the prompt
    bbox: Box  # the most relevant region, in input pixels
    score: float  # cosine of the prompt with the bbox crop
    peak: tuple[int, int]  # (x, y) pixel at the centre of the map's best cell
    image_size: tuple[int, int]  # (width, height) of the input image
    method: str = "windows"
    n_windows: int = 0  # windows (or patches) scored
    scales: tuple[float, ...] = field(default_factory=tuple)

    def cell_box(self, row: int, col: int) -> Box:
        """The input-image pixels ``[x0, y0, x1, y1)`` that map cell (row, col) stands for."""
        gh, gw = self.map.shape
        w, h = self.image_size
        return (
            math.floor(col * w / gw),
            math.floor(row * h / gh),
            math.ceil((col + 1) * w / gw),
            math.ceil((row + 1) * h / gh),
        )

    def overlay_png(
        self, image: "Image.Image", out: str | Path, *, target: Sequence[float] | None = None
    ) -> Path:
        """Save ``image`` beside itself with this map, the box and the peak drawn over it (PNG).

        Args:
            image: the RGB image that was localised (its size is :attr:`image_size`).
            out: PNG path.
            target: a known box ``[x0, y0, x1, y1)`` to draw dashed (evaluation overlays).
        """
        if tuple(image.size) != tuple(self.image_size):
            raise ValueError(f"image size {image.size} does not match the localisation's {self.image_size}")
        return relevance_overlay_png(
            image, self.map, out, box=self.bbox, peak=self.peak, target=target,
            title=f"“{self.prompt}”", caption=f"box score {self.score:.3f} (cosine)",
        )  # fmt: skip

    def to_dict(self, digits: int = 3) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "map": np.round(self.map.astype(np.float64), digits).tolist(),
            "bbox": [int(v) for v in self.bbox],
            "score": round(float(self.score), 6),
            "peak": [int(v) for v in self.peak],
            "size": [int(v) for v in self.image_size],
            "method": self.method,
        }


def window_boxes(
    width: int,
    height: int,
    scales: Sequence[float] = DEFAULT_SCALES,
    stride: float = DEFAULT_STRIDE,
    overhang: float = DEFAULT_OVERHANG,
) -> tuple[list[Box], npt.NDArray[np.int64]]:
    """Square windows tiling a ``width`` x ``height`` image at each scale.

    Args:
        width, height: image size in pixels.
        scales: window side as a fraction of the short side, each in (0, 1].
        stride: step between neighbouring windows as a fraction of the window side, in (0, 1].
        overhang: how far windows may reach past the image edge, as a fraction of the window
            side, in [0, 0.5]. With 0, pixels near an edge are covered only by windows that
            hug that edge, so an object near a corner pulls the map's peak into the corner;
            with 0.5 every pixel can be the centre of a window.

    Returns:
        ``(boxes, scale_index)``: boxes ``[x0, y0, x1, y1)`` (possibly reaching outside the
        image), evenly spread from edge to edge at each scale, and ``(n,)`` the scale of each.
    """
    check_scales(scales)
    if not 0 < stride <= 1:
        raise ValueError(f"stride must be in (0, 1] (a fraction of the window side), not {stride!r}")
    if not 0 <= overhang <= 0.5:
        raise ValueError(f"overhang must be in [0, 0.5] (a fraction of the window side), not {overhang!r}")
    short = min(width, height)
    boxes: list[Box] = []
    which: list[int] = []
    for s_i, s in enumerate(scales):
        side = max(1, round(s * short))
        step = max(1.0, side * stride)
        pad = round(overhang * side)
        xs = _starts(width, side, step, pad)
        ys = _starts(height, side, step, pad)
        for y in ys:
            for x in xs:
                boxes.append((x, y, x + side, y + side))
                which.append(s_i)
    return boxes, np.asarray(which, dtype=np.int64)


def _starts(length: int, side: int, step: float, pad: int) -> list[int]:
    """Window starts from ``-pad`` to ``length - side + pad``, evenly spaced at most ``step`` apart."""
    lo, hi = -pad, max(length - side + pad, -pad)
    count = math.ceil((hi - lo) / step) + 1
    return sorted({round(v) for v in np.linspace(lo, hi, count)})


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(s) for s in scales)
    if not out:
        raise ValueError("give at least one window scale, such as 0.25,0.4,0.6")
    for s in out:
        if not 0 < s <= 1:
            raise ValueError(f"window scale {s!r} must be in (0, 1] (a fraction of the image's short side)")
    return out


def collate(
    boxes: Sequence[Box],
    scores: npt.ArrayLike,
    width: int,
    height: int,
    grid: int = DEFAULT_GRID,
) -> npt.NDArray[np.float32]:
    """Average window scores into a ``(gh, gw)`` map: each cell the mean over windows covering its centre.

    ``gw``/``gh`` is ``grid`` along the long side and proportionally fewer along the short
    side (at least 1). Cells no window covers take the lowest score.
    """
    if grid < 1:
        raise ValueError(f"grid must be >= 1 cell, not {grid!r}")
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) != len(boxes) or not len(boxes):
        raise ValueError(f"need one score per window, got {len(scores)} scores for {len(boxes)} windows")
    gh, gw = grid_shape(width, height, grid)
    total = np.zeros((gh, gw))
    count = np.zeros((gh, gw))
    for (x0, y0, x1, y1), s in zip(boxes, scores):
        c0, c1 = _cells(x0, x1, width, gw)
        r0, r1 = _cells(y0, y1, height, gh)
        total[r0:r1, c0:c1] += s
        count[r0:r1, c0:c1] += 1
    out = np.full((gh, gw), scores.min())
    np.divide(total, count, out=out, where=count > 0)
    return out.astype(np.float32)


def grid_shape(width: int, height: int, grid: int) -> tuple[int, int]:
    """``(gh, gw)``: ``grid`` cells along the long side, the short side in proportion."""
    if width >= height:
        return max(1, round(grid * height / width)), grid
    return grid, max(1, round(grid * width / height))


def _cells(a: int, b: int, length: int, n: int) -> tuple[int, int]:
    """Cells ``[i0, i1)`` of ``n`` along ``length`` whose centres lie in pixels ``[a, b)``."""
    i0 = math.ceil(a * n / length - 0.5)
    i1 = math.ceil(b * n / length - 0.5)
    return max(0, i0), min(n, max(i1, i0))


def normalize_scores(scores: npt.ArrayLike, scale_index: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Standardise scores within each scale: ``(s - mean) / std`` (std 0 leaves ``s - mean``)."""
    s = np.asarray(scores, dtype=np.float64)
    which = np.asarray(scale_index)
    out = np.empty_like(s)
    for k in np.unique(which):
        sel = which == k
        centred = s[sel] - s[sel].mean()
        std = centred.std()
        out[sel] = centred / std if std > 1e-9 else centred
    return out


def peak_and_box(rel: npt.NDArray, threshold: float = DEFAULT_BOX_THRESHOLD) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """The peak cell and the cell box of its region.

    Args:
        rel: ``(gh, gw)`` relevance map.
        threshold: in [0, 1]; cells ``>= peak - threshold * (peak - min)`` join the region.

    Returns:
        ``((row, col), (r0, c0, r1, c1))``: the peak cell and the region's cell extent, end exclusive.
        Among equal maxima the peak is the one nearest the middle of their region.
    """
    if not 0 <= threshold <= 1:
        raise ValueError(f"box threshold must be in [0, 1], not {threshold!r}")
    m = np.asarray(rel, dtype=np.float64)
    hi, lo = float(m.max()), float(m.min())
    top = _component(m >= hi - 1e-9 * max(hi - lo, 1e-12), np.unravel_index(int(m.argmax()), m.shape))
    rows, cols = np.nonzero(top)
    cy, cx = rows.mean(), cols.mean()
    best = int(np.argmin((rows - cy) ** 2 + (cols - cx) ** 2))
    peak = (int(rows[best]), int(cols[best]))
    region = _component(m >= hi - threshold * (hi - lo), peak)
    rows, cols = np.nonzero(region)
    return peak, (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)


def _component(mask: npt.NDArray[np.bool_], seed: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """The 4-connected component of ``mask`` containing ``seed`` (a flood fill)."""
    h, w = mask.shape
    out = np.zeros_like(mask, dtype=bool)
    stack = [tuple(int(v) for v in seed)]
    out[stack[0]] = True
    while stack:
        r, c = stack.pop()
        for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not out[rr, cc]:
                out[rr, cc] = True
                stack.append((rr, cc))
    return out


def settings_for_model(
    encoder: "Encoder",
    scales: Sequence[float] | None,
    stride: float | None,
    box_threshold: float | None,
    overhang: float | None,
) -> tuple[Sequence[float] | None, float | None, float | None]:
    """``(scales, stride, box_threshold)`` as given, or, when none of the window settings is
    given and the model says its pictures hold small objects (``info.extra["small_objects"]``,
    as the demo model does for its world), :data:`SMALL_OBJECTS`: the best method for such a
    model (two-object demo scenes, seed 1, n=200: box IoU >= 0.5 on 0.815 of them, where its
    patch grid reaches 0.375 and the default windows 0.16)."""
    if any(v is not None for v in (scales, stride, overhang)) or not encoder.info.extra.get("small_objects"):
        return scales, stride, box_threshold
    box = SMALL_OBJECTS["box_threshold"] if box_threshold is None else box_threshold
    return SMALL_OBJECTS["scales"], SMALL_OBJECTS["stride"], box


def choose_method(
    encoder: "Encoder",
    method: str = "auto",
    *,
    scales: Sequence[float] | None = None,
    stride: float | None = None,
    overhang: float | None = None,
) -> str:
    """The method :func:`localize` uses: ``"windows"`` or ``"patches"``.

    ``"auto"`` is ``"patches"`` for a model with its own grid of cell embeddings (one forward
    pass, the model's cells) unless a window setting is given (``scales``, ``stride`` or
    ``overhang`` not None: they ask for windows), else ``"windows"`` (any model). Any other
    ``method`` is checked and returned as it is.
    """
    if method not in METHODS:
        raise ValueError(f"unknown localisation method {method!r}; use one of {', '.join(METHODS)}")
    if method != "auto":
        return method
    windows_asked = any(v is not None for v in (scales, stride, overhang))
    return "patches" if has_grid(encoder) and not windows_asked else "windows"


def window_settings(
    small_objects: bool = False,
    *,
    scales: Sequence[float] | None = None,
    stride: float | None = None,
    box_threshold: float | None = None,
) -> dict[str, Any]:
    """``scales``, ``stride`` and ``box_threshold`` for :func:`localize`: each as given, else from
    :data:`SMALL_OBJECTS` when ``small_objects``, else None (the library's default; window
    settings left None let ``method="auto"`` use a model's patch grid)."""
    base: dict[str, Any] = dict(SMALL_OBJECTS) if small_objects else {}
    given = {"scales": None if scales is None else tuple(scales), "stride": stride, "box_threshold": box_threshold}
    return {name: base.get(name) if value is None else value for name, value in given.items()}


def localize(
    encoder: "Encoder",
    image: Any,
    prompt: str,
    *,
    scales: Sequence[float] | None = None,
    stride: float | None = None,
    grid: int = DEFAULT_GRID,
    box_threshold: float | None = None,
    overhang: float | None = None,
    method: str = "auto",
    batch_size: int = 64,
    text_vector: npt.NDArray[np.float32] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Localization:
    """Relevance map of ``prompt`` over ``image`` and the box of its most relevant region.

    Args:
        encoder: any model that embeds images and text.
        image: a path, bytes or RGB ``PIL.Image`` (files get their EXIF orientation applied).
        prompt: what to find, e.g. ``"red circle"``.
        scales: window sides as fractions of the image's short side (None:
            :data:`DEFAULT_SCALES`).
        stride: window step as a fraction of the window side (None: :data:`DEFAULT_STRIDE`).
        grid: map cells along the long side.
        box_threshold: how far below the peak (as a fraction of peak - min) the box region
            reaches (None: :data:`DEFAULT_BOX_THRESHOLD`).
        overhang: how far windows reach past the image edge (fraction of their side); the part
            outside is filled with the image's mean colour (None: :data:`DEFAULT_OVERHANG`).
        method: ``"windows"`` (any encoder), ``"patches"`` (encoders with ``encode_patch_grid``,
            such as ``demo``: one forward pass, the encoder's own spatial grid) or ``"auto"``
            (:func:`choose_method`: patches for a model with a grid unless a window setting
            is given).
        batch_size: windows per forward pass.
        text_vector: the prompt's unit ``(dim,)`` embedding, if already computed (skips the text pass).
        on_progress: called with (windows done, windows in all).

    Returns:
        A :class:`Localization` with a ``(gh, gw)`` map and the box in input-image pixels.
    """
    require_image_and_text(encoder, "localisation")
    if method == "auto":
        scales, stride, box_threshold = settings_for_model(encoder, scales, stride, box_threshold, overhang)
    method = choose_method(encoder, method, scales=scales, stride=stride, overhang=overhang)
    scales = check_scales(DEFAULT_SCALES if scales is None else scales)
    stride = DEFAULT_STRIDE if stride is None else stride
    overhang = DEFAULT_OVERHANG if overhang is None else overhang
    box_threshold = DEFAULT_BOX_THRESHOLD if box_threshold is None else box_threshold
    pil = load_one(image)
    width, height = pil.size
    if text_vector is None:
        text_vector = encoder.encode_texts([prompt])[0]
    text_vector = np.asarray(text_vector, dtype=np.float32)
    if method == "patches":
        rel, n = _patch_map(encoder, pil, text_vector, grid)
    else:
        work, factor = _working_copy(pil, encoder, min(scales))
        boxes, which = window_boxes(work.width, work.height, scales, stride, overhang)
        fill = tuple(int(round(v)) for v in np.asarray(work, dtype=np.float32).reshape(-1, 3).mean(axis=0))
        cos = np.empty(len(boxes), dtype=np.float32)
        for start in range(0, len(boxes), batch_size):
            chunk = boxes[start : start + batch_size]
            crops = [crop_filled(work, b, fill) for b in chunk]
            cos[start : start + len(chunk)] = encoder.encode_images(crops) @ text_vector
            if on_progress:
                on_progress(start + len(chunk), len(boxes))
        rel = collate(boxes, normalize_scores(cos, which), work.width, work.height, grid)
        n = len(boxes)
    (pr, pc), (r0, c0, r1, c1) = peak_and_box(rel, box_threshold)
    gh, gw = rel.shape
    bbox = (
        max(0, math.floor(c0 * width / gw)),
        max(0, math.floor(r0 * height / gh)),
        min(width, math.ceil(c1 * width / gw)),
        min(height, math.ceil(r1 * height / gh)),
    )
    peak = (min(width - 1, int((pc + 0.5) * width / gw)), min(height - 1, int((pr + 0.5) * height / gh)))
    score = float(encoder.encode_images([pil.crop(bbox)])[0] @ text_vector)
    return Localization(prompt, rel, bbox, score, peak, (width, height), method, n, scales if method == "windows" else ())


def crop_filled(image: "Image.Image", box: Box, fill: tuple[int, ...]) -> "Image.Image":
    """``image.crop(box)``, with the part of ``box`` outside the image painted ``fill`` (not black)."""
    from PIL import Image

    x0, y0, x1, y1 = box
    if x0 >= 0 and y0 >= 0 and x1 <= image.width and y1 <= image.height:
        return image.crop(box)
    canvas = Image.new("RGB", (x1 - x0, y1 - y0), fill)
    inner = (max(x0, 0), max(y0, 0), min(x1, image.width), min(y1, image.height))
    if inner[0] < inner[2] and inner[1] < inner[3]:
        canvas.paste(image.crop(inner), (inner[0] - x0, inner[1] - y0))
    return canvas


def _working_copy(pil: "Image.Image", encoder: "Encoder", smallest: float) -> tuple["Image.Image", float]:
    """Shrink big images so the smallest window is about the model's input size (never enlarge)."""
    from PIL import Image

    pre = encoder.info.preprocess
    crop = pre.crop if pre is not None else 224
    target = math.ceil(crop / smallest)
    short = min(pil.size)
    if short <= target:
        return pil, 1.0
    factor = target / short
    size = (max(1, round(pil.width * factor)), max(1, round(pil.height * factor)))
    return pil.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0), factor


def _patch_map(encoder: "Encoder", pil: "Image.Image", text_vector: npt.NDArray[np.float32], grid: int) -> tuple[npt.NDArray[np.float32], int]:
    """Cosine of each cell of the encoder's own patch grid with the prompt, resampled to the map grid."""
    from PIL import Image

    if not has_grid(encoder):
        raise ValueError(
            f"model {encoder.name!r} has no spatial patch grid; use --method windows (works with any model)"
        )
    cells = np.asarray(encoder.encode_patch_grid([pil]))[0]  # (ph, pw, dim) for the model's square input
    cells = cells / np.maximum(np.linalg.norm(cells, axis=-1, keepdims=True), 1e-12)
    cos = (cells @ text_vector).astype(np.float32)
    gh, gw = grid_shape(pil.width, pil.height, grid)
    # the model saw the image squashed or centre-cropped to a square; stretch its grid back over the image
    resized = Image.fromarray(cos, mode="F").resize((gw, gh), Image.Resampling.BILINEAR)
    rel = np.asarray(resized, dtype=np.float32)
    return ((rel - rel.mean()) / max(float(rel.std()), 1e-9)).astype(np.float32), int(cos.size)


# -- evaluation on the demo world ---------------------------------------------------------------


@dataclass
class LocalizationReport:
    """How often the map's peak falls in the prompted object's box, and how often the box overlaps it."""

    n: int
    peak_in_box: float  # fraction of scenes whose peak pixel lies inside the target's box
    iou_50: float  # fraction with IoU(returned box, target box) >= 0.5
    mean_iou: float
    model: str
    method: str
    seed: int
    cases: list[dict[str, Any]] = field(default_factory=list)  # per scene: prompt, target, bbox, iou, hit

    def summary(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "peak_in_box": round(self.peak_in_box, 6),
            "iou_50": round(self.iou_50, 6),
            "mean_iou": round(self.mean_iou, 6),
            "model": self.model,
            "method": self.method,
            "seed": self.seed,
        }

    def write_report(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``summary.json`` (:meth:`summary`) and ``cases.jsonl`` (one line per case) into
        ``out_dir`` (created); the overlays are drawn during :func:`evaluate_localization`.

        Returns:
            ``{"summary": path, "cases": path}``.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        summary, cases = out / "summary.json", out / "cases.jsonl"
        summary.write_text(json.dumps(self.summary(), indent=2) + "\n", encoding="utf-8")
        cases.write_text("".join(json.dumps(case) + "\n" for case in self.cases), encoding="utf-8")
        return {"summary": summary, "cases": cases}


def two_object_cases(records: Sequence[dict[str, Any]], root: str | Path, *, n: int, seed: int) -> list[dict[str, Any]]:
    """Pick localisation cases from demo-world metadata records.

    Keeps scenes with exactly two objects whose "colour shape" names differ, and prompts one of
    them (chosen with ``seed``) as ``"{color} {shape}"``.

    Returns:
        Up to ``n`` dicts ``{"image": path, "prompt": str, "target": [x0, y0, x1, y1]}``.
    """
    rng = np.random.default_rng(seed)
    cases = []
    for rec in records:
        case = _case(rec, rng)
        if case is not None:
            case["image"] = str(Path(root) / rec["file"])
            cases.append(case)
            if len(cases) == n:
                break
    return cases


def _case(record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any] | None:
    objects = record.get("objects") or []
    if len(objects) != 2:
        return None
    names = [f"{o['color']} {o['shape']}" for o in objects]
    if names[0] == names[1]:
        return None  # the prompt would not say which one
    pick = int(rng.integers(2))
    return {"prompt": names[pick], "target": [float(v) for v in objects[pick]["bbox"]]}


def generated_cases(n: int, seed: int, *, split: str = "eval") -> list[dict[str, Any]]:
    """``n`` fresh two-object demo-world scenes, in memory, each with one object to find.

    Scenes come from :func:`clipsearch.world.render_scene` (random sizes and
    aspect ratios, the ``eval`` split by default); the same seed gives the same cases.

    Returns:
        Dicts ``{"image": PIL image, "name": "scene #i", "prompt", "target": [x0, y0, x1, y1]}``.
    """
    rng = np.random.default_rng([int(seed), 0x10CA1])  # its own stream: not the train/eval worlds
    pick = np.random.default_rng(seed)
    cases: list[dict[str, Any]] = []
    while len(cases) < n:
        image, record = render_scene(rng, split, claim={"objects": [], "count": 2}, caption=False)
        case = _case(record, pick)
        if case is not None:
            case.update(image=image, name=f"scene #{len(cases)}")
            cases.append(case)
    return cases


def evaluate_localization(
    encoder: "Encoder",
    scenes: str | Path | None = None,
    *,
    n: int = 200,
    seed: int = 0,
    method: str = "auto",
    scales: Sequence[float] | None = None,
    stride: float | None = None,
    grid: int = DEFAULT_GRID,
    box_threshold: float | None = None,
    overhang: float | None = None,
    overlay_dir: str | Path | None = None,
    n_overlays: int = 12,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> LocalizationReport:
    """Localise one object of each two-object demo-world scene and score the result.

    Args:
        encoder: a model that embeds images and text (``demo`` for the issue's quality bars).
        scenes: a demo-world folder holding ``metadata.jsonl`` (or that file itself); ``None``
            renders ``n`` fresh two-object scenes in memory (:func:`generated_cases`).
        n: number of scenes to evaluate.
        seed: picks which object of each scene is prompted (and the scenes, when generated).
        method, scales, stride, grid, box_threshold, overhang: passed to :func:`localize`
            (``method="auto"`` is settled once, by :func:`choose_method`).
        overlay_dir: if given, draw the first ``n_overlays`` cases there as PNGs (map, returned
            box, and the target box dashed).
        n_overlays: how many overlays to draw.
        on_start: called once with the number of cases.
        on_progress: called with 1 after each case.

    Returns:
        A :class:`LocalizationReport`: the fraction of cases whose peak lies inside the prompted
        object's box, the fraction whose box has IoU >= 0.5 with it, and the mean IoU. Its
        ``cases`` hold per scene: name, prompt, target, bbox, peak, score, iou, hit.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1 scene, not {n!r}")
    if method == "auto":
        scales, stride, box_threshold = settings_for_model(encoder, scales, stride, box_threshold, overhang)
    method = choose_method(encoder, method, scales=scales, stride=stride, overhang=overhang)
    if scenes is None:
        cases = generated_cases(n, seed)
    else:
        root = Path(scenes)
        meta = root / "metadata.jsonl" if root.is_dir() else root
        if not meta.is_file():
            raise ValueError(f"{str(root)!r} holds no metadata.jsonl; give a folder made by 'clipsearch demo-world OUT'")
        records = [json.loads(line) for line in meta.read_text(encoding="utf-8").splitlines() if line.strip()]
        cases = two_object_cases(records, meta.parent, n=n, seed=seed)
        if not cases:
            raise ValueError(f"{meta} has no scenes with two distinguishable objects to localise")
        for case in cases:
            case["name"] = case["image"]
    if on_start:
        on_start(len(cases))
    prompts = sorted({c["prompt"] for c in cases})
    by_prompt = dict(zip(prompts, encoder.encode_texts(prompts)))
    for i, case in enumerate(cases):
        loc = localize(
            encoder, case["image"], case["prompt"], method=method, scales=scales, stride=stride, grid=grid,
            box_threshold=box_threshold, overhang=overhang, text_vector=by_prompt[case["prompt"]],
        )
        case.update(bbox=list(loc.bbox), peak=list(loc.peak), score=round(loc.score, 6),
                    iou=round(box_iou(loc.bbox, case["target"]), 6), hit=inside(loc.peak, case["target"]))
        if overlay_dir is not None and i < n_overlays:
            _draw_case(Path(overlay_dir), i, case, loc)
        case.pop("image")  # pixels or path: the name says which; keep the report small
        if on_progress:
            on_progress(1)
    ious = np.array([c["iou"] for c in cases])
    return LocalizationReport(
        n=len(cases),
        peak_in_box=float(np.mean([c["hit"] for c in cases])),
        iou_50=float(np.mean(ious >= 0.5)),
        mean_iou=float(ious.mean()),
        model=encoder.name,
        method=method,
        seed=seed,
        cases=cases,
    )


def _draw_case(out_dir: Path, index: int, case: dict[str, Any], loc: Localization) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    verdict = "hit" if case["hit"] else "miss"
    name = f"{index:03d}-{case['prompt'].replace(' ', '_')}-{verdict}-iou{case['iou']:.2f}.png"
    return loc.overlay_png(load_one(case["image"]), out_dir / name, target=case["target"])
