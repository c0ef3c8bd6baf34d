"""The ONNX Runtime backend: a model's towers exported once to ONNX, run without torch.

A *bundle* is a folder ``<cache>/<key>/`` (``<cache>``: ``$CLIPSEARCH_ONNX_CACHE``, else
``onnx/`` in the user's cache folder) written by
:func:`clipsearch.models.onnx_export.export_bundle`. ``<key>`` is a digest of the model's files
(weights, configs, tokenizer) and the exporter's version, so changed weights give another
folder. It holds ``bundle.json`` (see :data:`BUNDLE_FORMAT` and docs/backends.md), the fp32
graphs ``text.onnx`` / ``image.onnx``, their dynamic-int8 copies and ``tokenizer.json``.

int8 is used for a tower only where the *guard* passed: the int8 embeddings of a calibration
sample (the user's first images being indexed, the demo world for the demo model, a fixed set
of texts for the text tower) stay within cosine :data:`INT8_MIN_COSINE` of the fp32 ones.
fp32 graphs match torch within cosine 0.9999, so a store's vectors stay comparable whichever
backend made them.

This module imports numpy, onnxruntime and tokenizers only (never torch), so a search process
can embed its queries without loading torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from clipsearch.models.base import Encoder, ModelInfo, TextRole, cosine_similarity
from clipsearch.models.preprocess import Preprocess

log = logging.getLogger("clipsearch")

BUNDLE_FORMAT = 1
"""``bundle.json``'s ``format``; a bundle of another format is not read."""
EXPORTER_VERSION = 2
"""Part of every bundle key: raising it (a changed export) makes every model export again."""
CACHE_ENV = "CLIPSEARCH_ONNX_CACHE"
BUNDLE_FILE = "bundle.json"
INT8_MIN_COSINE = 0.995
"""The int8 guard: every calibration embedding must keep at least this cosine to its fp32 twin."""
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


def update_guard(folder: Path, tower: str, result: dict[str, Any]) -> None:
    """Record a guard result for ``tower`` ("image" or "text") in ``bundle.json``, atomically."""
    from clipsearch.atomic import write_atomic

    path = Path(folder) / BUNDLE_FILE
    with file_lock(Path(str(folder).rstrip("/") + ".lock")):
        bundle = read_bundle(folder)
        bundle.setdefault("guard", {})[tower] = result
        write_atomic(path, json.dumps(bundle).encode("utf-8"), fsync=False)


class file_lock:
    """An exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block: one
    process at a time exports a key or records a guard."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self) -> None:
        import fcntl

        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        import fcntl

        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


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


def guard_result(fp32: npt.NDArray[np.float32], int8: npt.NDArray[np.float32], source: str) -> dict[str, Any]:
    """The guard's verdict on ``(n, dim)`` fp32 and int8 embeddings of the same ``n`` inputs:
    ``{"int8_ok", "min_cosine", "sample", "source"}``."""
    a = np.asarray(fp32, np.float64)
    b = np.asarray(int8, np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    low = float(cos.min()) if len(cos) else 0.0
    if not np.isfinite(low):
        low = -1.0
    return {"int8_ok": bool(len(cos)) and low >= INT8_MIN_COSINE, "min_cosine": round(low, 6), "sample": int(len(cos)), "source": source}


def load_tokenizer(path: Path) -> Any:
    """The bundle's ``tokenizers.Tokenizer`` (it truncates and pads by itself)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


class _Tower:
    """One tower's fp32 and int8 sessions, built on first use."""

    def __init__(self, folder: Path, spec: dict[str, Any]):
        self.folder, self.spec = folder, spec
        self._sessions: dict[bool, Any] = {}
        self._lock = threading.Lock()

    @property
    def has_int8(self) -> bool:
        return bool(self.spec.get("onnx_int8"))

    def session(self, int8: bool) -> Any:
        int8 = int8 and self.has_int8
        if int8 not in self._sessions:
            with self._lock:
                if int8 not in self._sessions:
                    name = self.spec["onnx_int8"] if int8 else self.spec["onnx"]
                    self._sessions[int8] = make_session(self.folder / name)
        return self._sessions[int8]


class OnnxTextEncoder(Encoder):
    """A bundle's text tower as an :class:`Encoder` (``info.modalities == ("text",)``).

    Args:
        folder: a bundle folder (:func:`bundle_dir`).
        int8: use the int8 graph; None: where the bundle's text guard passed.
        name: the name the model was loaded by (a bundle is shared by every copy of the same
            weights); default: the name it was exported under.
    """

    def __init__(self, folder: Path, *, int8: bool | None = None, name: str | None = None):
        self.folder = Path(folder)
        self.bundle: dict[str, Any] = read_bundle(self.folder)
        self._name = name or self.bundle["model"]
        self.info = _info(self.bundle, modalities=("text",), name=self._name)
        spec = self.bundle.get("text")
        if not spec:
            raise ValueError(f"ONNX bundle {self.folder} has no text tower")
        self._text = _Tower(self.folder, spec)
        self._tokenizer: Any = None
        self.text_int8 = self._guarded("text") if int8 is None else bool(int8 and self._text.has_int8)

    def _guarded(self, tower: str) -> bool:
        g = (self.bundle.get("guard") or {}).get(tower)
        return bool(g and g.get("int8_ok") and (self.bundle.get(tower) or {}).get("onnx_int8"))

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.folder / self.bundle["text"]["tokenizer"])
        return self._tokenizer

    def tokenize(self, texts: Sequence[str]) -> dict[str, npt.NDArray[np.int64]]:
        """``input_ids`` and ``attention_mask``, ``(n, L)`` int64, padded to the longest text."""
        enc = self.tokenizer.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in enc], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": mask}

    def text_embeds(self, texts: Sequence[str], *, int8: bool) -> npt.NDArray[np.float32]:
        """``(n, dim)`` unnormalised text embeddings from the fp32 or int8 graph."""
        spec = self.bundle["text"]
        feeds = self.tokenize(texts)
        out = self._text.session(int8).run([spec["output"]], {k: feeds[k] for k in spec["inputs"]})[0]
        return np.asarray(out, np.float32)

    def _encode_text_batch(self, texts: list[str], role: TextRole) -> npt.NDArray:
        return self.text_embeds(texts, int8=self.text_int8)

    def count_truncated(self, texts: Sequence[str]) -> int:
        if getattr(self, "_untruncated", None) is None:  # a copy that neither cuts nor pads
            from tokenizers import Tokenizer

            self._untruncated = Tokenizer.from_str(self.tokenizer.to_str())
            self._untruncated.no_truncation()
            self._untruncated.no_padding()
        lengths = [len(e.ids) for e in self._untruncated.encode_batch(list(texts))]
        return sum(n > self.info.context_length for n in lengths)

    def guard_text(self, texts: Sequence[str], source: str) -> dict[str, Any] | None:
        """Run the int8 guard on ``texts``; records it in ``bundle.json`` and follows it. None: no int8 graph."""
        if not self._text.has_int8:
            return None
        result = guard_result(self.text_embeds(texts, int8=False), self.text_embeds(texts, int8=True), source)
        update_guard(self.folder, "text", result)
        self.bundle.setdefault("guard", {})["text"] = result
        self.text_int8 = result["int8_ok"]
        return result

    def precision(self) -> dict[str, str]:
        """``{"text": "int8" | "fp32", ...}``: what each tower runs now."""
        return {"text": "int8" if self.text_int8 else "fp32"}


class OnnxEncoder(OnnxTextEncoder):
    """Both towers of a bundle as an :class:`Encoder`.

    The image path takes the same ``(n, 3, crop, crop)`` pixels as the torch backends
    (:meth:`Encoder.preprocess_images`); :class:`OnnxGridEncoder` adds the grid of cells for
    models that have one.

    Args:
        folder: a bundle folder.
        int8: use the int8 graphs; None: each tower where its guard passed.
        name: the name the model was loaded by; default: the name it was exported under.
    """

    def __init__(self, folder: Path, *, int8: bool | None = None, name: str | None = None):
        super().__init__(folder, int8=int8, name=name)
        spec = self.bundle.get("image")
        if not spec:
            raise ValueError(f"ONNX bundle {self.folder} has no image tower")
        self.info = _info(self.bundle, modalities=("image", "text"), name=self._name)
        self._image = _Tower(self.folder, spec)
        self.image_int8 = self._guarded("image") if int8 is None else bool(int8 and self._image.has_int8)

    def image_outputs(self, pixels: npt.NDArray[np.float32], *, int8: bool, cells: bool = False) -> list[npt.NDArray[np.float32]]:
        """``[embeds (n, dim)]``, plus ``cells (n, gh, gw, dim)`` with ``cells``; unnormalised."""
        spec = self.bundle["image"]
        names = [spec["output"]] + ([spec["cells_output"]] if cells else [])
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        return [np.asarray(o, np.float32) for o in self._image.session(int8).run(names, {spec["input"]: x})]

    def _encode_pixels(self, pixels: npt.NDArray[np.float32]) -> npt.NDArray:
        return self.image_outputs(pixels, int8=self.image_int8)[0]

    def guard_images(self, pixels: npt.NDArray[np.float32], source: str) -> dict[str, Any] | None:
        """Run the int8 guard on a ``(n, 3, crop, crop)`` calibration sample; records the result in
        ``bundle.json`` and follows it (int8 only if it passed). None: no int8 graph."""
        if not self._image.has_int8:
            return None
        fp32 = self.image_outputs(pixels, int8=False)[0]
        int8 = self.image_outputs(pixels, int8=True)[0]
        result = guard_result(fp32, int8, source)
        update_guard(self.folder, "image", result)
        self.bundle.setdefault("guard", {})["image"] = result
        self.follow_guard(result)
        return result

    def follow_guard(self, result: dict[str, Any] | None) -> None:
        """Use the int8 image graph exactly when ``result`` (a guard result) says it is safe."""
        self.image_int8 = bool(result and result.get("int8_ok") and self._image.has_int8)

    def precision(self) -> dict[str, str]:
        return {"image": "int8" if self.image_int8 else "fp32", **super().precision()}


class OnnxGridEncoder(OnnxEncoder):
    """:class:`OnnxEncoder` for a model with a grid of cell vectors (the demo model)."""

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(gh, gw)``: cells per image."""
        gh, gw = self.info.extra["grid"]
        return int(gh), int(gw)

    def encode_pixels_with_grid(
        self, pixels: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """One pass: unit image vectors ``(n, dim)`` and unit cell vectors ``(n, gh, gw, dim)``."""
        vecs, cells = self.image_outputs(pixels, int8=self.image_int8, cells=True)
        vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=-1, keepdims=True), 1e-12)
        cells = cells / np.maximum(np.linalg.norm(cells, axis=-1, keepdims=True), 1e-12)
        return np.ascontiguousarray(vecs, np.float32), np.ascontiguousarray(cells, np.float32)

    def patch_grid_from_pixels(self, pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The unit cell vectors ``(n, gh, gw, dim)`` of a ``(n, 3, S, S)`` batch."""
        return self.encode_pixels_with_grid(pixels)[1]

    def encode_patch_grid(self, images: Sequence[Any], *, batch_size: int = 32) -> npt.NDArray[np.float32]:
        """The unit cell vectors ``(n, gh, gw, dim)`` of n RGB images."""
        gh, gw = self.grid_shape
        rows = [
            self.patch_grid_from_pixels(self.preprocess_images(list(images[i : i + batch_size])))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(rows) if rows else np.zeros((0, gh, gw, self.dim), np.float32)


def open_bundle(folder: Path, *, int8: bool | None = None, name: str | None = None) -> OnnxTextEncoder:
    """The right encoder class for a bundle: text only, both towers, or both with a grid."""
    bundle = read_bundle(folder)
    if not bundle.get("image"):
        return OnnxTextEncoder(folder, int8=int8, name=name)
    if bundle["image"].get("cells_output"):
        return OnnxGridEncoder(folder, int8=int8, name=name)
    return OnnxEncoder(folder, int8=int8, name=name)


def _info(bundle: dict[str, Any], modalities: tuple[str, ...], name: str) -> ModelInfo:
    d = dict(bundle.get("info") or {})
    pre = d.get("preprocess")
    preprocess = Preprocess(**{**pre, "mean": tuple(pre["mean"]), "std": tuple(pre["std"])}) if pre and "image" in modalities else None
    extra = dict(d.get("extra") or {})
    extra.update(runtime="onnx", onnx_bundle=bundle.get("key"))
    if "path" in extra and name != bundle["model"]:
        extra.pop("path")  # the first exporter's folder, not this copy's
    return ModelInfo(
        name=name,
        backend=d.get("backend", "onnx"),
        dim=int(bundle["dim"]),
        modalities=modalities,
        context_length=int(bundle["text"]["context_length"]) if bundle.get("text") else int(d.get("context_length", 0)),
        preprocess=preprocess,
        logit_scale=float(d.get("logit_scale", 100.0)),
        extra=extra,
    )


def probe_agrees(bundle: dict[str, Any], recorded_text: Sequence[Sequence[float]]) -> float:
    """The lowest cosine between a store's recorded text probe and the bundle's ``probe_text``."""
    a, b = np.asarray(recorded_text, np.float32), np.asarray(bundle.get("probe_text") or [], np.float32)
    if a.shape != b.shape or not a.size:
        return -1.0
    return float(np.diag(cosine_similarity(a, b)).min())
