"""Tests of skin_core.meta.io: pickle-free save/load that predicts identically."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from skin_core.errors import DataError
from skin_core.meta.evaluate import evaluate_meta
from skin_core.meta.features import oof_to_wide, wide_from_probs
from skin_core.meta.io import load_predictor, save_predictor
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
