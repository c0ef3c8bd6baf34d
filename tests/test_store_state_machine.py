"""A store across restarts, driven by hypothesis: indexing (with and without --prune), raw texts,
removals, searches, reopening, and writers killed with SIGKILL at a random moment, checked after
every step against a plain model of what the store should hold."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from test_store import FakeEncoder, solid_image

from clipsearch.collection import open_store

TESTS = Path(__file__).resolve().parent
BOOT = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from test_store import FakeEncoder
import clipsearch.models.registry as registry
registry.load_model = lambda name, **kw: FakeEncoder()
from clipsearch.cli.main import app
app(prog_name="clipsearch")
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class StoreMachine(RuleBasedStateMachine):
    """The model: ``indexed`` maps each image path the store should hold to the SHA-256 of the
    bytes it held when last indexed; ``texts`` is the set of raw texts added."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="clipsearch-sm-"))
        self.photos = self.tmp / "photos"
        solid_image(self.photos / "anchor.png", "white", noise=8, seed=0)  # never deleted: the folder never empties
        self.root = self.tmp / "store"
        self.store = open_store(self.root, model=FakeEncoder())
        self.indexed: dict[str, str] = {}
        self.texts: set[str] = set()
        self.counter = 1
        self.clock = 0  # mtimes move forward by whole seconds, so a rewrite is always seen

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the disk ------------------------------------------------------------------------------
    def _on_disk(self) -> list[Path]:
        return sorted(p for p in self.photos.iterdir() if p.suffix == ".png")

    def _write(self, path: Path, seed: int) -> None:
        rng = np.random.default_rng(seed)
        solid_image(path, tuple(int(c) for c in rng.integers(0, 255, 3)), noise=10, seed=seed)
        self.clock += 10
        os.utime(path, (time.time(), 1_700_000_000 + self.clock))

    @rule(seed=st.integers(0, 10_000))
    def new_image(self, seed: int) -> None:
        self._write(self.photos / f"img{self.counter:03d}.png", seed)
        self.counter += 1

    @rule(which=st.integers(0, 1000), seed=st.integers(0, 10_000))
    def rewrite_image(self, which: int, seed: int) -> None:
        files = self._on_disk()
        self._write(files[which % len(files)], seed)

    @rule(which=st.integers(0, 1000))
    def copy_image(self, which: int) -> None:  # the same bytes under a second name
        files = self._on_disk()
        target = self.photos / f"img{self.counter:03d}.png"
        shutil.copy(files[which % len(files)], target)
        self.counter += 1

    @precondition(lambda self: len(self._on_disk()) > 1)
    @rule(which=st.integers(0, 1000))
    def delete_image(self, which: int) -> None:
        files = [p for p in self._on_disk() if p.name != "anchor.png"]
        files[which % len(files)].unlink()

    # -- the store -----------------------------------------------------------------------------
    def _indexed_now(self, *, prune: bool) -> None:
        on_disk = {str(p): _sha(p) for p in self._on_disk()}
        if prune:
            self.indexed = {}
        self.indexed.update(on_disk)

    @rule(prune=st.booleans())
    def index(self, prune: bool) -> None:
        summary = self.store.add([self.photos], workers=0, batch_size=3, prune=prune)
        assert summary.failed == 0, summary.failures
        self._indexed_now(prune=prune)

    @rule(text=st.sampled_from(["a red note", "a blue note", "the green one", "white noise"]))
    def add_text(self, text: str) -> None:
        self.store.add(texts=[text])
        self.texts.add(text)

    @precondition(lambda self: bool(self.indexed))
    @rule(which=st.integers(0, 1000))
    def remove_path(self, which: int) -> None:
        path = sorted(self.indexed)[which % len(self.indexed)]
        self.store.remove([path])
        del self.indexed[path]

    @rule()
    def reopen(self) -> None:
        self.store = open_store(self.root, model=FakeEncoder())  # a new process would load the same weights
        assert self.store.model_name == "fake"

    @rule(seed=st.integers(0, 2**32 - 1), prune=st.booleans())
    def killed_writer_then_rerun(self, seed: int, prune: bool) -> None:
        """``clipsearch index`` in another process, killed at a random moment; then a clean run."""
        cmd = [sys.executable, "-c", BOOT, "index", str(self.photos), "--store", str(self.root), "-b", "2", "-w", "0"]
        cmd += ["--prune"] if prune else []
        env = {k: v for k, v in os.environ.items() if k != "CLIPSEARCH_STORE"}
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        time.sleep(random.Random(seed).uniform(0.2, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        self.store = open_store(self.root, model=FakeEncoder())  # a killed writer leaves a store that opens
        self.index(prune)

    # -- what must hold after every step ---------------------------------------------------------
    @invariant()
    def holds_what_the_model_says(self) -> None:
        rows = self.store.to_arrow(["id", "modality", "path", "extra_paths", "sha256", "text", "vector"]).to_pylist()
        paths = {p: r["sha256"] for r in rows if r["modality"] == "image" for p in [r["path"], *r["extra_paths"]]}
        assert paths == self.indexed
        assert {r["text"] for r in rows if r["modality"] == "text"} == self.texts
        assert len({r["id"] for r in rows}) == len(rows)
        for r in rows:
            assert abs(float(np.linalg.norm(r["vector"])) - 1.0) < 1e-4

    @invariant()
    def finds_an_indexed_image_by_itself(self) -> None:
        if not self.indexed:
            return
        path, sha = next(iter(sorted(self.indexed.items())))
        if not os.path.exists(path) or _sha(Path(path)) != sha:
            return  # its file changed or went since it was indexed: nothing to search with
        best = self.store.search(Path(path), k=1, modality="image", rerank=0)[0]
        assert path in best.paths and best.score > 0.999


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(
    max_examples=int(os.environ.get("STATE_MACHINE_EXAMPLES", "6")),
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=True,  # the same sequences on every run of the suite: no flaky CI
)
