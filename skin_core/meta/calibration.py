"""Probability calibration: temperature and vector scaling, one-vs-rest isotonic regression.

* **Temperature scaling** (Guo et al., ICML 2017): ``p_T = softmax(log p / T)`` with the single
  ``T > 0`` minimising the negative log-likelihood (``scipy.optimize.minimize_scalar`` over
  ``log T``). Keeps the ranking of classes.
* **Vector scaling** (the same paper's per-class variant, restricted to one temperature):
  ``softmax(log p / T + b)`` with a bias ``b_k`` per class (a small ridge keeps ``b`` finite
  for rare classes), fitted by NLL with L-BFGS. It also corrects a shift of the class
  priors between the rows a model was fitted on and the pipeline that serves it (the
  meta-classifier learns on single fold models' out-of-fold outputs and serves on the mean
  of all fold models), which one temperature cannot. It may change the top class.
* **Isotonic** (Zadrozny & Elkan, KDD 2002): one monotone map per class, fitted one-vs-rest
  with :class:`sklearn.isotonic.IsotonicRegression`, then rows renormalised to sum to one.

:func:`fit_calibrator` with ``method="auto"`` chooses among ``none``, ``temperature`` and
``isotonic`` by two-fold, group-wise cross-fitted NLL on the held-out rows it is given (the
meta-classifier's inner validation split) and refits the winner on all of them.

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
METHODS = ("none", "temperature", "vector", "isotonic")
VECTOR_RIDGE = 1e-3  # penalty on sum(b_k^2), next to the mean NLL


@dataclass(frozen=True)
class Calibrator:
    """A fitted calibration map.

    Attributes
    ----------
    method:
        ``"none"``, ``"temperature"`` or ``"isotonic"``.
    temperature:
        ``T`` for temperature and vector scaling (1.0 otherwise).
    bias:
        Per class ``b_k`` for vector scaling (empty otherwise).
    isotonic:
        Per class ``(x_thresholds, y_thresholds)`` for isotonic (empty otherwise).
    selection:
        How the method was chosen (cross-fitted NLL per candidate), informational.
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
        ``"auto"`` (choose by 2-fold group-wise cross-fitted NLL), ``"none"``,
        ``"temperature"``, ``"vector"`` or ``"isotonic"``.
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
    for m in METHODS:
        losses = []
        for h in (0, 1):
            fit_rows, eval_rows = half != h, half == h
            if fit_rows.sum() == 0 or eval_rows.sum() == 0:
                continue
            cal = _fit(m, probs[fit_rows], labels[fit_rows])
            losses.append(nll(cal.transform(probs[eval_rows]), labels[eval_rows]) *
                          eval_rows.sum())
        scores[m] = float(sum(losses) / len(labels)) if losses else float("nan")
    finite = {m: s for m, s in scores.items() if np.isfinite(s)}
    chosen = min(finite, key=finite.get) if finite else "none"
    cal = _fit(chosen, probs, labels)
    return Calibrator(
        method=cal.method,
        temperature=cal.temperature,
        isotonic=cal.isotonic,
        bias=cal.bias,
        selection={"criterion": "2-fold grouped cross-fitted NLL", "nll": scores,
                   "n": int(len(labels))},
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
