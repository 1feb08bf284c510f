"""The Bayes decision: the suggested action for one result, and its probability thresholds.

See :mod:`skin_core.management`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from skin_core.management.table import (
    ACTION_LABELS,
    REFER,
    CostTable,
    _resolved,
    default_cost_table,
)

# --------------------------------------------------------------------------------------------
# the suggestion


@dataclass(frozen=True)
class ManagementSuggestion:
    """The suggested action for one result, with everything that produced it.

    Attributes
    ----------
    action: ``excise``, ``monitor``, ``reassure``, or ``refer`` when no suggestion is made
        (out-of-distribution or unreadable image).
    expected_costs: action -> expected cost under ``probabilities`` (empty for ``refer``).
    table: the cost table used, resolved to the model's classes.
    reason: one or two plain sentences: why this action (or why none).
    probabilities: the calibrated class probabilities used (normalised to sum to 1).
    probability_source: ``"meta-classifier"``, ``"ensemble"`` or ``None`` (no suggestion).
    """

    action: str
    expected_costs: dict[str, float]
    table: CostTable
    reason: str
    probabilities: dict[str, float] = field(default_factory=dict)
    probability_source: str | None = None

    @property
    def label(self) -> str:
        """Plain-language name of :attr:`action`."""
        return ACTION_LABELS[self.action]

    @property
    def suggested(self) -> bool:
        """Whether an action was suggested (``False`` for ``refer``)."""
        return self.action != REFER

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``action, label, expected_costs, reason, probabilities,
        probability_source, table`` (the table as :meth:`CostTable.to_dict`)."""
        return {"action": self.action, "label": self.label,
                "expected_costs": dict(self.expected_costs), "reason": self.reason,
                "probabilities": dict(self.probabilities),
                "probability_source": self.probability_source, "table": self.table.to_dict()}

    def expected_cost_frame(self) -> Any:
        """``action, label, expected_cost, suggested`` per action of the table (NaN costs for
        ``refer``)."""
        import pandas as pd

        rows = [{"action": a, "label": ACTION_LABELS[a],
                 "expected_cost": self.expected_costs.get(a, float("nan")),
                 "suggested": a == self.action} for a in self.table.actions]
        return pd.DataFrame(rows, columns=["action", "label", "expected_cost", "suggested"])


def suggest_management(result: Any, table: CostTable | None = None) -> ManagementSuggestion:
    """The Bayes action for one :class:`~skin_core.predict.PredictionResult`.

    Parameters
    ----------
    result:
        A prediction result (``error``, ``ood``, ``meta_probs``, ``probs``, ``referral``).
    table:
        The cost table; default :func:`default_cost_table`.

    Returns
    -------
    ManagementSuggestion
        ``refer`` with the reason when the image could not be read, is out of distribution or
        has no usable probabilities; otherwise the action of lowest expected cost (ties: the
        first in ``table.actions``). A result flagged for referral for another reason keeps
        its suggestion and the reason says it is flagged.

    Raises
    ------
    ConfigError
        A class of the result has no cost in ``table``.
    """
    table = default_cost_table() if table is None else table
    if getattr(result, "error", None):
        return ManagementSuggestion(
            REFER, {}, table, f"No suggestion: the image could not be analysed "
            f"({str(result.error).rstrip('.')}); check the file or refer for specialist review.")
    ood = getattr(result, "ood", None) or {}
    if ood.get("flagged"):
        score, thr = ood.get("score"), ood.get("threshold")
        detail = (f" (out-of-distribution score {score:.3g} above the threshold {thr:.3g})"
                  if isinstance(score, (int, float)) and isinstance(thr, (int, float)) else "")
        return ManagementSuggestion(
            REFER, {}, table, "No suggestion: this does not look like the dermoscopic images "
            f"this model was trained on{detail}; refer for specialist review.")
    meta = getattr(result, "meta_probs", None)
    probs = meta or getattr(result, "probs", None) or {}
    source = "meta-classifier" if meta else "ensemble"
    classes = tuple(probs)
    # Plain floats: with 3 actions and <= 8 classes this is several times faster than NumPy
    # on such tiny arrays (bench/bench_triage.py).
    p = [_probability(probs[c]) for c in classes]
    total = sum(p)
    if not classes or not math.isfinite(total) or min(p) < 0 or total <= 0:
        return ManagementSuggestion(
            REFER, {}, table, "No suggestion: the result has no usable class probabilities; "
            "refer for specialist review.")
    resolved = _resolved(table, classes)[0]
    p = [q / total for q in p]
    expected = [sum(c * q for c, q in zip(row, p, strict=True)) for row in resolved.costs]
    low = min(expected)
    best = next(i for i, e in enumerate(expected) if e <= low + 1e-12)
    action = resolved.actions[best]
    costs = dict(zip(resolved.actions, expected, strict=True))
    others = ", ".join(f"{a} {costs[a]:.2f}" for a in resolved.actions if a != action)
    reason = (f"{ACTION_LABELS[action].capitalize()} has the lowest expected cost "
              f"({costs[action]:.2f}; {others}) under the {_SOURCE_TEXT[source]} "
              f"and the cost table '{resolved.name}'.")
    referral = getattr(result, "referral", None) or {}
    if referral.get("refer"):
        why = ", ".join(referral.get("reasons") or ()) or "see the result"
        reason += f" The result is also flagged for referral ({why}): review it before acting."
    return ManagementSuggestion(action, costs, resolved, reason,
                                dict(zip(classes, p, strict=True)), source)


_SOURCE_TEXT = {"meta-classifier": "meta-classifier's calibrated probabilities",
                "ensemble": "ensemble's probabilities (no meta-classifier in this bundle)"}


def _probability(v: Any) -> float:
    """A probability as a float; NaN (refused by the caller) when it is not a number."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def decision_boundaries(table: CostTable, positive: str, negative: str
                        ) -> list[tuple[float, float, str]]:
    """Where the suggestion changes along ``p * positive + (1 - p) * negative``.

    For a lesion that is either ``positive`` (e.g. MEL) or ``negative`` (e.g. NV), each
    action's expected cost is linear in ``p`` = P(positive); the Bayes action is constant on
    intervals of ``p`` (the threshold probabilities of Pauker & Kassirer, N Engl J Med 1980;
    302:1109-17).

    Returns
    -------
    list of ``(p_from, p_to, action)``
        Consecutive intervals covering [0, 1], each with its Bayes action (ties: the first
        action of the table).
    """
    m = table.resolve([negative, positive]).matrix()  # columns: negative, positive
    cuts = {0.0, 1.0}
    for i in range(len(m)):
        for j in range(i + 1, len(m)):
            # (1-p) n_i + p q_i = (1-p) n_j + p q_j  ->  p = (n_j - n_i) / (q_i - n_i - q_j + n_j)
            den = (m[i, 1] - m[i, 0]) - (m[j, 1] - m[j, 0])
            if den != 0:
                p = (m[j, 0] - m[i, 0]) / den
                if 0 < p < 1:
                    cuts.add(float(p))
    edges = sorted(cuts)
    out: list[tuple[float, float, str]] = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mid = (lo + hi) / 2
        e = m[:, 0] * (1 - mid) + m[:, 1] * mid
        a = table.actions[int(np.flatnonzero(e <= e.min() + 1e-12)[0])]
        if out and out[-1][2] == a:
            out[-1] = (out[-1][0], hi, a)
        else:
            out.append((lo, hi, a))
    return out
