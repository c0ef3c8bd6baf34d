"""Where a store keeps its score calibration: ``calibration.json`` and ``calibration.npz``.

The store only keeps the fit (:mod:`clipsearch.calibration` makes it and uses it): a small JSON
header (the model's name and probe signature it was fitted with, the row count at the time, the
per-direction parameters) and the arrays it needs at query time (a sample of the store's own
vectors per kind and the embedded background queries). Both files are written atomically, under
the store's write lock; a store without them simply has no calibration yet.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from clipsearch.store.schema import write_bytes_atomic

if TYPE_CHECKING:
    from clipsearch.store.lance_store import Store

CALIBRATION_FILE = "calibration.json"
CALIBRATION_ARRAYS = "calibration.npz"
FORMAT_VERSION = 1


def read_calibration(root: Path) -> tuple[dict[str, Any], dict[str, npt.NDArray[np.float32]]] | None:
    """The stored ``(header, arrays)`` of the store at ``root``, or None when there is none (or
    it is unreadable or of another format: then it is fitted again)."""
    try:
        header = json.loads((root / CALIBRATION_FILE).read_text(encoding="utf-8"))
        with np.load(io.BytesIO((root / CALIBRATION_ARRAYS).read_bytes()), allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k], dtype=np.float32) for k in data.files}
    except (OSError, ValueError, KeyError):
        return None
    if not isinstance(header, dict) or header.get("format_version") != FORMAT_VERSION:
        return None
    if arrays.get("_stamp") is None or int(arrays["_stamp"][0]) != int(header.get("stamp", -1)):
        return None  # the two files of different fits (a crash between the two writes)
    return header, arrays


def write_calibration(store: Store, header: dict[str, Any], arrays: dict[str, npt.NDArray[np.float32]]) -> None:
    """Record a fit with the store (atomically; under the write lock).

    The arrays go first and carry the header's stamp, so a reader never pairs a new header with
    old arrays."""
    store._require_lock()
    stamp = int(np.random.default_rng().integers(1, 2**24))  # exact in float32
    buf = io.BytesIO()
    np.savez(buf, _stamp=np.array([stamp], np.float32), **{k: np.asarray(v, np.float32) for k, v in arrays.items()})
    write_bytes_atomic(store.root / CALIBRATION_ARRAYS, buf.getvalue())
    full = {"format_version": FORMAT_VERSION, "stamp": stamp, **header}
    write_bytes_atomic(store.root / CALIBRATION_FILE, json.dumps(full, indent=1, sort_keys=True).encode("utf-8"))
