"""The CLI's first impression: instant help, no heavy imports, one-line errors."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from clipsearch.cli.main import app

runner = CliRunner()


def test_import_and_help_do_not_import_torch():
    code = (
        "import sys, clipsearch, clipsearch.cli.main as m\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(m.app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "heavy = [x for x in ('torch', 'transformers', 'open_clip', 'lancedb', 'sentence_transformers') if x in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_command_has_help():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("embed", "similarity", "info", "index", "search", "stats", "remove", "classify", "localize",
                    "caption", "moderate", "ask", "demo-world", "train", "serve", "demo", "evaluate"):
        assert command in result.output
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0, sub.output


def test_public_api_is_lazy_and_complete():
    import clipsearch

    for name in clipsearch.__all__:
        assert getattr(clipsearch, name) is not None, name


def test_embed_with_nothing_to_do_is_a_usage_error():
    result = runner.invoke(app, ["embed"])
    assert result.exit_code == 2
    assert "nothing to embed" in result.output


def test_missing_path_is_one_line():
    result = runner.invoke(app, ["embed", "/no/such/dir"])
    assert result.exit_code == 2
    assert "no such file or folder: /no/such/dir" in result.output
    assert "Traceback" not in result.output


def test_index_of_a_missing_path_writes_nothing(tmp_path):
    store = tmp_path / "store"
    result = runner.invoke(app, ["index", str(tmp_path / "typo"), "--store", str(store), "--model", "demo", "--prune"])
    assert result.exit_code == 2
    assert f"no such file or folder: {tmp_path / 'typo'}" in result.output and "Traceback" not in result.output
    assert not store.exists()  # no store made for it, and nothing pruned from one
