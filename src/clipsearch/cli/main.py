"""The ``clipsearch`` command: a thin dispatcher over the library.

Each feature area registers its commands from its own module; every command calls the same
functions a Python user calls.
"""

from __future__ import annotations

import warnings

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

# Each feature module adds its commands, in the order `clipsearch --help` lists them. None of
# them imports torch at module level, so the help stays instant.
for _area in (embed, store, tasks, qa, train, serve, evaluate, demo):
    _area.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
