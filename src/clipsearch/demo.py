"""The offline tour behind ``clipsearch demo``: a generated gallery, indexed and searched.

Everything runs on the bundled demo model: a world of captioned shape scenes is generated, its
images and captions (and a few text notes on other topics, :mod:`clipsearch.world.notes`) are
indexed into a store, and example queries run in every direction
(text->image, image->image, image->text, text->text, a composed query), plus zero-shot
classification and a relevance map. The CLI prints the :class:`DemoReport` and serves the page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipsearch.events import ProgressCallback, Reporter

TASK = "demo"  # the task name of the tour's own events: one message per step
DEMO_SHAPES = ("circle", "square", "triangle", "star", "heart", "cross", "diamond", "ring")


@dataclass
class Example:
    """One example search: what was asked, in which direction, and the best hits."""

    direction: str  # e.g. "text -> image"
    query: str  # the query as a person would type it (or the image path)
    hits: list[Any]  # clipsearch.store Hit objects, best first
    note: str = ""  # what to look for, e.g. the query image's caption


@dataclass
class DemoReport:
    folder: Path
    gallery: Path
    store: Path
    model: str
    indexed: dict[str, int]  # the index summary counts
    examples: list[Example] = field(default_factory=list)
    classified: list[tuple[str, str, list[tuple[str, float]]]] = field(default_factory=list)  # image, truth, top
    contact_sheet: Path | None = None
    contact_sheet_rerank: Path | None = None  # the same query with --rerank 50 --cell-weight 1 (models with a grid)
    relevance_map: Path | None = None
    relevance_prompt: str = ""


def run_demo(
    folder: str | Path,
    *,
    n: int = 300,
    seed: int = 0,
    model: str = "demo",
    on_progress: ProgressCallback | None = None,
) -> DemoReport:
    """Build (or reuse) the demo gallery and store in ``folder`` and run the example searches.

    Args:
        folder: where the gallery (``gallery/``), store (``store/``) and pictures go.
        n: number of scenes in the gallery.
        seed: world seed; the same seed gives the same gallery.
        model: the model to index with (the demo model unless you pass another image model).
        on_progress: called with the tour's events: a ``message`` of task :data:`TASK` for
            each step, and the progress of generating the gallery.

    Returns:
        The :class:`DemoReport` with every example's hits.
    """
    from clipsearch.errors import StoreError
    from clipsearch.models.registry import load_model
    from clipsearch.collection import open_store
    from clipsearch.world import generate_world

    say = Reporter(on_progress, TASK).message
    folder = Path(folder).resolve()
    gallery, store_dir = folder / "gallery", folder / "store"
    encoder = load_model(model)  # first, so a missing model fails before any work
    if not (gallery / "metadata.jsonl").exists():
        say(f"generating {n} demo scenes in {gallery}")
        generate_world(gallery, n, seed=seed, split="eval", on_progress=on_progress)
    else:
        say(f"reusing the demo scenes in {gallery}")
    store = open_store(store_dir, model=encoder)
    say(f"indexing images and captions into {store_dir} with model {encoder.name}")
    legacy = gallery / "captions.jsonl"  # what demos before metadata.jsonl was indexable wrote
    if legacy.exists():
        try:
            store.remove([legacy])
        except StoreError:
            pass  # a store made anew: nothing of it to take out
        legacy.unlink()
    # each scene's record captions its image (and with both=True is a text item too); the
    # generator's truth (objects, background) is kept in the items' extra. Beside them, a few
    # notes on other topics: a shape query must not find them, nor a question about them a shape
    from clipsearch.world.notes import NOTES, NOTES_FILE

    notes = gallery / NOTES_FILE
    if not notes.exists() or notes.read_text(encoding="utf-8") != NOTES:
        notes.write_text(NOTES, encoding="utf-8")
    summary = store.add([gallery / "metadata.jsonl", notes], both=True, on_progress=on_progress)
    report = DemoReport(folder, gallery, store_dir, encoder.name, summary.to_dict())

    records = [json.loads(line) for line in (gallery / "metadata.jsonl").read_text().splitlines()]
    first_single = next(r for r in records if len(r["objects"]) == 1)
    query_image = gallery / first_single["file"]
    obj = first_single["objects"][0]
    examples = [
        ("text -> image", "a red circle", dict(modality="image"), ""),
        ("text -> image", "there is a big blue star somewhere in this picture", dict(modality="image"), "an eval-only phrasing"),
        ("image -> image", str(query_image), dict(modality="image"), f"the query shows a {obj['color']} {obj['shape']}"),
        ("image -> text", str(query_image), dict(modality="text"), f"its own caption: {first_single['caption']!r}"),
        ("text -> text", "a little green triangle", dict(modality="text"), ""),
        ("composed", '"2:heart" + "yellow" - "red"', dict(modality="image"), "weights and negation: yellow hearts, not red"),
    ]
    from clipsearch.search import has_grid, parse_query

    if has_grid(encoder):
        examples.insert(1, ("text -> image, --rerank 50 --cell-weight 1", "a red circle",
                            dict(modality="image", rerank=50, cell_weight=1.0),
                            "the best 50 by vector, their best grid cell counted as much: one object among several"))  # fmt: skip

    for direction, text, opts, note in examples:
        query: Any = Path(text) if direction.startswith("image") else text
        if direction == "composed":  # one shell-like line: parse_query splits a str, not a list
            query = parse_query(text)
            terms = ", ".join(f"{t.weight:+g} x {t.value!r}" for t in query.terms)
            note = f"{note} ({terms})"
        hits = store.search(query, k=6, **opts)
        if direction == "image -> image":  # the query image itself comes back first with score 1
            hits = [h for h in hits if query_image.name not in {Path(p).name for p in h.paths}]
        report.examples.append(Example(direction, text, hits[:5], note))

    from clipsearch.viz.contact_sheet import contact_sheet

    sheet_hits = store.search("a red circle", k=12, modality="image")
    report.contact_sheet = contact_sheet(sheet_hits, folder / "contact_sheet.png", title="a red circle")
    if has_grid(encoder):  # side by side with the default ranking: the best cell counted fully
        sheet_hits = store.search("a red circle", k=12, modality="image", rerank=50, cell_weight=1.0)
        report.contact_sheet_rerank = contact_sheet(
            sheet_hits, folder / "contact_sheet_rerank.png", title="a red circle (--rerank 50 --cell-weight 1)"
        )

    from clipsearch.tasks import classify

    singles = [r for r in records if len(r["objects"]) == 1][:6]
    preds = classify(encoder, [gallery / r["file"] for r in singles], list(DEMO_SHAPES), top=3)
    report.classified = [(p.image, r["objects"][0]["shape"], p.top) for p, r in zip(preds, singles)]

    two = next((r for r in records if len(r["objects"]) == 2), None)
    if two is not None:
        from clipsearch.images import load_image
        from clipsearch.tasks import localize
        from clipsearch.tasks.localize import SMALL_OBJECTS

        target = two["objects"][0]
        prompt = f"{target['color']} {target['shape']}"
        image = load_image(gallery / two["file"])
        loc = localize(encoder, image, prompt, **SMALL_OBJECTS)
        report.relevance_map = loc.overlay_png(image, folder / "relevance_map.png", target=target["bbox"])
        report.relevance_prompt = prompt
    return report
