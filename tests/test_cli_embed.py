"""``clipsearch embed`` and ``clipsearch similarity`` end to end, on tiny random models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from images_helpers import HOSTILE_IMAGES as HOSTILE
from PIL import Image
from typer.testing import CliRunner

from clipsearch.cli.main import app
from clipsearch.models.hub import offline_message
from clipsearch.models.registry import load_model

runner = CliRunner()


def _json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_hostile_corpus_through_embed_json(tiny_hf_clip: Path):
    files = sorted(p for p in HOSTILE.iterdir() if p.is_file())
    result = runner.invoke(app, ["embed", "--model", str(tiny_hf_clip), "--json", *map(str, files)])
    assert result.exit_code == 0, result.output
    rows = _json_lines(result.stdout)
    # every file once, in input order, each either embedded or refused with a reason
    assert [r["input"] for r in rows] == [str(p) for p in files]
    for row in rows:
        assert row["modality"] == "image"
        assert ("vector" in row) != ("error" in row), row
        if "vector" in row:
            assert abs(np.linalg.norm(row["vector"]) - 1.0) < 1e-4
        else:
            assert row["error"].strip()
    by_name = {Path(r["input"]).name: r for r in rows}
    assert "pixels" in by_name["decompression_bomb.gif"]["error"]
    assert "vector" in by_name["hopper.jpg"]
    assert "Traceback" not in result.output


def test_embed_folder_texts_and_npz_round_trip(tiny_hf_clip: Path, tmp_path: Path):
    folder = tmp_path / "pics"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 30), "red").save(folder / "a.png")
    Image.new("RGB", (30, 50), "blue").save(folder / "sub" / "b.jpg")
    (folder / "notes.txt").write_text("not an image, skipped by the folder scan")
    out = tmp_path / "vecs.npz"
    result = runner.invoke(
        app, ["embed", "--model", str(tiny_hf_clip), "-t", "a red square", "-t", "   ", str(folder), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "embedded 3 of 4 inputs" in result.stderr
    data = np.load(out)
    assert list(data["inputs"]) == ["a red square", str(folder / "a.png"), str(folder / "sub" / "b.jpg")]
    assert data["vectors"].shape == (3, load_model(str(tiny_hf_clip)).dim)
    assert data["vectors"].dtype == np.float32
    model = load_model(str(tiny_hf_clip))
    np.testing.assert_allclose(data["vectors"][0], model.encode_texts(["a red square"])[0], atol=1e-6)


def test_embed_parquet(tiny_sbert: Path, tmp_path: Path):
    import pyarrow.parquet as pq

    out = tmp_path / "t.parquet"
    result = runner.invoke(app, ["embed", "--model", str(tiny_sbert), "-t", "one", "-t", "two", "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column("input").to_pylist() == ["one", "two"]
    assert np.asarray(table.column("vector").to_pylist()).shape == (2, load_model(str(tiny_sbert)).dim)


def test_embed_exit_1_when_nothing_embedded(tiny_hf_clip: Path):
    result = runner.invoke(app, ["embed", "--model", str(tiny_hf_clip), str(HOSTILE / "broken.png")])
    assert result.exit_code == 1
    assert "embedded 0 of 1" in result.stderr


def test_offline_hub_name_is_one_sentence_exit_2(tmp_path: Path):
    name = "openai/clip-vit-base-patch32"
    proc = subprocess.run(
        [sys.executable, "-m", "clipsearch", "embed", "--model", name, "-t", "hello"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    line = " ".join(proc.stderr.split())
    assert " ".join(offline_message(name).split()) in line
    for option in ("minilm", "demo", "folder"):
        assert option in line


def test_unknown_model_name_exit_2():
    result = runner.invoke(app, ["embed", "--model", "open_clip:", "-t", "x"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_similarity_matrix_softmax_and_heatmap(tiny_hf_clip: Path, tmp_path: Path):
    red, blue = tmp_path / "red.png", tmp_path / "blue.png"
    Image.new("RGB", (32, 32), "red").save(red)
    Image.new("RGB", (32, 32), "blue").save(blue)
    heat = tmp_path / "heat.png"
    texts = ["a red square", "a blue square", "a dog"]
    args = ["similarity", "--model", str(tiny_hf_clip), "--json", "--out", str(heat)]
    for t in texts:
        args += ["--text", t]
    result = runner.invoke(app, args + ["--image", str(red), "--image", str(blue)])
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout.splitlines()[0])
    model = load_model(str(tiny_hf_clip))
    from clipsearch.images import load_image

    expected = model.encode_texts(texts) @ model.encode_images([load_image(red), load_image(blue)]).T
    np.testing.assert_allclose(table["cosine"], expected, atol=1e-5)
    probs = np.asarray(table["probs"])
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    logits = model.info.logit_scale * expected
    ref = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
    np.testing.assert_allclose(probs, ref, atol=1e-5)
    with Image.open(heat) as im:
        assert im.size[0] > 300 and im.size[1] > 200


def test_sentence_similarity_with_text_model(tiny_sbert: Path):
    result = runner.invoke(app, ["similarity", "--model", str(tiny_sbert), "-t", "a", "-t", "b", "--json"])
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)
    cos = np.asarray(table["cosine"])
    assert cos.shape == (2, 2)
    np.testing.assert_allclose(np.diag(cos), 1.0, atol=1e-5)
    assert "probs" not in table


def test_similarity_refuses_images_for_text_model(tiny_sbert: Path, tmp_path: Path):
    img = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(img)
    result = runner.invoke(app, ["similarity", "--model", str(tiny_sbert), "-t", "a", "--image", str(img)])
    assert result.exit_code == 2
    assert "embeds text only" in result.output


@pytest.mark.parametrize("bad", [[], ["--text", ""]])
def test_similarity_usage_errors(tiny_hf_clip: Path, bad: list[str]):
    result = runner.invoke(app, ["similarity", "--model", str(tiny_hf_clip), *bad])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_info_reports_what_the_model_is(tiny_hf_clip: Path):
    result = runner.invoke(app, ["info", "--model", str(tiny_hf_clip), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    model = load_model(str(tiny_hf_clip))
    assert info["dim"] == model.dim
    assert info["modalities"] == ["image", "text"]
    assert info["context_length"] == model.info.context_length
    assert info["preprocess"]["crop"] == model.info.preprocess.crop
    table = runner.invoke(app, ["info", "--model", str(tiny_hf_clip)])
    assert table.exit_code == 0 and "preprocess.interpolation" in table.stdout


def test_embed_reports_truncation(tiny_hf_clip: Path):
    long_text = " ".join(["word"] * 200)
    result = runner.invoke(app, ["embed", "--model", str(tiny_hf_clip), "-t", long_text, "-t", "short"])
    assert result.exit_code == 0, result.output
    assert "1 text(s) longer than the model's context" in " ".join(result.stderr.split())
