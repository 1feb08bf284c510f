"""The Difficult images page's view model: the gallery table, its filters and the study tables.

Owns :func:`load_gallery` (difficulty + blur + paths, one row per image), its filters and
export, the thumbnail captions, and the tables of ``significance.json`` and
``quality_vs_difficulty.json``. Thumbnails themselves are in :mod:`skin_core.app.thumbnails`.
Never imports Streamlit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skin_core.app.common import fmt_ci, is_nan, study_files
from skin_core.constants import GROUP_CONTROL, GROUP_DIFFICULT, IMAGE_ID, LABEL
from skin_core.errors import ConfigError, DataError


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
            "delta_ci": fmt_ci(ci), "p_value": mw.get("p_value"),
            "p_holm": (mw.get("extra") or {}).get("p_holm"),
        })
    return pd.DataFrame(rows, columns=cols)


def blur_by_group(gallery: pd.DataFrame,
                  groups: Sequence[str] = (GROUP_DIFFICULT, GROUP_CONTROL)) -> pd.DataFrame:
    """``image_id, group, blur_score`` for the box plot (rows with a blur score only)."""
    df = gallery.loc[gallery["group"].isin(list(groups)), [IMAGE_ID, "group", "blur_score"]]
    df = df.assign(blur_score=pd.to_numeric(df["blur_score"], errors="coerce"))
    return df.dropna(subset=["blur_score"]).reset_index(drop=True)


def thumb_caption(row: Mapping[str, Any], models: Sequence[str]) -> str:
    """``truth NV · 3/3 wrong · blur 0.42`` and the models' answers for one gallery row."""
    parts = [f"truth {row.get(LABEL)}"]
    if row.get("n_models") is not None and not is_nan(row.get("n_models")):
        parts.append(f"{int(row['n_wrong'])}/{int(row['n_models'])} wrong")
    b = row.get("blur_score")
    if b is not None and not is_nan(b):
        parts.append(f"blur {float(b):.2f}")
    preds = [str(row.get(c)) for c in models if row.get(c) is not None]
    if preds:
        parts.append("pred " + "/".join(preds))
    return " · ".join(parts)
