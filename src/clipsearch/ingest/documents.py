"""Text documents: paragraphs of .txt/.md files and records of .jsonl/.csv tables, as items to store."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from clipsearch.store import schema as sch

if TYPE_CHECKING:
    from clipsearch.models.base import Encoder

API_SOURCE = "<api>"
"""The ``source`` of texts given directly to :meth:`Store.add` (never pruned)."""


@dataclass
class TextItem:
    """A text to store: a paragraph of a document, or one jsonl/csv record."""

    text: str
    source: str  # the file (or API_SOURCE)
    path: str | None  # what to show: the file, or the image a caption belongs to
    record: str = ""  # "#ID" or ":LINE" within a table
    char_start: int | None = None
    char_end: int | None = None
    caption: str | None = None
    label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return sch.text_id(self.source, f"{self.record}@{self.char_start}", self.text)


def document_passages(text: str, encoder: Encoder | None) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of the passages a document becomes.

    One per paragraph (blank-line separated); a paragraph longer than the model's context is
    split further by :func:`clipsearch.text.split_passages` (whole sentences, then words).
    """
    from clipsearch.text import split_passages, token_counter

    context = encoder.info.context_length if encoder is not None else 512
    max_tokens = max(8, context - 2)  # room for the start and end tokens
    count = token_counter(encoder) if encoder is not None else None
    return [(p.start, p.end) for p in split_passages(text, max_tokens=max_tokens, count_tokens=count)]


def read_text_items(
    path: str,
    kind: str,
    encoder: Encoder | None,
    *,
    both: bool,
    on_error: Callable[[str, str], None],
) -> tuple[list[TextItem], list[tuple[str, dict[str, Any]]]]:
    """Items of one document file, and the images its records name.

    Returns:
        ``(text_items, image_refs)``: image refs are ``(absolute image path, metadata)``.
    """
    from clipsearch.text import read_documents

    items: list[TextItem] = []
    images: list[tuple[str, dict[str, Any]]] = []
    base = os.path.dirname(path)
    for doc in read_documents(path, on_error=on_error):
        if kind == "text":
            for a, b in document_passages(doc.text, encoder):
                items.append(TextItem(doc.text[a:b], path, path, "", a, b))
            continue
        record = doc.source[len(path) :] if doc.source.startswith(path) else doc.source
        meta = dict(doc.metadata)
        image = _pop_image_field(meta)
        caption = _str_or_none(meta.pop("caption", None))
        label = _str_or_none(meta.pop("label", None))
        meta.pop("id", None)
        extra = {k: v for k, v in meta.items() if v not in (None, "")}
        if image not in (None, ""):
            img_path = os.path.abspath(os.path.join(base, os.path.expanduser(str(image))))
            images.append(
                (
                    img_path,
                    {"caption": caption or doc.text, "label": label, "record": record, "extra": extra, "source": path},
                )
            )
            if both:
                items.append(TextItem(doc.text, path, img_path, record, caption=caption, label=label, extra=extra))
        else:
            items.append(TextItem(doc.text, path, path, record, caption=caption, label=label, extra=extra))
    return items, images


def _pop_image_field(meta: dict[str, Any]) -> Any:
    """The image file a record names, taken out of ``meta``: its ``image`` field, else the first
    of the other :data:`~clipsearch.images.IMAGE_FIELDS` (``file``, ``path``, ``filepath``, as
    in a demo world's ``metadata.jsonl`` or a training pairs file) whose value is an image file
    name: those words name other files too."""
    from clipsearch.images import IMAGE_FIELDS, is_image_path

    for key in IMAGE_FIELDS:
        value = meta.get(key)
        if value in (None, ""):
            continue
        if key == "image" or (isinstance(value, str) and is_image_path(value)):
            return meta.pop(key)
    return None


def _str_or_none(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
