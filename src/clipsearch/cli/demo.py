"""``clipsearch demo``: the offline tour, printed, then served."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from clipsearch.cli.common import console, err_console, handle_errors

if TYPE_CHECKING:
    from clipsearch.events import Event


@handle_errors
def demo(
    folder: Annotated[Path, typer.Option("--dir", help="Where the demo gallery, store and pictures go.")] = Path(
        "clipsearch-demo"
    ),
    n: Annotated[int, typer.Option("--n", min=10, max=20000, help="Scenes in the demo gallery.")] = 300,
    seed: Annotated[int, typer.Option("--seed", help="World seed: the same seed, the same gallery.")] = 0,
    model: Annotated[str, typer.Option("--model", "-m", help="Model to index with.")] = "demo",
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Serve the search page afterwards.", metavar="")] = True,
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535)] = 8000,
) -> None:
    """Generate a gallery of shape scenes, index it with the demo model, and search it every way.

    Fully offline. Writes DIR/contact_sheet.png (and contact_sheet_rerank.png for a model with
    a grid) and DIR/relevance_map.png, then serves the search page on http://127.0.0.1:PORT/
    (--no-serve to stop after the tour).

    Example:

        clipsearch demo --no-serve
    """
    from rich.markup import escape
    from rich.table import Table

    from clipsearch.cli.progress import rendered_progress
    from clipsearch.demo import TASK, run_demo

    # the tour's steps as lines; bars in a terminal only (no carriage returns in a log)
    with rendered_progress(sys.stderr.isatty()) as bars:

        def on_progress(event: Event) -> None:
            if event.task == TASK and event.kind == "message":
                err_console.print(event.message, highlight=False)
            elif bars is not None:
                bars(event)

        report = run_demo(folder, n=n, seed=seed, model=model, on_progress=on_progress)
    s = report.indexed
    console.print(
        f"[bold]indexed[/] {s['added']} new, {s['updated']} updated, {s['unchanged']} unchanged, "
        f"{s['failed']} failed  ({report.store})",
        highlight=False,
    )
    for ex in report.examples:
        table = Table(title=f"[bold]{ex.direction}[/]: {ex.query}", caption=ex.note or None, title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("score", justify="right")
        table.add_column("result")
        for rank, hit in enumerate(ex.hits, 1):
            shown = hit.text if hit.modality == "text" else f"{Path(hit.path).name}  {_scene(hit)}"
            table.add_row(str(rank), f"{hit.score:.3f}", escape(shown))
        console.print(table)
    cls = Table(title="[bold]zero-shot shape classification[/] ('a photo of a {shape}')", title_justify="left")
    cls.add_column("image")
    cls.add_column("truth")
    cls.add_column("predicted (probability)")
    for image, truth, top in report.classified:
        cls.add_row(Path(image).name, truth, ", ".join(f"{label} {p:.0%}" for label, p in top))
    console.print(cls)
    console.print(f"contact sheet of 'a red circle': {report.contact_sheet}", highlight=False)
    if report.contact_sheet_rerank:
        console.print(f"the same with --rerank 50 --cell-weight 1: {report.contact_sheet_rerank}", highlight=False)
    if report.relevance_map:
        console.print(f"relevance map of '{report.relevance_prompt}': {report.relevance_map}", highlight=False)
    if serve:
        from clipsearch.cli.serve import serve as serve_command

        console.print(f"search it yourself: http://127.0.0.1:{port}/  (Ctrl+C to stop)", highlight=False)
        serve_command(store=str(report.store), port=port, host="127.0.0.1", token=None, cors_origin=None,
                      allowed_host=None, max_body="20MB", log_level="warning")


def _scene(hit) -> str:
    """What a demo scene holds, from the generator's truth, and its caption (often partial)."""
    objects = (getattr(hit, "extra", None) or {}).get("objects") or []
    holds = ", ".join(f"{o.get('color')} {o.get('shape')}" for o in objects if isinstance(o, dict))
    caption = getattr(hit, "caption", None) or ""
    if holds and caption:
        return f"holds {holds}; caption {caption!r}"
    return f"holds {holds}" if holds else f"({caption})"


def register(app: typer.Typer) -> None:
    app.command()(demo)
