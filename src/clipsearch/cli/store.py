"""``clipsearch index``, ``search``, ``stats`` and ``remove``: thin over :mod:`clipsearch.store`."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from clipsearch.cli.common import (
    BackendOption,
    JsonOption,
    StoreModelOption,
    StoreOption,
    WeightsOption,
    console,
    err_console,
    fail,
    handle_errors,
)
from clipsearch.paths import display_path


def _open(
    store: str | None, model: str | None = None, weights: str | None = None, *, create: bool, sources=(), backend=None
):
    """Open the store; with ``create``, a missing one is made with ``model`` or the library's
    default for ``sources`` (:func:`clipsearch.collection.default_model`)."""
    from clipsearch.collection import open_store

    if not create:
        return open_store(store, model=model, create=False, backend=backend)
    with err_console.status("opening the store ...", spinner="dots"):
        return open_store(store, model=model, weights=weights, sources=sources, backend=backend)


@handle_errors
def index(
    paths: Annotated[
        list[Path], typer.Argument(help="Image files, .txt/.md/.jsonl/.csv files and folders (recursive).")
    ],
    store: StoreOption = None,
    model: StoreModelOption = None,
    weights: WeightsOption = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, max=4096, help="Inputs per forward pass and per commit.")
    ] = 32,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", "-w", min=0, help="Decoding processes (0: decode in this process). Default: min(2, CPUs)."
        ),
    ] = None,
    prune: Annotated[bool, typer.Option("--prune", help="Remove items under PATH whose files no longer exist (never under an empty folder: an unmounted drive).", metavar="")] = False,
    both: Annotated[bool, typer.Option("--both", help="Index jsonl/csv image-caption pairs as texts too.", metavar="")] = False,
    cells: Annotated[
        bool,
        typer.Option(
            "--cells/--no-cells",
            help="Models with a grid: keep each image's grid cells, so search re-ranks by them without reading "
            "images (32 KB per image for the demo model).", metavar="",
        ),
    ] = True,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Read again the images that failed before though they did not change (by default they "
            "are reported with their earlier reason, unread).", metavar="",
        ),
    ] = False,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write every failure to FILE.jsonl: {path, reason}.")
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="local: this process and its decoding workers; ray: decode in Ray tasks and embed in Ray actors "
            "(one per GPU), for a cluster or a large folder (pip install 'clipsearch[ray]'). Both build the same store.",
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option("--address", help="With --engine ray: the Ray cluster to join (ray://HOST:10001, auto). Default: a local Ray."),
    ] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.", metavar="")] = False,
    backend: BackendOption = None,
    as_json: JsonOption = False,
) -> None:
    """Index images and texts into the store; unchanged files are skipped.

    Prints a summary (added, updated, unchanged, failed, removed); with --json, that summary as
    one JSON object on stdout. One bad file never stops the run; a PATH that does not exist
    stops it before anything is written (an unmounted drive is not pruned away with --prune).

    Example:

        clipsearch index ~/Pictures notes/ captions.jsonl --store my-store

        clipsearch index /data/photos --store s3://bucket/photos --engine ray --address auto
    """
    from clipsearch.cli.progress import rendered_progress

    from clipsearch.ingest.ray_engine import check_engine

    for p in paths:
        if not os.path.lexists(p):
            fail(f"no such file or folder: {p}")
    check_engine(engine, address)  # before a new store is made

    st = _open(store, model, weights, create=True, sources=paths, backend=backend)
    with rendered_progress(not no_progress and sys.stderr.isatty()) as on_progress:
        summary = st.add(
            paths,
            batch_size=batch_size,
            workers=workers,
            prune=prune,
            both=both,
            cells=cells,
            retry_failed=retry_failed,
            on_progress=on_progress,
            engine=engine,
            address=address,
        )
    if report is not None:
        summary.write_report(report)
    if as_json:
        print(json.dumps(summary.to_dict()))
    counts = ", ".join(f"{v} {k}" for k, v in summary.to_dict().items())
    rate = f", {summary.embedded / summary.seconds:.1f} embedded/s" if summary.embedded and summary.seconds > 0 else ""
    ann = {"built": "; ANN index built", "updated": "; ANN index updated", "dropped": "; ANN index dropped"}.get(
        summary.index, ""
    )
    notes = f"; grid cells added for {summary.cells_added} stored images" if summary.cells_added else ""
    if summary.failed_unread:
        notes += f"; {summary.failed_unread} failed as before, unchanged and not read again: --retry-failed reads them"
    dropped = summary.captions_dropped
    if dropped:
        notes += f"; {dropped} {'image' if dropped == 1 else 'images'} lost the caption of a table that no longer names them"
    err_console.print(f"{counts} ({summary.seconds:.1f} s{rate}{ann}{notes}) -> {st.root}", highlight=False)
    for folder, n in summary.prune_kept.items():
        err_console.print(
            f"  [yellow]not pruned[/] {n} vanished {'path' if n == 1 else 'paths'} under {escape(folder)}: it "
            f"is empty or cannot be reached (an unmounted drive?); {escape(f'clipsearch remove {shlex.quote(folder)} --store {shlex.quote(str(st.root))}')} removes them",
            highlight=False,
            markup=True,
        )
    for f in summary.failures[:10]:
        err_console.print(f"  [yellow]failed[/] {escape(display_path(f.path))}: {escape(f.reason)}", highlight=False)
    if len(summary.failures) > 10:
        where = f"all of them are in {report}" if report is not None else "use --report FILE.jsonl for all"
        err_console.print(f"  ... and {len(summary.failures) - 10} more ({escape(where)})", highlight=False)


@handle_errors
def search(
    query: Annotated[
        list[str] | None,
        typer.Argument(
            help='Text, image files and weights: "2:dog" + snow.jpg - grass (see docs/search.md).', show_default=False
        ),
    ] = None,
    store: StoreOption = None,
    k: Annotated[int, typer.Option("-k", "--top-k", "--top", min=1, max=10_000, help="Results to show.")] = 10,
    image: Annotated[
        list[Path] | None, typer.Option("--image", "-i", help="Query by this image file; repeatable.")
    ] = None,
    like: Annotated[
        list[str] | None, typer.Option("--like", help="Query by an item already in the store (its id); repeatable.")
    ] = None,
    modality: Annotated[str, typer.Option("--modality", help="Search images, texts or both: image|text|any.")] = "any",
    where: Annotated[
        str | None, typer.Option("--where", help="SQL filter on metadata, e.g. \"label = 'cat' AND width >= 640\".")
    ] = None,
    path_glob: Annotated[
        str | None, typer.Option("--path-glob", help="Keep items whose path matches, e.g. '*/2023/*.jpg'.")
    ] = None,
    min_score: Annotated[
        float | None, typer.Option("--min-score", help="Drop results whose cosine is below this.")
    ] = None,
    min_confidence: Annotated[
        float | None,
        typer.Option(
            "--min-confidence", min=0.0, max=1.0, show_default=False,
            help="Drop results whose calibrated confidence (0-1, the same for every model) is below this. "
            "Default: keep them, and say 'No good match' when none reaches the store's own line.",
        ),
    ] = None,  # fmt: skip
    exact: Annotated[bool, typer.Option("--exact", help="Scan every vector even when an ANN index exists.", metavar="")] = False,
    recall: Annotated[
        float | None,
        typer.Option(
            "--recall", min=0.01, max=0.99, show_default=False,
            help="With an ANN index (large stores): the recall@10 to promise, 0.95 (default, fastest) or 0.99.",
        ),
    ] = None,  # fmt: skip
    rerank: Annotated[
        int | None,
        typer.Option(
            "--rerank", min=0, max=10_000, show_default=False,
            help="Re-score the best N images by their best-matching grid cell too (models with a grid, e.g. "
            "demo). Default: 20 when the store kept grid cells at indexing, else 0 (off).",
        ),
    ] = None,  # fmt: skip
    cell_weight: Annotated[
        float | None,
        typer.Option(
            "--cell-weight", min=0.0, show_default=False,
            help="How much the best cell counts beside the vector when re-scoring. Default 0.25: whole "
            "captions and single objects alike; 1 finds one object among several best.",
        ),
    ] = None,  # fmt: skip
    grid: Annotated[
        Path | None, typer.Option("--grid", help="Save a contact sheet of the image results to this .png/.jpg.")
    ] = None,
    backend: BackendOption = None,
    as_json: JsonOption = False,
) -> None:
    """Search the store by text, image or stored item, in any direction.

    Results are a table (rank, confidence, score, id, path or text); with --json, a JSON array of
    {"id", "path", "text", "modality", "score", "confidence", "caption", "label"}, best first.
    "score" is the raw cosine; "confidence" is calibrated for this store (0-1; see docs/search.md)
    and, with --modality any, images and texts are ranked together by it. When no result is a
    good match, "No good match" is said on stderr (with --json too).

    Example:

        clipsearch search a red circle --store my-store -k 10
        clipsearch search '"2:heart"' + yellow - red --store my-store --json
    """
    from clipsearch.search import parse_query

    q = parse_query(list(query or []), images=[str(p) for p in image or []], like=list(like or []))
    st = _open(store, create=False, backend=backend)
    if len(st) == 0:
        fail(f"store {st.root} is empty; index something first: clipsearch index PATH --store {st.root}")
    hits = st.search(
        q, k=k, modality=modality, where=where, path_glob=path_glob, min_score=min_score, exact=exact, recall=recall,
        rerank=rerank, cell_weight=cell_weight, min_confidence=min_confidence,
    )  # fmt: skip
    if as_json:
        print(json.dumps([h.to_dict() for h in hits], ensure_ascii=False))
    line = getattr(hits, "min_confidence", None)
    if getattr(hits, "no_good_match", False) and line is not None:
        err_console.print(
            f"[bold]No good match[/]: no result reaches confidence {line:.2f}"
            + ("; the results shown are only the nearest" if hits else ""),
            highlight=False,
        )
    if not hits:
        if min_confidence is not None:
            err_console.print(f"no result with confidence {min_confidence:g} or more", highlight=False)
        elif min_score is not None:
            err_console.print(f"no result above the threshold {min_score:g}", highlight=False)
        elif where or path_glob:
            err_console.print("no result matches the filters", highlight=False)
        elif modality != "any" and st.count(modality) == 0:
            err_console.print(f"the store holds no {modality}s to return; index some, or search --modality any", highlight=False)
        else:
            err_console.print("no result", highlight=False)
    elif not as_json:
        console.print(_table(hits, line))
    kinds = {h.modality for h in hits}
    if modality == "any" and len(kinds) == 1:  # say where the other kind is
        (kind,) = kinds
        other = "text" if kind == "image" else "image"
        left_out = st.count(other)
        if left_out:
            err_console.print(
                f"every result is {'an' if kind == 'image' else 'a'} {kind}: the store's {left_out:,} {other}s "
                f"score lower against this query; --modality {other} lists them",
                highlight=False,
            )
    if grid is not None and hits:
        from clipsearch.viz.contact_sheet import contact_sheet

        path = contact_sheet(hits, grid, title=q.describe())
        err_console.print(f"contact sheet: {path}", highlight=False)


def _table(hits, line: float | None = None):
    from rich.markup import escape
    from rich.table import Table

    from clipsearch.calibration import confidence_word

    table = Table(show_header=True, header_style="bold", expand=False)
    table.add_column("#", justify="right")
    calibrated = any(h.confidence is not None for h in hits)
    if calibrated:
        table.add_column("confidence", justify="right")
    table.add_column("score", justify="right")
    table.add_column("id")
    table.add_column("path or text", overflow="fold")
    for rank, h in enumerate(hits, 1):
        if h.modality == "text":
            text = " ".join((h.text or "").split())
            text = text if len(text) <= 160 else text[:157] + "..."
            if h.record and h.source:  # a jsonl/csv record: file:LINE or file#ID
                origin = f"{h.source}{h.record}"
            elif h.char_start is not None and h.path:  # a paragraph of a document
                origin = f"{display_path(h.path)}, chars {h.char_start}-{h.char_end}"
            else:
                origin = display_path(h.path) if h.path else ""
            where = f" [dim]({escape(origin)})[/]" if origin else ""
            shown = f"[italic]{escape(text)}[/]{where}"
        else:
            shown = escape(display_path(h.path) if h.path else "")
            if h.extra_paths:
                shown += f" [dim](+{len(h.extra_paths)} more)[/]"
            if h.caption:  # what the table that names it says: the reason a caption search finds it
                caption = " ".join(h.caption.split())
                caption = caption if len(caption) <= 120 else caption[:117] + "..."
                shown += f" [dim italic]{escape(caption)}[/]"
        cells = [str(rank)]
        if calibrated:
            cells.append(
                "" if h.confidence is None else f"{h.confidence:.2f} {confidence_word(h.confidence, line)}"
            )
        table.add_row(*cells, f"{h.score:.4f}", h.id, shown)
    return table


@handle_errors
def stats(store: StoreOption = None, as_json: JsonOption = False) -> None:
    """Counts per modality, model, dimension, size on disk and index state.

    Example:

        clipsearch stats --store my-store --json
    """
    st = _open(store, create=False)
    info = st.stats()
    if as_json:
        print(json.dumps(info))
        return
    idx = info["index"]
    index_text = (
        f"exact (in-memory scan; ANN index from {idx['threshold']:,} rows)"
        if idx["kind"] == "exact"
        else f"ANN (IVF, 8-bit codes, exact re-rank): {idx['indexed']:,} rows indexed, nlist {idx['nlist']}; "
        + ", ".join(f"recall@10 {p['recall']}: nprobe {p['nprobe']} (measured {p['measured']})" for p in idx["points"])
    )
    lines = [
        ("store", info["store"]),
        ("items", f"{info['count']:,} ({info['images']:,} images, {info['texts']:,} texts)"),
        ("files tracked", f"{info['files']:,}"),
        *([("files failed", f"{info['failed_files']:,} (index --retry-failed reads them again)")] if info["failed_files"] else []),
        ("grid cells", _cells_line(info["cells"], info["images"])),
        ("model", f"{info['model']} ({info['dim']}-d)"),
        *([("onnx", onnx_line(info["onnx"]))] if info.get("onnx") else []),
        ("size on disk", _human_bytes(info["size_bytes"])),
        ("search", index_text),
        ("schema", f"version {info['schema_version']}, created {info['created']}"),
    ]
    for key, value in lines:
        console.print(f"[bold]{key:>14}[/]  {value}", highlight=False)


def onnx_line(record: dict) -> str:
    """The ONNX backend's precision per tower and what its int8 guard found, in one line."""
    parts = []
    for tower in ("image", "text"):
        g = (record.get("guard") or {}).get(tower)
        if not g:
            parts.append(f"{tower} {(record.get('precision') or {}).get(tower, 'fp32')} (no int8 graph to check)")
            continue
        verdict = "int8" if g.get("int8_ok") else "fp32 (int8 drifted)"
        parts.append(f"{tower} {verdict}: int8 cosine {g.get('min_cosine'):.4f} to fp32 on {g.get('sample')} {g.get('source')} inputs")
    return "; ".join(parts) + f" (bundle {str(record.get('bundle'))[:12]})"


def _cells_line(cells: int, images: int) -> str:
    if not cells:
        return "none kept"
    if cells < images:  # indexed with --no-cells, or before stores kept cells
        return f"kept for {cells:,} of {images:,} images; index the same folders again to add the rest"
    return f"kept for {cells:,} image{'s' * (cells != 1)} (search re-ranks by them)"


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@handle_errors
def remove(
    targets: Annotated[list[str], typer.Argument(help="Item ids (or unique prefixes), files or folders.")],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove items by id, or by path (a file, or everything under a folder).

    Example:

        clipsearch remove ~/Pictures/old --store my-store
    """
    st = _open(store, create=False)
    removed = st.remove(targets)
    if as_json:
        print(json.dumps({"removed": removed}))
    else:
        err_console.print(f"removed {removed} item{'s' if removed != 1 else ''} from {st.root}", highlight=False)


@handle_errors
def reindex(
    store: StoreOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, max=4096, help="Items per forward pass and per commit.")] = 32,
    workers: Annotated[int | None, typer.Option("--workers", "-w", min=0, help="Decoding processes (0: decode in this process).")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.", metavar="")] = False,
    as_json: JsonOption = False,
) -> None:
    """Embed every item again with the store's model as it is now.

    For a model whose weights changed under the same name (a folder retrained in place): the
    store refuses it until its items are re-embedded. Images are read again from their files
    (one whose file is gone or changed is removed and listed); texts from the store. Safe to
    stop: run it again and it continues.

    Example:

        clipsearch reindex --store my-store
    """
    from clipsearch.cli.progress import rendered_progress

    st = _open(store, create=False)
    with rendered_progress(not no_progress and sys.stderr.isatty()) as on_progress:
        summary = st.reindex(batch_size=batch_size, workers=workers, on_progress=on_progress)
    for f in summary.lost:
        err_console.print(f"  [yellow]lost[/] {escape(display_path(f.path))}: {escape(f.reason)}", highlight=False)
    if as_json:
        print(json.dumps(summary.to_dict()))
    err_console.print(
        f"{summary.reembedded} re-embedded, {len(summary.lost)} lost ({summary.seconds:.1f} s) -> {st.root}", highlight=False
    )


@handle_errors
def check(
    store: StoreOption = None,
    repair: Annotated[
        bool,
        typer.Option("--repair", help="Take broken tables back to their newest whole version and rebuild what can be rebuilt.", metavar=""),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Check the store: tables, vectors, how its tables agree, and the ANN index.

    Exit status 0 when it is sound (or --repair made it so), 1 when problems remain. A repair
    says what was lost; indexing the same folders again restores it while their files exist.

    Example:

        clipsearch check --store my-store --repair
    """
    from clipsearch.store import resolve_store_uri
    from clipsearch.store.check import check_store

    root = resolve_store_uri(store)
    report = check_store(root, repair=repair)
    if as_json:
        print(json.dumps(report.to_dict()))
    for p in report.problems:
        state = "[green]repaired[/]" if p.fixed else ("[red]problem[/]" if p.serious else "[yellow]note[/]")
        err_console.print(f"  {state} {p.where}: {escape(p.what)}; repair: {escape(p.repair)}", highlight=False)
    for line in report.lost:
        err_console.print(f"  [yellow]lost[/] {escape(line)}", highlight=False)
    counts = ", ".join(f"{n} {name}" for name, n in report.counts.items())
    if report.ok:
        err_console.print(f"store {root} is sound ({counts})" if not report.problems else f"store {root} repaired ({counts})", highlight=False)
        return
    serious = sum(p.serious and not p.fixed for p in report.problems)
    err_console.print(f"{serious} problem(s) in store {root}; fix them with: clipsearch check --store {root} --repair", highlight=False)
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``index``, ``search``, ``stats``, ``remove``, ``reindex`` and ``check`` to the ``clipsearch`` app."""
    app.command("index")(index)
    app.command("search")(search)
    app.command("stats")(stats)
    app.command("remove")(remove)
    app.command("reindex")(reindex)
    app.command("check")(check)
