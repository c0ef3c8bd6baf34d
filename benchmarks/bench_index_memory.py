"""Peak memory of ``clipsearch index`` as a store grows, on many small photos.

Memory while indexing depends on the number of items (vectors and file records held for the
plan, the ANN index, the rows of a commit) and on the batch in flight, not on how long a photo
takes to encode. So this indexes many small generated JPEGs (96x96 shape scenes with noise)
with the demo model, where a run of 100,000 takes minutes instead of hours, as one
``clipsearch index`` process, and samples the resident memory of that process and its decoding
workers (summed) every 50 ms. It prints the peak at each checkpoint, so growth per item shows.

    python benchmarks/bench_index_memory.py --images 100000
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_vs_reference import clipsearch_cmd, log, run_measured  # noqa: E402


def write_small_jpegs(folder: Path, n: int, start: int = 0) -> None:
    """``n`` 96x96 JPEGs (a gradient, a coloured box and noise), 1,000 per subfolder."""
    from PIL import Image

    rng = np.random.default_rng(start)
    yy, xx = np.mgrid[0:96, 0:96]
    for i in range(start, start + n):
        sub = folder / f"{i // 1000:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        base = np.stack([xx * rng.uniform(0.5, 2.5), yy * rng.uniform(0.5, 2.5), (xx + yy) * rng.uniform(0.3, 1.2)], -1)
        img = (base + rng.normal(0, 10, (96, 96, 3))).clip(0, 255).astype(np.uint8)
        x0, y0 = rng.integers(0, 60, 2)
        img[y0 : y0 + 30, x0 : x0 + 30] = rng.integers(0, 255, 3)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=85)
        (sub / f"img_{i:06d}.jpg").write_bytes(buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=4, help="index in this many growing runs (incremental)")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--no-cells", action="store_true", help="index without grid cells (models with a grid keep them by default)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-index-memory-") as tmp_name:
        tmp = Path(tmp_name)
        photos, store = tmp / "photos", tmp / "store"
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        done = 0
        print("| stored images | images added | wall s | img/s | peak RSS MB (process + workers) |")
        print("|---|---|---|---|---|")
        for step in range(1, args.steps + 1):
            target = args.images * step // args.steps
            log(f"[memory] writing photos {done:,} .. {target:,} ...")
            write_small_jpegs(photos, target - done, start=done)
            wall, rss, _ = run_measured(
                clipsearch_cmd(
                    "index", str(photos), "--store", str(store), "--model", args.model, "--no-progress", "--json",
                    *(["--no-cells"] if args.no_cells else []),
                ),
                env,
            )
            added = target - done
            print(f"| {target:,} | {added:,} | {wall:.0f} | {added / wall:.0f} | {rss:.0f} |", flush=True)
            done = target


if __name__ == "__main__":
    main()
