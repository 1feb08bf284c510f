"""Tests of skin_core.analysis.readers and reader_stats (reader-study statistics).

Reference values come from independent implementations (scipy, statsmodels, scikit-learn),
from hand-computed small cases, and from naive re-implementations of the vectorised
resampling.
"""

from __future__ import annotations

import json
import math
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import cohen_kappa_score
from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM
from statsmodels.stats.contingency_tables import Table2x2
from statsmodels.stats.inter_rater import aggregate_raters, cohens_kappa, fleiss_kappa
from statsmodels.stats.proportion import confint_proportions_2indep

from skin_core.analysis import reader_stats as rs
from skin_core.analysis.readers import (
    analyze_readers,
    normalize_diagnosis,
    read_cnn_predictions,
    read_truth,
    render_markdown,
    write_reader_report,
)
from skin_core.cli import main
from skin_core.constants import HAM10000_CLASSES, ISIC2019_CLASSES, OTHER_DIAGNOSIS
from skin_core.errors import ConfigError, DataError

FAST = {"n_bootstrap": 200, "n_permutations": 500, "glmm": False}


def _readings(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["reader_id", "image_id", "diagnosis"])


def _truth(d: dict[str, str]) -> pd.Series:
    return pd.Series(d, name="label")


@pytest.fixture()
def small_study():
    """3 readers x 4 images, hand-checkable.

    img1 (MEL): MEL MEL NV   -> consensus MEL, correct
    img2 (NV):  NV  MEL BKL  -> 3-way tie
    img3 (BCC): other Altro BCC -> consensus OTHER
    img4 (NV):  MEL MEL MEL  -> consensus MEL, wrong
    """
    rows = [
        ("A", "img1", "MEL"), ("B", "img1", "mel"), ("C", "img1", "NV"),
        ("A", "img2", "NV"), ("B", "img2", "MEL"), ("C", "img2", "BKL"),
        ("A", "img3", "other"), ("B", "img3", "Altro"), ("C", "img3", "BCC"),
        ("A", "img4", "MEL"), ("B", "img4", "MEL"), ("C", "img4", " Mel "),
    ]
    truth = _truth({"img1": "MEL", "img2": "NV", "img3": "BCC", "img4": "NV"})
    return _readings(rows), truth


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("raw", "classes", "expected"),
    [
        ("  mel ", ISIC2019_CLASSES, "MEL"),
        ("NV", ISIC2019_CLASSES, "NV"),
        ("bkl", ISIC2019_CLASSES, "BKL"),
        ("akiec", ISIC2019_CLASSES, OTHER_DIAGNOSIS),  # AK or SCC: ambiguous
        ("Melanoma", ISIC2019_CLASSES, "MEL"),
        ("basal  cell carcinoma", ISIC2019_CLASSES, "BCC"),
        ("Altro", ISIC2019_CLASSES, OTHER_DIAGNOSIS),
        ("", ISIC2019_CLASSES, OTHER_DIAGNOSIS),
        (None, ISIC2019_CLASSES, OTHER_DIAGNOSIS),
        ("MEL", HAM10000_CLASSES, "mel"),
        ("AK", HAM10000_CLASSES, "akiec"),
        ("scc", HAM10000_CLASSES, "akiec"),
        ("AKIEC", HAM10000_CLASSES, "akiec"),
        ("akiec", ("MEL", "NV", "AK"), "AK"),  # only one of AK / SCC in the vocabulary
        ("akiec", ("MEL", "NV", "SCC"), "SCC"),
    ],
)
def test_normalize_diagnosis(raw, classes, expected):
    assert normalize_diagnosis(raw, classes) == expected


# --------------------------------------------------------------------------- kappas


def test_cohen_kappa_matches_sklearn_and_statsmodels():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 4, 60)
    b = np.where(rng.random(60) < 0.6, a, rng.integers(0, 4, 60))
    ours = rs.cohen_kappa(a, b)
    assert ours == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    table = pd.crosstab(a, b).to_numpy()
    assert ours == pytest.approx(cohens_kappa(table).kappa, abs=1e-12)


def test_cohen_kappa_hand_case_and_undefined():
    # 2x2: po = 0.7, pe = 0.5 * 0.6 + 0.5 * 0.4 = 0.5 -> kappa = (0.7 - 0.5) / 0.5 = 0.4
    a = [1] * 5 + [0] * 5
    b = [1, 1, 1, 1, 0, 0, 0, 0, 1, 1]  # agree on 4 + 3 = 7; b has six 1s
    assert rs.cohen_kappa(a, b) == pytest.approx(0.4)
    assert math.isnan(rs.cohen_kappa([1, 1, 1], [1, 1, 1]))  # pe = 1


def test_fleiss_kappa_wikipedia_example_and_statsmodels():
    # Fleiss (1971) worked example as reproduced on Wikipedia: kappa = 0.210
    table = np.array([
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ])
    assert float(rs.fleiss_kappa_counts(table)) == pytest.approx(0.2099, abs=1e-4)
    assert float(rs.fleiss_kappa_counts(table)) == pytest.approx(fleiss_kappa(table), abs=1e-12)
    # weights of ones reproduce the unweighted value; integer weights = repeated rows
    w = np.array([[1] * 10, [2] + [1] * 9])
    k = rs.fleiss_kappa_counts(table, w)
    assert k[0] == pytest.approx(fleiss_kappa(table))
    assert k[1] == pytest.approx(fleiss_kappa(np.vstack([table, table[:1]])))


def test_pairwise_agreement_matches_sklearn_per_pair():
    rng = np.random.default_rng(11)
    answers = rng.integers(0, 4, (5, 30))
    answers[rng.random((5, 30)) < 0.3] = -1  # unread
    answers[4, :] = -1
    answers[4, :2] = 1  # reader 4 shares at most 2 images, always answering 1
    pw = rs.pairwise_agreement(answers, 4)
    for a, b in combinations(range(5), 2):
        both = (answers[a] >= 0) & (answers[b] >= 0)
        assert pw["n"][a, b] == both.sum()
        if both.sum() == 0:
            assert math.isnan(pw["agreement"][a, b])
            continue
        x, y = answers[a, both], answers[b, both]
        assert pw["agreement"][a, b] == pytest.approx(np.mean(x == y))
        if len(set(x) | set(y)) > 1:
            assert pw["kappa"][a, b] == pytest.approx(cohen_kappa_score(x, y))
        else:
            assert math.isnan(pw["kappa"][a, b])


# --------------------------------------------------------------------------- tests records


def test_fisher_difference_matches_scipy_and_newcombe():
    res = rs.fisher_difference(7, 20, 15, 21, name="x", unit="images",
                               labels=("difficult", "control"), assumptions="iid")
    ref = stats.fisher_exact([[7, 13], [15, 6]])
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.effect == pytest.approx(7 / 20 - 15 / 21)
    lo, hi = confint_proportions_2indep(7, 20, 15, 21, method="newcomb", compare="diff")
    assert res.ci == pytest.approx((lo, hi), abs=1e-10)
    assert res.n == {"difficult_images": 20, "control_images": 21}
    woolf = Table2x2(np.array([[7, 13], [15, 6]])).oddsratio_confint(method="normal")
    assert res.extra["odds_ratio_ci"] == pytest.approx(list(woolf))


def test_hodges_lehmann_hand_case():
    d = np.array([-0.3, -0.2, -0.1, 0.05, -0.4, -0.25, -0.15, -0.35])
    est, (lo, hi) = rs.hodges_lehmann(d)
    i, j = np.triu_indices(8)
    walsh = np.sort((d[i] + d[j]) / 2)
    assert est == pytest.approx(np.median(walsh))
    # n = 8, alpha = 0.05: P(T+ <= 3) = 5/256 <= 0.025 < P(T+ <= 4) = 7/256 -> c = 4
    assert (lo, hi) == pytest.approx((walsh[3], walsh[36 - 4]))
    assert rs.hodges_lehmann(d[:5])[1][0] != rs.hodges_lehmann(d[:5])[1][0]  # nan: n too small


def test_signed_rank_cdf_matches_scipy():
    cdf = rs._signed_rank_cdf(7)
    ref = stats.wilcoxon(np.arange(1, 8) * np.array([1, -1, 1, 1, -1, 1, 1]),
                         method="exact", alternative="less")
    # T+ = 1 + 3 + 4 + 6 + 7 = 21 ; scipy's "less" exact p = P(T+ <= 21)
    assert cdf[21] == pytest.approx(ref.pvalue)


def test_paired_reader_tests_match_scipy():
    d = np.array([-0.2, -0.35, -0.1, -0.25, -0.3, 0.05, -0.15])
    w, t = rs.paired_reader_tests(d, labels=("difficult", "control"))
    ref_w = stats.wilcoxon(d)
    ref_t = stats.ttest_rel(d, np.zeros_like(d))
    assert w.p_value == pytest.approx(ref_w.pvalue)
    assert w.statistic == pytest.approx(ref_w.statistic)
    assert t.p_value == pytest.approx(ref_t.pvalue)
    assert t.effect == pytest.approx(d.mean())
    assert "readers are the independent units" in t.assumptions


# --------------------------------------------------------------------------- resampling


def _naive_two_way(correct, read, image_group, n_groups, b, seed):
    """Explicit resampling with the same random draws as two_way_bootstrap (one block)."""
    rng = np.random.default_rng(seed)
    r, i = correct.shape
    w = rng.multinomial(r, np.full(r, 1 / r), size=b)
    members = [np.nonzero(image_group == g)[0] for g in range(n_groups)]
    v = {g: rng.multinomial(idx.size, np.full(idx.size, 1 / idx.size), size=b)
         for g, idx in enumerate(members)}
    out = np.full((n_groups, b), np.nan)
    for k in range(b):
        readers = np.repeat(np.arange(r), w[k])
        for g, idx in enumerate(members):
            imgs = np.repeat(idx, v[g][k])
            sub_c = correct[np.ix_(readers, imgs)]
            sub_m = read[np.ix_(readers, imgs)]
            if sub_m.sum():
                out[g, k] = sub_c.sum() / sub_m.sum()
    return out


def test_two_way_bootstrap_matches_naive_resampling():
    rng = np.random.default_rng(0)
    read = rng.random((5, 12)) < 0.8
    correct = read & (rng.random((5, 12)) < 0.6)
    group = np.array([0] * 5 + [1] * 7)
    draws = rs.two_way_bootstrap(correct, read, group, n_groups=2, n_resamples=40, seed=7,
                                 block=40)
    ref = _naive_two_way(correct, read, group, 2, 40, 7)
    np.testing.assert_allclose(draws.pooled, ref, equal_nan=True)


def test_two_way_bootstrap_seeded_and_consensus_image_only():
    rng = np.random.default_rng(1)
    read = np.ones((4, 10), bool)
    correct = rng.random((4, 10)) < 0.5
    group = np.array([0] * 4 + [1] * 6)
    cc = np.ones(10, bool)
    ok = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1], bool)
    a = rs.two_way_bootstrap(correct, read, group, n_groups=2, consensus_counted=cc,
                             consensus_correct=ok, n_resamples=100, seed=3)
    b = rs.two_way_bootstrap(correct, read, group, n_groups=2, consensus_counted=cc,
                             consensus_correct=ok, n_resamples=100, seed=3)
    np.testing.assert_array_equal(a.pooled, b.pooled)
    # consensus draws are means of resampled images: multiples of 1/4 in group 0
    assert np.allclose((a.consensus[0] * 4) % 1, 0)
    assert a.consensus[0].min() >= 0 and a.consensus[0].max() <= 1


def test_permutation_matches_exact_enumeration():
    c = np.array([5, 4, 6, 1, 2, 0, 3, 1])
    m = np.array([6, 6, 6, 6, 5, 6, 6, 4])
    in_a = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    obs, p, null = rs.image_permutation_test(c, m, in_a, n_permutations=20_000, seed=0)
    tot_c, tot_m = c.sum(), m.sum()
    exact = []
    for idx in combinations(range(8), 3):
        ca, ma = c[list(idx)].sum(), m[list(idx)].sum()
        exact.append(ca / ma - (tot_c - ca) / (tot_m - ma))
    exact = np.array(exact)
    p_exact = np.mean(np.abs(exact) >= abs(obs) - 1e-12)
    assert obs == pytest.approx(c[:3].sum() / m[:3].sum() - c[3:].sum() / m[3:].sum())
    assert p == pytest.approx(p_exact, abs=0.01)
    assert null.shape == (20_000,)
    again = rs.image_permutation_test(c, m, in_a, n_permutations=20_000, seed=0)
    assert again[1] == p


# --------------------------------------------------------------------------- the study


def test_small_study_hand_values(small_study):
    rd, truth = small_study
    s = analyze_readers(rd, truth, **FAST).summary
    g = s["groups"]["all"]
    # correct: A: img1, img2 ; B: img1 ; C: img3 -> 4/12
    assert g["pooled_accuracy"] == pytest.approx(4 / 12)
    assert g["readers"]["A"] == {"accuracy": 0.5, "n": 4, "correct": 2,
                                 "ci": pytest.approx(list(rs.wilson_ci(2, 4)))}
    assert g["readers"]["B"]["correct"] == 1 and g["readers"]["C"]["correct"] == 1
    c = g["consensus"]
    assert (c["n_ties"], c["n_other"], c["n"], c["n_correct"]) == (1, 1, 2, 1)
    assert c["accuracy"] == pytest.approx(0.5)
    assert s["inputs"]["n_other_answers"] == 2
    assert s["inputs"]["other_answers"] == {"other": 1, "Altro": 1}
    assert s["tests"] == [] and s["tests_note"] is not None
    wrong = analyze_readers(rd, truth, ties="wrong", other="wrong", **FAST).summary
    cw = wrong["groups"]["all"]["consensus"]
    assert (cw["n"], cw["n_correct"], cw["accuracy"]) == (4, 1, 0.25)


def test_study_kappas_match_references(small_study):
    rd, truth = small_study
    s = analyze_readers(rd, truth, ties="wrong", other="wrong", **FAST).summary["groups"]["all"]
    # Fleiss over 3 readers x 4 images, categories = classes + OTHER
    cats = list(ISIC2019_CLASSES) + [OTHER_DIAGNOSIS]
    norm = rd.assign(d=[normalize_diagnosis(x, ISIC2019_CLASSES) for x in rd["diagnosis"]])
    data = norm.pivot(index="image_id", columns="reader_id", values="d").map(cats.index)
    counts, _ = aggregate_raters(data.to_numpy())
    assert s["fleiss_kappa"] == pytest.approx(fleiss_kappa(counts), abs=1e-12)
    # Cohen consensus vs truth; tie is its own category
    cons = ["MEL", "TIE", "OTHER", "MEL"]
    assert s["cohen_kappa_consensus"] == pytest.approx(
        cohen_kappa_score(cons, ["MEL", "NV", "BCC", "NV"]))
    # pairwise: A vs B agree on img1, img3 (both OTHER), img4
    pair = next(p for p in s["pairwise"]["pairs"] if {p["reader_a"], p["reader_b"]} == {"A", "B"})
    assert pair["agreement"] == pytest.approx(3 / 4)
    assert pair["kappa"] == pytest.approx(cohen_kappa_score(
        ["MEL", "NV", "OTHER", "MEL"], ["MEL", "MEL", "OTHER", "MEL"]))


def _clustered_study(n_img=10, n_readers=20):
    """All readers answer alike on each image: readings are perfectly clustered by image."""
    rows, truth, groups = [], {}, {}
    # difficult: 4 of 10 images right; control: 6 of 10 right
    for g, n_right in (("difficult", 4), ("control", 6)):
        for i in range(n_img):
            iid = f"{g}_{i}"
            truth[iid] = "MEL"
            groups[iid] = g
            for r in range(n_readers):
                rows.append((f"r{r}", iid, "MEL" if i < n_right else "NV"))
    return _readings(rows), _truth(truth), pd.Series(groups)


def test_clustered_tests_less_significant_than_pooled_fisher():
    rd, truth, groups = _clustered_study()
    s = analyze_readers(rd, truth, groups=groups, n_bootstrap=500, n_permutations=2000,
                        glmm=False)
    t = {x.name.split("(")[-1].rstrip(")"): x for x in s.tests}
    pooled = t["Fisher, readings"]
    perm = t["image permutation test"]
    boot = t["two-way cluster bootstrap"]
    assert pooled.effect == pytest.approx(-0.2)
    assert pooled.p_value < 0.001  # 80/200 vs 120/200 treated as independent
    assert perm.p_value > 0.3  # really 4/10 vs 6/10 images
    assert boot.ci[0] < 0 < boot.ci[1]
    assert boot.ci[1] - boot.ci[0] > 2 * (pooled.ci[1] - pooled.ci[0])
    assert t["Fisher, images"].p_value == pytest.approx(stats.fisher_exact([[4, 6], [6, 4]])[1])
    assert "IGNORES reader/image clustering" in pooled.assumptions


def test_groups_cnn_and_outputs(tmp_path):
    rng = np.random.default_rng(5)
    ids = [f"ISIC_{i:07d}" for i in range(30)]
    truth = pd.DataFrame({"image_id": ids, "label": rng.choice(["MEL", "NV", "BCC"], 30)})
    groups = pd.DataFrame({"image_id": ids + ["ISIC_9999999"],
                           "group": ["Difficult "] * 15 + ["control"] * 15 + ["control"]})
    rows = []
    for r in ("R1", "R2", "R3"):
        for k, i in enumerate(ids):
            p = 0.3 if k < 15 else 0.85
            t = truth.label[k]
            rows.append((r, f" {i.lower()} ", t if rng.random() < p else "NV" if t != "NV"
                         else "MEL"))
    rd = _readings(rows)
    probs = rng.dirichlet(np.ones(3), (2, 30))
    oof = pd.concat([pd.DataFrame({"image_id": ids, "model": m, "arch": "x", "fold": 0,
                                   "label": truth.label, "prob_MEL": probs[j, :, 0],
                                   "prob_NV": probs[j, :, 1], "prob_BCC": probs[j, :, 2]})
                     for j, m in enumerate(("a@s0", "b@s0"))])
    truth.to_csv(tmp_path / "truth.csv", index=False)
    groups.to_csv(tmp_path / "groups.csv", index=False)
    rd.to_csv(tmp_path / "readings.csv", index=False)
    oof.to_csv(tmp_path / "oof.csv", index=False)
    study = analyze_readers(tmp_path / "readings.csv", tmp_path / "truth.csv",
                            classes=("MEL", "NV", "BCC"), groups=tmp_path / "groups.csv",
                            cnn=tmp_path / "oof.csv", n_bootstrap=200, n_permutations=500)
    s = study.summary
    assert list(s["groups"]) == ["difficult", "control"]
    assert s["groups"]["control"]["n_unread"] == 1
    assert s["options"]["compare"] == ["difficult", "control"]
    # CNN ensemble = argmax of the mean probabilities
    mean = probs.mean(axis=0)
    pred = np.array(["MEL", "NV", "BCC"])[mean.argmax(axis=1)]
    ok = pred == truth.label.to_numpy()
    assert s["groups"]["difficult"]["cnn"]["accuracy"] == pytest.approx(ok[:15].mean())
    model_ok = np.array(["MEL", "NV", "BCC"])[probs[1].argmax(axis=1)] == truth.label.to_numpy()
    assert s["groups"]["control"]["cnn"]["models"]["b@s0"]["accuracy"] == pytest.approx(
        model_ok[15:].mean())
    assert study.images["image_id"].iloc[0] == ids[0]  # truth spelling kept
    assert {"cnn_pred", "cnn_correct", "consensus_correct"} <= set(study.images.columns)
    names = [t.name for t in study.tests]
    assert any("crossed GLMM" in n for n in names)
    assert len(names) == 8
    paths = write_reader_report(study, tmp_path / "out")
    js = json.loads(paths["json"].read_text())
    for key in ("n_images", "consensus", "readers", "pooled_accuracy", "fleiss_kappa",
                "cohen_kappa_consensus"):
        assert key in js["groups"]["difficult"]
    assert {"name", "effect", "ci", "p_value", "method"} <= set(js["tests"][0])
    md = paths["markdown"].read_text()
    assert "| test | effect | CI |" in md and "IGNORES" in md
    glmm_row = next(line for line in md.splitlines() if "crossed GLMM" in line)
    assert "(1\\|reader)" in glmm_row and glmm_row.replace("\\|", "").count("|") == 8
    assert pd.read_csv(paths["images"]).shape[0] == 30


def test_glmm_recovers_direction():
    rd, truth, groups = _clustered_study(n_img=12, n_readers=4)
    rd = rd.copy()
    # break perfect clustering a little so the model is identifiable
    rd.loc[::7, "diagnosis"] = np.where(rd.loc[::7, "diagnosis"] == "MEL", "NV", "MEL")
    t = rs.crossed_glmm(
        (rd["diagnosis"] == "MEL").to_numpy(), rd["reader_id"].to_numpy(),
        rd["image_id"].to_numpy(), rd["image_id"].str.startswith("difficult").to_numpy(),
        labels=("difficult", "control"))
    assert t.effect < 0 and t.ci[0] < t.effect < t.ci[1]
    assert math.isnan(t.p_value) and "variational Bayes" in t.method
    # same optimum as statsmodels' default optimiser (BFGS)
    df = pd.DataFrame({"correct": (rd["diagnosis"] == "MEL").astype(float).to_numpy(),
                       "grp": rd["image_id"].str.startswith("difficult").astype(float).to_numpy(),
                       "reader": rd["reader_id"].to_numpy(), "image": rd["image_id"].to_numpy()})
    ref = BinomialBayesMixedGLM.from_formula(
        "correct ~ grp", {"image": "0 + C(image)", "reader": "0 + C(reader)"}, df).fit_vb()
    assert t.effect == pytest.approx(ref.fe_mean[1], abs=0.02)
    assert t.extra["posterior_sd"] == pytest.approx(ref.fe_sd[1], rel=0.05)


# --------------------------------------------------------------------------- bad input


def test_single_reader_kappa_undefined():
    rd = _readings([("A", "x1", "MEL"), ("A", "x2", "NV")])
    s = analyze_readers(rd, _truth({"x1": "MEL", "x2": "MEL"}), **FAST).summary["groups"]["all"]
    assert s["fleiss_kappa"] is None
    assert "single reader" in s["fleiss"]["reason"]
    assert s["pairwise"]["pairs"] == [] and "single reader" in s["pairwise"]["reason"]


def test_duplicates_error_and_dedupe(small_study):
    rd, truth = small_study
    dup = pd.concat([rd, _readings([(" a ", "IMG1", "NV")])], ignore_index=True)
    with pytest.raises(DataError, match="duplicate .*reader A on image img1"):
        analyze_readers(dup, truth, **FAST)
    first = analyze_readers(dup, truth, dedupe="first", **FAST).summary
    last = analyze_readers(dup, truth, dedupe="last", **FAST).summary
    assert first["inputs"]["n_duplicate_pairs"] == 1
    assert first["groups"]["all"]["readers"]["A"]["correct"] == 2
    assert last["groups"]["all"]["readers"]["A"]["correct"] == 1
    with pytest.raises(ConfigError, match="'dedupe'.*Got 'both'"):
        analyze_readers(dup, truth, dedupe="both")


def test_missing_truth_error_and_skip(small_study):
    rd, truth = small_study
    extra = pd.concat([rd, _readings([("A", "ghost_1", "MEL"), ("B", "ghost_2", "NV")])])
    with pytest.raises(DataError, match="2 images absent from the truth .*ghost_1, ghost_2"):
        analyze_readers(extra, truth, **FAST)
    s = analyze_readers(extra, truth, skip_missing=True, **FAST).summary
    assert s["inputs"]["missing_truth_ids"] == ["ghost_1", "ghost_2"]
    assert s["inputs"]["n_readings"] == 12


def test_ungrouped_and_unread_group_images(small_study):
    rd, truth = small_study
    groups = pd.Series({"img1": "difficult", "img2": "difficult", "img3": "control",
                        "zzz": "control", "yyy": "control"})
    s = analyze_readers(rd, truth, groups=groups, **FAST).summary
    assert s["inputs"]["n_ungrouped_images"] == 1  # img4
    assert s["groups"]["control"]["n_unread"] == 2
    assert any("in no group" in w for w in s["warnings"])


def test_bad_files(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("reader,image_id,diagnosis\nA,x,MEL\n")
    with pytest.raises(DataError, match="no column 'reader_id'"):
        analyze_readers(p, _truth({"x": "MEL"}))
    with pytest.raises(DataError, match="does not exist"):
        analyze_readers(tmp_path / "nope.csv", _truth({"x": "MEL"}))
    t = tmp_path / "t.csv"
    t.write_text("image_id,label\nx,MELANOMAX\n")
    with pytest.raises(DataError, match="MELANOMAX"):
        read_truth(t)


def test_read_truth_formats(tmp_path):
    onehot = tmp_path / "gt.csv"
    onehot.write_text("image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK\n"
                      "ISIC_1,0.0,1.0,0,0,0,0,0,0,0\nISIC_2,1.0,0,0,0,0,0,0,0,0\n")
    t, classes = read_truth(onehot)
    assert classes == ISIC2019_CLASSES and t.to_dict() == {"ISIC_1": "NV", "ISIC_2": "MEL"}
    ham = tmp_path / "ham.csv"
    ham.write_text(" Image_ID , dx \nISIC_1,akiec\nISIC_2, nv\n")
    t, classes = read_truth(ham)
    assert classes == HAM10000_CLASSES and t.to_dict() == {"ISIC_1": "akiec", "ISIC_2": "nv"}
    bad = tmp_path / "bad.csv"
    bad.write_text("image,MEL,NV\nISIC_1,1,1\n")
    with pytest.raises(DataError, match="row 2 .*ISIC_1.* exactly one"):
        read_truth(bad)


def test_predictions_csv(tmp_path):
    p = tmp_path / "pred.csv"
    p.write_text("image_id,pred\nA, mel\nB,nv\n")
    cnn = read_cnn_predictions(p, ISIC2019_CLASSES)
    assert cnn.pred.to_dict() == {"A": "MEL", "B": "NV"} and cnn.per_model is None
    rd = _readings([("r1", "A", "MEL"), ("r2", "A", "NV"), ("r1", "C", "NV")])
    s = analyze_readers(rd, _truth({"A": "MEL", "C": "NV"}), cnn=cnn, **FAST).summary
    assert s["groups"]["all"]["cnn"]["n"] == 1 and s["groups"]["all"]["cnn"]["n_missing"] == 1
    assert any("1 of 2 read images have no CNN prediction" in w for w in s["warnings"])


@pytest.mark.realdata
def test_truth_from_isic2019_csvs(isic2019_csv_dir):
    t, classes = read_truth(isic2019_csv_dir / "ISIC_2019_Training_GroundTruth.csv")
    assert classes == ISIC2019_CLASSES
    assert len(t) == 25_331 and (t == "MEL").sum() == 4522


# --------------------------------------------------------------------------- CLI


def test_cli_readers(tmp_path, small_study, capsys):
    rd, truth = small_study
    rd.to_csv(tmp_path / "r.csv", index=False)
    truth.rename_axis("image_id").reset_index().to_csv(tmp_path / "t.csv", index=False)
    rc = main(["readers", "--readings", str(tmp_path / "r.csv"), "--truth",
               str(tmp_path / "t.csv"), "--out", str(tmp_path / "o"), "--bootstrap", "100",
               "--permutations", "100", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["groups"]["all"]["pooled_accuracy"] == pytest.approx(4 / 12)
    assert (tmp_path / "o" / "readers.md").is_file()
    rc = main(["readers", "--readings", str(tmp_path / "r.csv"), "--truth",
               str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err


def test_render_markdown_without_tests(small_study):
    rd, truth = small_study
    md = render_markdown(analyze_readers(rd, truth, **FAST))
    assert "## Readers" in md and "no between-group tests" in md


@pytest.mark.realdata
def test_truth_from_dataset_spec(ham10000_dir):
    t, classes = read_truth(f"ham10000:{ham10000_dir}")
    assert classes == HAM10000_CLASSES
    assert len(t) == 10_015 and (t == "akiec").sum() == 327


def test_bom_compare_and_strict_json(tmp_path, small_study):
    rd, truth = small_study
    path = tmp_path / "r.csv"
    path.write_bytes(b"\xef\xbb\xbf" + rd.to_csv(index=False).encode())  # Excel's UTF-8 BOM
    groups = pd.Series({"img1": "A", "img2": "A", "img3": "b", "img4": "B"})
    study = analyze_readers(path, truth, groups=groups, compare=("b", "a"), **FAST)
    assert study.summary["options"]["compare"] == ["b", "a"]
    assert study.tests[0].name.startswith("consensus accuracy: b vs a")
    with pytest.raises(ConfigError, match="'compare'.*'c'"):
        analyze_readers(path, truth, groups=groups, compare=("a", "c"), **FAST)
    paths = write_reader_report(study, tmp_path / "o")

    def no_nan(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    json.loads(paths["json"].read_text(), parse_constant=no_nan)
