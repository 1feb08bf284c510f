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

Code layout: this module is the public face (:func:`compute_difficulty`, the
``difficulty.csv`` table, and :func:`ground_truth_check` against the demo generator's truth).
Reading and validating OOF tables is in ``analysis/_difficulty_oof.py``, each model's errors
and the consistently misclassified images in ``analysis/_difficulty_errors.py``, and cleanlab's
label quality with the rankings in ``analysis/_difficulty_labels.py``. Their public names are
re-exported here: import them from ``skin_core.analysis.difficulty``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from skin_core.analysis._difficulty_errors import (
    _check,
    _majority,
    _min_wrong,
    error_consistency,
    find_difficult_images,
    model_errors,
)
from skin_core.analysis._difficulty_labels import (
    RANK_METHODS,
    _label_quality,
    _likely_mislabeled,
    rank_images,
)
from skin_core.analysis._difficulty_oof import ARCH as ARCH
from skin_core.analysis._difficulty_oof import (
    BY_CHOICES,
    OOF,
    oof_from_frame,
    read_oof,
)
from skin_core.analysis._difficulty_oof import MODEL as MODEL
from skin_core.analysis._difficulty_oof import RANGE_TOLERANCE as RANGE_TOLERANCE
from skin_core.analysis._difficulty_oof import SUM_TOLERANCE as SUM_TOLERANCE
from skin_core.constants import (
    GROUP_CONTROL,
    GROUP_DIFFICULT,
    GROUP_OTHER,
    IMAGE_ID,
    LABEL,
    LESION_ID,
)
from skin_core.errors import DataError

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
