"""The server under load, idle and while ``clipsearch index`` writes to the same store.

Three parts, with the demo model (real weights, offline) over demo-world images, everything on
127.0.0.1:

1. **Mixed load**: locust (headless) runs tests/load/locustfile.py (text searches, image uploads,
   "more like this") with ``--users`` users for ``--seconds``: requests/s, p50/p99 per kind,
   failures, and the server's memory at the start, middle and end.
2. **Text-search latency, idle and while indexing**: one client, one request at a time, p50/p99,
   first with the store at rest and then while another process indexes more images into it;
   their ratio is the goal's number (p99 within 10x of idle).
3. **Visibility**: how long after a commit lands (its manifest's mtime) the server's answer
   includes it, over every commit of that indexing run.

    python benchmarks/bench_load.py                # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from load.serving import free_port, rss_mb  # noqa: E402 - the tests' helpers, shared
CLI = [sys.executable, "-m", "clipsearch"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def newest_commit_time(store: Path) -> float:
    return max(p.stat().st_mtime for p in (store / "lance" / "items.lance" / "_versions").glob("*.manifest"))


def latencies(url: str, seconds: float, stop: threading.Event | None = None) -> list[float]:
    out: list[float] = []
    words = ["a red circle", "a big blue star", "green squares", "a small yellow heart", "two shapes"]
    with httpx.Client(timeout=30) as client:
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end and not (stop is not None and stop.is_set()):
            t0 = time.perf_counter()
            r = client.get(f"{url}/api/search", params={"q": words[i % len(words)], "k": 10})
            r.raise_for_status()
            out.append((time.perf_counter() - t0) * 1000)
            i += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=600, help="images in the store at the start")
    ap.add_argument("--more", type=int, default=400, help="images indexed while the server answers")
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=45)
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "CLIPSEARCH_STORE"}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        store = tmp / "store"
        log(f"building {args.images} + {args.more} demo-world images and a store ...")
        subprocess.run([*CLI, "demo-world", str(tmp / "first"), "--n", str(args.images), "--seed", "1"], check=True, env=env, capture_output=True)
        subprocess.run([*CLI, "demo-world", str(tmp / "more"), "--n", str(args.more), "--seed", "2"], check=True, env=env, capture_output=True)
        subprocess.run([*CLI, "index", str(tmp / "first"), "--store", str(store), "--model", "demo", "--no-progress"], check=True, env=env, capture_output=True)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([*CLI, "serve", "--store", str(store), "--port", str(port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            results = run_parts(args, store, tmp, url, server.pid, env)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(json.dumps(results, indent=2))


def run_parts(args, store: Path, tmp: Path, url: str, pid: int, env: dict[str, str]) -> dict:
    results: dict = {"machine": f"{os.cpu_count()} CPUs", "users": args.users, "seconds": args.seconds}
    # 1. mixed load
    log(f"locust: {args.users} users for {args.seconds} s ...")
    locust = subprocess.Popen(
        [str(Path(sys.executable).with_name("locust")), "-f", str(ROOT / "tests" / "load" / "locustfile.py"), "--headless",
         "--users", str(args.users), "--spawn-rate", str(args.users), "--run-time", f"{args.seconds}s", "--host", url,
         "--json", "--only-summary", "--stop-timeout", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    memory = []
    while locust.poll() is None:
        memory.append(rss_mb(pid))
        time.sleep(0.5)
    stats = json.loads(locust.communicate()[0])
    results["mixed"] = {
        s["name"]: {
            "requests": s["num_requests"],
            "failures": s["num_failures"],
            "rps": round(s["num_requests"] / args.seconds, 1),
            "p50_ms": _percentile(s, 0.5),
            "p99_ms": _percentile(s, 0.99),
        }
        for s in stats
    }
    third = max(1, len(memory) // 3)
    results["memory_mb"] = {"start": round(memory[0], 1), "middle_peak": round(max(memory[third : 2 * third] or memory), 1),
                            "end_peak": round(max(memory[2 * third :] or memory), 1)}  # fmt: skip
    # 2. latency idle, then while indexing
    log("text search latency, idle ...")
    idle = latencies(url, 20)
    log(f"text search latency while indexing {args.more} images ...")
    indexer = subprocess.Popen([*CLI, "index", str(tmp / "more"), "--store", str(store), "-b", "16", "--no-progress"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    stop = threading.Event()
    busy: list[float] = []
    seen: list[float] = []
    watcher = threading.Thread(target=_watch_visibility, args=(url, store, stop, seen))
    watcher.start()
    busy_thread = threading.Thread(target=lambda: busy.extend(latencies(url, 3600, stop)))
    busy_thread.start()
    indexer.wait()
    stop.set()
    busy_thread.join()
    watcher.join()
    results["text_search_ms"] = {
        "idle_p50": round(float(np.percentile(idle, 50)), 1),
        "idle_p99": round(float(np.percentile(idle, 99)), 1),
        "indexing_p50": round(float(np.percentile(busy, 50)), 1),
        "indexing_p99": round(float(np.percentile(busy, 99)), 1),
        "p99_ratio": round(float(np.percentile(busy, 99) / np.percentile(idle, 99)), 2),
        "requests_idle": len(idle),
        "requests_indexing": len(busy),
    }
    # 3. visibility
    results["visible_after_commit_s"] = {
        "commits": len(seen),
        "median": round(float(np.median(seen)), 3) if seen else None,
        "max": round(float(np.max(seen)), 3) if seen else None,
    }
    return results


def _watch_visibility(url: str, store: Path, stop: threading.Event, seen: list[float]) -> None:
    """For each new count the server reports, how long after the newest commit it showed."""
    last = None
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            count = client.get(f"{url}/api/stats").json()["count"]
            if last is not None and count != last:
                seen.append(max(0.0, time.time() - newest_commit_time(store)))
            last = count
            time.sleep(0.02)


def _percentile(stat: dict, q: float) -> float | None:
    """A percentile from locust's response-time histogram (ms, bucketed as locust rounds)."""
    hist = {int(k): v for k, v in (stat.get("response_times") or {}).items()}
    total = sum(hist.values())
    if not total:
        return None
    run = 0
    for ms in sorted(hist):
        run += hist[ms]
        if run >= q * total:
            return float(ms)
    return float(max(hist))


if __name__ == "__main__":
    main()
