"""Meta-classifier features: per-model CNN probabilities (or logits) + patient metadata.

:func:`build_features` (a pure function) turns a :class:`~skin_core.meta.wide.WideOOF` (or a
long OOF table, pivoted by :func:`~skin_core.meta.wide.oof_to_wide`) + a metadata table into
the feature matrix ``X`` and a :class:`FeatureSpec` that records the feature order, the
categories and the models, so that new rows can be built identically at prediction time;
:func:`build_feature_array` builds the same numbers as one ndarray (the prediction-time fast
path).

Metadata rules: ``age_approx`` is a float and stays NaN when missing (LightGBM handles NaN);
``sex`` and ``anatom_site_general`` become pandas categoricals over a fixed vocabulary plus an
explicit ``unknown`` category; missing values become ``unknown``; values outside the vocabulary
are reported (warning + :attr:`FeatureSpec.unknown_values`) and become ``unknown``. Nothing is
ever derived from the label.

Quality rules: only the resolution-normalised measures of :data:`QUALITY_FEATURES` may become
features (``q_<name>``); every other column of a quality table (image size, the
full-resolution Laplacian variance, ``is_blurry``...) is ignored. Image size identifies the
source archive of an ISIC 2019 image, and with it the class mix: a shortcut, not a property
of the lesion, and out of range for an upload of any other size.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from skin_core.constants import AGE, IMAGE_ID, SEX, SEX_VALUES, SITE, SITE_VALUES
from skin_core.errors import ConfigError, DataError
from skin_core.meta.wide import (  # re-exported: the wide table is the features' input
    SUM_TOLERANCE,
    WIDE_SEP,
    WideOOF,
    oof_to_wide,
    wide_columns,
    wide_from_probs,
)

UNKNOWN = "unknown"
#: Probabilities are clipped to ``[EPS, 1]`` before taking logs.
EPS = 1e-7

CATEGORIES: dict[str, tuple[str, ...]] = {
    SEX: (*SEX_VALUES, UNKNOWN),
    SITE: (*SITE_VALUES, UNKNOWN),
}

#: The quality measures (columns of ``quality.csv``, :mod:`skin_core.analysis.quality`) that
#: may become features, in feature order. Each is computed on the grey image resized to a long
#: side of at most 256 px (or is a mean, ratio or histogram statistic), so it does not encode
#: the image's size. Left out on purpose: ``width``, ``height`` and ``laplacian_var_full``
#: (they identify the source archive), ``is_blurry`` (a threshold of ``blur_score``).
QUALITY_FEATURES: tuple[str, ...] = (
    "laplacian_var",
    "wavelet_detail_energy",
    "wavelet_ratio",
    "fft_hf_ratio",
    "brightness",
    "contrast",
    "entropy",
    "vignette",
    "blur_score",
)

__all__ = [
    "CATEGORIES", "QUALITY_FEATURES", "SUM_TOLERANCE", "UNKNOWN", "WIDE_SEP", "FeatureSpec",
    "MetaFeatureWarning", "WideOOF", "build_feature_array", "build_features", "category_codes",
    "feature_name", "oof_to_wide", "quality_feature_columns", "wide_columns", "wide_from_probs",
]


class MetaFeatureWarning(UserWarning):
    """Metadata values outside the vocabulary were treated as ``unknown``."""


def _warn_unknown(source: str, unknown_values: dict[str, list[str]]) -> None:
    """One warning naming the metadata values outside the vocabulary (treated as unknown)."""
    if unknown_values:
        desc = "; ".join(f"{c}: {v[:5]}" for c, v in unknown_values.items())
        warnings.warn(
            f"{source}: values outside the vocabulary were treated as 'unknown' ({desc}).",
            MetaFeatureWarning,
            stacklevel=3,
        )



@dataclass(frozen=True)
class FeatureSpec:
    """Everything needed to rebuild the feature matrix identically.

    Attributes
    ----------
    columns:
        Feature names in the order the model was trained on.
    models:
        CNN model ids whose probabilities are features (empty for metadata only).
    classes:
        Class codes.
    use_logits:
        Features are ``log(p)`` instead of ``p``.
    ensemble_mean:
        The mean of the models' probabilities (``p__mean__<C>``) is a feature too.
    metadata:
        Whether age, sex and site are features.
    categories:
        Categorical column -> ordered categories (``unknown`` included).
    quality_columns:
        Quality measures used (feature ``q_<name>``), empty when none.
    unknown_values:
        Column -> values found outside the vocabulary when the features were built (these
        were treated as ``unknown``). Informational; not needed to rebuild.
    """

    columns: tuple[str, ...]
    models: tuple[str, ...]
    classes: tuple[str, ...]
    use_logits: bool = False
    ensemble_mean: bool = True
    metadata: bool = True
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    quality_columns: tuple[str, ...] = ()
    unknown_values: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        for k in ("columns", "models", "classes", "quality_columns"):
            d[k] = list(d[k])
        d["categories"] = {k: list(v) for k, v in self.categories.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            columns=tuple(d["columns"]),
            models=tuple(d["models"]),
            classes=tuple(d["classes"]),
            use_logits=bool(d.get("use_logits", False)),
            ensemble_mean=bool(d.get("ensemble_mean", True)),
            metadata=bool(d.get("metadata", True)),
            categories={k: tuple(v) for k, v in d.get("categories", {}).items()},
            quality_columns=tuple(d.get("quality_columns", ())),
            unknown_values={k: list(v) for k, v in d.get("unknown_values", {}).items()},
        )


def feature_name(model: str, cls: str, *, use_logits: bool = False) -> str:
    """LightGBM-safe feature name of one model's class probability (or logit)."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", model)
    return f"{'logit' if use_logits else 'p'}__{safe}__{cls}"


def build_features(
    oof: pd.DataFrame | WideOOF,
    metadata: pd.DataFrame | None,
    *,
    models: Sequence[str] | None = None,
    use_logits: bool = False,
    quality: pd.DataFrame | None = None,
    include_probs: bool = True,
    include_mean: bool = True,
    include_metadata: bool = True,
    spec: FeatureSpec | None = None,
    source: str = "metadata",
) -> tuple[pd.DataFrame, FeatureSpec]:
    """Feature matrix of the meta-classifier (a pure function).

    Parameters
    ----------
    oof:
        Long or wide OOF table, or a :class:`WideOOF`. Only the ``prob_`` columns are used;
        ``label`` and ``fold`` never become features.
    metadata:
        Table with ``image_id``, ``age_approx``, ``sex``, ``anatom_site_general`` (other
        columns, including ``label``, are ignored). Every OOF image must have a row.
        ``None`` only when ``include_metadata=False``.
    models:
        Models whose probabilities become features (default: all).
    use_logits:
        Use ``log(clip(p, 1e-7))`` instead of ``p``.
    quality:
        Optional ``quality.csv`` table: ``image_id`` + measures. The measures of
        :data:`QUALITY_FEATURES` it has become ``q_<name>`` (NaN for images without a row);
        its other columns are ignored (:func:`quality_feature_columns`).
    include_probs, include_metadata:
        Which groups of features to build (metadata-only and probabilities-only baselines).
    include_mean:
        With ``include_probs``, also add the ensemble mean probability (or its log) of each
        class, ``p__mean__<C>``: trees find an average hard to build from splits alone. Not
        added for a single model (it would duplicate that model's columns).
    spec:
        A spec from an earlier call: rebuild exactly its columns, categories and models
        (prediction time). The other options are then taken from ``spec``.
    source:
        Name of the metadata file for messages.

    Returns
    -------
    (X, spec)
        ``X`` is indexed by ``image_id`` in the OOF order; columns in ``spec.columns`` order;
        ``sex`` and ``anatom_site_general`` are categoricals with an ``unknown`` category;
        ``age_approx`` is float with NaN for missing.

    Raises
    ------
    DataError
        Images without a metadata row, missing metadata columns, a non-numeric quality
        measure of :data:`QUALITY_FEATURES`.

    Examples
    --------
    >>> X, spec = build_features(oof, dataset.table)            # doctest: +SKIP
    >>> X_new, _ = build_features(new_wide, new_meta, spec=spec)  # doctest: +SKIP
    """
    wide = oof if isinstance(oof, WideOOF) else oof_to_wide(
        oof, classes=None if spec is None else spec.classes
    )
    if spec is not None:
        models = spec.models
        use_logits = spec.use_logits
        include_probs = bool(spec.models)
        include_mean = spec.ensemble_mean
        include_metadata = spec.metadata
    use_models = tuple(models) if models is not None else wide.models
    if spec is None and len(use_models) < 2:
        include_mean = False  # the mean of one model is that model: a duplicate column
    missing_models = [m for m in use_models if m not in wide.models]
    if missing_models:
        raise DataError(
            f"The OOF/prediction table has no model(s) {missing_models}; it has "
            f"{list(wide.models)}."
        )
    index = wide.table.index
    parts: dict[str, Any] = {}
    columns: list[str] = []
    if include_probs:
        for m in use_models:
            p = wide.probs(m)
            if use_logits:
                p = np.log(np.clip(p, EPS, 1.0))
            for k, c in enumerate(wide.classes):
                name = feature_name(m, c, use_logits=use_logits)
                parts[name] = p[:, k]
                columns.append(name)
        if include_mean:
            p = np.mean([wide.probs(m) for m in use_models], axis=0)
            if use_logits:
                p = np.log(np.clip(p, EPS, 1.0))
            for k, c in enumerate(wide.classes):
                name = f"{'logit' if use_logits else 'p'}__mean__{c}"
                parts[name] = p[:, k]
                columns.append(name)
    unknown_values: dict[str, list[str]] = {}
    if include_metadata:
        meta = _metadata_for(index, metadata, source=source)
        parts[AGE] = meta[AGE].to_numpy(dtype=float)
        columns.append(AGE)
        for col in (SEX, SITE):
            values, unknown = _categorical(meta[col], CATEGORIES[col])
            parts[col] = values
            columns.append(col)
            if unknown:
                unknown_values[col] = unknown
        _warn_unknown(source, unknown_values)
    quality_columns: tuple[str, ...] = ()
    if spec is not None:
        quality_columns = spec.quality_columns
    elif quality is not None:
        quality_columns = quality_feature_columns(quality)
    if quality_columns:
        if quality is None:
            raise DataError(
                f"The model uses quality measures {list(quality_columns)}; pass the quality "
                f"table (quality.csv) for these images."
            )
        q = _quality_for(index, quality, quality_columns)
        for c in quality_columns:
            parts[f"q_{c}"] = q[c].to_numpy(dtype=float)
            columns.append(f"q_{c}")
    if spec is not None and tuple(columns) != spec.columns:
        raise DataError(
            f"The rebuilt features {columns[:6]}... differ from the model's "
            f"{list(spec.columns[:6])}...; use the same models and quality measures."
        )
    if not columns:
        raise ConfigError("build_features needs at least one group of features.")
    X = pd.DataFrame(parts, index=index)[columns]
    out_spec = FeatureSpec(
        columns=tuple(columns),
        models=use_models if include_probs else (),
        classes=wide.classes,
        use_logits=use_logits,
        ensemble_mean=bool(include_probs and include_mean),
        metadata=include_metadata,
        categories={k: CATEGORIES[k] for k in (SEX, SITE)} if include_metadata else {},
        quality_columns=quality_columns,
        unknown_values=unknown_values,
    )
    return X, out_spec


def _metadata_for(index: pd.Index, metadata: pd.DataFrame | None, *, source: str) -> pd.DataFrame:
    if metadata is None:
        raise DataError(
            "Metadata features were requested but no metadata table was given; pass the "
            "dataset (--dataset) or --metadata CSV."
        )
    meta = metadata.reset_index() if IMAGE_ID not in metadata.columns else metadata
    lacking = [c for c in (IMAGE_ID, AGE, SEX, SITE) if c not in meta.columns]
    if lacking:
        raise DataError(
            f"{source} lacks the column(s) {lacking}; expected image_id, age_approx, sex and "
            f"anatom_site_general (empty cells are fine)."
        )
    meta = meta[[IMAGE_ID, AGE, SEX, SITE]].copy()
    meta[IMAGE_ID] = meta[IMAGE_ID].astype(str)
    dup = meta[IMAGE_ID].duplicated()
    if dup.any():
        raise DataError(
            f"{source} has {int(dup.sum())} duplicate image_id rows, e.g. "
            f"{meta.loc[dup, IMAGE_ID].iloc[0]}; keep one row per image."
        )
    meta = meta.set_index(IMAGE_ID)
    absent = index.difference(meta.index)
    if len(absent):
        raise DataError(
            f"{source} has no row for {len(absent)} of the {len(index)} predicted images, e.g. "
            f"{absent[0]}; use the dataset the CNNs were trained on."
        )
    meta = meta.loc[index]
    age = pd.to_numeric(meta[AGE], errors="coerce")
    bad_age = age.isna() & meta[AGE].notna() & (meta[AGE].astype(str).str.strip() != "")
    if bad_age.any():
        raise DataError(
            f"{source} column age_approx has non-numeric value {meta.loc[bad_age, AGE].iloc[0]!r} "
            f"for image {meta.index[bad_age.to_numpy()][0]}; use a number or leave it empty."
        )
    meta[AGE] = age.astype(float)
    return meta


def _categorical(values: pd.Series, vocabulary: tuple[str, ...]) -> tuple[pd.Categorical, list]:
    s = values.astype(object)
    norm = s.map(lambda v: v.strip().lower() if isinstance(v, str) else v)
    missing = norm.isna() | (norm == "")
    known = norm.isin(vocabulary)
    unknown = sorted({str(v) for v in s[~known & ~missing]})
    norm = norm.where(known, UNKNOWN)
    return pd.Categorical(norm.to_numpy(dtype=object), categories=list(vocabulary)), unknown


def quality_feature_columns(quality: pd.DataFrame) -> tuple[str, ...]:
    """The measures of a quality table that may become features, in :data:`QUALITY_FEATURES`
    order.

    Every other column (``image_id``, ``width``, ``height``, ``laplacian_var_full``,
    ``is_blurry``, ``error``, anything unknown) is ignored without an error.

    Raises
    ------
    DataError
        An allowed measure holds values that are not numbers.
    """
    q = quality.reset_index() if IMAGE_ID not in quality.columns else quality
    out = []
    for c in QUALITY_FEATURES:
        if c not in q.columns:
            continue
        values = pd.to_numeric(q[c].astype(object).map(_boolish), errors="coerce")
        bad = values.isna() & q[c].notna() & (q[c].astype(str).str.strip() != "")
        if bad.any():
            raise DataError(
                f"The quality table's column {c} has the non-numeric value "
                f"{q.loc[bad, c].iloc[0]!r}; use the quality.csv written by skin-core quality."
            )
        out.append(c)
    return tuple(out)


def _quality_for(index: pd.Index, quality: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    q = quality.reset_index() if IMAGE_ID not in quality.columns else quality
    lacking = [c for c in (IMAGE_ID, *columns) if c not in q.columns]
    if lacking:
        raise DataError(f"The quality table lacks the column(s) {lacking}.")
    q = q[[IMAGE_ID, *columns]].copy()
    q[IMAGE_ID] = q[IMAGE_ID].astype(str)
    q = q.drop_duplicates(IMAGE_ID).set_index(IMAGE_ID)
    for c in columns:
        q[c] = pd.to_numeric(q[c].astype(object).map(_boolish), errors="coerce")
    return q.reindex(index)


def _boolish(v: Any) -> Any:
    if isinstance(v, (bool, np.bool_)):
        return float(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return float(v.strip().lower() == "true")
    return v


# --------------------------------------------------------------------------------------------
# Prediction-time fast path: the features of build_features(..., spec=spec) as one ndarray.
#
# For a handful of rows, building DataFrames costs far more than the boosters themselves
# (about 20 ms against 0.1 ms for one image). These functions build the same numbers with
# NumPy only; tests check them against the pandas path on many random rows.


def category_codes(values: Sequence[Any], column: str) -> tuple[np.ndarray, list[str]]:
    """Codes of the pandas categorical :func:`build_features` makes of a metadata column.

    Parameters
    ----------
    values:
        ``(N,)`` raw ``sex`` or ``anatom_site_general`` values (strings, ``None`` or NaN).
    column:
        ``"sex"`` or ``"anatom_site_general"``.

    Returns
    -------
    (codes, unknown)
        ``codes`` is ``(N,)`` float64: the position of each value in
        ``CATEGORIES[column]`` after the same normalisation (strip, lower case; missing and
        out-of-vocabulary values become ``unknown``), i.e. ``X[column].cat.codes``.
        ``unknown`` lists the out-of-vocabulary values (sorted, as strings).
    """
    vocabulary = CATEGORIES[column]
    lookup = {v: float(i) for i, v in enumerate(vocabulary)}
    unknown_code = lookup[UNKNOWN]
    codes = np.empty(len(values), dtype=float)
    unknown: set[str] = set()
    for i, v in enumerate(values):
        norm = v.strip().lower() if isinstance(v, str) else v
        code = lookup.get(norm) if isinstance(norm, str) else None
        if code is None:
            code = unknown_code
            if not (_is_missing(norm) or norm == ""):
                unknown.add(str(v))
        codes[i] = code
    return codes, sorted(unknown)


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # array-likes are never a missing scalar
        return False


def _float_or_nan(v: Any) -> float:
    """``pd.to_numeric(..., errors="coerce")`` of one value (booleans as 0/1)."""
    v = _boolish(v)
    if _is_missing(v):
        return float("nan")
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _column(values: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "fiub" and arr.ndim == 1:
        # np.asarray makes "nan" of a NaN among strings: keep the values themselves
        arr = np.empty(len(arr), dtype=object)
        arr[:] = list(values)
    if arr.shape != (n,):
        raise DataError(f"{what} has shape {arr.shape}; expected ({n},), one value per image.")
    return arr


def build_feature_array(
    spec: FeatureSpec,
    probs: Mapping[str, np.ndarray],
    *,
    age: Sequence[Any] | np.ndarray | None = None,
    sex: Sequence[Any] | None = None,
    site: Sequence[Any] | None = None,
    quality: Mapping[str, Sequence[Any] | np.ndarray] | None = None,
    source: str = "metadata",
) -> np.ndarray:
    """The feature matrix of ``spec`` as a float64 ndarray (the prediction-time fast path).

    The same numbers as ``build_features(wide_from_probs(ids, probs, spec.classes), metadata,
    quality=quality, spec=spec)[0]``, with the categorical columns as their pandas codes
    (positions in ``CATEGORIES[column]``; map them onto a booster's own category lists before
    predicting, as LightGBM's pandas handling does: see
    :meth:`skin_core.meta.io.MetaPredictor.predict_arrays`).

    Parameters
    ----------
    spec:
        The model's :class:`FeatureSpec`.
    probs:
        Model id -> ``(N, K)`` probabilities in ``spec.classes`` order; every model of
        ``spec.models`` must be present (others are ignored).
    age, sex, site:
        ``(N,)`` raw metadata (``None`` entries or ``None`` for the whole column: missing).
        Ages must be numbers (or empty); sex and site are normalised like
        :func:`build_features` (out-of-vocabulary values warn and become ``unknown``).
    quality:
        Measure name -> ``(N,)`` values, for every ``spec.quality_columns``.
    source:
        Name of the metadata in messages.

    Returns
    -------
    ndarray
        ``(N, F)`` float64 in ``spec.columns`` order.

    Raises
    ------
    DataError
        A model of the spec or a quality measure is missing, an array has the wrong shape,
        an age is not a number.
    """
    missing_models = [m for m in spec.models if m not in probs]
    if missing_models:
        raise DataError(
            f"The prediction has no probabilities from model(s) {missing_models}; the "
            f"meta-classifier uses {list(spec.models)}."
        )
    k = len(spec.classes)
    arrays = [np.asarray(probs[m], dtype=float) for m in spec.models]
    n = arrays[0].shape[0] if arrays else _rows(age, sex, site, quality)
    for m, p in zip(spec.models, arrays, strict=True):
        if p.shape != (n, k):
            raise DataError(
                f"Model {m} gave probabilities of shape {p.shape}; expected ({n}, {k}) for "
                f"{n} images and classes {list(spec.classes)}."
            )
    cols: dict[str, np.ndarray] = {}
    if arrays:
        for m, p in zip(spec.models, arrays, strict=True):
            v = np.log(np.clip(p, EPS, 1.0)) if spec.use_logits else p
            for j, c in enumerate(spec.classes):
                cols[feature_name(m, c, use_logits=spec.use_logits)] = v[:, j]
        if spec.ensemble_mean:
            v = np.mean(arrays, axis=0)
            if spec.use_logits:
                v = np.log(np.clip(v, EPS, 1.0))
            for j, c in enumerate(spec.classes):
                cols[f"{'logit' if spec.use_logits else 'p'}__mean__{c}"] = v[:, j]
    if spec.metadata:
        cols[AGE] = _ages(age, n, source)
        unknown_values: dict[str, list[str]] = {}
        for col, values in ((SEX, sex), (SITE, site)):
            raw = [None] * n if values is None else _column(values, n, f"{source} {col}")
            cols[col], unknown = category_codes(list(raw), col)
            if unknown:
                unknown_values[col] = unknown
        _warn_unknown(source, unknown_values)
    if spec.quality_columns:
        if quality is None:
            raise DataError(
                f"The model uses quality measures {list(spec.quality_columns)}; pass the "
                f"quality table (quality.csv) for these images."
            )
        lacking = [c for c in spec.quality_columns if c not in quality]
        if lacking:
            raise DataError(f"The quality table lacks the column(s) {lacking}.")
        for c in spec.quality_columns:
            values = _column(quality[c], n, f"quality measure {c}")
            if values.dtype.kind in "fiub":
                cols[f"q_{c}"] = values.astype(float)
            else:
                cols[f"q_{c}"] = np.array([_float_or_nan(v) for v in values], dtype=float)
    out = np.empty((n, len(spec.columns)), dtype=float)
    for j, name in enumerate(spec.columns):
        if name not in cols:
            raise DataError(
                f"The feature spec lists {name!r}, which this version does not build; re-run "
                f"skin-core meta."
            )
        out[:, j] = cols[name]
    return out


def _rows(*columns: Any) -> int:
    for c in columns:
        if isinstance(c, Mapping):
            for v in c.values():
                return len(v)
        elif c is not None:
            return len(c)
    raise DataError("build_feature_array needs probabilities or metadata for at least one image.")


def _ages(age: Any, n: int, source: str) -> np.ndarray:
    if age is None:
        return np.full(n, np.nan)
    values = _column(age, n, f"{source} {AGE}")
    if values.dtype.kind in "fiub":
        return values.astype(float)
    out = np.empty(n, dtype=float)
    for i, v in enumerate(values):
        if _is_missing(v) or (isinstance(v, str) and not v.strip()):
            out[i] = np.nan
            continue
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise DataError(
                f"{source} column age_approx has non-numeric value {v!r} for row {i}; use a "
                f"number or leave it empty."
            ) from None
    return out
