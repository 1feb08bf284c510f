"""The Predict page's quality panel: the percentile strip, its figure, sharpness."""

from __future__ import annotations

import numpy as np
import pytest

from skin_core.app.quality_panel import quality_strip, quality_strip_figure, sharpness_percentile


def _quality(**pct):
    return {"blur_score": 1.0, "percentiles": pct,
            "measures": {"laplacian_var": 40.0, "contrast": 0.3, "width": 600.0,
                         "blur_score": 1.0}}


def _reference():
    levels = list(np.linspace(0, 100, 11))
    return {"n_images": 500, "measures": {
        "blur_score": {"n": 500, "levels": levels, "quantiles": [0.2, 0.9] + [1.0] * 9},
        "laplacian_var": {"n": 500, "levels": levels,
                          "quantiles": [10, 20, 50, 80, 100, 150, 200, 300, 500, 800, 2000]},
        "contrast": {"n": 500, "levels": levels, "quantiles": list(np.linspace(0.1, 0.2, 11))},
    }}


def test_quality_strip_places_the_image_among_the_training_images():
    strip = quality_strip(_quality(blur_score=60.0), _reference())
    assert strip["measure"].tolist() == ["blur_score", "laplacian_var", "contrast"]  # no width
    row = strip.set_index("measure")
    assert row.loc["blur_score", "percentile"] == 60.0  # the predictor's own percentile
    assert row.loc["laplacian_var", "percentile"] == pytest.approx(10 + 10 * (40 - 20) / 30)
    assert row.loc["laplacian_var", "median"] == 150.0 and row.loc["laplacian_var", "low"] == 15
    assert row.loc["contrast", "percentile"] == 100.0 and row.loc["contrast", "outside"]
    assert not row.loc["laplacian_var", "outside"]
    assert quality_strip(_quality(), None).empty
    fig = quality_strip_figure(strip, n_reference=500)
    assert len(fig.data) == 1 and list(fig.data[0].x) == strip["percentile"].tolist()
    assert "500 training images" in fig.layout.title.text
    assert list(fig.data[0].marker.color).count("#c0392b") == 1  # contrast, outside 5-95 %
    assert sharpness_percentile(_quality(laplacian_var=16.7)) == (16.7, "laplacian_var")
    assert sharpness_percentile({"blur_percentile": 42.0}) == (42.0, "blur_score")
