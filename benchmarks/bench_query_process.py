"""A text search as a whole process: ``clipsearch search TEXT --store S`` with the model's ONNX
bundle (text tower only, no torch) against the same command on the model itself, in one run.

With ``--before SRC`` the same command also runs on another source tree (main's, say), as a
reference for what this one changed. Also times ``clipsearch index`` start-up: a process that indexes one image into a new store.
Each command runs ``--runs`` times (median); wall time and the process's peak RSS (``wait4``)
are printed with the ratio of the two paths.

Models: ``demo`` (default, bundled); ``vit-b32``: CLIP ViT-B/32 at full size with random weights,
saved as a Hugging Face folder (speed does not depend on the weights; no download needed);
any folder or name ``load_model`` accepts also works. The bundle is made with
:func:`clipsearch.models.onnx_export.export_bundle` (its time is printed, not counted).

    flock /tmp/clipsearch-heavy.lock python benchmarks/bench_query_process.py
    flock /tmp/clipsearch-heavy.lock python benchmarks/bench_query_process.py --model vit-b32 --before ../main/src
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUERY = "a dog in the snow"
VIT_B32 = "vit-b32"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def save_vit_b32(folder: Path) -> Path:
    """CLIP ViT-B/32 (HF ``CLIPConfig()`` defaults) with random weights and CLIP's real BPE
    tokenizer, saved where ``load_model(folder)`` loads it."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_models import write_clip_bpe_files

    vocab, merges = write_clip_bpe_files(folder / "_bpe")
    torch.manual_seed(0)
    CLIPModel(CLIPConfig()).eval().save_pretrained(folder)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(), tokenizer=CLIPTokenizer(vocab=str(vocab), merges=str(merges))
    )
    processor.save_pretrained(folder)
    return folder


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one process running ``cmd``.

    The peak comes from ``/usr/bin/time``: a child forked from this process would report this
    process's size at the fork as its own peak (Linux keeps the high-water mark across exec),
    and this process holds a model while it exports."""
    with tempfile.NamedTemporaryFile("r") as rss:
        start = time.perf_counter()
        done = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr.decode()}")
        return wall, int(rss.read().split()[-1]) / 1024  # KiB


def median_of(runs: int, cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    results = [run(cmd, env) for _ in range(runs)]
    return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", help=f"demo, {VIT_B32}, or any name load_model accepts")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--before", metavar="SRC", help="also time the search with this clipsearch source tree (e.g. a checkout of main's src)")
    args = ap.parse_args()

    from PIL import Image

    tmp = Path(tempfile.mkdtemp(prefix="clipsearch-bench-query-"))
    env = {**os.environ, "CLIPSEARCH_ONNX_CACHE": str(tmp / "onnx"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    model = args.model
    if model == VIT_B32:
        log("[setup] saving a random-weight ViT-B/32 ...")
        model = str(save_vit_b32(tmp / "vit-b32"))
    image = tmp / "one.jpg"
    Image.new("RGB", (640, 480), (90, 140, 200)).save(image, quality=90)
    cli = [sys.executable, "-m", "clipsearch.cli.main"]
    store = tmp / "store"
    torch_env = {**env, "CLIPSEARCH_BACKEND": "torch"}  # no bundle used or exported
    log(f"[setup] a one-image store with {args.model} ...")
    run([*cli, "index", str(image), "--store", str(store), "--model", model, "--no-progress", "--workers", "0"], torch_env)

    search = [*cli, "search", QUERY, "--store", str(store)]
    run(search, torch_env)  # warm the page cache
    full = median_of(args.runs, search, torch_env)
    before = None
    if args.before:
        before_env = {**torch_env, "PYTHONPATH": str(Path(args.before).resolve())}
        run(search, before_env)
        before = median_of(args.runs, search, before_env)

    os.environ["CLIPSEARCH_ONNX_CACHE"] = env["CLIPSEARCH_ONNX_CACHE"]
    from clipsearch.models.onnx_export import export_bundle
    from clipsearch.models.onnx_runtime import bundle_dir
    from clipsearch.models.registry import load_model

    start = time.perf_counter()
    export_bundle(load_model(model))
    exported = time.perf_counter() - start
    if bundle_dir(model) is None:
        raise SystemExit(f"export_bundle wrote no bundle that bundle_dir({model!r}) finds")
    run(search, env)
    onnx = median_of(args.runs, search, env)

    fresh = iter(range(10**6))
    index_times = [
        run([*cli, "index", str(image), "--store", str(tmp / f"new-{next(fresh)}"), "--model", model, "--no-progress", "--workers", "0"], torch_env)
        for _ in range(args.runs)
    ]
    index = statistics.median(t[0] for t in index_times), statistics.median(t[1] for t in index_times)

    print(f"\nclipsearch search {QUERY!r} --store S, one-image store, model {args.model}: median of {args.runs} processes")
    print(f"{'path':<34}{'wall s':>9}{'peak RSS MB':>14}")
    if before is not None:
        print(f"{'before (' + args.before + ')':<34}{before[0]:>9.2f}{before[1]:>14.0f}")
    print(f"{'torch (CLIPSEARCH_BACKEND=torch)':<34}{full[0]:>9.2f}{full[1]:>14.0f}")
    print(f"{'ONNX bundle, text tower':<34}{onnx[0]:>9.2f}{onnx[1]:>14.0f}")
    print(f"{'ratio torch / bundle':<34}{full[0] / onnx[0]:>9.1f}{full[1] / onnx[1]:>14.1f}")
    if before is not None:
        print(f"{'ratio before / bundle':<34}{before[0] / onnx[0]:>9.1f}{before[1] / onnx[1]:>14.1f}")
    print(f"\nclipsearch index ONE_IMAGE --store NEW --model {args.model}: {index[0]:.2f} s, {index[1]:.0f} MB peak (median)")
    print(f"(export_bundle took {exported:.1f} s once, not counted above)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
