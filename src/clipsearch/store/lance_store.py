"""The store: a LanceDB folder of items (metadata + vector), searched in memory.

Writes go through LanceDB, one ``merge_insert`` per batch: each is one atomic table version,
so a crash (even ``kill -9``) loses at most the batch being written and never leaves half a
row. Searches never touch LanceDB's own vector search (see :mod:`clipsearch.store.ann`): the
vectors are read once per table version into memory and scanned with numpy, or searched through
an ANN index (IVF with 8-bit codes and an exact re-rank) once the store is large.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from clipsearch.errors import StoreError
from clipsearch.paths import display_path
from clipsearch.store import schema as sch
from clipsearch.store.s3 import S3Lock, S3Path, s3_write_lock
from clipsearch.store.ann import (
    DEFAULT_ANN_THRESHOLD,
    DEFAULT_RECALL,
    AnnIndex,
    Vectors,
    ann_threshold_from_env,
    build_index,
    check_recall,
    exact_scores,
    read_any_index_meta,
    read_index_meta,
    remove_index,
    top_k,
)

if TYPE_CHECKING:
    import pyarrow as pa


STORE_ENV = "CLIPSEARCH_STORE"
MODALITIES = ("image", "text", "any")
_IN_CHUNK = 500  # ids per SQL IN (...) list
_WRITING: set[str] = set()  # stores this process is writing (resolved roots)


def default_store_path() -> Path:
    """``$CLIPSEARCH_STORE``, else ``<user data dir>/clipsearch/store``."""
    env = os.environ.get(STORE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("clipsearch")) / "store"


def resolve_store_uri(
    uri: str | os.PathLike[str] | S3Path | None, storage_options: dict[str, str] | None = None
) -> Path | S3Path:
    """Where the store at ``uri`` lives: a local folder (a path, a ``file://`` URI, or None for
    the default store), or an :class:`~clipsearch.store.s3.S3Path` for ``s3://bucket/prefix``.

    Args:
        storage_options: for ``s3://``, credentials and endpoint over those of the environment
            (see :mod:`clipsearch.store.s3`).
    """
    if uri is None:
        return default_store_path()
    if isinstance(uri, S3Path):
        return uri
    text = os.fspath(uri)
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme.lower() == "file":
            from urllib.parse import unquote

            return Path(unquote(rest)).expanduser()
        if scheme.lower() in ("s3", "s3a"):
            return S3Path.parse(text, storage_options)
        raise StoreError(f"store URI {text!r}: local folders, file:// and s3:// URIs are supported, not {scheme}://")
    return Path(text).expanduser()


# -- what search and get return ---------------------------------------------------------------


@dataclass
class Item:
    """One row of the store, without its vector unless asked for."""

    id: str
    modality: str = "image"
    path: str | None = None
    extra_paths: list[str] = field(default_factory=list)
    source: str | None = None
    text: str | None = None
    sha256: str | None = None
    size: int | None = None
    mtime: float | None = None
    width: int | None = None
    height: int | None = None
    caption: str | None = None
    label: str | None = None
    record: str | None = None
    char_start: int | None = None
    char_end: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    added: float | None = None
    seq: int | None = None
    vector: npt.NDArray[np.float32] | None = field(default=None, repr=False)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Item:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in row.items() if k in known}
        kw["extra_paths"] = list(row.get("extra_paths") or [])
        raw = row.get("extra")
        kw["extra"] = json.loads(raw) if raw else {}
        if row.get("vector") is not None:
            kw["vector"] = np.asarray(row["vector"], dtype=np.float32)
        return cls(**kw)

    @property
    def paths(self) -> list[str]:
        """Every path holding this item: the primary one, then the others."""
        return ([self.path] if self.path else []) + list(self.extra_paths)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("vector")
        return out


@dataclass
class Hit(Item):
    """A search result: an :class:`Item` and its cosine ``score`` with the query."""

    score: float = 0.0
    confidence: float | None = None  # calibrated, 0-1 (clipsearch.calibration); None: not calibrated

    def to_dict(self) -> dict[str, Any]:
        """The fields ``clipsearch search --json`` prints."""
        return {
            "id": self.id,
            "path": display_path(self.path) if self.path else self.path,
            "text": self.text,
            "modality": self.modality,
            "score": round(float(self.score), 6),
            "confidence": None if self.confidence is None else round(float(self.confidence), 4),
            "caption": self.caption,
            "label": self.label,
        }


# -- the in-memory view used by search --------------------------------------------------------


@dataclass
class _Snapshot:
    """The items table at one version, as arrays aligned with the dataset's row order."""

    version: int
    ann_stamp: tuple[int, int] | None  # (mtime_ns, size) of ann.json when loaded
    dataset: Any  # lance.LanceDataset at ``version``; ``take(positions)`` fetches rows
    seq: npt.NDArray[np.int64]  # (n,)
    ids: npt.NDArray[np.object_]  # (n,)
    is_image: npt.NDArray[np.bool_]  # (n,)
    order: npt.NDArray[np.int64]  # argsort(seq): seq -> position lookups
    vectors: Vectors | None = None  # (n, d), exact mode
    ann: AnnIndex | None = None  # ANN mode
    in_index: npt.NDArray[np.bool_] | None = None  # (n,) rows the index holds
    ann_id: npt.NDArray[np.int64] | None = None  # (n,) each row's faiss id in the index, -1 in the tail
    ann_pos: npt.NDArray[np.int64] | None = None  # (m,) each faiss id's position, -1 once deleted
    tail_vectors: Vectors | None = None  # (n - in_index.sum(), d), in position order
    tail_pos: npt.NDArray[np.int64] | None = None
    _paths: Any = None  # pa.Table of path, extra_paths (lazy, for path globs)
    masks: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (kind, expr) -> (n,) bool
    subset: tuple[Any, np.ndarray, Vectors] | None = None  # (filter key, positions, vectors): last filtered subset
    _sorted_seq: npt.NDArray[np.int64] | None = None  # seq[order], made on first lookup

    @property
    def n(self) -> int:
        return int(self.seq.shape[0])

    def lookup(self, seqs: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """``(positions, found)``: positions of the ``seqs`` present, and which of ``seqs`` were."""
        seqs = np.asarray(seqs, dtype=np.int64)
        if self.n == 0:
            return np.zeros(0, np.int64), np.zeros(len(seqs), bool)
        if self._sorted_seq is None:
            self._sorted_seq = self.seq[self.order]
        sorted_seq = self._sorted_seq
        idx = np.clip(np.searchsorted(sorted_seq, seqs), 0, self.n - 1)
        found = sorted_seq[idx] == seqs
        return self.order[idx[found]], found

    def positions_of(self, seqs: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Positions of the ``seqs`` that are present (missing ones dropped)."""
        return self.lookup(seqs)[0]

    def paths(self):
        if self._paths is None:
            self._paths = self.dataset.to_table(columns=["path", "extra_paths"])
        return self._paths


# -- the store -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRecord:
    """What a store records of the model that fills it (in ``meta.json``)."""

    name: str  # a model name or folder, as given to load_model
    dim: int  # vector dimension
    modalities: tuple[str, ...]  # "image", "text"
    weights: str | None = None  # a local checkpoint, for open_clip:ARCH models
    grid: bool = False  # whether it embeds a grid of cells (then the store keeps them)


def check_can_create(root: Path | S3Path) -> None:
    """Raise :class:`StoreError` unless a new store can be made at ``root`` (missing, or an empty folder)."""
    if root.exists() and not root.is_dir():
        raise StoreError(f"cannot create a store at {root}: it is a file, not a folder")
    if root.is_dir() and any(p.name != sch.LOCK_FILE for p in root.iterdir()):
        raise StoreError(f"cannot create a store at {root}: the folder is not empty and has no {sch.META_FILE}")


def same_model(a: str, b: str) -> bool:
    """Whether two model names mean the same model (equal, or the same folder)."""
    if a == b:
        return True
    pa_, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa_.exists() and pb.exists() and pa_.resolve() == pb.resolve()


def _check_compatible(root: Path, meta: dict[str, Any], model: str | None) -> None:
    version = meta.get("schema_version")
    if not isinstance(version, int) or version > sch.SCHEMA_VERSION:
        raise StoreError(
            f"store {root} has schema version {version}, newer than this clipsearch reads "
            f"({sch.SCHEMA_VERSION}); upgrade clipsearch to use it"
        )
    if model is not None and not same_model(model, meta["model"]):
        raise StoreError(
            f"store {root} was built with model {meta['model']}; use --model {meta['model']} or a new --store"
        )


class Neighbours(list):
    """``(position, score)`` pairs from :meth:`Store.nearest`, with the snapshot they index."""

    def __init__(self, pairs: list[tuple[int, float]], snapshot: _Snapshot):
        super().__init__(pairs)
        self.snapshot = snapshot


class _ReadTable:
    """A table of the store read with pylance alone, always at its newest version (as lancedb
    reads with ``read_consistency_interval=0``). Importing lancedb takes about a second, most of
    what a text search costs as a process, so it is imported only when something else is asked
    of the table (a write, an optimisation): that goes to the lancedb table, opened then."""

    def __init__(self, uri: Path | S3Path, open_table: Any, storage_options: dict[str, str] | None = None):
        import lance

        self._uri = str(uri)
        self._options = storage_options
        self._head = lance.dataset(self._uri, storage_options=storage_options)
        self._open_table = open_table
        self._table: Any = None
        self._lock = threading.Lock()

    @property
    def version(self) -> int:
        return int(self._head.latest_version)

    def to_lance(self) -> Any:
        """The table's newest version as a ``lance.LanceDataset``."""
        head = self._head
        latest = head.latest_version
        if latest != head.version:
            import lance

            head = self._head = lance.dataset(self._uri, version=latest, storage_options=self._options)
        return head

    def count_rows(self, filter: str | None = None) -> int:
        return int(self.to_lance().count_rows(filter))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        with self._lock:
            if self._table is None:
                self._table = self._open_table()
        return getattr(self._table, name)


class Store:
    """A persistent table of images and texts with their vectors: rows in, nearest rows out.

    It knows nothing of how vectors are made: it records its model's name and dimension, and
    :class:`clipsearch.collection.Collection` pairs it with the encoder (what
    :func:`clipsearch.open_store` returns). Open one with :meth:`open` or :meth:`create`.
    Writes happen inside :meth:`writing` (one writing process at a time), one atomic commit each.
    """

    def __init__(self, root: Path | S3Path, meta: dict[str, Any], *, ann_threshold: int | None = None):
        self.root = root
        self.meta = meta
        self.ann_threshold = (
            int(ann_threshold) if ann_threshold is not None else ann_threshold_from_env(DEFAULT_ANN_THRESHOLD)
        )
        if self.ann_threshold < 1:
            raise ValueError(f"ann_threshold must be a positive number of rows, got {self.ann_threshold}")
        self.storage_options = root.storage_options if isinstance(root, S3Path) else None  # Lance's, for s3://
        self._lancedb: Any = None  # connected on first write (see _ReadTable)
        try:
            self._items = self._open_table(sch.ITEMS_TABLE, sch.items_schema(self.dim))
            self._files = self._open_table(sch.FILES_TABLE, sch.files_schema())
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - Lance raises ValueError/OSError for a broken table
            raise StoreError(
                f"store {root} cannot be read ({_lance_message(exc)}); check and repair it with: "
                f"clipsearch check --store {root} --repair"
            ) from None
        self._cells = None  # opened on first use: only stores of models with a grid have it
        self._no_cells_at: int | None = None  # the items version at which no cells table existed
        self._cell_rows: tuple[int, dict[str, int]] | None = None  # (cells table version, id -> row)
        self._snapshot: _Snapshot | None = None
        self._lock_fd: int | S3Lock | None = None  # the lock held: its fd, or the lock object on S3
        self._thread_lock = threading.RLock()
        self._next_seq: int | None = None
        self.last_plan = ""  # how the last nearest() was answered: "exact", "ann", "ann-subset-exact"

    @classmethod
    def exists(cls, uri: str | os.PathLike[str] | None) -> bool:
        """Whether a store (its ``meta.json``) is at ``uri``."""
        return sch.read_meta(resolve_store_uri(uri)) is not None

    @classmethod
    def open(
        cls, uri: str | os.PathLike[str] | None = None, *, model: str | None = None, ann_threshold: int | None = None
    ) -> Store:
        """The store at ``uri`` (a folder, a ``file://`` URI, or None for :func:`default_store_path`).

        Args:
            model: a model name the store must have been built with (checked, not loaded).
            ann_threshold: rows at which an ANN index is used; default ``$CLIPSEARCH_ANN_THRESHOLD``
                or :data:`~clipsearch.store.ann.DEFAULT_ANN_THRESHOLD`.

        Raises:
            StoreError: no store there, another model, or a newer schema version.
        """
        root = resolve_store_uri(uri)
        meta = sch.read_meta(root)
        if meta is None:
            raise StoreError(f"no store at {root}; build one with: clipsearch index PATH --store {root}")
        _check_compatible(root, meta, model)
        return cls(root, meta, ann_threshold=ann_threshold)

    @classmethod
    def create(
        cls, uri: str | os.PathLike[str] | None, model: ModelRecord, *, ann_threshold: int | None = None
    ) -> Store:
        """A new, empty store at ``uri`` for vectors of ``model``.

        Raises:
            StoreError: ``uri`` is a file or a folder with other things in it.
        """
        root = resolve_store_uri(uri)
        check_can_create(root)
        root.mkdir(parents=True, exist_ok=True)
        meta = sch.new_meta(model.name, model.dim, tuple(model.modalities), model.weights, grid=model.grid)
        sch.write_json_atomic(root / sch.META_FILE, meta)
        return cls(root, meta, ann_threshold=ann_threshold)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r}, model={self.model_name!r}, dim={self.dim})"

    # -- basics ------------------------------------------------------------------------------
    @property
    def local_dir(self) -> Path:
        """A local folder for what a server keeps beside the store (thumbnails, uploads): the
        store's own folder, or for a store on S3 a folder of the user's cache named after it."""
        if isinstance(self.root, Path):
            return self.root
        import platformdirs

        return Path(platformdirs.user_cache_dir("clipsearch")) / "s3" / self.root.bucket / self.root.key

    @property
    def model_name(self) -> str:
        return str(self.meta["model"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def version(self) -> int:
        """The items table's version; every committed write increments it."""
        return int(self._items.version)

    @property
    def _db(self) -> Any:
        """The lancedb connection, made on first use: reads go through :class:`_ReadTable`."""
        if self._lancedb is None:
            from datetime import timedelta

            import lancedb

            self._lancedb = lancedb.connect(
                str(self.root / sch.LANCE_DIR), read_consistency_interval=timedelta(0), storage_options=self.storage_options
            )
        return self._lancedb

    def _existing_table(self, name: str) -> _ReadTable:
        """The table ``name`` read with pylance (lancedb opened for it only when written).

        Raises:
            FileNotFoundError: there is no such table.
        """
        uri = self.root / sch.LANCE_DIR / f"{name}.lance"
        if not (uri / "_versions").is_dir():
            raise FileNotFoundError(uri)
        return _ReadTable(uri, lambda: self._db.open_table(name), self.storage_options)

    def _open_table(self, name: str, schema: pa.Schema):
        try:
            return self._existing_table(name)
        except FileNotFoundError:
            pass
        try:
            return self._db.create_table(name, schema=schema, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create table {name!r} in store {self.root}: {exc}") from None

    def __len__(self) -> int:
        return int(self._items.count_rows())

    def count(self, modality: str = "any") -> int:
        """Items in the store, of one modality or all."""
        _check_modality(modality)
        if modality == "any":
            return len(self)
        return int(self._items.count_rows(f"modality = '{modality}'"))

    # -- reading rows ------------------------------------------------------------------------
    def get(self, item_id: str, *, with_vector: bool = False) -> Item | None:
        """The item with id ``item_id`` (or a unique prefix of at least 4 characters), or None.

        Raises:
            StoreError: the prefix matches several items.
        """
        item_id = item_id.strip().lower()
        if not item_id or any(c not in "0123456789abcdef" for c in item_id):
            return None
        cols = None if with_vector else _columns_without_vector()
        if len(item_id) >= sch.ID_HEX:
            rows = self._dataset().to_table(columns=cols, filter=f"id = '{item_id[: sch.ID_HEX]}'").to_pylist()
        elif len(item_id) >= 4:
            rows = self._dataset().to_table(columns=cols, filter=f"starts_with(id, '{item_id}')").to_pylist()
            if len(rows) > 1:
                raise StoreError(f"id prefix {item_id!r} matches {len(rows)} items; give more characters")
        else:
            return None
        return Item.from_row(sch.real_row(rows[0])) if rows else None

    def items(self, ids: Sequence[str], *, with_vector: bool = False) -> list[Item]:
        """The items with these ids, in the order given (unknown ids are skipped)."""
        rows = self.rows_by_id(ids, with_vector=with_vector)
        return [Item.from_row(rows[i]) for i in ids if i in rows]

    def to_arrow(self, columns: Sequence[str] | None = None, where: str | None = None) -> pa.Table:
        """The items table (or some columns / rows of it) as an Arrow table."""
        return self._dataset().to_table(columns=list(columns) if columns else None, filter=where)

    def _dataset(self):
        return self._items.to_lance()

    def rows_by_id(self, ids: Iterable[str], *, with_vector: bool = True) -> dict[str, dict[str, Any]]:
        """Rows of these ids as dicts (id -> row; unknown ids left out), with the vector unless told not."""
        ids = sorted(set(ids))
        out: dict[str, dict[str, Any]] = {}
        cols = None if with_vector else _columns_without_vector()
        ds = self._dataset()
        for i in range(0, len(ids), _IN_CHUNK):
            chunk = ids[i : i + _IN_CHUNK]
            table = ds.to_table(columns=cols, filter=f"id IN ({_sql_list(chunk)})")
            for row in table.to_pylist():
                out[row["id"]] = sch.real_row(row)
        return out

    def text_vectors_by_sha(self, shas: Iterable[str]) -> dict[str, Vectors]:
        """Stored vectors ``(dim,)`` of text items with these SHA-256s of their text: sha -> vector."""
        out: dict[str, Vectors] = {}
        shas_l = sorted(set(shas))
        ds = self._dataset()
        for i in range(0, len(shas_l), _IN_CHUNK):
            chunk = shas_l[i : i + _IN_CHUNK]
            table = ds.to_table(columns=["sha256", "vector"], filter=f"modality = 'text' AND sha256 IN ({_sql_list(chunk)})")
            for sha, vec in zip(table.column("sha256").to_pylist(), table.column("vector").to_pylist()):
                out[sha] = np.asarray(vec, dtype=np.float32)
        return out

    def vectors(self, ids: Sequence[str]) -> Vectors:
        """The stored unit vectors ``(len(ids), dim)`` of these ids, in order.

        Raises:
            StoreError: an id is not in the store.
        """
        rows = self.rows_by_id(ids, with_vector=True)
        missing = [i for i in ids if i not in rows]
        if missing:
            raise StoreError(f"no item with id {missing[0]!r} in store {self.root}")
        if not ids:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([np.asarray(rows[i]["vector"], dtype=np.float32) for i in ids])

    # -- grid cells --------------------------------------------------------------------------
    def _cells_table(self, *, create: bool = False):
        """The cells table, or None when it does not exist (and ``create`` is False)."""
        if self._cells is None:
            if create:
                self._cells = self._open_table(sch.CELLS_TABLE, sch.cells_schema())
            elif self._no_cells_at != self.version:  # looked again once the items change
                try:
                    self._cells = self._existing_table(sch.CELLS_TABLE)
                except (FileNotFoundError, ValueError):
                    self._no_cells_at = self.version
        return self._cells

    @property
    def has_cells(self) -> bool:
        """Whether the store keeps grid cells for its images (models with a grid write them)."""
        return self.count_cells() > 0

    def count_cells(self) -> int:
        """Images whose grid cells the store keeps (rows of the cells table)."""
        table = self._cells_table()
        return 0 if table is None else int(table.count_rows())

    def record_grid(self, has_grid: bool) -> None:
        """Write into ``meta.json`` whether the store's model has a grid (stores made before
        the header held it), so that indexing need not load the model to find out again."""
        self.update_meta(grid=bool(has_grid))

    def update_meta(self, **changes: Any) -> None:
        """Set (or, with None, remove) keys of ``meta.json``, atomically; under the write lock."""
        self._require_lock()
        meta = {**self.meta, **changes}
        self.meta = {k: v for k, v in meta.items() if v is not None}
        sch.write_json_atomic(self.root / sch.META_FILE, self.meta)

    def probe(self) -> dict[str, Any] | None:
        """The model's probe recorded with the store (see :mod:`clipsearch.models.fingerprint`),
        or None for a store that has none yet (made before stores kept one)."""
        try:
            data = json.loads((self.root / sch.PROBE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("vectors"), dict) else None

    def record_probe(self, vectors: dict[str, list[list[float]]]) -> None:
        """Record the model's probe (atomically; under the write lock)."""
        self._require_lock()
        sch.write_json_atomic(self.root / sch.PROBE_FILE, {"format_version": 1, "model": self.model_name, "vectors": vectors})

    def failed_files(self) -> dict[str, dict[str, Any]]:
        """Image files the last runs could not index: path -> ``{"size", "mtime", "reason"}``.

        Indexing reports such a file again without reading it while its size and mtime stay
        the same (``retry_failed`` reads it anyway). An unreadable record counts as none.
        """
        try:
            data = json.loads((self.root / sch.FAILED_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        files = data.get("files") if isinstance(data, dict) else None
        return files if isinstance(files, dict) else {}

    def record_failed_files(self, files: dict[str, dict[str, Any]]) -> None:
        """Replace :meth:`failed_files` (atomically; under the write lock)."""
        self._require_lock()
        sch.write_json_atomic(self.root / sch.FAILED_FILE, {"format_version": 1, "files": files})

    def cell_ids(self) -> set[str]:
        """Ids of the images whose grid cells the store keeps."""
        table = self._cells_table()
        if table is None:
            return set()
        return set(table.to_lance().to_table(columns=["id"]).column("id").to_pylist())

    def cells(self, ids: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]:
        """The stored grids of these image ids: id -> ``(rows, cols, dim)`` float32 unit cell
        vectors. Ids without stored cells are left out."""
        table = self._cells_table()
        if table is None or not ids:
            return {}
        ds = table.to_lance()
        if self._cell_rows is None or self._cell_rows[0] != ds.version:
            # id -> row, read once per version of the table: taking rows by position is a few
            # random reads, where a filter on id would scan the whole id column each query
            row_ids = ds.to_table(columns=["id"]).column("id").to_pylist()
            self._cell_rows = (ds.version, {item_id: i for i, item_id in enumerate(row_ids)})
        where = self._cell_rows[1]
        wanted = sorted({i for i in ids if i in where}, key=where.__getitem__)
        if not wanted:
            return {}
        rows = ds.take([where[i] for i in wanted], columns=["id", "rows", "cols", "cells"])
        column = rows.column("cells").combine_chunks()
        values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        offsets = column.offsets.to_numpy()
        out: dict[str, npt.NDArray[np.float32]] = {}
        for n, (item_id, r, c) in enumerate(
            zip(rows.column("id").to_pylist(), rows.column("rows").to_pylist(), rows.column("cols").to_pylist())
        ):
            grid = values[offsets[n] : offsets[n + 1]]
            if grid.size == r * c * self.dim:  # a row of another dimension is not this model's
                out[item_id] = grid.reshape(r, c, self.dim)
        return out

    def commit_cells(self, ids: Sequence[str], grids: npt.ArrayLike) -> None:
        """Upsert the grids ``(len(ids), rows, cols, dim)`` of image items (one commit).

        :class:`~clipsearch.ingest` writes a batch's cells before its items, so a crash between
        the two leaves cells without an item (never looked up), not an item without cells.
        """
        import pyarrow as pa

        self._require_lock()
        g = np.asarray(grids, dtype=np.float32)
        if g.ndim != 4 or g.shape[0] != len(ids) or g.shape[-1] != self.dim:
            raise ValueError(f"grids must be ({len(ids)}, rows, cols, {self.dim}), got {g.shape}")
        if not len(ids):
            return
        if not np.all(np.isfinite(g)):
            raise ValueError("refusing to store grid cells with NaN or infinite values")
        n, r, c, d = g.shape
        schema = sch.cells_schema()
        values = pa.array(g.astype(np.float16).reshape(-1), type=pa.float16())
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * (r * c * d), type=pa.int32())
        data = pa.Table.from_arrays(
            [
                pa.array(list(ids), pa.string()),
                pa.array([r] * n, pa.int32()),
                pa.array([c] * n, pa.int32()),
                pa.ListArray.from_arrays(offsets, values),
            ],
            schema=schema,
        )
        table = self._cells_table(create=True)
        table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(data)

    def _delete_cells(self, ids: Iterable[str]) -> None:
        ids = sorted(set(ids))
        table = self._cells_table() if ids else None
        if table is None:
            return
        for i in range(0, len(ids), _IN_CHUNK):
            table.delete(f"id IN ({_sql_list(ids[i : i + _IN_CHUNK])})")

    # -- search ------------------------------------------------------------------------------
    def nearest(
        self,
        query: npt.NDArray[np.float32],
        k: int,
        *,
        modality: str = "any",
        where: str | None = None,
        path_glob: str | None = None,
        exact: bool = False,
        recall: float | None = None,
    ) -> list[tuple[int, float]]:
        """``(position, score)`` of the ``k`` nearest rows to a unit vector ``(dim,)``, best first.

        ``recall`` picks the ANN index's operating point when it has one: 0.95 (the default, the
        fast one) or 0.99, the recall@10 each was calibrated to on held-out rows; ``exact=True``
        scans every vector. Positions index the snapshot that was searched, which the result carries, so
        :meth:`hits_at` reads the right rows even if another thread's write lands in between.
        """
        _check_modality(modality)
        recall = check_recall(recall)
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"query vector has {q.shape[0]} dimensions; this store holds {self.dim}-d vectors")
        snap = self._current_snapshot(exact=exact)
        return Neighbours(self._nearest_in(snap, q, k, modality, where, path_glob, exact, recall), snap)

    def _nearest_in(
        self,
        snap: _Snapshot,
        q: np.ndarray,
        k: int,
        modality: str,
        where: str | None,
        path_glob: str | None,
        exact: bool,
        recall: float,
    ) -> list[tuple[int, float]]:
        self.last_plan = "exact"
        if snap.n == 0 or k <= 0:
            return []
        mask = self._filter_mask(snap, modality, where, path_glob)
        if mask is not None and not mask.any():
            return []
        if snap.ann is None or exact:
            if snap.vectors is None:
                snap = self._load_vectors(snap)
            scores = exact_scores(snap.vectors, q)
            if mask is not None:
                scores = np.where(mask, scores, -np.inf).astype(np.float32)
            best = top_k(scores, k)
            return [(int(p), float(scores[p])) for p in best if np.isfinite(scores[p])]
        return self._ann_nearest(snap, q, k, mask, recall, key=(modality, where, path_glob))

    def _ann_nearest(
        self, snap: _Snapshot, q: np.ndarray, k: int, mask: np.ndarray | None, recall: float, *, key: Any = None
    ) -> list[tuple[int, float]]:
        ann, in_index, tail_pos = snap.ann, snap.in_index, snap.tail_pos
        assert ann is not None and in_index is not None and tail_pos is not None
        assert snap.ann_id is not None and snap.ann_pos is not None
        cand_pos: list[np.ndarray] = []
        cand_score: list[np.ndarray] = []
        # the tail (rows newer than the index): exact
        if len(tail_pos):
            t_scores = exact_scores(snap.tail_vectors, q)
            keep = mask[tail_pos] if mask is not None else np.ones(len(tail_pos), bool)
            cand_pos.append(tail_pos[keep])
            cand_score.append(t_scores[keep])
        in_idx = in_index if mask is None else (in_index & mask)
        n_allowed = int(in_idx.sum()) if mask is not None else ann.rows
        self.last_plan = "ann"
        if n_allowed and mask is not None and n_allowed <= self.ann_threshold:
            self.last_plan = "ann-subset-exact"
            # a small filtered subset: exact over vectors reconstructed from the index, kept for
            # the next query with the same filter
            if snap.subset is not None and snap.subset[0] == key:
                _, pos, vecs = snap.subset
            else:
                pos = np.flatnonzero(in_idx)
                vecs = ann.reconstruct(snap.ann_id[pos])
                snap.subset = (key, pos, vecs)
            cand_pos.append(pos)
            cand_score.append(exact_scores(vecs, q))
        elif n_allowed:
            allowed = None
            nprobe = None
            if mask is not None:
                allowed = np.zeros(len(ann.labels), bool)
                allowed[snap.ann_id[in_idx]] = True
                # probe more lists when a filter leaves a fraction of each list
                nprobe = int(np.ceil(ann.nprobe_for(recall) * ann.rows / n_allowed))
            scores, ids = ann.search(q, k, recall=recall, allowed=allowed, nprobe=nprobe)
            pos = snap.ann_pos[ids]
            cand_pos.append(pos[pos >= 0])
            cand_score.append(scores[pos >= 0])
        if not cand_pos:
            return []
        pos = np.concatenate(cand_pos)
        scores = np.concatenate(cand_score).astype(np.float32)
        best = top_k(scores, k)
        return [(int(pos[i]), float(scores[i])) for i in best]

    def hits_at(self, found: Sequence[tuple[int, float]], *, with_vector: bool = False) -> list[Hit]:
        """Turn ``(position, score)`` pairs from :meth:`nearest` into :class:`Hit` objects
        (with their stored vectors when asked)."""
        snap = found.snapshot if isinstance(found, Neighbours) else self._snapshot
        if not found or snap is None:
            return []
        positions = [p for p, _ in found]
        columns = _columns_without_vector() + (["vector"] if with_vector else [])
        rows = snap.dataset.take(positions, columns=columns).to_pylist()
        hits = []
        for row, (_, score) in zip(rows, found):
            item = Item.from_row(sch.real_row(row))
            hits.append(Hit(**{f.name: getattr(item, f.name) for f in fields(Item)}, score=score))
        return hits

    def _filter_mask(
        self, snap: _Snapshot, modality: str, where: str | None, path_glob: str | None
    ) -> np.ndarray | None:
        mask: np.ndarray | None = None

        def both(m: np.ndarray) -> np.ndarray:
            return m if mask is None else (mask & m)

        if modality != "any":
            mask = both(snap.is_image if modality == "image" else ~snap.is_image)
        if where:
            m = snap.masks.get(("where", where))
            if m is None:
                m = np.zeros(snap.n, bool)
                m[snap.positions_of(self._where_seqs(snap, where))] = True
            mask = both(_remember(snap.masks, ("where", where), m))
        if path_glob:
            m = snap.masks.get(("glob", path_glob))
            if m is None:
                m = _glob_mask(snap.paths(), path_glob)
            mask = both(_remember(snap.masks, ("glob", path_glob), m))
        return mask

    def _where_seqs(self, snap: _Snapshot, where: str) -> np.ndarray:
        try:
            table = snap.dataset.to_table(columns=["seq"], filter=where)
        except Exception as exc:  # noqa: BLE001 - Lance raises ValueError/OSError/... for bad SQL
            raise ValueError(f"bad --where expression {where!r}: {_lance_message(exc)}") from None
        return table.column("seq").to_numpy().astype(np.int64)

    # -- snapshots ---------------------------------------------------------------------------
    def _current_snapshot(self, *, exact: bool = False) -> _Snapshot:
        version = self.version
        snap = self._snapshot
        if snap is None or snap.version != version or snap.ann_stamp != self._ann_stamp():
            snap = self._load_snapshot(version)
            self._snapshot = snap
        if (exact or snap.ann is None) and snap.vectors is None:
            snap = self._load_vectors(snap)
        return snap

    def _ann_stamp(self) -> tuple[int, int] | None:
        try:
            st = (self._ann_dir() / "ann.json").stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _load_snapshot(self, version: int) -> _Snapshot:
        import lance

        stamp = self._ann_stamp()
        ds = lance.dataset(str(self._items_uri()), version=version, storage_options=self.storage_options)
        table = ds.to_table(columns=["seq", "id", "modality"])
        seq = table.column("seq").to_numpy().astype(np.int64)
        snap = _Snapshot(
            version=version,
            ann_stamp=stamp,
            dataset=ds,
            seq=seq,
            ids=np.asarray(table.column("id").to_pylist(), dtype=object),
            is_image=np.asarray(table.column("modality").to_numpy(zero_copy_only=False) == "image", dtype=bool),
            order=np.argsort(seq, kind="stable"),
        )
        ann = AnnIndex.load(self._ann_dir()) if stamp is not None else None
        if ann is not None and ann.d != self.dim:
            ann = None
        if ann is not None:
            pos, found = snap.lookup(ann.labels)  # removed rows (label -1) are never found
            ann.remove(ann.labels[(ann.labels >= 0) & ~found])  # deleted since the index was written
            ann_pos = np.full(len(ann.labels), -1, np.int64)
            ann_pos[found] = pos
            ann_id = np.full(snap.n, -1, np.int64)
            ann_id[pos] = np.flatnonzero(found)
            in_index = ann_id >= 0
            tail_pos = np.flatnonzero(~in_index).astype(np.int64)
            snap.ann, snap.in_index, snap.tail_pos, snap.ann_id, snap.ann_pos = ann, in_index, tail_pos, ann_id, ann_pos
            snap.tail_vectors = self._vectors_at(ds, tail_pos)
        return snap

    def _load_vectors(self, snap: _Snapshot) -> _Snapshot:
        col = snap.dataset.to_table(columns=["vector"]).column("vector")
        snap.vectors = _vector_matrix(col, self.dim)
        return snap

    def _vectors_at(self, ds, positions: np.ndarray) -> Vectors:
        if len(positions) == 0:
            return np.zeros((0, self.dim), np.float32)
        col = ds.take(positions.tolist(), columns=["vector"]).column("vector")
        return _vector_matrix(col, self.dim)

    def _items_uri(self) -> Path | S3Path:
        return self.root / sch.LANCE_DIR / f"{sch.ITEMS_TABLE}.lance"

    def _ann_dir(self) -> Path | S3Path:
        return self.root / sch.ANN_DIR

    # -- writing -------------------------------------------------------------------------------
    @contextmanager
    def writing(self) -> Iterator[Store]:
        """Hold the store's write lock (one writing process at a time) for the block.

        A full disk inside the block becomes one :class:`StoreError` that says so: each commit
        is atomic, so everything committed before it is kept.

        Raises:
            StoreError: another process is writing to this store, or the disk filled up.
        """
        with self._thread_lock:  # threads sharing this Store take turns; re-entrant per thread
            if self._lock_fd is not None:
                yield self
                return
            with self._process_lock():
                try:
                    yield self
                except OSError as exc:
                    why = disk_full_reason(exc)
                    if why is None:
                        raise
                    raise StoreError(
                        f"the disk is full ({why}) while writing store {self.root}; everything committed before is "
                        "kept: free some space and run the same command again"
                    ) from None

    @contextmanager
    def _process_lock(self) -> Iterator[None]:
        with write_lock(self.root) as fd:
            self._lock_fd = fd
            self._next_seq = None
            try:
                yield
            finally:
                self._lock_fd = None
                self._next_seq = None

    def _require_lock(self) -> None:
        if self._lock_fd is None:
            raise RuntimeError("store writes must happen inside `with store.writing():`")
        if isinstance(self._lock_fd, S3Lock) and self._lock_fd.lost:
            raise StoreError(
                f"lost the write lock of store {self.root}: it expired and another writer took it over; "
                "nothing more is written (run the same command again when that writer is done)"
            )

    def allocate_seqs(self, n: int) -> npt.NDArray[np.int64]:
        """``n`` fresh ``seq`` labels (under the write lock)."""
        self._require_lock()
        if self._next_seq is None:
            seqs = self._dataset().to_table(columns=["seq"]).column("seq").to_numpy()
            self._next_seq = int(seqs.max()) + 1 if len(seqs) else 0
            meta_max = read_index_meta(self._ann_dir())
            if meta_max:  # never reuse a label an index file may still hold
                self._next_seq = max(self._next_seq, int(meta_max.get("max_seq", -1)) + 1)
        out = np.arange(self._next_seq, self._next_seq + n, dtype=np.int64)
        self._next_seq += n
        return out

    def commit_items(self, rows: list[dict[str, Any]], vectors: Vectors | None, delete_ids: Iterable[str] = ()) -> None:
        """Upsert ``rows`` (with ``vectors`` ``(len(rows), dim)``) and delete ``delete_ids``, atomically.

        Rows are dicts of :data:`~clipsearch.store.schema.ITEM_COLUMNS` (``vector`` excluded);
        one LanceDB commit, so a crash leaves either all of it or none.
        """
        self._require_lock()
        delete_ids = sorted(set(delete_ids) - {r["id"] for r in rows})
        if not rows and not delete_ids:
            return
        data = self._arrow_rows(rows, vectors)
        if not rows:
            for i in range(0, len(delete_ids), _IN_CHUNK):  # pure deletes: one commit per chunk
                self._items.delete(f"id IN ({_sql_list(delete_ids[i : i + _IN_CHUNK])})")
        else:
            merge = self._items.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
            if delete_ids:
                merge = merge.when_not_matched_by_source_delete(f"id IN ({_sql_list(delete_ids)})")
            merge.execute(data)
        self._delete_cells(delete_ids)  # after the items: a crash here leaves unused rows only

    def _arrow_rows(self, rows: list[dict[str, Any]], vectors: Vectors | None) -> pa.Table:
        import pyarrow as pa

        schema = sch.items_schema(self.dim)
        meta_schema = pa.schema([f for f in schema if f.name != "vector"])
        stored = [sch.stored_row(r) for r in rows]  # file names that are not UTF-8, escaped
        cols = {name: [r.get(name) for r in stored] for name in meta_schema.names}
        table = pa.Table.from_pydict(cols, schema=meta_schema)
        vecs = (
            np.zeros((0, self.dim), np.float32) if vectors is None else np.ascontiguousarray(vectors, dtype=np.float32)
        )
        if vecs.shape != (len(rows), self.dim):
            raise ValueError(f"vectors have shape {vecs.shape}; expected ({len(rows)}, {self.dim})")
        if not np.all(np.isfinite(vecs)):
            raise ValueError("refusing to store vectors with NaN or infinite values")
        flat = pa.array(vecs.reshape(-1), type=pa.float32())
        return table.append_column(schema.field("vector"), pa.FixedSizeListArray.from_arrays(flat, self.dim))

    def commit_files(self, rows: list[dict[str, Any]], delete_paths: Iterable[str] = ()) -> None:
        """Upsert rows of the files table (``path, kind, size, mtime, sha256``) and delete paths."""
        import pyarrow as pa

        self._require_lock()
        by_path = {sch.stored_path(r["path"]): {**r, "path": sch.stored_path(r["path"])} for r in rows}
        delete_paths = sorted({sch.stored_path(p) for p in delete_paths} - by_path.keys())
        if by_path:
            data = pa.Table.from_pylist(list(by_path.values()), schema=sch.files_schema())
            merge = self._files.merge_insert("path").when_matched_update_all().when_not_matched_insert_all()
            if delete_paths and len(delete_paths) <= _IN_CHUNK:
                merge = merge.when_not_matched_by_source_delete(f"path IN ({_sql_list(delete_paths)})")
                delete_paths = []
            merge.execute(data)
        for i in range(0, len(delete_paths), _IN_CHUNK):
            self._files.delete(f"path IN ({_sql_list(delete_paths[i : i + _IN_CHUNK])})")

    def file_records(self) -> dict[str, dict[str, Any]]:
        """Every tracked input file: path -> {kind, size, mtime, sha256}."""
        table = self._files.to_lance().to_table()
        records = {}
        for r in table.to_pylist():
            r["path"] = sch.real_path(r["path"])
            records[r["path"]] = r
        return records

    def compact(self) -> None:
        """Merge the small fragments many batch commits leave, and delete older versions.

        Each commit is a table version that keeps the files it replaced, so a store would hold
        its rows about twice over after a run. What is kept of each table: its newest version
        and a copy of it (``restore``, a second manifest over the same files, so it costs no
        space), so that a manifest cut short by a hard stop has a whole version to fall back
        to (:mod:`clipsearch.store.check`). Under the write lock no other writer has files in
        flight, so every file no kept version uses can go (``delete_unverified``). A reader
        still on a deleted version re-reads the newest at its next query.
        """
        from datetime import timedelta

        import lance

        self._require_lock()
        cells = self._cells_table()
        if cells is not None:  # cells a crash left behind without their item
            kept = set(self._dataset().to_table(columns=["id"]).column("id").to_pylist())
            self._delete_cells(self.cell_ids() - kept)
        for table in (self._items, self._files, cells):
            if table is None:
                continue
            ds = table.to_lance()
            if len(ds.get_fragments()) > 16 or ds.stats.dataset_stats()["num_deleted_rows"] > 0:
                ds.optimize.compact_files()
            opts = self.storage_options
            ds = lance.dataset(ds.uri, storage_options=opts)
            versions = ds.versions()
            if len(versions) > 1 and not _same_files(
                ds, lance.dataset(ds.uri, version=versions[-2]["version"], storage_options=opts)
            ):
                ds.restore()  # the newest version again: the fallback the cleanup below keeps
                ds = lance.dataset(ds.uri, storage_options=opts)
            ds.cleanup_old_versions(older_than=timedelta(0), retain_versions=2, delete_unverified=True)

    def rows_bytes(self) -> int:
        """Bytes the current rows take on disk (items, files and cells, every column; no old
        versions, no deleted rows): what :meth:`stats`' ``size_bytes`` is compared with."""
        total = 0
        for table in (self._items, self._files, self._cells_table()):
            if table is not None:
                total += sum(int(f.bytes_on_disk) for f in table.to_lance().stats.data_stats().fields)
        return total

    # -- ANN maintenance ---------------------------------------------------------------------------
    def update_index(self, *, force: bool = False) -> str:
        """Build, extend or drop the ANN index to match the table; returns what it did.

        Builds when the store reaches ``ann_threshold`` rows, retrains when it has doubled or
        halved since training or a fifth of the index's rows are deleted ones, folds in new and
        deleted rows when they exceed 2% of it (or ``force``), drops the index below the
        threshold. Searches (from other threads and processes) keep being answered by the
        previous index, or exactly, while it builds: they take no lock, and the new index is
        used once its ``ann.json`` is in place.
        """
        with self.writing():
            folder = self._ann_dir()
            n = len(self)
            meta = read_index_meta(folder)  # None for an index of an older kind: rebuilt
            if n < self.ann_threshold:
                if meta is not None or read_any_index_meta(folder) is not None:
                    remove_index(folder)
                    return "dropped"
                return "exact"
            ds = self._dataset()
            if meta is None or force or n >= 2 * int(meta["trained_rows"]) or 2 * n <= int(meta["trained_rows"]):
                return self._build_index(ds, folder)
            ann = AnnIndex.load(folder)
            if ann is None or ann.d != self.dim:
                return self._build_index(ds, folder)
            seq_all = ds.to_table(columns=["seq"]).column("seq").to_numpy().astype(np.int64)
            held = ann.labels[ann.labels >= 0]
            gone = np.setdiff1d(held, seq_all, assume_unique=True)
            new_pos = np.flatnonzero(~np.isin(seq_all, held, assume_unique=True))
            if len(gone) + len(new_pos) <= max(1000, 0.02 * n):
                return "current"
            if ann.removed + len(gone) > 0.2 * len(ann.labels):
                return self._build_index(ds, folder)  # masked-out rows would cost every search
            ann.remove(gone)
            ann.add(self._vectors_at(ds, new_pos), seq_all[new_pos])
            ann.save(folder, {"dim": self.dim, "model": self.model_name})
            return "updated"

    def _build_index(self, ds, folder: Path) -> str:
        table = ds.to_table(columns=["seq", "vector"])
        seqs = table.column("seq").to_numpy().astype(np.int64)
        vecs = _vector_matrix(table.column("vector"), self.dim)
        del table
        ann = build_index(vecs, seqs)
        del vecs
        ann.save(folder, {"dim": self.dim, "model": self.model_name})
        return "built"

    def index_state(self) -> dict[str, Any]:
        """What search will use: ``{"kind": "exact"}`` or the ANN index's settings and coverage."""
        meta = read_index_meta(self._ann_dir())
        n = len(self)
        if meta is None:
            return {"kind": "exact", "rows": n, "threshold": self.ann_threshold}
        default = next((p for p in meta["points"] if p["recall"] == DEFAULT_RECALL), meta["points"][0])
        return {
            "kind": str(meta["kind"]),
            "rows": n,
            "indexed": int(meta["rows"]),
            "nlist": int(meta["nlist"]),
            "nprobe": int(default["nprobe"]),
            "calibration_recall": round(float(default.get("measured", float("nan"))), 4),
            "points": [dict(p) for p in meta["points"]],
            "build_seconds": float(meta.get("build_seconds", 0.0)),
            "threshold": self.ann_threshold,
        }

    # -- stats ---------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counts per modality, model, dimension, size on disk and index state."""
        images = self.count("image")
        total = len(self)
        return {
            "store": str(self.root),
            "count": total,
            "images": images,
            "texts": total - images,
            "model": self.model_name,
            "dim": self.dim,
            "schema_version": int(self.meta["schema_version"]),
            "created": self.meta.get("created"),
            "files": int(self._files.count_rows()),
            "failed_files": len(self.failed_files()),
            "cells": self.count_cells(),
            "size_bytes": self.root.total_size() if isinstance(self.root, S3Path) else _folder_size(self.root),
            "rows_bytes": self.rows_bytes(),
            "table_version": self.version,
            "index": self.index_state(),
            # how the ONNX backend embeds for this store, and its int8 guard (ingest.embed.guard_store)
            "onnx": self.meta.get("onnx"),
        }


# -- helpers ---------------------------------------------------------------------------------


def disk_full_reason(exc: OSError) -> str | None:
    """``"no space left on device"``, ``"file too large"`` or ``"disk quota exceeded"`` when
    ``exc`` says the disk (or a size limit) is full, else None. Lance reports it in its message."""
    import errno

    reasons = {errno.ENOSPC: "no space left on device", errno.EFBIG: "file too large", errno.EDQUOT: "disk quota exceeded"}
    if exc.errno in reasons:
        return reasons[exc.errno]
    text = str(exc)
    for code, why in reasons.items():
        if f"(os error {code})" in text:
            return why
    return None


@contextmanager
def write_lock(root: Path | S3Path) -> Iterator[int | S3Lock]:
    """Hold the store's write lock (one writing process at a time) for the block; yields its fd
    (on S3: the :class:`~clipsearch.store.s3.S3Lock`, see :mod:`clipsearch.store.s3`).

    Raises:
        StoreError: another process (or another Store object in this one) is writing to it.
    """
    import fcntl

    key = str(root.resolve())
    if key in _WRITING:  # lockf does not exclude a second Store in the same process
        raise StoreError(f"store {root} is being written by another Store object in this process")
    if isinstance(root, S3Path):
        with s3_write_lock(root, sch.LOCK_FILE) as held:
            _WRITING.add(key)
            try:
                yield held
            finally:
                _WRITING.discard(key)
        return
    root.mkdir(parents=True, exist_ok=True)
    # POSIX record locks (lockf), not flock: they are not inherited by forked decoding
    # workers, so a killed writer never leaves its lock held by an orphan.
    fd = os.open(root / sch.LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreError(f"store {root} is being written by another process; try again when it finishes") from None
    _WRITING.add(key)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield fd
    finally:
        _WRITING.discard(key)
        fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)



def _same_files(a, b) -> bool:
    """Whether two versions of a dataset read the same data files (and deletions)."""

    def files(ds) -> set[tuple[str, ...]]:
        return {
            (str(f.fragment_id), *(d.path for d in f.data_files()), repr(f.metadata.deletion_file))
            for f in ds.get_fragments()
        }

    return files(a) == files(b)


def _remember(cache: dict, key: tuple[str, str], mask: np.ndarray, limit: int = 16) -> np.ndarray:
    """Keep a filter's mask for this snapshot (repeated queries with one filter pay once)."""
    if key not in cache and len(cache) >= limit:
        cache.pop(next(iter(cache)))
    cache[key] = mask
    return mask


def _check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; use one of {', '.join(MODALITIES)}")


def _columns_without_vector() -> list[str]:
    return list(sch.ITEM_COLUMNS)


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sql_list(values: Iterable[str]) -> str:
    return ", ".join(_sql_str(v) for v in values)


def _vector_matrix(column, dim: int) -> Vectors:
    """A fixed_size_list<float32>[dim] Arrow column -> ``(n, dim)`` float32 array."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if len(column) == 0:
        return np.zeros((0, dim), np.float32)
    values = column.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values.reshape(-1, dim), dtype=np.float32)


def _lance_message(exc: BaseException) -> str:
    """Lance's error text without the Rust source location it appends."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for cut in (", /home/", ", /root/", ", /project/", ", /Users/"):
        if cut in text:
            text = text[: text.index(cut)]
    return text.removeprefix("Invalid user input: ").rstrip(".")


def glob_to_regex(pattern: str) -> str:
    """A shell pattern as an anchored RE2 regex: ``*`` any run (``/`` too), ``?`` one char, ``[...]`` a class."""
    import re

    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))
                continue
            body = pattern[i:j]
            i = j + 1
            neg = body[:1] in ("!", "^")
            if neg:
                body = body[1:]
            body = body.replace("\\", "\\\\")
            out.append("[" + ("^" if neg else "") + body + "]")
        else:
            out.append(re.escape(c))
    return "^" + "".join(out) + "$"


def _glob_mask(paths, pattern: str) -> np.ndarray:
    """Rows whose ``path`` or any of ``extra_paths`` matches ``pattern`` (see :func:`glob_to_regex`)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    regex = glob_to_regex(os.path.expanduser(pattern))
    path_col = paths.column("path")
    hit = pc.fill_null(pc.match_substring_regex(path_col, regex), False).to_numpy(zero_copy_only=False).astype(bool)
    extra = paths.column("extra_paths").combine_chunks()
    if len(extra) and pc.list_value_length(extra).to_numpy(zero_copy_only=False).sum():
        flat = pc.list_flatten(extra)
        parents = pc.list_parent_indices(extra).to_numpy()
        m = pc.fill_null(pc.match_substring_regex(flat, regex), False).to_numpy(zero_copy_only=False).astype(bool)
        hit[np.unique(parents[m])] = True
    del pa
    return hit


def _folder_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def now() -> float:
    return time.time()
