"""The ``clipsearch`` command: a thin dispatcher over the library.

Each feature area registers its commands from its own module; every command calls the same
functions a Python user calls.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import warnings
from typing import Annotated

import typer

from clipsearch.cli import demo, embed, evaluate, qa, serve, store, tasks, train

# Pillow warns about files the loader then refuses or repairs with a reason of its own; on a
# terminal those warnings only bury the summary.
warnings.filterwarnings("ignore", category=UserWarning, module="PIL")

app = typer.Typer(
    name="clipsearch",
    help="Search and organise images and text by meaning with CLIP-style dual encoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from clipsearch.version import __version__

        typer.echo(f"clipsearch {__version__}")
        raise typer.Exit()


@app.callback()
def _everywhere(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.", metavar="")
    ] = False,
) -> None:
    """Search and organise images and text by meaning with CLIP-style dual encoders."""
    _show_library_log()


def _show_library_log() -> None:
    """Show what the library announces on its logger (a model downloaded on first use) on
    stderr, one plain line each; and keep the Hugging Face Hub's own download bars to a terminal."""
    logger = logging.getLogger("clipsearch")
    if not any(getattr(h, "clipsearch_cli", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.clipsearch_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    if not sys.stderr.isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at each record (a test runner swaps it per command)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # not setStream: that flushes the old stream, which may be closed
        super().emit(record)


# Each feature module adds its commands, in the order `clipsearch --help` lists them. None of
# them imports torch at module level, so the help stays instant.
for _area in (embed, store, tasks, qa, train, serve, evaluate, demo):
    _area.register(app)


def reflow(doc: str) -> str:
    """A docstring as help text that reads well at any terminal width: the lines of each
    paragraph joined, so the terminal wraps them, not the source's line breaks. Paragraphs that
    are lists or indented blocks keep their lines."""
    out = []
    for para in inspect.cleandoc(doc).split("\n\n"):
        lines = para.splitlines()
        if any(line.lstrip().startswith(("- ", "* ", "$ ", "clipsearch ")) or line.startswith(" ") for line in lines):
            out.append(para)
        else:
            out.append(" ".join(line.strip() for line in lines))
    return "\n\n".join(out)


def _reflow_help(typer_app: typer.Typer) -> None:
    for info in typer_app.registered_commands:
        if info.help is None and info.callback is not None and info.callback.__doc__:
            info.help = reflow(info.callback.__doc__)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _reflow_help(group.typer_instance)


_reflow_help(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
