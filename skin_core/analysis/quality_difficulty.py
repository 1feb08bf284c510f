"""Image quality of difficult versus control images, with lesions as the unit when known.

:func:`compare_quality` compares each quality measure of :mod:`skin_core.analysis.quality`
between the ``difficult`` and ``control`` images of ``difficulty.csv`` and fits a logistic
model of difficulty on the measures with the class as a covariate. Sign convention
everywhere: difficult minus control.

Images of one lesion are alike in quality and, being the same lesion, tend to fall in the
same group, so tests that count images as independent reject a true null far too often. When
the difficulty table carries ``lesion_id`` (``clusters="auto"``) every figure treats the
lesion as the unit (images without a lesion id are their own cluster):

================================  =============================================================
record                            lesion level (``clusters="lesion"``)
================================  =============================================================
``mann_whitney``                  the Wilcoxon-Mann-Whitney effect ``U / (n_d n_c)`` (the AUC
                                  of the measure for "difficult") tested against 1/2 with the
                                  cluster-robust variance of Obuchowski (1997, Biometrics 53:
                                  567-578): a z test; its CI is the Wald interval of the AUC
``mann_whitney_image_level``      scipy's Mann-Whitney U over images (for comparison only)
``cliffs_delta``                  ``d = 2 AUC - 1``; CI by the lesion cluster bootstrap
                                  (percentile; lesions resampled with replacement)
``median_difference``             ``median(difficult) - median(control)``; CI by the same
                                  cluster bootstrap
``logistic``                      statsmodels ``Logit`` with ``cov_type="cluster"`` (sandwich
                                  errors clustered by lesion, small-sample corrected)
================================  =============================================================

At image level (``clusters="image"``, or no ``lesion_id``): scipy's Mann-Whitney U, Cliff's
delta with its asymptotic CI (:func:`cliffs_delta`), a percentile bootstrap of the median
difference with the groups resampled separately, and a model-based logistic fit, as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from skin_core.analysis.clusters import cluster_codes, missing_lesion_ids
from skin_core.analysis.quality import MODEL_MEASURES, _ok_rows, _pick_measures
from skin_core.analysis.records import TestResult
from skin_core.constants import GROUP_CONTROL, GROUP_DIFFICULT, IMAGE_ID, LABEL, LESION_ID
from skin_core.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CLUSTER_CHOICES", "clustered_auc_test", "cliffs_delta", "compare_quality"]

#: ``clusters`` options of :func:`compare_quality`.
CLUSTER_CHOICES: tuple[str, ...] = ("auto", "lesion", "image")

#: Cells (resamples x images) per block of the cluster bootstrap (bounds memory).
BOOT_CELLS = 4_000_000


# --------------------------------------------------------------------------------------------
# effect sizes and tests over two samples


def cliffs_delta(x: np.ndarray, y: np.ndarray, *, confidence: float = 0.95) -> TestResult:
    """Cliff's delta ``P(X > Y) - P(X < Y)`` with Cliff's asymptotic CI (independent values).

    ``d = mean_ij sign(x_i - y_j)`` over the ``m = len(x)`` by ``n = len(y)`` dominance matrix
    with row means ``d_i.`` and column means ``d_.j``. Its variance is Cliff's **consistent**
    estimate (Cliff 1996, *Ordinal Methods for Behavioral Data Analysis*; the
    ``use.unbiased=FALSE`` option of R's ``effsize::cliff.delta``)::

        s2_row = sum_i (d_i. - d)^2 / (m - 1)
        s2_col = sum_j (d_.j - d)^2 / (n - 1)
        s2_ij  = sum_ij (d_ij - d)^2 / ((m - 1)(n - 1))
        var(d) = ((n - 1) s2_row + (m - 1) s2_col + s2_ij) / (m n)

    (always positive, unlike the unbiased estimate, which can be negative in small samples).
    The CI is the asymmetric interval of Feng & Cliff (2004) with a normal quantile, which
    stays inside [-1, 1]. O((m + n) log n) via sorted ranks.
    """
    from scipy.special import ndtri

    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    m, n = len(x), len(y)
    ys = np.sort(y)
    xs = np.sort(x)
    # row means d_i. = (#y < x_i - #y > x_i) / n; column means d_.j = (#x > y_j - #x < y_j) / m
    row = (np.searchsorted(ys, x, "left") - (n - np.searchsorted(ys, x, "right"))) / n
    col = ((m - np.searchsorted(xs, y, "right")) - np.searchsorted(xs, y, "left")) / m
    d = float(row.mean())
    ties = int((np.searchsorted(ys, x, "right") - np.searchsorted(ys, x, "left")).sum())
    ci = (float("nan"), float("nan"))
    se = float("nan")
    if m > 1 and n > 1:
        s2_row = float(((row - d) ** 2).sum() / (m - 1))
        s2_col = float(((col - d) ** 2).sum() / (n - 1))
        # sum_ij (d_ij - d)^2 = (#untied pairs) - m n d^2
        s2_ij = ((m * n - ties) - m * n * d * d) / ((m - 1) * (n - 1))
        var = ((n - 1) * s2_row + (m - 1) * s2_col + s2_ij) / (m * n)
        var = max(var, 1e-12 / (m * n))
        se = math.sqrt(var)
        z = float(ndtri(0.5 + confidence / 2))
        root = z * se * math.sqrt((1 - d * d) ** 2 + z * z * var)
        denom = 1 - d * d + z * z * var
        ci = (
            max(-1.0, (d - d**3 - root) / denom),
            min(1.0, (d - d**3 + root) / denom),
        )
    return TestResult(
        name="Cliff's delta",
        effect=d,
        ci=ci,
        statistic=float("nan"),
        p_value=float("nan"),
        method="Cliff's delta with Cliff's (1996) consistent variance estimate and Feng & "
        "Cliff (2004) asymmetric CI (normal quantile)",
        effect_name="P(first > second) - P(first < second)",
        assumptions="independent observations",
        n={"first": m, "second": n},
        extra={"se": se, "confidence": confidence},
    )


def _placements(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Structural components of the AUC ``P(X > Y) + P(X = Y)/2``: ``V10(x_i)``, ``V01(y_j)``."""
    xs, ys = np.sort(x), np.sort(y)
    m, n = x.size, y.size
    v10 = (np.searchsorted(ys, x, "left") + np.searchsorted(ys, x, "right")) / (2.0 * n)
    v01 = (m - (np.searchsorted(xs, y, "left") + np.searchsorted(xs, y, "right")) / 2.0) / m
    return v10, v01, float(v10.mean())


def clustered_auc_test(x: np.ndarray, y: np.ndarray, cx: np.ndarray, cy: np.ndarray, *,
                       confidence: float = 0.95) -> TestResult:
    """Wilcoxon-Mann-Whitney test for clustered data (Obuchowski 1997).

    ``theta = P(X > Y) + P(X = Y) / 2 = U / (m n)`` over all pairs of a ``x`` value (e.g. a
    difficult image) and a ``y`` value (a control image). With ``V10_g`` the sum over cluster
    ``g``'s ``x`` values of their placements ``V10(x_i) = mean_j psi(x_i, y_j)``, ``m_g`` their
    number, ``V01_g`` and ``n_g`` likewise for ``y``, ``I_10`` / ``I_01`` the clusters with
    ``x`` / ``y`` values and ``I`` all clusters::

        S10 = I_10 / ((I_10 - 1) m) sum_g (V10_g - m_g theta)^2
        S01 = I_01 / ((I_01 - 1) n) sum_g (V01_g - n_g theta)^2
        S11 = I / (I - 1) sum_g (V10_g - m_g theta)(V01_g - n_g theta)
        var(theta) = S10 / m + S01 / n + 2 S11 / (m n)

    (Obuchowski, *Biometrics* 53:567-578, 1997). With one value per cluster this is DeLong's
    variance. ``z = (theta - 1/2) / sd``, two-sided normal p-value; Wald CI clipped to [0, 1].

    Parameters
    ----------
    x, y:
        The two samples (finite floats).
    cx, cy:
        Integer cluster code of each value (shared codes across ``x`` and ``y`` mean the same
        cluster, e.g. a lesion with difficult and control images).
    confidence:
        Level of the CI.

    Returns
    -------
    TestResult
        ``effect`` = theta, ``statistic`` = z, ``extra`` with ``se``, ``cliffs_delta`` =
        ``2 theta - 1`` and the cluster counts.
    """
    from scipy.special import ndtr, ndtri

    m, n = x.size, y.size
    v10, v01, theta = _placements(x, y)
    codes = np.concatenate([np.asarray(cx).ravel(), np.asarray(cy).ravel()])
    _, inv = np.unique(codes, return_inverse=True)
    gx, gy = inv[:m], inv[m:]
    g = int(inv.max()) + 1
    a = np.bincount(gx, weights=v10, minlength=g) - np.bincount(gx, minlength=g) * theta
    b = np.bincount(gy, weights=v01, minlength=g) - np.bincount(gy, minlength=g) * theta
    i10 = int(np.unique(gx).size)
    i01 = int(np.unique(gy).size)
    se = z = p = math.nan
    ci = (math.nan, math.nan)
    if i10 > 1 and i01 > 1:
        s10 = i10 / ((i10 - 1) * m) * float(a @ a)
        s01 = i01 / ((i01 - 1) * n) * float(b @ b)
        s11 = g / (g - 1) * float(a @ b)
        var = max(s10 / m + s01 / n + 2 * s11 / (m * n), 0.0)
        se = math.sqrt(var)
        if se > 0:
            z = (theta - 0.5) / se
            p = float(2 * ndtr(-abs(z)))
        q = float(ndtri(0.5 + confidence / 2))
        ci = (max(0.0, theta - q * se), min(1.0, theta + q * se))
    return TestResult(
        name="clustered Wilcoxon-Mann-Whitney",
        effect=theta,
        ci=ci,
        statistic=float(z),
        p_value=float(p),
        method="Wilcoxon-Mann-Whitney AUC with Obuchowski (1997) cluster-robust variance, "
        "two-sided z test of AUC = 1/2; Wald CI",
        effect_name="P(first > second) + P(tie)/2 (U / (n_first n_second))",
        assumptions="clusters (lesions) independent, images within a cluster may be "
        "correlated; normal approximation (many clusters)",
        n={"first": m, "second": n, "clusters": g, "clusters_first": i10,
           "clusters_second": i01},
        extra={"se": se, "cliffs_delta": 2 * theta - 1, "confidence": confidence},
    )


# --------------------------------------------------------------------------------------------
# bootstrap CIs


def _median_diff_boot(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int,
                      confidence: float) -> tuple[float, float]:
    """Percentile bootstrap CI of ``median(x) - median(y)``, each group resampled alone."""
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    per = max(1, 2_000_000 // max(len(x), len(y)))
    for s in range(0, n_boot, per):
        b = min(per, n_boot - s)
        mx = np.median(x[rng.integers(0, len(x), (b, len(x)))], axis=1)
        my = np.median(y[rng.integers(0, len(y), (b, len(y)))], axis=1)
        diffs[s: s + b] = mx - my
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(diffs, [alpha, 1 - alpha])
    return float(lo), float(hi)


def _weighted_medians(sorted_values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Median of each row's expanded sample (value ``i`` repeated ``weights[b, i]`` times).

    ``sorted_values`` ascending; ``weights`` ``(B, n)`` non-negative integers, one row per
    resample. As ``numpy.median`` of the expanded sample (mean of the two middle values for an
    even total); NaN for a row of total weight 0.
    """
    n = weights.shape[1]
    cw = np.cumsum(weights, axis=1)  # along contiguous rows: numpy's fast direction
    total = cw[:, -1]
    out = np.zeros(weights.shape[0])
    for rank in ((total + 1) // 2, total // 2 + 1):  # 1-based middle ranks
        pos = np.count_nonzero(cw < rank[:, None], axis=1)  # first index with cw >= rank
        out += sorted_values[np.minimum(pos, n - 1)]
    out /= 2
    out[total == 0] = np.nan
    return out


def _cluster_bootstrap(x: np.ndarray, y: np.ndarray, cx: np.ndarray, cy: np.ndarray,
                       n_clusters: int, n_boot: int, seed: int,
                       confidence: float) -> dict[str, Any]:
    """Percentile CIs of the median difference and Cliff's delta, resampling clusters.

    Each resample draws ``n_clusters`` clusters with replacement; an image counts as many
    times as its cluster was drawn (weights), so a lesion's images stay together. Resamples
    without a ``x`` or a ``y`` image are left out (counted in ``n_failed``). With the values
    sorted once, a resample's weighted median and weighted Cliff's delta are read from
    cumulative weights (``#y < x_i`` and ``#y > x_i`` at the sorted positions of ``x_i``).
    """
    rng = np.random.default_rng(seed)
    ox, oy = np.argsort(x, kind="stable"), np.argsort(y, kind="stable")
    xs, ys, cxs, cys = x[ox], y[oy], cx[ox], cy[oy]
    left = np.searchsorted(ys, xs, "left")
    right = np.searchsorted(ys, xs, "right")
    med = np.empty(n_boot)
    delta = np.empty(n_boot)
    per = max(1, min(n_boot, BOOT_CELLS // max(n_clusters, xs.size + ys.size)))
    for s in range(0, n_boot, per):
        b = min(per, n_boot - s)
        draws = rng.integers(0, n_clusters, (b, n_clusters))
        mult = np.bincount((draws + n_clusters * np.arange(b)[:, None]).ravel(),
                           minlength=b * n_clusters).reshape(b, n_clusters)
        wx, wy = mult[:, cxs], mult[:, cys]  # (b, n_x), (b, n_y)
        med[s: s + b] = _weighted_medians(xs, wx) - _weighted_medians(ys, wy)
        cwy = np.zeros((b, ys.size + 1), dtype=np.int64)
        np.cumsum(wy, axis=1, out=cwy[:, 1:])
        tot_y = cwy[:, -1]
        dom = cwy[:, left] - (tot_y[:, None] - cwy[:, right])  # #y < x_i - #y > x_i, weighted
        tot_x = wx.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            delta[s: s + b] = (wx * dom).sum(axis=1) / (tot_x * tot_y)
    ok = np.isfinite(med) & np.isfinite(delta)
    alpha = (1 - confidence) / 2
    if ok.sum() < 2:
        nan2 = (math.nan, math.nan)
        return {"median_ci": nan2, "delta_ci": nan2, "n_failed": int((~ok).sum())}
    mlo, mhi = np.quantile(med[ok], [alpha, 1 - alpha])
    dlo, dhi = np.quantile(delta[ok], [alpha, 1 - alpha])
    return {"median_ci": (float(mlo), float(mhi)), "delta_ci": (float(dlo), float(dhi)),
            "n_failed": int((~ok).sum())}


# --------------------------------------------------------------------------------------------
# the comparison


def _check_groups(difficulty: pd.DataFrame) -> None:
    for col in (IMAGE_ID, "group"):
        if col not in difficulty.columns:
            raise DataError(
                f"compare_quality: the difficulty table has no '{col}' column (expected the "
                "difficulty.csv columns image_id, label, ..., group); found "
                f"{list(difficulty.columns)}."
            )


def _resolve_clusters(difficulty: pd.DataFrame, clusters: str) -> str:
    if clusters not in CLUSTER_CHOICES:
        raise ConfigError(f"The 'clusters' parameter of compare_quality must be one of "
                          f"{set(CLUSTER_CHOICES)}. Got {clusters!r} instead.")
    has_ids = LESION_ID in difficulty.columns and not missing_lesion_ids(
        difficulty[LESION_ID].to_numpy()).all()
    if clusters == "lesion" and not has_ids:
        raise DataError("compare_quality(clusters='lesion') needs a 'lesion_id' column with "
                        "lesion ids in the difficulty table; add it (skin-core difficulty "
                        "writes it when the OOF or --dataset has lesion ids) or use "
                        "clusters='image'.")
    if clusters == "auto":
        return "lesion" if has_ids else "image"
    return clusters


def compare_quality(
    quality: pd.DataFrame,
    difficulty: pd.DataFrame,
    *,
    measures: Sequence[str] | None = None,
    model_measures: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    clusters: str = "auto",
) -> dict[str, Any]:
    """Compare image quality of ``difficult`` against ``control`` images.

    Sign convention everywhere: difficult minus control (Cliff's delta > 0 and a median
    difference > 0 mean the measure is higher in difficult images; an odds ratio > 1 means a
    higher measure goes with higher odds of being difficult).

    Parameters
    ----------
    quality:
        :func:`~skin_core.analysis.quality.compute_quality` table (``image_id`` + measures
        [+ ``error``]). Rows with an error are left out and counted.
    difficulty:
        ``difficulty.csv`` table: ``image_id``, ``group`` (``difficult`` / ``control`` /
        other), ``label`` (needed for the logistic model's class covariate) and optionally
        ``lesion_id``.
    measures:
        Measures to compare (default :data:`~skin_core.analysis.quality.COMPARE_MEASURES`
        present in ``quality``).
    model_measures:
        Covariates of the logistic model (default :data:`~skin_core.analysis.quality.
        MODEL_MEASURES` present), each standardised (z-score over the modelled images) so
        odds ratios are per 1 SD.
    n_boot, seed:
        Bootstrap resamples and seed of the CIs.
    confidence:
        Confidence level of every interval.
    clusters:
        ``"auto"`` (default): lesion level when ``difficulty`` has lesion ids, else image
        level; ``"lesion"``: lesion level (ids required); ``"image"``: image level.

    Returns
    -------
    dict
        ``{"n": {...}, "clustering": {"unit", "n_clusters", "n_multi_image_lesions"},
        "measures": {measure: {"median_difficult", "median_control", "mann_whitney":
        TestResult, "cliffs_delta": TestResult, "median_difference": TestResult[,
        "mann_whitney_image_level": TestResult]}}, "logistic": {...}}`` (see the module
        docstring for the lesion-level methods). ``mann_whitney`` carries a Holm-adjusted
        p-value across measures in ``extra["p_holm"]``. ``logistic`` holds ``odds_ratios``
        (one TestResult per measure: effect = odds ratio per SD, CI, Wald z, p), ``n``,
        ``classes_dropped`` (classes whose images are all in one group: they carry no
        information within class and would make the fit diverge), ``converged``,
        ``pseudo_r2`` and ``error`` (why no model was fitted, else ``None``).

    Raises
    ------
    DataError
        Missing columns, or fewer than 2 measured images in either group.
    ConfigError
        Bad ``measures``, ``n_boot`` or ``clusters``.
    """
    if IMAGE_ID not in quality.columns:
        raise DataError(
            f"compare_quality: the quality table has no '{IMAGE_ID}' column; found "
            f"{list(quality.columns)}."
        )
    _check_groups(difficulty)
    for name, table in (("quality", quality), ("difficulty", difficulty)):
        dup = table[IMAGE_ID].astype(str).duplicated()
        if dup.any():
            raise DataError(
                f"compare_quality: image_id {table[IMAGE_ID].astype(str)[dup].iloc[0]!r} occurs "
                f"more than once in the {name} table; give one row per image."
            )
    if n_boot < 100:
        raise ConfigError(f"The 'n_boot' parameter must be >= 100; got {n_boot}.")
    unit = _resolve_clusters(difficulty, clusters)
    measures = _pick_measures(quality, measures, "compare_quality")
    q = quality.loc[_ok_rows(quality)]
    n_errors = int(len(quality) - len(q))
    d = difficulty[difficulty["group"].isin([GROUP_DIFFICULT, GROUP_CONTROL])]
    keep = [IMAGE_ID, "group"] + [c for c in (LABEL, LESION_ID) if c in d.columns]
    d = d[keep].astype({IMAGE_ID: str})
    q = q.drop(columns=[c for c in ("group", LABEL, LESION_ID) if c in q.columns])
    q = q.astype({IMAGE_ID: str})
    merged = d.merge(q, on=IMAGE_ID, how="inner", validate="one_to_one")
    n_missing = int(len(d) - len(merged))
    is_diff = (merged["group"] == GROUP_DIFFICULT).to_numpy()
    counts = {
        "difficult": int(is_diff.sum()),
        "control": int((~is_diff).sum()),
        "not_measured": n_missing,
        "quality_errors": n_errors,
    }
    if counts["difficult"] < 2 or counts["control"] < 2:
        raise DataError(
            "compare_quality needs at least 2 measured difficult and 2 measured control images; "
            f"found {counts['difficult']} difficult and {counts['control']} control (check that "
            "quality.csv and difficulty.csv share image_id values)."
        )
    groups = None
    clustering: dict[str, Any] = {"unit": "image"}
    if unit == "lesion":
        groups = cluster_codes(merged[LESION_ID].to_numpy())
        sizes = np.bincount(groups)
        clustering = {"unit": "lesion", "n_clusters": int(sizes.size),
                      "n_multi_image_lesions": int((sizes > 1).sum()),
                      "n_images_in_multi_image_lesions": int(sizes[sizes > 1].sum())}
    results: dict[str, Any] = {}
    for k, m in enumerate(measures):
        res = _compare_one(merged, m, is_diff, groups, n_boot, seed + k, confidence)
        if res is not None:
            results[m] = res
    if results:
        adj = _holm(np.array([r["mann_whitney"].p_value for r in results.values()]))
        for r, p_adj in zip(results.values(), adj, strict=True):
            old = r["mann_whitney"]
            r["mann_whitney"] = TestResult(
                **{**old.__dict__, "extra": {**old.extra, "p_holm": float(p_adj)}})
    if model_measures is None:
        model_measures = [m for m in MODEL_MEASURES if m in merged.columns]
    else:
        model_measures = _pick_measures(quality, model_measures, "compare_quality")
    logistic = _logistic_difficulty(merged, is_diff, list(model_measures), confidence, groups)
    return {"n": counts, "clustering": clustering, "measures": results, "logistic": logistic}


def _holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (as statsmodels ``multipletests(method="holm")``,
    without its ``gc.collect()`` that costs 0.1 s a call); NaN stays NaN."""
    out = np.full(p.size, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


def _compare_one(merged: pd.DataFrame, m: str, is_diff: np.ndarray, groups: np.ndarray | None,
                 n_boot: int, seed: int, confidence: float) -> dict[str, Any] | None:
    """The per-measure records of :func:`compare_quality` (``None``: too few values)."""
    import pandas as pd
    from scipy.stats import mannwhitneyu

    v = pd.to_numeric(merged[m], errors="coerce").to_numpy(dtype=float)
    fx, fy = is_diff & np.isfinite(v), ~is_diff & np.isfinite(v)
    x, y = v[fx], v[fy]
    if len(x) < 2 or len(y) < 2:
        return None
    n = {"difficult": len(x), "control": len(y)}
    mw = mannwhitneyu(x, y, alternative="two-sided")
    u = float(mw.statistic)
    image_mw = TestResult(
        name=f"{m}: difficult vs control",
        effect=u / (len(x) * len(y)),
        ci=(float("nan"), float("nan")),
        statistic=u,
        p_value=float(mw.pvalue),
        method="Mann-Whitney U, two-sided (scipy.stats.mannwhitneyu, tie-corrected normal "
        "approximation or exact)",
        effect_name="P(difficult > control) + P(tie)/2 (U / (n_difficult n_control))",
        assumptions="independent images",
        n=n,
    )
    cd = cliffs_delta(x, y, confidence=confidence)
    med_d, med_c = float(np.median(x)), float(np.median(y))
    boot_extra = {"n_boot": n_boot, "seed": seed, "confidence": confidence}
    delta_name = "P(difficult > control) - P(difficult < control)"
    if groups is None:
        cliff = TestResult(**{**cd.__dict__, "name": f"{m}: Cliff's delta, difficult vs control",
                              "n": n, "effect_name": delta_name})
        med_ci = _median_diff_boot(x, y, n_boot, seed, confidence)
        med_method = (f"percentile bootstrap, groups resampled separately, {n_boot} resamples, "
                      f"seed {seed}")
        out = {"mann_whitney": image_mw}
        assumptions = "independent images"
    else:
        gx, gy = groups[fx], groups[fy]
        n_cl = int(np.unique(np.concatenate([gx, gy])).size)
        _, codes = np.unique(np.concatenate([gx, gy]), return_inverse=True)
        cgx, cgy = codes[: len(x)], codes[len(x):]
        rank = clustered_auc_test(x, y, cgx, cgy, confidence=confidence)
        boot = _cluster_bootstrap(x, y, cgx, cgy, n_cl, n_boot, seed, confidence)
        n = {**n, "lesions": n_cl}
        boot_extra["n_failed"] = boot["n_failed"]
        assumptions = "lesions independent; images of a lesion may be correlated"
        cliff = TestResult(
            name=f"{m}: Cliff's delta, difficult vs control",
            effect=cd.effect,
            ci=boot["delta_ci"],
            statistic=float("nan"),
            p_value=float("nan"),
            method=f"Cliff's delta; CI: lesion cluster bootstrap (percentile, lesions "
            f"resampled with replacement), {n_boot} resamples, seed {seed}",
            effect_name=delta_name,
            assumptions=assumptions,
            n=n,
            extra={**boot_extra, "ci_image_level": list(cd.ci)},
        )
        med_ci = boot["median_ci"]
        med_method = (f"lesion cluster bootstrap (percentile, lesions resampled with "
                      f"replacement), {n_boot} resamples, seed {seed}")
        out = {
            "mann_whitney": TestResult(**{
                **rank.__dict__, "name": f"{m}: difficult vs control (lesion-clustered)",
                "effect_name": image_mw.effect_name, "n": n,
                "extra": {**rank.extra, "image_level_p_value": image_mw.p_value}}),
            "mann_whitney_image_level": image_mw,
        }
    out.update({
        "cliffs_delta": cliff,
        "median_difference": TestResult(
            name=f"{m}: median difference, difficult - control",
            effect=med_d - med_c,
            ci=med_ci,
            statistic=float("nan"),
            p_value=float("nan"),
            method=med_method,
            effect_name="median(difficult) - median(control)",
            assumptions=assumptions,
            n=n,
            extra=boot_extra,
        ),
    })
    return {"median_difficult": med_d, "median_control": med_c, **out}


def _logistic_difficulty(merged: pd.DataFrame, is_diff: np.ndarray, measures: list[str],
                         confidence: float, groups: np.ndarray | None = None) -> dict[str, Any]:
    """Logistic model of difficult (1) vs control (0); cluster-robust when ``groups`` given."""
    import warnings

    import pandas as pd
    import statsmodels.api as sm

    clustered = groups is not None
    se_kind = ("sandwich standard errors clustered by lesion (statsmodels cov_type='cluster', "
               "small-sample corrected)" if clustered else "model-based standard errors")
    out: dict[str, Any] = {
        "measures": measures, "n": {}, "odds_ratios": {}, "classes_dropped": [],
        "measures_dropped": [], "converged": False, "pseudo_r2": float("nan"), "error": None,
        "method": "logistic regression (statsmodels Logit, MLE) of difficult (1) vs control (0) "
        f"on standardised quality measures with label as a categorical covariate; {se_kind}; "
        "Wald CIs",
    }
    X = merged[measures].apply(pd.to_numeric, errors="coerce").astype(float)
    ok = np.isfinite(X.to_numpy()).all(axis=1)
    y = is_diff.astype(float)
    labels = (merged[LABEL].astype(str) if LABEL in merged.columns
              else pd.Series(["all"] * len(merged), index=merged.index))
    # classes where every image is in one group cannot inform a within-class effect
    frac = pd.Series(y[ok]).groupby(labels[ok].to_numpy()).mean()
    dropped = sorted(str(c) for c in frac.index[(frac == 0) | (frac == 1)])
    ok &= ~labels.isin(dropped).to_numpy()
    out["classes_dropped"] = dropped
    X, y, labels = X[ok], y[ok], labels[ok]
    sd = X.std(ddof=0)
    const = [m for m in measures if not (sd[m] > 1e-9 * max(1.0, abs(float(X[m].mean()))))]
    out["measures_dropped"] = const
    kept = [m for m in measures if m not in const]
    out["n"] = {"difficult": int(y.sum()), "control": int(len(y) - y.sum())}
    fit_kw: dict[str, Any] = {}
    if clustered:
        g = np.unique(groups[ok], return_inverse=True)[1].ravel()
        out["n"]["lesions"] = int(g.max()) + 1 if g.size else 0
        fit_kw = {"cov_type": "cluster", "cov_kwds": {"groups": g}}
    if not kept or y.sum() < 2 or (len(y) - y.sum()) < 2 or (clustered and out["n"]["lesions"] < 3):
        out["error"] = "too few images or no varying measure after dropping single-group classes"
        return out
    Z = (X[kept] - X[kept].mean()) / sd[kept]
    dummies = pd.get_dummies(labels.astype(str), prefix="label", drop_first=True, dtype=float)
    design = sm.add_constant(pd.concat([Z.reset_index(drop=True),
                                        dummies.reset_index(drop=True)], axis=1),
                             has_constant="add")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = sm.Logit(y, design).fit(disp=0, maxiter=200, **fit_kw)
    except Exception as exc:  # noqa: BLE001 - singular design etc.: report, do not crash
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    alpha = 1 - confidence
    ci = fit.conf_int(alpha=alpha).clip(-700, 700)  # exp() of a separated fit stays finite
    out["converged"] = bool(fit.mle_retvals.get("converged", False))
    out["pseudo_r2"] = float(fit.prsquared)
    for m in kept:
        out["odds_ratios"][m] = TestResult(
            name=f"{m}: odds of difficult per 1 SD",
            effect=float(np.exp(fit.params[m])),
            ci=(float(np.exp(ci.loc[m, 0])), float(np.exp(ci.loc[m, 1]))),
            statistic=float(fit.tvalues[m]),
            p_value=float(fit.pvalues[m]),
            method="Logit MLE (statsmodels), Wald z test, adjusted for label and the other "
            f"measures; {se_kind}",
            effect_name="odds ratio per standard deviation of the measure",
            assumptions=("lesions independent, images of a lesion may be correlated"
                         if clustered else "independent images")
            + "; log-odds linear in the measures",
            n=dict(out["n"]),
            extra={"sd": float(sd[m]), "coef": float(fit.params[m])},
        )
    return out
