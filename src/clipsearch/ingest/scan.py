"""The scan stage: walk files and folders for images and text documents, stat-ing each once."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

TEXT_DOC_SUFFIXES = (".txt", ".md", ".text")
TABLE_SUFFIXES = (".jsonl", ".csv")


def is_text_only(paths: Iterable[str | os.PathLike[str]]) -> bool:
    """True when ``paths`` hold text documents and no image at all (folders are walked).

    A ``.jsonl``/``.csv`` table counts as text unless its first record names an ``image``.
    """
    kinds = []
    for top in map(str, paths):
        if os.path.isdir(top):
            kinds += list(walk(top))
        else:
            kinds.append((top, kind_of(top) or "image"))  # a named file of unknown type may be an image
    for path, kind in kinds:
        if kind == "image" or (kind == "table" and _table_names_images(path)):
            return False
    return bool(kinds)


def _table_names_images(path: str) -> bool:
    if stat_input(path)[0] is None:  # never open a FIFO or a device
        return False
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



@dataclass
class ImageInput:
    """An image file to index, with metadata when a jsonl/csv record names it."""

    path: str  # absolute
    size: int
    mtime: float
    meta: dict[str, Any] | None = None  # caption, label, record, extra, source (from a table)
    meta_changed: bool = False  # the table naming it changed: rewrite the metadata


@dataclass
class Document:
    """A text document or table to index, as scanned."""

    path: str  # absolute
    kind: str  # "text" (paragraphs) or "table" (jsonl/csv records)
    size: int
    mtime: float


@dataclass
class Scan:
    """What the scan stage found: the inputs under the paths given, and what could not be reached."""

    images: dict[str, ImageInput] = field(default_factory=dict)  # path -> input, in walk order
    docs: list[Document] = field(default_factory=list)
    roots: list[str] = field(default_factory=list)  # the folders given (what --prune may prune under)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def kind_of(name: str) -> str | None:
    from clipsearch.images import IMAGE_EXTENSIONS

    suffix = os.path.splitext(name)[1].lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in TEXT_DOC_SUFFIXES:
        return "text"
    if suffix in TABLE_SUFFIXES:
        return "table"
    return None


def walk(top: str, on_error: Callable[[str, str], None] | None = None) -> Iterator[tuple[str, str]]:
    """``(path, kind)`` of indexable files under ``top``: sorted, hidden names skipped, no symlinked folders.

    ``on_error(folder, reason)`` hears of each folder that cannot be listed (its files are not seen).
    """

    def unlistable(exc: OSError) -> None:
        if on_error is not None:
            on_error(exc.filename or top, f"cannot list folder: {(exc.strerror or 'I/O error').lower()}")

    for root, dirs, files in os.walk(top, onerror=unlistable):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            kind = kind_of(name)
            if kind is not None:
                yield os.path.join(root, name), kind


def is_under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)



def stat_input(path: str) -> tuple[os.stat_result | None, str]:
    """``(stat, "")`` for a regular file (links followed), else ``(None, why not)``.

    A FIFO, socket or device (or a link to one) is refused from its ``stat``, never opened:
    reading ``/dev/zero`` or a FIFO with no writer would hold the run forever.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        return None, f"cannot read file: {(exc.strerror or 'I/O error').lower()}"
    if not stat.S_ISREG(st.st_mode):
        return None, f"not a regular file ({special_kind(st.st_mode)})"
    return st, ""


def special_kind(mode: int) -> str:
    """What a non-regular file is, in a word or two."""
    for test, word in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return word
    return "a special file"


def scan(paths: Iterable[str | os.PathLike[str]]) -> Scan:
    """The scan stage: every input under ``paths`` (files, and folders walked recursively).

    Args:
        paths: files and folders; ``~`` is expanded, relative paths are made absolute.

    Returns:
        A :class:`Scan`; paths that do not exist or cannot be stat-ed are in its ``failures``.
    """
    out = Scan()
    seen_docs: set[str] = set()

    def add(path: str, kind: str) -> None:
        st, reason = stat_input(path)
        if st is None:
            out.failures.append((path, reason))
            return
        if kind == "image":
            if path not in out.images:
                out.images[path] = ImageInput(path, st.st_size, st.st_mtime)
        elif path not in seen_docs:
            seen_docs.add(path)
            out.docs.append(Document(path, kind, st.st_size, st.st_mtime))

    for given in paths:
        path = os.path.abspath(os.path.expanduser(os.fspath(given)))
        if os.path.isdir(path):
            out.roots.append(path)
            for p, kind in walk(path, on_error=lambda folder, reason: out.failures.append((folder, reason))):
                add(p, kind)
        elif os.path.exists(path):
            add(path, kind_of(path) or "image")  # an unknown suffix named explicitly: let the decoder judge
        else:
            out.failures.append((path, "no such file or folder"))
    return out
