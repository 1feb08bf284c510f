"""Classification metrics and bootstrap confidence intervals.

Definitions follow scikit-learn: balanced accuracy is the mean per-class recall
(classes absent from ``labels`` are skipped), macro F1 the unweighted mean of per-class F1,
AUC one-vs-rest ROC AUC per class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score


def classification_metrics(
    labels: np.ndarray, pred_probs: np.ndarray, classes: Sequence[str]
) -> dict[str, object]:
    """Balanced accuracy, macro F1, accuracy and per-class AUC of ``pred_probs``.

    Parameters
    ----------
    labels:
        ``(N,)`` integer class indices into ``classes``.
    pred_probs:
        ``(N, K)`` predicted probabilities, rows summing to 1.
    classes:
        The ``K`` class codes, in column order.

    Returns
    -------
    dict with ``balanced_accuracy``, ``macro_f1``, ``accuracy``, ``auc`` (class -> AUC or
    ``None`` when the class has no positives or no negatives) and ``n``.
    """
    labels = np.asarray(labels)
    pred_probs = np.asarray(pred_probs, dtype=float)
    pred = pred_probs.argmax(axis=1)
    present = np.unique(labels)
    auc: dict[str, float | None] = {}
    for k, c in enumerate(classes):
        y = labels == k
        auc[c] = float(roc_auc_score(y, pred_probs[:, k])) if 0 < y.sum() < len(y) else None
    return {
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
        "macro_f1": float(f1_score(labels, pred, labels=present, average="macro")),
        "accuracy": float(accuracy_score(labels, pred)),
        "auc": auc,
        "n": int(len(labels)),
    }


def sensitivity_at_specificity(
    y_true: np.ndarray, scores: np.ndarray, specificity: float
) -> float:
    """Highest sensitivity whose specificity is at least ``specificity`` (binary ``y_true``)."""
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=float)
    neg = np.sort(scores[~y_true])
    pos = scores[y_true]
    if len(neg) == 0 or len(pos) == 0:
        return float("nan")
    # threshold t: predict positive when score > t; specificity = mean(neg <= t)
    k = int(np.ceil(specificity * len(neg))) - 1
    t = neg[min(max(k, 0), len(neg) - 1)]
    return float(np.mean(pos > t))


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic(index_array)`` over ``n`` items.

    ``statistic`` receives an index array (with repeats) into the original items. With
    ``groups`` (length ``n``), whole groups are resampled (cluster bootstrap), e.g. all
    images of one lesion together. Resamples where the statistic is NaN are ignored.
    """
    rng = np.random.default_rng(seed)
    values = np.empty(n_resamples)
    if groups is None:
        for b in range(n_resamples):
            values[b] = statistic(rng.integers(0, n, n))
    else:
        groups = np.asarray(groups)
        uniq, inverse = np.unique(groups, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        starts = np.searchsorted(inverse[order], np.arange(len(uniq)))
        ends = np.append(starts[1:], n)
        members = [order[s:e] for s, e in zip(starts, ends, strict=True)]
        for b in range(n_resamples):
            pick = rng.integers(0, len(uniq), len(uniq))
            values[b] = statistic(np.concatenate([members[g] for g in pick]))
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return (float("nan"), float("nan"))
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return (float(lo), float(hi))
