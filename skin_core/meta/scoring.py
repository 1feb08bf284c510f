"""Weighted metrics for the meta evaluation: every method scored on the same bootstrap
resamples, so that differences between methods are paired.

A resample is a vector of row weights (how often each image was drawn); :class:`Scorer`
computes balanced accuracy, macro F1, accuracy, one-vs-rest AUCs and melanoma sensitivity at
fixed specificities under such weights in one pass (exact for repeated rows; equal to
:func:`skin_core.analysis.metrics.classification_metrics` with unit weights, tested), and
:func:`bootstrap_all` draws lesion-grouped resamples once
(:func:`skin_core.analysis.metrics.bootstrap_ci`) and scores every method on each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from skin_core.analysis.metrics import bootstrap_ci
from skin_core.analysis.records import TestResult

SPECIFICITIES: tuple[float, ...] = (0.8, 0.9)


class Scorer:
    """All metrics of one method's ``(N, K)`` scores under row weights (resample counts).

    With unit weights the values equal :func:`~skin_core.analysis.metrics.classification_metrics`
    and :func:`~skin_core.analysis.metrics.sensitivity_at_specificity`. With
    ``only_balanced_accuracy=True`` it computes balanced accuracy alone (a bincount per
    resample: cheap enough for the eight missing-metadata variants).
    """

    def __init__(self, labels: np.ndarray, scores: np.ndarray, classes: Sequence[str],
                 melanoma: int | None, *, only_balanced_accuracy: bool = False) -> None:
        self.y = labels
        self.k = len(classes)
        self.classes = list(classes)
        self.pred = scores.argmax(axis=1)
        self.cell = self.y * self.k + self.pred
        self.only_ba = only_balanced_accuracy
        self.auc_prep = []
        if self.only_ba:
            melanoma = None
        for c in range(0 if self.only_ba else self.k):
            order = np.argsort(scores[:, c], kind="stable")
            s = scores[order, c]
            grp = np.concatenate([[0], np.cumsum(s[1:] != s[:-1])])
            self.auc_prep.append((order, grp, (self.y[order] == c)))
        self.melanoma = melanoma
        if melanoma is not None:
            s = scores[:, melanoma]
            pos = self.y == melanoma
            neg_order = np.flatnonzero(~pos)[np.argsort(s[~pos], kind="stable")]
            pos_order = np.flatnonzero(pos)[np.argsort(s[pos], kind="stable")]
            self.sens_prep = (neg_order, s[neg_order], pos_order, s[pos_order])

    def __call__(self, w: np.ndarray) -> dict[str, float]:
        k = self.k
        cm = np.bincount(self.cell, weights=w, minlength=k * k).reshape(k, k)
        support = cm.sum(axis=1)
        present = support > 0
        tp = np.diag(cm)
        out: dict[str, float] = {}
        out["balanced_accuracy"] = float(np.mean(tp[present] / support[present]))
        if self.only_ba:
            return out
        denom = 2 * tp + (cm.sum(axis=0) - tp) + (support - tp)
        f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
        out["macro_f1"] = float(f1[present].mean())
        out["accuracy"] = float(tp.sum() / cm.sum())
        for c, (order, grp, pos) in enumerate(self.auc_prep):
            ws = w[order]
            wpos = ws * pos
            wneg = ws - wpos
            tp_, tn_ = wpos.sum(), wneg.sum()
            if tp_ == 0 or tn_ == 0:
                out[f"auc:{self.classes[c]}"] = float("nan")
                continue
            # per tie group of scores: negatives below it + half of those tied with it
            gneg = np.bincount(grp, weights=wneg)
            below_plus_half = np.cumsum(gneg) - 0.5 * gneg
            out[f"auc:{self.classes[c]}"] = float(wpos @ below_plus_half[grp] / (tp_ * tn_))
        if self.melanoma is not None:
            neg_order, neg_s, pos_order, pos_s = self.sens_prep
            cneg = np.cumsum(w[neg_order])
            cpos = np.cumsum(w[pos_order])
            for spec in SPECIFICITIES:
                key = f"sens_at_spec{int(round(spec * 100))}"
                if len(cneg) == 0 or len(cpos) == 0 or cneg[-1] == 0 or cpos[-1] == 0:
                    out[key] = float("nan")
                    continue
                kth = int(np.ceil(spec * cneg[-1])) - 1
                j = min(int(np.searchsorted(cneg, max(kth, 0), side="right")), len(cneg) - 1)
                t = neg_s[j]
                i = int(np.searchsorted(pos_s, t, side="right"))
                above = cpos[-1] - (cpos[i - 1] if i > 0 else 0.0)
                out[key] = float(above / cpos[-1])
        return out


def bootstrap_all(
    scorers: dict[str, Scorer],
    n: int,
    groups: np.ndarray,
    *,
    n_resamples: int,
    seed: int,
    extra: dict[str, Callable[[np.ndarray], float]] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, np.ndarray]]]:
    """Point estimates and bootstrap replicates of every metric of every scorer.

    One pass of :func:`bootstrap_ci` (lesion-grouped) draws the resamples; each resample is
    scored by every method, so replicates are paired across methods.
    """
    ones = np.ones(n)
    points = {m: s(ones) for m, s in scorers.items()}
    for name, fn in (extra or {}).items():
        points[name] = {"value": fn(ones)}
    records: list[dict[str, dict[str, float]]] = []

    def statistic(idx: np.ndarray) -> float:
        w = np.bincount(idx, minlength=n).astype(float)
        rec = {m: s(w) for m, s in scorers.items()}
        for name, fn in (extra or {}).items():
            rec[name] = {"value": fn(w)}
        records.append(rec)
        return rec[next(iter(rec))]["balanced_accuracy"] if scorers else 0.0

    if n_resamples > 0:
        bootstrap_ci(statistic, n, n_resamples=n_resamples, seed=seed, groups=groups)
    reps = {
        m: {key: np.array([r[m][key] for r in records]) for key in points[m]}
        for m in points
    }
    return points, reps


def percentile_ci(values: np.ndarray, confidence: float = 0.95) -> list[float | None]:
    """Percentile interval ``[low, high]`` of the finite ``values`` (``[None, None]`` if none)."""
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return [None, None]
    a = (1 - confidence) / 2
    lo, hi = np.quantile(v, [a, 1 - a])
    return [float(lo), float(hi)]


def none_if_nan(x: float) -> float | None:
    """``None`` for NaN / infinity (strict JSON), else the float."""
    return None if x is None or not np.isfinite(x) else float(x)


def melanoma_index(classes: Sequence[str]) -> int | None:
    """Index of the melanoma class (``MEL`` / ``mel``), or ``None`` when absent."""
    for i, c in enumerate(classes):
        if str(c).lower() in ("mel", "melanoma"):
            return i
    return None


def weighted_binary_auc(target: np.ndarray, scores: np.ndarray) -> Callable[[np.ndarray], float]:
    """AUROC of binary ``scores`` for ``target`` as a function of row weights."""
    two = np.column_stack([1 - scores, scores])
    scorer = Scorer(np.asarray(target, dtype=int), two, ["neg", "pos"], None)

    def auc(w: np.ndarray) -> float:
        return scorer(w)["auc:pos"]

    return auc


def paired_difference(
    points: dict[str, dict[str, float]],
    reps: dict[str, dict[str, np.ndarray]],
    a: str,
    b: str,
    n_resamples: int,
    n: int,
    *,
    effect_name: str = "difference in balanced accuracy (positive: meta-classifier better)",
) -> TestResult:
    """Balanced accuracy of method ``a`` minus method ``b`` with its paired bootstrap CI.

    ``points`` / ``reps`` come from :func:`bootstrap_all` (the same resamples for both), so
    the CI is the percentile interval of the per-resample differences; the p-value is the
    two-sided bootstrap sign test (twice the smaller tail share).
    """
    effect = points[a]["balanced_accuracy"] - points[b]["balanced_accuracy"]
    d = reps[a]["balanced_accuracy"] - reps[b]["balanced_accuracy"]
    d = d[np.isfinite(d)]
    ci = percentile_ci(d) if len(d) else [None, None]
    p = float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean()))) if len(d) else float("nan")
    return TestResult(
        name=f"balanced accuracy: {a} - {b}",
        effect=float(effect),
        ci=(float("nan") if ci[0] is None else ci[0], float("nan") if ci[1] is None else ci[1]),
        statistic=float("nan"),
        p_value=p,
        method="paired lesion-grouped percentile bootstrap (same resamples for both methods)",
        effect_name=effect_name,
        assumptions="lesions independent; out-of-fold predictions of both methods on the "
                    "same images",
        n={"images": int(n), "resamples": int(n_resamples)},
        extra={"p_value_method": "two-sided bootstrap sign test (2 x smaller tail share)"},
    )


def summary(points: dict[str, dict[str, float]], reps: dict[str, dict[str, np.ndarray]],
            method: str) -> dict[str, Any]:
    """``{"balanced_accuracy": value, "ci": [low, high]}`` of one scored method."""
    return {"balanced_accuracy": points[method]["balanced_accuracy"],
            "ci": percentile_ci(reps[method]["balanced_accuracy"])}


__all__ = [
    "SPECIFICITIES", "Scorer", "bootstrap_all", "melanoma_index", "none_if_nan",
    "paired_difference", "percentile_ci", "summary", "weighted_binary_auc",
]
