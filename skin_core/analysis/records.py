"""Named result records for statistical tests (never bare tuples).

Every test in :mod:`skin_core.analysis` returns a :class:`TestResult`: what was compared
(``name``), the effect with its sign convention stated in ``effect_name``, a confidence
interval, the statistic, the p-value, the method, and what the method assumes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TestResult:
    """One statistical test or estimate.

    Attributes
    ----------
    name:
        What is compared, e.g. ``"consensus accuracy: difficult - control"``.
    effect:
        The point estimate (sign convention in ``effect_name``).
    ci:
        ``(low, high)`` confidence interval of ``effect`` (``(nan, nan)`` when not computed).
    statistic:
        The test statistic (``nan`` when the method has none).
    p_value:
        Two-sided p-value unless ``method`` says otherwise (``nan`` when not a test).
    method:
        The method, with a citation or library function where useful.
    effect_name:
        What ``effect`` measures, e.g. ``"difference in proportions"`` or ``"odds ratio"``.
    assumptions:
        What the method assumes, in plain words (e.g. "readings independent").
    n:
        Sample sizes used (free-form mapping, e.g. ``{"difficult": 40, "control": 40}``).
    extra:
        Anything else worth keeping (e.g. ``n_permutations``, ``confidence``).
    """

    __test__ = False  # not a pytest test class

    name: str
    effect: float
    ci: tuple[float, float]
    statistic: float
    p_value: float
    method: str
    effect_name: str = ""
    assumptions: str = ""
    n: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN becomes ``None``)."""
        d = asdict(self)
        d["ci"] = [_clean(x) for x in self.ci]
        for key in ("effect", "statistic", "p_value"):
            d[key] = _clean(d[key])
        return d


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    try:
        import numpy as np

        if isinstance(x, np.generic):
            x = x.item()
            if isinstance(x, float) and not math.isfinite(x):
                return None
    except ImportError:  # pragma: no cover
        pass
    return x
