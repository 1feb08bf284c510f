"""Statistics of a reader study on matrices: agreement, consensus, and between-group tests.

This module is the numeric core behind :mod:`skin_core.analysis.readers`. It works on a
reader x image layout (``R`` readers, ``I`` images, ``K`` answer categories):

``answers``
    ``(R, I)`` int array: the category index of each reader's answer, ``-1`` where the
    reader did not read the image. Categories ``0..K-1`` are the classes; the study adds
    one extra category for OTHER answers (outside the class vocabulary).
``truth``
    ``(I,)`` int array: the index of the true class of each image.

Definitions (with sources)
--------------------------
accuracy
    Fraction of answers equal to the truth (OTHER answers count as wrong). *Pooled* accuracy
    is taken over all readings (each reading weighs the same); a reader's accuracy over that
    reader's readings.
consensus
    The plurality answer of an image's readers; a *tie* when two or more answers share the
    highest count (as in Tschandl et al., Lancet Oncol 2019, and the ISIC reader studies).
Cohen's kappa
    ``(p_o - p_e) / (1 - p_e)`` with ``p_o`` the observed agreement and ``p_e`` the agreement
    expected from the two raters' marginal frequencies (Cohen, Educ Psychol Meas 20:37, 1960;
    identical to :func:`sklearn.metrics.cohen_kappa_score` and ``statsmodels``'
    :func:`~statsmodels.stats.inter_rater.cohens_kappa`). Undefined when ``p_e == 1``.
Fleiss' kappa
    ``(P_bar - P_e) / (1 - P_e)`` with ``P_i = (sum_j n_ij^2 - n) / (n (n - 1))``,
    ``P_bar`` their mean over images, ``p_j`` the overall share of category ``j`` and
    ``P_e = sum_j p_j^2`` (Fleiss, Psychol Bull 76:378, 1971; identical to
    :func:`statsmodels.stats.inter_rater.fleiss_kappa` with ``method="fleiss"``). Needs the
    same number ``n >= 2`` of ratings per image.

All random procedures take a ``seed`` and are deterministic for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from skin_core.analysis.records import TestResult

NAN = float("nan")


# --------------------------------------------------------------------------- basics


def wilson_ci(k: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``k / n`` (``(nan, nan)`` when ``n == 0``).

    Wilson, J Am Stat Assoc 22:209 (1927); same as statsmodels'
    ``proportion_confint(k, n, method="wilson")``.
    """
    if n <= 0:
        return (NAN, NAN)
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def kappa_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Cohen's kappa of one or many ``(K, K)`` weighted confusion tables (``(..., K, K)``).

    Returns ``nan`` where the table is empty or the chance agreement ``p_e`` is 1.
    """
    conf = np.asarray(conf, dtype=float)
    total = conf.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        p = conf / total[..., None, None]
        po = np.trace(p, axis1=-2, axis2=-1)
        pe = (p.sum(axis=-1) * p.sum(axis=-2)).sum(axis=-1)
        kappa = (po - pe) / (1 - pe)
    kappa = np.where((total > 0) & (pe < 1 - 1e-12), kappa, np.nan)
    return kappa


def cohen_kappa(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> float:
    """Cohen's kappa between two label sequences of equal length (``nan`` when undefined).

    See the module docstring for the definition; equals
    :func:`sklearn.metrics.cohen_kappa_score` wherever that is defined.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"cohen_kappa needs equal lengths, got {a.shape} and {b.shape}.")
    if a.size == 0:
        return NAN
    cats, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    k = len(cats)
    ia, ib = inv[: a.size], inv[a.size :]
    conf = np.bincount(ia * k + ib, minlength=k * k).reshape(k, k)
    return float(kappa_from_confusion(conf))


def fleiss_kappa_counts(counts: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Fleiss' kappa from an ``(N, K)`` table of rating counts per subject and category.

    Parameters
    ----------
    counts:
        ``counts[i, j]`` = number of raters who put subject ``i`` in category ``j``; every row
        must sum to the same ``n >= 2``.
    weights:
        Optional ``(B, N)`` non-negative subject weights (bootstrap counts); then one kappa per
        row of ``weights`` is returned.

    Returns
    -------
    A 0-d array (no ``weights``) or ``(B,)`` array; ``nan`` where undefined (``P_e == 1``).
    """
    counts = np.asarray(counts, dtype=float)
    n = counts.sum(axis=1)
    if counts.shape[0] == 0 or np.any(n != n[0]) or n[0] < 2:
        raise ValueError("fleiss_kappa_counts needs the same number (>= 2) of ratings per row.")
    n_raters = n[0]
    p_i = ((counts**2).sum(axis=1) - n_raters) / (n_raters * (n_raters - 1))
    w = np.ones((1, counts.shape[0])) if weights is None else np.asarray(weights, dtype=float)
    tot = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_bar = (w @ p_i) / tot
        p_j = (w @ counts) / (tot[:, None] * n_raters)
        p_e = (p_j**2).sum(axis=1)
        kappa = (p_bar - p_e) / (1 - p_e)
    kappa = np.where((tot > 0) & (p_e < 1 - 1e-12), kappa, np.nan)
    return kappa[0] if weights is None else kappa


def pairwise_agreement(answers: np.ndarray, n_categories: int) -> dict[str, np.ndarray]:
    """Percent agreement and Cohen's kappa of every pair of readers, on their common images.

    Parameters
    ----------
    answers:
        ``(R, I)`` category indices, ``-1`` where not read.
    n_categories:
        Number of categories ``C``.

    Returns
    -------
    dict of ``(R, R)`` arrays: ``n`` (images both read), ``agreement`` and ``kappa`` (``nan``
    where ``n == 0`` or the chance agreement is 1). Same values as :func:`cohen_kappa` on each
    pair, computed at once: with ``X_c`` the ``(R, I)`` indicator of answer ``c`` and ``M`` the
    read mask, agreements are ``sum_c X_c X_c^T`` and reader ``a``'s count of ``c`` on the
    images ``b`` read is ``(X_c M^T)[a, b]``.
    """
    answers = np.asarray(answers)
    read = (answers >= 0).astype(np.float64)
    x = np.stack([(answers == c).astype(np.float64) for c in range(n_categories)])  # (C, R, I)
    n = read @ read.T
    agree = np.einsum("cai,cbi->ab", x, x)
    marg = np.einsum("cai,bi->cab", x, read)  # a's answers c on the images b read
    with np.errstate(invalid="ignore", divide="ignore"):
        po = agree / n
        pe = (marg * marg.transpose(0, 2, 1)).sum(axis=0) / (n * n)
        kappa = np.where((n > 0) & (pe < 1 - 1e-12), (po - pe) / (1 - pe), np.nan)
    return {"n": n.astype(int), "agreement": np.where(n > 0, po, np.nan), "kappa": kappa}


def plurality(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plurality answer of each item from weighted vote counts ``(..., I, C)``.

    Returns ``(winner, is_tie, has_votes)``: the index of the most-voted category (the lowest
    index among tied ones), whether two or more categories share the maximum, and whether the
    item has any vote at all.
    """
    votes = np.asarray(votes)
    top = votes.max(axis=-1)
    winner = votes.argmax(axis=-1)
    n_top = (votes == top[..., None]).sum(axis=-1)
    has = top > 0
    return winner, (n_top > 1) & has, has


def percentile_ci(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of the finite ``values`` (``(nan, nan)`` when none are finite)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (NAN, NAN)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return (float(lo), float(hi))


# --------------------------------------------------------------------------- consensus


@dataclass(frozen=True)
class ConsensusPolicy:
    """How ties and an OTHER plurality count: ``"drop"`` (excluded) or ``"wrong"``."""

    ties: str = "drop"
    other: str = "drop"


def consensus_outcome(
    winner: np.ndarray,
    is_tie: np.ndarray,
    has_votes: np.ndarray,
    truth: np.ndarray,
    other_index: int,
    policy: ConsensusPolicy,
) -> tuple[np.ndarray, np.ndarray]:
    """Which items count for consensus accuracy and which of those are correct.

    Returns ``(counted, correct)`` boolean arrays broadcast like ``winner``.
    """
    is_other = (winner == other_index) & ~is_tie
    counted = has_votes.copy()
    if policy.ties == "drop":
        counted &= ~is_tie
    if policy.other == "drop":
        counted &= ~is_other
    correct = counted & ~is_tie & (winner == truth)
    return counted, correct


# --------------------------------------------------------------------------- tests


def fisher_difference(
    correct_a: int,
    n_a: int,
    correct_b: int,
    n_b: int,
    *,
    name: str,
    unit: str,
    labels: tuple[str, str],
    assumptions: str,
    confidence: float = 0.95,
) -> TestResult:
    """Fisher's exact test of two proportions, with the difference ``p_a - p_b`` as effect.

    The table is ``[[correct_a, wrong_a], [correct_b, wrong_b]]``; ``p_value`` is
    :func:`scipy.stats.fisher_exact` (two-sided), ``statistic`` its sample odds ratio, the
    CI Newcombe's hybrid score interval of the difference (Newcombe, Stat Med 17:873, 1998,
    method 10), and ``extra`` holds the odds ratio with its Woolf (log) interval
    (Haldane-Anscombe +0.5 correction when a cell is 0). The conditional-MLE interval of
    :func:`scipy.stats.contingency.odds_ratio` is not used: it takes seconds on tables of
    tens of thousands of readings.
    """
    la, lb = labels
    n_dict = {f"{la}_{unit}": int(n_a), f"{lb}_{unit}": int(n_b)}
    if n_a == 0 or n_b == 0:
        return TestResult(
            name=name, effect=NAN, ci=(NAN, NAN), statistic=NAN, p_value=NAN,
            method="Fisher's exact test (scipy.stats.fisher_exact)",
            effect_name=f"accuracy difference ({la} - {lb})", assumptions=assumptions,
            n=n_dict, extra={"reason": f"no {unit} in one of the groups"},
        )
    table = np.array([[correct_a, n_a - correct_a], [correct_b, n_b - correct_b]])
    res = stats.fisher_exact(table, alternative="two-sided")
    pa, pb = correct_a / n_a, correct_b / n_b
    la_ci = wilson_ci(correct_a, n_a, confidence=confidence)
    lb_ci = wilson_ci(correct_b, n_b, confidence=confidence)
    d = pa - pb
    lo = d - math.sqrt((pa - la_ci[0]) ** 2 + (lb_ci[1] - pb) ** 2)
    hi = d + math.sqrt((la_ci[1] - pa) ** 2 + (pb - lb_ci[0]) ** 2)
    # Woolf (log) interval of the odds ratio, Haldane-Anscombe +0.5 when a cell is 0
    cells = table.astype(float) + (0.5 if (table == 0).any() else 0.0)
    log_or = math.log(cells[0, 0] * cells[1, 1] / (cells[0, 1] * cells[1, 0]))
    se = math.sqrt(float((1.0 / cells).sum()))
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    odds = {"odds_ratio_woolf": math.exp(log_or),
            "odds_ratio_ci": [math.exp(log_or - z * se), math.exp(log_or + z * se)]}
    return TestResult(
        name=name,
        effect=float(d),
        ci=(float(lo), float(hi)),
        statistic=float(res.statistic),
        p_value=float(res.pvalue),
        method="Fisher's exact test (scipy.stats.fisher_exact, two-sided); CI: Newcombe hybrid "
        "score interval of the difference",
        effect_name=f"accuracy difference ({la} - {lb}); statistic = sample odds ratio",
        assumptions=assumptions,
        n=n_dict,
        extra={"table": table.tolist(), "accuracy": {la: pa, lb: pb}, **odds},
    )


def _signed_rank_cdf(n: int) -> np.ndarray:
    """Exact null CDF of the Wilcoxon signed-rank sum ``T+`` for ``n`` untied, non-zero pairs."""
    m = n * (n + 1) // 2
    counts = np.zeros(m + 1)
    counts[0] = 1.0
    for k in range(1, n + 1):
        counts[k:] = counts[k:] + counts[:-k].copy()
    return np.cumsum(counts) / 2.0**n


def hodges_lehmann(d: np.ndarray, *, confidence: float = 0.95) -> tuple[float, tuple[float, float]]:
    """Hodges-Lehmann estimate (median of Walsh averages) with its signed-rank CI.

    The CI is ``[W_(c), W_(M+1-c)]`` over the ``M = n(n+1)/2`` sorted Walsh averages, with
    ``c - 1`` the largest ``k`` such that ``P(T+ <= k) <= alpha/2`` under the exact null
    (Hollander, Wolfe & Chicken, *Nonparametric Statistical Methods*, 3rd ed., sec. 3.3).
    Exact for untied data; approximate with ties. ``(nan, nan)`` when ``n`` is too small for
    the requested confidence (e.g. ``n <= 5`` at 95%).
    """
    d = np.asarray(d, dtype=float)
    n = d.size
    if n == 0:
        return NAN, (NAN, NAN)
    i, j = np.triu_indices(n)
    walsh = np.sort((d[i] + d[j]) / 2)
    est = float(np.median(walsh))
    cdf = _signed_rank_cdf(n)
    alpha = 1 - confidence
    ok = np.nonzero(cdf <= alpha / 2 + 1e-12)[0]
    if ok.size == 0:
        return est, (NAN, NAN)
    c = int(ok[-1]) + 1  # 1-based order statistic
    m = walsh.size
    return est, (float(walsh[c - 1]), float(walsh[m - c]))


def paired_reader_tests(
    diffs: np.ndarray,
    *,
    labels: tuple[str, str],
    confidence: float = 0.95,
) -> list[TestResult]:
    """Wilcoxon signed-rank test and paired t-test on per-reader accuracy differences.

    ``diffs[r]`` is reader ``r``'s accuracy on group ``a`` minus on group ``b`` (readers who
    read images in both groups). The Wilcoxon record (:func:`scipy.stats.wilcoxon` with
    ``zero_method="zsplit"``: readers with a zero difference stay in the ranking, their ranks
    split between the two signs) reports the Hodges-Lehmann estimate and CI. Test, estimate
    and interval use the same ``n`` differences: the Hodges-Lehmann estimate is the median of
    all Walsh averages and its CI inverts the signed-rank statistic ``#{Walsh > 0} +
    #{Walsh = 0} / 2``, which is the zsplit statistic (dropping zeros, Wilcoxon's original
    method, would test on fewer readers than the estimate uses); the t record
    (:func:`scipy.stats.ttest_1samp` on the differences, i.e. the paired t-test) the mean
    difference with its t interval, as a sensitivity analysis.
    """
    la, lb = labels
    d = np.asarray(diffs, dtype=float)
    n = {"readers": int(d.size)}
    common = (
        "readers are the independent units (a random sample of readers); each reader's "
        "accuracy is treated as exact, so variability between images is ignored and the "
        "result generalises to new readers on these images only"
    )
    eff = f"per-reader accuracy difference ({la} - {lb})"
    results = []
    nonzero = d[d != 0]
    if d.size >= 2 and nonzero.size >= 1:
        w = stats.wilcoxon(d, zero_method="zsplit", alternative="two-sided")
        est, ci = hodges_lehmann(d, confidence=confidence)
        w_stat, w_p = float(w.statistic), float(w.pvalue)
        reason = {}
    else:
        est, ci, w_stat, w_p = (float(np.median(d)) if d.size else NAN), (NAN, NAN), NAN, NAN
        reason = {"reason": "needs at least 2 readers with a non-zero difference"}
    results.append(TestResult(
        name=f"per-reader accuracy: {la} vs {lb} (Wilcoxon signed-rank)",
        effect=est, ci=ci, statistic=w_stat, p_value=w_p,
        method="Wilcoxon signed-rank test over readers (scipy.stats.wilcoxon, zero differences "
        "kept with split ranks); effect and CI: Hodges-Lehmann estimate with its signed-rank "
        "interval, over the same differences",
        effect_name=f"{eff}, Hodges-Lehmann (pseudo-median)",
        assumptions=common + "; differences symmetric about their centre",
        n=n, extra={"median_difference": float(np.median(d)) if d.size else None, **reason},
    ))
    if d.size >= 2 and np.ptp(d) > 1e-12:
        t = stats.ttest_1samp(d, 0.0)
        tci = t.confidence_interval(confidence_level=confidence)
        results.append(TestResult(
            name=f"per-reader accuracy: {la} vs {lb} (paired t, sensitivity)",
            effect=float(d.mean()), ci=(float(tci.low), float(tci.high)),
            statistic=float(t.statistic), p_value=float(t.pvalue),
            method="paired t-test over readers (scipy.stats.ttest_1samp on the differences)",
            effect_name=f"{eff}, mean", assumptions=common + "; differences roughly normal",
            n=n,
        ))
    else:
        results.append(TestResult(
            name=f"per-reader accuracy: {la} vs {lb} (paired t, sensitivity)",
            effect=float(d.mean()) if d.size else NAN, ci=(NAN, NAN), statistic=NAN,
            p_value=NAN, method="paired t-test over readers (scipy.stats.ttest_1samp)",
            effect_name=f"{eff}, mean", assumptions=common, n=n,
            extra={"reason": "needs at least 2 readers whose differences are not all equal"},
        ))
    return results


# --------------------------------------------------------------------------- resampling

#: Cells (resamples x items) per block of resampling work: bounds memory to ~32 MB per array.
BLOCK_CELLS = 4_000_000


def _block(n_items: int, cap: int) -> int:
    return max(1, min(cap, BLOCK_CELLS // max(n_items, 1)))


def image_bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray],
    n: int,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """Bootstrap draws of a weighted statistic over ``n`` items, computed in blocks.

    ``statistic(w)`` receives a ``(b, n)`` array of multinomial resampling counts (each row sums
    to ``n``: item ``i`` drawn ``w[k, i]`` times) and returns ``(b,)`` values. Returns the
    ``(n_resamples,)`` draws.
    """
    rng = np.random.default_rng(seed)
    out = np.empty(n_resamples)
    block = _block(n, 1000)
    p = np.full(n, 1.0 / n)
    for start in range(0, n_resamples, block):
        b = min(block, n_resamples - start)
        out[start : start + b] = statistic(rng.multinomial(n, p, size=b).astype(np.float64))
    return out


@dataclass(frozen=True)
class BootstrapDraws:
    """Cluster bootstrap draws of per-group accuracies, one column per resample.

    ``pooled[g]``: pooled reading accuracy of group ``g`` under the two-way (reader x image)
    bootstrap; ``consensus[g]``: consensus accuracy under the same image draws with the reader
    panel fixed. Both ``(G, B)``.
    """

    pooled: np.ndarray
    consensus: np.ndarray


def two_way_bootstrap(
    correct: np.ndarray,
    read: np.ndarray,
    image_group: np.ndarray,
    *,
    n_groups: int,
    consensus_counted: np.ndarray | None = None,
    consensus_correct: np.ndarray | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    block: int | None = None,
) -> BootstrapDraws:
    """Resample readers and images independently and recompute per-group accuracy.

    Each resample draws ``R`` readers with replacement from all readers and, separately within
    each group, that group's images with replacement (group sizes fixed): the "pigeonhole"
    two-way bootstrap of crossed designs (Owen, Ann Appl Stat 1:2, 2007; mildly conservative).
    A reader drawn ``w`` times and an image drawn ``v`` times weigh ``w * v`` in the pooled
    accuracy ``sum w_r v_i correct_ri / sum w_r v_i read_ri``.

    Consensus accuracy is resampled over images only (the reader panel fixed): drawing readers
    with replacement duplicates some readers and drops others, which shrinks the effective
    panel and biases a plurality vote; the consensus belongs to the panel that gave it.

    Parameters
    ----------
    correct, read:
        ``(R, I)`` booleans: the reading is correct; the reader read the image.
    image_group:
        ``(I,)`` group index per image in ``0..n_groups-1`` (``-1``: ignored).
    consensus_counted, consensus_correct:
        ``(I,)`` booleans: the image's consensus counts for consensus accuracy (ties / OTHER
        per policy) and is correct. Omit both to skip consensus draws.

    Returns
    -------
    :class:`BootstrapDraws` with ``(n_groups, n_resamples)`` arrays (``nan`` where a resample
    has no reading or no counted consensus in a group).

    Notes
    -----
    Vectorised: reader and image draws are multinomial counts ``W (B, R)`` and ``V (B, I)``;
    correct readings per image under reader weights are ``W @ correct``, so one block of
    resamples costs a matrix product and a few reductions.
    """
    c_mat = np.asarray(correct, dtype=np.float64)
    m_mat = np.asarray(read, dtype=np.float64)
    r_count, i_count = c_mat.shape
    rng = np.random.default_rng(seed)
    block = block or _block(i_count, 500)
    pooled = np.full((n_groups, n_resamples), np.nan)
    cons = np.full((n_groups, n_resamples), np.nan)
    members = [np.nonzero(image_group == g)[0] for g in range(n_groups)]
    with_cons = consensus_counted is not None and consensus_correct is not None
    if with_cons:
        cc = np.asarray(consensus_counted, dtype=np.float64)
        co = np.asarray(consensus_correct, dtype=np.float64)
    for start in range(0, n_resamples, block):
        b = min(block, n_resamples - start)
        sl = slice(start, start + b)
        w = rng.multinomial(r_count, np.full(r_count, 1.0 / r_count), size=b).astype(np.float64)
        num_w = w @ c_mat  # (b, I)
        den_w = w @ m_mat
        for g, idx in enumerate(members):
            if idx.size == 0:
                continue
            v = rng.multinomial(idx.size, np.full(idx.size, 1.0 / idx.size), size=b).astype(
                np.float64)
            num = np.einsum("bi,bi->b", num_w[:, idx], v)
            den = np.einsum("bi,bi->b", den_w[:, idx], v)
            with np.errstate(invalid="ignore", divide="ignore"):
                pooled[g, sl] = np.where(den > 0, num / den, np.nan)
                if with_cons:
                    cn = v @ cc[idx]
                    cons[g, sl] = np.where(cn > 0, (v @ co[idx]) / cn, np.nan)
    return BootstrapDraws(pooled=pooled, consensus=cons)


def image_permutation_test(
    n_correct: np.ndarray,
    n_read: np.ndarray,
    in_a: np.ndarray,
    *,
    n_permutations: int = 10_000,
    seed: int = 0,
    block: int | None = None,
) -> tuple[float, float, np.ndarray]:
    """Permutation test of the pooled-accuracy difference, permuting images between groups.

    Parameters
    ----------
    n_correct, n_read:
        ``(I,)`` correct readings and readings per image (images of both groups only).
    in_a:
        ``(I,)`` boolean: the image belongs to group ``a`` (else ``b``).

    Returns
    -------
    ``(observed, p_value, null)``: the observed difference ``acc_a - acc_b`` (pooled over
    readings), the two-sided p-value ``(1 + #{|T*| >= |T|}) / (1 + n_permutations)``
    (Phipson & Smyth, Stat Appl Genet Mol Biol 9:39, 2010) and the ``(n_permutations,)`` null
    draws. Group labels are shuffled across images, each image keeping all its readings, so
    the test respects the clustering of readings within images; readers are held fixed.
    """
    c = np.asarray(n_correct, dtype=np.float64)
    m = np.asarray(n_read, dtype=np.float64)
    lab = np.asarray(in_a, dtype=bool)
    c_tot, m_tot = c.sum(), m.sum()

    def diff(ca: np.ndarray, ma: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return ca / ma - (c_tot - ca) / (m_tot - ma)

    observed = float(diff(c[lab].sum(), m[lab].sum()))
    rng = np.random.default_rng(seed)
    null = np.empty(n_permutations)
    base = lab.astype(np.float64)
    block = block or _block(base.size, 1000)
    for start in range(0, n_permutations, block):
        b = min(block, n_permutations - start)
        perm = rng.permuted(np.broadcast_to(base, (b, base.size)), axis=1)
        null[start : start + b] = diff(perm @ c, perm @ m)
    finite = np.isfinite(null)
    extreme = np.sum(np.abs(null[finite]) >= abs(observed) - 1e-12)
    p = float((1 + extreme) / (1 + finite.sum()))
    return observed, p, null


def crossed_glmm(
    correct: np.ndarray,
    reader: np.ndarray,
    image: np.ndarray,
    in_a: np.ndarray,
    *,
    labels: tuple[str, str],
    confidence: float = 0.95,
) -> TestResult:
    """Crossed logistic GLMM ``correct ~ group + (1|reader) + (1|image)`` by variational Bayes.

    Fitted with :class:`statsmodels.genmod.bayes_mixed_glm.BinomialBayesMixedGLM`
    (``fit_vb`` with L-BFGS-B; the maintained Python implementation of crossed random
    effects). The effect is
    the posterior mean of the group coefficient (log odds ratio of a correct reading, group
    ``a`` vs ``b``, conditional on reader and image); the interval is mean +/- z * posterior SD.
    Mean-field variational posteriors are known to understate uncertainty, so the interval is
    approximate; no p-value is reported (``nan``).
    """
    import pandas as pd
    from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM
    from threadpoolctl import threadpool_limits

    la, lb = labels
    df = pd.DataFrame({
        "correct": np.asarray(correct, dtype=float),
        "grp": np.asarray(in_a, dtype=float),
        "reader": np.asarray(reader).astype(str),
        "image": np.asarray(image).astype(str),
    })
    vc = {"image": "0 + C(image)"}
    if df["reader"].nunique() > 1:
        vc["reader"] = "0 + C(reader)"
    model = BinomialBayesMixedGLM.from_formula("correct ~ grp", vc, df)
    # L-BFGS-B instead of the default BFGS: same optimum (posterior means agree to ~1e-4 in
    # our checks) without BFGS's dense inverse Hessian over 2 x (readers + images)
    # parameters (4,000 readings: 1 s instead of 30 s). BLAS threads only add contention here.
    with threadpool_limits(limits=1, user_api="blas"):
        res = model.fit_vb(fit_method="L-BFGS-B")
    mean, sd = float(res.fe_mean[1]), float(res.fe_sd[1])
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    vc_names = list(model.vcp_names)
    vc_sd = {name: float(np.exp(mu)) for name, mu in zip(vc_names, res.vcp_mean, strict=True)}
    return TestResult(
        name=f"reading correct: {la} vs {lb} (crossed GLMM)",
        effect=mean,
        ci=(mean - z * sd, mean + z * sd),
        statistic=mean / sd if sd > 0 else NAN,
        p_value=NAN,
        method="logistic GLMM correct ~ group + (1|reader) + (1|image), variational Bayes "
        "(statsmodels BinomialBayesMixedGLM.fit_vb, L-BFGS-B); interval = posterior mean "
        "+/- z * SD; statistic = posterior mean / SD",
        effect_name=f"log odds ratio of a correct reading ({la} vs {lb}), posterior mean",
        assumptions="normal random intercepts for readers and images (crossed), logit link; "
        "variational posterior (mean-field) understates uncertainty, priors: statsmodels "
        "defaults; no p-value",
        n={"readings": int(df.shape[0]), "readers": int(df["reader"].nunique()),
           "images": int(df["image"].nunique())},
        extra={"posterior_sd": sd, "random_effect_sd": vc_sd,
               "odds_ratio": math.exp(mean)},
    )
