"""Text documents: splitting them into passages with character offsets, and reading files."""

from __future__ import annotations

from clipsearch.text.passages import (
    Document,
    Passage,
    approx_token_count,
    iter_passages,
    read_documents,
    sentence_spans,
    split_passages,
    token_counter,
)

__all__ = [
    "Document",
    "Passage",
    "approx_token_count",
    "iter_passages",
    "read_documents",
    "sentence_spans",
    "split_passages",
    "token_counter",
]
