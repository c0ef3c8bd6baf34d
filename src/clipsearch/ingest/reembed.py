"""Re-embedding a whole store with its model as it is now (``clipsearch reindex``).

When a model's weights change under the same name (a folder retrained in place), the store's
vectors no longer match what the model makes, and the store refuses the model until every item
is embedded again. This runs the decode and embed stages over every stored item, from its
source: an image from its file, a text from the text the store keeps. Items keep their ids,
metadata and paths; an image whose file is gone or now holds other bytes cannot be re-embedded
and is removed (counted in ``lost``), since its old vector would mix two models.

Crash-safe like indexing: each batch is one atomic commit, and ``meta.json`` records how far
the run got (``reembedding``), so the store refuses searches while it is half re-embedded and a
rerun continues where the last one stopped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.events import ProgressCallback, Reporter
from clipsearch.ingest.decode import Prepared, check_run_options, prepared_images
from clipsearch.ingest.embed import embed_images, embed_texts
from clipsearch.ingest.summary import Failure
from clipsearch.models.fingerprint import probe
from clipsearch.store import schema as sch

if TYPE_CHECKING:
    from clipsearch.models.base import Encoder
    from clipsearch.store import Store

REEMBEDDING_KEY = "reembedding"
"""The ``meta.json`` key present while a re-embedding run is unfinished: ``{"done_seq": N}``."""


@dataclass
class ReembedSummary:
    """What a re-embedding run did."""

    reembedded: int = 0  # items embedded again with the model as it is now
    lost: list[Failure] = field(default_factory=list)  # images removed: their file is gone or changed
    seconds: float = 0.0

    def to_dict(self) -> dict[str, int]:
        return {"reembedded": self.reembedded, "lost": len(self.lost)}


def reembed_store(
    store: Store,
    encoder: Encoder,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    cells: bool = True,
    on_progress: ProgressCallback | None = None,
) -> ReembedSummary:
    """Embed every item of ``store`` again with ``encoder``; see the module docstring.

    Returns:
        The run's :class:`ReembedSummary`.

    Raises:
        StoreError: another process is writing to the store.
    """
    workers = check_run_options(batch_size, workers)
    t0 = time.perf_counter()
    summary = ReembedSummary()
    report = Reporter(on_progress, "re-embedding")
    try:
        with store.writing():
            done_seq = int((store.meta.get(REEMBEDDING_KEY) or {}).get("done_seq", -1))
            store.update_meta(**{REEMBEDDING_KEY: {"done_seq": done_seq}})
            table = store.to_arrow(where=f"seq > {done_seq}").sort_by("seq")
            rows = [sch.real_row(r) for r in table.to_pylist()]
            report.total(len(rows))
            image_rows = [r for r in rows if r["modality"] == "image"]
            pool = prepared_images(
                [_readable_path(r) for r in image_rows], encoder.info.preprocess if image_rows else None,
                workers=workers, known_ids=frozenset(),
            )  # fmt: skip
            with closing(pool):  # stops the decoding workers, even when a batch fails
                decoded = iter(pool)
                for start in range(0, len(rows), batch_size):
                    batch = rows[start : start + batch_size]
                    _reembed_batch(store, encoder, batch, decoded, summary, cells=cells)
                    store.update_meta(**{REEMBEDDING_KEY: {"done_seq": int(batch[-1]["seq"])}})
                    report.advance(len(batch))
            store.record_probe(probe(encoder))
            store.update_meta(**{REEMBEDDING_KEY: None})
            store.update_index(force=True)
            store.compact()
    finally:
        report.done()
    summary.seconds = time.perf_counter() - t0
    return summary


def _readable_path(row: dict[str, Any]) -> str:
    """The first of an image's paths that is still there (its primary one when none is)."""
    return next((p for p in [row["path"], *(row.get("extra_paths") or [])] if p and os.path.isfile(p)), row["path"])


def _reembed_batch(
    store: Store,
    encoder: Encoder,
    batch: list[dict[str, Any]],
    decoded: Iterator[Prepared],
    summary: ReembedSummary,
    *,
    cells: bool,
) -> None:
    """Embed one batch of stored rows again and commit it (lost images deleted in the same
    commit); its images' decoded pixels are the next ones of ``decoded``, in order."""
    texts = [r for r in batch if r["modality"] == "text"]
    images = [r for r in batch if r["modality"] == "image"]
    keep: list[dict[str, Any]] = []
    vectors: list[np.ndarray] = []
    lost: list[str] = []
    if texts:
        keep += texts
        vectors += list(embed_texts(encoder, [r["text"] for r in texts], batch_size=len(texts)))
    grids: dict[str, np.ndarray] = {}
    if images:
        ok: list[tuple[dict[str, Any], np.ndarray]] = []
        for row in images:
            prep = next(decoded)
            if prep.error is not None or prep.sha256 != row["sha256"]:
                reason = prep.error or "the file now holds other bytes"
                summary.lost.append(Failure(row["path"], f"cannot be re-embedded: {reason}"))
                lost.append(row["id"])
            else:
                ok.append((row, prep.pixels))
        if ok:
            image_vectors, image_grids = embed_images(encoder, np.stack([p for _, p in ok]), cells=cells)
            keep += [r for r, _ in ok]
            vectors += list(image_vectors)
            if image_grids is not None:
                grids = {r["id"]: g for (r, _), g in zip(ok, image_grids)}
    if grids:  # before the items, as indexing does: an item is never stored without its cells
        store.commit_cells(list(grids), np.stack(list(grids.values())))
    for row in keep:
        row.pop("vector", None)
    store.commit_items(keep, np.stack(vectors) if keep else None, delete_ids=lost)
    summary.reembedded += len(keep)
