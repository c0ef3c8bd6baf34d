"""``clipsearch demo-world``, ``clipsearch train`` and ``clipsearch evaluate retrieval``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from clipsearch.cli.common import JsonOption, ModelOption, console, default_model, err_console, handle_errors
from clipsearch.cli.progress import rendered_progress

if TYPE_CHECKING:
    from clipsearch.events import Event, ProgressCallback

DEMO_WORLD = "demo-world"  # same value as clipsearch.train.data.DEMO_WORLD (no heavy import here)


STUDY_PANEL = "Training study (demo world; see docs/demo-model.md)"
SHAPE_PANEL = "A new dual encoder's shape"

@handle_errors
def demo_world_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to write the images and metadata.jsonl into.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of images.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="World seed: the same seed gives the same files.")] = 0,
    split: Annotated[
        str, typer.Option("--split", help="train, or eval (held-out colour-shape pairs and phrasings).")
    ] = "train",
    min_side: Annotated[int, typer.Option("--min-side", min=16, help="Smallest image side in pixels.")] = 160,
    max_side: Annotated[int, typer.Option("--max-side", min=16, help="Largest image side in pixels.")] = 640,
) -> None:
    """Generate a world of captioned shape scenes with exact ground truth (boxes, attributes).

    Example:

        clipsearch demo-world worlds/train --n 5000 --split train
    """
    import sys

    from clipsearch.cli.progress import rendered_progress
    from clipsearch.world import generate_world

    with rendered_progress(n >= 50 and sys.stderr.isatty()) as on_progress:  # a bar in a terminal; nothing in a log
        meta = generate_world(out, n, seed=seed, split=split, size_range=(min_side, max_side), on_progress=on_progress)
    err_console.print(f"wrote {n} images and {meta}")


@handle_errors
def train_cmd(
    pairs: Annotated[str, typer.Option("--pairs", help="Folder with metadata.jsonl, a .csv/.jsonl with image and caption columns, or 'demo-world' (scenes drawn on the fly).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder; it loads with --model OUT.")],
    base: Annotated[str | None, typer.Option("--base", help="Fine-tune this model instead of building towers: a Hugging Face CLIP checkpoint (folder or cached hub id), or a dual-encoder folder from clipsearch train (its architecture comes along).")] = None,
    image_tower: Annotated[str, typer.Option("--image-tower", help="cnn (small, with coordinate channels), resnet18 or vit; trained from scratch.")] = "cnn",
    text_tower: Annotated[str, typer.Option("--text-tower", help="'minilm' (the bundled all-MiniLM-L6-v2), a Hugging Face folder or a cached hub id.")] = "minilm",
    freeze_text: Annotated[bool | None, typer.Option("--freeze-text/--train-text", help="Keep the text tower fixed (its token states are cached) or fine-tune it. Default: frozen for --text-tower, trained with a CLIP --base, as it was for a dual-encoder --base.", show_default=False)] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Optimizer steps (required with demo-world).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Passes over file pairs when --steps is not given.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2)] = 128,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate (default 2e-3 for towers, 1e-5 with a CLIP --base, 3e-4 with a dual-encoder --base).")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    eval_pairs: Annotated[str | None, typer.Option("--eval-pairs", help="Held-out pairs to measure recall@1/5/10 on, or 'demo-world' (its eval split).")] = None,
    eval_every: Annotated[int, typer.Option("--eval-every", min=1, help="Steps between evaluations and checkpoints.")] = 500,
    eval_size: Annotated[int, typer.Option("--eval-size", min=2, help="Scenes in the demo-world eval set.")] = 500,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint with the same options.", metavar="")] = False,
    minutes: Annotated[float | None, typer.Option("--minutes", help="Stop with a checkpoint after this many minutes.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Torch threads for the training step.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="Where to train: cpu, cuda, cuda:N, mps or auto (the first GPU, else the CPU). Default: $CLIPSEARCH_DEVICE, else cpu.", show_default=False)] = None,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Processes preparing batches ahead of the training step.")] = 0,
    caption_pool: Annotated[int, typer.Option("--caption-pool", rich_help_panel=STUDY_PANEL, min=0, help="demo-world: distinct captions drawn once (0: a fresh caption per scene).")] = 20000,
    twins: Annotated[float, typer.Option("--twins", rich_help_panel=STUDY_PANEL, min=0.0, max=0.5, help="demo-world: share of each batch's images that are twins of captioned scenes (same layout), as hard negatives.")] = 0.0,
    object_queries: Annotated[int, typer.Option("--object-queries", rich_help_panel=STUDY_PANEL, min=0, help="demo-world: single-object queries in train phrasings ('a photo of a red star') added to each batch for pairs its scenes hold, matching every image that holds such an object.")] = 0,
    pool_positions: Annotated[bool, typer.Option("--pool-positions", rich_help_panel=STUDY_PANEL, help="Dual encoders: the attention pool adds a learned embedding of each grid cell's place, so the image vector can tell where its objects are (added at zero to a --base that lacks it).", metavar="")] = False,
    twin_kind: Annotated[str, typer.Option("--twin-kind", rich_help_panel=STUDY_PANEL, help="demo-world: what a twin changes: 'binding' (colours on other shapes) or 'contrast' (a position, size or binding its scene's caption names, so the caption is false of it).")] = "binding",
    soft_targets: Annotated[bool, typer.Option("--soft-targets", rich_help_panel=STUDY_PANEL, help="demo-world: weigh each positive by how likely the generator is to caption that scene so, instead of 1 for every scene a caption is true of.", metavar="")] = False,
    negatives: Annotated[bool, typer.Option("--negatives", rich_help_panel=STUDY_PANEL, help="demo-world: add each caption's binding-swapped twin ('a blue star and a red circle' for 'a red star and a blue circle') as a hard-negative caption.", metavar="")] = False,
    text_layers: Annotated[int, typer.Option("--text-layers", rich_help_panel=STUDY_PANEL, min=0, help="Trainable transformer layers in the text head, before pooling (lets the text side bind colours to shapes; added as the identity to a --base without them).")] = 0,
    text_positions: Annotated[bool, typer.Option("--text-positions", rich_help_panel=STUDY_PANEL, help="Dual encoders: the text head adds a learned embedding of each token's index, so its layers see word order (added at zero to a --base that lacks it).", metavar="")] = False,
    lock_image: Annotated[bool, typer.Option("--lock-image", rich_help_panel=STUDY_PANEL, help="Train the text side only, as in LiT: the image side (weights and batch-norm statistics) stays exactly as the --base left it.", metavar="")] = False,
    attend_objects: Annotated[float, typer.Option("--attend-objects", rich_help_panel=STUDY_PANEL, min=0.0, help="demo-world: weight of a loss that draws the attention pool's cell weights to the objects' boxes, so the image vector is about the objects and where they are; with --pool-positions, the cell-place embeddings start random rather than at zero.")] = 0.0,
    image_size: Annotated[int | None, typer.Option("--image-size", rich_help_panel=SHAPE_PANEL, min=8, help="Model input side in pixels (default: 64 cnn/vit, 128 resnet18).")] = None,
    embed_dim: Annotated[int, typer.Option("--embed-dim", rich_help_panel=SHAPE_PANEL, min=2, help="Joint space dimension.")] = 256,
    pool: Annotated[str, typer.Option("--pool", rich_help_panel=SHAPE_PANEL, help="Image grid pooling: attention or mean.")] = "attention",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.", metavar="")] = True,
) -> None:  # fmt: skip
    """Train a CLIP-style dual encoder with a symmetric contrastive loss.

    Writes the model (clipsearch_model.json + safetensors), OUT/checkpoint, OUT/history.jsonl
    and OUT/training_curves.png.

    Example:

        clipsearch train --pairs pairs.csv --out my-model --base openai/clip-vit-base-patch32
    """
    from clipsearch.train.trainer import TrainOptions, train

    with _training_output(progress) as on_progress:
        result = train(
            TrainOptions(
                pairs=pairs, out=str(out), base=base, image_tower=image_tower, text_tower=text_tower,
                freeze_text=freeze_text, steps=steps, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                eval_pairs=eval_pairs, eval_every=eval_every, eval_size=eval_size, resume=resume, minutes=minutes,
                threads=threads, device=device, workers=workers, caption_pool=caption_pool, twins=twins, twin_kind=twin_kind,
                soft_targets=soft_targets, negatives=negatives, object_queries=object_queries,
                text_layers=text_layers, text_positions=text_positions, attend_objects=attend_objects, lock_image=lock_image, image_size=image_size, embed_dim=embed_dim, pool=pool,
                pool_positions=pool_positions, progress=progress,
            ),
            on_progress,
            transformers_bars=sys.stderr.isatty(),  # their shard bar in a terminal; none in a log
        )  # fmt: skip
    state = "finished" if result.finished else "stopped early (--resume continues)"
    loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
    err_console.print(
        f"{state}: step {result.step} of {result.steps}, loss {loss}, {result.images_per_second:.0f} img/s; "
        f"model in {result.out}"
    )
    if result.eval:
        _print_recall(result.eval)


@contextmanager
def _training_output(progress: bool) -> Iterator[ProgressCallback]:
    """Shows the trainer's events (:mod:`clipsearch.train.trainer`) on stderr.

    In a terminal, with ``progress``: a bar per task, the training bar showing the numbers of
    the last logged window. In a log: each logged window is a line of its own, no carriage
    returns. Evaluations and notices are a line either way, and every line is the trainer's own
    words, as a log parser reads them ("step 120 of 3500: loss 3.2749, ...").
    """
    bars = progress and sys.stderr.isatty()
    with rendered_progress(bars, bars=True) as draw:

        def on_event(event: Event) -> None:
            window = "loss" in event.data  # a logged window's numbers: the bar shows them
            if event.kind == "message" and not (window and draw is not None):
                err_console.print(event.message, markup=False, highlight=False, soft_wrap=True)
            elif draw is not None:
                draw(event)

        yield on_event


def _print_recall(metrics: dict) -> None:
    from rich.table import Table

    table = Table(title=f"retrieval recall over {metrics['n']} pairs")
    table.add_column("direction")
    for k in ("R@1", "R@5", "R@10"):
        table.add_column(k, justify="right")
    rows = [("text -> image", "text_to_image"), ("image -> text", "image_to_text")]
    if "text_to_image_vectors" in metrics:  # re-ranked as search ranks; the vectors' own beside it
        rows[0] = ("text -> image (grid re-rank, as search)", "text_to_image")
        rows.insert(1, ("text -> image (vectors alone)", "text_to_image_vectors"))
    for label, key in rows:
        row = metrics[key]
        table.add_row(label, *(f"{row[k]:.3f}" for k in ("R@1", "R@5", "R@10")))
    console.print(table)


@handle_errors
def evaluate_retrieval_cmd(
    pairs: Annotated[str, typer.Option("--pairs", help="Folder with metadata.jsonl, a .csv/.jsonl with image and caption columns, or 'demo-world' (its eval split, drawn in memory).")],
    model: ModelOption = None,
    as_json: JsonOption = False,
    n: Annotated[int, typer.Option("--n", min=2, help="demo-world: number of scenes.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="demo-world: world seed.")] = 0,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N pairs of a file.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    rerank: Annotated[bool | None, typer.Option("--rerank/--no-rerank", help="Rank text->image as search does by default, the best 20 re-scored by their grid cells (default: when the model has a grid).", show_default=False)] = None,
) -> None:  # fmt: skip
    """Recall@1/5/10 text->image and image->text over image-caption pairs.

    Every caption queries all the images and every image all the captions; a hit is the pair's
    own partner, or a pair with an identical caption or the same image file. For a model with
    a grid, text->image is ranked as `clipsearch search` ranks a store (and by the vectors alone).

    Example:

        clipsearch evaluate retrieval --model my-model --pairs worlds/eval
    """
    from clipsearch.models.registry import load_model
    from clipsearch.train.evaluate import evaluate_retrieval

    name = model or default_model()
    with err_console.status(f"loading model {name} ...", spinner="dots"):
        encoder = load_model(name)
    metrics = evaluate_retrieval(encoder, pairs, n=n, seed=seed, limit=limit, batch_size=batch_size, rerank=rerank)
    if as_json:
        typer.echo(json.dumps({"model": encoder.name, "pairs": pairs, **metrics}))
    else:
        _print_recall(metrics)
        if metrics.get("skipped"):
            err_console.print(f"{metrics['skipped']} images could not be decoded and were left out")


def register(app: typer.Typer) -> None:
    app.command("demo-world")(demo_world_cmd)
    app.command("train")(train_cmd)
