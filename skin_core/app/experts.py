"""The Experts vs CNN page's view model: reader-study inputs, analysis and tables.

Owns :class:`ReaderInputs` (where readings, truth, groups and CNN predictions are), the
study's own inputs (:func:`demo_reader_inputs`), uploaded CSVs (:func:`read_upload_csv`),
the app-sized analysis (:func:`run_reader_study`) and the dashboard's tables and confusion
matrices. The statistics are in :mod:`skin_core.analysis.readers`. Never imports Streamlit.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from skin_core.app.common import fmt_ci, study_files
from skin_core.constants import IMAGE_ID, LABEL
from skin_core.errors import ConfigError, DataError


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
            "pooled CI": fmt_ci(g["pooled"].get("ci")),
            "consensus accuracy": c.get("accuracy"), "consensus CI": fmt_ci(c.get("ci")),
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
    rows = [{"test": t["name"], "effect": t.get("effect"), "CI": fmt_ci(t.get("ci")),
             "statistic": t.get("statistic"), "p_value": t.get("p_value"),
             "method": t.get("method"), "assumptions": t.get("assumptions")}
            for t in summary.get("tests") or []]
    return pd.DataFrame(rows, columns=["test", "effect", "CI", "statistic", "p_value", "method",
                                       "assumptions"])


def confusion_matrix(study: Any, *, who: str = "readers", group: str | None = None
                     ) -> pd.DataFrame:
    """Truth (rows) x answer (columns) counts for ``who`` in ``group`` (``None``: all).

    ``who``: ``"readers"`` (every reading), ``"consensus"`` or ``"cnn"`` (the ensemble's
    answer on the same images; only the images it has a prediction for, see
    :func:`cnn_coverage`). Rows and columns follow the class order, with ``OTHER``
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
    if who == "cnn":  # images without a CNN prediction are not CNN answers of "none"
        mask = mask & answer.notna().to_numpy()
    truth = df.loc[mask, "truth"].astype(str)
    ans = answer[mask].fillna("none").astype(str)
    cols = classes + sorted(set(ans) - set(classes))
    tab = pd.crosstab(truth, ans).reindex(index=classes, columns=cols, fill_value=0)
    tab.index.name, tab.columns.name = "truth", "answer"
    return tab.fillna(0).astype(int)


def cnn_coverage(images: pd.DataFrame, group: str | None = None) -> tuple[int, int]:
    """``(images with a CNN prediction, images)`` of a reader study, in ``group`` (``None``:
    all). Readings of images the study's CNNs never predicted (an uploaded reader study on
    other images) have no CNN answer: the page shows the CNN panel only when the first
    number is not 0."""
    df = images if group is None else images[images["group"] == group]
    n_pred = int(df["cnn_pred"].notna().sum()) if "cnn_pred" in df.columns else 0
    return n_pred, int(len(df))
