"""Disk use: after indexing, a store holds its current rows and nothing of older versions."""

from __future__ import annotations

from pathlib import Path

import lance
import pytest
from test_store import FakeEncoder, solid_image

from clipsearch.collection import open_store


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIPSEARCH_STORE", raising=False)
    monkeypatch.delenv("CLIPSEARCH_ANN_THRESHOLD", raising=False)


def _data_files(table: Path) -> set[str]:
    return {p.name for p in (table / "data").iterdir()}


def _files_in_use(table: Path) -> set[str]:
    ds = lance.dataset(str(table))
    return {f.path for frag in ds.get_fragments() for f in frag.data_files()}


def test_indexing_leaves_no_old_versions_behind(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for i in range(60):
        solid_image(photos / f"img{i:03d}.png", (i * 4, 255 - i * 4, 128), noise=8, seed=i)
    store = open_store(tmp_path / "store", model=FakeEncoder())
    store.add([photos], workers=0, batch_size=4)  # 15 commits of items, and of files
    for victim in sorted(photos.iterdir())[:10]:
        victim.unlink()
    store.add([photos], workers=0, batch_size=4, prune=True)  # deletes too

    for name in ("items", "files"):
        table = tmp_path / "store" / "lance" / f"{name}.lance"
        # the newest version and its copy (a fallback for a manifest cut short), over the same files
        assert len(list((table / "_versions").glob("*.manifest"))) == 2, f"{name}: older versions kept"
        assert _data_files(table) == {Path(p).name for p in _files_in_use(table)}, f"{name}: unused data files kept"
    stats = store.stats()
    assert stats["count"] == 50
    assert stats["rows_bytes"] <= stats["size_bytes"]
