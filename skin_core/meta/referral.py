"""Referral (difficulty) model: P(image is one that every CNN misclassifies).

The target of an image is ``1`` when the top class of **every** model differs from its label
(the study's "difficult" images). The features are available at prediction time only
(:func:`referral_features`): the ensemble's entropy, top probability, margin and predicted
class, the disagreement between models (share of models whose top class differs from the
ensemble's, mean pairwise Jensen-Shannon divergence, spread of the models' top-class
probability), optionally image-quality measures and the patient metadata. Never the label.

The model is a binary :class:`~skin_core.meta.classifier.MetaClassifier` (LightGBM with
balanced class weights). The ``refer`` threshold is chosen on held-out scores so that the
sensitivity for difficult images reaches a documented target (default 0.8):
:func:`choose_threshold`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from skin_core.constants import AGE, SEX, SITE
from skin_core.errors import ConfigError

EPS = 1e-12
#: Prediction-time features computed from the models' probabilities, in order.
ENSEMBLE_FEATURES: tuple[str, ...] = (
    "ens_entropy", "ens_max_prob", "ens_margin", "ens_pred", "disagree_frac", "mean_pairwise_js",
    "top_prob_std",
)


def difficulty_target(stacked: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(N,)`` 1 where every model's top class differs from the label (wrong by all).

    Parameters
    ----------
    stacked:
        ``(M, N, K)`` probabilities of ``M`` models.
    labels:
        ``(N,)`` integer labels.
    """
    preds = np.asarray(stacked).argmax(axis=2)
    return (preds != np.asarray(labels)[None, :]).all(axis=0).astype(int)


def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1.0)
    return -(p * np.log(p)).sum(axis=-1)


def ensemble_feature_arrays(stacked: np.ndarray) -> dict[str, np.ndarray]:
    """Disagreement and confidence features of an ensemble as NumPy columns.

    The one implementation of :data:`ENSEMBLE_FEATURES`: :func:`ensemble_features` (training,
    DataFrames) wraps it, and the prediction-time fast path
    (:meth:`skin_core.meta.io.MetaPredictor.predict_arrays`) calls it directly.

    Parameters
    ----------
    stacked:
        ``(M, N, K)`` probabilities.

    Returns
    -------
    dict
        Name -> ``(N,)`` float64 for every name of :data:`ENSEMBLE_FEATURES`, in order:
        entropy (nats) of the mean probabilities, their top probability and top-minus-second
        margin, the ensemble's predicted class (``ens_pred``: its index, i.e. the code of the
        pandas categorical over the classes), the share of models whose top class differs
        from the ensemble's, the mean pairwise Jensen-Shannon divergence (nats; 0 for one
        model) and the standard deviation across models of the probability each gives to
        the ensemble's class.
    """
    stacked = np.asarray(stacked, dtype=float)
    m, n, k = stacked.shape
    mean = stacked.mean(axis=0)
    srt = np.sort(mean, axis=1)
    pred = mean.argmax(axis=1)
    model_preds = stacked.argmax(axis=2)
    js = np.zeros(n)
    if m > 1:
        pairs = 0
        for a in range(m):
            for b in range(a + 1, m):
                mid = 0.5 * (stacked[a] + stacked[b])
                js += _entropy(mid) - 0.5 * (_entropy(stacked[a]) + _entropy(stacked[b]))
                pairs += 1
        js /= pairs
    top_probs = stacked[:, np.arange(n), pred]
    return {
        "ens_entropy": _entropy(mean),
        "ens_max_prob": srt[:, -1],
        "ens_margin": srt[:, -1] - (srt[:, -2] if k > 1 else 0.0),
        "ens_pred": pred.astype(float),
        "disagree_frac": (model_preds != pred[None, :]).mean(axis=0),
        "mean_pairwise_js": np.maximum(js, 0.0),
        "top_prob_std": top_probs.std(axis=0),
    }


def ensemble_features(stacked: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """:func:`ensemble_feature_arrays` as a DataFrame (no index set).

    Parameters
    ----------
    stacked:
        ``(M, N, K)`` probabilities.
    classes:
        The ``K`` class codes (``ens_pred`` is a categorical over them).

    Returns
    -------
    DataFrame
        Columns :data:`ENSEMBLE_FEATURES`.
    """
    cols: dict[str, object] = dict(ensemble_feature_arrays(stacked))
    codes = np.asarray(cols["ens_pred"]).astype(np.int64)
    cols["ens_pred"] = pd.Categorical.from_codes(codes, categories=list(classes))
    return pd.DataFrame(cols)


def referral_features(
    stacked: np.ndarray,
    classes: Sequence[str],
    index: pd.Index,
    *,
    metadata_features: pd.DataFrame | None = None,
    quality_features: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Features of the referral model, indexed like ``index``.

    ``metadata_features`` / ``quality_features`` are the ``age_approx, sex,
    anatom_site_general`` and ``q_*`` columns of a
    :func:`~skin_core.meta.features.build_features` matrix with the same index.
    """
    X = ensemble_features(stacked, classes)
    X.index = index
    if metadata_features is not None:
        X = X.join(metadata_features[[AGE, SEX, SITE]])
    if quality_features is not None:
        X = X.join(quality_features)
    return X


def choose_threshold(scores: np.ndarray, target: np.ndarray, *, sensitivity: float = 0.8) -> float:
    """Largest score threshold whose sensitivity (``score >= t`` among targets) >= ``sensitivity``.

    Images with ``score >= threshold`` are referred. With no positive targets, returns 1.0.
    """
    if not 0.0 < sensitivity <= 1.0:
        raise ConfigError(
            f"The 'sensitivity' parameter of choose_threshold must be in (0, 1]. "
            f"Got {sensitivity!r} instead."
        )
    pos = np.sort(np.asarray(scores, dtype=float)[np.asarray(target).astype(bool)])
    if len(pos) == 0:
        return 1.0
    # keep at least ceil(sensitivity * P) positives at or above the threshold
    keep = int(np.ceil(sensitivity * len(pos) - 1e-9))
    return float(pos[len(pos) - keep])


def referral_rates(scores: np.ndarray, target: np.ndarray, threshold: float) -> dict:
    """Sensitivity, specificity and referral rate of ``score >= threshold``."""
    scores = np.asarray(scores, dtype=float)
    target = np.asarray(target).astype(bool)
    refer = scores >= threshold
    return {
        "threshold": float(threshold),
        "sensitivity": float(refer[target].mean()) if target.any() else float("nan"),
        "specificity": float((~refer[~target]).mean()) if (~target).any() else float("nan"),
        "referral_rate": float(refer.mean()) if len(refer) else float("nan"),
        "n_referred": int(refer.sum()),
    }
