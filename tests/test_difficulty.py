"""Tests of skin_core.analysis.difficulty and the ``skin-core difficulty`` verb."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from skin_core.analysis.difficulty import (
    DIFFICULTY_COLUMNS,
    compute_difficulty,
    error_consistency,
    find_difficult_images,
    ground_truth_check,
    model_errors,
    oof_from_frame,
    rank_images,
    read_oof,
)
from skin_core.errors import ConfigError, DataError

CLASSES = ("MEL", "NV", "BCC")


def _long(labels, pred_probs, *, models=None, classes=CLASSES, ids=None, arch=None):
    """Long OOF frame (DESIGN.md) from labels (N,) and pred_probs (M, N, K)."""
    pred_probs = np.asarray(pred_probs, dtype=float)
    n_models, n, _ = pred_probs.shape
    models = models or [f"arch{j}@s0" for j in range(n_models)]
    ids = ids or [f"ISIC_{i:07d}" for i in range(n)]
    frames = []
    for j, name in enumerate(models):
        d = pd.DataFrame(pred_probs[j], columns=[f"prob_{c}" for c in classes])
        d.insert(0, "image_id", ids)
        d.insert(1, "model", name)
        d.insert(2, "arch", arch[j] if arch else name.split("@")[0])
        d.insert(3, "fold", np.arange(n) % 5)
        d.insert(4, "label", np.asarray(classes, dtype=object)[np.asarray(labels)])
        frames.append(d)
    return pd.concat(frames, ignore_index=True)


def _random_study(seed=0, n=60, n_models=3, k=3):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n_models, n, k))
    logits[:, np.arange(n), labels] += 1.5
    p = np.exp(logits)
    return labels, p / p.sum(axis=2, keepdims=True)


# ---------------------------------------------------------------------------------- read_oof


def test_read_oof_round_trips_arrays(tmp_path):
    labels, probs = _random_study()
    path = tmp_path / "oof.csv"
    _long(labels, probs).sample(frac=1.0, random_state=0).to_csv(path, index=False)
    oof = read_oof(path)
    assert oof.classes == CLASSES
    assert set(oof.models) == {"arch0@s0", "arch1@s0", "arch2@s0"}
    assert oof.pred_probs.shape == (3, 60, 3)
    order = np.argsort(oof.image_ids)
    m_order = [oof.models.index(f"arch{j}@s0") for j in range(3)]
    np.testing.assert_array_equal(oof.labels[order], labels)
    np.testing.assert_allclose(oof.pred_probs[m_order][:, order], probs, rtol=1e-12)
    assert oof.n_dropped_images == 0


def test_read_oof_by_arch_pools_seed_repeats_by_mean():
    labels, probs = _random_study(n_models=4)
    df = _long(labels, probs, models=["a@s0", "a@s1", "b@s0", "b@s1"])
    oof = oof_from_frame(df, by="arch")
    assert oof.models == ("a", "b")
    assert oof.members == {"a": ("a@s0", "a@s1"), "b": ("b@s0", "b@s1")}
    np.testing.assert_allclose(oof.pred_probs[0], probs[:2].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(oof.pred_probs[1], probs[2:].mean(axis=0), rtol=1e-12)
    by_model = oof_from_frame(df)
    assert by_model.models == ("a@s0", "a@s1", "b@s0", "b@s1")


def test_read_oof_duplicates_error_or_mean():
    labels, probs = _random_study(n=4, n_models=2)
    df = _long(labels, probs)
    twin = df.iloc[[1]].copy()
    pr = [c for c in df.columns if c.startswith("prob_")]
    twin[pr] = [[1.0, 0.0, 0.0]]
    df2 = pd.concat([df, twin], ignore_index=True)
    with pytest.raises(DataError, match=r"line 10: image_id ISIC_0000001 has a second row for "
                                        r"model arch0@s0 .*on_duplicate='mean'"):
        oof_from_frame(df2)
    oof = oof_from_frame(df2, on_duplicate="mean")
    want = (probs[0, 1] + np.array([1.0, 0.0, 0.0])) / 2
    np.testing.assert_allclose(oof.pred_probs[0, 1], want)


def test_missing_models_for_some_images_is_a_clear_error_and_drop_option():
    labels, probs = _random_study(n=10, n_models=3)
    df = _long(labels, probs)
    df = df[~((df["model"] == "arch1@s0") & df["image_id"].isin(["ISIC_0000002",
                                                                  "ISIC_0000005"]))]
    df = df[~((df["model"] == "arch2@s0") & (df["image_id"] == "ISIC_0000005"))]
    with pytest.raises(DataError) as exc:
        oof_from_frame(df, source="oof.csv")
    msg = str(exc.value)
    assert "2 of 10 images lack predictions from some of the 3 models" in msg
    assert "arch1@s0: 2, arch2@s0: 1" in msg
    assert "on_missing='drop'" in msg and "8 images all models scored" in msg
    oof = oof_from_frame(df, on_missing="drop")
    assert oof.n_images == 8 and oof.n_dropped_images == 2
    assert "ISIC_0000005" not in set(oof.image_ids)


def test_probabilities_not_summing_to_one_name_line_image_and_model(tmp_path):
    labels, probs = _random_study(n=5, n_models=2)
    df = _long(labels, probs)
    df.loc[6, "prob_MEL"] += 0.2  # row of image 1, second model
    path = tmp_path / "oof.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match=rf"{path} line 8 \(image_id ISIC_0000001, model "
                                        r"arch1@s0\): probabilities sum to 1\.2.*renormalize"):
        read_oof(path)
    oof = read_oof(path, renormalize=True)
    np.testing.assert_allclose(oof.pred_probs.sum(axis=2), 1.0)
    row = df.loc[6, ["prob_MEL", "prob_NV", "prob_BCC"]].to_numpy(dtype=float)
    np.testing.assert_allclose(oof.pred_probs[1, 1], row / row.sum())


def test_labels_outside_class_list_are_a_clear_error(tmp_path):
    labels, probs = _random_study(n=5, n_models=2)
    df = _long(labels, probs)
    df.loc[3, "label"] = "UNK"
    path = tmp_path / "oof.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"line 5 \(image_id ISIC_0000003\): label 'UNK' is not "
                                        r"one of the classes MEL, NV, BCC"):
        read_oof(path)


@pytest.mark.parametrize(("edit", "pattern"), [
    (lambda d: d.drop(columns=["label"]), r"lacks column\(s\) label"),
    (lambda d: d.drop(columns=[c for c in d.columns if c.startswith("prob_")]),
     "no prob_<CLASS> columns"),
    (lambda d: d.assign(prob_MEL=d["prob_MEL"].astype(object).where(d.index != 2, "abc")),
     r"line 4 .*prob_MEL holds 'abc'"),
    (lambda d: d.assign(prob_MEL=d["prob_MEL"].where(d.index != 1, -0.5)),
     r"line 3 .*prob_MEL = -0.5 is outside \[0, 1\].*not logits"),
    (lambda d: d.assign(label=d["label"].where(~((d.model == "arch1@s0") & (d.index == 6)),
                                                "DF")),
     "is not one of the classes"),
])
def test_malformed_tables_are_clear_errors(edit, pattern):
    labels, probs = _random_study(n=5, n_models=2)
    with pytest.raises(DataError, match=pattern):
        oof_from_frame(edit(_long(labels, probs)))


def test_conflicting_labels_and_class_list_checks(tmp_path):
    labels, probs = _random_study(n=5, n_models=2)
    df = _long(labels, probs)
    other = {"MEL": "NV", "NV": "BCC", "BCC": "MEL"}
    df.loc[7, "label"] = other[df.loc[7, "label"]]
    with pytest.raises(DataError, match=r"line 9 \(image_id ISIC_0000002, model arch1@s0\): "
                                        r"label .* differs"):
        oof_from_frame(df)
    good = _long(labels, probs)
    with pytest.raises(DataError, match=r"lacks probability column\(s\) prob_DF"):
        oof_from_frame(good, classes=["MEL", "NV", "BCC", "DF"])
    with pytest.raises(DataError, match=r"prob_BCC for classes outside MEL, NV"):
        oof_from_frame(good, classes=["MEL", "NV"])
    oof = oof_from_frame(good, classes=["BCC", "NV", "MEL"])  # reorders the columns
    np.testing.assert_allclose(oof.pred_probs[0, :, 0], probs[0, :, 2])
    with pytest.raises(DataError, match="does not exist"):
        read_oof(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="cannot be read as CSV"):
        read_oof(tmp_path / "empty.csv")
    with pytest.raises(ConfigError, match=r"'by' parameter of read_oof must be one of"):
        oof_from_frame(good, by="seed")


# ---------------------------------------------------------------------- functional API


def _hand_made():
    # 4 images, 3 models, classes MEL NV BCC; labels MEL MEL NV BCC
    labels = np.array([0, 0, 1, 2])
    p = np.array([
        # model 0
        [[0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4]],
        # model 1
        [[0.2, 0.1, 0.7], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]],
        # model 2
        [[0.3, 0.6, 0.1], [0.8, 0.1, 0.1], [0.3, 0.3, 0.4], [0.2, 0.2, 0.6]],
    ])
    return labels, p


def test_find_difficult_images_all_and_min_wrong():
    labels, p = _hand_made()
    # wrong counts: image0 3, image1 0, image2 1, image3 1
    assert find_difficult_images(labels, p).tolist() == [True, False, False, False]
    assert find_difficult_images(labels, p, min_wrong=1).tolist() == [True, False, True, True]
    with pytest.raises(ConfigError, match="from 1 to 3"):
        find_difficult_images(labels, p, min_wrong=0)
    assert model_errors(labels, p).sum(axis=1).tolist() == [2, 1, 2]


@pytest.mark.filterwarnings("ignore:May not flag all label issues:UserWarning")
def test_compute_difficulty_table_values():
    labels, p = _hand_made()
    oof = oof_from_frame(_long(labels, p, models=["m0", "m1", "m2"]))
    t = compute_difficulty(oof)
    assert tuple(t.columns[: len(DIFFICULTY_COLUMNS)]) == DIFFICULTY_COLUMNS
    assert list(t.columns[len(DIFFICULTY_COLUMNS):]) == ["likely_mislabeled", "pred_m0",
                                                         "pred_m1", "pred_m2"]
    assert t["n_wrong"].tolist() == [3, 0, 1, 1]
    assert t["n_models"].tolist() == [3, 3, 3, 3]
    assert t["group"].tolist() == ["difficult", "control", "other", "other"]
    np.testing.assert_allclose(t["wrong_frac"], [1.0, 0.0, 1 / 3, 1 / 3])
    np.testing.assert_allclose(t["mean_true_prob"], [0.2, 0.7, 0.6, 0.6])
    # image0 votes NV, BCC, NV -> NV; image3 votes MEL, BCC, BCC -> BCC
    # image2 votes NV, NV, BCC -> NV
    assert t["majority_pred"].tolist() == ["NV", "MEL", "NV", "BCC"]
    assert t["pred_m1"].tolist() == ["BCC", "MEL", "NV", "BCC"]
    assert t["label"].tolist() == ["MEL", "MEL", "NV", "BCC"]
    assert t["label_quality"].between(0, 1).all()
    assert t["label_quality"].idxmin() == 0
    t2 = compute_difficulty(oof, min_wrong=1, label_issues=False)
    assert t2["group"].tolist() == ["difficult", "control", "difficult", "difficult"]
    assert t2["label_quality"].isna().all()


def test_majority_pred_tie_goes_to_highest_mean_probability():
    labels = np.array([0])
    p = np.array([[[0.2, 0.5, 0.3]], [[0.2, 0.25, 0.55]]])  # votes NV, BCC; mean BCC higher
    t = compute_difficulty(oof_from_frame(_long(labels, p)), label_issues=False)
    assert t["majority_pred"].tolist() == ["BCC"]


def test_rank_images_methods():
    labels, p = _hand_made()
    assert rank_images(labels, p).tolist() == [0, 2, 3, 1]  # mean true prob .2 .6 .6 .7
    assert rank_images(labels, p, method="wrong_frac").tolist() == [0, 2, 3, 1]
    lq = rank_images(labels, p, method="label_quality")
    assert lq[0] == 0 and sorted(lq.tolist()) == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match=r"'method' parameter of rank_images must be one of "
                                          r".*Got 'confidnce' instead"):
        rank_images(labels, p, method="confidnce")


def test_error_consistency_matches_sklearn_kappa():
    labels, p = _random_study(seed=3, n=200, n_models=3)
    kappa = error_consistency(labels, p, models=["a", "b", "c"])
    errors = model_errors(labels, p)
    for i, a in enumerate("abc"):
        for j, b in enumerate("abc"):
            want = 1.0 if i == j else cohen_kappa_score(errors[i], errors[j])
            assert kappa.loc[a, b] == pytest.approx(want, abs=1e-12)
    # identical errors -> 1; a perfect model -> 0 against others (as sklearn), and undefined
    # (NaN) against another perfect model
    perfect = np.eye(3)[labels][None]
    k2 = error_consistency(labels, np.concatenate([p[:1], p[:1], perfect, perfect]))
    assert k2.iloc[0, 1] == pytest.approx(1.0)
    assert k2.iloc[0, 2] == pytest.approx(cohen_kappa_score(errors[0], np.zeros(200)))
    assert k2.iloc[0, 2] == 0.0
    assert np.isnan(k2.iloc[2, 3])


def test_cleanlab_scores_flag_flipped_labels():
    rng = np.random.default_rng(0)
    n, k = 300, 3
    true = rng.integers(0, k, n)
    flipped = rng.choice(n, 15, replace=False)
    given = true.copy()
    given[flipped] = (true[flipped] + 1) % k
    probs = []
    for _ in range(3):  # models confident in the TRUE class
        logits = rng.normal(scale=0.5, size=(n, k))
        logits[np.arange(n), true] += 3.0
        q = np.exp(logits)
        probs.append(q / q.sum(axis=1, keepdims=True))
    t = compute_difficulty(oof_from_frame(_long(given, np.stack(probs))))
    is_flipped = np.zeros(n, dtype=bool)
    is_flipped[flipped] = True
    lq = t["label_quality"].to_numpy()
    assert lq[is_flipped].max() < np.median(lq[~is_flipped])
    assert set(np.argsort(lq)[:15]) == set(flipped)
    likely = t["likely_mislabeled"].to_numpy()
    assert likely[is_flipped].mean() >= 0.7 and likely[~is_flipped].mean() <= 0.02


# ------------------------------------------------------------------ ground truth check


def test_ground_truth_check_precision_recall_enrichment():
    ids = [f"i{j}" for j in range(10)]
    diff = pd.DataFrame({
        "image_id": ids,
        "group": ["difficult"] * 4 + ["control"] * 4 + ["other"] * 2,
        "likely_mislabeled": [True, False, False, False, True] + [False] * 5,
    })
    truth = pd.DataFrame({
        "image_id": ids + ["extra"],
        "is_ambiguous": [True, True, False, False, True] + [False] * 6,
        "is_mislabeled": [False, False, True, False, False, False, False, False, False, True,
                          False],
        "is_blurred": ["True", "False", "False", "False"] * 2 + ["False"] * 3,
    })
    out = ground_truth_check(diff, truth)
    assert out["n_images"] == 10 and out["n_unmatched"] == 0 and out["n_difficult"] == 4
    amb = out["is_ambiguous"]
    assert (amb["n_flagged"], amb["n_both"]) == (3, 2)
    assert amb["precision"] == pytest.approx(0.5)
    assert amb["recall"] == pytest.approx(2 / 3)
    assert amb["enrichment"] == pytest.approx(0.5 / 0.3)
    mis = out["is_mislabeled"]
    assert mis["precision"] == pytest.approx(0.25) and mis["recall"] == pytest.approx(0.5)
    blur = out["is_blurred"]
    assert blur["n_flagged"] == 2 and blur["recall"] == pytest.approx(0.5)
    either = out["ambiguous_or_mislabeled"]
    assert either["n_both"] == 3 and either["recall"] == pytest.approx(0.6)
    cl = out["likely_mislabeled_vs_is_mislabeled"]
    assert cl["n_selected"] == 2 and cl["n_both"] == 0
    with pytest.raises(DataError, match="lacks column"):
        ground_truth_check(diff.drop(columns=["group"]), truth)


# --------------------------------------------------------------------------------- CLI


@pytest.fixture()
def cli(monkeypatch):
    """``skin_core.cli.main`` with only this verb registered (others may be in progress)."""
    import skin_core.cli as cli_mod

    monkeypatch.setattr(cli_mod, "COMMAND_MODULES", ("difficulty",))
    return cli_mod.main


def _correlated_oof(tmp_path, n=120, n_models=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    hard = rng.random(n) < 0.2
    probs = []
    for _ in range(n_models):
        logits = rng.normal(scale=0.3, size=(n, 3))
        target = np.where(hard, (labels + 1) % 3, labels)
        target = np.where(rng.random(n) < 0.05, rng.integers(0, 3, n), target)
        logits[np.arange(n), target] += 2.0
        q = np.exp(logits)
        probs.append(q / q.sum(axis=1, keepdims=True))
    path = tmp_path / "oof.csv"
    _long(labels, np.stack(probs)).to_csv(path, index=False)
    return path


def test_cli_writes_difficulty_and_significance(tmp_path, cli, capsys):
    oof = _correlated_oof(tmp_path)
    out = tmp_path / "out"
    rc = cli(["difficulty", "--oof", str(oof), "--out", str(out), "--permutations", "500",
              "--min-wrong", "2", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    table = pd.read_csv(out / "difficulty.csv")
    sig = json.loads((out / "significance.json").read_text())
    assert list(table.columns[:9]) == list(DIFFICULTY_COLUMNS)
    assert len(table) == 120
    assert summary["groups"]["difficult"] == int((table["group"] == "difficult").sum())
    assert summary["groups"]["difficult"] == int((table["n_wrong"] >= 2).sum())
    assert sig["observed_all_wrong"] == int((table["n_wrong"] == 3).sum())
    assert sig["n_permutations"] == 500 and sig["seed"] == 0 and sig["min_wrong"] == 2
    assert sig["p_value_exact"] < 1e-6 and sig["p_value_permutation"] == pytest.approx(1 / 501)
    assert set(summary["kappa"]) == {"arch0@s0", "arch1@s0", "arch2@s0"}
    assert summary["kappa"]["arch0@s0"]["arch1@s0"] > 0.3
    assert not list(out.glob(".*.tmp"))


def test_cli_ground_truth_option(tmp_path, cli, capsys):
    oof = _correlated_oof(tmp_path, n=60)
    ids = [f"ISIC_{i:07d}" for i in range(60)]
    truth = pd.DataFrame({"image_id": ids, "is_ambiguous": np.arange(60) % 3 == 0,
                          "is_mislabeled": np.arange(60) % 7 == 0, "is_blurred": False})
    truth.to_csv(tmp_path / "generation_truth.csv", index=False)
    out = tmp_path / "out"
    rc = cli(["difficulty", "--oof", str(oof), "--out", str(out), "--permutations", "50",
              "--truth", str(tmp_path / "generation_truth.csv"), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "ground_truth_check.json").read_text())
    table = pd.read_csv(out / "difficulty.csv")
    assert saved["n_images"] == 60
    assert saved["n_difficult"] == int((table["group"] == "difficult").sum())
    assert saved["is_ambiguous"]["n_flagged"] == 20
    assert summary["ground_truth_check"]["is_mislabeled"]["n_flagged"] == 9
    rc = cli(["difficulty", "--oof", str(oof), "--out", str(out), "--truth",
              str(tmp_path / "missing.csv")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_cli_bad_input_exits_2_with_one_sentence(tmp_path, cli, capsys):
    oof = _correlated_oof(tmp_path)
    df = pd.read_csv(oof)
    df = df[~((df["model"] == "arch2@s0") & (df["image_id"] == "ISIC_0000007"))]
    df.to_csv(oof, index=False)
    rc = cli(["difficulty", "--oof", str(oof), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "1 of 120 images lack predictions" in err and "--common-images" in err
    assert not (tmp_path / "o" / "difficulty.csv").exists()
    rc = cli(["difficulty", "--oof", str(oof), "--out", str(tmp_path / "o"),
              "--common-images", "--permutations", "100"])
    assert rc == 0
    assert len(pd.read_csv(tmp_path / "o" / "difficulty.csv")) == 119


@pytest.mark.slow
def test_cli_quality_comparison(tmp_path, cli):
    pytest.importorskip("skin_core.analysis.quality")
    oof = _correlated_oof(tmp_path, n=150)
    rng = np.random.default_rng(1)
    ids = [f"ISIC_{i:07d}" for i in range(150)]
    quality = pd.DataFrame({"image_id": ids, "blur_score": rng.random(150),
                            "brightness": rng.random(150), "contrast": rng.random(150),
                            "entropy": rng.random(150), "is_blurry": False, "error": ""})
    qpath = tmp_path / "quality.csv"
    quality.to_csv(qpath, index=False)
    out = tmp_path / "out"
    rc = cli(["difficulty", "--oof", str(oof), "--out", str(out), "--permutations", "100",
              "--quality", str(qpath)])
    assert rc == 0
    result = json.loads((out / "quality_vs_difficulty.json").read_text())
    table = pd.read_csv(out / "difficulty.csv")
    assert result["n"]["difficult"] == int((table["group"] == "difficult").sum())
    assert "blur_score" in result["measures"]


def test_cli_quality_comparison_skipped_without_controls(tmp_path, cli, capsys):
    pytest.importorskip("skin_core.analysis.quality")
    oof = _correlated_oof(tmp_path, n=60)
    df = pd.read_csv(oof)
    # every model puts all its mass on a wrong class: no control image at all
    probs = [c for c in df.columns if c.startswith("prob_")]
    classes = [c[len("prob_"):] for c in probs]
    wrong = [classes[(classes.index(lbl) + 1) % len(classes)] for lbl in df["label"]]
    df[probs] = 0.0
    for i, c in enumerate(wrong):
        df.loc[df.index[i], f"prob_{c}"] = 1.0
    df.to_csv(oof, index=False)
    ids = sorted(df["image_id"].unique())
    qpath = tmp_path / "quality.csv"
    pd.DataFrame({"image_id": ids, "blur_score": np.linspace(0, 1, len(ids)),
                  "is_blurry": False, "error": ""}).to_csv(qpath, index=False)
    out = tmp_path / "out"
    rc = cli(["difficulty", "--oof", str(oof), "--out", str(out), "--permutations", "50",
              "--quality", str(qpath)])
    assert rc == 0
    assert "quality vs difficulty not computed" in capsys.readouterr().err
    result = json.loads((out / "quality_vs_difficulty.json").read_text())
    assert result["computed"] is False and "0 control" in result["reason"]
    assert (out / "difficulty.csv").is_file()


# ------------------------------------------------------------------------------ lesion ids


def _lesion_oof(tmp_path, n_lesions=60, seed=0, with_lesions=True):
    """3 models erring per lesion (1-3 images each) with a shared hard core of lesions."""
    rng = np.random.default_rng(seed)
    k = rng.integers(1, 4, n_lesions)
    lesion = np.repeat(np.arange(n_lesions), k)
    labels = (np.arange(n_lesions) % 3)[lesion]
    hard = (rng.random(n_lesions) < 0.25)[lesion]
    probs = []
    for _ in range(3):
        own = (rng.random(n_lesions) < 0.15)[lesion]
        target = np.where(hard | own, (labels + 1) % 3, labels)
        logits = rng.normal(scale=0.3, size=(lesion.size, 3))
        logits[np.arange(lesion.size), target] += 2.0
        q = np.exp(logits)
        probs.append(q / q.sum(axis=1, keepdims=True))
    df = _long(labels, np.stack(probs))
    lesion_ids = np.array([f"HAM_{v:04d}" for v in lesion], dtype=object)
    lesion_ids[::17] = None  # a few images without a lesion id
    if with_lesions:
        df["lesion_id"] = np.tile(lesion_ids, 3)
    path = tmp_path / "oof.csv"
    df.to_csv(path, index=False)
    return path, lesion_ids


def test_read_oof_reads_lesion_ids_and_refuses_two_per_image(tmp_path):
    path, lesion_ids = _lesion_oof(tmp_path)
    oof = read_oof(path)
    order = np.argsort(oof.image_ids)
    got = oof.lesion_ids[order]
    assert [g for g in got] == [v if v is not None else None for v in lesion_ids]
    table = compute_difficulty(oof, label_issues=False)
    assert table.columns.get_loc("lesion_id") == table.columns.get_loc("likely_mislabeled") + 1
    (tmp_path / "plain").mkdir()
    assert read_oof(_lesion_oof(tmp_path / "plain", with_lesions=False)[0]).lesion_ids is None
    df = pd.read_csv(path, dtype=str)
    df.loc[df.index[-1], "lesion_id"] = "HAM_9999"  # the last image's last row disagrees
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match="lesion_id 'HAM_9999' differs"):
        read_oof(path)


def test_cli_uses_lesion_level_tests_when_the_oof_has_lesion_ids(tmp_path, cli, capsys):
    path, _ = _lesion_oof(tmp_path)
    out = tmp_path / "out"
    rc = cli(["difficulty", "--oof", str(path), "--out", str(out), "--permutations", "300",
              "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    sig = json.loads((out / "significance.json").read_text())
    table = pd.read_csv(out / "difficulty.csv", dtype={"lesion_id": str})
    c = summary["clustering"]
    assert c == sig["clustering"] and c["unit"] == "lesion"
    assert c["source"] == f"lesion_id column of {path}"
    n_known = table["lesion_id"].dropna().nunique()
    assert c["n_clusters"] == n_known + int(table["lesion_id"].isna().sum())
    assert sig["method_permutation"].startswith("lesion-level permutation test")
    assert sig["image_level"]["p_value_exact"] <= sig["p_value_exact"]
    assert sig["p_value_permutation"] == pytest.approx(1 / 301)  # the hard lesions stand out
    assert {t["extra"]["unit"] for t in sig["tests"]} == {"lesion"}
    # --clusters image: the old image-level tests, said so
    rc = cli(["difficulty", "--oof", str(path), "--out", str(out), "--permutations", "100",
              "--clusters", "image"])
    assert rc == 0
    assert "tests at image level" in capsys.readouterr().out
    sig = json.loads((out / "significance.json").read_text())
    assert sig["clustering"] == {"unit": "image", "source": None}
    assert sig["method_exact"].startswith("image-level")


def test_cli_takes_lesion_ids_from_a_dataset(tmp_path, cli, capsys):
    path, lesion_ids = _lesion_oof(tmp_path, with_lesions=False)
    oof = pd.read_csv(path)
    first = oof.drop_duplicates("image_id")
    dataset = pd.DataFrame({"image_id": first["image_id"], "label": first["label"],
                            "lesion_id": lesion_ids})
    dataset.to_csv(tmp_path / "dataset.csv", index=False)
    out = tmp_path / "out"
    rc = cli(["difficulty", "--oof", str(path), "--out", str(out), "--permutations", "100",
              "--dataset", f"csv:{tmp_path / 'dataset.csv'}"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "tests at lesion level" in text and "lesion ids from dataset csv:" in text
    sig = json.loads((out / "significance.json").read_text())
    assert sig["clustering"]["unit"] == "lesion"
    assert sig["clustering"]["n_clusters"] == lesion_strata_count(lesion_ids)
    dataset.iloc[:-1].to_csv(tmp_path / "dataset.csv", index=False)
    rc = cli(["difficulty", "--oof", str(path), "--out", str(out), "--dataset",
              f"csv:{tmp_path / 'dataset.csv'}"])
    assert rc == 2 and "1 of" in capsys.readouterr().err
    rc = cli(["difficulty", "--oof", str(path), "--out", str(out), "--clusters", "lesion"])
    err = capsys.readouterr().err
    assert rc == 2 and "--clusters lesion needs lesion ids" in err


def lesion_strata_count(lesion_ids) -> int:
    known = [v for v in lesion_ids if v is not None]
    return len(set(known)) + (len(lesion_ids) - len(known))


@pytest.mark.slow
def test_cli_quality_comparison_is_lesion_clustered(tmp_path, cli):
    path, _ = _lesion_oof(tmp_path, n_lesions=150)
    ids = pd.read_csv(path)["image_id"].unique()
    rng = np.random.default_rng(3)
    quality = pd.DataFrame({"image_id": ids, "blur_score": rng.random(ids.size),
                            "brightness": rng.random(ids.size), "error": ""})
    quality.to_csv(tmp_path / "quality.csv", index=False)
    out = tmp_path / "out"
    rc = cli(["difficulty", "--oof", str(path), "--out", str(out), "--permutations", "100",
              "--quality", str(tmp_path / "quality.csv")])
    assert rc == 0
    result = json.loads((out / "quality_vs_difficulty.json").read_text())
    assert result["clustering"]["unit"] == "lesion"
    blur = result["measures"]["blur_score"]
    assert "Obuchowski" in blur["mann_whitney"]["method"]
    assert "cluster bootstrap" in blur["cliffs_delta"]["method"]
    assert "clustered by lesion" in result["logistic"]["method"]


@pytest.mark.realdata
def test_cli_real_ham10000_oof_with_lesions_from_the_dataset(ham10000_dir, tmp_path, cli, capsys):
    """The real 5-fold MobileNetV2 OOF; lesion ids joined from the real HAM10000 metadata."""
    import os
    from pathlib import Path

    oof = Path(os.environ.get("SKIN_CORE_HAM10000_OOF", ham10000_dir.parent / "ham10000-oof"
                              / "oof.csv"))
    if not oof.is_file():
        pytest.skip("SKIN_CORE_HAM10000_OOF is not set (real HAM10000 OOF not available)")
    out = tmp_path / "out"
    rc = cli(["difficulty", "--oof", str(oof), "--out", str(out), "--permutations", "200",
              "--dataset", f"ham10000:{ham10000_dir}", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    c = summary["clustering"]
    assert c["unit"] == "lesion" and c["n_clusters"] == 7470  # HAM10000: 7,470 lesions
    assert c["n_images_in_multi_image_lesions"] == 4501
    table = pd.read_csv(out / "difficulty.csv")
    assert table["lesion_id"].notna().all() and len(table) == 10015
