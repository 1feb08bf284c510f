"""Consistently misclassified ("difficult") images, rankings and label-issue scores.

Vocabulary (DESIGN.md): ``labels`` is an ``(N,)`` array of class indices, ``pred_probs_list``
a stack of ``M`` out-of-fold ``(N, K)`` probability matrices (one per model, as an
``(M, N, K)`` array or a list), ``classes`` the ``K`` class codes.

A model is *wrong* on an image when the arg-max of its probabilities is not the label (ties
go to the first class, as ``numpy.argmax``).  Per image:

``n_models``        ``M``
``n_wrong``         models that are wrong
``wrong_frac``      ``n_wrong / M``
``majority_pred``   plurality vote of the models' predictions (ties -> highest mean probability)
``mean_true_prob``  mean over models of the probability of the labelled class
``label_quality``   cleanlab ``get_label_quality_ensemble_scores`` (self-confidence, members
                    weighted by accuracy); low = the label looks wrong to the ensemble
``likely_mislabeled`` cleanlab ``find_label_issues`` on the mean probabilities
                    (confident learning, ``prune_by_noise_rate``): "probably mislabeled" rather
                    than "hard"
``group``           ``difficult`` (wrong by all ``M`` models: the study's definition, or by
                    ``>= min_wrong``), ``control`` (right by all), else ``other``
``lesion_id``       when the OOF table carries lesion ids (empty: none known for the image)

OOF files (``oof.csv``, long: ``image_id, model, arch, fold, label, prob_<CLASS>...``, and
optionally ``lesion_id``) are read and validated by :func:`read_oof`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from skin_core.constants import (
    GROUP_CONTROL,
    GROUP_DIFFICULT,
    GROUP_OTHER,
    IMAGE_ID,
    LABEL,
    LESION_ID,
    PROB_PREFIX,
    prob_columns,
)
from skin_core.errors import ConfigError, DataError

__all__ = [
    "BY_CHOICES",
    "DIFFICULTY_COLUMNS",
    "OOF",
    "RANK_METHODS",
    "compute_difficulty",
    "error_consistency",
    "find_difficult_images",
    "ground_truth_check",
    "model_errors",
    "oof_from_frame",
    "rank_images",
    "read_oof",
]

#: ``difficulty.csv`` columns (DESIGN.md), followed by ``likely_mislabeled`` and ``pred_<model>``.
DIFFICULTY_COLUMNS: tuple[str, ...] = (
    IMAGE_ID, LABEL, "n_models", "n_wrong", "wrong_frac", "majority_pred", "mean_true_prob",
    "label_quality", "group",
)

#: How OOF rows become models: keep ``model`` ids, or pool them per ``arch``.
BY_CHOICES: tuple[str, ...] = ("model", "arch")

#: Orderings offered by :func:`rank_images` (most difficult first).
RANK_METHODS: tuple[str, ...] = ("mean_true_prob", "wrong_frac", "label_quality")

#: Tolerance on probability rows summing to 1, and on probabilities leaving [0, 1].
SUM_TOLERANCE = 1e-3
RANGE_TOLERANCE = 1e-6

MODEL = "model"
ARCH = "arch"


# --------------------------------------------------------------------------------------------
# OOF tables
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class OOF:
    """Out-of-fold predictions of ``M`` models on the same ``N`` images, as arrays.

    Attributes
    ----------
    image_ids:
        ``(N,)`` image ids (object array of str), in first-appearance order of the file.
    labels:
        ``(N,)`` integer class indices into ``classes``.
    pred_probs:
        ``(M, N, K)`` float64 probabilities, rows summing to 1.
    models:
        The ``M`` model names (``model`` ids, or ``arch`` names with ``by="arch"``).
    classes:
        The ``K`` class codes, in column order.
    source:
        Where the table came from (a path or ``"<DataFrame>"``).
    n_dropped_images:
        Images left out because some model had no prediction (``on_missing="drop"``).
    members:
        ``model`` -> the ``model`` ids pooled into it (with ``by="arch"``; identity otherwise).
    lesion_ids:
        ``(N,)`` lesion id of each image (object array, ``None`` where unknown) when the table
        has a ``lesion_id`` column; ``None`` otherwise.
    """

    image_ids: np.ndarray
    labels: np.ndarray
    pred_probs: np.ndarray
    models: tuple[str, ...]
    classes: tuple[str, ...]
    source: str = ""
    n_dropped_images: int = 0
    members: dict[str, tuple[str, ...]] = field(default_factory=dict)
    lesion_ids: np.ndarray | None = None

    @property
    def n_images(self) -> int:
        """``N``."""
        return int(self.labels.size)

    @property
    def n_models(self) -> int:
        """``M``."""
        return len(self.models)

    @property
    def pred_probs_list(self) -> list[np.ndarray]:
        """The ``M`` ``(N, K)`` matrices as a list (cleanlab's ``pred_probs_list``)."""
        return list(self.pred_probs)

    def errors(self) -> np.ndarray:
        """``(M, N)`` boolean matrix: model ``m`` misclassifies image ``i``."""
        return model_errors(self.labels, self.pred_probs)


def _where(source: str, line: int | None = None) -> str:
    return f"{source} line {line}" if line is not None else source


def _line(pos: int) -> int:
    """File line of the data row at position ``pos`` (line 1 is the header)."""
    return int(pos) + 2


def read_oof(
    path: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    by: str = "model",
    renormalize: bool = False,
    on_missing: str = "error",
    on_duplicate: str = "error",
) -> OOF:
    """Read and validate an ``oof.csv`` into an :class:`OOF`.

    Parameters
    ----------
    path:
        Long CSV: ``image_id, model, label, prob_<CLASS>...`` (``arch``, ``fold``,
        ``lesion_id`` and other columns optional; ``arch`` defaults to ``model`` up to an
        ``@``). ``lesion_id`` (empty where unknown) must be the same on every row of an image.
    classes:
        Expected class codes in order; default: the ``prob_<CLASS>`` columns in file order.
        Every class needs its ``prob_`` column and no other ``prob_`` column may appear.
    by:
        ``"model"`` keeps each ``model`` id (e.g. ``efficientnet_b0@s1``) as one model;
        ``"arch"`` pools the members of each ``arch`` by averaging, per image, the
        probabilities of the members that scored it (fold predictions combined per image).
    renormalize:
        Divide each probability row by its sum instead of refusing rows that do not sum to
        1 within 1e-3 (probabilities must still lie in [0, 1]).
    on_missing:
        ``"error"`` (default): every model must score every image; ``"drop"``: keep only the
        images all models scored (the count left out is in ``n_dropped_images``).
    on_duplicate:
        ``"error"`` (default): an ``(image_id, model)`` pair may appear once (a K-fold OOF
        scores each image once per model; duplicates usually mean concatenated runs);
        ``"mean"``: average repeated rows (e.g. repeated cross-validation of one model).

    Returns
    -------
    OOF

    Raises
    ------
    DataError
        Unreadable file, missing columns, non-numeric / out-of-range probabilities, rows
        not summing to 1, labels outside ``classes``, an image with two labels, duplicates,
        models missing for some images: one sentence naming the file, line, image and model.
    ConfigError
        Bad ``by`` / ``on_missing`` / ``on_duplicate``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"OOF file {path} does not exist; pass the oof.csv written by "
                        f"'skin-core train'.")
    try:
        df = pd.read_csv(path, dtype={IMAGE_ID: str, MODEL: str, ARCH: str, LABEL: str,
                                      LESION_ID: str},
                         keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"OOF file {path} cannot be read as CSV ({e}); expected columns "
                        f"image_id, model, label, prob_<CLASS>...") from e
    return oof_from_frame(df, classes=classes, by=by, renormalize=renormalize,
                          on_missing=on_missing, on_duplicate=on_duplicate, source=path)


def _choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(f"The '{name}' parameter of read_oof must be one of "
                          f"{sorted(choices)}. Got {value!r} instead.")
    return value


def oof_from_frame(
    df: pd.DataFrame,
    *,
    classes: Sequence[str] | None = None,
    by: str = "model",
    renormalize: bool = False,
    on_missing: str = "error",
    on_duplicate: str = "error",
    source: str = "<DataFrame>",
) -> OOF:
    """Validate an in-memory long OOF table; same contract as :func:`read_oof`.

    ``source`` names the table in error messages; line numbers count the header as line 1
    (they match the CSV file when the frame was read from one).
    """
    _choice("by", by, BY_CHOICES)
    _choice("on_missing", on_missing, ("error", "drop"))
    _choice("on_duplicate", on_duplicate, ("error", "mean"))
    df = df.reset_index(drop=True)
    if len(df) == 0:
        raise DataError(f"OOF table {source} has no rows; expected one row per image per model.")
    missing = [c for c in (IMAGE_ID, MODEL, LABEL) if c not in df.columns]
    if missing:
        raise DataError(f"OOF table {source} lacks column(s) {', '.join(missing)}; expected "
                        f"image_id, model, arch, fold, label, prob_<CLASS>...")
    found = [c[len(PROB_PREFIX):] for c in df.columns if str(c).startswith(PROB_PREFIX)]
    if classes is None:
        if not found:
            raise DataError(f"OOF table {source} has no prob_<CLASS> columns; expected one "
                            f"probability column per class.")
        classes = tuple(found)
    else:
        classes = tuple(str(c) for c in classes)
        absent = [c for c in classes if c not in found]
        if absent:
            raise DataError(f"OOF table {source} lacks probability column(s) "
                            f"{', '.join(prob_columns(absent))} for the expected classes "
                            f"{', '.join(classes)}; add them or pass the file's classes.")
        extra = [c for c in found if c not in classes]
        if extra:
            raise DataError(f"OOF table {source} has probability column(s) "
                            f"{', '.join(prob_columns(extra))} for classes outside "
                            f"{', '.join(classes)}; drop them or pass the full class list.")
    if len(set(classes)) != len(classes):
        raise DataError(f"OOF table {source}: duplicate classes in {', '.join(classes)}.")

    for col in (IMAGE_ID, MODEL, LABEL):
        bad = df[col].isna() | (df[col].astype(str).str.strip() == "")
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"OOF table {_where(source, _line(pos))}: column '{col}' is empty "
                            f"({int(bad.sum())} row(s) like this); every row needs image_id, "
                            f"model and label.")
    image_ids = df[IMAGE_ID].astype(str).str.strip().to_numpy(dtype=object)
    model_ids = df[MODEL].astype(str).str.strip().to_numpy(dtype=object)
    label_str = df[LABEL].astype(str).str.strip().to_numpy(dtype=object)

    probs = _probabilities(df, classes, source, model_ids, image_ids, renormalize)

    label_codes = pd.Index(list(classes)).get_indexer(label_str).astype(np.int64)
    bad = label_codes < 0
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        others = sorted(set(label_str[bad]))
        raise DataError(f"OOF table {_where(source, _line(pos))} (image_id {image_ids[pos]}): "
                        f"label {label_str[pos]!r} is not one of the classes "
                        f"{', '.join(classes)} ({int(bad.sum())} row(s) with label(s) "
                        f"{', '.join(map(repr, others[:5]))}); fix the labels or pass the "
                        f"matching classes.")

    img_codes, img_uniques = pd.factorize(pd.Series(image_ids))
    n_img = len(img_uniques)
    _, first_row = np.unique(img_codes, return_index=True)  # first row of each image
    first_label = label_codes[first_row]
    conflict = first_label[img_codes] != label_codes
    if conflict.any():
        pos = int(np.flatnonzero(conflict)[0])
        raise DataError(f"OOF table {_where(source, _line(pos))} (image_id {image_ids[pos]}, "
                        f"model {model_ids[pos]}): label {label_str[pos]!r} differs from "
                        f"label {classes[first_label[img_codes[pos]]]!r} in an earlier row "
                        f"of the same image ({int(conflict.sum())} row(s)); every row of an "
                        f"image must carry its one true label.")

    mod_codes, mod_uniques = pd.factorize(pd.Series(model_ids))
    pair = img_codes.astype(np.int64) * len(mod_uniques) + mod_codes
    dup = pd.Series(pair).duplicated(keep="first").to_numpy()
    if dup.any() and on_duplicate == "error":
        pos = int(np.flatnonzero(dup)[0])
        raise DataError(f"OOF table {_where(source, _line(pos))}: image_id {image_ids[pos]} "
                        f"has a second row for model {model_ids[pos]} ({int(dup.sum())} "
                        f"duplicate (image_id, model) row(s)); keep one row per image per "
                        f"model, or pass on_duplicate='mean' to average repeats.")

    if by == "arch":
        if ARCH in df.columns and not df[ARCH].isna().any():
            units = df[ARCH].astype(str).str.strip().to_numpy(dtype=object)
        else:
            units = np.array([m.split("@", 1)[0] for m in model_ids], dtype=object)
    else:
        units = model_ids
    unit_codes, unit_uniques = pd.factorize(pd.Series(units))
    models = tuple(str(u) for u in unit_uniques)
    n_units = len(models)
    members: dict[str, tuple[str, ...]] = {}
    for u, name in enumerate(models):
        members[name] = tuple(dict.fromkeys(model_ids[unit_codes == u]))

    flat = unit_codes.astype(np.int64) * n_img + img_codes
    counts = np.bincount(flat, minlength=n_units * n_img).reshape(n_units, n_img)
    sums = np.stack([np.bincount(flat, weights=probs[:, k], minlength=n_units * n_img)
                     for k in range(len(classes))], axis=-1).reshape(n_units, n_img, -1)
    have = counts > 0
    keep = have.all(axis=0)
    n_dropped = int((~keep).sum())
    if n_dropped:
        per_model = ", ".join(f"{name}: {int((~have[u]).sum())}"
                              for u, name in enumerate(models) if not have[u].all())
        if on_missing == "error" or not keep.any():
            first = str(img_uniques[int(np.flatnonzero(~keep)[0])])
            hint = ("no image was scored by all models; check that the runs belong together"
                    if not keep.any() else
                    f"pass on_missing='drop' (--common-images) to keep the {int(keep.sum())} "
                    f"images all models scored")
            raise DataError(f"OOF table {source}: {n_dropped} of {n_img} images lack "
                            f"predictions from some of the {n_units} models (images missing "
                            f"per model: {per_model}; first: {first}); {hint}.")
    with np.errstate(invalid="ignore", divide="ignore"):
        pred_probs = sums[:, keep, :] / counts[:, keep, None]
    lesion_ids = _lesion_ids(df, source, img_codes, n_img, image_ids)
    return OOF(
        image_ids=np.asarray(img_uniques, dtype=object)[keep],
        labels=first_label[keep],
        pred_probs=pred_probs,
        models=models,
        classes=classes,
        source=source,
        n_dropped_images=n_dropped,
        members=members,
        lesion_ids=None if lesion_ids is None else lesion_ids[keep],
    )


def _lesion_ids(df: pd.DataFrame, source: str, img_codes: np.ndarray, n_img: int,
                image_ids: np.ndarray) -> np.ndarray | None:
    """Per-image lesion id from an optional ``lesion_id`` column (``None`` where missing)."""
    if LESION_ID not in df.columns:
        return None
    raw = df[LESION_ID]
    text = raw.astype(str).str.strip()
    known = (~raw.isna() & (text != "")).to_numpy()
    out = np.full(n_img, None, dtype=object)
    if not known.any():
        return out
    pairs = pd.DataFrame({"img": img_codes[known], "lesion": text.to_numpy()[known],
                          "pos": np.flatnonzero(known)}).drop_duplicates(["img", "lesion"])
    twice = pairs["img"].duplicated(keep="first").to_numpy()
    if twice.any():
        pos = int(pairs["pos"].to_numpy()[twice][0])
        first = pairs.loc[pairs["img"] == img_codes[pos], "lesion"].iloc[0]
        raise DataError(f"OOF table {_where(source, _line(pos))} (image_id {image_ids[pos]}): "
                        f"lesion_id {text.iloc[pos]!r} differs from lesion_id {first!r} in an "
                        f"earlier row of the same image; every row of an image must carry "
                        f"its one lesion id.")
    out[pairs["img"].to_numpy()] = pairs["lesion"].to_numpy()
    return out


def _probabilities(
    df: pd.DataFrame, classes: Sequence[str], source: str,
    model_ids: np.ndarray, image_ids: np.ndarray, renormalize: bool,
) -> np.ndarray:
    cols = prob_columns(classes)
    block = df[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(block)
    if bad.any():
        pos, k = (int(v[0]) for v in np.nonzero(bad))
        raw = df[cols[k]].iloc[pos]
        raise DataError(f"OOF table {_where(source, _line(pos))} (image_id {image_ids[pos]}, "
                        f"model {model_ids[pos]}): column {cols[k]} holds {raw!r}, expected a "
                        f"probability in [0, 1] ({int(bad.any(axis=1).sum())} row(s) affected).")
    out = (block < -RANGE_TOLERANCE) | (block > 1 + RANGE_TOLERANCE)
    if out.any():
        pos, k = (int(v[0]) for v in np.nonzero(out))
        raise DataError(f"OOF table {_where(source, _line(pos))} (image_id {image_ids[pos]}, "
                        f"model {model_ids[pos]}): {cols[k]} = {block[pos, k]:g} is outside "
                        f"[0, 1] ({int(out.any(axis=1).sum())} row(s) affected); write "
                        f"probabilities (softmax outputs), not logits.")
    block = np.clip(block, 0.0, 1.0)
    sums = block.sum(axis=1)
    off = np.abs(sums - 1.0) > SUM_TOLERANCE
    if off.any():
        pos = int(np.flatnonzero(off)[0])
        if not renormalize or np.any(sums[off] <= 0):
            hint = ("a row of zeros cannot be renormalised; fix the file" if renormalize else
                    "fix the file or pass renormalize=True (--renormalize) to divide each row "
                    "by its sum")
            raise DataError(f"OOF table {_where(source, _line(pos))} (image_id "
                            f"{image_ids[pos]}, model {model_ids[pos]}): probabilities sum to "
                            f"{sums[pos]:.6g}, expected 1 within {SUM_TOLERANCE:g} "
                            f"({int(off.sum())} row(s) affected); {hint}.")
    return block / sums[:, None]


# --------------------------------------------------------------------------------------------
# functional API over labels and pred_probs
# --------------------------------------------------------------------------------------------


def _check(labels: Any, pred_probs_list: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``labels`` (N,) and ``pred_probs_list`` (M, N, K); return arrays."""
    try:
        probs = np.asarray(pred_probs_list, dtype=float)
    except ValueError as e:
        raise DataError("The 'pred_probs_list' must be M arrays of the same shape (N, K).") from e
    if probs.ndim != 3 or 0 in probs.shape:
        raise DataError(f"The 'pred_probs_list' must have shape (M models, N images, K classes) "
                        f"with M, N, K >= 1; got shape {probs.shape}.")
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.size != probs.shape[1]:
        raise DataError(f"The 'labels' must be 1-D with one class index per image "
                        f"({probs.shape[1]}); got shape {lab.shape}.")
    if not np.issubdtype(lab.dtype, np.integer):
        raise DataError(f"The 'labels' must be integer class indices; got dtype {lab.dtype}.")
    if lab.min() < 0 or lab.max() >= probs.shape[2]:
        raise DataError(f"The 'labels' must be class indices in 0..{probs.shape[2] - 1}; found "
                        f"values from {lab.min()} to {lab.max()}.")
    if not np.all(np.isfinite(probs)):
        raise DataError("The 'pred_probs_list' holds NaN or infinite values.")
    return lab.astype(np.int64, copy=False), probs


def _min_wrong(min_wrong: int | None, n_models: int) -> int:
    if min_wrong is None:
        return n_models
    if isinstance(min_wrong, bool) or not isinstance(min_wrong, (int, np.integer)) \
            or not 1 <= int(min_wrong) <= n_models:
        raise ConfigError(f"The 'min_wrong' parameter must be an integer from 1 to {n_models} "
                          f"(the number of models); got {min_wrong!r}.")
    return int(min_wrong)


def model_errors(labels: Any, pred_probs_list: Any) -> np.ndarray:
    """``(M, N)`` boolean matrix: model ``m``'s arg-max prediction differs from ``labels[i]``.

    Parameters
    ----------
    labels:
        ``(N,)`` integer class indices.
    pred_probs_list:
        ``(M, N, K)`` probabilities (array or list of ``(N, K)`` arrays).
    """
    lab, probs = _check(labels, pred_probs_list)
    return probs.argmax(axis=2) != lab[None, :]


def find_difficult_images(
    labels: Any, pred_probs_list: Any, *, min_wrong: int | None = None
) -> np.ndarray:
    """Mask of images misclassified by all models (or by at least ``min_wrong`` of them).

    Parameters
    ----------
    labels:
        ``(N,)`` integer class indices.
    pred_probs_list:
        ``(M, N, K)`` out-of-fold probabilities.
    min_wrong:
        ``m`` of ``M``; default ``M`` (the study's "wrong by all models").

    Returns
    -------
    numpy.ndarray
        ``(N,)`` boolean mask (``compute_difficulty`` gives the per-image table).

    Examples
    --------
    >>> p = np.array([[[0.9, 0.1], [0.2, 0.8]], [[0.6, 0.4], [0.7, 0.3]]])
    >>> find_difficult_images(np.array([1, 1]), p).tolist()
    [True, False]
    """
    errors = model_errors(labels, pred_probs_list)
    m = _min_wrong(min_wrong, errors.shape[0])
    return errors.sum(axis=0) >= m


def _label_quality(lab: np.ndarray, probs: np.ndarray) -> np.ndarray:
    from cleanlab.rank import get_label_quality_ensemble_scores

    if probs.shape[0] == 1:
        from cleanlab.rank import get_label_quality_scores

        return np.asarray(get_label_quality_scores(lab, probs[0]), dtype=float)
    return np.asarray(get_label_quality_ensemble_scores(lab, list(probs), verbose=False),
                      dtype=float)


def rank_images(
    labels: Any, pred_probs_list: Any, *, method: str = "mean_true_prob"
) -> np.ndarray:
    """Image indices ordered from most to least difficult.

    Parameters
    ----------
    labels:
        ``(N,)`` integer class indices.
    pred_probs_list:
        ``(M, N, K)`` out-of-fold probabilities.
    method:
        ``"mean_true_prob"`` (ascending mean probability of the labelled class),
        ``"wrong_frac"`` (descending fraction of wrong models, ties by ascending mean true
        probability) or ``"label_quality"`` (ascending cleanlab ensemble label quality).

    Returns
    -------
    numpy.ndarray
        ``(N,)`` permutation of ``0..N-1`` (stable for ties).
    """
    if method not in RANK_METHODS:
        raise ConfigError(f"The 'method' parameter of rank_images must be one of "
                          f"{set(RANK_METHODS)}. Got {method!r} instead.")
    lab, probs = _check(labels, pred_probs_list)
    true_prob = probs[:, np.arange(lab.size), lab].mean(axis=0)
    if method == "mean_true_prob":
        return np.argsort(true_prob, kind="stable")
    if method == "wrong_frac":
        n_wrong = (probs.argmax(axis=2) != lab).sum(axis=0)
        return np.lexsort((true_prob, -n_wrong))
    return np.argsort(_label_quality(lab, probs), kind="stable")


def error_consistency(
    labels: Any, pred_probs_list: Any, *, models: Sequence[str] | None = None
) -> pd.DataFrame:
    """Pairwise Cohen's kappa between the models' error indicators.

    Parameters
    ----------
    labels:
        ``(N,)`` integer class indices.
    pred_probs_list:
        ``(M, N, K)`` out-of-fold probabilities.
    models:
        ``M`` names for the rows/columns (default ``model_0..``).

    Returns
    -------
    pandas.DataFrame
        ``(M, M)`` symmetric matrix of kappa on the binary "wrong" indicators, as
        ``sklearn.metrics.cohen_kappa_score`` (1 on the diagonal; 0 against a model that is
        right, or wrong, on every image; NaN where both models are constant, since chance
        agreement is then 1 and kappa undefined). 0 = errors overlap as often as chance,
        1 = identical errors.
    """
    errors = model_errors(labels, pred_probs_list).astype(float)
    n_models, n = errors.shape
    names = list(models) if models is not None else [f"model_{i}" for i in range(n_models)]
    if len(names) != n_models:
        raise DataError(f"Got {len(names)} model names for {n_models} models.")
    rate = errors.mean(axis=1)
    both = errors @ errors.T / n
    agree = 1.0 - rate[:, None] - rate[None, :] + 2.0 * both
    chance = rate[:, None] * rate[None, :] + (1 - rate[:, None]) * (1 - rate[None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = np.where(chance < 1.0, (agree - chance) / (1.0 - chance), np.nan)
    return pd.DataFrame(kappa, index=names, columns=names)


def _majority(preds: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Plurality vote per image; ties go to the class with the highest mean probability."""
    n_models, n = preds.shape
    k = probs.shape[2]
    votes = np.zeros((n, k))
    np.add.at(votes, (np.tile(np.arange(n), n_models), preds.ravel()), 1.0)
    # mean probability < 1, halved: breaks ties without overturning a one-vote difference
    return (votes + 0.5 * probs.mean(axis=0)).argmax(axis=1)


def _likely_mislabeled(lab: np.ndarray, mean_probs: np.ndarray) -> np.ndarray:
    from cleanlab.filter import find_label_issues

    present = np.unique(lab)
    if present.size < 2:
        return np.zeros(lab.size, dtype=bool)
    # cleanlab needs every column to be a class that occurs; restrict to the present classes
    sub = mean_probs[:, present]
    sub = sub / np.clip(sub.sum(axis=1, keepdims=True), 1e-12, None)
    remap = np.searchsorted(present, lab)
    return np.asarray(find_label_issues(remap, sub, n_jobs=1), dtype=bool)


def compute_difficulty(
    oof: OOF,
    *,
    min_wrong: int | None = None,
    label_issues: bool = True,
) -> pd.DataFrame:
    """The per-image difficulty table (``difficulty.csv``).

    Parameters
    ----------
    oof:
        Validated predictions (:func:`read_oof` / :func:`oof_from_frame`).
    min_wrong:
        ``group = "difficult"`` for images wrong by at least ``min_wrong`` of the ``M``
        models; default ``M`` (wrong by all: the study's definition).
    label_issues:
        Compute the cleanlab columns (``label_quality``, ``likely_mislabeled``); when False
        they are NaN / False.

    Returns
    -------
    pandas.DataFrame
        One row per image, in ``oof.image_ids`` order: ``image_id, label, n_models, n_wrong,
        wrong_frac, majority_pred, mean_true_prob, label_quality, group, likely_mislabeled``
        and ``pred_<model>`` (each model's predicted class code); ``lesion_id`` after
        ``likely_mislabeled`` when ``oof.lesion_ids`` is known.
    """
    lab, probs = _check(oof.labels, oof.pred_probs)
    n_models, n, _ = probs.shape
    m = _min_wrong(min_wrong, n_models)
    classes = np.asarray(oof.classes, dtype=object)
    preds = probs.argmax(axis=2)
    n_wrong = (preds != lab).sum(axis=0)
    true_prob = probs[:, np.arange(n), lab].mean(axis=0)
    group = np.where(n_wrong >= m, GROUP_DIFFICULT,
                     np.where(n_wrong == 0, GROUP_CONTROL, GROUP_OTHER)).astype(object)
    if label_issues:
        quality = _label_quality(lab, probs)
        mislabeled = _likely_mislabeled(lab, probs.mean(axis=0))
    else:
        quality = np.full(n, np.nan)
        mislabeled = np.zeros(n, dtype=bool)
    data: dict[str, Any] = {
        IMAGE_ID: np.asarray(oof.image_ids, dtype=object),
        LABEL: classes[lab],
        "n_models": np.full(n, n_models, dtype=np.int64),
        "n_wrong": n_wrong.astype(np.int64),
        "wrong_frac": n_wrong / n_models,
        "majority_pred": classes[_majority(preds, probs)],
        "mean_true_prob": true_prob,
        "label_quality": quality,
        "group": group,
        "likely_mislabeled": mislabeled,
    }
    if oof.lesion_ids is not None:
        data[LESION_ID] = np.asarray(oof.lesion_ids, dtype=object)
    for j, name in enumerate(oof.models):
        data[f"pred_{name}"] = classes[preds[j]]
    return pd.DataFrame(data)


# --------------------------------------------------------------------------------------------
# ground truth of the demo generator
# --------------------------------------------------------------------------------------------

#: ``generation_truth.csv`` flags checked by :func:`ground_truth_check`.
TRUTH_FLAGS: tuple[str, ...] = ("is_ambiguous", "is_mislabeled", "is_blurred")


def _flag(series: pd.Series, name: str) -> np.ndarray:
    if series.dtype == bool:
        return series.to_numpy()
    text = series.astype(str).str.strip().str.lower()
    mapping = {"true": True, "1": True, "1.0": True, "false": False, "0": False, "0.0": False,
               "nan": False, "": False, "<na>": False, "none": False}
    mapped = text.map(mapping)
    if mapped.isna().any():
        raise DataError(f"Column {name} of the generation truth holds "
                        f"{series[mapped.isna()].iloc[0]!r}; expected True/False.")
    return mapped.to_numpy(dtype=bool)


def _pr(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    tp = int(np.sum(pred & truth))
    n_pred, n_true, n = int(pred.sum()), int(truth.sum()), int(truth.size)
    precision = tp / n_pred if n_pred else math.nan
    recall = tp / n_true if n_true else math.nan
    base = n_true / n if n else math.nan
    return {
        "n_flagged": n_true,
        "n_selected": n_pred,
        "n_both": tp,
        "precision": precision,
        "recall": recall,
        "base_rate": base,
        "enrichment": precision / base if n_pred and base > 0 else math.nan,
    }


def ground_truth_check(difficulty_df: pd.DataFrame, generation_truth_df: pd.DataFrame) -> dict:
    """How well ``difficult`` finds the demo generator's ambiguous, mislabeled, blurred images.

    Parameters
    ----------
    difficulty_df:
        ``difficulty.csv`` (``image_id``, ``group``; ``likely_mislabeled`` optional).
    generation_truth_df:
        ``generation_truth.csv`` of ``skin-core demo-data`` (``image_id`` and the boolean
        columns ``is_ambiguous``, ``is_mislabeled``, ``is_blurred``; absent ones are skipped).

    Returns
    -------
    dict
        ``n_images`` (matched on ``image_id``), ``n_unmatched`` (difficulty rows without
        truth), ``n_difficult``, then per flag (and ``ambiguous_or_mislabeled``) a dict with
        ``n_flagged``, ``n_selected`` (difficult images), ``n_both``, ``precision`` =
        P(flag | difficult), ``recall`` = P(difficult | flag), ``base_rate`` = P(flag) and
        ``enrichment`` = precision / base_rate (1 = no better than chance); and, when
        ``likely_mislabeled`` is present, ``likely_mislabeled_vs_is_mislabeled`` the same
        figures for cleanlab's flag.

    Raises
    ------
    DataError
        A table lacks ``image_id`` (or ``group``), or a flag is not boolean.
    """
    for name, frame, need in (("difficulty table", difficulty_df, (IMAGE_ID, "group")),
                              ("generation truth", generation_truth_df, (IMAGE_ID,))):
        lacking = [c for c in need if c not in frame.columns]
        if lacking:
            raise DataError(f"The {name} lacks column(s) {', '.join(lacking)}.")
    truth = generation_truth_df.drop_duplicates(IMAGE_ID).copy()
    truth[IMAGE_ID] = truth[IMAGE_ID].astype(str)
    diff = difficulty_df.copy()
    diff[IMAGE_ID] = diff[IMAGE_ID].astype(str)
    merged = diff.merge(truth, on=IMAGE_ID, how="inner", suffixes=("", "_truth"))
    difficult = (merged["group"].astype(str) == GROUP_DIFFICULT).to_numpy()
    out: dict[str, Any] = {
        "n_images": int(len(merged)),
        "n_unmatched": int(len(diff) - len(merged)),
        "n_difficult": int(difficult.sum()),
    }
    flags = {f: _flag(merged[f], f) for f in TRUTH_FLAGS if f in merged.columns}
    for name, truth_flag in flags.items():
        out[name] = _pr(difficult, truth_flag)
    if "is_ambiguous" in flags and "is_mislabeled" in flags:
        out["ambiguous_or_mislabeled"] = _pr(difficult,
                                             flags["is_ambiguous"] | flags["is_mislabeled"])
    if "is_mislabeled" in flags and "likely_mislabeled" in merged.columns:
        out["likely_mislabeled_vs_is_mislabeled"] = _pr(
            _flag(merged["likely_mislabeled"], "likely_mislabeled"), flags["is_mislabeled"])
    return out
