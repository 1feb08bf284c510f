"""What several page view models share: the study's result files and small formatters.

Owns :func:`study_files` (which result files a study folder holds), :func:`fmt_ci` (a
confidence interval as text for a table cell) and :func:`is_nan` (a NaN test that accepts
anything). Never imports Streamlit.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def study_files(study: str | os.PathLike[str]) -> dict[str, Path]:
    """The study's result files by kind (only those that exist).

    Keys: ``dataset``, ``summary``, ``quality``, ``difficulty``, ``significance``,
    ``quality_vs_difficulty``, ``ground_truth_check``, ``readings``, ``readers``, ``oof``,
    ``metrics``, ``report``.
    """
    s = Path(study)
    rel = {
        "dataset": "dataset.csv", "summary": "summary.json", "quality": "quality.csv",
        "difficulty": "difficulty/difficulty.csv",
        "significance": "difficulty/significance.json",
        "quality_vs_difficulty": "difficulty/quality_vs_difficulty.json",
        "ground_truth_check": "difficulty/ground_truth_check.json",
        "readings": "readings.csv", "readers": "readers/readers.json",
        "oof": "run/oof.csv", "metrics": "run/metrics.json", "report": "report.html",
    }
    return {k: s / v for k, v in rel.items() if (s / v).is_file()}


def fmt_ci(ci: Sequence[Any] | None, digits: int = 3) -> str:
    """``[low, high]`` with ``digits`` decimals; ``""`` when the interval is missing."""
    if not ci or any(v is None for v in ci):
        return ""
    return f"[{float(ci[0]):.{digits}f}, {float(ci[1]):.{digits}f}]"


def is_nan(v: Any) -> bool:
    """Whether ``v`` is a float NaN (``False`` for ``None``, text and other non-numbers)."""
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return False
