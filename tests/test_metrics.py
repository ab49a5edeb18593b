"""Metrics and threshold rules against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import UserError
from train import metrics
from train.calibrate import calibrate_threshold


def test_auroc_hand_computed():
    # pairs (pos, neg): (0.35,0.1)+ (0.35,0.4)- (0.8,0.1)+ (0.8,0.4)+ -> 3/4
    assert metrics.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)


def test_auroc_ties_count_half():
    assert metrics.auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == pytest.approx(0.5)
    # (0.5 vs 0.5) = 1/2, (0.5 vs 0.2) = 1, (0.9 vs 0.5) = 1, (0.9 vs 0.2) = 1 -> 3.5 / 4
    assert metrics.auroc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == pytest.approx(0.875)


def test_auroc_perfect_inverted_and_undefined():
    assert metrics.auroc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert metrics.auroc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
    assert metrics.auroc([1, 2, 3], [0, 0, 0]) is None
    assert metrics.auroc([1, 2, 3], [1, 1, 1]) is None


def test_average_ranks():
    np.testing.assert_allclose(metrics.average_ranks([10, 20, 20, 5]), [2, 3.5, 3.5, 1])


def test_roc_curve_points_and_area():
    fpr, tpr, thr = metrics.roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    assert thr[0] == np.inf and list(thr[1:]) == [0.8, 0.4, 0.35, 0.1]
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(0.75)


def test_roc_curve_ties_make_one_diagonal_step():
    fpr, tpr, _ = metrics.roc_curve([0.5, 0.5], [0, 1])
    np.testing.assert_allclose(fpr, [0, 1])
    np.testing.assert_allclose(tpr, [0, 1])


def test_precision_recall_f1_at_threshold():
    r = metrics.precision_recall_f1([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.3)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (2, 1, 0, 1)
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == 1.0
    assert r["f1"] == pytest.approx(0.8)
    # strictly greater: a score equal to the threshold is not an anomaly
    assert metrics.precision_recall_f1([0.3], [1], 0.3)["tp"] == 0


def test_best_f1_threshold_separable():
    t, f1 = metrics.best_f1_threshold([0.1, 0.2, 0.7, 0.9], [0, 0, 1, 1])
    assert f1 == 1.0 and 0.2 < t < 0.7


def test_pixel_auroc_and_deterministic_subsample():
    rng = np.random.default_rng(1)
    masks = np.zeros((4, 16, 16), bool)
    masks[:, 4:8, 4:8] = True
    maps = rng.random((4, 16, 16)).astype(np.float32) + masks * 0.5
    full = metrics.pixel_auroc(maps, masks)
    sub1 = metrics.pixel_auroc(maps, masks, max_pixels=500)
    sub2 = metrics.pixel_auroc(maps, masks, max_pixels=500)
    assert 0.8 < full < 1.0
    assert sub1 == sub2
    assert abs(sub1 - full) < 0.1
    assert metrics.pixel_auroc(maps, np.zeros_like(masks)) is None


def test_threshold_small_n_uses_max_plus_margin():
    scores = np.linspace(0.01, 0.05, 20)
    info = calibrate_threshold(scores, target_fpr=0.01, margin=0.1)
    assert info["rule"] == "max_margin"
    assert info["threshold"] == pytest.approx(0.05 * 1.1)
    assert info["n"] == 20 and info["n_needed_for_quantile"] == 100
    assert info["val_fpr"] == 0.0


def test_threshold_large_n_uses_quantile():
    scores = np.random.default_rng(0).permutation(np.arange(1000, dtype=float))
    info = calibrate_threshold(scores, target_fpr=0.01)
    assert info["rule"] == "quantile"
    assert info["threshold"] == 989.0  # exactly 10 of 1000 (1 %) lie above
    assert info["val_fpr"] == pytest.approx(0.01)
    info100 = calibrate_threshold(np.arange(100, dtype=float), target_fpr=0.01)
    assert info100["rule"] == "quantile" and info100["threshold"] == 98.0


def test_threshold_reports_f1_optimal_when_val_anomalies_exist():
    info = calibrate_threshold([0.1, 0.2, 0.3], anomalous_scores=[0.5, 0.9])
    assert info["f1_optimal"]["f1"] == 1.0
    assert 0.3 < info["f1_optimal"]["threshold"] < 0.5
    assert "f1_optimal" not in calibrate_threshold([0.1, 0.2])


def test_threshold_bad_input():
    with pytest.raises(UserError, match="no held-out good images"):
        calibrate_threshold([])
    with pytest.raises(UserError, match="non-finite"):
        calibrate_threshold([0.1, float("nan")])
