"""The ONNX Runtime backend: fp32 parity with torch per backend, tokenizer ids, the int8 guard
(refusing a model made to drift, accepting a normal one), its record in the store, the CLI end
to end, and bundle keys that follow the weights.

Bundles go to the session's temporary ONNX cache (tests/conftest.py sets $CLIPSEARCH_ONNX_CACHE).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsearch.models import registry
from clipsearch.models.onnx_export import TEXT_CALIBRATION, check_tokenizer, export_bundle, tokenizer_check_texts
from clipsearch.models.onnx_runtime import INT8_MIN_COSINE, OnnxEncoder, OnnxGridEncoder, bundle_dir, load_tokenizer, open_bundle

PARITY = 0.9999
TEXTS = ["a photo of a dog", "x", "two dogs running across a frosty field at dawn " * 12, "A Small RED circle!"]


def images(n: int = 6, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        base = rng.integers(0, 255, (1, 1, 3)) + np.linspace(0, 120, w)[None, :, None]
        px = np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
        out.append(Image.fromarray(px, "RGB"))
    return out


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def assert_same(want: np.ndarray, got: np.ndarray) -> None:
    """ONNX rows ``got`` equal torch's ``want``: cosine >= 0.9999 each, and (since random tiny
    models send every input near one direction, where cosines say little) the largest
    difference is under 1% of how far the inputs' vectors spread."""
    assert min_cosine(want, got) >= PARITY
    flat_w, flat_g = want.reshape(-1, want.shape[-1]), got.reshape(-1, got.shape[-1])
    spread = np.abs(flat_w - flat_w.mean(0)).max()
    assert np.abs(flat_w - flat_g).max() < 0.01 * spread


@pytest.fixture(scope="module")
def hf_pair(tiny_hf_clip):
    enc = registry.load_model(str(tiny_hf_clip))
    return enc, OnnxEncoder(export_bundle(enc), int8=False)


@pytest.fixture(scope="module")
def open_clip_pair(tiny_open_clip):
    enc = registry.load_model(str(tiny_open_clip.folder))
    return enc, OnnxEncoder(export_bundle(enc), int8=False)


@pytest.fixture(scope="module")
def demo_pair():
    enc = registry.load_model("demo")
    folder = export_bundle(enc)
    return enc, open_bundle(folder, int8=False)


@pytest.mark.parametrize("pair", ["hf_pair", "open_clip_pair", "demo_pair"])
def test_fp32_matches_torch_on_both_towers(pair, request):
    torch_enc, onnx_enc = request.getfixturevalue(pair)
    assert onnx_enc.dim == torch_enc.dim and onnx_enc.info.preprocess == torch_enc.info.preprocess
    assert_same(torch_enc.encode_texts(TEXTS), onnx_enc.encode_texts(TEXTS))
    ims = images()
    pixels = torch_enc.preprocess_images(ims)  # what the ingest decode stage makes
    assert np.array_equal(pixels, onnx_enc.preprocess_images(ims))
    assert_same(torch_enc.encode_pixel_values(pixels), onnx_enc.encode_pixel_values(pixels))


def test_demo_grid_cells_match_torch(demo_pair):
    torch_enc, onnx_enc = demo_pair
    assert isinstance(onnx_enc, OnnxGridEncoder)
    pixels = torch_enc.preprocess_images(images(4, seed=1))
    v_t, c_t = torch_enc.encode_pixels_with_grid(pixels)
    v_o, c_o = onnx_enc.encode_pixels_with_grid(pixels)
    assert c_o.shape == c_t.shape == (4, *torch_enc.grid_shape, torch_enc.dim)
    assert_same(v_t, v_o)
    assert_same(c_t, c_o)


@pytest.mark.parametrize("pair", ["hf_pair", "open_clip_pair", "demo_pair"])
def test_tokenizer_file_gives_the_torch_ids(pair, request):
    torch_enc, onnx_enc = request.getfixturevalue(pair)
    tok = load_tokenizer(onnx_enc.folder / "tokenizer.json")
    texts = tokenizer_check_texts()
    assert len(texts) >= 300
    assert check_tokenizer(torch_enc, tok, texts) == []
    ctx = torch_enc.info.context_length
    long = tok.encode_batch(["word " * 500, "short"])
    assert len(long[0].ids) == len(long[1].ids) == ctx  # cut to the context, the batch padded to it
    assert long[1].attention_mask.count(1) < ctx
    if torch_enc.info.backend != "dual":  # CLIP pools at the end-of-text token: it must stay last
        assert long[0].ids[-1] == max(long[0].ids)
    assert onnx_enc.count_truncated(["word " * 500, "short"]) == torch_enc.count_truncated(["word " * 500, "short"]) == 1


def drifting_clip(folder: Path, seed: int = 3) -> Path:
    """A tiny CLIP whose vision MLPs hold one huge weight each, in a unit fc2 ignores: fp32 is
    unaffected, but int8's per-tensor scale then rounds every other weight and activation of
    those layers to zero."""
    import torch
    from tiny_models import make_tiny_hf_clip
    from transformers import CLIPModel

    make_tiny_hf_clip(folder, seed=seed)
    model = CLIPModel.from_pretrained(folder)
    with torch.no_grad():
        for layer in model.vision_model.encoder.layers:
            layer.mlp.fc1.weight[0, 0] = 1e4
            layer.mlp.fc2.weight[:, 0] = 0
    model.save_pretrained(folder)
    return folder


def test_int8_guard_refuses_a_drifting_model_and_accepts_a_normal_one(tmp_path, hf_pair):
    torch_enc, _ = hf_pair
    pixels = torch_enc.preprocess_images(images(16, seed=2))
    drift = registry.load_model(str(drifting_clip(tmp_path / "drift")))
    bad = OnnxEncoder(export_bundle(drift, calibration=pixels, calibration_source="test images"))
    g = bad.bundle["guard"]["image"]
    assert g["int8_ok"] is False and g["min_cosine"] < INT8_MIN_COSINE and g["sample"] == 16
    assert bad.precision()["image"] == "fp32"
    # the int8 graph really drifts, and what the encoder gives is the fp32 one
    int8 = OnnxEncoder(bad.folder, int8=True).encode_pixel_values(pixels)
    assert min_cosine(int8, drift.encode_pixel_values(pixels)) < INT8_MIN_COSINE
    assert min_cosine(bad.encode_pixel_values(pixels), drift.encode_pixel_values(pixels)) >= PARITY

    good = OnnxEncoder(export_bundle(torch_enc, calibration=pixels, calibration_source="test images"))
    g = good.bundle["guard"]["image"]
    assert g["int8_ok"] is True and g["min_cosine"] >= INT8_MIN_COSINE
    assert good.precision()["image"] == "int8"
    assert min_cosine(good.encode_pixel_values(pixels), torch_enc.encode_pixel_values(pixels)) >= INT8_MIN_COSINE


def test_changed_weights_give_a_new_bundle(tmp_path):
    from tiny_models import make_tiny_hf_clip

    folder = make_tiny_hf_clip(tmp_path / "m", seed=5)
    name = str(folder.resolve())
    assert bundle_dir(name) is None
    first = export_bundle(registry.load_model(name))
    assert bundle_dir(name) == first
    make_tiny_hf_clip(folder, seed=6)  # retrained in place: same name, other weights
    registry.clear_cache()
    assert bundle_dir(name) is None
    second = export_bundle(registry.load_model(name))
    assert second != first and bundle_dir(name) == second and first.is_dir()


def test_auto_backend_uses_onnx_where_it_can_and_torch_elsewhere(tiny_hf_clip, tiny_sbert, tmp_path):
    from clipsearch.models.onnx_runtime import OnnxTextEncoder

    registry.clear_cache()
    assert isinstance(registry.load_model(str(tiny_hf_clip), backend="auto"), OnnxEncoder)
    # a plain sentence-transformers pipeline exports its text tower
    sbert = registry.load_model(str(tiny_sbert), backend="auto")
    assert type(sbert) is OnnxTextEncoder and sbert.info.modalities == ("text",) and sbert.bundle["image"] is None
    assert_same(registry.load_model(str(tiny_sbert)).encode_texts(TEXTS), OnnxTextEncoder(sbert.folder, int8=False).encode_texts(TEXTS))
    # one with query/passage prompts does not (one graph cannot hold both): auto keeps torch, onnx refuses
    prompted = tmp_path / "prompted"
    shutil.copytree(tiny_sbert, prompted)
    cfg_file = prompted / "config_sentence_transformers.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    cfg_file.write_text(json.dumps(cfg | {"prompts": {"query": "query: ", "document": "passage: "}}))
    assert not hasattr(registry.load_model(str(prompted), backend="auto"), "bundle")
    with pytest.raises(registry.ModelNotAvailable, match="has no ONNX export"):
        registry.load_model(str(prompted), backend="onnx")
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        registry.load_model("demo", backend="tpu")


def write_folder(folder: Path, n: int = 10) -> Path:
    folder.mkdir(parents=True)
    for i, im in enumerate(images(n, seed=7)):
        im.save(folder / f"{i:02d}.png")
    return folder


def index_cli(*args: str) -> dict:
    from clipsearch.cli.main import app

    result = CliRunner().invoke(app, ["index", *args, "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_cli_onnx_store_matches_a_torch_store_and_reports_its_guard(tmp_path, demo_pair, caplog):
    from clipsearch.cli.main import app
    from clipsearch.store import Store
    from clipsearch.store.schema import image_id

    folder = write_folder(tmp_path / "pics")
    runner = CliRunner()
    index_cli(str(folder), "--store", str(tmp_path / "t"), "--model", "demo", "--backend", "torch")
    with caplog.at_level(logging.INFO, logger="clipsearch"):
        index_cli(str(folder), "--store", str(tmp_path / "o"), "--model", "demo", "--backend", "onnx")
    ids = [image_id(hashlib.sha256(p.read_bytes()).hexdigest()) for p in sorted(folder.iterdir())]
    t, o = Store.open(tmp_path / "t"), Store.open(tmp_path / "o")
    assert len(t) == len(o) == len(ids) == 10
    assert min_cosine(t.vectors(ids), o.vectors(ids)) >= PARITY

    stats = json.loads(runner.invoke(app, ["stats", "--store", str(tmp_path / "o"), "--json"]).stdout)
    # The demo's image tower is convolutional: dynamic int8 (matrix products only) has nothing
    # to quantise there, so it runs fp32 with no guard to run; its text tower's guard is shown.
    assert demo_pair[1].bundle["image"]["onnx_int8"] is None
    assert stats["onnx"]["guard"]["image"] is None and stats["onnx"]["precision"]["image"] == "fp32"
    assert stats["onnx"]["guard"]["text"]["source"] == "text sample"
    assert stats["onnx"]["bundle"] == demo_pair[1].bundle["key"]
    assert json.loads(runner.invoke(app, ["stats", "--store", str(tmp_path / "t"), "--json"]).stdout)["onnx"] is None
    shown = " ".join(runner.invoke(app, ["stats", "--store", str(tmp_path / "o")]).stdout.split())  # unwrapped
    assert "image fp32 (no int8 graph to check)" in shown and "36 text sample inputs" in shown

    hits = {}
    for store, backend in (("t", "torch"), ("o", "onnx")):
        r = runner.invoke(app, ["search", "a red circle", "--store", str(tmp_path / store), "--backend", backend, "-k", "5", "--json"])
        assert r.exit_code == 0, r.output
        hits[store] = [(h["id"], h["score"]) for h in json.loads(r.stdout)]
    assert [i for i, _ in hits["t"]] == [i for i, _ in hits["o"]]
    assert np.allclose([s for _, s in hits["t"]], [s for _, s in hits["o"]], atol=1e-3)


def test_first_batch_guard_is_stored_and_a_failed_one_says_why(tmp_path, caplog):
    from clipsearch.cli.main import app

    model = drifting_clip(tmp_path / "drift", seed=4)  # weights of its own: exported here, not reused
    folder = write_folder(tmp_path / "pics", n=6)
    registry.clear_cache()
    with caplog.at_level(logging.INFO, logger="clipsearch"):
        index_cli(str(folder), "--store", str(tmp_path / "s"), "--model", str(model), "--backend", "onnx")
    assert any("exporting model" in r.getMessage() for r in caplog.records)  # the first use is announced
    why = [r.getMessage() for r in caplog.records if "vectors drift" in r.getMessage()]
    assert len(why) == 1 and "indexing with fp32" in why[0]
    stats = json.loads(CliRunner().invoke(app, ["stats", "--store", str(tmp_path / "s"), "--json"]).stdout)
    g = stats["onnx"]["guard"]["image"]
    assert g["source"] == "first batch" and g["sample"] == 6 and g["int8_ok"] is False
    assert stats["onnx"]["precision"]["image"] == "fp32"
    info = CliRunner().invoke(app, ["info", "--model", str(model), "--backend", "onnx", "--json"])
    described = json.loads(info.stdout)
    assert described["runtime"] == "onnx" and described["onnx"]["guard"]["image"]["int8_ok"] is False
    assert described["name"] == str(model.resolve())


def test_text_guard_runs_at_export(hf_pair):
    _, onnx_enc = hf_pair
    g = onnx_enc.bundle["guard"]["text"]
    assert g["sample"] == len(TEXT_CALIBRATION) + 4 and g["source"] == "text sample"
    assert g["int8_ok"] == (g["min_cosine"] >= INT8_MIN_COSINE)
    assert np.asarray(onnx_enc.bundle["probe_text"]).shape == (4, onnx_enc.dim)


def test_two_exports_of_one_model_share_one_bundle(tmp_path, tiny_hf_clip):
    from concurrent.futures import ThreadPoolExecutor

    copy = tmp_path / "copy"
    shutil.copytree(tiny_hf_clip, copy)
    enc = registry.load_model(str(copy))
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: export_bundle(enc), range(2))
    assert a == b and (a / "bundle.json").is_file()
    assert not [p for p in a.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
