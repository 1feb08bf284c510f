"""Missing metadata: named subsets, masking, and masked training copies.

A patient's age, sex or anatomical site may be unknown at prediction time, in any
combination. A meta-classifier trained only on the rows as they come (where metadata is
mostly present) does not learn what to do without it: on real HAM10000 its balanced accuracy
fell from 0.722 to 0.629 with all three missing, below the plain mean ensemble (0.700;
docs/meta.md).

So the meta-classifier with metadata is trained on the rows **plus** ``copies`` copies of
them in which one non-empty subset of ``age, sex, site`` (drawn uniformly and seeded per copy
and row) is set to missing exactly as :func:`~skin_core.meta.features.build_features` encodes
a missing value: ``age_approx`` NaN, ``sex`` / ``anatom_site_general`` the ``unknown``
category. A copy keeps its image's lesion group, so the inner tuning split and the outer
folds stay lesion-grouped: an image and its copies are always on the same side.

:data:`MISSING_SUBSETS` names every subset (``none``, ``age``, ``sex``, ``site``,
``age+sex``, ``age+site``, ``sex+site``, ``all``); the nested cross-validation reports the
meta-classifier's balanced accuracy with each one masked in the validation fold.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd

from skin_core.constants import AGE, SEX, SITE
from skin_core.errors import ConfigError
from skin_core.meta.features import UNKNOWN

#: The metadata columns a user may leave empty, in order.
METADATA_COLUMNS: tuple[str, ...] = (AGE, SEX, SITE)
_SHORT = {AGE: "age", SEX: "sex", SITE: "site"}


def _subset_name(columns: Sequence[str]) -> str:
    if not columns:
        return "none"
    if len(columns) == len(METADATA_COLUMNS):
        return "all"
    return "+".join(_SHORT[c] for c in columns)


#: Name -> the metadata columns missing, for every subset (``none`` first, ``all`` last).
MISSING_SUBSETS: dict[str, tuple[str, ...]] = {
    _subset_name(cols): cols
    for r in range(len(METADATA_COLUMNS) + 1)
    for cols in itertools.combinations(METADATA_COLUMNS, r)
}

#: The non-empty subsets, the ones a masked training copy draws from.
MASKED_SUBSETS: tuple[str, ...] = tuple(name for name in MISSING_SUBSETS if name != "none")


def mask_metadata(X: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """A copy of feature matrix ``X`` with ``columns`` missing for every row.

    ``age_approx`` becomes NaN; ``sex`` / ``anatom_site_general`` become ``unknown`` (the
    categories are kept). Columns ``X`` does not have are skipped.
    """
    out = X.copy()
    rows = np.ones(len(X), dtype=bool)
    for col in columns:
        if col in out.columns:
            out[col] = _masked_column(out[col], rows)
    return out


def _masked_column(values: pd.Series, rows: np.ndarray) -> pd.Series | np.ndarray:
    if isinstance(values.dtype, pd.CategoricalDtype):
        cats = list(values.cat.categories)
        codes = values.cat.codes.to_numpy().copy()
        codes[rows] = cats.index(UNKNOWN)
        return pd.Categorical.from_codes(codes, categories=cats)
    v = values.to_numpy(dtype=float).copy()
    v[rows] = np.nan
    return v


def draw_masks(n: int, *, copies: int, seed: int | Sequence[int]) -> np.ndarray:
    """``(copies, n)`` indices into :data:`MASKED_SUBSETS`: which subset each copy of each row
    loses (uniform, seeded)."""
    if copies < 0:
        raise ConfigError(f"The 'masked_copies' parameter must be 0 or more. Got {copies!r}.")
    rng = np.random.default_rng(seed)
    return rng.integers(0, len(MASKED_SUBSETS), size=(copies, n))


def with_masked_copies(X: pd.DataFrame, masks: np.ndarray) -> pd.DataFrame:
    """``X`` followed by one copy per row of ``masks`` (from :func:`draw_masks`), each row of a
    copy with its drawn subset of the metadata missing.

    The result has ``len(X) * (1 + len(masks))`` rows: the originals first (positions
    ``0 .. len(X) - 1``), then copy 1, copy 2... (row ``i`` of a copy is a copy of row ``i``);
    the index repeats ``X.index``. Metadata columns ``X`` does not have are skipped, so the
    same masks apply to the meta-classifier's and the referral model's features.
    """
    parts = [X]
    for which in masks:
        copy = X.copy()
        for col in METADATA_COLUMNS:
            if col not in copy.columns:
                continue
            rows = np.isin(which, [j for j, name in enumerate(MASKED_SUBSETS)
                                   if col in MISSING_SUBSETS[name]])
            copy[col] = _masked_column(copy[col], rows)
        parts.append(copy)
    return pd.concat(parts) if len(parts) > 1 else X


def repeat_for_copies(values: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``values`` (labels, lesion groups...) repeated for the originals and every copy, in the
    row order of :func:`with_masked_copies`."""
    return np.concatenate([np.asarray(values)] * (1 + len(masks)))


__all__ = [
    "MASKED_SUBSETS", "METADATA_COLUMNS", "MISSING_SUBSETS", "draw_masks", "mask_metadata",
    "repeat_for_copies", "with_masked_copies",
]
