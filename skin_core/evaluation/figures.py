"""The figures of ``skin-core evaluate`` from the served answers, each with a bootstrap CI.

:class:`Outcomes` holds what the served pipeline answered for ``N`` labelled images;
:func:`evaluation_figures` turns it into the figures of ``evaluation.json`` (overall, per
subgroup and per metadata variant), every one as ``{"value": x, "ci": [lo, hi]}`` from ONE
lesion-grouped bootstrap of the whole evaluation (:mod:`skin_core.evaluation.bootstrap`): every
figure is computed on the same resamples, so differences (served - ensemble, one subgroup
against another) are paired.

Definitions (``served`` = the calibrated meta-classifier's probabilities, or the ensemble's
without one; ``pred`` = the served label):

* balanced accuracy, macro F1 (over the classes present), accuracy of ``pred``;
* per class: ``n``, sensitivity and specificity of ``pred``, one-vs-rest AUC of the served
  probability, conformal coverage (truth in the set) and mean set size among its images;
* melanoma sensitivity at 80 % and 90 % specificity from the served melanoma probability;
* ECE: top-label, 15 equal-width confidence bins, ``sum_b |accuracy_b - confidence_b| n_b / N``;
* coverage and mean set size over all images; referral rate; ``referral_error_capture``: the
  share of the served answer's errors that the referral flags;
* ``ensemble``: the plain ensemble's (top class of the mean CNN probabilities) balanced
  accuracy, macro F1, accuracy, and ``balanced_accuracy_difference`` = served - ensemble.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from skin_core.evaluation.bootstrap import (
    Draw,
    RankSet,
    Resampler,
    by_lesion,
    confusion_figures,
    ece_bins,
    ece_from_totals,
    figure,
    run_bootstrap,
    safe_divide,
    sparse_sums,
    weighted_sums,
)

#: Top-label ECE bins (equal width), as ``skin_core.served`` reports it for the calibration split.
ECE_BINS = 15

#: Specificities at which melanoma sensitivity is reported.
MELANOMA_SPECIFICITIES: tuple[float, ...] = (0.8, 0.9)

#: Subgroups with fewer images than this are flagged ``small`` (wide, unstable intervals).
SMALL_GROUP = 30

#: Age bands of the subgroup table (years; ``age_approx`` is in 5-year steps).
AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<30", -np.inf, 30.0), ("30-44", 30.0, 45.0), ("45-59", 45.0, 60.0),
    ("60-74", 60.0, 75.0), (">=75", 75.0, np.inf),
)
MISSING = "missing"

#: Figures of every group besides ``per_class``, ``ensemble`` and melanoma.
HEADLINE_FIGURES: tuple[str, ...] = (
    "balanced_accuracy", "macro_f1", "accuracy", "coverage", "mean_set_size", "referral_rate",
    "referral_error_capture", "ece")

#: Figures of each class in ``per_class`` (besides ``n``).
PER_CLASS_FIGURES: tuple[str, ...] = ("sensitivity", "specificity", "auc", "coverage",
                                      "mean_set_size")


@dataclass(frozen=True)
class Outcomes:
    """The served answers for ``N`` labelled images (rows aligned).

    Attributes
    ----------
    y: ``(N,)`` true class index into the bundle's classes.
    probs: ``(N, K)`` served probabilities.
    pred: ``(N,)`` served class index.
    ens_pred: ``(N,)`` the plain ensemble's class index.
    sets: ``(N, K)`` bool, class in the conformal prediction set.
    refer: ``(N,)`` bool, the referral flag.
    codes: ``(N,)`` lesion codes (:func:`~skin_core.evaluation.bootstrap.lesion_codes`).
    """

    y: np.ndarray
    probs: np.ndarray
    pred: np.ndarray
    ens_pred: np.ndarray
    sets: np.ndarray
    refer: np.ndarray
    codes: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    @property
    def n_lesions(self) -> int:
        return int(self.codes.max()) + 1 if len(self.codes) else 0


def _statistic(o: Outcomes, idx: np.ndarray, classes: Sequence[str], melanoma: int | None
               ) -> Callable[[Draw], dict[str, np.ndarray]]:
    """The figures of the images ``idx`` of ``o`` as a function of a :class:`Draw` of the
    whole evaluation's lesions (everything that does not depend on the weights is done here,
    once: per-lesion sums, the rank buckets)."""
    k = len(classes)
    les, local = np.unique(o.codes[idx], return_inverse=True)
    n_les = len(les)
    y, pred, probs = o.y[idx], o.pred[idx], o.probs[idx]
    rows = np.arange(len(idx))
    conf_top = probs[rows, pred]
    correct = (pred == y).astype(float)
    wrong = 1.0 - correct
    bins = ece_bins(conf_top, ECE_BINS)
    set_size = o.sets[idx].sum(axis=1).astype(float)
    covered = o.sets[idx][rows, y].astype(float)
    refer = o.refer[idx].astype(float)
    zero = np.zeros(len(idx), dtype=np.int64)
    blocks = {
        "conf": by_lesion(local, n_les, y * k + pred, k * k),
        "ens_conf": by_lesion(local, n_les, y * k + o.ens_pred[idx], k * k),
        "covered": by_lesion(local, n_les, y, k, covered),
        "set_size": by_lesion(local, n_les, y, k, set_size),
        "refer": by_lesion(local, n_les, zero, 1, refer),
        "wrong": by_lesion(local, n_les, zero, 1, wrong),
        "refer_wrong": by_lesion(local, n_les, zero, 1, refer * wrong),
        "bin_n": by_lesion(local, n_les, bins, ECE_BINS),
        "bin_conf": by_lesion(local, n_les, bins, ECE_BINS, conf_top),
        "bin_correct": by_lesion(local, n_les, bins, ECE_BINS, correct),
    }
    stacked = sparse_sums(np.hstack(list(blocks.values())))
    edges = np.cumsum([0] + [b.shape[1] for b in blocks.values()])
    span = {b: slice(int(edges[i]), int(edges[i + 1])) for i, b in enumerate(blocks)}
    ranks = RankSet(len(o))
    for c in range(k):
        ranks.add(f"auc.{c}", probs[:, c], y == c, idx, allow_flip=c != melanoma)

    def statistic(draw: Draw) -> dict[str, np.ndarray]:
        t = weighted_sums(stacked, draw, les)
        r = t.shape[0]
        cf = confusion_figures(t[:, span["conf"]].reshape(r, k, k))
        ef = confusion_figures(t[:, span["ens_conf"]].reshape(r, k, k))
        total = cf["n"].sum(axis=1)
        out = {key: cf[key] for key in ("balanced_accuracy", "macro_f1", "accuracy")}
        out.update({
            "coverage": safe_divide(t[:, span["covered"]].sum(axis=1), total),
            "mean_set_size": safe_divide(t[:, span["set_size"]].sum(axis=1), total),
            "referral_rate": safe_divide(t[:, span["refer"]][:, 0], total),
            "referral_error_capture": safe_divide(t[:, span["refer_wrong"]][:, 0],
                                                  t[:, span["wrong"]][:, 0]),
            "ece": ece_from_totals(t[:, span["bin_n"]], t[:, span["bin_conf"]],
                                   t[:, span["bin_correct"]]),
            "ensemble.balanced_accuracy": ef["balanced_accuracy"],
            "ensemble.macro_f1": ef["macro_f1"],
            "ensemble.accuracy": ef["accuracy"],
            "ensemble.balanced_accuracy_difference":
                cf["balanced_accuracy"] - ef["balanced_accuracy"],
        })
        cov_k = safe_divide(t[:, span["covered"]], cf["n"])
        size_k = safe_divide(t[:, span["set_size"]], cf["n"])
        z = ranks.sums(draw.images)
        for c, cls in enumerate(classes):
            out[f"per_class.{cls}.sensitivity"] = cf["sensitivity"][:, c]
            out[f"per_class.{cls}.specificity"] = cf["specificity"][:, c]
            out[f"per_class.{cls}.coverage"] = cov_k[:, c]
            out[f"per_class.{cls}.mean_set_size"] = size_k[:, c]
            out[f"per_class.{cls}.auc"] = ranks.auc(f"auc.{c}", z)
        if melanoma is not None:
            for s in MELANOMA_SPECIFICITIES:
                out[f"melanoma.{s:.2f}"] = ranks.sensitivity_at_specificity(
                    f"auc.{melanoma}", z, s)
        return out

    return statistic


def _balanced_accuracy_statistic(o: Outcomes, pred: np.ndarray, k: int
                                 ) -> Callable[[Draw], dict[str, np.ndarray]]:
    """Balanced accuracy of ``pred`` (one per image of ``o``), of the ensemble, and their
    difference: one row of the ``missing_metadata`` table."""
    n_les = o.n_lesions
    stacked = sparse_sums(np.hstack([by_lesion(o.codes, n_les, o.y * k + pred, k * k),
                                     by_lesion(o.codes, n_les, o.y * k + o.ens_pred, k * k)]))

    def statistic(draw: Draw) -> dict[str, np.ndarray]:
        t = weighted_sums(stacked, draw)
        r = t.shape[0]
        served = confusion_figures(t[:, :k * k].reshape(r, k, k))["balanced_accuracy"]
        ens = confusion_figures(t[:, k * k:].reshape(r, k, k))["balanced_accuracy"]
        return {"balanced_accuracy": served, "ensemble_balanced_accuracy": ens,
                "difference": served - ens}

    return statistic


def evaluation_figures(o: Outcomes, classes: Sequence[str], *, melanoma: int | None,
                       n_resamples: int, seed: int,
                       groups: Mapping[str, pd.Series] | None = None,
                       variants: Mapping[str, np.ndarray] | None = None,
                       confidence: float = 0.95) -> dict[str, Any]:
    """Every figure of the evaluation from ONE lesion-grouped bootstrap of ``o``.

    The whole evaluation's lesions are resampled ``n_resamples`` times; each figure (overall,
    per subgroup, per metadata variant) is computed on every resample from its own images,
    so all figures are paired (a subgroup's image count varies between resamples, as it
    would between studies).

    Parameters
    ----------
    o:
        The served answers.
    classes:
        The ``K`` class codes (column order of ``o.probs``).
    melanoma:
        Index of the melanoma class, or ``None`` (no melanoma figures then).
    n_resamples, seed:
        Bootstrap resamples (0: point estimates, ``ci`` ``[None, None]``) and their seed.
    groups:
        Subgroup column -> the group of each image (:func:`subgroup_columns`).
    variants:
        Metadata variant -> the served class index of each image under it.

    Returns
    -------
    dict with ``overall`` (the keys listed in the module docstring plus ``n_images``,
    ``n_lesions`` and ``reliability``), ``subgroups`` (column -> list of records with
    ``group`` and ``small``) and ``missing_metadata`` (variant -> record).
    """
    everyone = np.arange(len(o))
    statistics: dict[str, Callable[[Draw], dict[str, np.ndarray]]] = {
        "overall": _statistic(o, everyone, classes, melanoma)}
    members: dict[str, np.ndarray] = {"overall": everyone}
    layout: dict[str, list[tuple[str, str]]] = {}
    for col, values in (groups or {}).items():
        v = values.to_numpy(dtype=object)
        layout[col] = []
        for g in _group_order(col, pd.unique(v)):
            key = f"{col}={g}"
            members[key] = np.flatnonzero(v == g)
            statistics[key] = _statistic(o, members[key], classes, melanoma)
            layout[col].append((key, str(g)))
    for name, pred in (variants or {}).items():
        statistics[f"variant={name}"] = _balanced_accuracy_statistic(o, pred, len(classes))
    values = run_bootstrap(Resampler.for_codes(o.codes, n_resamples=n_resamples, seed=seed),
                           statistics)

    def record(key: str) -> dict[str, Any]:
        idx = members[key]
        fig = {f: figure(v, confidence) for f, v in values[key].items()}
        n_per_class = np.bincount(o.y[idx], minlength=len(classes))
        return {
            "n_images": int(len(idx)), "n_lesions": int(len(np.unique(o.codes[idx]))),
            **{f: fig[f] for f in HEADLINE_FIGURES},
            "melanoma_sensitivity_at_specificity": None if melanoma is None else {
                "class": classes[melanoma], "n_positive": int(n_per_class[melanoma]),
                **{f"{s:.2f}": fig[f"melanoma.{s:.2f}"] for s in MELANOMA_SPECIFICITIES}},
            "per_class": {cls: {"n": int(n_per_class[c]),
                                **{m: fig[f"per_class.{cls}.{m}"] for m in PER_CLASS_FIGURES}}
                          for c, cls in enumerate(classes)},
            "ensemble": {m: fig[f"ensemble.{m}"] for m in (
                "balanced_accuracy", "macro_f1", "accuracy", "balanced_accuracy_difference")},
        }

    overall = record("overall")
    top = o.probs[everyone, o.pred]
    overall["reliability"] = reliability(top, (o.pred == o.y).astype(float),
                                         ece_bins(top, ECE_BINS))
    subgroups = {col: [{"group": g, "small": bool(len(members[key]) < SMALL_GROUP),
                        **record(key)} for key, g in entries]
                 for col, entries in layout.items()}
    missing = {name: {f: figure(v, confidence) for f, v in values[f"variant={name}"].items()}
               for name in (variants or {})}
    return {"overall": overall, "subgroups": subgroups, "missing_metadata": missing}


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: np.ndarray
                ) -> list[dict[str, float]]:
    """Reliability-diagram bins of the point estimate (non-empty bins only)."""
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    out = []
    for b in range(ECE_BINS):
        sel = bins == b
        if sel.any():
            out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(sel.sum()),
                        "confidence": float(confidence[sel].mean()),
                        "accuracy": float(correct[sel].mean())})
    return out


def share_figures(flags: Mapping[str, np.ndarray], codes: np.ndarray, *, n_resamples: int,
                  seed: int, confidence: float = 0.95) -> dict[str, dict[str, Any]]:
    """Share of images where each ``(N,)`` flag (1/0) holds, with lesion-grouped CIs (NaN
    entries, e.g. an image whose transformed copy failed, are left out)."""
    n_les = int(codes.max()) + 1 if len(codes) else 0
    zero = np.zeros(len(codes), dtype=np.int64)
    cols = []
    for v in flags.values():
        v = np.asarray(v, dtype=float)
        ok = np.isfinite(v)
        cols.append(by_lesion(codes, n_les, zero, 1, np.where(ok, v, 0.0)))
        cols.append(by_lesion(codes, n_les, zero, 1, ok.astype(float)))
    stacked = sparse_sums(np.hstack(cols))
    keys = list(flags)

    def statistic(draw: Draw) -> dict[str, np.ndarray]:
        t = weighted_sums(stacked, draw)
        return {key: safe_divide(t[:, 2 * i], t[:, 2 * i + 1]) for i, key in enumerate(keys)}

    values = run_bootstrap(Resampler.for_codes(codes, n_resamples=n_resamples, seed=seed),
                           {"shares": statistic})["shares"]
    return {key: figure(v, confidence) for key, v in values.items()}


# --------------------------------------------------------------------------------------------
# subgroups


def age_band(age: pd.Series) -> pd.Series:
    """The age band of each ``age_approx`` (``missing`` when unknown)."""
    a = pd.to_numeric(age, errors="coerce").to_numpy(dtype=float)
    out = np.full(len(a), MISSING, dtype=object)
    for label, lo, hi in AGE_BANDS:
        out[(a >= lo) & (a < hi)] = label
    return pd.Series(out, index=age.index)


def subgroup_columns(table: pd.DataFrame, columns: Sequence[str]) -> dict[str, pd.Series]:
    """Column name -> the group of each image: ``age`` (bands), then the other ``columns``
    present in ``table`` with at least one known value (``missing`` for unknown values)."""
    from skin_core.constants import AGE

    out: dict[str, pd.Series] = {}
    if AGE in table.columns:
        out["age"] = age_band(table[AGE])
    for col in columns:
        if col in table.columns and table[col].notna().any():
            s = table[col].astype(object)
            out[col] = s.where(s.notna() & (s.astype(str).str.strip() != ""), MISSING).astype(str)
    return out


def _group_order(col: str, groups: Sequence[Any]) -> list[Any]:
    if col == "age":
        bands = [b[0] for b in AGE_BANDS] + [MISSING]
        return [b for b in bands if b in set(groups)]
    known = sorted(g for g in groups if g != MISSING)
    return known + ([MISSING] if MISSING in set(groups) else [])


__all__ = [
    "AGE_BANDS",
    "ECE_BINS",
    "MELANOMA_SPECIFICITIES",
    "MISSING",
    "Outcomes",
    "SMALL_GROUP",
    "HEADLINE_FIGURES",
    "PER_CLASS_FIGURES",
    "age_band",
    "evaluation_figures",
    "reliability",
    "share_figures",
    "subgroup_columns",
]
