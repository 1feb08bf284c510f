"""The sections of ``meta.json`` that :func:`~skin_core.meta.evaluate.evaluate_meta` builds from
out-of-fold predictions: calibration, conformal sets, referral, missing metadata and quality
features.

Each function takes out-of-fold numbers (and, for CIs and paired differences, the bootstrap
points and replicates of :func:`~skin_core.meta.scoring.bootstrap_all`) and returns a
JSON-ready dict; none of them fits a meta-model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from skin_core.constants import IMAGE_ID
from skin_core.meta.calibration import expected_calibration_error, nll, reliability_curve
from skin_core.meta.conformal import ConformalThresholds, fit_conformal, set_metrics
from skin_core.meta.features import QUALITY_FEATURES, quality_feature_columns
from skin_core.meta.masking import MISSING_SUBSETS
from skin_core.meta.referral import choose_threshold
from skin_core.meta.scoring import none_if_nan, paired_difference, percentile_ci, summary

MAIN = "meta_with_metadata"
NOMETA = "meta_without_metadata"
METAONLY = "metadata_only"
NOQUALITY = "meta_without_quality"
#: The methods every report compares (``meta_without_quality`` joins them with a quality
#: table; ``metadata_only`` needs metadata).
METHODS: tuple[str, ...] = (
    MAIN, NOMETA, METAONLY, "mean_ensemble", "majority_vote", "best_single_model",
)
#: With any subset of the metadata missing, the served answer's out-of-fold balanced accuracy
#: must be at least the mean ensemble's minus this (``report["missing_metadata"]["ok"]``).
MISSING_TOLERANCE = 0.01


def conformal_sets(cal_probs: np.ndarray, y: np.ndarray, folds: np.ndarray, fold_ids: list[int],
               classes: Sequence[str], *, coverage: float,
               class_conditional: bool) -> dict[str, Any]:
    """Held-out conformal sets (each fold's thresholds fitted on the other folds' calibrated
    OOF probabilities), the thresholds per fold, the final thresholds and the report."""
    n, k = cal_probs.shape
    members = np.zeros((n, k), dtype=bool)
    per_fold = []
    by_fold: dict[int, ConformalThresholds] = {}
    for f in fold_ids:
        test = folds == f
        thr = fit_conformal(cal_probs[~test], y[~test], classes, coverage=coverage,
                            class_conditional=class_conditional)
        by_fold[f] = thr
        members[test] = thr.sets(cal_probs[test])
        sm = set_metrics(members[test], y[test], classes)
        per_fold.append({"fold": int(f), "coverage": sm["coverage"],
                         "mean_set_size": sm["mean_set_size"], "n": sm["n"]})
    final = fit_conformal(cal_probs, y, classes, coverage=coverage,
                          class_conditional=class_conditional)
    report = {
        "target_coverage": coverage,
        "score": "lac",
        "class_conditional": class_conditional,
        **set_metrics(members, y, classes),
        "per_fold": per_fold,
        "thresholds": final.to_dict(),
        "note": "held-out coverage: each fold's sets use thresholds fitted on the other "
                "folds' calibrated out-of-fold probabilities",
    }
    return {"members": members, "by_fold": by_fold, "final": final, "report": report}


def referral_report(scores: np.ndarray, difficult: np.ndarray, folds: np.ndarray,
              fold_ids: list[int], *, sensitivity: float, points: dict, reps: dict, key: str,
              features: list[str]) -> dict[str, Any]:
    """Held-out referral rates (each fold's threshold chosen on the other folds' scores), the
    final threshold (all OOF scores) and the report."""
    n = len(scores)
    if key not in points:
        return {"threshold": None, "refer": None, "report": {
            "skipped": True,
            "reason": f"{int(difficult.sum())} of {n} images are misclassified by every model; "
                      "a referral model needs both kinds in every training part",
            "prevalence": float(difficult.mean()),
        }}
    from sklearn.metrics import average_precision_score

    refer = np.zeros(n, dtype=bool)
    for f in fold_ids:
        test = folds == f
        t = choose_threshold(scores[~test], difficult[~test], sensitivity=sensitivity)
        refer[test] = scores[test] >= t
    threshold = choose_threshold(scores, difficult, sensitivity=sensitivity)
    report = {
        "target": "image misclassified by every CNN model",
        "prevalence": float(difficult.mean()),
        "n_difficult": int(difficult.sum()),
        "auroc": points[key]["value"],
        "auroc_ci": percentile_ci(reps[key]["value"]),
        "auprc": float(average_precision_score(difficult, scores)),
        "sensitivity_target": sensitivity,
        "threshold": threshold,
        "held_out": {
            "sensitivity": float(refer[difficult == 1].mean()),
            "specificity": float((~refer[difficult == 0]).mean()),
            "referral_rate": float(refer.mean()),
        },
        "features": features,
        "note": "AUROC of out-of-fold scores (outer folds = CNN folds); held-out rates use "
                "for each fold a threshold chosen on the other folds' scores",
    }
    return {"threshold": threshold, "refer": refer, "report": report}


def calibration_report(raw: np.ndarray, cal: np.ndarray, mean_probs: np.ndarray,
                        y: np.ndarray, methods: list[str], *, curves: bool = True
                        ) -> dict[str, Any]:
    out: dict[str, Any] = {
        "methods_chosen_per_fold": methods,
        "ece_before": expected_calibration_error(raw, y),
        "ece_after": expected_calibration_error(cal, y),
        "nll_before": nll(raw, y),
        "nll_after": nll(cal, y),
    }
    if curves:
        out.update({
            "ece_mean_ensemble": expected_calibration_error(mean_probs, y),
            "reliability_before": reliability_curve(raw, y),
            "reliability_after": reliability_curve(cal, y),
            "n_bins": 10,
            "note": "top-label ECE over 10 equal-width bins on out-of-fold predictions; the "
                    "calibrator of each outer fold was fitted on the original rows of its "
                    "inner validation split",
        })
    return out


def missing_report(points: dict, reps: dict, conf: dict[str, dict[str, Any]],
                    masked_cal: dict[str, np.ndarray], y: np.ndarray, folds: np.ndarray,
                    fold_ids: list[int], classes: Sequence[str], n_resamples: int,
                    copies: int) -> dict[str, Any]:
    """Out-of-fold balanced accuracy with each subset of the metadata masked in the
    validation fold, as served (all missing: the metadata-free model), against the mean
    ensemble on the same resamples."""
    n = len(y)
    ens = points["mean_ensemble"]["balanced_accuracy"]
    subsets = {}
    for name, cols in MISSING_SUBSETS.items():
        key = f"missing:{name}"
        if name == "all":
            members = conf[NOMETA]["members"]
        else:
            members = np.zeros_like(conf[MAIN]["members"])
            for f in fold_ids:
                test = folds == f
                members[test] = conf[MAIN]["by_fold"][f].sets(masked_cal[name][test])
        sets = set_metrics(members, y, classes)
        d = paired_difference(points, reps, key, "mean_ensemble", n_resamples, n)
        ba = points[key]["balanced_accuracy"]
        subsets[name] = {
            "missing": list(cols),
            "served_by": NOMETA if name == "all" else MAIN,
            **summary(points, reps, key),
            "difference_vs_mean_ensemble": {
                "effect": d.effect, "ci": [none_if_nan(c) for c in d.ci],
                "p_value": none_if_nan(d.p_value)},
            "conformal_coverage": sets["coverage"],
            "mean_set_size": sets["mean_set_size"],
            "meets_criterion": bool(ba >= ens - MISSING_TOLERANCE),
        }
    worst = min(subsets, key=lambda s: subsets[s]["balanced_accuracy"])
    return {
        "criterion": f"with any subset of age, sex and site missing, the served answer's "
                     f"out-of-fold balanced accuracy >= mean ensemble - {MISSING_TOLERANCE}",
        "tolerance": MISSING_TOLERANCE,
        "mean_ensemble": ens,
        "subsets": subsets,
        "worst_subset": worst,
        "worst_difference": subsets[worst]["balanced_accuracy"] - ens,
        "ok": all(s["meets_criterion"] for s in subsets.values()),
        "all_missing_with_metadata_model": summary(points, reps,
                                                   "missing:all_with_metadata_model"),
        "training": {
            "masked_copies": copies,
            "scheme": "the metadata models train on every row plus masked_copies copies of "
                      "it, each with one non-empty subset of age, sex and site (uniform, "
                      "seeded) set to missing; copies keep their lesion group",
        },
        "note": "each subset is masked in the validation fold only; conformal coverage uses "
                "the thresholds fitted on the other folds' unmasked calibrated probabilities",
    }


def quality_report(points: dict, reps: dict, qcols: list[str], quality: pd.DataFrame | None,
                    n_resamples: int, n: int) -> dict[str, Any]:
    """The main model with and without its quality features (paired, same resamples)."""
    if quality is None:
        return {"used": False, "reason": "no quality table was given"}
    table_cols = [str(c) for c in quality.columns if str(c) != IMAGE_ID]
    used = list(quality_feature_columns(quality))
    ignored = [c for c in table_cols if c not in used]
    if not qcols:
        return {"used": False, "allowed": list(QUALITY_FEATURES), "ignored": ignored,
                "reason": "the quality table has none of the allowed (resolution-normalised) "
                          "measures"}
    d = paired_difference(points, reps, MAIN, NOQUALITY, n_resamples, n,
                          effect_name="difference in balanced accuracy (positive: the quality "
                                      "features help)")
    return {
        "used": True, "columns": used, "ignored": ignored, "allowed": list(QUALITY_FEATURES),
        "with_quality": summary(points, reps, MAIN),
        "without_quality": summary(points, reps, NOQUALITY),
        "difference": d.to_dict(),
        "note": "only resolution-normalised measures may be features: image size and the "
                "full-resolution Laplacian variance identify the source archive (a shortcut)",
    }
