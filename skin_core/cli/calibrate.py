"""``skin-core calibrate``: fit a bundle's served thresholds on a held-out calibration split.

The served pipeline (the :class:`~skin_core.predict.Predictor`: mean of the fold models, the
meta step) predicts the calibration images; the calibration map, conformal thresholds, the
referral threshold and the entropy threshold are refitted there and ``bundle.json`` records
what that pipeline measured (``validation``). See :mod:`skin_core.served`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from skin_core.cli._common import add_dataset_option, add_json_option, print_json


def register(subparsers: Any) -> None:
    """Add the ``calibrate`` verb."""
    p = subparsers.add_parser(
        "calibrate",
        help="fit a bundle's served calibration, sets and referral thresholds on a held-out "
        "calibration split",
        description="Run the served pipeline on the calibration split (folds.csv rows with "
        "fold -1, written by `skin-core data folds --calibration FRACTION`, or an image list) "
        "and refit there the calibration map, the conformal thresholds, the referral and "
        "entropy thresholds; record the served figures in bundle.json `validation`.",
    )
    p.add_argument("--bundle", required=True, metavar="DIR", help="model bundle folder")
    add_dataset_option(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--folds", metavar="folds.csv",
                     help="folds table; its fold -1 rows are the calibration split")
    src.add_argument("--images", metavar="CSV", help="a table with an image_id column")
    p.add_argument("--coverage", type=float, default=None,
                   help="target coverage of the prediction sets (default: the bundle's)")
    p.add_argument("--referral-sensitivity", type=float, default=0.8,
                   help="share of the split's wrong-by-all images the risk threshold keeps "
                   "(default 0.8)")
    p.add_argument("--entropy-percentile", type=float, default=90.0,
                   help="served-entropy percentile above which an image is high entropy")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_option(p)
    p.set_defaults(handler=run)


def calibration_ids(folds: str | None, images: str | None) -> list[str]:
    """Image ids of the calibration split from a folds table (fold -1) or an id list."""
    import pandas as pd

    from skin_core.constants import CALIBRATION_FOLD, IMAGE_ID
    from skin_core.errors import DataError

    path = Path(folds or images or "")
    if not path.is_file():
        raise DataError(f"{path} does not exist; pass the study's folds.csv (skin-core data "
                        "folds --calibration FRACTION) or a CSV with an image_id column.")
    try:
        table = pd.read_csv(path, dtype={IMAGE_ID: str})
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable CSV file ({e}).") from e
    need = [IMAGE_ID, "fold"] if folds else [IMAGE_ID]
    lacking = [c for c in need if c not in table.columns]
    if lacking:
        raise DataError(f"{path} lacks the column(s) {lacking}; it needs {need}.")
    if folds:
        table = table[pd.to_numeric(table["fold"], errors="coerce") == CALIBRATION_FOLD]
        if table.empty:
            raise DataError(f"{path} has no calibration split (no row with fold "
                            f"{CALIBRATION_FOLD}); make the folds with `skin-core data folds "
                            "--calibration 0.15`.")
    return table[IMAGE_ID].astype(str).tolist()


def run(args: argparse.Namespace) -> int:
    """Handler of ``skin-core calibrate``; returns the exit status."""
    from skin_core.constants import IMAGE_ID
    from skin_core.data.tables import load_dataset
    from skin_core.errors import DataError
    from skin_core.served import calibrate_bundle

    ids = calibration_ids(args.folds, args.images)
    table = load_dataset(args.dataset).table
    known = set(table[IMAGE_ID].astype(str))
    missing = [i for i in ids if i not in known]
    if missing:
        raise DataError(f"{len(missing)} calibration image(s), e.g. {missing[0]}, are not in "
                        f"dataset {args.dataset}; use the dataset the folds were made for.")
    want = set(ids)
    split = table[table[IMAGE_ID].astype(str).isin(want)]
    validation = calibrate_bundle(
        args.bundle, split, coverage=args.coverage,
        referral_sensitivity=args.referral_sensitivity,
        entropy_percentile=args.entropy_percentile, batch_size=args.batch_size,
        seed=args.seed, source=f"{args.dataset} ({args.folds or args.images})",
        progress=not args.no_progress and not args.json)
    if args.json:
        print_json(validation)
    else:
        v = validation
        print(f"Bundle {args.bundle} calibrated on {v['n_images']} held-out images: coverage "
              f"{v['coverage']:.3f}, mean set size {v['mean_set_size']:.2f}, referral rate "
              f"{v['referral_rate']:.3f}, ECE {v['ece']:.3f}, balanced accuracy "
              f"{v['balanced_accuracy']:.3f} (served pipeline).")
    return 0
