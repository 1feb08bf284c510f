"""The Predict view model: per-architecture table, meta comparison, JSON and HTML report."""

from __future__ import annotations

import json

import numpy as np

from skin_core.app.predict import (
    member_probability_frame,
    meta_comparison,
    referral_text,
    result_json,
    result_report_html,
)
from skin_core.app.synthetic import SYNTHETIC_BUNDLE_NOTICE
from skin_core.predict import PredictionResult


def _result(meta=True) -> PredictionResult:
    probs = {"MEL": 0.7, "NV": 0.3}
    return PredictionResult(
        image="x.jpg", image_id="x", label="MEL", probs=probs,
        members={"resnet": {"MEL": 0.6, "NV": 0.4}, "effnet": {"MEL": 0.8, "NV": 0.2}},
        meta_probs={"MEL": 0.75, "NV": 0.25} if meta else None,
        meta_source="with_metadata" if meta else None, prediction_set=("MEL",), coverage=0.9,
        quality={"blur_score": 0.3, "warning": "blurry <b>", "low_quality": True},
        referral={"refer": True, "reasons": ["low_quality", "model_disagreement"], "risk": 0.4},
        metadata={"age_approx": 50.0, "sex": None}, warnings=("blurry <b>",),
        overlay=np.zeros((8, 8, 3), np.uint8), heatmap_member="resnet fold 0")


def test_result_tables_json_and_report():
    r, w = _result(), _result(meta=False)
    bars = member_probability_frame(r, ["MEL", "NV"])
    assert set(bars["source"]) == {"resnet", "effnet", "ensemble", "meta-classifier"}
    assert bars.query("source == 'effnet' and `class` == 'MEL'")["probability"].item() == 0.8
    mc = meta_comparison(r, w)
    assert mc["variant"].tolist() == ["with metadata", "without metadata"]
    assert mc["probability"].tolist() == [0.75, 0.7]
    alone = meta_comparison(w, None)  # no metadata given: both rows, one says why
    assert alone["variant"].tolist() == ["with metadata", "without metadata"]
    assert alone["diagnosis"].tolist() == ["–", "MEL"] and alone["probability"][1] == 0.7
    assert "enter age, sex or site" in alone["source"][0]
    d = json.loads(result_json(r, w))
    assert d["label"] == "MEL" and d["without_metadata"]["meta_probs"] is None
    assert referral_text(r.referral)[1].startswith("the CNN architectures disagree")
    page = result_report_html(r, original=np.zeros((4, 4, 3), np.uint8), without=w,
                                  disclaimer="research only")
    assert "Refer for specialist review" in page and "blurry &lt;b&gt;" in page
    assert page.count("data:image/png;base64") == 2 and "research only" in page
    assert "class=\"notice\"" not in page
    warned = result_report_html(r, notice=SYNTHETIC_BUNDLE_NOTICE)
    assert warned.index("synthetic demo images") < warned.index("Top diagnosis")
