"""Odd things on a real disk: names that are not UTF-8, FIFOs and devices, folders that cannot be
listed, files that change while they are read. None stops or hangs a run; each is stored or
refused with a reason."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from test_store import FakeEncoder, solid_image

from clipsearch.collection import open_store
from clipsearch.store import schema as sch

LATIN1_NAME = b"caf\xe9_latin1.png"  # a name written by an older system: not UTF-8


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIPSEARCH_STORE", raising=False)
    monkeypatch.delenv("CLIPSEARCH_ANN_THRESHOLD", raising=False)


def _latin1_file(folder: Path) -> str:
    """Write an image under a name that is not UTF-8; returns the path as Python names it."""
    folder.mkdir(parents=True, exist_ok=True)
    solid_image(folder / "tmp.png", "blue", noise=8, seed=7)
    raw = os.path.join(os.fsencode(folder), LATIN1_NAME)
    os.rename(folder / "tmp.png", raw)
    return os.fsdecode(raw)


def _run_with_deadline(fn, seconds: float = 120):
    """Run ``fn`` in a thread; fail (not hang) when it has not returned in ``seconds``."""
    out: dict = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: the run hangs"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_stored_paths_round_trip_any_name() -> None:
    for path in ["/a/b.png", "/a/caf\udce9.png", "a\\b", "a\\x41", "\\xe9", "é/ü.png", "/x/\\\\\udcff", ""]:
        stored = sch.stored_path(path)
        stored.encode("utf-8")  # what an Arrow string column needs
        assert sch.real_path(stored) == path
    assert sch.stored_path("/plain/ascii.png") == "/plain/ascii.png"  # ordinary names are untouched


def test_a_name_that_is_not_utf8_is_indexed_searched_shown_and_removed(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    odd = _latin1_file(photos)
    solid_image(photos / "plain.png", "red", noise=8, seed=1)
    store = open_store(tmp_path / "store", model=FakeEncoder())

    summary = store.add([photos], workers=0)
    assert (summary.added, summary.failed) == (2, 0), summary.failures
    assert store.add([photos], workers=0).unchanged == 2  # recorded under its real name: skipped unread

    hits = store.search(Path(odd), k=2, modality="image")
    assert hits[0].path == odd and os.path.exists(hits[0].path)  # the real name, openable
    shown = hits[0].to_dict()["path"]
    assert shown.endswith("caf\\xe9_latin1.png")
    json.dumps(hits[0].to_dict(), ensure_ascii=False).encode("utf-8")  # printable, as --json and the API need
    assert store.get(hits[0].id).path == odd

    assert store.remove([odd]) == 1
    assert len(store) == 1 and store.stats()["files"] == 1


def test_cli_index_over_a_name_that_is_not_utf8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from clipsearch.cli.main import app

    monkeypatch.setattr("clipsearch.models.registry.load_model", lambda name, **kw: FakeEncoder())
    photos = tmp_path / "photos"
    _latin1_file(photos)
    os.mkfifo(photos / "x.jpg")
    result = CliRunner().invoke(app, ["index", str(photos), "--store", str(tmp_path / "store"), "--model", "fake", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1]) == {"added": 1, "updated": 0, "unchanged": 0, "failed": 1, "removed": 0}
    assert "x.jpg: not a regular file (a FIFO)" in result.stderr


def test_fifos_and_links_to_devices_are_refused_without_hanging(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    solid_image(photos / "good.png", "green", noise=8, seed=2)
    os.mkfifo(photos / "x.jpg")  # no writer: opening it would block forever
    os.symlink("/dev/zero", photos / "y.jpg")  # endless bytes
    (photos / "notes.jsonl").unlink(missing_ok=True)
    os.mkfifo(photos / "table.jsonl")  # a FIFO among the text documents too
    store = open_store(tmp_path / "store", model=FakeEncoder())

    summary = _run_with_deadline(lambda: store.add([photos], workers=2))
    reasons = {Path(f.path).name: f.reason for f in summary.failures}
    assert reasons == {
        "x.jpg": "not a regular file (a FIFO)",
        "y.jpg": "not a regular file (a character device)",
        "table.jsonl": "not a regular file (a FIFO)",
    }
    assert summary.added == 1


def test_a_folder_that_cannot_be_listed_is_a_failure_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests run as root, where chmod binds nothing, so listing the folder is made to fail."""
    photos = tmp_path / "photos"
    solid_image(photos / "a.png", "red", noise=8, seed=1)
    solid_image(photos / "locked" / "b.png", "blue", noise=8, seed=2)
    real_scandir = os.scandir

    def scandir(path=".", *args):  # type: ignore[no-untyped-def]
        if Path(os.fsdecode(path)) == photos / "locked":
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real_scandir(path, *args)

    monkeypatch.setattr(os, "scandir", scandir)
    summary = open_store(tmp_path / "store", model=FakeEncoder()).add([photos], workers=0)
    assert summary.added == 1
    assert [f.to_dict() for f in summary.failures] == [
        {"path": str(photos / "locked"), "reason": "cannot list folder: permission denied"}
    ]


def _fstat_with_mtimes(monkeypatch: pytest.MonkeyPatch, shift) -> dict:
    """Make the decode stage's ``os.fstat`` report ``st_mtime_ns + shift(call number)``; returns the call count."""
    import types

    import clipsearch.ingest.decode as decode

    real_fstat = os.fstat
    calls = {"n": 0}

    def fstat(fd):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        st = real_fstat(fd)
        return types.SimpleNamespace(st_mode=st.st_mode, st_size=st.st_size, st_mtime_ns=st.st_mtime_ns + shift(calls["n"]))

    monkeypatch.setattr(decode.os, "fstat", fstat)
    return calls


def test_a_file_that_keeps_changing_while_read_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import clipsearch.ingest.decode as decode

    path = tmp_path / "growing.png"
    solid_image(path, "red", noise=8, seed=1)
    calls = _fstat_with_mtimes(monkeypatch, lambda n: n)  # a new mtime at every look
    prep = decode.prepare_image(str(path), FakeEncoder().info.preprocess, known_ids=frozenset())
    assert prep.error == "the file kept changing while it was read (still being written?)"
    assert calls["n"] == 2 * decode.READ_ATTEMPTS


def test_a_file_read_once_mid_change_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import clipsearch.ingest.decode as decode

    path = tmp_path / "settling.png"
    solid_image(path, "red", noise=8, seed=1)
    calls = _fstat_with_mtimes(monkeypatch, lambda n: 1 if n == 2 else 0)  # the first read ends on another version
    assert decode.read_file(str(path)) == path.read_bytes()
    assert calls["n"] == 4


def _hang_on_slow(original):
    def prepare(path, preprocess, *, known_ids=None):  # type: ignore[no-untyped-def]
        if path.endswith("slow.png"):
            import time

            time.sleep(3600)  # what a file on a stalled network drive looks like from outside
        return original(path, preprocess, known_ids=known_ids)

    return prepare


@pytest.mark.filterwarnings("ignore:lance is not fork-safe", "ignore:lancedb fork support is experimental")
def test_a_file_that_hangs_its_decoder_is_given_up_after_the_time_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import clipsearch.ingest.decode as decode

    monkeypatch.setenv("CLIPSEARCH_MP_CONTEXT", "fork")  # forked workers inherit the patched decoder
    monkeypatch.setenv("CLIPSEARCH_FILE_TIMEOUT", "1")
    monkeypatch.setattr(decode, "prepare_image", _hang_on_slow(decode.prepare_image))
    photos = tmp_path / "photos"
    for i, colour in enumerate(["red", "green", "blue", "white", "yellow"]):
        solid_image(photos / f"img{i}.png", colour, noise=8, seed=i)
    solid_image(photos / "slow.png", "red", noise=8, seed=9)
    store = open_store(tmp_path / "store", model=FakeEncoder())

    summary = _run_with_deadline(lambda: store.add([photos], workers=2, batch_size=2), seconds=90)
    assert [f.to_dict() for f in summary.failures] == [
        {"path": str(photos / "slow.png"), "reason": "took longer than 1 s to read and decode (a stalled drive?); see $CLIPSEARCH_FILE_TIMEOUT"}
    ]
    assert summary.added == 5


def test_a_bad_file_time_limit_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clipsearch.ingest.decode import file_timeout_from_env

    monkeypatch.setenv("CLIPSEARCH_FILE_TIMEOUT", "soon")
    with pytest.raises(ValueError, match=r"^CLIPSEARCH_FILE_TIMEOUT='soon' is not a positive number of seconds$"):
        file_timeout_from_env()
