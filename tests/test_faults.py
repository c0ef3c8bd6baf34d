"""Faults at the worst moments: kill -9 while the ANN index is written, while old versions are
compacted and cleaned up, and in the middle of --prune; and a disk that fills up. Each leaves a
store that opens, checks sound, and converges on the next run to what one clean run makes.

Each run is the real CLI in a subprocess (with the fake grid model of tests/test_crash.py); the
fault is injected into that process by wrapping one library function, so it lands exactly there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_crash import TESTS, make_corpus, mutate, reference, snapshot

from clipsearch.store.check import check_store

KILLS = {
    # just before ann.json names the new index files (they are written, not yet in use)
    "ann-save": """
import clipsearch.store.schema as schema
_write = schema.write_json_atomic
def write_json_atomic(path, obj):
    if path.name == "ann.json":
        os.kill(os.getpid(), signal.SIGKILL)
    return _write(path, obj)
schema.write_json_atomic = write_json_atomic
""",
    # the items table compacted, its copy not yet made
    "compaction": """
import lance
def restore(self):
    os.kill(os.getpid(), signal.SIGKILL)
lance.LanceDataset.restore = restore
""",
    # compacted and copied, older versions not yet deleted
    "cleanup": """
import lance
def cleanup_old_versions(self, *a, **kw):
    os.kill(os.getpid(), signal.SIGKILL)
lance.LanceDataset.cleanup_old_versions = cleanup_old_versions
""",
    # --prune: the items it removes committed, the files table not yet
    "prune": """
import clipsearch.ingest.run as run
from clipsearch.store import Store
_plan = run.plan_prune
def plan_prune(*a, **kw):
    Store.commit_files = lambda *a, **kw: os.kill(os.getpid(), signal.SIGKILL)
    return _plan(*a, **kw)
run.plan_prune = plan_prune
""",
}

BOOT = f"""
import os, signal, sys
sys.path.insert(0, {str(TESTS)!r})
from test_search import StoredGridFakeEncoder
import clipsearch.models.registry as registry
registry.load_model = lambda name, **kw: StoredGridFakeEncoder()
if os.environ.get("FAULT"):
    exec(os.environ["FAULT"])
from clipsearch.cli.main import app
app(prog_name="clipsearch")
"""


def assert_same(store: dict[str, tuple], ref: dict[str, tuple]) -> None:
    """The same items with the same fields; vectors and cells equal up to float error (a batch of
    other images can move the last digit)."""
    assert store.keys() == ref.keys()
    for item_id, row in store.items():
        want = ref[item_id]
        assert row[:5] == want[:5], item_id
        np.testing.assert_allclose(np.asarray(row[5], float), np.asarray(want[5], float), atol=1e-4)
        assert (row[6] is None) == (want[6] is None)
        if row[6] is not None:
            np.testing.assert_allclose(np.asarray(row[6], float), np.asarray(want[6], float), atol=2e-3)


def _run(corpus: Path, store: Path, *extra: str, fault: str = "", limit_bytes: int | None = None):
    cmd = [sys.executable, "-c", BOOT, "index", str(corpus), "--store", str(store), "--model", "fake"]
    cmd += ["-b", "4", "-w", "0", "--json", *extra]
    env = dict(os.environ, FAULT=fault, CLIPSEARCH_ANN_THRESHOLD="60")
    env.pop("CLIPSEARCH_STORE", None)

    def limit() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=180, preexec_fn=limit if limit_bytes else None
    )


@pytest.mark.parametrize("point", sorted(KILLS))
def test_kill_9_at_the_worst_moment_then_a_rerun_converges(tmp_path: Path, point: str) -> None:
    corpus = tmp_path / "corpus"
    rng = np.random.default_rng(11)
    make_corpus(corpus, rng)
    store = tmp_path / "store"
    extra = ()
    if point == "prune":  # a first clean run, then the changes, pruned
        assert _run(corpus, store).returncode == 0
        mutate(corpus, rng)
        extra = ("--prune",)
    killed = _run(corpus, store, *extra, fault=KILLS[point])
    assert killed.returncode == -9, killed.stderr  # it did die there

    assert check_store(store).ok, check_store(store).to_dict()  # opens and reads sound as it is
    done = _run(corpus, store, *extra)
    assert done.returncode == 0, done.stderr
    assert_same(snapshot(store), reference(corpus, tmp_path, "ref"))
    assert check_store(store).ok


def test_a_full_disk_is_one_line_and_keeps_what_was_committed(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    make_corpus(corpus, np.random.default_rng(5))
    store = tmp_path / "store"
    full = _run(corpus, store, limit_bytes=48_000)  # room for the first commits, not for them all
    assert full.returncode == 2, full.stderr
    lines = full.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the disk is full"), full.stderr
    assert check_store(store).ok  # every commit before the full disk is whole

    done = _run(corpus, store)
    assert done.returncode == 0, done.stderr
    assert_same(snapshot(store), reference(corpus, tmp_path, "ref"))
    assert json.loads(done.stdout)["failed"] == 2
