"""Split-conformal prediction sets ("MEL or NV, 90% coverage").

Score: **LAC** (least ambiguous set-valued classifier; Sadinle, Lei & Wasserman, JASA 2019):
``s(x, y) = 1 - p_y(x)``. The threshold ``q`` is the finite-sample conformal quantile of the
``n`` calibration scores (:func:`conformal_quantile`; Angelopoulos & Bates, "A gentle
introduction to conformal prediction", 2021, eq. 1): the ``ceil((n + 1)(1 - alpha)) / n``
empirical quantile, i.e. the ``ceil((n + 1)(1 - alpha))``-th smallest score, and ``+inf`` (the
set of all classes) when that rank exceeds ``n``. The set is ``{k : 1 - p_k <= q}``. LAC gives
the smallest average sets for a given coverage; we chose it over APS because the
meta-classifier's probabilities are calibrated beforehand, and small sets are what a clinician
reads. The top class is always included, so a set is never empty (this can only raise
coverage).

``class_conditional=True`` (Mondrian conformal) computes one threshold per true class from
that class's calibration scores, so that coverage holds within every class, including rare
ones (a class with too few calibration rows for the level gets ``q = +inf``: always
included).

Guarantee: marginal coverage ``>= 1 - alpha`` when calibration and test rows are exchangeable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from skin_core.errors import ConfigError


@dataclass(frozen=True)
class ConformalThresholds:
    """Fitted thresholds of LAC split conformal prediction.

    Attributes
    ----------
    coverage:
        Target coverage ``1 - alpha``.
    classes:
        Class codes.
    thresholds:
        One score threshold per class (all equal unless ``class_conditional``); ``+inf``
        where the calibration rows were too few for the coverage (the class is always in
        the set). Written to JSON as ``null``.
    class_conditional:
        Whether thresholds are per class.
    n_calibration:
        Calibration rows used (per class when class-conditional).
    score:
        ``"lac"``.
    """

    coverage: float
    classes: tuple[str, ...]
    thresholds: tuple[float, ...]
    class_conditional: bool = False
    n_calibration: tuple[int, ...] = ()
    score: str = "lac"

    def sets(self, probs: np.ndarray) -> np.ndarray:
        """``(N, K)`` boolean membership of each class in each prediction set."""
        probs = np.asarray(probs, dtype=float)
        members = (1.0 - probs) <= np.asarray(self.thresholds)[None, :] + 1e-12
        members[np.arange(len(probs)), probs.argmax(axis=1)] = True
        return members

    def labels(self, probs: np.ndarray, *, sep: str = "|") -> list[str]:
        """Prediction sets as strings like ``"MEL|NV"`` (classes by decreasing probability)."""
        probs = np.asarray(probs, dtype=float)
        members = self.sets(probs)
        out = []
        for p, m in zip(probs, members, strict=True):
            order = [k for k in np.argsort(-p, kind="stable") if m[k]]
            out.append(sep.join(self.classes[k] for k in order))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "coverage": float(self.coverage),
            "classes": list(self.classes),
            "thresholds": [float(t) if math.isfinite(t) else None for t in self.thresholds],
            "class_conditional": bool(self.class_conditional),
            "n_calibration": [int(n) for n in self.n_calibration],
            "score": self.score,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConformalThresholds:
        """Inverse of :meth:`to_dict`."""
        return cls(
            coverage=float(d["coverage"]),
            classes=tuple(d["classes"]),
            thresholds=tuple(math.inf if t is None else float(t) for t in d["thresholds"]),
            class_conditional=bool(d.get("class_conditional", False)),
            n_calibration=tuple(int(n) for n in d.get("n_calibration", ())),
            score=str(d.get("score", "lac")),
        )


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The split-conformal threshold of ``n`` calibration scores for a target coverage.

    The ``ceil((n + 1) * coverage)``-th smallest score (the empirical quantile at level
    ``ceil((n + 1) * coverage) / n``, taken as an order statistic; NumPy's
    ``method="higher"`` at that level would take the next one up), or ``+inf`` when that rank
    exceeds ``n`` (too few scores for the coverage: every class belongs to every set).
    With exchangeable calibration and test rows, ``P(score_test <= threshold) >= coverage``.

    Parameters
    ----------
    scores:
        ``(n,)`` nonconformity scores of calibration rows (LAC: ``1 - p_label``).
    coverage:
        Target coverage ``1 - alpha`` in ``(0, 1)``.

    Returns
    -------
    float

    Examples
    --------
    >>> conformal_quantile(np.array([0.4, 0.1, 0.3, 0.2]), 0.6)   # rank ceil(5 * 0.6) = 3
    0.3
    >>> conformal_quantile(np.array([0.4, 0.1, 0.3, 0.2]), 0.9)   # rank 5 > 4
    inf
    """
    scores = np.sort(np.asarray(scores, dtype=float).ravel())
    n = len(scores)
    # round: (n + 1) * coverage must not become 9.000000000000002 and round up to 10
    rank = math.ceil(round((n + 1) * float(coverage), 9))
    if n == 0 or rank > n:
        return math.inf
    return float(scores[max(rank, 1) - 1])


def fit_conformal(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    *,
    coverage: float = 0.9,
    class_conditional: bool = False,
) -> ConformalThresholds:
    """Fit LAC split-conformal thresholds on held-out calibration rows.

    The public call for any calibration split: ``fit_conformal(calibrated_probs, labels,
    classes, coverage=0.9)`` with the probabilities the served pipeline shows (after its
    calibration map) of images no model trained on.

    Parameters
    ----------
    probs:
        ``(N, K)`` (calibrated) probabilities of rows the model did not train on.
    labels:
        ``(N,)`` integer labels.
    classes:
        The ``K`` class codes.
    coverage:
        Target coverage in ``(0, 1)``, e.g. 0.9.
    class_conditional:
        One threshold per class (Mondrian) instead of one for all.

    Returns
    -------
    ConformalThresholds

    Raises
    ------
    ConfigError
        ``coverage`` outside ``(0, 1)``.
    """
    if not 0.0 < float(coverage) < 1.0:
        raise ConfigError(
            f"The 'coverage' parameter of fit_conformal must be in (0, 1), e.g. 0.9. "
            f"Got {coverage!r} instead."
        )
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels, dtype=int)
    scores = 1.0 - probs[np.arange(len(labels)), labels]
    k = probs.shape[1]
    if class_conditional:
        thresholds = tuple(conformal_quantile(scores[labels == c], coverage)
                           for c in range(k))
        counts = tuple(int((labels == c).sum()) for c in range(k))
    else:
        q = conformal_quantile(scores, coverage)
        thresholds = (q,) * k
        counts = (int(len(labels)),)
    return ConformalThresholds(
        coverage=float(coverage), classes=tuple(classes), thresholds=thresholds,
        class_conditional=class_conditional, n_calibration=counts,
    )


def set_metrics(members: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict:
    """Coverage and size of prediction sets.

    Returns
    -------
    dict
        ``coverage`` (share of rows whose label is in the set), ``mean_set_size``,
        ``set_size_counts`` (size -> rows), ``class_coverage`` (class -> coverage or None),
        ``n``.
    """
    members = np.asarray(members, dtype=bool)
    labels = np.asarray(labels, dtype=int)
    hit = members[np.arange(len(labels)), labels]
    sizes = members.sum(axis=1)
    return {
        "coverage": float(hit.mean()) if len(hit) else float("nan"),
        "mean_set_size": float(sizes.mean()) if len(sizes) else float("nan"),
        "set_size_counts": {int(s): int((sizes == s).sum()) for s in np.unique(sizes)},
        "class_coverage": {
            c: (float(hit[labels == k].mean()) if (labels == k).any() else None)
            for k, c in enumerate(classes)
        },
        "n": int(len(labels)),
    }
