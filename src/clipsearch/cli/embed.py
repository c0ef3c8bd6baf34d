"""``clipsearch embed`` and ``clipsearch similarity``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from clipsearch.cli.common import (
    BackendOption,
    JsonOption,
    ModelOption,
    WeightsOption,
    console,
    err_console,
    fail,
    handle_errors,
    load_encoder,
)
from clipsearch.cli.progress import progress_bar


@handle_errors
def embed(
    paths: Annotated[list[Path] | None, typer.Argument(help="Image files or folders (recursive).")] = None,
    text: Annotated[list[str] | None, typer.Option("--text", "-t", help="A text to embed; repeatable.")] = None,
    model: ModelOption = None,
    weights: WeightsOption = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write vectors to FILE.npz or FILE.parquet.")] = None,
    as_json: JsonOption = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=4096)] = 32,
    no_draft: Annotated[bool, typer.Option("--no-draft", help="Decode JPEGs at full size.", metavar="")] = False,
) -> None:
    """Embed images and texts into unit vectors.

    Texts come first, then images, each in the order given. One line per input with --json:
    {"input", "modality", "vector"} or {"input", "modality", "error"}.

    Example:

        clipsearch embed photos/ --text "a red star" --out vectors.parquet
    """
    from clipsearch.embed import embed_inputs, expand_image_paths, save_embeddings

    texts = list(text or [])
    for p in paths or []:
        if not p.exists():
            fail(f"no such file or folder: {p}")
    images = expand_image_paths(paths or [])
    if not texts and not images:
        fail("nothing to embed: give image files or folders, or --text")
    encoder = load_encoder(model, weights)
    total = len(texts) + len(images)
    with progress_bar(total, "embedding") as bar:
        task = bar.add_task("embedding", total=total)
        results = embed_inputs(
            encoder,
            texts=texts,
            images=images,
            batch_size=batch_size,
            draft=not no_draft,
            on_progress=lambda n: bar.advance(task, n),
        )
    if as_json:
        for r in results:
            row: dict = {"input": r.input, "modality": r.modality}
            if r.vector is not None:
                row["vector"] = [round(float(x), 7) for x in r.vector]
            else:
                row["error"] = r.error
            sys.stdout.write(json.dumps(row) + "\n")
    truncated = encoder.count_truncated([t for t in texts if t.strip()]) if texts and encoder.supports("text") else 0
    if truncated:
        err_console.print(
            f"[yellow]note:[/] {truncated} text(s) longer than the model's context of "
            f"{encoder.info.context_length} tokens were truncated (the end-of-text token kept last)",
            highlight=False,
        )
    ok = sum(r.vector is not None for r in results)
    failed = [r for r in results if r.error]
    if out is not None:
        save_embeddings(results, out)
    if not as_json:
        for r in failed:
            err_console.print(f"[yellow]skipped[/] {r.input}: {r.error}", highlight=False)
    where = f" -> {out}" if out else ""
    err_console.print(
        f"embedded {ok} of {total} inputs with {encoder.name} (dim {encoder.dim}); {len(failed)} failed{where}",
        highlight=False,
    )
    if ok == 0:
        raise typer.Exit(1)


@handle_errors
def similarity(
    text: Annotated[list[str] | None, typer.Option("--text", "-t", help="A text; repeatable.")] = None,
    image: Annotated[list[Path] | None, typer.Option("--image", "-i", help="An image file; repeatable.")] = None,
    model: ModelOption = None,
    weights: WeightsOption = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Draw the matrix as a heatmap PNG.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Cosine similarity between texts and images (or between texts, for text models).

    For each image, also the softmax over the texts scaled by the model's logit scale
    (CLIP's logits_per_image): zero-shot probabilities.

    Example:

        clipsearch similarity --text "a red star" --image a.jpg --image b.png --out heatmap.png
    """
    from clipsearch.similarity import similarity_table

    texts = list(text or [])
    images = list(image or [])
    if not texts:
        fail("give at least one --text")
    for p in images:
        if not p.exists():
            fail(f"no such file: {p}")
    encoder = load_encoder(model, weights)
    table = similarity_table(encoder, texts=texts, images=images)
    if out is not None:
        from clipsearch.viz.heatmap import similarity_heatmap

        similarity_heatmap(table, out)
    if as_json:
        sys.stdout.write(json.dumps(table.to_dict()) + "\n")
    else:
        _print_table(table)
    if out is not None:
        err_console.print(f"heatmap written to {out}")


def _print_table(table) -> None:
    from rich.table import Table

    cols = table.column_labels
    t = Table(title=f"cosine similarity ({table.model})", show_lines=False)
    t.add_column("text")
    for c in cols:
        t.add_column(_short(c), justify="right")
    for i, label in enumerate(table.row_labels):
        t.add_row(_short(label, 48), *[f"{x:.3f}" for x in table.cosine[i]])
    console.print(t)
    if table.probs is not None:
        p = Table(title=f"softmax over texts per image (logit scale {table.logit_scale:.1f})")
        p.add_column("text")
        for c in cols:
            p.add_column(_short(c), justify="right")
        for i, label in enumerate(table.row_labels):
            p.add_row(_short(label, 48), *[f"{x:.1%}" for x in table.probs[i]])
        console.print(p)
    for c, e in table.errors.items():
        err_console.print(f"[yellow]skipped[/] {c}: {e}", highlight=False)


def _plain(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _short(s: str, n: int = 24) -> str:
    s = Path(s).name if "/" in s and len(s) > n else s
    return s if len(s) <= n else s[: n - 1] + "…"


@handle_errors
def info(
    model: ModelOption = None, weights: WeightsOption = None, backend: BackendOption = None, as_json: JsonOption = False
) -> None:
    """What a model reports about itself: dimension, modalities, context length, preprocessing.

    Example:

        clipsearch info --model openai/clip-vit-base-patch32 --json
    """
    from clipsearch.models.registry import default_backend, describe

    encoder = load_encoder(model, weights, backend or default_backend())
    described = describe(encoder)
    bundle = getattr(encoder, "bundle", None)
    described["runtime"] = "onnx" if bundle is not None else "torch"
    if bundle is not None:
        described["onnx"] = {"bundle": bundle.get("key"), "guard": bundle.get("guard"), "precision": encoder.precision()}
    if as_json:
        sys.stdout.write(json.dumps(described) + "\n")
        return
    from rich.table import Table

    table = Table(show_header=False, title=described["name"], title_justify="left")
    for key in ("backend", "dim", "modalities", "context_length", "logit_scale"):
        value = described[key]
        table.add_row(key, _plain(value))
    for key, value in (described["preprocess"] or {}).items():
        table.add_row(f"preprocess.{key}", _plain(value))
    table.add_row("runtime", described["runtime"])
    if "onnx" in described:
        from clipsearch.cli.store import onnx_line

        table.add_row("onnx", onnx_line(described["onnx"]))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command()(embed)
    app.command()(similarity)
    app.command()(info)
