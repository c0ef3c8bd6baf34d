"""Embed a mixed list of image files and texts, keeping every input in its place.

One bad file never stops the batch: it comes back as an :class:`Embedded` with ``error`` set,
in the same position as its input, so outputs stay aligned with inputs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipsearch.errors import ClipsearchError
from clipsearch.models.base import Encoder


@dataclass
class Embedded:
    """One input's outcome: a unit ``vector`` of shape ``(dim,)``, or an ``error`` reason."""

    input: str  # the path or the text as given
    modality: str  # "image" or "text"
    vector: np.ndarray | None = None
    error: str | None = None

    @property
    def id(self) -> str:
        """Content-derived id: sha256 of the text, or of the path for images (16 hex digits)."""
        return hashlib.sha256(f"{self.modality}:{self.input}".encode()).hexdigest()[:16]


def expand_image_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Folders become their image files (recursive, sorted); files stay, whatever their suffix."""
    from clipsearch.images import iter_image_paths

    return list(iter_image_paths([Path(p) for p in paths]))


def embed_inputs(
    encoder: Encoder,
    *,
    texts: Sequence[str] = (),
    images: Sequence[Path] = (),
    batch_size: int = 32,
    draft: bool = True,
    on_progress: Callable[[int], None] | None = None,
) -> list[Embedded]:
    """Embed ``texts`` then ``images`` with ``encoder``.

    Args:
        encoder: a loaded model; its modalities decide what can be embedded.
        texts: strings; empty ones come back with an error.
        images: image file paths; unreadable ones come back with the loader's reason.
        batch_size: inputs per forward pass.
        draft: let the loader decode large JPEGs at reduced size (see :mod:`clipsearch.images`).
        on_progress: called with the number of inputs just finished.

    Returns:
        One :class:`Embedded` per input, texts first, each in its input order.
    """
    from clipsearch.images import load_image

    text_out = [Embedded(t, "text") for t in texts]
    for r in text_out:
        if not encoder.supports("text"):
            r.error = f"model {encoder.name!r} does not embed text"
        elif not r.input.strip():
            r.error = "empty text"
    todo = [r for r in text_out if r.error is None]
    if on_progress and len(todo) < len(text_out):
        on_progress(len(text_out) - len(todo))
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        for r, v in zip(chunk, encoder.encode_texts([r.input for r in chunk], batch_size=batch_size)):
            r.vector = v
        if on_progress:
            on_progress(len(chunk))

    image_out = [Embedded(str(p), "image") for p in images]
    if images and not encoder.supports("image"):
        for r in image_out:
            r.error = f"model {encoder.name!r} does not embed images"
        return text_out + image_out
    draft_size = encoder.info.preprocess.crop if (draft and encoder.info.preprocess) else None
    for start in range(0, len(images), batch_size):
        idx, pixels = [], []
        for i in range(start, min(start + batch_size, len(images))):
            try:
                pixels.append(load_image(images[i], draft=draft_size))
                idx.append(i)
            except ClipsearchError as exc:
                image_out[i].error = getattr(exc, "reason", str(exc))
        if pixels:
            vecs = encoder.encode_images(pixels, batch_size=batch_size)
            for i, v in zip(idx, vecs):
                image_out[i].vector = v
        if on_progress:
            on_progress(min(start + batch_size, len(images)) - start)
    return text_out + image_out


def save_embeddings(results: Sequence[Embedded], out: Path) -> int:
    """Write the embedded inputs (errors skipped) to ``.npz`` or ``.parquet``; return rows written.

    Columns: ``ids`` (str), ``inputs`` (str), ``modalities`` (str), ``vectors`` float32 ``(n, dim)``.
    """
    ok = [r for r in results if r.vector is not None]
    vectors = np.stack([r.vector for r in ok]).astype(np.float32) if ok else np.zeros((0, 0), np.float32)
    ids = [r.id for r in ok]
    inputs = [r.input for r in ok]
    modalities = [r.modality for r in ok]
    suffix = out.suffix.lower()
    if suffix == ".npz":
        np.savez(out, ids=np.array(ids), inputs=np.array(inputs), modalities=np.array(modalities), vectors=vectors)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        dim = vectors.shape[1] if ok else 0
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        table = pa.table(
            {
                "id": ids,
                "input": inputs,
                "modality": modalities,
                "vector": pa.FixedSizeListArray.from_arrays(flat, dim) if dim else pa.array([], pa.list_(pa.float32())),
            }
        )
        pq.write_table(table, out)
    else:
        raise ValueError(f"--out must end in .npz or .parquet, not {out.suffix or out.name!r}")
    return len(ok)
