"""Label quality with cleanlab: ensemble label-quality scores, "likely mislabeled" flags
(confident learning) and the difficulty rankings of :func:`rank_images`.

Private part of :mod:`skin_core.analysis.difficulty` (which re-exports every public name here;
import them from there). cleanlab is imported only when a score is computed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from skin_core.analysis._difficulty_errors import _check
from skin_core.errors import ConfigError

#: Orderings offered by :func:`rank_images` (most difficult first).
RANK_METHODS: tuple[str, ...] = ("mean_true_prob", "wrong_frac", "label_quality")


def _label_quality(lab: np.ndarray, probs: np.ndarray) -> np.ndarray:
    from cleanlab.rank import get_label_quality_ensemble_scores

    if probs.shape[0] == 1:
        from cleanlab.rank import get_label_quality_scores

        return np.asarray(get_label_quality_scores(lab, probs[0]), dtype=float)
    return np.asarray(get_label_quality_ensemble_scores(lab, list(probs), verbose=False),
                      dtype=float)


def rank_images(
    labels: Any, pred_probs_list: Any, *, method: str = "mean_true_prob"
) -> np.ndarray:
    """Image indices ordered from most to least difficult.

    Parameters
    ----------
    labels:
        ``(N,)`` integer class indices.
    pred_probs_list:
        ``(M, N, K)`` out-of-fold probabilities.
    method:
        ``"mean_true_prob"`` (ascending mean probability of the labelled class),
        ``"wrong_frac"`` (descending fraction of wrong models, ties by ascending mean true
        probability) or ``"label_quality"`` (ascending cleanlab ensemble label quality).

    Returns
    -------
    numpy.ndarray
        ``(N,)`` permutation of ``0..N-1`` (stable for ties).
    """
    if method not in RANK_METHODS:
        raise ConfigError(f"The 'method' parameter of rank_images must be one of "
                          f"{set(RANK_METHODS)}. Got {method!r} instead.")
    lab, probs = _check(labels, pred_probs_list)
    true_prob = probs[:, np.arange(lab.size), lab].mean(axis=0)
    if method == "mean_true_prob":
        return np.argsort(true_prob, kind="stable")
    if method == "wrong_frac":
        n_wrong = (probs.argmax(axis=2) != lab).sum(axis=0)
        return np.lexsort((true_prob, -n_wrong))
    return np.argsort(_label_quality(lab, probs), kind="stable")


def _likely_mislabeled(lab: np.ndarray, mean_probs: np.ndarray) -> np.ndarray:
    from cleanlab.filter import find_label_issues

    present = np.unique(lab)
    if present.size < 2:
        return np.zeros(lab.size, dtype=bool)
    # cleanlab needs every column to be a class that occurs; restrict to the present classes
    sub = mean_probs[:, present]
    sub = sub / np.clip(sub.sum(axis=1, keepdims=True), 1e-12, None)
    remap = np.searchsorted(present, lab)
    return np.asarray(find_label_issues(remap, sub, n_jobs=1), dtype=bool)
