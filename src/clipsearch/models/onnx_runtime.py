"""ONNX bundles: the cached bundle of a model's current weights, and its text tower run by ONNX
Runtime without torch.

THE TEXT-ONLY PART. This is the query path's minimal copy of the module that the ONNX export
work owns (it adds the image tower, the int8 guard's recording and the exporter's side); the
functions here are a subset of that module's, with the same names and behaviour, so the full
module replaces this one unchanged for its callers.

A *bundle* is a folder ``<cache>/<key>/`` (``<cache>``: ``$CLIPSEARCH_ONNX_CACHE``, else
``onnx/`` in the user's cache folder) written by
:func:`clipsearch.models.onnx_export.export_bundle`. ``<key>`` is a digest of the model's files
(weights, configs, tokenizer) and the exporter's version, so changed weights give another
folder. Its ``bundle.json`` (format 1)::

    {"format": 1, "model": NAME, "key": KEY, "dim": D,
     "text": {"onnx": "text.onnx", "onnx_int8": "text.int8.onnx" | null, "tokenizer": "tokenizer.json",
              "context_length": 77, "inputs": ["input_ids", "attention_mask"], "output": "embeds"},
     "image": {...} | null, "probe_text": [[...4 rows of D floats...]],
     "guard": {"image": {...} | null, "text": {"int8_ok": bool, "min_cosine": ..., ...} | null}}

This module imports numpy, onnxruntime and tokenizers only (never torch), so a search process
can embed its queries without loading torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from clipsearch.models.base import Encoder, ModelInfo, TextRole

BUNDLE_FORMAT = 1
"""``bundle.json``'s ``format``; a bundle of another format is not read."""
EXPORTER_VERSION = 1
"""Part of every bundle key: raising it (a changed export) makes every model export again."""
CACHE_ENV = "CLIPSEARCH_ONNX_CACHE"
BUNDLE_FILE = "bundle.json"
MODELS_DIR = "models"
"""``<cache>/models/<digest of name and weights>.json``: which files make a model, with their
digests and stats, so :func:`bundle_dir` finds a bundle without hashing unchanged weights."""


def cache_root() -> Path:
    """Where bundles live: ``$CLIPSEARCH_ONNX_CACHE``, else ``<user cache>/clipsearch/onnx``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("clipsearch")) / "onnx"


# -- keys ------------------------------------------------------------------------------------
_digests: dict[tuple[str, int, int], str] = {}
_digest_lock = threading.Lock()


def file_digest(path: Path, known: dict[str, Any] | None = None) -> str:
    """SHA-256 of a file's bytes, remembered by ``(path, size, mtime_ns)`` (and taken from
    ``known``, a record of an earlier run, when its size and mtime still match)."""
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    with _digest_lock:
        if memo in _digests:
            return _digests[memo]
    if known and known.get("size") == st.st_size and known.get("mtime_ns") == st.st_mtime_ns and known.get("sha256"):
        digest = str(known["sha256"])
    else:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        digest = h.hexdigest()
    with _digest_lock:
        _digests[memo] = digest
    return digest


def bundle_key(files: dict[str, str]) -> str:
    """The bundle key for a model made of ``files`` (label -> SHA-256 of its bytes)."""
    payload = json.dumps({"format": BUNDLE_FORMAT, "exporter": EXPORTER_VERSION, "files": files}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def _model_record_path(model_name: str, weights: str | None) -> Path:
    ident = json.dumps([model_name, str(Path(weights).expanduser().resolve()) if weights else None])
    return cache_root() / MODELS_DIR / f"{hashlib.sha256(ident.encode('utf-8')).hexdigest()[:24]}.json"


def read_model_record(model_name: str, weights: str | None) -> dict[str, Any] | None:
    """What the last export recorded about the files of ``model_name`` (or None)."""
    try:
        data = json.loads(_model_record_path(model_name, weights).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else None


def write_model_record(model_name: str, weights: str | None, files: dict[str, Path]) -> str:
    """Record which files make ``model_name`` (label -> path), with their digests; returns the key."""
    from clipsearch.atomic import write_atomic

    old = (read_model_record(model_name, weights) or {}).get("files", {})
    entries, digests = {}, {}
    for label, path in sorted(files.items()):
        st = path.stat()
        digest = file_digest(path, old.get(label))
        digests[label] = digest
        entries[label] = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    key = bundle_key(digests)
    record = {"model": model_name, "weights": weights, "key": key, "files": entries}
    target = _model_record_path(model_name, weights)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, json.dumps(record, indent=1).encode("utf-8"), fsync=False)
    return key


def current_key(model_name: str, weights: str | None = None) -> str | None:
    """The bundle key of ``model_name``'s files as they are now, or None when no export ever
    recorded them (or one of them is gone). Hashes only files whose size or mtime changed."""
    record = read_model_record(model_name, weights)
    if record is None:
        return None
    digests = {}
    try:
        for label, entry in record["files"].items():
            digests[label] = file_digest(Path(entry["path"]), entry)
    except (OSError, KeyError, TypeError):
        return None
    return bundle_key(digests)


def bundle_dir(model_name: str, weights: str | None = None) -> Path | None:
    """The cached bundle for this model's *current* weights, or None if none was exported yet.

    Fast: file digests are remembered by ``(path, size, mtime_ns)``, so unchanged weights are
    not hashed again; imports no torch and touches no network.
    """
    key = current_key(model_name, weights)
    if key is None:
        return None
    folder = cache_root() / key
    return folder if (folder / BUNDLE_FILE).is_file() else None


def read_bundle(folder: Path) -> dict[str, Any]:
    """``bundle.json`` of a bundle folder.

    Raises:
        ValueError: not a bundle, or one of another format.
    """
    try:
        bundle = json.loads((Path(folder) / BUNDLE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{folder} holds no readable {BUNDLE_FILE}: {e}") from e
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{folder}/{BUNDLE_FILE} is not a format-{BUNDLE_FORMAT} ONNX bundle")
    return bundle


# -- running ---------------------------------------------------------------------------------
def make_session(path: Path) -> Any:
    """An ONNX Runtime CPU session for ``path``, with as many intra-op threads as this process may use."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = _cores()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: ORT warns about unused initialisers of quantised graphs
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class OnnxTextEncoder(Encoder):
    """A bundle's text tower as an :class:`Encoder` (``info.modalities == ("text",)``).

    Args:
        folder: a bundle folder (:func:`bundle_dir`).
        int8: use the int8 graph; None: where the bundle's text guard passed.

    Raises:
        ValueError: not a bundle of a readable format, or one without a text tower.
    """

    def __init__(self, folder: Path, *, int8: bool | None = None):
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.bundle: dict[str, Any] = read_bundle(self.folder)
        spec = self.bundle.get("text")
        if not spec:
            raise ValueError(f"ONNX bundle {self.folder} has no text tower")
        guard = (self.bundle.get("guard") or {}).get("text") or {}
        has_int8 = bool(spec.get("onnx_int8"))
        self.text_int8 = bool(guard.get("int8_ok")) and has_int8 if int8 is None else bool(int8 and has_int8)
        self._spec = spec
        self._session = make_session(self.folder / (spec["onnx_int8"] if self.text_int8 else spec["onnx"]))
        self.tokenizer = Tokenizer.from_file(str(self.folder / spec["tokenizer"]))
        info = dict(self.bundle.get("info") or {})
        self.info = ModelInfo(
            name=self.bundle["model"],
            backend=info.get("backend", "onnx"),
            dim=int(self.bundle["dim"]),
            modalities=("text",),
            context_length=int(spec["context_length"]),
            preprocess=None,
            logit_scale=float(info.get("logit_scale", 100.0)),
            extra={"runtime": "onnx", "onnx_bundle": self.bundle.get("key")},
        )

    def tokenize(self, texts: Sequence[str]) -> dict[str, npt.NDArray[np.int64]]:
        """``input_ids`` and ``attention_mask``, ``(n, L)`` int64, padded to the longest text."""
        enc = self.tokenizer.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in enc], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": mask}

    def _encode_text_batch(self, texts: list[str], role: TextRole) -> npt.NDArray:
        feeds = self.tokenize(texts)
        out = self._session.run([self._spec["output"]], {k: feeds[k] for k in self._spec["inputs"]})[0]
        return np.asarray(out, np.float32)

    def count_truncated(self, texts: Sequence[str]) -> int:
        """How many of ``texts`` exceed the context length (the tokenizer truncates them)."""
        return sum(bool(e.overflowing) for e in self.tokenizer.encode_batch(list(texts)))
