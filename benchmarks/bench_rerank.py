"""What keeping grid cells in the store costs and saves, with the demo model.

A store of a model with a grid keeps each image's cells at indexing, and a search re-scores
its 20 best images by them (``clipsearch.search.DEFAULT_RERANK``). This prints, for a demo-world
gallery indexed twice in the same process (once keeping cells, once through a wrapper that
hides the model's grid pass, as a store without cells is):

1. **Indexing**: seconds for the gallery and the store's size on disk, with and without cells.
2. **Query latency** (p50 / p95 over text queries, one at a time), each as a ratio to the
   vector-only search (``rerank=0``) of the same store: the default search (stored cells) and
   the same re-rank reading the 20 images again (what a store without cells has to do).

    python benchmarks/bench_rerank.py                 # about a minute on 2 cores
    python benchmarks/bench_rerank.py --images 1000 --queries 100
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench_index_search import percentiles  # the sibling benchmark's p50 / p95 in ms


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class WithoutGrid:
    """The same encoder without ``encode_pixels_with_grid``: indexing keeps no cells."""

    def __init__(self, encoder):
        self._encoder = encoder

    def __getattr__(self, name):
        if name == "encode_pixels_with_grid":
            raise AttributeError(name)
        return getattr(self._encoder, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--queries", type=int, default=60)
    args = ap.parse_args()

    from clipsearch.models.registry import load_model
    from clipsearch.search import DEFAULT_CELL_WEIGHT, DEFAULT_RERANK, query_vector, rerank_by_grid
    from clipsearch.collection import open_store
    from clipsearch import world as dw

    encoder = load_model("demo")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        log(f"generating {args.images} demo-world scenes")
        dw.generate_world(tmp / "gallery", n=args.images, seed=0, split="eval")
        images = sorted(p for p in (tmp / "gallery").iterdir() if p.suffix in (".jpg", ".png"))
        stores = {}
        rows = []
        for label, model in (("with cells", encoder), ("without cells", WithoutGrid(encoder))):
            store = open_store(tmp / label.replace(" ", "-"), model=model)
            t0 = time.perf_counter()
            summary = store.add(images, workers=1)
            seconds = time.perf_counter() - t0
            assert summary.added == args.images and summary.failed == 0, summary.to_dict()
            assert store.has_cells == (label == "with cells")
            stores[label] = store
            rows.append((label, seconds, store.stats()["size_bytes"]))
        base_s, base_b = rows[1][1], rows[1][2]
        print(f"\nindexing {args.images} images with the demo model")
        print(f"{'store':<16}{'seconds':>10}{'ratio':>8}{'MB on disk':>12}{'ratio':>8}")
        for label, seconds, size in rows:
            print(f"{label:<16}{seconds:>10.1f}{seconds / base_s:>8.2f}{size / 1e6:>12.1f}{size / base_b:>8.2f}")

        store = stores["with cells"]
        lines = (tmp / "gallery" / "metadata.jsonl").read_text().splitlines()[: args.queries]
        captions = [json.loads(line)["caption"] for line in lines]
        for text in captions[:3]:  # warm: the snapshot, the text path
            store.search(text, k=10, modality="image")

        def reread(text: str):
            q = query_vector(store.store, store.encoder, text)
            hits = store.hits_at(store.nearest(q, DEFAULT_RERANK, modality="image"))
            return rerank_by_grid(encoder, hits, q, cell_weight=DEFAULT_CELL_WEIGHT)[:10]

        runs = {
            "vectors (rerank=0)": lambda t: store.search(t, k=10, modality="image", rerank=0),
            "default: stored cells": lambda t: store.search(t, k=10, modality="image"),
            "re-reading the images": reread,
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        for text in captions:  # interleaved, so load on the machine falls on every kind alike
            for name, run in runs.items():
                t0 = time.perf_counter()
                run(text)
                times[name].append(time.perf_counter() - t0)
        same = [h.id for h in runs["default: stored cells"](captions[0])] == [h.id for h in reread(captions[0])]
        ref = percentiles(times["vectors (rerank=0)"])
        print(f"\nquery latency over {len(captions)} captions, {args.images} images, k=10, re-ranking the best {DEFAULT_RERANK}")
        print(f"{'search':<24}{'p50 ms':>9}{'p95 ms':>9}{'p50 ratio':>11}")
        for name, ts in times.items():
            p50, p95 = percentiles(ts)
            print(f"{name:<24}{p50:>9.1f}{p95:>9.1f}{p50 / ref[0]:>11.2f}")
        print(f"stored cells and re-read images give the same top 10 for the first query: {same}")


if __name__ == "__main__":
    main()
