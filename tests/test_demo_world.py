"""The demo world: ground truth that matches the pixels, determinism, and the eval split's hold-outs."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch import world as dw


def _drawn_extent(img: Image.Image, bg_rgb: tuple[int, int, int], threshold: int) -> list[int]:
    """``[x0, y0, x1, y1]`` (x1, y1 exclusive) of pixels differing from the background by > threshold."""
    arr = np.asarray(img.convert("RGB"), dtype=np.int16)
    diff = np.abs(arr - np.asarray(bg_rgb, dtype=np.int16)).max(axis=2) > threshold
    ys, xs = np.nonzero(diff)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


CASES = [
    (shape, color, bg, size, position)
    for shape in dw.SHAPES
    for color, bg in (("black", "white"), ("yellow", "dark blue"), ("red", "light gray"))
    for size, position in (("large", "center"), ("small", "top left"))
]


@pytest.mark.parametrize(("shape", "color", "bg", "size", "position"), CASES)
def test_bbox_matches_drawn_pixels(shape: str, color: str, bg: str, size: str, position: str) -> None:
    rng = np.random.default_rng([7, dw.SHAPES.index(shape)])
    scene = dw.Scene([dw.SceneObject(shape, color, size, position)], dw.Background("plain", bg), "eval")
    img = dw.draw_scene(rng, scene, 301, 213)
    bbox = scene.objects[0].bbox
    bg_rgb = dw.BACKGROUND_COLORS[bg]
    # a pixel with a quarter of the object's coverage differs from the background by >= ~1/4 of the contrast
    extent = _drawn_extent(img, bg_rgb, threshold=30)
    assert np.abs(np.asarray(extent) - np.asarray(bbox)).max() <= 2, (extent, bbox)
    # after a JPEG round trip the extent still matches within a couple of pixels
    jpeg = Image.open(io.BytesIO(dw.encode_image(img, "jpeg")))
    extent_jpeg = _drawn_extent(jpeg, bg_rgb, threshold=45)
    assert np.abs(np.asarray(extent_jpeg) - np.asarray(bbox)).max() <= 2, (extent_jpeg, bbox)


def test_bbox_lies_in_its_grid_cell() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        img, rec = dw.render_scene(rng, "train")
        w, h = img.size
        for obj in rec["objects"]:
            row, col = divmod(dw.POSITIONS.index(obj["position"]), 3)
            x0, y0, x1, y1 = obj["bbox"]
            assert col * w / 3 - 1 <= x0 < x1 <= (col + 1) * w / 3 + 1
            assert row * h / 3 - 1 <= y0 < y1 <= (row + 1) * h / 3 + 1


def test_same_seed_same_world_byte_for_byte(tmp_path: Path) -> None:
    a = dw.generate_world(tmp_path / "a", 12, seed=5, split="eval").parent
    b = dw.generate_world(tmp_path / "b", 12, seed=5, split="eval").parent
    c = dw.generate_world(tmp_path / "c", 12, seed=6, split="eval").parent
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert len(names) == 13  # 12 images and metadata.jsonl
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "metadata.jsonl").read_bytes() != (c / "metadata.jsonl").read_bytes()


def test_generating_a_world_reports_progress_as_events(tmp_path: Path) -> None:
    """The library never draws a bar: it sends the total, one advance per image, and done."""
    events = []
    dw.generate_world(tmp_path, 4, seed=2, split="eval", on_progress=events.append)
    assert [(e.task, e.kind, e.n) for e in events] == [
        ("demo world (eval)", "total", 4), *[("demo world (eval)", "advance", 1)] * 4, ("demo world (eval)", "done", 0)
    ]


def test_world_folder_layout(tmp_path: Path) -> None:
    meta = dw.generate_world(tmp_path, 40, seed=1, split="train")
    records = [json.loads(line) for line in meta.read_text().splitlines()]
    assert len(records) == 40
    suffixes = {Path(r["file"]).suffix for r in records}
    assert suffixes == {".jpg", ".png"}
    sizes = set()
    for r in records:
        with Image.open(tmp_path / r["file"]) as im:
            assert im.size == (r["width"], r["height"])
            sizes.add(im.size)
        assert 160 <= min(im.size) and max(im.size) <= 640
        assert 1 <= len(r["objects"]) <= 3
        assert len({o["position"] for o in r["objects"]}) == len(r["objects"])  # distinct cells
        for o in r["objects"]:
            assert set(o) == {"shape", "color", "size", "position", "bbox"}
            x0, y0, x1, y1 = o["bbox"]
            assert 0 <= x0 < x1 <= r["width"] and 0 <= y0 < y1 <= r["height"]
        assert r["background"]["kind"] in dw.BACKGROUND_KINDS
        assert dw.claim_holds(r["claim"], r)
    assert len(sizes) > 30  # varied sizes and aspect ratios
    with pytest.raises(ValueError, match=re.escape(f"{meta} already exists; choose an empty folder")):
        dw.generate_world(tmp_path, 3)


def test_held_out_pairs_never_in_train_and_present_in_eval() -> None:
    rng = np.random.default_rng(0)
    train_pairs, eval_pairs = set(), set()
    for _ in range(3000):
        train_pairs |= {(o.color, o.shape) for o in dw.sample_scene(rng, "train").objects}
        eval_pairs |= {(o.color, o.shape) for o in dw.sample_scene(rng, "eval").objects}
    assert not train_pairs & dw.HELD_OUT_PAIRS
    assert dw.HELD_OUT_PAIRS <= eval_pairs
    # every colour and every shape still appears in train images
    assert {c for c, _ in train_pairs} == set(dw.COLORS)
    assert {s for _, s in train_pairs} == set(dw.SHAPES)


def test_objects_contrast_with_their_background() -> None:
    rng = np.random.default_rng(1)
    for _ in range(500):
        scene = dw.sample_scene(rng, "eval")
        for o in scene.objects:
            assert o.color != scene.background.color
            assert np.linalg.norm(np.subtract(dw.COLORS[o.color], dw.BACKGROUND_COLORS[scene.background.color])) >= 110


def test_eval_phrasings_never_in_train_captions() -> None:
    rng = np.random.default_rng(2)
    train_caps = [dw.caption_scene(rng, dw.sample_scene(rng, "train"))[0] for _ in range(3000)]
    eval_caps = [dw.caption_scene(rng, dw.sample_scene(rng, "eval")) for _ in range(1000)]
    assert not [c for c in train_caps if any(m in c.lower() for m in dw.EVAL_ONLY_MARKERS)]
    eval_phrased = [c for c, _, p in eval_caps if p == "eval"]
    assert 300 < len(eval_phrased) < 700
    assert all(any(m in c.lower() for m in dw.EVAL_ONLY_MARKERS) for c in eval_phrased)
    for q in dw.EVAL_QUERY_TEMPLATES:
        assert any(m in q for m in dw.EVAL_ONLY_MARKERS)
    assert not [q for q in dw.TRAIN_QUERY_TEMPLATES if any(m in q for m in dw.EVAL_ONLY_MARKERS)]


def test_captions_vary() -> None:
    rng = np.random.default_rng(4)
    caps = [dw.caption_scene(rng, dw.sample_scene(rng, "train")) for _ in range(2000)]
    texts = [c for c, _, _ in caps]
    assert len(set(texts)) > 1900
    joined = " ".join(texts).lower()
    for word in ("big", "large", "small", "little", "tiny", "grey", "gray", "in the middle", "striped", "shapes:"):
        assert word in joined, word
    partial = [
        claim for _, claim, _ in caps if any(set(o) != {"shape", "color", "size", "position"} for o in claim["objects"])
    ]
    assert len(partial) > 1000  # most captions leave some attribute out


def test_claims_hold_and_fail() -> None:
    record = {
        "objects": [
            {"shape": "star", "color": "red", "size": "small", "position": "top left"},
            {"shape": "circle", "color": "blue", "size": "large", "position": "center"},
        ],
        "background": {"kind": "striped", "color": "white"},
    }
    assert dw.claim_holds({"objects": [{"shape": "star"}]}, record)
    assert dw.claim_holds({"objects": [{"color": "blue", "shape": "circle"}, {"color": "red"}], "count": 2}, record)
    assert dw.claim_holds({"objects": [{"shape": "star"}], "background": {"color": "white", "kind": "striped"}}, record)
    assert not dw.claim_holds({"objects": [{"color": "red", "shape": "circle"}]}, record)
    assert not dw.claim_holds({"objects": [{"shape": "star"}], "count": 3}, record)
    assert not dw.claim_holds({"objects": [{"shape": "star"}, {"shape": "star"}]}, record)  # one star only
    assert not dw.claim_holds({"objects": [{"shape": "star"}], "background": {"kind": "dotted"}}, record)


def test_scene_sampled_from_a_claim_satisfies_it() -> None:
    rng = np.random.default_rng(5)
    for _ in range(300):
        scene = dw.sample_scene(rng, "train")
        _, claim, _ = dw.caption_scene(rng, scene)
        img, rec = dw.render_scene(rng, "train", (96, 120), claim=claim, caption=False)
        assert img.size == (96, 120)
        assert dw.claim_holds(claim, rec)
        assert not {(o["color"], o["shape"]) for o in rec["objects"]} & dw.HELD_OUT_PAIRS


def test_object_query() -> None:
    assert dw.object_query("red", "star", "eval") == "there is a red star somewhere in this picture"
    assert dw.object_query("orange", "ring", "train", 1) == "a photo of an orange ring"
    with pytest.raises(ValueError, match=re.escape("unknown shape 'blob'; use one of " + ", ".join(dw.SHAPES))):
        dw.object_query("red", "blob")
    with pytest.raises(ValueError, match=re.escape("unknown split 'test'; use one of train, eval")):
        dw.render_scene(np.random.default_rng(0), "test")


def test_demo_world_cli(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from clipsearch.cli.train import register

    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["demo-world", str(tmp_path / "w"), "--n", "5", "--seed", "3", "--split", "eval"])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "w" / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line)["split"] == "eval" for line in lines)
    bad = CliRunner().invoke(app, ["demo-world", str(tmp_path / "x"), "--split", "test"])
    assert bad.exit_code == 2
    assert "unknown split 'test'; use one of train, eval" in bad.output
