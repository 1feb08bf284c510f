"""skin_core.analysis.reader_stats: the Wilcoxon test and its Hodges-Lehmann effect use the
same differences (zero differences included, their ranks split between the signs)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from skin_core.analysis import reader_stats as rs


def _walsh(d: np.ndarray) -> np.ndarray:
    i, j = np.triu_indices(d.size)
    return (d[i] + d[j]) / 2


def test_zsplit_signed_rank_statistic_counts_positive_walsh_averages():
    # the identity behind the choice: with zero differences kept and their ranks split, the
    # signed-rank sum T+ = #{Walsh averages > 0} + #{Walsh averages = 0} / 2, so the test and
    # the Hodges-Lehmann interval (which inverts that count) use the same n differences
    d = np.array([0.0, -0.3, 0.0, -0.1, 0.05, -0.4, 0.0, -0.25, 0.15])
    w = _walsh(d)
    t_plus = stats.wilcoxon(d, zero_method="zsplit", alternative="greater").statistic
    assert t_plus == pytest.approx((w > 0).sum() + 0.5 * (w == 0).sum())


def test_paired_reader_tests_keep_zero_differences_in_test_and_estimate():
    d = np.array([0.0, -0.2, -0.35, 0.0, -0.1, -0.25, 0.0, 0.05, -0.15, -0.3])
    wil, _ = rs.paired_reader_tests(d, labels=("difficult", "control"))
    ref = stats.wilcoxon(d, zero_method="zsplit")
    assert wil.statistic == pytest.approx(ref.statistic)
    assert wil.p_value == pytest.approx(ref.pvalue)
    assert wil.effect == pytest.approx(np.median(_walsh(d)))  # all 10 readers, zeros too
    assert wil.n == {"readers": 10}
    assert "zero differences kept" in wil.method and "same differences" in wil.method


def test_without_zero_differences_nothing_changes():
    d = np.array([-0.2, -0.35, -0.1, -0.25, -0.3, 0.05, -0.15])
    wil, _ = rs.paired_reader_tests(d, labels=("a", "b"))
    ref = stats.wilcoxon(d)  # Wilcoxon's method and zsplit agree when no difference is 0
    assert wil.p_value == pytest.approx(ref.pvalue)
    assert wil.statistic == pytest.approx(ref.statistic)
