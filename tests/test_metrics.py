"""Metrics pinned against hand computations and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest

from skin_core.analysis.metrics import (
    bootstrap_ci,
    classification_metrics,
    sensitivity_at_specificity,
)


def test_classification_metrics_hand_case():
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([
        [0.8, 0.1, 0.1], [0.2, 0.7, 0.1],   # class 0: 1 of 2 right
        [0.1, 0.8, 0.1], [0.1, 0.6, 0.3],   # class 1: 2 of 2
        [0.1, 0.1, 0.8], [0.5, 0.2, 0.3],   # class 2: 1 of 2
    ])
    m = classification_metrics(labels, probs, ["A", "B", "C"])
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["n"] == 6
    assert set(m["auc"]) == {"A", "B", "C"}
    assert m["auc"]["B"] == pytest.approx(7 / 8)  # 0.7 (neg) outranks 0.6 (pos)


def test_auc_none_when_class_absent():
    m = classification_metrics(np.array([0, 0]), np.array([[0.9, 0.1], [0.6, 0.4]]), ["A", "B"])
    assert m["auc"]["B"] is None


def test_sensitivity_at_specificity():
    y = np.array([0] * 10 + [1] * 4)
    s = np.array(list(range(10)) + [5.5, 8.5, 9.5, 20])
    # specificity 0.8 -> threshold at the 8th negative (7): positives above 7 -> 3 of 4
    assert sensitivity_at_specificity(y, s, 0.8) == pytest.approx(0.75)
    assert sensitivity_at_specificity(y, s, 1.0) == pytest.approx(0.5)


def test_bootstrap_ci_covers_mean_and_is_seeded():
    x = np.random.default_rng(0).normal(5, 1, 400)
    ci1 = bootstrap_ci(lambda idx: x[idx].mean(), len(x), n_resamples=500, seed=3)
    ci2 = bootstrap_ci(lambda idx: x[idx].mean(), len(x), n_resamples=500, seed=3)
    assert ci1 == ci2
    assert ci1[0] < x.mean() < ci1[1]
    assert 0.1 < ci1[1] - ci1[0] < 0.3  # ~ 2 * 1.96 / sqrt(400) = 0.196


def test_cluster_bootstrap_is_wider_for_clustered_data():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(40), 10)
    x = np.repeat(rng.normal(0, 1, 40), 10) + rng.normal(0, 0.1, 400)
    plain = bootstrap_ci(lambda i: x[i].mean(), 400, n_resamples=400, seed=0)
    clustered = bootstrap_ci(lambda i: x[i].mean(), 400, n_resamples=400, seed=0, groups=groups)
    assert (clustered[1] - clustered[0]) > 2 * (plain[1] - plain[0])
