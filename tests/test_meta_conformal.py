"""Tests of skin_core.meta.conformal: LAC split conformal sets and their coverage."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.special import softmax

from skin_core.errors import ConfigError
from skin_core.meta.conformal import (
    ConformalThresholds,
    conformal_quantile,
    fit_conformal,
    set_metrics,
)

CLASSES = ("MEL", "NV", "BCC", "AK", "BKL")


def _calibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.2, (n, 5)) + np.log([0.2, 0.5, 0.15, 0.05, 0.1])
    p = softmax(z, axis=1)
    u = rng.random(n)[:, None]
    labels = (u > p.cumsum(axis=1)).sum(axis=1)
    return p, np.minimum(labels, 4)


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_held_out_coverage_is_within_two_points_of_the_target(coverage):
    p_cal, y_cal = _calibrated(6000, seed=0)
    p_test, y_test = _calibrated(6000, seed=1)
    thr = fit_conformal(p_cal, y_cal, CLASSES, coverage=coverage)
    m = set_metrics(thr.sets(p_test), y_test, CLASSES)
    assert abs(m["coverage"] - coverage) <= 0.02
    assert 1.0 <= m["mean_set_size"] < 5.0


def test_class_conditional_covers_every_class():
    p_cal, y_cal = _calibrated(8000, seed=2)
    p_test, y_test = _calibrated(8000, seed=3)
    marginal = set_metrics(fit_conformal(p_cal, y_cal, CLASSES).sets(p_test), y_test, CLASSES)
    thr = fit_conformal(p_cal, y_cal, CLASSES, coverage=0.9, class_conditional=True)
    m = set_metrics(thr.sets(p_test), y_test, CLASSES)
    assert len(set(thr.thresholds)) == 5 and thr.n_calibration[1] > thr.n_calibration[3]
    for c in CLASSES:
        assert m["class_coverage"][c] >= 0.9 - 0.03
    assert min(marginal["class_coverage"].values()) < min(m["class_coverage"].values())


def test_sets_are_never_empty_and_read_like_a_clinician_would():
    thr = ConformalThresholds(coverage=0.9, classes=("MEL", "NV", "BCC"),
                              thresholds=(0.6, 0.6, 0.6))
    probs = np.array([[0.5, 0.45, 0.05], [0.2, 0.3, 0.3], [0.1, 0.85, 0.05]])
    assert thr.labels(probs) == ["MEL|NV", "NV", "NV"]
    assert thr.sets(np.array([[0.34, 0.33, 0.33]])).sum() == 1  # top class kept


def test_thresholds_round_trip_through_json():
    p, y = _calibrated(500, seed=4)
    thr = fit_conformal(p, y, CLASSES, coverage=0.85, class_conditional=True)
    again = ConformalThresholds.from_dict(json.loads(json.dumps(thr.to_dict())))
    assert again == thr


def test_small_class_gets_an_infinite_threshold_and_always_joins_the_set():
    p = np.full((5, 2), 0.5)
    thr = fit_conformal(p, np.array([0, 0, 0, 0, 1]), ("A", "B"), coverage=0.9,
                        class_conditional=True)
    assert thr.thresholds[1] == math.inf  # 1 score: rank ceil(2 * 0.9) = 2 > 1
    assert thr.sets(np.array([[0.99, 0.01]])).tolist() == [[True, True]]
    d = thr.to_dict()
    assert d["thresholds"][1] is None  # strict JSON
    assert ConformalThresholds.from_dict(json.loads(json.dumps(d))) == thr


NINE = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6])  # 0.1 .. 0.9, shuffled


@pytest.mark.parametrize(("scores", "coverage", "expected"), [
    (NINE, 0.8, 0.8),   # rank ceil(10 * 0.8) = 8: the 8th smallest (np.quantile "higher": 0.9)
    (NINE, 0.9, 0.9),   # rank 9 (10 * 0.9 is 9.0, not rounded up to 10)
    (NINE, 0.95, math.inf),  # rank 10 > 9: too few scores, every class in the set
    (NINE, 0.5, 0.5),   # rank 5
    (np.array([0.4, 0.1, 0.3, 0.2]), 0.6, 0.3),  # rank 3 of 4 (np.quantile "higher": 0.4)
    (np.array([0.25]), 0.4, 0.25),  # rank ceil(0.8) = 1
    (np.array([]), 0.9, math.inf),
    (np.arange(1, 20) / 20, 0.95, 0.95),  # n = 19: rank ceil(19.0) = 19, the largest
])
def test_conformal_quantile_exact_values(scores, coverage, expected):
    assert conformal_quantile(scores, coverage) == expected


def test_fit_conformal_uses_the_finite_sample_rank_overall_and_per_class():
    # scores 1 - p_label: class A rows 0.1, 0.2, 0.3, 0.4; class B rows 0.15, 0.35, 0.55
    p_label = np.array([0.9, 0.8, 0.7, 0.6, 0.85, 0.65, 0.45])
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    probs = np.column_stack([np.where(labels == 0, p_label, 1 - p_label),
                             np.where(labels == 1, p_label, 1 - p_label)])
    overall = fit_conformal(probs, labels, ("A", "B"), coverage=0.7)  # rank ceil(5.6) = 6
    assert overall.thresholds == pytest.approx((0.4, 0.4)) and overall.n_calibration == (7,)
    per = fit_conformal(probs, labels, ("A", "B"), coverage=0.7, class_conditional=True)
    # A: n = 4, rank ceil(3.5) = 4 -> 0.4; B: n = 3, rank ceil(2.8) = 3 -> 0.55
    assert per.thresholds == pytest.approx((0.4, 0.55)) and per.n_calibration == (4, 3)


def test_marginal_coverage_is_exactly_the_rank_over_n_plus_one():
    # Exchangeable continuous scores: P(test <= q) = rank / (n + 1) = 18 / 20 for n = 19 at
    # 0.9 (the old np.quantile(..., method="higher") at that level took rank 19: 0.95).
    rng = np.random.default_rng(0)
    scores = rng.random((20000, 20))
    hits = [scores[i, 19] <= conformal_quantile(scores[i, :19], 0.9) for i in range(20000)]
    assert np.mean(hits) == pytest.approx(0.9, abs=0.006)


@pytest.mark.parametrize("bad", [0.0, 1.0, 90])
def test_coverage_outside_unit_interval_is_refused(bad):
    with pytest.raises(ConfigError, match="'coverage' parameter"):
        fit_conformal(np.full((4, 2), 0.5), np.array([0, 1, 0, 1]), ("A", "B"), coverage=bad)
