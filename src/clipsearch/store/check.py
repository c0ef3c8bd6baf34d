"""Checking a store, and repairing what a hard stop, a full disk or a lost file did to it.

:func:`check_store` reads a store at the file level (it works when the store no longer opens):
``meta.json``, each table's newest version, every data file, every vector, how the tables agree
with each other, and the ANN index. With ``repair=True`` it takes each table back to its newest
version that reads whole, drops what cannot be read, and rebuilds what can be rebuilt, and it
says what was lost. Nothing an indexing run can restore is lost for good while the files the
store indexed still exist: running ``clipsearch index`` over them again brings them back.

The failure modes covered are LanceDB's known ones: a zero-byte or truncated manifest (the
newest version) after a hard stop, a data file that went missing, and a table whose folder was
dropped and not created again.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.errors import StoreError
from clipsearch.store import schema as sch

TABLES = (sch.ITEMS_TABLE, sch.FILES_TABLE, sch.CELLS_TABLE)
QUARANTINE_DIR = "quarantine"
"""Where repair moves what it takes out of a table (unreadable manifests), in the store's folder."""


@dataclass
class Problem:
    """One thing wrong with a store, and what ``--repair`` does (or did) about it."""

    where: str  # "items", "files", "cells", "ann" or "store"
    what: str
    repair: str
    fixed: bool = False
    serious: bool = True  # False: left over by a stop between two commits; harmless, the next run tidies it

    def to_dict(self) -> dict[str, Any]:
        return {"where": self.where, "what": self.what, "repair": self.repair, "fixed": self.fixed, "serious": self.serious}


@dataclass
class CheckReport:
    """What :func:`check_store` found, and what a repair lost."""

    store: str
    problems: list[Problem] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # what the repair could not keep, in sentences
    repaired: bool = False
    counts: dict[str, int] = field(default_factory=dict)  # table -> rows, as read

    @property
    def ok(self) -> bool:
        """Nothing is wrong (any more); harmless leftovers of a stop between commits aside."""
        return all(p.fixed or not p.serious for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "ok": self.ok,
            "problems": [p.to_dict() for p in self.problems],
            "lost": self.lost,
            "repaired": self.repaired,
            "counts": self.counts,
        }


def check_store(root: str | os.PathLike[str], *, repair: bool = False) -> CheckReport:
    """Check (and with ``repair``, mend) the store at ``root``; see the module docstring.

    Raises:
        StoreError: ``root`` is not a store (no readable ``meta.json``), or another process is
            writing to it (a repair needs the write lock; a check alone does not).
    """
    from clipsearch.store.lance_store import write_lock

    if "://" in str(root) and not str(root).startswith("file://"):
        raise StoreError(
            f"clipsearch check reads a store's files on a local disk; {root} is on an object store, whose "
            "tables Lance commits atomically (a hard stop cannot leave them torn)"
        )
    root = Path(root)
    meta = sch.read_meta(root)
    if meta is None:
        raise StoreError(f"no store at {root} (no {sch.META_FILE})")
    report = CheckReport(str(root))
    if not repair:
        _check(root, meta, report, repair=False)
        return report
    with write_lock(root):
        _check(root, meta, report, repair=True)
    report.repaired = True
    if any(p.where == "ann" and p.fixed for p in report.problems):
        _rebuild_index(root, meta)
    return report


def _check(root: Path, meta: dict[str, Any], report: CheckReport, *, repair: bool) -> None:
    datasets = {name: _readable_table(root, name, meta, report, repair=repair) for name in TABLES}
    items = datasets[sch.ITEMS_TABLE]
    if items is None:
        return
    _check_vectors(items, int(meta["dim"]), report, repair=repair)
    _check_agreement(root, datasets, report, repair=repair)
    _check_index(root, meta, items, report, repair=repair)
    if meta.get("reembedding") is not None:
        report.problems.append(
            Problem("store", "a re-embedding run did not finish: the store holds vectors of two models",
                    f"run: clipsearch reindex --store {root}")  # fmt: skip
        )


# -- tables ------------------------------------------------------------------------------------


def _table_uri(root: Path, name: str) -> Path:
    return root / sch.LANCE_DIR / f"{name}.lance"


def _readable_table(root: Path, name: str, meta: dict[str, Any], report: CheckReport, *, repair: bool):
    """The table's newest version that reads whole (taken back to it with ``repair``), or None."""
    import lance

    uri = _table_uri(root, name)
    versions = uri / "_versions"
    if not versions.is_dir() or not any(versions.glob("*.manifest")):
        if name == sch.CELLS_TABLE and not uri.exists():
            return None  # a store of a model without a grid has none
        lost = {
            sch.ITEMS_TABLE: "every item: index the folders again to restore them",
            sch.FILES_TABLE: "nothing: the next indexing run reads every file again and finds it stored",
            sch.CELLS_TABLE: "every image's grid cells: the next indexing run over their folders adds them again",
        }[name]
        problem = Problem(name, f"the {name} table is missing (dropped and not created again?)", f"create it empty; lost: {lost}")
        report.problems.append(problem)
        if repair:
            _quarantine(root, uri)
            _create_empty(root, name, meta)
            problem.fixed = True
            if name != sch.FILES_TABLE:
                report.lost.append(f"{name}: {lost}")
        return lance.dataset(str(uri)) if repair else None
    while True:
        try:
            ds = lance.dataset(str(uri))
            newest = ds.version
        except Exception as exc:  # noqa: BLE001 - Lance raises ValueError/OSError for a broken manifest
            manifest = _newest_manifest(uri)
            problem = Problem(
                name,
                f"its newest version cannot be read ({_short(exc)}): a manifest cut short by a hard stop?",
                "set it aside and take the table back to the version before (indexing keeps a copy of "
                "the newest version for this); rows only that version held, if any, are lost",
            )
            report.problems.append(problem)
            if not repair or manifest is None:
                return None
            _quarantine(root, manifest)
            (uri / "_versions" / "latest_version_hint.json").unlink(missing_ok=True)
            problem.fixed = True
            report.lost.append(f"{name}: rows only its unreadable newest version held, if any (index again to restore them)")
            continue
        missing = [f for f in ds.get_fragments() if not _fragment_readable(uri, f)]
        if missing:
            rows = sum(f.metadata.physical_rows or 0 for f in missing)
            problem = Problem(
                name,
                f"{len(missing)} data file(s) of version {newest} are missing or cannot be read ({rows} rows)",
                "drop those rows; the next indexing run adds them again",
            )
            report.problems.append(problem)
            if not repair:
                return None
            ds = lance.LanceDataset.commit(
                str(uri),
                lance.LanceOperation.Delete(updated_fragments=[], deleted_fragment_ids=[f.fragment_id for f in missing], predicate="true"),
                read_version=newest,
            )
            problem.fixed = True
            report.lost.append(f"{name}: {rows} rows whose data file was missing (index again to restore them)")
        report.counts[name] = int(ds.count_rows())
        return ds


def _fragment_readable(uri: Path, fragment) -> bool:
    """Every data file of the fragment exists and its rows read."""
    for data_file in fragment.data_files():
        path = Path(data_file.path)
        if not (path if path.is_absolute() else uri / "data" / path).exists():
            return False
    try:
        fragment.to_table()
    except Exception:  # noqa: BLE001 - Lance raises OSError/ValueError/ArrowInvalid for a cut or lost file
        return False
    return True


def _newest_manifest(uri: Path) -> Path | None:
    """The manifest of the table's newest version (Lance names them ``u64::MAX - version``)."""
    manifests = sorted(uri.glob("_versions/*.manifest"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0)
    return manifests[0] if manifests else None


def _quarantine(root: Path, path: Path) -> None:
    """Move ``path`` out of the way into the store's quarantine folder (kept, never deleted)."""
    if not path.exists():
        return
    target = root / QUARANTINE_DIR / time.strftime("%Y%m%dT%H%M%S") / path.relative_to(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(target))


def _create_empty(root: Path, name: str, meta: dict[str, Any]) -> None:
    import lance
    import pyarrow as pa

    schema = {
        sch.ITEMS_TABLE: lambda: sch.items_schema(int(meta["dim"])),
        sch.FILES_TABLE: sch.files_schema,
        sch.CELLS_TABLE: sch.cells_schema,
    }[name]()
    lance.write_dataset(pa.Table.from_pylist([], schema=schema), str(_table_uri(root, name)), mode="create")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(", /")[0][:160]


# -- contents --------------------------------------------------------------------------------


def _check_vectors(items, dim: int, report: CheckReport, *, repair: bool) -> None:
    """Every item has a finite unit vector."""
    from clipsearch.store.lance_store import _vector_matrix

    table = items.to_table(columns=["id", "vector"])
    vectors = _vector_matrix(table.column("vector"), dim)
    norms = np.linalg.norm(vectors, axis=1) if len(vectors) else np.zeros(0)
    bad = ~np.isfinite(norms) | (np.abs(norms - 1.0) > 1e-3)
    if not bad.any():
        return
    ids = [i for i, b in zip(table.column("id").to_pylist(), bad) if b]
    problem = Problem("items", f"{len(ids)} items have no usable vector", "delete them; the next indexing run embeds them again")
    report.problems.append(problem)
    if repair:
        from clipsearch.store.lance_store import _sql_list

        items.delete(f"id IN ({_sql_list(ids)})")
        problem.fixed = True
        report.lost.append(f"items: {len(ids)} without a usable vector (index again to restore them)")


def _check_agreement(root: Path, datasets: dict[str, Any], report: CheckReport, *, repair: bool) -> None:
    """Cells belong to stored images; file records to stored items."""
    from clipsearch.store.lance_store import _sql_list

    items = datasets[sch.ITEMS_TABLE]
    rows = items.to_table(columns=["id", "modality", "path", "extra_paths", "source"]).to_pylist()
    ids = {r["id"] for r in rows}
    cells = datasets.get(sch.CELLS_TABLE)
    if cells is not None:
        orphans = sorted(set(cells.to_table(columns=["id"]).column("id").to_pylist()) - ids)
        if orphans:
            problem = Problem(
                "cells", f"{len(orphans)} grids belong to no stored image", "delete them (nothing is lost)", serious=False
            )
            report.problems.append(problem)
            if repair:
                for i in range(0, len(orphans), 500):
                    cells.delete(f"id IN ({_sql_list(orphans[i : i + 500])})")
                problem.fixed = True
    files = datasets.get(sch.FILES_TABLE)
    if files is not None:
        held = {p for r in rows for p in [r["path"], r["source"], *(r["extra_paths"] or [])] if p}
        stale = sorted(set(files.to_table(columns=["path"]).column("path").to_pylist()) - held)
        if stale:
            problem = Problem(
                "files", f"{len(stale)} file records name no stored item",
                "delete them; the next indexing run reads those files again (nothing is lost)", serious=False,
            )  # fmt: skip
            report.problems.append(problem)
            if repair:
                for i in range(0, len(stale), 500):
                    files.delete(f"path IN ({_sql_list(stale[i : i + 500])})")
                problem.fixed = True


def _check_index(root: Path, meta: dict[str, Any], items, report: CheckReport, *, repair: bool) -> None:
    """The ANN index, when there is one, is of this version's kind, loads and matches the vectors' dimension."""
    from clipsearch.store.ann import KIND, AnnIndex, read_any_index_meta, remove_index

    folder = root / sch.ANN_DIR
    try:
        index_meta = read_any_index_meta(folder)
    except Exception:  # noqa: BLE001 - any unreadable ann.json is the problem reported
        index_meta = {"unreadable": True}
    if index_meta is None:
        return
    reason = None
    if index_meta.get("unreadable"):
        reason = "its ann.json cannot be read"
    elif index_meta.get("kind") != KIND:
        reason = f"it is of an older kind ({index_meta.get('kind')!r}) that searches no longer use"
    else:
        try:
            index = AnnIndex.load(folder)
        except Exception as exc:  # noqa: BLE001 - faiss raises RuntimeError for a cut file
            index, reason = None, f"it cannot be loaded ({_short(exc)})"
        if reason is None and index is None:
            reason = "it cannot be loaded"
        elif reason is None and index.d != int(meta["dim"]):
            reason = f"it holds {index.d}-d vectors, the store {meta['dim']}-d"
    if reason is None:
        return
    problem = Problem("ann", f"the ANN index is broken: {reason}", "build it again from the stored vectors (nothing is lost)")
    report.problems.append(problem)
    if repair:
        remove_index(folder)
        problem.fixed = True


def _rebuild_index(root: Path, meta: dict[str, Any]) -> None:
    from clipsearch.store.lance_store import Store

    Store(root, meta).update_index(force=True)
