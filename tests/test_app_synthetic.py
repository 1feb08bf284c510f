"""The synthetic-data notices: from a bundle's provenance, its training data, or a study."""

from __future__ import annotations

from skin_core.app.synthetic import (
    SYNTHETIC_BUNDLE_NOTICE,
    SYNTHETIC_STUDY_NOTICE,
    synthetic_notice,
)


def _demo_data(tmp_path, synthetic: bool):
    d = tmp_path / ("synthetic" if synthetic else "real")
    d.mkdir()
    (d / "ISIC_2019_Training_GroundTruth.csv").write_text("image,MEL\n")
    if synthetic:
        (d / "generation_truth.csv").write_text("image_id\n")
    return f"isic2019:{d}"


def test_synthetic_notice_from_provenance_or_the_training_data(tmp_path):
    fake, real = _demo_data(tmp_path, True), _demo_data(tmp_path, False)
    assert synthetic_notice() is None
    assert synthetic_notice(bundle_manifest={"provenance": {"synthetic": True}}) == (
        SYNTHETIC_BUNDLE_NOTICE)
    # provenance wins over the dataset folder; older bundles fall back to the folder
    assert synthetic_notice(bundle_manifest={"provenance": {"synthetic": False},
                                                 "run": {"dataset": fake}}) is None
    assert synthetic_notice(bundle_manifest={"run": {"dataset": fake}}) == (
        SYNTHETIC_BUNDLE_NOTICE)
    assert synthetic_notice(bundle_manifest={"run": {"dataset": real}}) is None
    assert synthetic_notice(bundle_manifest={"run": {"dataset": "nonsense"}}) is None
    study = tmp_path / "study"
    study.mkdir()
    (study / "steps.json").write_text("{}")
    (study / "config.yaml").write_text(f"dataset: {fake}\n")
    assert synthetic_notice(study=study) == SYNTHETIC_STUDY_NOTICE
    assert "not on real patients" in SYNTHETIC_BUNDLE_NOTICE
    (study / "config.yaml").write_text(f"dataset: {real}\n")
    assert synthetic_notice(bundle_manifest={}, study=study) is None
