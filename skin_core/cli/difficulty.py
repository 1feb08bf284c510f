"""``skin-core difficulty``: consistently misclassified images and their significance.

Reads an ``oof.csv`` and writes ``DIR/difficulty.csv`` and ``DIR/significance.json`` (and
``DIR/quality_vs_difficulty.json`` with ``--quality``, ``DIR/ground_truth_check.json`` with
``--truth`` on the demo data); ``--json`` prints a summary (counts
per group, significance, the kappa matrix of the models' errors).

Lesion ids (from a ``lesion_id`` column of the OOF table, or from ``--dataset SPEC``) make
every test lesion-level (``--clusters auto``, the default): images of one lesion are not
independent. The output says which clustering was used.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from skin_core.cli._common import add_json_option, print_json

#: ``--clusters`` choices: lesion level when ids are known (auto), always, or never.
CLUSTER_CHOICES = ("auto", "lesion", "image")


def register(subparsers: Any) -> None:
    """Add the ``difficulty`` verb."""
    p = subparsers.add_parser(
        "difficulty",
        help="images every model gets wrong, label-issue scores, significance vs chance",
        description="From out-of-fold predictions of M models: per-image difficulty "
        "(difficulty.csv), pairwise error consistency, and exact + permutation tests that "
        "'wrong by all models' is more than independent models predict (significance.json); "
        "lesion-level tests when lesion ids are known (OOF lesion_id column or --dataset).",
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
    p.add_argument("--dataset", default=None, metavar="SPEC",
                   help="dataset spec (isic2019:DIR, ham10000:DIR, folder:DIR, csv:FILE) whose "
                   "lesion_id column gives the lesions (joined on image_id; overrides an OOF "
                   "lesion_id column)")
    p.add_argument("--clusters", choices=CLUSTER_CHOICES, default="auto",
                   help="unit of the tests: 'lesion' (images of a lesion kept together), "
                   "'image' (images independent), 'auto' (default): lesion when ids are known")
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
    oof, lesion_source = _with_lesions(oof, args)
    lesions = _lesions_for_tests(oof, args.clusters, lesion_source)
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
        seed=args.seed, models=oof.models, classes=oof.classes, lesions=lesions,
    )
    sig_dict = sig.to_dict()
    sig_dict["clustering"]["source"] = lesion_source if lesions is not None else None
    sig_dict["source"] = {"oof": str(args.oof), "by": args.by,
                          "n_dropped_images": oof.n_dropped_images,
                          "members": {k: list(v) for k, v in oof.members.items()}}
    sig_dict["error_consistency_kappa"] = _kappa_dict(kappa)
    bar.update()
    quality_result = None
    if args.quality:
        step("quality")
        try:
            from skin_core.analysis.quality_difficulty import compare_quality
        except ImportError as e:
            raise ConfigError("--quality needs skin_core.analysis.quality_difficulty "
                              "(compare_quality), "
                              "which this installation lacks; run without --quality.") from e
        qpath = Path(args.quality)
        try:
            quality_df = pd.read_csv(qpath, dtype={"image_id": str})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise DataError(f"Quality file {qpath} cannot be read as CSV ({e}).") from e
        try:
            quality_result = compare_quality(
                quality_df, table, seed=args.seed,
                clusters="lesion" if lesions is not None else "image")
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
        "clustering": sig_dict["clustering"],
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
              f"{_fmt(s['expected_all_wrong'], '.2f')} under independent models; p exact "
              f"{_fmt(s['p_value_exact'])} (log10 {s['log10_p_value_exact']}), p permutation "
              f"{_fmt(s['p_value_permutation'])} ({s['n_permutations']} permutations)")
        c = summary["clustering"]
        if c["unit"] == "lesion":
            print(f"tests at lesion level: {c['n_clusters']} lesions ({c['n_multi_image_lesions']} "
                  f"with several images, {c['n_images_in_multi_image_lesions']} images), "
                  f"lesion ids from {c['source']}")
        else:
            print("tests at image level: images treated as independent (no lesion ids; pass "
                  "--dataset or an OOF with lesion_id)")
        print(f"wrote {', '.join(summary['files'])}")
    return 0


def _with_lesions(oof: Any, args: argparse.Namespace) -> tuple[Any, str | None]:
    """``oof`` with lesion ids from ``--dataset`` when given; and where the ids came from."""
    import dataclasses

    import numpy as np

    from skin_core.constants import IMAGE_ID, LESION_ID
    from skin_core.errors import DataError

    if args.dataset is None:
        return oof, (f"{LESION_ID} column of {args.oof}" if oof.lesion_ids is not None else None)
    from skin_core.data.tables import load_dataset

    table = load_dataset(args.dataset, check_images=False).table
    ids = table[IMAGE_ID].astype(str).to_numpy()
    lesion = table[LESION_ID].to_numpy(dtype=object) if LESION_ID in table.columns \
        else np.full(len(table), None, dtype=object)
    lookup = dict(zip(ids, lesion, strict=True))
    absent = [i for i in oof.image_ids if i not in lookup]
    if absent:
        raise DataError(f"{len(absent)} of {oof.n_images} images of {args.oof} are not in the "
                        f"dataset {args.dataset} (first: {absent[0]}); pass the dataset the "
                        f"OOF predictions were made on.")
    lesion_ids = np.array([lookup[i] for i in oof.image_ids], dtype=object)
    return dataclasses.replace(oof, lesion_ids=lesion_ids), f"dataset {args.dataset}"


def _lesions_for_tests(oof: Any, clusters: str, source: str | None) -> Any:
    """The lesion ids the tests use (``None``: image level), per ``--clusters``."""
    from skin_core.analysis.clusters import missing_lesion_ids
    from skin_core.errors import ConfigError

    known = oof.lesion_ids is not None and not missing_lesion_ids(oof.lesion_ids).all()
    if clusters == "image" or (clusters == "auto" and not known):
        return None
    if not known:
        where = source or "the OOF table (no lesion_id column)"
        raise ConfigError(f"--clusters lesion needs lesion ids, but {where} has none; pass "
                          f"--dataset SPEC or an OOF with a lesion_id column, or use "
                          f"--clusters image.")
    return oof.lesion_ids


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "n/a" if value is None else format(value, spec)


def _kappa_dict(kappa: Any) -> dict[str, dict[str, float | None]]:
    import math

    return {r: {c: (float(v) if math.isfinite(v) else None) for c, v in row.items()}
            for r, row in kappa.to_dict(orient="index").items()}
