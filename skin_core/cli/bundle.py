"""``skin-core bundle``: package a training run (+ meta-classifier) as a servable model bundle.

Writes ``--out`` (e.g. ``models/demo``): member weights (safetensors), the meta-classifier(s)
(LightGBM text + JSON), the training quality reference and ``bundle.json`` with the sha256 of
every file. See :mod:`skin_core.models.bundle`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from skin_core.cli._common import add_json_option, print_json


def register(subparsers: Any) -> None:
    """Add the ``bundle`` verb."""
    p = subparsers.add_parser(
        "bundle",
        help="package a training run (+ meta-classifier) as a model bundle for prediction",
        description="Copy a finished run's member weights, the meta-classifier folders written "
        "by `skin-core meta` and the training images' quality distribution into a bundle "
        "folder with a bundle.json manifest (sha256 of every file). The folder is built under "
        "a temporary name and renamed into place. No pickle anywhere.",
    )
    p.add_argument("--run", required=True, metavar="RUN", help="training run folder")
    p.add_argument("--meta", default=None, metavar="DIR",
                   help="meta-classifier folder (skin-core meta --out DIR), with metadata")
    p.add_argument("--meta-nometa", default=None, metavar="DIR",
                   help="meta-classifier folder fitted without metadata (used when a "
                   "prediction has no age, sex or site)")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--quality", default=None, metavar="quality.csv",
                   help="the training images' quality table (skin-core quality); default: "
                   "measure the run's dataset images now")
    q.add_argument("--no-quality", action="store_true",
                   help="no quality reference (percentiles of new images are not reported)")
    p.add_argument("--dataset", default=None, metavar="SPEC",
                   help="dataset to measure for the quality reference (default: the run's)")
    p.add_argument("--models", default=None, metavar="A,B,...",
                   help="models of the run to include (default: all)")
    p.add_argument("--name", default=None, help="bundle name (default: the folder name)")
    p.add_argument("--coverage", type=float, default=0.9,
                   help="coverage of the ensemble's own conformal sets (default 0.9)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.add_argument("--out", required=True, metavar="models/NAME", help="bundle folder")
    add_json_option(p)
    p.set_defaults(handler=run)


def _quality(args: argparse.Namespace) -> Any:
    """The quality table for the reference (path, DataFrame or None) and a note."""
    if args.no_quality:
        return None, "no quality reference (--no-quality)"
    if args.quality:
        return args.quality, f"quality reference from {args.quality}"
    import yaml

    from skin_core.analysis.quality import compute_quality
    from skin_core.data.tables import load_dataset
    from skin_core.errors import SkinCoreError

    spec = args.dataset
    if spec is None:
        try:
            doc = yaml.safe_load((Path(args.run) / "config.yaml").read_text()) or {}
            spec = (doc.get("dataset") or {}).get("spec")
        except (OSError, yaml.YAMLError):
            spec = None
    if not spec or spec == "frame":
        return None, "no quality reference (the run names no dataset; pass --quality)"
    try:
        table = load_dataset(spec).table
    except SkinCoreError as e:
        print(f"skin-core: warning: the dataset's images could not be measured ({e}); the "
              "bundle has no quality reference (pass --quality quality.csv).", file=sys.stderr)
        return None, "no quality reference (dataset images unavailable)"
    df = compute_quality(table, progress=True)
    return df, f"quality reference measured on {len(df)} images of {spec}"


def run(args: argparse.Namespace) -> int:
    """Handler of ``skin-core bundle``; returns the exit status."""
    from skin_core.models.bundle import build_bundle, load_bundle

    if not Path(args.run).is_dir():
        from skin_core.errors import DataError

        raise DataError(f"The run folder {args.run} does not exist; train first (skin-core "
                        "train).")
    quality, note = _quality(args)
    models = [m.strip() for m in args.models.split(",")] if args.models else None
    out = build_bundle(args.run, out=args.out, meta=args.meta,
                       meta_without_metadata=args.meta_nometa, quality=quality, models=models,
                       name=args.name, coverage=args.coverage, overwrite=args.overwrite)
    summary = load_bundle(out).summary()
    summary["quality_note"] = note
    if args.json:
        print_json(summary)
    else:
        print(f"Bundle {out}: {summary['n_members']} member weights of {len(summary['models'])} "
              f"model(s) {', '.join(summary['models'])}; meta-classifier: "
              f"{'yes' if summary['meta'] else 'no'}"
              f"{' (+ without metadata)' if summary['meta_without_metadata'] else ''}; {note}.")
    return 0
