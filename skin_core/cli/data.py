"""``skin-core data summary|folds``: inspect a dataset and make lesion-grouped CV folds."""

from __future__ import annotations

import argparse
import sys
import warnings

from skin_core.cli._common import add_dataset_option, add_json_option, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` verb with its ``summary`` and ``folds`` sub-commands."""
    parser = subparsers.add_parser(
        "data",
        help="load a dataset: summary counts, cross-validation folds",
        description="Load a dataset into the canonical table (isic2019:DIR, ham10000:DIR"
        "[,gt=GROUNDTRUTH.csv], folder:DIR, csv:FILE[,root=DIR]) and summarise it or make "
        "lesion-grouped, class-stratified cross-validation folds.",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True

    summary = sub.add_parser(
        "summary",
        help="number of images, per-class counts, lesions, missing metadata",
        description="Print the number of images, per-class counts, number of lesions and "
        "missing values per metadata column. JSON keys: n_images, classes, n_lesions, "
        "missing (plus n_groups, n_skipped, skipped, notes, fingerprint, spec).",
    )
    _add_load_options(summary)
    add_json_option(summary)
    summary.set_defaults(handler=_summary)

    folds = sub.add_parser(
        "folds",
        help="write folds.csv (image_id,fold), stratified by class and grouped by lesion",
        description="Assign every image to one of K folds, stratified by class and grouped by "
        "lesion_id (an image without lesion_id is its own group), deterministic for a seed; "
        "writes image_id,fold. With --calibration FRACTION a lesion-grouped, class-stratified "
        "share of the images is first held out as the calibration split (fold -1: no CNN "
        "trains on it or predicts it out-of-fold) and the folds 0..K-1 cover the rest.",
    )
    _add_load_options(folds)
    folds.add_argument("--k", type=int, default=5, help="number of folds (default 5)")
    folds.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    folds.add_argument("--calibration", type=float, default=0.0, metavar="FRACTION",
                       help="share of every class held out as the calibration split, whole "
                       "lesions, fold -1 (default 0: none)")
    folds.add_argument("--calibration-seed", type=int, default=None, metavar="S",
                       help="seed of the calibration split (default: --seed)")
    folds.add_argument("--out", required=True, metavar="FILE", help="folds CSV to write")
    add_json_option(folds)
    folds.set_defaults(handler=_folds)


def _add_load_options(parser: argparse.ArgumentParser) -> None:
    add_dataset_option(parser)
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip rows with problems (they are listed) instead of stopping at the first",
    )
    parser.add_argument(
        "--no-check-images",
        dest="check_images",
        action="store_false",
        help="do not require the image files to exist (e.g. the ISIC 2019 CSVs alone)",
    )
    parser.add_argument(
        "--verify-images",
        action="store_true",
        help="also decode every image and report unreadable ones (slower: opens each file)",
    )


def _load(args: argparse.Namespace):
    from skin_core.data.tables import load_dataset, verify_images

    ds = load_dataset(args.dataset, skip_bad=args.skip_bad, check_images=args.check_images)
    if args.verify_images:
        ds = verify_images(ds, skip_bad=args.skip_bad, progress=True)
    return ds


def _skipped_records(ds) -> list[dict]:
    """``Dataset.skipped`` as JSON-ready records (``line`` None where there is no line)."""
    import pandas as pd

    sk = ds.skipped
    return [
        {
            "file": r["file"],
            "line": None if pd.isna(r["line"]) else int(r["line"]),
            "image_id": r["image_id"] if isinstance(r["image_id"], str) else None,
            "column": r["column"],
            "reason": r["reason"],
        }
        for r in sk.to_dict("records")
    ]


def _print_skipped(ds) -> None:
    """List every skipped row on stderr (never a silent drop)."""
    if not len(ds.skipped):
        return
    stream = sys.stderr
    print(f"skipped {len(ds.skipped)} row(s):", file=stream)
    for r in _skipped_records(ds):
        where = r["file"] + (f" line {r['line']}" if r["line"] is not None else "")
        ident = f" image '{r['image_id']}'" if r["image_id"] else ""
        print(f"  {where}{ident} [{r['column']}]: {r['reason']}", file=stream)


def _summary(args: argparse.Namespace) -> int:
    ds = _load(args)
    info = ds.summary()
    if args.json:
        info["skipped"] = _skipped_records(ds)
        print_json(info)
        return 0
    width = max(len(c) for c in info["classes"]) if info["classes"] else 0
    n = info["n_images"]
    lines = [
        f"dataset      {info['spec']}",
        f"images       {n}",
        f"lesions      {info['n_lesions']} (fold groups incl. images without lesion_id: "
        f"{info['n_groups']})",
        "classes",
    ]
    for c, cnt in info["classes"].items():
        lines.append(f"  {c:<{width}}  {cnt:>7}  {100.0 * cnt / n:5.1f}%")
    lines.append("missing")
    for c, cnt in info["missing"].items():
        lines.append(f"  {c:<20} {cnt:>7}")
    lines.append(f"fingerprint  {info['fingerprint']}")
    print("\n".join(lines))
    for note in info["notes"]:
        print(f"note: {note}", file=sys.stderr)
    _print_skipped(ds)
    return 0


def _folds(args: argparse.Namespace) -> int:
    from skin_core.data.splits import (
        FoldWarning,
        calibration_report,
        fold_report,
        make_folds,
        write_folds,
    )

    ds = _load(args)
    cal_seed = args.seed if args.calibration_seed is None else args.calibration_seed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FoldWarning)
        folds = make_folds(ds, k=args.k, seed=args.seed, calibration=args.calibration,
                           calibration_seed=cal_seed)
    messages = [str(w.message) for w in caught if issubclass(w.category, FoldWarning)]
    write_folds(folds, args.out)
    report = fold_report(ds, folds)
    cal = {"fraction": args.calibration, "seed": cal_seed, **calibration_report(ds, folds)}
    if args.json:
        print_json(
            {
                "out": args.out,
                "k": args.k,
                "seed": args.seed,
                "n_images": len(ds),
                "calibration": cal,
                "fold_sizes": report["fold_sizes"],
                "counts": report["counts"],
                "max_class_spread": report["max_class_spread"],
                "lesions_in_two_folds": report["lesions_in_two_folds"],
                "warnings": messages,
                "n_skipped": len(ds.skipped),
                "skipped": _skipped_records(ds),
                "fingerprint": ds.fingerprint(),
            }
        )
    else:
        classes = list(ds.classes)
        width = max(6, *(len(c) for c in classes))
        print(f"wrote {args.out}: {len(ds) - cal['n_images']} images in {args.k} folds "
              f"(seed {args.seed})")
        if cal["n_images"]:
            per = ", ".join(f"{c} {n}" for c, n in cal["per_class"].items())
            print(f"calibration split (fold -1, seed {cal_seed}): {cal['n_images']} images of "
                  f"{cal['n_groups']} lesions ({per})")
        print("fold  " + "".join(f"{c:>{width + 1}}" for c in classes) + f"{'total':>8}")
        for f, row in report["counts"].items():
            cells = "".join(f"{row.get(c, 0):>{width + 1}}" for c in classes)
            print(f"{f:>4}  {cells}{report['fold_sizes'][f]:>8}")
        print(f"lesions in two folds: {report['lesions_in_two_folds']}")
    for m in messages:
        print(f"warning: {m}", file=sys.stderr)
    _print_skipped(ds)
    return 0
