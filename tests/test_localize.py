"""Relevance maps from sliding windows: geometry, collation, and a target in a known corner."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from clipsearch.models.base import Encoder, ModelInfo, Preprocess
from clipsearch.tasks import localize
from clipsearch.tasks.localize import (
    choose_method,
    collate,
    evaluate_localization,
    normalize_scores,
    peak_and_box,
    window_boxes,
    window_settings,
)
from clipsearch.tasks.metrics import box_iou, inside


class RednessEncoder(Encoder):
    """Image vector (redness, 1 - redness), redness = share of strongly red pixels.

    Text mentioning "red" embeds as (1, 0), anything else as (0, 1); so a window's cosine with
    "red square" grows with the share of red pixels in it.
    """

    def __init__(self):
        self.info = ModelInfo("redness", "fake", 2, ("image", "text"), 77, Preprocess(size=32, crop=32), 10.0)
        self.windows_seen = 0

    def _encode_image_batch(self, images):
        self.windows_seen += len(images)
        rows = []
        for im in images:
            a = np.asarray(im.convert("RGB"), dtype=np.int16)
            red = ((a[..., 0] > 150) & (a[..., 1] < 100) & (a[..., 2] < 100)).mean()
            rows.append([red + 1e-3, 1 - red + 1e-3])
        return np.array(rows, dtype=np.float32)

    def _encode_text_batch(self, texts, role):
        return np.array([[1.0, 0.0] if "red" in t else [0.0, 1.0] for t in texts], dtype=np.float32)


def scene(width=120, height=90, box=(6, 8, 36, 38), colour=(220, 20, 20)) -> Image.Image:
    """A grey-white image with a red square at ``box``."""
    im = Image.new("RGB", (width, height), (235, 235, 230))
    im.paste(colour, box)
    return im


def test_windows_tile_the_image_to_its_edges():
    boxes, which = window_boxes(100, 60, scales=(0.5, 1.0), stride=0.5, overhang=0)
    # scale 0.5: side 30, at most 15 apart from x 0 to 70 (6 evenly spaced) and y 0 to 30
    small = [b for b, w in zip(boxes, which) if w == 0]
    assert sorted({b[0] for b in small}) == [0, 14, 28, 42, 56, 70]
    assert sorted({b[1] for b in small}) == [0, 15, 30]
    assert all(b[2] - b[0] == 30 and b[3] - b[1] == 30 for b in small)
    big = [b for b, w in zip(boxes, which) if w == 1]
    assert big == [(0, 0, 60, 60), (20, 0, 80, 60), (40, 0, 100, 60)]


def test_windows_overhang_the_edges():
    boxes, _ = window_boxes(100, 60, scales=(0.5,), stride=0.5, overhang=0.5)
    # side 30, pad 15: starts from -15 to 85 in x, -15 to 45 in y, so every pixel can be a window centre
    assert min(b[0] for b in boxes) == -15 and max(b[2] for b in boxes) == 115
    assert min(b[1] for b in boxes) == -15 and max(b[3] for b in boxes) == 75
    centres = sorted({(b[0] + b[2]) / 2 for b in boxes})
    assert centres[0] == 0 and centres[-1] == 100
    assert max(np.diff(centres)) <= 15


def test_window_errors_are_exact():
    with pytest.raises(ValueError, match=re.escape("window scale 1.5 must be in (0, 1] (a fraction of the image's short side)")):
        window_boxes(10, 10, scales=(1.5,))
    with pytest.raises(ValueError, match=re.escape("stride must be in (0, 1] (a fraction of the window side), not 0")):
        window_boxes(10, 10, stride=0)
    with pytest.raises(ValueError, match=re.escape("overhang must be in [0, 0.5] (a fraction of the window side), not 0.7")):
        window_boxes(10, 10, overhang=0.7)


def test_windows_past_the_edge_are_filled_with_the_given_colour():
    from clipsearch.tasks.localize import crop_filled

    im = Image.new("RGB", (10, 10), (255, 0, 0))
    out = crop_filled(im, (-5, 5, 5, 15), (1, 2, 3))
    assert out.size == (10, 10)
    assert out.getpixel((0, 0)) == (1, 2, 3) and out.getpixel((7, 2)) == (255, 0, 0)
    assert out.getpixel((7, 7)) == (1, 2, 3)


def test_collate_averages_the_windows_covering_each_cell():
    # 4x2 image, grid 4 -> cells of 1 px; windows: left half scored 1, right half scored 3, all scored 2
    boxes = [(0, 0, 2, 2), (2, 0, 4, 2), (0, 0, 4, 2)]
    m = collate(boxes, [1.0, 3.0, 2.0], 4, 2, grid=4)
    assert m.shape == (2, 4)
    np.testing.assert_allclose(m, [[1.5, 1.5, 2.5, 2.5], [1.5, 1.5, 2.5, 2.5]])


def test_scores_are_standardised_per_scale():
    out = normalize_scores([1.0, 3.0, 10.0, 10.0, 12.0], [0, 0, 1, 1, 1])
    np.testing.assert_allclose(out[:2], [-1.0, 1.0])
    sd = np.std([10, 10, 12])
    np.testing.assert_allclose(out[2:], (np.array([10, 10, 12]) - 32 / 3) / sd)


def test_peak_and_box_take_the_component_around_the_peak():
    rel = np.zeros((6, 8))
    rel[1:3, 1:4] = [[5, 6, 5], [5, 9, 5]]
    rel[4:6, 6:8] = 8  # a second, separate high region: not in the box
    (pr, pc), box = peak_and_box(rel, threshold=0.5)
    assert (pr, pc) == (2, 2)
    assert box == (1, 1, 3, 4)  # rows 1-2, cols 1-3
    # a plateau of equal maxima: the peak is the cell nearest its middle
    flat = np.zeros((5, 5))
    flat[0:3, 0:3] = 1
    assert peak_and_box(flat)[0] == (1, 1)


def test_red_square_in_the_top_left_corner():
    enc = RednessEncoder()
    square = (6, 8, 36, 38)
    loc = localize(enc, scene(box=square), "a red square")
    assert loc.image_size == (120, 90)
    assert loc.map.shape == (24, 32) and loc.map.dtype == np.float32
    assert enc.windows_seen == loc.n_windows + 1  # every window once, plus the box crop
    assert inside(loc.peak, square), loc.peak
    x0, y0, x1, y1 = loc.bbox
    assert x1 <= 60 and y1 <= 45, loc.bbox  # in the top-left quarter
    assert box_iou(loc.bbox, square) >= 0.5, (loc.bbox, box_iou(loc.bbox, square))
    # the map is highest over the square and lowest far from it
    gh, gw = loc.map.shape
    assert loc.map[: gh // 2, : gw // 2].mean() > loc.map[gh // 2 :, gw // 2 :].mean()
    assert loc.score > 0.5  # the box crop is mostly red


@pytest.mark.parametrize("corner", ["top right", "bottom left", "bottom right"])
def test_other_corners_and_a_tall_image(corner):
    w, h = 80, 140
    s = 24
    x = 4 if "left" in corner else w - s - 4
    y = 4 if "top" in corner else h - s - 4
    square = (x, y, x + s, y + s)
    loc = localize(RednessEncoder(), scene(w, h, square), "red")
    assert loc.map.shape[0] > loc.map.shape[1]  # tall map for a tall image
    assert inside(loc.peak, square), (loc.peak, square)
    assert box_iou(loc.bbox, square) >= 0.4, (loc.bbox, square)


def test_large_images_are_shrunk_but_boxes_are_in_input_pixels():
    enc = RednessEncoder()
    big = scene(1200, 900, (60, 80, 360, 380))
    loc = localize(enc, big, "red square")
    assert loc.image_size == (1200, 900)
    assert inside(loc.peak, (60, 80, 360, 380))
    assert box_iou(loc.bbox, (60, 80, 360, 380)) >= 0.5


def test_exif_rotated_file_gives_boxes_in_upright_pixels(tmp_path):
    # stored landscape 120x90 with the square at the stored top left; EXIF 6 = rotate 90 clockwise to display
    stored = scene(120, 90, (6, 8, 36, 38))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif, quality=95)
    loc = localize(RednessEncoder(), path, "red")
    assert loc.image_size == (90, 120)
    # displayed: the stored top-left corner is now the top-right; x = 90 - y, y = x
    upright = (90 - 38, 6, 90 - 8, 36)
    assert inside(loc.peak, upright), (loc.peak, upright)
    assert box_iou(loc.bbox, upright) >= 0.5


def test_json_dict_and_overlay_png(tmp_path):
    im = scene()
    loc = localize(RednessEncoder(), im, "red", grid=16)
    d = loc.to_dict()
    assert set(d) >= {"map", "bbox", "score", "peak", "size"}
    assert len(d["map"]) == 12 and len(d["map"][0]) == 16
    json.dumps(d)
    out = loc.overlay_png(im, tmp_path / "o.png", target=(6, 8, 36, 38))
    with Image.open(out) as png:
        png.load()
        assert png.format == "PNG" and png.width > 400
    with pytest.raises(ValueError, match=re.escape("image size (60, 45) does not match the localisation's (120, 90)")):
        loc.overlay_png(im.resize((60, 45)), tmp_path / "x.png")


def test_map_over_image_draws_the_box_on_the_blended_map():
    """The web page's overlay: one picture the image's size (longest side at most max_side)."""
    from clipsearch.viz.overlay import map_over_image

    im = scene()
    rel = np.zeros((3, 4), dtype=np.float32)
    rel[0, 0] = 1.0
    out = map_over_image(im, rel, (6, 8, 36, 38))
    assert out.size == im.size and out.mode == "RGB"
    assert out.getpixel((6, 20)) == (0, 229, 255)  # the box's left edge, 2 pixels wide
    assert out.getpixel((60, 60)) != out.getpixel((6, 20))
    small = map_over_image(im, rel, (6, 8, 36, 38), max_side=60)
    assert small.size == (60, 45) and small.getpixel((3, 10)) == (0, 229, 255)  # the box scaled with it


def test_patches_method_needs_a_patch_grid():
    msg = "model 'redness' has no spatial patch grid; use --method windows (works with any model)"
    with pytest.raises(ValueError, match=re.escape(msg)):
        localize(RednessEncoder(), scene(), "red", method="patches")
    with pytest.raises(ValueError, match=re.escape("unknown localisation method 'grid'; use one of auto, windows, patches")):
        localize(RednessEncoder(), scene(), "red", method="grid")


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def test_evaluation_on_a_scene_folder(tmp_path):
    """Two-object scenes as the demo world writes them: find the red one among red and blue."""
    records = []
    rng = np.random.default_rng(0)
    for i in range(6):
        w, h = 160, 120
        red = (int(rng.integers(0, 50)), int(rng.integers(0, 40)))
        red_box = [red[0], red[1], red[0] + 30, red[1] + 30]
        blue_box = [120, 80, 150, 110]
        im = Image.new("RGB", (w, h), (240, 240, 240))
        im.paste((220, 20, 20), tuple(red_box))
        im.paste((20, 20, 220), tuple(blue_box))
        im.save(tmp_path / f"{i:06d}.png")
        objects = [
            {"shape": "square", "color": "red", "size": "large", "position": "top left", "bbox": red_box},
            {"shape": "square", "color": "blue", "size": "large", "position": "bottom right", "bbox": blue_box},
        ]
        records.append({"file": f"{i:06d}.png", "objects": objects})
    records.append({"file": "x.png", "objects": [{"shape": "circle", "color": "red", "bbox": [0, 0, 1, 1]}]})
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    report = evaluate_localization(RednessEncoder(), tmp_path, n=10, seed=3, overlay_dir=tmp_path / "ov", n_overlays=2)
    assert report.n == 6  # the one-object scene is not a case
    red_cases = [c for c in report.cases if c["prompt"] == "red square"]
    assert red_cases and all(c["hit"] for c in red_cases)
    assert len(list((tmp_path / "ov").glob("*.png"))) == 2
    json.dumps(report.summary())


def test_cli_localize(monkeypatch, tmp_path):
    from clipsearch.cli import tasks as cli_tasks

    monkeypatch.setattr(cli_tasks, "load_encoder", lambda model, weights=None: RednessEncoder())
    app = typer.Typer()
    cli_tasks.register(app)
    app.command("evaluate-localize")(cli_tasks.evaluate_localize_cmd)
    scene().save(tmp_path / "s.png")
    runner = CliRunner()
    result = runner.invoke(app, ["localize", str(tmp_path / "s.png"), "red square", "--json", "--out", str(tmp_path / "o.png")])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert inside(row["peak"], (6, 8, 36, 38)) and len(row["bbox"]) == 4
    assert (tmp_path / "o.png").stat().st_size > 1000
    text = runner.invoke(app, ["localize", str(tmp_path / "s.png"), "red", "--window", "0.3"])
    assert text.exit_code == 0 and "box [" in text.stdout
    bad = runner.invoke(app, ["localize", str(tmp_path / "s.png"), "red", "--scales", "0.2,x"])
    assert bad.exit_code == 2 and "--scales '0.2,x' must be comma-separated numbers" in bad.output


def test_demo_model_localises_two_object_scenes():
    """The issue's bars on fresh two-object demo-world scenes: peak in box >= 80%, IoU >= 0.5 in >= 60%."""
    from clipsearch.errors import ModelNotAvailable
    from clipsearch.models.registry import load_model

    try:
        enc = load_model("demo")
    except ModelNotAvailable as exc:
        pytest.skip(f"the demo model is not built yet ({exc})")
    # a fixed sample (deterministic: seeded scenes, fixed weights), kept small for speed; the full
    # measurement is `clipsearch evaluate localize --model demo --n 200`
    from clipsearch.tasks.localize import SMALL_OBJECTS

    report = evaluate_localization(enc, n=20, seed=5, **SMALL_OBJECTS)
    assert report.peak_in_box >= 0.7, report.summary()
    assert report.iou_50 >= 0.5, report.summary()


def test_cli_defaults_match_the_library():
    import inspect

    from clipsearch.cli import tasks as cli_tasks
    from clipsearch.tasks import localize as lib

    from clipsearch.tasks.localize import SMALL_OBJECTS

    lib_defaults = inspect.signature(lib).parameters
    for command in (cli_tasks.localize, cli_tasks.evaluate_localize_cmd):
        params = inspect.signature(command).parameters
        for name in ("grid", "overhang", "method"):
            assert params[name].default == lib_defaults[name].default, (command.__name__, name)
    # scales, stride and box threshold come from the library: its defaults, or SMALL_OBJECTS
    resolved = cli_tasks._window_settings(None, None, None, None, small_objects=False)
    assert resolved == {name: lib_defaults[name].default for name in ("scales", "stride", "box_threshold")}
    assert resolved == window_settings() == {"scales": None, "stride": None, "box_threshold": None}
    assert cli_tasks._window_settings(None, None, None, None, small_objects=True) == {
        **SMALL_OBJECTS, "scales": tuple(SMALL_OBJECTS["scales"])
    }
    assert cli_tasks._window_settings("0.5", None, 0.2, 0.4, small_objects=True) == {
        "scales": (0.5,), "stride": 0.2, "box_threshold": 0.4
    }
    assert cli_tasks._window_settings("0.5", 0.3, None, None, small_objects=False)["scales"] == (0.3,)  # --window wins


def test_any_real_encoder_gives_a_well_formed_map(tiny_hf_clip):
    """Windows work with any image encoder: a tiny random HF CLIP on a 70x50 image."""
    from clipsearch.models.registry import load_model

    enc = load_model(str(tiny_hf_clip))
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    loc = localize(enc, im, "a red square", grid=14, batch_size=16)
    assert loc.map.shape == (10, 14) and np.isfinite(loc.map).all()
    x0, y0, x1, y1 = loc.bbox
    assert 0 <= x0 < x1 <= 70 and 0 <= y0 < y1 <= 50
    assert inside(loc.peak, loc.bbox)
    crop = enc.encode_images([im.crop(loc.bbox)])[0] @ enc.encode_texts(["a red square"])[0]
    assert loc.score == pytest.approx(float(crop), abs=1e-5)


class GridRednessEncoder(RednessEncoder):
    """RednessEncoder with a 4x4 patch grid over the squashed image (as the demo model has)."""

    def encode_patch_grid(self, images):
        out = []
        for im in images:
            a = np.asarray(im.convert("RGB").resize((16, 16)), dtype=np.int16)
            red = ((a[..., 0] > 150) & (a[..., 1] < 100)).reshape(4, 4, 4, 4).mean(axis=(1, 3))
            out.append(np.stack([red + 1e-3, 1 - red + 1e-3], axis=-1))
        return np.array(out, dtype=np.float32)


def test_patches_method_uses_the_encoders_grid():
    enc = GridRednessEncoder()
    square = (0, 0, 30, 30)  # the top-left cell of a 4x4 grid over 120x120
    loc = localize(enc, scene(120, 120, square), "red", method="patches", grid=8)
    assert loc.method == "patches" and loc.n_windows == 16
    assert enc.windows_seen == 1  # only the box crop goes through encode_images
    assert loc.map.shape == (8, 8)
    assert inside(loc.peak, square)
    assert box_iou(loc.bbox, square) >= 0.5


def test_auto_uses_the_patch_grid_unless_windows_are_asked_for(tmp_path):
    from clipsearch.tasks.localize import SMALL_OBJECTS

    grid, plain = GridRednessEncoder(), RednessEncoder()
    assert choose_method(grid) == "patches" and choose_method(plain) == "windows"
    assert choose_method(grid, scales=(0.3,)) == "windows"  # window settings ask for windows
    assert choose_method(grid, stride=0.5) == choose_method(grid, overhang=0.0) == "windows"
    assert choose_method(grid, "windows") == "windows" and choose_method(plain, "patches") == "patches"
    square = (0, 0, 30, 30)
    assert localize(grid, scene(120, 120, square), "red", grid=8).method == "patches"  # the default is auto
    assert localize(grid, scene(120, 120, square), "red", grid=8, **SMALL_OBJECTS).method == "windows"
    # the evaluation settles "auto" once and reports the method it used
    im = scene(120, 120, square)
    im.paste((20, 20, 220), (90, 90, 120, 120))
    im.save(tmp_path / "a.png")
    objects = [
        {"shape": "square", "color": "red", "bbox": list(square)},
        {"shape": "square", "color": "blue", "bbox": [90, 90, 120, 120]},
    ]
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file": "a.png", "objects": objects}) + "\n")
    assert evaluate_localization(grid, tmp_path, n=2, grid=8).summary()["method"] == "patches"


def test_the_report_files_are_the_librarys(tmp_path):
    report = evaluate_localization(RednessEncoder(), n=2, seed=0, scales=(0.3,), grid=8)
    files = report.write_report(tmp_path / "r")
    assert json.loads(files["summary"].read_text()) == report.summary()
    lines = files["cases"].read_text().splitlines()
    assert [json.loads(line) for line in lines] == report.cases and len(lines) == 2
    assert {"name", "prompt", "target", "bbox", "peak", "score", "iou", "hit"} <= set(report.cases[0])
