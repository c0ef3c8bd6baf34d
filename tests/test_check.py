"""clipsearch check [--repair]: LanceDB's known failure modes, found and mended, and what was lost
restored by indexing again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_store import FakeEncoder, solid_image
from typer.testing import CliRunner

from clipsearch.collection import open_store
from clipsearch.errors import StoreError
from clipsearch.store.check import check_store
from clipsearch.store.ann import KIND


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIPSEARCH_STORE", raising=False)
    monkeypatch.delenv("CLIPSEARCH_ANN_THRESHOLD", raising=False)


def _indexed(tmp_path: Path, n: int = 12, *, batch_size: int = 4):
    photos = tmp_path / "photos"
    for i in range(n):
        solid_image(photos / f"img{i:02d}.png", (20 * i, 255 - 20 * i, 60), noise=8, seed=i)
    store = open_store(tmp_path / "store", model=FakeEncoder())
    store.add([photos], workers=0, batch_size=batch_size)
    return store.root, photos


def _table(root: Path, name: str) -> Path:
    return root / "lance" / f"{name}.lance"


def _newest_manifest(root: Path, name: str) -> Path:
    return min(_table(root, name).glob("_versions/*.manifest"), key=lambda p: int(p.stem))


def _reindex(root: Path, photos: Path):
    return open_store(root, model=FakeEncoder()).add([photos], workers=0, batch_size=4)


def test_a_sound_store_is_sound(tmp_path: Path) -> None:
    root, _ = _indexed(tmp_path)
    report = check_store(root)
    assert report.ok and report.problems == [] and report.counts == {"items": 12, "files": 12}


@pytest.mark.parametrize("damage", ["zero-byte", "truncated"])
def test_a_cut_manifest_is_rolled_back_and_indexing_again_restores_the_rows(tmp_path: Path, damage: str) -> None:
    root, photos = _indexed(tmp_path)
    solid_image(photos / "late.png", "white", noise=8, seed=77)
    _reindex(root, photos)  # a second run adds one row
    manifest = _newest_manifest(root, "items")
    manifest.write_bytes(b"" if damage == "zero-byte" else manifest.read_bytes()[: manifest.stat().st_size // 2])

    with pytest.raises(StoreError, match=r"cannot be read .*; check and repair it with: clipsearch check --store .* --repair$"):
        open_store(root, model=FakeEncoder())
    found = check_store(root)
    assert not found.ok and [p.where for p in found.problems] == ["items"]
    repaired = check_store(root, repair=True)
    assert repaired.ok
    assert repaired.lost == ["items: rows only its unreadable newest version held, if any (index again to restore them)"]
    assert len(open_store(root, model=FakeEncoder())) == 13  # the copy indexing kept of the newest version: nothing lost
    again = _reindex(root, photos)
    assert (again.added, again.unchanged) == (0, 13) and check_store(root).ok


def test_a_missing_data_file_loses_its_rows_until_indexing_again(tmp_path: Path) -> None:
    root, photos = _indexed(tmp_path, n=8, batch_size=4)  # two commits of 4 rows: two data files
    data = sorted((_table(root, "items") / "data").iterdir())
    assert len(data) == 2
    data[0].unlink()

    found = check_store(root)
    assert [p.what for p in found.problems] == ["1 data file(s) of version %d are missing or cannot be read (4 rows)" % _version(root)]
    repaired = check_store(root, repair=True)
    assert repaired.ok and repaired.lost == ["items: 4 rows whose data file was missing (index again to restore them)"]
    assert any(p.where == "files" and p.fixed for p in repaired.problems)  # their file records, dropped too
    assert len(open_store(root, model=FakeEncoder())) == 4
    assert _reindex(root, photos).added == 4
    assert check_store(root).ok


def _version(root: Path) -> int:
    import lance

    return lance.dataset(str(_table(root, "items"))).version


def test_a_table_dropped_and_not_created_again_is_recreated(tmp_path: Path) -> None:
    root, photos = _indexed(tmp_path, n=6)
    shutil.rmtree(_table(root, "files") / "_versions")  # what a crash between drop and create leaves

    found = check_store(root)
    assert [p.what for p in found.problems] == ["the files table is missing (dropped and not created again?)"]
    repaired = check_store(root, repair=True)
    assert repaired.ok and repaired.lost == []  # the files table only lets unchanged files be skipped
    assert list((root / "quarantine").rglob("files.lance"))  # what was there is kept aside, not deleted
    again = _reindex(root, photos)
    assert (again.added, again.unchanged, again.embedded) == (0, 6, 0)  # read and hashed, found stored


def test_a_broken_ann_index_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPSEARCH_ANN_THRESHOLD", "40")
    root, _ = _indexed(tmp_path, n=48, batch_size=16)
    assert open_store(root, model=FakeEncoder()).index_state()["kind"] == KIND
    index_file = next(p for p in (root / "ann").iterdir() if p.name != "ann.json")
    index_file.write_bytes(index_file.read_bytes()[:100])

    found = check_store(root)
    assert [p.where for p in found.problems] == ["ann"]
    assert check_store(root, repair=True).ok
    store = open_store(root, model=FakeEncoder())
    assert store.index_state()["kind"] == KIND and len(store.search("red", k=5)) == 5
    assert check_store(root).ok


def test_cli_check(tmp_path: Path) -> None:
    from clipsearch.cli.main import app

    root, _ = _indexed(tmp_path, n=4)
    runner = CliRunner()
    sound = runner.invoke(app, ["check", "--store", str(root)])
    assert sound.exit_code == 0 and f"store {root} is sound (4 items, 4 files)" in sound.stderr
    _newest_manifest(root, "items").write_bytes(b"")
    broken = runner.invoke(app, ["check", "--store", str(root), "--json"])
    assert broken.exit_code == 1
    assert json.loads(broken.stdout)["ok"] is False
    assert f"fix them with: clipsearch check --store {root} --repair" in broken.stderr
    fixed = runner.invoke(app, ["check", "--store", str(root), "--repair"])
    assert fixed.exit_code == 0 and "repaired items:" in fixed.stderr
