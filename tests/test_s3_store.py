"""A store on S3: index, search, reopen, the ANN sidecar, and the write lock, against a local
S3 server (moto's, on 127.0.0.1, started and stopped by the fixture)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

from clipsearch.collection import open_store  # noqa: E402
from clipsearch.errors import StoreError  # noqa: E402
from clipsearch.models.registry import load_model  # noqa: E402
from clipsearch.store import schema as sch  # noqa: E402
from clipsearch.store.s3 import S3Path, s3_write_lock  # noqa: E402
from clipsearch.world.folder import generate_world  # noqa: E402


@pytest.fixture(scope="module")
def s3_endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """A fresh bucket; credentials and endpoint in the environment, as a user sets them."""
    for var, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
    }.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    name = f"b-{request.node.name.lower().replace('_', '-')[:40]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    generate_world(folder, 16, seed=5, size_range=(64, 128))
    (folder / "metadata.jsonl").unlink()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return folder


def keys(bucket: str, prefix: str) -> set[str]:
    s3 = boto3.client("s3")
    return {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])}


def test_index_search_reopen_and_serve_a_store_on_s3(
    bucket: str, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"s3://{bucket}/stores/photos"
    col = open_store(uri, model=load_model("demo"))
    summary = col.add([photos], workers=0)
    assert summary.added == 16 and summary.failed == 1
    assert str(col.store.root) == uri and len(col.store) == 16
    objects = keys(bucket, "stores/photos/")
    assert {"stores/photos/meta.json", "stores/photos/probe.json", "stores/photos/failed.json"} <= objects
    assert any(k.startswith("stores/photos/lance/items.lance/") for k in objects)
    assert not any(".write.lock" in k for k in objects)  # released
    # the same as a local store of the same folder
    ref = open_store(tmp_path / "local", model=load_model("demo"))
    ref.add([photos], workers=0)
    hits = col.search("a red circle", k=5)
    assert [h.id for h in hits] == [h.id for h in ref.search("a red circle", k=5)]
    # reopened by name (as a server would): the same rows, incremental, failures remembered
    again = open_store(uri)
    assert again.store.model_name == "demo" and len(again.store) == 16
    assert again.store.failed_files().keys() == {str(photos / "broken.jpg")}
    rerun = again.add([photos], workers=0)
    assert (rerun.added, rerun.unchanged, rerun.embedded, rerun.failed_unread) == (0, 16, 0, 1)
    assert again.store.stats()["size_bytes"] > 0
    # served by its URI: the server keeps thumbnails and uploads in a local cache folder
    from fastapi.testclient import TestClient

    from clipsearch.server.app import create_app

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    client = TestClient(create_app(uri), base_url="http://127.0.0.1")
    served = client.get("/api/search", params={"q": "a red circle", "k": 5})
    assert served.status_code == 200 and [h["id"] for h in served.json()] == [h.id for h in hits]


def test_the_ann_index_lives_beside_the_tables_on_s3(bucket: str) -> None:
    from clipsearch.store import ModelRecord, Store

    rng = np.random.default_rng(0)
    store = Store.create(f"s3://{bucket}/vecs", ModelRecord("fake", 16, ("image",)), ann_threshold=200)
    vecs = rng.normal(size=(400, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    rows = [{"id": f"{i:016x}", "modality": "image", "path": f"/p/{i}.png", "extra_paths": []} for i in range(400)]
    with store.writing():
        store.commit_items([dict(r, seq=i) for i, r in enumerate(rows)], vecs)
        assert store.update_index() == "built"
    assert any(k.endswith(".faiss") for k in keys(bucket, "vecs/ann/"))
    reopened = Store.open(f"s3://{bucket}/vecs")
    assert reopened.index_state()["kind"] != "exact"
    nearest = reopened.nearest(vecs[7], k=1)
    assert reopened.last_plan != "exact"  # answered by the index read back from S3
    position, score = nearest[0]
    assert score == pytest.approx(1.0, abs=1e-5) and nearest.snapshot.ids[position] == rows[7]["id"]


def test_a_second_writer_is_refused_and_a_dead_writers_lock_expires(bucket: str, photos: Path) -> None:
    uri = f"s3://{bucket}/locked"
    col = open_store(uri, model=load_model("demo"))
    root = S3Path.parse(uri)
    with s3_write_lock(root, sch.LOCK_FILE) as other:  # another writer, elsewhere
        owner = other.owner
        held = json.loads(boto3.client("s3").get_object(Bucket=bucket, Key="locked/.write.lock")["Body"].read())
        assert held["owner"] == owner and held["expires"] > time.time()
        with pytest.raises(StoreError, match=f"store {uri} is being written by {owner}; try again when it finishes"):
            col.add([photos], workers=0)
    assert len(col.store) == 0
    # a writer that died holding the lock: once it expires, the next writer takes it over
    body = json.dumps({"owner": "gone:1:dead", "expires": time.time() - 1}).encode()
    boto3.client("s3").put_object(Bucket=bucket, Key="locked/.write.lock", Body=body)
    assert col.add([photos], workers=0).added == 16
    assert "locked/.write.lock" not in keys(bucket, "locked/")


def test_storage_options_in_python_override_the_environment(bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    opts = {"aws_endpoint": endpoint, "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    col = open_store(f"s3://{bucket}/opts", model=load_model("demo"), storage_options=opts)
    assert col.add(texts=["a red circle"]).added == 1
    assert len(open_store(f"s3://{bucket}/opts", storage_options=opts).store) == 1


def test_a_writer_whose_lock_was_taken_over_commits_nothing_more(
    bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clipsearch.store import ModelRecord, Store
    from clipsearch.store import s3 as s3_module

    monkeypatch.setattr(s3_module, "LOCK_HEARTBEAT", 0.1)
    store = Store.create(f"s3://{bucket}/stolen", ModelRecord("fake", 4, ("text",)))
    row = {"id": "0" * 16, "seq": 0, "modality": "text", "text": "a", "extra_paths": []}
    with store.writing():
        store.commit_items([row], np.eye(4, dtype=np.float32)[:1])
        # it stalled past its expiry, and another writer took the lock over
        body = json.dumps({"owner": "other:2:abcd", "expires": time.time() + 60}).encode()
        boto3.client("s3").put_object(Bucket=bucket, Key="stolen/.write.lock", Body=body)
        time.sleep(0.5)  # a few heartbeats: the first one finds the lock replaced
        with pytest.raises(StoreError, match=re.escape(f"lost the write lock of store s3://{bucket}/stolen")):
            store.commit_items([dict(row, id="1" * 16, seq=1)], np.eye(4, dtype=np.float32)[1:2])
    assert len(Store.open(f"s3://{bucket}/stolen")) == 1
    held = json.loads(boto3.client("s3").get_object(Bucket=bucket, Key="stolen/.write.lock")["Body"].read())
    assert held["owner"] == "other:2:abcd"  # the loser left the new owner's lock alone


def test_a_bucket_that_does_not_exist_is_one_clear_error(bucket: str) -> None:
    with pytest.raises(StoreError, match=r"^cannot reach s3://no-such-bucket-here/store.*NoSuchBucket"):
        open_store("s3://no-such-bucket-here/store", model=load_model("demo"))
    with pytest.raises(StoreError, match=re.escape("store URI 's3:///x' names no bucket; use s3://BUCKET/PREFIX")):
        open_store("s3:///x")
