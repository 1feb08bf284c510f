"""OOF predictions as one row per image: validation and pivoting of the long OOF table.

:func:`oof_to_wide` validates a long OOF table (``image_id, model, arch, fold, label,
prob_<CLASS>...``; one row per image per model) and pivots it to a :class:`WideOOF`: one row
per image with one column ``"<model>:prob_<CLASS>"`` per model and class, plus ``label`` and
``fold``. :func:`wide_from_probs` builds the same from per-model arrays at prediction time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from skin_core.constants import FOLD, IMAGE_ID, LABEL, PROB_PREFIX, prob_columns
from skin_core.errors import ConfigError, DataError

#: Column name separator in the wide OOF table: ``"<model>:prob_<CLASS>"``.
WIDE_SEP = ":"
#: Tolerance on probability rows summing to one.
SUM_TOLERANCE = 1e-3


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
