"""Calibrate the served pipeline on a held-out calibration split, and measure it there.

A bundle's meta-classifier ships with a calibration map, conformal thresholds and a referral
threshold fitted on out-of-fold predictions of single fold models. The app, however, serves
something else: the mean of every fold model (with TTA as configured), then the meta-model.
Its probabilities are sharper than any single fold model's, so thresholds fitted out of fold
do not hold for it (on the demo the referral fired on every fresh image).

:func:`calibrate_bundle` therefore runs the :class:`~skin_core.predict.Predictor` itself on
a calibration split that no CNN and no meta-model trained on (``folds.csv`` rows with
``fold == -1``; :data:`skin_core.constants.CALIBRATION_FOLD`) and refits, on those served
outputs:

* per meta-model (with metadata; without metadata, fed the same images without it): the
  calibration map (:func:`~skin_core.meta.calibration.fit_calibrator`, method chosen by
  lesion-grouped cross-fitted NLL), the conformal threshold (split conformal, finite-sample
  quantile ``ceil((n+1)(1-alpha))/n``) and the referral model's threshold (the largest that
  keeps ``referral_sensitivity`` of the split's images that every model gets wrong; of the
  served answer's errors when fewer than :data:`MIN_POSITIVES` such images exist);
* the ensemble's own conformal sets (used without a meta-model);
* the entropy threshold (its ``entropy_percentile`` percentile on the split).

The refitted bundle is written under a temporary name and swapped into place, and then the
same served code (:meth:`~skin_core.predict.Predictor.assemble`) scores the split again with
the refitted values: ``bundle.json`` ``validation`` records coverage, mean set size,
referral rate and sensitivity, ECE and balanced accuracy, with and without metadata. These
are in-sample for the thresholds (that is what a split-conformal guarantee is about); a fresh
set is measured with ``skin-core evaluate``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from skin_core.errors import ConfigError, DataError

#: Fewer wrong-by-all images than this on the split: the referral threshold targets the
#: served answer's errors instead (a sensitivity on a handful of images is noise).
MIN_POSITIVES = 10

#: Fewest calibration images to fit served thresholds on.
MIN_CALIBRATION_IMAGES = 20

#: ECE bins (top-label, equal width), as ``skin-core evaluate`` reports it.
ECE_BINS = 15


@dataclasses.dataclass
class _Collected:
    """The served forward passes over the split, concatenated."""

    image_ids: list[str]
    per_model: dict[str, np.ndarray]
    items: list[Any]
    batches: list[Any]


def _collect(predictor: Any, paths: Sequence[str], *, batch_size: int,
             progress: bool) -> _Collected:
    ids: list[str] = []
    chunks: dict[str, list[np.ndarray]] = {}
    items: list[Any] = []
    batches = []
    for fb in predictor.forward_batches(paths, batch_size=batch_size, progress=progress,
                                        total=len(paths)):
        batches.append(fb)
        for it in fb.items:
            if it.error is not None:
                raise DataError(f"Calibration image {it.name} could not be read ({it.error}); "
                                "fix or remove it from the dataset and rerun.")
            ids.append(it.image_id)
            items.append(it)
        for m, p in fb.per_model.items():
            chunks.setdefault(m, []).append(p)
    per_model = {m: np.concatenate(c) for m, c in chunks.items()}
    return _Collected(ids, per_model, items, batches)


def _metadata_columns(table: Any) -> tuple[np.ndarray, list[Any], list[Any]]:
    from skin_core.constants import AGE, SEX, SITE

    def col(name: str) -> list[Any]:
        if name not in table.columns:
            return [None] * len(table)
        return [None if (v is None or (isinstance(v, float) and np.isnan(v))) else v
                for v in table[name].tolist()]

    age = np.array([np.nan if v is None else float(v) for v in col(AGE)], dtype=float)
    return age, col(SEX), col(SITE)


def _wrong_by_all(per_model: dict[str, np.ndarray], y: np.ndarray) -> np.ndarray:
    tops = np.stack([p.argmax(axis=1) for p in per_model.values()])
    return (tops != y[None, :]).all(axis=0)


def _refit_meta(pred: Any, per_model: dict[str, np.ndarray], y: np.ndarray,
                groups: np.ndarray, metadata: tuple[Any, Any, Any] | None,
                quality: dict[str, list[Any]], *, coverage: float,
                referral_sensitivity: float, seed: int) -> tuple[Any, dict[str, Any]]:
    """A copy of meta predictor ``pred`` with calibration, conformal and referral threshold
    fitted on the split's served outputs; and what was fitted."""
    from skin_core.meta.calibration import fit_calibrator
    from skin_core.meta.conformal import fit_conformal
    from skin_core.meta.referral import choose_threshold

    spec = pred.feature_spec
    age = sex = site = None
    if spec.metadata and metadata is not None:
        age, sex, site = metadata
    q = ({c: quality[c] for c in spec.quality_columns if c in quality}
         if spec.quality_columns else None)
    probs = {m: per_model[m] for m in spec.models}
    scores = pred.predict_arrays(probs, age=age, sex=sex, site=site, quality=q)
    calibrator = fit_calibrator(scores.raw, y, method="auto", groups=groups, seed=seed)
    calibrated = calibrator.transform(scores.raw)
    conformal = fit_conformal(calibrated, y, pred.classes, coverage=coverage,
                              class_conditional=pred.conformal.class_conditional)
    fitted: dict[str, Any] = {"calibration": calibrator.method,
                              "conformal_threshold": (float(conformal.thresholds[0])
                                                      if np.isfinite(conformal.thresholds[0])
                                                      else None)}
    referral = pred.referral
    if referral is not None and scores.referral_prob is not None:
        target = _wrong_by_all(probs, y)
        what = "images every model gets wrong"
        if target.sum() < MIN_POSITIVES:
            target = calibrated.argmax(axis=1) != y
            what = "the served answer's errors"
        threshold = choose_threshold(scores.referral_prob, target,
                                     sensitivity=referral_sensitivity)
        referral = dataclasses.replace(referral, threshold=float(threshold))
        fitted.update({"referral_threshold": float(threshold), "referral_target": what,
                       "referral_positives": int(target.sum()),
                       "referral_sensitivity_target": float(referral_sensitivity)})
    info = {**pred.info, "served_calibration": {
        "n_images": int(len(y)), "fitted_on": "calibration split, served pipeline",
        **fitted}}
    new = dataclasses.replace(pred, calibrator=calibrator, conformal=conformal,
                              referral=referral, info=info)
    return new, fitted


def finite_sample_quantile(scores: np.ndarray, level: float) -> float:
    """The split-conformal threshold of ``n`` scores: the ``ceil((n+1) level)``-th smallest
    (:func:`~skin_core.meta.conformal.conformal_quantile`), so a new exchangeable score is at
    most it with probability >= ``level``; ``inf`` when ``n`` is too small for that."""
    from skin_core.meta.conformal import conformal_quantile

    return float(conformal_quantile(np.asarray(scores, dtype=float), level))


def validation_metrics(results: Sequence[Any], labels: Sequence[str],
                       classes: Sequence[str]) -> dict[str, Any]:
    """Served-pipeline figures of ``results`` (:class:`~skin_core.predict.PredictionResult`)
    against ``labels``: balanced accuracy, coverage, mean set size, referral rate, the share
    of the served answer's errors that are referred (``referral_sensitivity``) and top-label
    ECE of the served probabilities."""
    from sklearn.metrics import balanced_accuracy_score

    from skin_core.meta.calibration import expected_calibration_error

    idx = {c: i for i, c in enumerate(classes)}
    y = np.array([idx[v] for v in labels])
    pred = np.array([idx[r.label] for r in results])
    shown = np.array([[(r.meta_probs or r.probs)[c] for c in classes] for r in results])
    covered = np.array([lab in r.prediction_set for r, lab in zip(results, labels,
                                                                   strict=True)])
    refer = np.array([bool(r.referral.get("refer")) for r in results])
    wrong = pred != y
    ood = [r.ood.get("flagged") for r in results if r.ood]
    return {
        "n_images": int(len(y)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "accuracy": float((~wrong).mean()),
        "coverage": float(covered.mean()),
        "target_coverage": results[0].coverage if results else None,
        "mean_set_size": float(np.mean([len(r.prediction_set) for r in results])),
        "referral_rate": float(refer.mean()),
        "referral_sensitivity": float(refer[wrong].mean()) if wrong.any() else None,
        "ece": expected_calibration_error(shown, y, n_bins=ECE_BINS),
        "ood_flag_rate": float(np.mean(ood)) if ood else None,
    }


def calibrate_bundle(
    bundle: str | os.PathLike[str],
    table: Any,
    *,
    coverage: float | None = None,
    referral_sensitivity: float = 0.8,
    entropy_percentile: float = 90.0,
    batch_size: int = 32,
    seed: int = 0,
    source: str = "",
    progress: bool = False,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Refit the served thresholds of ``bundle`` on the calibration images in ``table``.

    Parameters
    ----------
    bundle:
        The bundle folder (rewritten in place, atomically).
    table:
        Dataset table rows of the calibration split (``image_id, path, label, lesion_id``
        and the metadata columns).
    coverage:
        Target coverage of the prediction sets (default: the meta-model's).
    referral_sensitivity:
        Share of the split's wrong-by-all images the risk threshold keeps above it.
    entropy_percentile:
        Percentile of the served ensemble entropy on the split above which an image is
        "high entropy".
    source:
        Where the split came from (recorded).

    Returns
    -------
    dict
        The ``validation`` record written to ``bundle.json``.

    Raises
    ------
    DataError
        Fewer than 20 images, labels the bundle does not predict, unreadable images.
    """
    from skin_core.constants import IMAGE_ID, LABEL, LESION_ID
    from skin_core.io import atomic_write_json
    from skin_core.meta.conformal import fit_conformal
    from skin_core.meta.io import save_predictor
    from skin_core.models.bundle import (
        MANIFEST,
        META_DIR,
        META_NOMETA_DIR,
        edit_bundle,
        ensemble_entropy,
        load_bundle,
        rehash_bundle,
    )
    from skin_core.predict import Predictor

    say = say or (lambda _m: None)
    root = Path(bundle)
    b = load_bundle(root)
    classes = b.classes
    if len(table) < MIN_CALIBRATION_IMAGES:
        raise DataError(f"The calibration split has {len(table)} images; at least "
                        f"{MIN_CALIBRATION_IMAGES} are needed to fit served thresholds (raise "
                        "calibration.fraction).")
    unknown = sorted(set(map(str, table[LABEL])) - set(classes))
    if unknown:
        raise DataError(f"The calibration split has label(s) {unknown} that bundle {root} "
                        f"cannot predict (it predicts {list(classes)}); use the dataset the "
                        "bundle was trained on.")
    if not 0 < referral_sensitivity <= 1:
        raise ConfigError("referral_sensitivity must be in (0, 1]; got "
                          f"{referral_sensitivity}.")
    meta_main = b.meta or b.meta_nometa
    if coverage is None:
        coverage = float(meta_main.conformal.coverage) if meta_main is not None else float(
            (b.manifest.get("ensemble_conformal") or {}).get("coverage", 0.9))
    predictor = Predictor(b, device="auto")
    say(f"calibrate: served pipeline on {len(table)} calibration images")
    col = _collect(predictor, [str(p) for p in table["path"]], batch_size=batch_size,
                   progress=progress)
    rows = table.reset_index(drop=True)  # forward_batches keeps the input order
    labels = [str(v) for v in rows[LABEL]]
    y = np.array([classes.index(v) for v in labels])
    lesions = rows[LESION_ID] if LESION_ID in rows.columns else [None] * len(rows)
    groups = np.array([str(g) if isinstance(g, str) and g else f"image:{i}"
                       for i, g in zip(rows[IMAGE_ID].astype(str), lesions, strict=True)])
    metadata = _metadata_columns(rows)
    quality: dict[str, list[Any]] = {}
    for it in col.items:
        for k in it.quality:
            quality.setdefault(k, [])
    for k in quality:
        quality[k] = [it.quality.get(k) for it in col.items]

    ood_threshold = stats_threshold = None
    if predictor.retrieval is not None:
        from skin_core.retrieval import DETECTOR_PASS

        feats = [np.concatenate([fb.features[m] for fb in col.batches if fb.features])
                 for m in range(len(b.members))]
        index = predictor.retrieval
        scores = index.ood_score(index.embed(feats))
        t = finite_sample_quantile(scores, DETECTOR_PASS)
        ood_threshold = t if np.isfinite(t) else None  # too few images to promise the rate
        img = index.stats_score(np.stack([it.stats for it in col.items]))
        stats_threshold = None
        if img is not None:
            t = finite_sample_quantile(img, DETECTOR_PASS)
            stats_threshold = t if np.isfinite(t) else None
    ens = np.mean([col.per_model[m] for m in b.models], axis=0)
    entropy_threshold = float(np.percentile(ensemble_entropy(ens), entropy_percentile))
    ens_conformal = fit_conformal(ens, y, classes, coverage=coverage)
    refits: dict[str, Any] = {}
    fitted: dict[str, Any] = {}
    for sub, pred, md in ((META_DIR, b.meta, metadata), (META_NOMETA_DIR, b.meta_nometa, None)):
        if pred is None:
            continue
        refits[sub], fitted[sub] = _refit_meta(
            pred, col.per_model, y, groups, md, quality, coverage=coverage,
            referral_sensitivity=referral_sensitivity, seed=seed)

    with edit_bundle(root) as tmp:
        for sub, new in refits.items():
            save_predictor(new, tmp / sub)
        if predictor.retrieval is not None:
            from skin_core.retrieval import INFO, OOD_PASS, RETRIEVAL_DIR

            info_path = tmp / RETRIEVAL_DIR / INFO
            info = json.loads(info_path.read_text(encoding="utf-8"))
            info.update({"ood_threshold": ood_threshold, "stats_threshold": stats_threshold,
                         "ood_pass_target": OOD_PASS,
                         "ood_fitted_on": f"calibration split ({len(y)} images), finite-sample "
                                          "quantile of the served OOD scores"})
            atomic_write_json(info_path, info)
        manifest = json.loads((tmp / MANIFEST).read_text(encoding="utf-8"))
        manifest["referral"] = {**(manifest.get("referral") or {}),
                                "entropy_threshold": entropy_threshold,
                                "entropy_percentile": float(entropy_percentile),
                                "fitted_on": "calibration split, served pipeline",
                                "n_calibration_images": int(len(y))}
        manifest["ensemble_conformal"] = ens_conformal.to_dict()
        manifest["calibration"] = {
            "fitted_on": "calibration split (no CNN and no meta-model trained on it), served "
                         "pipeline (Predictor: mean of fold models, meta step)",
            "source": source, "n_images": int(len(y)),
            "n_lesions": int(len(np.unique(groups))),
            "coverage": float(coverage), "referral_sensitivity": float(referral_sensitivity),
            "entropy_percentile": float(entropy_percentile), "meta": fitted,
            "ood_threshold": ood_threshold, "stats_threshold": stats_threshold,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(tmp / MANIFEST, manifest)
        rehash_bundle(tmp)  # the Predictor below verifies the refitted files
        # measure the refitted pipeline with the served code, on the same forward passes
        served = Predictor(tmp, device=predictor.device)
        meta_rows = list(zip(metadata[0].tolist(), metadata[1], metadata[2], strict=True))
        meta_rows = [(None if np.isnan(a) else a, s, t) for a, s, t in meta_rows]
        with_md, without_md = [], []
        start = 0
        for fb in col.batches:
            n = len(fb.items)
            with_md += served.assemble(fb, meta_rows[start:start + n])
            without_md += served.assemble(fb, [None] * n)
            start += n
        validation = {"with_metadata": validation_metrics(with_md, labels, classes),
                      "without_metadata": validation_metrics(without_md, labels, classes),
                      "source": source, "measured_on": "calibration split, served pipeline "
                      "with the refitted thresholds (in-sample for them)"}
        validation.update({k: validation["with_metadata"][k] for k in (
            "n_images", "coverage", "mean_set_size", "referral_rate", "referral_sensitivity",
            "ece", "balanced_accuracy")})
        manifest = json.loads((tmp / MANIFEST).read_text(encoding="utf-8"))
        manifest["validation"] = validation
        atomic_write_json(tmp / MANIFEST, manifest)
    say(f"calibrate: coverage {validation['coverage']:.3f}, referral rate "
        f"{validation['referral_rate']:.3f}, ECE {validation['ece']:.3f}, balanced accuracy "
        f"{validation['balanced_accuracy']:.3f} on {len(y)} images")
    return validation


__all__ = ["MIN_CALIBRATION_IMAGES", "MIN_POSITIVES", "calibrate_bundle", "validation_metrics"]
