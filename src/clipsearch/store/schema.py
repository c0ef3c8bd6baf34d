"""What a store holds on disk: the table schemas, the ``meta.json`` header and item ids.

A store is a folder::

    STORE/
      meta.json        schema version, model name, dimension (written atomically)
      lance/items.lance  one row per item: metadata and vector together
      lance/files.lance  one row per input file seen: its size, mtime and SHA-256
      lance/cells.lance  models with a grid only: each image's grid of cell vectors (float16)
      ann/             the approximate-nearest-neighbour index, when the store is large
      .write.lock      held (flock) by the one process writing

Items are the truth; ``files`` only lets indexing skip files that have not changed since they
were last read, so losing or rewinding it costs time (re-hashing), never correctness. ``cells``
lets a search re-score images by their grid without reading them again; an image without a row
there is read again instead, and a row whose item is gone is never looked up.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
"""Bumped whenever the layout changes; a store with a newer version is refused."""

META_FILE = "meta.json"
LANCE_DIR = "lance"
ANN_DIR = "ann"
LOCK_FILE = ".write.lock"
FAILED_FILE = "failed.json"  # files that failed to index, so that an unchanged one is not read again
PROBE_FILE = "probe.json"  # the model's embeddings of fixed inputs: its identity (clipsearch.models.fingerprint)
ITEMS_TABLE = "items"
FILES_TABLE = "files"
CELLS_TABLE = "cells"

ID_HEX = 16
"""Hex digits in an item id (64 bits: collisions are negligible below ~10^8 items)."""

# Metadata columns of the items table, in order; ``vector`` comes last.
ITEM_COLUMNS = (
    "id",  # stable: sha256 of the image bytes, or of modality + source + offset + text
    "seq",  # int64 assigned once per id, in insertion order; the ANN index's label
    "modality",  # "image" or "text"
    "path",  # the file to show: the image, or the text file (or the image a caption belongs to)
    "extra_paths",  # other paths holding identical image bytes
    "source",  # the input file that produced the item (tracked for incremental indexing)
    "text",  # the text, for text items
    "sha256",  # of the image bytes, or of the UTF-8 text
    "size",  # bytes of the image file, or characters of the text
    "mtime",  # of the path when it was read (seconds since the epoch)
    "width",  # image pixels, as displayed (after EXIF rotation)
    "height",
    "caption",  # from a jsonl/csv ``caption`` (or, for images, ``text``) field
    "label",  # from a jsonl/csv ``label`` field
    "record",  # the record in a jsonl/csv file: "#ID" or ":LINE"
    "char_start",  # offsets of a passage in its document's text
    "char_end",
    "extra",  # the record's other fields, as a JSON object
    "added",  # when the item was first written (seconds since the epoch)
)


def items_schema(dim: int):
    """The Arrow schema of the items table for ``dim``-dimensional vectors."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("seq", pa.int64(), nullable=False),
            pa.field("modality", pa.string(), nullable=False),
            pa.field("path", pa.string()),
            pa.field("extra_paths", pa.list_(pa.string())),
            pa.field("source", pa.string()),
            pa.field("text", pa.string()),
            pa.field("sha256", pa.string()),
            pa.field("size", pa.int64()),
            pa.field("mtime", pa.float64()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("caption", pa.string()),
            pa.field("label", pa.string()),
            pa.field("record", pa.string()),
            pa.field("char_start", pa.int64()),
            pa.field("char_end", pa.int64()),
            pa.field("extra", pa.string()),
            pa.field("added", pa.float64()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ]
    )


def cells_schema():
    """The Arrow schema of the cells table: one row per image item of a model with a grid.

    ``cells`` is the ``(rows, cols, dim)`` grid of unit cell vectors, row-major, in float16
    (half the bytes; cosines move by about 1e-3). The table is keyed by item id, which for an
    image is the hash of its bytes, so the same bytes always have the same cells.
    """
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("rows", pa.int32(), nullable=False),
            pa.field("cols", pa.int32(), nullable=False),
            pa.field("cells", pa.list_(pa.float16()), nullable=False),
        ]
    )


def files_schema():
    """The Arrow schema of the files table (one row per input file path)."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("path", pa.string(), nullable=False),
            pa.field("kind", pa.string(), nullable=False),  # "image", "text" or "table"
            pa.field("size", pa.int64()),
            pa.field("mtime", pa.float64()),
            pa.field("sha256", pa.string()),
        ]
    )


# -- ids -------------------------------------------------------------------------------------


def image_id(sha256_hex: str) -> str:
    """The id of an image item: a prefix of the SHA-256 of its bytes."""
    return sha256_hex[:ID_HEX]


def text_id(source: str, locator: str, text: str) -> str:
    """The id of a text item: hashes its source file, place in it, and the text itself."""
    h = hashlib.sha256()
    for part in ("text", source, locator, text):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:ID_HEX]


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# -- paths ---------------------------------------------------------------------------------
# A file name that is not UTF-8 reaches Python as a str with lone surrogates (PEP 383), which an
# Arrow string column cannot hold. Stored, each such surrogate becomes ``\xHH`` (the byte it
# stands for) and a backslash becomes ``\\``; every other name is stored as it is.

_SURROGATE_LOW, _SURROGATE_HIGH = 0xDC80, 0xDCFF


def stored_path(path: str | None) -> str | None:
    """``path`` as the store keeps it: lossless, valid UTF-8 (see :func:`real_path`)."""
    if path is None or ("\\" not in path and path.isascii()):
        return path
    out = []
    for ch in path:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif _SURROGATE_LOW <= code <= _SURROGATE_HIGH:
            out.append(f"\\x{code - 0xDC00:02x}")
        else:
            out.append(ch)
    return "".join(out)


def real_path(stored: str | None) -> str | None:
    """The path :func:`stored_path` stored, as the file system names it."""
    if stored is None or "\\" not in stored:
        return stored
    out, i, n = [], 0, len(stored)
    while i < n:
        ch = stored[i]
        if ch == "\\" and i + 1 < n and stored[i + 1] == "\\":
            out.append("\\")
            i += 2
        elif ch == "\\" and stored[i + 1 : i + 2] == "x" and _is_high_byte(stored[i + 2 : i + 4]):
            out.append(chr(0xDC00 + int(stored[i + 2 : i + 4], 16)))
            i += 4
        else:  # a lone backslash (a store written before names were escaped): itself
            out.append(ch)
            i += 1
    return "".join(out)


def _is_high_byte(hex2: str) -> bool:
    try:
        return len(hex2) == 2 and int(hex2, 16) >= 0x80
    except ValueError:
        return False


PATH_COLUMNS = ("path", "source")
"""String columns of the items table that hold file paths (``extra_paths`` is a list of them)."""


def stored_row(row: dict[str, Any]) -> dict[str, Any]:
    """An items row with its paths as stored (a new dict; other fields shared)."""
    return _map_paths(dict(row), stored_path)


def real_row(row: dict[str, Any]) -> dict[str, Any]:
    """An items row read from the store, its paths as the file system names them (in place)."""
    return _map_paths(row, real_path)


def _map_paths(row: dict[str, Any], convert) -> dict[str, Any]:
    for name in PATH_COLUMNS:
        if name in row:
            row[name] = convert(row[name])
    if row.get("extra_paths"):
        row["extra_paths"] = [convert(p) for p in row["extra_paths"]]
    return row


# -- meta.json -------------------------------------------------------------------------------


def new_meta(
    model: str, dim: int, modalities: tuple[str, ...], weights: str | None = None, *, grid: bool = False
) -> dict[str, Any]:
    """A new store's header. ``grid``: the model embeds a grid of cells, so its images get cells
    (stores from before this key lack it: the model is then asked, see :mod:`clipsearch.ingest`)."""
    from clipsearch.version import __version__

    return {
        "schema_version": SCHEMA_VERSION,
        "model": model,
        "weights": weights,
        "dim": int(dim),
        "modalities": list(modalities),
        "grid": bool(grid),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "clipsearch_version": __version__,
    }


def read_meta(root: Path) -> dict[str, Any] | None:
    """The store's header, or None when ``root`` has no ``meta.json``."""
    from clipsearch.errors import StoreError

    path = root / META_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreError(
            f"store {root} has an unreadable {META_FILE} ({exc.msg}); it is not a clipsearch store"
        ) from None
    if not isinstance(meta, dict) or not {"schema_version", "model", "dim"} <= meta.keys():
        raise StoreError(f"store {root} has a {META_FILE} without schema_version, model and dim")
    return meta


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` so that readers see the old or the new file, never half."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a store's file ``path`` (local or on S3) so that readers see the old or
    the new file, never half."""
    from clipsearch.atomic import write_atomic

    if isinstance(path, Path):
        write_atomic(path, data)
    else:  # an object store's path (clipsearch.store.s3.S3Path): one PUT is atomic by itself
        path.write_bytes(data)
