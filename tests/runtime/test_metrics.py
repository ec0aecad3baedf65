"""runtime.metrics: AP/mAP agree with sklearn (ties included), hand-checked cases, NaN and shape errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dymn_edge.runtime.metrics import average_precision, mean_average_precision, top_k_hits


# --- average_precision -------------------------------------------------------------------------


def test_ap_perfect_ranking_is_one():
    assert average_precision(np.array([0.9, 0.8, 0.1, 0.0]), np.array([1, 1, 0, 0], bool)) == 1.0


def test_ap_hand_computed():
    # ranking: pos, neg, pos -> P at the positives: 1/1 and 2/3 -> AP = (1 + 2/3) / 2
    scores = np.array([0.9, 0.5, 0.3])
    targets = np.array([True, False, True])
    assert average_precision(scores, targets) == pytest.approx((1 + 2 / 3) / 2)


def test_ap_worst_ranking():
    # the single positive is ranked last of 4: AP = 1/4
    assert average_precision(np.array([0.4, 0.3, 0.2, 0.1]), np.array([0, 0, 0, 1])) == pytest.approx(0.25)


def test_ap_ties_enter_together():
    # all scores equal: one threshold, P = 2/4, R jumps 0 -> 1: AP = 0.5 regardless of order
    scores = np.full(4, 0.5, dtype=np.float32)
    assert average_precision(scores, np.array([1, 0, 0, 1])) == pytest.approx(0.5)
    assert average_precision(scores, np.array([0, 1, 1, 0])) == pytest.approx(0.5)
    # partial tie: [0.9 pos] then a tie {0.5 pos, 0.5 neg}: (1/2)*1 + (1/2)*(2/3)
    assert average_precision(np.array([0.9, 0.5, 0.5]), np.array([1, 0, 1])) == pytest.approx(0.5 + 1 / 3)


def test_ap_no_positive_is_nan():
    assert math.isnan(average_precision(np.array([0.1, 0.2]), np.array([False, False])))


def test_ap_all_positive_is_one():
    assert average_precision(np.array([0.1, 0.1, 0.7]), np.ones(3, bool)) == 1.0


@pytest.mark.parametrize(
    "scores, targets",
    [
        (np.zeros((3, 1)), np.zeros((3, 1), bool)),  # 2-D
        (np.zeros(3), np.zeros(4, bool)),  # length mismatch
        (np.zeros(0), np.zeros(0, bool)),  # empty
    ],
)
def test_ap_shape_errors(scores, targets):
    with pytest.raises(ValueError, match="scores|empty"):
        average_precision(scores, targets)


def test_ap_rejects_non_binary_targets_and_nan_scores():
    with pytest.raises(ValueError, match="0/1"):
        average_precision(np.array([0.1, 0.2]), np.array([0, 2]))
    with pytest.raises(ValueError, match="NaN"):
        average_precision(np.array([np.nan, 0.2]), np.array([0, 1]))


def test_ap_matches_sklearn_with_ties(rng):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    for trial in range(200):
        n = int(rng.integers(2, 60))
        # few distinct values -> many ties; some trials continuous, some float32
        if trial % 3 == 0:
            scores = rng.integers(0, 5, n).astype(np.float64) / 4
        elif trial % 3 == 1:
            scores = rng.random(n).astype(np.float32)
        else:
            scores = np.round(rng.random(n), 1)
        targets = rng.random(n) < rng.uniform(0.05, 0.9)
        if not targets.any():
            targets[rng.integers(n)] = True
        expected = sklearn_metrics.average_precision_score(targets, scores)
        assert average_precision(scores, targets) == pytest.approx(expected, abs=1e-12), (trial, scores, targets)


# --- mean_average_precision -------------------------------------------------------------------


def test_map_matches_sklearn_macro(rng):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    scores = np.round(rng.random((80, 12)), 2).astype(np.float32)
    targets = rng.random((80, 12)) < 0.2
    targets[:, 3] = False  # a class with no positive: NaN, excluded
    value, per_class = mean_average_precision(scores, targets)
    assert per_class.shape == (12,) and per_class.dtype == np.float64
    assert math.isnan(per_class[3])
    keep = [c for c in range(12) if c != 3]
    expected = sklearn_metrics.average_precision_score(targets[:, keep], scores[:, keep], average=None)
    np.testing.assert_allclose(per_class[keep], expected, atol=1e-12)
    assert value == pytest.approx(expected.mean(), abs=1e-12)


def test_map_selected_classes():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5], [0.1, 0.3, 0.5]])
    targets = np.array([[1, 0, 0], [0, 0, 1], [1, 1, 0]], bool)
    # class 0: pos at ranks 1 and 3 -> (1 + 2/3)/2; class 1: pos at rank 2 -> 1/2; class 2: all tied -> 1/3
    ap = [(1 + 2 / 3) / 2, 0.5, 1 / 3]
    value, per_class = mean_average_precision(scores, targets)
    np.testing.assert_allclose(per_class, ap)
    assert value == pytest.approx(np.mean(ap))
    value, _ = mean_average_precision(scores, targets, classes=[0, 2])
    assert value == pytest.approx((ap[0] + ap[2]) / 2)


def test_map_selected_class_without_positive_is_skipped():
    scores = np.array([[0.9, 0.1], [0.2, 0.8]])
    targets = np.array([[1, 0], [0, 0]], bool)
    value, per_class = mean_average_precision(scores, targets, classes=[0, 1])
    assert value == 1.0 and math.isnan(per_class[1])
    value, _ = mean_average_precision(scores, targets, classes=[1])
    assert math.isnan(value)


def test_map_errors():
    scores = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        mean_average_precision(scores, np.zeros((4, 2), bool))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        mean_average_precision(np.zeros(4), np.zeros(4, bool))
    with pytest.raises(ValueError, match="out of range"):
        mean_average_precision(scores, np.ones((4, 3), bool), classes=[0, 3])
    with pytest.raises(ValueError, match="repeated"):
        mean_average_precision(scores, np.ones((4, 3), bool), classes=[1, 1])


# --- top_k_hits -------------------------------------------------------------------------------


def test_top_k_hits():
    scores = np.array([[0.1, 0.9, 0.5, 0.3], [0.8, 0.1, 0.2, 0.7], [0.4, 0.4, 0.4, 0.4]])
    targets = np.array([[0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]], bool)
    np.testing.assert_array_equal(top_k_hits(scores, targets, 1), [False, False, False])
    np.testing.assert_array_equal(top_k_hits(scores, targets, 2), [True, False, False])  # ties: lower index first
    np.testing.assert_array_equal(top_k_hits(scores, targets, 3), [True, True, False])
    np.testing.assert_array_equal(top_k_hits(scores, targets, 4), [True, True, True])


def test_top_k_hits_no_positive_is_false():
    assert not top_k_hits(np.array([[0.5, 0.1]]), np.zeros((1, 2), bool), 2)[0]


@pytest.mark.parametrize("k", [0, 5, -1, 1.5, True])
def test_top_k_hits_bad_k(k):
    with pytest.raises(ValueError, match="k must be"):
        top_k_hits(np.zeros((2, 4)), np.zeros((2, 4), bool), k)


def test_top_k_hits_shape_error():
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        top_k_hits(np.zeros((2, 4)), np.zeros((3, 4), bool), 1)
