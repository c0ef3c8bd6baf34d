"""Nearest-neighbour search over the store's unit vectors: exact, and an IVF index for large stores.

Why these choices (numbers from ``benchmarks/bench_index_search.py``: 100,000 clustered 512-d
vectors, 300 queries one at a time, 2 cores):

- Queries never go through LanceDB's own search: vectors are searched in memory. (When this
  was chosen, lancedb 0.40 on 1M such vectors was 10-40x slower than faiss at the same recall,
  and its flat scan 18x slower than numpy; the benchmark does not repeat that comparison.)
- Below :data:`DEFAULT_ANN_THRESHOLD` rows, numpy matmul + argpartition is exact and fast
  (100k rows: p50 7 ms).
- Above it, faiss ``IVF,Flat``: it builds in seconds (100k rows: 6 s, where HNSW took minutes
  on two cores in that comparison), can be extended with new rows and shrunk by deleted ones
  without retraining, and can reconstruct any vector it holds (for exact re-scoring of a
  filtered subset). ``nprobe`` is calibrated at build time to reach :data:`TARGET_RECALL` on
  queries drawn near the stored vectors (100k rows: p50 2 ms at recall@10 0.994).

The index is labelled with each row's ``seq`` (assigned once per id, never reused) and covers
the rows that existed when it was written; newer rows (the "tail") are scanned exactly beside
it, and deleted rows are dropped from it when it is loaded.
"""

from __future__ import annotations

import math
import io
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]
"""``(n, dim)`` float32 unit rows."""

DEFAULT_ANN_THRESHOLD = 100_000
"""Rows at which a store gets an IVF index; ``$CLIPSEARCH_ANN_THRESHOLD`` overrides."""

ANN_THRESHOLD_ENV = "CLIPSEARCH_ANN_THRESHOLD"

TARGET_RECALL = 0.97
"""Recall@10 that ``nprobe`` calibration aims for (a margin over the promised 0.95)."""

INDEX_META = "ann.json"


def ann_threshold_from_env(default: int = DEFAULT_ANN_THRESHOLD) -> int:
    """The row count at which an ANN index is built, from ``$CLIPSEARCH_ANN_THRESHOLD``."""
    raw = os.environ.get(ANN_THRESHOLD_ENV, "").strip().replace("_", "")
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{ANN_THRESHOLD_ENV} must be a positive whole number of rows, got {raw!r}")
    return int(raw)


# -- exact search ----------------------------------------------------------------------------


def top_k(scores: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.int64]:
    """Positions of the ``k`` largest ``scores`` ``(n,)``, best first (ties: lower position first)."""
    n = scores.shape[0]
    if k <= 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    if k < n:
        part = np.argpartition(-scores, k - 1)[:k]
    else:
        part = np.arange(n)
    order = np.lexsort((part, -scores[part]))
    return part[order].astype(np.int64)


def exact_scores(vectors: Vectors, query: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Cosine of each row of ``vectors`` ``(n, d)`` (unit rows) with a unit ``query`` ``(d,)``."""
    if vectors.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    return vectors @ query.astype(np.float32, copy=False)


# -- IVF index ---------------------------------------------------------------------------------


def choose_nlist(n: int) -> int:
    """Number of IVF lists for ``n`` rows: about ``4 * sqrt(n)``, a power of two, 64..65536."""
    target = 4.0 * math.sqrt(max(n, 1))
    return int(min(65536, max(64, 2 ** round(math.log2(target)))))


@dataclass
class IvfIndex:
    """A faiss ``IndexIVFFlat`` (inner product) over unit vectors, labelled by row ``seq``."""

    index: Any  # faiss.IndexIVFFlat with a hashtable direct map
    seqs: npt.NDArray[np.int64]  # sorted labels of the rows it holds
    nprobe: int
    trained_rows: int  # rows in the store when the quantizer was trained
    recall: float  # calibration recall@10 at ``nprobe``
    built: float  # time.time() of the write

    @property
    def nlist(self) -> int:
        return int(self.index.nlist)

    @property
    def max_seq(self) -> int:
        return int(self.seqs[-1]) if len(self.seqs) else -1

    def search(
        self,
        query: npt.NDArray[np.float32],
        k: int,
        *,
        allowed: npt.NDArray[np.int64] | None = None,
        nprobe: int | None = None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Top ``k`` ``(scores, seqs)`` for a unit ``query`` ``(d,)``; only ``allowed`` seqs if given."""
        import faiss

        probe = int(min(self.nlist, nprobe or self.nprobe))
        params = faiss.SearchParametersIVF(nprobe=probe)
        if allowed is not None:
            params.sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        scores, labels = self.index.search(query.reshape(1, -1).astype(np.float32), k, params=params)
        keep = labels[0] >= 0
        return scores[0][keep].astype(np.float32), labels[0][keep].astype(np.int64)

    def reconstruct(self, seqs: npt.NDArray[np.int64]) -> Vectors:
        """The stored vectors ``(len(seqs), d)`` for labels the index holds."""
        if len(seqs) == 0:
            return np.zeros((0, self.index.d), dtype=np.float32)
        return np.asarray(self.index.reconstruct_batch(np.ascontiguousarray(seqs, dtype=np.int64)), dtype=np.float32)

    def remove(self, seqs: npt.NDArray[np.int64]) -> None:
        """Drop labels (rows deleted from the store since the index was written)."""
        import faiss

        if len(seqs) == 0:
            return
        seqs = np.ascontiguousarray(seqs, dtype=np.int64)
        self.index.remove_ids(faiss.IDSelectorArray(seqs))
        self.seqs = np.setdiff1d(self.seqs, seqs, assume_unique=True)

    def add(self, vectors: Vectors, seqs: npt.NDArray[np.int64]) -> None:
        """Add rows to the existing lists (no retraining)."""
        if len(seqs) == 0:
            return
        self.index.add_with_ids(
            np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(seqs, dtype=np.int64)
        )
        self.seqs = np.union1d(self.seqs, seqs.astype(np.int64))

    # -- persistence ---------------------------------------------------------------------------
    def save(self, folder: Path, extra: dict[str, Any]) -> None:
        """Write the index to ``folder`` atomically: new files first, then ``ann.json`` naming them.
        ``folder`` may be an object store's path (:class:`~clipsearch.store.s3.S3Path`)."""
        import faiss

        from clipsearch.store.schema import write_json_atomic

        folder.mkdir(parents=True, exist_ok=True)
        stem = f"ivf-{uuid.uuid4().hex[:12]}"
        if isinstance(folder, Path):
            faiss.write_index(self.index, str(folder / f"{stem}.faiss"))
            np.save(folder / f"{stem}.seqs.npy", self.seqs)
            _fsync_file(folder / f"{stem}.faiss")
            _fsync_file(folder / f"{stem}.seqs.npy")
        else:  # one PUT per file; ann.json, written last, makes them the index
            (folder / f"{stem}.faiss").write_bytes(faiss.serialize_index(self.index).tobytes())
            buf = io.BytesIO()
            np.save(buf, self.seqs)
            (folder / f"{stem}.seqs.npy").write_bytes(buf.getvalue())
        meta = {
            "kind": "ivf_flat",
            "file": stem,
            "rows": int(len(self.seqs)),
            "max_seq": self.max_seq,
            "nlist": self.nlist,
            "nprobe": int(self.nprobe),
            "trained_rows": int(self.trained_rows),
            "recall": float(self.recall),
            "built": self.built,
            **extra,
        }
        write_json_atomic(folder / INDEX_META, meta)
        for old in folder.iterdir():  # earlier generations, and leftovers of interrupted writes
            if old.name.startswith("ivf-") and not old.name.startswith(stem):
                old.unlink(missing_ok=True)

    @classmethod
    def load(cls, folder: Path) -> IvfIndex | None:
        """The index saved in ``folder``, or None when there is none (or it is incomplete)."""
        import faiss

        meta = read_index_meta(folder)
        if meta is None:
            return None
        stem = meta["file"]
        try:
            if isinstance(folder, Path):
                index = faiss.read_index(str(folder / f"{stem}.faiss"))
                seqs = np.load(folder / f"{stem}.seqs.npy")
            else:
                raw = np.frombuffer((folder / f"{stem}.faiss").read_bytes(), dtype=np.uint8)
                index = faiss.deserialize_index(raw)
                seqs = np.load(io.BytesIO((folder / f"{stem}.seqs.npy").read_bytes()))
        except (OSError, RuntimeError, ValueError):
            return None
        index.nprobe = int(meta["nprobe"])
        return cls(
            index=index,
            seqs=np.asarray(seqs, dtype=np.int64),
            nprobe=int(meta["nprobe"]),
            trained_rows=int(meta["trained_rows"]),
            recall=float(meta.get("recall", float("nan"))),
            built=float(meta.get("built", 0.0)),
        )


def read_index_meta(folder: Path) -> dict[str, Any] | None:
    import json

    try:
        meta = json.loads((folder / INDEX_META).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) and "file" in meta and "nprobe" in meta else None


def remove_index(folder: Path) -> None:
    """Delete the saved index (the store shrank below the threshold)."""
    if isinstance(folder, Path) and not folder.is_dir():
        return
    (folder / INDEX_META).unlink(missing_ok=True)
    for f in folder.iterdir():
        if f.name.startswith("ivf-"):
            f.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build_ivf(
    vectors: Vectors,
    seqs: npt.NDArray[np.int64],
    *,
    nlist: int | None = None,
    target_recall: float = TARGET_RECALL,
    seed: int = 0,
) -> IvfIndex:
    """Train and fill an IVF,Flat index, then calibrate ``nprobe``.

    Args:
        vectors: ``(n, d)`` float32 unit rows.
        seqs: ``(n,)`` int64 labels, one per row.
        nlist: IVF lists; default :func:`choose_nlist`.
        target_recall: smallest recall@10 that the chosen ``nprobe`` must reach on calibration
            queries (stored vectors plus noise as large as a typical cluster's spread).
        seed: for the training sample and the calibration queries.

    Returns:
        The filled index.
    """
    import faiss

    n, d = vectors.shape
    if n == 0:
        raise ValueError("cannot build an ANN index over 0 vectors")
    nlist = nlist or choose_nlist(n)
    nlist = max(1, min(nlist, n // 40))  # faiss wants >= 39 training points per list
    rng = np.random.default_rng(seed)
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    # Cheap k-means: 40 points per list (faiss's minimum is 39) and 10 iterations keep training
    # to seconds on 2 cores; list balance matters less than build time, and calibration
    # measures the outcome.
    index.cp.niter = 10
    index.cp.max_points_per_centroid = 40
    index.cp.seed = seed
    sample = vectors if n <= 40 * nlist else vectors[np.sort(rng.choice(n, 40 * nlist, replace=False))]
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    index.set_direct_map_type(faiss.DirectMap.Hashtable)
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(seqs, dtype=np.int64))
    ivf = IvfIndex(
        index=index, seqs=np.sort(seqs.astype(np.int64)), nprobe=1, trained_rows=n, recall=0.0, built=time.time()
    )
    ivf.nprobe, ivf.recall = calibrate_nprobe(ivf, vectors, seqs, target_recall=target_recall, rng=rng)
    index.nprobe = ivf.nprobe
    return ivf


def calibration_queries(vectors: Vectors, m: int, rng: np.random.Generator) -> Vectors:
    """``m`` unit queries of two kinds, half each, built from stored rows.

    - *near*: a row plus Gaussian noise as long as the typical distance from a row to its 10th
      nearest neighbour, so the query sits among a cluster's members (about as hard as a fresh
      image query from the same distribution);
    - *far*: ``0.3 * row + 0.95 * random direction``, cosine about 0.3 to its cluster, the way a
      text query sits relative to the images it matches in CLIP's space (the modality gap).
      IVF needs more probes for these.

    Returns:
        ``(min(m, n), d)`` float32 unit rows.
    """
    n, d = vectors.shape
    picks = rng.choice(n, size=min(m, n), replace=False)
    base = vectors[picks]
    probe = vectors[rng.choice(n, size=min(n, 20_000), replace=False)]
    kth = min(11, probe.shape[0])  # the row itself (when sampled) plus 10 neighbours
    tenth = np.sort(base[: min(64, len(base))] @ probe.T, axis=1)[:, -kth]
    spread = float(np.sqrt(max(2.0 - 2.0 * float(np.mean(tenth)), 1e-4)))
    noise = rng.standard_normal(base.shape).astype(np.float32)
    half = len(base) // 2
    q = base.copy()
    q[:half] += noise[:half] * (spread / math.sqrt(d))
    far = noise[half:] / np.linalg.norm(noise[half:], axis=1, keepdims=True)
    q[half:] = 0.3 * base[half:] + 0.95 * far
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def nprobe_ladder(nlist: int) -> list[int]:
    """Candidate ``nprobe`` values: 1, 2, 3, 4, 6, 8, 12, 16, 24, ... up to ``nlist``."""
    out, p = [], 1
    while p < nlist:
        out.append(p)
        if p >= 2:
            out.append(p + p // 2)
        p *= 2
    return sorted({min(v, nlist) for v in out} | {nlist})


def recall_at_k(found: npt.NDArray[np.int64], truth: npt.NDArray[np.int64]) -> float:
    """Mean fraction of each row of ``truth`` ``(m, k)`` that appears in the same row of ``found``."""
    if truth.size == 0:
        return 1.0
    hits = sum(len(set(t.tolist()) & set(f.tolist())) for t, f in zip(truth, found))
    return hits / truth.size


def calibrate_nprobe(
    ivf: IvfIndex,
    vectors: Vectors,
    seqs: npt.NDArray[np.int64],
    *,
    target_recall: float = TARGET_RECALL,
    queries: int = 400,
    k: int = 10,
    rng: np.random.Generator | None = None,
) -> tuple[int, float]:
    """Smallest ``nprobe`` on :func:`nprobe_ladder` whose recall@k on calibration queries reaches the target.

    Args:
        ivf: the filled index.
        vectors: ``(n, d)`` the rows it holds; ``seqs`` ``(n,)`` their labels.

    Returns:
        ``(nprobe, recall)``; ``nprobe == nlist`` (every list) when nothing smaller does.
    """
    rng = rng or np.random.default_rng(0)
    q = calibration_queries(vectors, queries, rng)
    k = min(k, vectors.shape[0])
    scores = q @ vectors.T
    truth = seqs[np.argpartition(-scores, k - 1, axis=1)[:, :k]]
    recall = 0.0
    for nprobe in nprobe_ladder(ivf.nlist):
        ivf.index.nprobe = nprobe
        _, found = ivf.index.search(q, k)
        recall = recall_at_k(found, truth)
        if recall >= target_recall:
            return nprobe, recall
    return ivf.nlist, recall
