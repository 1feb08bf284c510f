"""``skin-core difficulty``: consistently misclassified images and their significance.

Reads an ``oof.csv`` and writes ``DIR/difficulty.csv`` and ``DIR/significance.json`` (and
``DIR/quality_vs_difficulty.json`` with ``--quality``, ``DIR/ground_truth_check.json`` with
``--truth`` on the demo data); ``--json`` prints a summary (counts
per group, significance, the kappa matrix of the models' errors).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from skin_core.cli._common import add_json_option, print_json


def register(subparsers: Any) -> None:
    """Add the ``difficulty`` verb."""
    p = subparsers.add_parser(
        "difficulty",
        help="images every model gets wrong, label-issue scores, significance vs chance",
        description="From out-of-fold predictions of M models: per-image difficulty "
        "(difficulty.csv), pairwise error consistency, and exact + permutation tests that "
        "'wrong by all models' is more than independent models predict (significance.json).",
    )
    p.add_argument("--oof", required=True, metavar="OOF.csv",
                   help="long OOF table: image_id, model, arch, fold, label, prob_<CLASS>...")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--min-wrong", type=int, default=None, metavar="m",
                   help="difficult = wrong by at least m of the M models (default: all M)")
    p.add_argument("--by", choices=("model", "arch"), default="model",
                   help="models = OOF 'model' ids (default) or pooled per 'arch'")
    p.add_argument("--permutations", type=int, default=10_000, metavar="N",
                   help="permutations of the within-class shuffle test (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutation test")
    p.add_argument("--classes", default=None, metavar="A,B,...",
                   help="expected class codes in order (default: the prob_ columns)")
    p.add_argument("--renormalize", action="store_true",
                   help="divide probability rows by their sum instead of refusing rows that "
                   "do not sum to 1")
    p.add_argument("--common-images", action="store_true",
                   help="keep only the images every model scored (default: error)")
    p.add_argument("--quality", default=None, metavar="quality.csv",
                   help="also compare image quality of difficult vs control images")
    p.add_argument("--truth", default=None, metavar="generation_truth.csv",
                   help="demo data only: precision/recall of 'difficult' for the generator's "
                   "ambiguous, mislabeled and blurred images (ground_truth_check.json)")
    add_json_option(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``skin-core difficulty``; returns the exit status."""
    import sys

    import pandas as pd
    from tqdm import tqdm

    from skin_core.analysis.difficulty import (
        compute_difficulty,
        error_consistency,
        ground_truth_check,
        read_oof,
    )
    from skin_core.analysis.significance import consistent_error_significance
    from skin_core.errors import ConfigError, DataError
    from skin_core.io import atomic_write_csv, atomic_write_json

    if args.permutations < 1:
        raise ConfigError(f"--permutations must be a positive integer; got {args.permutations}.")
    for option, value, hint in (("--quality", args.quality, "'skin-core quality'"),
                                ("--truth", args.truth, "'skin-core demo-data'")):
        if value and not Path(value).is_file():
            raise DataError(f"The {option} file {value} does not exist; it is written by "
                            f"{hint}.")
    out = Path(args.out)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    steps = ["read OOF", "difficulty", "significance", "write"]
    if args.quality:
        steps.insert(3, "quality")
    bar = tqdm(total=len(steps), desc="difficulty", unit="step", file=sys.stderr,
               disable=None)

    def step(name: str) -> None:
        bar.set_postfix_str(name)

    step("read OOF")
    oof = read_oof(args.oof, classes=classes, by=args.by, renormalize=args.renormalize,
                   on_missing="drop" if args.common_images else "error")
    if oof.n_models < 2 and args.min_wrong is None:
        print(f"skin-core: warning: {args.oof} holds one model only; 'difficult' is then "
              f"simply 'wrong'.", file=sys.stderr)
    bar.update()
    step("difficulty")
    table = compute_difficulty(oof, min_wrong=args.min_wrong)
    kappa = error_consistency(oof.labels, oof.pred_probs, models=oof.models)
    bar.update()
    step("significance")
    sig = consistent_error_significance(
        oof.errors(), oof.labels, min_wrong=args.min_wrong, n_permutations=args.permutations,
        seed=args.seed, models=oof.models, classes=oof.classes,
    )
    sig_dict = sig.to_dict()
    sig_dict["source"] = {"oof": str(args.oof), "by": args.by,
                          "n_dropped_images": oof.n_dropped_images,
                          "members": {k: list(v) for k, v in oof.members.items()}}
    sig_dict["error_consistency_kappa"] = _kappa_dict(kappa)
    bar.update()
    quality_result = None
    if args.quality:
        step("quality")
        try:
            from skin_core.analysis.quality import compare_quality
        except ImportError as e:
            raise ConfigError("--quality needs skin_core.analysis.quality (compare_quality), "
                              "which this installation lacks; run without --quality.") from e
        qpath = Path(args.quality)
        try:
            quality_df = pd.read_csv(qpath, dtype={"image_id": str})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise DataError(f"Quality file {qpath} cannot be read as CSV ({e}).") from e
        try:
            quality_result = compare_quality(quality_df, table, seed=args.seed)
        except DataError as e:
            # Too few difficult or control images to compare: the difficulty results stand,
            # and the comparison file says why it is empty.
            print(f"skin-core: warning: quality vs difficulty not computed: {e}",
                  file=sys.stderr)
            quality_result = {"computed": False, "reason": str(e)}
        bar.update()
    truth_result = None
    if args.truth:
        tpath = Path(args.truth)
        try:
            truth_df = pd.read_csv(tpath, dtype={"image_id": str})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise DataError(f"Generation truth file {tpath} cannot be read as CSV ({e}).") from e
        truth_result = ground_truth_check(table, truth_df)
    step("write")
    atomic_write_csv(out / "difficulty.csv", table)
    atomic_write_json(out / "significance.json", sig_dict)
    if quality_result is not None:
        atomic_write_json(out / "quality_vs_difficulty.json", quality_result)
    if truth_result is not None:
        atomic_write_json(out / "ground_truth_check.json", truth_result)
    bar.update()
    bar.close()

    counts = {g: int(n) for g, n in table["group"].value_counts().items()}
    summary: dict[str, Any] = {
        "oof": str(args.oof),
        "out": str(out),
        "n_images": oof.n_images,
        "n_models": oof.n_models,
        "models": list(oof.models),
        "min_wrong": sig.min_wrong,
        "groups": {g: counts.get(g, 0) for g in ("difficult", "control", "other")},
        "likely_mislabeled": int(table["likely_mislabeled"].sum()),
        "significance": {k: sig_dict[k] for k in (
            "observed_all_wrong", "expected_all_wrong", "ratio_all_wrong", "p_value_exact",
            "log10_p_value_exact", "p_value_permutation", "n_permutations", "seed")},
        "kappa": _kappa_dict(kappa),
        "files": [str(out / "difficulty.csv"), str(out / "significance.json")]
        + ([str(out / "quality_vs_difficulty.json")] if quality_result is not None else [])
        + ([str(out / "ground_truth_check.json")] if truth_result is not None else []),
    }
    if truth_result is not None:
        summary["ground_truth_check"] = truth_result
    if quality_result is not None:
        summary["quality_vs_difficulty"] = quality_result
    if args.json:
        print_json(summary)
    else:
        g = summary["groups"]
        s = summary["significance"]
        print(f"{oof.n_images} images x {oof.n_models} models: {g['difficult']} difficult, "
              f"{g['control']} control, {g['other']} other; "
              f"{summary['likely_mislabeled']} likely mislabeled")
        print(f"wrong by all: observed {s['observed_all_wrong']}, expected "
              f"{s['expected_all_wrong']:.2f} under independent models; p exact "
              f"{s['p_value_exact']:.3g} (log10 {s['log10_p_value_exact']}), p permutation "
              f"{s['p_value_permutation']:.3g} ({s['n_permutations']} permutations)")
        print(f"wrote {', '.join(summary['files'])}")
    return 0


def _kappa_dict(kappa: Any) -> dict[str, dict[str, float | None]]:
    import math

    return {r: {c: (float(v) if math.isfinite(v) else None) for c, v in row.items()}
            for r, row in kappa.to_dict(orient="index").items()}
