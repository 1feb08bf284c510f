"""The vectorised lesion bootstrap of skin-core evaluate against independent implementations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score, roc_auc_score

from skin_core.analysis.metrics import sensitivity_at_specificity
from skin_core.evaluation.bootstrap import (
    Draw,
    RankSet,
    Resampler,
    confusion_figures,
    figure,
    image_weights,
    lesion_codes,
    weighted_auc,
    weighted_sensitivity_at_specificity,
)
from skin_core.evaluation.figures import (
    Outcomes,
    age_band,
    evaluation_figures,
    share_figures,
)
from skin_core.meta.calibration import expected_calibration_error


def _scores(rng: np.random.Generator, n: int, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return y, np.round(p, 2)  # rounded: many tied scores


def test_lesion_codes_group_images_and_keep_images_without_lesion_apart() -> None:
    codes = lesion_codes(np.array(["L1", None, "L1", "", np.nan, "L2"], dtype=object),
                         np.array(["a", "b", "c", "d", "e", "f"]))
    assert codes[0] == codes[2]
    assert len(set(codes)) == 5  # L1, b, d, e, L2
    assert set(codes) == set(range(5))


def test_resampler_rows_are_multinomial_lesion_counts_after_a_row_of_ones() -> None:
    r = Resampler.for_codes(np.array([0, 0, 1, 2, 3, 3, 3]), n_resamples=450, seed=3)
    chunks = list(r.chunks(chunk=200))
    assert [c.shape for c in chunks] == [(1, 4), (200, 4), (200, 4), (50, 4)]
    assert np.all(chunks[0] == 1)
    rows = np.vstack(chunks[1:])
    assert np.all(rows.sum(axis=1) == 4) and np.all(rows >= 0)
    assert rows.mean() == pytest.approx(1.0, abs=0.05)
    again = np.vstack(list(Resampler.for_codes(r.codes, n_resamples=450, seed=3).chunks())[1:])
    np.testing.assert_array_equal(rows, again)


def test_images_of_one_lesion_always_share_their_weight() -> None:
    codes = np.array([0, 1, 1, 2, 0])
    w = np.vstack(list(Resampler.for_codes(codes, n_resamples=30, seed=0).chunks())[1:])
    wt = image_weights(w, codes)
    assert wt.shape == (5, 30)
    np.testing.assert_array_equal(wt[0], wt[4])
    np.testing.assert_array_equal(wt[1], wt[2])


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_confusion_figures_equal_sklearn_with_sample_weights() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    y[y == 4] = 0  # class 4 absent from the truth, as sklearn's "present" classes
    pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, 5, 300))
    w = rng.integers(0, 4, 300).astype(float)
    conf = np.zeros((1, 5, 5))
    np.add.at(conf[0], (y, pred), w)
    got = confusion_figures(conf)
    keep = w > 0
    present = np.unique(y[keep])
    assert got["balanced_accuracy"][0] == pytest.approx(
        balanced_accuracy_score(y, pred, sample_weight=w))
    assert got["macro_f1"][0] == pytest.approx(
        f1_score(y, pred, labels=present, average="macro", sample_weight=w))
    np.testing.assert_allclose(got["sensitivity"][0, :4],
                               recall_score(y, pred, labels=[0, 1, 2, 3], average=None,
                                            sample_weight=w))
    assert np.isnan(got["sensitivity"][0, 4])
    spec0 = w[(y != 0) & (pred != 0)].sum() / w[y != 0].sum()
    assert got["specificity"][0, 0] == pytest.approx(spec0)


@pytest.mark.parametrize("flip", [False, True])
def test_weighted_auc_equals_sklearn_with_ties_and_weights(flip: bool) -> None:
    rng = np.random.default_rng(1)
    y, p = _scores(rng, 400)
    positive = (y != 0) if flip else (y == 0)  # flip: positives outnumber negatives
    weights = rng.integers(0, 4, (400, 6)).astype(np.float32)
    weights[:, 0] = 1
    got = weighted_auc(p[:, 0], positive, weights)
    for j in range(6):
        assert got[j] == pytest.approx(roc_auc_score(positive, p[:, 0],
                                                     sample_weight=weights[:, j]), abs=1e-12)


def test_weighted_sensitivity_at_specificity_equals_the_metrics_module_on_repeated_rows() -> None:
    rng = np.random.default_rng(2)
    y, p = _scores(rng, 300)
    positive = y == 1
    weights = rng.integers(0, 3, (300, 5)).astype(np.float32)
    weights[:, 0] = 1
    for spec in (0.8, 0.9, 0.95):
        got = weighted_sensitivity_at_specificity(p[:, 1], positive, weights, spec)
        for j in range(5):
            reps = weights[:, j].astype(int)
            want = sensitivity_at_specificity(np.repeat(positive, reps), np.repeat(p[:, 1], reps),
                                              spec)
            assert got[j] == pytest.approx(want, abs=1e-12), (spec, j)


def test_rank_set_refuses_a_sensitivity_of_a_swapped_pair() -> None:
    rs = RankSet(4)
    rs.add("x", np.array([0.1, 0.2, 0.3, 0.4]), np.array([True, True, True, False]),
           np.arange(4))
    with pytest.raises(ValueError, match="allow_flip=False"):
        rs.sensitivity_at_specificity("x", rs.sums(np.ones((4, 1), np.float32)), 0.9)


def test_figure_reports_percentile_interval_and_none_when_undefined() -> None:
    values = np.r_[0.5, np.linspace(0, 1, 1001)]
    f = figure(values)
    assert f["value"] == 0.5 and f["ci"] == pytest.approx([0.025, 0.975])
    assert figure(np.r_[np.nan, 0.2, 0.3]) == {"value": None, "ci": [None, None]}
    assert figure(np.array([0.7]))["ci"] == [None, None]  # no resamples


def _outcomes(n: int = 2000, seed: int = 0) -> Outcomes:
    rng = np.random.default_rng(seed)
    y, p = _scores(rng, n, k=5)
    pred = p.argmax(axis=1)
    ens = np.where(rng.random(n) < 0.8, pred, rng.integers(0, 5, n))
    sets = p > 0.15
    sets[np.arange(n), pred] = True
    return Outcomes(y=y, probs=p, pred=pred, ens_pred=ens, sets=sets,
                    refer=rng.random(n) < 0.3,
                    codes=lesion_codes(rng.integers(0, n // 2, n).astype(str),
                                       np.arange(n).astype(str)))


def test_point_estimates_equal_independent_implementations() -> None:
    o = _outcomes()
    classes = ["MEL", "NV", "BCC", "AK", "BKL"]
    f = evaluation_figures(o, classes, melanoma=0, n_resamples=0, seed=0)["overall"]
    assert f["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(o.y, o.pred))
    assert f["ece"]["value"] == pytest.approx(expected_calibration_error(o.probs, o.y,
                                                                         n_bins=15))
    covered = o.sets[np.arange(len(o)), o.y]
    assert f["coverage"]["value"] == pytest.approx(covered.mean())
    assert f["mean_set_size"]["value"] == pytest.approx(o.sets.sum(axis=1).mean())
    wrong = o.pred != o.y
    assert f["referral_error_capture"]["value"] == pytest.approx(o.refer[wrong].mean())
    assert f["ensemble"]["balanced_accuracy"]["value"] == pytest.approx(
        balanced_accuracy_score(o.y, o.ens_pred))
    for c, cls in enumerate(classes):
        assert f["per_class"][cls]["auc"]["value"] == pytest.approx(
            roc_auc_score(o.y == c, o.probs[:, c]))
        assert f["per_class"][cls]["coverage"]["value"] == pytest.approx(covered[o.y == c].mean())
    mel = f["melanoma_sensitivity_at_specificity"]
    assert mel["0.90"]["value"] == pytest.approx(
        sensitivity_at_specificity(o.y == 0, o.probs[:, 0], 0.9))
    assert f["n_lesions"] == len(np.unique(o.codes))
    assert sum(b["n"] for b in f["reliability"]) == len(o)


def test_every_figure_is_paired_and_subgroups_use_their_own_images() -> None:
    o = _outcomes()
    classes = ["MEL", "NV", "BCC", "AK", "BKL"]
    import pandas as pd

    groups = {"sex": pd.Series(np.where(np.arange(len(o)) % 3 == 0, "female", "male"))}
    out = evaluation_figures(o, classes, melanoma=0, n_resamples=200, seed=1, groups=groups,
                             variants={"none": o.pred, "all": o.ens_pred})
    f = out["overall"]
    lo, hi = f["balanced_accuracy"]["ci"]
    assert lo < f["balanced_accuracy"]["value"] < hi
    female = out["subgroups"]["sex"][0]
    assert female["group"] == "female" and not female["small"]
    mask = np.arange(len(o)) % 3 == 0
    assert female["n_images"] == mask.sum()
    assert female["accuracy"]["value"] == pytest.approx((o.pred == o.y)[mask].mean())
    # the "none" variant is the served answer: the same resamples give the same interval
    assert out["missing_metadata"]["none"]["balanced_accuracy"] == f["balanced_accuracy"]
    assert out["missing_metadata"]["all"]["difference"]["value"] == pytest.approx(0.0)
    assert out["missing_metadata"]["all"]["difference"]["ci"] == [0.0, 0.0]


def test_bootstrap_interval_widens_when_images_cluster_in_lesions() -> None:
    """Correlated images (the same lesion) carry less information: the lesion bootstrap's
    interval must be wider than the image-level one on the same data."""
    rng = np.random.default_rng(5)
    n_les, per = 150, 6
    lesion_right = rng.random(n_les) < 0.7  # every image of a lesion right or wrong together
    y = np.repeat(rng.integers(0, 3, n_les), per)
    pred = np.where(np.repeat(lesion_right, per), y, (y + 1) % 3)
    probs = np.eye(3)[pred] * 0.8 + 0.2 / 3
    base = dict(y=y, probs=probs, pred=pred, ens_pred=pred, sets=np.eye(3, dtype=bool)[pred],
                refer=np.zeros(len(y), bool))
    grouped = Outcomes(**base, codes=np.repeat(np.arange(n_les), per))
    single = Outcomes(**base, codes=np.arange(len(y)))

    def width(o: Outcomes) -> float:
        ci = evaluation_figures(o, ["A", "B", "C"], melanoma=None, n_resamples=400,
                                seed=0)["overall"]["accuracy"]["ci"]
        return ci[1] - ci[0]

    assert width(grouped) > 1.8 * width(single)


def test_share_figures_skip_missing_entries() -> None:
    figs = share_figures({"x": np.array([1.0, 0.0, np.nan, 1.0])}, np.arange(4),
                         n_resamples=100, seed=0)
    assert figs["x"]["value"] == pytest.approx(2 / 3)
    assert 0.0 <= figs["x"]["ci"][0] <= figs["x"]["ci"][1] <= 1.0


def test_age_bands() -> None:
    import pandas as pd

    ages = pd.Series([5, 29, 30, 44, 45, 59, 60, 74, 75, 90, np.nan])
    assert age_band(ages).tolist() == ["<30", "<30", "30-44", "30-44", "45-59", "45-59",
                                       "60-74", "60-74", ">=75", ">=75", "missing"]


def test_draw_images_are_made_once_per_chunk() -> None:
    d = Draw(np.ones((2, 3)), np.array([0, 2, 1, 1]))
    assert d.images is d.images and d.images.shape == (4, 2)
