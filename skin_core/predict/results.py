"""The result record of one predicted image and the prediction CSV."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from skin_core.constants import prob_columns


@dataclass(frozen=True)
class PredictionResult:
    """Everything known about one image.

    Attributes
    ----------
    image: the image's name (path as given, or the uploaded file's name).
    image_id: file stem (or the name given).
    label: calibrated top diagnosis (``meta_probs`` when present, else ``probs``); ``None``
        when the image could not be read.
    probs: ensemble probabilities, class -> p (mean over models).
    members: architecture -> class -> p (mean over its fold models).
    meta_probs: calibrated meta-classifier probabilities, or ``None`` without a meta-model.
    meta_source: ``"with_metadata"``, ``"without_metadata"``, ``"metadata_missing"`` (the
        with-metadata model given missing metadata) or ``None``.
    prediction_set: conformal prediction set (classes by decreasing probability).
    coverage: the set's target coverage.
    quality: ``blur_score``, ``is_blurry``, ``blur_percentile``, ``percentiles``
        (measure -> percentile in training), ``measures`` and ``warning`` (plain language).
    referral: ``risk`` (or ``None``), ``refer``, ``reasons`` (list), ``threshold``,
        ``entropy``, ``entropy_threshold``, ``disagreement``.
    metadata: the age / sex / site used (after validation).
    warnings: every warning about this image and its metadata.
    heatmap: ``(S, S)`` float32 Grad-CAM in [0, 1] over the network's input crop, or ``None``.
    overlay: ``(S', S', 3)`` uint8 RGB heatmap blended on that crop, or ``None``.
    heatmap_member: ``"model fold k"`` the heatmap was computed on.
    similar: the most similar training images, one per lesion (``image_id``, ``label``,
        ``lesion_id``, ``similarity``), when asked for and the bundle has a retrieval index.
    ood: ``score``, ``threshold``, ``flagged``: how unlike the training images this image is
        (:mod:`skin_core.retrieval`); empty without a retrieval index.
    error: why the image could not be predicted (one sentence), else ``None``.
    """

    image: str
    image_id: str
    label: str | None = None
    probs: dict[str, float] = field(default_factory=dict)
    members: dict[str, dict[str, float]] = field(default_factory=dict)
    meta_probs: dict[str, float] | None = None
    meta_source: str | None = None
    prediction_set: tuple[str, ...] = ()
    coverage: float | None = None
    quality: dict[str, Any] = field(default_factory=dict)
    referral: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    heatmap: np.ndarray | None = field(default=None, repr=False, compare=False)
    overlay: np.ndarray | None = field(default=None, repr=False, compare=False)
    heatmap_member: str | None = None
    similar: tuple[dict[str, Any], ...] = ()
    ood: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self, *, arrays: bool = False) -> dict[str, Any]:
        """JSON-ready dict (keys of ``skin-core predict --json``); arrays only when asked."""
        d: dict[str, Any] = {
            "image": self.image, "image_id": self.image_id, "label": self.label,
            "probs": self.probs, "members": self.members, "meta_probs": self.meta_probs,
            "meta_source": self.meta_source, "prediction_set": list(self.prediction_set),
            "coverage": self.coverage, "quality": self.quality, "referral": self.referral,
            "metadata": self.metadata, "warnings": list(self.warnings),
            "heatmap_member": self.heatmap_member, "similar": list(self.similar),
            "ood": self.ood, "error": self.error,
        }
        if arrays:
            d["heatmap"] = None if self.heatmap is None else self.heatmap.tolist()
        return d

    def to_row(self, classes: Sequence[str]) -> dict[str, Any]:
        """One flat CSV row (``image, image_id, label, prob_<C>..., meta_prob_<C>..., ...``)."""
        row: dict[str, Any] = {"image": self.image, "image_id": self.image_id,
                               "label": self.label or ""}
        for c, col in zip(classes, prob_columns(classes), strict=True):
            row[col] = _fmt(self.probs.get(c))
        for c in classes:
            row[f"meta_prob_{c}"] = _fmt((self.meta_probs or {}).get(c))
        q, r = self.quality, self.referral
        row.update({
            "meta_source": self.meta_source or "",
            "prediction_set": "|".join(self.prediction_set),
            "set_size": len(self.prediction_set) if self.ok else "",
            "blur_score": _fmt(q.get("blur_score")),
            "is_blurry": "" if q.get("is_blurry") is None else bool(q.get("is_blurry")),
            "blur_percentile": _fmt(q.get("blur_percentile")),
            "risk": _fmt(r.get("risk")),
            "refer": "" if r.get("refer") is None else bool(r.get("refer")),
            "reasons": "|".join(r.get("reasons") or ()),
            "warnings": " ".join(self.warnings),
            "error": self.error or "",
        })
        return row


def csv_columns(classes: Sequence[str]) -> list[str]:
    """Columns of the prediction CSV, in order."""
    return ["image", "image_id", "label", *prob_columns(classes),
            *(f"meta_prob_{c}" for c in classes), "meta_source", "prediction_set", "set_size",
            "blur_score", "is_blurry", "blur_percentile", "risk", "refer", "reasons",
            "warnings", "error"]


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else round(v, 6)
    return v


def write_predictions_csv(results: Iterable[PredictionResult], path: str | os.PathLike[str],
                          classes: Sequence[str]) -> dict[str, Any]:
    """Stream results into a CSV (temporary name, renamed when complete).

    Returns
    -------
    dict with ``n``, ``n_errors``, ``first_error`` and ``path``.
    """
    from skin_core.io import atomic_path

    n = n_err = 0
    first_error = None
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=csv_columns(classes))
            writer.writeheader()
            for r in results:
                writer.writerow(r.to_row(classes))
                n += 1
                if r.error is not None:
                    n_err += 1
                    first_error = first_error or r.error
    return {"n": n, "n_errors": n_err, "first_error": first_error, "path": str(path)}


__all__ = ["PredictionResult", "csv_columns", "write_predictions_csv"]
