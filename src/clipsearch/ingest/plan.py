"""The plan stage: what of a scan needs reading, and what a prune may remove.

Pure functions over plain data (the scan, the files the store recorded, the failures it
remembers), so they can be run, timed and tested alone.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clipsearch.ingest.scan import ImageInput, is_under


@dataclass
class ImagePlan:
    """The scanned images, sorted by what indexing must do with each."""

    unchanged: list[ImageInput] = field(default_factory=list)  # stored with this size and mtime: not read
    failed_before: list[tuple[ImageInput, dict[str, Any]]] = field(default_factory=list)  # (input, earlier failure)
    todo: list[ImageInput] = field(default_factory=list)  # to read, hash and decode


def file_unchanged(files: Mapping[str, Mapping[str, Any]], path: str, size: int, mtime: float, kind: str | None = None) -> bool:
    """The store recorded ``path`` with this size and mtime (and kind, when given)."""
    rec = files.get(path)
    return rec is not None and rec["size"] == size and rec["mtime"] == mtime and (kind is None or rec["kind"] == kind)


def plan_images(
    images: Iterable[ImageInput],
    files: Mapping[str, Mapping[str, Any]],
    stored_paths: Collection[str],
    failed_before: Mapping[str, Mapping[str, Any]],
    *,
    retry_failed: bool = False,
    max_pixels: Any = None,
) -> ImagePlan:
    """Sort scanned images into unchanged, failed as before, and to do.

    Args:
        images: the scan's images.
        files: what the store recorded of each input file (path -> ``{size, mtime, kind, ...}``).
        stored_paths: paths that hold a stored image.
        failed_before: image files that failed in earlier runs (path -> ``{size, mtime, reason,
            max_pixels}``); one unchanged since, under the same pixel cap, is not read again.
        retry_failed: read every earlier failure again.
        max_pixels: this run's decoder pixel cap (a failure under another cap may pass now).
    """
    plan = ImagePlan()
    for inp in images:
        if file_unchanged(files, inp.path, inp.size, inp.mtime) and inp.path in stored_paths:
            plan.unchanged.append(inp)
            continue
        rec = None if retry_failed else failed_before.get(inp.path)
        if (
            rec is not None
            and rec.get("max_pixels", False) == max_pixels
            and rec.get("size") == inp.size
            and rec.get("mtime") == inp.mtime
        ):
            plan.failed_before.append((inp, dict(rec)))
        else:
            plan.todo.append(inp)
    return plan


def plan_prune(candidates: Iterable[str], roots: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """Which stored paths under ``roots`` (the folders scanned) are gone and may be pruned.

    Paths elsewhere are left alone: indexing one folder never prunes another (a drive that is
    not plugged in). Nor is a path whose nearest folder still there, the root or one below it,
    is empty or cannot be listed, or still lists the next step of the path (a dangling link, an
    entry we may not reach): that is what an unmounted drive looks like wherever it is mounted,
    and what a folder we may not read looks like (its files only seem gone).

    Returns:
        ``(gone, kept)``: the paths to prune, and what seems out of reach (a folder or entry)
        -> how many vanished paths under it are kept.
    """
    gone: list[str] = []
    kept: dict[str, int] = {}
    listings: dict[str, frozenset[str] | None] = {}  # folder -> its entries (None: cannot be listed)
    for path in sorted(set(candidates)):
        owners = [r for r in roots if is_under(path, r)]
        if not owners or os.path.exists(path):
            continue
        held = _still_held(path, max(owners, key=len), listings)  # the deepest root: each path counted once
        if held is None:
            gone.append(path)
        else:
            kept[held] = kept.get(held, 0) + 1
    return gone, kept


def _still_held(path: str, root: str, listings: dict[str, frozenset[str] | None]) -> str | None:
    """Whether a ``path`` under ``root`` that does not exist may only be out of reach: the
    folder or entry to blame (empty, unlistable, or listed but not reachable), else ``None``
    (it is gone). ``listings`` caches folder listings across calls."""
    child, folder = path, os.path.dirname(path)
    while folder != root and is_under(folder, root) and not os.path.isdir(folder):
        child, folder = folder, os.path.dirname(folder)
    if not is_under(folder, root):
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
