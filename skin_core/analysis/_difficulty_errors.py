"""Consistently misclassified images over ``labels`` and ``pred_probs_list``: each model's
errors, the difficult-image mask, the models' error agreement and the plurality vote.

Private part of :mod:`skin_core.analysis.difficulty` (which re-exports every public name here;
import them from there). :func:`_check` validates the inputs once at the public edge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from skin_core.errors import ConfigError, DataError

# --------------------------------------------------------------------------------------------
# functional API over labels and pred_probs
# --------------------------------------------------------------------------------------------


def _check(labels: Any, pred_probs_list: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``labels`` (N,) and ``pred_probs_list`` (M, N, K); return arrays."""
    try:
        probs = np.asarray(pred_probs_list, dtype=float)
    except ValueError as e:
        raise DataError("The 'pred_probs_list' must be M arrays of the same shape (N, K).") from e
    if probs.ndim != 3 or 0 in probs.shape:
        raise DataError(f"The 'pred_probs_list' must have shape (M models, N images, K classes) "
                        f"with M, N, K >= 1; got shape {probs.shape}.")
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.size != probs.shape[1]:
        raise DataError(f"The 'labels' must be 1-D with one class index per image "
                        f"({probs.shape[1]}); got shape {lab.shape}.")
    if not np.issubdtype(lab.dtype, np.integer):
        raise DataError(f"The 'labels' must be integer class indices; got dtype {lab.dtype}.")
    if lab.min() < 0 or lab.max() >= probs.shape[2]:
        raise DataError(f"The 'labels' must be class indices in 0..{probs.shape[2] - 1}; found "
                        f"values from {lab.min()} to {lab.max()}.")
    if not np.all(np.isfinite(probs)):
        raise DataError("The 'pred_probs_list' holds NaN or infinite values.")
    return lab.astype(np.int64, copy=False), probs


def _min_wrong(min_wrong: int | None, n_models: int) -> int:
    if min_wrong is None:
        return n_models
    if isinstance(min_wrong, bool) or not isinstance(min_wrong, (int, np.integer)) \
            or not 1 <= int(min_wrong) <= n_models:
        raise ConfigError(f"The 'min_wrong' parameter must be an integer from 1 to {n_models} "
                          f"(the number of models); got {min_wrong!r}.")
    return int(min_wrong)


def model_errors(labels: Any, pred_probs_list: Any) -> np.ndarray:
    """``(M, N)`` boolean matrix: model ``m``'s arg-max prediction differs from ``labels[i]``.

    Parameters
    ----------
    labels:
        ``(N,)`` integer class indices.
    pred_probs_list:
        ``(M, N, K)`` probabilities (array or list of ``(N, K)`` arrays).
    """
    lab, probs = _check(labels, pred_probs_list)
    return probs.argmax(axis=2) != lab[None, :]


def find_difficult_images(
    labels: Any, pred_probs_list: Any, *, min_wrong: int | None = None
) -> np.ndarray:
    """Mask of images misclassified by all models (or by at least ``min_wrong`` of them).

    Parameters
    ----------
    labels:
        ``(N,)`` integer class indices.
    pred_probs_list:
        ``(M, N, K)`` out-of-fold probabilities.
    min_wrong:
        ``m`` of ``M``; default ``M`` (the study's "wrong by all models").

    Returns
    -------
    numpy.ndarray
        ``(N,)`` boolean mask (``compute_difficulty`` gives the per-image table).

    Examples
    --------
    >>> p = np.array([[[0.9, 0.1], [0.2, 0.8]], [[0.6, 0.4], [0.7, 0.3]]])
    >>> find_difficult_images(np.array([1, 1]), p).tolist()
    [True, False]
    """
    errors = model_errors(labels, pred_probs_list)
    m = _min_wrong(min_wrong, errors.shape[0])
    return errors.sum(axis=0) >= m


def error_consistency(
    labels: Any, pred_probs_list: Any, *, models: Sequence[str] | None = None
) -> pd.DataFrame:
    """Pairwise Cohen's kappa between the models' error indicators.

    Parameters
    ----------
    labels:
        ``(N,)`` integer class indices.
    pred_probs_list:
        ``(M, N, K)`` out-of-fold probabilities.
    models:
        ``M`` names for the rows/columns (default ``model_0..``).

    Returns
    -------
    pandas.DataFrame
        ``(M, M)`` symmetric matrix of kappa on the binary "wrong" indicators, as
        ``sklearn.metrics.cohen_kappa_score`` (1 on the diagonal; 0 against a model that is
        right, or wrong, on every image; NaN where both models are constant, since chance
        agreement is then 1 and kappa undefined). 0 = errors overlap as often as chance,
        1 = identical errors.
    """
    errors = model_errors(labels, pred_probs_list).astype(float)
    n_models, n = errors.shape
    names = list(models) if models is not None else [f"model_{i}" for i in range(n_models)]
    if len(names) != n_models:
        raise DataError(f"Got {len(names)} model names for {n_models} models.")
    rate = errors.mean(axis=1)
    both = errors @ errors.T / n
    agree = 1.0 - rate[:, None] - rate[None, :] + 2.0 * both
    chance = rate[:, None] * rate[None, :] + (1 - rate[:, None]) * (1 - rate[None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = np.where(chance < 1.0, (agree - chance) / (1.0 - chance), np.nan)
    return pd.DataFrame(kappa, index=names, columns=names)


def _majority(preds: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Plurality vote per image; ties go to the class with the highest mean probability."""
    n_models, n = preds.shape
    k = probs.shape[2]
    votes = np.zeros((n, k))
    np.add.at(votes, (np.tile(np.arange(n), n_models), preds.ravel()), 1.0)
    # mean probability < 1, halved: breaks ties without overturning a one-vote difference
    return (votes + 0.5 * probs.mean(axis=0)).argmax(axis=1)
