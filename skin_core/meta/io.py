"""The fitted meta predictor and its pickle-free storage.

A :class:`MetaPredictor` scores new images from the CNNs' per-model probabilities and the
patient metadata: calibrated meta-classifier probabilities, the conformal prediction set and
the referral probability with its ``refer`` flag, from DataFrames (:meth:`MetaPredictor.predict`)
or, with the same numbers and a fraction of the cost for a few rows, from arrays
(:meth:`MetaPredictor.predict_arrays`, a :class:`MetaScores` record).

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

from skin_core.constants import AGE, SEX, SITE, prob_columns
from skin_core.errors import DataError
from skin_core.io import atomic_write_json, atomic_write_text
from skin_core.meta.calibration import Calibrator
from skin_core.meta.conformal import ConformalThresholds
from skin_core.meta.features import (
    CATEGORIES,
    FeatureSpec,
    WideOOF,
    build_feature_array,
    build_features,
    oof_to_wide,
)
from skin_core.meta.referral import (
    ENSEMBLE_FEATURES,
    ensemble_feature_arrays,
    referral_features,
)

FORMAT = "skin-core-meta/1"
MANIFEST = "meta_predictor.json"
META_MODEL_FILE = "meta_model.txt"
REFERRAL_MODEL_FILE = "referral_model.txt"
#: Up to this many rows the fast path predicts with one LightGBM thread (starting OpenMP
#: threads costs more than a few rows of trees: 0.38 against 0.08 ms for one image).
SINGLE_THREAD_ROWS = 4096


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
class MetaScores:
    """Scores of ``N`` images from :meth:`MetaPredictor.predict_arrays`, in input row order.

    Attributes
    ----------
    classes:
        The ``K`` class codes (column order of every array).
    probs:
        ``(N, K)`` calibrated meta-classifier probabilities.
    raw:
        ``(N, K)`` uncalibrated probabilities (``raw.argmax(1)`` is the reported decision).
    members:
        ``(N, K)`` bool: class in the conformal prediction set.
    sets:
        The prediction sets as strings (``"MEL|NV"``, classes by decreasing probability).
    referral_prob, refer:
        ``(N,)`` P(difficult) and ``referral_prob >= threshold``; ``None`` without a referral
        model.
    """

    classes: tuple[str, ...]
    probs: np.ndarray
    raw: np.ndarray
    members: np.ndarray
    sets: tuple[str, ...]
    referral_prob: np.ndarray | None = None
    refer: np.ndarray | None = None

    def to_frame(self, index: Any) -> pd.DataFrame:
        """The table :meth:`MetaPredictor.predict` returns, indexed by ``index`` (image ids)."""
        out = pd.DataFrame(self.probs, index=pd.Index(index, name="image_id"),
                           columns=prob_columns(self.classes))
        out["pred"] = [self.classes[k] for k in self.raw.argmax(axis=1)]
        out["pred_set"] = list(self.sets)
        out["set_size"] = self.members.sum(axis=1)
        if self.referral_prob is not None:
            out["referral_prob"] = self.referral_prob
            out["refer"] = self.refer
        return out


@dataclass(frozen=True)
class _CategoryMap:
    """How LightGBM's pandas handling re-codes one booster's categorical input columns.

    ``remaps``: ``(column position, lookup)`` pairs; ``lookup[pandas code]`` is the code in the
    booster's own category list (``pandas_categorical`` of its model file; NaN when absent).
    Columns whose lists are equal are left out (identity).
    """

    remaps: tuple[tuple[int, np.ndarray], ...] = ()

    def apply(self, X: np.ndarray) -> np.ndarray:
        if not self.remaps:
            return X
        X = X.copy()
        for j, lookup in self.remaps:
            col = X[:, j]
            ok = ~np.isnan(col)
            col[ok] = lookup[col[ok].astype(np.intp)]
        return X


def _category_map(booster: Any, columns: tuple[str, ...],
                  frame_categories: Mapping[str, tuple[str, ...]], what: str) -> _CategoryMap:
    """Reproduce ``lightgbm.basic._data_from_pandas`` for ``booster`` on ndarray inputs.

    The pandas path hands LightGBM categoricals over ``frame_categories``; LightGBM re-codes
    them onto the category lists stored with the model (``set_categories`` then the codes).
    """
    cat_cols = [c for c in columns if c in frame_categories]
    stored = getattr(booster, "pandas_categorical", None)
    if stored is None:  # LightGBM then takes the frame's own codes
        return _CategoryMap()
    if len(stored) != len(cat_cols):
        raise DataError(
            f"{what} was trained with {len(stored)} categorical feature(s) but its feature "
            f"list has {len(cat_cols)} ({cat_cols}); re-run skin-core meta."
        )
    remaps = []
    for col, cats in zip(cat_cols, stored, strict=True):
        frame = list(frame_categories[col])
        if list(cats) == frame:
            continue
        pos = {v: float(i) for i, v in enumerate(cats)}
        remaps.append((columns.index(col), np.array([pos.get(v, np.nan) for v in frame])))
    return _CategoryMap(tuple(remaps))


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

        See Also
        --------
        predict_arrays : the same numbers from arrays, without DataFrames (prediction time).
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

    # ---- fast path: NumPy features, ndarray boosters ------------------------------------

    def predict_arrays(
        self,
        probs: Mapping[str, np.ndarray],
        *,
        age: Any = None,
        sex: Any = None,
        site: Any = None,
        quality: Mapping[str, Any] | None = None,
        num_threads: int | None = None,
    ) -> MetaScores:
        """Score images from arrays: the same numbers as :meth:`predict`, without DataFrames.

        The prediction-time fast path (the :class:`~skin_core.predict.Predictor` uses it):
        features from :func:`~skin_core.meta.features.build_feature_array`, categorical
        codes mapped onto each booster's stored category lists exactly as LightGBM's pandas
        handling maps them, then ``Booster.predict`` on a float64 ndarray.

        Parameters
        ----------
        probs:
            Model id -> ``(N, K)`` probabilities in :attr:`classes` order (every model of
            ``feature_spec.models``).
        age, sex, site:
            ``(N,)`` metadata (``None``: missing for every image); normalised as
            :func:`~skin_core.meta.features.build_features` does.
        quality:
            Measure -> ``(N,)`` values when the model uses quality measures.
        num_threads:
            LightGBM threads; default one thread up to :data:`SINGLE_THREAD_ROWS` rows, else
            LightGBM's default.

        Returns
        -------
        MetaScores

        Raises
        ------
        DataError
            Missing models or measures, wrongly shaped arrays, non-numeric ages, or a model
            file whose categorical features disagree with the feature spec.
        """
        spec = self.feature_spec
        X = build_feature_array(spec, probs, age=age, sex=sex, site=site, quality=quality,
                                source="metadata")
        n, k = X.shape[0], len(self.classes)
        threads = (1 if n <= SINGLE_THREAD_ROWS else 0) if num_threads is None else num_threads
        meta_map, ref_map, ref_sources = self._fast_layout()
        raw = np.zeros((n, k))
        if n:
            pred = np.asarray(self.booster.predict(meta_map.apply(X), num_threads=threads))
            if pred.ndim == 1:  # binary booster
                pred = np.column_stack([1 - pred, pred])
            raw[:, list(self.trained_class_index)] = pred
        calibrated = self.calibrator.transform(raw)
        members = self.conformal.sets(calibrated)
        sets = tuple(self.conformal.labels(calibrated))
        risk = refer = None
        if self.referral is not None and self.referral_booster is not None:
            stacked = np.stack([np.asarray(probs[m], dtype=float) for m in spec.models])
            cols = ensemble_feature_arrays(stacked)
            R = np.empty((n, len(self.referral.columns)))
            for j, (name, position) in enumerate(ref_sources):
                R[:, j] = cols[name] if position is None else X[:, position]
            risk = np.zeros(n)
            if n:
                pred = np.asarray(self.referral_booster.predict(ref_map.apply(R),
                                                                num_threads=threads))
                risk = pred[:, -1] if pred.ndim == 2 else pred
            refer = risk >= self.referral.threshold
        return MetaScores(classes=self.classes, probs=calibrated, raw=raw, members=members,
                          sets=sets, referral_prob=risk, refer=refer)

    def _fast_layout(self) -> tuple[_CategoryMap, _CategoryMap, tuple[tuple[str, int | None], ...]]:
        """Computed once: each booster's category re-coding, and where each referral feature
        comes from (``(name, None)``: an ensemble feature; ``(name, j)``: column ``j`` of the
        meta-classifier's features, as the DataFrame path joins them)."""
        cached = self.__dict__.get("_fast_layout_cache")
        if cached is not None:
            return cached
        spec = self.feature_spec
        frame: dict[str, tuple[str, ...]] = (
            {SEX: CATEGORIES[SEX], SITE: CATEGORIES[SITE]} if spec.metadata else {}
        )
        meta_map = _category_map(self.booster, spec.columns, frame, META_MODEL_FILE)
        ref_map = _CategoryMap()
        sources: list[tuple[str, int | None]] = []
        if self.referral is not None and self.referral_booster is not None:
            ref_frame = {"ens_pred": self.classes, **frame}
            ref_map = _category_map(self.referral_booster, self.referral.columns, ref_frame,
                                    REFERRAL_MODEL_FILE)
            position = {c: j for j, c in enumerate(spec.columns)}
            for name in self.referral.columns:
                if name in ENSEMBLE_FEATURES:
                    sources.append((name, None))
                elif name in position and (name in (AGE, SEX, SITE) or name.startswith("q_")):
                    sources.append((name, position[name]))
                else:
                    raise DataError(
                        f"The referral model uses feature {name!r}, which the meta-classifier's "
                        f"features do not provide; re-run skin-core meta."
                    )
        layout = (meta_map, ref_map, tuple(sources))
        object.__setattr__(self, "_fast_layout_cache", layout)
        return layout

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


__all__ = ["MetaPredictor", "MetaScores", "ReferralSpec", "load_predictor", "save_predictor"]
