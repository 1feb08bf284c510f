"""Are consistent errors more than chance?  Exact and permutation tests.

The published study reported that a set of images is misclassified by **all** of its CNNs
and read this as "these images are hard", but never tested it against chance: with five
models of 10-20 % error each, some images are wrong by all five even when the models err
independently.  This module supplies the two missing tests.

Null hypothesis (both tests)
    Given the true class, the ``M`` models err **independently** of each other, each at
    its own observed per-class error rate ``e[m, c]`` (errors of model ``m`` on the images
    of class ``c`` divided by the number of such images).

Statistic
    ``X`` = the number of images wrong by at least ``min_wrong`` of the ``M`` models
    (``min_wrong = M``: wrong by all, the study's definition).  The alternative is one-sided
    (more consistent errors than independence predicts), so p-values are ``P(X >= observed)``.

Exact test (:func:`exact_test`)
    Under the null an image of class ``c`` is wrong by ``>= m`` models with probability
    ``q_c = P(Y_c >= m)``, ``Y_c`` a Poisson-binomial over the models' rates ``e[:, c]``
    (``q_c = prod_m e[m, c]`` for ``m = M``).  ``X`` is then Poisson-binomial over the
    ``N`` images; its PMF is computed exactly (:func:`poisson_binomial_pmf`) and the upper
    tail with an exponentially tilted PMF so that p-values far below 1e-300 are still
    reported as ``log10_p_value`` (:func:`poisson_binomial_tail`).  The rates are estimated
    from the same data and treated as fixed (a conditional test).

Permutation test (:func:`permutation_test`)
    Each model's error vector is shuffled **within each class**, independently per model:
    every model keeps exactly its number of errors per class, the link between the models
    (which image each error falls on) is broken.  ``method="hypergeometric"`` (default)
    draws the null count of a whole permutation without materialising it: shuffling model
    ``j``'s ``w`` errors over the ``n`` images of a class puts a multivariate-hypergeometric
    number of them on the images already wrong by exactly ``0, 1, ..., j-1`` earlier models,
    which is drawn as a chain of univariate hypergeometrics, vectorised over permutations.
    This is the same distribution as literal shuffling (``method="shuffle"``, the slow
    reference; the tests compare the two) at a cost independent of ``N``.  The p-value
    includes the observed arrangement: ``(1 + #{null >= observed}) / (1 + n_permutations)``.

Both tests take ``errors`` (an ``(M, N)`` boolean matrix: model ``m`` is wrong on image
``i``) and ``labels`` (``(N,)`` class indices, the strata), so they apply equally to CNNs
(:func:`skin_core.analysis.difficulty.model_errors`) and to human readers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, special, stats

from skin_core.analysis.records import TestResult
from skin_core.errors import ConfigError, DataError

__all__ = [
    "DEFAULT_PERMUTATIONS",
    "PERMUTATION_METHODS",
    "SignificanceResult",
    "class_error_rates",
    "consistent_error_significance",
    "exact_test",
    "permutation_null",
    "permutation_test",
    "permute_errors",
    "poisson_binomial_pmf",
    "poisson_binomial_tail",
]

#: Default number of permutations (the issue's choice).
DEFAULT_PERMUTATIONS = 10_000

#: Samplers of the permutation null: exact-in-distribution fast draw, literal shuffling.
PERMUTATION_METHODS: tuple[str, ...] = ("hypergeometric", "shuffle")

_LN10 = math.log(10.0)

METHOD_EXACT = (
    "exact Poisson-binomial upper tail P(X >= observed) over images, each image's probability "
    "from the models' per-class error rates under independence (exponential tilting for tiny "
    "tails)"
)
METHOD_PERMUTATION = (
    "permutation test: each model's errors shuffled within class independently per model "
    "(per-class error counts kept); p = (1 + #{null >= observed}) / (1 + n_permutations)"
)
ASSUMPTIONS = (
    "given the true class, models err independently at their observed per-class error rates "
    "(rates estimated from the same images and treated as fixed); one-sided alternative: more "
    "images wrong by all models than independence predicts"
)


# --------------------------------------------------------------------------------------------
# Poisson-binomial distribution
# --------------------------------------------------------------------------------------------


def _check_probs(probs: Any, name: str = "probs") -> np.ndarray:
    p = np.asarray(probs, dtype=float).ravel()
    if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise DataError(f"The '{name}' must be finite probabilities in [0, 1]; "
                        f"got values from {np.nanmin(p) if p.size else 'none'} to "
                        f"{np.nanmax(p) if p.size else 'none'}.")
    return p


def _convolve_all(pieces: list[np.ndarray]) -> np.ndarray:
    """Product of polynomials (PMFs) by a balanced tree of direct convolutions.

    Direct convolution of non-negative arrays keeps a small *relative* error on every term,
    unlike FFT convolution whose absolute error (~1e-16) would swamp tiny tail masses.
    """
    if not pieces:
        return np.ones(1)
    pieces = sorted(pieces, key=len)
    while len(pieces) > 1:
        nxt = [np.convolve(pieces[i], pieces[i + 1]) for i in range(0, len(pieces) - 1, 2)]
        if len(pieces) % 2:
            nxt.append(pieces[-1])
        pieces = nxt
    return pieces[0]


def poisson_binomial_pmf(probs: Sequence[float] | np.ndarray) -> np.ndarray:
    """Exact PMF of the number of successes among independent Bernoulli trials.

    Parameters
    ----------
    probs:
        ``(n,)`` success probabilities in ``[0, 1]``.

    Returns
    -------
    numpy.ndarray
        ``(n + 1,)`` array, ``pmf[k] = P(X = k)``.

    Notes
    -----
    Trials with equal probability are grouped into binomials (``scipy.stats.binom``), so
    per-class probabilities over 25,331 images reduce to ~8 binomials; the group PMFs are
    multiplied by a balanced tree of direct convolutions (``O(n^2)`` worst case, about 0.1 s
    for 25,000 distinct probabilities).

    Examples
    --------
    >>> poisson_binomial_pmf([0.5, 0.5]).round(3).tolist()
    [0.25, 0.5, 0.25]
    """
    p = _check_probs(probs)
    n = p.size
    n_one = int(np.sum(p == 1.0))
    inner = p[(p > 0.0) & (p < 1.0)]
    values, counts = np.unique(inner, return_counts=True)
    pieces = [stats.binom.pmf(np.arange(c + 1), c, v) for v, c in zip(values, counts, strict=True)]
    core = _convolve_all(pieces)
    out = np.zeros(n + 1)
    out[n_one : n_one + core.size] = np.clip(core, 0.0, None)
    return out


def poisson_binomial_tail(k: int, probs: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Upper tail ``P(X >= k)`` of a Poisson-binomial, with its base-10 logarithm.

    Parameters
    ----------
    k:
        Threshold (an integer; ``k <= 0`` gives 1).
    probs:
        ``(n,)`` success probabilities in ``[0, 1]``.

    Returns
    -------
    (p_value, log10_p_value):
        ``p_value`` is a float (it underflows to ``0.0`` below ~1e-308); ``log10_p_value``
        stays finite there (``-inf`` only when ``k`` exceeds the number of trials that can
        succeed).

    Notes
    -----
    For ``k`` above the mean the PMF is exponentially tilted (Esscher transform): with
    ``p'_i = p_i e^t / (1 - p_i + p_i e^t)`` and ``t`` chosen so that ``sum p'_i = k``,
    ``P(X = j) = P'(X = j) * exp(log M(t) - t j)`` where ``M(t) = prod (1 - p_i + p_i e^t)``.
    The tilted PMF is well scaled around ``k``, so the tail is summed in log space without
    underflow.
    """
    p = _check_probs(probs)
    k = int(k)
    n_one = int(np.sum(p == 1.0))
    n_pos = int(np.sum(p > 0.0))
    if k <= n_one:
        return 1.0, 0.0
    if k > n_pos:
        return 0.0, -math.inf
    if k == n_pos:  # every trial that can succeed does
        log_p = float(np.sum(np.log(p[p > 0.0])))
        return math.exp(log_p), log_p / _LN10
    mean = float(p.sum())
    if k <= mean:
        pmf = poisson_binomial_pmf(p)
        tail = float(min(1.0, math.fsum(pmf[k:])))
        return tail, (math.log10(tail) if tail > 0 else -math.inf)
    inner = p[(p > 0.0) & (p < 1.0)]
    logit = special.logit(inner)

    def tilted_mean_minus_k(t: float) -> float:
        return float(special.expit(logit + t).sum()) + n_one - k

    hi = 1.0
    while tilted_mean_minus_k(hi) < 0:
        hi *= 2.0
    t = optimize.brentq(tilted_mean_minus_k, 0.0, hi, xtol=1e-12, rtol=1e-12)
    tilted = np.concatenate([np.ones(n_one), special.expit(logit + t)])
    log_m = float(np.sum(np.logaddexp(np.log1p(-inner), np.log(inner) + t))) + n_one * t
    pmf_t = poisson_binomial_pmf(tilted)[k:]
    j = np.arange(k, k + pmf_t.size)
    keep = pmf_t > 0
    log_tail = float(special.logsumexp(np.log(pmf_t[keep]) - t * j[keep])) + log_m
    log_tail = min(log_tail, 0.0)
    return math.exp(log_tail), log_tail / _LN10


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


# --------------------------------------------------------------------------------------------
# the two tests
# --------------------------------------------------------------------------------------------


def exact_test(errors: Any, labels: Any, *, min_wrong: int | None = None) -> TestResult:
    """Exact test: more images wrong by ``>= min_wrong`` models than independence predicts?

    Parameters
    ----------
    errors:
        ``(M, N)`` boolean matrix, ``errors[m, i]`` = model ``m`` misclassifies image ``i``.
    labels:
        ``(N,)`` integer class index of each image; error rates are estimated per class.
    min_wrong:
        ``m`` in "wrong by at least ``m`` of ``M`` models"; default ``M`` (wrong by all).

    Returns
    -------
    TestResult
        ``statistic`` = observed count, ``effect`` = observed / expected (``effect_name``),
        ``p_value`` = ``P(X >= observed)`` (one-sided), ``extra`` with ``observed``,
        ``expected``, ``variance``, ``log10_p_value``, ``min_wrong``, ``null_interval_95``.

    Raises
    ------
    DataError
        Malformed ``errors`` / ``labels``.
    ConfigError
        ``min_wrong`` outside ``1..M``.

    Examples
    --------
    >>> errs = np.array([[1, 1, 0, 0], [1, 1, 0, 0]], dtype=bool)
    >>> round(exact_test(errs, [0, 0, 0, 0]).extra["expected"], 3)
    1.0
    """
    err, lab, _ = _check_errors(errors, labels)
    n_models, n_images = err.shape
    m = _check_min_wrong(min_wrong, n_models)
    wrong, n_per_class = class_error_rates(err, lab)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = wrong / np.maximum(n_per_class, 1)
    q_class = np.array([_at_least_m_of(rates[:, c], m) for c in range(rates.shape[1])])
    p_image = q_class[lab]
    observed = int(np.sum(err.sum(axis=0) >= m))
    expected = float(p_image.sum())
    variance = float(np.sum(p_image * (1.0 - p_image)))
    p_value, log10_p = poisson_binomial_tail(observed, p_image)
    pmf = poisson_binomial_pmf(p_image)
    cdf = np.cumsum(pmf)
    interval = (int(np.searchsorted(cdf, 0.025)), int(np.searchsorted(cdf, 0.975)))
    ratio = observed / expected if expected > 0 else (math.inf if observed else math.nan)
    what = "all" if m == n_models else f">= {m} of {n_models}"
    return TestResult(
        name=f"images wrong by {what} models: observed vs independent models",
        effect=float(ratio),
        ci=(math.nan, math.nan),
        statistic=float(observed),
        p_value=float(p_value),
        method=METHOD_EXACT,
        effect_name=f"observed / expected number of images wrong by {what} models",
        assumptions=ASSUMPTIONS,
        n={"images": int(n_images), "models": int(n_models)},
        extra={
            "observed": observed,
            "expected": expected,
            "variance": variance,
            "log10_p_value": float(log10_p),
            "min_wrong": m,
            "null_interval_95": list(interval),
        },
    )


def permute_errors(
    errors: Any, labels: Any, *, seed: int | np.random.Generator | None = 0
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

    Returns
    -------
    numpy.ndarray
        ``(M, N)`` boolean matrix with, for every model and class, the same number of errors
        as ``errors``, placed on a uniformly random subset of that class's images,
        independently per model.
    """
    err, lab, n_classes = _check_errors(errors, labels)
    rng = _rng(seed)
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
    err: np.ndarray, lab: np.ndarray, n_permutations: int, rng: np.random.Generator
) -> np.ndarray:
    n_models = err.shape[0]
    out = np.zeros((n_permutations, n_models + 1), dtype=np.int64)
    for b in range(n_permutations):
        counts = permute_errors(err, lab, seed=rng).sum(axis=0)
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
        ``"hypergeometric"`` (fast, exact in distribution) or ``"shuffle"`` (literal
        within-class shuffles via :func:`permute_errors`; slow reference).

    Returns
    -------
    numpy.ndarray
        ``(n_permutations,)`` integer counts.
    """
    err, lab, _ = _check_errors(errors, labels)
    m = _check_min_wrong(min_wrong, err.shape[0])
    buckets = _null_buckets(err, lab, n_permutations, seed, method)
    return buckets[:, m:].sum(axis=1)


def _null_buckets(
    err: np.ndarray, lab: np.ndarray, n_permutations: int,
    seed: int | np.random.Generator | None, method: str,
) -> np.ndarray:
    if method not in PERMUTATION_METHODS:
        raise ConfigError(f"The 'method' parameter of permutation_test must be one of "
                          f"{set(PERMUTATION_METHODS)}. Got {method!r} instead.")
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, (int, np.integer)) \
            or n_permutations < 1:
        raise ConfigError(f"The 'n_permutations' parameter must be a positive integer; "
                          f"got {n_permutations!r}.")
    rng = _rng(seed)
    if method == "shuffle":
        return _shuffle_buckets(err, lab, int(n_permutations), rng)
    wrong, n_per_class = class_error_rates(err, lab)
    return _hypergeometric_buckets(wrong, n_per_class, int(n_permutations), rng)


def _permutation_result(
    observed: int, null: np.ndarray, *, n_images: int, n_models: int, m: int,
    seed: Any, method: str,
) -> TestResult:
    n_perm = int(null.size)
    p_value = (1 + int(np.sum(null >= observed))) / (1 + n_perm)
    null_mean = float(null.mean())
    ratio = observed / null_mean if null_mean > 0 else (math.inf if observed else math.nan)
    what = "all" if m == n_models else f">= {m} of {n_models}"
    return TestResult(
        name=f"images wrong by {what} models: observed vs within-class permutations",
        effect=float(ratio),
        ci=(math.nan, math.nan),
        statistic=float(observed),
        p_value=float(p_value),
        method=f"{METHOD_PERMUTATION}; sampler: {method}",
        effect_name=f"observed / permutation-null mean number of images wrong by {what} models",
        assumptions=ASSUMPTIONS,
        n={"images": int(n_images), "models": int(n_models)},
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

    Returns
    -------
    TestResult
        ``statistic`` = observed count, ``effect`` = observed / null mean, ``p_value`` =
        ``(1 + #{null >= observed}) / (1 + n_permutations)``; ``extra`` holds the null mean,
        sd, 95 % interval, ``n_permutations``, ``seed`` and ``sampler``.

    Raises
    ------
    DataError
        Malformed ``errors`` / ``labels``.
    ConfigError
        Bad ``min_wrong``, ``n_permutations`` or ``method``.
    """
    err, lab, _ = _check_errors(errors, labels)
    m = _check_min_wrong(min_wrong, err.shape[0])
    null = permutation_null(err, lab, min_wrong=m, n_permutations=n_permutations, seed=seed,
                            method=method)
    observed = int(np.sum(err.sum(axis=0) >= m))
    return _permutation_result(observed, null, n_images=err.shape[1], n_models=err.shape[0],
                               m=m, seed=seed, method=method)


# --------------------------------------------------------------------------------------------
# both tests, as significance.json
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SignificanceResult:
    """Both tests for "wrong by all models" (and for ``min_wrong`` when it is below ``M``).

    Attributes
    ----------
    n_images, n_models:
        ``N`` and ``M``.
    observed_all_wrong, expected_all_wrong:
        Images wrong by all ``M`` models: observed, and expected under independence.
    p_value_exact, log10_p_value_exact, p_value_permutation:
        One-sided p-values (``log10`` stays finite when the exact p underflows to 0).
    n_permutations, seed:
        Permutation settings (``seed`` is ``None`` when a Generator was passed).
    exact, permutation:
        The full :class:`TestResult` records for "wrong by all".
    min_wrong, exact_min_wrong, permutation_min_wrong:
        The ``m``-of-``M`` generalisation (``None`` when ``min_wrong`` is ``M``).
    models, classes:
        Names (for ``error_rates``); may be empty when unnamed.
    error_rates:
        ``(M, K)`` per-model, per-class error rates the null keeps.
    class_counts:
        ``(K,)`` images per class.
    """

    n_images: int
    n_models: int
    observed_all_wrong: int
    expected_all_wrong: float
    p_value_exact: float
    log10_p_value_exact: float
    p_value_permutation: float
    n_permutations: int
    seed: int | None
    exact: TestResult
    permutation: TestResult
    min_wrong: int
    exact_min_wrong: TestResult | None = None
    permutation_min_wrong: TestResult | None = None
    models: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    error_rates: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    class_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def ratio_all_wrong(self) -> float:
        """Observed / expected images wrong by all models."""
        return self.exact.effect

    def to_dict(self) -> dict[str, Any]:
        """The ``significance.json`` record (JSON-ready; NaN/inf become ``None``)."""
        models = list(self.models) or [f"model_{i}" for i in range(self.n_models)]
        classes = list(self.classes) or [str(k) for k in range(len(self.class_counts))]
        d: dict[str, Any] = {
            "n_images": self.n_images,
            "n_models": self.n_models,
            "observed_all_wrong": self.observed_all_wrong,
            "expected_all_wrong": self.expected_all_wrong,
            "ratio_all_wrong": _finite(self.exact.effect),
            "p_value_exact": self.p_value_exact,
            "log10_p_value_exact": _finite(self.log10_p_value_exact),
            "p_value_permutation": self.p_value_permutation,
            "n_permutations": self.n_permutations,
            "seed": self.seed,
            "method_exact": METHOD_EXACT,
            "method_permutation": self.permutation.method,
            "null_all_wrong": {
                "exact_interval_95": self.exact.extra["null_interval_95"],
                "permutation_mean": self.permutation.extra["null_mean"],
                "permutation_interval_95": self.permutation.extra["null_interval_95"],
                "permutation_max": self.permutation.extra["null_max"],
            },
            "assumptions": ASSUMPTIONS,
            "min_wrong": self.min_wrong,
        }
        if self.exact_min_wrong is not None and self.permutation_min_wrong is not None:
            d.update({
                "observed_min_wrong": int(self.exact_min_wrong.extra["observed"]),
                "expected_min_wrong": self.exact_min_wrong.extra["expected"],
                "ratio_min_wrong": _finite(self.exact_min_wrong.effect),
                "p_value_exact_min_wrong": self.exact_min_wrong.p_value,
                "log10_p_value_exact_min_wrong":
                    _finite(self.exact_min_wrong.extra["log10_p_value"]),
                "p_value_permutation_min_wrong": self.permutation_min_wrong.p_value,
            })
        d["models"] = models
        d["classes"] = classes
        d["class_counts"] = {c: int(n) for c, n in zip(classes, self.class_counts, strict=True)}
        d["error_rates"] = {
            mname: {c: _finite(float(r))
                    for c, r, n in zip(classes, row, self.class_counts, strict=True) if n > 0}
            for mname, row in zip(models, self.error_rates, strict=True)
        }
        tests = [self.exact, self.permutation, self.exact_min_wrong, self.permutation_min_wrong]
        d["tests"] = [t.to_dict() for t in tests if t is not None]
        return d


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def consistent_error_significance(
    errors: Any,
    labels: Any,
    *,
    min_wrong: int | None = None,
    n_permutations: int = DEFAULT_PERMUTATIONS,
    seed: int | np.random.Generator | None = 0,
    method: str = "hypergeometric",
    models: Sequence[str] = (),
    classes: Sequence[str] = (),
) -> SignificanceResult:
    """Exact and permutation tests of "wrong by all models" (and by ``>= min_wrong``).

    One permutation run serves both thresholds (the null is drawn as counts of images wrong
    by exactly ``0..M`` models).

    Parameters
    ----------
    errors, labels:
        As in :func:`exact_test`.
    min_wrong:
        Optional ``m < M`` for the generalisation (``None`` or ``M``: only "all").
    n_permutations, seed, method:
        As in :func:`permutation_test`.
    models, classes:
        Optional names for ``significance.json`` (``M`` model names, ``K`` class codes).

    Returns
    -------
    SignificanceResult
        ``to_dict()`` is the ``significance.json`` record.
    """
    err, lab, n_classes = _check_errors(errors, labels)
    n_models, n_images = err.shape
    m = _check_min_wrong(min_wrong, n_models)
    if classes:
        if len(classes) < n_classes:
            raise DataError(f"Got {len(classes)} class names but labels go up to index "
                            f"{n_classes - 1}.")
        n_classes = len(classes)
    if models and len(models) != n_models:
        raise DataError(f"Got {len(models)} model names for {n_models} rows of 'errors'.")
    buckets = _null_buckets(err, lab, n_permutations, seed, method)
    n_wrong = err.sum(axis=0)
    seed_out = int(seed) if isinstance(seed, (int, np.integer)) else None

    def both(threshold: int) -> tuple[TestResult, TestResult]:
        ex = exact_test(err, lab, min_wrong=threshold)
        null = buckets[:, threshold:].sum(axis=1)
        perm = _permutation_result(int(np.sum(n_wrong >= threshold)), null,
                                   n_images=n_images, n_models=n_models, m=threshold,
                                   seed=seed_out, method=method)
        return ex, perm

    ex_all, perm_all = both(n_models)
    ex_m, perm_m = both(m) if m < n_models else (None, None)
    wrong, n_per_class = class_error_rates(err, lab)
    wrong = np.pad(wrong, ((0, 0), (0, n_classes - wrong.shape[1])))
    n_per_class = np.pad(n_per_class, (0, n_classes - n_per_class.size))
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(n_per_class > 0, wrong / np.maximum(n_per_class, 1), np.nan)
    return SignificanceResult(
        n_images=int(n_images),
        n_models=int(n_models),
        observed_all_wrong=int(ex_all.extra["observed"]),
        expected_all_wrong=float(ex_all.extra["expected"]),
        p_value_exact=float(ex_all.p_value),
        log10_p_value_exact=float(ex_all.extra["log10_p_value"]),
        p_value_permutation=float(perm_all.p_value),
        n_permutations=int(n_permutations),
        seed=seed_out,
        exact=ex_all,
        permutation=perm_all,
        min_wrong=m,
        exact_min_wrong=ex_m,
        permutation_min_wrong=perm_m,
        models=tuple(models),
        classes=tuple(classes),
        error_rates=rates,
        class_counts=n_per_class,
    )
