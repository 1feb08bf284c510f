"""Meta-classifier features: per-model CNN probabilities (or logits) + patient metadata.

Two steps, both pure functions:

* :func:`oof_to_wide` validates a long OOF table (``image_id, model, arch, fold, label,
  prob_<CLASS>...``; one row per image per model) and pivots it to one row per image with one
  column ``"<model>:prob_<CLASS>"`` per model and class, plus ``label`` and ``fold``.
* :func:`build_features` turns the wide table + a metadata table into the feature matrix
  ``X`` and a :class:`FeatureSpec` that records the feature order, the categories and the
  models, so that new rows can be built identically at prediction time.

Metadata rules: ``age_approx`` is a float and stays NaN when missing (LightGBM handles NaN);
``sex`` and ``anatom_site_general`` become pandas categoricals over a fixed vocabulary plus an
explicit ``unknown`` category; missing values become ``unknown``; values outside the vocabulary
are reported (warning + :attr:`FeatureSpec.unknown_values`) and become ``unknown``. Nothing is
ever derived from the label.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from skin_core.constants import (
    AGE,
    FOLD,
    IMAGE_ID,
    LABEL,
    PROB_PREFIX,
    SEX,
    SEX_VALUES,
    SITE,
    SITE_VALUES,
    prob_columns,
)
from skin_core.errors import ConfigError, DataError

UNKNOWN = "unknown"
#: Column name separator in the wide OOF table: ``"<model>:prob_<CLASS>"``.
WIDE_SEP = ":"
#: Tolerance on probability rows summing to one.
SUM_TOLERANCE = 1e-3
#: Probabilities are clipped to ``[EPS, 1]`` before taking logs.
EPS = 1e-7

CATEGORIES: dict[str, tuple[str, ...]] = {
    SEX: (*SEX_VALUES, UNKNOWN),
    SITE: (*SITE_VALUES, UNKNOWN),
}


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
class WideOOF:
    """OOF predictions pivoted to one row per image.

    Attributes
    ----------
    table:
        DataFrame indexed by ``image_id`` (sorted) with ``label``, ``fold`` and one column
        ``"<model>:prob_<CLASS>"`` per model and class.
    models:
        Model ids in sorted order.
    classes:
        Class codes in column order.
    dropped:
        Image ids dropped because some model had no prediction for them (only with
        ``restrict=True``; empty otherwise).
    """

    table: pd.DataFrame
    models: tuple[str, ...]
    classes: tuple[str, ...]
    dropped: tuple[str, ...] = ()

    def probs(self, model: str) -> np.ndarray:
        """``(N, K)`` probabilities of one model."""
        return self.table[wide_columns(model, self.classes)].to_numpy(dtype=float)

    def stacked(self) -> np.ndarray:
        """``(M, N, K)`` probabilities of every model."""
        return np.stack([self.probs(m) for m in self.models])

    def label_index(self) -> np.ndarray:
        """``(N,)`` integer labels into :attr:`classes`."""
        lookup = {c: i for i, c in enumerate(self.classes)}
        return self.table[LABEL].map(lookup).to_numpy(dtype=int)


def wide_columns(model: str, classes: Sequence[str]) -> list[str]:
    """Wide-table column names ``"<model>:prob_<CLASS>"`` of one model."""
    return [f"{model}{WIDE_SEP}{c}" for c in prob_columns(classes)]


def oof_to_wide(
    oof: pd.DataFrame,
    *,
    classes: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    restrict: bool = False,
    source: str = "oof.csv",
) -> WideOOF:
    """Validate a long OOF table and pivot it to one row per image.

    Parameters
    ----------
    oof:
        Long table ``image_id, model, fold, label, prob_<CLASS>...`` (``arch`` optional),
        one row per image per model. A table that is already wide (has ``"<model>:prob_"``
        columns, ``label`` and ``fold``) is accepted as is.
    classes:
        Expected class codes in order (e.g. from the run's ``config.yaml``). Default: the
        ``prob_`` columns of the table, in order.
    models:
        Models to keep (default: all, sorted).
    restrict:
        When some model lacks predictions for some images: ``False`` raises, ``True`` keeps
        only images predicted by every model and lists the others in ``dropped``.
    source:
        File name used in error messages.

    Returns
    -------
    WideOOF

    Raises
    ------
    DataError
        Missing columns, duplicate (image, model) rows, labels outside ``classes``,
        probabilities that are missing / negative / do not sum to one, models with
        different class lists, an image with different folds or labels across models,
        or (without ``restrict``) images missing for some model.
    """
    if not isinstance(oof, pd.DataFrame):
        raise DataError(f"{source}: expected a pandas DataFrame, got {type(oof).__name__}.")
    if "model" not in oof.columns and any(WIDE_SEP + PROB_PREFIX in str(c) for c in oof.columns):
        return _validate_wide(oof, classes=classes, models=models, source=source)
    required = [IMAGE_ID, "model", FOLD, LABEL]
    missing = [c for c in required if c not in oof.columns]
    if missing:
        raise DataError(
            f"{source} lacks the column(s) {missing}; an OOF table needs "
            f"image_id, model, arch, fold, label and one prob_<CLASS> column per class."
        )
    prob_cols = [c for c in oof.columns if str(c).startswith(PROB_PREFIX)]
    table_classes = tuple(str(c)[len(PROB_PREFIX):] for c in prob_cols)
    if not table_classes:
        raise DataError(f"{source} has no prob_<CLASS> columns; nothing to stack.")
    if classes is None:
        classes = table_classes
    classes = tuple(str(c) for c in classes)
    if set(classes) != set(table_classes):
        raise DataError(
            f"{source} has probability columns for classes {list(table_classes)} but the run's "
            f"classes are {list(classes)}; use the OOF table written for this run."
        )
    df = oof.copy()
    df[IMAGE_ID] = df[IMAGE_ID].astype(str)
    df["model"] = df["model"].astype(str)
    df[LABEL] = df[LABEL].astype(str)
    if models is not None:
        unknown = sorted(set(models) - set(df["model"]))
        if unknown:
            raise ConfigError(
                f"{source} has no model(s) {unknown}; available: {sorted(df['model'].unique())}."
            )
        df = df[df["model"].isin(list(models))]
    model_ids = tuple(sorted(df["model"].unique()))
    if not model_ids:
        raise DataError(f"{source} has no rows; train the CNNs first.")

    dup = df.duplicated([IMAGE_ID, "model"])
    if dup.any():
        row = df[dup].iloc[0]
        raise DataError(
            f"{source} has {int(dup.sum())} duplicate (image_id, model) rows, e.g. image "
            f"{row[IMAGE_ID]} for model {row['model']}; keep one row per image per model."
        )
    bad_label = ~df[LABEL].isin(classes)
    if bad_label.any():
        row = df[bad_label].iloc[0]
        raise DataError(
            f"{source} row for image {row[IMAGE_ID]} has label {row[LABEL]!r}, which is not one "
            f"of the classes {list(classes)}."
        )
    probs = df[prob_columns(classes)].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    # Class lists per model: a model trained on other classes leaves some columns empty.
    present = {m: tuple(c for c, k in zip(classes, range(len(classes)), strict=True)
                        if np.isfinite(probs[(df["model"] == m).to_numpy(), k]).any())
               for m in model_ids}
    lists = {v for v in present.values()}
    if len(lists) > 1:
        ref = model_ids[0]
        other = next(m for m in model_ids if present[m] != present[ref])
        raise DataError(
            f"{source}: models have different class lists: {ref} predicts {list(present[ref])} "
            f"but {other} predicts {list(present[other])}; stack only models trained on the "
            f"same classes (pass models=... / --models)."
        )
    bad = ~np.isfinite(probs).all(axis=1) | (probs < -SUM_TOLERANCE).any(axis=1)
    bad |= np.abs(probs.sum(axis=1) - 1.0) > SUM_TOLERANCE
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        row = df.iloc[i]
        raise DataError(
            f"{source}: {int(bad.sum())} row(s) have missing, negative or non-normalised "
            f"probabilities, e.g. image {row[IMAGE_ID]} model {row['model']} (sum "
            f"{np.nansum(probs[i]):.4f}); prob_<CLASS> columns must be softmax outputs."
        )
    df[prob_columns(classes)] = probs

    per_image = df.groupby(IMAGE_ID, sort=True).agg(
        n_models=("model", "nunique"),
        n_folds=(FOLD, "nunique"),
        n_labels=(LABEL, "nunique"),
    )
    for col, what in (("n_folds", "fold"), ("n_labels", "label")):
        multi = per_image[per_image[col] > 1]
        if len(multi):
            raise DataError(
                f"{source}: image {multi.index[0]} has different {what} values across models "
                f"({len(multi)} such images); every model must use the same {what} per image."
            )
    dropped: tuple[str, ...] = ()
    incomplete = per_image[per_image["n_models"] < len(model_ids)]
    if len(incomplete):
        if not restrict:
            img = incomplete.index[0]
            have = set(df.loc[df[IMAGE_ID] == img, "model"])
            lacking = [m for m in model_ids if m not in have]
            raise DataError(
                f"{source} has no out-of-fold predictions from some model for "
                f"{len(incomplete)} of {len(per_image)} images, e.g. image {img} lacks model "
                f"{lacking[0]}; finish training, pass models=[...] to stack only complete "
                f"models, or restrict=True (--restrict) to drop those images."
            )
        dropped = tuple(str(i) for i in incomplete.index)
        df = df[~df[IMAGE_ID].isin(set(dropped))]

    wide = df.pivot(index=IMAGE_ID, columns="model", values=prob_columns(classes))
    out = pd.DataFrame(index=pd.Index(sorted(df[IMAGE_ID].unique()), name=IMAGE_ID))
    first = df.drop_duplicates(IMAGE_ID).set_index(IMAGE_ID)
    out[LABEL] = first.loc[out.index, LABEL].astype(str).to_numpy()
    out[FOLD] = pd.to_numeric(first.loc[out.index, FOLD], errors="coerce").to_numpy()
    if out[FOLD].isna().any():
        raise DataError(f"{source}: the fold column must be an integer for every row.")
    out[FOLD] = out[FOLD].astype(int)
    for m in model_ids:
        for pc, wc in zip(prob_columns(classes), wide_columns(m, classes), strict=True):
            out[wc] = wide[(pc, m)].reindex(out.index).to_numpy(dtype=float)
    return WideOOF(table=out, models=model_ids, classes=classes, dropped=dropped)


def _validate_wide(
    table: pd.DataFrame,
    *,
    classes: Sequence[str] | None,
    models: Sequence[str] | None,
    source: str,
) -> WideOOF:
    cols = [str(c) for c in table.columns if WIDE_SEP + PROB_PREFIX in str(c)]
    pairs = [c.split(WIDE_SEP + PROB_PREFIX, 1) for c in cols]
    all_models = tuple(sorted({m for m, _ in pairs}))
    table_classes = tuple(dict.fromkeys(c for _, c in pairs))
    classes = tuple(classes) if classes is not None else table_classes
    for m in all_models:
        have = tuple(c for mm, c in pairs if mm == m)
        if set(have) != set(classes):
            raise DataError(
                f"{source}: model {m} has probability columns for {list(have)} but the classes "
                f"are {list(classes)}; stack only models trained on the same classes."
            )
    long = []
    t = table.reset_index() if IMAGE_ID not in table.columns else table
    for m in all_models:
        part = pd.DataFrame({IMAGE_ID: t[IMAGE_ID], "model": m, FOLD: t[FOLD], LABEL: t[LABEL]})
        for c in classes:
            part[PROB_PREFIX + c] = t[f"{m}{WIDE_SEP}{PROB_PREFIX}{c}"].to_numpy()
        long.append(part.dropna(subset=[PROB_PREFIX + c for c in classes], how="all"))
    return oof_to_wide(pd.concat(long, ignore_index=True), classes=classes, models=models,
                       source=source)


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
        Optional ``quality.csv`` table: ``image_id`` + numeric measures; each becomes
        ``q_<name>`` (NaN for images without a row).
    include_probs, include_metadata:
        Which groups of features to build (metadata-only and probabilities-only baselines).
    include_mean:
        With ``include_probs``, also add the ensemble mean probability (or its log) of each
        class, ``p__mean__<C>``: trees find an average hard to build from splits alone.
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
        Images without a metadata row, missing metadata columns, non-numeric quality.

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
        quality_columns = tuple(
            c for c in quality.columns
            if c not in (IMAGE_ID, "error") and _numeric_like(quality[c])
        )  # quality.csv's "error" column is all-NaN (numeric-like) when every image decoded
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


def _numeric_like(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)


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


def wide_from_probs(
    image_ids: Sequence[str],
    probs: Mapping[str, np.ndarray],
    classes: Sequence[str],
) -> WideOOF:
    """A :class:`WideOOF` from per-model ``(N, K)`` probabilities (prediction time).

    ``label`` is unknown at prediction time and set to the first class; ``fold`` to -1; neither
    is ever a feature.
    """
    classes = tuple(classes)
    ids = [str(i) for i in image_ids]
    table = pd.DataFrame(index=pd.Index(ids, name=IMAGE_ID))
    table[LABEL] = classes[0]
    table[FOLD] = -1
    for m in sorted(probs):
        p = np.asarray(probs[m], dtype=float)
        if p.shape != (len(ids), len(classes)):
            raise DataError(
                f"Model {m} gave probabilities of shape {p.shape}; expected "
                f"({len(ids)}, {len(classes)}) for {len(ids)} images and classes {list(classes)}."
            )
        for k, wc in enumerate(wide_columns(m, classes)):
            table[wc] = p[:, k]
    return WideOOF(table=table, models=tuple(sorted(probs)), classes=classes)


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


def ensemble_feature_arrays(stacked: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`skin_core.meta.referral.ensemble_features` as NumPy columns (fast path).

    Parameters
    ----------
    stacked:
        ``(M, N, K)`` probabilities.

    Returns
    -------
    dict
        Name -> ``(N,)`` float64 for every name of
        :data:`skin_core.meta.referral.ENSEMBLE_FEATURES`; ``ens_pred`` is the index of the
        ensemble's class (the code of the pandas categorical over the classes).
    """
    from skin_core.meta.referral import _entropy  # the same function as the pandas path

    stacked = np.asarray(stacked, dtype=float)
    m, n, k = stacked.shape
    mean = stacked.mean(axis=0)
    srt = np.sort(mean, axis=1)
    pred = mean.argmax(axis=1)
    model_preds = stacked.argmax(axis=2)
    js = np.zeros(n)
    if m > 1:
        pairs = 0
        for a in range(m):
            for b in range(a + 1, m):
                mid = 0.5 * (stacked[a] + stacked[b])
                js += _entropy(mid) - 0.5 * (_entropy(stacked[a]) + _entropy(stacked[b]))
                pairs += 1
        js /= pairs
    top_probs = stacked[:, np.arange(n), pred]
    return {
        "ens_entropy": _entropy(mean),
        "ens_max_prob": srt[:, -1],
        "ens_margin": srt[:, -1] - (srt[:, -2] if k > 1 else 0.0),
        "ens_pred": pred.astype(float),
        "disagree_frac": (model_preds != pred[None, :]).mean(axis=0),
        "mean_pairwise_js": np.maximum(js, 0.0),
        "top_prob_std": top_probs.std(axis=0),
    }
