"""Served-pipeline calibration on a held-out split (skin_core.served, skin-core calibrate)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_predict import build_trained  # the shared tiny trained run (tests/test_predict.py)

from skin_core.errors import DataError


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_trained(tmp_path_factory.getbasetemp() / "predict_trained")


@pytest.fixture(scope="module")
def heldout(trained) -> pd.DataFrame:
    """120 images of the same generator with another seed: never trained on."""
    from skin_core.data.tables import load_dataset

    return load_dataset(f"isic2019:{trained['heldout']}").table


@pytest.fixture(scope="module")
def calibrated(trained, heldout, tmp_path_factory) -> tuple[Path, dict]:
    from skin_core.served import calibrate_bundle

    bundle = tmp_path_factory.mktemp("served") / "bundle"
    shutil.copytree(trained["bundle"], bundle)
    validation = calibrate_bundle(bundle, heldout, coverage=0.9, source="test")
    return bundle, validation


def _metadata(table: pd.DataFrame) -> dict[str, tuple]:
    return {i: (None if pd.isna(a) else a, None if pd.isna(s) else s,
                None if pd.isna(t) else t)
            for i, a, s, t in zip(table["image_id"], table["age_approx"], table["sex"],
                                  table["anatom_site_general"], strict=True)}


def test_bundle_records_provenance_of_its_synthetic_training_data(trained) -> None:
    from skin_core.models.bundle import load_bundle

    b = load_bundle(trained["bundle"])
    prov = b.manifest["provenance"]
    assert prov["synthetic"] is True and b.synthetic
    assert prov["n_images"] == 120 and prov["classes"] == list(b.classes)
    assert prov["dataset"].startswith("isic2019:") and "skin-core" in prov["code_version"]
    assert b.validation is None  # not calibrated on held-out data yet


def test_calibrated_bundle_verifies_and_records_validation(calibrated) -> None:
    from skin_core.models.bundle import load_bundle

    bundle, validation = calibrated
    b = load_bundle(bundle)  # every hash was rewritten
    v = b.validation
    for key in ("n_images", "coverage", "mean_set_size", "referral_rate", "referral_sensitivity",
                "ece", "balanced_accuracy"):
        assert key in v, key
    assert v["n_images"] == 120 and v == json.loads(json.dumps(validation))
    assert b.manifest["calibration"]["n_images"] == 120
    assert b.meta.info["served_calibration"]["n_images"] == 120
    assert b.meta_nometa.info["served_calibration"]["n_images"] == 120


def test_validation_equals_the_served_pipeline_end_to_end(calibrated, heldout) -> None:
    """The figures in bundle.json are what Predictor.iter_predict gives on the same images."""
    from skin_core.predict import Predictor
    from skin_core.served import validation_metrics

    bundle, validation = calibrated
    pred = Predictor(bundle, device="cpu")
    results = list(pred.iter_predict(list(heldout["path"]), metadata=_metadata(heldout)))
    again = validation_metrics(results, list(heldout["label"]), pred.classes)
    for key, value in validation["with_metadata"].items():
        if isinstance(value, float):
            assert again[key] == pytest.approx(value, abs=1e-9), key
    bare = list(pred.iter_predict(list(heldout["path"])))
    assert validation_metrics(bare, list(heldout["label"]), pred.classes)["coverage"] == (
        pytest.approx(validation["without_metadata"]["coverage"]))


def test_split_conformal_guarantee_and_thresholds_fitted_on_the_split(calibrated,
                                                                      heldout) -> None:
    """In-sample, split conformal covers >= ceil((n+1)0.9)/n of the split; the entropy
    threshold flags ~10 % of it; the referral threshold is that of the served risks."""
    from skin_core.meta.referral import choose_threshold
    from skin_core.models.bundle import load_bundle
    from skin_core.predict import Predictor

    bundle, validation = calibrated
    n = validation["n_images"]
    assert validation["coverage"] >= np.ceil((n + 1) * 0.9) / n - 1e-12
    assert validation["without_metadata"]["coverage"] >= np.ceil((n + 1) * 0.9) / n - 1e-12
    pred = Predictor(bundle, device="cpu")
    results = list(pred.iter_predict(list(heldout["path"]), metadata=_metadata(heldout)))
    high = np.mean(["high_entropy" in r.referral["reasons"] for r in results])
    assert 0.05 <= high <= 0.15, high
    b = load_bundle(bundle)
    fitted = b.meta.info["served_calibration"]
    risk = np.array([r.referral["risk"] for r in results])
    y = np.array([b.classes.index(v) for v in heldout["label"]])
    tops = np.stack([np.array([b.classes.index(r.referral["model_top_classes"][m])
                               for r in results]) for m in b.models])
    target = (tops != y[None, :]).all(axis=0)
    if fitted["referral_target"] != "images every model gets wrong":
        target = np.array([r.label for r in results]) != heldout["label"].to_numpy()
    assert fitted["referral_threshold"] == pytest.approx(choose_threshold(risk, target))


def test_calibration_refuses_labels_the_bundle_cannot_predict(trained, heldout,
                                                              tmp_path) -> None:
    from skin_core.served import calibrate_bundle

    bad = heldout.copy()
    bad.loc[bad.index[0], "label"] = "XYZ"
    with pytest.raises(DataError, match="XYZ"):
        calibrate_bundle(trained["bundle"], bad)
    with pytest.raises(DataError, match="at least 20"):
        calibrate_bundle(trained["bundle"], heldout.head(5))


def test_cli_takes_the_fold_minus_one_rows_of_a_folds_table(trained, heldout, tmp_path,
                                                            capsys) -> None:
    from skin_core.cli import main

    bundle = tmp_path / "bundle"
    shutil.copytree(trained["bundle"], bundle)
    folds = pd.DataFrame({"image_id": heldout["image_id"],
                          "fold": [-1] * 60 + [0] * 30 + [1] * 30})
    folds.to_csv(tmp_path / "folds.csv", index=False)
    spec = f"isic2019:{trained['heldout']}"
    assert main(["calibrate", "--bundle", str(bundle), "--dataset", spec, "--folds",
                 str(tmp_path / "folds.csv"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_images"] == 60
    folds["fold"] = 0
    folds.to_csv(tmp_path / "folds.csv", index=False)
    assert main(["calibrate", "--bundle", str(bundle), "--dataset", spec, "--folds",
                 str(tmp_path / "folds.csv")]) == 2
    err = capsys.readouterr().err
    assert "no calibration split" in err and "--calibration" in err
