"""Nested, lesion-grouped cross-validation of the meta-classifier and its baselines.

Outer folds are the CNNs' own folds (the ``fold`` column of the OOF table): the CNN
probabilities of an image in fold ``f`` come from CNNs that never saw fold ``f``, and the
meta-classifier scoring it is trained on the other folds only. Because the CNN folds are
grouped by ``lesion_id`` (checked here; an error otherwise), no image is scored by a
meta-model that saw its lesion. Inside each outer training part, tuning and calibration use
an inner split grouped by lesion (:func:`~skin_core.meta.classifier.inner_split`).

Compared on the same images: ``meta_with_metadata`` (CNN probabilities + age, sex, site
[+ quality]; trained with masked copies, :mod:`skin_core.meta.masking`),
``meta_without_metadata`` (CNN probabilities [+ quality]: the model served when an upload
comes without any metadata), ``metadata_only``, ``meta_without_quality`` (with a quality
table: the main model without its quality features), ``mean_ensemble`` (mean of the CNN
probabilities), ``majority_vote`` (share of models voting for each class) and
``best_single_model`` (for each fold, the model with the best balanced accuracy on the
*other* folds). Discrimination metrics of the meta-classifiers use their class-weighted
probabilities, whose arg-max is the decision (``pred``); calibration changes probabilities,
not decisions (isotonic calibration restores real class frequencies, and its arg-max would
trade balanced accuracy for accuracy). Calibrated probabilities feed the reported
probabilities, ECE and the conformal sets. Every metric gets a lesion-grouped percentile
bootstrap CI (all methods share the same resamples, so paired differences are valid:
:mod:`skin_core.meta.scoring`).

Missing metadata: for every subset of ``age, sex, site`` (:data:`~skin_core.meta.masking.
MISSING_SUBSETS`) the validation fold is scored with that subset masked, by the model that
serves such an input (the metadata model; without any metadata, the metadata-free model), and
compared with the mean ensemble (``report["missing_metadata"]``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from skin_core.constants import AGE, FOLD, IMAGE_ID, LABEL, LESION_ID, SEX, SITE, prob_columns
from skin_core.errors import ConfigError, DataError
from skin_core.meta.calibration import Calibrator, fit_calibrator
from skin_core.meta.classifier import DEFAULT_PARAM_GRID, MetaClassifier
from skin_core.meta.conformal import ConformalThresholds
from skin_core.meta.features import FeatureSpec, WideOOF, build_features, oof_to_wide
from skin_core.meta.io import MetaPredictor, ReferralSpec
from skin_core.meta.masking import (
    METADATA_COLUMNS,
    MISSING_SUBSETS,
    draw_masks,
    mask_metadata,
    repeat_for_copies,
    with_masked_copies,
)
from skin_core.meta.referral import difficulty_target, referral_features
from skin_core.meta.reports import (
    MAIN,
    METAONLY,
    METHODS,
    MISSING_TOLERANCE,
    NOMETA,
    NOQUALITY,
    calibration_report,
    conformal_sets,
    missing_report,
    quality_report,
    referral_report,
)
from skin_core.meta.scoring import (
    SPECIFICITIES,
    Scorer,
    bootstrap_all,
    melanoma_index,
    none_if_nan,
    paired_difference,
    percentile_ci,
    summary,
    weighted_binary_auc,
)

#: Masked copies of each training row for the metadata models (0: none).
DEFAULT_MASKED_COPIES = 1

__all__ = [
    "DEFAULT_MASKED_COPIES", "MAIN", "METAONLY", "METHODS", "MISSING_TOLERANCE", "NOMETA",
    "NOQUALITY", "MetaResult", "Scorer", "check_grouped_folds", "evaluate_meta",
    "melanoma_index",
]


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
    predictor_nometa:
        The metadata-free predictor fitted on all images (its referral model without
        metadata), served when an upload has no age, sex or site. The same object as
        ``predictor`` when no metadata table was given.
    """

    report: dict[str, Any]
    predictions: pd.DataFrame
    predictor: MetaPredictor | None = None
    train_ids: dict[int, np.ndarray] = field(default_factory=dict)
    predictor_nometa: MetaPredictor | None = None


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
    masked_copies: int = DEFAULT_MASKED_COPIES,
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
        Optional ``quality.csv`` table: its resolution-normalised measures
        (:data:`~skin_core.meta.features.QUALITY_FEATURES`) become features of the meta and
        referral models; its other columns are ignored. The report then compares the main
        model with and without them.
    use_logits:
        Stack ``log p`` instead of ``p``.
    coverage, class_conditional:
        Target coverage of conformal sets and whether thresholds are per class.
    calibration:
        ``"auto"`` (chosen on the inner split), or one of
        :data:`skin_core.meta.calibration.METHODS`.
    referral_sensitivity:
        Sensitivity for wrong-by-all images that the ``refer`` threshold targets.
    param_grid:
        Tuning grid of :class:`~skin_core.meta.classifier.MetaClassifier`.
    masked_copies:
        Copies of each training row, each with a random non-empty subset of the metadata
        missing, added to the training rows of the metadata models (meta-classifier and
        referral; :mod:`skin_core.meta.masking`). 0 trains on the rows as they are.
    n_resamples:
        Bootstrap resamples for CIs (0 skips CIs).
    seed, n_jobs:
        Seed of every random step; LightGBM threads.
    restrict:
        Evaluate only images with OOF predictions from every model and a metadata row
        (reported) instead of raising.
    fit_final:
        Also fit the deployable :class:`~skin_core.meta.io.MetaPredictor` pair (with and
        without metadata) on all images.
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
        than two folds, a non-numeric quality measure.
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
    if int(masked_copies) < 0:
        raise ConfigError(f"The 'masked_copies' parameter of evaluate_meta must be 0 or more. "
                          f"Got {masked_copies!r} instead.")
    copies = int(masked_copies) if use_meta else 0

    # Features (pure; label never used).
    X_main, spec_main = build_features(wide, metadata, use_logits=use_logits, quality=quality,
                                       include_metadata=use_meta, source=source)
    X_nometa, spec_nometa = build_features(wide, None, use_logits=use_logits, quality=quality,
                                           include_metadata=False, source=source)
    qcols = [c for c in X_main.columns if c.startswith("q_")]
    # Without metadata the main model already is the no-metadata model: not trained twice.
    variants: dict[str, pd.DataFrame] = {MAIN: X_main}
    if use_meta:
        variants[NOMETA] = X_nometa
        variants[METAONLY] = build_features(wide, metadata, include_probs=False,
                                            source=source)[0]
    if qcols:
        variants[NOQUALITY] = X_main.drop(columns=qcols)
    masked_variants = {MAIN, NOQUALITY} if copies else set()
    served = [MAIN, NOMETA] if use_meta else [MAIN]  # calibrated, conformal, referral
    stacked = wide.stacked()  # (M, N, K)
    difficult = difficulty_target(stacked, y)
    R_main = referral_features(stacked, classes, X_main.index,
                               metadata_features=X_main if use_meta else None,
                               quality_features=X_main[qcols] if qcols else None)
    R = {MAIN: R_main}
    if use_meta:
        R[NOMETA] = R_main.drop(columns=list(METADATA_COLUMNS))
    referral_possible = 0 < difficult.sum() < n

    def make_clf(cls: Sequence[Any]) -> MetaClassifier:
        return MetaClassifier(classes=list(cls), param_grid=param_grid, random_state=seed,
                              n_jobs=n_jobs)

    def fit(X: pd.DataFrame, target: np.ndarray, grp: np.ndarray, masks: np.ndarray | None,
            cls: Sequence[Any], calibrate: bool) -> tuple[MetaClassifier, Calibrator | None]:
        return _fit_one(make_clf(cls), X, target, grp, masks, calibrate=calibrate,
                        calibration=calibration, seed=seed)

    n_fits = len(variants) + len(served) * int(referral_possible)
    total = len(fold_ids) * n_fits + 2 * len(served) * int(fit_final) + 1
    bar = tqdm(total=total, desc="meta", disable=not progress, unit="fit")
    oof_probs = {v: np.zeros((n, k)) for v in variants}
    cal_probs = {v: np.zeros((n, k)) for v in served}
    masked_raw = {name: np.zeros((n, k)) for name in MISSING_SUBSETS if use_meta}
    masked_cal = {name: np.zeros((n, k)) for name in MISSING_SUBSETS if use_meta}
    ref_scores = {v: np.full(n, np.nan) for v in served}
    train_ids: dict[int, np.ndarray] = {}
    tuning: dict[str, list] = {v: [] for v in variants}
    cal_methods: dict[str, list[str]] = {v: [] for v in served}
    class_idx = list(range(k))
    for i, f in enumerate(fold_ids):
        test = folds == f
        train = ~test
        train_ids[int(f)] = ids[train]
        masks = draw_masks(int(train.sum()), copies=copies, seed=[seed, 1 + i])
        for v, X in variants.items():
            bar.set_postfix_str(f"fold {f} {v}")
            clf, cal = fit(X.loc[train], y[train], groups[train],
                           masks if v in masked_variants else None, class_idx,
                           calibrate=v in served)
            X_test = X.loc[test]
            oof_probs[v][test] = clf.predict_proba(X_test)
            tuning[v].append({"fold": int(f), **clf.best_params_})
            if cal is not None:
                cal_methods[v].append(cal.method)
                cal_probs[v][test] = cal.transform(oof_probs[v][test])
            if v == MAIN and use_meta:  # the validation fold with each subset missing
                names = list(MISSING_SUBSETS)[1:]
                raw = clf.predict_proba(pd.concat(
                    [mask_metadata(X_test, MISSING_SUBSETS[name]) for name in names]))
                for j, name in enumerate(["none", *names]):
                    part = oof_probs[v][test] if j == 0 else raw[(j - 1) * len(X_test):
                                                                 j * len(X_test)]
                    masked_raw[name][test] = part
                    masked_cal[name][test] = cal.transform(part)
            bar.update()
        if referral_possible:
            for v in served:
                bar.set_postfix_str(f"fold {f} referral {v}")
                if len(np.unique(difficult[train])) == 2:
                    rclf, _ = fit(R[v].loc[train], difficult[train], groups[train],
                                  masks if (v == MAIN and copies) else None, [0, 1],
                                  calibrate=False)
                    ref_scores[v][test] = rclf.predict_proba(R[v].loc[test])[:, 1]
                bar.update()
    if not use_meta:  # the main model is the metadata-free one
        oof_probs[NOMETA], cal_probs[NOMETA] = oof_probs[MAIN], cal_probs[MAIN]
        cal_methods[NOMETA] = cal_methods[MAIN]

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
        bas = [Scorer(y[~test], p[~test], classes, None)(np.ones((~test).sum()))
               ["balanced_accuracy"] for p in stacked]
        j = int(np.argmax(bas))
        best_choice[int(f)] = wide.models[j]
        best_single[test] = stacked[j][test]
    scores = {MAIN: oof_probs[MAIN], NOMETA: oof_probs[NOMETA]}
    for v in (METAONLY, NOQUALITY):
        if v in variants:
            scores[v] = oof_probs[v]
    scores.update({"mean_ensemble": mean_probs, "majority_vote": votes,
                   "best_single_model": best_single})

    bar.set_postfix_str("bootstrap")
    scorers = {m: Scorer(y, s, classes, mel) for m, s in scores.items()}
    # Missing metadata: what is served with each subset missing (BA only, same resamples).
    missing_scores = {}
    if use_meta:
        missing_scores = {name: (oof_probs[NOMETA] if name == "all" else masked_raw[name])
                          for name in MISSING_SUBSETS}
        missing_scores["all_with_metadata_model"] = masked_raw["all"]
    for name, s in missing_scores.items():
        scorers[f"missing:{name}"] = Scorer(y, s, classes, None, only_balanced_accuracy=True)
    extra: dict[str, Callable[[np.ndarray], float]] = {}
    for v in served:
        if referral_possible and np.isfinite(ref_scores[v]).all():
            extra[f"referral_auroc:{v}"] = weighted_binary_auc(difficult, ref_scores[v])
    points, reps = bootstrap_all(scorers, n, groups, n_resamples=n_resamples, seed=seed,
                                 extra=extra)
    bar.update()

    methods_report = {}
    ci_report = {}
    for m in scores:
        p = points[m]
        methods_report[m] = {
            "balanced_accuracy": p["balanced_accuracy"], "macro_f1": p["macro_f1"],
            "accuracy": p["accuracy"],
            "auc": {c: none_if_nan(p[f"auc:{c}"]) for c in classes},
        }
        ci_report[m] = {
            "balanced_accuracy": percentile_ci(reps[m]["balanced_accuracy"]),
            "macro_f1": percentile_ci(reps[m]["macro_f1"]),
            "auc": {c: percentile_ci(reps[m][f"auc:{c}"]) for c in classes},
        }
        if mel is not None:
            methods_report[m]["melanoma"] = {}
            ci_report[m]["melanoma"] = {}
            for spec in SPECIFICITIES:
                key = f"sens_at_spec{int(round(spec * 100))}"
                methods_report[m]["melanoma"][key] = none_if_nan(p[key])
                ci_report[m]["melanoma"][key] = percentile_ci(reps[m][key])
    diff = paired_difference(points, reps, MAIN, "mean_ensemble", n_resamples, n)

    # Conformal sets: thresholds from the other folds' calibrated OOF probabilities.
    conf = {v: conformal_sets(cal_probs[v], y, folds, fold_ids, classes, coverage=coverage,
                          class_conditional=class_conditional) for v in served}
    members = conf[MAIN]["members"]
    conf.setdefault(NOMETA, conf[MAIN])

    # Referral.
    ref = {v: referral_report(ref_scores[v], difficult, folds, fold_ids,
                        sensitivity=referral_sensitivity, points=points, reps=reps,
                        key=f"referral_auroc:{v}", features=list(R[v].columns))
           for v in served}
    ref.setdefault(NOMETA, ref[MAIN])

    # The deployable predictors, fitted on everything.
    predictors: dict[str, MetaPredictor | None] = {v: None for v in served}
    if fit_final:
        specs = {MAIN: spec_main, NOMETA: spec_nometa}
        X_final = {MAIN: X_main, NOMETA: X_nometa}
        masks = draw_masks(n, copies=copies, seed=[seed, 0])
        for v in served:
            bar.set_postfix_str(f"final model {v}")
            vmasks = masks if (v == MAIN and copies) else None
            clf, cal = fit(X_final[v], y, groups, vmasks, class_idx, calibrate=True)
            bar.update()
            ref_booster, ref_spec = None, None
            if ref[v]["threshold"] is not None:
                rclf, _ = fit(R[v], difficult, groups, vmasks, [0, 1], calibrate=False)
                ref_booster = rclf.booster_
                ref_spec = ReferralSpec(
                    columns=tuple(R[v].columns), threshold=ref[v]["threshold"],
                    sensitivity_target=referral_sensitivity,
                    trained_class_index=tuple(int(i) for i in rclf.trained_class_index_))
            bar.update()
            predictors[v] = _predictor(specs[v], clf, cal, conf[v]["final"], ref_booster,
                                       ref_spec, info={
                                           "n_train": int(n), "best_params": clf.best_params_,
                                           "models": list(wide.models), "seed": seed,
                                           "metadata": bool(specs[v].metadata),
                                           "masked_copies": copies if v == MAIN else 0})
    bar.close()
    predictor = predictors[MAIN]
    predictor_nometa = predictors[NOMETA] if use_meta else predictor

    predictions = pd.DataFrame({IMAGE_ID: ids, LESION_ID: [str(g).split(":", 1)[1] if
                                                           str(g).startswith("les:") else None
                                                           for g in groups],
                                FOLD: folds, LABEL: wide.table[LABEL].to_numpy()})
    for j, c in enumerate(prob_columns(classes)):
        predictions[c] = cal_probs[MAIN][:, j]
    predictions["pred"] = [classes[j] for j in oof_probs[MAIN].argmax(axis=1)]
    predictions["pred_set"] = ["|".join(classes[j] for j in np.argsort(-p, kind="stable")
                                        if mm[j]) for p, mm in zip(cal_probs[MAIN], members,
                                                                   strict=True)]
    predictions["set_size"] = members.sum(axis=1)
    predictions["difficult"] = difficult.astype(bool)
    predictions["referral_prob"] = ref_scores[MAIN]
    if ref[MAIN]["threshold"] is not None:
        predictions["refer"] = ref[MAIN]["refer"]

    report = {
        "balanced_accuracy": points[MAIN]["balanced_accuracy"],
        "macro_f1": points[MAIN]["macro_f1"],
        "baselines": {m: points[m]["balanced_accuracy"] for m in scores if m != MAIN},
        "ci": ci_report,
        "methods": methods_report,
        "difference_vs_mean_ensemble": diff.to_dict(),
        "missing_metadata": missing_report(
            points, reps, conf, masked_cal, y, folds, fold_ids, classes, n_resamples, copies
        ) if use_meta else {"skipped": True, "reason": "no metadata table was given"},
        "quality_features": quality_report(points, reps, qcols, quality, n_resamples, n),
        "calibration": calibration_report(oof_probs[MAIN], cal_probs[MAIN], mean_probs, y,
                                           cal_methods[MAIN]),
        "conformal": conf[MAIN]["report"],
        "referral": ref[MAIN]["report"],
        "without_metadata_predictor": {
            **summary(points, reps, NOMETA),
            "features": list(spec_nometa.columns),
            "calibration": calibration_report(oof_probs[NOMETA], cal_probs[NOMETA],
                                               mean_probs, y, cal_methods[NOMETA],
                                               curves=False),
            "conformal": {key: conf[NOMETA]["report"][key] for key in
                          ("target_coverage", "coverage", "mean_set_size", "thresholds")},
            "referral": {key: ref[NOMETA]["report"].get(key) for key in
                         ("auroc", "auroc_ci", "threshold", "held_out", "features", "skipped")},
            "note": "the model served when an upload has no age, sex or site"
                    + ("" if use_meta else " (no metadata table: the main model itself)"),
        },
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
                           "part (skin_core.meta.classifier.inner_split); masked copies keep "
                           "their image's lesion group",
        },
        "tuning": {v: rows for v, rows in tuning.items()},
        "best_single_model_per_fold": best_choice,
        "feature_spec": spec_main.to_dict(),
        "settings": {
            "coverage": coverage, "class_conditional": class_conditional,
            "calibration": calibration, "referral_sensitivity": referral_sensitivity,
            "use_logits": use_logits, "masked_copies": copies, "n_resamples": n_resamples,
            "seed": seed,
            "bootstrap": "percentile, lesion-grouped (skin_core.analysis.metrics.bootstrap_ci),"
                         " 95%",
            "param_grid": {k_: list(v_) for k_, v_ in
                           (param_grid or DEFAULT_PARAM_GRID).items()},
        },
        "elapsed_s": round(time.perf_counter() - t0, 2),
    }
    return MetaResult(report=report, predictions=predictions, predictor=predictor,
                      train_ids=train_ids, predictor_nometa=predictor_nometa)


def _fit_one(clf: MetaClassifier, X: pd.DataFrame, target: np.ndarray, groups: np.ndarray,
             masks: np.ndarray | None, *, calibrate: bool, calibration: str,
             seed: int) -> tuple[MetaClassifier, Calibrator | None]:
    """Fit ``clf`` on ``X`` (+ its masked copies) and, when asked, a calibrator on the
    original rows of its inner validation split (the rows the calibration is reported on:
    with their own, natural missingness)."""
    n_rows = len(X)
    if masks is not None and len(masks):
        X = with_masked_copies(X, masks)
        target = repeat_for_copies(target, masks)
        groups = repeat_for_copies(groups, masks)
    clf.fit(X, target, groups=groups)
    if not calibrate:
        return clf, None
    keep = clf.inner_val_index_ < n_rows
    cal = fit_calibrator(clf.inner_val_proba_[keep], clf.inner_val_y_[keep], method=calibration,
                         groups=groups[clf.inner_val_index_[keep]], seed=seed)
    return clf, cal


def _predictor(spec: FeatureSpec, clf: MetaClassifier, cal: Calibrator | None,
               conformal: ConformalThresholds, ref_booster: Any, ref_spec: ReferralSpec | None,
               *, info: dict[str, Any]) -> MetaPredictor:
    return MetaPredictor(
        feature_spec=spec, booster=clf.booster_,
        trained_class_index=tuple(int(i) for i in clf.trained_class_index_),
        calibrator=cal if cal is not None else Calibrator(), conformal=conformal,
        referral_booster=ref_booster, referral=ref_spec, info=info,
    )


def _missing_summary(X: pd.DataFrame) -> dict[str, int]:
    return {
        AGE: int(X[AGE].isna().sum()),
        SEX: int((X[SEX] == "unknown").sum()),
        SITE: int((X[SITE] == "unknown").sum()),
    }
