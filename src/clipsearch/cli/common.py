"""Pieces every CLI module shares: consoles, one-line failures, common options.

Nothing here imports torch: ``clipsearch --help`` stays instant.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from clipsearch.errors import ClipsearchError

console = Console()  # results, on stdout
err_console = Console(stderr=True, soft_wrap=True)  # progress, summaries and errors, on stderr; one line per message, as logs want

DEFAULT_MODEL_ENV = "CLIPSEARCH_MODEL"
DEFAULT_CLI_MODEL = "demo"  # the bundled offline model; hub models need their weights cached locally

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line on stderr and exit with ``code`` (2: usage, model or input error)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(func: F) -> F:
    """Turn a ClipsearchError (or a caller ValueError) into one line on stderr and exit 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ClipsearchError, ValueError, FileNotFoundError) as exc:
            fail(str(exc) if not isinstance(exc, FileNotFoundError) else f"no such file: {exc.filename}")

    return wrapper  # type: ignore[return-value]


def default_model() -> str:
    """The model a command uses when ``--model`` is not given."""
    return os.environ.get(DEFAULT_MODEL_ENV) or DEFAULT_CLI_MODEL


def load_encoder(model: str | None, weights: str | None = None, backend: str = "torch"):
    """Load ``model`` (or the default) with a spinner on stderr."""
    from clipsearch.models.registry import load_model

    name = model or default_model()
    with err_console.status(f"loading model {name} ...", spinner="dots"):
        return load_model(name, weights=weights, backend=backend)


ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model name: 'demo', 'minilm', a Hugging Face id or folder, 'open_clip:ARCH/TAG'. "
        f"Default: ${DEFAULT_MODEL_ENV}, else 'demo'.",
        show_default=False,
    ),
]
StoreModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model name: 'demo', 'minilm', a Hugging Face id or folder, 'open_clip:ARCH/TAG'. Default: the "
        f"store's model; a new store: ${DEFAULT_MODEL_ENV}, else real CLIP when it can be had, else 'demo' "
        "('minilm' for text alone).",
        show_default=False,
    ),
]
WeightsOption = Annotated[
    str | None,
    typer.Option("--weights", help="Local checkpoint file for 'open_clip:ARCH' models.", show_default=False),
]
StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        "-s",
        help="Store folder (default: $CLIPSEARCH_STORE, else a 'clipsearch' folder in your data directory).",
        show_default=False,
    ),
]
BackendOption = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="Run the model with torch, onnx (ONNX Runtime; int8 where its quality guard passes) or auto "
        "(onnx where it can be had). Default: $CLIPSEARCH_BACKEND, else auto. Vectors of both are comparable.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.", metavar="")]
