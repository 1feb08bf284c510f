"""Plain functions behind the Streamlit pages (tables, thumbnails, reports, training jobs).

Everything the pages show is computed here, so it is testable without Streamlit and usable
from a notebook; this module never imports Streamlit. Functions take paths, DataFrames and
result records and return DataFrames, dicts, strings or bytes.

Sections: study tables (gallery, significance, quality), thumbnails, the reader study
dashboard, prediction results (tables, JSON, one-page HTML report) and training jobs.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skin_core.constants import GROUP_CONTROL, GROUP_DIFFICULT, IMAGE_ID, LABEL
from skin_core.errors import ConfigError, DataError

# --------------------------------------------------------------------------------------------
# study tables


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


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


def load_gallery(study: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per image: difficulty, blur and the image path, for the gallery.

    Columns: those of ``difficulty.csv`` (``image_id, label, n_models, n_wrong, wrong_frac,
    majority_pred, mean_true_prob, label_quality, group, likely_mislabeled, pred_<model>...``)
    plus ``blur_score`` and ``is_blurry`` from ``quality.csv`` (NaN when not measured) and
    ``path`` from ``dataset.csv``. Sorted by decreasing ``n_wrong`` then ``label_quality``.

    Raises
    ------
    DataError
        The study has no ``difficulty/difficulty.csv`` (the difficulty step has not run).
    """
    files = study_files(study)
    if "difficulty" not in files:
        raise DataError(f"{Path(study) / 'difficulty/difficulty.csv'} does not exist; run the "
                        "study's difficulty step (skin-core study) first.")
    diff = pd.read_csv(files["difficulty"], dtype={IMAGE_ID: str, LABEL: str})
    if "likely_mislabeled" in diff.columns:
        diff["likely_mislabeled"] = diff["likely_mislabeled"].astype(str).str.lower() == "true"
    else:
        diff["likely_mislabeled"] = False
    if "quality" in files:
        q = pd.read_csv(files["quality"], dtype={IMAGE_ID: str},
                        usecols=lambda c: c in (IMAGE_ID, "blur_score", "is_blurry"))
        diff = diff.merge(q, on=IMAGE_ID, how="left")
    for col in ("blur_score", "is_blurry"):
        if col not in diff.columns:
            diff[col] = np.nan
    if "dataset" in files:
        paths = pd.read_csv(files["dataset"], dtype={IMAGE_ID: str}, usecols=[IMAGE_ID, "path"])
        diff = diff.merge(paths, on=IMAGE_ID, how="left")
    else:
        diff["path"] = None
    diff = diff.sort_values(["n_wrong", "label_quality", IMAGE_ID],
                            ascending=[False, True, True], kind="stable")
    return diff.reset_index(drop=True)


def model_columns(gallery: pd.DataFrame) -> list[str]:
    """The ``pred_<model>`` columns of a gallery table."""
    return [c for c in gallery.columns if c.startswith("pred_")]


def filter_gallery(
    gallery: pd.DataFrame,
    *,
    groups: Sequence[str] | None = (GROUP_DIFFICULT,),
    classes: Sequence[str] | None = None,
    min_wrong: int | None = None,
    blur_range: tuple[float, float] | None = None,
    mislabeled: str = "any",
) -> pd.DataFrame:
    """The gallery rows that pass every filter (order kept).

    Parameters
    ----------
    groups:
        Keep these groups (``difficult``, ``control``, ``other``); ``None`` keeps all.
    classes:
        Keep these true labels; ``None`` or empty keeps all.
    min_wrong:
        Keep images wrong by at least this many of the ``M`` models (m-of-M agreement).
    blur_range:
        ``(low, high)`` inclusive blur-score range; images without a blur score are kept only
        when the range is the full ``[0, 1]``.
    mislabeled:
        ``"any"``, ``"only"`` (likely mislabeled) or ``"exclude"``.

    Raises
    ------
    ConfigError
        ``mislabeled`` is not one of the three choices.
    """
    if mislabeled not in ("any", "only", "exclude"):
        raise ConfigError("The 'mislabeled' parameter of filter_gallery must be one of "
                          f"{{'any', 'only', 'exclude'}}. Got {mislabeled!r} instead.")
    keep = np.ones(len(gallery), dtype=bool)
    if groups:
        keep &= gallery["group"].isin(list(groups)).to_numpy()
    if classes:
        keep &= gallery[LABEL].isin(list(classes)).to_numpy()
    if min_wrong is not None:
        keep &= (gallery["n_wrong"] >= int(min_wrong)).to_numpy()
    if blur_range is not None:
        lo, hi = float(blur_range[0]), float(blur_range[1])
        b = pd.to_numeric(gallery["blur_score"], errors="coerce").to_numpy(dtype=float)
        ok = (b >= lo) & (b <= hi)
        if lo <= 0.0 and hi >= 1.0:
            ok |= np.isnan(b)
        keep &= ok
    if mislabeled != "any":
        flag = gallery["likely_mislabeled"].to_numpy(dtype=bool)
        keep &= flag if mislabeled == "only" else ~flag
    return gallery.loc[keep].reset_index(drop=True)


def gallery_export(rows: pd.DataFrame) -> bytes:
    """The filtered gallery as CSV bytes (UTF-8), without the local ``path`` column."""
    return rows.drop(columns=["path"], errors="ignore").to_csv(index=False).encode()


def significance_table(sig: Mapping[str, Any]) -> pd.DataFrame:
    """The tests of ``significance.json`` as a table (one row per test).

    Columns: ``test, observed, expected, ratio, p_value, method, assumptions``.
    """
    rows = []
    for t in sig.get("tests") or []:
        extra = t.get("extra") or {}
        rows.append({
            "test": t.get("name"), "observed": extra.get("observed", t.get("statistic")),
            "expected": extra.get("expected", extra.get("null_mean")),
            "ratio": t.get("effect"), "p_value": t.get("p_value"),
            "method": t.get("method"), "assumptions": t.get("assumptions"),
        })
    return pd.DataFrame(rows, columns=["test", "observed", "expected", "ratio", "p_value",
                                       "method", "assumptions"])


def quality_tests_table(qvd: Mapping[str, Any] | None) -> pd.DataFrame:
    """Per-measure difficult-vs-control tests from ``quality_vs_difficulty.json``.

    Columns: ``measure, median_difficult, median_control, cliffs_delta, delta_ci,
    p_value, p_holm``. Empty when the comparison was not computed.
    """
    cols = ["measure", "median_difficult", "median_control", "cliffs_delta", "delta_ci",
            "p_value", "p_holm"]
    if not qvd or not qvd.get("measures"):
        return pd.DataFrame(columns=cols)
    rows = []
    for m, r in qvd["measures"].items():
        mw = r.get("mann_whitney") or {}
        cd = r.get("cliffs_delta") or {}
        ci = cd.get("ci") or [None, None]
        rows.append({
            "measure": m, "median_difficult": r.get("median_difficult"),
            "median_control": r.get("median_control"), "cliffs_delta": cd.get("effect"),
            "delta_ci": _fmt_ci(ci), "p_value": mw.get("p_value"),
            "p_holm": (mw.get("extra") or {}).get("p_holm"),
        })
    return pd.DataFrame(rows, columns=cols)


def _fmt_ci(ci: Sequence[Any] | None, digits: int = 3) -> str:
    if not ci or any(v is None for v in ci):
        return ""
    return f"[{float(ci[0]):.{digits}f}, {float(ci[1]):.{digits}f}]"


def blur_by_group(gallery: pd.DataFrame,
                  groups: Sequence[str] = (GROUP_DIFFICULT, GROUP_CONTROL)) -> pd.DataFrame:
    """``image_id, group, blur_score`` for the box plot (rows with a blur score only)."""
    df = gallery.loc[gallery["group"].isin(list(groups)), [IMAGE_ID, "group", "blur_score"]]
    df = df.assign(blur_score=pd.to_numeric(df["blur_score"], errors="coerce"))
    return df.dropna(subset=["blur_score"]).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# thumbnails

#: Thumbnail side in pixels (the longer side) and JPEG quality.
THUMB_SIDE = 112
THUMB_QUALITY = 80


def thumbnail_jpeg(path: str | os.PathLike[str], *, side: int = THUMB_SIDE,
                   quality: int = THUMB_QUALITY) -> bytes:
    """A small JPEG of the image at ``path`` (longer side ``side`` px), made in memory.

    Decoding goes through :func:`skin_core.data.images.read_image` (size caps, EXIF, every
    mode) with a draft reduction, so a large photograph costs little.

    Raises
    ------
    ImageError
        The file is missing or not a readable image.
    """
    from PIL import Image

    from skin_core.data.images import read_image

    rgb = read_image(path, reduce_to=(side, side))
    im = Image.fromarray(rgb)
    im.thumbnail((side, side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()


def data_uri(jpeg: bytes) -> str:
    """``data:image/jpeg;base64,...`` for inline HTML."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def thumbnail_grid_html(items: Iterable[tuple[str, str, str]], *, side: int = THUMB_SIDE) -> str:
    """One HTML grid of thumbnails: ``items`` are ``(data_uri, title, caption)``.

    The ``title`` (image id) is shown in bold and the caption below it; both are escaped. The
    images are inline data URIs decoded off the main thread (``decoding="async"``): one HTML
    element per page instead of one ``st.image`` per thumbnail.
    """
    cells = []
    for uri, title, caption in items:
        t = html.escape(title)
        cells.append(
            f'<figure class="sde-thumb"><img src="{uri}" decoding="async" alt="{t}"'
            f' width="{side}" height="{side}"/><figcaption><b>{t}</b><br/>'
            f"{html.escape(caption)}</figcaption></figure>"
        )
    style = (
        "<style>.sde-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax("
        f"{side + 16}px,1fr));gap:10px}}.sde-thumb{{margin:0;padding:6px;background:#fff;"
        "border:1px solid #dde5ea;border-radius:6px;font:12px/1.3 sans-serif;color:#1d2a33}"
        ".sde-thumb img{width:100%;height:auto;object-fit:cover;border-radius:4px;"
        "background:#eef3f6}.sde-thumb figcaption{margin-top:4px;overflow-wrap:anywhere}</style>"
    )
    return style + '<div class="sde-grid">' + "".join(cells) + "</div>"


def thumb_caption(row: Mapping[str, Any], models: Sequence[str]) -> str:
    """``truth NV · 3/3 wrong · blur 0.42`` and the models' answers for one gallery row."""
    parts = [f"truth {row.get(LABEL)}"]
    if row.get("n_models") is not None and not _isnan(row.get("n_models")):
        parts.append(f"{int(row['n_wrong'])}/{int(row['n_models'])} wrong")
    b = row.get("blur_score")
    if b is not None and not _isnan(b):
        parts.append(f"blur {float(b):.2f}")
    preds = [str(row.get(c)) for c in models if row.get(c) is not None]
    if preds:
        parts.append("pred " + "/".join(preds))
    return " · ".join(parts)


def _isnan(v: Any) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return False


def page_slice(n: int, page: int, per_page: int) -> tuple[int, int, int]:
    """``(start, stop, n_pages)`` of page ``page`` (1-based, clipped) of ``n`` rows."""
    per_page = max(1, int(per_page))
    n_pages = max(1, math.ceil(n / per_page))
    page = min(max(1, int(page)), n_pages)
    start = (page - 1) * per_page
    return start, min(n, start + per_page), n_pages


# --------------------------------------------------------------------------------------------
# reader study


@dataclass(frozen=True)
class ReaderInputs:
    """Where a reader study's inputs are: readings, truth, groups and CNN predictions."""

    readings: Any
    truth: Any
    groups: Any = None
    cnn: Any = None


def demo_reader_inputs(study: str | os.PathLike[str]) -> ReaderInputs | None:
    """The study's own reader inputs (``readings.csv``, its dataset, ``difficulty.csv``,
    ``run/oof.csv``), or ``None`` when the study has no readings."""
    files = study_files(study)
    if "readings" not in files:
        return None
    truth: Any = files.get("dataset")
    if truth is not None:
        truth = pd.read_csv(truth, dtype=str, usecols=[IMAGE_ID, LABEL])
    return ReaderInputs(readings=files["readings"], truth=truth,
                        groups=files.get("difficulty"), cnn=files.get("oof"))


def read_upload_csv(data: bytes, name: str, *, required: Sequence[str] = (),
                    what: str = "CSV") -> pd.DataFrame:
    """An uploaded CSV (bytes) as a string DataFrame; one clear sentence when it is not one.

    Parameters
    ----------
    data, name:
        The file's bytes and its name (quoted in errors).
    required:
        Columns the file must have (after stripping spaces from the header).
    what:
        What the file is (``"readings.csv"``...), for the error message.

    Raises
    ------
    DataError
        Empty, not UTF-8 text, not parseable as CSV, or a required column is missing.
    """
    if not data or not data.strip():
        raise DataError(f"The uploaded file {name} is empty; upload a CSV with a header row.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"The uploaded file {name} is not UTF-8 text (byte {e.start}); "
                        "save it as a UTF-8 CSV.") from e
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"The uploaded file {name} is not a valid CSV "
                        f"({str(e).splitlines()[0][:120]}); check its separators and quotes."
                        ) from e
    df.columns = [str(c).strip() for c in df.columns]
    lacking = [c for c in required if c not in df.columns]
    if lacking:
        raise DataError(
            f"The uploaded file {name} has no column {', '.join(repr(c) for c in lacking)} "
            f"(found {', '.join(df.columns)}); a {what} needs the columns "
            f"{', '.join(required)}."
        )
    return df


def run_reader_study(inputs: ReaderInputs, *, n_bootstrap: int = 500,
                     n_permutations: int = 1000, seed: int = 0) -> Any:
    """:func:`skin_core.analysis.readers.analyze_readers` with app-sized resampling.

    Images read but absent from the truth are left out and listed (``skip_missing``).
    Returns the :class:`~skin_core.analysis.readers.ReaderStudy`.
    """
    from skin_core.analysis.readers import analyze_readers

    return analyze_readers(inputs.readings, inputs.truth, groups=inputs.groups, cnn=inputs.cnn,
                           skip_missing=True, n_bootstrap=n_bootstrap,
                           n_permutations=n_permutations, seed=seed)


def reader_group_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """Per group: images, readings, readers, pooled / consensus / CNN accuracy and kappas."""
    rows = []
    for name, g in summary["groups"].items():
        c, cnn = g["consensus"], g.get("cnn") or {}
        rows.append({
            "group": name, "images": g["n_images"], "readings": g["n_readings"],
            "readers": g["n_readers"], "pooled accuracy": g["pooled_accuracy"],
            "pooled CI": _fmt_ci(g["pooled"].get("ci")),
            "consensus accuracy": c.get("accuracy"), "consensus CI": _fmt_ci(c.get("ci")),
            "Cohen's kappa (consensus vs truth)": g["cohen"].get("kappa"),
            "Fleiss' kappa": g["fleiss"].get("kappa"),
            "mean pairwise kappa": g["pairwise"].get("mean_kappa"),
            "CNN accuracy": cnn.get("accuracy"),
        })
    return pd.DataFrame(rows)


def reader_accuracy_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """Accuracy per reader, the consensus and every CNN model (rows) per group (columns).

    Columns: ``who``, ``kind`` (``reader`` / ``consensus`` / ``CNN``) and one column per group.
    """
    groups = list(summary["groups"])
    rows: list[dict[str, Any]] = []
    for r in summary["inputs"].get("readers", []):
        row: dict[str, Any] = {"who": r, "kind": "reader"}
        for g in groups:
            st = summary["groups"][g]["readers"].get(r)
            row[g] = None if not st else st.get("accuracy")
        rows.append(row)
    rows.append({"who": "consensus", "kind": "consensus",
                 **{g: summary["groups"][g]["consensus"].get("accuracy") for g in groups}})
    cnn_any = [g for g in groups if summary["groups"][g].get("cnn")]
    if cnn_any:
        rows.append({"who": "CNN ensemble", "kind": "CNN",
                     **{g: (summary["groups"][g].get("cnn") or {}).get("accuracy")
                        for g in groups}})
        models = sorted({m for g in cnn_any
                         for m in (summary["groups"][g]["cnn"].get("models") or {})})
        for m in models:
            rows.append({"who": m, "kind": "CNN", **{
                g: ((summary["groups"][g].get("cnn") or {}).get("models") or {}).get(
                    m, {}).get("accuracy") for g in groups}})
    return pd.DataFrame(rows, columns=["who", "kind", *groups])


def reader_tests_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """The between-group tests: ``test, effect, CI, statistic, p_value, method, assumptions``."""
    rows = [{"test": t["name"], "effect": t.get("effect"), "CI": _fmt_ci(t.get("ci")),
             "statistic": t.get("statistic"), "p_value": t.get("p_value"),
             "method": t.get("method"), "assumptions": t.get("assumptions")}
            for t in summary.get("tests") or []]
    return pd.DataFrame(rows, columns=["test", "effect", "CI", "statistic", "p_value", "method",
                                       "assumptions"])


def confusion_matrix(study: Any, *, who: str = "readers", group: str | None = None
                     ) -> pd.DataFrame:
    """Truth (rows) x answer (columns) counts for ``who`` in ``group`` (``None``: all).

    ``who``: ``"readers"`` (every reading), ``"consensus"`` or ``"cnn"`` (the ensemble's
    answer on the same images). Rows and columns follow the class order, with ``OTHER``
    (and ``tie`` for the consensus) appended when they occur.

    Raises
    ------
    ConfigError
        Unknown ``who``, or ``"cnn"`` without CNN predictions.
    """
    classes = list(study.summary["classes"])
    if who == "readers":
        df = study.readings
        truth_of = study.images.set_index(IMAGE_ID)["truth"]
        df = df.assign(truth=df[IMAGE_ID].map(truth_of))
        answer = df["diagnosis"]
    elif who in ("consensus", "cnn"):
        df = study.images
        col = "consensus" if who == "consensus" else "cnn_pred"
        if col not in df.columns:
            raise ConfigError("No CNN predictions in this reader study; give the CNN's oof.csv "
                              "to see its confusion matrix.")
        answer = df[col]
    else:
        raise ConfigError("The 'who' parameter of confusion_matrix must be one of "
                          f"{{'readers', 'consensus', 'cnn'}}. Got {who!r} instead.")
    mask = np.ones(len(df), dtype=bool) if group is None else (df["group"] == group).to_numpy()
    truth = df.loc[mask, "truth"].astype(str)
    ans = answer[mask].fillna("none").astype(str)
    cols = classes + sorted(set(ans) - set(classes))
    tab = pd.crosstab(truth, ans).reindex(index=classes, columns=cols, fill_value=0)
    tab.index.name, tab.columns.name = "truth", "answer"
    return tab.fillna(0).astype(int)


# --------------------------------------------------------------------------------------------
# prediction results


def predict_with_and_without(predictor: Any, data: bytes, *, name: str, age: Any = None,
                             sex: Any = None, site: Any = None, heatmap: bool = True
                             ) -> tuple[Any, Any | None]:
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
    results = predictor.predict_batch(images, metadata=meta, heatmap=heatmap,
                                      names=[name] * len(images))
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
    """The meta-classifier's answer with and without metadata, side by side.

    Columns: ``variant, diagnosis, probability, prediction_set, source``.
    """
    rows = []
    for variant, r in (("with metadata", result if without is not None else None),
                       ("without metadata", without if without is not None else result)):
        if r is None:
            continue
        probs = r.meta_probs or r.probs
        rows.append({"variant": variant, "diagnosis": r.label,
                     "probability": float(probs.get(r.label, float("nan"))) if r.label else None,
                     "prediction_set": ", ".join(r.prediction_set),
                     "source": r.meta_source or "ensemble (no meta-classifier)"})
    return pd.DataFrame(rows, columns=["variant", "diagnosis", "probability", "prediction_set",
                                       "source"])


def result_json(result: Any, without: Any | None = None) -> str:
    """The downloadable JSON: ``result.to_dict()`` plus ``without_metadata`` when present."""
    from skin_core.io import to_json

    d = result.to_dict()
    if without is not None:
        d["without_metadata"] = without.to_dict()
    return to_json(d)


def _png_uri(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def result_report_html(result: Any, *, original: np.ndarray | None = None,
                       without: Any | None = None, disclaimer: str = "") -> str:
    """A self-contained one-page HTML report of one prediction (printable; images inline)."""
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
        imgs += (f'<figure><img src="{_png_uri(original)}"/><figcaption>Original'
                 "</figcaption></figure>")
    if result.overlay is not None:
        imgs += (f'<figure><img src="{_png_uri(result.overlay)}"/><figcaption>Grad-CAM '
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
.disc{{font-size:12px;color:#5b6b75;border-top:1px solid #ccd6dd;padding-top:8px}}
</style></head><body>
<h1>Skin Disease Expert – {e(result.image)}</h1>
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


# --------------------------------------------------------------------------------------------
# training jobs

#: Architectures offered by the training page (timm names; small ones train on a CPU).
TRAIN_ARCHS: tuple[str, ...] = (
    "resnet10t", "mobilenetv3_small_050", "efficientnet_b0", "resnet18", "mobilenetv2_100",
    "densenet121", "convnext_tiny", "test_resnet", "test_efficientnet",
)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def training_config(*, archs: Sequence[str], folds: int, epochs: int, img_size: int,
                    device: str = "cpu", backend: str = "local", batch_size: int = 32,
                    bundle_out: str | os.PathLike[str] | None = None,
                    fast: bool = False) -> dict[str, Any]:
    """A study configuration whose ``train`` section is the chosen options.

    ``fast`` shrinks the analyses' resampling (permutations, bootstrap) for a quick look.

    Raises
    ------
    ConfigError
        No architecture, ``folds`` < 2, ``epochs`` < 1 or ``img_size`` < 16.
    """
    from skin_core.study import load_study_config

    if not archs:
        raise ConfigError("Choose at least one architecture to train.")
    if int(folds) < 2 or int(epochs) < 1 or int(img_size) < 16:
        raise ConfigError(f"Training needs folds >= 2, epochs >= 1 and an image size >= 16 px; "
                          f"got folds={folds}, epochs={epochs}, image size={img_size}.")
    overrides: dict[str, Any] = {
        "folds": {"k": int(folds), "seed": 0},
        "train": {"archs": list(archs), "folds": int(folds), "epochs": int(epochs),
                  "img_size": int(img_size), "batch_size": int(batch_size), "device": device,
                  "backend": backend, "pretrained": "none"},
    }
    if fast:
        overrides["difficulty"] = {"permutations": 200}
        overrides["meta"] = {"bootstrap": 50}
    if bundle_out is not None:
        overrides["bundle"] = {"out": str(bundle_out)}
    return load_study_config(None, overrides)


def training_devices() -> list[str]:
    """Devices for the Training page, the best first: ``cuda`` first when a GPU is visible."""
    import torch

    return ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu", "cuda"]


def new_study_name(ws: Any, prefix: str = "run") -> str:
    """A fresh study name ``PREFIX-YYYYmmdd-HHMMSS`` not yet used under ``ws.studies``."""
    base = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    name, i = base, 1
    while (ws.studies / name).exists() or (ws.models / name).exists():
        i += 1
        name = f"{base}-{i}"
    return name


def launch_training(ws: Any, *, name: str, dataset: str, config: Mapping[str, Any],
                    device: str = "cpu") -> Any:
    """Start ``skin-core study`` as a background job: train, analyse and bundle in one go.

    The study goes to ``ws.studies / name`` and its bundle to ``ws.models / name``; the job's
    config is kept at ``STUDY/launch.yaml``. The job holds ``device`` (one job per device).

    Returns
    -------
    :class:`skin_core.jobs.JobStatus` of the started job.

    Raises
    ------
    ConfigError
        An invalid study name or an existing study of that name.
    JobBusyError
        Another job already runs on ``device``.
    """
    import yaml

    from skin_core.io import atomic_write_text
    from skin_core.jobs import skin_core_argv, start_job

    if not _NAME_RE.match(name):
        raise ConfigError(f"Study name {name!r} must be 1-64 letters, digits, '_', '-' or '.', "
                          "starting with a letter or digit.")
    out = ws.studies / name
    if out.exists():
        raise ConfigError(f"A study named {name!r} already exists in {ws.studies}; choose "
                          "another name or resume it from the list of runs.")
    cfg = dict(config)
    cfg["bundle"] = {"out": str(ws.models / name)}
    cfg["dataset"] = dataset
    out.mkdir(parents=True)
    cfg_path = out / "launch.yaml"
    atomic_write_text(cfg_path, yaml.safe_dump(cfg, sort_keys=False))
    argv = skin_core_argv("study", "--dataset", dataset, "--out", str(out),
                          "--config", str(cfg_path))
    return start_job(argv, jobs_dir=ws.jobs, name=name, device=device, run_dir=out / "run",
                     env={"PYTHONUNBUFFERED": "1"})


def resume_training(ws: Any, job: Any) -> Any:
    """Relaunch a cancelled, failed or lost job's study; finished folds are kept.

    Removes the run's ``cancel`` file first (the trainer would stop at once otherwise).

    Raises
    ------
    ConfigError
        The job is still running or has no run directory.
    JobBusyError
        Another job runs on the device.
    """
    from skin_core.jobs import start_job

    if job.active:
        raise ConfigError(f"Job {job.name!r} is still running; cancel it before resuming.")
    if not job.run_dir:
        raise ConfigError(f"Job {job.name!r} has no run directory to resume.")
    cancel = Path(job.run_dir) / "cancel"
    if cancel.exists():
        cancel.unlink()
    return start_job(list(job.argv), jobs_dir=ws.jobs, name=job.name, device=job.device,
                     run_dir=job.run_dir, env={"PYTHONUNBUFFERED": "1"})


def run_events(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The run's per-epoch events (``events.jsonl`` lines with ``event == "epoch"``)."""
    path = Path(run_dir) / "events.jsonl"
    cols = ["model", "arch", "fold", "epoch", "train_loss", "val_loss", "val_balanced_accuracy",
            "images_per_s", "elapsed_s"]
    rows = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            if isinstance(ev, dict) and ev.get("event") == "epoch":
                rows.append({c: ev.get(c) for c in cols})
    return pd.DataFrame(rows, columns=cols)


def run_progress(run_dir: str | os.PathLike[str], *, now: float | None = None
                 ) -> dict[str, Any]:
    """Live progress of a training run from ``status.json`` and ``events.jsonl``.

    Returns
    -------
    dict with ``state`` (or ``"starting"`` before the trainer wrote anything), ``progress``
    (0-1), ``model``, ``fold``, ``epoch``, the last epoch's ``train_loss``, ``val_loss`` and
    ``val_balanced_accuracy``, ``elapsed_s`` and ``eta_s`` (remaining seconds extrapolated
    from progress so far; ``None`` until there is progress), and ``events`` (DataFrame).
    """
    from datetime import datetime

    rd = Path(run_dir)
    status = _read_json(rd / "status.json") or {}
    events = run_events(rd)
    out: dict[str, Any] = {
        "state": status.get("state", "starting"), "progress": float(status.get("progress") or 0),
        "model": status.get("model"), "fold": status.get("fold"), "epoch": None,
        "train_loss": None, "val_loss": None, "val_balanced_accuracy": None,
        "elapsed_s": None, "eta_s": None, "events": events, "error": status.get("error"),
    }
    if not events.empty:
        last = events.iloc[-1]
        out.update({k: (None if pd.isna(last[k]) else float(last[k])) for k in
                    ("train_loss", "val_loss", "val_balanced_accuracy")})
        out["epoch"] = int(last["epoch"])
        out["model"] = out["model"] or last["model"]
        if out["fold"] is None:
            out["fold"] = int(last["fold"])
    started = status.get("started")
    if started:
        try:
            t0 = datetime.fromisoformat(started).timestamp()
        except ValueError:
            t0 = None
        if t0 is not None:
            end = status.get("finished")
            t1 = datetime.fromisoformat(end).timestamp() if end else (now or time.time())
            out["elapsed_s"] = max(0.0, t1 - t0)
            p = out["progress"]
            if out["state"] == "running" and 0 < p < 1:
                out["eta_s"] = out["elapsed_s"] * (1 - p) / p
            elif out["state"] == "finished":
                out["eta_s"] = 0.0
    return out


def study_steps(study: str | os.PathLike[str]) -> pd.DataFrame:
    """The study's steps so far from ``steps.json``: ``step, status, seconds``."""
    from skin_core.study import STEP_NAMES

    rec = _read_json(Path(study) / "steps.json") or {}
    steps = rec.get("steps", rec) if isinstance(rec, dict) else {}
    rows = []
    for name in STEP_NAMES:
        r = steps.get(name) if isinstance(steps, dict) else None
        if isinstance(r, dict):
            rows.append({"step": name, "status": "done", "seconds": r.get("seconds")})
        else:
            rows.append({"step": name, "status": "pending", "seconds": None})
    return pd.DataFrame(rows, columns=["step", "status", "seconds"])


def jobs_table(jobs: Sequence[Any]) -> pd.DataFrame:
    """Past and current jobs: ``name, state, started, finished, device, job_id``."""
    return pd.DataFrame([{"name": j.name, "state": j.state, "started": j.started,
                          "finished": j.finished, "device": j.device, "job_id": j.job_id}
                         for j in jobs],
                        columns=["name", "state", "started", "finished", "device", "job_id"])


def format_seconds(s: float | None) -> str:
    """``1 h 02 min``, ``3 min 05 s``, ``42 s`` or ``–``."""
    if s is None or not math.isfinite(s):
        return "–"
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def reference_curve(reference: Mapping[str, Any] | None, measure: str = "blur_score"
                    ) -> pd.DataFrame:
    """The training distribution of ``measure`` as a CDF: ``value, percentile`` rows.

    ``reference`` is the bundle's quality reference (:func:`~skin_core.analysis.quality.
    quality_reference`); empty when it is missing or lacks the measure.
    """
    entry = ((reference or {}).get("measures") or {}).get(measure)
    if not entry:
        return pd.DataFrame(columns=["value", "percentile"])
    return pd.DataFrame({"value": entry["quantiles"], "percentile": entry["levels"]})
