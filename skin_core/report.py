"""The study report: ``report.md`` (tables) and ``report.html`` (tables + Plotly figures).

Both are built from the files a study folder holds (see :mod:`skin_core.study`), so a report
can be regenerated at any time and read without the app. Sections appear when their inputs
exist: data, per-model metrics, consistently misclassified images against chance, image
quality of difficult vs control images, the generator's ground truth (demo), experts vs CNNs,
and the meta-classifier's gains over the baselines. A study on synthetic (demo) images says so
in a red box above everything else (:data:`SYNTHETIC_REPORT_NOTICE`).
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from skin_core.io import atomic_write_text


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "n/a"
        if x != 0 and (abs(x) < 10 ** -digits or abs(x) >= 1e6):
            return f"{x:.2e}"
        return f"{x:.{digits}f}"
    return str(x)


def _ci(ci: Any, digits: int = 3) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    return f"[{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]"


#: Said at the top of the report of a study on synthetic (demo) images.
SYNTHETIC_REPORT_NOTICE = (
    "Synthetic data: this study's images were drawn by the demo generator, not taken from "
    "patients. Its models, errors and reader statistics only demonstrate the method; none of "
    "its numbers say anything about real lesions."
)


def study_is_synthetic_data(root: Path) -> bool:
    """Whether the study in ``root`` ran on synthetic images: its dataset (``config.yaml``
    ``dataset`` or ``summary.json`` ``spec``) holds the generator's ``generation_truth.csv``,
    or its difficulty step checked against that truth (``ground_truth_check.json``)."""
    import yaml

    from skin_core.workspace import dataset_is_synthetic

    if (root / "difficulty" / "ground_truth_check.json").is_file():
        return True
    specs = [(_load(root / "summary.json") or {}).get("spec")]
    try:
        cfg = yaml.safe_load((root / "config.yaml").read_text()) or {}
        specs.append(cfg.get("dataset") if isinstance(cfg, dict) else None)
    except (OSError, yaml.YAMLError):
        pass
    return any(isinstance(s, str) and dataset_is_synthetic(s) for s in specs)


def _duration(seconds: Any) -> str:
    """``0.03 s``, ``4.2 s``, ``2 min 05 s``; ``n/a`` when unknown."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "n/a"
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    return f"{s // 60} min {s % 60:02d} s"


def _chance_figure(sig: dict[str, Any]) -> Any:
    """Observed images wrong by all models against chance, as bars with 95 % intervals.

    Chance is the expectation under independent models with the same per-class error rates:
    exactly (Poisson-binomial) and by permutation; each bar carries its 95 % interval.
    """
    import plotly.graph_objects as go

    null = sig.get("null_all_wrong") or {}
    names, ys, lo, hi, colors = [], [], [], [], []

    def add(name: str, y: Any, interval: Any, color: str) -> None:
        if not isinstance(y, (int, float)) or not math.isfinite(y):
            return
        names.append(name)
        ys.append(float(y))
        iv = interval if isinstance(interval, (list, tuple)) and len(interval) == 2 else (y, y)
        lo.append(max(0.0, float(y) - float(iv[0])))
        hi.append(max(0.0, float(iv[1]) - float(y)))
        colors.append(color)

    add("chance (exact)", sig.get("expected_all_wrong"), null.get("exact_interval_95"), "#8a9aa5")
    add("chance (permutation)", null.get("permutation_mean"),
        null.get("permutation_interval_95"), "#b5c2ca")
    add("observed", sig.get("observed_all_wrong"), None, "#c0392b")
    fig = go.Figure(go.Bar(
        x=names, y=ys, marker_color=colors, text=[_fmt(y, 1) for y in ys],
        textposition="outside",
        error_y={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo,
                 "color": "#1d2a33"}))
    fig.update_layout(title="Images wrong by all models: observed vs chance",
                      yaxis_title="images wrong by all models",
                      yaxis={"rangemode": "tozero"})
    return fig


def _blurry_shares(merged: pd.DataFrame) -> list[dict[str, Any]]:
    """Per group: images, share called blurry (``blur_score < 0.5``), median blur score."""
    rows = []
    for g in ("difficult", "control"):
        b = pd.to_numeric(merged.loc[merged["group"] == g, "blur_score"], errors="coerce")
        b = b.dropna()
        rows.append({"group": g, "images": _fmt(int(len(b))),
                     "blurry (blur_score < 0.5)": f"{(b < 0.5).mean():.1%}" if len(b) else "n/a",
                     "median blur_score": _fmt(float(b.median()) if len(b) else None)})
    return rows


def _sharpness_figure(merged: pd.DataFrame) -> Any | None:
    """Box plots of the sharpness behind ``blur_score`` (log10 Laplacian variance) by group.

    ``blur_score`` saturates at 1.0 for most sharp images, so its box plot collapses; the
    Laplacian variance of the resolution-normalised image (its main input) keeps the spread.
    Falls back to ``blur_score`` for quality tables without that column; ``None`` when there
    is neither.
    """
    import numpy as np
    import plotly.graph_objects as go

    if "laplacian_var" in merged:
        values = np.log10(pd.to_numeric(merged["laplacian_var"], errors="coerce").clip(lower=1e-3))
        title = ("Sharpness by group: log10 Laplacian variance (the main input of blur_score; "
                 "higher = sharper)")
    elif "blur_score" in merged:
        values = pd.to_numeric(merged["blur_score"], errors="coerce")
        title = "blur_score (lower = blurrier) by group"
    else:
        return None
    fig = go.Figure()
    for g, color in (("difficult", "#c0392b"), ("control", "#2f6f8f")):
        v = values[(merged["group"] == g).to_numpy()].dropna()
        if len(v):
            fig.add_box(y=v, name=g, boxpoints="outliers", marker_color=color)
    if not fig.data:
        return None
    fig.update_layout(title=title, showlegend=False)
    return fig


@dataclass
class _Doc:
    """Accumulates the report as Markdown and HTML in parallel."""

    md: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    n_figs: int = 0

    def heading(self, text: str, level: int = 2) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        cols = list(rows[0])
        self.md.append("| " + " | ".join(cols) + " |")
        self.md.append("| " + " | ".join("---" for _ in cols) + " |")
        for r in rows:
            cells = [str(r.get(c, "")).replace("|", "\\|") for c in cols]
            self.md.append("| " + " | ".join(cells) + " |")
        self.md.append("")
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in cols) + "</tr>"
            for r in rows)
        self.html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def notice(self, text: str) -> None:
        """A warning nobody can miss: a quoted bold line in Markdown, a red box in HTML."""
        self.md.append(f"> **{text}**\n")
        self.html.append(f"<p class='notice'><b>{html.escape(text)}</b></p>")

    def figure(self, fig: Any) -> None:
        import plotly.io as pio

        self.n_figs += 1
        include = "inline" if self.n_figs == 1 else False  # plotly.js once, offline-readable
        fig.update_layout(template="plotly_white", height=380, margin={"t": 50, "b": 40})
        self.html.append(pio.to_html(fig, include_plotlyjs=include, full_html=False))


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#1d2a33}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
td,th{border:1px solid #ccd;padding:4px 8px}
th{background:#eef3f6}h1{color:#2f6f8f}.note{color:#555;font-size:0.9em}
.notice{background:#c0392b;color:#fff;padding:12px 16px;font-size:1.1em;border-radius:4px}"""


def write_report(study_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``report.md`` and ``report.html`` into ``study_dir``; return their paths."""
    import plotly.graph_objects as go

    root = Path(study_dir)
    doc = _Doc()
    cfg_text = (root / "config.yaml").read_text() if (root / "config.yaml").is_file() else ""
    summary = _load(root / "summary.json") or {}
    doc.heading("Skin Disease Expert — study report", 1)
    if study_is_synthetic_data(root):
        doc.notice(SYNTHETIC_REPORT_NOTICE)
    doc.para(f"Dataset: {summary.get('spec', 'unknown')}. For research use only; not a medical "
             "device.")

    if summary:
        doc.heading("Data")
        doc.para(f"{_fmt(summary.get('n_images'))} images of {_fmt(summary.get('n_lesions'))} "
                 f"lesions in {len(summary.get('classes', {}))} classes. Missing metadata stays "
                 "missing (never imputed from the label).")
        doc.table([{"class": c, "images": _fmt(n)}
                   for c, n in summary.get("classes", {}).items()])
        doc.table([{"column": c, "missing": _fmt(n)}
                   for c, n in summary.get("missing", {}).items()])

    metrics = _load(root / "run" / "metrics.json") or {}
    if metrics:
        doc.heading("CNN members (out-of-fold, lesion-grouped folds)")
        rows = [{"model": m, "balanced accuracy": _fmt(v.get("balanced_accuracy")),
                 "macro F1": _fmt(v.get("macro_f1")), "accuracy": _fmt(v.get("accuracy")),
                 "n": _fmt(v.get("n"))} for m, v in metrics.items() if isinstance(v, dict)]
        doc.table(rows)
        doc.figure(go.Figure(
            go.Bar(x=[r["model"] for r in rows],
                   y=[metrics[r["model"]].get("balanced_accuracy") for r in rows]),
            layout={"title": "OOF balanced accuracy per model", "yaxis": {"range": [0, 1]}}))

    sig = _load(root / "difficulty" / "significance.json")
    diff_path = root / "difficulty" / "difficulty.csv"
    diff = pd.read_csv(diff_path, dtype={"image_id": str}) if diff_path.is_file() else None
    if sig and diff is not None:
        counts = diff["group"].value_counts()
        doc.heading("Consistently misclassified images")
        doc.para(
            f"{_fmt(int(counts.get('difficult', 0)))} of {_fmt(len(diff))} images are "
            f"misclassified by all {sig.get('n_models')} models ('difficult'); "
            f"{_fmt(int(counts.get('control', 0)))} are classified correctly by all ('control'). "
            f"Under independent models with the same per-class error rates, "
            f"{_fmt(sig.get('expected_all_wrong'), 1)} would be expected (ratio "
            f"{_fmt(sig.get('ratio_all_wrong'), 1)}): exact Poisson-binomial p = "
            f"{_fmt(sig.get('p_value_exact'))} (log10 {_fmt(sig.get('log10_p_value_exact'), 1)}), "
            f"permutation p = {_fmt(sig.get('p_value_permutation'))} "
            f"({_fmt(sig.get('n_permutations'))} permutations).")
        doc.figure(_chance_figure(sig))

    qvd = _load(root / "difficulty" / "quality_vs_difficulty.json")
    quality_path = root / "quality.csv"
    if qvd and diff is not None and quality_path.is_file():
        doc.heading("Image quality: difficult vs control")
        rows = []
        for measure, res in qvd.get("measures", {}).items():
            mw = res.get("mann_whitney", {})
            cd = res.get("cliffs_delta", {})
            rows.append({"measure": measure,
                         "median difficult": _fmt(res.get("median_difficult")),
                         "median control": _fmt(res.get("median_control")),
                         "Cliff's delta": f"{_fmt(cd.get('effect'))} {_ci(cd.get('ci'))}",
                         "rank test p": _fmt(mw.get("p_value"))})
        doc.table(rows)
        logit = qvd.get("logistic") or {}
        if logit.get("odds_ratios"):
            # classes differ in texture and in error rates: the class-adjusted model is the
            # fair answer to "is image quality behind the errors?"
            doc.para("Adjusted for the class (logistic model of difficult vs control on "
                     "standardised measures, class as a covariate; odds ratio per standard "
                     "deviation):")
            doc.table([{"measure": m, "odds ratio": f"{_fmt(r.get('effect'))} {_ci(r.get('ci'))}",
                        "p": _fmt(r.get("p_value"))}
                       for m, r in logit["odds_ratios"].items()])
        q = pd.read_csv(quality_path, dtype={"image_id": str})
        merged = q.merge(diff[["image_id", "group"]], on="image_id")
        merged = merged[merged["group"].isin(["difficult", "control"])]
        if "blur_score" in merged:
            doc.table(_blurry_shares(merged))
        fig = _sharpness_figure(merged)
        if fig is not None:
            doc.figure(fig)

    gt = _load(root / "difficulty" / "ground_truth_check.json")
    if gt:
        doc.heading("Ground truth of the generator (demo)")
        rows = [{"generator flag": k, "flagged": _fmt(v.get("n_flagged")),
                 "in difficult": _fmt(v.get("n_both")), "precision": _fmt(v.get("precision")),
                 "recall": _fmt(v.get("recall")), "enrichment": _fmt(v.get("enrichment"), 2)}
                for k, v in gt.items() if isinstance(v, dict) and "precision" in v]
        doc.table(rows)

    readers = _load(root / "readers" / "readers.json")
    if readers:
        doc.heading("Experts vs CNNs")
        rows = []
        for g, v in readers.get("groups", {}).items():
            cons = v.get("consensus", {})
            cnn = v.get("cnn") or {}
            rows.append({"group": g, "images": _fmt(v.get("n_images")),
                         "pooled reader accuracy": _fmt(v.get("pooled_accuracy")),
                         "consensus accuracy": _fmt(cons.get("accuracy")),
                         "CNN accuracy": _fmt(cnn.get("accuracy") if isinstance(cnn, dict)
                                              else None),
                         "Fleiss kappa": _fmt(v.get("fleiss_kappa"))})
        doc.table(rows)
        doc.table([{"test": t.get("name"), "effect": _fmt(t.get("effect")),
                    "CI": _ci(t.get("ci")), "p": _fmt(t.get("p_value")),
                    "assumes": t.get("assumptions", "")} for t in readers.get("tests", [])])
        fig = go.Figure()
        for label, key in (("readers (pooled)", "pooled_accuracy"),
                           ("consensus", ("consensus", "accuracy")),
                           ("CNN ensemble", ("cnn", "accuracy"))):
            ys = []
            for v in readers.get("groups", {}).values():
                if isinstance(key, tuple):
                    inner = v.get(key[0]) or {}
                    ys.append(inner.get(key[1]) if isinstance(inner, dict) else None)
                else:
                    ys.append(v.get(key))
            fig.add_bar(x=list(readers.get("groups", {})), y=ys, name=label)
        fig.update_layout(title="Accuracy by group", barmode="group", yaxis={"range": [0, 1]})
        doc.figure(fig)

    meta = _load(root / "meta" / "meta.json")
    if meta:
        doc.heading("Meta-classifier (nested, lesion-grouped CV)")
        ci = meta.get("ci", {})
        rows = [{"model": "meta with metadata",
                 "balanced accuracy": _fmt(meta.get("balanced_accuracy")),
                 "95% CI": _ci((ci.get("meta_with_metadata") or {}).get("balanced_accuracy"))}]
        for name, value in meta.get("baselines", {}).items():
            rows.append({"model": name.replace("_", " "), "balanced accuracy": _fmt(value),
                         "95% CI": _ci((ci.get(name) or {}).get("balanced_accuracy"))})
        doc.table(rows)
        diffv = meta.get("difference_vs_mean_ensemble")
        if isinstance(diffv, dict):
            doc.para(f"Meta with metadata minus mean ensemble: "
                     f"{_fmt(diffv.get('effect'))} "
                     f"{_ci(diffv.get('ci'))}.")
        doc.figure(go.Figure(go.Bar(x=[r["model"] for r in rows],
                                    y=[float(r["balanced accuracy"]) if r["balanced accuracy"]
                                       != "n/a" else None for r in rows]),
                             layout={"title": "Balanced accuracy: meta-classifier vs baselines",
                                     "yaxis": {"range": [0, 1]}}))
        conf = meta.get("conformal")
        if isinstance(conf, dict):
            doc.para(f"Conformal prediction sets ({conf.get('score', '')}): target coverage "
                     f"{_fmt(conf.get('target_coverage'))}, measured on held-out folds "
                     f"{_fmt(conf.get('coverage'))}, average set size "
                     f"{_fmt(conf.get('mean_set_size'), 2)}.")
        ref = meta.get("referral")
        if isinstance(ref, dict):
            held = ref.get("held_out") or {}
            doc.para(f"Referral model (P(image is wrong by all CNNs)): AUROC "
                     f"{_fmt(ref.get('auroc'))} {_ci(ref.get('auroc_ci'))} by grouped CV; at "
                     f"threshold {_fmt(ref.get('threshold'))} it refers "
                     f"{_fmt(held.get('referral_rate'))} of images with sensitivity "
                     f"{_fmt(held.get('sensitivity'))}.")

    steps = _load(root / "steps.json") or {}
    if steps:
        doc.heading("Steps")
        doc.table([{"step": k, "time": _duration(v.get("seconds")),
                    "finished": v.get("finished", "")} for k, v in steps.items()
                   if isinstance(v, dict)])
    if cfg_text:
        doc.heading("Configuration")
        doc.md.append("```yaml\n" + cfg_text.rstrip() + "\n```\n")
        doc.html.append(f"<pre>{html.escape(cfg_text)}</pre>")

    md_path = atomic_write_text(root / "report.md", "\n".join(doc.md) + "\n")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>Skin Disease Expert — "
            f"study report</title><style>{_CSS}</style></head><body>"
            + "\n".join(doc.html) + "</body></html>\n")
    html_path = atomic_write_text(root / "report.html", page)
    return {"report_md": md_path, "report_html": html_path}
