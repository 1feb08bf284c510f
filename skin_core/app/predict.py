"""The Predict page's view model: one upload's prediction, its tables, JSON and HTML report.

Owns :func:`predict_with_and_without` (the metadata and metadata-free answers in one
batch), the per-architecture probabilities, the meta-classifier comparison, the referral
sentences, the downloadable JSON and one-page HTML report, and the similar cases with their
file paths. The quality panel is in :mod:`skin_core.app.quality_panel`. Never imports
Streamlit.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skin_core.app.thumbnails import png_data_uri


def predict_with_and_without(predictor: Any, data: bytes, *, name: str, age: Any = None,
                             sex: Any = None, site: Any = None, heatmap: bool = True,
                             similar: int = 0) -> tuple[Any, Any | None]:
    """Predict one uploaded image with its metadata and, when any was given, without it.

    Both run in one batch (one forward pass per model). Returns ``(result, without)``: the
    result with the metadata as given (heatmap included) and the metadata-free result, or
    ``None`` when no metadata was given (then ``result`` already is metadata-free).

    Raises
    ------
    ImageError
        The upload is not a usable image (one sentence: not an image, too large, ...).
    """
    from skin_core.errors import ImageError

    has_md = any(v not in (None, "") for v in (age, sex, site))
    images = [data, data] if has_md else [data]
    meta = [(age, sex, site), None] if has_md else [None]
    similar = similar if getattr(predictor, "retrieval", None) is not None else 0
    results = predictor.predict_batch(images, metadata=meta, heatmap=heatmap,
                                      names=[name] * len(images), similar=similar)
    if results[0].error is not None:
        raise ImageError(results[0].error)
    return results[0], (results[1] if has_md else None)


def member_probability_frame(result: Any, classes: Sequence[str]) -> pd.DataFrame:
    """Long table for the per-architecture bar chart: ``source, class, probability``.

    Sources: each architecture, ``ensemble`` and ``meta-classifier`` (when present).
    """
    rows = []
    for arch, probs in result.members.items():
        rows += [{"source": arch, "class": c, "probability": float(probs.get(c, 0.0))}
                 for c in classes]
    rows += [{"source": "ensemble", "class": c, "probability": float(result.probs.get(c, 0.0))}
             for c in classes]
    if result.meta_probs:
        rows += [{"source": "meta-classifier", "class": c,
                  "probability": float(result.meta_probs.get(c, 0.0))} for c in classes]
    return pd.DataFrame(rows, columns=["source", "class", "probability"])


#: Plain-language text of each referral reason.
REFERRAL_REASONS: dict[str, str] = {
    "high_risk": "the referral model rates this as an image every CNN would get wrong",
    "low_quality": "the image is blurry or less sharp than most training images",
    "model_disagreement": "the CNN architectures disagree on the diagnosis",
    "high_entropy": "the ensemble is unusually uncertain (high entropy)",
}


def referral_text(referral: Mapping[str, Any]) -> list[str]:
    """One plain sentence per referral reason (unknown reasons are shown as given)."""
    return [REFERRAL_REASONS.get(r, r) for r in referral.get("reasons") or []]


def meta_comparison(result: Any, without: Any | None) -> pd.DataFrame:
    """The meta-classifier's answer with and without metadata: always both rows.

    ``result`` is the prediction with the metadata as given and ``without`` its metadata-free
    twin (:func:`predict_with_and_without`); ``without`` is ``None`` when no metadata was
    given, and then ``result`` is the metadata-free answer and the *with metadata* row says
    what to enter instead of a diagnosis.

    Columns: ``variant, diagnosis, probability, prediction_set, source``.
    """
    def row(variant: str, r: Any) -> dict[str, Any]:
        probs = r.meta_probs or r.probs
        return {"variant": variant, "diagnosis": r.label,
                "probability": float(probs.get(r.label, float("nan"))) if r.label else None,
                "prediction_set": ", ".join(r.prediction_set),
                "source": r.meta_source or "ensemble (no meta-classifier)"}

    if without is not None:
        rows = [row("with metadata", result), row("without metadata", without)]
    else:
        rows = [{"variant": "with metadata", "diagnosis": "–", "probability": None,
                 "prediction_set": "", "source": "no metadata given: enter age, sex or site "
                 "to see it"}, row("without metadata", result)]
    return pd.DataFrame(rows, columns=["variant", "diagnosis", "probability", "prediction_set",
                                       "source"])


def result_json(result: Any, without: Any | None = None) -> str:
    """The downloadable JSON: ``result.to_dict()`` plus ``without_metadata`` when present."""
    from skin_core.io import to_json

    d = result.to_dict()
    if without is not None:
        d["without_metadata"] = without.to_dict()
    return to_json(d)


def result_report_html(result: Any, *, original: np.ndarray | None = None,
                       without: Any | None = None, disclaimer: str = "",
                       notice: str | None = None) -> str:
    """A self-contained one-page HTML report of one prediction (printable; images inline).

    ``notice`` (e.g. :data:`~skin_core.app.synthetic.SYNTHETIC_BUNDLE_NOTICE`) is printed in
    red above the diagnosis.
    """
    e = html.escape
    p = (result.meta_probs or result.probs).get(result.label, float("nan"))
    ref = result.referral or {}
    q = result.quality or {}
    rows = "".join(
        f"<tr><td>{e(c)}</td><td>{result.probs.get(c, 0):.3f}</td><td>"
        + (f"{result.meta_probs.get(c, 0):.3f}" if result.meta_probs else "–") + "</td></tr>"
        for c in sorted(result.probs, key=lambda c: -(result.meta_probs or result.probs)[c]))
    imgs = ""
    if original is not None:
        imgs += (f'<figure><img src="{png_data_uri(original)}"/><figcaption>Original'
                 "</figcaption></figure>")
    if result.overlay is not None:
        imgs += (f'<figure><img src="{png_data_uri(result.overlay)}"/><figcaption>Grad-CAM '
                 f"({e(result.heatmap_member or '')})</figcaption></figure>")
    refer = ("<p class='refer'><b>Refer for specialist review:</b> "
             + e("; ".join(referral_text(ref))) + "</p>") if ref.get("refer") else (
        "<p>No referral reason found.</p>")
    md = result.metadata or {}
    md_txt = ", ".join(f"{k}: {v}" for k, v in md.items() if v is not None) or "none given"
    nometa = ""
    if without is not None:
        nometa = (f"<p>Without metadata: <b>{e(str(without.label))}</b> "
                  f"({(without.meta_probs or without.probs).get(without.label, 0):.1%}), "
                  f"set {{{e(', '.join(without.prediction_set))}}}.</p>")
    warn = "".join(f"<li>{e(w)}</li>" for w in result.warnings)
    return f"""<!doctype html><html><head><meta charset="utf-8"/>
<title>Skin Disease Expert – {e(result.image)}</title><style>
body{{font:14px/1.45 sans-serif;color:#1d2a33;max-width:780px;margin:24px auto}}
h1{{font-size:20px}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccd6dd;
padding:3px 8px}} figure{{display:inline-block;margin:0 12px 0 0}} img{{width:240px}}
.refer{{background:#fdecea;border-left:4px solid #c0392b;padding:8px}}
.notice{{background:#c0392b;color:#fff;padding:10px;font-size:16px}}
.disc{{font-size:12px;color:#5b6b75;border-top:1px solid #ccd6dd;padding-top:8px}}
</style></head><body>
<h1>Skin Disease Expert – {e(result.image)}</h1>
{f'<p class="notice"><b>{e(notice)}</b></p>' if notice else ''}
<p>Top diagnosis: <b>{e(str(result.label))}</b> ({p:.1%}, calibrated) · prediction set
{{{e(', '.join(result.prediction_set))}}} (target coverage {result.coverage or 0:.0%}).</p>
<p>Metadata: {e(md_txt)} · source: {e(str(result.meta_source))}.</p>{nometa}
{refer}
<p>Image quality: blur score {q.get('blur_score', float('nan')):.2f}; {e(q.get('warning', ''))}</p>
{imgs}
<h2 style="font-size:16px">Probabilities</h2>
<table><tr><th>class</th><th>ensemble</th><th>meta-classifier</th></tr>{rows}</table>
{('<h2 style="font-size:16px">Warnings</h2><ul>' + warn + '</ul>') if warn else ''}
<p class="disc">{e(disclaimer)}</p></body></html>"""


def similar_cases(result: Any, dataset_spec: str | None) -> list[dict[str, Any]]:
    """The result's similar training images with the file path of each when the training
    dataset is on disk (``path`` ``None`` otherwise: the page then shows id and label)."""
    hits = [dict(h) for h in (result.similar or ())]
    paths = _dataset_paths(dataset_spec) if dataset_spec and hits else {}
    for h in hits:
        p = paths.get(str(h["image_id"]))
        h["path"] = p if p and Path(p).is_file() else None
    return hits


_PATHS_CACHE: dict[str, dict[str, str]] = {}


def _dataset_paths(spec: str) -> dict[str, str]:
    """``image_id -> path`` of a dataset spec (read once per process; ``{}`` when absent)."""
    if spec not in _PATHS_CACHE:
        from skin_core.data.tables import load_dataset
        from skin_core.errors import SkinCoreError

        try:
            table = load_dataset(spec, check_images=False).table
            _PATHS_CACHE[spec] = dict(zip(table["image_id"].astype(str),
                                          table["path"].astype(str), strict=True))
        except (SkinCoreError, OSError, ValueError):
            _PATHS_CACHE[spec] = {}
    return _PATHS_CACHE[spec]
