"""`skin-core study` end to end on a stratified 800-image subset of the real HAM10000 images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from skin_core.cli import invoke

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

N_SUBSET = 800
CONFIG = {
    "folds": {"k": 5, "seed": 0},
    "train": {"archs": ["test_resnet", "test_efficientnet"], "epochs": 2, "img_size": 48,
              "batch_size": 32, "lr": 3e-3, "patience": 0, "threads": 1, "device": "cpu"},
    "difficulty": {"permutations": 1000},
    "meta": {"bootstrap": 100},
}


@pytest.fixture(scope="module")
def ham_study(ham10000_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Real metadata rows of 800 images (stratified by diagnosis) beside the real images."""
    from sklearn.model_selection import train_test_split

    root = tmp_path_factory.mktemp("ham800")
    meta = pd.read_csv(ham10000_dir / "HAM10000_metadata.csv")
    subset, _ = train_test_split(meta, train_size=N_SUBSET, stratify=meta["dx"],
                                 random_state=0)
    subset.sort_values("image_id").to_csv(root / "HAM10000_metadata.csv", index=False)
    images = ham10000_dir / "images"
    (root / "images").symlink_to(images if images.is_dir() else ham10000_dir)
    cfg_file = root / "study.yaml"
    cfg_file.write_text(yaml.safe_dump(CONFIG))
    out = root / "study"
    result = invoke(["study", "--dataset", f"ham10000:{root}", "--config", str(cfg_file),
                     "--out", str(out)])
    return out, subset, result, root


def test_every_output_exists_and_agrees(ham_study) -> None:
    out, subset, result, _ = ham_study
    ran = {s["name"]: s["status"] for s in result["steps"]}
    assert ran["readers"] == "disabled"  # no readings for HAM10000
    assert {v for k, v in ran.items() if k != "readers"} == {"ran"}
    for rel in ("dataset.csv", "summary.json", "folds.csv", "quality.csv", "run/oof.csv",
                "run/metrics.json", "difficulty/difficulty.csv", "difficulty/significance.json",
                "difficulty/quality_vs_difficulty.json", "meta/meta.json", "bundle/bundle.json",
                "report.md", "report.html"):
        assert (out / rel).is_file(), rel
    table = pd.read_csv(out / "dataset.csv")
    ids = set(subset["image_id"])
    assert len(table) == N_SUBSET and set(table["image_id"]) == ids
    # real metadata, never imputed: missing ages stay missing
    src = subset.set_index("image_id")
    got = table.set_index("image_id").loc[src.index]
    assert got["age_approx"].isna().sum() == src["age"].isna().sum()
    assert np.allclose(got["age_approx"].dropna(), src["age"].dropna())

    folds = pd.read_csv(out / "folds.csv").merge(table, on="image_id")
    assert (folds.groupby("lesion_id")["fold"].nunique() == 1).all()
    assert set(folds["fold"]) == {-1, 0, 1, 2, 3, 4}  # fold -1: the calibration split
    held = set(folds.loc[folds["fold"] == -1, "image_id"])
    n_dev = N_SUBSET - len(held)
    assert 0.1 * N_SUBSET < len(held) < 0.2 * N_SUBSET

    oof = pd.read_csv(out / "run/oof.csv")
    assert len(oof) == 2 * n_dev and set(oof["image_id"]) == ids - held
    probs = oof.filter(like="prob_")
    assert probs.shape[1] == 7 and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    labels = table.set_index("image_id")["label"]
    assert (oof["label"].to_numpy() == labels.loc[oof["image_id"]].to_numpy()).all()
    by_fold = oof.merge(folds[["image_id", "fold"]], on="image_id", suffixes=("", "_split"))
    assert (by_fold["fold"] == by_fold["fold_split"]).all()  # scored by the fold that held it out

    q = pd.read_csv(out / "quality.csv", keep_default_na=False)
    assert len(q) == N_SUBSET and (q["error"] == "").all()
    assert set(q["width"]) == {200} and set(q["height"]) == {150}

    diff = pd.read_csv(out / "difficulty/difficulty.csv")
    assert len(diff) == n_dev and (diff["n_models"] == 2).all()
    assert ((diff["group"] == "difficult") == (diff["n_wrong"] == 2)).all()
    assert ((diff["group"] == "control") == (diff["n_wrong"] == 0)).all()
    sig = json.loads((out / "difficulty/significance.json").read_text())
    assert sig["n_images"] == n_dev and sig["n_models"] == 2
    assert sig["clustering"]["unit"] == "lesion"
    assert sig["observed_all_wrong"] == int((diff["group"] == "difficult").sum())

    meta = json.loads((out / "meta/meta.json").read_text())
    assert 0 < meta["balanced_accuracy"] <= 1 and "mean_ensemble" in json.dumps(meta)
    # the served pipeline was calibrated and measured on the held-out images
    validation = json.loads((out / "calibration/validation.json").read_text())
    assert validation["n_images"] == len(held) and 0 < validation["coverage"] <= 1
    report = (out / "report.md").read_text()
    assert "800 images" in report and "## Meta-classifier" in report
    assert "Adjusted for the class" in report  # the class-adjusted quality model


def test_bundle_predicts_a_real_image_and_the_study_resumes(ham_study) -> None:
    out, subset, _, root = ham_study
    image = root / "images" / f"{subset['image_id'].iloc[0]}.jpg"
    res = invoke(["predict", "--bundle", str(out / "bundle"), str(image), "--age", "55",
                  "--sex", "male", "--site", "posterior torso"])
    rec = res[0] if isinstance(res, list) else res
    assert set(rec["probs"]) == {"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"}
    assert abs(sum(rec["probs"].values()) - 1) < 1e-6 and rec["meta_probs"]
    again = invoke(["study", "--dataset", f"ham10000:{root}", "--config",
                    str(root / "study.yaml"), "--out", str(out)])
    assert {s["status"] for s in again["steps"]} <= {"skipped", "disabled"}
