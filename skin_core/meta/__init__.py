"""Meta-classifier on CNN probabilities + patient metadata, with calibration, conformal
prediction sets and a referral (difficulty) model. See ``docs/meta.md``.

Public face::

    X, spec = build_features(oof, dataset.table)             # pure; never uses the label
    result = evaluate_meta(oof, dataset.table, coverage=0.9)  # nested lesion-grouped CV
    save_predictor(result.predictor, "out/")                  # LightGBM text + JSON, no pickle
    save_predictor(result.predictor_nometa, "out/nometa/")    # served without any metadata
    predictor = load_predictor("out/")
    predictor.predict(per_model_probs, metadata)              # probs, set, referral

Refitting on a held-out calibration split (the served pipeline's outputs)::

    scores = predictor.predict_arrays(per_model_probs, age=..., sex=..., site=...)
    cal = fit_calibrator(scores.raw, labels, method="auto", groups=lesion_ids)
    conformal = fit_conformal(cal.transform(scores.raw), labels, predictor.classes,
                              coverage=0.9)
    threshold = choose_threshold(scores.referral_prob, wrong_by_all, sensitivity=0.8)
"""

from __future__ import annotations

from skin_core.meta.calibration import (
    Calibrator,
    expected_calibration_error,
    fit_calibrator,
    reliability_curve,
)
from skin_core.meta.classifier import DEFAULT_PARAM_GRID, MetaClassifier
from skin_core.meta.conformal import (
    ConformalThresholds,
    conformal_quantile,
    fit_conformal,
    set_metrics,
)
from skin_core.meta.evaluate import MetaResult, evaluate_meta
from skin_core.meta.features import (
    QUALITY_FEATURES,
    FeatureSpec,
    WideOOF,
    build_features,
    oof_to_wide,
    wide_from_probs,
)
from skin_core.meta.io import MetaPredictor, load_predictor, save_predictor
from skin_core.meta.masking import MISSING_SUBSETS, mask_metadata
from skin_core.meta.referral import choose_threshold, difficulty_target, referral_features

__all__ = [
    "DEFAULT_PARAM_GRID",
    "Calibrator",
    "ConformalThresholds",
    "FeatureSpec",
    "MetaClassifier",
    "MetaPredictor",
    "MISSING_SUBSETS",
    "MetaResult",
    "QUALITY_FEATURES",
    "WideOOF",
    "build_features",
    "choose_threshold",
    "conformal_quantile",
    "difficulty_target",
    "evaluate_meta",
    "expected_calibration_error",
    "fit_calibrator",
    "fit_conformal",
    "load_predictor",
    "mask_metadata",
    "oof_to_wide",
    "referral_features",
    "reliability_curve",
    "save_predictor",
    "set_metrics",
    "wide_from_probs",
]
