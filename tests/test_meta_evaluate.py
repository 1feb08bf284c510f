"""Tests of skin_core.meta.evaluate: nested lesion-grouped CV, baselines, CIs, no leakage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skin_core.analysis.metrics import classification_metrics, sensitivity_at_specificity
from skin_core.errors import DataError
from skin_core.meta.evaluate import METHODS, _fit_one, evaluate_meta, melanoma_index
from skin_core.meta.masking import MISSING_SUBSETS, draw_masks
from skin_core.meta.scoring import Scorer
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
    got = Scorer(y, scores, CLASSES, 0)(np.ones(300))
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
    got = Scorer(y, scores, CLASSES, 0)(w)
    ref = Scorer(y[idx], scores[idx], CLASSES, 0)(np.ones(200))
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
    assert res.predictor_nometa is res.predictor
    assert rep["missing_metadata"]["skipped"] and rep["settings"]["masked_copies"] == 0


def test_the_metadata_free_predictor_and_its_referral_use_no_metadata(result):
    main, nometa = result.predictor, result.predictor_nometa
    assert main.feature_spec.metadata and not nometa.feature_spec.metadata
    meta_cols = {"age_approx", "sex", "anatom_site_general"}
    assert meta_cols <= set(main.feature_spec.columns) and meta_cols <= set(main.referral.columns)
    assert not meta_cols & (set(nometa.feature_spec.columns) | set(nometa.referral.columns))
    assert nometa.feature_spec.columns == tuple(
        c for c in main.feature_spec.columns if c not in meta_cols)
    assert main.info["masked_copies"] == 1 and nometa.info["masked_copies"] == 0
    section = result.report["without_metadata_predictor"]
    assert section["balanced_accuracy"] == result.report["baselines"]["meta_without_metadata"]
    assert 0.8 <= section["conformal"]["coverage"] <= 1.0


def test_missing_metadata_is_scored_for_every_subset_as_served(result):
    rep = result.report
    mm = rep["missing_metadata"]
    assert list(mm["subsets"]) == list(MISSING_SUBSETS)
    assert mm["subsets"]["none"]["balanced_accuracy"] == rep["balanced_accuracy"]
    assert mm["subsets"]["all"]["served_by"] == "meta_without_metadata"
    assert mm["subsets"]["all"]["balanced_accuracy"] == rep["baselines"]["meta_without_metadata"]
    assert mm["mean_ensemble"] == rep["baselines"]["mean_ensemble"]
    for name, s in mm["subsets"].items():
        assert s["missing"] == list(MISSING_SUBSETS[name])
        d = s["difference_vs_mean_ensemble"]
        assert d["effect"] == pytest.approx(s["balanced_accuracy"] - mm["mean_ensemble"])
        assert d["ci"][0] <= d["effect"] <= d["ci"][1]
        assert s["ci"][0] <= s["balanced_accuracy"] <= s["ci"][1]
        assert s["meets_criterion"] == (s["balanced_accuracy"] >= mm["mean_ensemble"] - 0.01)
    assert mm["ok"] == all(s["meets_criterion"] for s in mm["subsets"].values())
    assert mm["worst_difference"] == pytest.approx(
        min(s["balanced_accuracy"] for s in mm["subsets"].values()) - mm["mean_ensemble"])


@pytest.mark.slow
def test_masked_copies_make_the_metadata_model_robust_to_missing_metadata():
    oof, meta = make_synthetic_oof(1500, classes=CLASSES, archs=("a", "b"), n_folds=3, seed=2,
                                   metadata_strength=2.0, missing_rate=0.0)
    runs = {c: evaluate_meta(oof, meta, param_grid=GRID, n_resamples=0, fit_final=False,
                             masked_copies=c).report["missing_metadata"] for c in (0, 1)}
    plain, masked = runs[0], runs[1]
    ens = plain["mean_ensemble"]
    # trained without missing values (age carries most of the synthetic metadata signal), the
    # model falls far below the CNNs as soon as age is missing; with masked copies it does not
    assert plain["all_missing_with_metadata_model"]["balanced_accuracy"] < ens - 0.2
    assert masked["all_missing_with_metadata_model"]["balanced_accuracy"] > ens - 0.02
    for name in ("age", "age+sex", "age+site"):
        assert plain["subsets"][name]["balanced_accuracy"] < ens - 0.2, name
        assert masked["subsets"][name]["balanced_accuracy"] > ens - 0.02, name
    assert min(s["balanced_accuracy"] for s in masked["subsets"].values()) > ens - 0.02
    assert masked["subsets"]["none"]["balanced_accuracy"] > ens + 0.02  # metadata still helps
    assert not plain["ok"]


def test_the_calibrator_sees_only_original_rows_of_the_inner_split(small):
    from skin_core.meta.classifier import MetaClassifier
    from skin_core.meta.features import build_features

    oof, meta = small
    X, _ = build_features(oof, meta)
    y = np.arange(len(X)) % 4
    groups = meta.set_index("image_id").loc[X.index, "lesion_id"].to_numpy()
    masks = draw_masks(len(X), copies=2, seed=0)
    clf, cal = _fit_one(MetaClassifier(classes=[0, 1, 2, 3], param_grid=GRID), X, y, groups,
                        masks, calibrate=True, calibration="auto", seed=0)
    originals = int((clf.inner_val_index_ < len(X)).sum())
    assert cal.selection["n"] == originals == len(clf.inner_val_index_) // 3


def test_same_seed_same_everything(small):
    oof, meta = small
    a = evaluate_meta(oof, meta, param_grid=GRID, n_resamples=20, fit_final=False, seed=4)
    b = evaluate_meta(oof, meta, param_grid=GRID, n_resamples=20, fit_final=False, seed=4)
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    assert a.report["ci"] == b.report["ci"]


@pytest.mark.slow
def test_a_model_fitted_with_a_full_quality_csv_uses_only_resolution_free_measures(small):
    from skin_core.analysis.quality import QUALITY_COLUMNS

    oof, meta = small
    rng = np.random.default_rng(0)
    q = pd.DataFrame({c: rng.random(len(meta)) for c in QUALITY_COLUMNS})
    q["image_id"], q["error"] = meta["image_id"], ""
    q["width"] = np.where(meta["label"] == "NV", 600, 1024)  # a shortcut: size gives the class
    q["height"] = q["width"] * 0.75
    q["is_blurry"] = q["blur_score"] < 0.5
    res = evaluate_meta(oof, meta, quality=q, param_grid=GRID, n_resamples=30, seed=0)
    measures = ["q_laplacian_var", "q_wavelet_detail_energy", "q_wavelet_ratio",
                "q_fft_hf_ratio", "q_brightness", "q_contrast", "q_entropy", "q_vignette",
                "q_blur_score"]
    probs = [f"p__{m}__{c}" for m in ("a", "b", "c", "mean") for c in CLASSES]
    metadata = ["age_approx", "sex", "anatom_site_general"]
    ensemble = ["ens_entropy", "ens_max_prob", "ens_margin", "ens_pred", "disagree_frac",
                "mean_pairwise_js", "top_prob_std"]
    assert list(res.predictor.feature_spec.columns) == probs + metadata + measures
    assert list(res.predictor.referral.columns) == ensemble + metadata + measures
    assert list(res.predictor_nometa.feature_spec.columns) == probs + measures
    assert list(res.predictor_nometa.referral.columns) == ensemble + measures
    section = res.report["quality_features"]
    assert section["used"] and section["columns"] == [m[2:] for m in measures]
    assert set(section["ignored"]) == {"width", "height", "laplacian_var_full", "is_blurry",
                                       "error"}
    diff = section["difference"]
    assert diff["effect"] == pytest.approx(section["with_quality"]["balanced_accuracy"]
                                           - section["without_quality"]["balanced_accuracy"])
    assert diff["ci"][0] <= diff["effect"] <= diff["ci"][1]
    assert "meta_without_quality" in res.report["baselines"]
    assert "meta_without_quality" in res.report["tuning"]


def test_negative_masked_copies_are_refused(small):
    from skin_core.errors import ConfigError

    oof, meta = small
    with pytest.raises(ConfigError, match="'masked_copies' parameter"):
        evaluate_meta(oof, meta, param_grid=GRID, n_resamples=0, masked_copies=-1)
