"""Nested, lesion-grouped cross-validation of the meta-classifier and its baselines.

Outer folds are the CNNs' own folds (the ``fold`` column of the OOF table): the CNN
probabilities of an image in fold ``f`` come from CNNs that never saw fold ``f``, and the
meta-classifier scoring it is trained on the other folds only. Because the CNN folds are
grouped by ``lesion_id`` (checked here; an error otherwise), no image is scored by a
meta-model that saw its lesion. Inside each outer training part, tuning and calibration use
an inner split grouped by lesion (:func:`~skin_core.meta.classifier.inner_split`).

Compared on the same images: ``meta_with_metadata`` (CNN probabilities + age, sex, site
[+ quality]), ``meta_without_metadata`` (CNN probabilities [+ quality]), ``metadata_only``,
``mean_ensemble`` (mean of the CNN probabilities), ``majority_vote`` (share of models voting
for each class) and ``best_single_model`` (for each fold, the model with the best balanced
accuracy on the *other* folds). Discrimination metrics of the meta-classifiers use their
class-weighted probabilities, whose arg-max is the decision (``pred``); calibration changes
probabilities, not decisions (isotonic calibration restores real class frequencies, and its
arg-max would trade balanced accuracy for accuracy). Calibrated probabilities feed the
reported probabilities, ECE and the conformal sets. Every metric gets a lesion-grouped
percentile bootstrap CI (:func:`skin_core.analysis.metrics.bootstrap_ci`; all methods and
metrics share the same resamples, so paired differences are valid).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from skin_core.analysis.metrics import bootstrap_ci
from skin_core.analysis.records import TestResult
from skin_core.constants import AGE, FOLD, IMAGE_ID, LABEL, LESION_ID, SEX, SITE, prob_columns
from skin_core.errors import DataError
from skin_core.meta.calibration import (
    expected_calibration_error,
    fit_calibrator,
    nll,
    reliability_curve,
)
from skin_core.meta.classifier import DEFAULT_PARAM_GRID, MetaClassifier
from skin_core.meta.conformal import fit_conformal, set_metrics
from skin_core.meta.features import WideOOF, build_features, oof_to_wide
from skin_core.meta.io import MetaPredictor, ReferralSpec
from skin_core.meta.referral import (
    choose_threshold,
    difficulty_target,
    referral_features,
)

MAIN = "meta_with_metadata"
METHODS: tuple[str, ...] = (
    MAIN, "meta_without_metadata", "metadata_only", "mean_ensemble", "majority_vote",
    "best_single_model",
)
SPECIFICITIES: tuple[float, ...] = (0.8, 0.9)


@dataclass
class MetaResult:
    """Everything :func:`evaluate_meta` produces.

    Attributes
    ----------
    report:
        JSON-ready summary (what ``meta.json`` holds).
    predictions:
        One row per image: ``image_id, lesion_id, fold, label``, calibrated meta
        ``prob_<C>``, ``pred`` (arg-max of the class-weighted model), ``pred_set``,
        ``set_size``, ``difficult`` (wrong by all CNNs), ``referral_prob``, ``refer`` (all
        out-of-fold).
    predictor:
        The predictor fitted on all images (``None`` with ``fit_final=False``).
    train_ids:
        Outer fold -> image ids the meta-models of that fold were trained on.
    """

    report: dict[str, Any]
    predictions: pd.DataFrame
    predictor: MetaPredictor | None = None
    train_ids: dict[int, np.ndarray] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Fast weighted metrics (bootstrap resamples as multiplicity weights)


class _Scorer:
    """All metrics of one method's ``(N, K)`` scores under row weights (resample counts).

    With unit weights the values equal :func:`~skin_core.analysis.metrics.classification_metrics`
    and :func:`~skin_core.analysis.metrics.sensitivity_at_specificity`.
    """

    def __init__(self, labels: np.ndarray, scores: np.ndarray, classes: Sequence[str],
                 melanoma: int | None) -> None:
        self.y = labels
        self.k = len(classes)
        self.classes = list(classes)
        self.pred = scores.argmax(axis=1)
        self.cell = self.y * self.k + self.pred
        self.auc_prep = []
        for c in range(self.k):
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
        denom = 2 * tp + (cm.sum(axis=0) - tp) + (support - tp)
        f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
        out["macro_f1"] = float(f1[present].mean())
        out["accuracy"] = float(tp.sum() / cm.sum())
        for c, (order, grp, pos) in enumerate(self.auc_prep):
            ws = w[order]
            wpos, wneg = ws * pos, ws * ~pos
            tp_, tn_ = wpos.sum(), wneg.sum()
            if tp_ == 0 or tn_ == 0:
                out[f"auc:{self.classes[c]}"] = float("nan")
                continue
            gneg = np.bincount(grp, weights=wneg)
            before = np.cumsum(gneg) - gneg
            out[f"auc:{self.classes[c]}"] = float(
                np.sum(wpos * (before[grp] + 0.5 * gneg[grp])) / (tp_ * tn_)
            )
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


def _bootstrap_all(
    scorers: dict[str, _Scorer],
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
    records: list[tuple[dict[str, dict[str, float]]]] = []

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


def _ci(values: np.ndarray, confidence: float = 0.95) -> list[float | None]:
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return [None, None]
    a = (1 - confidence) / 2
    lo, hi = np.quantile(v, [a, 1 - a])
    return [float(lo), float(hi)]


def _none_if_nan(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


# --------------------------------------------------------------------------------------------


def melanoma_index(classes: Sequence[str]) -> int | None:
    """Index of the melanoma class (``MEL`` / ``mel``), or ``None`` when absent."""
    for i, c in enumerate(classes):
        if str(c).lower() in ("mel", "melanoma"):
            return i
    return None


def _prepare(
    wide: WideOOF, metadata: pd.DataFrame | None, *, restrict: bool, source: str
) -> tuple[WideOOF, np.ndarray, dict[str, Any]]:
    """Check metadata against the OOF table; lesion groups; restriction bookkeeping."""
    info: dict[str, Any] = {"n_oof_dropped": len(wide.dropped),
                            "oof_dropped_examples": list(wide.dropped[:10])}
    ids = wide.table.index
    if metadata is None:
        return wide, np.asarray(ids, dtype=object), info
    meta = metadata.reset_index() if IMAGE_ID not in metadata.columns else metadata
    meta_ids = pd.Index(meta[IMAGE_ID].astype(str))
    without_oof = meta_ids.difference(ids)
    info["n_dataset_without_oof"] = int(len(without_oof))
    if len(without_oof):
        if not restrict:
            raise DataError(
                f"The OOF table has no predictions for {len(without_oof)} of the "
                f"{len(meta_ids)} images of {source}, e.g. {without_oof[0]}; finish training, "
                f"or pass restrict=True (--restrict) to evaluate only the {len(ids)} images "
                f"with predictions."
            )
        info["dataset_without_oof_examples"] = [str(i) for i in without_oof[:10]]
    without_meta = ids.difference(meta_ids)
    if len(without_meta):
        if not restrict:
            raise DataError(
                f"{source} has no row for {len(without_meta)} of the {len(ids)} images in the "
                f"OOF table, e.g. {without_meta[0]}; use the dataset the CNNs were trained on "
                f"or pass restrict=True (--restrict)."
            )
        keep = ids.intersection(meta_ids)
        wide = WideOOF(table=wide.table.loc[keep], models=wide.models, classes=wide.classes,
                       dropped=wide.dropped + tuple(str(i) for i in without_meta))
        info["n_oof_without_metadata"] = int(len(without_meta))
        ids = wide.table.index
    m = meta.assign(**{IMAGE_ID: meta_ids}).drop_duplicates(IMAGE_ID).set_index(IMAGE_ID)
    m = m.loc[ids]
    if LABEL in m.columns:
        differ = m[LABEL].astype(str).to_numpy() != wide.table[LABEL].to_numpy()
        if differ.any():
            i = int(np.flatnonzero(differ)[0])
            raise DataError(
                f"Image {ids[i]} has label {wide.table[LABEL].iloc[i]!r} in the OOF table but "
                f"{m[LABEL].iloc[i]!r} in {source} ({int(differ.sum())} such images); use the "
                f"dataset the CNNs were trained on."
            )
    lesions = m[LESION_ID].tolist() if LESION_ID in m.columns else [None] * len(ids)
    groups = [
        f"img:{i}" if _missing(les) else f"les:{str(les).strip()}"
        for i, les in zip(ids, lesions, strict=True)
    ]
    return wide, np.asarray(groups, dtype=object), info


def _missing(value: Any) -> bool:
    """True for None, NaN, pd.NA and blank strings."""
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def check_grouped_folds(folds: np.ndarray, groups: np.ndarray, *, source: str = "oof.csv") -> None:
    """Raise :class:`DataError` when one lesion has images in two folds."""
    df = pd.DataFrame({"g": groups, "f": folds})
    per = df.groupby("g")["f"].nunique()
    bad = per[per > 1]
    if len(bad):
        g = bad.index[0]
        fs = sorted(df.loc[df["g"] == g, "f"].unique().tolist())
        raise DataError(
            f"{source}: lesion {str(g).split(':', 1)[-1]} has images in folds {fs} "
            f"({len(bad)} such lesions); the CNN folds are not grouped by lesion_id, so a "
            f"leakage-free meta evaluation is impossible: retrain with lesion-grouped folds."
        )


def evaluate_meta(
    oof: pd.DataFrame | WideOOF,
    metadata: pd.DataFrame | None,
    *,
    classes: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    quality: pd.DataFrame | None = None,
    use_logits: bool = False,
    coverage: float = 0.9,
    class_conditional: bool = False,
    calibration: str = "auto",
    referral_sensitivity: float = 0.8,
    param_grid: dict[str, Sequence[Any]] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    n_jobs: int = 1,
    restrict: bool = False,
    fit_final: bool = True,
    progress: bool = False,
    source: str = "metadata",
) -> MetaResult:
    """Nested lesion-grouped CV of the meta-classifier, calibration, conformal and referral.

    Parameters
    ----------
    oof:
        Long OOF table (``image_id, model, arch, fold, label, prob_<C>...``) or a
        :class:`~skin_core.meta.features.WideOOF`.
    metadata:
        Dataset table (``image_id, label, lesion_id, age_approx, sex,
        anatom_site_general``); ``lesion_id`` gives the groups (an image without one is its
        own lesion), ``label`` is checked against the OOF labels and never used as a feature.
        ``None``: a meta-classifier on CNN probabilities only (then ``meta_with_metadata`` and
        ``meta_without_metadata`` are the same model, ``metadata_only`` is absent, and every
        image is its own group).
    classes, models:
        Expected classes (e.g. from ``config.yaml``) and the models to stack (default all).
    quality:
        Optional ``quality.csv`` table: its numeric measures become features of the meta and
        referral models.
    use_logits:
        Stack ``log p`` instead of ``p``.
    coverage, class_conditional:
        Target coverage of conformal sets and whether thresholds are per class.
    calibration:
        ``"auto"`` (chosen on the inner split), ``"none"``, ``"temperature"``, ``"isotonic"``.
    referral_sensitivity:
        Sensitivity for wrong-by-all images that the ``refer`` threshold targets.
    param_grid:
        Tuning grid of :class:`~skin_core.meta.classifier.MetaClassifier`.
    n_resamples:
        Bootstrap resamples for CIs (0 skips CIs).
    seed, n_jobs:
        Seed of every random step; LightGBM threads.
    restrict:
        Evaluate only images with OOF predictions from every model and a metadata row
        (reported) instead of raising.
    fit_final:
        Also fit the deployable :class:`~skin_core.meta.io.MetaPredictor` on all images.
    progress:
        tqdm progress bar on stderr.
    source:
        Name of the metadata source in messages.

    Returns
    -------
    MetaResult

    Raises
    ------
    DataError
        Bad OOF table, missing images, label mismatch, folds not grouped by lesion, fewer
        than two folds.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    wide = oof if isinstance(oof, WideOOF) else oof_to_wide(
        oof, classes=classes, models=models, restrict=restrict
    )
    wide, groups, data_info = _prepare(wide, metadata, restrict=restrict, source=source)
    classes = wide.classes
    ids = wide.table.index.to_numpy(dtype=object)
    folds = wide.table[FOLD].to_numpy(dtype=int)
    y = wide.label_index()
    n, k = len(ids), len(classes)
    fold_ids = sorted(np.unique(folds).tolist())
    if len(fold_ids) < 2:
        raise DataError(
            f"The OOF table has {len(fold_ids)} fold(s); nested cross-validation needs at "
            f"least 2 (train the CNNs with K-fold CV)."
        )
    check_grouped_folds(folds, groups)
    mel = melanoma_index(classes)
    use_meta = metadata is not None

    # Features (pure; label never used).
    X_main, spec_main = build_features(wide, metadata, use_logits=use_logits, quality=quality,
                                       include_metadata=use_meta, source=source)
    X_nometa, _ = build_features(wide, None, use_logits=use_logits, quality=quality,
                                 include_metadata=False, source=source)
    # Without metadata the main model already is the no-metadata model: not trained twice.
    variants: dict[str, pd.DataFrame] = {MAIN: X_main}
    if use_meta:
        variants["meta_without_metadata"] = X_nometa
    if use_meta:
        X_metaonly, _ = build_features(wide, metadata, include_probs=False, source=source)
        variants["metadata_only"] = X_metaonly
    stacked = wide.stacked()  # (M, N, K)
    difficult = difficulty_target(stacked, y)
    qcols = [c for c in X_main.columns if c.startswith("q_")]
    R = referral_features(stacked, classes, X_main.index,
                          metadata_features=X_main if use_meta else None,
                          quality_features=X_main[qcols] if qcols else None)
    referral_possible = 0 < difficult.sum() < n

    def make_clf(cls: Sequence[Any]) -> MetaClassifier:
        return MetaClassifier(classes=list(cls), param_grid=param_grid, random_state=seed,
                              n_jobs=n_jobs)

    total = len(fold_ids) * (len(variants) + int(referral_possible)) + 2 * int(fit_final) + 1
    bar = tqdm(total=total, desc="meta", disable=not progress, unit="fit")
    oof_probs = {v: np.zeros((n, k)) for v in variants}
    cal_probs = np.zeros((n, k))
    ref_scores = np.full(n, np.nan)
    train_ids: dict[int, np.ndarray] = {}
    tuning: dict[str, list] = {v: [] for v in variants}
    cal_methods: list[str] = []
    class_idx = list(range(k))
    for f in fold_ids:
        test = folds == f
        train = ~test
        train_ids[int(f)] = ids[train]
        for v, X in variants.items():
            bar.set_postfix_str(f"fold {f} {v}")
            clf = make_clf(class_idx).fit(X.loc[train], y[train], groups=groups[train])
            oof_probs[v][test] = clf.predict_proba(X.loc[test])
            tuning[v].append({"fold": int(f), **clf.best_params_})
            if v == MAIN:
                cal = fit_calibrator(clf.inner_val_proba_, clf.inner_val_y_, method=calibration,
                                     groups=groups[train][clf.inner_val_index_], seed=seed)
                cal_methods.append(cal.method)
                cal_probs[test] = cal.transform(oof_probs[v][test])
            bar.update()
        if referral_possible:
            bar.set_postfix_str(f"fold {f} referral")
            if len(np.unique(difficult[train])) == 2:
                rclf = make_clf([0, 1]).fit(R.loc[train], difficult[train],
                                            groups=groups[train])
                ref_scores[test] = rclf.predict_proba(R.loc[test])[:, 1]
            bar.update()

    # Baselines from the CNN probabilities.
    mean_probs = stacked.mean(axis=0)
    votes = np.zeros((n, k))
    for preds in stacked.argmax(axis=2):
        votes[np.arange(n), preds] += 1
    votes /= len(stacked)
    best_single = np.zeros((n, k))
    best_choice = {}
    for f in fold_ids:
        test = folds == f
        bas = [_Scorer(y[~test], p[~test], classes, None)(np.ones((~test).sum()))
               ["balanced_accuracy"] for p in stacked]
        j = int(np.argmax(bas))
        best_choice[int(f)] = wide.models[j]
        best_single[test] = stacked[j][test]
    scores = {MAIN: oof_probs[MAIN],
              "meta_without_metadata": oof_probs["meta_without_metadata" if use_meta else MAIN]}
    if "metadata_only" in variants:
        scores["metadata_only"] = oof_probs["metadata_only"]
    scores.update({"mean_ensemble": mean_probs, "majority_vote": votes,
                   "best_single_model": best_single})

    bar.set_postfix_str("bootstrap")
    scorers = {m: _Scorer(y, s, classes, mel) for m, s in scores.items()}
    extra: dict[str, Callable[[np.ndarray], float]] = {}
    if referral_possible and np.isfinite(ref_scores).all():
        extra["referral_auroc"] = _weighted_binary_auc(difficult, ref_scores)
    points, reps = _bootstrap_all(scorers, n, groups, n_resamples=n_resamples, seed=seed,
                                  extra=extra)
    bar.update()

    methods_report = {}
    ci_report = {}
    for m in scores:
        p = points[m]
        methods_report[m] = {
            "balanced_accuracy": p["balanced_accuracy"], "macro_f1": p["macro_f1"],
            "accuracy": p["accuracy"],
            "auc": {c: _none_if_nan(p[f"auc:{c}"]) for c in classes},
        }
        ci_report[m] = {
            "balanced_accuracy": _ci(reps[m]["balanced_accuracy"]),
            "macro_f1": _ci(reps[m]["macro_f1"]),
            "auc": {c: _ci(reps[m][f"auc:{c}"]) for c in classes},
        }
        if mel is not None:
            methods_report[m]["melanoma"] = {}
            ci_report[m]["melanoma"] = {}
            for spec in SPECIFICITIES:
                key = f"sens_at_spec{int(round(spec * 100))}"
                methods_report[m]["melanoma"][key] = _none_if_nan(p[key])
                ci_report[m]["melanoma"][key] = _ci(reps[m][key])
    diff = _paired_difference(points, reps, MAIN, "mean_ensemble", n_resamples, n)

    # Calibration (out-of-fold, before/after).
    raw = oof_probs[MAIN]
    calibration_report = {
        "methods_chosen_per_fold": cal_methods,
        "ece_before": expected_calibration_error(raw, y),
        "ece_after": expected_calibration_error(cal_probs, y),
        "nll_before": nll(raw, y),
        "nll_after": nll(cal_probs, y),
        "ece_mean_ensemble": expected_calibration_error(mean_probs, y),
        "reliability_before": reliability_curve(raw, y),
        "reliability_after": reliability_curve(cal_probs, y),
        "n_bins": 10,
        "note": "top-label ECE over 10 equal-width bins on out-of-fold predictions; the "
                "calibrator of each outer fold was fitted on its inner validation split",
    }

    # Conformal sets: thresholds from the other folds' calibrated OOF probabilities.
    members = np.zeros((n, k), dtype=bool)
    per_fold = []
    for f in fold_ids:
        test = folds == f
        thr = fit_conformal(cal_probs[~test], y[~test], classes, coverage=coverage,
                            class_conditional=class_conditional)
        members[test] = thr.sets(cal_probs[test])
        sm = set_metrics(members[test], y[test], classes)
        per_fold.append({"fold": int(f), "coverage": sm["coverage"],
                         "mean_set_size": sm["mean_set_size"], "n": sm["n"]})
    final_thr = fit_conformal(cal_probs, y, classes, coverage=coverage,
                              class_conditional=class_conditional)
    conformal_report = {
        "target_coverage": coverage,
        "score": "lac",
        "class_conditional": class_conditional,
        **set_metrics(members, y, classes),
        "per_fold": per_fold,
        "thresholds": final_thr.to_dict(),
        "note": "held-out coverage: each fold's sets use thresholds fitted on the other "
                "folds' calibrated out-of-fold probabilities",
    }

    # Referral.
    referral_report: dict[str, Any]
    ref_threshold = None
    if referral_possible and np.isfinite(ref_scores).all():
        from sklearn.metrics import average_precision_score

        refer = np.zeros(n, dtype=bool)
        for f in fold_ids:
            test = folds == f
            t = choose_threshold(ref_scores[~test], difficult[~test],
                                 sensitivity=referral_sensitivity)
            refer[test] = ref_scores[test] >= t
        ref_threshold = choose_threshold(ref_scores, difficult, sensitivity=referral_sensitivity)
        held = {
            "sensitivity": float(refer[difficult == 1].mean()),
            "specificity": float((~refer[difficult == 0]).mean()),
            "referral_rate": float(refer.mean()),
        }
        referral_report = {
            "target": "image misclassified by every CNN model",
            "prevalence": float(difficult.mean()),
            "n_difficult": int(difficult.sum()),
            "auroc": points["referral_auroc"]["value"],
            "auroc_ci": _ci(reps["referral_auroc"]["value"]),
            "auprc": float(average_precision_score(difficult, ref_scores)),
            "sensitivity_target": referral_sensitivity,
            "threshold": ref_threshold,
            "held_out": held,
            "features": list(R.columns),
            "note": "AUROC of out-of-fold scores (outer folds = CNN folds); held-out rates use "
                    "for each fold a threshold chosen on the other folds' scores",
        }
    else:
        referral_report = {
            "skipped": True,
            "reason": f"{int(difficult.sum())} of {n} images are misclassified by every model; "
                      "a referral model needs both kinds in every training part",
            "prevalence": float(difficult.mean()),
        }

    # The deployable predictor, fitted on everything.
    predictor = None
    if fit_final:
        bar.set_postfix_str("final model")
        clf = make_clf(class_idx).fit(X_main, y, groups=groups)
        cal = fit_calibrator(clf.inner_val_proba_, clf.inner_val_y_, method=calibration,
                             groups=groups[clf.inner_val_index_], seed=seed)
        bar.update()
        ref_booster, ref_spec = None, None
        if ref_threshold is not None:
            rclf = make_clf([0, 1]).fit(R, difficult, groups=groups)
            ref_booster = rclf.booster_
            ref_spec = ReferralSpec(columns=tuple(R.columns), threshold=ref_threshold,
                                    sensitivity_target=referral_sensitivity,
                                    trained_class_index=tuple(
                                        int(i) for i in rclf.trained_class_index_))
        bar.update()
        predictor = MetaPredictor(
            feature_spec=spec_main, booster=clf.booster_,
            trained_class_index=tuple(int(i) for i in clf.trained_class_index_),
            calibrator=cal, conformal=final_thr, referral_booster=ref_booster,
            referral=ref_spec,
            info={"n_train": int(n), "best_params": clf.best_params_,
                  "models": list(wide.models), "seed": seed},
        )
    bar.close()

    predictions = pd.DataFrame({IMAGE_ID: ids, LESION_ID: [str(g).split(":", 1)[1] if
                                                           str(g).startswith("les:") else None
                                                           for g in groups],
                                FOLD: folds, LABEL: wide.table[LABEL].to_numpy()})
    for j, c in enumerate(prob_columns(classes)):
        predictions[c] = cal_probs[:, j]
    predictions["pred"] = [classes[j] for j in oof_probs[MAIN].argmax(axis=1)]
    predictions["pred_set"] = ["|".join(classes[j] for j in np.argsort(-p, kind="stable")
                                        if mm[j]) for p, mm in zip(cal_probs, members,
                                                                   strict=True)]
    predictions["set_size"] = members.sum(axis=1)
    predictions["difficult"] = difficult.astype(bool)
    predictions["referral_prob"] = ref_scores
    if ref_threshold is not None:
        predictions["refer"] = refer

    report = {
        "balanced_accuracy": points[MAIN]["balanced_accuracy"],
        "macro_f1": points[MAIN]["macro_f1"],
        "baselines": {m: points[m]["balanced_accuracy"] for m in scores if m != MAIN},
        "ci": ci_report,
        "methods": methods_report,
        "difference_vs_mean_ensemble": diff.to_dict(),
        "calibration": calibration_report,
        "conformal": conformal_report,
        "referral": referral_report,
        "data": {
            "n_images": int(n), "n_lesions": int(len(np.unique(groups))),
            "classes": list(classes), "models": list(wide.models),
            "folds": [int(f) for f in fold_ids],
            "class_counts": {c: int((y == j).sum()) for j, c in enumerate(classes)},
            "metadata_missing": _missing_summary(X_main) if use_meta else None,
            "unknown_values": spec_main.unknown_values,
            "quality_columns": list(spec_main.quality_columns),
            "melanoma_class": classes[mel] if mel is not None else None,
            **data_info,
        },
        "metadata_used": use_meta,
        "leakage_check": {
            "outer_folds": "CNN folds from the OOF table",
            "groups": "lesion_id (an image without one is its own lesion)" if use_meta else
                      "none given (no metadata table): every image is its own group",
            "lesions_in_two_folds": 0,
            "inner_split": "label-stratified split of lesion groups within each outer training "
                           "part (skin_core.meta.classifier.inner_split)",
        },
        "tuning": {v: rows for v, rows in tuning.items()},
        "best_single_model_per_fold": best_choice,
        "feature_spec": spec_main.to_dict(),
        "settings": {
            "coverage": coverage, "class_conditional": class_conditional,
            "calibration": calibration, "referral_sensitivity": referral_sensitivity,
            "use_logits": use_logits, "n_resamples": n_resamples, "seed": seed,
            "bootstrap": "percentile, lesion-grouped (skin_core.analysis.metrics.bootstrap_ci),"
                         " 95%",
            "param_grid": {k_: list(v_) for k_, v_ in
                           (param_grid or DEFAULT_PARAM_GRID).items()},
        },
        "elapsed_s": round(time.perf_counter() - t0, 2),
    }
    return MetaResult(report=report, predictions=predictions, predictor=predictor,
                      train_ids=train_ids)


def _missing_summary(X: pd.DataFrame) -> dict[str, int]:
    return {
        AGE: int(X[AGE].isna().sum()),
        SEX: int((X[SEX] == "unknown").sum()),
        SITE: int((X[SITE] == "unknown").sum()),
    }


def _weighted_binary_auc(target: np.ndarray, scores: np.ndarray) -> Callable[[np.ndarray], float]:
    two = np.column_stack([1 - scores, scores])
    scorer = _Scorer(np.asarray(target, dtype=int), two, ["neg", "pos"], None)

    def auc(w: np.ndarray) -> float:
        return scorer(w)["auc:pos"]

    return auc


def _paired_difference(
    points: dict, reps: dict, a: str, b: str, n_resamples: int, n: int
) -> TestResult:
    effect = points[a]["balanced_accuracy"] - points[b]["balanced_accuracy"]
    d = reps[a]["balanced_accuracy"] - reps[b]["balanced_accuracy"]
    d = d[np.isfinite(d)]
    ci = _ci(d) if len(d) else [None, None]
    p = float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean()))) if len(d) else float("nan")
    return TestResult(
        name=f"balanced accuracy: {a} - {b}",
        effect=float(effect),
        ci=(float("nan") if ci[0] is None else ci[0], float("nan") if ci[1] is None else ci[1]),
        statistic=float("nan"),
        p_value=p,
        method="paired lesion-grouped percentile bootstrap (same resamples for both methods)",
        effect_name="difference in balanced accuracy (positive: meta-classifier better)",
        assumptions="lesions independent; out-of-fold predictions of both methods on the "
                    "same images",
        n={"images": int(n), "resamples": int(n_resamples)},
        extra={"p_value_method": "two-sided bootstrap sign test (2 x smaller tail share)"},
    )
