"""Exact distributions of counts: Poisson-binomial and sums of i.i.d. small-support variables.

The exact tests of :mod:`skin_core.analysis.significance` need the upper tail ``P(X >= k)`` of
a count ``X`` far out in the tail (p-values far below 1e-300 are still reported as base-10
logarithms):

* :func:`poisson_binomial_pmf`, :func:`poisson_binomial_tail`: ``X`` = number of successes
  among independent Bernoulli trials (the image-level test: one trial per image).
* :func:`iid_sum_pmf`, :func:`iid_sum_tail`: ``X = sum_s sum_{l=1..n_s} Y_{s,l}`` with the
  ``Y_{s,l}`` independent and, within a group ``s``, identically distributed on ``0..k_s``
  (the lesion-level test: ``Y`` = images of one lesion wrong by all models, ``s`` = the
  lesions of one class and size).

Both multiply PMFs by direct convolution (a small *relative* error on every term, unlike FFT
convolution whose absolute error of ~1e-16 would swamp small tail masses) and sum tails above
the mean under an exponentially tilted distribution (Esscher transform).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import optimize, special, stats

from skin_core.errors import DataError

__all__ = [
    "iid_sum_pmf",
    "iid_sum_tail",
    "poisson_binomial_pmf",
    "poisson_binomial_tail",
]

_LN10 = math.log(10.0)


# --------------------------------------------------------------------------------------------
# Poisson-binomial
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
# sums of i.i.d. variables on 0..k, several groups
# --------------------------------------------------------------------------------------------


def _support(pmf: Any) -> tuple[int, np.ndarray]:
    """``(a, core)``: the PMF normalised and trimmed to ``a .. b``, its first and last mass."""
    p = np.asarray(pmf, dtype=float).ravel()
    if p.size == 0 or not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise DataError("A piece of iid_sum_pmf must be a non-negative PMF with positive mass.")
    p = p / p.sum()
    nz = np.flatnonzero(p > 0)
    return int(nz[0]), p[nz[0]: nz[-1] + 1]


def _iid_power(core: np.ndarray, n: int) -> np.ndarray:
    """PMF of the sum of ``n`` i.i.d. copies of a variable with PMF ``core`` on ``0..k``."""
    if n == 0 or core.size == 1:
        return np.ones(1)
    if core.size == 2:  # binomial: closed form
        return stats.binom.pmf(np.arange(n + 1), n, core[1] / (core[0] + core[1]))
    result, base = np.ones(1), core
    while n:  # binary powering by direct convolution
        if n & 1:
            result = np.convolve(result, base)
        n >>= 1
        if n:
            base = np.convolve(base, base)
    return np.clip(result, 0.0, None)


def _pieces(pieces: Sequence[tuple[Any, int]]) -> list[tuple[int, np.ndarray, int]]:
    out = []
    for pmf, n in pieces:
        n = int(n)
        if n < 0:
            raise DataError(f"A piece of iid_sum_pmf needs a count n >= 0; got {n}.")
        if n:
            a, core = _support(pmf)
            out.append((a, core, n))
    return out


def iid_sum_pmf(pieces: Sequence[tuple[Any, int]]) -> tuple[int, np.ndarray]:
    """Exact PMF of ``X = sum_s (n_s i.i.d. copies of Y_s)``.

    Parameters
    ----------
    pieces:
        ``(pmf_s, n_s)`` pairs: ``pmf_s[y] = P(Y_s = y)`` for ``y = 0..k_s`` and the number of
        copies ``n_s``.

    Returns
    -------
    (offset, pmf):
        ``P(X = offset + j) = pmf[j]`` (``offset`` is the smallest possible value of ``X``).

    Examples
    --------
    >>> off, pmf = iid_sum_pmf([([0.5, 0.5], 2), ([0.0, 0.0, 1.0], 1)])
    >>> off, pmf.round(3).tolist()
    (2, [0.25, 0.5, 0.25])
    """
    offset, parts = 0, []
    for a, core, n in _pieces(pieces):
        offset += n * a
        parts.append(_iid_power(core, n))
    return offset, _convolve_all(parts)


def iid_sum_tail(x: int, pieces: Sequence[tuple[Any, int]]) -> tuple[float, float]:
    """Upper tail ``P(X >= x)`` of :func:`iid_sum_pmf`'s ``X``, with its base-10 logarithm.

    Above the mean, every ``Y_s`` is tilted to ``P_t(y) = P(y) e^{t y} / M_s(t)`` with ``t``
    such that ``E_t[X] = x``; then ``P(X = j) = P_t(X = j) exp(sum_s n_s log M_s(t) - t j)``
    and the tail is summed in log space (finite ``log10`` far below 1e-308).

    Returns
    -------
    (p_value, log10_p_value):
        As :func:`poisson_binomial_tail`.
    """
    parts = _pieces(pieces)
    x = int(x)
    lo = sum(n * a for a, _, n in parts)
    hi = sum(n * (a + core.size - 1) for a, core, n in parts)
    if x <= lo:
        return 1.0, 0.0
    if x > hi:
        return 0.0, -math.inf
    if x == hi:  # every variable at its maximum
        log_p = sum(n * math.log(core[-1]) for _, core, n in parts)
        return math.exp(log_p), log_p / _LN10
    mean = sum(n * (a + float(core @ np.arange(core.size))) for a, core, n in parts)
    if x <= mean:
        off, pmf = iid_sum_pmf([(core, n) for _, core, n in parts])
        tail = float(min(1.0, math.fsum(pmf[x - lo:])))
        return tail, (math.log10(tail) if tail > 0 else -math.inf)
    target = x - lo  # work with the shifted variables Y - a (support 0..k)
    logs = []
    for _, core, n in parts:
        with np.errstate(divide="ignore"):
            logs.append((np.log(core), np.arange(core.size, dtype=float), n))

    def tilted_mean_minus_target(t: float) -> float:
        total = 0.0
        for lp, y, n in logs:
            w = special.softmax(lp + t * y)
            total += n * float(w @ y)
        return total - target

    top = 1.0
    while tilted_mean_minus_target(top) < 0:
        top *= 2.0
    t = optimize.brentq(tilted_mean_minus_target, 0.0, top, xtol=1e-12, rtol=1e-12)
    log_m = 0.0
    tilted = []
    for lp, y, n in logs:
        z = lp + t * y
        log_m += n * float(special.logsumexp(z))
        tilted.append((special.softmax(z), n))
    _, pmf_t = iid_sum_pmf(tilted)
    tail = pmf_t[target:]
    j = np.arange(target, target + tail.size)
    keep = tail > 0
    log_tail = float(special.logsumexp(np.log(tail[keep]) - t * j[keep])) + log_m
    log_tail = min(log_tail, 0.0)
    return math.exp(log_tail), log_tail / _LN10
