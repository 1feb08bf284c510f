"""Tests of skin_core.meta.evaluate: nested lesion-grouped CV, baselines, CIs, no leakage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skin_core.analysis.metrics import classification_metrics, sensitivity_at_specificity
from skin_core.errors import DataError
from skin_core.meta.evaluate import METHODS, _Scorer, evaluate_meta, melanoma_index
from skin_core.meta.synthetic import make_synthetic_oof

GRID = {"num_leaves": (7,), "learning_rate": (0.2,)}
CLASSES = ("MEL", "NV", "BCC", "BKL")


@pytest.fixture(scope="module")
def small() -> tuple[pd.DataFrame, pd.DataFrame]:
    return make_synthetic_oof(500, classes=CLASSES, archs=("a", "b", "c"), n_folds=3, seed=5,
                              metadata_strength=2.0)


@pytest.fixture(scope="module")
def result(small):
    oof, meta = small
    return evaluate_meta(oof, meta, param_grid=GRID, n_resamples=60, seed=0)


def test_report_has_the_documented_keys_and_every_method(result):
    rep = result.report
    assert {"balanced_accuracy", "macro_f1", "baselines", "ci"} <= set(rep)
    assert set(rep["baselines"]) == set(METHODS) - {"meta_with_metadata"}
    assert set(rep["ci"]) == set(METHODS)
    for m in METHODS:
        lo, hi = rep["ci"][m]["balanced_accuracy"]
        assert lo <= rep["methods"][m]["balanced_accuracy"] <= hi
        assert set(rep["ci"][m]["auc"]) == set(CLASSES)
        assert set(rep["ci"][m]["melanoma"]) == {"sens_at_spec80", "sens_at_spec90"}
    diff = rep["difference_vs_mean_ensemble"]
    assert diff["effect"] == pytest.approx(
        rep["balanced_accuracy"] - rep["baselines"]["mean_ensemble"])
    assert diff["ci"][0] <= diff["effect"] <= diff["ci"][1]
    assert rep["data"]["n_images"] == 500 and rep["data"]["melanoma_class"] == "MEL"


def test_no_image_is_scored_by_a_meta_model_that_saw_its_lesion(small, result):
    _, meta = small
    lesion = meta.set_index("image_id")["lesion_id"]
    pred = result.predictions
    assert len(result.train_ids) == 3
    for fold, trained in result.train_ids.items():
        scored = pred.loc[pred["fold"] == fold, "image_id"]
        assert not set(scored) & set(trained)
        assert not set(lesion.loc[scored]) & set(lesion.loc[trained])


def test_metadata_helps_when_it_carries_signal(result):
    rep = result.report
    assert rep["baselines"]["metadata_only"] > 1 / len(CLASSES) + 0.05
    assert rep["balanced_accuracy"] > rep["baselines"]["meta_without_metadata"] - 0.05


def test_predictions_are_out_of_fold_calibrated_probabilities_with_sets(result):
    pred = result.predictions
    probs = pred[[f"prob_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert (pred["set_size"] >= 1).all()
    top = np.array(CLASSES)[probs.argmax(axis=1)]
    assert all(p.split("|")[0] == t for p, t in zip(pred["pred_set"], top, strict=True))
    assert pred["referral_prob"].between(0, 1).all()
    assert result.report["referral"]["auroc"] > 0.5


def test_weighted_scorer_equals_the_shared_metrics_with_unit_weights():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    scores = rng.dirichlet(np.ones(4), 300)
    scores[:, 0] = np.round(scores[:, 0], 1)  # ties
    got = _Scorer(y, scores, CLASSES, 0)(np.ones(300))
    ref = classification_metrics(y, scores, CLASSES)
    assert got["balanced_accuracy"] == pytest.approx(ref["balanced_accuracy"])
    assert got["macro_f1"] == pytest.approx(ref["macro_f1"])
    for c in CLASSES:
        assert got[f"auc:{c}"] == pytest.approx(ref["auc"][c])
    for spec in (0.8, 0.9):
        assert got[f"sens_at_spec{int(spec * 100)}"] == pytest.approx(
            sensitivity_at_specificity(y == 0, scores[:, 0], spec))


def test_weights_equal_repeating_rows():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 200)
    scores = rng.dirichlet(np.ones(4), 200)
    idx = rng.integers(0, 200, 200)
    w = np.bincount(idx, minlength=200).astype(float)
    got = _Scorer(y, scores, CLASSES, 0)(w)
    ref = _Scorer(y[idx], scores[idx], CLASSES, 0)(np.ones(200))
    for key, value in ref.items():
        assert got[key] == pytest.approx(value), key


def test_folds_that_split_a_lesion_are_refused(small):
    oof, meta = small
    bad = oof.copy()
    img = meta.loc[meta["lesion_id"].duplicated(keep=False), "image_id"].iloc[0]
    bad.loc[bad["image_id"] == img, "fold"] = (bad.loc[bad["image_id"] == img, "fold"] + 1) % 3
    with pytest.raises(DataError, match="not grouped by lesion_id"):
        evaluate_meta(bad, meta, param_grid=GRID, n_resamples=0, fit_final=False)


def test_dataset_images_without_oof_need_restrict(small):
    oof, meta = small
    cut = oof[oof["image_id"] != "SYN_0000004"]
    with pytest.raises(DataError, match=r"no predictions for 1 of the 500.*--restrict"):
        evaluate_meta(cut, meta, param_grid=GRID, n_resamples=0, fit_final=False)


def test_label_mismatch_between_oof_and_dataset_is_refused(small):
    oof, meta = small
    bad = meta.copy()
    bad.loc[0, "label"] = "NV" if bad.loc[0, "label"] != "NV" else "MEL"
    with pytest.raises(DataError, match="SYN_0000000 has label"):
        evaluate_meta(oof, bad, param_grid=GRID, n_resamples=0, fit_final=False)


def test_melanoma_index():
    assert melanoma_index(("akiec", "bcc", "mel")) == 2
    assert melanoma_index(("NV", "BCC")) is None


@pytest.mark.slow
def test_conformal_coverage_on_held_out_folds_is_within_two_points():
    oof, meta = make_synthetic_oof(2500, seed=11)
    res = evaluate_meta(oof, meta, param_grid=GRID, n_resamples=0, fit_final=False,
                        coverage=0.9)
    conf = res.report["conformal"]
    assert abs(conf["coverage"] - 0.9) <= 0.02
    assert conf["mean_set_size"] < 4
    assert res.report["calibration"]["ece_after"] < res.report["calibration"]["ece_before"] + 0.02


def test_images_without_lesion_id_are_their_own_group(small):
    oof, meta = small
    meta = meta.copy()
    meta.loc[meta.index[:50], "lesion_id"] = np.nan
    meta = meta.astype({"lesion_id": "string"})
    res = evaluate_meta(oof, meta, param_grid=GRID, n_resamples=0, fit_final=False)
    pred = res.predictions.set_index("image_id")
    assert pd.isna(pred.loc[meta["image_id"].iloc[0], "lesion_id"])
    assert res.report["data"]["n_lesions"] > meta["lesion_id"].nunique()


def test_without_metadata_the_probability_model_is_trained_once(small):
    oof, _ = small
    res = evaluate_meta(oof, None, param_grid=GRID, n_resamples=0)
    rep = res.report
    assert rep["metadata_used"] is False
    assert "metadata_only" not in rep["baselines"]
    assert rep["baselines"]["meta_without_metadata"] == rep["balanced_accuracy"]
    assert set(rep["tuning"]) == {"meta_with_metadata"}
    assert not res.predictor.feature_spec.metadata
    assert "age_approx" not in res.predictor.feature_spec.columns


def test_same_seed_same_everything(small):
    oof, meta = small
    a = evaluate_meta(oof, meta, param_grid=GRID, n_resamples=20, fit_final=False, seed=4)
    b = evaluate_meta(oof, meta, param_grid=GRID, n_resamples=20, fit_final=False, seed=4)
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    assert a.report["ci"] == b.report["ci"]
