"""Indexing on Ray (``engine="ray"``): the same store as the local path, and a crash that costs nothing.

A local Ray with 2 CPUs, bound to 127.0.0.1, is started once for this module and stopped
after. Deselect with ``-m "not ray"``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.data")

from clipsearch.collection import open_store  # noqa: E402
from clipsearch.models.registry import load_model  # noqa: E402
from clipsearch.world.folder import generate_world  # noqa: E402

pytestmark = pytest.mark.ray

HOSTILE = Path(__file__).parent / "data" / "images" / "hostile"
SOME_HOSTILE = ["broken.png", "truncated_jpeg.jpg", "decompression_bomb.gif", "junk_jpeg_header.jpg", "hopper.jpg"]


def _odd_decoder(original):
    """``prepare_image``, but a file whose name holds ``boom`` kills the process (as a segfaulting
    decoder does) and one whose name holds ``slow`` never returns (a stalled network drive)."""

    def prepare(path, preprocess, *, known_ids=None):  # type: ignore[no-untyped-def]
        name = os.path.basename(path)
        if "boom" in name:
            os._exit(3)
        if "slow" in name:
            import time

            time.sleep(3600)
        return original(path, preprocess, known_ids=known_ids)

    return prepare


def _odd_decoders_in_ray_workers() -> None:
    """Each Ray worker's setup hook: its decode tasks meet :func:`_odd_decoder` (no other test
    here has such names)."""
    from clipsearch.ingest import ray_engine

    ray_engine.prepare_image = _odd_decoder(ray_engine.prepare_image)


@pytest.fixture(scope="module")
def local_ray():
    import ray
    import ray.cloudpickle

    # The crashing encoder below is defined here; workers cannot import this test module.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(
        num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
        runtime_env={"worker_process_setup_hook": _odd_decoders_in_ray_workers},
    )  # fmt: skip
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 demo-world images, a copy of one (same bytes, another path), a few hostile files and a note."""
    root = tmp_path_factory.mktemp("corpus")
    generate_world(root / "world", 24, seed=3, size_range=(64, 160))
    (root / "world" / "metadata.jsonl").unlink()  # images only; the note below is the text
    third = sorted((root / "world").iterdir())[3]
    shutil.copy(third, root / f"copy-of-3{third.suffix}")
    (root / "hostile").mkdir()
    for name in SOME_HOSTILE:
        shutil.copy(HOSTILE / name, root / "hostile" / name)
    (root / "note.txt").write_text("A red circle above a blue square.\n\nTwo green triangles.\n")
    return root


def store_content(store) -> dict:
    """Everything a store holds but its timestamps: rows by id (vectors apart), files, cells, sidecars."""
    table = store.to_arrow().sort_by("id")
    vectors = np.asarray(table.column("vector").to_pylist(), np.float32)
    rows = table.drop_columns(["vector", "added"]).to_pylist()
    files = sorted(store.file_records().values(), key=lambda r: r["path"])
    ids = [r["id"] for r in rows]
    cells = store.cells(ids)
    meta = {k: v for k, v in store.meta.items() if k != "created"}
    return {"rows": rows, "vectors": vectors, "files": files, "cells": cells, "meta": meta,
            "failed": store.failed_files(), "probe": store.probe()}  # fmt: skip


def assert_same_store(a: dict, b: dict) -> None:
    assert a["rows"] == b["rows"]  # the same ids, paths, metadata and seq labels
    cos = np.sum(a["vectors"] * b["vectors"], axis=1)
    assert cos.min() > 1 - 1e-5, cos.min()
    assert a["files"] == b["files"]
    assert a["failed"] == b["failed"] and a["meta"] == b["meta"] and a["probe"] == b["probe"]
    assert a["cells"].keys() == b["cells"].keys()
    for k in a["cells"]:
        np.testing.assert_allclose(a["cells"][k], b["cells"][k], atol=2e-3)  # stored as float16


def test_ray_and_local_build_the_same_store_and_read_each_others(local_ray, corpus: Path, tmp_path: Path) -> None:
    model = load_model("demo")
    local = open_store(tmp_path / "local", model=model)
    on_ray = open_store(tmp_path / "ray", model=model)
    events = []
    s_local = local.add([corpus], workers=0, batch_size=8)
    s_ray = on_ray.add([corpus], engine="ray", batch_size=8, on_progress=events.append)
    assert s_ray.to_dict() == s_local.to_dict()
    assert s_ray.failed >= 3 and all("/hostile/" in f.path for f in s_ray.failures)
    assert sorted((f.path, f.reason) for f in s_ray.failures) == sorted((f.path, f.reason) for f in s_local.failures)
    assert_same_store(store_content(local.store), store_content(on_ray.store))
    # progress: totals and advances add up, and the run says where it ran
    advanced = sum(e.n for e in events if e.kind == "advance")
    assert advanced == sum(e.n for e in events if e.kind == "total") > 0
    assert any(e.kind == "message" and e.message.startswith("Ray:") for e in events)
    # each engine re-indexes the other's store: nothing changed, nothing embedded
    again = open_store(tmp_path / "ray").add([corpus], workers=0)
    assert again.embedded == 0 and again.added == 0 and again.unchanged == s_local.added
    quiet = []
    again = open_store(tmp_path / "local").add([corpus], engine="ray", on_progress=quiet.append)
    assert again.embedded == 0 and again.added == 0 and again.unchanged == s_local.added
    assert not any(e.kind == "message" for e in quiet)  # nothing to read: Ray not even asked
    # and searches them alike
    a = [h.id for h in open_store(tmp_path / "local").search("a red circle", k=5)]
    b = [h.id for h in open_store(tmp_path / "ray").search("a red circle", k=5)]
    assert a == b


def test_changes_between_runs_are_applied_alike_by_both_engines(local_ray, corpus: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    shutil.copytree(corpus / "world", folder)
    model = load_model("demo")
    on_ray, local = open_store(tmp_path / "ray", model=model), open_store(tmp_path / "local", model=model)
    assert on_ray.add([folder], engine="ray").added == local.add([folder], workers=0).added == 24
    first, second, fifth = (sorted(folder.iterdir())[i] for i in (1, 2, 5))
    shutil.copy(first, second)  # now a second path of image 1 (image 2 loses its only path)
    fifth.unlink()
    shutil.copy(corpus / "hostile" / "hopper.jpg", folder / "new.jpg")
    got = on_ray.add([folder], engine="ray", prune=True)
    want = local.add([folder], workers=0, prune=True)
    assert got.to_dict() == want.to_dict() and got.updated == 1 and got.removed >= 1 and got.added == 1
    assert got.embedded == want.embedded == 1
    assert_same_store(store_content(local.store), store_content(on_ray.store))


class CrashOnce:
    """Loads the demo model in an embed actor, wrapped so that the process dies (``os._exit``)
    in its third forward pass, once per flag file."""

    def __init__(self, flag: str):
        self.flag = flag

    def __call__(self):
        return _Crashing(load_model("demo"), self.flag)


class _Crashing:
    def __init__(self, encoder, flag: str):
        self._encoder, self._flag, self._calls = encoder, flag, 0

    def __getattr__(self, name: str):
        return getattr(self._encoder, name)

    def encode_pixels_with_grid(self, pixels):
        self._calls += 1
        if self._calls == 3 and not os.path.exists(self._flag):
            Path(self._flag).write_text(json.dumps({"pid": os.getpid()}))
            os._exit(1)  # the worker dies mid-run, as a killed or out-of-memory worker does
        return self._encoder.encode_pixels_with_grid(pixels)


def test_a_worker_killed_mid_run_still_gives_the_exact_store(local_ray, corpus: Path, tmp_path: Path) -> None:
    folder = corpus / "world"
    flag = tmp_path / "crashed.json"
    store = open_store(tmp_path / "ray", model=load_model("demo"))
    try:
        first = store.add([folder], engine="ray", batch_size=4, load_encoder=CrashOnce(str(flag)))
    except Exception:  # noqa: BLE001 - Ray gave up on the batch: a rerun must converge
        first = store.add([folder], engine="ray", batch_size=4)
    assert flag.exists()  # the worker did die
    assert first.failed == 0
    ref = open_store(tmp_path / "local", model=load_model("demo"))
    ref.add([folder], workers=0, batch_size=4)
    assert_same_store(store_content(ref.store), store_content(store.store))
    assert store.add([folder], engine="ray").unchanged == 24


@pytest.mark.filterwarnings("ignore:lance is not fork-safe", "ignore:lancedb fork support is experimental")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")
def test_a_file_that_crashes_or_hangs_its_decoder_costs_only_itself_on_ray(
    local_ray, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import clipsearch.ingest.decode as decode
    from test_odd_files import _run_with_deadline

    world = sorted((corpus / "world").iterdir())
    folder = tmp_path / "photos"
    folder.mkdir()
    odd = {5: "boom", 11: "slow"}  # three blocks of four: the second and the last meet an odd file
    for k, src in enumerate(world[:12]):
        shutil.copy(src, folder / f"img{k:02d}{odd.get(k, '')}{src.suffix}")
    # Here, the local engine's workers and the Ray driver's re-read are forked: they inherit the patch.
    monkeypatch.setenv("CLIPSEARCH_MP_CONTEXT", "fork")
    monkeypatch.setenv("CLIPSEARCH_FILE_TIMEOUT", "1")
    monkeypatch.setattr(decode, "prepare_image", _odd_decoder(decode.prepare_image))
    model = load_model("demo")
    local, on_ray = open_store(tmp_path / "local", model=model), open_store(tmp_path / "ray", model=model)

    want = local.add([folder], workers=2, batch_size=4)
    events: list = []
    got = _run_with_deadline(lambda: on_ray.add([folder], engine="ray", batch_size=4, on_progress=events.append), 120)
    assert sorted(f.to_dict().items() for f in got.failures) == sorted(f.to_dict().items() for f in want.failures)
    assert {Path(f.path).name: f.reason for f in got.failures} == {
        f"img05boom{world[5].suffix}": "the image decoder crashed (worker process died)",
        f"img11slow{world[11].suffix}": "took longer than 1 s to read and decode (a stalled drive?); see $CLIPSEARCH_FILE_TIMEOUT",
    }
    assert got.to_dict() == want.to_dict() and got.added == 10
    # the blocks of the odd files (the second and the last; on a loaded machine, maybe also the
    # first, if a fresh worker's first file outlives the 1 s limit) were read again here, and the run said so
    told = [re.fullmatch(r"Ray: a decode task failed; reading its (\d+) files here", e.message or "") for e in events]
    assert 8 <= sum(int(m[1]) for m in told if m) <= 12
    assert_same_store(store_content(local.store), store_content(on_ray.store))


def test_bad_engine_options_are_refused_before_anything_is_read(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s", model=load_model("demo"))
    with pytest.raises(ValueError, match="engine must be one of 'local', 'ray', got 'spark'"):
        store.add([tmp_path], engine="spark")
    with pytest.raises(ValueError, match="is for engine 'ray'"):
        store.add([tmp_path], address="auto")
    assert len(store) == 0


def test_actor_plan_puts_one_actor_on_each_gpu_and_leaves_small_machines_room_to_decode() -> None:
    from clipsearch.ingest.ray_engine import actor_plan

    assert actor_plan({"CPU": 64.0, "GPU": 8.0}, None) == {"size": 8, "num_gpus": 1, "num_cpus": 1, "decode_cpus": 1}
    assert actor_plan({"CPU": 2.0}, None) == {"size": 1, "num_gpus": 0, "num_cpus": 0.5, "decode_cpus": 0.5}
    assert actor_plan({"CPU": 2.0}, 2)["num_cpus"] == 0.5  # two actors on two cores still leave one to decode
    assert actor_plan({"CPU": 32.0}, 4) == {"size": 4, "num_gpus": 0, "num_cpus": 1, "decode_cpus": 1}


def test_the_cli_refuses_an_unknown_engine_before_making_a_store(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from clipsearch.cli.main import app

    r = CliRunner().invoke(app, ["index", str(tmp_path), "--store", str(tmp_path / "s"), "--model", "demo", "--engine", "spark"])
    assert r.exit_code == 2
    assert "engine must be one of 'local', 'ray', got 'spark'" in r.output
    assert not (tmp_path / "s").exists()
