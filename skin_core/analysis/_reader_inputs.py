"""Reader-study inputs: answer normalisation and the readers, truth, groups and CNN files.

Private part of :mod:`skin_core.analysis.readers` (which re-exports every public name here;
import them from there). The normalisation rules are in that module's docstring: any case,
HAM10000 <-> ISIC 2019 codes, ``akiec``, English names, and ``OTHER`` for anything else.
Every reader raises :class:`~skin_core.errors.DataError` naming the file, row and column.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skin_core.constants import (
    HAM10000_CLASSES,
    HAM10000_TO_ISIC2019,
    ISIC2019_CLASSES,
    ISIC2019_UNKNOWN,
    OTHER_DIAGNOSIS,
    PROB_PREFIX,
)
from skin_core.errors import DataError

_SYNONYMS: dict[str, str] = {
    "melanoma": "MEL",
    "nevus": "NV",
    "naevus": "NV",
    "melanocytic nevus": "NV",
    "melanocytic naevus": "NV",
    "basal cell carcinoma": "BCC",
    "actinic keratosis": "AK",
    "benign keratosis": "BKL",
    "benign keratosis-like lesion": "BKL",
    "seborrheic keratosis": "BKL",
    "seborrhoeic keratosis": "BKL",
    "solar lentigo": "BKL",
    "dermatofibroma": "DF",
    "vascular lesion": "VASC",
    "squamous cell carcinoma": "SCC",
}
_ISIC_TO_HAM: dict[str, str] = {v: k for k, v in HAM10000_TO_ISIC2019.items() if v}
_ISIC_TO_HAM.update({"AK": "akiec", "SCC": "akiec"})


# --------------------------------------------------------------------------- normalisation


def _key(value: Any) -> str:
    """Matching key of an id or code: stripped, whitespace collapsed, case-folded."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return re.sub(r"\s+", " ", str(value)).strip().casefold()


def normalize_diagnosis(raw: Any, classes: Iterable[str]) -> str:
    """Map one raw answer onto ``classes``; anything not recognised becomes ``OTHER``.

    Parameters
    ----------
    raw:
        The answer as written (any case, surrounding whitespace allowed).
    classes:
        The class vocabulary (ISIC 2019 codes, HAM10000 ``dx`` codes, or any codes).

    Returns
    -------
    A class code from ``classes`` or :data:`~skin_core.constants.OTHER_DIAGNOSIS`. See the
    module docstring for the mapping (HAM10000 <-> ISIC 2019, ``akiec``, English names).

    Examples
    --------
    >>> normalize_diagnosis("  mel ", ISIC2019_CLASSES)
    'MEL'
    >>> normalize_diagnosis("akiec", ISIC2019_CLASSES)
    'OTHER'
    >>> normalize_diagnosis("Altro", ISIC2019_CLASSES)
    'OTHER'
    """
    return _normalizer(tuple(classes))(raw)


def _normalizer(classes: tuple[str, ...]):
    by_key = {_key(c): c for c in classes}
    table: dict[str, str] = dict(by_key)
    isic_like = {c: c for c in classes}

    def to_vocab(isic_code: str) -> str | None:
        if isic_code in isic_like:
            return isic_code
        ham = _ISIC_TO_HAM.get(isic_code)
        return by_key.get(ham) if ham else None

    for ham, isic in HAM10000_TO_ISIC2019.items():
        if ham in table:
            continue
        if isic is None:  # akiec: AK or SCC, only when unambiguous
            has = [c for c in ("AK", "SCC") if c in isic_like]
            if len(has) == 1:
                table[ham] = has[0]
            continue
        target = to_vocab(isic)
        if target:
            table[ham] = target
    for isic in ISIC2019_CLASSES:
        k = _key(isic)
        if k not in table and (target := to_vocab(isic)):
            table[k] = target
    for name, isic in _SYNONYMS.items():
        if name not in table and (target := to_vocab(isic)):
            table[name] = target

    def norm(raw: Any) -> str:
        return table.get(_key(raw), OTHER_DIAGNOSIS)

    return norm


def _infer_classes(labels: pd.Series, name: str) -> tuple[str, ...]:
    """The vocabulary whose normaliser maps every label: ISIC 2019 first, then HAM10000."""
    keys = {_key(v) for v in labels}
    for vocab in (ISIC2019_CLASSES, HAM10000_CLASSES):
        norm = _normalizer(vocab)
        if all(norm(k) != OTHER_DIAGNOSIS for k in keys):
            return vocab
    norm = _normalizer(ISIC2019_CLASSES)
    bad_rows = np.nonzero((labels.map(norm) == OTHER_DIAGNOSIS).to_numpy()
                          & (labels.map(_normalizer(HAM10000_CLASSES)) == OTHER_DIAGNOSIS)
                          .to_numpy())[0]
    i = int(bad_rows[0]) if bad_rows.size else 0
    raise DataError(
        f"{name} row {i + 2} has label {labels.iloc[i]!r}, which is neither an ISIC 2019 "
        f"({', '.join(ISIC2019_CLASSES)}) nor a HAM10000 ({', '.join(HAM10000_CLASSES)}) class "
        "code; fix the label or pass the class vocabulary (classes=, --classes)."
    )


# --------------------------------------------------------------------------- reading inputs


def _read_csv(source: str | Path | pd.DataFrame, what: str) -> tuple[pd.DataFrame, str]:
    """A CSV (or frame) as strings with stripped, lower-cased column names."""
    if isinstance(source, pd.DataFrame):
        df, name = source.copy(), f"the {what} table"
    else:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise DataError(f"The {what} file {path} does not exist; check the path.")
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True,
                             encoding="utf-8-sig")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise DataError(f"The {what} file {path} is not a readable CSV ({e}); "
                            "save it as UTF-8 comma-separated text.") from e
    df.columns = [_key(c).replace(" ", "_") for c in df.columns]
    return df, name


def _require(df: pd.DataFrame, name: str, cols: Iterable[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(
            f"{name} has no column {', '.join(repr(c) for c in missing)} (found "
            f"{', '.join(map(str, df.columns)) or 'none'}); a {what} needs columns "
            f"{', '.join(cols)}."
        )


def _str_col(s: pd.Series) -> pd.Series:
    """Strings with whitespace runs collapsed and stripped; missing values become ``""``."""
    s = pd.Series(s.to_numpy(dtype=object), index=s.index)
    s = s.where(s.notna(), "").astype(str)
    return s.str.replace(r"\s+", " ", regex=True).str.strip().astype(object)


def _keys(s: pd.Series) -> pd.Series:
    """Vectorised :func:`_key` of a Series."""
    return _str_col(s).str.casefold()


def read_readings(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Load ``readings.csv`` (``reader_id, image_id, diagnosis[, comment]``) as stripped strings.

    Returns
    -------
    DataFrame with columns ``reader_id, image_id, diagnosis`` (raw, stripped) and ``comment``
    (``""`` when absent), in file order.

    Raises
    ------
    DataError
        The file is missing, unreadable, lacks a column, or has a blank reader or image id.
    """
    df, name = _read_csv(source, "readings")
    if "image" in df.columns and "image_id" not in df.columns:
        df = df.rename(columns={"image": "image_id"})
    _require(df, name, ("reader_id", "image_id", "diagnosis"), "readings table")
    out = pd.DataFrame({c: _str_col(df[c]) for c in ("reader_id", "image_id", "diagnosis")})
    out["comment"] = _str_col(df["comment"]) if "comment" in df.columns else ""
    for col in ("reader_id", "image_id"):
        blank = np.nonzero((out[col] == "").to_numpy())[0]
        if blank.size:
            raise DataError(f"{name} row {int(blank[0]) + 2} has a blank {col}; every reading "
                            f"needs a {col} (found {blank.size} such rows).")
    if out.empty:
        raise DataError(f"{name} has no readings; it needs one row per reader per image.")
    return out


def read_truth(
    source: str | Path | pd.DataFrame | pd.Series,
    *,
    classes: Iterable[str] | None = None,
) -> tuple[pd.Series, tuple[str, ...]]:
    """The true class of each image, from a dataset spec, a CSV or a frame.

    Parameters
    ----------
    source:
        A dataset spec (``isic2019:DIR``, ``ham10000:DIR``, ``folder:DIR``, ``csv:FILE``; loaded
        with :func:`skin_core.data.tables.load_dataset` without checking images), a CSV
        ``image_id,label`` (``image`` accepted for ``image_id``), an ISIC one-hot CSV
        ``image,MEL,NV,...`` (its class columns, without ``UNK``, become the vocabulary),
        or an equivalent DataFrame / Series (index image_id, values labels).
    classes:
        The class vocabulary; inferred when omitted (dataset classes, one-hot columns, or
        ISIC 2019 / HAM10000 from the labels).

    Returns
    -------
    ``(truth, classes)``: a Series of class codes indexed by image id, and the vocabulary.
    """
    if isinstance(source, pd.Series):
        df = pd.DataFrame({"image_id": source.index.astype(str), "label": source.to_numpy()})
        name = "the truth series"
    elif isinstance(source, (str, Path)) and not Path(source).is_file() and re.match(
        r"^(isic2019|ham10000|folder|csv):", str(source)
    ):
        from skin_core.data.tables import load_dataset

        ds = load_dataset(str(source), check_images=False)
        df = ds.table[["image_id", "label"]].copy()
        name = f"the dataset {source}"
        if classes is None:
            classes = tuple(ds.classes)
    else:
        df, name = _read_csv(source, "truth")
        if "image" in df.columns and "image_id" not in df.columns:
            df = df.rename(columns={"image": "image_id"})
        if "label" not in df.columns and "dx" in df.columns:
            df = df.rename(columns={"dx": "label"})
        if "label" not in df.columns:
            onehot = [c for c in df.columns if c.upper() in ISIC2019_CLASSES + (ISIC2019_UNKNOWN,)]
            if not onehot or "image_id" not in df.columns:
                _require(df, name, ("image_id", "label"), "truth table (or ISIC one-hot "
                         "image,MEL,NV,...)")
            values = df[onehot].apply(pd.to_numeric, errors="coerce").to_numpy(float)
            hot = values > 0.5
            bad = np.nonzero(hot.sum(axis=1) != 1)[0]
            if bad.size:
                raise DataError(
                    f"{name} row {int(bad[0]) + 2} (image {df['image_id'].iloc[bad[0]]}) has "
                    f"{int(hot[bad[0]].sum())} classes set to 1 in columns {', '.join(onehot)}; "
                    "a one-hot truth needs exactly one."
                )
            codes = np.array([c.upper() for c in onehot])
            df = pd.DataFrame({"image_id": df["image_id"], "label": codes[hot.argmax(axis=1)]})
            if classes is None:
                classes = tuple(c for c in codes if c != ISIC2019_UNKNOWN)
        _require(df, name, ("image_id", "label"), "truth table")
    ids = _str_col(df["image_id"])
    labels = _str_col(df["label"])
    if classes is None:
        classes = _infer_classes(labels, name)
    classes = tuple(classes)
    norm = _normalizer(classes)
    mapped = labels.map(norm)
    bad = np.nonzero((mapped == OTHER_DIAGNOSIS).to_numpy())[0]
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{name} row {i + 2} (image {ids.iloc[i]}) has label {labels.iloc[i]!r}, "
                        f"not one of the classes {', '.join(classes)}; fix the label.")
    keys = _keys(ids)
    dup = keys.duplicated(keep=False).to_numpy()
    if dup.any():
        d = ids[dup]
        raise DataError(f"{name} lists image {d.iloc[0]} {int(dup.sum())} times (case-"
                        "insensitive); each image needs one truth row.")
    return pd.Series(mapped.to_numpy(), index=pd.Index(ids.to_numpy(), name="image_id"),
                     name="label"), classes


def read_groups(source: str | Path | pd.DataFrame | pd.Series) -> pd.Series:
    """Image groups from ``difficulty.csv`` (its ``group`` column) or any ``image_id,group`` CSV.

    Group names are stripped and lower-cased. Returns a Series of group names indexed by image
    id. Raises :class:`DataError` on a missing column, a blank group or an image listed twice
    with different groups.
    """
    if isinstance(source, pd.Series):
        df, name = pd.DataFrame({"image_id": source.index, "group": source.to_numpy()}), \
            "the groups series"
    else:
        df, name = _read_csv(source, "groups")
        if "image" in df.columns and "image_id" not in df.columns:
            df = df.rename(columns={"image": "image_id"})
        _require(df, name, ("image_id", "group"), "groups table")
    ids = _str_col(df["image_id"])
    grp = _str_col(df["group"]).str.casefold()
    blank = np.nonzero((grp == "").to_numpy())[0]
    if blank.size:
        raise DataError(f"{name} row {int(blank[0]) + 2} (image {ids.iloc[blank[0]]}) has a "
                        "blank group; give every listed image a group or remove the row.")
    out = pd.DataFrame({"key": _keys(ids), "image_id": ids, "group": grp})
    conflict = out.groupby("key")["group"].nunique()
    if (conflict > 1).any():
        k = conflict[conflict > 1].index[0]
        raise DataError(f"{name} puts image {out.loc[out.key == k, 'image_id'].iloc[0]} in "
                        f"several groups {sorted(set(out.loc[out.key == k, 'group']))}; "
                        "each image needs one group.")
    out = out.drop_duplicates("key")
    return pd.Series(out["group"].to_numpy(), index=pd.Index(out["image_id"].to_numpy(),
                     name="image_id"), name="group")


@dataclass(frozen=True)
class CnnPredictions:
    """CNN predictions per image: the ensemble answer and, from an ``oof.csv``, each model's."""

    pred: pd.Series  # image_id -> class code (or OTHER)
    per_model: pd.DataFrame | None = None  # index image_id, one column per model
    source: str = ""


def read_cnn_predictions(
    source: str | Path | pd.DataFrame, classes: Iterable[str]
) -> CnnPredictions:
    """CNN answers per image from ``oof.csv`` (long) or a predictions CSV.

    * ``oof.csv`` (``image_id, model, ..., prob_<CLASS>...``): the ensemble answer is the argmax
      of the mean of the models' probabilities per image; each model's own argmax is kept for
      per-model accuracy.
    * predictions CSV ``image_id,pred`` (``pred`` normalised like a diagnosis) or
      ``image_id,prob_<CLASS>...`` (argmax).
    """
    classes = tuple(classes)
    df, name = _read_csv(source, "CNN predictions")
    if "image" in df.columns and "image_id" not in df.columns:
        df = df.rename(columns={"image": "image_id"})
    prob_cols = [f"{PROB_PREFIX}{c}".casefold() for c in classes]
    have_probs = all(c in df.columns for c in prob_cols)
    if "image_id" not in df.columns or not (have_probs or "pred" in df.columns):
        raise DataError(
            f"{name} needs image_id and either pred or prob_<CLASS> columns for "
            f"{', '.join(classes)} (found {', '.join(df.columns)}); pass an oof.csv or a "
            "predictions CSV."
        )
    ids = _str_col(df["image_id"])
    if have_probs:
        probs = df[prob_cols].apply(pd.to_numeric, errors="coerce")
        if probs.isna().any().any():
            r = int(np.nonzero(probs.isna().any(axis=1).to_numpy())[0][0])
            raise DataError(f"{name} row {r + 2} (image {ids.iloc[r]}) has a missing or "
                            "non-numeric probability; fix or remove the row.")
        probs.index = ids.to_numpy()
        per_model = None
        if "model" in df.columns:
            model = _str_col(df["model"]).to_numpy()
            argmax = np.array(classes)[probs.to_numpy().argmax(axis=1)]
            pm = pd.DataFrame({"image_id": ids.to_numpy(), "model": model, "pred": argmax})
            per_model = pm.drop_duplicates(["image_id", "model"], keep="last").pivot(
                index="image_id", columns="model", values="pred")
        mean = probs.groupby(level=0, sort=False).mean()
        pred = pd.Series(np.array(classes)[mean.to_numpy().argmax(axis=1)], index=mean.index)
    else:
        norm = _normalizer(classes)
        pred = pd.Series(_str_col(df["pred"]).map(norm).to_numpy(), index=ids.to_numpy())
        pred = pred[~pred.index.duplicated(keep="last")]
        per_model = None
    pred.index.name = "image_id"
    return CnnPredictions(pred=pred.rename("cnn_pred"), per_model=per_model, source=name)
