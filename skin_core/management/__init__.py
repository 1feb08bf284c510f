"""What to do, not only what it is: a management suggestion from calibrated probabilities.

Three actions (:data:`ACTIONS`): ``excise`` (biopsy / excise), ``monitor`` (short-term
follow-up, digital monitoring) and ``reassure`` (routine care). A :class:`CostTable` gives
the cost (relative harm, 0 = the right action) of each action when the lesion's true class
is each class; the clinic edits it. The suggestion is the Bayes decision (e.g. Duda, Hart &
Stork, *Pattern Classification*, 2nd ed., 2001, ch. 2): with the calibrated probabilities
``p`` of the served pipeline (``meta_probs``, else the ensemble's ``probs``),

    expected_cost(a) = sum_k C[a, k] * p[k]        suggestion = argmin_a expected_cost(a)

and it is returned with the table that produced it and every action's expected cost
(:class:`ManagementSuggestion`), so a clinician can see why. An out-of-distribution or
unreadable result gets no suggestion: the action is ``refer`` with the reason.

The defaults (:data:`DEFAULT_COSTS`, also ``configs/management-default.json``) are
illustrative: ``docs/management.md`` gives their rationale and the probability thresholds
they imply (:func:`decision_boundaries`); a clinic must set its own.

Classes are matched case-insensitively, so one table serves ISIC 2019 (``MEL NV BCC AK BKL
DF VASC SCC``) and HAM10000 (``akiec bcc bkl df mel nv vasc``) models. HAM10000's ``akiec``
covers AK and SCC (intraepidermal carcinoma): without an ``akiec`` column it costs, per
action, the larger of the AK and SCC costs (the table cannot tell which of the two it is, so
it takes the more harmful); conversely AK and SCC use an ``akiec`` column when the table has
only that.

Example::

    table = load_cost_table("configs/management-default.json")
    s = suggest_management(result, table)
    s.action, s.expected_costs, s.table.to_frame()
"""

from __future__ import annotations

from skin_core.management.decision import (
    ManagementSuggestion,
    decision_boundaries,
    suggest_management,
)
from skin_core.management.table import (
    ACTION_LABELS,
    ACTIONS,
    DEFAULT_COSTS,
    REFER,
    CostTable,
    canonical_action,
    cost_table_from_document,
    cost_table_yaml,
    default_cost_table,
    load_cost_table,
    read_cost_table,
    save_cost_table,
)

__all__ = [
    "ACTIONS",
    "ACTION_LABELS",
    "DEFAULT_COSTS",
    "REFER",
    "CostTable",
    "ManagementSuggestion",
    "canonical_action",
    "cost_table_from_document",
    "cost_table_yaml",
    "decision_boundaries",
    "default_cost_table",
    "load_cost_table",
    "read_cost_table",
    "save_cost_table",
    "suggest_management",
]
