"""Valid out-of-fold predictions: epoch selection, the inner split, the calibration split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_training import make_tiny_dataset, tiny_config

from skin_core.constants import prob_columns
from skin_core.errors import ConfigError, DataError
from skin_core.training import TrainConfig, config_from_dict, train_run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def _relabel(ds, ids: set[str]):
    """The dataset with the labels of ``ids`` rotated (A -> B -> C -> A); paths unchanged."""
    from skin_core.data.tables import table_from_frame

    t = ds.table.copy()
    rot = {"A": "B", "B": "C", "C": "A"}
    t.loc[t["image_id"].isin(ids), "label"] = t.loc[t["image_id"].isin(ids), "label"].map(rot)
    return table_from_frame(t, classes=ds.classes, root=ds.root)


@pytest.mark.parametrize("selection", ["last", "inner"])
def test_the_member_never_depends_on_the_labels_of_the_fold_it_predicts(
        tiny, tmp_path: Path, selection) -> None:
    """Fold 0's member must be identical whatever fold 0's labels are: no selection on it."""
    import torch
    from safetensors.torch import load_file

    from skin_core.data.splits import make_folds, write_folds

    folds = make_folds(tiny, k=2, seed=0)
    write_folds(folds, tmp_path / "folds.csv")
    cfg = tiny_config(tmp_path, epochs=4, epoch_selection=selection, inner_fraction=0.25,
                      patience=1 if selection == "inner" else 0, augment=False)
    fold0 = set(folds.index[folds == 0])
    runs = {}
    for name, ds in (("orig", tiny), ("relabelled", _relabel(tiny, fold0))):
        runs[name] = tmp_path / name
        train_run(ds, out=runs[name], config=cfg, folds=tmp_path / "folds.csv")
    member = "members/test_resnet/fold0.safetensors"
    a_w, b_w = (load_file(str(r / member)) for r in runs.values())
    assert a_w.keys() == b_w.keys()
    assert all(torch.equal(a_w[key], b_w[key]) for key in a_w)  # bit for bit
    a, b = (pd.read_csv(r / "oof.csv") for r in runs.values())
    a0, b0 = a[a["fold"] == 0], b[b["fold"] == 0]
    np.testing.assert_array_equal(a0[prob_columns("ABC")], b0[prob_columns("ABC")])
    assert (a0["label"] != b0["label"]).all()  # the labels did change
    side = json.loads((runs["orig"] / "members/test_resnet/fold0.json").read_text())
    assert side["epoch_selection"] == selection


def test_inner_selection_chooses_on_an_inner_split_of_the_training_folds(
        tiny, tmp_path: Path) -> None:
    from skin_core.data.cache import build_image_cache, content_fingerprint
    from skin_core.data.splits import make_folds
    from skin_core.training.run import build_jobs

    cfg = tiny_config(tmp_path, epochs=4, epoch_selection="inner", inner_fraction=0.25,
                      patience=2)
    res = train_run(tiny, out=tmp_path / "run", config=cfg)
    run = tmp_path / "run"
    folds = pd.read_csv(run / "folds.csv").set_index("image_id")["fold"]
    for k in (0, 1):
        side = json.loads((run / f"members/test_resnet/fold{k}.json").read_text())
        hist = side["history"]
        scores = [h["inner_balanced_accuracy"] for h in hist]
        assert side["epoch_selection"] == "inner" and side["inner_fraction"] == 0.25
        assert side["selected_epoch"] == int(np.argmax(scores))  # first best on the inner split
        assert side["inner_balanced_accuracy"] == max(scores)
        # early stopping watches the inner split too: it stops `patience` epochs after the best
        assert side["epochs_run"] == min(4, side["selected_epoch"] + 1 + 2)
        n_trainable = int((folds != k).sum())
        assert side["n_inner"] == 6 and side["n_train"] + side["n_inner"] == n_trainable
        assert side["n_val"] == int((folds == k).sum())
    m = res.metrics["test_resnet"]
    assert m["epoch_selection"] == "inner" and m["inner_fraction"] == 0.25
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    epoch = next(e for e in events if e["event"] == "epoch")
    assert {"inner_loss", "inner_balanced_accuracy", "selected_epoch"} <= set(epoch)

    # the inner split: whole lesions, from the training folds only, the same for every member
    series = make_folds(tiny, k=2, seed=0)
    ids = tiny.table["image_id"].tolist()
    cache = build_image_cache(ids, tiny.table["path"].tolist(), 32, cache_dir=tmp_path / "c",
                              fingerprint=content_fingerprint(ids, tiny.table["path"].tolist()),
                              workers=1)
    two = cfg.replace(archs=("test_resnet", "test_efficientnet"))
    jobs = build_jobs(tiny, two, series, cache, tmp_path / "x", resume=False)
    by_row = dict(zip(cache.rows(ids).tolist(), ids, strict=True))
    lesion_of = dict(zip(ids, tiny.table["lesion_id"], strict=True))
    for job in jobs:
        inner = {by_row[r] for r in job.inner_rows}
        train = {by_row[r] for r in job.train_rows}
        assert inner and not inner & train and not inner & set(job.val_ids)
        assert {lesion_of[i] for i in inner}.isdisjoint({lesion_of[i] for i in train})
        assert sorted(np.bincount(job.inner_labels).tolist()) == [2, 2, 2]  # 25 % per class
    assert jobs[0].inner_rows == jobs[2].inner_rows  # same fold, another architecture


def test_calibration_images_are_neither_trained_on_nor_predicted(tiny, tmp_path: Path) -> None:
    from skin_core.data.splits import make_folds, read_folds, write_folds

    folds = make_folds(tiny, k=2, seed=0, calibration=0.25)
    held = set(folds.index[folds == -1])
    assert len(held) == 12  # a quarter of 16 images per class, whole 2-image lesions
    write_folds(folds, tmp_path / "folds.csv")
    cfg = tiny_config(tmp_path, epochs=1)
    res = train_run(tiny, out=tmp_path / "run", config=cfg, folds=tmp_path / "folds.csv")
    run = tmp_path / "run"
    oof = pd.read_csv(res.oof_path)
    assert not held & set(oof["image_id"]) and len(oof) == 48 - 12
    assert set(oof["fold"]) == {0, 1}
    for k in (0, 1):
        side = json.loads((run / f"members/test_resnet/fold{k}.json").read_text())
        assert side["n_train"] == int((folds == 1 - k).sum())  # only the other fold
        assert side["n_val"] == int((folds == k).sum())
    doc = yaml.safe_load((run / "config.yaml").read_text())
    assert doc["calibration"]["n_images"] == 12
    assert doc["calibration"]["per_class"] == {"A": 4, "B": 4, "C": 4}
    assert doc["calibration"]["n_lesions"] == 6
    assert res.metrics["test_resnet"]["n_calibration"] == 12
    pd.testing.assert_series_equal(read_folds(run / "folds.csv", tiny), folds)
    # resuming with the same folds file is fine; extending the run keeps the split
    cfg2 = cfg.replace(archs=("test_resnet", "test_efficientnet"))
    res2 = train_run(tiny, out=run, config=cfg2, folds=tmp_path / "folds.csv", resume=True)
    oof2 = pd.read_csv(res2.oof_path)
    assert oof2.groupby("model").size().to_dict() == {"test_efficientnet": 36, "test_resnet": 36}


def test_cli_folds_with_calibration_then_train(tiny, tmp_path: Path, capsys) -> None:
    from skin_core.cli import main

    table = tiny.table[["image_id", "path", "label"]]  # no lesion ids: oof lesion_id empty
    table.to_csv(tmp_path / "ds.csv", index=False)
    spec = f"csv:{tmp_path / 'ds.csv'}"
    assert main(["data", "folds", "--dataset", spec, "--k", "2", "--calibration", "0.2",
                 "--calibration-seed", "3", "--out", str(tmp_path / "folds.csv"),
                 "--json"]) == 0
    cal = json.loads(capsys.readouterr().out)["calibration"]
    assert cal["per_class"] == {"A": 3, "B": 3, "C": 3} and cal["n_images"] == 9
    assert main(["train", "--dataset", spec, "--arch", "test_resnet", "--folds", "2",
                 "--epochs", "2", "--img-size", "32", "--batch-size", "8", "--threads", "1",
                 "--epoch-selection", "inner", "--inner-fraction", "0.3", "--patience", "1",
                 "--cache-dir", str(tmp_path / "cache"), "--folds-file",
                 str(tmp_path / "folds.csv"), "--out", str(tmp_path / "run"), "--json",
                 "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"]["test_resnet"]["n_calibration"] == 9
    assert out["metrics"]["test_resnet"]["epoch_selection"] == "inner"
    side = json.loads((tmp_path / "run/members/test_resnet/fold0.json").read_text())
    assert side["inner_fraction"] == 0.3 and side["n_inner"] > 0
    oof = pd.read_csv(tmp_path / "run" / "oof.csv")
    assert len(oof) == 48 - 9 and oof["lesion_id"].isna().all()
    assert main(["train", "--dataset", spec, "--arch", "test_resnet", "--folds", "2",
                 "--epochs", "2", "--patience", "1", "--out", str(tmp_path / "run2")]) == 2
    assert "needs epoch_selection: inner" in capsys.readouterr().err


def test_oof_with_lesion_id_is_read_by_its_consumers(tiny, tmp_path: Path) -> None:
    from skin_core.analysis.difficulty import read_oof
    from skin_core.meta import oof_to_wide

    res = train_run(tiny, out=tmp_path / "run",
                    config=tiny_config(tmp_path, epochs=1,
                                       archs=("test_resnet", "test_efficientnet")))
    oof = pd.read_csv(res.oof_path, dtype={"image_id": str, "lesion_id": str})
    assert oof["lesion_id"].notna().all()
    wide = oof_to_wide(oof, classes=("A", "B", "C"))
    assert len(wide.table) == 48 and len(wide.models) == 2
    read = read_oof(res.oof_path, classes=("A", "B", "C"))
    assert read.pred_probs.shape == (2, 48, 3)


def test_class_too_small_outside_the_calibration_split(tmp_path: Path) -> None:
    ds = make_tiny_dataset(tmp_path / "d", per_class={"A": 8, "B": 8, "C": 4})
    t = ds.table
    codes = pd.factorize(t["lesion_id"])[0]
    fold = np.where(t["label"] == "C", 0, codes % 3)
    fold[(t["lesion_id"] == "LC0").to_numpy()] = -1  # C: 2 lesions, one held out
    folds = pd.Series(fold, index=t["image_id"].to_numpy())
    with pytest.raises(DataError, match=r"Class C \(2 images outside the calibration split\) "
                       r"has fewer images than the 3 folds"):
        train_run(ds, out=tmp_path / "run", config=tiny_config(tmp_path, folds=3), folds=folds)
    assert not (tmp_path / "run").exists()


def test_epoch_selection_options_are_validated() -> None:
    assert TrainConfig().epoch_selection == "last" and TrainConfig().patience == 0
    with pytest.raises(ConfigError, match=r"'epoch_selection' training option must be one of"):
        TrainConfig(epoch_selection="best")
    with pytest.raises(ConfigError, match=r"'inner_fraction' training option must be a number "
                       r"in \(0, 0.5\]"):
        TrainConfig(epoch_selection="inner", inner_fraction=0.7)
    with pytest.raises(ConfigError, match="Early stopping .patience=5. needs epoch_selection: "
                       "inner"):
        config_from_dict({"patience": 5})
    cfg = config_from_dict({"epoch_selection": "inner", "patience": 5, "inner_fraction": 0.2})
    assert (cfg.epoch_selection, cfg.patience, cfg.inner_fraction) == ("inner", 5, 0.2)


def test_resume_refuses_another_selection_and_runs_older_than_it(tiny, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(tmp_path, epochs=1)
    train_run(tiny, out=run, config=cfg)
    with pytest.raises(ConfigError, match="has epoch_selection='last' but this command asks "
                       "for 'inner'"):
        train_run(tiny, out=run, config=cfg.replace(epoch_selection="inner",
                                                     inner_fraction=0.25), resume=True)
    doc = yaml.safe_load((run / "config.yaml").read_text())
    del doc["train"]["epoch_selection"]  # as written before epoch_selection existed
    (run / "config.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="trained before epoch_selection existed"):
        train_run(tiny, out=run, config=cfg, resume=True)


def test_shipped_configs_are_valid_and_select_epochs_honestly() -> None:
    from skin_core.training.config import load_config_file

    root = Path(__file__).resolve().parents[1] / "configs"
    for path in sorted(root.glob("*.yaml")):
        opts = load_config_file(path)
        opts.pop("dataset", None)
        cfg = config_from_dict(opts)
        assert cfg.epoch_selection in ("last", "inner"), path
        assert cfg.patience == 0 or cfg.epoch_selection == "inner", path
