"""The exact and permutation tests of consistent errors, at image or lesion level.

The statistics, nulls and samplers are described in :mod:`skin_core.analysis.significance`
(which re-exports every public name here and adds :func:`~skin_core.analysis.significance.
consistent_error_significance`, the ``significance.json`` record); the lesion-level machinery
is in :mod:`skin_core.analysis.lesion_null`, the exact count distributions in
:mod:`skin_core.analysis.poisson_binomial`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from skin_core.analysis.clusters import LesionStrata, lesion_strata
from skin_core.analysis.lesion_null import (
    PatternLimitError,
    block_tail_counts,
    exact_pieces,
    permute_lesions,
)
from skin_core.analysis.poisson_binomial import (
    iid_sum_pmf,
    iid_sum_tail,
    poisson_binomial_pmf,
    poisson_binomial_tail,
)
from skin_core.analysis.records import TestResult
from skin_core.errors import ConfigError, DataError

__all__ = [
    "ASSUMPTIONS",
    "ASSUMPTIONS_LESION",
    "DEFAULT_PERMUTATIONS",
    "PERMUTATION_METHODS",
    "class_error_rates",
    "exact_test",
    "permutation_null",
    "permutation_test",
    "permute_errors",
]

#: Default number of permutations (the issue's choice).
DEFAULT_PERMUTATIONS = 10_000

#: Samplers of the permutation null: exact-in-distribution fast draw, literal shuffling.
PERMUTATION_METHODS: tuple[str, ...] = ("hypergeometric", "shuffle")

METHOD_EXACT = (
    "image-level exact Poisson-binomial upper tail P(X >= observed) over images, each image's "
    "probability from the models' per-class error rates under independence (exponential "
    "tilting for tiny tails)"
)
METHOD_PERMUTATION = (
    "image-level permutation test: each model's errors shuffled within class independently "
    "per model (per-class error counts kept); p = (1 + #{null >= observed}) / "
    "(1 + n_permutations)"
)
METHOD_EXACT_LESION = (
    "lesion-level exact test: P(X >= observed), X = sum over lesions of the number of their "
    "images wrong by the models; on each lesion every model's error pattern drawn "
    "independently from that model's observed patterns on the lesions of the same stratum "
    "(class sequence and number of images; single-image clusters: class); exact enumeration "
    "of pattern combinations and convolution over lesions (exponential tilting for tiny tails)"
)
METHOD_PERMUTATION_LESION = (
    "lesion-level permutation test: each model's lesion error patterns permuted among the "
    "lesions of the same stratum (class sequence and number of images; single-image clusters "
    "within class), independently per model, a lesion's images kept together; p = (1 + "
    "#{null >= observed}) / (1 + n_permutations)"
)
ASSUMPTIONS = (
    "images are independent units (images of one lesion treated as unrelated); given the true "
    "class, models err independently at their observed per-class error rates (rates "
    "estimated from the same images and treated as fixed); one-sided alternative: more images "
    "wrong by all models than independence predicts"
)
ASSUMPTIONS_LESION = (
    "lesions are the independent units (images without a lesion id are their own lesion) and "
    "exchangeable within their stratum; given the stratum, models err independently of each "
    "other, each keeping its observed lesion error patterns (a model's errors may be shared "
    "by a lesion's images); one-sided alternative: more images wrong by all models than "
    "independence predicts"
)


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def _check_errors(errors: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate ``errors`` (M, N) and ``labels`` (N,); return bool errors, int labels, K."""
    err = np.asarray(errors)
    if err.ndim != 2 or err.shape[0] < 1 or err.shape[1] < 1:
        raise DataError(f"The 'errors' must be an (M models, N images) matrix with M, N >= 1; "
                        f"got shape {err.shape}.")
    if err.dtype != bool:
        if not np.all(np.isin(err, (0, 1))):
            raise DataError("The 'errors' matrix must hold only True/False (or 1/0) values.")
        err = err.astype(bool)
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.size != err.shape[1]:
        raise DataError(f"The 'labels' must be a 1-D array with one class index per image "
                        f"({err.shape[1]}); got shape {lab.shape}.")
    if not np.issubdtype(lab.dtype, np.integer):
        if lab.size and not np.all(np.equal(np.mod(lab, 1), 0)):
            raise DataError("The 'labels' must be integer class indices.")
        lab = lab.astype(np.int64)
    if lab.size and lab.min() < 0:
        raise DataError(f"The 'labels' must be non-negative class indices; found {lab.min()}.")
    n_classes = int(lab.max()) + 1 if lab.size else 0
    return err, lab.astype(np.int64, copy=False), n_classes


def _check_min_wrong(min_wrong: int | None, n_models: int) -> int:
    if min_wrong is None:
        return n_models
    if isinstance(min_wrong, bool) or not isinstance(min_wrong, (int, np.integer)):
        raise ConfigError(f"The 'min_wrong' parameter must be an integer from 1 to {n_models} "
                          f"(the number of models); got {min_wrong!r}.")
    if not 1 <= int(min_wrong) <= n_models:
        raise ConfigError(f"The 'min_wrong' parameter must be from 1 to {n_models} (the number "
                          f"of models); got {min_wrong}.")
    return int(min_wrong)


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def class_error_rates(errors: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-model, per-class error counts and class sizes.

    Parameters
    ----------
    errors:
        ``(M, N)`` boolean matrix, ``errors[m, i]`` = model ``m`` misclassifies image ``i``.
    labels:
        ``(N,)`` integer class index of each image (the strata).

    Returns
    -------
    (wrong, n_per_class):
        ``wrong`` is ``(M, K)`` integer error counts, ``n_per_class`` ``(K,)`` image counts;
        the rates are ``wrong / n_per_class`` (classes without images have no rate).
    """
    err, lab, n_classes = _check_errors(errors, labels)
    n_per_class = np.bincount(lab, minlength=n_classes)
    wrong = np.stack([np.bincount(lab, weights=e, minlength=n_classes) for e in err])
    return wrong.astype(np.int64), n_per_class


def _at_least_m_of(rates: np.ndarray, m: int) -> float:
    """P(at least m successes) for independent trials with probabilities ``rates``."""
    pmf = np.ones(1)
    for r in rates:  # M is small: plain DP
        pmf = np.convolve(pmf, [1.0 - r, r])
    return float(min(1.0, pmf[m:].sum()))


def _strata(lesions: Any, lab: np.ndarray) -> LesionStrata | None:
    """Lesion strata for ``lesions`` (``None``: image level)."""
    if lesions is None:
        return None
    return lesion_strata(lab, lesions)


def _what(m: int, n_models: int) -> str:
    return "all" if m == n_models else f">= {m} of {n_models}"


def _n_record(n_images: int, n_models: int, strata: LesionStrata | None) -> dict[str, int]:
    n = {"images": int(n_images), "models": int(n_models)}
    if strata is not None:
        n["lesions"] = strata.n_clusters
    return n


# --------------------------------------------------------------------------------------------
# exact test
# --------------------------------------------------------------------------------------------


def exact_test(errors: Any, labels: Any, *, min_wrong: int | None = None,
               lesions: Any = None) -> TestResult:
    """Exact test: more images wrong by ``>= min_wrong`` models than independence predicts?

    Parameters
    ----------
    errors:
        ``(M, N)`` boolean matrix, ``errors[m, i]`` = model ``m`` misclassifies image ``i``.
    labels:
        ``(N,)`` integer class index of each image; error rates are estimated per class.
    min_wrong:
        ``m`` in "wrong by at least ``m`` of ``M`` models"; default ``M`` (wrong by all).
    lesions:
        ``(N,)`` lesion ids (missing: the image is its own lesion) for the lesion-level test;
        ``None``: the image-level test (images assumed independent).

    Returns
    -------
    TestResult
        ``statistic`` = observed count, ``effect`` = observed / expected (``effect_name``),
        ``p_value`` = ``P(X >= observed)`` (one-sided), ``extra`` with ``observed``,
        ``expected``, ``variance``, ``log10_p_value``, ``min_wrong``, ``null_interval_95``,
        ``unit`` (``"lesion"`` or ``"image"``). A lesion-level test whose pattern enumeration
        would exceed :data:`~skin_core.analysis.lesion_null.MAX_PATTERN_STATES` has NaN
        p-value and ``extra["reason"]``.

    Raises
    ------
    DataError
        Malformed ``errors`` / ``labels`` / ``lesions``.
    ConfigError
        ``min_wrong`` outside ``1..M``.

    Examples
    --------
    >>> errs = np.array([[1, 1, 0, 0], [1, 1, 0, 0]], dtype=bool)
    >>> round(exact_test(errs, [0, 0, 0, 0]).extra["expected"], 3)
    1.0
    """
    err, lab, _ = _check_errors(errors, labels)
    m = _check_min_wrong(min_wrong, err.shape[0])
    strata = _strata(lesions, lab)
    if strata is not None:
        return _exact_lesion(err, lab, strata, m)
    n_models, n_images = err.shape
    wrong, n_per_class = class_error_rates(err, lab)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = wrong / np.maximum(n_per_class, 1)
    q_class = np.array([_at_least_m_of(rates[:, c], m) for c in range(rates.shape[1])])
    p_image = q_class[lab]
    observed = int(np.sum(err.sum(axis=0) >= m))
    expected = float(p_image.sum())
    variance = float(np.sum(p_image * (1.0 - p_image)))
    p_value, log10_p = poisson_binomial_tail(observed, p_image)
    cdf = np.cumsum(poisson_binomial_pmf(p_image))
    interval = [int(np.searchsorted(cdf, 0.025)), int(np.searchsorted(cdf, 0.975))]
    return _exact_result(observed, expected, variance, p_value, log10_p, interval,
                         n_images=n_images, n_models=n_models, m=m, strata=None)


def _exact_result(observed: int, expected: float, variance: float, p_value: float,
                  log10_p: float, interval: list[int], *, n_images: int, n_models: int,
                  m: int, strata: LesionStrata | None,
                  reason: str | None = None) -> TestResult:
    ratio = observed / expected if expected > 0 else (math.inf if observed else math.nan)
    what = _what(m, n_models)
    level = "lesion level" if strata is not None else "image level, images independent"
    extra: dict[str, Any] = {
        "observed": observed,
        "expected": expected,
        "variance": variance,
        "log10_p_value": float(log10_p),
        "min_wrong": m,
        "null_interval_95": interval,
        "unit": "lesion" if strata is not None else "image",
    }
    if reason:
        extra["reason"] = reason
    return TestResult(
        name=f"images wrong by {what} models: observed vs independent models ({level})",
        effect=float(ratio),
        ci=(math.nan, math.nan),
        statistic=float(observed),
        p_value=float(p_value),
        method=METHOD_EXACT_LESION if strata is not None else METHOD_EXACT,
        effect_name=f"observed / expected number of images wrong by {what} models",
        assumptions=ASSUMPTIONS_LESION if strata is not None else ASSUMPTIONS,
        n=_n_record(n_images, n_models, strata),
        extra=extra,
    )


def _exact_lesion(err: np.ndarray, lab: np.ndarray, strata: LesionStrata, m: int) -> TestResult:
    n_models, n_images = err.shape
    observed = int(np.sum(err.sum(axis=0) >= m))
    try:
        pieces = exact_pieces(err, lab, strata, m)
    except PatternLimitError as e:
        return _exact_result(
            observed, math.nan, math.nan, math.nan, math.nan, [], n_images=n_images,
            n_models=n_models, m=m, strata=strata,
            reason=f"not computed: the lesions' error patterns are too varied to enumerate "
            f"exactly ({e}); use the permutation test")
    expected = variance = 0.0
    for pmf, n in pieces:
        y = np.arange(pmf.size)
        mu = float(pmf @ y)
        expected += n * mu
        variance += n * float(pmf @ (y - mu) ** 2)
    p_value, log10_p = iid_sum_tail(observed, pieces)
    offset, pmf = iid_sum_pmf(pieces)
    cdf = np.cumsum(pmf)
    interval = [offset + int(np.searchsorted(cdf, 0.025)),
                offset + int(np.searchsorted(cdf, 0.975))]
    return _exact_result(observed, expected, variance, p_value, log10_p, interval,
                         n_images=n_images, n_models=n_models, m=m, strata=strata)


# --------------------------------------------------------------------------------------------
# permutation test
# --------------------------------------------------------------------------------------------


def permute_errors(
    errors: Any, labels: Any, *, seed: int | np.random.Generator | None = 0,
    lesions: Any = None,
) -> np.ndarray:
    """One draw of the permutation null: each model's errors shuffled within class.

    Parameters
    ----------
    errors:
        ``(M, N)`` boolean error matrix.
    labels:
        ``(N,)`` class indices (shuffling never moves an error across classes).
    seed:
        Seed or ``numpy.random.Generator``.
    lesions:
        ``(N,)`` lesion ids: each model's error patterns move lesion by lesion among lesions
        of the same stratum (class sequence and size); ``None``: image by image.

    Returns
    -------
    numpy.ndarray
        ``(M, N)`` boolean matrix with, for every model and class, the same number of errors
        as ``errors`` (and, with ``lesions``, the same multiset of lesion error patterns per
        stratum), placed uniformly at random, independently per model.
    """
    err, lab, n_classes = _check_errors(errors, labels)
    rng = _rng(seed)
    strata = _strata(lesions, lab)
    if strata is not None:
        return permute_lesions(err, lab, strata, rng)
    out = np.empty_like(err)
    order = np.argsort(lab, kind="stable")
    bounds = np.searchsorted(lab[order], np.arange(n_classes + 1))
    for c in range(n_classes):
        idx = order[bounds[c] : bounds[c + 1]]
        if idx.size == 0:
            continue
        for mm in range(err.shape[0]):
            out[mm, idx] = err[mm, idx][rng.permutation(idx.size)]
    return out


def _hypergeometric_buckets(
    wrong: np.ndarray, n_per_class: np.ndarray, n_permutations: int, rng: np.random.Generator
) -> np.ndarray:
    """``(n_permutations, M + 1)`` counts of images wrong by exactly 0..M models under the null.

    For each class, models are added one at a time; model ``j``'s ``w`` errors fall on a
    uniformly random ``w``-subset of the class, so the numbers landing on the images currently
    wrong by exactly ``0, 1, ..., j - 1`` models are multivariate hypergeometric, drawn as a
    chain of univariate hypergeometrics (vectorised over permutations).
    """
    n_models = wrong.shape[0]
    total = np.zeros((n_permutations, n_models + 1), dtype=np.int64)
    for c, n in enumerate(n_per_class):
        n = int(n)
        if n == 0:
            continue
        buckets = np.zeros((n_permutations, n_models + 1), dtype=np.int64)
        buckets[:, 0] = n
        for j in range(n_models):
            need = np.full(n_permutations, int(wrong[j, c]), dtype=np.int64)
            pool = np.full(n_permutations, n, dtype=np.int64)
            drawn = np.zeros((n_permutations, j + 1), dtype=np.int64)
            for t in range(j + 1):  # buckets 0..j can be non-empty
                good = buckets[:, t]
                if t == j:
                    x = need.copy()  # the rest must land in the last bucket
                else:
                    x = rng.hypergeometric(good, pool - good, need)
                drawn[:, t] = x
                need -= x
                pool -= good
            buckets[:, : j + 1] -= drawn
            buckets[:, 1 : j + 2] += drawn
        total += buckets
    return total


def _shuffle_buckets(
    err: np.ndarray, lab: np.ndarray, n_permutations: int, rng: np.random.Generator,
    strata: LesionStrata | None,
) -> np.ndarray:
    n_models = err.shape[0]
    out = np.zeros((n_permutations, n_models + 1), dtype=np.int64)
    for b in range(n_permutations):
        if strata is None:
            counts = permute_errors(err, lab, seed=rng).sum(axis=0)
        else:
            counts = permute_lesions(err, lab, strata, rng).sum(axis=0)
        out[b] = np.bincount(counts, minlength=n_models + 1)
    return out


def permutation_null(
    errors: Any,
    labels: Any,
    *,
    min_wrong: int | None = None,
    n_permutations: int = DEFAULT_PERMUTATIONS,
    seed: int | np.random.Generator | None = 0,
    method: str = "hypergeometric",
    lesions: Any = None,
) -> np.ndarray:
    """Null distribution of the number of images wrong by ``>= min_wrong`` models.

    Parameters
    ----------
    errors, labels:
        As in :func:`exact_test`.
    min_wrong:
        Threshold ``m`` (default ``M``).
    n_permutations:
        Number of permutations (>= 1).
    seed:
        Seed or ``numpy.random.Generator`` (same seed, same result).
    method:
        ``"hypergeometric"`` (fast, exact in distribution; with ``lesions`` the single-image
        clusters use the hypergeometric chain and the multi-image lesions
        :func:`~skin_core.analysis.lesion_null.block_tail_counts`) or ``"shuffle"`` (literal
        shuffles via :func:`permute_errors`; slow reference).
    lesions:
        ``(N,)`` lesion ids for the lesion-level null; ``None``: image level.

    Returns
    -------
    numpy.ndarray
        ``(n_permutations,)`` integer counts.
    """
    err, lab, _ = _check_errors(errors, labels)
    m = _check_min_wrong(min_wrong, err.shape[0])
    return _null_counts(err, lab, n_permutations, seed, method, _strata(lesions, lab), (m,))[:, 0]


def _tails(buckets: np.ndarray, thresholds: tuple[int, ...]) -> np.ndarray:
    """``(B, T)`` images wrong by ``>= t`` models from ``(B, M + 1)`` exact-count buckets."""
    return np.stack([buckets[:, t:].sum(axis=1) for t in thresholds], axis=1)


def _null_counts(
    err: np.ndarray, lab: np.ndarray, n_permutations: int,
    seed: int | np.random.Generator | None, method: str, strata: LesionStrata | None,
    thresholds: tuple[int, ...],
) -> np.ndarray:
    """``(n_permutations, T)`` null counts of images wrong by ``>= thresholds[t]`` models."""
    if method not in PERMUTATION_METHODS:
        raise ConfigError(f"The 'method' parameter of permutation_test must be one of "
                          f"{set(PERMUTATION_METHODS)}. Got {method!r} instead.")
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, (int, np.integer)) \
            or n_permutations < 1:
        raise ConfigError(f"The 'n_permutations' parameter must be a positive integer; "
                          f"got {n_permutations!r}.")
    rng = _rng(seed)
    b = int(n_permutations)
    if method == "shuffle":
        return _tails(_shuffle_buckets(err, lab, b, rng, strata), thresholds)
    if strata is None:
        wrong, n_per_class = class_error_rates(err, lab)
        return _tails(_hypergeometric_buckets(wrong, n_per_class, b, rng), thresholds)
    single = strata.single
    n_classes = int(lab.max()) + 1
    n_per_class = np.bincount(lab[single], minlength=n_classes)
    wrong = np.stack([np.bincount(lab[single], weights=e[single], minlength=n_classes)
                      for e in err]).astype(np.int64)
    return (_tails(_hypergeometric_buckets(wrong, n_per_class, b, rng), thresholds)
            + block_tail_counts(err, strata.blocks, b, rng, thresholds))


def _permutation_result(
    observed: int, null: np.ndarray, *, n_images: int, n_models: int, m: int,
    seed: Any, method: str, strata: LesionStrata | None = None,
) -> TestResult:
    n_perm = int(null.size)
    p_value = (1 + int(np.sum(null >= observed))) / (1 + n_perm)
    null_mean = float(null.mean())
    ratio = observed / null_mean if null_mean > 0 else (math.inf if observed else math.nan)
    what = _what(m, n_models)
    level = "lesion" if strata is not None else "within-class"
    return TestResult(
        name=f"images wrong by {what} models: observed vs {level} permutations",
        effect=float(ratio),
        ci=(math.nan, math.nan),
        statistic=float(observed),
        p_value=float(p_value),
        method=(f"{METHOD_PERMUTATION_LESION if strata is not None else METHOD_PERMUTATION}; "
                f"sampler: {method}"),
        effect_name=f"observed / permutation-null mean number of images wrong by {what} models",
        assumptions=ASSUMPTIONS_LESION if strata is not None else ASSUMPTIONS,
        n=_n_record(n_images, n_models, strata),
        extra={
            "observed": int(observed),
            "null_mean": null_mean,
            "null_sd": float(null.std(ddof=1)) if n_perm > 1 else math.nan,
            "null_interval_95": [float(np.quantile(null, 0.025)),
                                 float(np.quantile(null, 0.975))],
            "null_max": int(null.max()),
            "n_permutations": n_perm,
            "seed": seed if isinstance(seed, (int, np.integer)) else None,
            "sampler": method,
            "min_wrong": m,
            "unit": "lesion" if strata is not None else "image",
        },
    )


def permutation_test(
    errors: Any,
    labels: Any,
    *,
    min_wrong: int | None = None,
    n_permutations: int = DEFAULT_PERMUTATIONS,
    seed: int | np.random.Generator | None = 0,
    method: str = "hypergeometric",
    lesions: Any = None,
) -> TestResult:
    """Permutation test of consistent errors, keeping each model's per-class error counts.

    Parameters
    ----------
    errors:
        ``(M, N)`` boolean matrix, ``errors[m, i]`` = model ``m`` misclassifies image ``i``.
    labels:
        ``(N,)`` integer class index of each image (errors are shuffled within class).
    min_wrong:
        ``m`` in "wrong by at least ``m`` of ``M``"; default ``M`` (wrong by all).
    n_permutations:
        Number of permutations (default 10,000).
    seed:
        Seed or ``numpy.random.Generator``; the same seed gives the same p-value.
    method:
        ``"hypergeometric"`` (default) or ``"shuffle"``; see the module docstring.
    lesions:
        ``(N,)`` lesion ids: whole lesions are permuted (the valid test when images share
        lesions); ``None``: images are permuted one by one.

    Returns
    -------
    TestResult
        ``statistic`` = observed count, ``effect`` = observed / null mean, ``p_value`` =
        ``(1 + #{null >= observed}) / (1 + n_permutations)``; ``extra`` holds the null mean,
        sd, 95 % interval, ``n_permutations``, ``seed``, ``sampler`` and ``unit``.

    Raises
    ------
    DataError
        Malformed ``errors`` / ``labels`` / ``lesions``.
    ConfigError
        Bad ``min_wrong``, ``n_permutations`` or ``method``.
    """
    err, lab, _ = _check_errors(errors, labels)
    m = _check_min_wrong(min_wrong, err.shape[0])
    strata = _strata(lesions, lab)
    null = _null_counts(err, lab, n_permutations, seed, method, strata, (m,))[:, 0]
    observed = int(np.sum(err.sum(axis=0) >= m))
    return _permutation_result(observed, null, n_images=err.shape[1], n_models=err.shape[0],
                               m=m, seed=seed, method=method, strata=strata)
