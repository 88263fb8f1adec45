"""Hand-made gradient features -> exact influence scores; score tables -> the top share in a fixed order."""

import math

import numpy as np
import pytest

from mathfactory.tasks.core.influence import influence_scores, select_top

S = 1 / math.sqrt(2)


def test_scores_are_cosines_of_group_means_of_unit_rows_with_the_reference_mean():
    features = np.array([
        [2.0, 0.0, 0.0],  # a: along x...
        [0.0, 5.0, 0.0],  # a: ...and y, with a longer gradient that normalization must not let dominate
        [0.0, 0.0, 3.0],  # b: along z
        [-1.0, 0.0, 0.0],  # c: against x
    ])
    reference = np.array([[10.0, 0.0, 0.0], [0.0, 0.1, 0.0]])  # unit mean (1/2, 1/2, 0): lengths do not count
    scores = influence_scores(features, ["a", "a", "b", "c"], reference)
    assert scores.keys() == {"a", "b", "c"}
    # a: mean (1/2, 1/2, 0) is the reference direction itself; without normalization it would be ~(0.37, 0.93).
    assert scores["a"][0] == pytest.approx(1.0)
    assert scores["b"] == (pytest.approx(0.0), 1)
    assert scores["c"] == (pytest.approx(-S), 1)
    assert scores["a"][1] == 2


def test_a_group_split_across_rows_in_any_order_scores_the_same():
    rng = np.random.default_rng(0)
    features, reference = rng.normal(size=(9, 4)), rng.normal(size=(5, 4))
    groups = ["s1", "s2", "s3"] * 3
    scores = influence_scores(features, groups, reference)
    perm = rng.permutation(9)
    shuffled = influence_scores(features[perm], [groups[i] for i in perm], reference)
    assert scores.keys() == shuffled.keys()
    for g in scores:
        assert shuffled[g][0] == pytest.approx(scores[g][0])
        unit = features[[i for i, x in enumerate(groups) if x == g]]
        unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
        target = (reference / np.linalg.norm(reference, axis=1, keepdims=True)).mean(0)
        mean = unit.mean(0)
        assert scores[g] == (pytest.approx(mean @ target / np.linalg.norm(mean) / np.linalg.norm(target)), 3)


def test_a_zero_gradient_row_adds_no_direction_and_opposite_rows_cancel_to_zero():
    reference = np.array([[1.0, 0.0]])
    scores = influence_scores(np.array([[0.0, 0.0], [0.0, 4.0], [3.0, 0.0], [-3.0, 0.0]]),
                              ["z", "z", "x", "x"], reference)
    assert scores == {"z": (0.0, 2), "x": (0.0, 2)}


def test_mismatched_labels_and_an_empty_reference_are_refused():
    with pytest.raises(ValueError, match="one row per group"):
        influence_scores(np.ones((3, 2)), ["a", "b"], np.ones((1, 2)))
    with pytest.raises(ValueError, match="reference set is empty"):
        influence_scores(np.ones((2, 2)), ["a", "b"], np.zeros((0, 2)))


SCORES = {"d": 0.9, "b": 0.5, "a": 0.5, "c": -0.2, "e": 0.1, "f": 0.0, "g": 0.3, "h": 0.2, "i": 0.4, "j": 0.6}
RANKED = ["d", "j", "a", "b", "i", "g", "h", "e", "f", "c"]  # a before b: a tie goes to the smaller id


@pytest.mark.parametrize("fraction, expected", [
    (1.0, RANKED),
    (0.3, RANKED[:3]),  # 0.3 * 10 is 3.0000000000000004 in floats: still 3
    (0.26, RANKED[:3]),  # round(2.6)
    (0.24, RANKED[:2]),  # round(2.4)
    (0.01, RANKED[:1]),  # any positive fraction keeps one
    (0.0, []),
])
def test_select_top_keeps_the_most_influential_share_in_order(fraction, expected):
    assert select_top(SCORES, fraction) == expected
    assert select_top(dict(reversed(SCORES.items())), fraction) == expected  # insertion order does not matter


def test_select_top_of_nothing_is_nothing_and_bad_fractions_are_refused():
    assert select_top({}, 0.5) == []
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            select_top(SCORES, bad)
