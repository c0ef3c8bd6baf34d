"""Text queries through a model's ONNX bundle: no torch in the process, same answers, same
identity check; image queries keep the full model.

The bundles are made here: a tiny text model (a word-embedding table, masked mean of the
words' rows) written as an ONNX graph with ``onnx.helper``, a ``tokenizers`` WordLevel
tokenizer, and ``bundle.json`` as the bundle format says. The same model in numpy
(:class:`ToyTextEncoder`) builds the stores, so the bundle and the store agree exactly.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clipsearch import open_store
from clipsearch.errors import StoreError
from clipsearch.models.base import Encoder, ModelInfo
from clipsearch.models.fingerprint import PROBE_TEXTS

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "transformers", "torchvision", "open_clip", "sentence_transformers")
TEXTS = ["a red circle", "a blue square", "a green triangle on grass", "the quarterly tax report"]
DIM = 16


def _vocab() -> list[str]:
    words = {w for t in (*TEXTS, *PROBE_TEXTS) for w in t.lower().split()}
    return ["[PAD]", "[UNK]", *sorted(words)]


def make_tokenizer(context_length: int = 8):
    """A WordLevel tokenizer that lowercases, splits on spaces and punctuation, truncates to
    ``context_length`` and pads to the longest text, as a bundle's tokenizer.json must."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    vocab = {w: i for i, w in enumerate(_vocab())}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.enable_truncation(max_length=context_length)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


class ToyTextEncoder(Encoder):
    """The masked mean of word rows of ``table`` ``(vocab, DIM)``, in numpy: what the toy
    bundle's graph computes, so a store built with it agrees with the bundle."""

    def __init__(self, name: str, table: np.ndarray):
        self.table = table
        self.tokenizer = make_tokenizer()
        self.info = ModelInfo(name, "toy", DIM, ("text",), 8, None, 100.0)

    def _encode_text_batch(self, texts, role):
        enc = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in enc])
        mask = np.array([e.attention_mask for e in enc], np.float32)[..., None]
        return (self.table[ids] * mask).sum(1) / mask.sum(1)


def text_graph(table: np.ndarray):
    """ONNX graph: ``input_ids``, ``attention_mask`` ``(batch, seq)`` int64 -> ``embeds``
    ``(batch, dim)``: the rows of ``table`` for the ids, averaged over the unmasked positions."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["rows"]),  # (b, s, d)
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),  # (b, s, 1)
        helper.make_node("Mul", ["rows", "mask3"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "axis1"], ["total"], keepdims=0),  # (b, d)
        helper.make_node("ReduceSum", ["maskf", "axis1"], ["count"], keepdims=1),  # (b, 1)
        helper.make_node("Div", ["total", "count"], ["embeds"]),
    ]
    graph = helper.make_graph(
        nodes,
        "toy_text",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("embeds", TensorProto.FLOAT, ["batch", table.shape[1]])],
        initializer=[
            numpy_helper.from_array(table.astype(np.float32), "table"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)  # what any ORT reads


def install_bundle(model: str, weights_file: Path, table: np.ndarray, *, probe_table: np.ndarray | None = None) -> Path:
    """Write a bundle of the toy text model ``table`` where :func:`bundle_dir` finds it for
    ``model`` (whose weights are ``weights_file``); its ``probe_text`` comes from ``probe_table``
    (default ``table``: an honest bundle)."""
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")

    from clipsearch.models.onnx_runtime import cache_root, write_model_record

    key = write_model_record(model, None, {"weights": weights_file})
    folder = cache_root() / key
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(text_graph(table), str(folder / "text.onnx"))
    make_tokenizer().save(str(folder / "tokenizer.json"))
    probe = ToyTextEncoder(model, table if probe_table is None else probe_table).encode_texts(list(PROBE_TEXTS))
    bundle = {
        "format": 1,
        "model": model,
        "key": key,
        "dim": int(table.shape[1]),
        "text": {
            "onnx": "text.onnx",
            "onnx_int8": None,
            "tokenizer": "tokenizer.json",
            "context_length": 8,
            "inputs": ["input_ids", "attention_mask"],
            "output": "embeds",
        },
        "image": None,
        "probe_text": probe.tolist(),
        "guard": {"image": None, "text": None},
    }
    (folder / "bundle.json").write_text(json.dumps(bundle), encoding="utf-8")
    return folder


@pytest.fixture(autouse=True)
def _backend_auto(monkeypatch: pytest.MonkeyPatch):
    """These tests are about the ONNX text path, which the suite's default (torch) turns off;
    models loaded from one test's bundle cache must not serve the next test."""
    from clipsearch.models.registry import clear_cache

    monkeypatch.setenv("CLIPSEARCH_BACKEND", "auto")
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def onnx_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "onnx-cache"
    monkeypatch.setenv("CLIPSEARCH_ONNX_CACHE", str(cache))
    return cache


@pytest.fixture
def toy_store(tmp_path: Path, onnx_cache: Path):
    """A store of TEXTS made with the toy model (named by its folder), and the model's table."""
    model_dir = tmp_path / "toy-model"
    model_dir.mkdir()
    table = np.random.default_rng(0).normal(size=(len(_vocab()), DIM)).astype(np.float32)
    np.save(model_dir / "table.npy", table)
    name = str(model_dir)
    col = open_store(tmp_path / "store", model=ToyTextEncoder(name, table))
    col.add(texts=TEXTS)
    return tmp_path / "store", name, model_dir / "table.npy", table


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter over this tree; it prints what it found on stdout."""
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120)


_HEAVY_LOADED = f"sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})"

CLI_SEARCH = f"""
import json, sys
sys.argv = ["clipsearch", "search", *sys.argv[1:]]
from clipsearch.cli.main import app
try:
    app()
except SystemExit as exc:
    code = exc.code
print(json.dumps({{"code": code, "heavy": {_HEAVY_LOADED}}}), file=sys.stderr)
"""


def test_cli_text_search_runs_the_bundle_without_torch(toy_store):
    root, name, weights, table = toy_store
    install_bundle(name, weights, table)
    done = _run(CLI_SEARCH, "a", "blue", "square", "--store", str(root), "-k", "2", "--json")
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report == {"code": 0, "heavy": []}, done.stderr
    hits = json.loads(done.stdout)
    assert [h["text"] for h in hits] == ["a blue square", "a red circle"]
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    # the scores are the toy model's own (what the store was built with)
    enc = ToyTextEncoder(name, table)
    q, second = enc.encode_texts(["a blue square", "a red circle"])
    assert hits[1]["score"] == pytest.approx(float(q @ second), abs=1e-5)


LIBRARY_SEARCH = f"""
import json, sys
import clipsearch
from clipsearch.models.onnx_runtime import OnnxTextEncoder
col = clipsearch.open_store(sys.argv[1], create=False)
hits = col.search("a green triangle", k=1)
print(json.dumps({{"hits": [h.text for h in hits], "onnx": isinstance(col.text_encoder, OnnxTextEncoder),
                  "heavy": {_HEAVY_LOADED}}}))
"""


def test_library_text_search_runs_the_bundle_without_torch(toy_store):
    root, name, weights, table = toy_store
    install_bundle(name, weights, table)
    done = _run(LIBRARY_SEARCH, str(root))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"hits": ["a green triangle on grass"], "onnx": True, "heavy": []}


def test_a_bundle_of_other_weights_is_refused_like_the_model_itself(toy_store):
    root, name, weights, table = toy_store
    other = np.random.default_rng(1).normal(size=table.shape).astype(np.float32)
    install_bundle(name, weights, table, probe_table=other)
    with pytest.raises(StoreError) as by_bundle:
        open_store(root, create=False).search("a red circle")
    from clipsearch.collection import Collection

    col = Collection(open_store(root, create=False).store, ToyTextEncoder(name, other))  # the model with those weights
    with pytest.raises(StoreError) as by_model:
        col.search("a red circle")
    assert str(by_bundle.value) == str(by_model.value)
    assert re.fullmatch(
        re.escape(f"model {name!r} is not the one store {root} was built with: its weights or preprocessing changed (cosine ")
        + r"-?\d\.\d{3}"
        + re.escape(f" on reference inputs); re-embed every item with: clipsearch reindex --store {root}"),
        str(by_bundle.value),
    )


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo-model store of a red and a blue picture."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("query-demo")
    (folder / "pics").mkdir()
    Image.new("RGB", (64, 64), (220, 30, 30)).save(folder / "pics" / "red.png")
    Image.new("RGB", (64, 64), (30, 40, 220)).save(folder / "pics" / "blue.png")
    open_store(folder / "store", model="demo").add([folder / "pics"], workers=0)
    return folder


def test_an_image_query_on_torch_loads_the_full_model_and_ignores_the_bundle(demo_store, onnx_cache):
    from clipsearch.models.demo import DEMO_WEIGHTS_DIR

    # a bundle for the demo model's weights that disagrees with the store: text queries are
    # refused, an image query never reads it
    table = np.random.default_rng(2).normal(size=(len(_vocab()), 256)).astype(np.float32)
    install_bundle("demo", DEMO_WEIGHTS_DIR / "model.safetensors", table)
    col = open_store(demo_store / "store", create=False)
    with pytest.raises(StoreError, match="is not the one store"):
        col.search("a red square")
    col = open_store(demo_store / "store", create=False, backend="torch")
    hits = col.search(demo_store / "pics" / "red.png", k=2)
    assert [Path(h.path).name for h in hits] == ["red.png", "blue.png"] and hits[0].score > 0.99
    assert col._model.loaded and col.encoder.supports("image")


def test_without_a_bundle_the_model_answers_and_is_exported_for_next_time(demo_store, onnx_cache):
    pytest.importorskip("onnxruntime")  # an export needs both
    pytest.importorskip("onnx")
    from clipsearch.models.onnx_runtime import OnnxTextEncoder, bundle_dir
    from clipsearch.models.registry import clear_cache

    assert bundle_dir("demo") is None
    col = open_store(demo_store / "store", create=False)
    hits = col.search("a red square", k=2)
    assert {Path(h.path).name for h in hits} == {"red.png", "blue.png"}
    assert col._model.loaded  # no bundle: the model answered, and its first load exported it
    assert bundle_dir("demo") is not None

    clear_cache()
    again = open_store(demo_store / "store", create=False)
    assert [h.id for h in again.search("a red square", k=2)] == [h.id for h in hits]
    assert isinstance(again.text_encoder, OnnxTextEncoder) and not again._model.loaded


def test_without_a_bundle_a_clip_text_query_loads_the_text_tower_alone(tiny_hf_clip, tmp_path, onnx_cache, monkeypatch):
    from PIL import Image

    from clipsearch.models.hf_clip import HFClipTextEncoder

    monkeypatch.setenv("CLIPSEARCH_BACKEND", "torch")  # no bundle used or exported: the torch path
    (tmp_path / "pics").mkdir()
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 40, 220)), ("grey", (128, 128, 128))):
        Image.new("RGB", (40, 40), colour).save(tmp_path / "pics" / f"{name}.png")
    full = open_store(tmp_path / "store", model=str(tiny_hf_clip))
    full.add([tmp_path / "pics"], workers=0)
    expected = [(h.id, h.score) for h in full.search("a red picture", k=3)]

    col = open_store(tmp_path / "store", create=False)
    got = [(h.id, h.score) for h in col.search("a red picture", k=3)]
    assert isinstance(col.text_encoder, HFClipTextEncoder) and not col._model.loaded
    assert [i for i, _ in got] == [i for i, _ in expected]
    assert [s for _, s in got] == pytest.approx([s for _, s in expected], abs=1e-5)
    hits = col.search(tmp_path / "pics" / "blue.png", k=1)  # an image query: now the whole model
    assert Path(hits[0].path).name == "blue.png" and col._model.loaded


def test_the_server_embeds_text_queries_with_the_bundle(toy_store):
    from fastapi.testclient import TestClient

    from clipsearch.models.onnx_runtime import OnnxTextEncoder
    from clipsearch.server import create_app

    root, name, weights, table = toy_store
    install_bundle(name, weights, table)
    col = open_store(root, create=False)
    client = TestClient(create_app(col, thumbnail_dir=root.parent / "thumbs"), base_url="http://127.0.0.1")
    answer = client.get("/api/search", params={"q": "a red circle", "k": 1})
    assert answer.status_code == 200, answer.text
    assert [h["text"] for h in answer.json()] == ["a red circle"]
    assert isinstance(col.text_encoder, OnnxTextEncoder) and not col._model.loaded
