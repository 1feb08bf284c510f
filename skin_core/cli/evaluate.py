"""``skin-core evaluate``: the served pipeline of a bundle on any labelled dataset.

Writes ``evaluation.json`` (every figure with a lesion-grouped bootstrap 95 % CI, per class,
per subgroup, stability, missing metadata), ``predictions.csv`` and a self-contained
``evaluation.html`` into ``--out`` (see ``docs/evaluate.md``).
"""

from __future__ import annotations

import argparse
from typing import Any

from skin_core.cli._common import add_dataset_option, add_json_option, print_json


def register(subparsers: Any) -> None:
    """Add the ``evaluate`` verb."""
    p = subparsers.add_parser(
        "evaluate",
        help="measure the served pipeline (meta-classifier, sets, referral) on a labelled "
        "dataset, with lesion-grouped bootstrap CIs",
        description="Run a bundle's served pipeline on a labelled dataset and write "
        "evaluation.json, predictions.csv and evaluation.html: balanced accuracy, macro F1, "
        "per-class sensitivity / specificity / AUC, melanoma sensitivity at 80/90% "
        "specificity, ECE with a reliability diagram, conformal coverage and set size, "
        "referral rate and the errors it catches, the plain ensemble beside it, subgroups, "
        "stability under flips / rotation / crop, and the effect of missing metadata.",
    )
    p.add_argument("--bundle", required=True, metavar="DIR", help="model bundle folder")
    add_dataset_option(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--class-map", default=None, metavar="A=B,...",
                   help="map dataset labels onto bundle classes (case-insensitive), e.g. "
                   "akiec=AK for HAM10000 on an ISIC 2019 bundle")
    p.add_argument("--drop-metadata", default="none",
                   choices=("none", "age", "sex", "site", "all", "every"),
                   help="withhold metadata from the pipeline; 'every' reports each variant in "
                   "the missing_metadata table (default none)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples of lesions (default 1000; 0: no intervals)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling and bootstrap")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="evaluate a seeded random sample of N images")
    p.add_argument("--stability", type=int, default=200, metavar="N",
                   help="images in the stability subsample (default 200; 0: off)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="decoding threads (default 2)")
    add_json_option(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``skin-core evaluate``; returns the exit status."""
    import sys

    from skin_core.evaluation import evaluate
    from skin_core.evaluation.html import headline_rows

    result = evaluate(
        args.bundle, args.dataset, args.out, class_map=args.class_map,
        drop_metadata=args.drop_metadata, n_resamples=args.bootstrap, seed=args.seed,
        limit=args.limit, stability=args.stability, batch_size=args.batch_size,
        workers=args.workers, device=args.device,
        progress=sys.stderr.isatty() or not args.json,
    )
    if args.json:
        print_json(result)
        return 0
    print(f"Evaluated {result['n_images']:,} images of {result['n_lesions']:,} lesions "
          f"({result['n_failed']} failed) from {args.dataset}:")
    width = max(len(r["figure"]) for r in headline_rows(result))
    for r in headline_rows(result):
        print(f"  {r['figure']:<{width}}  {r['value [95% CI]']}")
    print(f"Wrote {', '.join(result['files'].values())}.")
    return 0
