"""The app's non-UI logic: gallery tables and filters, thumbnails, reader tables, results, jobs."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skin_core import app_support as aps
from skin_core.errors import ConfigError, DataError, ImageError
from skin_core.predict import PredictionResult


def _gallery() -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": ["a", "b", "c", "d", "e"],
        "label": ["MEL", "NV", "MEL", "BCC", "NV"],
        "n_models": [3] * 5, "n_wrong": [3, 3, 2, 0, 3],
        "group": ["difficult", "difficult", "other", "control", "difficult"],
        "likely_mislabeled": [True, False, False, False, True],
        "blur_score": [0.2, 0.9, 0.5, np.nan, 0.45],
        "pred_m1": ["NV", "MEL", "NV", "BCC", "BKL"], "path": ["x"] * 5,
    })


def test_filter_gallery_each_filter():
    g = _gallery()
    assert aps.filter_gallery(g)["image_id"].tolist() == ["a", "b", "e"]
    assert aps.filter_gallery(g, groups=None, classes=["MEL"])["image_id"].tolist() == ["a", "c"]
    assert aps.filter_gallery(g, groups=None, min_wrong=3)["image_id"].tolist() == ["a", "b", "e"]
    assert aps.filter_gallery(g, blur_range=(0.3, 1.0))["image_id"].tolist() == ["b", "e"]
    # the full range keeps images without a blur score; a narrower one drops them
    assert "d" in aps.filter_gallery(g, groups=None, blur_range=(0.0, 1.0))["image_id"].tolist()
    assert "d" not in aps.filter_gallery(g, groups=None, blur_range=(0.0, 0.99))[
        "image_id"].tolist()
    assert aps.filter_gallery(g, mislabeled="only")["image_id"].tolist() == ["a", "e"]
    assert aps.filter_gallery(g, mislabeled="exclude")["image_id"].tolist() == ["b"]
    with pytest.raises(ConfigError, match="'mislabeled' parameter"):
        aps.filter_gallery(g, mislabeled="yes")


def test_gallery_export_drops_local_paths():
    csv = aps.gallery_export(_gallery()).decode()
    assert csv.splitlines()[0].startswith("image_id,label") and ",path" not in csv


def test_page_slice_clips():
    assert aps.page_slice(100, 1, 48) == (0, 48, 3)
    assert aps.page_slice(100, 3, 48) == (96, 100, 3)
    assert aps.page_slice(100, 9, 48) == (96, 100, 3)
    assert aps.page_slice(0, 1, 48) == (0, 0, 1)


def test_thumbnail_is_small_jpeg_and_bad_files_raise(tmp_path):
    p = tmp_path / "big.png"
    Image.fromarray(np.full((600, 900, 3), 120, np.uint8)).save(p)
    jpg = aps.thumbnail_jpeg(p, side=100)
    im = Image.open(io.BytesIO(jpg))
    assert im.format == "JPEG" and max(im.size) == 100 and im.size == (100, 67)
    assert aps.data_uri(jpg).startswith("data:image/jpeg;base64,/9j/")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError):
        aps.thumbnail_jpeg(bad)


def test_grid_html_escapes_and_caption():
    html = aps.thumbnail_grid_html([("data:x", "<id>", "a & b")])
    assert "&lt;id&gt;" in html and "a &amp; b" in html and 'decoding="async"' in html
    row = _gallery().iloc[0].to_dict()
    assert aps.thumb_caption(row, ["pred_m1"]) == "truth MEL · 3/3 wrong · blur 0.20 · pred NV"


def test_significance_and_quality_tables():
    sig = {"tests": [{"name": "all wrong", "effect": 3.0, "statistic": 30, "p_value": 1e-9,
                      "method": "exact", "assumptions": "independent",
                      "extra": {"observed": 30, "expected": 10.0}}]}
    t = aps.significance_table(sig)
    assert t.loc[0, ["observed", "expected", "ratio"]].tolist() == [30, 10.0, 3.0]
    qvd = {"measures": {"blur_score": {
        "median_difficult": 0.4, "median_control": 0.8,
        "mann_whitney": {"p_value": 0.01, "extra": {"p_holm": 0.02}},
        "cliffs_delta": {"effect": -0.5, "ci": [-0.7, -0.2]}}}}
    q = aps.quality_tests_table(qvd)
    assert q.loc[0, "delta_ci"] == "[-0.700, -0.200]" and q.loc[0, "p_holm"] == 0.02
    assert aps.quality_tests_table({"computed": False}).empty
    box = aps.blur_by_group(_gallery())
    assert sorted(box["image_id"]) == ["a", "b", "e"]  # control d has no blur score


def test_read_upload_csv_errors():
    df = aps.read_upload_csv(b"\xef\xbb\xbfreader_id, image_id\nR1,a\n", "r.csv")
    assert list(df.columns) == ["reader_id", "image_id"]
    with pytest.raises(DataError, match=r"r.csv has no column 'diagnosis' \(found reader_id, "
                       r"image_id\); a readings.csv needs the columns reader_id, image_id, "):
        aps.read_upload_csv(b"reader_id,image_id\nR1,a\n", "r.csv",
                            required=("reader_id", "image_id", "diagnosis"), what="readings.csv")
    with pytest.raises(DataError, match="r.csv is empty"):
        aps.read_upload_csv(b"  \n", "r.csv")
    with pytest.raises(DataError, match="not UTF-8"):
        aps.read_upload_csv(b"a,b\n\xff\xfe,1\n", "r.csv")


@pytest.fixture(scope="module")
def reader_study():
    rng = np.random.default_rng(0)
    ids = [f"I{i}" for i in range(20)]
    truth = pd.DataFrame({"image_id": ids, "label": ["MEL", "NV"] * 10})
    groups = pd.DataFrame({"image_id": ids, "group": ["difficult"] * 10 + ["control"] * 10})
    rows = []
    for r in ("R1", "R2", "R3"):
        for i, lab in zip(ids, truth["label"], strict=True):
            wrong = rng.random() < (0.6 if int(i[1:]) < 10 else 0.1)
            rows.append({"reader_id": r, "image_id": i,
                         "diagnosis": ("NV" if lab == "MEL" else "MEL") if wrong else lab})
    cnn = pd.DataFrame({"image_id": ids, "pred": ["NV"] * 20})
    study = aps.run_reader_study(aps.ReaderInputs(pd.DataFrame(rows), truth, groups, cnn),
                                 n_bootstrap=50, n_permutations=50)
    return study, pd.DataFrame(rows)


def test_reader_tables(reader_study):
    study, rows = reader_study
    acc = aps.reader_accuracy_table(study.summary)
    assert acc["who"].tolist()[:4] == ["R1", "R2", "R3", "consensus"]
    assert "CNN ensemble" in acc["who"].tolist()
    r1 = rows[(rows.reader_id == "R1") & rows.image_id.isin([f"I{i}" for i in range(10, 20)])]
    truth = {f"I{i}": ["MEL", "NV"][i % 2] for i in range(20)}
    expected = np.mean([d == truth[i] for i, d in zip(r1.image_id, r1.diagnosis, strict=True)])
    assert acc.set_index("who").loc["R1", "control"] == pytest.approx(expected)
    groups = aps.reader_group_table(study.summary)
    assert set(groups["group"]) == {"difficult", "control"}
    tests = aps.reader_tests_table(study.summary)
    assert len(tests) >= 2 and tests["assumptions"].notna().all()


def test_confusion_matrices(reader_study):
    study, rows = reader_study
    cm = aps.confusion_matrix(study, who="readers")
    assert int(cm.to_numpy().sum()) == len(rows)
    assert list(cm.index)[:2] == ["MEL", "NV"]
    cnn = aps.confusion_matrix(study, who="cnn", group="control")
    assert int(cnn.loc["MEL", "NV"]) == 5 and int(cnn.loc["NV", "NV"]) == 5
    with pytest.raises(ConfigError, match="'who' parameter"):
        aps.confusion_matrix(study, who="robot")


def _result(meta=True) -> PredictionResult:
    probs = {"MEL": 0.7, "NV": 0.3}
    return PredictionResult(
        image="x.jpg", image_id="x", label="MEL", probs=probs,
        members={"resnet": {"MEL": 0.6, "NV": 0.4}, "effnet": {"MEL": 0.8, "NV": 0.2}},
        meta_probs={"MEL": 0.75, "NV": 0.25} if meta else None,
        meta_source="with_metadata" if meta else None, prediction_set=("MEL",), coverage=0.9,
        quality={"blur_score": 0.3, "warning": "blurry <b>", "low_quality": True},
        referral={"refer": True, "reasons": ["low_quality", "model_disagreement"], "risk": 0.4},
        metadata={"age_approx": 50.0, "sex": None}, warnings=("blurry <b>",),
        overlay=np.zeros((8, 8, 3), np.uint8), heatmap_member="resnet fold 0")


def test_result_tables_json_and_report():
    r, w = _result(), _result(meta=False)
    bars = aps.member_probability_frame(r, ["MEL", "NV"])
    assert set(bars["source"]) == {"resnet", "effnet", "ensemble", "meta-classifier"}
    assert bars.query("source == 'effnet' and `class` == 'MEL'")["probability"].item() == 0.8
    mc = aps.meta_comparison(r, w)
    assert mc["variant"].tolist() == ["with metadata", "without metadata"]
    assert mc["probability"].tolist() == [0.75, 0.7]
    assert aps.meta_comparison(w, None)["variant"].tolist() == ["without metadata"]
    d = json.loads(aps.result_json(r, w))
    assert d["label"] == "MEL" and d["without_metadata"]["meta_probs"] is None
    assert aps.referral_text(r.referral)[1].startswith("the CNN architectures disagree")
    page = aps.result_report_html(r, original=np.zeros((4, 4, 3), np.uint8), without=w,
                                  disclaimer="research only")
    assert "Refer for specialist review" in page and "blurry &lt;b&gt;" in page
    assert page.count("data:image/png;base64") == 2 and "research only" in page


def test_training_config_and_errors():
    cfg = aps.training_config(archs=["test_resnet"], folds=3, epochs=2, img_size=32, fast=True)
    assert cfg["train"]["archs"] == ["test_resnet"] and cfg["folds"]["k"] == 3
    assert cfg["train"]["folds"] == 3 and cfg["difficulty"]["permutations"] == 200
    with pytest.raises(ConfigError, match="at least one architecture"):
        aps.training_config(archs=[], folds=3, epochs=2, img_size=32)
    with pytest.raises(ConfigError, match="folds >= 2"):
        aps.training_config(archs=["x"], folds=1, epochs=2, img_size=32)


def test_run_progress_eta_and_events(tmp_path):
    assert aps.run_progress(tmp_path)["state"] == "starting"
    (tmp_path / "status.json").write_text(json.dumps({
        "state": "running", "progress": 0.25, "started": "2026-01-01T00:00:00+00:00",
        "model": "m", "fold": 1}))
    ev = {"event": "epoch", "model": "m", "arch": "m", "fold": 1, "epoch": 2, "train_loss": 1.5,
          "val_loss": 1.7, "val_balanced_accuracy": 0.4, "images_per_s": 10, "elapsed_s": 3}
    (tmp_path / "events.jsonl").write_text(json.dumps({"event": "run_start"}) + "\n"
                                           + json.dumps(ev) + "\n{partial")
    from datetime import datetime

    now = datetime.fromisoformat("2026-01-01T00:01:00+00:00").timestamp()
    p = aps.run_progress(tmp_path, now=now)
    assert p["elapsed_s"] == 60 and p["eta_s"] == pytest.approx(180)
    assert p["epoch"] == 2 and p["val_balanced_accuracy"] == 0.4 and len(p["events"]) == 1
    assert aps.format_seconds(180) == "3 min 00 s" and aps.format_seconds(None) == "–"
    assert aps.format_seconds(3725) == "1 h 02 min"


def test_launch_refuses_bad_name_and_existing_study(tmp_path, monkeypatch):
    from skin_core.workspace import current_workspace

    monkeypatch.setenv("SKIN_CORE_HOME", str(tmp_path))
    ws = current_workspace()
    cfg = aps.training_config(archs=["test_resnet"], folds=2, epochs=1, img_size=32)
    with pytest.raises(ConfigError, match="must be 1-64 letters"):
        aps.launch_training(ws, name="../x", dataset="isic2019:/x", config=cfg)
    (ws.studies / "taken").mkdir(parents=True)
    with pytest.raises(ConfigError, match="already exists"):
        aps.launch_training(ws, name="taken", dataset="isic2019:/x", config=cfg)
    assert aps.new_study_name(ws).startswith("run-")


def test_training_devices_put_the_gpu_first_when_there_is_one(monkeypatch):
    import torch

    from skin_core.app_support import training_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training_devices() == ["cuda", "cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_devices() == ["cpu", "cuda"]
