"""The Difficult images view model: gallery filters and export, captions, study tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skin_core.app.difficult import (
    blur_by_group,
    filter_gallery,
    gallery_export,
    quality_tests_table,
    significance_table,
    thumb_caption,
)
from skin_core.app.thumbnails import thumbnail_grid_html
from skin_core.errors import ConfigError


def _gallery() -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": ["a", "b", "c", "d", "e"],
        "label": ["MEL", "NV", "MEL", "BCC", "NV"],
        "n_models": [3] * 5, "n_wrong": [3, 3, 2, 0, 3],
        "group": ["difficult", "difficult", "other", "control", "difficult"],
        "likely_mislabeled": [True, False, False, False, True],
        "blur_score": [0.2, 0.9, 0.5, np.nan, 0.45],
        "pred_m1": ["NV", "MEL", "NV", "BCC", "BKL"], "path": ["x"] * 5,
    })


def test_filter_gallery_each_filter():
    g = _gallery()
    assert filter_gallery(g)["image_id"].tolist() == ["a", "b", "e"]
    assert filter_gallery(g, groups=None, classes=["MEL"])["image_id"].tolist() == ["a", "c"]
    assert filter_gallery(g, groups=None, min_wrong=3)["image_id"].tolist() == ["a", "b", "e"]
    assert filter_gallery(g, blur_range=(0.3, 1.0))["image_id"].tolist() == ["b", "e"]
    # the full range keeps images without a blur score; a narrower one drops them
    assert "d" in filter_gallery(g, groups=None, blur_range=(0.0, 1.0))["image_id"].tolist()
    assert "d" not in filter_gallery(g, groups=None, blur_range=(0.0, 0.99))[
        "image_id"].tolist()
    assert filter_gallery(g, mislabeled="only")["image_id"].tolist() == ["a", "e"]
    assert filter_gallery(g, mislabeled="exclude")["image_id"].tolist() == ["b"]
    with pytest.raises(ConfigError, match="'mislabeled' parameter"):
        filter_gallery(g, mislabeled="yes")


def test_gallery_export_drops_local_paths():
    csv = gallery_export(_gallery()).decode()
    assert csv.splitlines()[0].startswith("image_id,label") and ",path" not in csv


def test_grid_html_escapes_and_caption():
    html = thumbnail_grid_html([("data:x", "<id>", "a & b")])
    assert "&lt;id&gt;" in html and "a &amp; b" in html and 'decoding="async"' in html
    row = _gallery().iloc[0].to_dict()
    assert thumb_caption(row, ["pred_m1"]) == "truth MEL · 3/3 wrong · blur 0.20 · pred NV"


def test_significance_and_quality_tables():
    sig = {"tests": [{"name": "all wrong", "effect": 3.0, "statistic": 30, "p_value": 1e-9,
                      "method": "exact", "assumptions": "independent",
                      "extra": {"observed": 30, "expected": 10.0}}]}
    t = significance_table(sig)
    assert t.loc[0, ["observed", "expected", "ratio"]].tolist() == [30, 10.0, 3.0]
    qvd = {"measures": {"blur_score": {
        "median_difficult": 0.4, "median_control": 0.8,
        "mann_whitney": {"p_value": 0.01, "extra": {"p_holm": 0.02}},
        "cliffs_delta": {"effect": -0.5, "ci": [-0.7, -0.2]}}}}
    q = quality_tests_table(qvd)
    assert q.loc[0, "delta_ci"] == "[-0.700, -0.200]" and q.loc[0, "p_holm"] == 0.02
    assert quality_tests_table({"computed": False}).empty
    box = blur_by_group(_gallery())
    assert sorted(box["image_id"]) == ["a", "b", "e"]  # control d has no blur score
