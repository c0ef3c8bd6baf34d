"""``clipsearch demo --no-serve`` in a temporary folder, with the bundled demo model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image


def test_demo_no_serve_in_a_temp_folder(tmp_path: Path):
    folder = tmp_path / "tour"
    proc = subprocess.run(
        [sys.executable, "-m", "clipsearch", "demo", "--dir", str(folder), "--n", "60", "--no-serve"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "160"},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    out = proc.stdout
    for direction in ("text -> image", "image -> image", "image -> text", "text -> text", "composed"):
        assert direction in out, direction
    assert "zero-shot shape classification" in out
    assert "(+2 x 'heart', +1 x 'yellow', -1 x 'red')" in out  # the composed query is split into its terms
    from clipsearch.ingest.documents import document_passages
    from clipsearch.world.notes import NOTES

    notes = len(document_passages(NOTES, None))
    assert f"indexed {120 + notes} new" in out  # 60 images, their 60 captions and the off-topic notes' passages
    # image results show what the scene holds (the generator's truth) beside its caption
    assert out.count(" holds ") >= 10 and "; caption '" in out
    for picture in ("contact_sheet.png", "contact_sheet_rerank.png", "relevance_map.png"):
        with Image.open(folder / picture) as im:
            assert im.width > 200 and im.height > 200
    records = [json.loads(line) for line in (folder / "gallery" / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == 60
    # --rerank re-scores images by their grid cells; with modality left at "any" it searches images
    proc = subprocess.run(
        [sys.executable, "-m", "clipsearch", "search", "a red circle", "--store", str(folder / "store"),
         "-k", "5", "--rerank", "20", "--json"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    hits = json.loads(proc.stdout)
    assert len(hits) == 5 and {h["modality"] for h in hits} == {"image"}
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # --cell-weight reaches the ranking: at 0 the re-scored results are the vector search's own
    proc = subprocess.run(
        [sys.executable, "-m", "clipsearch", "search", "a red circle", "--store", str(folder / "store"),
         "-k", "5", "--json", "--rerank", "20", "--cell-weight", "0"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    weight_zero = json.loads(proc.stdout)
    # with neither option the store's cells re-score the best 20 at weight 0.25 (in-process: the
    # same library the CLI calls, without two more model loads)
    from clipsearch.collection import open_store

    store = open_store(folder / "store")
    assert store.has_cells and store.stats()["cells"] == 60

    def ranked(**options):
        return [(h.id, h.score) for h in store.search("a red circle", k=5, modality="image", **options)]

    vector, default = ranked(rerank=0), ranked()
    assert [h["id"] for h in weight_zero] == [i for i, _ in vector]  # another process: scores to float noise
    assert [h["score"] for h in weight_zero] == pytest.approx([s for _, s in vector], abs=1e-4)
    assert default == ranked(rerank=20, cell_weight=0.25) and default != vector
    assert [h["id"] for h in hits] != [i for i, _ in vector] or hits[0]["score"] != pytest.approx(vector[0][1])


def test_demo_searches_find_what_they_ask_for(tmp_path: Path):
    """The tour's first query, "a red circle", returns scenes that contain a red circle."""
    from clipsearch.demo import run_demo

    report = run_demo(tmp_path / "tour", n=120, seed=3)
    by_file = {
        r["file"]: r for r in map(json.loads, (report.gallery / "metadata.jsonl").read_text().splitlines())
    }
    red_circles = {f for f, r in by_file.items() if any((o["color"], o["shape"]) == ("red", "circle") for o in r["objects"])}
    first = report.examples[0]
    assert first.query == "a red circle"
    found = [Path(h.path).name for h in first.hits]
    relevant = min(len(red_circles), len(found))
    assert relevant > 0
    hits = sum(name in red_circles for name in found[:relevant])
    assert hits >= max(1, relevant - 1), (found, sorted(red_circles))
    # image -> text: a single-object scene's own caption is among its five nearest captions
    image_to_text = next(e for e in report.examples if e.direction == "image -> text")
    own_caption = by_file[Path(image_to_text.query).name]["caption"]
    assert own_caption in [h.text for h in image_to_text.hits]
    # the store holds the gallery's metadata.jsonl as it is: captions on the images, the truth in extra
    some = first.hits[0]
    assert some.caption == by_file[Path(some.path).name]["caption"]
    assert some.extra["objects"] == by_file[Path(some.path).name]["objects"]


def test_demo_takes_out_the_captions_table_older_demos_indexed(tmp_path: Path):
    from clipsearch.demo import run_demo
    from clipsearch.collection import open_store
    from clipsearch.world import generate_world
    from clipsearch.world.notes import NOTES_FILE

    # a demo folder as older demos left it: the gallery, and a store of captions.jsonl only
    folder = tmp_path / "tour"
    gallery = folder / "gallery"
    generate_world(gallery, 12, seed=1, split="eval")
    records = [json.loads(line) for line in (gallery / "metadata.jsonl").read_text().splitlines()]
    legacy = gallery / "captions.jsonl"
    legacy.write_text("".join(json.dumps({"text": r["caption"], "image": r["file"]}) + "\n" for r in records))
    old = open_store(folder / "store", model="demo")
    assert old.add([legacy], both=True).added == 24
    report = run_demo(folder, n=12, seed=1)
    assert not legacy.exists() and report.indexed["failed"] == 0
    store = open_store(folder / "store")
    table = str(gallery / "metadata.jsonl")
    captions = store.to_arrow(["id"], where=f"modality = 'text' AND source = '{table}'").num_rows
    assert captions == 12 and store.count("image") == 12  # no caption twice
    for modality in ("text", "image"):  # the images name the table that captions them now (texts: and the notes)
        sources = set(store.to_arrow(["source"], where=f"modality = '{modality}'").column("source").to_pylist())
        assert sources == ({table, str(gallery / NOTES_FILE)} if modality == "text" else {table}), modality
