"""The decode stage: read, hash, decode and preprocess image files, in worker processes."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.store import schema as sch

if TYPE_CHECKING:
    from clipsearch.models.base import Preprocess

MAX_FILE_BYTES = 512 * 1024 * 1024
"""Image files larger than this are refused before being read into memory."""


def check_run_options(batch_size: Any, workers: Any) -> int:
    """Refuse a bad ``batch_size`` or ``workers`` before a run touches anything; returns the
    number of decoding workers (``None``: :func:`default_workers`)."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive whole number, got {batch_size!r}")
    workers = default_workers() if workers is None else int(workers)
    if workers < 0:
        raise ValueError(f"workers must be 0 (decode in this process) or more, got {workers}")
    return workers


def default_workers() -> int:
    """Decoding processes: ``min(2, cpu count)``."""
    return max(1, min(2, os.cpu_count() or 1))



@dataclass
class Prepared:
    """One image after the decode stage: its hash, and pixels unless its bytes are already stored."""

    path: str
    sha256: str | None = None
    pixels: np.ndarray | None = None  # (3, crop, crop) float32
    width: int | None = None
    height: int | None = None
    known: bool = False  # the store already holds these bytes: nothing to decode
    error: str | None = None


MP_CONTEXT_ENV = "CLIPSEARCH_MP_CONTEXT"
"""Overrides how decoding workers start: "spawn" (the default), "forkserver" or "fork"."""

_KNOWN_IDS: frozenset[str] = frozenset()


def _mp_context():
    """Spawn by default: the parent holds torch's thread pool and LanceDB's async runtime, which
    are not fork-safe (lance warns on every fork). See :func:`_main_hidden` for why scripts
    without a ``__main__`` guard still work."""
    import multiprocessing as mp

    method = os.environ.get(MP_CONTEXT_ENV, "").strip() or "spawn"
    if method not in mp.get_all_start_methods():
        raise ValueError(
            f"{MP_CONTEXT_ENV}={method!r} is not available here; use one of {', '.join(mp.get_all_start_methods())}"
        )
    return mp.get_context(method)


@contextmanager
def _main_hidden() -> Iterator[None]:
    """Start spawned workers without re-running the caller's script.

    A spawned child normally re-imports the parent's ``__main__`` (to find functions defined
    there), which re-runs any script that lacks an ``if __name__ == "__main__"`` guard, and
    that script then starts indexing again inside the worker. The workers only run functions
    of this module, so ``__main__`` is hidden from multiprocessing while they start.
    """
    import sys

    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _init_worker(known_ids: frozenset[str]) -> None:
    global _KNOWN_IDS
    _KNOWN_IDS = known_ids
    _die_with_parent()
    _quiet_decoders()


def _quiet_decoders() -> None:
    """Silence decoder chatter in a worker: Pillow's UserWarnings and libtiff/libjpeg messages
    written straight to file descriptor 2. Every bad file's reason is already returned to the
    parent and reported, so this output only scrolls the progress bar away."""
    import warnings

    warnings.simplefilter("ignore")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def _die_with_parent() -> None:
    """Linux: have the kernel kill this worker when the indexing process dies (even by kill -9),
    instead of leaving it blocked forever on a queue whose writer it inherited."""
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)
    except (OSError, AttributeError):
        pass


def prepare_image(path: str, preprocess: Preprocess | None, *, known_ids: frozenset[str] | None = None) -> Prepared:
    """Read, hash, decode and preprocess one image file; never raises for a bad file.

    Args:
        path: the file.
        preprocess: the model's settings; None to hash only.
        known_ids: image ids already stored (default: the worker's set); their bytes are not decoded.
    """
    from clipsearch.errors import ImageRefused
    from clipsearch.images import load_image, probe_image
    from clipsearch.models.preprocess import to_pixel_values

    known = _KNOWN_IDS if known_ids is None else known_ids
    try:
        data = read_file(path)
    except _Refused as exc:
        return Prepared(path, error=str(exc))
    except FileNotFoundError:
        return Prepared(path, error="file not found")  # the wording of clipsearch.images
    except PermissionError:
        return Prepared(path, error="permission denied")
    except IsADirectoryError:
        return Prepared(path, error="is a folder, not an image file")
    except OSError as exc:
        return Prepared(path, error=f"cannot read file: {(exc.strerror or 'I/O error').lower()}")
    sha = hashlib.sha256(data).hexdigest()
    if sch.image_id(sha) in known or preprocess is None:
        return Prepared(path, sha, known=sch.image_id(sha) in known)
    try:
        img = load_image(data, draft=preprocess.crop)  # first: it applies the pixel cap
        info = probe_image(data)  # the size as displayed, before draft decoding shrank it
        pixels = to_pixel_values(img, preprocess)
    except ImageRefused as exc:
        return Prepared(path, sha, error=exc.reason)
    except MemoryError:
        return Prepared(path, sha, error="not enough memory to decode the image")
    except Exception as exc:  # noqa: BLE001 - one bad file never stops the run
        return Prepared(path, sha, error=f"{type(exc).__name__}: {str(exc).strip()[:120]}")
    return Prepared(path, sha, pixels, info.width, info.height)


class _Refused(Exception):
    """A file :func:`read_file` will not read; the message says why."""


READ_ATTEMPTS = 3
"""Reads of a file that keeps changing while it is read before it is refused."""


def read_file(path: str) -> bytes:
    """The bytes of a regular file, read as one consistent version.

    The file is opened without blocking and checked from its open descriptor, so a FIFO or a
    device that took a regular file's place after the scan is refused, never read. A file whose
    size or mtime changes while it is read (a copy still under way) is read again, and refused
    after :data:`READ_ATTEMPTS` tries.

    Raises:
        OSError: it cannot be opened or read.
        _Refused: not a regular file, too large, or never the same twice.
    """
    from clipsearch.ingest.scan import special_kind

    for _ in range(READ_ATTEMPTS):
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            before = os.fstat(fd)
            if stat.S_ISDIR(before.st_mode):
                raise IsADirectoryError(path)
            if not stat.S_ISREG(before.st_mode):
                raise _Refused(f"not a regular file ({special_kind(before.st_mode)})")
            if before.st_size > MAX_FILE_BYTES:
                raise _Refused(
                    f"file too large ({before.st_size / 2**20:,.0f} MiB; the limit is {MAX_FILE_BYTES // 2**20} MiB)"
                )
            data = fh.read()
            after = os.fstat(fd)
        if before.st_size == after.st_size == len(data) and before.st_mtime_ns == after.st_mtime_ns:
            return data
    raise _Refused("the file kept changing while it was read (still being written?)")


def _prepare_chunk(paths: list[str], preprocess: Preprocess | None) -> list[Prepared]:
    return [prepare_image(p, preprocess) for p in paths]


def prepared_images(
    paths: Sequence[str],
    preprocess: Preprocess | None,
    *,
    workers: int,
    known_ids: frozenset[str],
    chunk: int = 4,
    file_timeout: float | None = None,
) -> Iterator[Prepared]:
    """:func:`prepare_image` over ``paths``, in order, in ``workers`` processes (0: this process).

    The workers start at once (before the first ``next``), so the caller can do other work
    while they decode. A worker that dies (a decoder crash) costs only the file that killed it:
    the pool is restarted and the other files are retried. So does a file that takes longer than
    ``file_timeout`` seconds (default :func:`file_timeout_from_env`) to read and decode, a file
    on a stalled network drive say: its worker is killed and the file reported.

    Close what it returns when done (``with contextlib.closing(...)``): that stops the workers,
    also when the caller stops early. Nothing to decode starts no worker.
    """
    if workers <= 0 or not paths:
        return (prepare_image(p, preprocess, known_ids=known_ids) for p in paths)
    timeout = file_timeout_from_env() if file_timeout is None else float(file_timeout)
    return _DecodePool(list(paths), preprocess, workers=workers, known_ids=known_ids, chunk=chunk, timeout=timeout)


FILE_TIMEOUT_ENV = "CLIPSEARCH_FILE_TIMEOUT"
DEFAULT_FILE_TIMEOUT = 120.0
"""Seconds one image file may take to read and decode in a worker before it is given up."""


def file_timeout_from_env() -> float:
    """``$CLIPSEARCH_FILE_TIMEOUT`` seconds, else :data:`DEFAULT_FILE_TIMEOUT`."""
    raw = os.environ.get(FILE_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_FILE_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{FILE_TIMEOUT_ENV}={raw!r} is not a positive number of seconds")
    return value


class _DecodePool:
    """Iterator over :class:`Prepared` results, decoded by a process pool with a bounded window."""

    def __init__(
        self,
        paths: list[str],
        preprocess: Preprocess | None,
        *,
        workers: int,
        known_ids: frozenset[str],
        chunk: int,
        timeout: float,
    ):
        self.preprocess = preprocess
        self.timeout = timeout
        self.workers = workers
        self.known_ids = known_ids
        self.ctx = _mp_context()
        self.chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
        self.window = max(2, 3 * workers)
        self.next_chunk = 0
        self.pending: list[tuple[list[str], Any]] = []
        self.pool = self._new_pool()
        self._fill()

    def _new_pool(self):
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(
            max_workers=self.workers, mp_context=self.ctx, initializer=_init_worker, initargs=(self.known_ids,)
        )

    def _fill(self) -> None:
        # Workers start on submit: hide __main__ while any of them may start.
        with _main_hidden():
            while self.next_chunk < len(self.chunks) and len(self.pending) < self.window:
                group = self.chunks[self.next_chunk]
                self.pending.append((group, self.pool.submit(_prepare_chunk, group, self.preprocess)))
                self.next_chunk += 1

    def __iter__(self) -> Iterator[Prepared]:
        from concurrent.futures import TimeoutError as FutureTimeout
        from concurrent.futures.process import BrokenProcessPool

        try:
            while self.pending:
                group, fut = self.pending.pop(0)
                try:  # the chunk at the head of the queue is running or next: its files' time, and one more
                    results = fut.result(timeout=self.timeout * (len(group) + 1))
                except (BrokenProcessPool, FutureTimeout):
                    results = None
                if results is not None:
                    yield from results
                    self._fill()
                    continue
                # The pool died or hangs: this chunk's files one by one, each in a fresh pool; then the rest.
                requeue = [g for g, _ in self.pending]
                self.pending = []
                _stop(self.pool)
                for p in group:
                    yield self._isolated(p)
                self.pool = self._new_pool()
                with _main_hidden():
                    for g in requeue:
                        self.pending.append((g, self.pool.submit(_prepare_chunk, g, self.preprocess)))
                self._fill()
        finally:
            self.close()

    def _isolated(self, path: str) -> Prepared:
        from concurrent.futures.process import BrokenProcessPool

        from concurrent.futures import TimeoutError as FutureTimeout

        pool = self._new_pool()
        try:
            with _main_hidden():
                fut = pool.submit(_prepare_chunk, [path], self.preprocess)
            return fut.result(timeout=self.timeout)[0]
        except BrokenProcessPool:
            return Prepared(path, error="the image decoder crashed (worker process died)")
        except FutureTimeout:
            return Prepared(
                path, error=f"took longer than {self.timeout:g} s to read and decode (a stalled drive?); see ${FILE_TIMEOUT_ENV}"
            )
        finally:
            _stop(pool)

    def close(self) -> None:
        _stop(self.pool)


def _stop(pool: Any) -> None:
    """Shut ``pool`` down without waiting, killing workers still busy (a hung decode never returns).

    ``ProcessPoolExecutor`` has no public way to kill its workers before Python 3.14
    (``kill_workers``), so its process table is read directly.
    """
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.kill()
