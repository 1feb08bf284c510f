"""Tests of skin_core.meta.io: pickle-free save/load that predicts identically, and the NumPy
fast path that gives the DataFrame path's numbers."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from skin_core.errors import DataError
from skin_core.meta.calibration import Calibrator
from skin_core.meta.classifier import MetaClassifier
from skin_core.meta.conformal import ConformalThresholds
from skin_core.meta.evaluate import evaluate_meta
from skin_core.meta.features import (
    MetaFeatureWarning,
    build_features,
    oof_to_wide,
    wide_from_probs,
)
from skin_core.meta.io import MetaPredictor, ReferralSpec, load_predictor, save_predictor
from skin_core.meta.referral import difficulty_target, referral_features
from skin_core.meta.synthetic import make_synthetic_oof

GRID = {"num_leaves": (7,), "learning_rate": (0.2,)}
CLASSES = ("MEL", "NV", "BCC")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    oof, meta = make_synthetic_oof(360, classes=CLASSES, archs=("a", "b"), n_folds=3, seed=9)
    q = pd.DataFrame({"image_id": meta["image_id"],
                      "blur_score": np.random.default_rng(0).random(len(meta))})
    res = evaluate_meta(oof, meta, quality=q, param_grid=GRID, n_resamples=0,
                        calibration="isotonic", class_conditional=True)
    folder = tmp_path_factory.mktemp("meta")
    save_predictor(res.predictor, folder)
    return oof, meta, q, res, folder


def test_saved_folder_holds_text_models_and_json_only(fitted):
    *_, folder = fitted
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["meta_model.txt", "meta_predictor.json", "referral_model.txt"]
    manifest = json.loads((folder / "meta_predictor.json").read_text())
    assert manifest["feature_spec"]["columns"][-1] == "q_blur_score"
    assert manifest["calibration"]["method"] == "isotonic"
    assert manifest["conformal"]["class_conditional"] is True
    assert (folder / "meta_model.txt").read_text().startswith("tree")


def test_loaded_predictor_scores_new_rows_identically(fitted):
    oof, meta, q, res, folder = fitted
    loaded = load_predictor(folder)
    wide = oof_to_wide(oof)
    ids = wide.table.index[:40]
    new = wide_from_probs(ids, {m: wide.probs(m)[:40] for m in wide.models}, CLASSES)
    before = res.predictor.predict(new, meta, quality=q)
    after = loaded.predict(new, meta, quality=q)
    pd.testing.assert_frame_equal(before, after)
    assert {"prob_MEL", "pred", "pred_set", "set_size", "referral_prob", "refer"} <= set(after)
    np.testing.assert_allclose(after[["prob_MEL", "prob_NV", "prob_BCC"]].sum(axis=1), 1.0)
    # long tables (no label / fold needed at prediction time) give the same answer
    long = oof[oof["image_id"].isin(ids)].drop(columns=["label", "fold"])
    pd.testing.assert_frame_equal(loaded.predict(long, meta, quality=q), after)


def test_changed_model_file_is_refused(fitted, tmp_path):
    *_, folder = fitted
    for p in folder.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    with open(tmp_path / "meta_model.txt", "a") as fh:
        fh.write("\n")
    with pytest.raises(DataError, match="SHA-256"):
        load_predictor(tmp_path)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist; run `skin-core meta`"):
        load_predictor(tmp_path / "nope")


# --------------------------------------------------------------------------------------------
# NumPy fast path (predict_arrays) == DataFrame path (predict)


def _random_rows(n: int, classes, models, seed: int):
    """Probabilities whose ensemble's top class runs through every class, and metadata with
    every kind of value: missing (None, NaN, empty), mixed case, out of vocabulary."""
    rng = np.random.default_rng(seed)
    k = len(classes)
    top = np.arange(n) % k
    probs = {}
    for m in models:
        p = rng.dirichlet(np.full(k, 0.4), n)
        p[np.arange(n), top] += rng.uniform(0.0, 1.5, n)  # mostly, not always, the top class
        probs[m] = p / p.sum(axis=1, keepdims=True)
    age = rng.choice(np.array([np.nan, 0.0, 15.0, 42.5, 70.0, 95.0, 120.0]), n)
    sex = rng.choice(np.array(["male", "female", " Female", "unknown", "", "other", None,
                               np.nan], dtype=object), n)
    site = rng.choice(np.array(["head/neck", "Posterior Torso ", "palms/soles", "left elbow",
                                "oral/genital", "unknown", None, np.nan, ""], dtype=object), n)
    quality = {"blur_score": np.where(rng.random(n) < 0.1, np.nan, rng.random(n))}
    return probs, age, list(sex), list(site), quality


def _frames(ids, age, sex, site, quality):
    md = pd.DataFrame({"image_id": ids, "age_approx": age,
                       "sex": pd.Series(sex, dtype=object),
                       "anatom_site_general": pd.Series(site, dtype=object)})
    q = pd.DataFrame({"image_id": ids, **quality})
    return md, q


def test_fast_path_equals_the_dataframe_path_on_many_random_rows(fitted):
    *_, folder = fitted
    loaded = load_predictor(folder)
    models = loaded.feature_spec.models
    probs, age, sex, site, quality = _random_rows(600, CLASSES, models, seed=1)
    ids = [f"r{i}" for i in range(600)]
    md, q = _frames(ids, age, sex, site, quality)
    with pytest.warns(MetaFeatureWarning, match="left elbow") as slow_warn:
        slow = loaded.predict(wide_from_probs(ids, probs, CLASSES), md, quality=q)
    with pytest.warns(MetaFeatureWarning, match="left elbow") as fast_warn:
        fast = loaded.predict_arrays(probs, age=age, sex=sex, site=site, quality=quality)
    assert str(fast_warn[0].message) == str(slow_warn[0].message)
    pd.testing.assert_frame_equal(fast.to_frame(ids), slow, check_exact=False, rtol=0,
                                  atol=1e-12)
    # every class is the ensemble's top class somewhere, every category occurs
    ens_top = np.mean([probs[m] for m in models], axis=0).argmax(axis=1)
    assert set(ens_top) == set(range(len(CLASSES)))
    assert fast.refer.any() and not fast.refer.all()
    assert len(set(fast.sets)) > 3
    # rows are independent: one image at a time gives the same numbers
    for i in (0, 7, 599):
        one = loaded.predict_arrays({m: p[i:i + 1] for m, p in probs.items()}, age=age[i:i + 1],
                                    sex=sex[i:i + 1], site=site[i:i + 1],
                                    quality={"blur_score": quality["blur_score"][i:i + 1]})
        np.testing.assert_allclose(one.probs[0], fast.probs[i], rtol=0, atol=1e-12)
        assert one.referral_prob[0] == pytest.approx(fast.referral_prob[i], abs=1e-12)


def _hand_built(X: pd.DataFrame, spec, y, R: pd.DataFrame, target) -> MetaPredictor:
    clf = MetaClassifier(classes=list(range(len(CLASSES))), param_grid=GRID).fit(X, y)
    rclf = MetaClassifier(classes=[0, 1], param_grid=GRID).fit(R, target)
    return MetaPredictor(
        feature_spec=spec, booster=clf.booster_,
        trained_class_index=tuple(int(i) for i in clf.trained_class_index_),
        calibrator=Calibrator(method="temperature", temperature=1.7),
        conformal=ConformalThresholds(coverage=0.9, classes=CLASSES, thresholds=(0.6,) * 3),
        referral_booster=rclf.booster_,
        referral=ReferralSpec(columns=tuple(R.columns), threshold=0.4, sensitivity_target=0.8),
    )


def test_fast_path_with_logits_and_without_metadata(fitted):
    oof, _, _, _, _ = fitted
    wide = oof_to_wide(oof)
    X, spec = build_features(wide, None, use_logits=True, include_metadata=False)
    y = wide.label_index()
    R = referral_features(wide.stacked(), CLASSES, X.index)
    pred = _hand_built(X, spec, y, R, difficulty_target(wide.stacked(), y))
    probs, *_ = _random_rows(300, CLASSES, spec.models, seed=2)
    ids = [f"r{i}" for i in range(300)]
    slow = pred.predict(wide_from_probs(ids, probs, CLASSES), None)
    fast = pred.predict_arrays(probs)
    pd.testing.assert_frame_equal(fast.to_frame(ids), slow, check_exact=False, rtol=0,
                                  atol=1e-12)


def test_fast_path_maps_categories_onto_the_boosters_own_lists(fitted):
    """A booster trained on other category orders (and without some categories) gets the same
    codes as LightGBM's pandas handling gives it: its stored lists, NaN for absent values."""
    oof, meta, _, _, _ = fitted
    wide = oof_to_wide(oof)
    X, spec = build_features(wide, meta)
    y = wide.label_index()
    R = referral_features(wide.stacked(), CLASSES, X.index, metadata_features=X)
    sites = [s for s in reversed(X["anatom_site_general"].cat.categories) if s != "head/neck"]
    X2 = X.assign(sex=X["sex"].cat.set_categories(["unknown", "female", "male"]),
                  anatom_site_general=X["anatom_site_general"].cat.set_categories(sites))
    R2 = R.assign(ens_pred=R["ens_pred"].cat.set_categories(list(reversed(CLASSES))),
                  sex=X2["sex"])
    pred = _hand_built(X2, spec, y, R2, difficulty_target(wide.stacked(), y))
    meta_map, ref_map, _ = pred._fast_layout()
    assert len(meta_map.remaps) == 2 and len(ref_map.remaps) == 2
    probs, age, sex, site, _ = _random_rows(400, CLASSES, spec.models, seed=3)
    ids = [f"r{i}" for i in range(400)]
    md, _ = _frames(ids, age, sex, site, {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetaFeatureWarning)
        slow = pred.predict(wide_from_probs(ids, probs, CLASSES), md)
        fast = pred.predict_arrays(probs, age=age, sex=sex, site=site)
    pd.testing.assert_frame_equal(fast.to_frame(ids), slow, check_exact=False, rtol=0,
                                  atol=1e-12)


def test_fast_path_errors_are_one_sentence(fitted):
    *_, folder = fitted
    loaded = load_predictor(folder)
    probs, age, sex, site, quality = _random_rows(3, CLASSES, loaded.feature_spec.models, 4)
    with pytest.raises(DataError, match=r"no probabilities from model\(s\) \['b'\]"):
        loaded.predict_arrays({"a": probs["a"]}, quality=quality)
    with pytest.raises(DataError, match="non-numeric value 'old' for row 1"):
        loaded.predict_arrays(probs, age=[50, "old", None], quality=quality)
    with pytest.raises(DataError, match=r"quality measures \['blur_score'\]"):
        loaded.predict_arrays(probs)
    with pytest.raises(DataError, match=r"shape \(2,\); expected \(3,\)"):
        loaded.predict_arrays(probs, sex=["male", "female"], quality=quality)
    broken = load_predictor(folder)
    broken.booster.pandas_categorical = broken.booster.pandas_categorical[:1]
    with pytest.raises(DataError, match="meta_model.txt was trained with 1 categorical"):
        broken.predict_arrays(probs, quality=quality)


def test_refitting_calibration_conformal_and_referral_on_held_out_data(fitted, tmp_path):
    """The lead's contract: a predictor's calibrator, conformal thresholds and referral
    threshold refitted on a held-out calibration split (served outputs) with the public
    functions, swapped in with dataclasses.replace, saved and loaded again."""
    import dataclasses

    from skin_core.meta import choose_threshold, fit_calibrator, fit_conformal

    *_, folder = fitted
    pred = load_predictor(folder)
    # held-out images the meta-model never saw (another draw of the same generator)
    oof, meta = make_synthetic_oof(1200, classes=CLASSES, archs=("a", "b"), n_folds=3, seed=21)
    wide = oof_to_wide(oof)
    md = meta.set_index("image_id").loc[wide.table.index]
    y = wide.label_index()
    probs = {m: wide.probs(m) for m in pred.feature_spec.models}
    quality = {"blur_score": np.random.default_rng(1).random(len(y))}
    cal_rows, test_rows = np.arange(len(y)) < 600, np.arange(len(y)) >= 600

    def scores(rows):
        return pred.predict_arrays({m: p[rows] for m, p in probs.items()},
                                   age=md["age_approx"].to_numpy()[rows],
                                   sex=list(md["sex"][rows]),
                                   site=list(md["anatom_site_general"][rows]),
                                   quality={"blur_score": quality["blur_score"][rows]})

    s = scores(cal_rows)
    calibrator = fit_calibrator(s.raw, y[cal_rows], method="temperature",
                                groups=md["lesion_id"].to_numpy()[cal_rows])
    assert calibrator.method == "temperature" and calibrator.temperature != 1.0
    conformal = fit_conformal(calibrator.transform(s.raw), y[cal_rows], pred.classes,
                              coverage=0.8)
    wrong = difficulty_target(np.stack([p[cal_rows] for p in probs.values()]), y[cal_rows])
    threshold = choose_threshold(s.referral_prob, wrong, sensitivity=0.8)
    new = dataclasses.replace(pred, calibrator=calibrator, conformal=conformal,
                              referral=dataclasses.replace(pred.referral, threshold=threshold))
    save_predictor(new, tmp_path / "refit")
    again = load_predictor(tmp_path / "refit")
    assert again.calibrator == calibrator and again.conformal == conformal
    assert again.referral.threshold == threshold
    t = again.predict_arrays({m: p[test_rows] for m, p in probs.items()},
                             age=md["age_approx"].to_numpy()[test_rows],
                             sex=list(md["sex"][test_rows]),
                             site=list(md["anatom_site_general"][test_rows]),
                             quality={"blur_score": quality["blur_score"][test_rows]})
    np.testing.assert_allclose(t.probs, calibrator.transform(t.raw))
    np.testing.assert_array_equal(t.refer, t.referral_prob >= threshold)
    covered = t.members[np.arange(test_rows.sum()), y[test_rows]].mean()
    assert abs(covered - 0.8) <= 0.05  # held-out coverage of the refitted sets
