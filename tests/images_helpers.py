"""Image fixtures for the tests: the hostile files in tests/data, images built in code for
tests/test_images.py, and the JPEG draft benchmark.

Run the benchmark with ``.venv/bin/python tests/images_helpers.py`` (a few seconds per size).
"""

from __future__ import annotations

import io
import itertools
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageDraw

HOSTILE_IMAGES = Path(__file__).resolve().parent / "data" / "images" / "hostile"
"""Files that break naive image loaders (see tests/data/README.md), kept in the repository."""


def synth_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: smooth lighting, textured regions, soft-edged objects, sensor noise.

    Uniform noise would be unrealistically hard for JPEG and for draft decoding; a flat image
    unrealistically easy. This mixes the scales a real photo has.
    """
    rng = np.random.default_rng(seed)
    # Objects are drawn at half size and enlarged: lens-soft edges, and 4x fewer pixels to draw.
    hw, hh = max(1, width // 2), max(1, height // 2)
    # Sky/ground-like lighting: a few colours bicubically stretched over the frame.
    base = Image.fromarray(rng.integers(30, 226, (5, 8, 3), dtype=np.uint8)).resize((hw, hh), Image.BICUBIC)
    draw = ImageDraw.Draw(base)
    for _ in range(60):  # objects, mostly large, some small
        x0, y0 = int(rng.integers(0, hw)), int(rng.integers(0, hh))
        w, h = int(hw * rng.uniform(0.01, 0.25)), int(hw * rng.uniform(0.01, 0.25))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=colour)
        elif shape == 1:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=colour)
        else:
            points = [(x0 + int(rng.integers(-w, w + 1)), y0 + int(rng.integers(-h, h + 1))) for _ in range(5)]
            draw.polygon(points, fill=colour)
    pixels = np.asarray(base.resize((width, height), Image.BICUBIC), dtype=np.int16)
    # Foliage/fabric-like texture at about 1/6 scale, then per-pixel sensor noise.
    texture = rng.integers(-18, 19, (height // 6 + 1, width // 6 + 1)).astype(np.float32)
    texture = np.asarray(Image.fromarray(texture).resize((width, height), Image.BILINEAR)).astype(np.int16)
    noise = rng.integers(-5, 6, (height, width, 1), dtype=np.int16)
    pixels = pixels + texture[..., None] + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def jpeg_bytes(im: Image.Image, quality: int = 90, **save_args) -> bytes:
    """``im`` encoded as a JPEG file in memory."""
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, **save_args)
    return buf.getvalue()


def clip_resize_crop(im: Image.Image, size: int = 224) -> np.ndarray:
    """CLIP's recipe up to normalisation: shortest side -> size (bicubic), centre crop.

    Returns:
        ``(size, size, 3)`` float32 array of 0..255 levels.
    """
    w, h = im.size
    scale = size / min(w, h)
    resized = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but whose data is a few bytes of zeros.

    Opening it is cheap; decoding it would allocate width*height*3 bytes.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def cmyk_icc_profile(corner_rgb: Callable[[int, int, int, int], tuple[int, int, int]]) -> bytes:
    """A minimal ICC v2 input profile for CMYK data, built from a 2x2x2x2 lookup table.

    ``corner_rgb(c, m, y, k)`` (each 0 or 1) gives the sRGB colour of each corner of the CMYK
    cube; lcms interpolates in between. Tests use a profile that maps pure cyan to red, which
    only a real ICC conversion can produce.
    """
    corners = list(itertools.product((0, 1), repeat=4))  # first channel varies slowest, as ICC wants
    rgb = Image.new("RGB", (len(corners), 1))
    rgb.putdata([corner_rgb(*c) for c in corners])
    to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    lab = np.asarray(ImageCms.applyTransform(rgb, to_lab)).copy()
    lab[..., 1:] ^= 0x80  # Pillow stores a*, b* as signed bytes; ICC 8-bit Lab offsets them by 128

    def s15(x: float) -> bytes:
        return struct.pack(">i", round(x * 65536))

    d50 = s15(0.9642) + s15(1.0) + s15(0.8249)
    ramp = bytes(range(256))
    identity = b"".join(s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    a2b0 = b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + identity + ramp * 4 + lab.tobytes() + ramp * 3
    text = b"clipsearch test CMYK\0"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 3 + 67)
    wtpt = b"XYZ " + bytes(4) + d50
    tags = [(b"desc", desc), (b"wtpt", wtpt), (b"A2B0", a2b0)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        body += bytes(-(offset + len(body)) % 4)  # tags start on 4-byte boundaries
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (
        struct.pack(">I", offset + len(body)) + bytes(4) + bytes([2, 0x10, 0, 0])
        + b"scnr" + b"CMYK" + b"Lab " + bytes(12) + b"acsp" + bytes(24)
        + bytes(4) + d50 + bytes(48)
    )  # fmt: skip
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def make_clip_224(path: Path, seed: int = 0) -> Path:
    """Save a tiny random HF ``CLIPModel`` that takes real CLIP's 224 px input (patch 32, hidden 32).

    ``tiny_models.make_tiny_hf_clip`` uses 30 px inputs; draft decoding has to be judged at the
    input size real models use, and patch 32 keeps that cheap (49 patches).
    """
    import torch
    from tiny_models import CLIP_VOCAB_SIZE, write_clip_bpe_files
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    path.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = write_clip_bpe_files(path / "_bpe")
    tokenizer = CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file))
    torch.manual_seed(seed)
    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=CLIP_VOCAB_SIZE,
            max_position_embeddings=16,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **tower,
        ),
        vision_config=dict(image_size=224, patch_size=32, **tower),
        projection_dim=16,
    )
    CLIPModel(config).eval().save_pretrained(path)
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3)
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(path)
    return path


# -- benchmark -------------------------------------------------------------------------------


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def bench_draft(sizes=((6000, 3376), (4032, 3024), (1920, 1080)), repeats: int = 7, model_size: int = 224) -> None:
    """Print load+CLIP-resize time with and without ``draft``, and the pixel error it costs."""
    from clipsearch.images import load_image

    print(f"load_image + resize/crop to {model_size}, median of {repeats}, ms")
    print("size        full   draft  speed-up  mean|diff|  max|diff|  decoded at")
    for width, height in sizes:
        data = jpeg_bytes(synth_photo(width, height, seed=1), quality=90)
        full = _median_ms(lambda: clip_resize_crop(load_image(data), model_size), repeats)
        drafted = _median_ms(lambda: clip_resize_crop(load_image(data, draft=model_size), model_size), repeats)
        a = clip_resize_crop(load_image(data), model_size)
        b = clip_resize_crop(load_image(data, draft=model_size), model_size)
        diff = np.abs(a - b)
        decoded = load_image(data, draft=model_size).size
        print(
            f"{width}x{height:<5} {full:6.0f} {drafted:6.0f} {full / drafted:8.1f}x"
            f" {diff.mean():10.2f} {diff.max():9.0f}   {decoded[0]}x{decoded[1]}"
        )


if __name__ == "__main__":
    bench_draft()
