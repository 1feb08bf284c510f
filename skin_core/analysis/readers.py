"""Reader studies: expert readers vs truth vs CNNs, with valid between-group inference.

A reader study shows a set of images (e.g. the *difficult* images every CNN gets wrong and a
*control* sample) to several readers. This module reads their answers (``readings.csv``:
``reader_id, image_id, diagnosis[, comment]``), the truth, the image groups and optionally
CNN predictions, and computes per group: per-reader and pooled accuracy, the plurality
consensus and its accuracy, Cohen's kappa of the consensus vs the truth, Fleiss' kappa and
pairwise agreement among readers, and the CNN's accuracy on the same images; and between two
groups a list of :class:`~skin_core.analysis.records.TestResult` records, from the naive
(Fisher on pooled readings: ignores clustering) to the valid ones for a crossed design
(two-way reader x image cluster bootstrap, image-label permutation test, crossed GLMM).
Definitions and sources are in :mod:`skin_core.analysis.reader_stats`.

Input normalisation
-------------------
Every field is stripped of surrounding whitespace and matched case-insensitively (reader and
image ids included; the truth's spelling of an image id is kept). A diagnosis is mapped onto
the class vocabulary ``classes``:

* a class code in any letter case (``mel``, ``MEL``);
* a HAM10000 ``dx`` code onto ISIC 2019 (``nv`` -> ``NV`` ...) and back;
  ``akiec`` (actinic keratosis *or* intraepithelial carcinoma) maps to ``AK`` or ``SCC`` only
  when exactly one of them is in the vocabulary; with both (ISIC 2019) it is ambiguous and
  becomes OTHER. ``AK`` and ``SCC`` both map to ``akiec`` in the HAM10000 vocabulary;
* the English names (``melanoma``, ``nevus``/``naevus``, ``basal cell carcinoma``, ...);
* anything else (``other``, ``Altro``, free text, blank) becomes ``OTHER``: kept, counted as
  wrong, and reported with its raw strings. Never dropped silently.

Example
-------
>>> study = analyze_readers(readings, truth, groups=groups)          # doctest: +SKIP
>>> study.summary["groups"]["difficult"]["consensus"]["accuracy"]    # doctest: +SKIP
>>> write_reader_report(study, "out/readers")                        # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skin_core.analysis import reader_stats as rs
from skin_core.analysis.records import TestResult
from skin_core.constants import (
    GROUP_CONTROL,
    GROUP_DIFFICULT,
    HAM10000_CLASSES,
    HAM10000_TO_ISIC2019,
    ISIC2019_CLASSES,
    ISIC2019_UNKNOWN,
    OTHER_DIAGNOSIS,
    PROB_PREFIX,
)
from skin_core.errors import ConfigError, DataError

TIES_CHOICES = ("drop", "wrong")
OTHER_CHOICES = ("drop", "wrong")
DEDUPE_CHOICES = ("error", "first", "last")
#: Group name used when no groups are given.
ALL_GROUP = "all"

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


# --------------------------------------------------------------------------- the study


@dataclass(frozen=True)
class ReaderStudy:
    """Result of :func:`analyze_readers`.

    Attributes
    ----------
    summary:
        JSON-ready dict: ``classes``, ``options``, ``inputs`` (counts, OTHER raw strings,
        duplicates, skipped images), ``groups`` (per-group statistics), ``tests`` (list of
        :class:`TestResult` dicts), ``warnings``.
    tests:
        The between-group :class:`TestResult` records.
    images:
        Per-image table: ``image_id, group, truth, n_readings, n_correct, reader_accuracy,
        consensus, consensus_votes, consensus_status, consensus_correct`` (+ ``cnn_pred,
        cnn_correct`` with CNN predictions).
    readings:
        The normalised readings used: ``reader_id, image_id, diagnosis_raw, diagnosis,
        correct, group``.
    """

    summary: dict[str, Any]
    tests: tuple[TestResult, ...]
    images: pd.DataFrame
    readings: pd.DataFrame = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready summary (``readers.json``)."""
        return self.summary


def _check_choice(value: str, choices: tuple[str, ...], param: str) -> str:
    if value not in choices:
        raise ConfigError(f"The {param!r} parameter of analyze_readers must be one of "
                          f"{set(choices)}. Got {value!r} instead.")
    return value


def _f(x: Any) -> float | None:
    """A finite float or None (for JSON)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _ci(ci: tuple[float, float]) -> list[float | None]:
    return [_f(ci[0]), _f(ci[1])]


def analyze_readers(
    readings: pd.DataFrame | str | Path,
    truth: pd.Series | pd.DataFrame | str | Path,
    *,
    classes: Iterable[str] | None = None,
    groups: pd.Series | pd.DataFrame | str | Path | None = None,
    cnn: CnnPredictions | pd.DataFrame | str | Path | None = None,
    compare: tuple[str, str] | None = None,
    ties: str = "drop",
    other: str = "drop",
    dedupe: str = "error",
    skip_missing: bool = False,
    n_bootstrap: int = 2000,
    n_permutations: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    glmm: bool = True,
) -> ReaderStudy:
    """Analyse a reader study: accuracy, consensus, agreement, CNN comparison and tests.

    Parameters
    ----------
    readings:
        ``readings.csv`` path or frame (see :func:`read_readings`).
    truth:
        Dataset spec, truth CSV, frame or Series (see :func:`read_truth`).
    classes:
        Class vocabulary (default: from the truth).
    groups:
        ``difficulty.csv`` / ``image_id,group`` CSV, frame or Series. Without groups every
        image is in one group ``"all"`` and no between-group test is run. Read images absent
        from the group file are reported (``inputs.n_ungrouped_images``) and left out of every
        group; group images nobody read are counted per group (``n_unread``).
    cnn:
        ``oof.csv`` / predictions CSV path or frame, or :class:`CnnPredictions`.
    compare:
        The two groups ``(a, b)`` compared by the tests (effects are ``a - b``). Default
        ``("difficult", "control")`` when both exist, else the two groups when there are
        exactly two (alphabetical), else no tests.
    ties, other:
        ``"drop"`` (default, as in the published study) leaves images whose consensus is a tie
        / OTHER out of consensus accuracy; ``"wrong"`` counts them as wrong.
    dedupe:
        Several readings of one image by one reader: ``"error"`` (default) raises,
        ``"first"`` / ``"last"`` keeps one; the count is reported either way.
    skip_missing:
        Leave out (and list) readings of images absent from the truth instead of raising.
    n_bootstrap, n_permutations, confidence, seed:
        Resampling sizes, interval level and seed (all resampling is deterministic per seed).
    glmm:
        Also fit the crossed GLMM (variational Bayes; about a second for 1,000 readings).

    Returns
    -------
    :class:`ReaderStudy`.

    Raises
    ------
    DataError
        Duplicate readings with ``dedupe="error"``; images missing from the truth without
        ``skip_missing``; malformed files.
    ConfigError
        An invalid option value.
    """
    _check_choice(ties, TIES_CHOICES, "ties")
    _check_choice(other, OTHER_CHOICES, "other")
    _check_choice(dedupe, DEDUPE_CHOICES, "dedupe")
    if not 0 < confidence < 1:
        raise ConfigError(f"The 'confidence' parameter of analyze_readers must be in (0, 1). "
                          f"Got {confidence!r} instead.")
    if n_bootstrap < 1 or n_permutations < 1:
        raise ConfigError("The 'n_bootstrap' and 'n_permutations' parameters of analyze_readers "
                          f"must be >= 1. Got {n_bootstrap!r} and {n_permutations!r} instead.")
    policy = rs.ConsensusPolicy(ties=ties, other=other)
    warnings: list[str] = []

    # ---- inputs
    rd = read_readings(readings)
    truth_s, classes = read_truth(truth, classes=classes)
    norm = _normalizer(classes)
    truth_key = {_key(i): i for i in truth_s.index}
    rd["image_key"] = _keys(rd["image_id"])
    rd["reader_key"] = _keys(rd["reader_id"])
    reader_name = rd.drop_duplicates("reader_key").set_index("reader_key")["reader_id"]
    missing_mask = ~rd["image_key"].isin(truth_key.keys())
    missing_ids = sorted(rd.loc[missing_mask, "image_id"].unique())
    if missing_ids and not skip_missing:
        raise DataError(
            f"The readings name {len(missing_ids)} images absent from the truth (e.g. "
            f"{', '.join(missing_ids[:5])}); fix the ids or pass skip_missing (--skip-missing) "
            "to leave them out."
        )
    if missing_ids:
        warnings.append(f"{len(missing_ids)} images absent from the truth were left out "
                        f"({int(missing_mask.sum())} readings): {', '.join(missing_ids[:20])}"
                        + (" ..." if len(missing_ids) > 20 else ""))
    rd = rd.loc[~missing_mask].copy()
    dup_mask = rd.duplicated(["reader_key", "image_key"], keep=False)
    n_dup_rows = int(dup_mask.sum())
    n_dup_pairs = int(rd.loc[dup_mask].drop_duplicates(["reader_key", "image_key"]).shape[0])
    if n_dup_rows:
        first = rd.loc[dup_mask].iloc[0]
        if dedupe == "error":
            raise DataError(
                f"The readings have {n_dup_pairs} duplicate (reader_id, image_id) pairs "
                f"({n_dup_rows} rows), e.g. reader {first['reader_id']} on image "
                f"{first['image_id']}; remove them or pass dedupe='first'|'last' (--dedupe)."
            )
        rd = rd.drop_duplicates(["reader_key", "image_key"], keep=dedupe)
        warnings.append(f"{n_dup_pairs} duplicate (reader, image) pairs ({n_dup_rows} rows); "
                        f"kept the {dedupe} reading of each.")
    if rd.empty:
        raise DataError("No reading is left after removing images absent from the truth; "
                        "check that the readings and the truth use the same image ids.")
    rd["image_id"] = rd["image_key"].map(truth_key)
    rd["reader_id"] = rd["reader_key"].map(reader_name)
    rd["diagnosis_raw"] = rd["diagnosis"]
    rd["diagnosis"] = rd["diagnosis_raw"].map(norm)
    rd["truth"] = rd["image_id"].map(truth_s)
    rd["correct"] = (rd["diagnosis"] == rd["truth"]).to_numpy(bool)
    other_raw = rd.loc[rd["diagnosis"] == OTHER_DIAGNOSIS, "diagnosis_raw"].replace("", "<blank>")
    other_counts = {str(k): int(v) for k, v in other_raw.value_counts().items()}
    if other_counts:
        warnings.append(f"{int(sum(other_counts.values()))} answers outside the class vocabulary "
                        f"were kept as OTHER (counted wrong): "
                        + ", ".join(f"{k!r} x{v}" for k, v in list(other_counts.items())[:10]))

    # ---- groups
    read_images = pd.Index(rd["image_id"].unique())
    if groups is None:
        grp = pd.Series(ALL_GROUP, index=read_images)
        group_file_counts = {ALL_GROUP: int(read_images.size)}
    else:
        g = read_groups(groups)
        gkey = pd.Series(g.to_numpy(), index=g.index.map(_key))
        group_file_counts = {str(k): int(v) for k, v in g.value_counts().sort_index().items()}
        grp = pd.Series(read_images.map(lambda i: gkey.get(_key(i), None)), index=read_images)
        ungrouped = grp[grp.isna()].index
        if ungrouped.size:
            warnings.append(f"{ungrouped.size} read images are in no group and were left out of "
                            f"the group statistics: {', '.join(map(str, ungrouped[:10]))}"
                            + (" ..." if ungrouped.size > 10 else ""))
        grp = grp.dropna()
    if grp.empty:
        raise DataError("None of the read images is in the groups file; check that the groups "
                        "and the readings use the same image ids.")
    group_names = sorted(group_file_counts, key=lambda s: (
        s != GROUP_DIFFICULT, s != GROUP_CONTROL, s))
    rd["group"] = rd["image_id"].map(grp)

    # ---- CNN
    cnn_pred: CnnPredictions | None
    if cnn is None or isinstance(cnn, CnnPredictions):
        cnn_pred = cnn
    else:
        cnn_pred = read_cnn_predictions(cnn, classes)
    if cnn_pred is not None:
        ck = pd.Series(cnn_pred.pred.to_numpy(), index=cnn_pred.pred.index.map(_key))
        ck = ck[~ck.index.duplicated(keep="last")]
        cnn_for = pd.Series(read_images.map(lambda i: ck.get(_key(i), None)), index=read_images)
        n_no_cnn = int(cnn_for.isna().sum())
        if n_no_cnn:
            warnings.append(f"{n_no_cnn} of {read_images.size} read images have no CNN "
                            f"prediction in {cnn_pred.source} (e.g. "
                            f"{', '.join(map(str, cnn_for[cnn_for.isna()].index[:5]))}); CNN "
                            "accuracy uses the others")
    else:
        cnn_for = None

    # ---- matrices over grouped images
    used = rd.dropna(subset=["group"])
    readers = sorted(rd["reader_id"].unique(), key=str)
    images = list(grp.index)
    r_idx = {r: k for k, r in enumerate(readers)}
    i_idx = {i: k for k, i in enumerate(images)}
    cats = list(classes) + [OTHER_DIAGNOSIS]
    c_idx = {c: k for k, c in enumerate(cats)}
    other_index = len(classes)
    answers = np.full((len(readers), len(images)), -1, dtype=np.int64)
    if not used.empty:
        answers[used["reader_id"].map(r_idx).to_numpy(int),
                used["image_id"].map(i_idx).to_numpy(int)] = used["diagnosis"].map(
                    c_idx).to_numpy(int)
    truth_idx = np.array([c_idx[truth_s[i]] for i in images], dtype=np.int64)
    gname_idx = {gname: k for k, gname in enumerate(group_names)}
    image_group = np.array([gname_idx[grp[i]] for i in images], dtype=np.int64)
    read = answers >= 0
    correct = read & (answers == truth_idx[None, :])
    votes = np.zeros((len(images), len(cats)))
    rr, ii = np.nonzero(read)
    np.add.at(votes, (ii, answers[rr, ii]), 1)
    winner, is_tie, has = rs.plurality(votes)
    counted, cons_ok = rs.consensus_outcome(winner, is_tie, has, truth_idx, other_index, policy)

    draws = rs.two_way_bootstrap(
        correct, read, image_group, n_groups=len(group_names), consensus_counted=counted,
        consensus_correct=cons_ok, n_resamples=n_bootstrap, seed=seed,
    )

    # ---- per image table
    status = np.where(~has, "unread", np.where(is_tie, "tie", np.where(
        winner == other_index, "other", "ok")))
    img = pd.DataFrame({
        "image_id": images,
        "group": [grp[i] for i in images],
        "truth": [truth_s[i] for i in images],
        "n_readings": read.sum(axis=0),
        "n_correct": correct.sum(axis=0),
    })
    with np.errstate(invalid="ignore", divide="ignore"):
        img["reader_accuracy"] = img["n_correct"] / img["n_readings"]
    img["consensus"] = np.where(status == "tie", "", np.array(cats, dtype=object)[winner])
    img["consensus_votes"] = votes.max(axis=1).astype(int) if images else []
    img["consensus_status"] = status
    img["consensus_correct"] = pd.array(
        [bool(o) if c else pd.NA for o, c in zip(cons_ok, counted, strict=True)], dtype="boolean")
    if cnn_for is not None:
        img["cnn_pred"] = [p if isinstance(p, str) else None
                           for p in (cnn_for.get(i, None) for i in images)]
        img["cnn_correct"] = pd.array(
            [pd.NA if p is None else bool(p == t)
             for p, t in zip(img["cnn_pred"], img["truth"], strict=True)], dtype="boolean")

    # ---- per group
    z_conf = confidence
    groups_out: dict[str, Any] = {}
    for gname in group_names:
        g = gname_idx[gname]
        cols = np.nonzero(image_group == g)[0]
        groups_out[gname] = _group_summary(
            gname, cols, answers, truth_idx, read, correct, votes, counted, cons_ok, is_tie,
            winner, other_index, readers, images, cats, draws, g, group_file_counts, z_conf,
            seed, n_bootstrap, cnn_pred, cnn_for,
        )

    # ---- tests
    tests: list[TestResult] = []
    pair = _pick_compare(compare, group_names, group_file_counts)
    test_note = None
    if pair is None:
        test_note = ("no between-group tests: " + ("only one group" if len(group_names) < 2 else
                     "pass compare=(a, b) (--compare A B) to choose two of "
                     + ", ".join(group_names)))
        if len(group_names) >= 2 or groups is not None:
            warnings.append(test_note)
    elif not ((image_group == gname_idx[pair[0]]).any()
              and (image_group == gname_idx[pair[1]]).any()):
        empty = [x for x in pair if not (image_group == gname_idx[x]).any()]
        test_note = f"no between-group tests: nobody read an image of group {empty[0]!r}"
        warnings.append(test_note)
    else:
        tests = _between_group_tests(
            pair, gname_idx, answers, truth_idx, read, correct, counted, cons_ok, image_group,
            readers, images, draws, confidence, seed, n_permutations, glmm, warnings,
        )

    summary: dict[str, Any] = {
        "classes": list(classes),
        "options": {"ties": ties, "other": other, "dedupe": dedupe,
                    "skip_missing": bool(skip_missing), "n_bootstrap": int(n_bootstrap),
                    "n_permutations": int(n_permutations), "confidence": confidence,
                    "seed": int(seed), "glmm": bool(glmm),
                    "compare": list(pair) if pair else None},
        "inputs": {
            "n_readings": int(rd.shape[0]),
            "n_readers": len(readers),
            "readers": [str(r) for r in readers],
            "n_images": int(read_images.size),
            "n_grouped_images": len(images),
            "n_ungrouped_images": int(read_images.size - len(images)),
            "n_duplicate_pairs": n_dup_pairs,
            "n_duplicate_rows": n_dup_rows,
            "n_missing_truth": len(missing_ids),
            "missing_truth_ids": missing_ids[:100],
            "n_other_answers": int(sum(other_counts.values())),
            "other_answers": other_counts,
            "group_file_counts": group_file_counts,
            "cnn_source": cnn_pred.source if cnn_pred is not None else None,
        },
        "groups": groups_out,
        "tests": [t.to_dict() for t in tests],
        "tests_note": test_note,
        "warnings": warnings,
    }
    rd_out = rd[["reader_id", "image_id", "diagnosis_raw", "diagnosis", "truth", "correct",
                 "group"]].reset_index(drop=True)
    return ReaderStudy(summary=summary, tests=tuple(tests), images=img, readings=rd_out)


def _pick_compare(
    compare: tuple[str, str] | None, names: list[str], counts: Mapping[str, int]
) -> tuple[str, str] | None:
    if compare is not None:
        a, b = (_key(x) for x in compare)
        for x in (a, b):
            if x not in counts:
                raise ConfigError(f"The 'compare' parameter of analyze_readers names group {x!r}, "
                                  f"which is not one of the groups {sorted(counts)}.")
        if a == b:
            raise ConfigError(f"The 'compare' parameter needs two different groups. Got {a!r} "
                              "twice.")
        return (a, b)
    if GROUP_DIFFICULT in names and GROUP_CONTROL in names:
        return (GROUP_DIFFICULT, GROUP_CONTROL)
    if len(names) == 2:
        return (sorted(names)[0], sorted(names)[1])
    return None


def _group_summary(
    gname, cols, answers, truth_idx, read, correct, votes, counted, cons_ok, is_tie, winner,
    other_index, readers, images, cats, draws, g, group_file_counts, confidence, seed,
    n_bootstrap, cnn_pred, cnn_for,
) -> dict[str, Any]:
    """Statistics of one group (see :func:`analyze_readers`)."""
    a = answers[:, cols]
    rd_ = read[:, cols]
    co = correct[:, cols]
    n_img = int(cols.size)
    n_read = int(rd_.sum())
    n_ok = int(co.sum())
    rng_seed = seed + 1000 * (g + 1)

    reader_stats: dict[str, Any] = {}
    for r, name in enumerate(readers):
        n = int(rd_[r].sum())
        if n == 0:
            continue
        k = int(co[r].sum())
        reader_stats[str(name)] = {"accuracy": k / n, "n": n, "correct": k,
                                   "ci": _ci(rs.wilson_ci(k, n, confidence=confidence))}
    active = [r for r in range(len(readers)) if rd_[r].any()]

    # consensus
    cnt = counted[cols]
    ok = cons_ok[cols]
    tie = is_tie[cols]
    oth = (winner[cols] == other_index) & ~tie & rd_.any(axis=0)
    n_cons = int(cnt.sum())
    pooled_ci = rs.percentile_ci(draws.pooled[g], confidence)
    cons_ci = rs.percentile_ci(draws.consensus[g], confidence)
    consensus = {
        "accuracy": _f(ok.sum() / n_cons) if n_cons else None,
        "n": n_cons,
        "n_correct": int(ok.sum()),
        "n_ties": int(tie.sum()),
        "n_other": int(oth.sum()),
        "ci": _ci(cons_ci),
        "ci_method": "bootstrap over images (reader panel fixed), percentile",
    }

    # Cohen's kappa consensus vs truth (tie = its own category, never matching the truth)
    tie_cat = len(cats)
    cons_cat = np.where(tie, tie_cat, winner[cols])[cnt]
    tr = truth_idx[cols][cnt]
    cohen: dict[str, Any] = {"kappa": None, "n": int(cnt.sum()), "ci": [None, None],
                             "reason": None}
    if cnt.sum() >= 2:
        kc = len(cats) + 1
        kappa = rs.cohen_kappa(cons_cat, tr)
        cohen["kappa"] = _f(kappa)
        if math.isfinite(kappa):
            onehot = np.zeros((cons_cat.size, kc * kc))
            onehot[np.arange(cons_cat.size), cons_cat * kc + tr] = 1
            kb = rs.image_bootstrap(
                lambda w: rs.kappa_from_confusion((w @ onehot).reshape(-1, kc, kc)),
                cons_cat.size, n_resamples=n_bootstrap, seed=rng_seed)
            cohen["ci"] = _ci(rs.percentile_ci(kb, confidence))
            cohen["ci_method"] = "bootstrap over images (readers fixed), percentile"
        else:
            cohen["reason"] = "undefined: chance agreement is 1 (a single category throughout)"
    else:
        cohen["reason"] = "undefined: fewer than 2 images with a counted consensus"

    # Fleiss' kappa among readers, on images read by all of the group's readers
    fleiss: dict[str, Any] = {"kappa": None, "n_images": 0, "n_readers": len(active),
                              "ci": [None, None], "reason": None}
    if len(active) < 2:
        fleiss["reason"] = ("undefined: a single reader (agreement among readers needs at least "
                            "two)" if active else "undefined: no readings")
    else:
        full = rd_[active].all(axis=0)
        fleiss["n_images"] = int(full.sum())
        if full.sum() < 1:
            fleiss["reason"] = (f"undefined: no image in this group was read by all "
                                f"{len(active)} readers")
        else:
            sub = a[np.ix_(active, np.nonzero(full)[0])]
            counts = np.zeros((sub.shape[1], len(cats)))
            for rrow in sub:
                counts[np.arange(sub.shape[1]), rrow] += 1
            kappa = float(rs.fleiss_kappa_counts(counts))
            fleiss["kappa"] = _f(kappa)
            if math.isfinite(kappa):
                kb = rs.image_bootstrap(lambda w: rs.fleiss_kappa_counts(counts, w),
                                        counts.shape[0], n_resamples=n_bootstrap,
                                        seed=rng_seed + 1)
                fleiss["ci"] = _ci(rs.percentile_ci(kb, confidence))
                fleiss["ci_method"] = "bootstrap over images (readers fixed), percentile"
            else:
                fleiss["reason"] = "undefined: every answer is the same category"

    # pairwise agreement
    pairs = []
    if len(active) >= 2:
        pw = rs.pairwise_agreement(a[active], len(cats))
        for x in range(len(active)):
            for y in range(x + 1, len(active)):
                if pw["n"][x, y] == 0:
                    continue
                pairs.append({"reader_a": str(readers[active[x]]),
                              "reader_b": str(readers[active[y]]), "n": int(pw["n"][x, y]),
                              "agreement": float(pw["agreement"][x, y]),
                              "kappa": _f(pw["kappa"][x, y])})
    kappas = [p["kappa"] for p in pairs if p["kappa"] is not None]
    pairwise = {
        "n_pairs": len(pairs),
        "mean_agreement": _f(np.mean([p["agreement"] for p in pairs])) if pairs else None,
        "mean_kappa": _f(np.mean(kappas)) if kappas else None,
        "pairs": pairs,
        "reason": None if pairs else ("undefined: a single reader" if len(active) < 2 else
                                      "no two readers read a common image"),
    }

    out: dict[str, Any] = {
        "n_images": n_img,
        "n_images_in_group_file": int(group_file_counts.get(gname, n_img)),
        "n_unread": int(max(group_file_counts.get(gname, n_img) - n_img, 0)),
        "n_readings": n_read,
        "n_readers": len(active),
        "pooled_accuracy": _f(n_ok / n_read) if n_read else None,
        "pooled": {"accuracy": _f(n_ok / n_read) if n_read else None, "n": n_read,
                   "n_correct": n_ok, "ci": _ci(pooled_ci),
                   "ci_method": "two-way (reader x image) cluster bootstrap, percentile"},
        "consensus": consensus,
        "readers": reader_stats,
        "fleiss_kappa": fleiss["kappa"],
        "fleiss": fleiss,
        "cohen_kappa_consensus": cohen["kappa"],
        "cohen": cohen,
        "pairwise": pairwise,
        "cnn": None,
    }
    if cnn_for is not None:
        out["cnn"] = _cnn_summary(cols, images, truth_idx, cats, cnt, tie, winner, other_index,
                                  cnn_pred, cnn_for, confidence)
    return out


def _cnn_summary(cols, images, truth_idx, cats, cnt, tie, winner, other_index, cnn_pred,
                 cnn_for, confidence) -> dict[str, Any]:
    ids = [images[c] for c in cols]
    preds = [p if isinstance(p, str) else None for p in (cnn_for.get(i, None) for i in ids)]
    have = np.array([p is not None for p in preds], dtype=bool)
    c_idx = {c: k for k, c in enumerate(cats)}
    p_idx = np.array([c_idx.get(p, other_index) if p is not None else -1 for p in preds])
    t = truth_idx[cols]
    ok = have & (p_idx == t)
    n = int(have.sum())
    out: dict[str, Any] = {
        "accuracy": _f(ok.sum() / n) if n else None, "n": n, "n_correct": int(ok.sum()),
        "n_missing": int((~have).sum()),
        "ci": _ci(rs.wilson_ci(int(ok.sum()), n, confidence=confidence)),
        "ci_method": "Wilson score interval over images",
    }
    # agreement with a class consensus (not tie, not OTHER)
    cls_cons = have & ~tie & (winner[cols] != other_index) & cnt
    m = int(cls_cons.sum())
    out["agreement_with_consensus"] = {
        "n": m,
        "agreement": _f(np.mean(p_idx[cls_cons] == winner[cols][cls_cons])) if m else None,
        "kappa": _f(rs.cohen_kappa(p_idx[cls_cons], winner[cols][cls_cons])) if m >= 2 else None,
    }
    if cnn_pred is not None and cnn_pred.per_model is not None:
        pm = cnn_pred.per_model
        pmk = pm.copy()
        pmk.index = pm.index.map(_key)
        models = {}
        for model in pm.columns:
            col = pmk[model]
            mp = [col.get(_key(i), None) for i in ids]
            mp = [None if (p is None or (isinstance(p, float) and math.isnan(p))) else p
                  for p in mp]
            mh = np.array([p is not None for p in mp])
            mi = np.array([c_idx.get(p, -1) if p is not None else -1 for p in mp])
            mn = int(mh.sum())
            mk = int((mh & (mi == t)).sum())
            models[str(model)] = {"accuracy": _f(mk / mn) if mn else None, "n": mn,
                                  "correct": mk}
        out["models"] = models
    return out


def _between_group_tests(
    pair, gname_idx, answers, truth_idx, read, correct, counted, cons_ok, image_group, readers,
    images, draws, confidence, seed, n_permutations, glmm, warnings,
) -> list[TestResult]:
    la, lb = pair
    ga, gb = gname_idx[la], gname_idx[lb]
    in_a_img = image_group == ga
    in_b_img = image_group == gb
    tests: list[TestResult] = []

    # Fisher on consensus (images) and on pooled readings
    tests.append(rs.fisher_difference(
        int(cons_ok[in_a_img].sum()), int(counted[in_a_img].sum()),
        int(cons_ok[in_b_img].sum()), int(counted[in_b_img].sum()),
        name=f"consensus accuracy: {la} vs {lb} (Fisher, images)", unit="images",
        labels=pair, confidence=confidence,
        assumptions="images independent, one consensus answer each; inference is conditional "
        "on this reader panel (reader sampling ignored)",
    ))
    tests.append(rs.fisher_difference(
        int(correct[:, in_a_img].sum()), int(read[:, in_a_img].sum()),
        int(correct[:, in_b_img].sum()), int(read[:, in_b_img].sum()),
        name=f"pooled reading accuracy: {la} vs {lb} (Fisher, readings)", unit="readings",
        labels=pair, confidence=confidence,
        assumptions="every reading independent: IGNORES reader/image clustering (readings of "
        "one image, and of one reader, are correlated), so the p-value is too small and the CI "
        "too narrow; shown for comparison with the published analysis only",
    ))

    # paired per reader
    diffs, ids = [], []
    for r, name in enumerate(readers):
        na, nb = read[r, in_a_img].sum(), read[r, in_b_img].sum()
        if na and nb:
            diffs.append(correct[r, in_a_img].sum() / na - correct[r, in_b_img].sum() / nb)
            ids.append(str(name))
    paired = rs.paired_reader_tests(np.array(diffs), labels=pair, confidence=confidence)
    for p in paired:
        tests.append(TestResult(**{**p.__dict__, "extra": {**p.extra, "readers": ids}}))

    # two-way cluster bootstrap + image permutation
    obs_pooled = correct[:, in_a_img].sum() / max(read[:, in_a_img].sum(), 1) - \
        correct[:, in_b_img].sum() / max(read[:, in_b_img].sum(), 1)
    d_pooled = draws.pooled[ga] - draws.pooled[gb]
    ci_pooled = rs.percentile_ci(d_pooled, confidence)
    boot_assume = ("readers and images are independent random samples from their populations "
                   "(crossed design); percentile interval, mildly conservative (Owen 2007)")
    tests.append(TestResult(
        name=f"pooled reading accuracy: {la} vs {lb} (two-way cluster bootstrap)",
        effect=float(obs_pooled), ci=ci_pooled, statistic=math.nan, p_value=math.nan,
        method="two-way (reader x image) cluster bootstrap: readers and images resampled "
        "independently (images within group), percentile CI; estimate only, no p-value",
        effect_name=f"pooled accuracy difference ({la} - {lb})", assumptions=boot_assume,
        n={"readers": len(readers), f"{la}_images": int(in_a_img.sum()),
           f"{lb}_images": int(in_b_img.sum())},
        extra={"n_resamples": int(d_pooled.size),
               "n_valid": int(np.isfinite(d_pooled).sum()),
               "se": _f(np.nanstd(d_pooled, ddof=1)) if d_pooled.size > 1 else None},
    ))
    obs_cons = (cons_ok[in_a_img].sum() / max(counted[in_a_img].sum(), 1)
                - cons_ok[in_b_img].sum() / max(counted[in_b_img].sum(), 1))
    d_cons = draws.consensus[ga] - draws.consensus[gb]
    tests.append(TestResult(
        name=f"consensus accuracy: {la} vs {lb} (image bootstrap)",
        effect=float(obs_cons) if counted[in_a_img].any() and counted[in_b_img].any()
        else math.nan,
        ci=rs.percentile_ci(d_cons, confidence), statistic=math.nan, p_value=math.nan,
        method="cluster bootstrap over images within each group, reader panel fixed (a "
        "consensus belongs to its panel), percentile CI; estimate only, no p-value",
        effect_name=f"consensus accuracy difference ({la} - {lb})",
        assumptions="images independent random samples of their groups; conditional on this "
        "reader panel",
        n={"readers": len(readers), f"{la}_images": int(in_a_img.sum()),
           f"{lb}_images": int(in_b_img.sum())},
        extra={"n_resamples": int(d_cons.size), "n_valid": int(np.isfinite(d_cons).sum())},
    ))
    both = in_a_img | in_b_img
    obs, p, null = rs.image_permutation_test(
        correct[:, both].sum(axis=0), read[:, both].sum(axis=0), in_a_img[both],
        n_permutations=n_permutations, seed=seed,
    )
    tests.append(TestResult(
        name=f"pooled reading accuracy: {la} vs {lb} (image permutation test)",
        effect=obs, ci=ci_pooled, statistic=obs, p_value=p,
        method="permutation test: group labels shuffled across images, each image keeping all "
        "its readings; two-sided p = (1 + #|T*| >= |T|) / (1 + n); CI from the two-way "
        "cluster bootstrap",
        effect_name=f"pooled accuracy difference ({la} - {lb}); statistic = the same difference",
        assumptions="images exchangeable between the groups under the null (no group effect); "
        "readings of one image kept together; conditional on these readers",
        n={f"{la}_images": int(in_a_img.sum()), f"{lb}_images": int(in_b_img.sum()),
           "readings": int(read[:, both].sum())},
        extra={"n_permutations": int(n_permutations), "seed": int(seed),
               "ci_method": "two-way cluster bootstrap, percentile"},
    ))

    if glmm:
        rr, ii = np.nonzero(read[:, both])
        cols = np.nonzero(both)[0][ii]
        try:
            tests.append(rs.crossed_glmm(
                correct[rr, cols], np.asarray(readers, dtype=object)[rr],
                np.asarray(images, dtype=object)[cols], in_a_img[cols], labels=pair,
                confidence=confidence,
            ))
        except (ValueError, np.linalg.LinAlgError, FloatingPointError) as e:
            warnings.append(f"the crossed GLMM could not be fitted ({e}); the bootstrap and "
                            "permutation results stand")
    return tests


# --------------------------------------------------------------------------- outputs


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def _fmt_ci(ci: Any, pct: bool = False) -> str:
    if not ci or ci[0] is None:
        return ""
    return f" [{_fmt(ci[0], pct)}, {_fmt(ci[1], pct)}]"


def _fmt_p(p: Any) -> str:
    if p is None or (isinstance(p, float) and not math.isfinite(p)):
        return "-"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _cell(x: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(x).replace("|", "\\|").replace("\n", " ")


def render_markdown(study: ReaderStudy) -> str:
    """A readable report (``readers.md``): inputs, per-group tables, readers and tests."""
    s = study.summary
    inp, opt = s["inputs"], s["options"]
    conf = int(round(100 * opt["confidence"]))
    lines = [
        "# Reader study",
        "",
        f"{inp['n_readings']} readings by {inp['n_readers']} readers of {inp['n_images']} "
        f"images; classes {', '.join(s['classes'])}. Consensus: plurality answer per image; "
        f"ties {opt['ties']}, OTHER consensus {opt['other']}. Intervals: {conf}% "
        f"({opt['n_bootstrap']} bootstrap resamples, {opt['n_permutations']} permutations, "
        f"seed {opt['seed']}).",
        "",
        "## Groups",
        "",
        "| group | images (unread) | readings | readers | pooled accuracy | consensus accuracy "
        "| consensus n (ties, OTHER) | Cohen's kappa consensus vs truth | Fleiss' kappa "
        "(images) | mean pairwise kappa | CNN accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, g in s["groups"].items():
        c = g["consensus"]
        cnn = g.get("cnn")
        lines.append(
            f"| {_cell(name)} | {g['n_images']} ({g['n_unread']}) | {g['n_readings']} | "
            f"{g['n_readers']} | {_fmt(g['pooled_accuracy'], True)}"
            f"{_fmt_ci(g['pooled']['ci'], True)} | {_fmt(c['accuracy'], True)}"
            f"{_fmt_ci(c['ci'], True)} | {c['n']} ({c['n_ties']}, "
            f"{c['n_other']}) | {_fmt(g['cohen']['kappa'])}{_fmt_ci(g['cohen']['ci'])} | "
            f"{_fmt(g['fleiss']['kappa'])}{_fmt_ci(g['fleiss']['ci'])} ({g['fleiss']['n_images']})"
            f" | {_fmt(g['pairwise']['mean_kappa'])} | "
            + (f"{_fmt(cnn['accuracy'], True)} (n={cnn['n']})" if cnn else "-") + " |"
        )
    reasons = [f"- {name}: Fleiss' kappa {g['fleiss']['reason']}" for name, g in
               s["groups"].items() if g["fleiss"]["reason"]]
    reasons += [f"- {name}: Cohen's kappa {g['cohen']['reason']}" for name, g in
                s["groups"].items() if g["cohen"]["reason"]]
    if reasons:
        lines += ["", *reasons]
    names = list(s["groups"])
    lines += ["", "## Readers (accuracy, n)", "",
              "| reader | " + " | ".join(names) + " |",
              "| --- |" + " --- |" * len(names)]
    for r in inp["readers"]:
        cells = []
        for name in names:
            st = s["groups"][name]["readers"].get(r)
            cells.append(f"{_fmt(st['accuracy'], True)} ({st['n']})" if st else "-")
        lines.append(f"| {_cell(r)} | " + " | ".join(cells) + " |")
    cnn_models = {n: g["cnn"].get("models") for n, g in s["groups"].items()
                  if g.get("cnn") and g["cnn"].get("models")}
    if cnn_models:
        models = sorted({m for v in cnn_models.values() for m in v})
        lines += ["", "## CNN models on the same images (accuracy, n)", "",
                  "| model | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
        for m in models:
            cells = []
            for name in names:
                st = (cnn_models.get(name) or {}).get(m)
                cells.append(f"{_fmt(st['accuracy'], True)} ({st['n']})" if st else "-")
            lines.append(f"| {_cell(m)} | " + " | ".join(cells) + " |")
    lines += ["", "## Tests between groups", ""]
    if s["tests"]:
        lines += ["| test | effect | CI | statistic | p | method | assumes |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for t in s["tests"]:
            lines.append(
                f"| {_cell(t['name'])} | {_fmt(t['effect'])} | {_fmt_ci(t['ci']).strip()} | "
                f"{_fmt(t['statistic'])} | {_fmt_p(t['p_value'])} | {_cell(t['method'])} | "
                f"{_cell(t['assumptions'])} |"
            )
        lines += ["", "Effects are differences (first group minus second) unless the test says "
                  "log odds ratio. The two-way cluster bootstrap and the image permutation test "
                  "are the valid inference for readers x images; Fisher's test on pooled "
                  "readings treats correlated readings as independent."]
    else:
        lines.append(s.get("tests_note") or "No tests.")
    if s["warnings"]:
        lines += ["", "## Notes", "", *[f"- {w}" for w in s["warnings"]]]
    return "\n".join(lines) + "\n"


def write_reader_report(study: ReaderStudy, out_dir: str | Path) -> dict[str, Path]:
    """Write ``readers.json``, ``readers.md`` and ``reader_images.csv`` atomically in ``out_dir``.

    Returns the written paths by kind (``json``, ``markdown``, ``images``).
    """
    from skin_core.io import atomic_write_csv, atomic_write_json, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "json": atomic_write_json(out / "readers.json", study.summary),
        "markdown": atomic_write_text(out / "readers.md", render_markdown(study)),
        "images": atomic_write_csv(out / "reader_images.csv", study.images),
    }
