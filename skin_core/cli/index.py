"""``skin-core index``: similar-case retrieval index of a bundle's training images.

Embeds the training images with the bundle's members (pre-logits features of every fold model,
projected and L2-normalised; :mod:`skin_core.retrieval`) so that ``skin-core predict
--similar K`` returns the most similar training images and an out-of-distribution score; with
``--folds`` it also measures the kNN diagnosis against softmax out of fold.
"""

from __future__ import annotations

import argparse
from typing import Any

from skin_core.cli._common import add_dataset_option, add_json_option, print_json


def register(subparsers: Any) -> None:
    """Add the ``index`` verb."""
    p = subparsers.add_parser(
        "index",
        help="index a bundle's training images for similar cases and out-of-distribution "
        "scores",
        description="Embed the training images (folds.csv rows with fold >= 0, or every image "
        "of the dataset) with the bundle's fold models and store the retrieval index in the "
        "bundle; measure the kNN-vote diagnosis against softmax out of fold.",
    )
    p.add_argument("--bundle", required=True, metavar="DIR", help="model bundle folder")
    add_dataset_option(p)
    p.add_argument("--folds", default=None, metavar="folds.csv",
                   help="the run's folds (fold -1 = calibration split, left out); enables the "
                   "out-of-fold kNN measurement")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_option(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``skin-core index``; returns the exit status."""
    import numpy as np
    import pandas as pd

    from skin_core.constants import IMAGE_ID
    from skin_core.data.tables import load_dataset
    from skin_core.errors import DataError
    from skin_core.indexing import build_index

    table = load_dataset(args.dataset).table
    folds = None
    if args.folds:
        try:
            f = pd.read_csv(args.folds, dtype={IMAGE_ID: str})
        except (OSError, ValueError) as e:
            raise DataError(f"{args.folds} is not a readable folds CSV ({e}).") from e
        if not {IMAGE_ID, "fold"} <= set(f.columns):
            raise DataError(f"{args.folds} needs the columns image_id and fold.")
        fold_of = dict(zip(f[IMAGE_ID].astype(str), f["fold"].astype(int), strict=True))
        known = table[IMAGE_ID].astype(str).isin(fold_of)
        if not known.any():
            raise DataError(f"No image of {args.dataset} is in {args.folds}; use the folds "
                            "made for this dataset.")
        table = table[known]
        folds = np.array([fold_of[i] for i in table[IMAGE_ID].astype(str)])
    info = build_index(args.bundle, table, folds=folds, batch_size=args.batch_size,
                       progress=not args.no_progress and not args.json)
    if args.json:
        print_json(info)
    else:
        oof = info.get("oof") or {}
        extra = (f"; out of fold, kNN vote balanced accuracy {oof['knn_balanced_accuracy']:.3f} "
                 f"vs softmax {oof['softmax_balanced_accuracy']:.3f}" if oof else "")
        print(f"Indexed {info['n_images']} training images ({info['dim']} dimensions) in "
              f"{args.bundle}{extra}.")
    return 0
