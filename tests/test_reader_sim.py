"""Tests of skin_core.analysis.reader_sim (the demo reader-study simulator)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skin_core.analysis.reader_sim import (
    sample_study_images,
    simulate_demo_readings,
    simulate_readings,
)
from skin_core.analysis.readers import analyze_readers
from skin_core.cli import main
from skin_core.constants import ISIC2019_CLASSES
from skin_core.errors import ConfigError, DataError


def _generation_truth(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """A small frame shaped like the demo generator's generation_truth.csv."""
    rng = np.random.default_rng(seed)
    true = rng.choice(np.array(ISIC2019_CLASSES), n)
    amb = rng.random(n) < 0.15
    mis = ~amb & (rng.random(n) < 0.1)
    label = np.where(mis, np.where(true == "NV", "MEL", "NV"), true)
    blurred = rng.random(n) < 0.1
    diff = np.where(amb, 0.75, rng.random(n) * 0.25)
    return pd.DataFrame({
        "image_id": [f"ISIC_{i:07d}" for i in range(n)],
        "true_label": true, "label": label, "lesion_id": [f"L{i}" for i in range(n)],
        "blur_sigma": np.where(blurred, 2.0, 0.0), "is_blurred": blurred, "is_ambiguous": amb,
        "ambiguous_with": np.where(amb, np.where(true == "BKL", "MEL", "BKL"), ""),
        "is_mislabeled": mis, "has_hair": False, "has_ruler": False,
        "latent_difficulty": np.where(blurred, np.maximum(diff, 0.5), diff),
    })


def test_shape_ids_and_determinism():
    gt = _generation_truth(50)
    a = simulate_readings(gt, n_readers=3, seed=1)
    b = simulate_readings(gt.sample(frac=1, random_state=0), n_readers=3, seed=1)
    c = simulate_readings(gt, n_readers=3, seed=2)
    assert list(a.columns) == ["reader_id", "image_id", "diagnosis"]
    assert a.shape == (150, 3)
    assert sorted(a["reader_id"].unique()) == ["R01", "R02", "R03"]
    assert not a.duplicated(["reader_id", "image_id"]).any()
    pd.testing.assert_frame_equal(a, b)  # input order does not matter
    assert not a["diagnosis"].equals(c["diagnosis"])
    assert set(a["diagnosis"]) <= set(ISIC2019_CLASSES) | {"other"}


def test_accuracy_falls_with_difficulty_and_mislabels_count_wrong():
    gt = _generation_truth(600, seed=1)
    rd = simulate_readings(gt, n_readers=6, seed=0).merge(gt, on="image_id")
    hard = rd["latent_difficulty"] > 0.5
    easy = rd["latent_difficulty"] < 0.1
    acc_true = rd["diagnosis"] == rd["true_label"]
    assert acc_true[easy].mean() > 0.7
    assert acc_true[hard].mean() < acc_true[easy].mean() - 0.3
    mis = rd["is_mislabeled"] & ~hard
    # readers recognise the TRUE class of mislabeled lesions, which the dataset counts wrong
    assert (rd.loc[mis, "diagnosis"] == rd.loc[mis, "true_label"]).mean() > 0.6
    assert (rd.loc[mis, "diagnosis"] == rd.loc[mis, "label"]).mean() < 0.2


def test_confusions_are_plausible():
    gt = _generation_truth(800, seed=2)
    rd = simulate_readings(gt, n_readers=8, seed=0).merge(gt, on="image_id")
    wrong = rd[(rd["diagnosis"] != rd["true_label"]) & (rd["diagnosis"] != "other")]
    mel = wrong[(wrong["true_label"] == "MEL") & ~wrong["is_ambiguous"]]
    assert (mel["diagnosis"] == "NV").mean() > 0.4
    ak = wrong[(wrong["true_label"] == "AK") & ~wrong["is_ambiguous"]]
    assert ak["diagnosis"].isin(["SCC", "BKL"]).mean() > 0.6
    amb = wrong[wrong["is_ambiguous"]]
    assert (amb["diagnosis"] == amb["ambiguous_with"]).mean() > 0.5
    other = (rd["diagnosis"] == "other").mean()
    assert 0.005 < other < 0.1
    none = simulate_readings(gt, n_readers=2, seed=0, p_other=0.0)
    assert (none["diagnosis"] != "other").all()


def test_subset_by_groups_and_images():
    gt = _generation_truth(200)
    groups = pd.Series(np.where(gt["latent_difficulty"] > 0.5, "difficult", "control"),
                       index=gt["image_id"])
    ids = sample_study_images(groups, n_per_group=10, seed=0)
    assert len(ids) == 20 and ids == sorted(ids)
    assert (groups[ids] == "difficult").sum() == 10
    assert sample_study_images(groups, n_per_group=10, seed=0) == ids
    rd = simulate_readings(gt, groups=groups, n_per_group=10, n_readers=4, seed=0)
    assert sorted(rd["image_id"].unique()) == ids
    rd2 = simulate_readings(gt, images=["ISIC_0000003", "ISIC_0000001"], n_readers=2)
    assert sorted(rd2["image_id"].unique()) == ["ISIC_0000001", "ISIC_0000003"]
    only = sample_study_images(groups.rename_axis("image_id").rename("group").reset_index(),
                               n_per_group={"difficult": 5}, seed=1)
    assert len(only) == 5 and (groups[only] == "difficult").all()


def test_bad_input():
    gt = _generation_truth(10)
    with pytest.raises(DataError, match="no column true_label"):
        simulate_readings(gt.drop(columns="true_label"))
    with pytest.raises(ConfigError, match="'n_readers'.*Got 0"):
        simulate_readings(gt, n_readers=0)
    with pytest.raises(DataError, match="No image is left"):
        simulate_readings(gt, images=["nope"])
    with pytest.raises(DataError, match="outside the classes"):
        simulate_readings(gt, classes=("MEL", "NV"))


def test_simulated_study_end_to_end(tmp_path, capsys):
    gt = _generation_truth(300, seed=4)
    gt.to_csv(tmp_path / "generation_truth.csv", index=False)
    pd.DataFrame({"image_id": gt["image_id"],
                  "group": np.where(gt["latent_difficulty"] > 0.5, "difficult", "control")}
                 ).to_csv(tmp_path / "groups.csv", index=False)
    rc = main(["readers", "simulate", "--generation-truth", str(tmp_path / "generation_truth.csv"),
               "--groups", str(tmp_path / "groups.csv"), "--n-per-group", "25",
               "--out", str(tmp_path / "readings.csv"), "--n-readers", "5"])
    assert rc == 0
    rd = pd.read_csv(tmp_path / "readings.csv")
    assert rd.shape == (250, 3)
    capsys.readouterr()
    truth = gt[["image_id", "label"]]
    study = analyze_readers(rd, truth, groups=tmp_path / "groups.csv", n_bootstrap=200,
                            n_permutations=500, glmm=False)
    g = study.summary["groups"]
    assert g["difficult"]["pooled_accuracy"] < g["control"]["pooled_accuracy"] - 0.2
    perm = next(t for t in study.tests if "permutation" in t.name)
    assert perm.effect < 0 and perm.p_value < 0.01


def test_simulate_demo_readings_from_folder(tmp_path):
    gt = _generation_truth(40, seed=3)
    gt.to_csv(tmp_path / "generation_truth.csv", index=False)
    everyone = simulate_demo_readings(tmp_path, n_readers=2, seed=0)
    assert everyone.shape == (80, 3)
    pd.testing.assert_frame_equal(everyone, simulate_readings(gt, n_readers=2, seed=0))
    groups = pd.Series(["difficult"] * 10 + ["control"] * 30, index=gt["image_id"])
    sample = simulate_demo_readings(tmp_path, groups=groups, n_per_group=5, n_readers=2)
    assert sample["image_id"].nunique() == 10
    whole = simulate_demo_readings(tmp_path, groups=groups.iloc[:12], n_per_group=None,
                                   n_readers=1)
    assert sorted(whole["image_id"]) == sorted(gt["image_id"][:12])
    with pytest.raises(DataError, match="demo-data"):
        simulate_demo_readings(tmp_path / "nowhere")
