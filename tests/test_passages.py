"""Passage splitting keeps offsets that point back at the original text; document readers."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipsearch.text.passages import (
    Passage,
    approx_token_count,
    iter_passages,
    read_documents,
    split_passages,
)

DOC = (
    "Canberra is the capital city of Australia. It was chosen as a compromise between Sydney "
    "and Melbourne.\n\n"
    "Paris is the capital of France.\n"
    "   \n"
    "  Short third paragraph.  "
)


def test_paragraphs_first_with_offsets():
    passages = split_passages(DOC, max_tokens=100, source="doc.txt")
    assert [p.text for p in passages] == [
        "Canberra is the capital city of Australia. It was chosen as a compromise between Sydney and Melbourne.",
        "Paris is the capital of France.",
        "Short third paragraph.",
    ]
    for p in passages:
        assert DOC[p.start : p.end] == p.text
        assert p.source == "doc.txt"


def test_long_paragraph_becomes_overlapping_sentence_windows():
    sentences = [f"Sentence number {i} says something." for i in range(10)]  # 6 tokens each
    text = " ".join(sentences)
    passages = split_passages(text, max_tokens=12, overlap_sentences=1)
    # two sentences fit in 12 tokens; each window repeats the previous window's last sentence
    assert [p.text for p in passages] == [" ".join(sentences[i : i + 2]) for i in range(9)]
    for p in passages:
        assert text[p.start : p.end] == p.text


def test_no_overlap_and_wider_windows():
    sentences = [f"Sentence number {i} says something." for i in range(7)]
    text = " ".join(sentences)
    passages = split_passages(text, max_tokens=18, overlap_sentences=0)
    assert [p.text for p in passages] == [" ".join(sentences[i : i + 3]) for i in (0, 3)] + [sentences[6]]


def test_overlap_never_repeats_a_window():
    # the second sentence is so long that it cannot share a window with the first
    text = "Short one. " + " ".join(["word"] * 9) + ". Tail here."
    passages = split_passages(text, max_tokens=10, overlap_sentences=2)
    assert [p.text for p in passages] == ["Short one.", " ".join(["word"] * 9) + ".", "Tail here."]


def test_sentence_longer_than_context_splits_on_words_then_characters():
    text = "alpha beta gamma delta epsilon " + "x" * 25
    passages = split_passages(text, max_tokens=2, count_tokens=lambda s: -(-len(s) // 10))
    # 10 characters per token: words pack into windows of at most 20 characters
    assert [p.text for p in passages] == ["alpha beta gamma", "delta epsilon", "x" * 20, "x" * 5]
    for p in passages:
        assert text[p.start : p.end] == p.text


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match=re.escape("max_tokens must be a positive integer, not 0")):
        split_passages("text", max_tokens=0)
    with pytest.raises(ValueError, match=re.escape("overlap_sentences must be an integer >= 0, not -1")):
        split_passages("text", max_tokens=5, overlap_sentences=-1)


def test_whitespace_only_gives_nothing():
    assert split_passages(" \n\n \t ", max_tokens=5) == []


_ALPHABET = st.sampled_from(
    list("abc xyz") + [" ", " ", "\n", "\n\n", ". ", "! ", "?", "\u3002", "\u00e9", "\t", "\r\n"]
)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.one_of(_ALPHABET, st.text(min_size=1, max_size=8)), max_size=80),
    max_tokens=st.integers(1, 12),
    overlap=st.integers(0, 3),
    by_chars=st.booleans(),
)
def test_offsets_always_point_back_at_the_text(parts, max_tokens, overlap, by_chars):
    text = "".join(parts)
    count = (lambda s: len(s)) if by_chars else approx_token_count
    passages = split_passages(text, max_tokens=max_tokens, count_tokens=count, overlap_sentences=overlap)
    covered = set()
    for p in passages:
        assert text[p.start : p.end] == p.text
        assert p.text and p.text == p.text.strip()
        assert count(p.text) <= max_tokens or len(p.text) == 1
        covered.update(range(p.start, p.end))
    assert [p.start for p in passages] == sorted(p.start for p in passages)
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


def test_read_txt_jsonl_csv(tmp_path):
    (tmp_path / "a.txt").write_text("Hello there.\n\nSecond paragraph.", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"id": "c1", "text": "Canberra is the capital.", "title": "Australia"})
        + "\n\n"
        + json.dumps({"context": "No id here."})
        + "\n",
        encoding="utf-8",
    )
    (tmp_path / "c.csv").write_text('id,body,lang\nr1,"Quoted, with comma.",en\n', encoding="utf-8")
    docs = [d for name in ("a.txt", "b.jsonl", "c.csv") for d in read_documents(tmp_path / name)]
    assert [(d.source, d.text, d.metadata) for d in docs] == [
        (str(tmp_path / "a.txt"), "Hello there.\n\nSecond paragraph.", {}),
        (f"{tmp_path / 'b.jsonl'}#c1", "Canberra is the capital.", {"id": "c1", "title": "Australia"}),
        (f"{tmp_path / 'b.jsonl'}:3", "No id here.", {}),
        (f"{tmp_path / 'c.csv'}#r1", "Quoted, with comma.", {"id": "r1", "lang": "en"}),
    ]
    passages = list(iter_passages([tmp_path / "a.txt", tmp_path / "b.jsonl"], max_tokens=50))
    assert [(p.text, p.source) for p in passages][:3] == [
        ("Hello there.", str(tmp_path / "a.txt")),
        ("Second paragraph.", str(tmp_path / "a.txt")),
        ("Canberra is the capital.", f"{tmp_path / 'b.jsonl'}#c1"),
    ]
    assert passages[2].metadata == {"id": "c1", "title": "Australia"}
    assert isinstance(passages[0], Passage)


def test_bad_rows_are_skipped_with_a_reason_or_raise(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "ok"}\nnot json\n[1, 2]\n{"title": "no text"}\n{"text": "  "}\n', encoding="utf-8")
    errors = []
    docs = list(read_documents(f, on_error=lambda where, why: errors.append((where, why))))
    assert [d.text for d in docs] == ["ok"]
    assert errors == [
        (f"{f}:2", "not valid JSON (Expecting value)"),
        (f"{f}:3", "expected a JSON object, got list"),
        (f"{f}:4", "no text field: expected one of 'text', 'context', 'passage', 'content', 'body', or 'caption'"),
        (f"{f}:5", "field 'text' is empty or not a string"),
    ]
    with pytest.raises(ValueError, match=re.escape(f"{f}:2: not valid JSON (Expecting value)")):
        list(read_documents(f))
    with pytest.raises(ValueError, match=re.escape("cannot read documents from 'x.pdf': allowed suffixes are")):
        list(read_documents(tmp_path / "x.pdf"))
