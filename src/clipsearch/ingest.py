"""Indexing: scan -> decode -> embed -> write, incrementally and crash-safely.

- **scan**: walk the given files and folders for images (:data:`~clipsearch.images.IMAGE_EXTENSIONS`)
  and text documents (``.txt``/``.md``: one item per paragraph; ``.jsonl``/``.csv``: one item per
  record, with an optional ``image`` column that makes the record an image-caption pair).
- **plan**: a file whose path, size and mtime match what the store recorded is skipped unread;
  any other file is hashed, and an image whose bytes the store already holds is attached to that
  item as another path instead of being embedded again.
- **decode**: worker processes read, hash, decode (with JPEG draft) and preprocess images into
  ``(3, crop, crop)`` arrays, while the main process embeds the previous batch.
- **embed + write**: each batch of vectors goes into the store in one atomic commit, together
  with the path changes it implies; the files table (what allows skipping unchanged files) is
  written after the items, so a crash between the two only costs re-hashing. For a model with a
  grid of cell vectors (the demo model, dual encoders from ``clipsearch train``) the same forward
  pass gives each image's cells, committed just before the items (see
  :meth:`~clipsearch.store.Store.commit_cells`), so search can re-rank without reading images.
  Stored images of the scan that lack cells (indexed with ``cells=False``, or before stores
  kept cells) get them on the next run; their vectors are kept.

Everything is idempotent: ids come from content, writes are upserts keyed by id, so running the
same command again after a crash converges to the same store.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.models.base import embeds_grid, encode_pixels
from clipsearch.store import schema as sch

if TYPE_CHECKING:
    from clipsearch.models.base import Encoder, Preprocess
    from clipsearch.store.lance_store import Store

TEXT_DOC_SUFFIXES = (".txt", ".md", ".text")
TABLE_SUFFIXES = (".jsonl", ".csv")
API_SOURCE = "<api>"
"""The ``source`` of texts given directly to :meth:`Store.add` (never pruned)."""

MAX_FILE_BYTES = 512 * 1024 * 1024
"""Image files larger than this are refused before being read into memory."""


TEXT_MODEL = "minilm"
"""The offline default for a new store built from text alone (a real sentence encoder)."""


def is_text_only(paths: Iterable[str | os.PathLike[str]]) -> bool:
    """True when ``paths`` hold text documents and no image at all (folders are walked).

    A ``.jsonl``/``.csv`` table counts as text unless its first record names an ``image``.
    """
    kinds = []
    for top in map(str, paths):
        if os.path.isdir(top):
            kinds += list(_walk(top))
        else:
            kinds.append((top, _kind_of(top) or "image"))  # a named file of unknown type may be an image
    for path, kind in kinds:
        if kind == "image" or (kind == "table" and _table_names_images(path)):
            return False
    return bool(kinds)


def _table_names_images(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline()
    except OSError:
        return False
    if path.lower().endswith(".csv"):
        return "image" in [c.strip().strip('"').lower() for c in first.split(",")]
    try:
        record = json.loads(first)
    except ValueError:
        return False
    return isinstance(record, dict) and "image" in record


def default_workers() -> int:
    """Decoding processes: ``min(2, cpu count)``."""
    return max(1, min(2, os.cpu_count() or 1))


# -- results -----------------------------------------------------------------------------------


@dataclass
class Failure:
    """An input that could not be indexed, and why (one line of ``--report``)."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass
class IndexSummary:
    """What one indexing run did.

    Counts are of inputs: an image file, or a text item (paragraph or record).

    - ``added``: new inputs now in the store (embedded, or a new path for bytes already there);
    - ``updated``: inputs already indexed whose content or metadata changed;
    - ``unchanged``: inputs already indexed as they are;
    - ``failed``: inputs that could not be indexed (see ``failures``);
    - ``removed``: items or paths taken out (pruned, or replaced by a changed file's new content).
    """

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    removed: int = 0
    embedded: int = 0  # vectors the model computed in this run
    cells_added: int = 0  # images already stored that were given the grid cells they lacked
    failed_unread: int = 0  # of the failed: unchanged since they failed before, so not read again
    captions_dropped: int = 0  # stored images whose table no longer names them (or is gone): caption cleared
    prune_kept: dict[str, int] = field(default_factory=dict)  # what seems out of reach (empty or unlistable folder, dangling entry) -> vanished paths under it not pruned
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    index: str = "exact"  # what happened to the ANN index (see Store.update_index)

    def to_dict(self) -> dict[str, int]:
        """The ``--json`` summary: ``{"added", "updated", "unchanged", "failed", "removed"}``."""
        return {k: getattr(self, k) for k in ("added", "updated", "unchanged", "failed", "removed")}

    def fail(self, path: str, reason: str) -> None:
        self.failed += 1
        self.failures.append(Failure(str(path), reason))


# -- scanning ----------------------------------------------------------------------------------


@dataclass
class ImageInput:
    """An image file to index, with metadata when a jsonl/csv record names it."""

    path: str  # absolute
    size: int
    mtime: float
    meta: dict[str, Any] | None = None  # caption, label, record, extra, source (from a table)
    meta_changed: bool = False  # the table naming it changed: rewrite the metadata


@dataclass
class _Scan:
    images: dict[str, ImageInput] = field(default_factory=dict)
    docs: list[tuple[str, str, os.stat_result]] = field(default_factory=list)  # (path, kind, stat)
    roots: list[str] = field(default_factory=list)


def _kind_of(name: str) -> str | None:
    from clipsearch.images import IMAGE_EXTENSIONS

    suffix = os.path.splitext(name)[1].lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in TEXT_DOC_SUFFIXES:
        return "text"
    if suffix in TABLE_SUFFIXES:
        return "table"
    return None


def _walk(top: str) -> Iterator[tuple[str, str]]:
    """``(path, kind)`` of indexable files under ``top``: sorted, hidden names skipped, no symlinked folders."""
    for root, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            kind = _kind_of(name)
            if kind is not None:
                yield os.path.join(root, name), kind


def scan(paths: Iterable[str | os.PathLike[str]], summary: IndexSummary) -> _Scan:
    """Find every input under ``paths``; missing ones are recorded as failures."""
    out = _Scan()
    seen_docs: set[str] = set()

    def add(path: str, kind: str) -> None:
        try:
            st = os.stat(path)
        except OSError as exc:
            summary.fail(path, f"cannot read file: {(exc.strerror or 'I/O error').lower()}")
            return
        if kind == "image":
            if path not in out.images:
                out.images[path] = ImageInput(path, st.st_size, st.st_mtime)
        elif path not in seen_docs:
            seen_docs.add(path)
            out.docs.append((path, kind, st))

    for given in paths:
        path = os.path.abspath(os.path.expanduser(os.fspath(given)))
        if os.path.isdir(path):
            out.roots.append(path)
            for p, kind in _walk(path):
                add(p, kind)
        elif os.path.exists(path):
            add(path, _kind_of(path) or "image")  # an unknown suffix named explicitly: let the decoder judge
        else:
            summary.fail(path, "no such file or folder")
    return out


# -- decoding (worker processes) ---------------------------------------------------------------


@dataclass
class Prepared:
    """One image after the decode stage: its hash, and pixels unless its bytes are already stored."""

    path: str
    sha256: str | None = None
    pixels: np.ndarray | None = None  # (3, crop, crop) float32
    width: int | None = None
    height: int | None = None
    known: bool = False  # the store already holds these bytes: nothing to decode
    error: str | None = None


MP_CONTEXT_ENV = "CLIPSEARCH_MP_CONTEXT"
"""Overrides how decoding workers start: "spawn" (the default), "forkserver" or "fork"."""

_KNOWN_IDS: frozenset[str] = frozenset()


def _mp_context():
    """Spawn by default: the parent holds torch's thread pool and LanceDB's async runtime, which
    are not fork-safe (lance warns on every fork). See :func:`_main_hidden` for why scripts
    without a ``__main__`` guard still work."""
    import multiprocessing as mp

    method = os.environ.get(MP_CONTEXT_ENV, "").strip() or "spawn"
    if method not in mp.get_all_start_methods():
        raise ValueError(
            f"{MP_CONTEXT_ENV}={method!r} is not available here; use one of {', '.join(mp.get_all_start_methods())}"
        )
    return mp.get_context(method)


@contextmanager
def _main_hidden() -> Iterator[None]:
    """Start spawned workers without re-running the caller's script.

    A spawned child normally re-imports the parent's ``__main__`` (to find functions defined
    there), which re-runs any script that lacks an ``if __name__ == "__main__"`` guard, and
    that script then starts indexing again inside the worker. The workers only run functions
    of this module, so ``__main__`` is hidden from multiprocessing while they start.
    """
    import sys

    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _init_worker(known_ids: frozenset[str]) -> None:
    global _KNOWN_IDS
    _KNOWN_IDS = known_ids
    _die_with_parent()
    _quiet_decoders()


def _quiet_decoders() -> None:
    """Silence decoder chatter in a worker: Pillow's UserWarnings and libtiff/libjpeg messages
    written straight to file descriptor 2. Every bad file's reason is already returned to the
    parent and reported, so this output only scrolls the progress bar away."""
    import warnings

    warnings.simplefilter("ignore")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def _die_with_parent() -> None:
    """Linux: have the kernel kill this worker when the indexing process dies (even by kill -9),
    instead of leaving it blocked forever on a queue whose writer it inherited."""
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)
    except (OSError, AttributeError):
        pass


def prepare_image(path: str, preprocess: Preprocess | None, *, known_ids: frozenset[str] | None = None) -> Prepared:
    """Read, hash, decode and preprocess one image file; never raises for a bad file.

    Args:
        path: the file.
        preprocess: the model's settings; None to hash only.
        known_ids: image ids already stored (default: the worker's set); their bytes are not decoded.
    """
    from clipsearch.errors import ImageRefused
    from clipsearch.images import load_image, probe_image
    from clipsearch.models.preprocess import to_pixel_values

    known = _KNOWN_IDS if known_ids is None else known_ids
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            return Prepared(
                path, error=f"file too large ({size / 2**20:,.0f} MiB; the limit is {MAX_FILE_BYTES // 2**20} MiB)"
            )
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return Prepared(path, error="file not found")  # the wording of clipsearch.images
    except PermissionError:
        return Prepared(path, error="permission denied")
    except IsADirectoryError:
        return Prepared(path, error="is a folder, not an image file")
    except OSError as exc:
        return Prepared(path, error=f"cannot read file: {(exc.strerror or 'I/O error').lower()}")
    sha = hashlib.sha256(data).hexdigest()
    if sch.image_id(sha) in known or preprocess is None:
        return Prepared(path, sha, known=sch.image_id(sha) in known)
    try:
        img = load_image(data, draft=preprocess.crop)  # first: it applies the pixel cap
        info = probe_image(data)  # the size as displayed, before draft decoding shrank it
        pixels = to_pixel_values(img, preprocess)
    except ImageRefused as exc:
        return Prepared(path, sha, error=exc.reason)
    except MemoryError:
        return Prepared(path, sha, error="not enough memory to decode the image")
    except Exception as exc:  # noqa: BLE001 - one bad file never stops the run
        return Prepared(path, sha, error=f"{type(exc).__name__}: {str(exc).strip()[:120]}")
    return Prepared(path, sha, pixels, info.width, info.height)


def _prepare_chunk(paths: list[str], preprocess: Preprocess | None) -> list[Prepared]:
    return [prepare_image(p, preprocess) for p in paths]


def prepared_images(
    paths: Sequence[str],
    preprocess: Preprocess | None,
    *,
    workers: int,
    known_ids: frozenset[str],
    chunk: int = 4,
) -> Iterator[Prepared]:
    """:func:`prepare_image` over ``paths``, in order, in ``workers`` processes (0: this process).

    The workers start at once (before the first ``next``), so the caller can do other work
    while they decode. A worker that dies (a decoder crash) costs only the file that killed it:
    the pool is restarted and the other files are retried.
    """
    if workers <= 0:
        return (prepare_image(p, preprocess, known_ids=known_ids) for p in paths)
    return _DecodePool(list(paths), preprocess, workers=workers, known_ids=known_ids, chunk=chunk)


class _DecodePool:
    """Iterator over :class:`Prepared` results, decoded by a process pool with a bounded window."""

    def __init__(
        self, paths: list[str], preprocess: Preprocess | None, *, workers: int, known_ids: frozenset[str], chunk: int
    ):
        self.preprocess = preprocess
        self.workers = workers
        self.known_ids = known_ids
        self.ctx = _mp_context()
        self.chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
        self.window = max(2, 3 * workers)
        self.next_chunk = 0
        self.pending: list[tuple[list[str], Any]] = []
        self.pool = self._new_pool()
        self._fill()

    def _new_pool(self):
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(
            max_workers=self.workers, mp_context=self.ctx, initializer=_init_worker, initargs=(self.known_ids,)
        )

    def _fill(self) -> None:
        # Workers start on submit: hide __main__ while any of them may start.
        with _main_hidden():
            while self.next_chunk < len(self.chunks) and len(self.pending) < self.window:
                group = self.chunks[self.next_chunk]
                self.pending.append((group, self.pool.submit(_prepare_chunk, group, self.preprocess)))
                self.next_chunk += 1

    def __iter__(self) -> Iterator[Prepared]:
        from concurrent.futures.process import BrokenProcessPool

        try:
            while self.pending:
                group, fut = self.pending.pop(0)
                try:
                    results = fut.result()
                except BrokenProcessPool:
                    results = None
                if results is not None:
                    yield from results
                    self._fill()
                    continue
                # The pool died: this chunk's files one by one, each in a fresh pool; then the rest.
                requeue = [g for g, _ in self.pending]
                self.pending = []
                self.pool.shutdown(wait=False, cancel_futures=True)
                for p in group:
                    yield self._isolated(p)
                self.pool = self._new_pool()
                with _main_hidden():
                    for g in requeue:
                        self.pending.append((g, self.pool.submit(_prepare_chunk, g, self.preprocess)))
                self._fill()
        finally:
            self.close()

    def _isolated(self, path: str) -> Prepared:
        from concurrent.futures.process import BrokenProcessPool

        pool = self._new_pool()
        try:
            with _main_hidden():
                fut = pool.submit(_prepare_chunk, [path], self.preprocess)
            return fut.result()[0]
        except BrokenProcessPool:
            return Prepared(path, error="the image decoder crashed (worker process died)")
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# -- text documents ----------------------------------------------------------------------------


@dataclass
class TextItem:
    """A text to store: a paragraph of a document, or one jsonl/csv record."""

    text: str
    source: str  # the file (or API_SOURCE)
    path: str | None  # what to show: the file, or the image a caption belongs to
    record: str = ""  # "#ID" or ":LINE" within a table
    char_start: int | None = None
    char_end: int | None = None
    caption: str | None = None
    label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return sch.text_id(self.source, f"{self.record}@{self.char_start}", self.text)


def document_passages(text: str, encoder: Encoder | None) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of the passages a document becomes.

    One per paragraph (blank-line separated); a paragraph longer than the model's context is
    split further by :func:`clipsearch.text.split_passages` (whole sentences, then words).
    """
    from clipsearch.text import split_passages, token_counter

    context = encoder.info.context_length if encoder is not None else 512
    max_tokens = max(8, context - 2)  # room for the start and end tokens
    count = token_counter(encoder) if encoder is not None else None
    return [(p.start, p.end) for p in split_passages(text, max_tokens=max_tokens, count_tokens=count)]


def read_text_items(
    path: str,
    kind: str,
    encoder: Encoder | None,
    *,
    both: bool,
    on_error: Callable[[str, str], None],
) -> tuple[list[TextItem], list[tuple[str, dict[str, Any]]]]:
    """Items of one document file, and the images its records name.

    Returns:
        ``(text_items, image_refs)``: image refs are ``(absolute image path, metadata)``.
    """
    from clipsearch.text import read_documents

    items: list[TextItem] = []
    images: list[tuple[str, dict[str, Any]]] = []
    base = os.path.dirname(path)
    for doc in read_documents(path, on_error=on_error):
        if kind == "text":
            for a, b in document_passages(doc.text, encoder):
                items.append(TextItem(doc.text[a:b], path, path, "", a, b))
            continue
        record = doc.source[len(path) :] if doc.source.startswith(path) else doc.source
        meta = dict(doc.metadata)
        image = _pop_image_field(meta)
        caption = _str_or_none(meta.pop("caption", None))
        label = _str_or_none(meta.pop("label", None))
        meta.pop("id", None)
        extra = {k: v for k, v in meta.items() if v not in (None, "")}
        if image not in (None, ""):
            img_path = os.path.abspath(os.path.join(base, os.path.expanduser(str(image))))
            images.append(
                (
                    img_path,
                    {"caption": caption or doc.text, "label": label, "record": record, "extra": extra, "source": path},
                )
            )
            if both:
                items.append(TextItem(doc.text, path, img_path, record, caption=caption, label=label, extra=extra))
        else:
            items.append(TextItem(doc.text, path, path, record, caption=caption, label=label, extra=extra))
    return items, images


def _pop_image_field(meta: dict[str, Any]) -> Any:
    """The image file a record names, taken out of ``meta``: its ``image`` field, else the first
    of the other :data:`~clipsearch.images.IMAGE_FIELDS` (``file``, ``path``, ``filepath``, as
    in a demo world's ``metadata.jsonl`` or a training pairs file) whose value is an image file
    name: those words name other files too."""
    from clipsearch.images import IMAGE_FIELDS, is_image_path

    for key in IMAGE_FIELDS:
        value = meta.get(key)
        if value in (None, ""):
            continue
        if key == "image" or (isinstance(value, str) and is_image_path(value)):
            return meta.pop(key)
    return None


def _str_or_none(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


# -- the writer: store state, pending changes, atomic batch commits ----------------------------


class _Writer:
    """What the store holds (ids, which paths and sources map to them) and the changes pending.

    Changes to items already stored are kept as deltas (attach/detach a path, set metadata) and
    applied to freshly fetched rows at commit, so each batch is one ``merge_insert``.
    """

    def __init__(self, store: Store, summary: IndexSummary):
        self.store = store
        self.summary = summary
        self.files = store.file_records()
        table = store.to_arrow(columns=["id", "modality", "path", "extra_paths", "source"])
        ids = table.column("id").to_pylist()
        modality = table.column("modality").to_pylist()
        paths = table.column("path").to_pylist()
        extra = table.column("extra_paths").to_pylist()
        sources = table.column("source").to_pylist()
        self.ids: set[str] = set(ids)
        self.path_to_id: dict[str, str] = {}
        self.source_ids: dict[str, set[str]] = defaultdict(set)
        self.text_source: dict[str, str] = {}  # text item id -> its source
        self.image_source: dict[str, str] = {}  # image id -> the table that captions it
        for i, m, p, e, s in zip(ids, modality, paths, extra, sources):
            if m == "image":
                for q in [p, *(e or [])]:
                    if q:
                        self.path_to_id[q] = i
                if _captioning_table(s, [p, *(e or [])]):
                    self.image_source[i] = s
            else:
                self.source_ids[s or ""].add(i)
                self.text_source[i] = s or ""
        self.image_ids = frozenset(self.path_to_id.values())
        # pending
        self.new_rows: list[dict[str, Any]] = []  # embedded, waiting for the commit
        self.new_vectors: list[np.ndarray] = []
        self.new_cells: dict[str, np.ndarray] = {}  # id -> (rows, cols, dim) grid, models with a grid
        self.queued: dict[str, dict[str, Any]] = {}  # id -> row waiting for its vector
        self.attach: dict[str, list[str]] = defaultdict(list)
        self.detach: dict[str, set[str]] = defaultdict(set)
        self.set_meta: dict[str, dict[str, Any]] = {}
        self.meta_count: set[str] = set()  # ids counted as updated or unchanged once compared
        self.deletes: set[str] = set()
        self.file_recs: dict[str, dict[str, Any]] = {}  # committed after the items
        self.file_deletes: set[str] = set()
        self.row_files: dict[str, list[dict[str, Any]]] = defaultdict(list)  # id -> recs waiting for it

    # -- lookups ---------------------------------------------------------------------------------
    def file_unchanged(self, path: str, size: int, mtime: float, kind: str | None = None) -> bool:
        """The store recorded this path with this size and mtime (and kind, when given)."""
        rec = self.files.get(path)
        return (
            rec is not None and rec["size"] == size and rec["mtime"] == mtime and (kind is None or rec["kind"] == kind)
        )

    # -- changes ---------------------------------------------------------------------------------
    def queue_row(self, row: dict[str, Any], file_rec: dict[str, Any] | None) -> None:
        self.queued[row["id"]] = row
        if file_rec:
            self.row_files[row["id"]].append(file_rec)

    def add_embedded(self, rows: list[dict[str, Any]], vectors: np.ndarray, grids: np.ndarray | None = None) -> None:
        """Rows with their ``(n, dim)`` vectors and, for models with a grid, ``(n, rows, cols, dim)`` cells."""
        for i, (row, vec) in enumerate(zip(rows, vectors)):
            self.queued.pop(row["id"], None)
            self.new_rows.append(row)
            self.new_vectors.append(vec)
            if grids is not None:
                self.new_cells[row["id"]] = grids[i]

    def attach_path(self, item_id: str, path: str, file_rec: dict[str, Any]) -> None:
        """Record ``path`` as another place holding image ``item_id``."""
        if item_id in self.queued:
            row = self.queued[item_id]
            if path != row["path"] and path not in row["extra_paths"]:
                row["extra_paths"].append(path)
            self.row_files[item_id].append(file_rec)
            return
        if path not in self.attach[item_id]:
            self.attach[item_id].append(path)
        self.detach[item_id].discard(path)
        self.file_recs[path] = file_rec

    def detach_path(self, path: str) -> bool:
        """Take ``path`` off the image it held before; True if it held one."""
        old = self.path_to_id.get(path)
        if old is None:
            return False
        self.detach[old].add(path)
        if path in self.attach.get(old, []):
            self.attach[old].remove(path)
        return True

    def update_meta(self, item_id: str, meta: dict[str, Any], *, count: bool) -> None:
        """Set metadata columns of a stored item; with ``count``, the commit counts it as
        updated (if anything changed) or unchanged."""
        self.set_meta[item_id] = {**self.set_meta.get(item_id, {}), **meta}
        if count:
            self.meta_count.add(item_id)

    def delete_ids(self, ids: Iterable[str]) -> None:
        self.deletes.update(ids)

    def drop_captions(self, sources: Callable[[str], bool], *, keep: Iterable[str] = ()) -> int:
        """Clear what a table gave the stored images whose table ``sources(table)`` selects
        (caption, label, record, extra, source), except the ids in ``keep``; the images stay.
        Returns how many."""
        skip = set(keep) | self.deletes
        ids = [i for i, table in self.image_source.items() if sources(table) and i not in skip]
        for item_id in ids:
            self.update_meta(item_id, _image_meta({}), count=False)  # every field a table sets, unset
        return len(ids)

    # -- commit ----------------------------------------------------------------------------------
    def pending(self) -> int:
        return (
            len(self.new_rows)
            + len(self.attach)
            + len(self.detach)
            + len(self.set_meta)
            + len(self.deletes)
            + len(self.file_recs)
        )

    def flush(self) -> None:
        """Write everything pending (except rows still waiting for vectors): items, then files."""
        if not self.pending() and not self.file_deletes:
            return
        store = self.store
        affected = (set(self.attach) | set(self.detach) | set(self.set_meta)) - self.deletes
        fetched = store._rows_by_id(affected, with_vector=True) if affected else {}
        rows: list[dict[str, Any]] = []
        vectors: list[np.ndarray] = []
        deletes = set(self.deletes)
        changed: set[str] = set()
        for item_id in sorted(affected):
            row = fetched.get(item_id)
            if row is None:
                continue  # removed meanwhile; its paths are handled by the next run
            vec = np.asarray(row.pop("vector"), dtype=np.float32)
            before = dict(row, extra_paths=list(row.get("extra_paths") or []))
            paths = [p for p in [row["path"], *(row.get("extra_paths") or [])] if p]
            gone = self.detach.get(item_id, set())
            paths = [p for p in paths if p not in gone]
            paths += [p for p in self.attach.get(item_id, []) if p not in paths and p not in gone]
            if row["modality"] == "image" and not paths:
                deletes.add(item_id)
                continue
            if paths and paths[0] != row["path"]:
                row["path"] = paths[0]
                rec = self.file_recs.get(paths[0]) or self.files.get(paths[0])
                if rec is not None:
                    row["mtime"] = rec["mtime"]
            row["extra_paths"] = paths[1:]
            if item_id in self.set_meta:
                row.update(self.set_meta[item_id])
            if row["modality"] == "image" and (not row.get("source") or row["source"] in gone):
                row["source"] = row["path"]  # no table captions it (any more), or its own file was its source
            if row == before:
                continue
            changed.add(item_id)
            rows.append(row)
            vectors.append(vec)
        new_ids = {r["id"] for r in self.new_rows}
        if self.new_rows:
            seqs = store.allocate_seqs(len(self.new_rows))
            for row, seq in zip(self.new_rows, seqs):
                row["seq"] = int(seq)
        all_rows = rows + self.new_rows
        all_vecs = np.stack(vectors + self.new_vectors) if all_rows else None
        if self.new_cells:  # before the items: an item is never stored without its cells
            store.commit_cells(list(self.new_cells), np.stack(list(self.new_cells.values())))
        store.commit_items(all_rows, all_vecs, deletes)
        for item_id in self.meta_count:
            if item_id in changed:
                self.summary.updated += 1
            else:
                self.summary.unchanged += 1
        # the store now holds this batch: mirror it
        for row in all_rows:
            self.ids.add(row["id"])
            if row["modality"] == "image":
                for p in [row["path"], *row["extra_paths"]]:
                    self.path_to_id[p] = row["id"]
                if _captioning_table(row.get("source"), [row["path"], *row["extra_paths"]]):
                    self.image_source[row["id"]] = row["source"]
                else:
                    self.image_source.pop(row["id"], None)
            else:
                self.source_ids[row["source"] or ""].add(row["id"])
                self.text_source[row["id"]] = row["source"] or ""
        for item_id in deletes:
            self.ids.discard(item_id)
            self.image_source.pop(item_id, None)
            source = self.text_source.pop(item_id, None)
            if source is not None:
                self.source_ids[source].discard(item_id)
        for item_id, gone in self.detach.items():
            for p in gone:
                if self.path_to_id.get(p) == item_id:
                    del self.path_to_id[p]
        recs = dict(self.file_recs)
        for item_id in new_ids:
            for rec in self.row_files.pop(item_id, []):
                recs[rec["path"]] = rec
        store.commit_files(list(recs.values()), self.file_deletes)
        self.files.update(recs)
        for p in self.file_deletes:
            self.files.pop(p, None)
        self.new_rows, self.new_vectors, self.new_cells = [], [], {}
        self.attach, self.detach = defaultdict(list), defaultdict(set)
        self.set_meta, self.meta_count, self.deletes = {}, set(), set()
        self.file_recs, self.file_deletes = {}, set()


# -- the run -------------------------------------------------------------------------------------


class _Progress:
    """A Rich progress bar on stderr (rate and ETA), or nothing."""

    def __init__(self, enabled: bool | Any):
        self.bar = None
        self.task = None
        if enabled is True:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            from clipsearch.progress import RateColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                RateColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("indexing", total=0)
        elif enabled not in (None, False):
            self.bar = enabled  # a caller's object with add(total) and advance(n)

    def add(self, total: int) -> None:
        if self.task is not None:
            self.bar.update(self.task, total=(self.bar.tasks[0].total or 0) + total)
        elif self.bar is not None and hasattr(self.bar, "add"):
            self.bar.add(total)

    def advance(self, n: int = 1) -> None:
        if self.task is not None:
            self.bar.advance(self.task, n)
        elif self.bar is not None and hasattr(self.bar, "advance"):
            self.bar.advance(n)

    def stop(self) -> None:
        if self.task is not None:
            self.bar.stop()


def index_paths(
    store: Store,
    paths: Sequence[str | os.PathLike[str]],
    *,
    texts: Sequence[str] = (),
    batch_size: int = 32,
    workers: int | None = None,
    prune: bool = False,
    both: bool = False,
    cells: bool = True,
    retry_failed: bool = False,
    progress: bool | Any = False,
) -> IndexSummary:
    """Index files and folders (and raw ``texts``) into ``store``; see the module docstring.

    Args:
        store: an open store; its model embeds everything.
        paths: image files, text documents and folders (walked recursively).
        texts: strings to index as text items (source ``"<api>"``).
        batch_size: inputs per forward pass and per commit.
        workers: decoding processes; default :func:`default_workers`; 0 decodes in this process.
        prune: remove items whose files no longer exist.
        both: jsonl/csv image-caption pairs also become text items (the caption, showing the image).
        cells: for a model with a grid, keep each new image's grid cells in the store (what
            search re-ranks by without reading images again); False keeps vectors only.
        retry_failed: read again the image files that failed before though they did not change
            (by default such a file is reported with its earlier reason, unread:
            :meth:`Store.failed_files`).
        progress: True for a progress bar on stderr.

    Returns:
        The run's :class:`IndexSummary`.

    Raises:
        StoreError: another process is writing to the store.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive whole number, got {batch_size!r}")
    workers = default_workers() if workers is None else int(workers)
    if workers < 0:
        raise ValueError(f"workers must be 0 (decode in this process) or more, got {workers}")
    t0 = time.perf_counter()
    summary = IndexSummary()
    bar = _Progress(progress)
    try:
        with store.writing():
            run = _Run(
                store, summary, batch_size=batch_size, workers=workers, both=both, cells=cells, bar=bar,
                retry_failed=retry_failed,
            )  # fmt: skip
            run.execute(paths, texts, prune=prune)
            summary.index = store.update_index()
            store.compact()
    finally:
        bar.stop()
    summary.seconds = time.perf_counter() - t0
    return summary


class _Run:
    def __init__(
        self,
        store: Store,
        summary: IndexSummary,
        *,
        batch_size: int,
        workers: int,
        both: bool,
        cells: bool,
        bar: _Progress,
        retry_failed: bool = False,
    ):
        self.store = store
        self.cells = cells
        self.summary = summary
        self.batch_size = batch_size
        self.workers = workers
        self.both = both
        self.bar = bar
        self.w = _Writer(store, summary)
        self.named_by_table: dict[str, set[str]] = {}  # table read in this run -> the image paths it names
        self.failed_before = store.failed_files()  # path -> {size, mtime, reason, max_pixels}
        self.max_pixels = _pixel_cap()  # a failure under another cap is read again (it may pass now)
        self.retry_failed = retry_failed
        self.failed_now: dict[str, dict[str, Any]] = {}  # image files that failed in this run, or as before

    @property
    def encoder(self) -> Encoder:
        return self.store.encoder  # loaded on first use: an unchanged folder never loads the model

    def execute(self, paths: Sequence[str | os.PathLike[str]], texts: Sequence[str], *, prune: bool) -> None:
        found = scan(paths, self.summary)
        self.bar.add(len(found.images))
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

    def _record_failures(self, found: _Scan) -> None:
        """Write down the image files that failed, for the next run (:meth:`Store.failed_files`):
        this run's failures, and earlier ones it did not scan whose files still exist."""
        kept = {p: r for p, r in self.failed_before.items() if p not in found.images and os.path.exists(p)}
        now = kept | self.failed_now
        if now != self.failed_before:
            self.store.record_failed_files(now)

    def _failed_as_before(self, inp: ImageInput) -> bool:
        """Report ``inp`` as failed without reading it: it failed before and did not change since."""
        rec = self.failed_before.get(inp.path)
        if self.retry_failed or rec is None or rec.get("max_pixels", False) != self.max_pixels:
            return False
        if rec.get("size") != inp.size or rec.get("mtime") != inp.mtime:
            return False
        self.summary.fail(inp.path, str(rec.get("reason") or "failed before"))
        self.summary.failed_unread += 1
        self.failed_now[inp.path] = rec
        return True

    # -- text documents ------------------------------------------------------------------------
    def _read_docs(self, found: _Scan) -> list[tuple[str, str, os.stat_result, list[TextItem] | None]]:
        """Parse changed documents (and every table, for the images it names)."""
        out = []
        for path, kind, st in found.docs:
            unchanged = self.w.file_unchanged(path, st.st_size, st.st_mtime, self._doc_kind(kind))
            if unchanged and kind == "text":
                out.append((path, kind, st, None))
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
            out.append((path, kind, st, None if unchanged else items))
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

    def _add_image_ref(self, found: _Scan, path: str, meta: dict[str, Any], *, table_changed: bool) -> None:
        inp = found.images.get(path)
        if inp is None:
            try:
                st = os.stat(path)
            except OSError as exc:
                self.summary.fail(
                    path, f"named by {meta['source']}{meta['record']}: {(exc.strerror or 'cannot read').lower()}"
                )
                return
            inp = found.images[path] = ImageInput(path, st.st_size, st.st_mtime)
            self.bar.add(1)
        inp.meta = meta
        inp.meta_changed = table_changed

    def _index_docs(self, docs: list[tuple[str, str, os.stat_result, list[TextItem] | None]]) -> None:
        for path, kind, st, items in docs:
            existing = set(self.w.source_ids.get(path, set()))
            if items is None:
                self.summary.unchanged += len(existing)
                continue
            rec = {"path": path, "kind": self._doc_kind(kind), "size": st.st_size, "mtime": st.st_mtime, "sha256": None}
            self._index_text_items(items, existing, mtime=st.st_mtime)
            stale = existing - {it.id for it in items}
            self.w.delete_ids(stale)
            self.summary.removed += len(stale)
            self.w.file_recs[path] = rec
            self.w.flush()

    def _index_text_items(self, items: list[TextItem], existing: set[str], *, mtime: float | None) -> None:
        self.bar.add(len(items))
        todo: dict[str, TextItem] = {}
        for it in items:
            if it.id in existing or it.id in self.w.ids:
                self._update_text_meta(it)  # counted as unchanged or updated at the commit
                self.bar.advance()
            elif it.id not in todo:
                todo[it.id] = it
            else:
                self.bar.advance()  # the same paragraph twice at the same place: one item
        pending = list(todo.values())
        if pending and not self.encoder.supports("text"):
            for it in pending:
                self.summary.fail(f"{it.source}{it.record}", f"model {self.encoder.name!r} embeds images only")
            return
        reuse = self._vectors_by_text_sha({sch.text_sha256(it.text) for it in pending})
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start : start + self.batch_size]
            rows = [self._text_row(it, mtime) for it in chunk]
            vecs = np.zeros((len(chunk), self.store.dim), np.float32)
            missing = [i for i, r in enumerate(rows) if r["sha256"] not in reuse]
            for i, r in enumerate(rows):
                if r["sha256"] in reuse:
                    vecs[i] = reuse[r["sha256"]]
            if missing:
                vecs[missing] = self.encoder.encode_texts(
                    [chunk[i].text for i in missing], batch_size=self.batch_size, role="passage"
                )
                self.summary.embedded += len(missing)
            for r, v in zip(rows, vecs):
                reuse.setdefault(r["sha256"], v)
            self.w.add_embedded(rows, vecs)
            self.summary.added += len(rows)
            self.w.flush()
            self.bar.advance(len(rows))

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

    def _vectors_by_text_sha(self, shas: set[str]) -> dict[str, np.ndarray]:
        """Stored vectors of texts with these SHA-256s (identical text is never embedded twice)."""
        out: dict[str, np.ndarray] = {}
        shas_l = sorted(shas)
        from clipsearch.store.lance_store import _sql_list

        for i in range(0, len(shas_l), 500):
            chunk = shas_l[i : i + 500]
            table = self.store.to_arrow(
                ["sha256", "vector"], where=f"modality = 'text' AND sha256 IN ({_sql_list(chunk)})"
            )
            for sha, vec in zip(table.column("sha256").to_pylist(), table.column("vector").to_pylist()):
                out[sha] = np.asarray(vec, dtype=np.float32)
        return out

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
        todo: list[ImageInput] = []
        for inp in images.values():
            if w.file_unchanged(inp.path, inp.size, inp.mtime) and inp.path in w.path_to_id:
                if inp.meta and inp.meta_changed:
                    w.update_meta(w.path_to_id[inp.path], _image_meta(inp.meta), count=True)
                else:
                    self.summary.unchanged += 1
                self.bar.advance()
            elif self._failed_as_before(inp):
                self.bar.advance()
            else:
                todo.append(inp)
        can_embed = bool(todo) and self.encoder.supports("image")
        if todo and not can_embed:
            for inp in todo:
                self.summary.fail(inp.path, f"model {self.encoder.name!r} embeds text only")
                self.bar.advance()
            todo = []
        preprocess = self.encoder.info.preprocess if todo else None
        stream = (
            prepared_images([i.path for i in todo], preprocess, workers=self.workers, known_ids=w.image_ids)
            if todo
            else iter(())
        )
        # Text documents are embedded while the workers decode the first images.
        self._index_docs(docs)
        batch: list[tuple[dict[str, Any], np.ndarray]] = []
        try:
            for inp, prep in zip(todo, stream):
                if (
                    prep.known
                    and prep.sha256
                    and sch.image_id(prep.sha256) not in w.ids
                    and sch.image_id(prep.sha256) not in w.queued
                ):
                    prep = prepare_image(inp.path, preprocess, known_ids=frozenset())  # removed during this run
                self._place_image(inp, prep, batch)
                if len(batch) >= self.batch_size:
                    self._embed_batch(batch)
                    batch = []
                elif w.pending() >= 4 * self.batch_size:
                    w.flush()
            if batch:
                self._embed_batch(batch)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # stop the decoding workers, even when a batch failed

    def _place_image(self, inp: ImageInput, prep: Prepared, batch: list) -> None:
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
            self.bar.advance()
            return
        assert prep.sha256 is not None
        iid = sch.image_id(prep.sha256)
        if was == iid:  # touched, same bytes
            w.file_recs[inp.path] = rec
            if inp.meta and inp.meta_changed:
                w.update_meta(iid, _image_meta(inp.meta), count=True)
            else:
                self.summary.unchanged += 1
            self.bar.advance()
            return
        if was is not None:
            w.detach_path(inp.path)
            self.summary.updated += 1
        else:
            self.summary.added += 1
        if iid in w.ids or iid in w.queued:
            w.attach_path(iid, inp.path, rec)
            if inp.meta and iid in w.ids:
                w.update_meta(iid, _image_meta(inp.meta), count=False)
            elif inp.meta:
                w.queued[iid].update(_image_meta(inp.meta))
            self.bar.advance()
            return
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
            **(_image_meta(inp.meta) if inp.meta else {}),
        }
        w.queue_row(row, rec)
        batch.append((row, prep.pixels))

    def _embed_batch(self, batch: list[tuple[dict[str, Any], np.ndarray]]) -> None:
        rows = [r for r, _ in batch]
        pixels = np.stack([p for _, p in batch])
        vecs, grids = encode_pixels(self.encoder, pixels, grid=self.cells)  # cells kept, so search can re-rank
        self.summary.embedded += len(rows)
        self.w.add_embedded(rows, vecs, grids)
        self.w.flush()
        self.bar.advance(len(rows))

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
            if iid is not None and iid not in by_id and w.file_unchanged(inp.path, inp.size, inp.mtime):
                by_id[iid] = inp.path
        missing = sorted(set(by_id) - self.store.cell_ids()) if by_id else []
        if not missing:
            return
        has_grid = embeds_grid(self.encoder)
        if "grid" not in self.store.meta:  # a store from before the header said: say it now
            self.store.record_grid(has_grid)
        if not has_grid:
            return
        self.bar.add(len(missing))
        preprocess = self.encoder.info.preprocess
        stream = prepared_images([by_id[i] for i in missing], preprocess, workers=self.workers, known_ids=frozenset())
        ids: list[str] = []
        pixels: list[np.ndarray] = []
        try:
            for iid, prep in zip(missing, stream):
                self.bar.advance()
                if prep.error is None and prep.sha256 is not None and sch.image_id(prep.sha256) == iid:
                    ids.append(iid)  # else unreadable now, or other bytes under the same mtime: left as is
                    pixels.append(prep.pixels)
                if len(ids) >= self.batch_size:
                    self._commit_grids(ids, pixels)
                    ids, pixels = [], []
            if ids:
                self._commit_grids(ids, pixels)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def _commit_grids(self, ids: list[str], pixels: list[np.ndarray]) -> None:
        _, grids = encode_pixels(self.encoder, np.stack(pixels), grid=True)
        self.store.commit_cells(ids, grids)
        self.summary.cells_added += len(ids)

    # -- pruning -------------------------------------------------------------------------------
    def _prune(self, roots: Sequence[str]) -> None:
        """Remove stored paths under ``roots`` (the folders scanned) whose files are gone.

        Paths elsewhere are left alone: indexing one folder never prunes another (a drive that
        is not plugged in). Nor is a path whose nearest folder still there, the root or one
        below it, is empty or cannot be listed, or still lists the next step of the path (a
        dangling link, an entry we may not reach): that is what an unmounted drive looks like
        wherever it is mounted, and what a folder we may not read looks like (its files only
        seem gone). Those paths are counted in ``summary.prune_kept`` by what to remove on
        purpose with ``clipsearch remove``.
        """
        w = self.w
        candidates = set(w.files) | set(w.path_to_id) | {s for s in w.source_ids if s and s != API_SOURCE}
        gone = []
        listings: dict[str, frozenset[str] | None] = {}  # folder -> its entries (None: cannot be listed)
        for path in sorted(candidates):
            owners = [r for r in roots if _is_under(path, r)]
            if not owners or os.path.exists(path):
                continue
            held = _still_held(path, max(owners, key=len), listings)  # the deepest root: each path counted once
            if held is None:
                gone.append(path)
            else:
                self.summary.prune_kept[held] = self.summary.prune_kept.get(held, 0) + 1
        self.summary.removed += apply_path_removal(w, gone, prefix=False)


def _captioning_table(source: str | None, paths: Sequence[str]) -> bool:
    """Whether an image's ``source`` is a table that captions it: set, and not one of its own
    ``paths`` (an image no table names is its own source)."""
    return bool(source) and source not in paths


def _pixel_cap() -> int | None | str:
    """The decoders' pixel cap for this run (``$CLIPSEARCH_MAX_PIXELS``); "invalid" when the
    variable cannot be read (the decode stage then says why)."""
    from clipsearch.images import max_pixels_from_env

    try:
        return max_pixels_from_env()
    except ValueError:
        return "invalid"


def _is_under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _still_held(path: str, root: str, listings: dict[str, frozenset[str] | None]) -> str | None:
    """Whether a ``path`` under ``root`` that does not exist may only be out of reach: the
    folder or entry to blame (empty, unlistable, or listed but not reachable), else ``None``
    (it is gone). ``listings`` caches folder listings across calls."""
    child, folder = path, os.path.dirname(path)
    while folder != root and _is_under(folder, root) and not os.path.isdir(folder):
        child, folder = folder, os.path.dirname(folder)
    if not _is_under(folder, root):
        folder = root
    if folder not in listings:
        try:
            with os.scandir(folder) as entries:
                listings[folder] = frozenset(e.name for e in entries)
        except OSError:
            listings[folder] = None
    names = listings[folder]
    if not names:  # empty, or cannot be listed
        return folder
    if os.path.basename(child) in names:  # there, but neither a folder nor a file we can reach
        return child
    return None


def _image_meta(meta: dict[str, Any]) -> dict[str, Any]:
    extra = meta.get("extra") or {}
    return {
        "source": meta.get("source"),  # the table that captions it now
        "caption": meta.get("caption"),
        "label": meta.get("label"),
        "record": meta.get("record") or None,
        "extra": json.dumps(extra, ensure_ascii=False, sort_keys=True) if extra else None,
    }


def apply_path_removal(w: _Writer, paths: Sequence[str], *, prefix: bool) -> int:
    """Detach ``paths`` from images and delete text items whose source they are; returns the count.
    Images captioned by a table among ``paths`` lose that caption (``summary.captions_dropped``).

    With ``prefix``, a path also covers everything under it (a folder).
    """
    if not paths:
        return 0
    targets = sorted(set(paths))

    def covered(p: str) -> bool:
        if p in targets_set:
            return True
        return prefix and any(_is_under(p, t) for t in targets)

    targets_set = set(targets)
    count = 0
    for p in list(w.path_to_id):
        if covered(p) and w.detach_path(p):
            count += 1
    for source, ids in list(w.source_ids.items()):
        if source and covered(source):
            w.delete_ids(ids)
            count += len(ids)
    w.file_deletes.update(p for p in w.files if covered(p))
    w.summary.captions_dropped += w.drop_captions(covered)  # a table gone: what it gave images goes too
    return count


def remove_targets(store: Store, targets: Iterable[str | os.PathLike[str]]) -> int:
    """Remove items by id (or unique prefix) or by path (file or folder); see :meth:`Store.remove`."""
    from clipsearch.errors import StoreError

    summary = IndexSummary()
    with store.writing():
        w = _Writer(store, summary)
        count = 0
        for target in targets:
            text = os.fspath(target)
            path = os.path.abspath(os.path.expanduser(text))
            dropped = summary.captions_dropped
            n = apply_path_removal(w, [path], prefix=True)
            if n or summary.captions_dropped > dropped:
                count += n
                continue
            item = store.get(text)
            if item is None:
                raise StoreError(f"nothing in store {store.root} has the id or path {text!r}")
            w.delete_ids([item.id])
            w.file_deletes.update(p for p in item.paths if p in w.files)
            count += 1
        w.flush()
        store.update_index()
        return count
