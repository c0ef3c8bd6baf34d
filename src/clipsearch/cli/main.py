"""The ``clipsearch`` command: a thin dispatcher over the library.

Each feature area registers its commands from its own module; every command calls the same
functions a Python user calls.
"""

from __future__ import annotations

import importlib
import warnings

import typer

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

# Feature modules, each with register(app). Imported here (cheap: none imports torch at module level).
_AREAS = ("embed", "store", "tasks", "qa", "train", "serve", "evaluate", "demo")

for _area in _AREAS:
    try:
        _module = importlib.import_module(f"clipsearch.cli.{_area}")
    except ModuleNotFoundError as exc:  # an area not built yet; never hide a missing dependency
        if exc.name != f"clipsearch.cli.{_area}":
            raise
        continue
    _module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
