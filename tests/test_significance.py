"""Tests of skin_core.analysis.significance: exact and permutation tests, image and lesion level."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import special, stats

from skin_core.analysis.clusters import lesion_strata
from skin_core.analysis.lesion_null import pattern_pmf, random_injections
from skin_core.analysis.poisson_binomial import iid_sum_pmf, iid_sum_tail
from skin_core.analysis.significance import (
    class_error_rates,
    consistent_error_significance,
    exact_test,
    permutation_null,
    permutation_test,
    permute_errors,
    poisson_binomial_pmf,
    poisson_binomial_tail,
)
from skin_core.errors import ConfigError, DataError


def _brute_pmf(p: np.ndarray) -> np.ndarray:
    out = np.zeros(len(p) + 1)
    for bits in itertools.product((0, 1), repeat=len(p)):
        b = np.array(bits, dtype=bool)
        out[b.sum()] += np.prod(np.where(b, p, 1 - p))
    return out


@pytest.mark.parametrize("p", [
    [0.1, 0.3, 0.5, 0.7, 0.05, 0.9],
    [0.2, 0.2, 0.2, 0.6, 0.6, 0.01, 0.99],
    [0.0, 1.0, 0.4, 1.0, 0.0, 0.25],
    [0.5],
])
def test_pmf_matches_brute_force_enumeration(p):
    p = np.array(p)
    pmf = poisson_binomial_pmf(p)
    assert pmf.shape == (len(p) + 1,)
    np.testing.assert_allclose(pmf, _brute_pmf(p), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("n", "q"), [(50, 0.3), (1000, 0.002), (25331, 0.01)])
def test_pmf_equals_binomial_when_probabilities_equal(n, q):
    pmf = poisson_binomial_pmf(np.full(n, q))
    np.testing.assert_allclose(pmf, stats.binom.pmf(np.arange(n + 1), n, q), rtol=1e-9,
                               atol=1e-300)


def test_pmf_many_distinct_probabilities_is_normalised_and_matches_moments():
    p = np.random.default_rng(1).uniform(0, 0.2, 3000)
    pmf = poisson_binomial_pmf(p)
    k = np.arange(pmf.size)
    assert pmf.sum() == pytest.approx(1.0, abs=1e-12)
    assert (k * pmf).sum() == pytest.approx(p.sum(), rel=1e-10)
    assert (k**2 * pmf).sum() - p.sum() ** 2 == pytest.approx((p * (1 - p)).sum(), rel=1e-8)


def test_tail_matches_brute_force_for_every_threshold():
    p = np.array([0.1, 0.3, 0.5, 0.7, 0.05, 0.9, 0.02])
    brute = _brute_pmf(p)
    for k in range(len(p) + 2):
        got, log10 = poisson_binomial_tail(k, p)
        want = brute[k:].sum() if k <= len(p) else 0.0
        assert got == pytest.approx(want, rel=1e-10, abs=1e-15)
        if want > 0:
            assert log10 == pytest.approx(math.log10(want), abs=1e-9)


def test_tilted_tail_agrees_with_direct_sum_where_both_work():
    p = np.random.default_rng(0).uniform(0, 0.05, 2000)
    pmf = poisson_binomial_pmf(p)
    for k in (60, 80, 120, 200):  # mean ~ 50: all above it, so the tilted path runs
        got, log10 = poisson_binomial_tail(k, p)
        assert got == pytest.approx(pmf[k:].sum(), rel=1e-8)
        assert log10 == pytest.approx(math.log10(pmf[k:].sum()), abs=1e-8)


def test_tail_far_below_double_precision_stays_finite_in_log10():
    n, q, k = 1000, 0.01, 600
    want = special.logsumexp(stats.binom.logpmf(np.arange(k, n + 1), n, q)) / math.log(10)
    p_value, log10 = poisson_binomial_tail(k, np.full(n, q))
    assert p_value == 0.0  # underflows as a float ...
    assert log10 == pytest.approx(want, rel=1e-9)  # ... but log10 is exact (~ -911)
    assert log10 < -900


def test_tail_edge_cases():
    p = np.array([0.0, 1.0, 0.5, 0.25])
    assert poisson_binomial_tail(0, p) == (1.0, 0.0)
    assert poisson_binomial_tail(1, p) == (1.0, 0.0)  # one certain success
    assert poisson_binomial_tail(4, p) == (0.0, -math.inf)  # p=0 can never succeed
    got, log10 = poisson_binomial_tail(3, p)  # every trial that can succeed does
    assert got == pytest.approx(0.125)
    assert log10 == pytest.approx(math.log10(0.125))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        poisson_binomial_pmf([0.2, 1.5])


def _independent(seed: int, counts=(300, 200, 100), rates=((0.3, 0.1, 0.5), (0.2, 0.15, 0.4),
                                                          (0.25, 0.2, 0.45))):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    errors = np.stack([rng.random(labels.size) < np.asarray(r)[labels] for r in rates])
    return errors, labels


def _correlated(seed: int):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), (300, 200, 100))
    hard = rng.random(labels.size) < 0.15
    errors = np.stack([hard ^ (rng.random(labels.size) < 0.03) for _ in range(4)])
    return errors, labels


def test_class_error_rates_counts_per_model_and_class():
    errors = np.array([[1, 0, 1, 1, 0], [0, 0, 1, 0, 1]], dtype=bool)
    labels = np.array([0, 0, 1, 1, 1])
    wrong, n = class_error_rates(errors, labels)
    assert n.tolist() == [2, 3]
    assert wrong.tolist() == [[1, 2], [0, 2]]


def test_exact_expected_is_sum_of_products_of_class_error_rates():
    errors, labels = _independent(3)
    res = exact_test(errors, labels)
    wrong, n = class_error_rates(errors, labels)
    want = float(np.sum(n * np.prod(wrong / n, axis=0)))
    assert res.extra["expected"] == pytest.approx(want, rel=1e-12)
    assert res.extra["observed"] == int(errors.all(axis=0).sum())
    assert res.statistic == res.extra["observed"]
    assert res.effect == pytest.approx(res.extra["observed"] / want)


def test_exact_min_wrong_uses_at_least_m_of_m_probability():
    errors, labels = _independent(4)
    res = exact_test(errors, labels, min_wrong=2)
    wrong, n = class_error_rates(errors, labels)
    e = wrong / n
    want = 0.0
    for c in range(3):
        a, b, d = e[:, c]
        at_least_2 = a * b * d + a * b * (1 - d) + a * (1 - b) * d + (1 - a) * b * d
        want += n[c] * at_least_2
    assert res.extra["expected"] == pytest.approx(want, rel=1e-12)
    assert res.extra["observed"] == int((errors.sum(axis=0) >= 2).sum())


def test_permute_errors_keeps_per_class_error_counts_per_model():
    errors, labels = _correlated(0)
    shuffled = permute_errors(errors, labels, seed=5)
    w0, n0 = class_error_rates(errors, labels)
    w1, n1 = class_error_rates(shuffled, labels)
    np.testing.assert_array_equal(w0, w1)
    np.testing.assert_array_equal(n0, n1)
    assert not np.array_equal(shuffled, errors)  # the arrangement did change
    # the link between models is broken: far fewer images wrong by all than observed
    assert shuffled.all(axis=0).sum() < errors.all(axis=0).sum() / 3


def test_hypergeometric_null_matches_exact_hypergeometric_for_two_models():
    # two models, one class: |S1 & S2| ~ Hypergeom(n, w1, w2)
    n, w1, w2 = 60, 20, 15
    errors = np.zeros((2, n), dtype=bool)
    errors[0, :w1] = True
    errors[1, n - w2:] = True
    null = permutation_null(errors, np.zeros(n, dtype=int), n_permutations=20_000, seed=1)
    freq = np.bincount(null, minlength=w2 + 1)[: w2 + 1] / null.size
    want = stats.hypergeom.pmf(np.arange(w2 + 1), n, w1, w2)
    assert np.abs(freq - want).max() < 0.01


def test_hypergeometric_and_shuffle_samplers_agree_and_match_expected_count():
    errors, labels = _independent(7, counts=(40, 30), rates=((0.5, 0.4), (0.6, 0.3),
                                                             (0.4, 0.5)))
    for m in (3, 2):
        fast = permutation_null(errors, labels, min_wrong=m, n_permutations=4000, seed=2)
        slow = permutation_null(errors, labels, min_wrong=m, n_permutations=4000, seed=3,
                                method="shuffle")
        expected = exact_test(errors, labels, min_wrong=m).extra["expected"]
        se = np.sqrt(fast.var() / fast.size + slow.var() / slow.size)
        assert abs(fast.mean() - slow.mean()) < 4 * se
        assert abs(fast.mean() - expected) < 4 * fast.std() / np.sqrt(fast.size)
        assert stats.ks_2samp(fast, slow).pvalue > 1e-3


def test_independent_models_give_unremarkable_p_values():
    # over 20 independent data sets the p-values look uniform-ish, not small
    exact_p, perm_p, ratios = [], [], []
    for seed in range(20):
        errors, labels = _independent(100 + seed)
        exact_p.append(exact_test(errors, labels).p_value)
        perm_p.append(permutation_test(errors, labels, n_permutations=500, seed=seed).p_value)
        ratios.append(exact_test(errors, labels).effect)
    for ps in (np.array(exact_p), np.array(perm_p)):
        assert np.median(ps) > 0.2
        assert np.mean(ps < 0.05) <= 0.2
    assert 0.8 < np.median(ratios) < 1.25


def test_correlated_models_give_tiny_p_values():
    errors, labels = _correlated(1)
    ex = exact_test(errors, labels)
    perm = permutation_test(errors, labels, n_permutations=999, seed=0)
    assert ex.p_value < 1e-20
    assert ex.extra["log10_p_value"] < -20
    assert perm.p_value == pytest.approx(1 / 1000)  # +1 correction: never exactly 0
    assert perm.extra["n_permutations"] == 999
    assert ex.effect > 10


def test_permutation_test_is_deterministic_for_a_seed():
    errors, labels = _independent(12)
    a = permutation_null(errors, labels, n_permutations=500, seed=42)
    b = permutation_null(errors, labels, n_permutations=500, seed=42)
    c = permutation_null(errors, labels, n_permutations=500, seed=43)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    r1 = permutation_test(errors, labels, n_permutations=500, seed=np.random.default_rng(9))
    r2 = permutation_test(errors, labels, n_permutations=500, seed=np.random.default_rng(9))
    assert r1.p_value == r2.p_value
    assert r1.extra["seed"] is None


def test_permutation_p_value_uses_plus_one_correction():
    errors, labels = _independent(13)
    res = permutation_test(errors, labels, n_permutations=300, seed=4)
    null = permutation_null(errors, labels, n_permutations=300, seed=4)
    observed = int(errors.all(axis=0).sum())
    assert res.p_value == pytest.approx((1 + np.sum(null >= observed)) / 301)


def test_consistent_error_significance_record_has_the_json_keys():
    errors, labels = _correlated(2)
    res = consistent_error_significance(errors, labels, min_wrong=3, n_permutations=200,
                                        seed=1, models=["a", "b", "c", "d"],
                                        classes=["MEL", "NV", "BCC", "AK"])
    d = res.to_dict()
    for key in ("n_images", "n_models", "observed_all_wrong", "expected_all_wrong",
                "p_value_exact", "p_value_permutation", "ratio_all_wrong", "n_permutations",
                "seed", "method_exact", "method_permutation", "observed_min_wrong",
                "p_value_exact_min_wrong", "p_value_permutation_min_wrong"):
        assert key in d, key
    assert d["n_images"] == 600 and d["n_models"] == 4
    assert d["observed_all_wrong"] == int(errors.all(axis=0).sum())
    assert d["observed_min_wrong"] == int((errors.sum(axis=0) >= 3).sum())
    assert d["n_permutations"] == 200 and d["seed"] == 1
    assert set(d["error_rates"]) == {"a", "b", "c", "d"}
    assert set(d["error_rates"]["a"]) == {"MEL", "NV", "BCC"}  # AK has no images
    assert d["class_counts"]["AK"] == 0
    assert len(d["tests"]) == 4
    # without min_wrong the m-of-M block is absent
    d2 = consistent_error_significance(errors, labels, n_permutations=50).to_dict()
    assert "observed_min_wrong" not in d2 and d2["min_wrong"] == 4


def test_bad_inputs_are_clear_errors():
    errors, labels = _independent(5)
    with pytest.raises(DataError, match="shape"):
        exact_test(errors[0], labels)
    with pytest.raises(DataError, match="one class index per image"):
        exact_test(errors, labels[:-1])
    with pytest.raises(ConfigError, match="from 1 to 3"):
        exact_test(errors, labels, min_wrong=4)
    with pytest.raises(ConfigError, match="must be one of"):
        permutation_test(errors, labels, method="bootstrap")
    with pytest.raises(ConfigError, match="positive integer"):
        permutation_test(errors, labels, n_permutations=0)
    with pytest.raises(DataError, match="True/False"):
        exact_test(errors.astype(int) * 2, labels)


@pytest.mark.realdata
def test_real_isic2019_class_structure_independent_vs_shared_errors(isic2019_csv_dir):
    """On the real ISIC 2019 labels (25,331 images): null calibrated, shared errors detected."""
    import pandas as pd

    gt = pd.read_csv(isic2019_csv_dir / "ISIC_2019_Training_GroundTruth.csv")
    classes = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    labels = gt[classes].to_numpy().argmax(axis=1)
    assert labels.size == 25331
    rng = np.random.default_rng(0)
    rate = np.array([0.3, 0.08, 0.15, 0.4, 0.3, 0.35, 0.2, 0.45])[labels]
    independent = np.stack([rng.random(labels.size) < rate for _ in range(5)])
    res = consistent_error_significance(independent, labels, n_permutations=2000, seed=0)
    assert res.p_value_exact > 0.01 and res.p_value_permutation > 0.01
    assert abs(res.permutation.extra["null_mean"] - res.expected_all_wrong) < 0.1 * max(
        1.0, res.expected_all_wrong)
    shared = rng.random(labels.size) < rate  # one shared error pattern plus 5 % noise
    correlated = np.stack([shared ^ (rng.random(labels.size) < 0.05) for _ in range(5)])
    res2 = consistent_error_significance(correlated, labels, n_permutations=2000, seed=0)
    assert res2.log10_p_value_exact < -100
    assert res2.p_value_permutation == pytest.approx(1 / 2001)


# ------------------------------------------------------------------- sums of i.i.d. variables


def _brute_sum(pieces):
    dist = {0: 1.0}
    for pmf, n in pieces:
        for _ in range(n):
            nxt: dict[int, float] = {}
            for x, px in dist.items():
                for y, py in enumerate(pmf):
                    nxt[x + y] = nxt.get(x + y, 0.0) + px * py
            dist = nxt
    return dist


def test_iid_sum_pmf_and_tail_match_brute_force_enumeration():
    pieces = [([0.6, 0.3, 0.1], 3), ([0.2, 0.0, 0.5, 0.3], 2), ([0.9, 0.1], 4),
              ([0.0, 0.0, 1.0], 1)]
    dist = _brute_sum(pieces)
    offset, pmf = iid_sum_pmf(pieces)
    assert offset == 2  # the last piece is always 2
    want = np.array([dist.get(offset + j, 0.0) for j in range(pmf.size)])
    np.testing.assert_allclose(pmf, want, rtol=1e-12, atol=1e-15)
    for x in range(max(dist) + 2):
        got, log10 = iid_sum_tail(x, pieces)
        tail = sum(v for k, v in dist.items() if k >= x)
        assert got == pytest.approx(tail, rel=1e-10, abs=1e-15)
        if tail > 0:
            assert log10 == pytest.approx(math.log10(tail), abs=1e-9)


def test_iid_sum_far_tail_stays_finite_in_log10():
    n, q, k = 1000, 0.01, 600
    want = special.logsumexp(stats.binom.logpmf(np.arange(k, n + 1), n, q)) / math.log(10)
    assert iid_sum_tail(k, [([1 - q, q], n)])[1] == pytest.approx(want, rel=1e-9)
    # a lesion of two images wrong together: X = 2 Binomial(n, q) in steps of 2
    p, log10 = iid_sum_tail(2 * k, [([1 - q, 0.0, q], n)])
    assert p == 0.0 and log10 == pytest.approx(want, rel=1e-9)


# ------------------------------------------------------------------------ lesion-level tests


def _lesion_study(seed: int, n_lesions: int = 150, flip: float = 0.1):
    """3 models erring per lesion (shared by its 1-4 images), independently of each other."""
    rng = np.random.default_rng(seed)
    k = rng.integers(1, 5, n_lesions)
    lesion = np.repeat(np.arange(n_lesions), k)
    cls = rng.integers(0, 2, n_lesions)
    errors = np.stack([(rng.random(n_lesions) < r)[lesion] ^ (rng.random(lesion.size) < flip)
                       for r in (0.35, 0.4, 0.45)])
    return errors, cls[lesion], np.char.add("L", lesion.astype(str))


def test_one_image_per_lesion_reduces_to_the_image_level_tests():
    errors, labels = _independent(21)
    ids = np.arange(labels.size).astype(str)
    img, les = exact_test(errors, labels), exact_test(errors, labels, lesions=ids)
    assert les.p_value == pytest.approx(img.p_value, rel=1e-9)
    assert les.extra["expected"] == pytest.approx(img.extra["expected"], rel=1e-12)
    assert les.extra["null_interval_95"] == img.extra["null_interval_95"]
    assert les.extra["unit"] == "lesion" and img.extra["unit"] == "image"
    np.testing.assert_array_equal(
        permutation_null(errors, labels, n_permutations=300, seed=1),
        permutation_null(errors, labels, n_permutations=300, seed=1, lesions=ids))


def test_lesion_permutation_keeps_each_models_lesion_patterns_per_stratum():
    errors, labels, lesions = _lesion_study(3)
    strata = lesion_strata(labels, lesions)
    shuffled = permute_errors(errors, labels, seed=4, lesions=lesions)
    for block in strata.blocks:
        for m in range(errors.shape[0]):
            before = sorted(map(tuple, errors[m, block].astype(int)))
            after = sorted(map(tuple, shuffled[m, block].astype(int)))
            assert before == after  # the same multiset of lesion error patterns
    single_lab = labels[strata.single]
    for c in (0, 1):
        idx = strata.single[single_lab == c]
        np.testing.assert_array_equal(errors[:, idx].sum(axis=1), shuffled[:, idx].sum(axis=1))
    assert not np.array_equal(shuffled, errors)


@pytest.mark.parametrize("min_wrong", [3, 2])
def test_fast_lesion_sampler_matches_literal_lesion_shuffles(min_wrong):
    errors, labels, lesions = _lesion_study(5)
    fast = permutation_null(errors, labels, min_wrong=min_wrong, n_permutations=4000, seed=2,
                            lesions=lesions)
    slow = permutation_null(errors, labels, min_wrong=min_wrong, n_permutations=1500, seed=3,
                            lesions=lesions, method="shuffle")
    se = np.sqrt(fast.var() / fast.size + slow.var() / slow.size)
    assert abs(fast.mean() - slow.mean()) < 4 * se
    assert 0.8 < fast.var() / slow.var() < 1.25
    assert stats.ks_2samp(fast, slow).pvalue > 1e-3
    # the lesion null is wider than the image null on clustered errors
    image = permutation_null(errors, labels, min_wrong=min_wrong, n_permutations=2000, seed=6)
    assert fast.var() > 1.3 * image.var()


def test_random_injections_are_uniform_ordered_subsets():
    rng = np.random.default_rng(0)
    a, b = random_injections([(5, 2), (4, 4)], 20_000, rng)
    assert a.shape == (20_000, 2) and b.shape == (20_000, 4)
    assert np.all(np.sort(b, axis=1) == np.arange(4))  # full permutations of 0..3
    pairs = np.bincount(a[:, 0] * 5 + a[:, 1], minlength=25).reshape(5, 5)
    assert np.all(np.diag(pairs) == 0)  # never the same element twice
    off = pairs[~np.eye(5, dtype=bool)]
    assert stats.chisquare(off).pvalue > 1e-3  # all 20 ordered pairs equally likely
    perms = np.bincount(np.ravel_multi_index(b.T, (4,) * 4), minlength=256)
    assert stats.chisquare(perms[perms > 0]).pvalue > 1e-3 and (perms > 0).sum() == 24


def test_pattern_pmf_matches_brute_force_over_pattern_combinations():
    pats = np.random.default_rng(5).random((3, 4, 3)) < 0.5  # 3 models, 4 lesions of 3 images
    for m in (1, 2, 3):
        want = np.zeros(4)
        for combo in itertools.product(range(4), repeat=3):
            count = sum(pats[j, combo[j]].astype(int) for j in range(3))
            want[(count >= m).sum()] += 1 / 64
        np.testing.assert_allclose(pattern_pmf(pats, m), want, atol=1e-15)


def test_lesion_exact_test_agrees_with_the_lesion_permutation_mean():
    errors, labels, lesions = _lesion_study(7)
    ex = exact_test(errors, labels, lesions=lesions)
    perm = permutation_test(errors, labels, n_permutations=3000, seed=0, lesions=lesions)
    sd = perm.extra["null_sd"]
    assert abs(ex.extra["expected"] - perm.extra["null_mean"]) < 0.1 * sd + 0.5
    # sampling lesion patterns with replacement: at least the permutation null's variance
    assert ex.extra["variance"] >= 0.9 * sd**2
    assert ex.n["lesions"] == lesion_strata(labels, lesions).n_clusters
    assert "lesion" in ex.method and "lesions are the independent units" in ex.assumptions


def test_lesion_exact_reports_why_when_patterns_are_too_varied(monkeypatch):
    from skin_core.analysis import lesion_null

    errors, labels, lesions = _lesion_study(8)
    monkeypatch.setattr(lesion_null, "MAX_PATTERN_STATES", 2)
    ex = exact_test(errors, labels, lesions=lesions)
    assert math.isnan(ex.p_value) and "too varied" in ex.extra["reason"]
    d = consistent_error_significance(errors, labels, n_permutations=50, lesions=lesions,
                                      image_level_reference=False).to_dict()
    assert d["p_value_exact"] is None and d["p_value_permutation"] > 0


def test_consistent_error_significance_with_lesions_records_the_clustering():
    errors, labels, lesions = _lesion_study(9)
    res = consistent_error_significance(errors, labels, min_wrong=2, n_permutations=200,
                                        seed=1, lesions=lesions)
    d = res.to_dict()
    strata = lesion_strata(labels, lesions)
    c = d["clustering"]
    assert c["unit"] == "lesion" and c["n_clusters"] == strata.n_clusters == 150
    assert c["n_images_in_multi_image_lesions"] + c["n_single_image_clusters"] == labels.size
    assert d["method_permutation"].startswith("lesion-level permutation test")
    assert d["method_exact"].startswith("lesion-level exact test")
    assert all(t["extra"]["unit"] == "lesion" for t in d["tests"]) and len(d["tests"]) == 4
    img = d["image_level"]
    assert img["p_value_exact"] == pytest.approx(exact_test(errors, labels).p_value)
    assert "for comparison only" in img["note"]
    assert consistent_error_significance(errors, labels, n_permutations=20).to_dict()[
        "clustering"] == {"unit": "image"}
    with pytest.raises(DataError, match="lesion ids of length"):
        exact_test(errors, labels, lesions=lesions[:-1])


def test_correlated_lesions_still_give_tiny_lesion_level_p_values():
    rng = np.random.default_rng(2)
    lesion = np.repeat(np.arange(400), rng.integers(1, 4, 400))
    labels = (np.arange(400) % 3)[lesion]
    hard = (rng.random(400) < 0.15)[lesion]
    errors = np.stack([hard ^ (rng.random(lesion.size) < 0.03) for _ in range(4)])
    res = consistent_error_significance(errors, labels, n_permutations=999, seed=0,
                                        lesions=lesion.astype(str))
    assert res.p_value_permutation == pytest.approx(1 / 1000)
    assert res.log10_p_value_exact < -20
