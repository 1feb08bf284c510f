"""Tests of skin_core.meta.referral: target, prediction-time features, threshold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skin_core.meta.referral import (
    ENSEMBLE_FEATURES,
    choose_threshold,
    difficulty_target,
    ensemble_feature_arrays,
    ensemble_features,
    referral_rates,
)


def test_target_is_wrong_by_every_model():
    stacked = np.array([
        [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]],
        [[0.8, 0.2], [0.7, 0.3], [0.3, 0.7]],
    ])
    labels = np.array([1, 0, 0])
    # image 0: both predict 0 (wrong) -> 1; image 1: model 2 right; image 2: model 1 right
    np.testing.assert_array_equal(difficulty_target(stacked, labels), [1, 0, 0])


def test_ensemble_features_by_hand():
    a = np.array([[1.0, 0.0], [0.5, 0.5]])
    b = np.array([[0.0, 1.0], [0.5, 0.5]])
    f = ensemble_features(np.stack([a, b]), ["X", "Y"])
    assert f.loc[0, "ens_max_prob"] == 0.5 and f.loc[0, "ens_margin"] == 0.0
    assert f.loc[0, "ens_entropy"] == pytest.approx(np.log(2))
    assert f.loc[0, "mean_pairwise_js"] == pytest.approx(np.log(2), rel=1e-6)
    assert f.loc[1, "mean_pairwise_js"] == pytest.approx(0.0, abs=1e-12)
    assert f.loc[0, "disagree_frac"] == 0.5 and f.loc[1, "disagree_frac"] == 0.0
    assert f.loc[0, "top_prob_std"] == pytest.approx(0.5)
    assert isinstance(f["ens_pred"].dtype, pd.CategoricalDtype)
    one = ensemble_features(a[None], ["X", "Y"])
    assert (one["mean_pairwise_js"] == 0).all() and (one["disagree_frac"] == 0).all()


def test_threshold_reaches_the_target_sensitivity():
    rng = np.random.default_rng(0)
    target = rng.random(1000) < 0.1
    scores = rng.random(1000) + target * 0.5
    t = choose_threshold(scores, target, sensitivity=0.8)
    rates = referral_rates(scores, target, t)
    assert rates["sensitivity"] >= 0.8
    assert rates["sensitivity"] < 0.8 + 1.5 / target.sum()
    assert 0 < rates["referral_rate"] < 1 and rates["specificity"] > 0.5


def test_threshold_without_positives_refers_nobody():
    assert choose_threshold(np.array([0.2, 0.9]), np.array([0, 0])) == 1.0
    with pytest.raises(ValueError, match="'sensitivity'"):
        choose_threshold(np.array([0.2]), np.array([1]), sensitivity=1.5)


def test_ensemble_feature_arrays_equal_referral_features():
    rng = np.random.default_rng(5)
    for m in (1, 3):
        stacked = rng.dirichlet(np.full(4, 0.5), (m, 200))
        frame = ensemble_features(stacked, ("A", "B", "C", "D"))
        arrays = ensemble_feature_arrays(stacked)
        assert tuple(arrays) == ENSEMBLE_FEATURES
        assert set(frame["ens_pred"]) == {"A", "B", "C", "D"}
        for name in ENSEMBLE_FEATURES:
            want = (frame[name].cat.codes if name == "ens_pred" else frame[name]).to_numpy(float)
            np.testing.assert_array_equal(arrays[name], want, err_msg=name)
