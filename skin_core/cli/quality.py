"""``skin-core quality``: blur and other image-quality measures for every image -> quality.csv."""

from __future__ import annotations

import argparse
import sys

from skin_core.cli._common import add_json_option, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``quality`` verb."""
    p = subparsers.add_parser(
        "quality",
        help="measure blur and image quality of every image (quality.csv)",
        description="Measure every image of a dataset (or a folder of images): variance of the "
        "Laplacian at full resolution (the study's measure) and at a normalised size, wavelet "
        "and FFT high-frequency energy, brightness, contrast, entropy, vignetting, and the "
        "combined blur_score in [0, 1] (lower = blurrier) with is_blurry (blur_score < 0.5). "
        "An unreadable image gets a row with its error, never a crash.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", metavar="SPEC",
                     help="dataset spec: isic2019:DIR, ham10000:DIR, folder:DIR, "
                     "csv:FILE[,root=DIR]")
    src.add_argument("--images", metavar="DIR",
                     help="a plain folder of images (searched recursively; id = file name)")
    p.add_argument("--out", required=True, metavar="quality.csv", help="output CSV")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: every CPU core)")
    p.add_argument("--long-side", type=int, default=None,
                   help="long side in pixels of the normalised image (default 256)")
    p.add_argument("--reference", default=None, metavar="FILE.json",
                   help="also write the measures' quantiles (a reference distribution for "
                   "percentiles of new images)")
    add_json_option(p)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from skin_core.analysis.quality import (
        BLURRY_THRESHOLD,
        LONG_SIDE,
        list_image_files,
        measure_images,
    )

    if args.dataset:
        from skin_core.data.tables import load_dataset

        source = load_dataset(args.dataset).table
        if len(source) == 0:
            from skin_core.errors import DataError

            raise DataError(f"Dataset {args.dataset} has no images; check the spec.")
    else:
        source = list_image_files(args.images)
    # measured and written without pandas: a folder of images never imports it
    measured = measure_images(source, workers=args.workers,
                              long_side=args.long_side or LONG_SIDE,
                              progress=sys.stderr.isatty() or not args.json)
    measured.write_csv(args.out)
    errors = [e for e in measured.errors if e]
    n_images, n_errors = len(measured.image_ids), len(errors)
    scores = measured.values[:, -1]
    n_blurry = int((scores[~np.isnan(scores)] < BLURRY_THRESHOLD).sum())
    result = {"n_images": n_images, "n_blurry": n_blurry, "n_errors": n_errors,
              "out": str(args.out)}
    if args.reference and n_errors < n_images:
        from skin_core.analysis.quality import quality_reference
        from skin_core.io import atomic_write_json

        atomic_write_json(args.reference, quality_reference(measured.to_frame()))
        result["reference"] = str(args.reference)
    if args.json:
        print_json(result)
        return 0
    print(f"Measured {n_images} images: {n_blurry} blurry (blur_score < 0.5), {n_errors} "
          f"unreadable; wrote {args.out}.")
    if n_errors:
        print(f"First error: {errors[0]}", file=sys.stderr)
    return 0
