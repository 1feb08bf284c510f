"""Probability calibration: temperature and vector scaling, top-label and one-vs-rest isotonic.

* **Temperature scaling** (Guo et al., ICML 2017): ``p_T = softmax(log p / T)`` with the single
  ``T > 0`` minimising the negative log-likelihood (``scipy.optimize.minimize_scalar`` over
  ``log T``). Keeps the ranking of classes.
* **Vector scaling** (the same paper's per-class variant, restricted to one temperature):
  ``softmax(log p / T + b)`` with a bias ``b_k`` per class (a small ridge keeps ``b`` finite
  for rare classes), fitted by NLL with L-BFGS. It also corrects a shift of the class
  priors between the rows a model was fitted on and the pipeline that serves it (the
  meta-classifier learns on single fold models' out-of-fold outputs and serves on the mean
  of all fold models), which one temperature cannot. It may change the top class.
* **Top-label isotonic** (``top_isotonic``; the "top-versus-all" reduction of Le Coz et al.,
  NeurIPS 2024, with Gupta & Ramdas's top-label calibration, ICLR 2022): temperature scaling,
  then the top class's probability (the confidence a clinician is shown) through one isotonic
  map of confidence to the rate at which the top class is right; the other classes share the
  rest in their proportions. The top class never changes (its new probability is kept at or
  above what the runner-up becomes).
* **Isotonic** (Zadrozny & Elkan, KDD 2002): one monotone map per class, fitted one-vs-rest
  with :class:`sklearn.isotonic.IsotonicRegression`, then rows renormalised to sum to one.

:func:`fit_calibrator` with ``method="auto"`` chooses among the maps that keep every image's
top class (:data:`AUTO_METHODS`: ``none``, ``temperature``, ``top_isotonic``) the one with the
lowest top-label ECE (15 bins), cross-fitted over two lesion-disjoint halves of the held-out
rows it is given, and refits it on all of them (NLL is recorded beside it). The served
diagnosis is the top class of a meta-classifier trained for balanced accuracy, and the
promise shown with it is its probability, so calibration may change that number but not the
diagnosis: ``vector`` and ``isotonic`` lower the NLL by moving decisions towards the frequent
classes (on the HAM10000 calibration split, cross-fitted balanced accuracy 0.770 with
temperature, 0.728 with vector scaling and 0.732 with isotonic), so they are chosen only when
asked for.

A fitted calibrator is a :class:`Calibrator`: plain numbers, saved as JSON (no pickle);
``np.interp`` over the stored isotonic thresholds reproduces scikit-learn's predictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from skin_core.errors import ConfigError

EPS = 1e-7
METHODS = ("none", "temperature", "top_isotonic", "vector", "isotonic")
AUTO_METHODS = ("none", "temperature", "top_isotonic")  # they keep every image's top class
SELECTION_BINS = 15
VECTOR_RIDGE = 1e-3  # penalty on sum(b_k^2), next to the mean NLL


@dataclass(frozen=True)
class Calibrator:
    """A fitted calibration map.

    Attributes
    ----------
    method:
        One of :data:`METHODS`.
    temperature:
        ``T`` for temperature, vector scaling and top_isotonic (1.0 otherwise).
    bias:
        Per class ``b_k`` for vector scaling (empty otherwise).
    isotonic:
        Per class ``(x_thresholds, y_thresholds)`` for isotonic; for top_isotonic one pair,
        the map of the top class's probability (empty otherwise).
    selection:
        How ``"auto"`` chose the method (cross-fitted ECE and NLL per candidate),
        informational.
    """

    method: str = "none"
    temperature: float = 1.0
    isotonic: tuple[tuple[tuple[float, ...], tuple[float, ...]], ...] = ()
    bias: tuple[float, ...] = ()
    selection: dict[str, Any] = field(default_factory=dict)

    def transform(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated ``(N, K)`` probabilities (rows sum to one)."""
        probs = np.asarray(probs, dtype=float)
        if self.method == "none":
            return probs
        if self.method == "temperature":
            return softmax(np.log(np.clip(probs, EPS, 1.0)) / self.temperature, axis=1)
        if self.method == "vector":
            return softmax(np.log(np.clip(probs, EPS, 1.0)) / self.temperature
                           + np.asarray(self.bias, dtype=float), axis=1)
        if self.method == "top_isotonic":
            return _top_label(softmax(np.log(np.clip(probs, EPS, 1.0)) / self.temperature,
                                      axis=1), self.isotonic[0])
        if self.method == "isotonic":
            out = np.column_stack([
                np.interp(probs[:, k], np.asarray(x), np.asarray(y))
                for k, (x, y) in enumerate(self.isotonic)
            ])
            total = out.sum(axis=1, keepdims=True)
            ok = total[:, 0] > 0
            out[ok] = out[ok] / total[ok]
            out[~ok] = probs[~ok]
            return out
        raise ConfigError(f"Unknown calibration method {self.method!r}; expected one of {METHODS}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "method": self.method,
            "temperature": float(self.temperature),
            "isotonic": [[list(x), list(y)] for x, y in self.isotonic],
            "bias": [float(v) for v in self.bias],
            "selection": self.selection,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibrator:
        """Inverse of :meth:`to_dict`."""
        return cls(
            method=str(d["method"]),
            temperature=float(d.get("temperature", 1.0)),
            isotonic=tuple((tuple(map(float, x)), tuple(map(float, y)))
                           for x, y in d.get("isotonic", [])),
            bias=tuple(float(v) for v in d.get("bias", [])),
            selection=dict(d.get("selection", {})),
        )


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of integer ``labels`` under ``probs`` (clipped at 1e-7)."""
    p = np.clip(np.asarray(probs)[np.arange(len(labels)), labels], EPS, 1.0)
    return float(-np.mean(np.log(p)))


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> Calibrator:
    """Temperature scaling fitted by minimising NLL over ``log T`` in ``[-3, 3]``."""
    logp = np.log(np.clip(np.asarray(probs, dtype=float), EPS, 1.0))
    labels = np.asarray(labels, dtype=int)
    rows = np.arange(len(labels))

    def loss(log_t: float) -> float:
        return float(-log_softmax(logp / np.exp(log_t), axis=1)[rows, labels].mean())

    res = minimize_scalar(loss, bounds=(-3.0, 3.0), method="bounded")
    return Calibrator(method="temperature", temperature=float(np.exp(res.x)))


def fit_vector(probs: np.ndarray, labels: np.ndarray) -> Calibrator:
    """Vector scaling: one temperature and a bias per class, by NLL (+ a small ridge on the
    biases) with L-BFGS; ``log T`` bounded to ``[-3, 3]`` like :func:`fit_temperature`."""
    from scipy.optimize import minimize

    logp = np.log(np.clip(np.asarray(probs, dtype=float), EPS, 1.0))
    labels = np.asarray(labels, dtype=int)
    n, k = logp.shape
    onehot = np.zeros((n, k))
    onehot[np.arange(n), labels] = 1.0

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        t = np.exp(w[0])
        z = logp / t + w[1:]
        ls = log_softmax(z, axis=1)
        resid = (np.exp(ls) - onehot) / n  # d(mean NLL)/dz
        grad_b = resid.sum(axis=0) + 2 * VECTOR_RIDGE * w[1:]
        grad_logt = float(-(resid * logp).sum() / t)
        value = float(-(ls * onehot).sum() / n + VECTOR_RIDGE * (w[1:] ** 2).sum())
        return value, np.concatenate([[grad_logt], grad_b])

    bounds = [(-3.0, 3.0)] + [(None, None)] * k
    res = minimize(loss, np.zeros(k + 1), jac=True, method="L-BFGS-B", bounds=bounds)
    return Calibrator(method="vector", temperature=float(np.exp(res.x[0])),
                      bias=tuple(float(v) for v in res.x[1:]))


def _top_label(probs: np.ndarray, curve: tuple[tuple[float, ...], tuple[float, ...]]
               ) -> np.ndarray:
    """``probs`` with each row's top probability ``c0`` mapped through ``curve`` to ``c1``
    and the other classes rescaled by ``(1 - c1) / (1 - c0)``; ``c1`` is kept at or above
    ``p2 / (1 - c0 + p2)`` (``p2`` the runner-up), where the rescaled runner-up equals it, so
    the top class stays on top (and strictly, so ``argmax`` gives it)."""
    out = np.array(probs, dtype=float, copy=True)
    if len(out) == 0 or out.shape[1] < 2:
        return out
    rows = np.arange(len(out))
    top = out.argmax(axis=1)
    p2, c0 = np.sort(out, axis=1)[:, -2:].T
    c1 = np.interp(c0, np.asarray(curve[0]), np.asarray(curve[1]))
    # a hair above the tie, so that argmax (which takes the first of equals) keeps the top
    c1 = np.clip(np.maximum(c1, p2 / np.maximum(1.0 - c0 + p2, EPS) + 1e-9), 0.0, 1.0)
    rest = 1.0 - c0
    spread = rest <= EPS  # a one-hot row: the others share the rest evenly
    out *= np.where(spread, 0.0, (1.0 - c1) / np.maximum(rest, EPS))[:, None]
    if spread.any():
        out[spread] = ((1.0 - c1[spread]) / (out.shape[1] - 1))[:, None]
    out[rows, top] = c1
    return out


def fit_top_isotonic(probs: np.ndarray, labels: np.ndarray) -> Calibrator:
    """Temperature scaling, then one isotonic map of the top class's probability to the rate
    at which the top class is right (clipped to ``[1/K, 1]`` and outside the fitted range)."""
    from sklearn.isotonic import IsotonicRegression

    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels, dtype=int)
    temp = fit_temperature(probs, labels)
    scaled = temp.transform(probs)
    k = probs.shape[1]
    iso = IsotonicRegression(y_min=1.0 / k, y_max=1.0, out_of_bounds="clip")
    iso.fit(scaled.max(axis=1), (scaled.argmax(axis=1) == labels).astype(float))
    curve = (tuple(map(float, iso.X_thresholds_)), tuple(map(float, iso.y_thresholds_)))
    return Calibrator(method="top_isotonic", temperature=temp.temperature, isotonic=(curve,))


def fit_isotonic(probs: np.ndarray, labels: np.ndarray) -> Calibrator:
    """One-vs-rest isotonic maps (clipped outside the fitted range)."""
    from sklearn.isotonic import IsotonicRegression

    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels, dtype=int)
    maps = []
    for k in range(probs.shape[1]):
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        iso.fit(probs[:, k], (labels == k).astype(float))
        maps.append((tuple(map(float, iso.X_thresholds_)), tuple(map(float, iso.y_thresholds_))))
    return Calibrator(method="isotonic", isotonic=tuple(maps))


def _fit(method: str, probs: np.ndarray, labels: np.ndarray) -> Calibrator:
    if method == "none":
        return Calibrator()
    if method == "temperature":
        return fit_temperature(probs, labels)
    if method == "vector":
        return fit_vector(probs, labels)
    if method == "top_isotonic":
        return fit_top_isotonic(probs, labels)
    if method == "isotonic":
        return fit_isotonic(probs, labels)
    raise ConfigError(
        f"The 'method' parameter of fit_calibrator must be one of {('auto', *METHODS)}. "
        f"Got {method!r} instead."
    )


def fit_calibrator(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    method: str = "auto",
    groups: Sequence[Any] | np.ndarray | None = None,
    seed: int = 0,
) -> Calibrator:
    """Fit a calibrator on held-out ``(probs, labels)``.

    Parameters
    ----------
    probs:
        ``(N, K)`` probabilities from a model that did not train on these rows.
    labels:
        ``(N,)`` integer labels.
    method:
        ``"auto"`` (among :data:`AUTO_METHODS`, the lowest 2-fold group-wise cross-fitted
        top-label ECE; see the module docstring), or one of :data:`METHODS`.
    groups:
        Lesion ids, so that the two halves of ``"auto"`` share no lesion.
    seed:
        Seed of the split into halves.

    Returns
    -------
    Calibrator
    """
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels, dtype=int)
    if method != "auto":
        return _fit(method, probs, labels)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    uniq, inv = np.unique(groups, return_inverse=True)
    half = np.random.default_rng(seed).integers(0, 2, len(uniq))[inv]
    scores: dict[str, float] = {}
    eces: dict[str, float] = {}
    for m in AUTO_METHODS:
        out = np.full(probs.shape, np.nan)
        for h in (0, 1):
            fit_rows, eval_rows = half != h, half == h
            if fit_rows.sum() == 0 or eval_rows.sum() == 0:
                continue
            out[eval_rows] = _fit(m, probs[fit_rows], labels[fit_rows]).transform(
                probs[eval_rows])
        done = ~np.isnan(out).any(axis=1)
        scores[m] = nll(out[done], labels[done]) if done.any() else float("nan")
        eces[m] = (expected_calibration_error(out[done], labels[done], n_bins=SELECTION_BINS)
                   if done.any() else float("nan"))
    finite = {m: s for m, s in eces.items() if np.isfinite(s)}
    chosen = min(finite, key=finite.get) if finite else "none"
    cal = _fit(chosen, probs, labels)
    return Calibrator(
        method=cal.method,
        temperature=cal.temperature,
        isotonic=cal.isotonic,
        bias=cal.bias,
        selection={"criterion": f"2-fold grouped cross-fitted top-label ECE ({SELECTION_BINS} "
                                "bins) among the maps that keep the top class",
                   "ece": eces, "nll": scores, "n": int(len(labels))},
    )


def reliability_curve(
    probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 10
) -> list[dict[str, float]]:
    """Top-label reliability-diagram data: equal-width confidence bins.

    Returns
    -------
    list of dict
        One entry per non-empty bin: ``lo``, ``hi``, ``n``, ``confidence`` (mean max
        probability) and ``accuracy`` (share of rows whose top class is the label).
    """
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels, dtype=int)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = which == b
        if sel.any():
            out.append({
                "lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(sel.sum()),
                "confidence": float(conf[sel].mean()), "accuracy": float(correct[sel].mean()),
            })
    return out


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 10
) -> float:
    """Top-label ECE: ``sum_b n_b / N * |accuracy_b - confidence_b|`` over equal-width bins."""
    bins = reliability_curve(probs, labels, n_bins=n_bins)
    n = sum(b["n"] for b in bins)
    return float(sum(b["n"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins))
