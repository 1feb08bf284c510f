"""Tests of skin_core.meta.classifier: the scikit-learn estimator and the inner split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from skin_core.errors import ConfigError
from skin_core.meta.classifier import MetaClassifier, inner_split

GRID = {"num_leaves": (4, 7), "learning_rate": (0.2,)}


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 400
    y = rng.choice(["A", "B", "C"], n, p=[0.6, 0.3, 0.1])
    signal = np.stack([(y == c).astype(float) for c in "ABC"], axis=1)
    X = pd.DataFrame(signal * 1.5 + rng.normal(0, 1, (n, 3)), columns=["f0", "f1", "f2"])
    X["site"] = pd.Categorical(rng.choice(["x", "y", "unknown"], n),
                               categories=["x", "y", "unknown"])
    groups = np.repeat(np.arange(n // 2), 2)
    y[1::2] = y[::2]  # both images of a lesion share the label
    return X, y, groups


def test_init_stores_hyperparameters_only_and_clones():
    clf = MetaClassifier(param_grid=GRID, random_state=3)
    assert clf.get_params()["param_grid"] == GRID
    assert not hasattr(clf, "classes_")
    assert clone(clf).get_params()["random_state"] == 3


def test_predict_proba_before_fit_raises_not_fitted(data):
    X, _, _ = data
    with pytest.raises(NotFittedError):
        MetaClassifier().predict_proba(X)


def test_fit_returns_self_sets_attributes_and_is_deterministic(data):
    X, y, groups = data
    a = MetaClassifier(param_grid=GRID, classes=["C", "B", "A"])
    assert a.fit(X, y, groups=groups) is a
    assert list(a.classes_) == ["C", "B", "A"]
    assert a.best_params_["num_leaves"] in (4, 7) and a.best_params_["n_estimators"] >= 1
    assert len(a.tuning_results_) == 2
    p = a.predict_proba(X)
    assert p.shape == (400, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert (a.predict(X) == y).mean() > 0.6
    b = MetaClassifier(param_grid=GRID, classes=["C", "B", "A"]).fit(X, y, groups=groups)
    np.testing.assert_array_equal(p, b.predict_proba(X))


def test_class_absent_from_training_gets_probability_zero(data):
    X, y, groups = data
    keep = y != "C"
    clf = MetaClassifier(param_grid=GRID, classes=["A", "B", "C"]).fit(
        X[keep], y[keep], groups=groups[keep])
    p = clf.predict_proba(X)
    assert np.all(p[:, 2] == 0.0)


def test_columns_must_match_the_fitted_features(data):
    X, y, groups = data
    clf = MetaClassifier(param_grid=GRID).fit(X, y, groups=groups)
    with pytest.raises(ValueError, match="differ from the fitted"):
        clf.predict_proba(X[["f1", "f0", "f2", "site"]])


def test_bad_grid_is_a_config_error(data):
    X, y, groups = data
    with pytest.raises(ConfigError, match="'param_grid'"):
        MetaClassifier(param_grid=[7, 15]).fit(X, y, groups=groups)


def test_inner_split_keeps_lesions_together_and_stratifies():
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 300, 1000)
    y = (groups % 5 == 0).astype(int)  # label is a property of the lesion
    train, val = inner_split(y, groups, fraction=0.2, random_state=0)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 1000
    assert not set(groups[train]) & set(groups[val])
    assert 0.1 < len(val) / 1000 < 0.3
    assert abs(y[val].mean() - y.mean()) < 0.06
