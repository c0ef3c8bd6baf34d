"""``clipsearch evaluate demo``: every quality bar of the demo model, on fresh eval-split worlds.

Mounted by :mod:`clipsearch.cli.evaluate`; the measuring lives in
:mod:`clipsearch.train.quality`.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from clipsearch.cli.common import JsonOption, console, err_console, handle_errors

if TYPE_CHECKING:
    from clipsearch.events import Event

DEFAULT_QUALITY_MODEL = "demo"


@handle_errors
def evaluate_demo_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="Model to measure: 'demo' or a folder written by clipsearch train.")] = DEFAULT_QUALITY_MODEL,
    seed: Annotated[int, typer.Option("--seed", help="World seed; scenes come from a stream that training never uses.")] = 1,
    as_json: JsonOption = False,
    n_gallery: Annotated[int, typer.Option("--n-gallery", min=10, help="Captioned scenes in the retrieval gallery.")] = 1000,
    n_scenes: Annotated[int, typer.Option("--n-scenes", min=5, help="Scenes in the gallery of the phrasing queries.")] = 400,
    n_single: Annotated[int, typer.Option("--n-single", min=1, help="Single-object images for zero-shot (and as many of held-out pairs).")] = 400,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images or texts per forward pass.")] = 64,
) -> None:  # fmt: skip
    """Measure the demo model's quality bars on fresh eval-split scenes drawn in memory.

    Retrieval recall@1/10 with the gallery's own captions; zero-shot shape
    and colour on single objects; held-out colour-shape pairs (retrieval
    P@10, 88-way classification); eval-only vs train phrasings (P@5).
    Prints metric, value, target and pass/fail; the exit code is 0 whether
    or not the targets are met.
    """
    from clipsearch.models.registry import load_model
    from clipsearch.train.quality import evaluate_demo_quality

    started = time.perf_counter()
    with err_console.status(f"loading model {model} ...", spinner="dots") as status:

        def show_stage(event: Event) -> None:
            if event.kind == "message":
                status.update(event.message + " ...")

        encoder = load_model(model)
        result = evaluate_demo_quality(
            encoder, seed=seed, n_gallery=n_gallery, n_scenes=n_scenes, n_single=n_single,
            batch_size=batch_size, on_progress=show_stage,
        )  # fmt: skip
    if as_json:
        typer.echo(json.dumps(result))
    else:
        print_quality(result)
    err_console.print(f"measured in {time.perf_counter() - started:.0f} s", highlight=False)


def print_quality(result: dict[str, Any]) -> None:
    """The Rich table of :func:`~clipsearch.train.quality.evaluate_demo_quality`'s result."""
    from rich.table import Table

    sizes = result["sizes"]
    table = Table(
        title=f"demo quality of {result['model']} (seed {result['seed']}; gallery {sizes['n_gallery']}, "
        f"scenes {sizes['n_scenes']}, single objects {sizes['n_single']})"
    )
    table.add_column("section")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_column("result")
    last = None
    for m in result["metrics"].values():
        target = "-" if m["target"] is None else f"{m['op']} {m['target']:.2f}"
        verdict = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[dim]info[/]"}[m["passed"]]
        table.add_row(m["section"] if m["section"] != last else "", m["name"], f"{m['value']:.3f}", target, verdict)
        last = m["section"]
    console.print(table)
    for note in result.get("notes", []):
        console.print(f"[dim]- {note}[/]", highlight=False)
    verdict = "[green]all targets met[/]" if result["all_pass"] else "[red]some targets missed[/]"
    console.print(f"all_pass: {str(result['all_pass']).lower()} ({verdict})")
