"""``skin-core demo-data``: write the synthetic demo dataset in the ISIC 2019 layout."""

from __future__ import annotations

import argparse
import sys

from skin_core.cli._common import add_json_option, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo-data`` verb."""
    p = subparsers.add_parser(
        "demo-data",
        help="write a synthetic dermoscopy dataset in the ISIC 2019 layout",
        description="Write a synthetic dermoscopy dataset in the exact ISIC 2019 layout "
        "(load it with --dataset isic2019:DIR) plus generation_truth.csv saying, per image, "
        "what the generator did (blur, ambiguity, flipped label, artefacts).",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--n", type=int, default=2000, help="number of images (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--workers", type=int, default=None,
                   help="rendering processes (default: all CPUs)")
    p.add_argument("--blur-fraction", type=float, default=0.15,
                   help="fraction of blurred images (default 0.15)")
    p.add_argument("--ambiguous-fraction", type=float, default=0.10,
                   help="fraction of images of lesions blending two classes (default 0.10)")
    p.add_argument("--mislabel-fraction", type=float, default=0.03,
                   help="fraction of images with a flipped label (default 0.03)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a demo dataset already in --out")
    add_json_option(p)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from skin_core.data.synthetic import generate_demo_dataset

    summary = generate_demo_dataset(
        args.out, n=args.n, seed=args.seed, size=args.size, workers=args.workers,
        progress=sys.stderr.isatty() or not args.json,
        blur_fraction=args.blur_fraction, ambiguous_fraction=args.ambiguous_fraction,
        mislabel_fraction=args.mislabel_fraction, overwrite=args.overwrite,
    )
    if args.json:
        print_json(summary)
        return 0
    counts = ", ".join(f"{c} {k}" for c, k in summary.class_counts.items())
    print(f"Wrote {summary.n_images} synthetic images ({summary.size} px, {summary.n_lesions} "
          f"lesions) to {summary.out_dir} in {summary.seconds:.1f} s.")
    print(f"Classes: {counts}.")
    print(f"Blurred {summary.n_blurred}, ambiguous {summary.n_ambiguous}, mislabeled "
          f"{summary.n_mislabeled}; truth in generation_truth.csv.")
    print(f"Load it with --dataset {summary.spec}")
    return 0
