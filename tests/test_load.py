"""The server under a mixed load: locust, headless and bounded (users, time), against a server
on 127.0.0.1 that the test starts and stops. Text searches, image uploads and "more like this"
at once must give no error, and the server's memory must stop growing. Timings are measured by
benchmarks/bench_load.py, not here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from load.serving import free_port, rss_mb
from test_store import FakeEncoder, solid_image

from clipsearch.collection import open_store

TESTS = Path(__file__).resolve().parent
LOCUST = Path(sys.executable).with_name("locust")
SERVE = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from test_store import FakeEncoder
import clipsearch.models.registry as registry
registry.load_model = lambda name, **kw: FakeEncoder()
from clipsearch.cli.main import app
app(prog_name="clipsearch")
"""


def start_server(store: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "CLIPSEARCH_STORE"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, "serve", "--store", str(store), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server stopped: {proc.stderr.read().decode()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("the server did not come up in 60 s")


@pytest.fixture
def served(tmp_path: Path):
    photos = tmp_path / "photos"
    for i in range(40):
        solid_image(photos / f"img{i:02d}.png", (6 * i, 255 - 6 * i, 90), noise=12, seed=i)
    store = open_store(tmp_path / "store", model=FakeEncoder())
    store.add([photos], texts=["a red note", "a blue note"], workers=0)
    port = free_port()
    proc = start_server(tmp_path / "store", port)
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_mixed_load_gives_no_error_and_memory_stops_growing(served, tmp_path: Path) -> None:
    proc, url = served
    seconds = int(os.environ.get("LOAD_SECONDS", "18"))
    locust = subprocess.Popen(
        [str(LOCUST), "-f", str(TESTS / "load" / "locustfile.py"), "--headless", "--users", "6", "--spawn-rate", "6",
         "--run-time", f"{seconds}s", "--host", url, "--json", "--only-summary", "--stop-timeout", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    memory: list[float] = []
    while locust.poll() is None:
        memory.append(rss_mb(proc.pid))
        time.sleep(0.5)
    out, err = locust.communicate(timeout=60)
    stats = json.loads(out)
    requests = {s["name"]: s["num_requests"] for s in stats}
    failures = {s["name"]: s["num_failures"] for s in stats if s["num_failures"]}
    assert not failures, (failures, err[-2000:])
    assert set(requests) >= {"/api/search?q", "/api/search (upload)", "/api/items/[id]/similar"}
    assert sum(requests.values()) >= 100, requests
    third = len(memory) // 3
    middle, last = max(memory[third : 2 * third]), max(memory[2 * third :])
    assert last <= middle * 1.05 + 16, f"server memory still growing: {memory}"
    assert proc.poll() is None  # still serving


def test_port_0_serves_on_a_free_port_and_says_which(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    solid_image(photos / "a.png", "red", noise=8, seed=1)
    open_store(tmp_path / "store", model=FakeEncoder()).add([photos], workers=0)
    env = {k: v for k, v in os.environ.items() if k != "CLIPSEARCH_STORE"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, "serve", "--store", str(tmp_path / "store"), "--port", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        line = ""
        deadline = time.monotonic() + 60
        while "serving" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stderr.readline()
        url = line.split(" at ")[1].split("/ ")[0].strip().rstrip("/")
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0"), line
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
