"""The one safe way to turn a file or bytes into RGB pixels.

Every part of clipsearch that reads an image (ingest, search by image, the server's uploads)
calls :func:`load_image`. It either returns a fully loaded ``mode="RGB"`` ``PIL.Image`` with
its file closed, or raises :class:`~clipsearch.errors.ImageRefused` with a short reason
("truncated image file", "not a recognised image format", ...). It never lets a decoder
exception escape, and it never changes Pillow's global settings.

What it does to the pixels:

- refuses images with more pixels than a cap (:data:`MAX_PIXELS`, the ``max_pixels`` argument
  or ``$CLIPSEARCH_MAX_PIXELS``), read from the header before anything is decoded;
- optionally decodes large JPEGs at 1/2, 1/4 or 1/8 scale (``draft``), keeping the shortest
  side at least twice the model's input size;
- takes the first frame of animations (GIF, WebP, APNG);
- applies the EXIF orientation, ignoring EXIF data it cannot parse;
- converts CMYK through the embedded ICC profile when there is one;
- rescales 16- and 32-bit integer and float images to 8 bits without clipping;
- composites transparent images (RGBA, LA, PA, palette or colour-key transparency) on white.
"""

from __future__ import annotations

import enum
import io
import os
import re
import stat
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from clipsearch.errors import ImageRefused

if TYPE_CHECKING:
    from PIL import ImageCms  # imported when first needed: only CMYK files with a profile use it

__all__ = [
    "HEIF_EXTRA_HINT",
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "MAX_PIXELS_ENV",
    "ImageInfo",
    "ImageSource",
    "is_image_path",
    "iter_image_paths",
    "load_image",
    "max_pixels_from_env",
    "probe_image",
]

ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image
"""A file path, the encoded bytes of an image file (e.g. an HTTP upload), or an opened PIL image."""

MAX_PIXELS = 89_478_485
"""Default pixel cap: Pillow's own default ``Image.MAX_IMAGE_PIXELS`` (about 89.5 MP)."""

MAX_PIXELS_ENV = "CLIPSEARCH_MAX_PIXELS"
"""Environment variable that overrides :data:`MAX_PIXELS` (a whole number, or "none")."""

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif",
        ".png", ".apng",
        ".gif",
        ".webp",
        ".bmp",
        ".tif", ".tiff",
        ".pbm", ".pgm", ".ppm", ".pnm",
        ".heic", ".heif", ".avif",
    }
)  # fmt: skip
"""Lowercase file suffixes (with the dot) that folder scans treat as images."""

IMAGE_FIELDS = ("image", "file", "path", "filepath")
"""Record fields (jsonl/csv) that name an image file, tried in this order: by indexing,
training pairs and classification datasets alike."""

HEIF_EXTRA_HINT = "HEIC/AVIF support needs the optional extra: pip install 'clipsearch[heif]'"

# The decoders we let Pillow try, in Pillow's format names. Restricting them keeps exotic
# plugins (EPS runs Ghostscript; TGA has no magic number and "recognises" random bytes) away
# from untrusted files. HEIF appears once pillow-heif has registered it.
_OPEN_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "PPM", "AVIF", "HEIF")

_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # EXIF orientation value -> the transposition that shows the image upright

# Metadata keys that carry an orientation; dropped once the rotation has been applied so
# that nobody downstream rotates the pixels a second time.
_ORIENTATION_KEYS = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)  # signatures used only to word the reason for a file Pillow could not identify

_HEIC_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIF_CONTAINER_BRANDS = frozenset({b"mif1", b"msf1", b"mif2"})

_BYTES_LABEL = "<bytes>"
_PIL_LABEL = "<image>"


class _Default(enum.Enum):
    FROM_ENV = "from_env"


_FROM_ENV = _Default.FROM_ENV


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header says, with width and height as displayed (after EXIF rotation)."""

    width: int  # pixels, after the EXIF orientation is applied
    height: int  # pixels, after the EXIF orientation is applied
    format: str  # Pillow's format name: "JPEG", "PNG", "GIF", "WEBP", "TIFF", "HEIF", ...


# -- public API ------------------------------------------------------------------------------


def load_image(
    source: ImageSource,
    *,
    max_pixels: int | None | _Default = _FROM_ENV,
    draft: int | None = None,
) -> Image.Image:
    """Decode an image file or its bytes into upright RGB pixels.

    Args:
        source: a path, or the bytes of an encoded image file (bytes behave like the file). An
            already opened ``PIL.Image`` is also accepted: same rules, left unmodified, no draft.
        max_pixels: refuse images whose header says width x height exceeds this, before
            decoding anything. ``None`` removes clipsearch's cap (Pillow still refuses images
            over twice its own ``Image.MAX_IMAGE_PIXELS``). Default: ``$CLIPSEARCH_MAX_PIXELS``
            if set, else :data:`MAX_PIXELS`.
        draft: the model's input size (e.g. 224). When given and the image is a JPEG at least
            four times that size, the decoder downsamples by 2, 4 or 8 while keeping the
            shortest side >= ``2 * draft``; much faster, and after the model's own resize the
            pixels differ by well under one level on average. ``None`` decodes at full size.

    Returns:
        A loaded ``PIL.Image`` in mode ``"RGB"``, upright, transparency flattened on white,
        holding no open file.

    Raises:
        ImageRefused: the file is missing, empty, not an image, corrupt, truncated, too large,
            or needs an optional decoder; ``reason`` says which.
        ValueError: ``max_pixels``, ``draft`` or ``$CLIPSEARCH_MAX_PIXELS`` is not a positive
            whole number.
    """
    limit = _resolve_max_pixels(max_pixels)
    if draft is not None and (not _is_int(draft) or draft <= 0):
        raise ValueError(f"draft must be a positive model input size in pixels or None, got {draft!r}")
    label = _label(source)
    if isinstance(source, Image.Image):
        return _from_pil(source, label, limit)
    with _open_stream(source, label) as fp, _refusing(label):
        im = _open(fp, label, limit)
        if draft is not None and im.format in _DRAFT_FORMATS:
            # Pillow picks the largest 1/2, 1/4 or 1/8 scale that keeps both sides >= the
            # request, so a square request of 2*draft keeps the shortest side >= 2*draft,
            # whatever the orientation.
            im.draft("RGB", (2 * draft, 2 * draft))
        im.load()
        transpose = _orientation(im)
        rgb = _to_rgb(im)
    return _upright(rgb, transpose)


def _from_pil(im: Image.Image, label: str, limit: int | None) -> Image.Image:
    """An already opened PIL image through the same rules (never modified; no draft)."""
    if limit is not None and im.width * im.height > limit:
        raise ImageRefused(label, _too_many_pixels(f"{im.width}x{im.height} is {im.width * im.height:,}", limit))
    with _refusing(label):
        im.load()
        transpose = _orientation(im)
        rgb = _to_rgb(im)
    if rgb is im and transpose is None:
        rgb = im.copy()  # never hand back the caller's own object
    return _upright(rgb, transpose)


def _upright(rgb: Image.Image, transpose: Image.Transpose | None) -> Image.Image:
    if transpose is not None:
        rgb = rgb.transpose(transpose)
        for key in _ORIENTATION_KEYS:
            rgb.info.pop(key, None)
    return rgb


def probe_image(source: ImageSource) -> ImageInfo:
    """Read only an image's header: its displayed size (after EXIF rotation) and format.

    Orientation is read from metadata that precedes the pixels (JPEG, TIFF, WebP; a PNG's
    eXIf chunk only when it comes before the image data, as it usually does).

    Raises:
        ImageRefused: as :func:`load_image`, for problems visible in the header.
    """
    label = _label(source)
    with _open_stream(source, label) as fp, _refusing(label):
        im = _open(fp, label, None)
        width, height = im.size
        transpose = _orientation(im, header_only=True)
        fmt = im.format or "unknown"
    if transpose in (
        Image.Transpose.TRANSPOSE,
        Image.Transpose.ROTATE_270,
        Image.Transpose.TRANSVERSE,
        Image.Transpose.ROTATE_90,
    ):
        width, height = height, width
    return ImageInfo(width=width, height=height, format=fmt)


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """True when the file name ends in one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def iter_image_paths(paths: Iterable[str | os.PathLike[str]], recursive: bool = True) -> Iterator[Path]:
    """Yield the image files named by ``paths``, in a stable order.

    Folders are walked in sorted order (files of a folder before its subfolders), yielding
    files with an image extension and skipping hidden files and folders (names starting with
    "."); symlinked folders are not followed. Anything else named explicitly is yielded as is,
    whatever its extension and even if it does not exist, so that :func:`load_image` can
    refuse it with a reason instead of it vanishing silently.

    Args:
        paths: files and folders, as given by the user.
        recursive: walk subfolders too; otherwise only the files directly in each folder.
    """
    for given in paths:
        path = Path(given)
        if path.is_dir():
            yield from _walk(path, recursive)
        else:
            yield path


def max_pixels_from_env() -> int | None:
    """The pixel cap from ``$CLIPSEARCH_MAX_PIXELS``, or :data:`MAX_PIXELS` when unset.

    Accepts a positive whole number (``_`` and ``,`` separators allowed) or "none" for no cap.
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return MAX_PIXELS
    if raw.lower() == "none":
        return None
    digits = raw.replace("_", "").replace(",", "")
    if not digits.isdigit() or int(digits) <= 0:
        raise ValueError(f"{MAX_PIXELS_ENV} must be a positive whole number of pixels or 'none', got {raw!r}")
    return int(digits)


# -- opening ---------------------------------------------------------------------------------


def _resolve_max_pixels(max_pixels: int | None | _Default) -> int | None:
    if max_pixels is _FROM_ENV:
        return max_pixels_from_env()
    if max_pixels is not None and (not _is_int(max_pixels) or max_pixels <= 0):
        raise ValueError(f"max_pixels must be a positive number of pixels or None, got {max_pixels!r}")
    return max_pixels  # type: ignore[return-value]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _label(source: object) -> str:
    """How a source is named in a refusal: its path, or ``<bytes>``."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _BYTES_LABEL
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)  # type: ignore[return-value]
    if isinstance(source, Image.Image):
        return _PIL_LABEL
    raise TypeError(f"image source must be a path, bytes or a PIL image, got {type(source).__name__}")


@contextmanager
def _open_stream(source: ImageSource, label: str) -> Iterator[IO[bytes]]:
    """A readable binary stream over ``source``, closed on exit; refuses missing/empty files."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageRefused(label, "empty file")
        with io.BytesIO(data) as buffer:
            yield buffer
        return
    try:
        st = os.stat(source)
        if stat.S_ISDIR(st.st_mode):
            raise ImageRefused(label, "is a folder, not an image file")
        if not stat.S_ISREG(st.st_mode):
            raise ImageRefused(label, "not a regular file")
        if st.st_size == 0:
            raise ImageRefused(label, "empty file")
        fp = open(source, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        raise ImageRefused(label, "file not found") from None
    except PermissionError:
        raise ImageRefused(label, "permission denied") from None
    except ValueError:  # a NUL byte in the name
        raise ImageRefused(label, "invalid file name") from None
    except OSError as exc:
        raise ImageRefused(label, f"cannot read file: {(exc.strerror or 'I/O error').lower()}") from None
    with fp:
        yield fp


def _open(fp: IO[bytes], label: str, limit: int | None) -> ImageFile.ImageFile:
    """Identify the image and read its header; refuse it if it has more than ``limit`` pixels."""
    head = _peek(fp, 64)
    container = _heif_kind(head)
    if container is not None:
        _ensure_heif_support(container, label)
    Image.init()  # load Pillow's plugins so that _allowed_formats() sees them all
    try:
        im = Image.open(fp, formats=_allowed_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own global limit fired first (or its warning is configured as an error).
        raise ImageRefused(label, _bomb_reason(str(exc), limit)) from None
    except UnidentifiedImageError:
        raise ImageRefused(label, _unidentified_reason(head)) from None
    width, height = im.size
    if width < 1 or height < 1:
        im.close()
        raise ImageRefused(label, f"image has no pixels ({width}x{height})")
    if limit is not None and width * height > limit:
        im.close()
        raise ImageRefused(label, _too_many_pixels(f"{width}x{height} is {width * height:,}", limit))
    return im


def _allowed_formats() -> tuple[str, ...]:
    # Image.open raises KeyError for a format no plugin registered, so list only those present.
    return tuple(f for f in _OPEN_FORMATS if f in Image.OPEN)


def _peek(fp: IO[bytes], n: int) -> bytes:
    pos = fp.tell()
    head = fp.read(n)
    fp.seek(pos)
    return head


def _heif_kind(head: bytes) -> str | None:
    """"heif" or "avif" when ``head`` starts an ISO-BMFF image container (ftyp box), else None."""
    if head[4:8] != b"ftyp":
        return None
    major = head[8:12]
    if major in _AVIF_BRANDS:
        return "avif"
    if major in _HEIC_BRANDS:
        return "heif"
    if major in _HEIF_CONTAINER_BRANDS:
        box_end = int.from_bytes(head[0:4], "big")
        compatible = head[16 : min(box_end, len(head))]
        brands = {compatible[i : i + 4] for i in range(0, len(compatible) - 3, 4)}
        return "avif" if brands & _AVIF_BRANDS else "heif"
    return None


_heif_lock = threading.Lock()


def _ensure_heif_support(kind: str, label: str) -> None:
    """Make HEIC (and, where Pillow lacks it, AVIF) decodable, or refuse with the install hint."""
    if kind == "avif" and _pillow_reads_avif():
        return
    if not _register_pillow_heif():
        raise ImageRefused(label, HEIF_EXTRA_HINT)


@lru_cache(maxsize=1)
def _pillow_reads_avif() -> bool:
    from PIL import features

    return bool(features.check("avif"))


_heif_registered = False


def _register_pillow_heif() -> bool:
    """Register pillow-heif's opener with Pillow once; False when the extra is not installed."""
    global _heif_registered
    with _heif_lock:
        if not _heif_registered:
            try:
                import pillow_heif
            except ImportError:
                return False
            pillow_heif.register_heif_opener()
            if not _pillow_reads_avif() and hasattr(pillow_heif, "register_avif_opener"):
                pillow_heif.register_avif_opener()
            _heif_registered = True
    return True


# -- reasons ---------------------------------------------------------------------------------


def _too_many_pixels(what: str, limit: int) -> str:
    return f"{what} pixels, over the limit of {limit:,} pixels (raise {MAX_PIXELS_ENV} to allow it)"


def _bomb_reason(message: str, limit: int | None) -> str:
    """Reword Pillow's decompression-bomb error, which states the pixel count and its limit."""
    numbers = [int(n) for n in re.findall(r"\d+", message)]
    if not numbers:
        return "too many pixels: possible decompression bomb"
    pixels = numbers[0]
    if limit is not None and pixels > limit:
        return _too_many_pixels(f"{pixels:,}", limit)
    pillow_limit = f" of {numbers[1]:,} pixels" if len(numbers) > 1 else ""
    return f"{pixels:,} pixels, over Pillow's decompression-bomb limit{pillow_limit}"


def _unidentified_reason(head: bytes) -> str:
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return f"corrupt {name} file: its header cannot be read"
    return "not a recognised image format"


@contextmanager
def _refusing(label: str) -> Iterator[None]:
    """Turn any exception a decoder raises into ImageRefused with a short reason."""
    try:
        yield
    except ImageRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - fuzzed files raise almost anything; none may escape
        raise ImageRefused(label, _decode_reason(exc)) from None


def _decode_reason(exc: Exception) -> str:
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return _bomb_reason(str(exc), None)
    if isinstance(exc, MemoryError):
        return "not enough memory to decode the image"
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, EOFError) or "truncated" in message.lower():
        return "truncated image file"
    message = re.sub(r" when reading image file$", "", message)
    message = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", message)  # no object reprs in reasons
    code = re.fullmatch(r"decoder error (-?\d+)", message)
    if code:
        message = ImageFile.ERRORS.get(int(code.group(1)), message)
    message = message.rstrip(". ")
    if not message:
        return "corrupt image data"
    if len(message) > 80:
        message = message[:77] + "..."
    return f"corrupt image data: {message}"


# -- pixels ----------------------------------------------------------------------------------


def _orientation(im: Image.Image, *, header_only: bool = False) -> Image.Transpose | None:
    """The transposition that EXIF/XMP orientation asks for; None if none or unreadable."""
    try:
        # PngImageFile.getexif decodes the whole image to find a late eXIf chunk; the base
        # method reads only what the header already gave.
        exif = Image.Image.getexif(im) if header_only else im.getexif()
        value = exif.get(ExifTags.Base.Orientation)
    except Exception:  # noqa: BLE001 - broken EXIF must not cost the pixels (hopper_bad_exif.jpg)
        return None
    return _TRANSPOSE.get(value) if _is_int(value) else None


def _to_rgb(im: Image.Image) -> Image.Image:
    """Loaded image in any Pillow mode -> mode "RGB" (see the module docstring for the rules)."""
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    if im.mode.startswith("I") or im.mode == "F":
        return _high_depth_to_rgb(im)
    if im.mode == "CMYK":
        return _cmyk_to_rgb(im)
    if _has_alpha(im):
        return _flatten_on_white(im.convert("RGBA"))
    return im.convert("RGB")


def _has_alpha(im: Image.Image) -> bool:
    if "A" in im.getbands() or "a" in im.getbands() or "transparency" in im.info:
        return True
    return im.mode == "P" and im.palette is not None and im.palette.mode == "RGBA"


def _flatten_on_white(rgba: Image.Image) -> Image.Image:
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    """CMYK -> sRGB through the embedded ICC profile; a plain conversion without (or on error)."""
    icc = im.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            rgb = ImageCms.profileToProfile(im, source, _srgb_profile(), outputMode="RGB")
        except Exception:  # noqa: BLE001 - a broken or unsupported profile: keep the pixels
            rgb = None
        if rgb is not None:
            rgb.info.pop("icc_profile", None)
            return rgb
    rgb = im.convert("RGB")
    rgb.info.pop("icc_profile", None)
    return rgb


@lru_cache(maxsize=1)
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _high_depth_to_rgb(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float grey -> 8-bit RGB, scaled by the value range, never clipped.

    - ``I;16*``: 0..65535 -> 0..255.
    - ``I``: the same when all values lie in 0..65535 (how Pillow holds 16-bit PGM/PNG data);
      otherwise the data's own min..max (a signed 32-bit range would leave every real image
      one flat grey).
    - ``F``: 0..1 -> 0..255 when all finite values lie in [0, 1]; otherwise min..max.
      NaN becomes black, +-inf the extremes.
    Colour-key transparency (``info["transparency"]``) is flattened on white.
    """
    values = np.asarray(im)
    if im.mode == "F":
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if lo >= 0.0 and hi <= 1.0:
            lo, hi = 0.0, 1.0
        values = np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo)
    elif im.mode == "I":
        lo, hi = float(values.min()), float(values.max())
        if lo >= 0 and hi <= 65535:
            lo, hi = 0.0, 65535.0
    else:  # I;16, I;16B, I;16L, I;16N
        lo, hi = 0.0, 65535.0
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    grey = np.clip((values.astype(np.float32) - lo) * scale, 0, 255)  # clips float rounding only
    out = Image.fromarray(np.rint(grey).astype(np.uint8)).convert("RGB")
    key = im.info.get("transparency")
    if _is_int(key):
        out.paste((255, 255, 255), mask=Image.fromarray(((values == key) * 255).astype(np.uint8)))
    return out


# -- folders ---------------------------------------------------------------------------------


def _walk(top: Path, recursive: bool) -> Iterator[Path]:
    for root, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for name in sorted(files):
            if not name.startswith(".") and is_image_path(name):
                yield Path(root) / name
