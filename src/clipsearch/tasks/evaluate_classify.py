"""Measure zero-shot classification on a labelled image set: top-1, top-5, per class, confusion.

A dataset is either an ImageFolder layout (``DATASET/<class>/**/image``; the folder name is the
label, ``_`` read as a space) or a metadata file (``.jsonl``, ``.json`` list or ``.csv``) with an
image column (paths relative to the file's folder) and a label column. The label column may be a
dotted path into nested records, with ``*`` for every element of a list: ``objects.0.shape``, or
``objects.*.shape`` (records whose values disagree are skipped as ambiguous).

Images are streamed in batches: only one batch of pixels, the confusion counts and a short list
of the worst mistakes are held in memory, so 10k images cost no more memory than 100.
"""

from __future__ import annotations

import csv
import heapq
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.images import IMAGE_FIELDS
from clipsearch.tasks.classify import ZeroShotClassifier
from clipsearch.tasks.metrics import class_rank
from clipsearch.tasks.templates import TemplateSpec

if TYPE_CHECKING:
    from clipsearch.models.base import Encoder

METADATA_SUFFIXES = (".jsonl", ".json", ".csv")
METADATA_NAMES = ("metadata.jsonl", "metadata.csv", "metadata.json")  # looked for in a folder without class subfolders
IMAGE_COLUMNS = IMAGE_FIELDS  # tried in order when no image column is named


@dataclass
class LabelledImages:
    """Image paths with their labels, as read from a dataset (no pixels yet)."""

    items: list[tuple[Path, str]]  # (image path, label) in dataset order
    labels: list[str]  # the distinct labels, sorted
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (record, reason) not usable
    source: str = ""


@dataclass
class Mistake:
    """A wrongly classified image: its true label, the predicted one and its probability."""

    image: str
    true: str
    predicted: str
    prob: float  # probability of the (wrong) predicted label
    true_prob: float  # probability the model gave the true label

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "true": self.true,
            "predicted": self.predicted,
            "prob": round(self.prob, 6),
            "true_prob": round(self.true_prob, 6),
        }


@dataclass
class ClassificationReport:
    """The outcome of :func:`evaluate_classification`.

    ``confusion`` is ``(n_labels, n_labels)`` int64, rows the true label and columns the
    prediction, in the order of ``labels``.
    """

    model: str
    labels: list[str]
    n: int  # images classified (unreadable ones excluded)
    top1: float
    top5: float
    k: int  # the k of "top5": min(5, number of labels)
    per_class: dict[str, float]  # label -> top-1 accuracy, for labels with at least one image
    support: dict[str, int]  # label -> images with that true label
    confusion: np.ndarray
    mistakes: list[Mistake]  # the most confident mistakes, worst first
    skipped: list[tuple[str, str]]  # (image or record, reason): unreadable or unlabelled
    templates: int = 1  # prompts per label

    def summary(self) -> dict[str, Any]:
        """``{"n", "top1", "top5", "per_class", "skipped"}``, the ``--json`` output."""
        return {
            "n": self.n,
            "top1": round(self.top1, 6),
            "top5": round(self.top5, 6),
            "per_class": {k: round(v, 6) for k, v in self.per_class.items()},
            "skipped": len(self.skipped),
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything, for ``summary.json``."""
        out = self.summary()
        out.update(
            model=self.model,
            labels=self.labels,
            top5_k=self.k,
            templates=self.templates,
            support=self.support,
            confusion=self.confusion.tolist(),
            mistakes=[m.to_dict() for m in self.mistakes],
            skipped_items=[{"item": s, "reason": r} for s, r in self.skipped],
        )
        return out


# -- reading datasets -----------------------------------------------------------------------------


def label_from_folder(name: str) -> str:
    """ImageFolder class folder name -> label: ``golden_retriever`` -> ``golden retriever``."""
    return " ".join(name.replace("_", " ").split())


def lookup(record: Any, key: str) -> list[Any]:
    """Values at ``key`` in a nested record.

    A literal key wins (``"image.path"`` as one CSV column); otherwise ``key`` is a dotted path
    where a number indexes a list and ``*`` takes every element: ``objects.*.shape``.
    """
    if isinstance(record, dict) and key in record:
        return [record[key]]
    values = [record]
    for part in key.split("."):
        nxt: list[Any] = []
        for v in values:
            if part == "*" and isinstance(v, list):
                nxt.extend(v)
            elif part == "*" and isinstance(v, dict):
                nxt.extend(v.values())
            elif isinstance(v, dict) and part in v:
                nxt.append(v[part])
            elif isinstance(v, list) and part.lstrip("-").isdigit() and -len(v) <= int(part) < len(v):
                nxt.append(v[int(part)])
        values = nxt
    return values


def load_labelled_images(
    dataset: str | Path, *, image_column: str | None = None, label_column: str = "label"
) -> LabelledImages:
    """Read an ImageFolder tree or a metadata file into (path, label) pairs.

    Args:
        dataset: a folder of class subfolders; a folder without subfolders holding a
            ``metadata.jsonl`` (``.csv``, ``.json``), such as a demo world; or a metadata file.
        image_column: the metadata key with image paths (relative to the file's folder);
            default the first of ``image``, ``file``, ``path``, ``filepath`` the records have.
        label_column: the metadata key (or dotted path) with the label.

    Raises:
        ValueError: the path is neither a folder nor a ``.jsonl``/``.json``/``.csv`` file, or
            it yields no labelled images.
    """
    path = Path(dataset)
    if path.is_dir():
        has_classes = any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())
        meta = next((path / n for n in METADATA_NAMES if (path / n).is_file()), None)
        if meta is None or has_classes:
            return _load_image_folder(path)
        path = meta
    if not path.exists():
        raise ValueError(f"dataset {str(path)!r} does not exist")
    if path.suffix.lower() not in METADATA_SUFFIXES:
        raise ValueError(
            f"dataset {str(path)!r} is neither a folder of class subfolders nor a metadata file "
            f"({', '.join(METADATA_SUFFIXES)})"
        )
    return _load_metadata(path, image_column, label_column)


def _load_image_folder(root: Path) -> LabelledImages:
    from clipsearch.images import iter_image_paths

    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"dataset folder {str(root)!r} has no class subfolders (expected DATASET/<label>/<image>)")
    items: list[tuple[Path, str]] = []
    labels: dict[str, str] = {}
    for folder in classes:
        label = label_from_folder(folder.name)
        if label in labels:
            raise ValueError(f"class folders {labels[label]!r} and {folder.name!r} both give the label {label!r}")
        labels[label] = folder.name
        items.extend((p, label) for p in iter_image_paths([folder]))
    if not items:
        raise ValueError(f"dataset folder {str(root)!r} has class subfolders but no image files in them")
    return LabelledImages(items, sorted({lab for _, lab in items}), [], str(root))


def _read_records(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8-sig")
    if suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    if suffix == ".json":
        data = json.loads(text)
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), None)
        if not isinstance(data, list):
            raise ValueError(f"{path} must hold a JSON list of records (or an object with one)")
        return data
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} line {n} is not JSON: {exc.msg}") from None
    return records


def _load_metadata(path: Path, image_column: str | None, label_column: str) -> LabelledImages:
    records = _read_records(path)
    if image_column is None:
        first = records[0] if records and isinstance(records[0], dict) else {}
        image_column = next((c for c in IMAGE_COLUMNS if c in first), IMAGE_COLUMNS[0])
    items: list[tuple[Path, str]] = []
    skipped: list[tuple[str, str]] = []
    for n, rec in enumerate(records, 1):
        where = f"{path.name} record {n}"
        images = [v for v in lookup(rec, image_column) if isinstance(v, str) and v.strip()]
        if len(images) != 1:
            skipped.append((where, f"no image path at {image_column!r}"))
            continue
        values = sorted({str(v).strip() for v in lookup(rec, label_column) if not isinstance(v, (dict, list))} - {""})
        if not values:
            skipped.append((images[0], f"no label at {label_column!r}"))
            continue
        if len(values) > 1:
            skipped.append((images[0], f"ambiguous label at {label_column!r}: {', '.join(values)}"))
            continue
        image = Path(images[0])
        items.append((image if image.is_absolute() else path.parent / image, values[0]))
    if not items:
        keys = ", ".join(sorted(records[0])) if records and isinstance(records[0], dict) else "none"
        first = f"; first problem: {skipped[0][1]}" if skipped else ""
        raise ValueError(
            f"{path} gives no labelled images with --image-column {image_column!r} and "
            f"--label-column {label_column!r} (columns of the first record: {keys}){first}"
        )
    return LabelledImages(items, sorted({lab for _, lab in items}), skipped, str(path))


# -- evaluation -----------------------------------------------------------------------------------


def evaluate_classification(
    encoder: "Encoder",
    dataset: str | Path | LabelledImages,
    *,
    labels: Sequence[str] | None = None,
    templates: TemplateSpec = "simple",
    image_column: str | None = None,
    label_column: str = "label",
    batch_size: int = 32,
    keep_mistakes: int = 16,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ClassificationReport:
    """Zero-shot classify every image of ``dataset`` and score the predictions.

    Args:
        encoder: a model that embeds images and text.
        dataset: a folder, a metadata file (see the module docstring), or a :class:`LabelledImages`.
        labels: the labels to choose between; default the dataset's own. Extra labels act as
            distractors; every dataset label must be among them.
        templates: prompt templates (see :mod:`clipsearch.tasks.templates`).
        image_column, label_column: keys for metadata files (see :func:`load_labelled_images`).
        batch_size: images per forward pass; one batch of pixels is in memory at a time.
        keep_mistakes: how many of the most confident mistakes to keep for the report.
        on_start: called once with the number of images about to be classified.
        on_progress: called with the number of images just finished.

    Returns:
        A :class:`ClassificationReport`.
    """
    data = (
        dataset
        if isinstance(dataset, LabelledImages)
        else load_labelled_images(dataset, image_column=image_column, label_column=label_column)
    )
    if labels is None:
        names = list(data.labels)
    else:
        names = [str(x).strip() for x in labels]
        missing = sorted(set(data.labels) - set(names))
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ValueError(f"the dataset has labels that are not among --labels: {shown}")
    clf = ZeroShotClassifier(encoder, names, templates)
    index = {lab: i for i, lab in enumerate(clf.labels)}
    n_labels = clf.n_classes
    k = min(5, n_labels)
    confusion = np.zeros((n_labels, n_labels), dtype=np.int64)
    top_k_hits = 0
    worst: list[tuple[float, int, Mistake]] = []  # min-heap on the wrong prediction's probability
    skipped = list(data.skipped)
    if on_start:
        on_start(len(data.items))
    paths = [p for p, _ in data.items]
    truth = np.array([index[lab] for _, lab in data.items], dtype=np.int64)
    for batch, probs in clf.iter_probabilities(paths, batch_size=batch_size):
        ok = [item for item in batch if item.image is not None]
        skipped.extend((item.name, item.error or "unreadable") for item in batch if item.image is None)
        if ok:
            true = truth[[item.index for item in ok]]
            pred = probs.argmax(axis=1)
            top_k_hits += int((class_rank(probs, true, ties="for") < k).sum())
            np.add.at(confusion, (true, pred), 1)
            for item, t, p, row in zip(ok, true, pred, probs):
                if t != p:
                    m = Mistake(item.name, clf.labels[t], clf.labels[p], float(row[p]), float(row[t]))
                    entry = (m.prob, item.index, m)
                    if len(worst) < keep_mistakes:
                        heapq.heappush(worst, entry)
                    elif keep_mistakes and entry[:2] > worst[0][:2]:
                        heapq.heapreplace(worst, entry)
        if on_progress:
            on_progress(len(batch))
    n = int(confusion.sum())
    if n == 0:
        reasons = "; ".join(f"{s}: {r}" for s, r in skipped[:3])
        raise ValueError(f"none of the {len(paths)} images could be read ({reasons})")
    support = confusion.sum(axis=1)
    per_class = {lab: float(confusion[i, i] / support[i]) for i, lab in enumerate(clf.labels) if support[i]}
    return ClassificationReport(
        model=encoder.name,
        labels=clf.labels,
        n=n,
        top1=float(np.trace(confusion) / n),
        top5=top_k_hits / n,
        k=k,
        per_class=per_class,
        support={lab: int(support[i]) for i, lab in enumerate(clf.labels) if support[i]},
        confusion=confusion,
        mistakes=[m for _, _, m in sorted(worst, key=lambda e: (-e[0], e[1]))],
        skipped=skipped,
        templates=len(clf.templates),
    )


def write_report(report: ClassificationReport, out_dir: str | Path) -> dict[str, Path]:
    """Write ``summary.json``, ``confusion.png`` and ``mistakes.png`` into ``out_dir`` (created).

    Returns:
        ``{"summary": path, "confusion": path, "mistakes": path}``.
    """
    from clipsearch.tasks.classify import load_one
    from clipsearch.viz.confusion import confusion_matrix_png, mistakes_grid_png

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = out / "summary.json"
    summary.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    title = f"{report.model}: top-1 {report.top1:.1%} on {report.n} images"
    confusion = confusion_matrix_png(report.confusion, report.labels, out / "confusion.png", title=title)
    cells = []
    for m in report.mistakes:
        try:
            image = load_one(m.image, draft=256)
        except Exception:  # the image was readable a moment ago; draw the cell without it
            image = None
        cells.append((image, m.true, m.predicted, m.prob, m.image))
    mistakes = mistakes_grid_png(cells, out / "mistakes.png", title=f"{report.model}: most confident mistakes")
    return {"summary": summary, "confusion": confusion, "mistakes": mistakes}
