"""clipsearch against the loops people write today, on the same photos, in one run.

Part 1, indexing a generated folder of real-sized JPEGs (6000x3376, 4032x3024 and 1920x1080 in
equal parts) with CLIP ViT-B/32 at full size and random weights (speed does not depend on the
weights, and nothing is downloaded):

1. the classic tutorial loop: PIL open, ``CLIPProcessor``, ``CLIPModel.get_image_features``,
   batches of 16;
2. open_clip's loop: PIL open, its ``preprocess``, ``encode_image``, batches of 16;
3. ``clipsearch index`` as a process, once per backend (``--backend torch`` and ``onnx``).

The two loops are timed after a warm-up batch. ``clipsearch index`` is timed as a whole process
on half of the photos and on all of them, each into a fresh store; its throughput is the slope
between the two (so free of its start-up), and its start-up is what the slope leaves over. The
ONNX export (once per model and weights) is done by a first one-image run that is timed apart.
Peak RSS is the largest sum over the process and its children, sampled every 50 ms.

Part 2, queries: ``clipsearch search TEXT --store S`` as a whole process (median of 5, wall
time and peak RSS), the text tower alone on one query (torch against ONNX Runtime), and, with
``--vectors N``, one query over N clustered stored vectors (``bench_index_search.py`` part 2).

    python benchmarks/bench_vs_reference.py                        # about 10 minutes on 2 cores
    python benchmarks/bench_vs_reference.py --photos 48 --write docs/performance.md

``--write FILE`` replaces the section between ``<!-- bench_vs_reference:start -->`` and
``<!-- bench_vs_reference:end -->`` in FILE with this run's tables and the machine's description.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_index_search import make_photos  # noqa: E402

SIZES = ((6000, 3376), (4032, 3024), (1920, 1080))
BATCH = 16
QUERY = "a dog in the snow"
START, END = "<!-- bench_vs_reference:start -->", "<!-- bench_vs_reference:end -->"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- inputs ------------------------------------------------------------------------------------


def photo_folder(root: Path, n: int) -> list[Path]:
    """``n`` JPEGs, the three sizes in equal parts, interleaved so any prefix mixes them."""
    per = -(-n // len(SIZES))
    groups = [make_photos(root / f"{w}x{h}", per, (w, h), seed=i) for i, (w, h) in enumerate(SIZES)]
    mixed = [p for trio in zip(*groups) for p in trio][:n]
    return mixed


def link_folder(folder: Path, photos: list[Path]) -> Path:
    """A folder holding (symlinks to) exactly ``photos``."""
    folder.mkdir(parents=True)
    for i, p in enumerate(photos):
        (folder / f"{i:05d}_{p.name}").symlink_to(p)
    return folder


def save_random_vit_b32(folder: Path) -> Path:
    """CLIP ViT-B/32 at full size with random weights, saved as a Hugging Face folder with its
    processor (the real CLIP BPE vocabulary, from open_clip's bundled copy)."""
    import torch
    from tiny_models import write_clip_bpe_files
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizerFast

    torch.manual_seed(0)
    CLIPModel(CLIPConfig()).eval().save_pretrained(folder)
    vocab, merges = write_clip_bpe_files(folder / "bpe")
    tokenizer = CLIPTokenizerFast(vocab_file=str(vocab), merges_file=str(merges))
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(folder)
    return folder


# -- measuring processes -----------------------------------------------------------------------


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``cmd``; returns (wall seconds, peak RSS in MB of it and its children, stdout)."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        try:
            root = psutil.Process(proc.pid)
            while not done.is_set():
                total = 0
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak = max(peak, total)
                time.sleep(0.05)
        except psutil.Error:
            pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return wall, peak / 2**20, out


def clipsearch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "clipsearch", *args]


# -- part 1: indexing --------------------------------------------------------------------------


def tutorial_loop(model_dir: Path, photos: list[Path]) -> float:
    """img/s of the classic transformers loop (after one warm-up batch)."""
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(model_dir).eval()
    processor = CLIPProcessor.from_pretrained(model_dir)

    def batch(paths: list[Path]) -> None:
        images = [Image.open(p).convert("RGB") for p in paths]
        inputs = processor(images=images, return_tensors="pt")
        with torch.no_grad():
            model.get_image_features(**inputs)

    batch(photos[:2])
    t0 = time.perf_counter()
    for i in range(0, len(photos), BATCH):
        batch(photos[i : i + BATCH])
    return len(photos) / (time.perf_counter() - t0)


def open_clip_loop(photos: list[Path]) -> float:
    """img/s of open_clip's own loop (after one warm-up batch)."""
    import open_clip
    import torch
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    model.eval()

    def batch(paths: list[Path]) -> None:
        pixels = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])
        with torch.no_grad():
            model.encode_image(pixels)

    batch(photos[:2])
    t0 = time.perf_counter()
    for i in range(0, len(photos), BATCH):
        batch(photos[i : i + BATCH])
    return len(photos) / (time.perf_counter() - t0)


def clipsearch_index(model_dir: Path, photos: list[Path], backend: str, tmp: Path, env: dict[str, str]) -> dict:
    """``clipsearch index`` as a process: one image (start-up, and the ONNX export when first),
    half of the photos and all of them, each into a fresh store."""
    out: dict = {}
    half = len(photos) // 2
    runs = {"one": photos[:1], "one-again": photos[1:2], "half": photos[:half], "all": photos}
    for label, chosen in runs.items():
        folder = link_folder(tmp / f"in-{backend}-{label}", chosen)
        store = tmp / f"store-{backend}-{label}"
        cmd = clipsearch_cmd(
            "index", str(folder), "--store", str(store), "--model", str(model_dir),
            "--backend", backend, "--no-progress", "--json",
        )
        log(f"[index] clipsearch index --backend {backend}: {label} ({len(chosen)} photos) ...")
        wall, rss, _ = run_measured(cmd, env)
        out[label] = (wall, rss)
    (t_half, _), (t_all, rss_all) = out["half"], out["all"]
    slope = (len(photos) - half) / max(t_all - t_half, 1e-9)
    return {
        "ips": slope,
        "startup_one": out["one-again"][0],
        "first_use": out["one"][0],
        "startup": max(t_all - len(photos) / slope, 0.0),
        "rss": max(rss_all, out["half"][1]),
        "store": tmp / f"store-{backend}-all",
    }


# -- part 2: queries ---------------------------------------------------------------------------


def search_process(store: Path, env: dict[str, str], repeats: int = 5) -> tuple[float, float]:
    """Median wall seconds and peak MB of ``clipsearch search QUERY --store S``."""
    runs = [run_measured(clipsearch_cmd("search", QUERY, "--store", str(store), "--json"), env) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs)


def text_encode_ms(model_dir: Path) -> dict[str, float]:
    """One text query through the text tower: torch, and ONNX Runtime fp32 and int8 where exported."""
    from clipsearch.models.registry import load_model

    out = {}
    for backend in ("torch", "onnx"):
        try:
            encoder = load_model(str(model_dir), backend=backend)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot load is reported, not fatal
            log(f"[text] {backend}: {exc}")
            continue
        encoder.encode_texts([QUERY])
        times = []
        for _ in range(30):
            t0 = time.perf_counter()
            encoder.encode_texts([QUERY])
            times.append(time.perf_counter() - t0)
        out[backend] = 1000 * statistics.median(times)
    return out


# -- report ------------------------------------------------------------------------------------


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"{os.cpu_count()} CPU cores ({cpu}), {threads} torch threads, Python {platform.python_version()}, torch {torch.__version__}"


def tables(n: int, tut: float, oc: float, ours: dict[str, dict], search: dict, text: dict[str, float]) -> str:
    lines = [
        f"Indexing {n} JPEGs (6000x3376, 4032x3024 and 1920x1080 in equal parts), CLIP ViT-B/32, random weights.",
        "",
        "| loop | img/s | vs tutorial | vs open_clip | start-up s | peak RSS MB |",
        "|---|---|---|---|---|---|",
        f"| tutorial: PIL + `CLIPProcessor` + `get_image_features`, batch {BATCH} | {tut:.1f} | 1.00x | {tut / oc:.2f}x | - | - |",
        f"| open_clip: PIL + `preprocess` + `encode_image`, batch {BATCH} | {oc:.1f} | {oc / tut:.2f}x | 1.00x | - | - |",
    ]
    for backend, r in ours.items():
        lines.append(
            f"| `clipsearch index --backend {backend}` | {r['ips']:.1f} | {r['ips'] / tut:.2f}x | {r['ips'] / oc:.2f}x "
            f"| {r['startup']:.1f} | {r['rss']:.0f} |"
        )
    lines += ["", "| one-image `clipsearch index` process | wall s |", "|---|---|"]
    for backend, r in ours.items():
        lines.append(f"| `--backend {backend}`, model already prepared | {r['startup_one']:.2f} |")
        first = "first use, including the export" if backend == "onnx" else "first run"
        lines.append(f"| `--backend {backend}`, {first} | {r['first_use']:.2f} |")
    lines += ["", "| query | value |", "|---|---|"]
    for backend, (wall, rss) in search.items():
        lines.append(f"| `clipsearch search TEXT --store S` process, store indexed with `{backend}` | {wall:.2f} s, {rss:.0f} MB peak |")
    for backend, ms in text.items():
        lines.append(f"| text tower, one query, {backend} | {ms:.1f} ms |")
    return "\n".join(lines)


def write_section(path: Path, body: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else "# Performance\n"
    section = f"{START}\n{body}\n{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## clipsearch against the reference loops\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=96, help="photos in the folder (a multiple of 6 keeps the sizes even)")
    parser.add_argument("--backends", default="torch,onnx")
    parser.add_argument("--vectors", type=int, default=0, help="also time one query over N clustered stored vectors")
    parser.add_argument("--write", type=Path, help="replace this run's section in FILE (docs/performance.md)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-vs-ref-") as tmp_name:
        tmp = Path(tmp_name)
        env = dict(os.environ, HF_HUB_OFFLINE="1", CLIPSEARCH_ONNX_CACHE=str(tmp / "onnx-cache"))
        os.environ["CLIPSEARCH_ONNX_CACHE"] = env["CLIPSEARCH_ONNX_CACHE"]
        log(f"[setup] writing {args.photos} real-sized JPEGs and a random ViT-B/32 ...")
        photos = photo_folder(tmp / "photos", args.photos)
        model_dir = save_random_vit_b32(tmp / "vit-b32")

        log("[tutorial] transformers loop ...")
        tut = tutorial_loop(model_dir, photos)
        log("[open_clip] open_clip loop ...")
        oc = open_clip_loop(photos)
        ours = {b: clipsearch_index(model_dir, photos, b, tmp, env) for b in args.backends.split(",")}

        log("[search] clipsearch search as a process ...")
        search = {b: search_process(r["store"], env) for b, r in ours.items()}
        log("[text] one text query through the text tower ...")
        text = text_encode_ms(model_dir)

        body = tables(args.photos, tut, oc, ours, search, text)
        body = f"Machine: {machine()}. Run on {time.strftime('%Y-%m-%d')}.\n\n" + body
        print(body)
        if args.vectors:
            from bench_index_search import bench_search

            bench_search(args.vectors, 512, 2000, 300, tmp)
        if args.write:
            write_section(args.write, body)
            log(f"[write] {args.write}")


if __name__ == "__main__":
    main()
