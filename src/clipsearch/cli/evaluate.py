"""``clipsearch evaluate classify|localize|retrieval|qa``: each metric lives beside its feature."""

from __future__ import annotations

import typer

from clipsearch.cli.qa import evaluate_qa_cmd
from clipsearch.cli.quality import evaluate_demo_cmd
from clipsearch.cli.tasks import evaluate_classify_cmd, evaluate_localize_cmd
from clipsearch.cli.train import evaluate_retrieval_cmd

# subcommand -> its Typer-annotated command, in the order the help lists them
_COMMANDS = {
    "classify": evaluate_classify_cmd,
    "localize": evaluate_localize_cmd,
    "retrieval": evaluate_retrieval_cmd,
    "qa": evaluate_qa_cmd,
    "demo": evaluate_demo_cmd,
}


def register(app: typer.Typer) -> None:
    """Add ``evaluate`` and its subcommands to the ``clipsearch`` app."""
    evaluate = typer.Typer(help="Measure a model on your own data.", no_args_is_help=True)
    for name, command in _COMMANDS.items():
        evaluate.command(name)(command)
    app.add_typer(evaluate, name="evaluate")
