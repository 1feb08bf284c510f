"""Tests of ``skin-core meta`` through :func:`skin_core.cli.main`."""

from __future__ import annotations

import json

import pytest
import yaml

from skin_core.cli import main
from skin_core.meta.synthetic import make_synthetic_oof

CLASSES = ("MEL", "NV", "BCC")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    oof, meta = make_synthetic_oof(240, classes=CLASSES, archs=("a", "b"), n_folds=3, seed=2)
    meta.loc[3, "anatom_site_general"] = "left elbow"
    oof.to_csv(d / "oof.csv", index=False)
    meta.to_csv(d / "meta.csv", index=False)
    oof.drop_duplicates("image_id")[["image_id", "fold"]].to_csv(d / "folds.csv", index=False)
    (d / "config.yaml").write_text(yaml.safe_dump({"classes": list(CLASSES)}))
    return d


@pytest.mark.slow
def test_standalone_oof_and_metadata_with_json(files, tmp_path, capsys):
    code = main(["meta", "--oof", str(files / "oof.csv"), "--metadata", str(files / "meta.csv"),
                 "--out", str(tmp_path), "--bootstrap", "30", "--coverage", "0.8", "--json"])
    captured = capsys.readouterr()
    assert code == 0
    out = json.loads(captured.out)
    assert {"balanced_accuracy", "macro_f1", "baselines", "ci"} <= set(out)
    assert "mean_ensemble" in out["baselines"]
    assert "left elbow" in captured.err
    report = json.loads((tmp_path / "meta.json").read_text())
    assert report["data"]["unknown_values"] == {"anatom_site_general": ["left elbow"]}
    assert report["conformal"]["target_coverage"] == 0.8
    for name in ("meta_oof.csv", "meta_predictor.json", "meta_model.txt",
                 "nometa/meta_predictor.json", "nometa/meta_model.txt"):
        assert (tmp_path / name).is_file()
    from skin_core.meta import load_predictor

    nometa = load_predictor(tmp_path / "nometa")
    assert not nometa.feature_spec.metadata and load_predictor(tmp_path).feature_spec.metadata
    assert out["files"]["predictor_nometa"] == str(tmp_path / "nometa" / "meta_predictor.json")
    assert set(out["missing_metadata"]["balanced_accuracy"]) == {
        "none", "age", "sex", "site", "age+sex", "age+site", "sex+site", "all"}
    assert report["settings"]["masked_copies"] == 1


@pytest.mark.slow
def test_run_folder_with_metadata(files, tmp_path, capsys):
    code = main(["meta", "--run", str(files), "--metadata", str(files / "meta.csv"),
                 "--out", str(tmp_path), "--bootstrap", "0"])
    assert code == 0
    assert "balanced accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--oof", "missing.csv", "--metadata", "x.csv"], "does not exist"),
        (["--metadata", "x.csv"], "needs --run RUN or --oof"),
        (["--oof", "{d}/oof.csv", "--metadata", "{d}/meta.csv", "--coverage", "90"],
         "--coverage must be between 0 and 1"),
        (["--oof", "{d}/oof.csv"], "needs --dataset SPEC or --metadata CSV"),
        (["--oof", "{d}/oof.csv", "--metadata", "{d}/meta.csv", "--masked-copies", "-1"],
         "--masked-copies must be 0 or more"),
        (["--oof", "{d}/oof.csv", "--metadata", "{d}/meta.csv", "--folds", "{d}/nope.csv"],
         "folds file"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(files, tmp_path, capsys, args, message):
    args = [a.format(d=files) for a in args]
    assert main(["meta", *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_folds_file_that_disagrees_with_the_oof_is_refused(files, tmp_path, capsys):
    import pandas as pd

    run = tmp_path / "run"
    run.mkdir()
    oof = pd.read_csv(files / "oof.csv")
    oof.to_csv(run / "oof.csv", index=False)
    folds = oof.drop_duplicates("image_id")[["image_id", "fold"]].copy()
    folds.loc[folds.index[0], "fold"] = (folds["fold"].iloc[0] + 1) % 3
    folds.to_csv(run / "folds.csv", index=False)
    code = main(["meta", "--run", str(run), "--metadata", str(files / "meta.csv"),
                 "--out", str(tmp_path / "o")])
    assert code == 2
    assert "does not belong to this run" in capsys.readouterr().err


@pytest.fixture()
def run_with_calibration_split(files, tmp_path):
    """A run folder whose folds.csv holds 20 calibration images (fold -1) that the OOF table,
    as training writes it, does not predict; the metadata table has every image."""
    import pandas as pd

    run = tmp_path / "run"
    run.mkdir()
    oof = pd.read_csv(files / "oof.csv")
    held = sorted(oof["image_id"].unique())[:20]
    folds = oof.drop_duplicates("image_id")[["image_id", "fold"]].copy()
    folds.loc[folds["image_id"].isin(held), "fold"] = -1
    folds.to_csv(run / "folds.csv", index=False)
    oof[~oof["image_id"].isin(held)].to_csv(run / "oof.csv", index=False)
    return run, oof, held


@pytest.mark.slow
def test_calibration_images_are_left_out_of_the_meta_step(files, run_with_calibration_split,
                                                          tmp_path, capsys):
    run, _, held = run_with_calibration_split
    code = main(["meta", "--run", str(run), "--metadata", str(files / "meta.csv"),
                 "--out", str(tmp_path / "o"), "--bootstrap", "0", "--json"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert report["source"]["calibration_images_left_out"] == 20
    assert report["data"]["n_images"] == 240 - 20
    assert "n_dataset_without_oof" in report["data"]
    assert report["data"]["n_dataset_without_oof"] == 0


def test_an_oof_table_that_predicts_calibration_images_is_refused(
        files, run_with_calibration_split, tmp_path, capsys):
    run, oof, held = run_with_calibration_split
    bad = oof.copy()
    bad.loc[bad["image_id"].isin(held), "fold"] = -1
    bad.to_csv(run / "oof.csv", index=False)
    code = main(["meta", "--run", str(run), "--metadata", str(files / "meta.csv"),
                 "--out", str(tmp_path / "o")])
    assert code == 2
    assert "calibration split" in capsys.readouterr().err
