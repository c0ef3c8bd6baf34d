"""What the routes share: the store, its model, the locks and caches (:class:`ServerState`),
and adding uploaded images to the store."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException

from clipsearch.errors import ImageRefused
from clipsearch.server.schemas import TEXT_CACHE_SIZE, UPLOAD_DIR, UPLOAD_SUFFIX
from clipsearch.server.thumbnails import ImageFiles, ImageUnavailable, Thumbnails
from clipsearch.store.schema import ID_HEX

if TYPE_CHECKING:
    import numpy as np
    from fastapi import UploadFile
    from PIL import Image

    from clipsearch.models.base import Encoder
    from clipsearch.collection import Collection
    from clipsearch.store import Hit, Item


class _LRU:
    def __init__(self, size: int):
        self.size = size
        self.data: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any) -> Any:
        value = self.data.get(key)
        if value is not None:
            self.data.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.size:
            self.data.popitem(last=False)


class ServerState:
    """Everything the routes share: the store, the locks, the caches and the settings."""

    def __init__(self, store: Collection, *, token: str | None, private: bool, max_pixels: int | None, thumbnail_dir: Path):
        self.store = store
        self.token = token
        self.private = private
        self.max_pixels = max_pixels
        self.files = ImageFiles()
        self.thumbnails = Thumbnails(thumbnail_dir, self.files, max_pixels=max_pixels)
        self.model_lock = threading.RLock()  # text encoding (tokenizers) and model loading
        self.write_lock = threading.Lock()  # one indexing run at a time from this process
        self._texts = _LRU(TEXT_CACHE_SIZE)
        self._classifiers = _LRU(8)

    # -- model ---------------------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        with self.model_lock:
            return self.store.encoder

    def modalities(self) -> tuple[str, ...]:
        return tuple(self.store.meta.get("modalities") or ("image", "text"))

    def text_vector(self, text: str) -> np.ndarray:
        """The unit query vector ``(dim,)`` of ``text``, cached; embedded by the store's text
        encoder (the ONNX text tower when the model has a bundle)."""
        with self.model_lock:
            vec = self._texts.get(text)
            if vec is None:
                vec = self.store.text_encoder.encode_texts([text], role="query")[0]
                self._texts.put(text, vec)
        return vec

    def image_vector(self, image: Image.Image) -> np.ndarray:
        """The unit vector ``(dim,)`` of a decoded RGB image, preprocessed as indexing does."""
        enc = self.encoder
        if not enc.supports("image"):
            raise ValueError(f"model {enc.name!r} embeds text only; it cannot search with an image")
        return enc.encode_pixel_values(enc.preprocess_images([image]))[0]

    def decode_upload(self, data: bytes) -> Image.Image:
        """Decode uploaded bytes under the pixel cap (drafting JPEGs to the model's input size)."""
        from clipsearch.images import load_image

        pre = self.encoder.info.preprocess
        return load_image(data, max_pixels=self.max_pixels, draft=pre.crop if pre is not None else None)

    # -- store -----------------------------------------------------------------------------------
    def result(self, item: Item) -> dict[str, Any]:
        """An item or hit as the API answers it. A server that other machines reach (``private``)
        shows paths relative to the indexed folders, never where the files lie on this machine."""
        out = item.to_dict()
        if self.private:
            out["path"] = self.store.shown_path(item.path)
            if "extra_paths" in out:
                out["extra_paths"] = [self.store.shown_path(p) for p in item.extra_paths]
            if "source" in out:
                out["source"] = self.store.shown_path(item.source)
        return out

    def item(self, item_id: str, *, with_vector: bool = False) -> Item:
        found = self.store.get(item_id, with_vector=with_vector)
        if found is None:
            raise HTTPException(404, f"no item with id {item_id} in this store")
        return found

    def item_image(self, item_id: str) -> Image.Image:
        """The decoded image of a stored image item (its verified file, under the pixel cap)."""
        from clipsearch.images import load_image

        path = self.files.path_of(self.item(item_id))
        try:
            return load_image(path, max_pixels=self.max_pixels)
        except ImageRefused as exc:
            raise ImageUnavailable(f"the image file of item {item_id} cannot be read: {exc.reason}") from None

    def has_grid(self) -> bool:
        """Whether the model embeds grid cells (what ``rerank`` needs)."""
        return self.store.has_grid

    def search(
        self,
        terms: list[tuple[np.ndarray, float]],
        *,
        k: int,
        modality: str,
        min_score: float | None,
        rerank: int | None = None,
        cell_weight: float | None = None,
        min_confidence: float | None = None,
        query_kind: str = "text",
    ) -> list[Hit]:
        """Hits for weighted query vectors, as :meth:`clipsearch.collection.Collection.search` gives them
        (``rerank`` > 0 searches images and needs a model with a grid; ``None`` leaves it to the
        store, as does ``cell_weight``).

        Raises:
            ValueError: what the library refuses (a 422, see :mod:`clipsearch.server.handlers`).
        """
        from clipsearch.search import Query, Term

        query = Query(tuple(Term("vector", vec, float(w)) for vec, w in terms))
        # Store.search reads its hits from the snapshot it searched, so no lock is needed here.
        return self.store.search(
            query, k=k, modality=modality, min_score=min_score, rerank=rerank, cell_weight=cell_weight,
            min_confidence=min_confidence, query_kind=query_kind,
        )  # fmt: skip

    def results(self, hits: list[Hit], response: Any) -> list[dict[str, Any]]:
        """Hits as the search routes answer them: each with its ``confidence``, ``good_match`` (at
        or above the store's line) and ``match`` (a word for the confidence: strong, good, weak,
        none), and the verdict in headers as well:
        ``X-No-Good-Match`` (``1`` or ``0``) and ``X-Min-Confidence`` (the line judged by)."""
        from clipsearch.calibration import confidence_word

        line = getattr(hits, "min_confidence", None)
        out = []
        for h in hits:
            row = self.result(h)
            calibrated = line is not None and h.confidence is not None
            row["good_match"] = bool(h.confidence >= line) if calibrated else None
            row["match"] = confidence_word(h.confidence, line) if calibrated else None
            out.append(row)
        response.headers["X-No-Good-Match"] = "1" if getattr(hits, "no_good_match", False) else "0"
        if line is not None:
            response.headers["X-Min-Confidence"] = f"{line:.4f}"
        return out

    def classifier(self, labels: tuple[str, ...], templates: str) -> Any:
        from clipsearch.tasks.classify import ZeroShotClassifier

        key = (labels, templates)
        with self.model_lock:
            clf = self._classifiers.get(key)
            if clf is None:
                clf = ZeroShotClassifier(self.store.encoder, list(labels), templates)
                self._classifiers.put(key, clf)
        return clf


def upload_name(upload: UploadFile) -> str:
    name = (upload.filename or "upload").replace("\n", " ").replace("\r", " ")
    return name[-120:]


def add_uploads(state: ServerState, uploads: list[tuple[str, bytes]]) -> dict[str, Any]:
    """Check, keep and index uploaded images; one bad file never stops the others."""
    import hashlib

    from clipsearch.images import load_image, probe_image
    from clipsearch.atomic import write_atomic

    if "image" not in state.modalities():
        raise HTTPException(422, f"model {state.store.model_name!r} embeds text only; this store cannot hold images")
    folder = state.store.local_dir / UPLOAD_DIR
    kept: list[tuple[str, str, Path]] = []  # (name, id, path)
    failed: list[dict[str, str]] = []
    for name, data in uploads:
        if not data:
            failed.append({"name": name, "reason": "empty file"})
            continue
        try:
            load_image(data, max_pixels=state.max_pixels)  # the whole decode, under the pixel cap
            fmt = probe_image(data).format
        except ImageRefused as exc:
            failed.append({"name": name, "reason": exc.reason})
            continue
        sha = hashlib.sha256(data).hexdigest()
        path = folder / f"{sha[:ID_HEX]}{UPLOAD_SUFFIX.get(fmt, '.img')}"
        if not path.is_file():
            write_atomic(path, data)
        kept.append((name, sha[:ID_HEX], path))
    if not kept:
        reasons = "; ".join(f"{f['name']}: {f['reason']}" for f in failed[:5])
        raise HTTPException(422, f"no image could be added ({reasons})")
    if not state.write_lock.acquire(timeout=60):
        raise HTTPException(409, "another upload is being indexed; try again in a moment")
    try:
        summary = state.store.add([str(p) for _, _, p in kept], workers=0)
    finally:
        state.write_lock.release()
    bad = {f.path: f.reason for f in summary.failures}
    added = []
    for name, item_id, path in kept:
        if str(path) in bad:
            failed.append({"name": name, "reason": bad[str(path)]})
        else:
            added.append({"name": name, "id": item_id, "path": str(path)})
    # the summary counts every file sent: those refused before indexing are failures too
    return {"added": added, "failed": failed, "summary": {**summary.to_dict(), "failed": len(failed)}}
