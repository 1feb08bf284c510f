"""``skin-core meta``: LightGBM meta-classifier on CNN probabilities + patient metadata.

Reads ``RUN/oof.csv`` (or ``--oof FILE``) and the dataset's metadata (``--dataset SPEC``, by
default the spec in ``RUN/config.yaml``; or ``--metadata CSV``), runs the nested lesion-grouped
cross-validation of :func:`skin_core.meta.evaluate_meta` and writes to ``--out DIR``:

* ``meta.json``: metrics with bootstrap CIs for the meta-classifier and its baselines, the
  paired difference against the mean ensemble, calibration, conformal sets and referral;
* ``meta_oof.csv``: out-of-fold calibrated probabilities, prediction sets, referral scores;
* ``meta_predictor.json`` + ``meta_model.txt`` + ``referral_model.txt``: the predictor fitted
  on all images (LightGBM text models + JSON; no pickle), trained with masked copies so that
  any subset of age, sex and site may be missing;
* ``nometa/`` (the same files): the metadata-free predictor (and referral model), served when
  an upload comes without any metadata.

Images of the calibration split (``fold == -1`` in the run's ``folds.csv`` or ``--folds``)
are left out of the metadata table: no meta-model trains on them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from skin_core.cli._common import add_dataset_option, add_json_option, print_json

#: Sub-folder of ``--out`` with the metadata-free predictor.
NOMETA_DIR = "nometa"


def register(subparsers: Any) -> None:
    """Add the ``meta`` verb."""
    p = subparsers.add_parser(
        "meta",
        help="meta-classifier on CNN probabilities + metadata, calibration, conformal sets, "
        "referral model",
        description="Stack the CNNs' out-of-fold probabilities with age, sex and site in a "
        "LightGBM meta-classifier evaluated by nested lesion-grouped CV; calibrate it, build "
        "conformal prediction sets and a referral model for images every CNN gets wrong.",
    )
    p.add_argument("--run", default=None, metavar="RUN",
                   help="training run folder (reads RUN/oof.csv, RUN/config.yaml, RUN/folds.csv)")
    p.add_argument("--oof", default=None, metavar="OOF.csv",
                   help="long OOF table instead of RUN/oof.csv")
    add_dataset_option(p, required=False)
    p.add_argument("--metadata", default=None, metavar="CSV",
                   help="metadata table (image_id, lesion_id, age_approx, sex, "
                   "anatom_site_general[, label]) instead of --dataset")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--coverage", type=float, default=0.9,
                   help="target coverage of the conformal prediction sets (default 0.9)")
    p.add_argument("--class-conditional", action="store_true",
                   help="one conformal threshold per class (coverage within every class)")
    p.add_argument("--calibration", default="auto",
                   choices=("auto", "none", "temperature", "top_isotonic", "vector",
                            "isotonic"),
                   help="calibration method (auto: among the maps that keep the top class, "
                        "the lowest cross-fitted ECE on the inner split)")
    p.add_argument("--referral-sensitivity", type=float, default=0.8,
                   help="sensitivity for wrong-by-all images that the refer threshold targets")
    p.add_argument("--quality", default=None, metavar="quality.csv",
                   help="image-quality measures as extra features")
    p.add_argument("--models", default=None, metavar="A,B,...",
                   help="models of the OOF table to stack (default: all)")
    p.add_argument("--use-logits", action="store_true", help="stack log-probabilities")
    p.add_argument("--masked-copies", type=int, default=1, metavar="N",
                   help="copies of each training row with a random subset of age/sex/site "
                   "missing, for the metadata models (default 1; 0: none)")
    p.add_argument("--folds", default=None, metavar="folds.csv",
                   help="folds table whose fold -1 rows (the calibration split) are left out "
                   "(default: RUN/folds.csv)")
    p.add_argument("--restrict", action="store_true",
                   help="use only images with predictions from every model and metadata "
                   "(reported) instead of refusing incomplete input")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples for confidence intervals (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-jobs", type=int, default=1, help="LightGBM threads (default 1)")
    add_json_option(p)
    p.set_defaults(handler=run)


def _read_csv(path: Path, what: str):
    import pandas as pd

    from skin_core.errors import DataError

    if not path.is_file():
        raise DataError(f"The {what} file {path} does not exist.")
    try:
        return pd.read_csv(path, dtype={"image_id": str, "lesion_id": str})
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable CSV file ({e}).") from e


def _run_config(run_dir: Path) -> dict:
    import yaml

    from skin_core.errors import DataError

    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise DataError(f"{path} is not valid YAML ({e}).") from e
    return doc if isinstance(doc, dict) else {}


def _check_folds(oof, folds_path: Path) -> None:
    import pandas as pd

    from skin_core.errors import DataError

    if not folds_path.is_file():
        return
    folds = _read_csv(folds_path, "folds")
    if not {"image_id", "fold"} <= set(folds.columns):
        raise DataError(f"{folds_path} needs the columns image_id and fold.")
    merged = oof[["image_id", "fold"]].drop_duplicates("image_id").merge(
        folds[["image_id", "fold"]], on="image_id", how="left", suffixes=("", "_folds"))
    differ = merged["fold_folds"].notna() & (
        pd.to_numeric(merged["fold"]) != pd.to_numeric(merged["fold_folds"]))
    if differ.any():
        row = merged[differ].iloc[0]
        raise DataError(
            f"Image {row['image_id']} is in fold {row['fold']} in oof.csv but fold "
            f"{row['fold_folds']} in {folds_path} ({int(differ.sum())} such images); the OOF "
            f"table does not belong to this run."
        )


def _calibration_ids(folds_path: Path | None) -> set[str]:
    """Image ids of the calibration split (``fold == CALIBRATION_FOLD``) in a folds table."""
    import pandas as pd

    from skin_core.constants import CALIBRATION_FOLD

    if folds_path is None or not folds_path.is_file():
        return set()
    folds = _read_csv(folds_path, "folds")
    if "fold" not in folds.columns or "image_id" not in folds.columns:
        return set()
    held = pd.to_numeric(folds["fold"], errors="coerce") == CALIBRATION_FOLD
    return set(folds.loc[held, "image_id"].astype(str))


def _without_calibration(oof, metadata, held: set[str], folds_path: Path | None):
    """``metadata`` without the calibration images; refuses an OOF table that predicts them."""
    from skin_core.errors import DataError

    if not held or "image_id" not in oof.columns or "image_id" not in metadata.columns:
        return metadata  # evaluate_meta names missing columns
    in_oof = sorted(held & set(oof["image_id"].astype(str)))
    if in_oof:
        raise DataError(
            f"The OOF table has predictions for {len(in_oof)} image(s) of the calibration "
            f"split in {folds_path} (fold -1), e.g. {in_oof[0]}; the calibration split must "
            f"stay out of training: retrain with these folds."
        )
    return metadata[~metadata["image_id"].astype(str).isin(held)].reset_index(drop=True)


def run(args: argparse.Namespace) -> int:
    """Handler of ``skin-core meta``; returns the exit status."""
    import warnings

    from skin_core.errors import ConfigError, DataError
    from skin_core.io import atomic_write_csv, atomic_write_json
    from skin_core.meta import evaluate_meta, save_predictor
    from skin_core.meta.features import MetaFeatureWarning

    if args.run is None and args.oof is None:
        raise ConfigError("skin-core meta needs --run RUN or --oof OOF.csv.")
    if not 0 < args.coverage < 1:
        raise ConfigError(f"--coverage must be between 0 and 1 (e.g. 0.9); got {args.coverage}.")
    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap must be 0 or more; got {args.bootstrap}.")
    if args.masked_copies < 0:
        raise ConfigError(f"--masked-copies must be 0 or more; got {args.masked_copies}.")
    run_dir = Path(args.run) if args.run else None
    if run_dir is not None and not run_dir.is_dir():
        raise DataError(f"The run folder {run_dir} does not exist; train first (skin-core train).")
    config = _run_config(run_dir) if run_dir else {}
    oof_path = Path(args.oof) if args.oof else run_dir / "oof.csv"
    if not oof_path.is_file():
        raise DataError(f"{oof_path} does not exist; the run has no out-of-fold predictions "
                        f"yet (finish skin-core train).")
    oof = _read_csv(oof_path, "OOF")
    folds_path = Path(args.folds) if args.folds else (run_dir / "folds.csv" if run_dir else None)
    if args.folds and not folds_path.is_file():
        raise DataError(f"The folds file {folds_path} does not exist.")
    if folds_path is not None and {"image_id", "fold"} <= set(oof.columns):
        _check_folds(oof, folds_path)

    spec = args.dataset or (config.get("dataset") or {}).get("spec")
    if args.metadata:
        metadata = _read_csv(Path(args.metadata), "metadata")
        source = str(args.metadata)
    elif spec:
        from skin_core.data.tables import load_dataset

        metadata = load_dataset(spec, check_images=False).table
        source = f"dataset {spec}"
    else:
        raise ConfigError("skin-core meta needs --dataset SPEC or --metadata CSV (the run's "
                          "config.yaml names no dataset).")
    held = _calibration_ids(folds_path)
    metadata = _without_calibration(oof, metadata, held, folds_path)
    classes = config.get("classes") or None
    quality = _read_csv(Path(args.quality), "quality") if args.quality else None
    models = [m.strip() for m in args.models.split(",")] if args.models else None

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetaFeatureWarning)
        result = evaluate_meta(
            oof, metadata, classes=classes, models=models, quality=quality,
            use_logits=args.use_logits, coverage=args.coverage,
            class_conditional=args.class_conditional, calibration=args.calibration,
            referral_sensitivity=args.referral_sensitivity, masked_copies=args.masked_copies,
            n_resamples=args.bootstrap,
            seed=args.seed, n_jobs=args.n_jobs, restrict=args.restrict, progress=True,
            source=source,
        )
    import sys

    for w in caught:
        if issubclass(w.category, MetaFeatureWarning):
            print(f"skin-core: warning: {w.message}", file=sys.stderr)
    report = result.report
    report["source"] = {"oof": str(oof_path), "run": str(run_dir) if run_dir else None,
                        "dataset": spec if not args.metadata else None,
                        "metadata": args.metadata, "quality": args.quality,
                        "folds": str(folds_path) if folds_path and folds_path.is_file() else None,
                        "calibration_images_left_out": len(held)}
    out = Path(args.out)
    files = {"meta_oof": str(out / "meta_oof.csv"), "meta_json": str(out / "meta.json")}
    atomic_write_csv(out / "meta_oof.csv", result.predictions)
    if result.predictor is not None:
        files["predictor"] = str(save_predictor(result.predictor, out))
    if result.predictor_nometa is not None:
        files["predictor_nometa"] = str(save_predictor(result.predictor_nometa,
                                                       out / NOMETA_DIR))
    report["files"] = files
    atomic_write_json(out / "meta.json", report)
    if args.json:
        print_json({
            "balanced_accuracy": report["balanced_accuracy"],
            "macro_f1": report["macro_f1"],
            "baselines": report["baselines"],
            "ci": report["ci"],
            "difference_vs_mean_ensemble": report["difference_vs_mean_ensemble"],
            "missing_metadata": _missing_summary(report["missing_metadata"]),
            "quality_features": {k: report["quality_features"].get(k) for k in
                                 ("used", "columns", "ignored", "difference")},
            "without_metadata_predictor": {
                k: report["without_metadata_predictor"][k] for k in ("balanced_accuracy", "ci")},
            "conformal": {k: report["conformal"][k] for k in
                          ("target_coverage", "coverage", "mean_set_size")},
            "calibration": {k: report["calibration"][k] for k in ("ece_before", "ece_after")},
            "referral": {k: report["referral"].get(k) for k in
                         ("auroc", "auroc_ci", "threshold", "prevalence")},
            "files": files,
        })
    else:
        d = report["difference_vs_mean_ensemble"]
        mm = report["missing_metadata"]
        missing = ("" if mm.get("skipped") else
                   f"; worst with missing metadata: {mm['worst_subset']} "
                   f"{mm['subsets'][mm['worst_subset']]['balanced_accuracy']:.3f}")
        print(f"meta-classifier balanced accuracy {report['balanced_accuracy']:.3f} "
              f"(mean ensemble {report['baselines']['mean_ensemble']:.3f}; difference "
              f"{d['effect']:+.3f}, 95% CI {d['ci']}){missing}; conformal coverage "
              f"{report['conformal']['coverage']:.3f} at target {args.coverage}, mean set size "
              f"{report['conformal']['mean_set_size']:.2f}; written to {out}")
    return 0


def _missing_summary(section: dict) -> dict:
    """The ``--json`` digest of ``meta.json``'s ``missing_metadata``: balanced accuracy per
    missing subset, the mean ensemble's, and whether the criterion holds."""
    if section.get("skipped"):
        return section
    return {
        "mean_ensemble": section["mean_ensemble"],
        "balanced_accuracy": {k: v["balanced_accuracy"] for k, v in section["subsets"].items()},
        "worst_subset": section["worst_subset"],
        "ok": section["ok"],
    }
