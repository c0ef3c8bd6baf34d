"""Training data: image-caption pairs from files, or demo-world scenes rendered on the fly.

Batches are a pure function of ``(seed, step)``: the trainer can resume at any step and get
the same data, and worker processes can render batches in any order.

Sources:

- a folder with ``metadata.jsonl`` (``file`` and ``caption`` per line, as the demo world writes);
- a ``.jsonl`` or ``.csv`` file with an image column (``image``, ``file``, ``path`` or
  ``filepath``) and a caption column (``caption`` or ``text``); relative image paths are read
  from the file's folder;
- :data:`DEMO_WORLD` (``"demo-world"``): fresh scenes for every batch. Captions come from a pool
  of distinct captions drawn once per seed, so a frozen text tower runs once per caption,
  and each pooled caption gets a new scene that makes it true at every use.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from clipsearch.images import IMAGE_FIELDS as IMAGE_COLUMNS
from clipsearch.models.base import Preprocess
from clipsearch import world as dw

DEMO_WORLD = "demo-world"
CAPTION_COLUMNS = ("caption", "text")
TRAIN_RENDER_SIDES = (96, 256)  # on-the-fly training scenes: image sides in pixels (cheap to draw)
JPEG_PROB = 0.5  # share of on-the-fly training scenes that go through a JPEG round trip
TWIN_KINDS = ("binding", "contrast")  # what DemoWorldBatches' twins change
MIN_LIKELIHOOD = 0.01  # soft targets: the weight floor of a true caption the generator would not write


@dataclass
class Pair:
    image: Path  # absolute path of the image file
    caption: str


@dataclass
class Batch:
    pixels: npt.NDArray[np.float32]  # (m, 3, S, S) model input, m >= n
    captions: list[str]  # n captions; caption i < n_pairs belongs to image i, later ones are negatives
    targets: npt.NDArray  # (m, n) bool, or float weights: targets[i, j] > 0 when caption j matches image i
    step: int
    refused: dict[str, str] = field(default_factory=dict)  # image path -> reason, left out of this batch
    n_pairs: int | None = None  # images and captions that are pairs; None: min(m, n)
    records: list[dict[str, Any]] | None = None  # demo world: the scene record of each image
    boxes: list[npt.NDArray[np.float32]] | None = None  # demo world: per image (k, 4) object boxes, fractions of its sides


def read_pairs(source: str | Path) -> list[Pair]:
    """Image-caption pairs from a folder with ``metadata.jsonl``, a ``.jsonl`` or a ``.csv`` file.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: no usable columns, an empty caption, or no pairs at all.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / "metadata.jsonl"
        if not path.is_file():
            raise ValueError(
                f"{source} is a folder without metadata.jsonl; give a folder with one, or a .jsonl/.csv file"
            )
    if not path.exists():
        raise FileNotFoundError(2, "no such file", str(path))
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    elif path.suffix.lower() in (".jsonl", ".json"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raise ValueError(f"pairs file {str(path)!r} must end in .csv or .jsonl (or be a folder with metadata.jsonl)")
    if not rows:
        raise ValueError(f"{path} holds no pairs")
    keys = set(rows[0])
    image_key = next((k for k in IMAGE_COLUMNS if k in keys), None)
    caption_key = next((k for k in CAPTION_COLUMNS if k in keys), None)
    if image_key is None or caption_key is None:
        raise ValueError(
            f"{path} has columns {sorted(keys)}; it needs an image column ({', '.join(IMAGE_COLUMNS)}) "
            f"and a caption column ({', '.join(CAPTION_COLUMNS)})"
        )
    pairs = []
    for i, row in enumerate(rows):
        caption = str(row.get(caption_key) or "").strip()
        if not caption:
            raise ValueError(f"{path} row {i + 1} has an empty caption")
        image = Path(str(row.get(image_key) or "")).expanduser()
        pairs.append(Pair(image if image.is_absolute() else (path.parent / image).resolve(), caption))
    return pairs


def pair_targets(captions: list[str], image_keys: list[str]) -> npt.NDArray[np.bool_]:
    """``(n, n)`` positives for file pairs: the same caption text or the same image file."""
    c = np.asarray(captions, dtype=object)
    k = np.asarray(image_keys, dtype=object)
    return (c[:, None] == c[None, :]) | (k[:, None] == k[None, :])


def object_boxes(record: dict[str, Any], size: tuple[int, int]) -> npt.NDArray[np.float32]:
    """``(k, 4)`` boxes of a drawn scene's objects as fractions of its ``(width, height)``."""
    w, h = size
    boxes = [o["bbox"] for o in record["objects"] if o.get("bbox") is not None]
    return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4) / np.float32([w, h, w, h])).astype(np.float32)


def _pixels(images: list[Any], preprocess: Preprocess) -> npt.NDArray[np.float32]:
    from clipsearch.models.preprocess import to_pixel_values

    return np.stack([to_pixel_values(im, preprocess) for im in images]).astype(np.float32, copy=False)


class PairBatches:
    """Deterministic shuffled batches over file pairs: epoch e uses permutation ``rng([seed, 2, e])``.

    Images that cannot be decoded are left out of their batch and listed in ``Batch.refused``.
    """

    def __init__(self, pairs: list[Pair], preprocess: Preprocess, batch_size: int, seed: int):
        if batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 for a contrastive loss, got {batch_size}")
        self.pairs = pairs
        self.preprocess = preprocess
        self.batch_size = min(batch_size, len(pairs))
        self.seed = seed
        self.steps_per_epoch = -(-len(pairs) // self.batch_size)

    def batch(self, step: int) -> Batch:
        from clipsearch.errors import ImageRefused
        from clipsearch.images import load_image

        epoch, k = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, 2, epoch]).permutation(len(self.pairs))
        chosen = [self.pairs[i] for i in order[k * self.batch_size : (k + 1) * self.batch_size]]
        images, captions, keys, refused = [], [], [], {}
        for p in chosen:
            try:
                images.append(load_image(p.image, draft=self.preprocess.crop))
            except ImageRefused as e:
                refused[str(p.image)] = e.reason
                continue
            captions.append(p.caption)
            keys.append(str(p.image))
        if len(images) < 2:
            raise ValueError(f"batch {step} has fewer than 2 decodable images; refused: {refused}")
        return Batch(_pixels(images, self.preprocess), captions, pair_targets(captions, keys), step, refused)


def _pool_draws(seed: int, size: int, split: str) -> Iterator[tuple[str, dict, dw.Scene, dict]]:
    """Random scenes of ``split`` and a caption of each, until ``size`` distinct captions came.

    Yields ``(caption, claim, scene, state)`` for each first use of a caption text, where
    ``state`` is the random state :func:`~clipsearch.world.caption_scene` started
    from (to caption another scene with the same choices of words).
    """
    if size < 1:
        raise ValueError(f"caption pool size must be at least 1, got {size}")
    rng = np.random.default_rng([seed, 7, dw.SPLIT_STREAMS[split]])
    seen: set[str] = set()
    attempts = 0
    while len(seen) < size:
        attempts += 1
        if attempts > 50 * size:
            raise ValueError(f"could not draw {size} distinct captions (got {len(seen)})")
        scene = dw.sample_scene(rng, split)
        state = rng.bit_generator.state
        text, claim, _ = dw.caption_scene(rng, scene)
        if text not in seen:
            seen.add(text)
            yield text, claim, scene, state


def caption_pool(seed: int, size: int, split: str = "train") -> list[tuple[str, dict]]:
    """``size`` distinct ``(caption, claim)`` pairs from random scenes of ``split`` (no drawing)."""
    return [(text, claim) for text, claim, _, _ in _pool_draws(seed, size, split)]


def binding_negatives(seed: int, size: int, split: str = "train") -> dict[str, tuple[str, dict]]:
    """Hard-negative captions for the captions of :func:`caption_pool` (same arguments).

    The negative of a caption describes its scene's binding twin
    (:func:`~clipsearch.world.binding_twin`: the same layout with the colours bound
    to other shapes) in the same words, so "a red star above a blue circle" gets "a blue star
    above a red circle". Only negatives that are false of the caption's own scene are kept;
    captions that name no colour, for example, get none.

    Returns:
        ``{caption: (negative caption, its claim)}`` for the captions that have one.
    """
    negatives = {}
    for k, (text, _, scene, state) in enumerate(_pool_draws(seed, size, split)):
        rng = np.random.default_rng([seed, 8, dw.SPLIT_STREAMS[split], k])
        record = scene.to_record()
        for _ in range(4):  # a partial caption may name only objects the twin left alone
            twin = dw.binding_twin(rng, scene)
            if twin is None:
                break
            words = np.random.Generator(np.random.PCG64())
            words.bit_generator.state = state  # the same choices of objects, attributes and words
            negative, claim, _ = dw.caption_scene(words, scene, recolor=[o.color for o in twin.objects])
            if negative != text and not dw.claim_holds(claim, record):
                negatives[text] = (negative, claim)
                break
    return negatives


def object_query_texts() -> list[str]:
    """Every single-object query :class:`DemoWorldBatches` may add: the train phrasings of each
    (colour, shape) pair allowed in train scenes (held-out pairs are never queried)."""
    return [
        dw.object_query(c, s, "train", v)
        for s in dw.SHAPES
        for c in dw.COLORS
        if dw.pair_allowed(c, s, "train")
        for v in range(len(dw.TRAIN_QUERY_TEMPLATES))
    ]


class DemoWorldBatches:
    """Fresh demo-world scenes for every batch; batch ``step`` uses ``rng([seed, 1, step])``.

    Args:
        preprocess: the model's preprocessing.
        batch_size: images per batch.
        seed: the data seed.
        pool: ``(caption, claim)`` pairs to draw captions from (:func:`caption_pool`); each use
            gets a new scene that satisfies the claim. ``None``: a fresh scene and caption each time.
        sides: smallest and largest image side of the rendered scenes.
        jpeg_prob: share of scenes that go through a JPEG round trip.
        twins: share of the batch's images that are binding twins
            (:func:`~clipsearch.world.binding_twin`) of captioned scenes: the same
            layout with colours bound to other shapes. They carry no caption of their own and
            are hard negatives for the captions they falsify; a caption still true of a twin
            counts it as a positive.
        twin_kind: "binding" (:func:`~clipsearch.world.binding_twin`) or
            "contrast" (:func:`~clipsearch.world.contrast_twin`: a twin of which
            its scene's caption is false, changed in a position, size or binding it names).
        soft_targets: weigh each (image, caption) positive by how likely the generator is to
            caption that scene so (:func:`~clipsearch.world.claim_likelihood`),
            instead of 1 for every scene the caption is true of. A caption such as "a red
            star" then prefers a lone red star to a red star among two other objects, as the
            generator's own captions do; 0/1 targets teach that every scene it is true of is
            equally likely.
        negatives: hard-negative captions (:func:`binding_negatives`) by pooled caption; each
            caption of the batch that has one adds it as a caption without an image. It is a
            positive of any image of the batch it is true of.
        object_queries: how many single-object queries in train phrasings ("a photo of a red
            star", :func:`object_query_texts`) to add per batch as captions without an image,
            for (colour, shape) pairs its captioned scenes hold. Each is a positive of every
            image holding such an object (0/1, also with ``soft_targets``), so a twin with the
            colours bound to other shapes is a hard negative of a query whose words bind trivially.
    """

    def __init__(
        self,
        preprocess: Preprocess,
        batch_size: int,
        seed: int,
        pool: list[tuple[str, dict]] | None = None,
        sides: tuple[int, int] = TRAIN_RENDER_SIDES,
        jpeg_prob: float = JPEG_PROB,
        twins: float = 0.0,
        twin_kind: str = "binding",
        soft_targets: bool = False,
        negatives: dict[str, tuple[str, dict]] | None = None,
        object_queries: int = 0,
    ):
        if batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 for a contrastive loss, got {batch_size}")
        if not 0.0 <= twins <= 0.5:
            raise ValueError(f"twins is a share of the batch in [0, 0.5], got {twins}")
        if twin_kind not in TWIN_KINDS:
            raise ValueError(f"unknown twin kind {twin_kind!r}; use one of {', '.join(TWIN_KINDS)}")
        if object_queries < 0:
            raise ValueError(f"object_queries must be 0 or more, got {object_queries}")
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.seed = seed
        self.pool = pool
        self.sides = sides
        self.jpeg_prob = jpeg_prob
        self.n_twins = min(int(round(twins * batch_size)), batch_size - 2)
        self.twin_kind = twin_kind
        self.object_queries = object_queries
        self.soft_targets = soft_targets
        self.negatives = negatives or {}
        self.steps_per_epoch = None  # infinite

    def _maybe_jpeg(self, rng: np.random.Generator, img: Any) -> Any:
        from PIL import Image

        if rng.random() < self.jpeg_prob:
            return Image.open(io.BytesIO(dw.encode_image(img, "jpeg"))).convert("RGB")
        return img

    def _object_queries(self, step: int, records: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        """Up to ``object_queries`` single-object queries for (colour, shape) pairs the batch's
        captioned scenes hold, from their own random stream (the images do not change)."""
        if not self.object_queries:
            return []
        rng = np.random.default_rng([self.seed, 9, step])
        present = sorted({(o["color"], o["shape"]) for rec in records for o in rec["objects"]})
        chosen = [present[i] for i in rng.permutation(len(present))[: self.object_queries]]
        n_templates = len(dw.TRAIN_QUERY_TEMPLATES)
        return [
            (dw.object_query(c, s, "train", int(rng.integers(n_templates))), {"objects": [{"color": c, "shape": s}]})
            for c, s in chosen
        ]

    def batch(self, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, 1, step])
        n_captioned = self.batch_size - self.n_twins
        images, captions, records, twin_images, twin_records = [], [], [], [], []
        sizes, twin_sizes = [], []
        for i in range(n_captioned):
            size = dw.sample_canvas_size(rng, *self.sides)
            caption, claim = self.pool[int(rng.integers(len(self.pool)))] if self.pool is not None else (None, None)
            if i >= self.n_twins:  # render_scene draws from rng as batches without twins always did
                img, rec = dw.render_scene(rng, "train", size, claim=claim, caption=self.pool is None)
                images.append(self._maybe_jpeg(rng, img))
                sizes.append(size)
                captions.append(caption or rec["caption"])
                records.append((claim or rec["claim"], rec))
                continue
            scene = dw.sample_scene(rng, "train", claim)
            draw_seed = int(rng.integers(2**63))  # the twin is drawn with the identical layout
            img = dw.draw_scene(np.random.default_rng(draw_seed), scene, *size)
            if caption is None:
                caption, claim, _ = dw.caption_scene(rng, scene)
            images.append(self._maybe_jpeg(rng, img))
            sizes.append(size)
            captions.append(caption)
            records.append((claim, scene.to_record()))
            twin = dw.binding_twin(rng, scene) if self.twin_kind == "binding" else dw.contrast_twin(rng, scene, claim)
            if twin is not None:
                twin_img = dw.draw_scene(np.random.default_rng(draw_seed), twin, *size)
                twin_images.append(self._maybe_jpeg(rng, twin_img))
                twin_sizes.append(size)
                twin_records.append(twin.to_record())
        n_pairs = len(captions)
        claims = [claim for claim, _ in records]
        for caption in captions[:n_pairs]:
            if caption in self.negatives:
                negative, claim = self.negatives[caption]
                captions.append(negative)
                claims.append(claim)
        n_before_queries = len(captions)
        for query, claim in self._object_queries(step, [rec for _, rec in records]):
            captions.append(query)
            claims.append(claim)
        all_records = [rec for _, rec in records] + twin_records
        holds = np.array([[dw.claim_holds(claim, rec) for claim in claims] for rec in all_records], dtype=bool)
        targets = holds
        if self.soft_targets:
            likelihood = np.array(
                [[dw.claim_likelihood(claim, rec) for claim in claims] for rec in all_records], dtype=np.float32
            )
            # A pooled caption's scene is drawn to make the claim true, not to be captioned so:
            # "a blue background" can get a striped blue one, which the generator would have
            # called striped. Such true pairs keep a small weight instead of none.
            likelihood = np.where(holds, np.maximum(likelihood, MIN_LIKELIHOOD), 0.0)
            # Divided by each caption's mean over the batch's images (an estimate of how likely
            # the caption is at all): the loss's column normalisation then gives the posterior
            # over images, and its row normalisation the likelihood ratio over captions.
            # An object query is not a caption the generator writes: every scene holding the
            # object is as good an answer ("contains", as the search it stands for).
            likelihood[:, n_before_queries:] = holds[:, n_before_queries:]
            mean = likelihood.mean(axis=0, keepdims=True)
            targets = np.divide(likelihood, mean, out=np.zeros_like(likelihood), where=mean > 0).astype(np.float32)
        pixels = _pixels(images + twin_images, self.preprocess)
        boxes = [object_boxes(rec, size) for rec, size in zip(all_records, sizes + twin_sizes)]
        return Batch(pixels, captions, targets, step, n_pairs=n_pairs, records=all_records, boxes=boxes)


def demo_eval_set(
    seed: int, n: int, preprocess: Preprocess, sides: tuple[int, int] = (160, 640)
) -> tuple[npt.NDArray[np.float32], list[str]]:
    """``n`` eval-split scenes (held-out pairs, eval phrasings) as model input and captions.

    Images are drawn at full demo-world sizes and half go through JPEG, like a saved world.
    """
    from PIL import Image

    rng = np.random.default_rng([seed, 3])
    images, captions = [], []
    for _ in range(n):
        img, rec = dw.render_scene(rng, "eval", dw.sample_canvas_size(rng, *sides))
        if rng.random() < 0.5:
            img = Image.open(io.BytesIO(dw.encode_image(img, "jpeg"))).convert("RGB")
        images.append(img)
        captions.append(rec["caption"])
    return _pixels(images, preprocess), captions


def pairs_eval_set(pairs: list[Pair], preprocess: Preprocess) -> tuple[npt.NDArray[np.float32], list[str], list[str]]:
    """File pairs as model input, captions and image keys; undecodable images are left out."""
    from clipsearch.errors import ImageRefused
    from clipsearch.images import load_image

    images, captions, keys = [], [], []
    for p in pairs:
        try:
            images.append(load_image(p.image, draft=preprocess.crop))
        except ImageRefused:
            continue
        captions.append(p.caption)
        keys.append(str(p.image))
    if not images:
        raise ValueError("no evaluation image could be decoded")
    return _pixels(images, preprocess), captions, keys


def iterate_batches(source: Any, start: int, stop: int, workers: int = 0) -> Iterator[Batch]:
    """Batches ``start .. stop-1`` of ``source`` in order, built by ``workers`` processes.

    Each worker builds every ``workers``-th batch; the loader hands them back in step order
    and keeps at most two per worker waiting.
    """
    if workers <= 0:
        for step in range(start, stop):
            yield source.batch(step)
        return
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    class _Steps(IterableDataset):
        def __iter__(self) -> Iterator[Batch]:
            info = get_worker_info()
            wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
            for step in range(start + wid, stop, nw):
                yield source.batch(step)

    def _init(_: int) -> None:
        torch.set_num_threads(1)

    loader = DataLoader(
        _Steps(), batch_size=None, num_workers=workers, worker_init_fn=_init, prefetch_factor=2,
        collate_fn=lambda b: b,
    )  # fmt: skip
    yield from loader
