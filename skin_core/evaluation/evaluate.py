"""``skin-core evaluate``: the served pipeline on any labelled dataset.

:func:`evaluate` runs a bundle's :class:`~skin_core.predict.Predictor` (the code the app and
``skin-core predict`` serve) over a dataset spec and writes, into one folder (each file
atomically):

* ``evaluation.json``: every figure of :mod:`skin_core.evaluation.figures` as
  ``{"value": x, "ci": [lo, hi]}`` (lesion-grouped bootstrap), per class, per subgroup (age
  bands, sex, anatomical site, ``source`` and HAM10000's ``dx_type`` when present), the
  stability record (:mod:`skin_core.evaluation.stability`), the ``missing_metadata`` table and
  what was evaluated (``bundle``, ``dataset``, ``settings``);
* ``predictions.csv``: one row per image (truth, served answer and probabilities, the plain
  ensemble's, the set, the referral, the metadata and any error);
* ``evaluation.html``: a self-contained page (:mod:`skin_core.evaluation.html`).

The networks run once per image (:meth:`~skin_core.predict.Predictor.forward_batches`); the
served answer is assembled from those outputs (:meth:`~skin_core.predict.Predictor.assemble`)
once per metadata variant, so ``--drop-metadata every`` costs the meta-classifier five times,
not the networks. Dataset labels are mapped onto the bundle's classes case-insensitively, plus
``class_map`` (e.g. ``{"akiec": "AK"}`` for HAM10000 on an ISIC 2019 bundle).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skin_core.constants import AGE, IMAGE_ID, LABEL, LESION_ID, PATH, SEX, SITE
from skin_core.errors import ConfigError, DataError

#: Files written into the output folder.
EVALUATION_JSON = "evaluation.json"
PREDICTIONS_CSV = "predictions.csv"
EVALUATION_HTML = "evaluation.html"
EVALUATION_FORMAT = "skin-core-evaluation/1"

#: ``--drop-metadata`` choices: which metadata the Predictor is given without.
DROP_CHOICES: dict[str, tuple[str, ...]] = {
    "none": (), "age": (AGE,), "sex": (SEX,), "site": (SITE,), "all": (AGE, SEX, SITE),
}
DROP_EVERY = "every"

#: Dataset columns reported as subgroups (besides the age bands) when they hold any value.
SUBGROUP_EXTRA: tuple[str, ...] = (SEX, SITE, "source", "dx_type")


def parse_class_map(text: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"AKIEC=AK,mel=MEL"`` (or a mapping) -> ``{"akiec": "AK", "mel": "MEL"}`` (keys
    lower-cased; values as given, resolved against the bundle later).

    Raises
    ------
    ConfigError
        An entry that is not ``LABEL=CLASS``.
    """
    if text is None:
        return {}
    items = (list(text.items()) if isinstance(text, Mapping)
             else [tuple(p.split("=", 1)) if "=" in p else (p, "")
                   for p in str(text).split(",") if p.strip()])
    out: dict[str, str] = {}
    for key, value in items:
        key, value = str(key).strip(), str(value).strip()
        if not key or not value:
            raise ConfigError(f"The --class-map entry {key + '=' + value!r} must look like "
                              "DATASET_LABEL=BUNDLE_CLASS (e.g. akiec=AK).")
        out[key.lower()] = value
    return out


def resolve_labels(labels: Sequence[str], classes: Sequence[str],
                   class_map: Mapping[str, str] | None = None) -> dict[str, str]:
    """Map each dataset label onto a bundle class: ``class_map`` first, then the class with
    the same code ignoring case.

    Raises
    ------
    ConfigError
        A ``class_map`` target that is not a bundle class, a ``class_map`` key that is not a
        dataset label, or dataset labels the bundle cannot predict (one sentence naming them
        and the fix).
    """
    by_lower = {c.lower(): c for c in classes}
    cmap = parse_class_map(class_map) if class_map else {}
    shown = ", ".join(classes)
    present = {str(lab).lower() for lab in labels}
    for key, target in cmap.items():
        if target.lower() not in by_lower:
            raise ConfigError(f"The --class-map target {target!r} (for {key!r}) is not a class of "
                              f"the bundle ({shown}); map onto one of those.")
        if key not in present:
            raise ConfigError(f"The --class-map names {key!r}, which is not a label of the "
                              f"dataset ({', '.join(sorted(map(str, set(labels))))}); fix the "
                              "spelling or drop the entry.")
    out: dict[str, str] = {}
    unmapped: list[str] = []
    for lab in sorted(set(map(str, labels))):
        low = lab.lower()
        if low in cmap:
            out[lab] = by_lower[cmap[low].lower()]
        elif low in by_lower:
            out[lab] = by_lower[low]
        else:
            unmapped.append(lab)
    if unmapped:
        example = f"{unmapped[0]}=CLASS"
        raise ConfigError(
            f"The dataset label{'s' if len(unmapped) > 1 else ''} {', '.join(unmapped)} "
            f"{'are' if len(unmapped) > 1 else 'is'} not among the bundle's classes ({shown}); "
            f"map {'each' if len(unmapped) > 1 else 'it'} onto one with --class-map "
            f"(e.g. --class-map {example}).")
    return out


def dx_type_column(dataset: Any) -> pd.Series | None:
    """HAM10000's diagnosis-confirmation column ``dx_type`` per image id, read from the raw
    metadata CSV (the dataset table keeps only its canonical columns), or ``None``."""
    from skin_core.data.tables import HAM10000_METADATA, parse_spec

    try:
        kind, path, _ = parse_spec(dataset.spec)
    except ConfigError:
        return None
    if kind == "ham10000":
        csv = (dataset.root or path) / HAM10000_METADATA
    elif kind == "csv":
        csv = path
    else:
        return None
    try:
        head = pd.read_csv(csv, nrows=0)
        if "dx_type" not in head.columns or IMAGE_ID not in head.columns:
            return None
        raw = pd.read_csv(csv, usecols=[IMAGE_ID, "dx_type"], dtype=str)
    except (OSError, ValueError):
        return None
    raw[IMAGE_ID] = raw[IMAGE_ID].str.strip()
    return raw.drop_duplicates(IMAGE_ID).set_index(IMAGE_ID)["dx_type"].str.strip()


def _metadata_rows(table: pd.DataFrame, drop: Sequence[str]) -> list[tuple[Any, Any, Any]]:
    def clean(v: Any) -> Any:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    cols = [table[c].tolist() if c in table.columns else [None] * len(table)
            for c in (AGE, SEX, SITE)]
    return [tuple(None if c in drop else clean(v) for c, v in zip((AGE, SEX, SITE), row,
                                                                   strict=True))
            for row in zip(*cols, strict=True)]


def evaluate(
    bundle: str | os.PathLike[str] | Any,
    dataset: str,
    out: str | os.PathLike[str],
    *,
    class_map: str | Mapping[str, str] | None = None,
    drop_metadata: str = "none",
    n_resamples: int = 1000,
    seed: int = 0,
    limit: int | None = None,
    stability: int = 200,
    batch_size: int = 32,
    workers: int = 2,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate the served pipeline of ``bundle`` on the labelled ``dataset``; write the files.

    Parameters
    ----------
    bundle:
        A bundle folder, or a loaded :class:`~skin_core.predict.Predictor`.
    dataset:
        A dataset spec (``isic2019:DIR``, ``ham10000:DIR``, ``folder:DIR``, ``csv:FILE``).
    out:
        Output folder (created); ``evaluation.json``, ``predictions.csv`` and
        ``evaluation.html`` are replaced atomically.
    class_map:
        ``"akiec=AK,..."`` or a mapping: dataset labels onto bundle classes (case-insensitive).
    drop_metadata:
        ``none``, ``age``, ``sex``, ``site``, ``all`` (the metadata withheld from the Predictor
        for the whole evaluation) or ``every`` (the main figures with all metadata, and every
        variant in ``missing_metadata``).
    n_resamples:
        Bootstrap resamples (lesions); 0 gives point estimates without intervals.
    seed:
        Seed of ``limit``'s sample, the stability subsample and the bootstrap.
    limit:
        Evaluate a seeded random sample of this many images (``None``: all).
    stability:
        Images in the stability subsample (0: no stability record).

    Returns
    -------
    dict
        The content of ``evaluation.json`` plus ``files`` (name -> path).

    Raises
    ------
    ConfigError
        Bad options, or dataset labels the bundle cannot predict.
    DataError
        The dataset cannot be loaded, or no image could be predicted.
    """
    from concurrent.futures import ThreadPoolExecutor

    from skin_core.evaluation.figures import (
        ECE_BINS,
        SMALL_GROUP,
        evaluation_figures,
        subgroup_columns,
    )
    from skin_core.meta.evaluate import melanoma_index

    if drop_metadata not in (*DROP_CHOICES, DROP_EVERY):
        raise ConfigError(f"The --drop-metadata value must be one of "
                          f"{', '.join([*DROP_CHOICES, DROP_EVERY])}; got {drop_metadata!r}.")
    for name, v, low in (("--bootstrap", n_resamples, 0), ("--stability", stability, 0),
                         ("--limit", 1 if limit is None else limit, 1)):
        if int(v) < low:
            raise ConfigError(f"{name} must be at least {low}; got {v}.")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ds, table, predictor, mapping = _load(bundle, dataset, class_map=class_map, limit=limit,
                                          seed=seed, device=device)
    classes = tuple(predictor.classes)
    timings["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    main = drop_metadata if drop_metadata != DROP_EVERY else "none"
    variants = list(DROP_CHOICES) if drop_metadata == DROP_EVERY else [main]
    served = _serve(predictor, table, variants, batch_size=batch_size, workers=workers,
                    progress=progress)
    results = served[main]
    ok = np.array([r.ok for r in results], dtype=bool)
    if not ok.any():
        raise DataError(f"None of the {len(results)} images of {dataset} could be predicted "
                        f"(the first: {results[0].error}); check the image files.")
    timings["predict"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    o, codes_all = _outcomes(table, mapping, results, ok, classes)
    cidx = {c: i for i, c in enumerate(classes)}
    groups = {c: s[ok].reset_index(drop=True) for c, s in
              subgroup_columns(table, SUBGROUP_EXTRA).items()}
    # a failed image fails in every variant (the networks ran once): the same rows everywhere
    variant_preds = {v: np.array([cidx[r.label] for r, g in zip(served[v], ok, strict=True)
                                  if g], dtype=np.int64) for v in variants}
    # The bootstrap (NumPy / SciPy) runs beside the stability predictions (torch): both
    # release the GIL, so on a machine with spare cores the figures cost no wall time.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="figures") as pool:
        future = pool.submit(evaluation_figures, o, classes, melanoma=melanoma_index(classes),
                             n_resamples=n_resamples, seed=seed, groups=groups,
                             variants=variant_preds)
        stab = None
        if stability > 0:
            stab = _stability(predictor, table, results, ok, codes_all, n=stability,
                              metadata_drop=DROP_CHOICES[main], n_resamples=n_resamples,
                              seed=seed, batch_size=batch_size, workers=workers,
                              progress=progress)
        figs = future.result()
    timings["figures_and_stability"] = time.perf_counter() - t0

    overall = figs["overall"]
    record: dict[str, Any] = {
        "format": EVALUATION_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **{key: overall[key] for key in (
            "balanced_accuracy", "macro_f1", "accuracy", "coverage", "mean_set_size",
            "referral_rate", "referral_error_capture", "ece",
            "melanoma_sensitivity_at_specificity", "per_class")},
        "reliability": overall["reliability"],
        "subgroups": figs["subgroups"],
        "stability": stab,
        "ensemble": overall["ensemble"],
        "missing_metadata": [{"drop": v, "withheld": list(DROP_CHOICES[v]),
                              "n_images": int(ok.sum()), **figs["missing_metadata"][v]}
                             for v in variants],
        "n_images": overall["n_images"],
        "n_lesions": overall["n_lesions"],
        "n_failed": int((~ok).sum()),
        "failed": [{"image_id": table[IMAGE_ID].iloc[i], "error": results[i].error}
                   for i in np.flatnonzero(~ok)[:20]],
        "bundle": _bundle_record(predictor),
        "dataset": {"spec": dataset, "fingerprint": ds.fingerprint(),
                    "n_images_in_dataset": len(ds.table), "limit": limit,
                    "class_map": {lab: cls for lab, cls in mapping.items()
                                  if lab.lower() != cls.lower()},
                    "labels": {c: int(n) for c, n in
                               table[LABEL].map(mapping).value_counts().items()}},
        "settings": {"bootstrap": int(n_resamples), "seed": int(seed), "confidence": 0.95,
                     "ci": "percentile, lesion-grouped bootstrap (images without a lesion id "
                           "are their own lesion)",
                     "ece_bins": ECE_BINS, "drop_metadata": drop_metadata,
                     "served_metadata": main, "stability": int(stability),
                     "small_group": SMALL_GROUP, "device": getattr(predictor, "device", None)},
    }
    record["seconds"] = {key: round(v, 3) for key, v in timings.items()}
    files = write_outputs(out, record, table, mapping, served, main, classes)
    return {**record, "files": {key: str(p) for key, p in files.items()}}


def _load(bundle: Any, dataset: str, *, class_map: Any, limit: int | None, seed: int,
          device: str) -> tuple[Any, pd.DataFrame, Any, dict[str, str]]:
    """The dataset, its (sampled) table with ``dx_type`` when known, the Predictor and the
    label mapping (checked before the networks are loaded)."""
    import json

    from skin_core.data.tables import load_dataset
    from skin_core.predict import Predictor

    ds = load_dataset(dataset)
    table = ds.table
    predictor = bundle if isinstance(bundle, Predictor) else None
    try:  # the labels are checked before the networks load (the Predictor verifies the rest)
        classes = (predictor.classes if predictor is not None else
                   json.loads((Path(bundle) / "bundle.json").read_text(encoding="utf-8"))
                   ["classes"])
    except (OSError, ValueError, KeyError, TypeError):
        predictor = Predictor(bundle, device=device)  # raises the bundle's own error
        classes = predictor.classes
    mapping = resolve_labels(table[LABEL].unique().tolist(), tuple(map(str, classes)),
                             class_map)
    if predictor is None:
        predictor = Predictor(bundle, device=device)
    if limit is not None and limit < len(table):
        pick = np.sort(np.random.default_rng(seed).choice(len(table), int(limit),
                                                          replace=False))
        table = table.iloc[pick].reset_index(drop=True)
    table = table.copy()
    dx = dx_type_column(ds)
    if dx is not None:
        table["dx_type"] = table[IMAGE_ID].map(dx)
    return ds, table, predictor, mapping


def _serve(predictor: Any, table: pd.DataFrame, variants: Sequence[str], *, batch_size: int,
           workers: int, progress: bool) -> dict[str, list[Any]]:
    """The served results per metadata variant: the networks run once per image
    (:meth:`~skin_core.predict.Predictor.forward_batches`), the rest of the pipeline once per
    variant (:meth:`~skin_core.predict.Predictor.assemble`)."""
    paths = table[PATH].tolist()
    batches = list(predictor.forward_batches(paths, batch_size=batch_size, workers=workers,
                                             progress=progress, total=len(paths)))
    served: dict[str, list[Any]] = {}
    for v in variants:
        metas = _metadata_rows(table, DROP_CHOICES[v])
        results: list[Any] = []
        for b in batches:
            results.extend(predictor.assemble(b, metas[len(results):len(results) + len(b.items)]))
        served[v] = results
    return served


def _outcomes(table: pd.DataFrame, mapping: Mapping[str, str], results: Sequence[Any],
              ok: np.ndarray, classes: Sequence[str]) -> tuple[Any, np.ndarray]:
    """The :class:`~skin_core.evaluation.figures.Outcomes` of the predicted images and the
    lesion codes of every row of ``table``."""
    from skin_core.evaluation.bootstrap import lesion_codes
    from skin_core.evaluation.figures import Outcomes

    cidx = {c: i for i, c in enumerate(classes)}
    codes_all = lesion_codes(table[LESION_ID], table[IMAGE_ID])
    good = [r for r in results if r.ok]
    o = Outcomes(
        y=table[LABEL].map(mapping).map(cidx).to_numpy(dtype=np.int64)[ok],
        probs=np.array([[(r.meta_probs or r.probs)[c] for c in classes] for r in good]),
        pred=np.array([cidx[r.label] for r in good], dtype=np.int64),
        ens_pred=np.array([int(np.argmax([r.probs[c] for c in classes])) for r in good],
                          dtype=np.int64),
        sets=np.array([[c in r.prediction_set for c in classes] for r in good], dtype=bool),
        refer=np.array([bool(r.referral.get("refer")) for r in good], dtype=bool),
        codes=pd.factorize(codes_all[ok])[0].astype(np.int64),
    )
    return o, codes_all


def _stability(predictor: Any, table: pd.DataFrame, results: Sequence[Any], ok: np.ndarray,
               codes_all: np.ndarray, *, n: int, metadata_drop: Sequence[str],
               n_resamples: int, seed: int, batch_size: int, workers: int,
               progress: bool) -> dict[str, Any]:
    """The stability record on a seeded sample of ``n`` predicted images
    (:mod:`skin_core.evaluation.stability`), with the served metadata."""
    from skin_core.evaluation.stability import stability_labels, stability_record

    idx_ok = np.flatnonzero(ok)
    n_s = min(int(n), len(idx_ok))
    sample = np.sort(np.random.default_rng(seed + 1).choice(idx_ok, n_s, replace=False))
    metas = _metadata_rows(table.iloc[sample], metadata_drop)
    copies = stability_labels(predictor, table[PATH].iloc[sample].tolist(), metas,
                              batch_size=batch_size, workers=workers, progress=progress)
    return stability_record([results[i].label for i in sample], copies,
                            pd.factorize(codes_all[sample])[0].astype(np.int64),
                            n_resamples=n_resamples, seed=seed, n_available=len(idx_ok))


def _bundle_record(predictor: Any) -> dict[str, Any]:
    """What was evaluated: the bundle's summary plus the sha256 of its ``bundle.json``."""
    from skin_core.models.bundle import file_sha256

    b = predictor.bundle
    summary = b.summary()
    return {**summary, "path": str(Path(b.path).resolve()),
            "manifest_sha256": file_sha256(Path(b.path) / "bundle.json")}


def predictions_table(table: pd.DataFrame, mapping: Mapping[str, str],
                      served: Mapping[str, Sequence[Any]], main: str,
                      classes: Sequence[str]) -> pd.DataFrame:
    """One row per image: ``image_id, lesion_id, dataset_label, label`` (the bundle class),
    the served ``pred``, ``correct``, ``prob_<C>`` (served), ``ensemble_pred``,
    ``ensemble_prob_<C>``, ``prediction_set``, ``set_size``, ``covered``, ``refer``,
    ``referral_reasons``, ``risk``, ``meta_source``, the metadata and subgroup columns,
    ``pred_drop_<variant>`` for the other metadata variants, and ``error``."""
    results = served[main]
    truth = table[LABEL].map(mapping)
    df = pd.DataFrame({IMAGE_ID: table[IMAGE_ID].to_numpy(),
                       LESION_ID: table[LESION_ID].to_numpy(),
                       "dataset_label": table[LABEL].to_numpy(), LABEL: truth.to_numpy()})

    def col(fn: Any) -> list[Any]:
        return [fn(r) if r.ok else None for r in results]

    df["pred"] = col(lambda r: r.label)
    df["correct"] = [None if p is None else bool(p == t) for p, t in zip(df["pred"], truth,
                                                                          strict=True)]
    for c in classes:
        df[f"prob_{c}"] = col(lambda r, c=c: (r.meta_probs or r.probs)[c])
    df["ensemble_pred"] = col(lambda r: max(r.probs, key=r.probs.get))
    for c in classes:
        df[f"ensemble_prob_{c}"] = col(lambda r, c=c: r.probs[c])
    df["prediction_set"] = col(lambda r: "|".join(r.prediction_set))
    df["set_size"] = pd.array(col(lambda r: len(r.prediction_set)), dtype="Int64")
    df["covered"] = [(t in r.prediction_set) if r.ok else None
                     for r, t in zip(results, truth, strict=True)]
    df["refer"] = col(lambda r: bool(r.referral.get("refer")))
    df["referral_reasons"] = col(lambda r: "|".join(r.referral.get("reasons") or ()))
    df["risk"] = col(lambda r: r.referral.get("risk"))
    df["meta_source"] = col(lambda r: r.meta_source)
    for c in (AGE, SEX, SITE, "source", "dx_type"):
        if c in table.columns:
            df[c] = table[c].to_numpy()
    for v, rs in served.items():
        if v != main:
            df[f"pred_drop_{v}"] = [r.label if r.ok else None for r in rs]
    df["error"] = [r.error or "" for r in results]
    return df


def write_outputs(out: str | os.PathLike[str], record: dict[str, Any], table: pd.DataFrame,
                  mapping: Mapping[str, str], served: Mapping[str, Sequence[Any]], main: str,
                  classes: Sequence[str]) -> dict[str, Path]:
    """Write ``predictions.csv``, ``evaluation.html`` and, last, ``evaluation.json`` (each
    atomically; the JSON, which the app looks for, appears only when the others exist)."""
    from skin_core.evaluation.html import write_html
    from skin_core.io import atomic_write_csv, atomic_write_json

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    # full precision (round-trip floats): every figure can be recomputed exactly from the CSV
    files = {"predictions_csv": atomic_write_csv(
        folder / PREDICTIONS_CSV, predictions_table(table, mapping, served, main, classes))}
    files["evaluation_html"] = write_html(record, folder / EVALUATION_HTML)
    files["evaluation_json"] = atomic_write_json(folder / EVALUATION_JSON, record)
    return files


def find_evaluations(folders: Sequence[str | os.PathLike[str]],
                     bundle: str | os.PathLike[str] | None = None) -> list[Path]:
    """``evaluation.json`` files under ``folders`` (any depth), newest first; with ``bundle``,
    only those that evaluated that bundle folder."""
    import json

    want = str(Path(bundle).resolve()) if bundle is not None else None
    found: list[tuple[float, Path]] = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            continue
        for path in root.rglob(EVALUATION_JSON):
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if not isinstance(doc, dict) or doc.get("format") != EVALUATION_FORMAT:
                continue
            if want is not None and (doc.get("bundle") or {}).get("path") != want:
                continue
            found.append((path.stat().st_mtime, path))
    return [p for _, p in sorted(found, key=lambda t: t[0], reverse=True)]


__all__ = [
    "DROP_CHOICES",
    "DROP_EVERY",
    "EVALUATION_FORMAT",
    "EVALUATION_HTML",
    "EVALUATION_JSON",
    "PREDICTIONS_CSV",
    "dx_type_column",
    "evaluate",
    "find_evaluations",
    "parse_class_map",
    "predictions_table",
    "resolve_labels",
    "write_outputs",
]
