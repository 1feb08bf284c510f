"""Vectorised lesion-grouped bootstrap: every resample is a row of lesion weights.

A cluster bootstrap draws ``L`` lesions with replacement from the ``L`` lesions of the data; the
resample is then fully described by how often each lesion was drawn, a ``(L,)`` vector of
multinomial counts that sums to ``L``. A figure that is a function of sums over images (a
confusion matrix, covered images, referred errors, confidence per ECE bin...) is therefore a
function of ``weights @ per_lesion_sums``, and ``B`` resamples are one matrix product
``(B, L) @ (L, M)`` instead of ``B`` Python loops over index arrays. Rank figures (AUC,
sensitivity at a specificity) take the same weights, spread to the images, through sorted
bucket sums (:class:`RankSet`: one sparse product per chunk, on the image-major weights of
:func:`image_weights`).

Row 0 of every weight matrix here is all ones, so the point estimate goes through exactly the
code of the resamples (no second implementation to drift); rows ``1..B`` are the resamples.
Images without a lesion id are their own lesion (image-level bootstrap when no image has one).

The percentile interval of the ``B`` resamples is reported (resamples where a figure is
undefined, e.g. a class that no drawn lesion has, are left out of that figure's interval).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

#: Resamples per chunk: bounds the ``(N, chunk)`` image-weight arrays (8 MB at N = 10,000).
CHUNK = 200


def lesion_codes(lesion_ids: pd.Series | np.ndarray, image_ids: pd.Series | np.ndarray
                 ) -> np.ndarray:
    """``(N,)`` int codes ``0..L-1`` of each image's lesion; an image without one is its own.

    Parameters
    ----------
    lesion_ids:
        ``(N,)`` lesion ids (``NaN`` / ``None`` / empty when unknown).
    image_ids:
        ``(N,)`` image ids (unique), used for the images without a lesion id.
    """
    les = pd.Series(np.asarray(lesion_ids, dtype=object))
    ids = pd.Series(np.asarray(image_ids, dtype=object))
    missing = les.isna() | (les.astype(str).str.strip() == "")
    key = ("lesion:" + les.astype(str)).where(~missing, "image:" + ids.astype(str))
    codes, _ = pd.factorize(key, sort=False)
    return codes.astype(np.int64)


def by_lesion(codes: np.ndarray, n_lesions: int, key: np.ndarray, n_keys: int,
              weights: np.ndarray | None = None) -> np.ndarray:
    """``(L, n_keys)`` per-lesion sums of ``weights`` (default 1) in column ``key`` per image."""
    flat = codes * n_keys + np.asarray(key, dtype=np.int64)
    out = np.bincount(flat, weights=weights, minlength=n_lesions * n_keys)
    return out.reshape(n_lesions, n_keys).astype(np.float64)


@dataclass(frozen=True)
class Resampler:
    """Draws lesion-weight rows for ``codes`` (see the module docstring).

    Attributes
    ----------
    codes: ``(N,)`` lesion code of each image.
    n_lesions: ``L``.
    n_resamples: ``B`` (0: point estimates only).
    seed: seed of the resamples (the same seed gives the same resamples).
    """

    codes: np.ndarray
    n_lesions: int
    n_resamples: int
    seed: int

    @classmethod
    def for_codes(cls, codes: np.ndarray, *, n_resamples: int, seed: int) -> Resampler:
        codes = np.asarray(codes, dtype=np.int64)
        n_lesions = int(codes.max()) + 1 if len(codes) else 0
        return cls(codes=codes, n_lesions=n_lesions, n_resamples=int(n_resamples),
                   seed=int(seed))

    def chunks(self, chunk: int = CHUNK) -> Iterator[np.ndarray]:
        """``(R, L)`` float64 weight rows: first the all-ones row alone, then the resamples
        in chunks of at most ``chunk`` rows (multinomial lesion counts, each row sums to L)."""
        n = self.n_lesions
        yield np.ones((1, n))
        rng = np.random.default_rng(self.seed)
        done = 0
        while done < self.n_resamples:
            r = min(chunk, self.n_resamples - done)
            draws = rng.integers(0, n, size=(r, n))
            flat = (np.arange(r)[:, None] * n + draws).ravel()
            yield np.bincount(flat, minlength=r * n).reshape(r, n).astype(np.float64)
            done += r


class Draw:
    """One chunk of ``R`` weight rows (see :meth:`Resampler.chunks`).

    Attributes
    ----------
    lesions: ``(R, L)`` float64 lesion weights.
    codes: ``(N,)`` lesion code of each image.
    """

    def __init__(self, lesions: np.ndarray, codes: np.ndarray) -> None:
        self.lesions = lesions
        self.codes = codes
        self._images: np.ndarray | None = None
        self._lesions_t: np.ndarray | None = None

    @property
    def lesions_t(self) -> np.ndarray:
        """``(L, R)`` float64 lesion weights, lesion-major (for :func:`weighted_sums`)."""
        if self._lesions_t is None:
            self._lesions_t = np.ascontiguousarray(self.lesions.T)
        return self._lesions_t

    @property
    def images(self) -> np.ndarray:
        """``(N, R)`` float32 image weights (:func:`image_weights`), made once per chunk."""
        if self._images is None:
            self._images = image_weights(self.lesions, self.codes)
        return self._images


def sparse_sums(per_lesion: np.ndarray) -> Any:
    """``(M, L)`` sparse transpose of ``(L, M)`` per-lesion sums, for :func:`weighted_sums`
    (a lesion has images in few of the M columns, so most entries are zero)."""
    import scipy.sparse as sp

    return sp.csr_matrix(np.asarray(per_lesion, dtype=np.float64).T)


def weighted_sums(sums_t: Any, draw: Draw, lesions: np.ndarray | None = None) -> np.ndarray:
    """``(R, M)`` totals ``weights @ per_lesion`` of a draw: ``sums_t`` from
    :func:`sparse_sums`; ``lesions``: the draw's lesion columns the sums belong to (all)."""
    wl = draw.lesions_t if lesions is None else draw.lesions_t[lesions]
    return np.asarray(sums_t @ wl).T


def run_bootstrap(resampler: Resampler,
                  statistics: Mapping[str, Callable[[Draw], dict[str, np.ndarray]]],
                  ) -> dict[str, dict[str, np.ndarray]]:
    """Every figure of every statistic on the point row and on every resample.

    ``statistics[name](draw)`` returns ``figure -> (R,)`` values for a :class:`Draw`; all
    statistics see the same resamples (paired). Returns ``name -> figure -> (1 + B,)``:
    index 0 the point estimate, then the resamples.
    """
    parts: dict[str, dict[str, list[np.ndarray]]] = {name: {} for name in statistics}
    for w in resampler.chunks():
        draw = Draw(w, resampler.codes)
        for name, statistic in statistics.items():
            for key, values in statistic(draw).items():
                parts[name].setdefault(key, []).append(np.asarray(values, dtype=np.float64))
    return {name: {key: np.concatenate(v) for key, v in figs.items()}
            for name, figs in parts.items()}


def figure(values: np.ndarray, confidence: float = 0.95) -> dict[str, object]:
    """``{"value": x, "ci": [lo, hi]}`` from ``(1 + B,)`` values (``None`` where undefined)."""
    point = float(values[0])
    reps = values[1:]
    reps = reps[np.isfinite(reps)]
    ci: list[float | None] = [None, None]
    if len(reps):
        a = (1.0 - confidence) / 2.0
        lo, hi = np.quantile(reps, [a, 1.0 - a])
        ci = [float(lo), float(hi)]
    return {"value": point if np.isfinite(point) else None,
            "ci": ci if np.isfinite(point) else [None, None]}


# --------------------------------------------------------------------------------------------
# figures from weighted totals (every function is vectorised over the R rows)


def safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` where ``den > 0``, NaN elsewhere (no warnings)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def confusion_figures(conf: np.ndarray) -> dict[str, np.ndarray]:
    """Figures of ``(R, K, K)`` weighted confusion counts (true class x predicted class).

    Returns ``balanced_accuracy`` (mean recall over the classes present), ``macro_f1`` (mean F1
    over the classes present, as scikit-learn's ``f1_score(labels=present)``), ``accuracy``,
    ``n`` ``(R, K)``, ``sensitivity`` ``(R, K)`` and ``specificity`` ``(R, K)`` (NaN for a
    class without positives, respectively negatives).
    """
    n_true = conf.sum(axis=2)
    n_pred = conf.sum(axis=1)
    tp = np.diagonal(conf, axis1=1, axis2=2)
    total = n_true.sum(axis=1)
    present = n_true > 0
    sens = safe_divide(tp, n_true)
    neg = total[:, None] - n_true
    spec = safe_divide(neg - (n_pred - tp), neg)
    f1 = safe_divide(2.0 * tp, n_true + n_pred)
    n_present = present.sum(axis=1)
    ba = safe_divide(np.where(present, sens, 0.0).sum(axis=1), n_present)
    mf1 = safe_divide(np.where(present, f1, 0.0).sum(axis=1), n_present)
    return {"balanced_accuracy": ba, "macro_f1": mf1,
            "accuracy": safe_divide(tp.sum(axis=1), total), "n": n_true, "sensitivity": sens,
            "specificity": spec}


def ece_bins(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """``(N,)`` bin of each top-label confidence among ``n_bins`` equal-width bins of [0, 1]
    (``(lo, hi]``, the first bin closed; the binning of
    :func:`skin_core.meta.calibration.reliability_curve`)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)


def ece_from_totals(count: np.ndarray, conf_sum: np.ndarray, correct_sum: np.ndarray
                    ) -> np.ndarray:
    """Top-label ECE ``sum_b |correct_b - confidence_b| / N`` from ``(R, n_bins)`` totals."""
    return safe_divide(np.abs(correct_sum - conf_sum).sum(axis=1), count.sum(axis=1))


def image_weights(lesion_weights: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``(N, R)`` float32 image weights (image-major) from ``(R, L)`` lesion weights.

    The layout of :func:`weighted_auc` and :func:`weighted_sensitivity_at_specificity`:
    cumulative sums run down the rows, vectorised across the ``R`` resamples. float32 is
    exact here: the weights are small integers and their running sums stay below 2**24.
    """
    return np.ascontiguousarray(lesion_weights.T, dtype=np.float32)[codes]


@dataclass(frozen=True)
class _Ranked:
    start: int  # first row of the block in the RankSet's matrix
    m: int  # distinct scores of the (smaller) "positive" side
    flipped: bool  # roles swapped (AUC = 1 - AUC of the swapped problem)


class RankSet:
    """Rank figures (AUC, sensitivity at a specificity) of several score columns under any
    image weights, from one sparse product per chunk of resamples.

    For one ``(scores, positive)`` pair, let ``u_0 < ... < u_{m-1}`` be the distinct
    positive scores. Every negative falls in one of ``2m + 1`` buckets in score order:
    strictly between two consecutive ``u`` (even rows ``2q``: below ``u_q``) or equal to one
    (odd rows ``2q + 1``); every positive in one of ``m`` buckets (its ``u_q``). A sparse
    ``(3m + 1, N)`` matrix sums the image weights into those buckets (one multiply-add per
    image and resample), and both figures follow from cumulative sums over the ``2m + 1``
    negative buckets:

    * AUC ``= sum_q P_q (C_{2q} + T_q / 2) / (W_pos W_neg)``, ``P_q`` the positive weight at
      ``u_q``, ``C_{2q}`` the negative weight strictly below ``u_q``, ``T_q`` the tied negative
      weight (the Mann-Whitney form; scikit-learn's ``roc_auc_score`` with unit weights).
      When positives outnumber negatives the roles are swapped (fewer buckets) and
      ``1 - AUC`` is taken;
    * sensitivity at specificity ``s``: the first negative bucket where the cumulative
      negative weight reaches ``s W_neg`` holds the threshold ``t`` (the lowest negative
      score with specificity >= ``s``); the sensitivity is the positive weight above ``t``
      over ``W_pos`` (:func:`skin_core.analysis.metrics.sensitivity_at_specificity` with unit
      weights).

    Parameters
    ----------
    n_images:
        Rows of the image weights the set is applied to (``N``).
    """

    def __init__(self, n_images: int) -> None:
        self.n_images = int(n_images)
        self._blocks: dict[str, _Ranked | None] = {}
        self._rows: list[np.ndarray] = []
        self._cols: list[np.ndarray] = []
        self._n_rows = 0
        self._matrix: Any = None

    def add(self, key: str, scores: np.ndarray, positive: np.ndarray, rows: np.ndarray, *,
            allow_flip: bool = True) -> None:
        """Add the pair ``key``: ``scores`` and ``positive`` of the images at weight rows
        ``rows``. ``allow_flip=False`` keeps the roles (needed for sensitivities)."""
        scores = np.asarray(scores, dtype=float)
        positive = np.asarray(positive, dtype=bool)
        rows = np.asarray(rows, dtype=np.int64)
        n_pos = int(positive.sum())
        if n_pos == 0 or n_pos == len(positive):
            self._blocks[key] = None
            return
        flipped = allow_flip and n_pos > len(positive) - n_pos
        if flipped:
            positive = ~positive
        u = np.unique(scores[positive])
        m = len(u)
        neg_s = scores[~positive]
        q = np.searchsorted(u, neg_s, side="left")
        tie = (q < m) & (u[np.minimum(q, m - 1)] == neg_s)
        start = self._n_rows
        self._rows += [start + 2 * q + tie,
                       start + 2 * m + 1 + np.searchsorted(u, scores[positive])]
        self._cols += [rows[~positive], rows[positive]]
        self._blocks[key] = _Ranked(start=start, m=m, flipped=flipped)
        self._n_rows += 3 * m + 1
        self._matrix = None

    def sums(self, wt: np.ndarray) -> np.ndarray:
        """``(rows, R)`` bucket sums of ``(N, R)`` image weights (pass to :meth:`auc` and
        :meth:`sensitivity_at_specificity`)."""
        if self._matrix is None:
            import scipy.sparse as sp

            r = np.concatenate(self._rows) if self._rows else np.zeros(0, np.int64)
            c = np.concatenate(self._cols) if self._cols else np.zeros(0, np.int64)
            self._matrix = sp.csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)),
                                         shape=(self._n_rows, self.n_images))
        return np.asarray(self._matrix @ wt)

    def auc(self, key: str, z: np.ndarray) -> np.ndarray:
        """``(R,)`` AUC of pair ``key`` from :meth:`sums` (NaN without both classes)."""
        b = self._blocks[key]
        if b is None:
            return np.full(z.shape[1], np.nan)
        neg = z[b.start:b.start + 2 * b.m + 1].astype(np.float64)
        pos = z[b.start + 2 * b.m + 1:b.start + 3 * b.m + 1].astype(np.float64)
        cum = np.cumsum(neg, axis=0)
        num = (pos * (cum[0::2][:b.m] + 0.5 * neg[1::2])).sum(axis=0)
        auc = safe_divide(num, pos.sum(axis=0) * cum[-1])
        return 1.0 - auc if b.flipped else auc

    def sensitivity_at_specificity(self, key: str, z: np.ndarray, specificity: float
                                   ) -> np.ndarray:
        """``(R,)`` sensitivity at ``specificity`` of pair ``key`` (added with
        ``allow_flip=False``) from :meth:`sums`."""
        b = self._blocks[key]
        if b is None:
            return np.full(z.shape[1], np.nan)
        if b.flipped:
            raise ValueError(f"Pair {key!r} was added with its roles swapped; add it with "
                             "allow_flip=False for sensitivities.")
        neg = z[b.start:b.start + 2 * b.m + 1].astype(np.float64)
        pos = z[b.start + 2 * b.m + 1:b.start + 3 * b.m + 1].astype(np.float64)
        cum = np.cumsum(neg, axis=0)
        tot_n = cum[-1]
        first = np.argmax(cum >= specificity * tot_n[None, :] * (1.0 - 1e-12), axis=0)
        above = np.zeros((b.m + 1, z.shape[1]))  # above[q]: positive weight at u_q and higher
        above[:-1] = np.cumsum(pos[::-1], axis=0)[::-1]
        sens = safe_divide(above[(first + 1) // 2, np.arange(z.shape[1])], above[0])
        return np.where(tot_n > 0, sens, np.nan)


def weighted_auc(scores: np.ndarray, positive: np.ndarray, wt: np.ndarray) -> np.ndarray:
    """``(R,)`` one-vs-rest ROC AUC of ``scores`` under ``(N, R)`` image weights
    (:class:`RankSet` with one pair)."""
    rs = RankSet(len(scores))
    rs.add("auc", scores, positive, np.arange(len(scores)))
    return rs.auc("auc", rs.sums(wt))


def weighted_sensitivity_at_specificity(scores: np.ndarray, positive: np.ndarray,
                                        wt: np.ndarray, specificity: float) -> np.ndarray:
    """``(R,)`` highest sensitivity with specificity >= ``specificity`` under ``(N, R)``
    image weights (:class:`RankSet` with one pair)."""
    rs = RankSet(len(scores))
    rs.add("sens", scores, positive, np.arange(len(scores)), allow_flip=False)
    return rs.sensitivity_at_specificity("sens", rs.sums(wt), specificity)


__all__ = [
    "CHUNK",
    "Draw",
    "RankSet",
    "Resampler",
    "by_lesion",
    "confusion_figures",
    "ece_bins",
    "ece_from_totals",
    "figure",
    "image_weights",
    "lesion_codes",
    "run_bootstrap",
    "safe_divide",
    "sparse_sums",
    "weighted_auc",
    "weighted_sums",
    "weighted_sensitivity_at_specificity",
]
