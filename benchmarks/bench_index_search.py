"""Indexing throughput and query latency of a clipsearch store, with ratios to in-process references.

Two parts, each printing a table:

1. **Indexing** a generated folder of JPEG photos into a fresh store (decode in worker
   processes, embed, write), in images/s, next to the model alone embedding the same images
   already decoded (the ceiling), and the time of a second, incremental run (nothing changed).
2. **Search** over synthetic *clustered* unit vectors (uniform random vectors are the worst
   case for ANN recall and tell little): p50/p95 latency of one query at a time, for the store's
   exact scan, its ANN index at each operating point (faiss alone, ``Store.nearest`` with the
   exact tail, and a full ``Store.search`` that also reads the hits' rows), next to a plain numpy
   matmul + argpartition, with recall@10 against exact search, and the index's build time.

Models: ``random-vit-b32`` (default) is CLIP ViT-B/32 at full size with random weights, built
in memory (speed does not depend on the weights; no download needed); any name
``load_model`` accepts also works (``--model demo``, a model folder, ...).

    python benchmarks/bench_index_search.py                    # about 2 minutes on 2 cores
    python benchmarks/bench_index_search.py --images 200 --vectors 1000000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RANDOM_VIT = "random-vit-b32"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- models ------------------------------------------------------------------------------------


def make_model(name: str):
    """The encoder to index with (see the module docstring)."""
    if name != RANDOM_VIT:
        from clipsearch.models.registry import load_model

        return load_model(name)
    import torch
    from transformers import CLIPConfig, CLIPModel

    from clipsearch.models.base import ModelInfo, Preprocess
    from clipsearch.models.hf_clip import HFClipEncoder

    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig()).eval()  # the defaults are ViT-B/32: 224 px, patch 32, 512-d
    info = ModelInfo(
        name=RANDOM_VIT,
        backend="hf_clip",
        dim=512,
        modalities=("image",),
        context_length=77,
        preprocess=Preprocess(),  # OpenAI CLIP: 224, bicubic, its mean and std
        logit_scale=100.0,
    )
    return HFClipEncoder(model, tokenizer=None, info=info)


# -- part 1: indexing --------------------------------------------------------------------------


def make_photos(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """``n`` JPEGs of ``size``: smooth colour fields plus noise, so they compress like photos."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(n):
        a, b, c = rng.uniform(0.002, 0.02, 3)
        base = np.stack([np.sin(xx * a + i), np.cos(yy * b - i), np.sin((xx + yy) * c)], axis=-1)
        img = (127 + 100 * base + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
        p = folder / f"photo_{i:05d}.jpg"
        Image.fromarray(img).save(p, quality=90)
        paths.append(p)
    return paths


def bench_indexing(encoder, n: int, size: tuple[int, int], workers: int, batch_size: int, tmp: Path) -> None:
    from clipsearch.images import load_image
    from clipsearch.collection import open_store

    log(f"[index] writing {n} JPEGs of {size[0]}x{size[1]} ...")
    photos = make_photos(tmp / "photos", n, size)
    store = open_store(tmp / "store-index", model=encoder)

    # warm-up: the first forward pass pays for allocations
    encoder.encode_pixel_values(encoder.preprocess_images([load_image(photos[0], draft=encoder.info.preprocess.crop)]))

    log(f"[index] indexing with {workers} decoding workers, batch {batch_size} ...")
    t0 = time.perf_counter()
    summary = store.add([tmp / "photos"], workers=workers, batch_size=batch_size)
    t_index = time.perf_counter() - t0
    assert summary.added == n and summary.failed == 0, summary

    t0 = time.perf_counter()
    again = store.add([tmp / "photos"], workers=workers, batch_size=batch_size)
    t_again = time.perf_counter() - t0
    assert again.unchanged == n and again.embedded == 0

    log("[index] reference: the model alone on the same images, decoded beforehand ...")
    m = min(n, 64)
    decoded = [load_image(p, draft=encoder.info.preprocess.crop) for p in photos[:m]]
    t0 = time.perf_counter()
    pixels = encoder.preprocess_images(decoded)
    for i in range(0, m, batch_size):
        encoder.encode_pixel_values(pixels[i : i + batch_size])
    t_model = time.perf_counter() - t0

    t0 = time.perf_counter()
    for p in photos[:m]:
        load_image(p, draft=encoder.info.preprocess.crop)
    t_decode = time.perf_counter() - t0

    ips, ref_ips = n / t_index, m / t_model
    print()
    print(f"Indexing {n} JPEGs of {size[0]}x{size[1]} with {encoder.name} (batch {batch_size}, {workers} workers)")
    print(f"{'what':<52} {'images/s':>10} {'vs model alone':>15}")
    print(f"{'clipsearch index (decode + embed + write)':<52} {ips:>10.1f} {ips / ref_ips:>14.2f}x")
    print(f"{'model alone, pre-decoded (preprocess + forward)':<52} {ref_ips:>10.1f} {1.0:>14.2f}x")
    print(f"{'decode alone, one process (draft)':<52} {m / t_decode:>10.1f} {m / t_decode / ref_ips:>14.2f}x")
    print(f"{'second run, nothing changed':<52} {n / t_again:>10.0f} {n / t_again / ref_ips:>14.1f}x")


# -- part 2: search ----------------------------------------------------------------------------


def clustered(n: int, dim: int, centres: np.ndarray, rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """Points around ``centres`` (cosine to the centre about 0.8), cluster sizes by ``weights``."""
    labels = rng.choice(len(centres), size=n, p=weights)
    x = centres[labels] + rng.standard_normal((n, dim)).astype(np.float32) * (0.75 / np.sqrt(dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def percentiles(times: list[float]) -> tuple[float, float]:
    a = np.asarray(times) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 95))


def bench_search(n: int, dim: int, n_clusters: int, n_queries: int, tmp: Path) -> None:
    from clipsearch.collection import open_store
    from clipsearch.models.base import Encoder, ModelInfo
    from clipsearch.store.ann import top_k

    class VectorsOnly(Encoder):  # the store needs a model name and dimension, nothing else here
        info = ModelInfo(
            name="synthetic",
            backend="none",
            dim=dim,
            modalities=(),  # embeds nothing: rows come with their vectors
            context_length=0,
            preprocess=None,
            logit_scale=1.0,
        )

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.zipf(1.6, n_clusters).astype(float)
    weights /= weights.sum()
    log(f"[search] {n:,} clustered {dim}-d vectors in {n_clusters} clusters ...")
    data = clustered(n, dim, centres, rng, weights)
    queries = clustered(n_queries, dim, centres, np.random.default_rng(1), weights)

    os.environ["CLIPSEARCH_ANN_THRESHOLD"] = str(min(n, 50_000))
    store = open_store(tmp / "store-search", model=VectorsOnly())
    t0 = time.perf_counter()
    with store.writing():
        for start in range(0, n, 20_000):
            chunk = range(start, min(n, start + 20_000))
            seqs = store.allocate_seqs(len(chunk))
            rows = [
                {
                    "id": hashlib.sha256(str(i).encode()).hexdigest()[:16],
                    "seq": int(s),
                    "modality": "image" if i % 5 else "text",
                    "path": f"/photos/{i // 1000}/{i}.jpg",
                    "extra_paths": [],
                    "label": f"l{i % 10}",
                }
                for i, s in zip(chunk, seqs)
            ]
            store.commit_items(rows, data[start : start + len(chunk)])
    t_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    built = store.update_index()
    t_build = time.perf_counter() - t0
    state = store.index_state()
    log(f"[search] wrote in {t_write:.1f} s; index {built} in {t_build:.1f} s: {state}")

    truth = [set(top_k(data @ q, 10).tolist()) for q in queries]
    ids = np.array(store.to_arrow(["seq"]).column("seq").to_numpy())  # positions -> seq (row order)
    ann = store.store._current_snapshot().ann  # the loaded index itself, to time faiss alone
    points = [p["recall"] for p in state.get("points", [])]

    methods: dict[str, object] = {"numpy": lambda q: top_k(data @ q, 10)}
    if n <= 200_000:  # the store's exact path keeps a second copy of every vector in memory
        methods["exact"] = lambda q: store.nearest(q, 10, exact=True)
    for p in points:
        methods[f"faiss {p}"] = lambda q, p=p: ann.search(q, 10, recall=p)
        methods[f"ann {p}"] = lambda q, p=p: store.nearest(q, 10, recall=p)
        methods[f"full {p}"] = lambda q, p=p: store.search(q, k=10, recall=p)
    methods["where"] = lambda q: store.nearest(q, 10, where="label = 'l3'")
    times: dict[str, list[float]] = {m: [] for m in methods}
    outs: dict[str, list] = {m: [] for m in methods}
    for fn in methods.values():
        fn(queries[0])  # warm: loads vectors and the index once, as a long-lived process would
    names = list(methods)
    for i, q in enumerate(queries):  # interleaved, rotating order: a noisy machine hurts all alike
        for name in names[i % len(names) :] + names[: i % len(names)]:
            t = time.perf_counter()
            outs[name].append(methods[name](q))
            times[name].append(time.perf_counter() - t)

    def recall(name: str) -> float | None:
        got = []
        for o in outs[name]:
            if name.startswith("faiss"):  # (scores, faiss ids): labels are seqs == insertion index here
                got.append({int(s) for s in ann.labels[o[1]]})
            elif name.startswith("full"):
                continue
            elif name == "numpy":  # row numbers == seq
                got.append({int(i) for i in o})
            else:  # nearest() returns snapshot positions
                got.append({int(ids[p]) for p, _ in o})
        if not got:
            return None
        return float(np.mean([len(t & g) / 10 for t, g in zip(truth, got)]))

    def label(name: str) -> str:
        if name == "numpy":
            return "numpy matmul + argpartition (reference)"
        if name == "exact":
            return "Store.nearest exact=True"
        if name == "where":
            return "Store.nearest, where label = 'l3' (10% kept)"
        what, p = name.split()
        return {
            "faiss": f"faiss index alone, recall={p}",
            "ann": f"Store.nearest recall={p} (index + tail)",
            "full": f"Store.search recall={p} (+ 10 hits' rows)",
        }[what]

    np50, _ = percentiles(times["numpy"])
    print()
    print(f"Search: {n:,} vectors, {dim}-d, {n_clusters} clusters, {n_queries} fresh queries, top-10, one at a time")
    if points:
        calib = ", ".join(f"recall {p['recall']}: nprobe {p['nprobe']} (held-out {p['measured']})" for p in state["points"])
        print(f"ANN {state['kind']}: nlist {state['nlist']}; {calib}")
        print(f"index built in {t_build:.1f} s (update_index, reading the vectors from the store included)")
        print(f"IVF list imbalance factor {ann.ivf.invlists.imbalance_factor():.2f} (1.0: lists of equal size)")
    print(f"rows written in {t_write:.1f} s")
    print(f"{'method':<46} {'p50 ms':>8} {'p95 ms':>8} {'p50 vs numpy':>13} {'recall@10':>10}")
    for name in names:
        p50, p95 = percentiles(times[name])
        rec = None if name == "where" else recall(name)
        print(f"{label(name):<46} {p50:>8.2f} {p95:>8.2f} {p50 / np50:>12.3f}x {'' if rec is None else f'{rec:.3f}':>10}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=RANDOM_VIT, help=f"model to index with (default {RANDOM_VIT})")
    ap.add_argument("--images", type=int, default=96, help="photos to index (0: skip part 1)")
    ap.add_argument("--image-size", default="1600x1200", help="WIDTHxHEIGHT of the generated photos")
    ap.add_argument("--workers", type=int, default=None, help="decoding processes (default min(2, CPUs))")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--vectors", type=int, default=100_000, help="vectors to search (0: skip part 2)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=200)
    ap.add_argument("--queries", type=int, default=300)
    args = ap.parse_args()

    from clipsearch.ingest import default_workers

    size = tuple(int(x) for x in args.image_size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="clipsearch-bench-") as tmp:
        if args.images:
            log(f"[index] loading {args.model} ...")
            encoder = make_model(args.model)
            workers = default_workers() if args.workers is None else args.workers
            bench_indexing(encoder, args.images, size, workers, args.batch_size, Path(tmp))  # type: ignore[arg-type]
        if args.vectors:
            bench_search(args.vectors, args.dim, args.clusters, args.queries, Path(tmp))


if __name__ == "__main__":
    main()
