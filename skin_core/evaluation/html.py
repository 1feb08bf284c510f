"""``evaluation.html``: one self-contained page of an ``evaluation.json`` record.

Plotly figures with plotly.js embedded once (the page opens offline, as ``report.html``):
the reliability diagram (``div#reliability``), per-class sensitivity / specificity / AUC with
their CIs (``div#per-class``), balanced accuracy per subgroup with CIs (``div#subgroups``);
tables of the headline figures, per class, subgroups (small groups flagged), stability and
missing metadata. :func:`figure_reliability` and friends are shared with the app's page.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Headline figures in display order: key -> label.
HEADLINE: tuple[tuple[str, str], ...] = (
    ("balanced_accuracy", "Balanced accuracy"),
    ("macro_f1", "Macro F1"),
    ("accuracy", "Accuracy"),
    ("coverage", "Conformal coverage"),
    ("mean_set_size", "Mean set size"),
    ("referral_rate", "Referral rate"),
    ("referral_error_capture", "Errors caught by referral"),
    ("ece", "ECE (15 bins, top label)"),
)

_CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#1d2a33}
table{border-collapse:collapse;margin:1em 0;font-size:0.88em}
td,th{border:1px solid #ccd;padding:3px 7px;text-align:left}
th{background:#eef3f6}h1{color:#2f6f8f}.note{color:#555;font-size:0.9em}
tr.small td{color:#8a6d00}"""


def fmt(x: Any, digits: int = 3) -> str:
    """A number for display (``n/a`` for missing)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def fmt_figure(f: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``0.812 [0.790, 0.833]`` from ``{"value", "ci"}``."""
    if not f or f.get("value") is None:
        return "n/a"
    ci = f.get("ci") or [None, None]
    if ci[0] is None or ci[1] is None:
        return fmt(f["value"], digits)
    return f"{fmt(f['value'], digits)} [{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def headline_rows(ev: Mapping[str, Any]) -> list[dict[str, str]]:
    """The headline figures (served answer), the ensemble's and melanoma's, as table rows."""
    rows = [{"figure": label, "value [95% CI]": fmt_figure(ev.get(key))}
            for key, label in HEADLINE]
    ens = ev.get("ensemble") or {}
    rows.append({"figure": "Balanced accuracy, plain ensemble",
                 "value [95% CI]": fmt_figure(ens.get("balanced_accuracy"))})
    rows.append({"figure": "Served - ensemble balanced accuracy",
                 "value [95% CI]": fmt_figure(ens.get("balanced_accuracy_difference"))})
    mel = ev.get("melanoma_sensitivity_at_specificity") or {}
    for key in ("0.80", "0.90"):
        if key in mel:
            rows.append({"figure": f"{mel.get('class')} sensitivity at {float(key):.0%} "
                                   "specificity",
                         "value [95% CI]": fmt_figure(mel[key])})
    return rows


def per_class_rows(ev: Mapping[str, Any]) -> list[dict[str, str]]:
    return [{"class": c, "n": fmt(v.get("n")), "sensitivity": fmt_figure(v.get("sensitivity")),
             "specificity": fmt_figure(v.get("specificity")), "AUC": fmt_figure(v.get("auc")),
             "coverage": fmt_figure(v.get("coverage")),
             "mean set size": fmt_figure(v.get("mean_set_size"), 2)}
            for c, v in (ev.get("per_class") or {}).items()]


def subgroup_rows(ev: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per subgroup: column, group, n, small flag and the main figures."""
    rows = []
    for col, groups in (ev.get("subgroups") or {}).items():
        for g in groups:
            rows.append({"subgroup": col, "group": g.get("group"),
                         "images": fmt(g.get("n_images")), "lesions": fmt(g.get("n_lesions")),
                         "small (n < 30)": "yes" if g.get("small") else "",
                         "balanced accuracy": fmt_figure(g.get("balanced_accuracy")),
                         "accuracy": fmt_figure(g.get("accuracy")),
                         "coverage": fmt_figure(g.get("coverage")),
                         "referral rate": fmt_figure(g.get("referral_rate")),
                         "ECE": fmt_figure(g.get("ece"))})
    return rows


def stability_rows(ev: Mapping[str, Any]) -> list[dict[str, str]]:
    stab = ev.get("stability") or {}
    return [{"copy": name, "diagnosis changed [95% CI]": fmt_figure(v),
             "images changed": fmt(v.get("n_changed"))}
            for name, v in (stab.get("changed") or {}).items()]


def missing_metadata_rows(ev: Mapping[str, Any]) -> list[dict[str, str]]:
    return [{"metadata withheld": r.get("drop"), "images": fmt(r.get("n_images")),
             "served balanced accuracy": fmt_figure(r.get("balanced_accuracy")),
             "ensemble balanced accuracy": fmt_figure(r.get("ensemble_balanced_accuracy")),
             "served - ensemble": fmt_figure(r.get("difference"))}
            for r in ev.get("missing_metadata") or ()]


# --------------------------------------------------------------------------------------------
# figures (plotly)


def _err(f: Mapping[str, Any] | None) -> tuple[float | None, float, float]:
    if not f or f.get("value") is None:
        return None, 0.0, 0.0
    v = float(f["value"])
    lo, hi = (f.get("ci") or [None, None])
    return v, (0.0 if hi is None else hi - v), (0.0 if lo is None else v - lo)


def figure_reliability(ev: Mapping[str, Any]) -> Any:
    """Reliability diagram: accuracy against mean confidence per bin (size = images)."""
    import plotly.graph_objects as go

    bins = ev.get("reliability") or []
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                    line={"dash": "dash", "color": "#999"})
    fig.add_bar(x=[(b["lo"] + b["hi"]) / 2 for b in bins], y=[b["n"] for b in bins],
                width=[b["hi"] - b["lo"] for b in bins], name="images", yaxis="y2",
                marker={"color": "rgba(47,111,143,0.18)"})
    fig.add_scatter(x=[b["confidence"] for b in bins], y=[b["accuracy"] for b in bins],
                    mode="lines+markers", name="served answer",
                    text=[f"n = {b['n']}" for b in bins], line={"color": "#2f6f8f"})
    fig.update_layout(
        title=f"Reliability diagram (ECE {fmt_figure(ev.get('ece'))})",
        xaxis={"title": "confidence (top-label probability)", "range": [0, 1]},
        yaxis={"title": "accuracy", "range": [0, 1]},
        yaxis2={"title": "images", "overlaying": "y", "side": "right", "showgrid": False},
        legend={"orientation": "h", "y": -0.2})
    return fig


def figure_per_class(ev: Mapping[str, Any]) -> Any:
    """Per-class sensitivity, specificity and AUC with 95 % CI error bars."""
    import plotly.graph_objects as go

    per_class = ev.get("per_class") or {}
    fig = go.Figure()
    for key, label in (("sensitivity", "sensitivity"), ("specificity", "specificity"),
                       ("auc", "AUC")):
        vals = [_err(v.get(key)) for v in per_class.values()]
        fig.add_bar(x=list(per_class), y=[v[0] for v in vals], name=label,
                    error_y={"type": "data", "array": [v[1] for v in vals],
                             "arrayminus": [v[2] for v in vals]})
    fig.update_layout(title="Per class (served answer), 95% CI", barmode="group",
                      yaxis={"range": [0, 1.05]})
    return fig


def figure_subgroups(ev: Mapping[str, Any]) -> Any:
    """Balanced accuracy per subgroup with 95 % CI (small groups hatched)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for col, groups in (ev.get("subgroups") or {}).items():
        vals = [_err(g.get("balanced_accuracy")) for g in groups]
        fig.add_bar(x=[[col] * len(groups), [g["group"] for g in groups]],
                    y=[v[0] for v in vals], name=col,
                    marker={"pattern": {"shape": ["/" if g.get("small") else ""
                                                  for g in groups]}},
                    error_y={"type": "data", "array": [v[1] for v in vals],
                             "arrayminus": [v[2] for v in vals]})
    overall = (ev.get("balanced_accuracy") or {}).get("value")
    if overall is not None:
        fig.add_hline(y=overall, line_dash="dash", annotation_text="overall")
    fig.update_layout(title="Balanced accuracy per subgroup, 95% CI (hatched: n < 30)",
                      yaxis={"range": [0, 1.05]}, showlegend=False)
    return fig


# --------------------------------------------------------------------------------------------
# page


def _table(rows: list[dict[str, Any]], small_key: str | None = None) -> str:
    if not rows:
        return "<p class='note'>Nothing to show.</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        ("<tr class='small'>" if small_key and r.get(small_key) else "<tr>")
        + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in cols) + "</tr>"
        for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(ev: Mapping[str, Any]) -> str:
    """The whole page as a string."""
    import plotly.io as pio

    bundle = ev.get("bundle") or {}
    data = ev.get("dataset") or {}
    settings = ev.get("settings") or {}
    parts: list[str] = []
    n_fig = 0

    def add_figure(fig: Any, div_id: str) -> None:
        nonlocal n_fig
        n_fig += 1
        fig.update_layout(template="plotly_white", height=420, margin={"t": 60, "b": 60})
        parts.append(pio.to_html(fig, include_plotlyjs=n_fig == 1, full_html=False,
                                 div_id=div_id))

    esc = html.escape
    parts.append("<h1>Skin Disease Expert — evaluation of the served pipeline</h1>")
    parts.append(f"<p>Bundle <b>{esc(str(bundle.get('name')))}</b> "
                 f"({esc(str(bundle.get('path')))}) on <b>{esc(str(data.get('spec')))}</b>: "
                 f"{fmt(ev.get('n_images'))} images of "
                 f"{fmt(ev.get('n_lesions'))} lesions ({fmt(ev.get('n_failed'))} could not be "
                 f"predicted). Metadata given to the pipeline: "
                 f"{esc(str(settings.get('served_metadata')))} withheld. For research use "
                 "only; not a medical device.</p>")
    cmap = data.get("class_map") or {}
    if cmap:
        parts.append("<p class='note'>Dataset labels mapped onto the bundle's classes: "
                     + esc(", ".join(f"{a} → {b}" for a, b in cmap.items())) + ".</p>")
    parts.append(f"<p class='note'>Every interval: 95% {esc(str(settings.get('ci')))}, "
                 f"{fmt(settings.get('bootstrap'))} resamples, seed {fmt(settings.get('seed'))}."
                 "</p>")
    parts.append("<h2>Headline figures (served answer)</h2>")
    parts.append(_table(headline_rows(ev)))
    validation = bundle.get("validation")
    if isinstance(validation, dict):
        parts.append("<p class='note'>The bundle's own calibration-split figures (bundle.json "
                     "validation), for comparison: "
                     + esc(", ".join(f"{k} {fmt(v)}" for k, v in validation.items()
                                     if isinstance(v, (int, float)))) + ".</p>")
    add_figure(figure_reliability(ev), "reliability")
    parts.append("<h2>Per class</h2>")
    add_figure(figure_per_class(ev), "per-class")
    parts.append(_table(per_class_rows(ev)))
    parts.append("<h2>Subgroups</h2>")
    add_figure(figure_subgroups(ev), "subgroups")
    parts.append(_table(subgroup_rows(ev), small_key="small (n < 30)"))
    parts.append("<h2>Stability</h2>")
    stab = ev.get("stability")
    if stab:
        parts.append(f"<p class='note'>{fmt(stab.get('n_images'))} images sampled (seed "
                     f"{fmt(stab.get('seed'))}) of {fmt(stab.get('n_available'))}: "
                     f"{esc(str(stab.get('method')))}.</p>")
        parts.append(_table(stability_rows(ev)))
    else:
        parts.append("<p class='note'>Not measured (--stability 0).</p>")
    parts.append("<h2>Missing metadata</h2>")
    parts.append(_table(missing_metadata_rows(ev)))
    if ev.get("failed"):
        parts.append("<h2>Images that could not be predicted</h2>")
        parts.append(_table([{"image_id": f.get("image_id"), "error": f.get("error")}
                             for f in ev["failed"]]))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Evaluation — "
            f"{esc(str(bundle.get('name')))} on {esc(str(data.get('spec')))}</title>"
            f"<style>{_CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n")


def write_html(ev: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write :func:`render_html` of ``ev`` to ``path`` atomically."""
    from skin_core.io import atomic_write_text

    return atomic_write_text(path, render_html(ev))


__all__ = [
    "HEADLINE",
    "figure_per_class",
    "figure_reliability",
    "figure_subgroups",
    "fmt",
    "fmt_figure",
    "headline_rows",
    "missing_metadata_rows",
    "per_class_rows",
    "render_html",
    "stability_rows",
    "subgroup_rows",
    "write_html",
]
