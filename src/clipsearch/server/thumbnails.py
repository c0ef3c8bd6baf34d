"""The image files behind stored items, and their thumbnails, cached on disk.

The server shows an image only through its item: the file is the one the store recorded for the
id, and its bytes must still hash to the id (a file edited or replaced since indexing is not
served under the old id). Nothing a request says is ever used as a path.

Thumbnails are generated once per item, on first request, and kept under the store folder
(``STORE/thumbnails/ID.webp``, or ``.jpg`` where Pillow lacks WebP). Ids are content hashes, so
a thumbnail never goes stale; each is written to a temporary file and renamed into place, so a
reader sees the whole file or none. When the folder cannot be written the thumbnail is still
made and sent, just not kept.
"""

from __future__ import annotations

import hashlib
import io
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clipsearch.atomic import write_atomic

if TYPE_CHECKING:
    from PIL import Image

    from clipsearch.store import Item

THUMBNAIL_SIDE = 320
"""Longest side of a thumbnail in pixels (sharp in a ~160 px grid cell on a 2x screen)."""

THUMBNAIL_DIR = "thumbnails"

BROWSER_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp", "BMP": "image/bmp"}
"""Formats sent to the browser as stored; others (TIFF, HEIF, PNM, ...) are converted to PNG."""

_CHUNK = 1 << 20


class ImageUnavailable(Exception):
    """The item has no image file the server can show; the message says why, in one sentence."""


@dataclass(frozen=True)
class Blob:
    """Bytes to send, or a file holding them, with their media type."""

    media_type: str
    path: Path | None = None
    data: bytes | None = None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class ImageFiles:
    """Finds the file of an image item and checks that its bytes are still the item's.

    A check is remembered per ``(path, size, mtime)``, so a file is hashed once until it changes.
    """

    def __init__(self) -> None:
        self._verified: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    def path_of(self, item: Item) -> Path:
        """The first of the item's paths whose bytes hash to the item's ``sha256``.

        Raises:
            ImageUnavailable: a text item, or no path still holds the indexed bytes.
        """
        if item.modality != "image":
            raise ImageUnavailable(f"item {item.id} is a text passage, not an image")
        if not item.paths:
            raise ImageUnavailable(f"item {item.id} has no image file")
        for raw in item.paths:
            path = Path(raw)
            try:
                st = path.stat()
            except OSError:
                continue
            if not path.is_file():
                continue
            key = (str(path), st.st_size, st.st_mtime_ns)
            with self._lock:
                digest = self._verified.get(key)
            if digest is None:
                try:
                    digest = file_sha256(path)
                except OSError:
                    continue
                with self._lock:
                    if len(self._verified) > 100_000:
                        self._verified.clear()
                    self._verified[key] = digest
            if item.sha256 is None or digest == item.sha256:
                return path
        raise ImageUnavailable(f"the image file of item {item.id} is missing or has changed since it was indexed; index it again")

    def original(self, item: Item, *, max_pixels: int | None) -> Blob:
        """The item's image for display: its file as stored when browsers show that format, else a PNG."""
        from clipsearch.errors import ImageRefused
        from clipsearch.images import load_image, probe_image

        path = self.path_of(item)
        try:
            fmt = probe_image(path).format
        except ImageRefused as exc:
            raise ImageUnavailable(f"the image file of item {item.id} cannot be read: {exc.reason}") from None
        if fmt in BROWSER_FORMATS:
            return Blob(BROWSER_FORMATS[fmt], path=path)
        try:
            image = load_image(path, max_pixels=max_pixels)
        except ImageRefused as exc:
            raise ImageUnavailable(f"the image file of item {item.id} cannot be shown: {exc.reason}") from None
        buf = io.BytesIO()
        image.save(buf, format="PNG", optimize=False)
        return Blob("image/png", data=buf.getvalue())


class Thumbnails:
    """Thumbnails of image items, made once and kept in ``folder``.

    Args:
        folder: where to keep them (created on first write).
        files: resolves and verifies the items' image files.
        side: longest side in pixels.
        max_pixels: the decoder's pixel cap (see :func:`clipsearch.images.load_image`).
    """

    def __init__(self, folder: Path, files: ImageFiles, *, side: int = THUMBNAIL_SIDE, max_pixels: int | None = None):
        from PIL import features

        if not isinstance(side, int) or side < 16:
            raise ValueError(f"thumbnail side must be a whole number of pixels >= 16, got {side!r}")
        self.folder = Path(folder)
        self.files = files
        self.side = side
        self.max_pixels = max_pixels
        webp = bool(features.check("webp"))
        self.format, self.suffix, self.media_type = ("WEBP", ".webp", "image/webp") if webp else ("JPEG", ".jpg", "image/jpeg")

    def cached_path(self, item_id: str) -> Path:
        """Where the thumbnail of ``item_id`` is kept (``item_id`` is a validated hex id)."""
        return self.folder / f"{item_id}{self.suffix}"

    def get(self, item: Item) -> Blob:
        """The item's thumbnail: from the cache, or made now (and kept when the folder is writable).

        Raises:
            ImageUnavailable: a text item, or its image cannot be read.
        """
        cached = self.cached_path(item.id)
        if cached.is_file():
            return Blob(self.media_type, path=cached)
        data = self.render(item)
        try:
            write_atomic(cached, data, fsync=False)  # a cache: rebuilt if lost
        except OSError:
            return Blob(self.media_type, data=data)  # read-only store: serve it anyway
        return Blob(self.media_type, path=cached)

    def render(self, item: Item) -> bytes:
        """Encode a thumbnail of the item's image: longest side at most ``side`` pixels."""
        from clipsearch.errors import ImageRefused
        from clipsearch.images import load_image

        path = self.files.path_of(item)
        try:
            image = load_image(path, max_pixels=self.max_pixels, draft=self.side // 2)
        except ImageRefused as exc:
            raise ImageUnavailable(f"the image file of item {item.id} cannot be read: {exc.reason}") from None
        return encode_thumbnail(image, self.side, self.format)


def encode_thumbnail(image: Image.Image, side: int, fmt: str) -> bytes:
    """``image`` shrunk (never enlarged) to fit ``side`` x ``side``, encoded as ``fmt``."""
    from PIL import Image

    thumb = image.copy()
    thumb.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    buf = io.BytesIO()
    if fmt == "WEBP":
        thumb.save(buf, format="WEBP", quality=82, method=4)
    else:
        thumb.save(buf, format="JPEG", quality=85, optimize=True)
    return buf.getvalue()
