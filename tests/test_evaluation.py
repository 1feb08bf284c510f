"""skin-core evaluate on a tiny trained bundle: figures against sklearn on predictions.csv, the
served answers, class maps, withheld metadata, stability, subgroups, outputs and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    recall_score,
    roc_auc_score,
)
from test_predict import build_trained  # the shared tiny trained run (tests/test_predict.py)

from skin_core.errors import ConfigError

CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
HEADLINE = ("balanced_accuracy", "macro_f1", "accuracy", "coverage", "mean_set_size",
            "referral_rate", "referral_error_capture", "ece")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_trained(tmp_path_factory.getbasetemp() / "predict_trained")


@pytest.fixture(scope="module")
def predictor(trained):
    from skin_core.predict import Predictor

    return Predictor(trained["bundle"], device="cpu")


@pytest.fixture(scope="module")
def evaluated(trained, predictor, tmp_path_factory) -> tuple[dict, Path]:
    """The held-out demo (120 images, 65 lesions) with every metadata variant."""
    from skin_core.evaluation import evaluate

    out = tmp_path_factory.mktemp("evaluation")
    result = evaluate(predictor, f"isic2019:{trained['heldout']}", out, drop_metadata="every",
                      n_resamples=300, seed=0, stability=12, workers=1)
    return result, out


def _predictions(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "predictions.csv", dtype={"image_id": str, "lesion_id": str})


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_headline_figures_equal_sklearn_on_the_written_predictions(evaluated) -> None:
    from skin_core.analysis.metrics import sensitivity_at_specificity
    from skin_core.meta.calibration import expected_calibration_error

    ev, out = evaluated
    df = _predictions(out)
    assert len(df) == ev["n_images"] == 120 and ev["n_failed"] == 0
    y, pred = df["label"], df["pred"]
    assert ev["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert ev["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred))
    assert ev["macro_f1"]["value"] == pytest.approx(
        f1_score(y, pred, labels=sorted(y.unique()), average="macro"))
    probs = df[[f"prob_{c}" for c in CLASSES]].to_numpy()
    yi = y.map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    assert (probs.argmax(axis=1) == pred.map({c: i for i, c in enumerate(CLASSES)})).all()
    assert ev["ece"]["value"] == pytest.approx(
        expected_calibration_error(probs, yi, n_bins=15))
    assert ev["coverage"]["value"] == pytest.approx(df["covered"].mean())
    assert ev["mean_set_size"]["value"] == pytest.approx(df["set_size"].mean())
    assert ev["referral_rate"]["value"] == pytest.approx(df["refer"].mean())
    wrong = df["pred"] != df["label"]
    assert ev["referral_error_capture"]["value"] == pytest.approx(df.loc[wrong, "refer"].mean())
    assert ev["ensemble"]["balanced_accuracy"]["value"] == pytest.approx(
        balanced_accuracy_score(y, df["ensemble_pred"]))
    present = sorted(y.unique())
    sens = recall_score(y, pred, labels=present, average=None)
    for c, s in zip(present, sens, strict=True):
        pc = ev["per_class"][c]
        assert pc["n"] == int((y == c).sum())
        assert pc["sensitivity"]["value"] == pytest.approx(s)
        spec = ((y != c) & (pred != c)).sum() / (y != c).sum()
        assert pc["specificity"]["value"] == pytest.approx(spec)
        assert pc["auc"]["value"] == pytest.approx(roc_auc_score(y == c, df[f"prob_{c}"]),
                                                   abs=1e-9)
    absent = [c for c in CLASSES if c not in present]
    for c in absent:
        assert ev["per_class"][c]["n"] == 0 and ev["per_class"][c]["auc"]["value"] is None
    mel = ev["melanoma_sensitivity_at_specificity"]
    assert mel["class"] == "MEL"
    for key, s in (("0.80", 0.8), ("0.90", 0.9)):
        assert mel[key]["value"] == pytest.approx(
            sensitivity_at_specificity(y == "MEL", df["prob_MEL"], s))


def test_every_figure_has_an_interval_around_its_value(evaluated) -> None:
    ev, _ = evaluated
    for key in HEADLINE:
        f = ev[key]
        assert set(f) == {"value", "ci"}
        lo, hi = f["ci"]
        assert lo <= f["value"] <= hi, key
    for key in ("balanced_accuracy", "accuracy"):
        lo, hi = ev[key]["ci"]
        assert hi - lo > 0.01  # 65 lesions: a real interval, not a point
    lo, hi = ev["per_class"]["NV"]["sensitivity"]["ci"]
    assert lo <= ev["per_class"]["NV"]["sensitivity"]["value"] <= hi
    assert ev["n_lesions"] == 65 and ev["settings"]["bootstrap"] == 300


def test_served_answers_are_the_predictors_answers(evaluated, predictor, trained) -> None:
    """forward_batches + assemble must give what iter_predict (the served pipeline) gives."""
    from skin_core.data.tables import load_dataset

    ev, out = evaluated
    df = _predictions(out)
    table = load_dataset(f"isic2019:{trained['heldout']}").table
    results = list(predictor.iter_predict(table["path"].tolist(), metadata=table, batch_size=16))
    assert [r.image_id for r in results] == df["image_id"].tolist()
    assert [r.label for r in results] == df["pred"].tolist()
    np.testing.assert_allclose([r.meta_probs["MEL"] for r in results], df["prob_MEL"],
                               atol=1e-6)
    assert [r.referral["refer"] for r in results] == df["refer"].tolist()
    assert ["|".join(r.prediction_set) for r in results] == df["prediction_set"].tolist()
    assert {r.meta_source for r in results} == {"with_metadata"}


def test_withheld_metadata_table(evaluated, predictor, trained) -> None:
    ev, out = evaluated
    rows = {r["drop"]: r for r in ev["missing_metadata"]}
    assert list(rows) == ["none", "age", "sex", "site", "all"]
    assert rows["all"]["withheld"] == ["age_approx", "sex", "anatom_site_general"]
    assert rows["none"]["balanced_accuracy"] == ev["balanced_accuracy"]  # the same resamples
    ens = {json.dumps(r["ensemble_balanced_accuracy"]) for r in rows.values()}
    assert len(ens) == 1  # the ensemble never sees metadata
    df = _predictions(out)
    for v in ("age", "sex", "site", "all"):
        r = rows[v]
        assert r["balanced_accuracy"]["value"] == pytest.approx(
            balanced_accuracy_score(df["label"], df[f"pred_drop_{v}"]))
        assert r["difference"]["value"] == pytest.approx(
            r["balanced_accuracy"]["value"] - r["ensemble_balanced_accuracy"]["value"])
    # "all" is the served pipeline without any metadata
    sample = df["image_id"].tolist()[:16]
    paths = [str(trained["heldout"] / "ISIC_2019_Training_Input" / f"{i}.jpg") for i in sample]
    bare = [r.label for r in predictor.iter_predict(paths, batch_size=16)]
    assert bare == df["pred_drop_all"].tolist()[:16]


def test_stability_record(evaluated) -> None:
    ev, _ = evaluated
    s = ev["stability"]
    assert s["n_images"] == 12 and s["n_available"] == 120 and s["n_failed"] == 0
    assert set(s["changed"]) == {"reencode", "hflip", "rot90", "crop90", "any"}
    for name, f in s["changed"].items():
        assert 0.0 <= f["value"] <= 1.0 and f["n_changed"] == round(f["value"] * 12), name
    worst = max(s["changed"][t]["n_changed"] for t in ("hflip", "rot90", "crop90"))
    assert worst <= s["changed"]["any"]["n_changed"] <= sum(
        s["changed"][t]["n_changed"] for t in ("hflip", "rot90", "crop90"))


def test_stability_counts_changes_against_the_original_labels() -> None:
    from skin_core.evaluation.stability import stability_record

    orig = ["A", "B", "C", "D"]
    copies = {"reencode": ["A", "B", "C", "D"], "hflip": ["A", "X", "C", "D"],
              "rot90": ["A", "B", None, "D"], "crop90": ["Y", "B", "C", "D"]}
    s = stability_record(orig, copies, np.arange(4), n_resamples=50, seed=0, n_available=9)
    c = s["changed"]
    assert c["reencode"]["value"] == 0.0 and c["hflip"]["value"] == 0.25
    assert c["rot90"]["value"] == 0.0 and s["n_failed"] == 1  # the failed copy is left out
    assert c["any"]["value"] == pytest.approx(2 / 3)  # image C failed under rot90


def test_transforms() -> None:
    from skin_core.evaluation.stability import transform

    rgb = np.arange(40 * 30 * 3, dtype=np.uint8).reshape(40, 30, 3)
    np.testing.assert_array_equal(transform(rgb, "hflip"), rgb[:, ::-1])
    np.testing.assert_array_equal(transform(rgb, "rot90"), np.rot90(rgb))
    crop = transform(rgb, "crop90")
    assert crop.shape == (36, 27, 3)
    np.testing.assert_array_equal(crop, rgb[2:38, 1:28])
    assert transform(rgb, "reencode") is rgb
    with pytest.raises(ValueError, match="Unknown transform"):
        transform(rgb, "blur")


def test_subgroups(evaluated) -> None:
    ev, out = evaluated
    df = _predictions(out)
    sub = ev["subgroups"]
    assert list(sub) == ["age", "sex", "anatom_site_general"]  # no source / dx_type here
    for col, groups in sub.items():
        assert sum(g["n_images"] for g in groups) == 120, col
        for g in groups:
            assert g["small"] == (g["n_images"] < 30)
    female = next(g for g in sub["sex"] if g["group"] == "female")
    rows = df[df["sex"] == "female"]
    assert female["n_images"] == len(rows)
    assert female["balanced_accuracy"]["value"] == pytest.approx(
        balanced_accuracy_score(rows["label"], rows["pred"]))
    assert [g["group"] for g in sub["age"]] == [
        b for b in ("<30", "30-44", "45-59", "60-74", ">=75", "missing")
        if b in {g["group"] for g in sub["age"]}]


def test_outputs_and_html(evaluated) -> None:
    ev, out = evaluated
    assert {p.name for p in out.iterdir()} == {"evaluation.json", "predictions.csv",
                                               "evaluation.html"}
    doc = json.loads((out / "evaluation.json").read_text())
    for key in (*HEADLINE, "melanoma_sensitivity_at_specificity", "per_class", "subgroups",
                "stability", "ensemble", "missing_metadata", "n_images", "n_lesions", "bundle",
                "dataset"):
        assert key in doc, key
    assert doc["bundle"]["path"] == str(Path(ev["bundle"]["path"]))
    assert len(doc["bundle"]["manifest_sha256"]) == 64
    assert doc["dataset"]["labels"]["NV"] == ev["per_class"]["NV"]["n"]
    page = (out / "evaluation.html").read_text()
    for div in ("reliability", "per-class", "subgroups"):
        assert f'id="{div}"' in page, div
    assert page.count("Plotly.newPlot(") == 3
    assert page.count("plotly.js v") == 1  # the library embedded once: opens offline
    assert "<script src=" not in page and "<script charset=\"utf-8\" src=" not in page


def test_class_map_and_its_refusal(trained, predictor, tmp_path) -> None:
    """HAM10000 layout (lower-case codes, akiec, dx_type): refused without a class map, then
    mapped case-insensitively with akiec=AK; dx_type becomes a subgroup."""
    from skin_core.evaluation import evaluate

    ham = _ham_layout(trained["heldout"], tmp_path / "ham")
    with pytest.raises(ConfigError) as err:
        evaluate(predictor, f"ham10000:{ham}", tmp_path / "refused", stability=0)
    msg = str(err.value)
    assert msg == ("The dataset label akiec is not among the bundle's classes (MEL, NV, BCC, "
                   "AK, BKL, DF, VASC, SCC); map it onto one with --class-map (e.g. "
                   "--class-map akiec=CLASS).")
    assert not (tmp_path / "refused").exists()
    ev = evaluate(predictor, f"ham10000:{ham}", tmp_path / "mapped", class_map="AKIEC=ak",
                  n_resamples=50, stability=0, workers=1)
    assert ev["dataset"]["class_map"] == {"akiec": "AK"}
    df = _predictions(tmp_path / "mapped")
    assert set(df.loc[df["dataset_label"] == "akiec", "label"]) == {"AK"}
    assert set(df.loc[df["dataset_label"] == "nv", "label"]) == {"NV"}
    groups = {g["group"]: g["n_images"] for g in ev["subgroups"]["dx_type"]}
    assert groups == {"consensus": 30, "follow_up": 30, "histo": 60}
    assert ev["stability"] is None


@pytest.mark.parametrize("cmap,match", [
    ("akiec", "must look like DATASET_LABEL=BUNDLE_CLASS"),
    ("akiec=XYZ", "target 'XYZ'"),
    ("akeic=AK", "not a label of the dataset"),
])
def test_bad_class_maps(cmap, match) -> None:
    from skin_core.evaluation import resolve_labels

    with pytest.raises(ConfigError, match=match):
        resolve_labels(["akiec", "nv"], CLASSES, cmap)


def test_limit_is_a_seeded_sample_and_options_are_checked(trained, predictor, tmp_path) -> None:
    from skin_core.evaluation import evaluate

    spec = f"isic2019:{trained['heldout']}"
    a = evaluate(predictor, spec, tmp_path / "a", limit=20, n_resamples=0, stability=0, seed=4)
    b = evaluate(predictor, spec, tmp_path / "b", limit=20, n_resamples=0, stability=0, seed=4)
    ids = _predictions(tmp_path / "a")["image_id"]
    assert len(ids) == 20 and ids.tolist() == _predictions(tmp_path / "b")["image_id"].tolist()
    assert a["balanced_accuracy"] == b["balanced_accuracy"]
    assert a["balanced_accuracy"]["ci"] == [None, None]  # --bootstrap 0
    with pytest.raises(ConfigError, match="drop-metadata"):
        evaluate(predictor, spec, tmp_path / "c", drop_metadata="weight")
    with pytest.raises(ConfigError, match="--limit must be at least 1"):
        evaluate(predictor, spec, tmp_path / "c", limit=0)


def test_cli(trained, tmp_path, capsys) -> None:
    from skin_core.cli import invoke, main

    args = ["evaluate", "--bundle", str(trained["bundle"]), "--dataset",
            f"isic2019:{trained['heldout']}", "--out", str(tmp_path / "cli"), "--limit", "30",
            "--bootstrap", "50", "--stability", "4", "--drop-metadata", "sex",
            "--device", "cpu", "--workers", "1"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Balanced accuracy" in text and "MEL sensitivity at 90% specificity" in text
    doc = invoke(args)
    assert doc["n_images"] == 30 and doc["settings"]["served_metadata"] == "sex"
    assert [r["drop"] for r in doc["missing_metadata"]] == ["sex"]
    assert Path(doc["files"]["evaluation_json"]).is_file()
    ham = _ham_layout(trained["heldout"], tmp_path / "ham")
    assert main(["evaluate", "--bundle", str(trained["bundle"]), "--dataset",
                 f"ham10000:{ham}", "--out", str(tmp_path / "x")]) == 2
    assert "--class-map" in capsys.readouterr().err


def test_find_evaluations_filters_by_bundle(evaluated, trained, tmp_path) -> None:
    from skin_core.evaluation import find_evaluations

    _, out = evaluated
    copy = tmp_path / "elsewhere" / "run1"
    shutil.copytree(out, copy)
    doc = json.loads((copy / "evaluation.json").read_text())
    doc["bundle"]["path"] = "/somewhere/else"
    (tmp_path / "elsewhere" / "run2").mkdir()
    (tmp_path / "elsewhere" / "run2" / "evaluation.json").write_text(json.dumps(doc))
    found = find_evaluations([tmp_path / "elsewhere"], bundle=trained["bundle"])
    assert found == [copy / "evaluation.json"]
    assert len(find_evaluations([tmp_path / "elsewhere"])) == 2


@pytest.mark.realdata
def test_real_ham10000_sample(ham10000_dir, predictor, tmp_path) -> None:
    from skin_core.evaluation import evaluate

    ev = evaluate(predictor, f"ham10000:{ham10000_dir}", tmp_path, class_map="akiec=AK",
                  limit=300, n_resamples=200, stability=20, workers=1)
    assert ev["n_images"] == 300 and ev["n_failed"] == 0
    assert {g["group"] for g in ev["subgroups"]["dx_type"]} <= {
        "histo", "follow_up", "consensus", "confocal"}
    assert ev["n_lesions"] < 300  # HAM10000 lesions have several images
    assert ev["stability"]["n_images"] == 20


def _ham_layout(heldout: Path, root: Path) -> Path:
    """The held-out demo rewritten in the HAM10000 layout (dx codes, dx_type, localization)."""
    gt = pd.read_csv(heldout / "ISIC_2019_Training_GroundTruth.csv")
    md = pd.read_csv(heldout / "ISIC_2019_Training_Metadata.csv")
    label = gt[list(CLASSES)].idxmax(axis=1).map(
        {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AK": "akiec", "SCC": "akiec", "BKL": "bkl",
         "DF": "df", "VASC": "vasc"})
    (root / "images").mkdir(parents=True)
    for image in gt["image"]:
        shutil.copy(heldout / "ISIC_2019_Training_Input" / f"{image}.jpg", root / "images")
    types = ["histo", "follow_up", "histo", "consensus"]
    pd.DataFrame({"lesion_id": md["lesion_id"], "image_id": gt["image"], "dx": label,
                  "dx_type": [types[i % 4] for i in range(len(gt))], "age": md["age_approx"],
                  "sex": md["sex"], "localization": "back"}).to_csv(
        root / "HAM10000_metadata.csv", index=False)
    return root


def test_app_runner_helpers(evaluated, trained, tmp_path) -> None:
    from types import SimpleNamespace

    from skin_core.cli import build_parser
    from skin_core.evaluation.runner import (
        evaluation_args,
        headline_metrics,
        job_name,
        last_evaluation,
        new_evaluation_dir,
    )

    ev, out = evaluated
    args = evaluation_args(trained["bundle"], " isic2019:data/x ", tmp_path / "o",
                           class_map=" akiec=AK ", limit=50, drop_metadata="all",
                           device="cpu")
    parsed = build_parser().parse_args(args)  # the options the verb really has
    assert (parsed.dataset, parsed.class_map, parsed.limit, parsed.drop_metadata,
            parsed.bootstrap, parsed.stability) == ("isic2019:data/x", "akiec=AK", 50, "all",
                                                   1000, 200)
    with pytest.raises(ConfigError, match="Enter a dataset spec"):
        evaluation_args(trained["bundle"], "  ", tmp_path / "o")
    with pytest.raises(ConfigError, match="is not a model bundle"):
        evaluation_args(tmp_path, "isic2019:x", tmp_path / "o")
    ws = SimpleNamespace(root=tmp_path)
    target = new_evaluation_dir(ws, trained["bundle"])
    assert target.parent == tmp_path / "evaluations" and target.name.startswith("bundle-")
    assert job_name(trained["bundle"]) == "evaluate bundle"
    assert last_evaluation(ws, trained["bundle"]) is None
    shutil.copytree(out, target)
    path, doc = last_evaluation(ws, trained["bundle"])
    assert path == target / "evaluation.json" and doc["n_images"] == 120
    assert last_evaluation(ws, tmp_path / "another-bundle") is None
    tiles = {label: (value, ci) for label, value, ci in headline_metrics(doc)}
    lo, hi = doc["balanced_accuracy"]["ci"]
    assert tiles["Balanced accuracy"] == (f"{doc['balanced_accuracy']['value']:.3f}",
                                          f"95% CI {lo:.3f}–{hi:.3f}")
    assert "MEL sensitivity at 80% specificity" in tiles
