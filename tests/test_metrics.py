"""The measures the evaluations share (clipsearch.tasks.metrics): ranks, ties and unranked items.

Recall, precision and strict accuracy are also checked on hand-made matrices in test_quality.py.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from clipsearch.tasks.metrics import class_rank, mean_over_queries, recall_at_k, relevant_rank, strict_accuracy


def test_relevant_rank_counts_irrelevant_items_above_the_best_relevant_one() -> None:
    scores = np.array(
        [
            [0.9, 0.8, 0.7],  # relevant item 2 below two irrelevant ones
            [0.5, 0.5, 0.1],  # relevant item 1 tied with an irrelevant one
            [0.3, 0.2, 0.1],  # nothing relevant
            [0.9, -np.inf, -np.inf],  # the relevant item is unranked (beyond a re-ranking's depth)
        ]
    )
    relevant = np.array([[False, False, True], [False, True, False], [False, False, False], [False, True, False]])
    np.testing.assert_array_equal(relevant_rank(scores, relevant)[[0, 1, 3]], [2, 1, np.inf])
    np.testing.assert_array_equal(relevant_rank(scores, relevant, ties="for")[[0, 1]], [2, 0])
    assert math.isnan(relevant_rank(scores, relevant)[2])
    # an unranked relevant item is never found, however deep the cut-off
    np.testing.assert_array_equal(recall_at_k(scores, relevant, 3)[[0, 1, 3]], [1.0, 1.0, 0.0])
    assert mean_over_queries(recall_at_k(scores, relevant, 3)) == pytest.approx(2 / 3)  # the NaN query left out
    assert mean_over_queries([np.nan]) == 0.0


def test_class_rank_is_top_k_accuracy_with_either_tie_rule() -> None:
    probs = np.array([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2], [0.1, 0.2, 0.7]])
    truth = [0, 1, 0]
    np.testing.assert_array_equal(class_rank(probs, truth), [0, 1, 2])
    np.testing.assert_array_equal(class_rank(probs, truth, ties="for"), [0, 0, 2])  # evaluate classify's top-k
    np.testing.assert_array_equal(strict_accuracy(probs, truth), [True, False, False])
    with pytest.raises(ValueError, match=re.escape("need (n, classes) scores and n true classes; got (3, 3) and (2,)")):
        class_rank(probs, [0, 1])
