"""Indexing: incremental runs, duplicates, pruning, text documents, hostile files, workers."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
import pytest
from images_helpers import HOSTILE_IMAGES as HOSTILE
from test_store import FakeEncoder, solid_image

from clipsearch.collection import open_store


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIPSEARCH_STORE", raising=False)
    monkeypatch.delenv("CLIPSEARCH_ANN_THRESHOLD", raising=False)
    monkeypatch.delenv("CLIPSEARCH_MP_CONTEXT", raising=False)


@pytest.fixture
def enc() -> FakeEncoder:
    return FakeEncoder()


def photo_folder(root: Path, n: int = 5) -> Path:
    colours = ["red", "green", "blue", "white", "yellow"]
    for i in range(n):
        solid_image(root / ("sub" if i % 2 else "") / f"img{i}.png", colours[i % 5], noise=8, seed=i)
    return root


def all_paths(store) -> dict[str, str]:
    """path -> item id, over every path of every image item."""
    table = store.to_arrow(["id", "path", "extra_paths"], where="modality = 'image'").to_pylist()
    out: dict[str, str] = {}
    for row in table:
        for p in [row["path"], *row["extra_paths"]]:
            assert p not in out, f"{p} is held by two items"
            out[p] = row["id"]
    return out


def bump_mtime(path: Path, seconds: float = 10) -> None:
    st = path.stat()
    os.utime(path, (st.st_atime, st.st_mtime + seconds))


# -- incremental ---------------------------------------------------------------------------------


def test_second_run_over_unchanged_folder_embeds_nothing(tmp_path: Path, enc: FakeEncoder, monkeypatch) -> None:
    # the score calibration fitted after a run that changed the store embeds texts of its own
    monkeypatch.setattr("clipsearch.calibration.fit_calibration", lambda *args, **kwargs: None)
    photos = photo_folder(tmp_path / "photos")
    (photos / "notes.txt").write_text("First paragraph.\n\nSecond one.\n")
    store = open_store(tmp_path / "store", model=enc)
    enc.image_calls = enc.text_calls = 0  # a new store records the model's probe; count indexing alone
    first = store.add([photos], workers=0)
    assert first.to_dict() == {"added": 7, "updated": 0, "unchanged": 0, "failed": 0, "removed": 0}
    assert first.embedded == 7 and (enc.image_calls, enc.text_calls) == (5, 2)
    version = store.version
    second = store.add([photos], workers=0)
    assert second.to_dict() == {"added": 0, "updated": 0, "unchanged": 7, "failed": 0, "removed": 0}
    assert second.embedded == 0 and (enc.image_calls, enc.text_calls) == (5, 2)
    assert store.version == version  # nothing was written


def test_unchanged_folder_does_not_even_load_the_model(tmp_path: Path, enc: FakeEncoder, monkeypatch) -> None:
    photos = photo_folder(tmp_path / "photos")
    open_store(tmp_path / "store", model=enc).add([photos], workers=0)

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("clipsearch.models.registry.load_model", no_model)
    again = open_store(tmp_path / "store")  # by name: the encoder would be loaded lazily
    assert again.add([photos], workers=0).unchanged == 5


def test_a_file_that_failed_is_not_read_again_until_it_changes(tmp_path: Path, enc: FakeEncoder, monkeypatch) -> None:
    photos = photo_folder(tmp_path / "photos", n=2)
    bad = photos / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    first = open_store(tmp_path / "store", model=enc).add([photos], workers=0)
    assert (first.added, first.failed, first.failed_unread) == (2, 1, 0)
    reason = first.failures[0].reason

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    with monkeypatch.context() as m:  # reported again with its reason, unread: no model needed
        m.setattr("clipsearch.models.registry.load_model", no_model)
        again = open_store(tmp_path / "store").add([photos], workers=0)
    assert (again.unchanged, again.failed, again.failed_unread) == (2, 1, 1)
    assert [(f.path, f.reason) for f in again.failures] == [(str(bad), reason)]
    store = open_store(tmp_path / "store", model=enc)
    monkeypatch.setenv("CLIPSEARCH_MAX_PIXELS", "10000000")  # another cap: it may pass now, so it is read
    assert store.add([photos], workers=0).failed_unread == 0
    monkeypatch.delenv("CLIPSEARCH_MAX_PIXELS")
    retried = store.add([photos], workers=0, retry_failed=True)
    assert (retried.failed, retried.failed_unread, retried.failures[0].reason) == (1, 0, reason)
    # mended: read, indexed, and no longer on record
    solid_image(bad, "blue", noise=8, seed=7)
    mended = store.add([photos], workers=0)
    assert (mended.added, mended.failed) == (1, 0) and store.failed_files() == {}
    # a failure whose file goes is forgotten too
    bad.write_bytes(b"broken again")
    assert store.add([photos], workers=0).failed == 1 and list(store.failed_files()) == [str(bad)]
    bad.unlink()
    store.add([photos], workers=0, prune=True)
    assert store.failed_files() == {}


def test_a_store_from_before_the_grid_header_loads_the_model_once(tmp_path: Path, enc: FakeEncoder, monkeypatch) -> None:
    photos = photo_folder(tmp_path / "photos")
    open_store(tmp_path / "store", model=enc).add([photos], workers=0)
    meta_file = tmp_path / "store" / "meta.json"
    meta = json.loads(meta_file.read_text())
    assert meta.pop("grid") is False  # FakeEncoder has no grid of cells
    meta_file.write_text(json.dumps(meta))
    assert open_store(tmp_path / "store", model=enc).add([photos], workers=0).unchanged == 5
    assert json.loads(meta_file.read_text())["grid"] is False  # asked the model once, and wrote it down

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("clipsearch.models.registry.load_model", no_model)
    assert open_store(tmp_path / "store").add([photos], workers=0).unchanged == 5


def test_modified_file_is_reembedded_and_touched_file_is_not(tmp_path: Path, enc: FakeEncoder) -> None:
    photos = photo_folder(tmp_path / "photos")
    store = open_store(tmp_path / "store", model=enc)
    store.add([photos], workers=0)
    old = all_paths(store)
    target = photos / "img0.png"
    solid_image(target, "blue", noise=8, seed=99)
    bump_mtime(target)
    bump_mtime(photos / "img2.png")  # same bytes, new mtime: hashed, not embedded
    s = store.add([photos], workers=0)
    assert s.to_dict() == {"added": 0, "updated": 1, "unchanged": 4, "failed": 0, "removed": 0}
    assert s.embedded == 1
    now = all_paths(store)
    assert now[str(target)] != old[str(target)] and store.get(old[str(target)]) is None
    assert len(store) == 5
    hit = store.search(Path(target), k=1)[0]
    assert hit.path == str(target) and hit.score == pytest.approx(1.0, abs=1e-5)
    assert store.add([photos], workers=0).to_dict()["unchanged"] == 5


def test_deleted_file_is_pruned_only_with_prune(tmp_path: Path, enc: FakeEncoder) -> None:
    photos = photo_folder(tmp_path / "photos")
    (photos / "notes.txt").write_text("One.\n\nTwo.\n")
    store = open_store(tmp_path / "store", model=enc)
    store.add([photos], workers=0)
    gone = photos / "sub" / "img1.png"
    gone_id = all_paths(store)[str(gone)]
    gone.unlink()
    (photos / "notes.txt").unlink()
    kept = store.add([photos], workers=0)
    assert kept.to_dict() == {"added": 0, "updated": 0, "unchanged": 4, "failed": 0, "removed": 0}
    assert store.get(gone_id) is not None
    pruned = store.add([photos], workers=0, prune=True)
    assert pruned.to_dict() == {"added": 0, "updated": 0, "unchanged": 4, "failed": 0, "removed": 3}
    assert pruned.captions_dropped == 0  # an image's own file is not a table that captions it
    assert store.get(gone_id) is None and store.count("text") == 0
    assert str(gone) not in store.file_records()


def test_prune_keeps_to_the_folders_indexed(tmp_path: Path, enc: FakeEncoder) -> None:
    """Indexing one folder with prune never prunes another (a drive that is not plugged in)."""
    home, drive = photo_folder(tmp_path / "home", n=2), tmp_path / "drive"
    for i, colour in enumerate(["white", "yellow"]):
        solid_image(drive / f"img{i}.png", colour, noise=8, seed=10 + i)
    store = open_store(tmp_path / "store", model=enc)
    store.add([home, drive], workers=0)
    drive_ids = {i for p, i in all_paths(store).items() if p.startswith(str(drive))}
    shutil.rmtree(drive)
    s = store.add([home], workers=0, prune=True)
    assert s.removed == 0 and s.prune_kept == {} and len(store) == 4
    drive.mkdir()  # the drive's folder again, now holding one other picture
    solid_image(drive / "other.png", "blue", noise=8, seed=12)
    s = store.add([drive], workers=0, prune=True)
    assert (s.added, s.removed) == (1, 2) and len(store) == 3
    assert not drive_ids & set(all_paths(store).values())


def test_prune_keeps_what_an_empty_folder_held(tmp_path: Path, enc: FakeEncoder) -> None:
    """An empty folder is what an unmounted drive's mount point looks like: nothing under it is
    pruned; removing the folder on purpose still works."""
    mount = photo_folder(tmp_path / "mnt", n=3)
    store = open_store(tmp_path / "store", model=enc)
    store.add([mount], workers=0)
    stored = len(store)
    for child in list(mount.iterdir()):
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    s = store.add([mount], workers=0, prune=True)
    assert s.removed == 0 and s.prune_kept == {str(mount): stored} and len(store) == stored
    store.remove([mount])
    assert len(store) == 0


def test_prune_keeps_what_an_emptied_subfolder_held(tmp_path: Path, enc: FakeEncoder) -> None:
    """A drive is often mounted below the folder indexed: an empty subfolder keeps its paths,
    while a subfolder deleted outright is pruned (its nearest folder still there is not empty)."""
    photos = photo_folder(tmp_path / "photos", n=4)  # img0, img2 on top; sub/img1, sub/img3
    card = photos / "card"
    for i, colour in enumerate(["white", "yellow"]):
        solid_image(card / f"c{i}.png", colour, noise=8, seed=20 + i)
    store = open_store(tmp_path / "store", model=enc)
    store.add([photos], workers=0)
    before = all_paths(store)
    for child in card.iterdir():
        child.unlink()
    shutil.rmtree(photos / "sub")
    s = store.add([photos], workers=0, prune=True)
    assert s.prune_kept == {str(card): 2} and s.removed == 2
    after = all_paths(store)
    assert set(after) == {str(photos / "img0.png"), str(photos / "img2.png"), str(card / "c0.png"), str(card / "c1.png")}
    assert after.items() <= before.items()


def test_prune_keeps_what_an_unlistable_folder_held(
    tmp_path: Path, enc: FakeEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder we may not list (its files only seem gone) keeps its paths. Tests run as root,
    where chmod binds nothing, so listing that folder is made to fail instead."""
    import clipsearch.ingest.plan as plan

    photos = photo_folder(tmp_path / "photos", n=4)
    store = open_store(tmp_path / "store", model=enc)
    store.add([photos], workers=0)
    shutil.rmtree(photos / "sub")
    (photos / "sub").mkdir()
    (photos / "sub" / "unseen.txt").write_text("here, but not listable")
    real_scandir = os.scandir

    def scandir(path):  # type: ignore[no-untyped-def]
        if Path(path) == photos / "sub":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(plan.os, "scandir", scandir)
    s = store.add([photos], workers=0, prune=True)
    assert s.prune_kept == {str(photos / "sub"): 2} and s.removed == 0 and len(store) == 4


def test_prune_keeps_a_link_whose_target_is_unmounted(tmp_path: Path, enc: FakeEncoder) -> None:
    """A link to a file on a drive that is not plugged in dangles: its name is still listed in
    the folder, so its item is kept; the link deleted, it is pruned. Nested roots count it once."""
    photos, card = photo_folder(tmp_path / "photos", n=2), tmp_path / "card"
    solid_image(card / "far.png", "white", noise=8, seed=30)
    link = photos / "sub" / "far.png"
    link.symlink_to(card / "far.png")
    store = open_store(tmp_path / "store", model=enc)
    store.add([photos], workers=0)
    assert str(link) in all_paths(store)
    shutil.rmtree(card)
    s = store.add([photos, photos / "sub"], workers=0, prune=True)
    assert s.prune_kept == {str(link): 1} and s.removed == 0 and str(link) in all_paths(store)
    link.unlink()
    s = store.add([photos], workers=0, prune=True)
    assert s.prune_kept == {} and s.removed == 1 and str(link) not in all_paths(store)


def test_identical_bytes_are_stored_once_with_every_path(tmp_path: Path, enc: FakeEncoder) -> None:
    photos = photo_folder(tmp_path / "photos", n=2)
    copy = photos / "copy" / "again.png"
    copy.parent.mkdir()
    shutil.copy(photos / "img0.png", copy)
    store = open_store(tmp_path / "store", model=enc)
    s = store.add([photos], workers=0)
    assert s.added == 3 and s.embedded == 2 and len(store) == 2
    item = store.get(all_paths(store)[str(copy)])
    assert sorted(item.paths) == sorted([str(photos / "img0.png"), str(copy)])
    # the first copy goes: the item stays, under the other path
    (photos / "img0.png").unlink()
    s = store.add([photos], workers=0, prune=True)
    assert s.removed == 1 and s.embedded == 0 and s.captions_dropped == 0
    assert store.get(item.id).paths == [str(copy)] and store.get(item.id).source == str(copy)
    # the last copy goes, its folder left empty: kept, as an unmounted drive's would be
    copy.unlink()
    s = store.add([photos], workers=0, prune=True)
    assert s.prune_kept == {str(copy.parent): 1} and store.get(item.id) is not None
    # its folder goes too: the item goes
    copy.parent.rmdir()
    store.add([photos], workers=0, prune=True)
    assert store.get(item.id) is None


def test_moved_file_keeps_its_vector(tmp_path: Path, enc: FakeEncoder) -> None:
    photos = photo_folder(tmp_path / "photos", n=3)
    store = open_store(tmp_path / "store", model=enc)
    store.add([photos], workers=0)
    item_id = all_paths(store)[str(photos / "img2.png")]
    (photos / "moved").mkdir()
    (photos / "img2.png").rename(photos / "moved" / "img2.png")
    s = store.add([photos], workers=0, prune=True)
    assert (s.added, s.removed, s.embedded) == (1, 1, 0)
    assert store.get(item_id).paths == [str(photos / "moved" / "img2.png")]


def test_swapped_contents_are_reembedded_correctly(tmp_path: Path, enc: FakeEncoder) -> None:
    """Two files exchange their bytes: each path must end up with the vector of its new bytes."""
    photos = photo_folder(tmp_path / "photos", n=2)
    a, b = photos / "img0.png", photos / "sub" / "img1.png"
    store = open_store(tmp_path / "store", model=enc)
    store.add([photos], workers=0)
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    bump_mtime(a)
    bump_mtime(b)
    s = store.add([photos], workers=0)
    assert s.updated == 2 and len(store) == 2
    for path in (a, b):
        hit = store.search(Path(path), k=1)[0]
        assert str(path) in hit.paths and hit.score == pytest.approx(1.0, abs=1e-5)


# -- text documents --------------------------------------------------------------------------


def test_text_file_paragraphs_keep_offsets(tmp_path: Path, enc: FakeEncoder) -> None:
    doc = "A red car.\n\n  A blue boat on a green lake.  \n\n\nThe end.\n"
    path = tmp_path / "notes.txt"
    path.write_text(doc)
    store = open_store(tmp_path / "store", model=enc)
    s = store.add([path], workers=0)
    assert s.added == 3
    rows = store.to_arrow(["text", "char_start", "char_end", "path", "source"]).to_pylist()
    rows.sort(key=lambda r: r["char_start"])
    assert [r["text"] for r in rows] == ["A red car.", "A blue boat on a green lake.", "The end."]
    for r in rows:
        assert doc[r["char_start"] : r["char_end"]] == r["text"]
        assert r["path"] == r["source"] == str(path)
    # edit one paragraph: only it is embedded again
    path.write_text(doc.replace("The end.", "The very end."))
    bump_mtime(path)
    calls = enc.text_calls
    s = store.add([path], workers=0)
    assert (s.added, s.removed, s.unchanged, s.embedded) == (1, 1, 2, 1)
    assert enc.text_calls == calls + 1
    assert sorted(store.to_arrow(["text"]).column("text").to_pylist()) == [
        "A blue boat on a green lake.", "A red car.", "The very end.",
    ]  # fmt: skip


def test_jsonl_and_csv_records_with_images_captions_and_labels(tmp_path: Path, enc: FakeEncoder) -> None:
    solid_image(tmp_path / "pics" / "r.png", "red")
    solid_image(tmp_path / "pics" / "g.png", "green")
    lines = [
        {"image": "pics/r.png", "text": "a red square", "label": "warm", "photographer": "ann"},
        {"image": "pics/g.png", "text": "a green square", "label": "cold"},
        {"text": "just a sentence", "label": "none"},
        "not an object",
    ]
    jl = tmp_path / "pairs.jsonl"
    jl.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken json\n")
    csv = tmp_path / "more.csv"
    csv.write_text("text,label\nyellow things,bright\n")
    store = open_store(tmp_path / "store", model=enc)
    s = store.add([jl, csv], workers=0)
    assert (s.added, s.failed) == (4, 2)
    assert sorted(f.reason for f in s.failures) == sorted(
        ["expected a JSON object, got str", "not valid JSON (Expecting property name enclosed in double quotes)"]
    )
    red = store.search(Path(tmp_path / "pics" / "r.png"), k=1)[0]
    assert (red.caption, red.label, red.extra) == ("a red square", "warm", {"photographer": "ann"})
    assert red.source == str(jl) and red.record == ":1"
    texts = {r["text"]: r for r in store.to_arrow(where="modality = 'text'").to_pylist()}
    assert set(texts) == {"just a sentence", "yellow things"}
    assert texts["yellow things"]["label"] == "bright" and texts["yellow things"]["source"] == str(csv)
    version = store.version
    again = store.add([jl, csv], workers=0)
    assert (again.unchanged, again.added, again.embedded, store.version) == (4, 0, 0, version)
    # --both: the captions become text items too, showing their image (also for a table
    # indexed before without it)
    s = store.add([jl], workers=0, both=True)
    assert (s.added, s.embedded) == (2, 2)
    caption = store.search("a red square", k=1, modality="text")[0]
    assert caption.text == "a red square" and caption.path == str(tmp_path / "pics" / "r.png")
    assert store.count("image") == 2 and store.count("text") == 4


def test_a_table_takes_back_the_captions_it_no_longer_gives(tmp_path: Path, enc: FakeEncoder) -> None:
    solid_image(tmp_path / "r.png", "red")
    solid_image(tmp_path / "g.png", "green")
    table = tmp_path / "metadata.jsonl"
    table.write_text('{"image": "r.png", "caption": "a red square"}\n{"image": "g.png", "caption": "a green square"}\n')
    store = open_store(tmp_path / "store", model=enc)
    store.add([tmp_path], workers=0)

    def caption(name: str) -> tuple[str | None, str | None]:
        item = store.get(all_paths(store)[str(tmp_path / name)])
        return item.caption, item.source

    assert caption("g.png") == ("a green square", str(table))
    # the green row deleted: the green square loses its caption, the red one keeps its own
    table.write_text('{"image": "r.png", "caption": "a red square"}\n')
    s = store.add([tmp_path], workers=0)
    assert s.captions_dropped == 1 and s.embedded == 0
    assert caption("g.png") == (None, str(tmp_path / "g.png")) and caption("r.png") == ("a red square", str(table))
    # the table deleted and pruned: nothing is captioned by it any more, the images stay
    table.unlink()
    s = store.add([tmp_path], workers=0, prune=True)
    assert s.captions_dropped == 1 and caption("r.png") == (None, str(tmp_path / "r.png"))
    assert store.count("image") == 2 and s.removed == 0
    # removing a table that only captions images is not "nothing to remove"
    table.write_text('{"image": "r.png", "caption": "a red square"}\n')
    store.add([tmp_path], workers=0)
    assert store.remove([table]) == 0 and caption("r.png") == (None, str(tmp_path / "r.png"))


def test_caption_only_pairs_and_demo_world_metadata_are_image_caption_pairs(tmp_path: Path, enc: FakeEncoder) -> None:
    # what `clipsearch train --pairs` reads is indexable as it is: {"image", "caption"} records,
    # and a demo world's metadata.jsonl, which names its images by "file"
    solid_image(tmp_path / "r.png", "red")
    solid_image(tmp_path / "g.jpg", "green")
    lines = [
        {"image": "r.png", "caption": "a red square"},
        {"file": "g.jpg", "caption": "a green square", "split": "eval"},
        {"file": "notes.txt", "text": "a file field naming no image keeps its record a text"},
        {"caption": "a caption and no image is a text"},
        {"file": "r.png"},  # nothing to say about it: no text, no caption
    ]
    jl = tmp_path / "metadata.jsonl"
    jl.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    store = open_store(tmp_path / "store", model=enc)
    s = store.add([jl], workers=0)
    assert (s.added, s.failed) == (4, 1)
    assert s.failures[0].reason == (
        "no text field: expected one of 'text', 'context', 'passage', 'content', 'body', or 'caption'"
    )
    red = store.search(Path(tmp_path / "r.png"), k=1)[0]
    green = store.search(Path(tmp_path / "g.jpg"), k=1)[0]
    assert (red.caption, green.caption, green.extra) == ("a red square", "a green square", {"split": "eval"})
    texts = {r["text"]: r for r in store.to_arrow(where="modality = 'text'").to_pylist()}
    assert set(texts) == {"a file field naming no image keeps its record a text", "a caption and no image is a text"}
    assert json.loads(texts["a file field naming no image keeps its record a text"]["extra"]) == {"file": "notes.txt"}


def test_changed_label_in_table_updates_metadata_without_embedding(tmp_path: Path, enc: FakeEncoder) -> None:
    solid_image(tmp_path / "r.png", "red")
    jl = tmp_path / "pairs.jsonl"
    jl.write_text(json.dumps({"image": "r.png", "text": "red", "label": "a"}) + "\n")
    store = open_store(tmp_path / "store", model=enc)
    store.add([jl], workers=0)
    jl.write_text(json.dumps({"image": "r.png", "text": "red", "label": "b"}) + "\n")
    bump_mtime(jl)
    s = store.add([jl], workers=0)
    assert (s.updated, s.embedded) == (1, 0)
    assert store.search("red", k=1)[0].label == "b"


def test_raw_texts_and_identical_text_reuses_vectors(tmp_path: Path, enc: FakeEncoder) -> None:
    store = open_store(tmp_path / "store", model=enc)
    s = store.add(texts=["a blue boat", "a red car", "   "])
    assert (s.added, s.failed, s.embedded) == (2, 1, 2)
    assert s.failures[0].reason == "empty text"
    (tmp_path / "a.txt").write_text("a red car")
    s = store.add([tmp_path / "a.txt"], workers=0)
    assert (s.added, s.embedded) == (1, 0)  # same text elsewhere: vector reused
    assert store.add(texts=["a red car"]).unchanged == 1


# -- bad files -----------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's warnings about the broken TIFFs
def test_hostile_corpus_beside_good_images(tmp_path: Path, fake_registry) -> None:
    """Through the CLI: every good image is stored, every bad one is in the report with a reason."""
    from typer.testing import CliRunner

    from clipsearch.cli.main import app
    from clipsearch.errors import ImageRefused
    from clipsearch.images import is_image_path, load_image

    corpus = tmp_path / "corpus"
    shutil.copytree(HOSTILE, corpus / "hostile")
    photo_folder(corpus / "good", n=4)
    good, bad = set(), {}
    for p in sorted(corpus.rglob("*")):
        if p.is_file() and is_image_path(p):
            try:
                load_image(p)
                good.add(str(p))
            except ImageRefused as exc:
                bad[str(p)] = exc.reason
    assert len(bad) >= 5 and len(good) >= 20
    report = tmp_path / "report.jsonl"
    store_dir = tmp_path / "store"
    args = ["index", str(corpus), "--store", str(store_dir), "--model", "fake", "--report", str(report), "--json"]
    r = CliRunner().invoke(app, [*args, "-w", "2", "-b", "4"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["failed"] == len(bad)
    reported = {d["path"]: d["reason"] for d in map(json.loads, report.read_text().splitlines())}
    assert reported == bad
    store = open_store(store_dir)
    assert set(all_paths(store)) == good
    # rows and vectors stay aligned across the failures: every good file finds itself first
    for p in sorted(good):
        hit = store.search(Path(p), k=1, modality="image")[0]
        assert p in hit.paths and hit.score == pytest.approx(1.0, abs=1e-4)
    # again: the same failures with the same reasons in the report, none of them read again
    r = CliRunner().invoke(app, [*args, "-w", "2"])
    assert r.exit_code == 0 and json.loads(r.stdout)["failed"] == len(bad)
    assert {d["path"]: d["reason"] for d in map(json.loads, report.read_text().splitlines())} == bad
    assert f"{len(bad)} failed as before, unchanged and not read again: --retry-failed reads them" in r.stderr


def test_worker_processes_give_the_same_store_as_inline(tmp_path: Path) -> None:
    photos = photo_folder(tmp_path / "photos", n=9)
    a = open_store(tmp_path / "a", model=FakeEncoder())
    b = open_store(tmp_path / "b", model=FakeEncoder())
    a.add([photos], workers=0, batch_size=3)
    b.add([photos], workers=2, batch_size=3)
    ta = a.to_arrow(["id", "path", "vector"]).sort_by("id").to_pylist()
    tb = b.to_arrow(["id", "path", "vector"]).sort_by("id").to_pylist()
    assert [(r["id"], r["path"]) for r in ta] == [(r["id"], r["path"]) for r in tb]
    np.testing.assert_allclose([r["vector"] for r in ta], [r["vector"] for r in tb], atol=1e-6)


def _crash_on_boom(original):
    def prepare(path, preprocess, *, known_ids=None):
        if path.endswith("boom.png"):
            os._exit(3)  # what a segfaulting decoder looks like from outside
        return original(path, preprocess, known_ids=known_ids)

    return prepare


@pytest.mark.filterwarnings("ignore:lance is not fork-safe", "ignore:lancedb fork support is experimental")
def test_a_crashing_decoder_costs_only_its_file(tmp_path: Path, enc: FakeEncoder, monkeypatch) -> None:
    import clipsearch.ingest.decode as decode

    monkeypatch.setenv("CLIPSEARCH_MP_CONTEXT", "fork")  # forked workers inherit the patched decoder
    monkeypatch.setattr(decode, "prepare_image", _crash_on_boom(decode.prepare_image))
    photos = photo_folder(tmp_path / "photos", n=6)
    solid_image(photos / "boom.png", "red")
    store = open_store(tmp_path / "store", model=enc)
    s = store.add([photos], workers=2, batch_size=2)
    assert [f.to_dict() for f in s.failures] == [
        {"path": str(photos / "boom.png"), "reason": "the image decoder crashed (worker process died)"}
    ]
    assert len(all_paths(store)) == 6


def test_text_only_model_reports_images(tmp_path: Path) -> None:
    photos = photo_folder(tmp_path / "photos", n=2)
    (photos / "a.txt").write_text("words")
    store = open_store(tmp_path / "store", model=FakeEncoder("texty", modalities=("text",)))
    s = store.add([photos], workers=0)
    assert (s.added, s.failed) == (1, 2)
    assert {f.reason for f in s.failures} == {"model 'texty' embeds text only"}


def test_missing_input_is_a_failure_not_a_crash(tmp_path: Path, enc: FakeEncoder) -> None:
    store = open_store(tmp_path / "store", model=enc)
    s = store.add([tmp_path / "nope", tmp_path / "nope.jpg"], workers=0)
    assert [f.reason for f in s.failures] == ["no such file or folder"] * 2


def test_bad_arguments(tmp_path: Path, enc: FakeEncoder) -> None:
    store = open_store(tmp_path / "store", model=enc)
    with pytest.raises(ValueError, match=re.escape("batch_size must be a positive whole number, got 0")):
        store.add([tmp_path], batch_size=0)
    with pytest.raises(ValueError, match=re.escape("workers must be 0 (decode in this process) or more, got -1")):
        store.add([tmp_path], workers=-1)


# -- the CLI -------------------------------------------------------------------------------------


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch):
    """``load_model(name)`` returns a FakeEncoder called ``name`` (no torch, no weights)."""
    made: dict[str, FakeEncoder] = {}

    def load_model(name, *, weights=None, device="cpu", backend="torch"):
        return made.setdefault(name, FakeEncoder(name))

    monkeypatch.setattr("clipsearch.models.registry.load_model", load_model)
    return made


def test_cli_index_json_report_and_model_default(tmp_path: Path, fake_registry, monkeypatch) -> None:
    from typer.testing import CliRunner

    from clipsearch.cli.main import app

    photos = photo_folder(tmp_path / "photos", n=3)
    (photos / "bad.jpg").write_bytes(b"\xff\xd8\xffgarbage")
    report = tmp_path / "report.jsonl"
    store = tmp_path / "store"
    runner = CliRunner()
    r = runner.invoke(
        app,
        ["index", str(photos), "--store", str(store), "--model", "m1", "--json", "--report", str(report), "-w", "0"],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"added": 3, "updated": 0, "unchanged": 0, "failed": 1, "removed": 0}
    assert [json.loads(line) for line in report.read_text().splitlines()] == [
        {"path": str(photos / "bad.jpg"), "reason": "corrupt JPEG file: its header cannot be read"}
    ]
    # no --model: the store's own; another model: refused with the store's name in the message
    r = runner.invoke(app, ["index", str(photos), "--store", str(store), "--json", "-w", "0"])
    assert json.loads(r.stdout)["unchanged"] == 3
    r = runner.invoke(app, ["index", str(photos), "--store", str(store), "--model", "m2"])
    assert r.exit_code == 2
    assert f"store {store} was built with model m1; use --model m1 or a new --store" in " ".join(r.stderr.split())
    # the environment picks the default store
    monkeypatch.setenv("CLIPSEARCH_STORE", str(store))
    r = runner.invoke(app, ["stats", "--json"])
    stats = json.loads(r.stdout)
    assert {k: stats[k] for k in ("count", "images", "texts", "model", "dim")} == {
        "count": 3,
        "images": 3,
        "texts": 0,
        "model": "m1",
        "dim": 32,
    }


def test_cli_remove(tmp_path: Path, fake_registry) -> None:
    from typer.testing import CliRunner

    from clipsearch.cli.main import app

    photos = photo_folder(tmp_path / "photos", n=3)
    store = tmp_path / "store"
    runner = CliRunner()
    runner.invoke(app, ["index", str(photos), "--store", str(store), "--model", "m", "-w", "0"])
    r = runner.invoke(app, ["remove", str(photos / "sub"), "--store", str(store), "--json"])
    assert json.loads(r.stdout) == {"removed": 1}
    r = runner.invoke(app, ["remove", "deadbeef", "--store", str(store)])
    assert r.exit_code == 2 and f"nothing in store {store} has the id or path 'deadbeef'" in " ".join(r.stderr.split())


def test_text_only_inputs_are_recognised(tmp_path: Path) -> None:
    from clipsearch.ingest import is_text_only

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("hello\n\nworld\n")
    (docs / "b.jsonl").write_text('{"text": "a caption"}\n')
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image,text\nx.jpg,a caption\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "pic.png")
    assert is_text_only([docs])
    assert is_text_only([docs / "a.txt", docs / "b.jsonl"])
    assert not is_text_only([docs, tmp_path / "pic.png"])
    assert not is_text_only([pairs])
    assert not is_text_only([tmp_path])  # the folder holds an image
    assert not is_text_only([])


def test_a_new_text_store_defaults_to_minilm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from clipsearch.cli.main import app

    monkeypatch.delenv("CLIPSEARCH_MODEL", raising=False)
    (tmp_path / "notes.txt").write_text("Canberra is the capital of Australia.\n\nParis is in France.\n")
    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["index", str(tmp_path / "notes.txt"), "--store", str(store), "--json"])
    assert result.exit_code == 0, result.output
    stats = CliRunner().invoke(app, ["stats", "--store", str(store), "--json"])
    assert json.loads(stats.stdout)["model"] == "minilm"


def test_cli_prune_of_an_empty_folder_says_what_it_kept(tmp_path: Path, fake_registry) -> None:
    from typer.testing import CliRunner

    from clipsearch.cli.main import app

    mount = photo_folder(tmp_path / "mnt", n=1)
    store = tmp_path / "store"
    runner = CliRunner()
    runner.invoke(app, ["index", str(mount), "--store", str(store), "--model", "m", "-w", "0"])
    (mount / "img0.png").unlink()
    r = runner.invoke(app, ["index", str(mount), "--store", str(store), "--prune", "--json", "-w", "0"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["removed"] == 0
    said = " ".join(r.stderr.split())
    assert f"not pruned 1 vanished path under {mount}: it is empty or cannot be reached (an unmounted drive?)" in said
    assert f"clipsearch remove {mount} --store {store} removes them" in said
