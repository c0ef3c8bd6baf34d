"""``clipsearch evaluate classify|localize|retrieval|qa``: each metric lives beside its feature."""

from __future__ import annotations

import importlib

import typer

# subcommand -> (module, function); each function is a Typer-annotated command.
_COMMANDS = {
    "classify": ("clipsearch.cli.tasks", "evaluate_classify_cmd"),
    "localize": ("clipsearch.cli.tasks", "evaluate_localize_cmd"),
    "retrieval": ("clipsearch.cli.train", "evaluate_retrieval_cmd"),
    "qa": ("clipsearch.cli.qa", "evaluate_qa_cmd"),
    "demo": ("clipsearch.cli.quality", "evaluate_demo_cmd"),
}


def register(app: typer.Typer) -> None:
    evaluate = typer.Typer(help="Measure a model on your own data.", no_args_is_help=True)
    for name, (module, func) in _COMMANDS.items():
        try:
            command = getattr(importlib.import_module(module), func)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        evaluate.command(name)(command)
    app.add_typer(evaluate, name="evaluate")
