"""Simulated lesion-clustered studies, to check that the tests hold their size.

A study here is ``M`` models' errors on ``N`` images of ``L`` lesions (several images each)
plus one image-quality measure. Under the **lesion-level null**:

* each model errs on a lesion independently of the other models, with its own per-class
  rate, and that error is shared by the lesion's images (each image's outcome is then
  flipped with a small probability, so a lesion's images need not all agree);
* quality is a lesion effect plus image noise, independent of the errors.

The null holds at lesion level, yet a test that counts images as independent sees clusters
of agreeing images and rejects too often. ``effect > 0`` plants the alternative: that share of
lesions is hard for **every** model, and hard lesions have lower quality (``quality_shift``).
:func:`null_rejection_rates` runs the lesion-level and image-level tests over many simulated
studies (``bench/bench_difficulty.py --calibration`` and ``tests/test_lesion_clustering.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["SimulatedStudy", "null_rejection_rates", "simulate_lesion_study"]


@dataclass(frozen=True, eq=False)
class SimulatedStudy:
    """One simulated study (see the module docstring).

    Attributes
    ----------
    errors:
        ``(M, N)`` booleans, model ``m`` wrong on image ``i``.
    labels:
        ``(N,)`` class indices (one class per lesion).
    lesion_ids:
        ``(N,)`` lesion ids (strings).
    quality:
        ``(N,)`` a quality measure (higher = better).
    """

    errors: np.ndarray
    labels: np.ndarray
    lesion_ids: np.ndarray
    quality: np.ndarray


def simulate_lesion_study(
    rng: np.random.Generator,
    *,
    n_lesions: int = 300,
    sizes: tuple[int, int] = (3, 5),
    n_models: int = 3,
    n_classes: int = 3,
    rates: tuple[float, float] = (0.3, 0.5),
    flip: float = 0.1,
    effect: float = 0.0,
    quality_shift: float = 1.0,
    quality_noise: float = 0.5,
) -> SimulatedStudy:
    """Draw one study.

    Parameters
    ----------
    rng:
        Random generator.
    n_lesions:
        ``L``.
    sizes:
        Images per lesion, uniform on ``sizes[0] .. sizes[1]``.
    n_models, n_classes:
        ``M`` and ``K`` (each lesion's class uniform over ``K``).
    rates:
        Each model's lesion error rate per class, uniform on this range.
    flip:
        Probability that an image's outcome differs from its lesion's.
    effect:
        Share of lesions wrong for every model (0: the null).
    quality_shift:
        How much lower (in lesion-effect SDs) the quality of those lesions is.
    quality_noise:
        SD of the image noise around the lesion's quality.
    """
    k = rng.integers(sizes[0], sizes[1] + 1, n_lesions)
    lesion = np.repeat(np.arange(n_lesions), k)
    cls = rng.integers(0, n_classes, n_lesions)
    rate = rng.uniform(rates[0], rates[1], (n_models, n_classes))
    hard = rng.random(n_lesions) < effect
    z = (rng.random((n_models, n_lesions)) < rate[:, cls]) | hard[None, :]
    errors = z[:, lesion] ^ (rng.random((n_models, lesion.size)) < flip)
    q_lesion = rng.normal(size=n_lesions) - quality_shift * hard
    quality = q_lesion[lesion] + quality_noise * rng.normal(size=lesion.size)
    return SimulatedStudy(errors=errors, labels=cls[lesion],
                          lesion_ids=np.char.add("L", lesion.astype(str)), quality=quality)


def _quality_tables(study: SimulatedStudy, errors: np.ndarray) -> tuple[Any, Any]:
    import pandas as pd

    n_wrong = errors.sum(axis=0)
    group = np.where(n_wrong == errors.shape[0], "difficult",
                     np.where(n_wrong == 0, "control", "other"))
    ids = np.char.add("I", np.arange(study.labels.size).astype(str))
    quality = pd.DataFrame({"image_id": ids, "blur_score": study.quality})
    difficulty = pd.DataFrame({"image_id": ids, "label": study.labels.astype(str),
                               "group": group, "lesion_id": study.lesion_ids})
    return quality, difficulty


def null_rejection_rates(
    n_studies: int,
    *,
    seed: int = 0,
    n_permutations: int = 199,
    alpha: float = 0.05,
    consistency: bool = True,
    quality_units: tuple[str, ...] = ("lesion", "image"),
    **study: Any,
) -> dict[str, Any]:
    """Share of simulated studies in which each test rejects at level ``alpha``.

    Parameters
    ----------
    n_studies:
        Number of simulated studies.
    seed:
        Seed of the whole run.
    n_permutations:
        Permutations per permutation test.
    alpha:
        Nominal level.
    consistency:
        Run the tests of consistent errors (lesion and image level, exact and permutation).
    quality_units:
        Run the quality-vs-difficulty tests at these levels (``"lesion"``: clustered rank
        test and cluster-robust logistic model; ``"image"``: Mann-Whitney U and the
        model-based logistic fit); ``()`` skips them.
    **study:
        Passed to :func:`simulate_lesion_study` (``effect=0.1`` for power).

    Returns
    -------
    dict
        ``{"n_studies", "alpha", "rates": {test: share}}`` with tests (``consistency``)
        ``lesion_permutation``, ``lesion_exact``, ``image_permutation``, ``image_exact`` and,
        per quality unit,
        ``<unit>_rank`` and ``<unit>_logistic``.
    """
    from skin_core.analysis.quality_difficulty import compare_quality
    from skin_core.analysis.significance import consistent_error_significance
    from skin_core.errors import DataError

    rng = np.random.default_rng(seed)
    hits: dict[str, int] = {}

    def count(name: str, p: float | None) -> None:
        hits[name] = hits.get(name, 0) + int(p is not None and p < alpha)

    for _ in range(n_studies):
        s = simulate_lesion_study(rng, **study)
        if consistency:
            sig = consistent_error_significance(s.errors, s.labels, seed=rng,
                                                n_permutations=n_permutations,
                                                lesions=s.lesion_ids)
            count("lesion_permutation", sig.p_value_permutation)
            count("lesion_exact", sig.p_value_exact)
            image = sig.image_level or {}
            count("image_permutation", image.get("p_value_permutation"))
            count("image_exact", image.get("p_value_exact"))
        if not quality_units:
            continue
        q, d = _quality_tables(s, s.errors)
        for unit in quality_units:
            try:
                res = compare_quality(q, d, measures=["blur_score"],
                                      model_measures=["blur_score"], n_boot=100,
                                      seed=int(rng.integers(2**31)), clusters=unit)
            except DataError:  # too few difficult or control images: no rejection
                count(f"{unit}_rank", None)
                count(f"{unit}_logistic", None)
                continue
            count(f"{unit}_rank", res["measures"]["blur_score"]["mann_whitney"].p_value)
            odds = res["logistic"]["odds_ratios"].get("blur_score")
            count(f"{unit}_logistic", odds.p_value if odds is not None else None)
    return {"n_studies": n_studies, "alpha": alpha,
            "rates": {k: v / n_studies for k, v in hits.items()}}
