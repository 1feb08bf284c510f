"""Tests of skin_core.meta.calibration: temperature, vector, top-label and one-vs-rest isotonic,
selection, ECE, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.isotonic import IsotonicRegression

from skin_core.errors import ConfigError
from skin_core.meta.calibration import (
    Calibrator,
    expected_calibration_error,
    fit_calibrator,
    fit_isotonic,
    fit_temperature,
    fit_top_isotonic,
    fit_vector,
    reliability_curve,
)


def _overconfident(n: int, t_true: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z); reported probabilities softmax(z / t_true)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, 4))
    true_p = softmax(z, axis=1)
    labels = np.array([rng.choice(4, p=p) for p in true_p])
    return softmax(z / t_true, axis=1), labels


def test_temperature_scaling_recovers_the_distortion():
    probs, labels = _overconfident(4000, 0.5, seed=0)
    cal = fit_temperature(probs, labels)
    assert cal.temperature == pytest.approx(2.0, rel=0.1)
    before = expected_calibration_error(probs, labels)
    after = expected_calibration_error(cal.transform(probs), labels)
    assert after < before / 2
    assert (cal.transform(probs).argmax(1) == probs.argmax(1)).all()


def test_isotonic_json_round_trip_matches_scikit_learn():
    probs, labels = _overconfident(1000, 0.7, seed=1)
    cal = fit_isotonic(probs, labels)
    again = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_allclose(again.transform(probs), cal.transform(probs))
    iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(
        probs[:, 2], labels == 2)
    raw = np.column_stack([
        np.interp(probs[:, k], np.asarray(x), np.asarray(y))
        for k, (x, y) in enumerate(cal.isotonic)
    ])
    np.testing.assert_allclose(raw[:, 2], iso.predict(probs[:, 2]), atol=1e-12)
    np.testing.assert_allclose(cal.transform(probs).sum(axis=1), 1.0)


def test_auto_prefers_calibrating_a_distorted_model_and_records_why():
    probs, labels = _overconfident(3000, 0.4, seed=2)
    cal = fit_calibrator(probs, labels, method="auto", groups=np.arange(3000) // 2)
    assert cal.method in ("temperature", "top_isotonic")
    eces, nlls = cal.selection["ece"], cal.selection["nll"]
    assert eces[cal.method] < eces["none"] / 2 and nlls["temperature"] < nlls["none"]


def test_auto_keeps_a_calibrated_model_close_to_identity():
    probs, labels = _overconfident(3000, 1.0, seed=3)
    cal = fit_calibrator(probs, labels, method="auto")
    out = cal.transform(probs)
    if cal.method != "none":
        assert cal.temperature == pytest.approx(1.0, abs=0.1)
    assert np.abs(out.max(axis=1) - probs.max(axis=1)).mean() < 0.03
    assert (out.argmax(axis=1) == probs.argmax(axis=1)).all()


def _prior_shifted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reported softmax(z / 0.6); labels from softmax(z + shift): over-confident, and the
    classes' priors moved (as between out-of-fold single models and the served mean)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, 4))
    shift = np.array([0.8, 0.0, -0.5, -0.3])
    true_p = softmax(z + shift, axis=1)
    labels = (rng.random(n)[:, None] > np.cumsum(true_p, axis=1)).sum(axis=1)
    return softmax(z / 0.6, axis=1), labels, shift


def test_vector_scaling_recovers_temperature_and_class_shift_and_round_trips():
    probs, labels, shift = _prior_shifted(20000, seed=4)
    cal = fit_vector(probs, labels)
    assert cal.method == "vector" and cal.temperature == pytest.approx(1 / 0.6, rel=0.08)
    b = np.asarray(cal.bias)
    np.testing.assert_allclose(b - b.mean(), shift - shift.mean(), atol=0.08)
    temp = fit_temperature(probs, labels)
    assert (expected_calibration_error(cal.transform(probs), labels)
            < expected_calibration_error(temp.transform(probs), labels))
    again = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_allclose(again.transform(probs), cal.transform(probs))
    np.testing.assert_allclose(cal.transform(probs).sum(axis=1), 1.0)


def test_auto_never_moves_the_diagnosis_even_when_vector_scaling_fits_better():
    """Vector scaling wins the NLL when the priors moved, but it changes top classes (towards
    the frequent ones), so auto keeps to the maps that leave every top class in place."""
    probs, labels, _ = _prior_shifted(4000, seed=5)
    cal = fit_calibrator(probs, labels, method="auto", groups=np.arange(4000) // 3)
    assert cal.method in ("none", "temperature", "top_isotonic"), cal.selection
    assert (cal.transform(probs).argmax(axis=1) == probs.argmax(axis=1)).all()
    vector = fit_vector(probs, labels).transform(probs)
    assert (vector.argmax(axis=1) != probs.argmax(axis=1)).mean() > 0.05


def _bent(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Right about as often at 0.45 as at 0.9 confidence: no single temperature fits."""
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.3, 0.99, n)
    probs = np.empty((n, 4))
    probs[:, 0] = conf
    probs[:, 1:] = ((1 - conf) / 3)[:, None]
    probs[:, 1] += 1e-3
    probs[:, 1:] /= probs[:, 1:].sum(axis=1, keepdims=True) / (1 - conf)[:, None]
    right = rng.random(n) < np.where(conf < 0.6, 0.7, 0.75)
    labels = np.where(right, 0, rng.integers(1, 4, n))
    return probs, labels


def test_top_isotonic_fits_a_bent_confidence_keeps_the_top_class_and_round_trips():
    probs, labels = _bent(6000, seed=6)
    cal = fit_calibrator(probs, labels, method="auto", groups=np.arange(6000) // 2)
    assert cal.method == "top_isotonic", cal.selection
    out = cal.transform(probs)
    assert expected_calibration_error(out, labels) < 0.03
    assert expected_calibration_error(fit_temperature(probs, labels).transform(probs),
                                      labels) > 0.06
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    assert (out.argmax(axis=1) == 0).all()  # the top class, strictly on top
    again = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_allclose(again.transform(probs), out)


def test_top_isotonic_keeps_ties_and_one_hot_rows_sensible():
    cal = fit_top_isotonic(*_bent(2000, seed=7))
    rows = np.array([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    out = cal.transform(rows)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    assert out[0].argmax() == 0 and out[0, 0] > out[0, 1]
    assert out[1, 0] >= out[1, 1:].max() and np.ptp(out[1, 1:]) < 1e-12


def test_unknown_method_is_a_config_error():
    with pytest.raises(ConfigError, match="'method' parameter of fit_calibrator"):
        fit_calibrator(np.full((3, 2), 0.5), np.array([0, 1, 0]), method="platt")


def test_reliability_bins_and_ece_by_hand():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    labels = np.array([0, 1, 0, 0])
    bins = reliability_curve(probs, labels, n_bins=10)
    assert [b["n"] for b in bins] == [2, 2]
    assert bins[0]["accuracy"] == 1.0 and bins[1]["accuracy"] == 0.5
    # |1 - 0.55| * 0.5 + |0.5 - 0.95| * 0.5
    assert expected_calibration_error(probs, labels) == pytest.approx(0.45)
