"""The Ray engine: the decode and embed stages of indexing, run on a Ray cluster.

Scan, plan and write stay on the driver (:mod:`clipsearch.ingest.run` with ``engine="ray"``);
what this module hands to Ray Data is the work that scales with the images:

- **decode**: :func:`~clipsearch.ingest.decode.prepare_image` over each batch of paths, in Ray
  tasks (read, hash, decode, preprocess; bytes the store already holds are hashed only);
- **embed**: :func:`~clipsearch.ingest.embed.embed_images` in a pool of actors that each hold
  the encoder, one per GPU (``num_gpus=1``) where Ray sees GPUs, else on a fraction of a CPU;
- a decode task that dies after its retry (a file that crashes every decoder it meets) or
  whose file outlives the per-file time limit (``$CLIPSEARCH_FILE_TIMEOUT``; a watchdog ends
  the task's worker) costs only its block: Ray Data drops it (``max_errored_blocks``) and the
  driver reads that block's files again through the local path's isolated pool
  (:func:`~clipsearch.ingest.decode.prepared_images`), so each bad file becomes one failure
  with its reason, as on the local path, and the block's good files are embedded here;
- back on the driver, in the order of the paths (``preserve_order``), each image's hash,
  size, vector and grid cells go through the same placement and
  :class:`~clipsearch.ingest.write.StoreWriter` commits as the local path, so both engines
  build the same store.

Why the write stays on the driver: each batch is one atomic commit of a few KB per image
(a 512-d float32 vector is 2 KB), which one process commits far faster than the decode and
embed stages produce them; the placement (duplicates by bytes, moved files, captions) needs
the whole store's path map, which lives on the driver. Workers never touch the store, so
they need no credentials for it and the single-writer lock holds as it is.

Everything here is plain data that pickles (paths, arrays), and ``ray`` is imported inside
functions: ``pip install clipsearch[ray]`` is only needed by who runs this engine.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.ingest.decode import Prepared, prepare_image, prepared_images
from clipsearch.ingest.embed import embed_images

if TYPE_CHECKING:
    from clipsearch.models.base import Encoder, Preprocess

ENGINES = ("local", "ray")


def check_engine(engine: str, address: str | None) -> str:
    """Refuse an unknown ``engine`` (or an ``address`` without Ray) before anything is read."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(map(repr, ENGINES))}, got {engine!r}")
    if address is not None and engine != "ray":
        raise ValueError(f"address {address!r} is for engine 'ray' (a Ray cluster to join), not {engine!r}")
    if engine == "ray":
        try:
            import ray  # noqa: F401
            import ray.data  # noqa: F401
        except ImportError:
            raise ValueError("engine 'ray' needs Ray Data: pip install 'clipsearch[ray]'") from None
    return engine


@dataclass
class EmbeddedImage:
    """One image back from the cluster: what decoding found, and its vector unless it failed
    or its bytes were already stored."""

    index: int  # position in the paths given
    prepared: Prepared  # without pixels
    vector: np.ndarray | None  # (dim,) float32 unit vector
    grid: np.ndarray | None  # (rows, cols, dim) float32 cells, models with a grid and ``cells``


@dataclass(frozen=True)
class ModelLoader:
    """Loads the store's model inside an embed actor (on its GPU when Ray gave it one)."""

    name: str
    weights: str | None = None

    def __call__(self) -> Encoder:
        import ray

        from clipsearch.models.registry import load_model

        device = "cuda" if ray.get_gpu_ids() else None
        return load_model(self.name, weights=self.weights, device=device)


class RaySession:
    """A Ray connection for one run, made when first needed (an unchanged folder starts no
    Ray): joins ``address``, or uses the Ray already started in this process, or starts a
    local one, which :meth:`close` stops again."""

    def __init__(self, address: str | None, workers: int | None = None):
        self.address = address
        self.workers = workers
        self.started = False
        self.plan: dict[str, Any] = {}  # from actor_plan, once connected

    def connect(self) -> dict[str, Any]:
        """Connect (once); returns the :func:`actor_plan` for the cluster's resources."""
        import logging
        import warnings

        import ray

        if not self.plan:
            if not ray.is_initialized():
                kw: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
                if self.address is None:
                    kw["include_dashboard"] = False
                with warnings.catch_warnings():  # Ray starts its processes with fork+exec: harmless for lance
                    warnings.filterwarnings("ignore", message=".*fork.*")
                    ray.init(address=self.address, **kw)
                self.started = True
            self.plan = actor_plan(self.resources(), self.workers)
        return self.plan

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False

    def resources(self) -> dict[str, float]:
        import ray

        return {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}


def actor_plan(resources: dict[str, float], workers: int | None) -> dict[str, Any]:
    """How many embed actors, and what each asks of Ray.

    One actor per GPU (``num_gpus=1``) when the cluster has GPUs; else ``workers`` actors
    (default: half the CPUs, at least one) on half a CPU each, so that the decode tasks always
    find a CPU: whole-CPU actors on a small machine leave the read stage starving and the job
    never finishes.
    """
    gpus = int(resources.get("GPU", 0))
    cpus = max(1.0, resources.get("CPU", 1.0))
    decode = 0.5 if cpus <= 4 else 1  # a small machine: decode tasks share the cores, as the local path's workers do
    if gpus:
        n = workers or gpus
        return {"size": n, "num_gpus": 1, "num_cpus": 1, "decode_cpus": decode}
    n = workers or max(1, int(cpus // 2))
    return {"size": n, "num_gpus": 0, "num_cpus": 0.5 if cpus <= 2 * n else 1, "decode_cpus": decode}


def embedded_images(
    paths: Sequence[str],
    preprocess: Preprocess,
    *,
    known_ids: frozenset[str],
    cells: bool,
    load_encoder: Callable[[], Encoder],
    batch_size: int,
    plan: dict[str, Any],
    encoder: Encoder,
    file_timeout: float,
    on_read_here: Callable[[int], None] | None = None,
) -> Iterator[EmbeddedImage]:
    """Decode and embed ``paths`` on the connected Ray cluster, yielding in the paths' order.

    Args:
        paths: image files to read (each node must see them at the same path).
        preprocess: the model's preprocessing (``encoder.info.preprocess``).
        known_ids: image ids the store holds: their bytes are hashed, not decoded or embedded.
        cells: also keep grid cells, for models with a grid.
        load_encoder: returns the encoder, called once in each embed actor (it pickles).
        batch_size: images per decode task and per forward pass.
        plan: from :func:`actor_plan`.
        encoder: the driver's encoder, for the files of blocks the cluster dropped.
        file_timeout: seconds one file may take to read and decode, on a worker or here.
        on_read_here: told how many files of dropped blocks are about to be read here.
    """
    import ray.data

    if not paths:
        return
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # the same commits, in the same order, as the local path
    ctx.enable_progress_bars = False  # the library never prints: progress goes out as events
    ctx.print_on_execution_start = False
    ctx.max_errored_blocks = -1  # a block whose task failed is dropped; its files are read again here
    items = [{"i": i, "path": p} for i, p in enumerate(paths)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch_size, 10_000)))
    with warnings.catch_warnings():  # Ray 2.60 names no other way to bound a task's retries (to go in 2.64)
        warnings.filterwarnings("ignore", message=".*ray_remote_args_fn.*deprecated")
        ds = _with_decode(ds, preprocess, known_ids, batch_size, plan["decode_cpus"], file_timeout)
    ds = ds.map_batches(
        _EmbedActor,
        fn_constructor_kwargs={"load_encoder": load_encoder, "cells": cells},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan["size"]),
        num_cpus=plan["num_cpus"],
        num_gpus=plan["num_gpus"],
        # Ray Data's defaults for actor pools: an actor that dies is started again
        # (max_restarts=-1) and its batch handed to it again (max_task_retries=-1).
    )
    def read_here(start: int, stop: int) -> Iterator[EmbeddedImage]:
        if on_read_here is not None:
            on_read_here(stop - start)
        yield from _read_here(
            paths, range(start, stop), preprocess, known_ids=known_ids, cells=cells, encoder=encoder,
            batch_size=batch_size, file_timeout=file_timeout,
        )  # fmt: skip

    done = 0  # rows before this one came back (from the cluster, or read here)
    with _dropped_blocks_unlogged():
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            first = int(batch["i"][0]) if len(batch["i"]) else done
            if first > done:  # the blocks between were dropped: their files, here, in their place
                yield from read_here(done, first)
            for got in _unbatch(batch, paths):
                done = got.index + 1
                yield got
    if done < len(paths):
        yield from read_here(done, len(paths))


def _read_here(
    paths: Sequence[str],
    index: Sequence[int],
    preprocess: Preprocess,
    *,
    known_ids: frozenset[str],
    cells: bool,
    encoder: Encoder,
    batch_size: int,
    file_timeout: float,
) -> Iterator[EmbeddedImage]:
    """The rows of dropped blocks: decoded in the local path's pool of worker processes (one
    file that crashes or hangs its decoder costs only itself, with the local path's reason),
    embedded with ``encoder`` on this machine, ``batch_size`` at a time."""
    stream = prepared_images(  # one file a chunk: a hung file holds up no other
        [paths[i] for i in index], preprocess, workers=1, known_ids=known_ids, chunk=1, file_timeout=file_timeout
    )
    with closing(stream):
        preps = list(stream)
    vectors: list[np.ndarray | None] = [None] * len(preps)
    grids: list[np.ndarray | None] = [None] * len(preps)
    ok = [k for k, p in enumerate(preps) if p.pixels is not None]
    for s in range(0, len(ok), batch_size):
        part = ok[s : s + batch_size]
        vecs, g = embed_images(encoder, np.stack([preps[k].pixels for k in part]), cells=cells)
        for j, k in enumerate(part):
            vectors[k] = np.asarray(vecs[j], np.float32)
            grids[k] = None if g is None else np.asarray(g[j], np.float32)
    for i, prep, vec, grid in zip(index, preps, vectors, grids):
        prep.pixels = None
        yield EmbeddedImage(i, prep, vec, grid)


class _DroppedBlockFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Ignoring this exception" not in record.getMessage()


@contextmanager
def _dropped_blocks_unlogged() -> Iterator[None]:
    """Keep Ray Data from logging a traceback for each dropped block: the library never prints,
    and each file of such a block is reported as a failure with its reason, or indexed."""
    log = logging.getLogger("ray.data._internal.execution.streaming_executor_state")
    quiet = _DroppedBlockFilter()
    log.addFilter(quiet)
    try:
        yield
    finally:
        log.removeFilter(quiet)


def _with_decode(
    ds: Any, preprocess: Preprocess, known_ids: frozenset[str], batch_size: int, cpus: float, file_timeout: float
) -> Any:
    """The decode stage as Ray tasks over ``ds`` (rows ``{"i", "path"}``)."""
    return ds.map_batches(
        _decode_batch,
        fn_kwargs={"preprocess": preprocess, "known_ids": known_ids, "file_timeout": file_timeout},
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=cpus,
        # A worker killed mid-task (a lost node, the OOM killer): the task runs once more, not
        # Ray Data's endless default; a task that fails again drops its block, whose files the
        # driver reads again one by one (a file that kills every decoder costs only itself).
        ray_remote_args_fn=_decode_task_args,
    )


def _decode_task_args() -> dict[str, Any]:
    return {"max_retries": 1}


def _decode_batch(
    batch: dict[str, np.ndarray], preprocess: Preprocess, known_ids: frozenset[str], file_timeout: float
) -> dict[str, Any]:
    """The decode stage over one batch of ``{"i", "path"}`` rows (a Ray task).

    A file that takes longer than ``file_timeout`` seconds (a stalled network drive, a decoder
    stuck in a loop) ends this worker, as the local path's pool kills its worker: nothing
    inside a task can stop a read blocked in the kernel. The task then fails like a crashed
    one (see :func:`_with_decode`).
    """
    import faulthandler

    preps = []
    try:
        for p in batch["path"]:
            # The standard library's watchdog: a C thread that needs no GIL, dumps the stacks to
            # the worker's log and exits the process; each call re-arms it for the next file.
            faulthandler.dump_traceback_later(file_timeout, exit=True)
            preps.append(prepare_image(str(p), preprocess, known_ids=known_ids))
    finally:
        faulthandler.cancel_dump_traceback_later()
    crop = preprocess.crop
    pixels = np.zeros((len(preps), 3, crop, crop), np.float32)
    for k, prep in enumerate(preps):
        if prep.pixels is not None:
            pixels[k] = prep.pixels
    out = _prepared_columns(batch["i"], preps)
    out["pixels"] = pixels
    return out


def _prepared_columns(index: np.ndarray, preps: list[Prepared]) -> dict[str, Any]:
    return {
        "i": np.asarray(index, np.int64),
        "sha256": np.asarray([p.sha256 or "" for p in preps], dtype=object),
        "error": np.asarray([p.error or "" for p in preps], dtype=object),
        "failed": np.asarray([p.error is not None for p in preps], dtype=bool),
        "known": np.asarray([p.known for p in preps], dtype=bool),
        "has_pixels": np.asarray([p.pixels is not None for p in preps], dtype=bool),
        "width": np.asarray([p.width or 0 for p in preps], np.int64),
        "height": np.asarray([p.height or 0 for p in preps], np.int64),
    }


class _EmbedActor:
    """The embed stage in a Ray actor: holds the encoder, embeds each decoded batch."""

    def __init__(self, load_encoder: Callable[[], Encoder], cells: bool):
        self.encoder = load_encoder()
        self.cells = cells

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        pixels = batch.pop("pixels")
        ok = np.flatnonzero(batch["has_pixels"])
        dim = int(self.encoder.dim)
        vectors = np.zeros((len(pixels), dim), np.float32)
        grids = None
        if len(ok):
            vecs, g = embed_images(self.encoder, np.ascontiguousarray(pixels[ok]), cells=self.cells)
            vectors[ok] = vecs
            if g is not None:
                grids = np.zeros((len(pixels), *g.shape[1:]), np.float32)
                grids[ok] = g
        batch["vector"] = vectors
        if grids is not None:
            batch["grid"] = grids
        return batch


def _unbatch(batch: dict[str, np.ndarray], paths: Sequence[str]) -> Iterator[EmbeddedImage]:
    grids = batch.get("grid")
    for k, i in enumerate(batch["i"].tolist()):
        has = bool(batch["has_pixels"][k])
        prep = Prepared(
            paths[i],
            sha256=str(batch["sha256"][k]) or None,
            width=int(batch["width"][k]) or None,
            height=int(batch["height"][k]) or None,
            known=bool(batch["known"][k]),
            error=str(batch["error"][k]) if batch["failed"][k] else None,
        )
        yield EmbeddedImage(
            i,
            prep,
            np.asarray(batch["vector"][k], np.float32) if has else None,
            np.asarray(grids[k], np.float32) if has and grids is not None else None,
        )
