"""Scale: indexing on Ray against the local path, and an ANN index over millions of vectors.

Three parts, each printing a table (the numbers behind ``docs/scale.md``):

1. **Engines**: a generated demo-world folder (500 images by default) indexed into fresh stores
   with the demo model by the local path (``engine="local"``, default decoding workers) and by
   Ray (``engine="ray"``) with 1 and then 2 embed actors on a local Ray, after a short warm-up
   run that starts Ray's worker processes; the time of each, images per second, and the ratio to
   the local path. Each Ray store is compared with the local one (same ids; vectors within
   cosine 1e-5). Then ``clipsearch index`` end to end, a new process per engine, which pays the
   imports, the model load and Ray's start and stop.
2. **Commits**: rows per second one driver commits to a store (upserts with their vectors and
   file records) at batch 32 and 512: the ceiling of the Ray engine, which commits on the driver.
3. **Vectors**: synthetic clustered unit vectors (512-d, like CLIP ViT-B/32) at 1M, 5M and 10M,
   generated in chunks, never held whole as float32: a faiss IVF-PQ index with 4-bit fast-scan
   codes (``IVF1024,PQ64x4fs``: 32 bytes a vector, the index the plan in ``docs/scale.md`` uses
   past a few million rows) is trained on a 50k sample and filled chunk by chunk; the time to
   train and to add, the index's bytes, query latency at a few ``nprobe``, and recall@10 against
   an exact scan over the same chunks (100 queries): of the codes' own top 10, and after an
   exact re-rank of their top 100 (the true top 10 found among those 100 candidates: what
   re-ranking by the stored vectors gives).

    python benchmarks/bench_scale.py                              # engines + 1M/5M/10M vectors
    python benchmarks/bench_scale.py --images 0 --sizes 1000000   # vectors only, 1M
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- 1. engines ----------------------------------------------------------------------------------


def bench_engines(n: int, batch_size: int, tmp: Path) -> None:
    import ray

    from clipsearch.collection import open_store
    from clipsearch.models.registry import load_model
    from clipsearch.world.folder import generate_world

    folder = tmp / "world"
    log(f"generating {n} demo-world images ...")
    generate_world(folder, n, seed=11)
    (folder / "metadata.jsonl").unlink()  # images only: the engines differ in how images are read
    model = load_model("demo")

    def run(name: str, **kw) -> tuple[float, object]:
        col = open_store(tmp / f"store-{name}", model=model)
        t = time.perf_counter()
        summary = col.add([folder], batch_size=batch_size, **kw)
        dt = time.perf_counter() - t
        assert summary.embedded == n, summary
        return dt, col.store

    log("local path ...")
    t_local, ref = run("local")
    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    t_init = time.perf_counter() - t0
    rows = [("local (decode workers: default)", t_local, t_local)]
    try:
        log("ray warm-up (worker processes started, clipsearch imported in them) ...")
        warm = tmp / "warm"
        warm.mkdir()
        for p in sorted(folder.iterdir())[:batch_size]:
            shutil.copy(p, warm / p.name)
        t = time.perf_counter()
        open_store(tmp / "store-warm", model=model).add([warm], engine="ray", batch_size=batch_size)
        t_warm = time.perf_counter() - t
        for actors in (1, 2):
            log(f"ray, {actors} embed actor(s) ...")
            dt, store = run(f"ray{actors}", engine="ray", workers=actors)
            check_same(ref, store)
            rows.append((f"ray, {actors} actor{'s' if actors > 1 else ''}", dt, dt + t_init + t_warm))
    finally:
        ray.shutdown()
    # the command as a user runs it: a fresh process, the model loaded, Ray started and stopped
    cli = {}
    for engine in ("local", "ray"):
        log(f"clipsearch index --engine {engine} ...")
        cmd = [sys.executable, "-m", "clipsearch", "index", str(folder), "--store", str(tmp / f"cli-{engine}"),
               "--model", "demo", "--engine", engine, "--batch-size", str(batch_size), "--no-progress"]  # fmt: skip
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        cli[engine] = time.perf_counter() - t
    print(f"\n## Engines: {n} demo-world images, demo model, batch {batch_size}, {os.cpu_count()} CPUs\n")
    print(f"ray.init: {t_init:.1f} s; a first Ray run of {batch_size} images (workers started): {t_warm:.1f} s. In one")
    print("process, the model already loaded; each Ray run starts its embed actors (and loads the model in each) anew:\n")
    print("| run | index s | + ray.init and first run s | images/s | time / local |")
    print("|---|---:|---:|---:|---:|")
    for name, dt, total in rows:
        print(f"| {name} | {dt:.1f} | {total:.1f} | {n / dt:.1f} | {dt / t_local:.2f}x |")
    print("\n`clipsearch index` end to end (a new process: imports, model load, Ray start and stop):\n")
    print("| engine | s | time / local |")
    print("|---|---:|---:|")
    for engine, dt in cli.items():
        print(f"| {engine} | {dt:.1f} | {dt / cli['local']:.2f}x |")


def check_same(a, b) -> None:
    ta, tb = a.to_arrow(columns=["id", "vector"]).sort_by("id"), b.to_arrow(columns=["id", "vector"]).sort_by("id")
    assert ta.column("id").to_pylist() == tb.column("id").to_pylist(), "the engines stored other ids"
    va = np.asarray(ta.column("vector").to_pylist(), np.float32)
    vb = np.asarray(tb.column("vector").to_pylist(), np.float32)
    assert np.sum(va * vb, axis=1).min() > 1 - 1e-5, "the engines stored other vectors"


# -- 2. the driver's commits ------------------------------------------------------------------


def bench_commits(tmp: Path, rows_total: int = 20_000, dim: int = 512) -> None:
    """Rows per second one driver commits (items upserted by id with their vectors, then the
    files table), at two batch sizes: the ceiling of an engine that commits on the driver."""
    from clipsearch.store import ModelRecord, Store

    rng = np.random.default_rng(0)
    print(f"\n## Driver commits: {rows_total:,} rows of {dim}-d vectors into a fresh local store\n")
    print("| batch | rows/s | ms per commit |")
    print("|---:|---:|---:|")
    for batch in (32, 512):
        store = Store.create(tmp / f"commits-{batch}", ModelRecord("fake", dim, ("image",)))
        t = time.perf_counter()
        with store.writing():
            for start in range(0, rows_total, batch):
                m = min(batch, rows_total - start)
                rows = [
                    {"id": f"{start + i:016x}", "modality": "image", "path": f"/photos/{start + i:09d}.jpg",
                     "extra_paths": [], "source": f"/photos/{start + i:09d}.jpg", "sha256": "0" * 64, "size": 1,
                     "mtime": 1.0, "width": 640, "height": 480, "added": 1.0}
                    for i in range(m)
                ]  # fmt: skip
                vecs = rng.standard_normal((m, dim), dtype=np.float32)
                vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
                for r, seq in zip(rows, store.allocate_seqs(m)):
                    r["seq"] = int(seq)
                store.commit_items(rows, vecs)
                store.commit_files(
                    [{"path": r["path"], "kind": "image", "size": 1, "mtime": 1.0, "sha256": "0" * 64} for r in rows]
                )
        dt = time.perf_counter() - t
        print(f"| {batch} | {rows_total / dt:,.0f} | {1000 * dt / -(-rows_total // batch):.0f} |")


# -- 3. vectors ----------------------------------------------------------------------------------

DIM = 512
CHUNK = 250_000
CENTRES = 2_000  # topics the synthetic corpus clusters around
ATTRIBUTES = 64  # shared directions along which vectors of a topic differ
RERANK = 100  # candidates a query takes from the codes, to re-rank by the stored vectors


def chunks(n: int, seed: int):
    """``n`` clustered unit vectors ``(CHUNK, DIM)`` float32 at a time, the same for a seed.

    Shaped like image embeddings rather than like noise: each vector is a topic (one of
    :data:`CENTRES`) plus a mix of :data:`ATTRIBUTES` shared directions (what varies inside a
    topic: colour, count, setting) plus a little isotropic noise. Vectors with no such structure
    (uniform on the sphere) are the worst case for any ANN index and tell little.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = rng.standard_normal((ATTRIBUTES, DIM), dtype=np.float32)
    basis /= np.linalg.norm(basis, axis=1, keepdims=True)
    done = 0
    while done < n:
        m = min(CHUNK, n - done)
        x = centres[rng.integers(0, CENTRES, m)]
        x += (0.6 / np.sqrt(ATTRIBUTES)) * (rng.standard_normal((m, ATTRIBUTES), dtype=np.float32) @ basis)
        x += 0.01 * rng.standard_normal((m, DIM), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield x
        done += m


def bench_vectors(n: int, nlist: int, queries: int = 100, k: int = 10) -> dict:
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(99)
    sample = []
    t0 = time.perf_counter()
    gen_s = 0.0
    # training sample: the first 100k vectors (what a build would draw at random)
    train_n = min(n, 50_000)
    index = faiss.index_factory(DIM, f"IVF{nlist},PQ64x4fs", faiss.METRIC_INNER_PRODUCT)
    first = True
    q = None
    top_s = np.full((queries, k), -np.inf, np.float32)  # exact top-k, merged chunk by chunk
    top_i = np.zeros((queries, k), np.int64)
    add_s = train_s = 0.0
    base = 0
    g = time.perf_counter()
    for x in chunks(n, seed=n):
        gen_s += time.perf_counter() - g
        if first:
            sample = x[:train_n]
            q = x[rng.choice(len(x), queries, replace=False)] + 0.01 * rng.standard_normal((queries, DIM), dtype=np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            t = time.perf_counter()
            index.train(np.ascontiguousarray(sample))
            train_s = time.perf_counter() - t
            first = False
        t = time.perf_counter()
        index.add(x)
        add_s += time.perf_counter() - t
        s = q @ x.T  # exact scores against this chunk
        part = np.argpartition(-s, k, axis=1)[:, :k]
        cand_s = np.concatenate([top_s, np.take_along_axis(s, part, 1)], 1)
        cand_i = np.concatenate([top_i, part + base], 1)
        best = np.argsort(-cand_s, axis=1)[:, :k]
        top_s, top_i = np.take_along_axis(cand_s, best, 1), np.take_along_axis(cand_i, best, 1)
        base += len(x)
        g = time.perf_counter()
    total = time.perf_counter() - t0
    code_bytes = faiss.serialize_index(index).nbytes
    out = {"n": n, "nlist": nlist, "train_s": train_s, "add_s": add_s, "gen_s": gen_s, "total_s": total,
           "index_mb": code_bytes / 2**20, "probes": []}  # fmt: skip
    for nprobe in (8, 32, 128):
        index.nprobe = nprobe
        index.search(q[:5], k)  # warm
        lat = []
        found = np.zeros((queries, RERANK), np.int64)
        for i in range(queries):
            t = time.perf_counter()
            _, found[i : i + 1] = index.search(q[i : i + 1], RERANK)
            lat.append(time.perf_counter() - t)
        recall = np.mean([len(set(found[i, :k]) & set(top_i[i])) / k for i in range(queries)])
        reranked = np.mean([len(set(found[i]) & set(top_i[i])) / k for i in range(queries)])
        p50, p95 = 1000 * float(np.median(lat)), 1000 * float(np.percentile(lat, 95))
        out["probes"].append((nprobe, p50, p95, float(recall), float(reranked)))
    return out


def print_vectors(results: list[dict]) -> None:
    print("\n## Vectors: IVF-PQ 4-bit fast scan (32-byte codes), 512-d clustered synthetic unit vectors\n")
    print(
        "| vectors | nlist | generate s | train s | add s | add µs/vector | index MB | bytes/vector | nprobe | p50 ms "
        f"| p95 ms | recall@10 | recall@10, top {RERANK} re-ranked |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        for j, (nprobe, p50, p95, rec, rer) in enumerate(r["probes"]):
            head = (
                f"| {r['n']:,} | {r['nlist']} | {r['gen_s']:.0f} | {r['train_s']:.1f} | {r['add_s']:.1f} | {1e6 * r['add_s'] / r['n']:.1f} | "
                f"{r['index_mb']:.0f} | {r['index_mb'] * 2**20 / r['n']:.0f} "
                if j == 0
                else "| | | | | | | | "
            )
            print(f"{head}| {nprobe} | {p50:.2f} | {p95:.2f} | {rec:.3f} | {rer:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500, help="demo-world images for the engines (0: skip)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--sizes", default="1000000,5000000,10000000", help="vector counts, comma-separated ('' skips)")
    ap.add_argument("--commits", action=argparse.BooleanOptionalAction, default=True, help="time the driver's commits")
    ap.add_argument("--nlist", type=int, default=1024, help="IVF lists (the same for every size: the growth curve)")
    args = ap.parse_args()
    if args.images:
        tmp = Path(tempfile.mkdtemp(prefix="clipsearch-bench-scale-"))
        try:
            bench_engines(args.images, args.batch_size, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.commits:
        tmp = Path(tempfile.mkdtemp(prefix="clipsearch-bench-scale-"))
        try:
            bench_commits(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    results = []
    for n in sizes:
        log(f"{n:,} vectors ...")
        results.append(bench_vectors(n, args.nlist))
        print_vectors(results[-1:])
    if len(results) > 1:
        print_vectors(results)


if __name__ == "__main__":
    main()
