"""Continual-learning metrics on hand-computed matrices."""

import math

import pytest

from weaving.evaluation.continual_metrics import (
    average_accuracy,
    average_incremental_accuracy,
    continual_metrics,
    forgetting,
)

# Three tasks. Row i: after task i; column j: part j. Entries above the diagonal (unseen parts) are set to
# values that would change every metric if they were read.
MATRIX = [
    [0.90, 0.99, 0.99],
    [0.60, 0.80, 0.99],
    [0.50, 0.70, 0.40],
]


def test_average_accuracy_is_the_last_row_mean():
    assert math.isclose(average_accuracy(MATRIX), (0.50 + 0.70 + 0.40) / 3)


def test_average_incremental_accuracy_by_hand():
    # after task 1: 0.90; after task 2: (0.60 + 0.80) / 2 = 0.70; after task 3: 1.60 / 3
    assert math.isclose(average_incremental_accuracy(MATRIX), (0.90 + 0.70 + 1.60 / 3) / 3)


def test_forgetting_by_hand():
    # part 1: best before the last task max(0.90, 0.60) = 0.90, final 0.50 -> 0.40
    # part 2: best before the last task 0.80, final 0.70 -> 0.10
    assert math.isclose(forgetting(MATRIX), (0.40 + 0.10) / 2)


def test_forgetting_can_be_negative_when_a_part_improves():
    assert math.isclose(forgetting([[0.2, 0.0], [0.5, 0.9]]), -0.3)


def test_one_task():
    assert continual_metrics([[0.7]]) == {"accuracy_matrix": [[0.7]], "average_accuracy": 0.7,
                                          "average_incremental_accuracy": 0.7, "forgetting": 0.0}


@pytest.mark.parametrize(("matrix", "message"), [
    ([], "empty"),
    ([[0.5, 0.5], [0.5]], "square"),
    ([[1.5, 0.0], [0.5, 0.5]], r"matrix\[0\]\[0\] = 1.5"),
    ([[0.5, 0.0], [float("nan"), 0.5]], r"matrix\[1\]\[0\]"),
])
def test_bad_matrices(matrix, message):
    with pytest.raises(ValueError, match=message):
        continual_metrics(matrix)


def test_upper_entries_may_be_missing_values():
    assert continual_metrics([[0.5, float("nan")], [0.25, 0.75]])["average_incremental_accuracy"] == (0.5 + 0.5) / 2
