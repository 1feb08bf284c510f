"""Evaluation of the served pipeline on any labelled dataset (``skin-core evaluate``).

* :mod:`~skin_core.evaluation.evaluate`: run the bundle's Predictor over a dataset spec, map
  labels onto the bundle's classes, withhold metadata, write ``evaluation.json``,
  ``predictions.csv`` and ``evaluation.html``;
* :mod:`~skin_core.evaluation.figures`: the figures (overall, per class, per subgroup) from the
  served answers, each with a lesion-grouped bootstrap CI;
* :mod:`~skin_core.evaluation.bootstrap`: the vectorised cluster bootstrap (lesion weights);
* :mod:`~skin_core.evaluation.stability`: diagnosis changes under flips, rotation and crop;
* :mod:`~skin_core.evaluation.html`: the self-contained page and the figures the app shows;
* :mod:`~skin_core.evaluation.runner`: what the app's Validation page needs (job arguments,
  where evaluations go, the last one of a bundle).

See ``docs/evaluate.md``.
"""

from __future__ import annotations

from skin_core.evaluation.evaluate import (
    DROP_CHOICES,
    DROP_EVERY,
    EVALUATION_HTML,
    EVALUATION_JSON,
    PREDICTIONS_CSV,
    evaluate,
    find_evaluations,
    parse_class_map,
    resolve_labels,
)

__all__ = [
    "DROP_CHOICES",
    "DROP_EVERY",
    "EVALUATION_HTML",
    "EVALUATION_JSON",
    "PREDICTIONS_CSV",
    "evaluate",
    "find_evaluations",
    "parse_class_map",
    "resolve_labels",
]
