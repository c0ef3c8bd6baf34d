"""ONNX Runtime vs torch for a full-size ViT-B/32 CLIP (random weights, nothing downloaded).

Builds a ``CLIPModel`` from a default ``CLIPConfig`` (ViT-B/32 image tower at 224 px, 12-layer
512-wide text tower, 512-d joint space) with random weights, saves it with a CLIP processor and
tokenizer (CLIP's BPE bundled with open_clip), loads it through clipsearch, exports its ONNX
bundle, and times in this one process:

- image encoding, images/s, at batch 8 and 32: torch eager, ORT fp32, ORT dynamic int8;
- a one-text query, ms (median of 30): torch, ORT fp32, ORT int8;
- the int8 guard on the timed images (random weights, so only a smoke check of the guard).

Ratios are against torch in the same run.

    flock /tmp/clipsearch-heavy.lock python benchmarks/bench_onnx.py      # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from tiny_models import write_clip_bpe_files  # noqa: E402 - the tests' helper that writes CLIP's BPE files


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_vit_b32(folder: Path) -> Path:
    """A random-weight ViT-B/32 CLIP saved as transformers would save the real one."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab, merges = write_clip_bpe_files(folder / "_bpe")
    tokenizer = CLIPTokenizer(vocab=str(vocab), merges=str(merges))
    torch.manual_seed(0)
    cfg = CLIPConfig()  # defaults: ViT-B/32 vision, 512-wide 12-layer text, projection 512
    cfg.text_config.bos_token_id, cfg.text_config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    model = CLIPModel(cfg).eval()
    model.save_pretrained(folder)
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def images_per_s(fn, pixels: np.ndarray, repeats: int) -> float:
    fn(pixels[:2])  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn(pixels)
    return repeats * len(pixels) / (time.perf_counter() - t0)


def query_ms(fn, n: int = 30) -> float:
    fn(["warm up"])
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn([f"a photo of a dog number {i}"])
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per batch size")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CLIPSEARCH_ONNX_CACHE"] = str(Path(tmp) / "onnx")
        from clipsearch.models.fingerprint import probe_image
        from clipsearch.models.onnx_export import export_bundle
        from clipsearch.models.onnx_runtime import OnnxEncoder
        from clipsearch.models.registry import load_model

        import torch

        log(f"torch threads {torch.get_num_threads()}, cores {len(os.sched_getaffinity(0))}")
        folder = build_vit_b32(Path(tmp) / "vit-b-32")
        torch_enc = load_model(str(folder))
        t0 = time.perf_counter()
        bundle = export_bundle(torch_enc)
        log(f"export: {time.perf_counter() - t0:.1f} s -> {bundle}")
        fp32 = OnnxEncoder(bundle, int8=False)
        int8 = OnnxEncoder(bundle, int8=True)

        rng = np.random.default_rng(0)
        base = torch_enc.preprocess_images([probe_image()])[0]
        pixels = np.stack([base + rng.normal(0, 0.3, base.shape).astype(np.float32) for _ in range(32)])
        guard = OnnxEncoder(bundle).guard_images(pixels, "benchmark images")  # its own encoder: a guard switches it
        check = float((torch_enc.encode_pixel_values(pixels[:8]) * fp32.encode_pixel_values(pixels[:8])).sum(1).min())
        # Random weights map every image near one direction, so cosines alone say little: the
        # difference is also measured against how far the images' vectors spread.
        raw_t = torch_enc.encode_pixel_values(pixels[:8], normalize=False)
        raw_o = fp32.encode_pixel_values(pixels[:8], normalize=False)
        rel = float(np.abs(raw_t - raw_o).max() / np.abs(raw_t - raw_t.mean(0)).max())
        raw_8 = int8.encode_pixel_values(pixels[:8], normalize=False)
        rel8 = float(np.abs(raw_t - raw_8).max() / np.abs(raw_t - raw_t.mean(0)).max())

        rows = []
        for batch in (8, 32):
            px = pixels[:batch]
            rates = {
                "torch eager": images_per_s(torch_enc.encode_pixel_values, px, args.repeats),
                "ORT fp32": images_per_s(fp32.encode_pixel_values, px, args.repeats),
                "ORT int8": images_per_s(int8.encode_pixel_values, px, args.repeats),
            }
            rows.append((batch, rates))
        text = {
            "torch eager": query_ms(torch_enc.encode_texts),
            "ORT fp32": query_ms(fp32.encode_texts),
            "ORT int8": query_ms(int8.encode_texts),
        }

    print("ViT-B/32 (random weights) image encoding, images/s (ratio to torch eager)")
    print(f"{'batch':>6} | {'torch eager':>12} | {'ORT fp32':>16} | {'ORT int8':>16}")
    for batch, r in rows:
        t = r["torch eager"]
        print(f"{batch:>6} | {t:12.1f} | {r['ORT fp32']:8.1f} ({r['ORT fp32'] / t:4.2f}x) | {r['ORT int8']:8.1f} ({r['ORT int8'] / t:4.2f}x)")
    t = text["torch eager"]
    print(f"text query, ms (median of 30): torch {t:.1f} | ORT fp32 {text['ORT fp32']:.1f} ({t / text['ORT fp32']:.2f}x faster) "
          f"| ORT int8 {text['ORT int8']:.1f} ({t / text['ORT int8']:.2f}x faster)")
    print(f"fp32 parity with torch: min cosine {check:.6f}, largest difference {rel:.2e} of the images' spread "
          f"(int8: {rel8:.2e}); int8 guard on {guard['sample']} images: "
          f"min cosine {guard['min_cosine']:.4f} -> {'int8' if guard['int8_ok'] else 'fp32'}")


if __name__ == "__main__":
    main()
