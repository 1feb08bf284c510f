"""The whole study on a small demo: every output, resume skips everything, --force redoes."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from skin_core.cli import invoke
from skin_core.demo import demo_config
from skin_core.errors import ConfigError
from skin_core.study import load_study_config, run_study

TINY = {
    "folds": {"k": 2, "seed": 0},
    "train": {"archs": ["test_resnet", "test_efficientnet"], "epochs": 1, "img_size": 32,
              "batch_size": 32, "folds": 2},
    "difficulty": {"permutations": 200},
    "readers": {"bootstrap": 50, "permutations": 100,
                "simulate": {"enabled": True, "n_readers": 3, "n_per_group": 10}},
    "meta": {"bootstrap": 50},
}


@pytest.fixture(scope="module")
def study(demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    cfg = demo_config(TINY)
    cfg["bundle"] = {"out": str(out / "bundle")}
    result = run_study(f"isic2019:{demo_dir}", out, config=cfg)
    return out, cfg, result


@pytest.mark.slow
def test_study_writes_every_output(study, demo_dir):
    out, _cfg, result = study
    assert [o.status for o in result.outcomes if o.status != "disabled"] == ["ran"] * sum(
        1 for o in result.outcomes if o.status != "disabled")
    for rel in ("config.yaml", "steps.json", "dataset.csv", "summary.json", "folds.csv",
                "quality.csv", "run/oof.csv", "run/metrics.json", "difficulty/difficulty.csv",
                "difficulty/significance.json", "difficulty/quality_vs_difficulty.json",
                "difficulty/ground_truth_check.json", "readings.csv", "readers/readers.json",
                "meta/meta.json", "report.md", "report.html", "retrieval/index.json",
                "calibration/validation.json"):
        assert (out / rel).is_file(), rel
    table = pd.read_csv(out / "dataset.csv")
    folds = pd.read_csv(out / "folds.csv")
    oof = pd.read_csv(out / "run/oof.csv")
    diff = pd.read_csv(out / "difficulty/difficulty.csv")
    n_cal = int((folds["fold"] == -1).sum())  # the calibration split (15 %): never trained on
    assert 20 <= n_cal <= 40 and len(table) == len(folds) == 160  # whole lesions
    assert len(diff) == 160 - n_cal and not set(diff["image_id"]) & set(
        folds.loc[folds["fold"] == -1, "image_id"])
    assert len(oof) == (160 - n_cal) * 2 and set(oof["model"]) == {"test_resnet",
                                                                   "test_efficientnet"}
    bundle = json.loads((out / "bundle" / "bundle.json").read_text())
    assert bundle["validation"]["n_images"] == n_cal and bundle["provenance"]["synthetic"]
    lesions = table.merge(folds, on="image_id").dropna(subset=["lesion_id"])
    assert (lesions.groupby("lesion_id")["fold"].nunique() == 1).all()
    sig = json.loads((out / "difficulty/significance.json").read_text())
    assert sig["n_images"] == 160 - n_cal and sig["n_models"] == 2
    report = (out / "report.md").read_text()
    for section in ("## Data", "## CNN members", "## Consistently misclassified images",
                    "## Image quality", "## Experts vs CNNs", "## Meta-classifier"):
        assert section in report
    html = (out / "report.html").read_text()
    assert html.count("plotly") > 10 and "<table>" in html


@pytest.mark.slow
def test_study_resumes_and_force_redoes_one_step(study, demo_dir):
    out, cfg, _ = study
    again = run_study(f"isic2019:{demo_dir}", out, config=cfg)
    assert {o.status for o in again.outcomes} <= {"skipped", "disabled"}
    report_mtime = (out / "report.md").stat().st_mtime_ns
    oof_mtime = (out / "run/oof.csv").stat().st_mtime_ns
    forced = run_study(f"isic2019:{demo_dir}", out, config=cfg, force=["report"])
    ran = [o.name for o in forced.outcomes if o.status == "ran"]
    assert ran == ["report"]
    rebundled = run_study(f"isic2019:{demo_dir}", out, config=cfg, force=["meta"])
    assert [o.name for o in rebundled.outcomes if o.status == "ran"] == [
        "meta", "bundle", "index", "calibrate", "report"]
    assert (out / "bundle" / "bundle.json").is_file()
    assert (out / "report.md").stat().st_mtime_ns > report_mtime
    assert (out / "run/oof.csv").stat().st_mtime_ns == oof_mtime


@pytest.mark.slow
def test_study_cli_json(study, demo_dir, tmp_path):
    out, cfg, _ = study
    import yaml

    cfg_file = tmp_path / "study.yaml"
    cfg_file.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "dataset"}))
    result = invoke(["study", "--dataset", f"isic2019:{demo_dir}", "--out", str(out),
                     "--config", str(cfg_file)])
    assert result["out"] == str(out.resolve())
    assert {s["status"] for s in result["steps"]} <= {"skipped", "disabled"}


def test_study_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian: {}\n")
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['trian'\]"):
        load_study_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_study_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="No dataset given"):
        run_study(None, tmp_path / "s", config={"dataset": None})
    cfg = load_study_config(None, {"train": {"epochs": 3}})
    assert cfg["train"] == {"epochs": 3} and cfg["folds"] == {"k": 5, "seed": 0}


@pytest.mark.slow
def test_demo_builds_data_study_and_bundle_then_is_up_to_date(tmp_path):
    import yaml

    from skin_core.demo import build_demo

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    first = build_demo(tmp_path, config=cfg, n=120)
    assert first["data"] == str(tmp_path / "data" / "demo")
    assert (tmp_path / "data/demo/generation_truth.csv").is_file()
    assert (tmp_path / "studies/demo/report.html").is_file()
    assert (tmp_path / "models/demo/bundle.json").is_file()
    # 120 images leave a calibration split too small to fit served thresholds: said, not fatal
    validation = json.loads((tmp_path / "studies/demo/calibration/validation.json").read_text())
    assert "skipped" in validation and "calibration split" in validation["skipped"]
    second = build_demo(tmp_path, config=cfg, n=120)
    assert {s["status"] for s in second["steps"]} <= {"skipped", "disabled"}
