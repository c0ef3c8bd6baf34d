"""Nearest-neighbour search over the store's unit vectors: exact, and an ANN index for large stores.

Why these choices (``benchmarks/bench_index_search.py``, part 2: clustered 512-d unit vectors,
200 clusters of Zipf sizes, each point at cosine ~0.8 to its centre, fresh queries from the same
clusters one at a time, 2 cores; see docs/performance.md, "ANN at a million"):

- Queries never go through LanceDB's own search: vectors are searched in memory. (When this
  was chosen, lancedb 0.40 on 1M such vectors was 10-40x slower than faiss at the same recall,
  and its flat scan 18x slower than numpy; the benchmark does not repeat that comparison.)
- Below :data:`DEFAULT_ANN_THRESHOLD` rows, numpy matmul + argpartition is exact and fast
  (100k rows: p50 7 ms).
- Above it, faiss ``IVF{nlist}_HNSW32,SQ8`` inside ``IndexRefineFlat``: lists found by a small
  HNSW graph over the centroids (cheaper than scanning thousands of centroids per query, and
  it makes adding 1M rows fast), list members scanned as 8-bit codes (less memory traffic
  than floats), and the best ``REFINE_FACTOR * k`` re-scored exactly from the float vectors.
  ``nlist`` is about ``2 * sqrt(n)`` (2048 at 1M: 4096 lists took 87 s of k-means alone on 2
  cores), k-means is spherical. Measured with faiss 1.15.1 (p50 of one query, recall@10 on
  fresh queries; single runs on a shared 2-core machine, so latencies are rough):

  ============================================  =======  ================  ================
  index                                         build    recall ~0.95      recall ~0.99
  ============================================  =======  ================  ================
  200k rows
  HNSW16,Flat, efConstruction 40                18 s     0.87 at ef 512    --
  HNSW32,Flat (inner product), efC 40           33 s     0.951 at ef 384,  0.961 at ef 512
                                                         1.8 ms
  HNSW32,Flat (L2 on unit rows), efC 40         55 s     0.934 at ef 256,  0.961 at ef 512,
                                                         1.5 ms            4.3 ms
  IVF1024,Flat                                  6 s      0.981 at np 48,   0.993 at np 64,
                                                         2.0 ms            2.7 ms
  IVF1024,SQ8 + exact re-rank of top 40         6 s      0.981 at np 48,   0.993 at np 64,
                                                         1.3 ms            1.6 ms
  IVF2048,SQ8 + exact re-rank of top 40         12 s     0.981 at np 96,   0.996 at np 128,
                                                         1.3 ms            1.6 ms
  IVF2048_HNSW32,PQ128x4fs + re-rank top 100    32 s     0.41 at any np    --
  1M rows
  IVF2048_HNSW32,SQ8 + re-rank top 40           22 s     0.966 at np 80,   0.992 at np 128,
  (k-means not spherical)                                5.4 ms            8.3 ms
  IVF4096_HNSW32,SQ8 + re-rank top 40           113 s    0.823 at np 64,   --
                                                         6.7 ms
  ============================================  =======  ================  ================

  Within one cluster these vectors are an isotropic 512-d blob, where every point's ten
  nearest neighbours are barely nearer than the rest: graphs (HNSW) need a very wide beam and
  coarse codes (4-bit PQ) cannot rank them at all, while IVF with 8-bit codes and an exact
  re-rank gets there by scanning a few percent of the rows. Two details matter as much as
  the index: a single query runs on one OpenMP thread (on two busy cores faiss's parallel
  re-rank of one query waited 7 ms for its threads, against a 0.5 ms search), and k-means is
  spherical (with inner-product assignment, long centroids drew 14x more rows than the
  average list; unit ones 3x). The Store's numbers at 1M are in docs/performance.md.
- Two operating points, :data:`RECALL_POINTS` (0.95, the default, and 0.99), each the smallest
  ``nprobe`` whose recall@10 on *held-out* rows (left out of the index while it is calibrated,
  added after) reaches the target with a one-sided 95% confidence margin: the promise holds
  for queries like the stored rows, and is not overshot (the old single point aimed at a mix
  of easy and very hard synthetic queries and landed at 0.999 where 0.97 was asked).

Rows are numbered inside the index in the order they were added (faiss ids ``0..m-1``);
:attr:`AnnIndex.labels` maps them to the store's ``seq`` (assigned once per id, never reused).
The index covers the rows that existed when it was written; newer rows (the "tail") are
scanned exactly beside it, and rows deleted since are masked out of every search.
"""

from __future__ import annotations

import math
import io
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]
"""``(n, dim)`` float32 unit rows."""

DEFAULT_ANN_THRESHOLD = 100_000
"""Rows at which a store gets an ANN index; ``$CLIPSEARCH_ANN_THRESHOLD`` overrides."""

ANN_THRESHOLD_ENV = "CLIPSEARCH_ANN_THRESHOLD"

RECALL_POINTS = (0.95, 0.99)
"""Recall@10 targets the index is calibrated for; a search picks one (``recall=``)."""

DEFAULT_RECALL = 0.95

KIND = "ivf_hnsw_sq8_refine"
"""What ``ann.json`` names this index; an index of another kind (older versions wrote
``ivf_flat``) is not used and is rebuilt by the next indexing run or ``clipsearch check``."""

REFINE_FACTOR = 4
"""Candidates re-scored exactly per result wanted (top 40 for k=10)."""

HELD_OUT = 500
"""Rows left out of the index while calibrating (queries with a known answer)."""

INDEX_META = "ann.json"
_FILE_PREFIXES = ("ann-", "ivf-")  # this kind's files, and those of the older ivf_flat index


def ann_threshold_from_env(default: int = DEFAULT_ANN_THRESHOLD) -> int:
    """The row count at which an ANN index is built, from ``$CLIPSEARCH_ANN_THRESHOLD``."""
    raw = os.environ.get(ANN_THRESHOLD_ENV, "").strip().replace("_", "")
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{ANN_THRESHOLD_ENV} must be a positive whole number of rows, got {raw!r}")
    return int(raw)


def check_recall(recall: float | None) -> float:
    """``recall`` (None: :data:`DEFAULT_RECALL`) after checking it is one a search can promise."""
    if recall is None:
        return DEFAULT_RECALL
    if isinstance(recall, bool) or not isinstance(recall, (int, float)) or not 0.0 < float(recall) <= max(RECALL_POINTS):
        raise ValueError(
            f"recall must be a number above 0 and at most {max(RECALL_POINTS)} (the ANN index is calibrated for "
            f"recall@10 {' and '.join(str(p) for p in RECALL_POINTS)}), got {recall!r}; for exact results search "
            "with exact=True"
        )
    return float(recall)


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


# -- the ANN index -----------------------------------------------------------------------------


def choose_nlist(n: int) -> int:
    """Number of IVF lists for ``n`` rows: about ``2 * sqrt(n)``, a power of two, 64..65536."""
    target = 2.0 * math.sqrt(max(n, 1))
    return int(min(65536, max(64, 2 ** round(math.log2(target)))))


@dataclass
class AnnIndex:
    """An ``IndexRefineFlat(IVF_HNSW32,SQ8)`` over unit vectors (inner product).

    faiss numbers rows ``0..m-1`` in the order they were added; ``labels[i]`` is row ``i``'s
    ``seq`` in the store, or -1 once it has been removed (faiss cannot drop rows from the
    refine stage, so removed rows are masked out of every search instead).
    """

    index: Any  # faiss.IndexRefineFlat around an IndexIVFScalarQuantizer
    labels: npt.NDArray[np.int64]  # (m,)
    points: dict[float, int]  # target recall@10 -> nprobe
    measured: dict[float, float]  # target -> recall@10 on the held-out rows at that nprobe
    trained_rows: int  # rows in the store when the quantizer was trained
    built: float  # time.time() of the build
    build_seconds: float = 0.0
    _live: npt.NDArray[np.uint8] | None = field(default=None, repr=False)  # bitmap of labels >= 0
    _live_sel: Any = field(default=None, repr=False)
    _rows: int = field(default=-1, repr=False)

    @property
    def ivf(self) -> Any:
        import faiss

        return faiss.extract_index_ivf(self.index)

    @property
    def nlist(self) -> int:
        return int(self.ivf.nlist)

    @property
    def d(self) -> int:
        return int(self.index.d)

    @property
    def seqs(self) -> npt.NDArray[np.int64]:
        """Sorted ``seq`` of the rows it holds."""
        return np.sort(self.labels[self.labels >= 0])

    @property
    def rows(self) -> int:
        """Live rows (counted once per change: every unfiltered search asks)."""
        if self._rows < 0:
            self._rows = int((self.labels >= 0).sum())
        return self._rows

    @property
    def max_seq(self) -> int:
        return int(self.labels.max()) if len(self.labels) else -1

    def nprobe_for(self, recall: float | None = None) -> int:
        """The ``nprobe`` of the cheapest operating point that promises ``recall`` (default 0.95)."""
        want = check_recall(recall)
        fits = [p for p in sorted(self.points) if p >= want - 1e-9]
        return self.points[fits[0] if fits else max(self.points)]

    def search(
        self,
        query: npt.NDArray[np.float32],
        k: int,
        *,
        recall: float | None = None,
        allowed: npt.NDArray[np.bool_] | None = None,
        nprobe: int | None = None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Top ``k`` ``(scores, ids)`` for a unit ``query`` ``(d,)``, best first; ``labels[ids]`` are their seqs.

        Args:
            recall: which operating point (see :meth:`nprobe_for`); ``nprobe`` overrides it.
            allowed: ``(m,)`` bool over the index's rows (by faiss id): only these may be
                returned. Removed rows never are.
        """
        import faiss

        probe = int(min(self.nlist, nprobe or self.nprobe_for(recall)))
        sel, keep_alive = self._selector(allowed)
        params = faiss.IndexRefineSearchParameters(
            k_factor=float(REFINE_FACTOR),
            base_index_params=faiss.SearchParametersIVF(
                nprobe=probe, sel=sel, quantizer_params=faiss.SearchParametersHNSW(efSearch=max(64, 2 * probe))
            ),
        )
        # One query runs on one thread: with two, faiss's parallel re-rank waits on a thread
        # wake-up that costs more than the search (100k rows: 7.4 ms instead of 0.5). The
        # setting is this thread's own, so a build running in another thread keeps its cores.
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            scores, ids = self.index.search(query.reshape(1, -1).astype(np.float32), k, params=params)
        finally:
            faiss.omp_set_num_threads(threads)
        del keep_alive
        ids = ids[0]
        ok = ids >= 0
        return scores[0][ok].astype(np.float32), ids[ok].astype(np.int64)

    def _selector(self, allowed: npt.NDArray[np.bool_] | None) -> tuple[Any, Any]:
        """A faiss id selector for ``allowed`` rows that are live, and the buffer it points into."""
        import faiss

        m = len(self.labels)
        if allowed is None:
            if self._live is None:
                return None, None
            return self._live_sel, None
        bits = np.packbits(allowed & (self.labels >= 0), bitorder="little")
        return faiss.IDSelectorBitmap(m, faiss.swig_ptr(bits)), bits

    def _refresh_live(self) -> None:
        import faiss

        live = self.labels >= 0
        self._rows = int(live.sum())
        if self._rows == len(live):
            self._live, self._live_sel = None, None
            return
        self._live = np.packbits(live, bitorder="little")
        self._live_sel = faiss.IDSelectorBitmap(len(self.labels), faiss.swig_ptr(self._live))

    def ids_of(self, seqs: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """faiss ids of the live rows with these ``seqs`` (those it does not hold are dropped)."""
        live = np.flatnonzero(self.labels >= 0)
        order = np.argsort(self.labels[live])
        sorted_labels = self.labels[live][order]
        seqs = np.asarray(seqs, dtype=np.int64)
        idx = np.clip(np.searchsorted(sorted_labels, seqs), 0, max(len(sorted_labels) - 1, 0))
        found = (sorted_labels[idx] == seqs) if len(sorted_labels) else np.zeros(len(seqs), bool)
        return live[order][idx[found]]

    def reconstruct(self, ids: npt.NDArray[np.int64]) -> Vectors:
        """The stored float vectors ``(len(ids), d)`` of rows by faiss id."""
        if len(ids) == 0:
            return np.zeros((0, self.d), dtype=np.float32)
        flat = self.index.refine_index
        return np.asarray(flat.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64)), dtype=np.float32)

    def remove(self, seqs: npt.NDArray[np.int64]) -> None:
        """Mask out rows deleted from the store since the index was written."""
        if len(seqs) == 0:
            return
        self.labels = np.where(np.isin(self.labels, seqs), -1, self.labels).astype(np.int64)
        self._refresh_live()

    def add(self, vectors: Vectors, seqs: npt.NDArray[np.int64]) -> None:
        """Add rows to the existing lists (no retraining)."""
        if len(seqs) == 0:
            return
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.labels = np.concatenate([self.labels, np.asarray(seqs, dtype=np.int64)])
        self._refresh_live()

    @property
    def removed(self) -> int:
        return int((self.labels < 0).sum())

    # -- persistence ---------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "rows": self.rows,
            "max_seq": self.max_seq,
            "nlist": self.nlist,
            "points": [
                {"recall": float(t), "nprobe": int(self.points[t]), "measured": round(float(self.measured[t]), 4)}
                for t in sorted(self.points)
            ],
            "refine_factor": REFINE_FACTOR,
            "trained_rows": int(self.trained_rows),
            "built": self.built,
            "build_seconds": round(float(self.build_seconds), 1),
        }

    def save(self, folder: Path, extra: dict[str, Any]) -> None:
        """Write the index to ``folder`` atomically: new files first, then ``ann.json`` naming them.
        ``folder`` may be an object store's path (:class:`~clipsearch.store.s3.S3Path`)."""
        import faiss

        from clipsearch.store.schema import write_json_atomic

        folder.mkdir(parents=True, exist_ok=True)
        stem = f"ann-{uuid.uuid4().hex[:12]}"
        if isinstance(folder, Path):
            faiss.write_index(self.index, str(folder / f"{stem}.faiss"))
            np.save(folder / f"{stem}.labels.npy", self.labels)
            _fsync_file(folder / f"{stem}.faiss")
            _fsync_file(folder / f"{stem}.labels.npy")
        else:  # an object store: one PUT per file; ann.json, written last, makes them the index
            (folder / f"{stem}.faiss").write_bytes(faiss.serialize_index(self.index).tobytes())
            buf = io.BytesIO()
            np.save(buf, self.labels)
            (folder / f"{stem}.labels.npy").write_bytes(buf.getvalue())
        write_json_atomic(folder / INDEX_META, {**self.meta(), "file": stem, **extra})
        for old in folder.iterdir():  # earlier generations, and leftovers of interrupted writes
            if old.name.startswith(_FILE_PREFIXES) and not old.name.startswith(stem):
                old.unlink(missing_ok=True)

    @classmethod
    def load(cls, folder: Path) -> AnnIndex | None:
        """The index saved in ``folder``, or None when there is none, it is incomplete or of another kind."""
        import faiss

        meta = read_index_meta(folder)
        if meta is None:
            return None
        stem = meta["file"]
        try:
            if isinstance(folder, Path):
                index = faiss.read_index(str(folder / f"{stem}.faiss"))
                labels = np.load(folder / f"{stem}.labels.npy")
            else:
                raw = np.frombuffer((folder / f"{stem}.faiss").read_bytes(), dtype=np.uint8)
                index = faiss.deserialize_index(raw)
                labels = np.load(io.BytesIO((folder / f"{stem}.labels.npy").read_bytes()))
        except (OSError, RuntimeError, ValueError):
            return None
        if index.ntotal != len(labels):
            return None
        points = {float(p["recall"]): int(p["nprobe"]) for p in meta["points"]}
        out = cls(
            index=index,
            labels=np.asarray(labels, dtype=np.int64),
            points=points,
            measured={float(p["recall"]): float(p.get("measured", float("nan"))) for p in meta["points"]},
            trained_rows=int(meta["trained_rows"]),
            built=float(meta.get("built", 0.0)),
            build_seconds=float(meta.get("build_seconds", 0.0)),
        )
        out._refresh_live()
        return out


def read_index_meta(folder: Path) -> dict[str, Any] | None:
    """``ann.json`` of an index of this version's kind, or None (absent, unreadable or older kind)."""
    meta = read_any_index_meta(folder)
    if meta is None or meta.get("kind") != KIND or not isinstance(meta.get("points"), list) or not meta["points"]:
        return None
    return meta


def read_any_index_meta(folder: Path) -> dict[str, Any] | None:
    """``ann.json`` whatever kind of index it names, or None when absent or unreadable."""
    import json

    try:
        meta = json.loads((folder / INDEX_META).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) and "file" in meta else None


def remove_index(folder: Path) -> None:
    """Delete the saved index (the store shrank below the threshold)."""
    if isinstance(folder, Path) and not folder.is_dir():
        return
    (folder / INDEX_META).unlink(missing_ok=True)
    for f in folder.iterdir():
        if f.name.startswith(_FILE_PREFIXES):
            f.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build_index(
    vectors: Vectors,
    seqs: npt.NDArray[np.int64],
    *,
    nlist: int | None = None,
    targets: tuple[float, ...] = RECALL_POINTS,
    held_out: int = HELD_OUT,
    seed: int = 0,
) -> AnnIndex:
    """Train and fill the index, then calibrate one ``nprobe`` per recall target.

    ``held_out`` random rows are added only after calibration: they are the calibration
    queries, with their exact top 10 among the other rows as the answer.

    Args:
        vectors: ``(n, d)`` float32 unit rows.
        seqs: ``(n,)`` int64 labels, one per row.
        nlist: IVF lists; default :func:`choose_nlist`.
        targets: recall@10 values to calibrate for.
        held_out: calibration queries (at most a tenth of the rows).
        seed: for the training sample and the held-out rows.

    Returns:
        The filled index.
    """
    import faiss

    t0 = time.perf_counter()
    n, d = vectors.shape
    if n == 0:
        raise ValueError("cannot build an ANN index over 0 vectors")
    nlist = nlist or choose_nlist(n)
    nlist = max(1, min(nlist, n // 40))  # faiss wants >= 39 training points per list
    rng = np.random.default_rng(seed)
    quantizer = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    # Cheap k-means: 40 points per list (faiss's minimum is 39) and 10 iterations keep training
    # to seconds; list balance matters less than build time, and calibration measures the outcome.
    ivf.cp.niter = 10
    ivf.cp.max_points_per_centroid = 40
    ivf.cp.seed = seed
    # Unit centroids: with inner-product assignment, centroids of larger norm would draw far
    # more rows (lists 14x unequal instead of 3x on 100k clustered rows, and every probe of a
    # big list costs more).
    ivf.cp.spherical = True
    sample = vectors if n <= 40 * nlist else vectors[np.sort(rng.choice(n, 40 * nlist, replace=False))]
    index = faiss.IndexRefineFlat(ivf)
    index.train(np.ascontiguousarray(sample, dtype=np.float32))

    m = min(held_out, n // 10)
    hold = np.zeros(n, bool)
    hold[rng.choice(n, size=m, replace=False)] = True
    first, last = np.flatnonzero(~hold), np.flatnonzero(hold)
    for i in range(0, len(first), 65536):  # in chunks: no second copy of every vector
        index.add(np.ascontiguousarray(vectors[first[i : i + 65536]], dtype=np.float32))
    ann = AnnIndex(
        index=index,
        labels=np.asarray(seqs, dtype=np.int64)[first],
        points={},
        measured={},
        trained_rows=n,
        built=time.time(),
    )
    if m:
        ann.points, ann.measured = calibrate(ann, vectors, last, targets=targets)
    else:
        ann.points = {float(t): nlist for t in targets}
        ann.measured = {float(t): 1.0 for t in targets}
    ann.add(vectors[last], np.asarray(seqs, dtype=np.int64)[last])
    ann.build_seconds = time.perf_counter() - t0
    return ann


def nprobe_ladder(nlist: int) -> list[int]:
    """Candidate ``nprobe`` values: 1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, ... up to ``nlist``.

    Steps of an eighth to a quarter, so the chosen point lands close above its target."""
    out, p = [1, 2, 3], 4
    while p < nlist:
        out += [p, p + p // 4, p + p // 2, p + 3 * p // 4]
        p *= 2
    return sorted({min(v, nlist) for v in out} | {nlist})


def recall_per_query(found: npt.NDArray[np.int64], truth: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """``(m,)`` fraction of each row of ``truth`` ``(m, k)`` that appears in the same row of ``found``."""
    if truth.size == 0:
        return np.ones(len(truth))
    return np.array([len(set(t.tolist()) & set(f.tolist())) / len(t) for t, f in zip(truth, found)])


def recall_at_k(found: npt.NDArray[np.int64], truth: npt.NDArray[np.int64]) -> float:
    """Mean fraction of each row of ``truth`` ``(m, k)`` that appears in the same row of ``found``."""
    return float(recall_per_query(found, truth).mean()) if truth.size else 1.0


def calibrate(
    ann: AnnIndex,
    vectors: Vectors,
    held_out: npt.NDArray[np.int64],
    *,
    targets: tuple[float, ...] = RECALL_POINTS,
    k: int = 10,
) -> tuple[dict[float, int], dict[float, float]]:
    """For each target, the smallest ``nprobe`` on :func:`nprobe_ladder` whose recall@k on held-out rows reaches it.

    "Reaches" means with a one-sided 95% margin (mean minus 1.645 standard errors), so that
    the promise holds for new queries like these and is not far overshot.

    Args:
        ann: the index, holding every row of ``vectors`` ``(n, d)`` but the ``held_out`` ones,
            in order (faiss ids ``0..n-m-1``).
        held_out: ``(m,)`` row numbers of the queries; their answer is their exact top ``k``
            among the other rows.

    Returns:
        ``({target: nprobe}, {target: measured recall})``; ``nlist`` (every list) for a target
        nothing smaller reaches.
    """
    import faiss

    queries = np.ascontiguousarray(vectors[held_out], dtype=np.float32)
    k = min(k, vectors.shape[0] - len(held_out))
    # exact top k among the indexed rows: the top k + m of all rows, held-out ones dropped
    _, near = faiss.knn(queries, vectors, k + len(held_out), metric=faiss.METRIC_INNER_PRODUCT)
    is_held = np.zeros(vectors.shape[0], bool)
    is_held[held_out] = True
    faiss_id = np.cumsum(~is_held) - 1  # row number -> faiss id of the indexed rows
    truth = np.stack([faiss_id[row[~is_held[row]][:k]] for row in near])
    points: dict[float, int] = {}
    measured: dict[float, float] = {}
    pending = sorted(float(t) for t in targets)
    r = np.zeros(0)
    for nprobe in nprobe_ladder(ann.nlist):
        if not pending:
            break
        params = faiss.IndexRefineSearchParameters(
            k_factor=float(REFINE_FACTOR),
            base_index_params=faiss.SearchParametersIVF(
                nprobe=nprobe, quantizer_params=faiss.SearchParametersHNSW(efSearch=max(64, 2 * nprobe))
            ),
        )
        _, found = ann.index.search(queries, k, params=params)
        r = recall_per_query(found, truth)
        low = r.mean() - 1.645 * r.std(ddof=1) / math.sqrt(len(r)) if len(r) > 1 else r.mean()
        while pending and low >= pending[0]:
            points[pending[0]], measured[pending[0]] = nprobe, float(r.mean())
            pending.pop(0)
    for t in pending:  # nothing on the ladder reached it: every list
        points[t], measured[t] = ann.nlist, float(r.mean()) if len(r) else 1.0
    return points, measured
