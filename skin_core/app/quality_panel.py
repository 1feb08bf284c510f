"""The Predict page's quality panel: where one image falls among the training images.

Owns the plain names of the quality measures (:data:`QUALITY_LABELS`), the typical range
(:data:`TYPICAL_RANGE`), the percentile strip (:func:`quality_strip`) and its Plotly figure,
and the "sharper than X %" figure (:func:`sharpness_percentile`). The measures themselves
are in :mod:`skin_core.analysis.quality`. Never imports Streamlit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from skin_core.app.common import is_nan

#: Plain names of the quality measures, in the order the quality strip shows them.
QUALITY_LABELS: dict[str, str] = {
    "blur_score": "blur score (1 = sharp)",
    "laplacian_var": "sharpness (Laplacian variance)",
    "laplacian_var_full": "sharpness at full resolution",
    "wavelet_ratio": "fine detail (wavelet ratio)",
    "wavelet_detail_energy": "detail energy (wavelet)",
    "fft_hf_ratio": "high-frequency energy",
    "contrast": "contrast",
    "brightness": "brightness",
    "entropy": "texture (entropy)",
    "vignette": "dark corners (vignette)",
}

#: The strip marks measures outside this central range of the training images (percent).
TYPICAL_RANGE: tuple[float, float] = (5.0, 95.0)


def quality_strip(quality: Mapping[str, Any], reference: Mapping[str, Any] | None
                  ) -> pd.DataFrame:
    """Where one image falls among the training images, measure by measure.

    A percentile strip rather than a CDF of the blur score alone: almost every sharp image
    scores a blur score of 1.0, so that CDF is a vertical line, while the underlying measures
    (Laplacian variance, wavelet ratio, ...) keep their spread.

    Parameters
    ----------
    quality:
        A prediction's ``quality`` record (``measures`` and ``percentiles``, from
        :class:`~skin_core.predict.PredictionResult`).
    reference:
        The bundle's quality reference (:func:`~skin_core.analysis.quality.quality_reference`):
        percentiles missing from ``quality`` are looked up there.

    Returns
    -------
    DataFrame with ``measure, label, value, percentile, low, median, high, outside`` (one row
    per measure of the reference that the image has; ``low``/``median``/``high``: the
    training images' values at :data:`TYPICAL_RANGE` and 50 %), in :data:`QUALITY_LABELS`
    order; empty without a reference.
    """
    from skin_core.analysis.quality import percentile_of

    cols = ["measure", "label", "value", "percentile", "low", "median", "high", "outside"]
    entries = (reference or {}).get("measures") or {}
    measures = dict(quality.get("measures") or {})
    if "blur_score" in quality:
        measures.setdefault("blur_score", quality["blur_score"])
    pct = quality.get("percentiles") or {}
    rows = []
    for m in [*QUALITY_LABELS, *sorted(set(entries) - set(QUALITY_LABELS))]:
        if m not in entries or measures.get(m) is None or is_nan(measures[m]):
            continue
        value = float(measures[m])
        p = pct.get(m)
        p = float(percentile_of(value, entries[m]) if p is None else p)
        q = np.asarray(entries[m]["quantiles"], dtype=float)
        lv = np.asarray(entries[m]["levels"], dtype=float)
        low, median, high = (float(np.interp(x, lv, q))
                             for x in (TYPICAL_RANGE[0], 50.0, TYPICAL_RANGE[1]))
        rows.append({"measure": m, "label": QUALITY_LABELS.get(m, m), "value": value,
                     "percentile": p, "low": low, "median": median, "high": high,
                     "outside": not (TYPICAL_RANGE[0] <= p <= TYPICAL_RANGE[1])})
    return pd.DataFrame(rows, columns=cols)


def quality_strip_figure(strip: pd.DataFrame, *, n_reference: int | None = None) -> Any:
    """The Plotly figure of a :func:`quality_strip`: one dot per measure at its percentile,
    red outside the shaded :data:`TYPICAL_RANGE`, the value and training median on hover."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(
        x=strip["percentile"], y=strip["label"], mode="markers+text",
        text=[f"{p:.0f}%" for p in strip["percentile"]], textposition="middle right",
        marker={"size": 12, "color": ["#c0392b" if o else "#2f6f8f" for o in strip["outside"]]},
        customdata=strip[["value", "median"]].to_numpy(),
        hovertemplate="%{y}: %{customdata[0]:.3g} (training median %{customdata[1]:.3g}), "
                      "percentile %{x:.0f}<extra></extra>"))
    fig.add_vrect(x0=TYPICAL_RANGE[0], x1=TYPICAL_RANGE[1], fillcolor="#eef3f6", line_width=0,
                  layer="below")
    fig.update_xaxes(range=[0, 108], title="percentile among the training images (shaded: "
                     f"the middle {TYPICAL_RANGE[1] - TYPICAL_RANGE[0]:.0f}%)")
    fig.update_yaxes(autorange="reversed", title=None)
    who = f"{n_reference:,} training images" if n_reference else "training images"
    fig.update_layout(height=90 + 26 * len(strip), showlegend=False,
                      margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      title=f"Where this image falls among the {who}")
    return fig


def sharpness_percentile(quality: Mapping[str, Any]) -> tuple[float | None, str]:
    """``(percentile, measure)`` for "sharper than X % of the training images".

    The Laplacian variance when the prediction has its percentile (it keeps its spread where
    the blur score saturates at 1.0), else the blur score's percentile.
    """
    pct = quality.get("percentiles") or {}
    if pct.get("laplacian_var") is not None:
        return float(pct["laplacian_var"]), "laplacian_var"
    p = quality.get("blur_percentile")
    return (None if p is None else float(p)), "blur_score"
