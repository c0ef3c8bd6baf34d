"""Indexing as stages, composed: scan -> plan -> decode -> embed -> write.

The driver here runs the stages of this package in one process (decoding in worker processes):

- **scan** (:mod:`~clipsearch.ingest.scan`): walk the given files and folders for images
  (:data:`~clipsearch.images.IMAGE_EXTENSIONS`) and text documents (``.txt``/``.md``: one item
  per paragraph; ``.jsonl``/``.csv``: one item per record, with an optional ``image`` column that
  makes the record an image-caption pair, :mod:`~clipsearch.ingest.documents`).
- **plan** (:mod:`~clipsearch.ingest.plan`): a file whose path, size and mtime match what the
  store recorded is skipped unread, and so is one that failed before and has not changed; a
  prune removes only paths that are really gone.
- **decode** (:mod:`~clipsearch.ingest.decode`): worker processes read, hash, decode (with JPEG
  draft) and preprocess images into ``(3, crop, crop)`` arrays while this process embeds the
  previous batch; an image whose bytes the store already holds is not decoded, but attached to
  that item as another path (dedupe by bytes).
- **embed** (:mod:`~clipsearch.ingest.embed`): one forward pass per batch; for a model with a
  grid of cell vectors (the demo model, dual encoders from ``clipsearch train``) the same pass
  gives each image's cells, so search can re-rank without reading images.
- **write** (:mod:`~clipsearch.ingest.write`): each batch goes into the store in one atomic
  commit, with the path changes it implies; cells are committed just before their items and
  the files table (what allows skipping unchanged files) just after, so a crash between two
  commits only costs re-reading. Stored images of the scan that lack cells get them on the next
  run; their vectors are kept.

Everything is idempotent: ids come from content, writes are upserts keyed by id, so running the
same command again after a crash converges to the same store.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack, closing
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.events import ProgressCallback, Reporter
from clipsearch.ingest.decode import Prepared, check_run_options, file_timeout_from_env, prepare_image, prepared_images
from clipsearch.ingest.documents import API_SOURCE, TextItem, read_text_items
from clipsearch.ingest.embed import embed_images, embed_texts, guard_store
from clipsearch.ingest.plan import file_unchanged, plan_images, plan_prune
from clipsearch.ingest.ray_engine import ModelLoader, RaySession, check_engine, embedded_images
from clipsearch.ingest.scan import Document, ImageInput, Scan, scan, stat_input
from clipsearch.ingest.summary import IndexSummary
from clipsearch.ingest.write import StoreWriter, apply_path_removal, image_meta
from clipsearch.models.base import embeds_grid
from clipsearch.store import schema as sch

if TYPE_CHECKING:
    from clipsearch.models.base import Encoder
    from clipsearch.store import Store


def index_paths(
    store: Store,
    encoder: Encoder,
    paths: Sequence[str | os.PathLike[str]],
    *,
    texts: Sequence[str] = (),
    batch_size: int = 32,
    workers: int | None = None,
    prune: bool = False,
    both: bool = False,
    cells: bool = True,
    retry_failed: bool = False,
    on_progress: ProgressCallback | None = None,
    engine: str = "local",
    address: str | None = None,
    load_encoder: Callable[[], Encoder] | None = None,
) -> IndexSummary:
    """Index files and folders (and raw ``texts``) into ``store``; see the module docstring.

    Args:
        store: an open store.
        encoder: its model, which embeds everything; a
            :class:`~clipsearch.models.lazy.LazyEncoder` is loaded only when something must be
            embedded (an unchanged folder never loads the model).
        paths: image files, text documents and folders (walked recursively).
        texts: strings to index as text items (source ``"<api>"``).
        batch_size: inputs per forward pass and per commit.
        workers: decoding processes; default :func:`default_workers`; 0 decodes in this process.
            With ``engine="ray"``: embed actors (default: one per GPU, else half the CPUs).
        prune: remove items whose files no longer exist.
        both: jsonl/csv image-caption pairs also become text items (the caption, showing the image).
        cells: for a model with a grid, keep each new image's grid cells in the store (what
            search re-ranks by without reading images again); False keeps vectors only.
        retry_failed: read again the image files that failed before though they did not change
            (by default such a file is reported with its earlier reason, unread:
            :meth:`Store.failed_files`).
        on_progress: receives the run's :class:`~clipsearch.events.Event` objects (task
            ``"indexing"``: a total per input found, an advance per input done).
        engine: ``"local"`` (this process and its decoding workers) or ``"ray"``: images are
            decoded in Ray tasks and embedded in Ray actors (:mod:`clipsearch.ingest.ray_engine`);
            scan, plan, texts and commits stay here. Both build the same store.
        address: with ``"ray"``, the cluster to join (``ray://HOST:10001``, ``auto``); default:
            a Ray already started in this process, else a local one for the run.
        load_encoder: with ``"ray"``, what each embed actor calls to get the encoder (it must
            pickle); default: the store's model by name (:class:`~clipsearch.ingest.ray_engine.ModelLoader`).

    Returns:
        The run's :class:`IndexSummary`.

    Raises:
        StoreError: another process is writing to the store.
    """
    check_engine(engine, address)
    actors = workers
    workers = check_run_options(batch_size, workers)
    file_timeout = file_timeout_from_env()  # a bad setting is refused before anything is read
    t0 = time.perf_counter()
    summary = IndexSummary()
    report = Reporter(on_progress, "indexing")
    try:
        with store.writing(), ExitStack() as stack:
            run = _Run(
                store, encoder, summary, batch_size=batch_size, workers=workers, both=both, cells=cells,
                report=report, retry_failed=retry_failed, file_timeout=file_timeout,
            )  # fmt: skip
            if engine == "ray":
                run.ray = RaySession(address, actors)
                stack.callback(run.ray.close)
                run.load_encoder = load_encoder or ModelLoader(store.model_name, store.meta.get("weights"))
            run.execute(paths, texts, prune=prune)
            summary.index = store.update_index()
            store.compact()
            if summary.added or summary.updated or summary.removed:  # keep scores readable as the store grows
                from clipsearch.calibration import refresh_calibration

                refresh_calibration(store, encoder)
    finally:
        report.done()
    summary.seconds = time.perf_counter() - t0
    return summary


class _Run:
    """One indexing run: the stages composed over one store, with what they share."""

    def __init__(
        self,
        store: Store,
        encoder: Encoder,
        summary: IndexSummary,
        *,
        batch_size: int,
        workers: int,
        both: bool,
        cells: bool,
        report: Reporter,
        retry_failed: bool = False,
        file_timeout: float | None = None,
    ):
        self.file_timeout = file_timeout
        self.store = store
        self.encoder = encoder
        self.cells = cells
        self.summary = summary
        self.batch_size = batch_size
        self.workers = workers
        self.both = both
        self.report = report
        self.w = StoreWriter(store, summary)
        self.named_by_table: dict[str, set[str]] = {}  # table read in this run -> the image paths it names
        self.failed_before = store.failed_files()  # path -> {size, mtime, reason, max_pixels}
        self.max_pixels = _pixel_cap()  # a failure under another cap is read again (it may pass now)
        self.retry_failed = retry_failed
        self.failed_now: dict[str, dict[str, Any]] = {}  # image files that failed in this run, or as before
        self.ray: RaySession | None = None  # set for engine "ray": decode and embed run there
        self.load_encoder: Callable[[], Encoder] | None = None
        self.guarded = False  # the int8 guard has looked at this run's first batch (ONNX encoders)

    def execute(self, paths: Sequence[str | os.PathLike[str]], texts: Sequence[str], *, prune: bool) -> None:
        found = scan(paths)
        for path, reason in found.failures:
            self.summary.fail(path, reason)
        self.report.total(len(found.images))
        docs_items = self._read_docs(found)
        self._index_images(found.images, docs_items)
        self._drop_unnamed_captions()
        if texts:
            self._index_raw_texts(texts)
        self.w.flush()
        self._add_missing_cells(found.images)
        if prune:
            self._prune(found.roots)
            self.w.flush()
        self._record_failures(found)
        self._record_roots(found, paths)

    def _record_roots(self, found: Scan, paths: Sequence[str | os.PathLike[str]]) -> None:
        """Remember the folders indexed (a file given alone: its folder) in ``meta.json``, so a
        path can be shown relative to the folder it came from (the server does, for clients on
        other machines)."""
        given = [os.path.abspath(os.path.expanduser(os.fspath(p))) for p in paths]
        roots = set(found.roots) | {os.path.dirname(p) for p in given if p not in found.roots and os.path.isfile(p)}
        known = set(self.store.meta.get("roots") or [])
        if not roots <= known:
            self.store.update_meta(roots=sorted(known | roots))

    def _record_failures(self, found: Scan) -> None:
        """Write down the image files that failed, for the next run (:meth:`Store.failed_files`):
        this run's failures, and earlier ones it did not scan whose files still exist."""
        kept = {p: r for p, r in self.failed_before.items() if p not in found.images and os.path.exists(p)}
        now = kept | self.failed_now
        if now != self.failed_before:
            self.store.record_failed_files(now)

    # -- text documents ------------------------------------------------------------------------
    def _read_docs(self, found: Scan) -> list[tuple[Document, list[TextItem] | None]]:
        """Parse changed documents (and every table, for the images it names): each document
        with its items, or None when it is unchanged."""
        out: list[tuple[Document, list[TextItem] | None]] = []
        for doc in found.docs:
            path, kind = doc.path, doc.kind
            unchanged = file_unchanged(self.w.files, path, doc.size, doc.mtime, self._doc_kind(kind))
            if unchanged and kind == "text":
                out.append((doc, None))
                continue
            errors: list[tuple[str, str]] = []
            try:
                items, image_refs = read_text_items(
                    path,
                    kind,
                    self.encoder if kind == "text" else None,  # only paragraphs need its context length
                    both=self.both,
                    on_error=lambda w, r, errors=errors: errors.append((w, r)),
                )
            except (OSError, ValueError, UnicodeError) as exc:
                self.summary.fail(path, f"cannot read: {exc}")
                continue
            for where, reason in errors:
                self.summary.fail(where, reason)
            if not items and not image_refs and not errors:
                self.summary.fail(path, "the file holds no text")
            if kind == "table":
                self.named_by_table[path] = {img_path for img_path, _ in image_refs}
            for img_path, meta in image_refs:
                self._add_image_ref(found, img_path, meta, table_changed=not unchanged)
            out.append((doc, None if unchanged else items))
        return out

    def _drop_unnamed_captions(self) -> None:
        """A table read in this run takes back what it gave a stored image it no longer names
        (a row deleted, or the file name in it changed)."""
        if not self.named_by_table:
            return
        w = self.w
        w.flush()  # what this run wrote first: the images' sources and paths as they are now
        named = {w.path_to_id[p] for paths in self.named_by_table.values() for p in paths if p in w.path_to_id}
        dropped = w.drop_captions(lambda table: table in self.named_by_table, keep=named)
        if dropped:
            self.summary.captions_dropped += dropped
            w.flush()

    def _doc_kind(self, kind: str) -> str:
        """The files-table kind of a document: a table read with ``both`` differs from one without."""
        return "table+both" if kind == "table" and self.both else kind

    def _add_image_ref(self, found: Scan, path: str, meta: dict[str, Any], *, table_changed: bool) -> None:
        inp = found.images.get(path)
        if inp is None:
            st, reason = stat_input(path)
            if st is None:
                self.summary.fail(path, f"named by {meta['source']}{meta['record']}: {reason.removeprefix('cannot read file: ')}")
                return
            inp = found.images[path] = ImageInput(path, st.st_size, st.st_mtime)
            self.report.total(1)
        inp.meta = meta
        inp.meta_changed = table_changed

    def _index_docs(self, docs: list[tuple[Document, list[TextItem] | None]]) -> None:
        for doc, items in docs:
            path = doc.path
            existing = set(self.w.source_ids.get(path, set()))
            if items is None:
                self.summary.unchanged += len(existing)
                continue
            rec = {"path": path, "kind": self._doc_kind(doc.kind), "size": doc.size, "mtime": doc.mtime, "sha256": None}
            self._index_text_items(items, existing, mtime=doc.mtime)
            stale = existing - {it.id for it in items}
            self.w.delete_ids(stale)
            self.summary.removed += len(stale)
            self.w.file_recs[path] = rec
            self.w.flush()

    def _index_text_items(self, items: list[TextItem], existing: set[str], *, mtime: float | None) -> None:
        self.report.total(len(items))
        todo: dict[str, TextItem] = {}
        for it in items:
            if it.id in existing or it.id in self.w.ids:
                self._update_text_meta(it)  # counted as unchanged or updated at the commit
                self.report.advance()
            elif it.id not in todo:
                todo[it.id] = it
            else:
                self.report.advance()  # the same paragraph twice at the same place: one item
        pending = list(todo.values())
        if pending and not self.encoder.supports("text"):
            for it in pending:
                self.summary.fail(f"{it.source}{it.record}", f"model {self.encoder.name!r} embeds images only")
            return
        reuse = self.store.text_vectors_by_sha({sch.text_sha256(it.text) for it in pending})  # same text: one embedding
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start : start + self.batch_size]
            rows = [self._text_row(it, mtime) for it in chunk]
            vecs = np.zeros((len(chunk), self.store.dim), np.float32)
            missing = [i for i, r in enumerate(rows) if r["sha256"] not in reuse]
            for i, r in enumerate(rows):
                if r["sha256"] in reuse:
                    vecs[i] = reuse[r["sha256"]]
            if missing:
                vecs[missing] = embed_texts(self.encoder, [chunk[i].text for i in missing], batch_size=self.batch_size)
                self.summary.embedded += len(missing)
            for r, v in zip(rows, vecs):
                reuse.setdefault(r["sha256"], v)
            self.w.add_embedded(rows, vecs)
            self.summary.added += len(rows)
            self.w.flush()
            self.report.advance(len(rows))

    def _update_text_meta(self, it: TextItem) -> None:
        if it.source == API_SOURCE:
            self.summary.unchanged += 1
            return
        self.w.update_meta(
            it.id,
            {
                "caption": it.caption,
                "label": it.label,
                "extra": json.dumps(it.extra, ensure_ascii=False, sort_keys=True) if it.extra else None,
                "char_start": it.char_start,
                "char_end": it.char_end,
                "path": it.path,
            },
            count=True,
        )

    def _text_row(self, it: TextItem, mtime: float | None) -> dict[str, Any]:
        return {
            "id": it.id,
            "modality": "text",
            "path": it.path,
            "extra_paths": [],
            "source": it.source,
            "text": it.text,
            "sha256": sch.text_sha256(it.text),
            "size": len(it.text),
            "mtime": mtime,
            "caption": it.caption,
            "label": it.label,
            "record": it.record or None,
            "char_start": it.char_start,
            "char_end": it.char_end,
            "extra": json.dumps(it.extra, ensure_ascii=False, sort_keys=True) if it.extra else None,
            "added": time.time(),
        }

    def _index_raw_texts(self, texts: Sequence[str]) -> None:
        items = []
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                self.summary.fail(f"text #{i}", "empty text")
                continue
            items.append(TextItem(t, API_SOURCE, None))
        self._index_text_items(items, set(self.w.source_ids.get(API_SOURCE, set())), mtime=None)

    # -- images --------------------------------------------------------------------------------
    def _index_images(self, images: dict[str, ImageInput], docs: list) -> None:
        w = self.w
        plan = plan_images(
            images.values(), w.files, w.path_to_id, self.failed_before,
            retry_failed=self.retry_failed, max_pixels=self.max_pixels,
        )  # fmt: skip
        for inp in plan.unchanged:
            if inp.meta and inp.meta_changed:
                w.update_meta(w.path_to_id[inp.path], image_meta(inp.meta), count=True)
            else:
                self.summary.unchanged += 1
        for inp, rec in plan.failed_before:  # reported with the earlier reason, unread
            self.summary.fail(inp.path, str(rec.get("reason") or "failed before"))
            self.summary.failed_unread += 1
            self.failed_now[inp.path] = rec
        self.report.advance(len(plan.unchanged) + len(plan.failed_before))
        todo = plan.todo
        can_embed = bool(todo) and self.encoder.supports("image")
        if todo and not can_embed:
            for inp in todo:
                self.summary.fail(inp.path, f"model {self.encoder.name!r} embeds text only")
                self.report.advance()
            todo = []
        preprocess = self.encoder.info.preprocess if todo else None
        if self.ray is not None:
            self._index_images_on_ray(todo, preprocess, docs)
            return
        stream = prepared_images(
            [i.path for i in todo], preprocess, workers=self.workers, known_ids=w.image_ids,
            file_timeout=self.file_timeout,
        )  # fmt: skip
        batch: list[tuple[dict[str, Any], np.ndarray]] = []
        with closing(stream):  # stops the decoding workers, even when a batch fails
            # Text documents are embedded while the workers decode the first images.
            self._index_docs(docs)
            for inp, prep in zip(todo, stream):
                if (
                    prep.known
                    and prep.sha256
                    and sch.image_id(prep.sha256) not in w.ids
                    and sch.image_id(prep.sha256) not in w.queued
                ):
                    prep = prepare_image(inp.path, preprocess, known_ids=frozenset())  # removed during this run
                row = self._place_image(inp, prep)
                if row is not None:
                    batch.append((row, prep.pixels))
                if len(batch) >= self.batch_size:
                    self._embed_batch(batch)
                    batch = []
                elif w.pending() >= 4 * self.batch_size:
                    w.flush()
            if batch:
                self._embed_batch(batch)

    def _index_images_on_ray(self, todo: list[ImageInput], preprocess: Any, docs: list) -> None:
        """:meth:`_index_images` with decode and embed on Ray: the same placement and commits,
        in the same order, with the vectors the actors computed."""
        w = self.w
        assert self.ray is not None and self.load_encoder is not None
        if todo:
            plan = self.ray.connect()
            self.report.message(f"Ray: {len(todo)} images to read, {plan['size']} embed actors", **self.ray.resources())
        stream = embedded_images(
            [i.path for i in todo], preprocess, known_ids=w.image_ids, cells=self.cells,
            load_encoder=self.load_encoder, batch_size=self.batch_size, plan=self.ray.plan,
            encoder=self.encoder, file_timeout=self.file_timeout or file_timeout_from_env(),
            on_read_here=lambda n: self.report.message(f"Ray: a decode task failed; reading its {n} files here"),
        )  # fmt: skip
        self._index_docs(docs)  # texts first, here, as the local path commits them
        rows: list[dict[str, Any]] = []
        vecs: list[np.ndarray] = []
        grids: list[np.ndarray | None] = []
        # Larger commits than the local path's: each costs tens of ms whatever its size
        # (bench_scale.py: ~400 rows/s at 32 a commit, ~15,000 at 512), and one driver commits
        # what every actor of the cluster embeds.
        commit_rows = max(self.batch_size, RAY_COMMIT_ROWS)
        for got in stream:
            inp, prep, vec, grid = todo[got.index], got.prepared, got.vector, got.grid
            iid = sch.image_id(prep.sha256) if prep.sha256 else None
            if prep.known and iid not in w.ids and iid not in w.queued:  # removed during this run
                prep = prepare_image(inp.path, preprocess, known_ids=frozenset())
                vec, grid = None, None
                if prep.pixels is not None:
                    v, g = embed_images(self.encoder, prep.pixels[None], cells=self.cells)
                    vec, grid = v[0], None if g is None else g[0]
            row = self._place_image(inp, prep)
            if row is not None:
                rows.append(row)
                vecs.append(vec)
                grids.append(grid)
                self.report.advance()  # embedded: done but for the commit
            if len(rows) >= commit_rows:
                self._add_batch(rows, vecs, grids)
                rows, vecs, grids = [], [], []
            elif w.pending() >= 4 * commit_rows:
                w.flush()
        if rows:
            self._add_batch(rows, vecs, grids)

    def _add_batch(self, rows: list[dict[str, Any]], vecs: list[np.ndarray], grids: list[np.ndarray | None]) -> None:
        """Commit rows embedded elsewhere, as :meth:`_embed_batch` commits rows embedded here."""
        cells = np.stack(grids) if grids and all(g is not None for g in grids) else None
        self.summary.embedded += len(rows)
        self.w.add_embedded(rows, np.stack(vecs), cells)
        self.w.flush()

    def _place_image(self, inp: ImageInput, prep: Prepared) -> dict[str, Any] | None:
        """Record one decoded image: a failure, a path of stored or queued bytes, or a new row
        to embed (returned)."""
        w = self.w
        was = w.path_to_id.get(inp.path)
        rec = {"path": inp.path, "kind": "image", "size": inp.size, "mtime": inp.mtime, "sha256": prep.sha256}
        if prep.error is not None:
            self.summary.fail(inp.path, prep.error)
            failure = {"size": inp.size, "mtime": inp.mtime, "reason": prep.error, "max_pixels": self.max_pixels}
            self.failed_now[inp.path] = failure
            if w.detach_path(inp.path):  # its old content is gone
                self.summary.removed += 1
            w.file_deletes.add(inp.path)
            self.report.advance()
            return None
        assert prep.sha256 is not None
        iid = sch.image_id(prep.sha256)
        if was == iid:  # touched, same bytes
            w.file_recs[inp.path] = rec
            if inp.meta and inp.meta_changed:
                w.update_meta(iid, image_meta(inp.meta), count=True)
            else:
                self.summary.unchanged += 1
            self.report.advance()
            return None
        if was is not None:
            w.detach_path(inp.path)
            self.summary.updated += 1
        else:
            self.summary.added += 1
        if iid in w.ids or iid in w.queued:
            w.attach_path(iid, inp.path, rec)
            if inp.meta and iid in w.ids:
                w.update_meta(iid, image_meta(inp.meta), count=False)
            elif inp.meta:
                w.queued[iid].update(image_meta(inp.meta))
            self.report.advance()
            return None
        row = {
            "id": iid,
            "modality": "image",
            "path": inp.path,
            "extra_paths": [],
            "source": (inp.meta or {}).get("source") or inp.path,
            "text": None,
            "sha256": prep.sha256,
            "size": inp.size,
            "mtime": inp.mtime,
            "width": prep.width,
            "height": prep.height,
            "added": time.time(),
            **(image_meta(inp.meta) if inp.meta else {}),
        }
        w.queue_row(row, rec)
        return row

    def _embed_batch(self, batch: list[tuple[dict[str, Any], np.ndarray]]) -> None:
        rows = [r for r, _ in batch]
        pixels = np.stack([p for _, p in batch])
        if not self.guarded:  # ONNX: int8 only if its vectors stay with fp32's on these images
            self.guarded = True
            guard_store(self.store, self.encoder, pixels)
        vecs, grids = embed_images(self.encoder, pixels, cells=self.cells)  # cells kept, so search can re-rank
        self.summary.embedded += len(rows)
        self.w.add_embedded(rows, vecs, grids)
        self.w.flush()
        self.report.advance(len(rows))

    def _add_missing_cells(self, images: dict[str, ImageInput]) -> None:
        """Give grid cells to the stored images of this scan that have none (indexed with
        ``cells=False``, or before stores kept cells); their vectors stay as stored.

        Searches re-rank by stored cells, and an image without them is read again at every
        search that re-ranks it: indexing the folder again is how a store catches up.
        """
        if not self.cells or self.store.meta.get("grid") is False:  # known to have no grid: no model load
            return
        w = self.w
        by_id: dict[str, str] = {}  # image id -> a path of this scan to read it from
        for inp in images.values():
            iid = w.path_to_id.get(inp.path)
            if iid is not None and iid not in by_id and file_unchanged(w.files, inp.path, inp.size, inp.mtime):
                by_id[iid] = inp.path
        missing = sorted(set(by_id) - self.store.cell_ids()) if by_id else []
        if not missing:
            return
        has_grid = embeds_grid(self.encoder)
        if "grid" not in self.store.meta:  # a store from before the header said: say it now
            self.store.record_grid(has_grid)
        if not has_grid:
            return
        self.report.total(len(missing))
        preprocess = self.encoder.info.preprocess
        stream = prepared_images(
            [by_id[i] for i in missing], preprocess, workers=self.workers, known_ids=frozenset(),
            file_timeout=self.file_timeout,
        )  # fmt: skip
        ids: list[str] = []
        pixels: list[np.ndarray] = []
        with closing(stream):
            for iid, prep in zip(missing, stream):
                self.report.advance()
                if prep.error is None and prep.sha256 is not None and sch.image_id(prep.sha256) == iid:
                    ids.append(iid)  # else unreadable now, or other bytes under the same mtime: left as is
                    pixels.append(prep.pixels)
                if len(ids) >= self.batch_size:
                    self._commit_grids(ids, pixels)
                    ids, pixels = [], []
            if ids:
                self._commit_grids(ids, pixels)

    def _commit_grids(self, ids: list[str], pixels: list[np.ndarray]) -> None:
        _, grids = embed_images(self.encoder, np.stack(pixels), cells=True)
        self.store.commit_cells(ids, grids)
        self.summary.cells_added += len(ids)

    # -- pruning -------------------------------------------------------------------------------
    def _prune(self, roots: Sequence[str]) -> None:
        """Remove stored paths under ``roots`` whose files are gone (see :func:`plan_prune`); what
        seems only out of reach is counted in ``summary.prune_kept``, by what to remove on
        purpose with ``clipsearch remove``."""
        w = self.w
        candidates = set(w.files) | set(w.path_to_id) | {s for s in w.source_ids if s and s != API_SOURCE}
        gone, kept = plan_prune(candidates, roots)
        for held, n in kept.items():
            self.summary.prune_kept[held] = self.summary.prune_kept.get(held, 0) + n
        self.summary.removed += apply_path_removal(w, gone, prefix=False)


RAY_COMMIT_ROWS = 1024
"""New rows per commit on the Ray engine (at least ``batch_size``)."""


def _pixel_cap() -> int | None | str:
    """The decoders' pixel cap for this run (``$CLIPSEARCH_MAX_PIXELS``); "invalid" when the
    variable cannot be read (the decode stage then says why)."""
    from clipsearch.images import max_pixels_from_env

    try:
        return max_pixels_from_env()
    except ValueError:
        return "invalid"


