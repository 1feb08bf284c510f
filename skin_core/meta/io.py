"""The fitted meta predictor and its pickle-free storage.

A :class:`MetaPredictor` scores new images from the CNNs' per-model probabilities and the
patient metadata: calibrated meta-classifier probabilities, the conformal prediction set and
the referral probability with its ``refer`` flag.

On disk (:func:`save_predictor` / :func:`load_predictor`) a predictor is a folder with

* ``meta_model.txt`` and ``referral_model.txt``: LightGBM text models
  (``Booster.save_model``; loaded with ``lightgbm.Booster(model_file=...)``), and
* ``meta_predictor.json``: feature spec and order, categories, classes, calibration map,
  conformal thresholds, referral features and threshold, and the SHA-256 of each model file
  (checked on load).

Loading never executes code from the folder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skin_core.constants import prob_columns
from skin_core.errors import DataError
from skin_core.io import atomic_write_json, atomic_write_text
from skin_core.meta.calibration import Calibrator
from skin_core.meta.conformal import ConformalThresholds
from skin_core.meta.features import FeatureSpec, WideOOF, build_features, oof_to_wide
from skin_core.meta.referral import referral_features

FORMAT = "skin-core-meta/1"
MANIFEST = "meta_predictor.json"
META_MODEL_FILE = "meta_model.txt"
REFERRAL_MODEL_FILE = "referral_model.txt"


@dataclass(frozen=True)
class ReferralSpec:
    """The referral model's features and decision rule."""

    columns: tuple[str, ...]
    threshold: float
    sensitivity_target: float
    trained_class_index: tuple[int, ...] = (0, 1)

    def to_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "threshold": float(self.threshold),
                "sensitivity_target": float(self.sensitivity_target),
                "trained_class_index": list(self.trained_class_index)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReferralSpec:
        return cls(columns=tuple(d["columns"]), threshold=float(d["threshold"]),
                   sensitivity_target=float(d["sensitivity_target"]),
                   trained_class_index=tuple(int(i) for i in d.get("trained_class_index",
                                                                   (0, 1))))


@dataclass(frozen=True)
class MetaPredictor:
    """Fitted meta-classifier + calibration + conformal sets + referral model.

    Attributes
    ----------
    feature_spec:
        How to build the meta-classifier's features.
    booster:
        The meta-classifier (``lightgbm.Booster``).
    trained_class_index:
        Output columns of ``booster`` as indices into ``feature_spec.classes``.
    calibrator, conformal:
        Calibration map and conformal thresholds (applied to calibrated probabilities).
    referral_booster, referral:
        The referral model and its spec (``None`` when no referral model was fitted).
    info:
        Free-form provenance (tuning, training size...).
    """

    feature_spec: FeatureSpec
    booster: Any
    trained_class_index: tuple[int, ...]
    calibrator: Calibrator
    conformal: ConformalThresholds
    referral_booster: Any = None
    referral: ReferralSpec | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.feature_spec.classes

    def raw_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Uncalibrated ``(N, K)`` meta probabilities of a feature matrix."""
        out = np.zeros((len(X), len(self.classes)))
        if len(X):
            pred = np.asarray(self.booster.predict(X[list(self.feature_spec.columns)]))
            if pred.ndim == 1:  # binary booster
                pred = np.column_stack([1 - pred, pred])
            out[:, list(self.trained_class_index)] = pred
        return out

    def predict(
        self,
        oof_or_probs: pd.DataFrame | WideOOF,
        metadata: pd.DataFrame | None,
        *,
        quality: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """Score images.

        Parameters
        ----------
        oof_or_probs:
            Per-model probabilities: a long (``image_id, model, prob_<C>...``; ``fold`` and
            ``label`` optional) or wide table, or a :class:`WideOOF`
            (:func:`~skin_core.meta.features.wide_from_probs`).
        metadata:
            ``image_id, age_approx, sex, anatom_site_general`` for these images.
        quality:
            The quality table when the model uses quality measures.

        Returns
        -------
        DataFrame indexed by ``image_id``
            ``prob_<C>`` (calibrated), ``pred`` (arg-max of the class-weighted model: the
            decision whose balanced accuracy is reported), ``pred_set`` (e.g. ``"MEL|NV"``),
            ``set_size`` and, with a referral model, ``referral_prob`` and ``refer``.
        """
        wide = oof_or_probs if isinstance(oof_or_probs, WideOOF) else _as_wide(
            oof_or_probs, self.classes
        )
        X, _ = build_features(wide, metadata, quality=quality, spec=self.feature_spec)
        raw = self.raw_proba(X)
        probs = self.calibrator.transform(raw)
        out = pd.DataFrame(probs, index=X.index, columns=prob_columns(self.classes))
        out["pred"] = [self.classes[k] for k in raw.argmax(axis=1)]
        members = self.conformal.sets(probs)
        out["pred_set"] = self.conformal.labels(probs)
        out["set_size"] = members.sum(axis=1)
        if self.referral is not None and self.referral_booster is not None:
            out["referral_prob"] = self.referral_proba(wide, X)
            out["refer"] = out["referral_prob"] >= self.referral.threshold
        return out

    def referral_proba(self, wide: WideOOF, X: pd.DataFrame) -> np.ndarray:
        """P(difficult) of images given their wide probabilities and meta features ``X``."""
        assert self.referral is not None
        stacked = np.stack([wide.probs(m) for m in self.feature_spec.models])
        meta = X if self.feature_spec.metadata else None
        qcols = [c for c in X.columns if c.startswith("q_")]
        R = referral_features(stacked, self.classes, X.index, metadata_features=meta,
                              quality_features=X[qcols] if qcols else None)
        R = R[list(self.referral.columns)]
        pred = np.asarray(self.referral_booster.predict(R))
        if pred.ndim == 2:
            pred = pred[:, -1]
        return pred


def _as_wide(table: pd.DataFrame, classes: tuple[str, ...]) -> WideOOF:
    t = table.copy()
    if "model" in t.columns:
        if "fold" not in t.columns:
            t["fold"] = -1
        if "label" not in t.columns:
            t["label"] = classes[0]
    return oof_to_wide(t, classes=classes, source="prediction table")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_predictor(predictor: MetaPredictor, directory: str | Path) -> Path:
    """Write ``predictor`` to ``directory`` (text models + JSON manifest, atomically).

    Returns
    -------
    Path of the manifest ``meta_predictor.json``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / META_MODEL_FILE, predictor.booster.model_to_string())
    files = {META_MODEL_FILE: _sha256(directory / META_MODEL_FILE)}
    referral = None
    if predictor.referral is not None and predictor.referral_booster is not None:
        atomic_write_text(directory / REFERRAL_MODEL_FILE,
                          predictor.referral_booster.model_to_string())
        files[REFERRAL_MODEL_FILE] = _sha256(directory / REFERRAL_MODEL_FILE)
        referral = {**predictor.referral.to_dict(), "file": REFERRAL_MODEL_FILE}
    manifest = {
        "format": FORMAT,
        "classes": list(predictor.classes),
        "feature_spec": predictor.feature_spec.to_dict(),
        "meta_model": {"file": META_MODEL_FILE,
                       "trained_class_index": list(predictor.trained_class_index)},
        "calibration": predictor.calibrator.to_dict(),
        "conformal": predictor.conformal.to_dict(),
        "referral": referral,
        "files_sha256": files,
        "info": predictor.info,
    }
    return atomic_write_json(directory / MANIFEST, manifest)


def load_predictor(directory: str | Path) -> MetaPredictor:
    """Rebuild a :class:`MetaPredictor` saved by :func:`save_predictor`.

    Raises
    ------
    DataError
        Missing or unreadable manifest, unknown format, a model file missing or whose
        SHA-256 differs from the manifest.
    """
    import lightgbm as lgb

    directory = Path(directory)
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"{path} does not exist; run `skin-core meta` to create it.") from e
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not a readable JSON manifest ({e}); re-run skin-core meta."
                        ) from e
    if manifest.get("format") != FORMAT:
        raise DataError(
            f"{path} has format {manifest.get('format')!r}; this version reads {FORMAT!r}."
        )
    boosters = {}
    for name, digest in manifest.get("files_sha256", {}).items():
        file = directory / name
        if not file.is_file():
            raise DataError(f"{file} is missing; the meta predictor folder is incomplete.")
        if _sha256(file) != digest:
            raise DataError(
                f"{file} does not match the SHA-256 recorded in {MANIFEST}; the model file was "
                f"changed or corrupted, re-run skin-core meta."
            )
        boosters[name] = lgb.Booster(model_file=str(file))
    ref = manifest.get("referral")
    return MetaPredictor(
        feature_spec=FeatureSpec.from_dict(manifest["feature_spec"]),
        booster=boosters[manifest["meta_model"]["file"]],
        trained_class_index=tuple(manifest["meta_model"]["trained_class_index"]),
        calibrator=Calibrator.from_dict(manifest["calibration"]),
        conformal=ConformalThresholds.from_dict(manifest["conformal"]),
        referral_booster=boosters.get(ref["file"]) if ref else None,
        referral=ReferralSpec.from_dict(ref) if ref else None,
        info=dict(manifest.get("info", {})),
    )


__all__ = ["MetaPredictor", "ReferralSpec", "load_predictor", "save_predictor"]
