"""The write stage: what the store holds, the changes pending, and one atomic commit per batch."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.errors import StoreError
from clipsearch.ingest.scan import is_under
from clipsearch.ingest.summary import IndexSummary
from clipsearch.store import schema as sch

if TYPE_CHECKING:
    from clipsearch.store import Store


class StoreWriter:
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
        paths = [sch.real_path(p) for p in table.column("path").to_pylist()]
        extra = [[sch.real_path(q) for q in e or []] for e in table.column("extra_paths").to_pylist()]
        sources = [sch.real_path(s) for s in table.column("source").to_pylist()]
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
                if captioning_table(s, [p, *(e or [])]):
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
            self.update_meta(item_id, image_meta({}), count=False)  # every field a table sets, unset
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
        fetched = store.rows_by_id(affected, with_vector=True) if affected else {}
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
                if captioning_table(row.get("source"), [row["path"], *row["extra_paths"]]):
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



def captioning_table(source: str | None, paths: Sequence[str]) -> bool:
    """Whether an image's ``source`` is a table that captions it: set, and not one of its own
    ``paths`` (an image no table names is its own source)."""
    return bool(source) and source not in paths



def image_meta(meta: dict[str, Any]) -> dict[str, Any]:
    extra = meta.get("extra") or {}
    return {
        "source": meta.get("source"),  # the table that captions it now
        "caption": meta.get("caption"),
        "label": meta.get("label"),
        "record": meta.get("record") or None,
        "extra": json.dumps(extra, ensure_ascii=False, sort_keys=True) if extra else None,
    }


def apply_path_removal(w: StoreWriter, paths: Sequence[str], *, prefix: bool) -> int:
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
        return prefix and any(is_under(p, t) for t in targets)

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
    """Remove items by id (or unique prefix) or by path (file or folder); see :meth:`Collection.remove`."""

    summary = IndexSummary()
    with store.writing():
        w = StoreWriter(store, summary)
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
