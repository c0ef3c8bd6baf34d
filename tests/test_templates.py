"""Prompt templates and ensembling: the arithmetic checked by hand."""

from __future__ import annotations

import re

import numpy as np
import pytest

from clipsearch.models.base import Encoder, ModelInfo
from clipsearch.tasks.templates import (
    ENSEMBLE,
    SIMPLE,
    class_embeddings,
    ensemble_embeddings,
    fill,
    parse_labels,
    read_labels,
    resolve_templates,
    validate_labels,
)


class TableTextEncoder(Encoder):
    """Text vectors looked up in a table (unnormalised on purpose); records every call."""

    def __init__(self, table: dict[str, list[float]]):
        self.table = table
        self.calls: list[list[str]] = []
        dim = len(next(iter(table.values())))
        self.info = ModelInfo("table", "fake", dim, ("text",), 77, None, 1.0)

    def _encode_text_batch(self, texts, role):
        self.calls.append(list(texts))
        return np.array([self.table[t] for t in texts], dtype=np.float32)


def test_ensemble_normalises_each_prompt_then_the_mean():
    # cat: "a cat" = (3, 4, 0) -> (0.6, 0.8, 0); "the cat" = (0, 0, 2) -> (0, 0, 1)
    # mean (0.3, 0.4, 0.5), norm sqrt(0.5) -> (0.3, 0.4, 0.5) / 0.70711 = (0.42426, 0.56569, 0.70711)
    # dog: (1, 0, 0) twice -> (1, 0, 0)
    vectors = np.array([[3, 4, 0], [0, 0, 2], [5, 0, 0], [1, 0, 0]], dtype=np.float32)
    out = ensemble_embeddings(vectors, 2)
    assert out.shape == (2, 3)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], [0.42426, 0.56569, 0.70711], atol=1e-5)
    np.testing.assert_allclose(out[1], [1.0, 0.0, 0.0], atol=1e-6)
    # averaging the raw vectors instead would give (1.5, 2, 1) / 2.69 = (0.557, 0.743, 0.371)
    assert not np.allclose(out[0], np.array([1.5, 2, 1]) / np.linalg.norm([1.5, 2, 1]), atol=1e-2)


def test_class_embeddings_embed_every_prompt_once_class_major():
    enc = TableTextEncoder(
        {
            "a cat": [3, 4, 0],
            "the cat": [0, 0, 2],
            "a dog": [0, 1, 0],
            "the dog": [1, 0, 0],
        }
    )
    out = class_embeddings(enc, ["cat", "dog"], ["a {}", "the {}"])
    assert enc.calls == [["a cat", "the cat", "a dog", "the dog"]]
    np.testing.assert_allclose(out[0], [0.42426, 0.56569, 0.70711], atol=1e-5)
    np.testing.assert_allclose(out[1], [0.70711, 0.70711, 0.0], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_single_template_is_just_the_normalised_prompt():
    enc = TableTextEncoder({"a photo of a cat.": [0, 2, 0], "a photo of a dog.": [0, 0, -3]})
    out = class_embeddings(enc, ["cat", "dog"], "simple")
    np.testing.assert_allclose(out, [[0, 1, 0], [0, 0, -1]], atol=1e-6)


def test_builtin_sets():
    assert resolve_templates("simple") == list(SIMPLE) == ["a photo of a {}."]
    ens = resolve_templates("ensemble")
    assert len(ens) == 80
    assert len(set(ens)) == 80
    assert all("{}" in t for t in ens)
    assert "a bad photo of a {}." in ens and "itap of a {}." in ens and "a photo of a {}." in ens
    assert ens == list(ENSEMBLE)


def test_templates_from_a_file_and_a_list(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("# my prompts\na sketch of a {}.\n\n  {} on a table  \n", encoding="utf-8")
    assert resolve_templates(f) == ["a sketch of a {}.", "{} on a table"]
    assert resolve_templates(str(f)) == ["a sketch of a {}.", "{} on a table"]
    assert resolve_templates(["x {} y"]) == ["x {} y"]


def test_fill_leaves_other_braces_alone():
    assert fill("a {} called {name}", "dog") == "a dog called {name}"
    assert fill("{} and {}", "cat") == "cat and cat"


def test_template_errors_are_exact(tmp_path):
    with pytest.raises(ValueError, match=re.escape("templates 'fancy' is neither a built-in set (simple, ensemble) nor a file")):
        resolve_templates("fancy")
    with pytest.raises(ValueError, match=re.escape("template 'a photo' has no '{}' where the label goes")):
        resolve_templates(["a photo"])
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"no templates in {empty}; give at least one, such as 'a photo of a {{}}.'")):
        resolve_templates(empty)
    with pytest.raises(ValueError, match=re.escape("cannot split (5, 3) text vectors into 2 classes of equal size")):
        ensemble_embeddings(np.ones((5, 3)), 2)


def test_label_errors_are_exact():
    assert validate_labels([" dog ", "cat"]) == ["dog", "cat"]
    with pytest.raises(ValueError, match=re.escape("give at least two labels to choose between, not 1")):
        validate_labels(["dog"])
    with pytest.raises(ValueError, match=re.escape("label #1 is empty; every label needs at least one non-space character")):
        validate_labels(["dog", "  "])
    with pytest.raises(ValueError, match=re.escape("label 'dog' is given twice; labels must be distinct")):
        validate_labels(["dog", "cat", "dog "])


def test_labels_from_a_string_and_from_a_file(tmp_path):
    """One parser for the CLI's --labels and the server's form field; a file for --labels-file."""
    assert parse_labels("dog, cat,horse ,") == ["dog", "cat", "horse"]
    assert parse_labels("a dog, sitting\n a cat \n\n") == ["a dog, sitting", "a cat"]  # lines win over commas
    assert parse_labels(" , ") == []
    path = tmp_path / "labels.txt"
    path.write_text("\ufeff# the classes\ncircle\n  square \n\n   # not this one\nstar, big\n", encoding="utf-8")
    assert read_labels(path) == ["circle", "square", "star, big"]
    with pytest.raises(ValueError, match=re.escape(f"no such labels file: {tmp_path / 'missing.txt'}")):
        read_labels(tmp_path / "missing.txt")
