"""load_image: path or bytes in, upright RGB pixels out, or ImageRefused with a short reason."""

from __future__ import annotations

import io
import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from images_helpers import (
    HOSTILE_IMAGES,
    clip_resize_crop,
    cmyk_icc_profile,
    jpeg_bytes,
    make_clip_224,
    png_header_only,
    synth_photo,
)
from PIL import Image, ImageFile, ImageOps, features

from clipsearch import images
from clipsearch.errors import ImageRefused
from clipsearch.images import (
    HEIF_EXTRA_HINT,
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    ImageInfo,
    is_image_path,
    iter_image_paths,
    load_image,
    probe_image,
)

HOSTILE_FILES = sorted(p.name for p in HOSTILE_IMAGES.iterdir())
LIMIT_HINT = "(raise CLIPSEARCH_MAX_PIXELS to allow it)"


@pytest.fixture(autouse=True)
def _default_pixel_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIPSEARCH_MAX_PIXELS", raising=False)


def refusal(source, **kwargs) -> str:
    """The reason load_image gives for refusing ``source`` (fails the test if it loads)."""
    with pytest.raises(ImageRefused) as info:
        load_image(source, **kwargs)
    return info.value.reason


def pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.int16)


def encode(im: Image.Image, fmt: str, **save_args) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **save_args)
    return buf.getvalue()


# -- the hostile folder ----------------------------------------------------------------------

# What each file in tests/data/images/hostile must give: ("loaded", (width, height)) or
# ("refused", exact reason). Checked against Pillow 12.3 by opening each file by hand.
EXPECTED = {
    "16bit.cropped.tif": ("loaded", (64, 64)),
    "1_trns.png": ("loaded", (64, 64)),
    "PILLOW-LICENSE.txt": ("refused", "not a recognised image format"),
    "blend_transparency.png": ("loaded", (1, 1)),
    "broken.png": ("refused", "corrupt PNG file: its header cannot be read"),
    "broken_data_stream.png": ("refused", "corrupt image data: unrecognized data stream contents"),
    # libtiff reports "Truncated File Read" as a warning, then a bare decoding error.
    "crash-0c7e0e8e11ce787078f00b5b0ca409a167f070e0.tif": ("refused", "corrupt image data: decoding error"),
    "crash-1152ec2d1a1a71395b6f2ce6721c38924d025bf3.tif": ("refused", "corrupt image data: decoding error"),
    "decompression_bomb.gif": (
        "refused",
        f"4,364,696,535 pixels, over the limit of 89,478,485 pixels {LIMIT_HINT}",
    ),
    "different_transparency.gif": ("loaded", (100, 100)),
    "exif_imagemagick_orientation.png": ("loaded", (512, 512)),
    "flower.jpg": ("loaded", (480, 360)),
    "hopper.gif": ("loaded", (128, 128)),
    "hopper.jpg": ("loaded", (128, 128)),
    "hopper.png": ("loaded", (128, 128)),
    "hopper.webp": ("loaded", (128, 128)),
    "hopper_16bit.pgm": ("loaded", (128, 128)),
    "hopper_1bit.pbm": ("loaded", (128, 128)),
    "hopper_bad_exif.jpg": ("loaded", (500, 500)),
    "hopper_gray.jpg": ("loaded", (128, 128)),
    "hopper_orientation_3.jpg": ("loaded", (128, 128)),
    "hopper_orientation_6.jpg": ("loaded", (128, 128)),
    "iptc.jpg": ("loaded", (640, 480)),
    "junk_jpeg_header.jpg": ("loaded", (1024, 768)),
    "pil_sample_cmyk.jpg": ("loaded", (100, 100)),
    "truncated_jpeg.jpg": ("refused", "truncated image file"),
}


def test_hostile_folder_is_there():
    assert len(HOSTILE_FILES) >= 20, f"expected the hostile test images in {HOSTILE_IMAGES}"


@pytest.mark.parametrize("name", HOSTILE_FILES)
def test_every_hostile_file_loads_or_is_refused_with_a_reason(name):
    try:
        im = load_image(HOSTILE_IMAGES / name)
    except ImageRefused as e:
        assert e.source == str(HOSTILE_IMAGES / name)
        # A short human phrase: no traceback, no repr noise, no path.
        assert re.fullmatch(r"[A-Za-z0-9][\w ,.:;'()/\[\]-]{2,150}", e.reason), e.reason
        assert "Error" not in e.reason and "<" not in e.reason and str(HOSTILE_IMAGES) not in e.reason
    else:
        assert im.mode == "RGB"
        assert 1 <= im.width <= 10_000 and 1 <= im.height <= 10_000
        im.getpixel((0, 0))  # fully loaded


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_file_expectations(name):
    outcome, expected = EXPECTED[name]
    if outcome == "refused":
        assert refusal(HOSTILE_IMAGES / name) == expected
    else:
        im = load_image(HOSTILE_IMAGES / name)
        assert (im.mode, im.size) == ("RGB", expected)


@pytest.mark.parametrize("name", HOSTILE_FILES)
def test_bytes_behave_like_the_path(name):
    data = (HOSTILE_IMAGES / name).read_bytes()
    try:
        from_path = load_image(HOSTILE_IMAGES / name)
    except ImageRefused as e:
        assert refusal(data) == e.reason
        with pytest.raises(ImageRefused) as info:
            load_image(data)
        assert info.value.source == "<bytes>"
    else:
        assert np.array_equal(pixels(load_image(data)), pixels(from_path))
        assert np.array_equal(pixels(load_image(bytearray(data))), pixels(from_path))


def test_16bit_tiff_keeps_its_real_range():
    raw = np.asarray(Image.open(HOSTILE_IMAGES / "16bit.cropped.tif"))
    assert raw.dtype == np.uint16 and (raw.min(), raw.max()) == (291, 694)
    got = pixels(load_image(HOSTILE_IMAGES / "16bit.cropped.tif"))
    # 65535 -> 255: these dark values become 1..3, not Pillow's clipped 255 everywhere.
    assert np.array_equal(got[..., 0], np.rint(raw / 257.0))
    assert np.array_equal(got[..., 0], got[..., 2])


def test_16bit_pgm_is_scaled_not_clipped():
    raw = np.asarray(Image.open(HOSTILE_IMAGES / "hopper_16bit.pgm"))  # Pillow gives mode "I", 0..65535
    got = pixels(load_image(HOSTILE_IMAGES / "hopper_16bit.pgm"))
    assert np.array_equal(got[..., 1], np.rint(raw / 257.0))
    assert got.min() == 0 and got.max() == 255


@pytest.mark.parametrize("name", ["hopper_orientation_3.jpg", "hopper_orientation_6.jpg"])
def test_exif_orientation_matches_upright_hopper(name):
    upright = pixels(load_image(HOSTILE_IMAGES / "hopper.jpg"))
    got = pixels(load_image(HOSTILE_IMAGES / name))
    stored = pixels(Image.open(HOSTILE_IMAGES / name).convert("RGB"))
    assert np.abs(got - upright).mean() < 8  # JPEG re-encoding noise only
    assert np.abs(stored - upright).mean() > 50  # ...while the stored pixels are rotated


def test_orientation_in_png_raw_exif_profile():
    stored = Image.open(HOSTILE_IMAGES / "exif_imagemagick_orientation.png").convert("RGB")
    got = load_image(HOSTILE_IMAGES / "exif_imagemagick_orientation.png")
    assert np.array_equal(pixels(got), pixels(stored.transpose(Image.Transpose.ROTATE_180)))


def test_broken_exif_still_loads():
    im = load_image(HOSTILE_IMAGES / "hopper_bad_exif.jpg")
    assert (im.mode, im.size) == ("RGB", (500, 500))


def test_cmyk_without_profile_converts_plainly():
    src = Image.open(HOSTILE_IMAGES / "pil_sample_cmyk.jpg")
    assert src.mode == "CMYK" and "icc_profile" not in src.info
    assert np.array_equal(pixels(load_image(HOSTILE_IMAGES / "pil_sample_cmyk.jpg")), pixels(src.convert("RGB")))


def test_1bit_png_transparency_is_white():
    src = Image.open(HOSTILE_IMAGES / "1_trns.png")
    transparent = np.asarray(src) == bool(src.info["transparency"])
    assert transparent.any() and (~transparent).any()
    got = pixels(load_image(HOSTILE_IMAGES / "1_trns.png"))
    assert (got[transparent] == 255).all()
    assert (got[~transparent] == 0).all()


def test_gif_transparent_index_is_white():
    src = Image.open(HOSTILE_IMAGES / "different_transparency.gif")
    transparent = np.asarray(src) == src.info["transparency"]
    assert transparent.any()
    got = pixels(load_image(HOSTILE_IMAGES / "different_transparency.gif"))
    assert (got[transparent] == 255).all()


def test_no_file_left_open():
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        pytest.skip("needs /proc to count open files")
    before = len(os.listdir(fd_dir))
    for name in HOSTILE_FILES:
        try:
            load_image(HOSTILE_IMAGES / name)
            probe_image(HOSTILE_IMAGES / name)
        except ImageRefused:
            pass
    assert len(os.listdir(fd_dir)) == before


def test_pillow_global_state_untouched():
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    for name in HOSTILE_FILES:
        for kwargs in ({}, {"max_pixels": None}, {"draft": 224}):
            try:
                load_image(HOSTILE_IMAGES / name, **kwargs)
            except ImageRefused:
                pass
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before


# -- modes and formats made here -------------------------------------------------------------


def test_16bit_gradient_keeps_its_gradient():
    ramp = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (4, 1))
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    naive = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[0, :, 0]
    assert (naive[1:] == 255).all()  # Pillow's own conversion clips: the gradient is lost
    got = pixels(load_image(data))[0, :, 0]
    assert got[0] == 0 and got[-1] == 255
    assert np.array_equal(got, np.rint(ramp[0] / 257.0))
    assert len(np.unique(got)) == 256


def test_16bit_big_endian_tiff():
    ramp = np.tile(np.arange(0, 65536, 4096, dtype=">u2"), (2, 1))
    data = encode(Image.fromarray(ramp), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I;16B"
    assert np.array_equal(pixels(load_image(data))[0, :, 0], np.rint(ramp[0].astype(float) / 257.0))


def test_32bit_integer_outside_16bit_range_is_stretched():
    values = np.array([[-5, 0, 1_000_000, 2_000_000_000]], dtype=np.int32)
    data = encode(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    got = pixels(load_image(data))[0, :, 0]
    assert got[0] == 0 and got[-1] == 255 and got[1] <= got[2] < got[3]


def test_float_images_scaled_sensibly():
    unit = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    got = pixels(load_image(encode(Image.fromarray(unit), "TIFF")))[0, :, 0]
    assert got.tolist() == [0, 64, 128, 255]
    hdr = np.array([[-2.0, np.nan, 3.0, np.inf, 8.0]], dtype=np.float32)  # min..max, NaN black
    got = pixels(load_image(encode(Image.fromarray(hdr), "TIFF")))[0, :, 0]
    assert got.tolist() == [0, 0, 128, 255, 255]


def test_16bit_colour_key_transparency_is_white():
    values = np.array([[0, 1000, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG", transparency=1000)
    got = pixels(load_image(data))[0, :, 0]
    assert got.tolist() == [0, 255, 255]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "RGB"])
def test_transparency_composited_on_white(mode):
    rgba = Image.new("RGBA", (4, 1))
    rgba.putdata([(200, 0, 0, 0), (200, 0, 0, 255), (0, 0, 200, 128), (0, 0, 0, 255)])
    if mode == "RGBA":
        data, expect = encode(rgba, "PNG"), [(255, 255, 255), (200, 0, 0), (127, 127, 227), (0, 0, 0)]
    elif mode == "LA":
        data = encode(rgba.convert("LA"), "PNG")
        grey = rgba.convert("L").getpixel((1, 0))
        expect = [(255, 255, 255), (grey,) * 3, None, (0, 0, 0)]
    elif mode == "P":
        p = Image.new("P", (4, 1))
        p.putpalette([200, 0, 0, 0, 0, 200, 0, 0, 0])
        p.putdata([0, 0, 1, 2])
        data, expect = encode(p, "PNG", transparency=0), [(255, 255, 255)] * 2 + [(0, 0, 200), (0, 0, 0)]
    else:  # RGB with a colour key (PNG tRNS)
        rgb = Image.new("RGB", (2, 1))
        rgb.putdata([(0, 255, 0), (10, 20, 30)])
        data, expect = encode(rgb, "PNG", transparency=(0, 255, 0)), [(255, 255, 255), (10, 20, 30)]
    im = load_image(data)
    assert im.mode == "RGB"
    for x, colour in enumerate(expect):
        if colour is not None:
            assert np.abs(np.subtract(im.getpixel((x, 0)), colour)).max() <= 1, (x, im.getpixel((x, 0)))


def test_pa_and_premultiplied_modes_composited_on_white():
    # No file decoder hands these modes out today, so the conversion rule is tested directly.
    rgba = Image.new("RGBA", (2, 1))
    rgba.putdata([(200, 0, 0, 0), (200, 0, 0, 255)])
    for im in (rgba.convert("PA"), rgba.convert("RGBa")):
        got = images._to_rgb(im)
        assert got.mode == "RGB"
        assert got.getpixel((0, 0)) == (255, 255, 255)
        assert np.abs(np.subtract(got.getpixel((1, 0)), (200, 0, 0))).max() <= 1


def test_1bit_image():
    im = Image.new("1", (2, 1))
    im.putpixel((1, 0), 1)
    got = load_image(encode(im, "BMP"))
    assert [got.getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), (255, 255, 255)]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_first_frame_of_animations(fmt):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue")]
    extra = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **extra)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    assert load_image(data).getpixel((4, 4)) == (255, 0, 0)


def _cyan_is_red(c: int, m: int, y: int, k: int) -> tuple[int, int, int]:
    if (c, m, y, k) == (1, 0, 0, 0):
        return (220, 30, 30)
    return tuple(round(255 * (1 - v) * (1 - k)) for v in (c, m, y))


def _cmyk_swatch() -> Image.Image:
    im = Image.new("CMYK", (16, 8), (0, 0, 0, 0))
    im.paste((255, 0, 0, 0), (0, 0, 8, 8))  # pure cyan on the left, white paper on the right
    return im


def test_cmyk_goes_through_the_embedded_icc_profile():
    data = jpeg_bytes(_cmyk_swatch(), quality=95, icc_profile=cmyk_icc_profile(_cyan_is_red))
    src = Image.open(io.BytesIO(data))
    assert src.mode == "CMYK" and src.info.get("icc_profile")
    im = load_image(data)
    # Only the profile maps cyan to red; a plain conversion gives (0, 255, 255).
    assert np.abs(np.subtract(im.getpixel((3, 3)), (220, 30, 30))).max() <= 8
    assert np.abs(np.subtract(im.getpixel((12, 3)), (255, 255, 255))).max() <= 3
    assert "icc_profile" not in im.info  # the CMYK profile no longer describes these pixels


def test_cmyk_with_broken_profile_falls_back_to_plain_conversion():
    data = jpeg_bytes(_cmyk_swatch(), quality=95, icc_profile=b"not an ICC profile at all" * 8)
    im = load_image(data)
    assert np.abs(np.subtract(im.getpixel((3, 3)), (0, 255, 255))).max() <= 3


def test_orientation_swaps_width_and_height():
    src = synth_photo(60, 30, seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = jpeg_bytes(src, quality=95, exif=exif)
    im = load_image(data)
    assert im.size == (30, 60)
    assert probe_image(data) == ImageInfo(width=30, height=60, format="JPEG")
    stored = Image.open(io.BytesIO(data)).convert("RGB")
    assert np.array_equal(pixels(im), pixels(stored.transpose(Image.Transpose.ROTATE_270)))
    # The orientation tag is gone from what we return: nobody can rotate it twice.
    assert ImageOps.exif_transpose(im).size == (30, 60)


@pytest.mark.parametrize("value", [0, 9, 65535])
def test_nonsense_orientation_is_ignored(value):
    exif = Image.Exif()
    exif[0x0112] = value
    im = load_image(jpeg_bytes(Image.new("RGB", (20, 10), "red"), exif=exif))
    assert im.size == (20, 10)


def test_native_avif():
    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF codec")
    data = encode(Image.new("RGB", (16, 8), (200, 40, 40)), "AVIF", quality=90)
    im = load_image(data)
    assert im.size == (16, 8)
    assert np.abs(np.subtract(im.getpixel((8, 4)), (200, 40, 40))).max() <= 12


HEIC_HEADER = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64


def test_heic_without_the_extra_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # import fails as if not installed
    monkeypatch.setattr(images, "_heif_registered", False)
    assert refusal(HEIC_HEADER) == HEIF_EXTRA_HINT
    assert HEIF_EXTRA_HINT == "HEIC/AVIF support needs the optional extra: pip install 'clipsearch[heif]'"


def test_avif_without_pillow_support_or_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pillow_heif", None)
    monkeypatch.setattr(images, "_heif_registered", False)
    monkeypatch.setattr(images, "_pillow_reads_avif", lambda: False)
    avif = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 64
    assert refusal(avif) == HEIF_EXTRA_HINT


def test_heic_with_the_extra():
    pillow_heif = pytest.importorskip("pillow_heif")
    heif = pillow_heif.from_pillow(Image.new("RGB", (16, 8), (40, 200, 40)))
    buf = io.BytesIO()
    heif.save(buf, quality=90)
    im = load_image(buf.getvalue())
    assert im.size == (16, 8) and im.mode == "RGB"


# -- refusals --------------------------------------------------------------------------------


def test_empty_missing_and_folder(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert refusal(empty) == "empty file"
    assert refusal(b"") == "empty file"
    assert refusal(tmp_path / "nope.jpg") == "file not found"
    assert refusal(tmp_path) == "is a folder, not an image file"


def test_text_named_jpg(tmp_path):
    fake = tmp_path / "holiday.jpg"
    fake.write_text("these are not the pixels you are looking for\n")
    with pytest.raises(ImageRefused, match=re.escape(f"{fake}: not a recognised image format")):
        load_image(fake)


def test_formats_outside_the_allowed_list_are_refused():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    assert refusal(eps) == "not a recognised image format"  # never handed to Ghostscript
    assert refusal(encode(Image.new("RGB", (4, 4)), "TGA")) == "not a recognised image format"


def test_source_type_checked():
    with pytest.raises(TypeError, match=re.escape("image source must be a path, bytes or a PIL image, got int")):
        load_image(42)  # type: ignore[arg-type]


def test_opened_pil_image_follows_the_same_rules():
    opened = Image.open(HOSTILE_IMAGES / "hopper_orientation_6.jpg")
    got = load_image(opened)
    assert np.array_equal(pixels(got), pixels(load_image(HOSTILE_IMAGES / "hopper_orientation_6.jpg")))
    assert got is not opened and opened.mode == "RGB"
    la = Image.new("LA", (2, 1), (0, 0))
    assert load_image(la).getpixel((0, 0)) == (255, 255, 255)
    assert refusal(la, max_pixels=1) == f"2x1 is 2 pixels, over the limit of 1 pixels {LIMIT_HINT}"
    with pytest.raises(ImageRefused) as info:
        load_image(la, max_pixels=1)
    assert info.value.source == "<image>"


DAMAGE_SEEDS = ["hopper.jpg", "hopper.png", "hopper.gif", "hopper.webp", "16bit.cropped.tif", "hopper_16bit.pgm"]


@pytest.mark.parametrize("name", DAMAGE_SEEDS)
def test_damaged_files_never_escape(name):
    """Truncations and byte flips of real files: every one loads or is refused, nothing else."""
    data = (HOSTILE_IMAGES / name).read_bytes()
    rng = np.random.default_rng(len(data))
    variants = [data[:n] for n in np.linspace(1, len(data) - 1, 25).astype(int)]
    for _ in range(40):
        damaged = bytearray(data)
        for pos in rng.integers(0, len(data), int(rng.integers(1, 8))):
            damaged[pos] = int(rng.integers(0, 256))
        variants.append(bytes(damaged))
    outcomes = {"loaded": 0, "refused": 0}
    for variant in variants:
        try:
            im = load_image(variant, max_pixels=2_000_000)
        except ImageRefused as e:
            assert e.reason and "\n" not in e.reason and len(e.reason) < 160
            outcomes["refused"] += 1
        else:
            assert im.mode == "RGB"
            outcomes["loaded"] += 1
    assert outcomes["refused"] > 0


# -- the pixel cap ---------------------------------------------------------------------------


BIG_HEADER = png_header_only(10_000, 10_000)  # 100 MP claimed, 100 bytes long


def test_pixel_cap_refuses_from_the_header_without_decoding(monkeypatch):
    decoded = []
    real_load = ImageFile.ImageFile.load

    def spy_load(self):
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        reason = refusal(BIG_HEADER)
    assert reason == f"10000x10000 is 100,000,000 pixels, over the limit of 89,478,485 pixels {LIMIT_HINT}"
    assert decoded == []


def test_pixel_cap_does_not_depend_on_pillows_global(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert refusal(HOSTILE_IMAGES / "hopper.jpg", max_pixels=128 * 128 - 1) == (
        f"128x128 is 16,384 pixels, over the limit of 16,383 pixels {LIMIT_HINT}"
    )
    assert load_image(HOSTILE_IMAGES / "hopper.jpg", max_pixels=128 * 128).size == (128, 128)
    assert MAX_PIXELS == 89_478_485


def test_pixel_cap_from_environment(monkeypatch):
    monkeypatch.setenv("CLIPSEARCH_MAX_PIXELS", "10_000")
    assert refusal(HOSTILE_IMAGES / "hopper.jpg") == f"128x128 is 16,384 pixels, over the limit of 10,000 pixels {LIMIT_HINT}"
    assert load_image(HOSTILE_IMAGES / "hopper.jpg", max_pixels=20_000).size == (128, 128)  # the call wins
    monkeypatch.setenv("CLIPSEARCH_MAX_PIXELS", "none")
    assert load_image(HOSTILE_IMAGES / "hopper.jpg").size == (128, 128)
    monkeypatch.setenv("CLIPSEARCH_MAX_PIXELS", "lots")
    msg = "CLIPSEARCH_MAX_PIXELS must be a positive whole number of pixels or 'none', got 'lots'"
    with pytest.raises(ValueError, match=re.escape(msg)):
        load_image(HOSTILE_IMAGES / "hopper.jpg")


def test_pillows_own_bomb_check_becomes_a_refusal():
    # With no cap of ours, Pillow's hard limit (twice MAX_IMAGE_PIXELS) still refuses...
    assert refusal(HOSTILE_IMAGES / "decompression_bomb.gif", max_pixels=None) == (
        "4,364,696,535 pixels, over Pillow's decompression-bomb limit of 178,956,970 pixels"
    )
    # ...and its warning, when a program makes warnings errors, is a refusal too.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert refusal(BIG_HEADER, max_pixels=None) == (
            "100,000,000 pixels, over Pillow's decompression-bomb limit of 89,478,485 pixels"
        )


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "100"])
def test_bad_max_pixels(bad):
    msg = f"max_pixels must be a positive number of pixels or None, got {bad!r}"
    with pytest.raises(ValueError, match=re.escape(msg)):
        load_image(HOSTILE_IMAGES / "hopper.jpg", max_pixels=bad)


@pytest.mark.parametrize("bad", [0, -224, 224.0])
def test_bad_draft(bad):
    msg = f"draft must be a positive model input size in pixels or None, got {bad!r}"
    with pytest.raises(ValueError, match=re.escape(msg)):
        load_image(HOSTILE_IMAGES / "hopper.jpg", draft=bad)


# -- probe -----------------------------------------------------------------------------------


def test_probe_reads_the_header_only(monkeypatch):
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("probe_image decoded pixels"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        assert probe_image(BIG_HEADER) == ImageInfo(width=10_000, height=10_000, format="PNG")
    assert probe_image(HOSTILE_IMAGES / "hopper.jpg") == ImageInfo(width=128, height=128, format="JPEG")
    assert probe_image(HOSTILE_IMAGES / "hopper.webp").format == "WEBP"


def test_probe_refuses_like_load():
    with pytest.raises(ImageRefused, match=re.escape("not a recognised image format")):
        probe_image(HOSTILE_IMAGES / "PILLOW-LICENSE.txt")


# -- draft decoding --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_photo() -> bytes:
    """A 6000x3376 photo-like JPEG at quality 90 (a 20 MP phone/camera frame)."""
    return jpeg_bytes(synth_photo(6000, 3376, seed=7), quality=90)


def test_draft_decodes_smaller_but_keeps_twice_the_model_size(big_photo):
    full = load_image(big_photo)
    drafted = load_image(big_photo, draft=224)
    assert full.size == (6000, 3376)
    assert drafted.size == (1500, 844)  # 1/4 scale: 1/8 would make the short side 422 < 448
    assert min(load_image(big_photo, draft=400).size) >= 800


def test_draft_changes_clip_input_by_under_one_level(big_photo):
    full = clip_resize_crop(load_image(big_photo))
    drafted = clip_resize_crop(load_image(big_photo, draft=224))
    diff = np.abs(full - drafted)
    assert diff.mean() < 1.0, diff.mean()


def test_draft_at_the_preprocessed_tensor_level(big_photo):
    from clipsearch.models.base import Preprocess
    from clipsearch.models.preprocess import to_pixel_values

    p = Preprocess()
    full = to_pixel_values(load_image(big_photo), p)
    drafted = to_pixel_values(load_image(big_photo, draft=p.size), p)
    assert full.shape == drafted.shape == (3, 224, 224)
    one_level = 1 / 255 / max(p.std)  # one 8-bit level, in normalised units
    assert np.abs(full - drafted).mean() < one_level


def test_draft_keeps_embeddings(big_photo, tmp_path):
    from clipsearch.models.base import cosine_similarity
    from clipsearch.models.registry import load_model

    encoder = load_model(str(make_clip_224(tmp_path / "clip224")))
    size = encoder.info.preprocess.size
    assert size == 224
    photos = [big_photo, jpeg_bytes(synth_photo(4032, 3024, seed=8), quality=90)]
    full = encoder.encode_images([load_image(b) for b in photos])
    drafted = encoder.encode_images([load_image(b, draft=size) for b in photos])
    assert np.diag(cosine_similarity(full, drafted)).min() >= 0.999


def test_draft_respects_orientation():
    src = synth_photo(2400, 1200, seed=5)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = jpeg_bytes(src, exif=exif)
    full, drafted = load_image(data), load_image(data, draft=224)
    assert full.size == (1200, 2400)
    assert drafted.size == (600, 1200)  # decoded at 1/2, then rotated
    assert np.abs(clip_resize_crop(full) - clip_resize_crop(drafted)).mean() < 1.0


def test_draft_only_for_large_jpegs():
    assert load_image(HOSTILE_IMAGES / "hopper.jpg", draft=224).size == (128, 128)
    png = encode(synth_photo(1800, 1000, seed=2), "PNG", compress_level=1)
    assert load_image(png, draft=224).size == (1800, 1000)


def test_draft_comes_after_the_pixel_cap(monkeypatch):
    from PIL import JpegImagePlugin

    drafted = []
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda self, mode, size: drafted.append(size))
    data = jpeg_bytes(Image.new("RGB", (2000, 1000)))
    assert refusal(data, max_pixels=1_000_000, draft=224).startswith("2000x1000 is 2,000,000 pixels")
    assert drafted == []


# -- paths -----------------------------------------------------------------------------------


def test_image_extensions():
    assert {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".avif"} <= IMAGE_EXTENSIONS
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)
    assert is_image_path("a/B.JPG") and is_image_path(Path("x.HeIc"))
    assert not is_image_path("notes.txt") and not is_image_path("jpg") and not is_image_path("a.jpg.txt")


def test_iter_image_paths(tmp_path):
    for rel in ["b.PNG", "a.jpg", "notes.txt", ".hidden.jpg", "sub/c.gif", "sub/deep/d.webp", ".git/e.jpg", "z/f.tiff"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    got = [p.relative_to(tmp_path).as_posix() for p in iter_image_paths([tmp_path])]
    assert got == ["a.jpg", "b.PNG", "sub/c.gif", "sub/deep/d.webp", "z/f.tiff"]
    flat = [p.relative_to(tmp_path).as_posix() for p in iter_image_paths([tmp_path], recursive=False)]
    assert flat == ["a.jpg", "b.PNG"]
    # Named explicitly: yielded whatever the extension, even if missing, so it gets a reason.
    explicit = list(iter_image_paths([tmp_path / "notes.txt", tmp_path / "gone.jpg", tmp_path / "sub"]))
    assert explicit == [tmp_path / p for p in ("notes.txt", "gone.jpg", "sub/c.gif", "sub/deep/d.webp")]
    assert refusal(explicit[1]) == "file not found"
