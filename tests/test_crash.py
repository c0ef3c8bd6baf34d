"""kill -9 during indexing, then the same command again: the store must come out exact.

The indexing runs in a real subprocess through the real CLI (``clipsearch index``), with a
fake model injected into the model registry so that each run starts in about a second instead
of importing torch. The model has a grid (``test_search.StoredGridFakeEncoder``), so every
batch writes the cells table and then the items table, and a kill can land between the two. Each kill lands while the items table is being written
(after a random number of commits, plus a random few milliseconds).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from test_search import StoredGridFakeEncoder
from test_store import solid_image

from clipsearch.collection import open_store

TESTS = Path(__file__).resolve().parent

BOOT = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from test_search import StoredGridFakeEncoder
import clipsearch.models.registry as registry
registry.load_model = lambda name, **kw: StoredGridFakeEncoder()
from clipsearch.cli.main import app
app(prog_name="clipsearch")
"""


def index_cmd(corpus: Path, store: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        BOOT,
        "index",
        str(corpus),
        "--store",
        str(store),
        "--model",
        "fake",
        "-b",
        "4",
        "-w",
        "2",
        "--json",
        *extra,
    ]


def versions(store: Path) -> int:
    folder = store / "lance" / "items.lance" / "_versions"
    return len(list(folder.glob("*.manifest"))) if folder.is_dir() else 0


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["CLIPSEARCH_ANN_THRESHOLD"] = "100"  # the end of each run also builds/updates an IVF index
    e.pop("CLIPSEARCH_STORE", None)
    return e


def run_and_kill(cmd: list[str], store: Path, rng: random.Random, *, max_commit: int) -> tuple[bool, int]:
    """Start ``cmd``, SIGKILL it after a random number of commits; (killed while running, versions)."""
    start_versions = versions(store)
    target = start_versions + rng.randint(1, max_commit)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and versions(store) < target and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.03))
        running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    return running, versions(store)


def finish(cmd: list[str]) -> dict[str, int]:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def make_corpus(root: Path, rng: np.random.Generator) -> None:
    for i in range(96):
        solid_image(
            root / f"d{i % 4}" / f"img{i:03d}.png", tuple(int(c) for c in rng.integers(0, 255, 3)), noise=20, seed=i
        )
    (root / "dups").mkdir()
    for i in range(4):  # identical bytes under a second path
        shutil.copy(root / "d0" / f"img{4 * i:03d}.png", root / "dups" / f"copy{i}.png")
    (root / "bad.jpg").write_bytes(b"\xff\xd8\xffnot really")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("\n\n".join(f"Paragraph number {i} about colour {i % 7}." for i in range(24)))
    (root / "pairs.jsonl").write_text(
        "\n".join(
            json.dumps({"image": f"d1/img{i:03d}.png", "text": f"caption {i}", "label": f"l{i % 3}"})
            for i in range(1, 40, 4)
        )
    )


def mutate(root: Path, rng: np.random.Generator) -> None:
    for i in range(0, 20, 4):  # new content under old names
        p = root / "d0" / f"img{i:03d}.png"
        solid_image(p, tuple(int(c) for c in rng.integers(0, 255, 3)), noise=20, seed=1000 + i)
        st = p.stat()
        os.utime(p, (st.st_atime, st.st_mtime + 5))
    for i in range(2, 40, 8):  # gone
        (root / "d2" / f"img{i:03d}.png").unlink(missing_ok=True)
    for i in range(6):  # new files
        solid_image(root / "new" / f"n{i}.png", tuple(int(c) for c in rng.integers(0, 255, 3)), noise=20, seed=2000 + i)
    notes = root / "notes.txt"
    notes.write_text(
        notes.read_text().replace("Paragraph number 3 ", "Edited paragraph 3 ") + "\n\nOne more paragraph."
    )
    st = notes.stat()
    os.utime(notes, (st.st_atime, st.st_mtime + 5))


def snapshot(store_dir: Path) -> dict[str, tuple]:
    """id -> (modality, sorted paths, text, caption, label, vector rounded, cells rounded) for
    the whole store; every image has its cells, and no cells are left without their image."""
    store = open_store(store_dir)
    rows = store.to_arrow().to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "an id is stored twice"
    images = [r["id"] for r in rows if r["modality"] == "image"]
    cells = store.cells(images)
    assert set(cells) == set(images) and store.count_cells() == len(images), "cells missing or left over"
    out = {}
    for r in rows:
        v = np.asarray(r["vector"], dtype=np.float32)
        assert np.all(np.isfinite(v)) and abs(float(np.linalg.norm(v)) - 1) < 1e-4, "a half-written or broken vector"
        assert r["modality"] in ("image", "text") and r["sha256"] and r["path"]
        out[r["id"]] = (
            r["modality"],
            tuple(sorted([r["path"], *r["extra_paths"]])),
            r["text"],
            r["caption"],
            r["label"],
            tuple(np.round(v, 5)),
            tuple(np.round(cells[r["id"]].reshape(-1), 3)) if r["id"] in cells else None,
        )
    return out


def reference(corpus: Path, tmp: Path, name: str) -> dict[str, tuple]:
    """The same corpus indexed in one uninterrupted, in-process run."""
    store = open_store(tmp / name, model=StoredGridFakeEncoder())
    store.add([corpus], workers=0, batch_size=4)
    return snapshot(tmp / name)


def test_kill_9_during_indexing_then_rerun_gives_an_exact_store(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("CRASH_SEED", "20240611")))
    data_rng = np.random.default_rng(7)
    corpus = tmp_path / "corpus"
    make_corpus(corpus, data_rng)
    store = tmp_path / "store"
    cmd = index_cmd(corpus, store)
    kills = []

    # first index: killed twice, then run to the end
    for _ in range(2):
        kills.append(run_and_kill(cmd, store, rng, max_commit=20))
    first = finish(cmd)
    assert first["failed"] == 2  # bad.jpg and empty.png, every run
    assert snapshot(store) == reference(corpus, tmp_path, "ref1")

    # changes (modified, deleted, new, edited text) indexed with --prune: killed twice, then finished
    mutate(corpus, data_rng)
    cmd_prune = index_cmd(corpus, store, "--prune")
    for _ in range(2):
        kills.append(run_and_kill(cmd_prune, store, rng, max_commit=3))
    finish(cmd_prune)
    assert snapshot(store) == reference(corpus, tmp_path, "ref2")

    # the kills did land mid-run, and one more run finds nothing to do
    print("kills (running, versions):", kills)
    assert sum(running for running, _ in kills) >= 3, kills
    again = finish(cmd_prune)
    assert again == {"added": 0, "updated": 0, "unchanged": again["unchanged"], "failed": 2, "removed": 0}
    # every good file is in exactly one item; the files table only lists existing files
    s = open_store(store)
    held = [
        p
        for r in s.to_arrow(["path", "extra_paths"], where="modality = 'image'").to_pylist()
        for p in [r["path"], *r["extra_paths"]]
    ]
    good = sorted(str(p) for p in corpus.rglob("*.png") if p.name != "empty.png")
    assert sorted(held) == good
    assert all(Path(p).exists() for p in s.file_records())
