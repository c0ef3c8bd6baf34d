"""``clipsearch classify|localize|caption|moderate`` and ``clipsearch evaluate classify|localize``.

Thin: parse options, call :mod:`clipsearch.tasks`, print. Nothing heavy is imported at module
level.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from clipsearch.cli.common import (
    JsonOption,
    ModelOption,
    StoreModelOption,
    StoreOption,
    WeightsOption,
    console,
    err_console,
    fail,
    handle_errors,
    load_encoder,
)
from clipsearch.cli.progress import progress_bar

LabelsOption = Annotated[
    str | None,
    typer.Option("--labels", "-l", help='Comma-separated labels, e.g. "dog,cat,horse".', show_default=False),
]
LabelsFileOption = Annotated[
    Path | None,
    typer.Option("--labels-file", help="A text file with one label per line.", show_default=False),
]
TemplatesOption = Annotated[
    str,
    typer.Option(
        "--templates",
        help="Prompt templates: 'simple' (\"a photo of a {}.\"), 'ensemble' (CLIP's 80 ImageNet prompts) "
        "or a file with one template per line, each containing {}.",
    ),
]
BatchOption = Annotated[int, typer.Option("--batch-size", min=1, max=4096, help="Images per forward pass.")]
ScalesOption = Annotated[
    str,
    typer.Option("--scales", help="Window sides as fractions of the image's short side, comma-separated."),
]
WindowOption = Annotated[
    float | None,
    typer.Option("--window", min=0.01, max=1.0, help="One window size (fraction of the short side); replaces --scales.",
                 show_default=False),
]
StrideOption = Annotated[float, typer.Option("--stride", min=0.05, max=1.0, help="Window step as a fraction of the window side.")]
GridOption = Annotated[int, typer.Option("--grid", min=2, max=256, help="Relevance-map cells along the long side.")]
BoxThresholdOption = Annotated[
    float,
    typer.Option("--box-threshold", min=0.0, max=1.0, help="Box region: cells >= peak - T * (peak - min)."),
]
OverhangOption = Annotated[
    float | None,
    typer.Option("--overhang", min=0.0, max=0.5, show_default=False,
                 help="How far windows reach past the image edge (fraction of their side; default 0.5)."),
]
MethodOption = Annotated[
    str,
    typer.Option("--method", help="'windows' (any model), 'patches' (models with a patch grid, such as demo) or 'auto' "
                 "(patches for a model with a grid unless a window option is given, else windows)."),
]


def _labels(labels: str | None, labels_file: Path | None) -> list[str] | None:
    from clipsearch.tasks.templates import parse_labels, read_labels

    out = parse_labels(labels) if labels else []
    if labels_file is not None:
        out += read_labels(labels_file)
    return out or None


def _window_settings(
    scales: str | None, window: float | None, stride: float | None, box_threshold: float | None, small_objects: bool
) -> dict[str, Any]:
    """The window options, parsed, for :func:`clipsearch.tasks.localize.window_settings`."""
    from clipsearch.tasks.localize import window_settings

    return window_settings(small_objects, scales=_scales(scales, window), stride=stride, box_threshold=box_threshold)


def _scales(scales: str | None, window: float | None) -> tuple[float, ...] | None:
    if window is not None:
        return (window,)
    if scales is None:
        return None
    try:
        return tuple(float(x) for x in scales.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--scales {scales!r} must be comma-separated numbers such as 0.25,0.4,0.6") from None


def _short(name: str, n: int = 40) -> str:
    """A path for a table cell: its tail when long, with Rich markup escaped."""
    from rich.markup import escape

    return escape(name if len(name) <= n else "…" + name[-(n - 1):])


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(str(text))


def _emit(row: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(row) + "\n")


# -- classify -------------------------------------------------------------------------------------


@handle_errors
def classify(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders (recursive).")],
    labels: LabelsOption = None,
    labels_file: LabelsFileOption = None,
    templates: TemplatesOption = "simple",
    top: Annotated[int, typer.Option("-k", "--top-k", "--top", min=1, help="Labels to show per image.")] = 5,
    model: ModelOption = None,
    weights: WeightsOption = None,
    as_json: JsonOption = False,
    batch_size: BatchOption = 32,
) -> None:
    """Zero-shot classify images among your labels.

    Probabilities are a softmax over all labels with the model's logit scale. With --json, one
    line per image: {"image", "predictions": [{"label", "prob"}, ...]} best first, or
    {"image", "error"} for files that could not be read.

    Example:

        clipsearch classify photo.jpg --labels "cat,dog,bird" --templates ensemble
    """
    from clipsearch.embed import expand_image_paths
    from clipsearch.tasks.classify import ZeroShotClassifier

    names = _labels(labels, labels_file)
    if not names:
        fail("give the labels to choose between with --labels \"a,b,c\" or --labels-file FILE")
    images = expand_image_paths(paths)
    if not images:
        fail("no image files found in the given folders")
    encoder = load_encoder(model, weights)
    clf = ZeroShotClassifier(encoder, names, templates)
    with progress_bar(len(images), "classifying") as bar:
        task = bar.add_task("classifying", total=len(images))
        results = clf.classify(images, top=top, batch_size=batch_size, on_progress=lambda n: bar.advance(task, n))
    if as_json:
        for r in results:
            _emit(r.to_dict())
    else:
        _print_predictions(results, min(top, clf.n_classes), encoder.name)
    failed = sum(r.error is not None for r in results)
    err_console.print(
        f"classified {len(results) - failed} of {len(results)} images among {clf.n_classes} labels "
        f"({len(clf.templates)} template{'s' if len(clf.templates) != 1 else ''} each) with {encoder.name}; {failed} failed",
        highlight=False,
    )
    if failed == len(results):
        raise typer.Exit(1)


def _print_predictions(results, top: int, model: str) -> None:
    from rich.table import Table

    t = Table(title=f"zero-shot classification ({model})")
    t.add_column("image", overflow="fold")
    for i in range(top):
        t.add_column("best" if i == 0 else f"#{i + 1}", style="bold" if i == 0 else None)
    for r in results:
        if r.error is not None:
            t.add_row(_short(r.image), f"[red]{_esc(r.error)}[/]", *[""] * (top - 1))
        else:
            t.add_row(_short(r.image), *[f"{_esc(lab)} {p:.1%}" for lab, p in r.top], *[""] * (top - len(r.top)))
    console.print(t)


# -- evaluate classify ---------------------------------------------------------------------------


@handle_errors
def evaluate_classify_cmd(
    dataset: Annotated[
        Path,
        typer.Argument(help="A folder with one subfolder per class, a .jsonl/.json/.csv metadata file, "
                       "or a folder holding metadata.jsonl (a demo world)."),
    ],
    labels: LabelsOption = None,
    labels_file: LabelsFileOption = None,
    templates: TemplatesOption = "simple",
    image_column: Annotated[
        str | None,
        typer.Option("--image-column", help="Metadata key holding the image path (default: image, file or path, whichever the records have).",
                     show_default=False),
    ] = None,
    label_column: Annotated[
        str,
        typer.Option("--label-column", help="Metadata key holding the label; dotted paths reach into records "
                     "(objects.0.shape; objects.*.shape keeps records whose objects agree)."),
    ] = "label",
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Write summary.json, confusion.png and mistakes.png into DIR.", show_default=False),
    ] = None,
    model: ModelOption = None,
    weights: WeightsOption = None,
    as_json: JsonOption = False,
    batch_size: BatchOption = 32,
) -> None:
    """Zero-shot classification accuracy on a labelled image set: top-1, top-5 and per class.

    With --json, one object {"n", "top1", "top5", "per_class": {label: accuracy}, "skipped"}.
    """
    from clipsearch.tasks.evaluate_classify import evaluate_classification, load_labelled_images, write_report

    if not dataset.exists():
        fail(f"no such dataset: {dataset}")
    data = load_labelled_images(dataset, image_column=image_column, label_column=label_column)
    encoder = load_encoder(model, weights)
    with progress_bar(len(data.items), "classifying") as bar:
        task = bar.add_task("classifying", total=len(data.items))
        result = evaluate_classification(
            encoder, data, labels=_labels(labels, labels_file), templates=templates, batch_size=batch_size,
            on_progress=lambda n: bar.advance(task, n),
        )
    if as_json:
        _emit(result.summary())
    else:
        _print_report(result)
    if report is not None:
        files = write_report(result, report)
        err_console.print(f"report written to {report}/ ({', '.join(p.name for p in files.values())})", highlight=False)


def _print_report(r) -> None:
    from rich.table import Table

    t = Table(title=f"{r.model}: zero-shot classification, {r.n} images, {len(r.labels)} labels")
    t.add_column("label")
    t.add_column("images", justify="right")
    t.add_column("accuracy", justify="right")
    for label, acc in sorted(r.per_class.items(), key=lambda kv: (kv[1], kv[0])):
        t.add_row(_esc(label), str(r.support[label]), f"{acc:.1%}")
    console.print(t)
    console.print(f"top-1 accuracy: [bold]{r.top1:.1%}[/]   top-{r.k} accuracy: [bold]{r.top5:.1%}[/]   (n = {r.n})")
    if r.skipped:
        err_console.print(f"[yellow]skipped {len(r.skipped)} items[/] (first: {_esc(r.skipped[0][0])}: {_esc(r.skipped[0][1])})",
                          highlight=False)


# -- localize ---------------------------------------------------------------------------------------


@handle_errors
def localize(
    image: Annotated[Path, typer.Argument(help="The image to search in.")],
    prompt: Annotated[str, typer.Argument(help='What to find, e.g. "red circle".')],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Save the map drawn over the image as PNG.", show_default=False)
    ] = None,
    as_json: JsonOption = False,
    scales: ScalesOption = None,
    window: WindowOption = None,
    stride: StrideOption = None,
    grid: GridOption = 32,
    box_threshold: BoxThresholdOption = None,
    overhang: OverhangOption = None,
    method: MethodOption = "auto",
    small_objects: Annotated[
        bool, typer.Option("--small-objects", help="Smaller windows and a tighter box, for objects a few percent of the image wide.", metavar="")
    ] = False,
    model: ModelOption = None,
    weights: WeightsOption = None,
    batch_size: BatchOption = 64,
) -> None:
    """Where in the image is PROMPT? A relevance map from the model's patch grid or sliding windows.

    The method is the best for the model: small sliding windows for the demo model (its
    pictures hold small objects), the model's own grid of cells for other models with one (one
    pass), multi-scale sliding windows for the rest; window options (--scales, --window,
    --stride, --overhang, --small-objects) or --method choose for you. Each map cell is the
    average (per-scale standardised) cosine of the windows covering it. The box is the region
    around the peak within --box-threshold of it; its score is the cosine of the prompt with
    the box's crop. With --json: {"map": \\[\\[...]], "bbox": \\[x0, y0, x1, y1],
    "score", "peak": \\[x, y], "size": \\[w, h], ...} in pixels of the image after EXIF rotation.

    Example:

        clipsearch localize scene.png "red star" --out overlay.png
    """
    from clipsearch.tasks.classify import load_one
    from clipsearch.tasks.localize import localize as run_localize

    if not image.exists():
        fail(f"no such file: {image}")
    pil = load_one(image)
    encoder = load_encoder(model, weights)
    with progress_bar(16, "windows") as bar:  # shown: hundreds of windows are embedded (16 = enabled)
        task = bar.add_task("embedding windows", total=None)
        loc = run_localize(
            encoder, pil, prompt, **_window_settings(scales, window, stride, box_threshold, small_objects), grid=grid,
            overhang=overhang, method=method, batch_size=batch_size,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if out is not None:
        loc.overlay_png(pil, out)
    if as_json:
        row = loc.to_dict()
        row["image"] = str(image)
        _emit(row)
    else:
        console.print(_ascii_map(loc.map))
        x0, y0, x1, y1 = loc.bbox
        console.print(
            f"[bold]{_esc(prompt)}[/]: box [{x0}, {y0}, {x1}, {y1}] in a {loc.image_size[0]}x{loc.image_size[1]} image, "
            f"peak ({loc.peak[0]}, {loc.peak[1]}), box score {loc.score:.3f} ({loc.n_windows} {loc.method} scored)",
            highlight=False,
        )
    if out is not None:
        err_console.print(f"overlay written to {out}", highlight=False)


def _ascii_map(rel, width: int = 32) -> str:
    """The map in shade characters, two characters per cell, at most ``width`` cells wide."""
    import numpy as np

    m = np.asarray(rel, dtype=np.float64)
    step = max(1, int(np.ceil(m.shape[1] / width)))
    m = m[::step, ::step]
    lo, hi = m.min(), m.max()
    levels = " ░▒▓█"
    idx = np.zeros(m.shape, dtype=int) if hi <= lo else np.minimum((m - lo) / (hi - lo) * len(levels), len(levels) - 1).astype(int)
    return "\n".join("".join(levels[i] * 2 for i in row) for row in idx)


# -- evaluate localize -----------------------------------------------------------------------------


@handle_errors
def evaluate_localize_cmd(
    model: ModelOption = None,
    weights: WeightsOption = None,
    scenes: Annotated[
        Path | None,
        typer.Option("--scenes", help="A demo-world folder (metadata.jsonl); default: generate fresh scenes.",
                     show_default=False),
    ] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="Two-object scenes to localise.")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Scene generation and which object is prompted.")] = 0,
    method: MethodOption = "auto",
    scales: ScalesOption = None,
    window: WindowOption = None,
    stride: StrideOption = None,
    grid: GridOption = 32,
    box_threshold: BoxThresholdOption = None,
    overhang: OverhangOption = None,
    small_objects: Annotated[
        bool,
        typer.Option("--small-objects/--any-size", help="The small-object settings, which fit the demo world's shapes.", metavar=""),
    ] = True,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Write summary.json, cases.jsonl and overlays of the first scenes into DIR.",
                     show_default=False),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Localisation quality on the demo world's two-object scenes.

    Each scene is prompted with one object's "colour shape"; prints how often the map's peak
    falls inside that object's box (target >= 80%) and how often the returned box has IoU >= 0.5
    with it (target >= 60%).
    """
    from clipsearch.tasks.localize import evaluate_localization

    encoder = load_encoder(model, weights)
    with progress_bar(n, "localising") as bar:
        task = bar.add_task("localising", total=n)
        result = evaluate_localization(
            encoder, scenes, n=n, seed=seed, method=method, grid=grid, overhang=overhang,
            **_window_settings(scales, window, stride, box_threshold, small_objects), overlay_dir=report / "overlays" if report else None,
            on_start=lambda total: bar.update(task, total=total), on_progress=lambda k: bar.advance(task, k),
        )
    if report is not None:
        result.write_report(report)
    if as_json:
        _emit(result.summary())
    else:
        ok = lambda v, target: "[green]meets[/]" if v >= target else "[red]below[/]"  # noqa: E731
        console.print(f"{result.model}, {result.method}, {result.n} two-object scenes (seed {result.seed}):")
        console.print(f"  peak inside the prompted object's box: [bold]{result.peak_in_box:.1%}[/]  "
                      f"(target >= 80%: {ok(result.peak_in_box, 0.8)})")
        console.print(f"  box IoU >= 0.5 with it:                [bold]{result.iou_50:.1%}[/]  "
                      f"(target >= 60%: {ok(result.iou_50, 0.6)})")
        console.print(f"  mean IoU:                              {result.mean_iou:.3f}")
    if report is not None:
        err_console.print(f"report written to {report}/", highlight=False)


# -- caption -----------------------------------------------------------------------------------------


@handle_errors
def caption(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders (recursive).")],
    candidates: Annotated[
        Path | None,
        typer.Option("--candidates", "-c", help="A text file of candidate captions, one per line.", show_default=False),
    ] = None,
    store: StoreOption = None,
    k: Annotated[int, typer.Option("-k", "--top-k", "--k", min=1, help="Captions per image.")] = 5,
    model: StoreModelOption = None,
    weights: WeightsOption = None,
    as_json: JsonOption = False,
    batch_size: BatchOption = 32,
) -> None:
    """Caption images by retrieval: the best-matching candidate captions, with cosine scores.

    Candidates come from --candidates FILE or from the text items of a store (--store). With
    --json, one line per image: {"image", "captions": [{"text", "score"}, ...]} or {"image", "error"}.

    Example:

        clipsearch caption photo.jpg --store my-store -k 3
    """
    from clipsearch.embed import expand_image_paths
    from clipsearch.tasks.caption import caption as run_caption
    from clipsearch.tasks.caption import read_candidates

    if (candidates is None) == (store is None):
        fail("give exactly one source of captions: --candidates FILE or --store DIR")
    images = expand_image_paths(paths)
    if not images:
        fail("no image files found in the given folders")
    if candidates is not None:
        pool: Any = read_candidates(candidates)
        encoder = load_encoder(model, weights)
    else:
        from clipsearch.collection import open_store

        pool = open_store(store, model=model, create=False)
        if pool.count("text") == 0:
            fail(f"store {pool.root} holds no texts to caption with; index some (captions, notes) or give --candidates FILE")
        encoder = load_encoder(model or pool.model_name, weights)
    with progress_bar(len(images), "captioning") as bar:
        task = bar.add_task("captioning", total=len(images))
        results = run_caption(encoder, images, pool, k=k, batch_size=batch_size, on_progress=lambda n: bar.advance(task, n))
    if as_json:
        for r in results:
            _emit(r.to_dict())
    else:
        from rich.table import Table

        t = Table(title=f"captions by retrieval ({encoder.name})")
        t.add_column("image", overflow="fold")
        t.add_column("score", justify="right")
        t.add_column("caption")
        for r in results:
            if r.error is not None:
                t.add_row(_short(r.image), "", f"[red]{_esc(r.error)}[/]", end_section=True)
                continue
            for i, (text, score) in enumerate(r.captions):  # a row each: a wrapped caption keeps its score beside it
                t.add_row(_short(r.image) if i == 0 else "", f"{score:.3f}", _esc(text), end_section=i == len(r.captions) - 1)
        console.print(t)
    failed = sum(r.error is not None for r in results)
    if failed:
        err_console.print(f"{failed} of {len(results)} images could not be read", highlight=False)
    if failed == len(results):
        raise typer.Exit(1)


# -- moderate ----------------------------------------------------------------------------------------


@handle_errors
def moderate(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders (recursive).")],
    rules: Annotated[Path, typer.Option("--rules", "-r", help="Rules YAML: name, description, threshold, counter.")],
    model: ModelOption = None,
    weights: WeightsOption = None,
    as_json: JsonOption = False,
    batch_size: BatchOption = 32,
) -> None:
    """Flag images that match natural-language rules (see docs/moderation.md).

    A rule's score is the probability that its description beats its counter-descriptions
    (softmax with the model's logit scale); it fires at score >= its threshold. With --json, one
    line per image: {"image", "fired": [{"rule", "score"}], "scores": {rule: score}} or
    {"image", "error"}. The count per rule goes to stderr.

    Example:

        clipsearch moderate uploads/ --rules rules.yaml
    """
    from clipsearch.embed import expand_image_paths
    from clipsearch.tasks.moderate import Moderator, load_rules, summarize

    rule_list = load_rules(rules)
    images = expand_image_paths(paths)
    if not images:
        fail("no image files found in the given folders")
    encoder = load_encoder(model, weights)
    moderator = Moderator(encoder, rule_list)
    with progress_bar(len(images), "moderating") as bar:
        task = bar.add_task("moderating", total=len(images))
        results = moderator.moderate(images, batch_size=batch_size, on_progress=lambda n: bar.advance(task, n))
    if as_json:
        for r in results:
            _emit(r.to_dict())
    else:
        from rich.table import Table

        t = Table(title=f"moderation ({encoder.name}, {len(rule_list)} rules)")
        t.add_column("image", overflow="fold")
        t.add_column("fired")
        t.add_column("highest score", justify="right")
        for r in results:
            if r.error is not None:
                t.add_row(_short(r.image), f"[red]{_esc(r.error)}[/]", "")
                continue
            fired = ", ".join(f"[bold red]{_esc(name)}[/] {r.scores[name]:.2f}" for name in r.fired) or "[green]-[/]"
            best = max(r.scores, key=r.scores.get)
            t.add_row(_short(r.image), fired, f"{_esc(best)} {r.scores[best]:.2f}")
        console.print(t)
    counts = summarize(results, rule_list)
    failed = sum(r.error is not None for r in results)
    summary = ", ".join(f"{_esc(name)}: {c}" for name, c in counts.items())
    err_console.print(f"{len(results) - failed} images checked, {failed} unreadable; fired per rule: {summary}", highlight=False)
    if failed == len(results):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(classify)
    app.command()(localize)
    app.command()(caption)
    app.command()(moderate)
