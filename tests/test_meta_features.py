"""Tests of skin_core.meta.features: OOF validation, pivoting and the feature builder."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from skin_core.constants import prob_columns
from skin_core.errors import DataError
from skin_core.meta.features import (
    CATEGORIES,
    QUALITY_FEATURES,
    MetaFeatureWarning,
    build_feature_array,
    build_features,
    category_codes,
    feature_name,
    oof_to_wide,
    quality_feature_columns,
    wide_from_probs,
)
from skin_core.meta.synthetic import make_synthetic_oof

CLASSES = ("MEL", "NV", "BCC")


@pytest.fixture(scope="module")
def tiny() -> tuple[pd.DataFrame, pd.DataFrame]:
    return make_synthetic_oof(60, classes=CLASSES, archs=("a", "b@s1"), n_folds=3, seed=3)


def test_wide_has_one_row_per_image_and_model_columns(tiny):
    oof, _ = tiny
    wide = oof_to_wide(oof)
    assert wide.models == ("a", "b@s1")
    assert wide.classes == CLASSES
    assert len(wide.table) == 60
    assert wide.stacked().shape == (2, 60, 3)
    row = oof[(oof["model"] == "b@s1")].set_index("image_id").loc[wide.table.index[5]]
    np.testing.assert_allclose(wide.probs("b@s1")[5], row[prob_columns(CLASSES)].to_numpy(float))


def test_missing_oof_for_some_images_is_an_error_or_an_explicit_restriction(tiny):
    oof, _ = tiny
    cut = oof.drop(oof.index[(oof["model"] == "a") & oof["image_id"].isin(["SYN_0000007"])])
    with pytest.raises(DataError, match=r"no out-of-fold predictions.*SYN_0000007.*--restrict"):
        oof_to_wide(cut)
    wide = oof_to_wide(cut, restrict=True)
    assert wide.dropped == ("SYN_0000007",)
    assert "SYN_0000007" not in wide.table.index and len(wide.table) == 59


def test_mismatched_class_lists_between_models_are_refused(tiny):
    oof, _ = tiny
    bad = oof.copy()
    sel = bad["model"] == "b@s1"
    bad.loc[sel, "prob_NV"] += bad.loc[sel, "prob_BCC"]
    bad.loc[sel, "prob_BCC"] = np.nan
    with pytest.raises(DataError, match=r"different class lists.*a predicts.*BCC.*b@s1"):
        oof_to_wide(bad)


def test_run_classes_must_match_probability_columns(tiny):
    oof, _ = tiny
    with pytest.raises(DataError, match="run's classes"):
        oof_to_wide(oof, classes=("MEL", "NV", "BCC", "AK"))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.drop(columns=["fold"]), "lacks the column"),
        (lambda d: pd.concat([d, d.iloc[:1]]), "duplicate"),
        (lambda d: d.assign(label=d["label"].where(d.index != 0, "XYZ")), "'XYZ'"),
        (lambda d: d.assign(prob_MEL=d["prob_MEL"] + 0.5), "non-normalised"),
    ],
)
def test_bad_oof_tables_get_one_clear_sentence(tiny, mutate, message):
    oof, _ = tiny
    with pytest.raises(DataError, match=message):
        oof_to_wide(mutate(oof.copy()))


def test_fold_must_agree_across_models(tiny):
    oof, _ = tiny
    bad = oof.copy()
    i = bad.index[(bad["model"] == "a")][0]
    bad.loc[i, "fold"] = (bad.loc[i, "fold"] + 1) % 3
    with pytest.raises(DataError, match="different fold"):
        oof_to_wide(bad)


def test_features_order_categories_and_missing_values(tiny):
    oof, meta = tiny
    meta = meta.copy()
    meta.loc[0, "age_approx"] = np.nan
    meta.loc[1, "sex"] = np.nan
    meta.loc[2, "anatom_site_general"] = "Head/Neck "
    X, spec = build_features(oof, meta)
    expected = [feature_name(m, c) for m in ("a", "b@s1") for c in CLASSES]
    expected += [f"p__mean__{c}" for c in CLASSES] + ["age_approx", "sex", "anatom_site_general"]
    assert list(X.columns) == expected == list(spec.columns)
    assert "b_s1" in feature_name("b@s1", "MEL")
    assert np.isnan(X.loc["SYN_0000000", "age_approx"])
    assert X.loc["SYN_0000001", "sex"] == "unknown"
    assert X.loc["SYN_0000002", "anatom_site_general"] == "head/neck"
    assert list(X["sex"].cat.categories) == ["male", "female", "unknown"]
    assert X["anatom_site_general"].cat.categories[-1] == "unknown"
    np.testing.assert_allclose(
        X[[f"p__mean__{c}" for c in CLASSES]].to_numpy(),
        oof_to_wide(oof).stacked().mean(axis=0),
    )


def test_unknown_site_names_are_reported_and_treated_as_unknown(tiny):
    oof, meta = tiny
    meta = meta.copy()
    meta.loc[4, "anatom_site_general"] = "left elbow"
    with pytest.warns(MetaFeatureWarning, match="left elbow"):
        X, spec = build_features(oof, meta, source="meta.csv")
    assert X.loc["SYN_0000004", "anatom_site_general"] == "unknown"
    assert spec.unknown_values == {"anatom_site_general": ["left elbow"]}


def test_features_never_depend_on_the_label(tiny):
    oof, meta = tiny
    X1, _ = build_features(oof, meta)
    rng = np.random.default_rng(0)
    shuffled = dict(zip(meta["image_id"], rng.permutation(meta["label"].to_numpy()),
                        strict=True))
    oof2 = oof.assign(label=oof["image_id"].map(shuffled))
    meta2 = meta.assign(label=meta["image_id"].map(shuffled))
    X2, _ = build_features(oof2, meta2)
    pd.testing.assert_frame_equal(X1, X2)


def test_spec_rebuilds_identical_features_from_prediction_time_arrays(tiny):
    oof, meta = tiny
    X, spec = build_features(oof, meta, use_logits=True)
    wide = oof_to_wide(oof)
    again = wide_from_probs(wide.table.index, {m: wide.probs(m) for m in wide.models}, CLASSES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        X2, spec2 = build_features(again, meta, spec=spec)
    pd.testing.assert_frame_equal(X, X2)
    assert spec2.columns == spec.columns and spec.use_logits


def test_metadata_without_a_row_for_an_image_is_refused(tiny):
    oof, meta = tiny
    with pytest.raises(DataError, match=r"no row for 1 of the 60.*SYN_0000009"):
        build_features(oof, meta[meta["image_id"] != "SYN_0000009"], source="meta.csv")


def test_allowed_quality_columns_become_features_with_nan_for_absent_images(tiny):
    oof, meta = tiny
    q = pd.DataFrame({"image_id": meta["image_id"][:50], "blur_score": np.arange(50.0),
                      "width": np.arange(50) + 600, "is_blurry": [True, False] * 25,
                      "contrast": [True, False] * 25})
    X, spec = build_features(oof, meta, quality=q)
    assert spec.quality_columns == ("contrast", "blur_score")  # allow-list order
    assert X.loc["SYN_0000003", "q_blur_score"] == 3.0
    assert X.loc["SYN_0000000", "q_contrast"] == 1.0
    assert np.isnan(X.loc["SYN_0000055", "q_blur_score"])
    assert "q_width" not in X and "q_is_blurry" not in X


def test_the_allow_list_is_the_resolution_normalised_quality_measures():
    from skin_core.analysis.quality import MEASURES, QUALITY_COLUMNS

    assert set(QUALITY_FEATURES) <= set(QUALITY_COLUMNS)
    assert set(QUALITY_FEATURES) == set(MEASURES) - {"width", "height",
                                                     "laplacian_var_full"} | {"blur_score"}


def test_a_full_quality_table_keeps_only_allowed_measures_without_error(tiny):
    from skin_core.analysis.quality import QUALITY_COLUMNS

    _, meta = tiny
    rng = np.random.default_rng(0)
    q = pd.DataFrame({c: rng.random(len(meta)) for c in QUALITY_COLUMNS})
    q["image_id"], q["error"], q["my_score"] = meta["image_id"], "", 3.0
    q["is_blurry"] = q["blur_score"] < 0.5
    assert quality_feature_columns(q) == QUALITY_FEATURES


def test_a_non_numeric_allowed_quality_measure_is_refused(tiny):
    oof, meta = tiny
    q = pd.DataFrame({"image_id": meta["image_id"], "blur_score": ["sharp"] * len(meta),
                      "width": ["big"] * len(meta)})
    with pytest.raises(DataError, match="column blur_score has the non-numeric value 'sharp'"):
        build_features(oof, meta, quality=q)
    X, spec = build_features(oof, meta, quality=q.drop(columns=["blur_score"]))
    assert spec.quality_columns == () and not any(c.startswith("q_") for c in X)


def test_a_single_model_gets_no_duplicate_mean_columns(tiny):
    oof, meta = tiny
    X, spec = build_features(oof[oof["model"] == "a"], meta)
    assert list(X.columns) == [feature_name("a", c) for c in CLASSES] + [
        "age_approx", "sex", "anatom_site_general"]
    assert spec.ensemble_mean is False


def test_pandas_string_dtype_with_missing_values(tiny):
    oof, meta = tiny
    meta = meta.copy()
    meta.loc[0, ["sex", "anatom_site_general"]] = np.nan
    meta = meta.astype({"sex": "string", "anatom_site_general": "string", "lesion_id": "string"})
    X, spec = build_features(oof, meta)
    assert X.loc["SYN_0000000", "sex"] == "unknown"
    assert X.loc["SYN_0000000", "anatom_site_general"] == "unknown"
    assert spec.unknown_values == {}


# --------------------------------------------------------------------------------------------
# prediction-time fast path: build_feature_array == build_features


@pytest.mark.parametrize("options", [
    {},
    {"use_logits": True},
    {"include_mean": False},
    {"include_metadata": False},
    {"with_quality": True},
])
def test_feature_array_equals_build_features(tiny, options):
    oof, meta = tiny
    meta = meta.copy()
    meta.loc[0, "age_approx"] = np.nan
    meta.loc[1, ["sex", "anatom_site_general"]] = [None, " Head/Neck"]
    meta.loc[2, ["sex", "anatom_site_general"]] = ["", "unknown"]
    options = dict(options)
    q = None
    if options.pop("with_quality", False):
        q = pd.DataFrame({"image_id": meta["image_id"], "blur_score": np.linspace(0, 2, 60),
                          "contrast": [True, False, None] * 20})
    X, spec = build_features(oof, meta, quality=q, **options)
    wide = oof_to_wide(oof)
    probs = {m: wide.probs(m) for m in wide.models}
    md = meta.set_index("image_id").loc[wide.table.index]
    quality = None
    if q is not None:
        quality = {c: q.set_index("image_id").loc[wide.table.index, c].to_numpy()
                   for c in ("blur_score", "contrast")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN among strings is missing, not the value "nan"
        A = build_feature_array(spec, probs, age=md["age_approx"].to_numpy(),
                                sex=list(md["sex"]), site=list(md["anatom_site_general"]),
                                quality=quality)
    expected = X.copy()
    for c in ("sex", "anatom_site_general"):
        if c in expected:
            expected[c] = expected[c].cat.codes.astype(float)
    assert A.shape == X.shape and A.dtype == np.float64
    np.testing.assert_array_equal(A, expected.to_numpy(dtype=float))


def test_category_codes_normalise_like_build_features():
    codes, unknown = category_codes(["male", " FEMALE ", None, np.nan, "", "unknown", "robot", 3],
                                    "sex")
    np.testing.assert_array_equal(codes, [0, 1, 2, 2, 2, 2, 2, 2])
    assert unknown == ["3", "robot"]
    codes, unknown = category_codes(["Posterior Torso", "left elbow"], "anatom_site_general")
    assert codes[0] == list(CATEGORIES["anatom_site_general"]).index("posterior torso")
    assert codes[1] == len(CATEGORIES["anatom_site_general"]) - 1 and unknown == ["left elbow"]


def test_feature_array_warns_about_values_outside_the_vocabulary(tiny):
    oof, meta = tiny
    _, spec = build_features(oof, meta)
    wide = oof_to_wide(oof)
    probs = {m: wide.probs(m)[:2] for m in wide.models}
    with pytest.warns(MetaFeatureWarning, match=r"upload\.csv.*anatom_site_general.*elbow"):
        A = build_feature_array(spec, probs, age=[1, 2], sex=None, site=["elbow", None],
                                source="upload.csv")
    assert np.isnan(A[:, spec.columns.index("age_approx")]).sum() == 0
    assert (A[:, spec.columns.index("sex")] == 2).all()  # missing -> unknown
