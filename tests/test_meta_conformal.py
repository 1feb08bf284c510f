"""Tests of skin_core.meta.conformal: LAC split conformal sets and their coverage."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import softmax

from skin_core.errors import ConfigError
from skin_core.meta.conformal import ConformalThresholds, fit_conformal, set_metrics

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


def test_small_class_gets_threshold_one():
    p = np.full((5, 2), 0.5)
    thr = fit_conformal(p, np.array([0, 0, 0, 0, 1]), ("A", "B"), coverage=0.9,
                        class_conditional=True)
    assert thr.thresholds[1] == 1.0


@pytest.mark.parametrize("bad", [0.0, 1.0, 90])
def test_coverage_outside_unit_interval_is_refused(bad):
    with pytest.raises(ConfigError, match="'coverage' parameter"):
        fit_conformal(np.full((4, 2), 0.5), np.array([0, 1, 0, 1]), ("A", "B"), coverage=bad)
