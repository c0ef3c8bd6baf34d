"""Caption by retrieval, and moderation rules calibrated against counter-descriptions."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from clipsearch.models.base import Encoder, ModelInfo, Preprocess
from clipsearch.tasks import caption, moderate
from clipsearch.tasks.moderate import DEFAULT_COUNTERS, Moderator, Rule, load_rules, parse_rules, rule_probabilities, summarize

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


class ColourEncoder(Encoder):
    """Image vector = mean RGB in [0, 1]; text vector = the sum of the colour words it names.

    Images go through the real preprocessing (the store's ingest path uses pixel values).
    """

    def __init__(self, logit_scale: float = 10.0):
        pre = Preprocess(size=16, crop=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        self.info = ModelInfo("colour", "fake", 3, ("image", "text"), 77, pre, logit_scale)
        self.roles: list[str] = []

    def _encode_pixels(self, pixels):
        rgb = pixels * 0.5 + 0.5  # undo the normalisation: (n, 3, 16, 16) in [0, 1]
        return rgb.mean(axis=(2, 3)) + 1e-3

    def _encode_text_batch(self, texts, role):
        self.roles.append(role)
        out = []
        for t in texts:
            v = np.full(3, 1e-3, dtype=np.float32)
            for i, name in enumerate(COLOURS):
                if name in t:
                    v[i] += 1
            out.append(v)
        return np.stack(out)


def solid(colour) -> Image.Image:
    return Image.new("RGB", (12, 10), colour)


# -- caption ---------------------------------------------------------------------------------------


CANDIDATES = ["a green leaf", "a red and blue flag", "a red apple", "a white cloud"]


def test_caption_ranks_candidates_by_cosine():
    enc = ColourEncoder()
    out = caption(enc, [solid(COLOURS["red"]), solid((255, 0, 255))], CANDIDATES, k=3)
    assert enc.roles == ["passage"]  # candidates embedded once, as passages
    assert [t for t, _ in out[0].captions] == ["a red apple", "a red and blue flag", "a white cloud"]
    assert out[0].captions[0][1] == pytest.approx(1.0, abs=1e-3)
    assert out[0].captions[1][1] == pytest.approx(1 / math.sqrt(2), abs=1e-3)
    assert out[1].captions[0][0] == "a red and blue flag"  # magenta = red + blue
    assert out[1].captions[0][1] == pytest.approx(1.0, abs=1e-3)
    assert len(caption(enc, [solid((0, 0, 0))], CANDIDATES, k=10)[0].captions) == 4


def test_caption_keeps_bad_images_in_place(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    out = caption(ColourEncoder(), [bad, solid(COLOURS["green"])], CANDIDATES, k=1)
    assert out[0].error and out[0].to_dict() == {"image": str(bad), "error": out[0].error}
    assert out[1].to_dict()["captions"][0]["text"] == "a green leaf"
    with pytest.raises(TypeError, match=re.escape("candidates must be a list of captions or a store, not a single string")):
        caption(ColourEncoder(), [solid((0, 0, 0))], "a red apple")


def test_caption_from_a_store(tmp_path):
    from clipsearch.collection import open_store

    enc = ColourEncoder()
    store = open_store(tmp_path / "store", model=enc)
    store.add(texts=CANDIDATES)
    solid((0, 0, 0)).save(tmp_path / "black.png")
    store.add([tmp_path / "black.png"])  # an image item must never come back as a caption
    out = caption(enc, [solid(COLOURS["green"]), solid(COLOURS["red"])], store, k=2)
    assert [t for t, _ in out[0].captions][0] == "a green leaf"
    assert out[0].captions[0][1] == pytest.approx(1.0, abs=1e-3)
    assert [t for t, _ in out[1].captions] == ["a red apple", "a red and blue flag"]


# -- moderation calibration ---------------------------------------------------------------------------


def test_rule_probability_is_a_softmax_over_description_and_counters():
    # logits 10 * (0.3, 0.2, 0.1) = (3, 2, 1): e^3 / (e^3 + e^2 + e^1) = 0.66524
    p = rule_probabilities(np.array([[0.3, 0.2, 0.1], [0.1, 0.2, 0.3]]), 10.0)
    assert p[0] == pytest.approx(math.exp(3) / (math.exp(3) + math.exp(2) + math.exp(1)), abs=1e-9)
    assert p[0] == pytest.approx(0.66524, abs=1e-5)
    assert p[1] == pytest.approx(math.exp(1) / (math.exp(3) + math.exp(2) + math.exp(1)), abs=1e-9)
    # the same cosine gap means more at a higher temperature multiplier; equal cosines are a tie
    assert rule_probabilities(np.array([[0.3, 0.2]]), 100.0)[0] == pytest.approx(1 / (1 + math.exp(-10)))
    assert rule_probabilities(np.array([[0.25, 0.25]]), 100.0)[0] == pytest.approx(0.5)


def test_moderator_scores_fire_at_threshold():
    enc = ColourEncoder(logit_scale=10.0)
    rules = [
        Rule("red", "a red picture", 0.6, ("a green picture", "a blue picture")),
        Rule("blue", "a blue picture", 0.9, ("a red picture",)),
        Rule("any-green", "green", 0.5),  # default counters
    ]
    mod = Moderator(enc, rules)
    images = [solid(COLOURS["red"]), solid((128, 0, 128)), solid(COLOURS["green"])]
    results = mod.moderate(images)
    vecs = enc.encode_images(images)
    texts = enc.encode_texts(["a red picture", "a green picture", "a blue picture"])
    cos = vecs @ texts.T
    expected_red = np.exp(10 * cos[:, 0]) / np.exp(10 * cos).sum(axis=1)
    np.testing.assert_allclose([r.scores["red"] for r in results], expected_red, atol=1e-6)
    assert results[0].fired == ["red"]
    # purple: red and blue tie, so "blue" scores 0.5 < 0.9 and "red" 1/(1 + 1 + e^(-10 * 0.707)) < 0.6
    assert results[1].fired == []
    assert results[1].scores["blue"] == pytest.approx(0.5, abs=1e-3)
    assert results[2].fired == ["any-green"]
    assert summarize(results, rules) == {"red": 1, "blue": 0, "any-green": 1}
    assert rules[2].competitors == DEFAULT_COUNTERS


def test_rules_file_round_trip(tmp_path):
    f = tmp_path / "rules.yaml"
    f.write_text(
        "rules:\n"
        "  - name: weapon\n"
        "    description: a photo of a gun\n"
        "    threshold: 0.7\n"
        "    counter: [a photo of a power drill, a photo of a hair dryer]\n"
        "  - name: red\n"
        "    description: a red image\n"
        "    counters: a green image\n"
    )
    rules = load_rules(f)
    assert rules == [
        Rule("weapon", "a photo of a gun", 0.7, ("a photo of a power drill", "a photo of a hair dryer")),
        Rule("red", "a red image", 0.5, ("a green image",)),
    ]
    # a plain list works too, and moderate() takes the path
    f2 = tmp_path / "list.yaml"
    f2.write_text("- {name: red, description: red, threshold: 0.5, counter: [green, blue]}\n")
    out = moderate(ColourEncoder(), [solid(COLOURS["red"])], f2)
    assert out[0].fired == ["red"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "rules must hold a non-empty list of rules (a 'rules:' list of name/description/threshold/counter)"),
        ([{"description": "x"}], "rules rule #1 has no name"),
        ([{"name": "a", "description": " "}], "rules rule 'a' needs a description: the text that should match images it flags"),
        ([{"name": "a", "description": "x", "threshold": 1.5}], "rules rule 'a' has threshold 1.5; use a probability in (0, 1], such as 0.6"),
        ([{"name": "a", "description": "x", "threshold": True}], "rules rule 'a' has threshold True; use a probability in (0, 1], such as 0.6"),
        ([{"name": "a", "description": "x", "counter": [1]}], "rules rule 'a' has counter [1]; use a list of non-empty descriptions"),
        ([{"name": "a", "description": "x", "weight": 2}], "rules rule #1 has unknown key 'weight'; allowed keys: name, description, threshold, counter"),
        ([{"name": "a", "description": "x"}, {"name": "a", "description": "y"}], "rules rule 'a' is defined twice; rule names must be distinct"),
        (["a"], "rules rule #1 must be a mapping with name, description, threshold and counter, not str"),
    ],
)
def test_rule_errors_are_exact(data, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_rules(data)


def test_bad_yaml_is_one_sentence(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("rules:\n  - name: [unclosed\n")
    with pytest.raises(ValueError, match=re.escape(f"rules file {str(f)!r} is not valid YAML at line 3")):
        load_rules(f)


# -- CLI ---------------------------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch):
    from clipsearch.cli import tasks as cli_tasks

    monkeypatch.setattr(cli_tasks, "load_encoder", lambda model, weights=None: ColourEncoder())
    app = typer.Typer()
    cli_tasks.register(app)
    return app


def test_cli_moderate_recurses_and_summarises(cli, tmp_path):
    (tmp_path / "imgs" / "deep").mkdir(parents=True)
    solid(COLOURS["red"]).save(tmp_path / "imgs" / "r.png")
    solid(COLOURS["blue"]).save(tmp_path / "imgs" / "deep" / "b.png")
    (tmp_path / "imgs" / "deep" / "x.jpg").write_bytes(b"broken")
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: red, description: red, threshold: 0.6, counter: [green, blue]}\n"
                     "  - {name: blue, description: blue, threshold: 0.6, counter: [green, red]}\n")
    runner = CliRunner()
    result = runner.invoke(cli, ["moderate", str(tmp_path / "imgs"), "--rules", str(rules), "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["image"].rsplit("/", 1)[-1]: row for row in map(json.loads, result.stdout.splitlines())}
    assert [f["rule"] for f in rows["r.png"]["fired"]] == ["red"]
    assert [f["rule"] for f in rows["b.png"]["fired"]] == ["blue"]
    assert "error" in rows["x.jpg"]
    assert "fired per rule: red: 1, blue: 1" in result.stderr
    table = runner.invoke(cli, ["moderate", str(tmp_path / "imgs"), "--rules", str(rules)])
    assert table.exit_code == 0 and "red" in table.stdout
    missing = runner.invoke(cli, ["moderate", str(tmp_path / "imgs"), "--rules", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_cli_caption(cli, tmp_path):
    solid(COLOURS["red"]).save(tmp_path / "r.png")
    cands = tmp_path / "c.txt"
    cands.write_text("\n".join(CANDIDATES) + "\n\na red apple\n")
    runner = CliRunner()
    result = runner.invoke(cli, ["caption", str(tmp_path / "r.png"), "--candidates", str(cands), "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert [c["text"] for c in row["captions"]] == ["a red apple", "a red and blue flag"]
    both = runner.invoke(cli, ["caption", str(tmp_path / "r.png")])
    assert both.exit_code == 2 and "give exactly one source of captions" in both.output


def test_caption_and_moderate_with_a_tiny_open_clip(tiny_open_clip):
    from clipsearch.models.registry import load_model

    enc = load_model(str(tiny_open_clip.folder))
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)) for _ in range(2)]
    out = caption(enc, images, CANDIDATES, k=4)
    cos = enc.encode_images(images) @ enc.encode_texts(CANDIDATES, role="passage").T
    for row, c in zip(out, cos):
        assert [t for t, _ in row.captions] == [CANDIDATES[j] for j in np.argsort(-c, kind="stable")]
        np.testing.assert_allclose([s for _, s in row.captions], np.sort(c)[::-1], atol=1e-5)
    rule = Rule("flag", "a photo of a flag", 0.5, ("a photo of a leaf",))
    res = moderate(enc, images, [rule])
    vt = enc.encode_texts(["a photo of a flag", "a photo of a leaf"])
    cos = enc.encode_images(images) @ vt.T
    np.testing.assert_allclose([r.scores["flag"] for r in res], rule_probabilities(cos, enc.info.logit_scale), atol=1e-5)


def test_cli_caption_from_a_store(tiny_hf_clip, tmp_path):
    """`caption --store` captions with the store's own model and its text items."""
    from clipsearch.cli.main import app
    from clipsearch.collection import open_store

    store_dir = tmp_path / "store"
    store = open_store(store_dir, model=str(tiny_hf_clip))
    store.add(texts=["a red square", "a blue square", "a dog"])
    img = tmp_path / "r.png"
    solid(COLOURS["red"]).save(img)
    result = CliRunner().invoke(app, ["caption", str(img), "--store", str(store_dir), "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout.splitlines()[0])
    assert row["image"] == str(img)
    assert len(row["captions"]) == 2
    assert {c["text"] for c in row["captions"]} <= {"a red square", "a blue square", "a dog"}
    # the table: one row per caption, each score beside its own caption however long it wraps
    table = CliRunner().invoke(app, ["caption", str(img), "--store", str(store_dir), "-k", "2"], terminal_width=60)
    assert table.exit_code == 0, table.output
    rows = [line for line in table.stdout.splitlines() if re.search(r"\d\.\d{3}", line)]
    assert len(rows) == 2 and all(any(t in line for t in ("red", "blue", "dog")) for line in rows)
    # a store without texts has nothing to caption with: said, not an empty row
    images_only = tmp_path / "images-only"
    open_store(images_only, model=str(tiny_hf_clip)).add([img], workers=0)
    empty = CliRunner().invoke(app, ["caption", str(img), "--store", str(images_only)])
    assert empty.exit_code == 2 and "holds no texts to caption with" in empty.stderr
