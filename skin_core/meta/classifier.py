"""The meta-classifier: a scikit-learn estimator wrapping ``lightgbm.LGBMClassifier``.

Light tuning: each point of a small grid (``num_leaves`` x ``learning_rate``) is trained on an
inner training split with early stopping on an inner validation split grouped by lesion (no
lesion in both); the point with the lowest class-balanced validation log-loss wins and is
refit on all the training data with its early-stopped number of trees. Class weighting is
``"balanced"``. Training is deterministic (``deterministic=True``, ``force_row_wise=True``,
fixed ``random_state`` and ``n_jobs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from skin_core.errors import ConfigError, DataError

#: The default tuning grid (2 points; trees chosen by early stopping). Offered (3, 7, 15), the
#: inner validation loss chose 3 leaves in 24 of 25 tuned fits (real HAM10000: the meta-models
#: with and without metadata; the synthetic ISIC 2019-sized bench: all three variants), 15 in
#: none; on HAM10000 the metadata-free meta-model reaches the CNN ensemble with 3 leaves
#: (balanced accuracy 0.700 against 0.695 with the old grid, 7 and 15; docs/meta.md).
#: Sized so the nested CV at ISIC 2019 size stays under 3 minutes on 2 cores
#: (bench/bench_meta.py).
DEFAULT_PARAM_GRID: dict[str, tuple[Any, ...]] = {
    "num_leaves": (3, 7),
    "learning_rate": (0.1,),
}


def inner_split(
    y: np.ndarray, groups: np.ndarray, *, fraction: float = 0.2, random_state: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One lesion-grouped, label-stratified (train, validation) split of row indices.

    Each group (lesion) gets the label of its first row; within each label the groups are
    shuffled and ``round(fraction * n_groups)`` of them (at least one when the label has two
    or more groups) go to validation. No group is on both sides. (Linear time; scikit-learn's
    ``StratifiedGroupKFold`` took 6 s on 20,000 rows.)

    Raises
    ------
    DataError
        Fewer than two groups.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(
            f"The 'inner_fraction' parameter must be in (0, 1). Got {fraction!r} instead."
        )
    y = np.asarray(y)
    groups = np.asarray(groups)
    uniq, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    if len(uniq) < 2:
        raise DataError(
            f"Only {len(uniq)} lesion group(s) in the training part; the inner tuning split "
            f"needs at least 2."
        )
    g_label = y[first]
    rng = np.random.default_rng(random_state)
    is_val = np.zeros(len(uniq), dtype=bool)
    for c in np.unique(g_label):
        members = rng.permutation(np.flatnonzero(g_label == c))
        take = int(round(fraction * len(members)))
        if take == 0 and len(members) >= 2:
            take = 1
        is_val[members[:take]] = True
    if is_val.all() or not is_val.any():
        is_val[:] = False
        is_val[rng.permutation(len(uniq))[: max(1, int(round(fraction * len(uniq))))]] = True
    row_val = is_val[inverse]
    return np.flatnonzero(~row_val), np.flatnonzero(row_val)


class MetaClassifier(ClassifierMixin, BaseEstimator):
    """LightGBM meta-classifier with class weighting and light grouped tuning.

    Parameters
    ----------
    classes:
        Class labels in output column order (default: sorted unique ``y``). Classes absent
        from a training part get probability 0.
    param_grid:
        Mapping ``name -> values`` of LightGBM parameters to try (default
        :data:`DEFAULT_PARAM_GRID`). ``n_estimators`` is chosen by early stopping.
    max_estimators:
        Upper bound on trees (boosting rounds) during tuning.
    early_stopping_rounds:
        Patience of early stopping on the inner validation split.
    inner_fraction:
        Share of lesion groups held out for tuning.
    class_weight:
        Passed to LightGBM (``"balanced"`` by default).
    min_child_samples, colsample_bytree, max_bin:
        Fixed LightGBM parameters.
    random_state:
        Seed of the inner split and of LightGBM.
    n_jobs:
        LightGBM threads (default 1: with busy shared cores, OpenMP threads that wait for
        each other made a fit 30x slower in our measurements; raise on a dedicated machine).

    Attributes
    ----------
    classes_ : ndarray
        Class labels.
    booster_ : lightgbm.Booster
        The refit model.
    best_params_ : dict
        Winning grid point plus ``n_estimators``.
    tuning_results_ : list of dict
        Every grid point with its validation loss and best iteration.
    inner_val_proba_, inner_val_y_, inner_val_index_ : ndarray
        Probabilities of the winning grid point on the inner validation rows, their labels
        (indices into ``classes_``) and row positions: held-out data for calibration.

    Examples
    --------
    >>> clf = MetaClassifier(classes=["MEL", "NV"]).fit(X, y, groups=lesions)  # doctest: +SKIP
    >>> clf.predict_proba(X_new)                                               # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        classes: Sequence[Any] | None = None,
        param_grid: dict[str, Sequence[Any]] | None = None,
        max_estimators: int = 300,
        early_stopping_rounds: int = 20,
        inner_fraction: float = 0.2,
        class_weight: str | dict | None = "balanced",
        min_child_samples: int = 20,
        colsample_bytree: float = 0.8,
        max_bin: int = 63,
        random_state: int = 0,
        n_jobs: int = 1,
    ) -> None:
        self.classes = classes
        self.param_grid = param_grid
        self.max_estimators = max_estimators
        self.early_stopping_rounds = early_stopping_rounds
        self.inner_fraction = inner_fraction
        self.class_weight = class_weight
        self.min_child_samples = min_child_samples
        self.colsample_bytree = colsample_bytree
        self.max_bin = max_bin
        self.random_state = random_state
        self.n_jobs = n_jobs

    # -- helpers -------------------------------------------------------------------------
    def _lgbm(self, **params: Any):
        import lightgbm as lgb

        base = dict(
            class_weight=self.class_weight,
            min_child_samples=self.min_child_samples,
            colsample_bytree=self.colsample_bytree,
            max_bin=self.max_bin,
            random_state=self.random_state,
            n_jobs=self.n_jobs,
            deterministic=True,
            force_row_wise=True,
            verbose=-1,
        )
        base.update(params)
        return lgb.LGBMClassifier(**base)

    def _grid(self) -> list[dict[str, Any]]:
        grid = DEFAULT_PARAM_GRID if self.param_grid is None else self.param_grid
        if not isinstance(grid, dict) or not grid:
            raise ConfigError(
                f"The 'param_grid' parameter of MetaClassifier must be a non-empty dict of "
                f"lists. Got {grid!r} instead."
            )
        points: list[dict[str, Any]] = [{}]
        for name, values in grid.items():
            points = [{**p, name: v} for p in points for v in values]
        return points

    def _encode(self, y: Any) -> np.ndarray:
        lookup = {c: i for i, c in enumerate(self.classes_.tolist())}
        y = np.asarray(y)
        try:
            return np.array([lookup[v] for v in y.tolist()], dtype=int)
        except KeyError as e:
            raise DataError(
                f"Label {e.args[0]!r} is not one of the classes {self.classes_.tolist()}."
            ) from e

    # -- estimator API --------------------------------------------------------------------
    def fit(self, X: pd.DataFrame, y: Any, *, groups: Any = None) -> MetaClassifier:
        """Tune on a grouped inner split, then refit on all rows.

        Parameters
        ----------
        X:
            ``(N, F)`` feature DataFrame (categoricals allowed) from
            :func:`~skin_core.meta.features.build_features`.
        y:
            ``(N,)`` class labels.
        groups:
            ``(N,)`` lesion ids for the inner split (default: one group per row).

        Returns
        -------
        self
        """
        if not isinstance(X, pd.DataFrame):
            raise ConfigError("MetaClassifier.fit expects X as a pandas DataFrame.")
        y = np.asarray(y)
        if len(y) != len(X):
            raise DataError(f"X has {len(X)} rows but y has {len(y)} labels.")
        self.classes_ = np.asarray(
            sorted(np.unique(y).tolist()) if self.classes is None else list(self.classes)
        )
        y_idx = self._encode(y)
        if len(np.unique(y_idx)) < 2:
            raise DataError("The meta-classifier needs at least two classes among its labels.")
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        train, val = inner_split(
            y_idx, groups, fraction=self.inner_fraction, random_state=self.random_state
        )
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.n_features_in_ = X.shape[1]
        Xt, Xv = X.iloc[train], X.iloc[val]
        yt, yv = y_idx[train], y_idx[val]
        results = []
        best: tuple[float, dict[str, Any], Any] | None = None
        for point in self._grid():
            import lightgbm as lgb

            model = self._lgbm(n_estimators=self.max_estimators, **point)
            model.fit(
                Xt, yt,
                eval_X=(Xv,), eval_y=(yv,),
                eval_class_weight=[self.class_weight] if self.class_weight else None,
                callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
            )
            metric = next(iter(model.best_score_["valid_0"]))
            loss = float(model.best_score_["valid_0"][metric])
            n_trees = int(model.best_iteration_ or self.max_estimators)
            results.append({**point, "n_estimators": n_trees, "val_loss": loss})
            if best is None or loss < best[0]:
                best = (loss, {**point, "n_estimators": n_trees}, model)
        assert best is not None
        self.tuning_results_ = results
        self.best_params_ = best[1]
        self.inner_val_proba_ = self._expand(best[2], best[2].predict_proba(Xv))
        self.inner_val_y_ = yv
        self.inner_val_index_ = val
        self.model_ = self._lgbm(**self.best_params_).fit(X, y_idx)
        self.booster_ = self.model_.booster_
        self.trained_class_index_ = np.asarray(self.model_.classes_, dtype=int)
        return self

    def _expand(self, model: Any, proba: np.ndarray) -> np.ndarray:
        out = np.zeros((proba.shape[0], len(self.classes_)))
        out[:, np.asarray(model.classes_, dtype=int)] = proba
        return out

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """``(N, K)`` class probabilities in :attr:`classes_` order."""
        check_is_fitted(self, "booster_")
        if list(X.columns) != list(self.feature_names_in_):
            raise DataError(
                f"The features {list(X.columns)[:5]}... differ from the fitted ones "
                f"{list(self.feature_names_in_)[:5]}...; build them with the same FeatureSpec."
            )
        return self._expand(self.model_, self.model_.predict_proba(X))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Most probable class label per row."""
        return self.classes_[self.predict_proba(X).argmax(axis=1)]
