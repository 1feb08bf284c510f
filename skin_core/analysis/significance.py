"""Are consistent errors more than chance?  Exact and permutation tests, lesion-aware.

The published study reported that a set of images is misclassified by **all** of its CNNs
and read this as "these images are hard", but never tested it against chance: with five
models of 10-20 % error each, some images are wrong by all five even when the models err
independently.  This module supplies the two missing tests, at the level of lesions when
lesion ids are known (``lesions=``) and of images otherwise.

Null hypothesis (both tests)
    Given the true class, the ``M`` models err **independently** of each other.

Statistic
    ``X`` = the number of images wrong by at least ``min_wrong`` of the ``M`` models
    (``min_wrong = M``: wrong by all, the study's definition).  The alternative is one-sided
    (more consistent errors than independence predicts), so p-values are ``P(X >= observed)``.

Lesion level (``lesions`` given: the valid tests when images share lesions)
    Images of one lesion are not independent units: a model that misreads a lesion tends to
    misread all of its images, and under independent models this alone inflates the
    variance of ``X``.  The lesion-level tests keep each model's errors on a lesion together:
    the permutation test moves whole lesions (each model's lesion error patterns permuted
    among the lesions of the same class and number of images), the exact test draws each
    model's pattern on a lesion from its observed patterns in that stratum.  Images without a
    lesion id are clusters of their own.  See :mod:`skin_core.analysis.lesion_null`.  With one
    image per lesion both reduce to the image-level tests below.

Image level (``lesions=None``: images assumed independent)
    *Exact test* (:func:`exact_test`): an image of class ``c`` is wrong by ``>= m`` models
    with probability ``q_c = P(Y_c >= m)``, ``Y_c`` a Poisson-binomial over the models'
    per-class error rates ``e[:, c]`` (``q_c = prod_m e[m, c]`` for ``m = M``).  ``X`` is
    then Poisson-binomial over the ``N`` images (:mod:`skin_core.analysis.poisson_binomial`,
    exponential tilting so that p-values far below 1e-300 are still reported as
    ``log10_p_value``).  The rates are estimated from the same data and treated as fixed.

    *Permutation test* (:func:`permutation_test`): each model's error vector is shuffled
    **within each class**, independently per model: every model keeps exactly its number of
    errors per class.  ``method="hypergeometric"`` (default) draws the null count of a whole
    permutation without materialising it: shuffling model ``j``'s ``w`` errors over the ``n``
    images of a class puts a multivariate-hypergeometric number of them on the images already
    wrong by exactly ``0, 1, ..., j-1`` earlier models, drawn as a chain of univariate
    hypergeometrics, vectorised over permutations (the same distribution as literal
    shuffling, ``method="shuffle"``, the slow reference).  The p-value includes the observed
    arrangement: ``(1 + #{null >= observed}) / (1 + n_permutations)``.

Both tests take ``errors`` (an ``(M, N)`` boolean matrix: model ``m`` is wrong on image
``i``), ``labels`` (``(N,)`` class indices, the strata) and optionally ``lesions`` (``(N,)``
lesion ids), so they apply equally to CNNs (:func:`skin_core.analysis.difficulty.model_errors`)
and to human readers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from skin_core.analysis.clusters import LesionStrata
from skin_core.analysis.consistent_errors import (
    DEFAULT_PERMUTATIONS,
    PERMUTATION_METHODS,
    _check_errors,
    _check_min_wrong,
    _exact_lesion,
    _null_counts,
    _permutation_result,
    _rng,
    _strata,
    class_error_rates,
    exact_test,
    permutation_null,
    permutation_test,
    permute_errors,
)
from skin_core.analysis.poisson_binomial import poisson_binomial_pmf, poisson_binomial_tail
from skin_core.analysis.records import TestResult
from skin_core.errors import DataError

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
        ``(M, K)`` per-model, per-class error rates (image level).
    class_counts:
        ``(K,)`` images per class.
    clustering:
        ``{"unit": "lesion" | "image", ...}``: which tests these are; with lesions also the
        counts of :meth:`~skin_core.analysis.clusters.LesionStrata.summary`.
    image_level:
        With lesions: the image-level figures for comparison only (they assume independent
        images); ``None`` otherwise.
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
    clustering: dict[str, Any] = field(default_factory=lambda: {"unit": "image"})
    image_level: dict[str, Any] | None = None

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
            "expected_all_wrong": _finite(self.expected_all_wrong),
            "ratio_all_wrong": _finite(self.exact.effect),
            "p_value_exact": _finite(self.p_value_exact),
            "log10_p_value_exact": _finite(self.log10_p_value_exact),
            "p_value_permutation": self.p_value_permutation,
            "n_permutations": self.n_permutations,
            "seed": self.seed,
            "clustering": dict(self.clustering),
            "method_exact": self.exact.method,
            "method_permutation": self.permutation.method,
            "null_all_wrong": {
                "exact_interval_95": self.exact.extra["null_interval_95"],
                "permutation_mean": self.permutation.extra["null_mean"],
                "permutation_interval_95": self.permutation.extra["null_interval_95"],
                "permutation_max": self.permutation.extra["null_max"],
            },
            "assumptions": self.permutation.assumptions,
            "min_wrong": self.min_wrong,
        }
        if self.exact_min_wrong is not None and self.permutation_min_wrong is not None:
            d.update({
                "observed_min_wrong": int(self.exact_min_wrong.extra["observed"]),
                "expected_min_wrong": _finite(self.exact_min_wrong.extra["expected"]),
                "ratio_min_wrong": _finite(self.exact_min_wrong.effect),
                "p_value_exact_min_wrong": _finite(self.exact_min_wrong.p_value),
                "log10_p_value_exact_min_wrong":
                    _finite(self.exact_min_wrong.extra["log10_p_value"]),
                "p_value_permutation_min_wrong": self.permutation_min_wrong.p_value,
            })
        if self.image_level is not None:
            d["image_level"] = {k: (_finite(v) if isinstance(v, float) else v)
                                for k, v in self.image_level.items()}
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


def _finite(x: float | None) -> float | None:
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
    lesions: Any = None,
    image_level_reference: bool = True,
) -> SignificanceResult:
    """Exact and permutation tests of "wrong by all models" (and by ``>= min_wrong``).

    One permutation run serves both thresholds.

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
    lesions:
        ``(N,)`` lesion ids: lesion-level tests (``clustering["unit"] == "lesion"``);
        ``None``: image-level tests.
    image_level_reference:
        With ``lesions``, also run the image-level tests (same settings) and keep their
        figures in ``image_level``, for comparison.

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
    strata = _strata(lesions, lab)
    rng = _rng(seed)
    thresholds = (n_models, m) if m < n_models else (n_models,)
    nulls = _null_counts(err, lab, n_permutations, rng, method, strata, thresholds)
    n_wrong = err.sum(axis=0)
    seed_out = int(seed) if isinstance(seed, (int, np.integer)) else None

    def both(t: int, st: LesionStrata | None, null: np.ndarray) -> tuple[TestResult, TestResult]:
        threshold = thresholds[t]
        if st is None:
            ex = exact_test(err, lab, min_wrong=threshold)
        else:
            ex = _exact_lesion(err, lab, st, threshold)
        perm = _permutation_result(int(np.sum(n_wrong >= threshold)), null[:, t],
                                   n_images=n_images, n_models=n_models, m=threshold,
                                   seed=seed_out, method=method, strata=st)
        return ex, perm

    ex_all, perm_all = both(0, strata, nulls)
    ex_m, perm_m = both(1, strata, nulls) if m < n_models else (None, None)
    clustering: dict[str, Any] = {"unit": "image"}
    image_level = None
    if strata is not None:
        clustering = {"unit": "lesion", **strata.summary()}
        if image_level_reference:
            img_nulls = _null_counts(err, lab, n_permutations, rng, method, None, thresholds)
            ex_i, perm_i = both(0, None, img_nulls)
            image_level = {
                "note": "for comparison only: these tests treat images of one lesion as "
                "independent, which understates the null's variance",
                "expected_all_wrong": float(ex_i.extra["expected"]),
                "p_value_exact": float(ex_i.p_value),
                "log10_p_value_exact": float(ex_i.extra["log10_p_value"]),
                "p_value_permutation": float(perm_i.p_value),
                "permutation_interval_95": perm_i.extra["null_interval_95"],
            }
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
        clustering=clustering,
        image_level=image_level,
    )
