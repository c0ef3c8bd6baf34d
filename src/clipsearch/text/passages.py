"""Split long documents into passages that a text encoder can read whole.

Paragraphs (separated by blank lines) come first; a paragraph longer than the model's context
becomes windows of whole sentences that overlap by ``overlap_sentences``; a sentence longer than
the context becomes windows of whole words (and a single huge "word", such as a pasted hash,
becomes character windows). Every :class:`Passage` keeps its character offsets, so
``text[p.start:p.end] == p.text`` always and every passage can be traced back to its source.

Also reads the text documents that indexing accepts: ``.txt`` (and ``.md``), ``.jsonl`` and
``.csv``.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

TokenCounter = Callable[[str], int]

TEXT_SUFFIXES = (".txt", ".md", ".text")
DOCUMENT_SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".csv")
# Field (jsonl) or column (csv) that holds a document's text, in order of preference.
TEXT_FIELDS = ("text", "context", "passage", "content", "body")

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")  # a blank line, possibly holding spaces or \r
# A sentence ends at . ! ? or … (plus closing quotes/brackets) before whitespace, or at CJK stops.
# Abbreviations ("Dr. Smith") split too: windows glue neighbouring sentences back together.
_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s)|[\u3002\uff01\uff1f]+")
_WORD = re.compile(r"\S+")
_APPROX_TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclass
class Passage:
    """A piece of a document: ``text == document[start:end]`` (character offsets)."""

    text: str
    start: int  # first character, in the original document
    end: int  # one past the last character
    source: str | None = None  # the file, or file#id / file:line for jsonl and csv rows
    metadata: dict[str, Any] = field(default_factory=dict)  # the document's other fields


class Document(NamedTuple):
    """One document read from a file: where it came from, its text, and its other fields."""

    source: str
    text: str
    metadata: dict[str, Any]


def approx_token_count(text: str) -> int:
    """Words plus punctuation marks: the default counter when no tokenizer is given.

    Subword tokenizers produce somewhat more tokens than this (about 1.3x for English WordPiece),
    so leave a margin in ``max_tokens`` when using it, or pass the encoder's own counter.
    """
    return len(_APPROX_TOKEN.findall(text))


def token_counter(encoder: Any) -> TokenCounter | None:
    """The encoder's exact counter (``encoder.count_tokens(text) -> int``) when it has one."""
    counter = getattr(encoder, "count_tokens", None)
    return counter if callable(counter) else None


def split_passages(
    text: str,
    *,
    max_tokens: int,
    count_tokens: TokenCounter | None = None,
    overlap_sentences: int = 1,
    source: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> list[Passage]:
    """Split ``text`` into passages of at most ``max_tokens`` tokens each.

    Args:
        text: the whole document.
        max_tokens: the most tokens one passage may hold (the model's context, minus special
            tokens if ``count_tokens`` does not count them).
        count_tokens: tokens in a string; default :func:`approx_token_count`.
        overlap_sentences: sentences that consecutive windows of one long paragraph share.
        source: recorded on every passage.
        metadata: recorded on every passage (a copy each).

    Returns:
        Passages in document order; whitespace-only text gives ``[]``. Each passage is stripped
        of surrounding whitespace, fits ``max_tokens`` (a lone character always passes, so
        splitting ends), and every non-space character of ``text`` lies in at least one passage.
    """
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer, not {max_tokens!r}")
    if not isinstance(overlap_sentences, int) or overlap_sentences < 0:
        raise ValueError(f"overlap_sentences must be an integer >= 0, not {overlap_sentences!r}")
    count = count_tokens or approx_token_count

    def fits(a: int, b: int) -> bool:
        return count(text[a:b]) <= max_tokens

    spans: list[tuple[int, int]] = []
    for a, b in _paragraph_spans(text):
        if fits(a, b):
            spans.append((a, b))
            continue
        units: list[tuple[int, int]] = []
        for sa, sb in _sentence_spans(text, a, b):
            units.extend([(sa, sb)] if fits(sa, sb) else _pack(text, _word_units(text, sa, sb, fits), fits, 0))
        spans.extend(_pack(text, units, fits, overlap_sentences))
    meta = metadata or {}
    return [Passage(text[a:b], a, b, source, dict(meta)) for a, b in spans]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character offsets of each sentence in ``text``, whitespace excluded."""
    return [s for a, b in _paragraph_spans(text) for s in _sentence_spans(text, a, b)]


def _strip(text: str, a: int, b: int) -> tuple[int, int] | None:
    """``(a, b)`` narrowed to exclude surrounding whitespace; None when only whitespace."""
    seg = text[a:b]
    stripped = seg.strip()
    if not stripped:
        return None
    left = len(seg) - len(seg.lstrip())
    return a + left, a + left + len(stripped)


def _paragraph_spans(text: str) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for m in _PARAGRAPH_BREAK.finditer(text):
        spans.append(_strip(text, pos, m.start()))
        pos = m.end()
    spans.append(_strip(text, pos, len(text)))
    return [s for s in spans if s]


def _sentence_spans(text: str, a: int, b: int) -> list[tuple[int, int]]:
    spans, pos = [], a
    for m in _SENTENCE_END.finditer(text, a, b):
        spans.append(_strip(text, pos, m.end()))
        pos = m.end()
    spans.append(_strip(text, pos, b))
    return [s for s in spans if s]


def _word_units(text: str, a: int, b: int, fits: Callable[[int, int], bool]) -> list[tuple[int, int]]:
    """Words of ``text[a:b]``; a word too long on its own becomes the longest fitting char runs."""
    units = []
    for m in _WORD.finditer(text, a, b):
        wa, wb = m.start(), m.end()
        while wa < wb:
            if fits(wa, wb):
                units.append((wa, wb))
                break
            lo, hi = wa + 1, wb - 1  # find the longest prefix that fits; at least one char
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if fits(wa, mid):
                    lo = mid
                else:
                    hi = mid - 1
            units.append((wa, lo))
            wa = lo
    return units


def _pack(
    text: str, units: list[tuple[int, int]], fits: Callable[[int, int], bool], overlap: int
) -> list[tuple[int, int]]:
    """Greedy windows of consecutive units that fit; the next window repeats up to ``overlap``
    units of the previous one, but always adds a new unit (so windows never repeat)."""
    out: list[tuple[int, int]] = []
    i, n = 0, len(units)
    while i < n:
        j = i
        while j + 1 < n and fits(units[i][0], units[j + 1][1]):
            j += 1
        out.append((units[i][0], units[j][1]))
        if j == n - 1:
            break
        nxt = max(j + 1 - overlap, i + 1)
        while nxt <= j and not fits(units[nxt][0], units[j + 1][1]):
            nxt += 1
        i = nxt
    return out


# -- reading documents -----------------------------------------------------------------------


def read_documents(
    path: str | Path,
    *,
    text_field: str | None = None,
    on_error: Callable[[str, str], None] | None = None,
) -> Iterator[Document]:
    """Yield the documents in one ``.txt``/``.md``, ``.jsonl`` or ``.csv`` file.

    A text file is one document whose source is the path. Each jsonl line (a JSON object) and
    each csv row is a document: its text is ``text_field``, else the first of
    :data:`TEXT_FIELDS` present, else its ``caption`` (an image-caption pair); its source is
    ``PATH#ID`` when it has an ``id``, else ``PATH:LINE``; its other fields become metadata.

    Args:
        path: the file.
        text_field: the field or column holding the text.
        on_error: called with ``(source, reason)`` for each unusable line or row, which is then
            skipped; without it the first one raises ``ValueError``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in DOCUMENT_SUFFIXES:
        raise ValueError(
            f"cannot read documents from {path.name!r}: allowed suffixes are {', '.join(DOCUMENT_SUFFIXES)}"
        )

    def bad(where: str, reason: str) -> None:
        if on_error is None:
            raise ValueError(f"{where}: {reason}")
        on_error(where, reason)

    if suffix in TEXT_SUFFIXES:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
        if text.strip():
            yield Document(str(path), text, {})
        else:
            bad(str(path), "the file holds no text")
        return
    if suffix == ".jsonl":
        for where, obj, reason in json_records(path, errors="replace"):
            if obj is None:
                bad(where, reason)
                continue
            doc = _record_document(obj, path, where, text_field, bad)
            if doc:
                yield doc
        return
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            where = f"{path}:{reader.line_num}"
            row = {k: v for k, v in row.items() if k is not None}  # extra cells have no header
            doc = _record_document(row, path, where, text_field, bad)
            if doc:
                yield doc


def _record_document(
    obj: dict[str, Any], path: Path, where: str, text_field: str | None, bad: Callable[[str, str], None]
) -> Document | None:
    fields = (text_field,) if text_field else TEXT_FIELDS
    key = next((f for f in fields if f in obj), None)
    if key is None and not text_field and "caption" in obj:
        key = "caption"  # an image-caption pair with no other text: {"image": ..., "caption": ...}
    if key is None:
        also = "" if text_field else ", or 'caption'"
        bad(where, f"no text field: expected one of {', '.join(repr(f) for f in fields)}{also}")
        return None
    text = obj[key]
    if not isinstance(text, str) or not text.strip():
        bad(where, f"field {key!r} is empty or not a string")
        return None
    doc_id = obj.get("id")
    source = f"{path}#{doc_id}" if doc_id not in (None, "") else where
    return Document(source, text, {k: v for k, v in obj.items() if k != key})


def iter_passages(
    paths: Iterable[str | Path],
    *,
    max_tokens: int,
    count_tokens: TokenCounter | None = None,
    overlap_sentences: int = 1,
    text_field: str | None = None,
    on_error: Callable[[str, str], None] | None = None,
) -> Iterator[Passage]:
    """Read each document file and split every document into passages (see
    :func:`read_documents` and :func:`split_passages`); offsets are into the document's text."""
    for path in paths:
        for doc in read_documents(path, text_field=text_field, on_error=on_error):
            yield from split_passages(
                doc.text,
                max_tokens=max_tokens,
                count_tokens=count_tokens,
                overlap_sentences=overlap_sentences,
                source=doc.source,
                metadata=doc.metadata,
            )


def json_records(path: str | Path, *, errors: str = "strict") -> Iterator[tuple[str, dict[str, Any] | None, str]]:
    """The JSON objects of a ``.jsonl`` file, one a line (blank lines skipped).

    Yields:
        ``(where, record, reason)``: ``where`` is ``FILE:LINE``; ``record`` the object, or None
        for a line that is not a JSON object, with ``reason`` saying why (else ``""``).
    """
    path = Path(path)
    with path.open(encoding="utf-8-sig", errors=errors) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, None, f"not valid JSON ({exc.msg})"
                continue
            if not isinstance(obj, dict):
                yield where, None, f"expected a JSON object, got {type(obj).__name__}"
                continue
            yield where, obj, ""
