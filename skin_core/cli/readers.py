"""``skin-core readers``: reader study statistics (experts vs truth vs CNNs).

``skin-core readers --readings R --truth T [--groups G] [--cnn P] --out DIR [--json]`` writes
``DIR/readers.json``, ``DIR/readers.md`` and ``DIR/reader_images.csv``.

``skin-core readers simulate --generation-truth generation_truth.csv --out readings.csv
[--groups difficulty.csv --n-per-group 50] [--n-readers 8] [--seed 0]`` writes a simulated
``readings.csv`` for the demo dataset.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from skin_core.cli._common import add_json_option, print_json


def register(subparsers: Any) -> None:
    """Add the ``readers`` verb (and its ``simulate`` sub-command)."""
    p = subparsers.add_parser(
        "readers",
        help="reader study: per-reader and consensus accuracy, agreement, CNN comparison, "
        "difficult-vs-control tests",
        description="Reader study statistics from readings.csv (reader_id, image_id, "
        "diagnosis[, comment]). Per group: per-reader, pooled and consensus accuracy, "
        "Cohen's kappa of the consensus, Fleiss' kappa and pairwise agreement, CNN accuracy. "
        "Between two groups: Fisher (consensus, pooled readings), paired per-reader tests, "
        "two-way cluster bootstrap, image permutation test, crossed GLMM. "
        "Use 'skin-core readers simulate ...' to simulate readings for the demo data.",
    )
    p.add_argument("--readings", metavar="readings.csv",
                   help="reader_id, image_id, diagnosis[, comment]")
    p.add_argument("--truth", metavar="SPEC|CSV",
                   help="dataset spec (isic2019:DIR, ...), image_id,label CSV or ISIC one-hot CSV")
    p.add_argument("--groups", default=None, metavar="CSV",
                   help="difficulty.csv or image_id,group CSV (default: one group 'all')")
    p.add_argument("--cnn", default=None, metavar="CSV",
                   help="oof.csv or predictions CSV (image_id,pred or image_id,prob_<CLASS>...)")
    p.add_argument("--out", metavar="DIR", help="output folder")
    p.add_argument("--compare", nargs=2, default=None, metavar=("A", "B"),
                   help="the two groups to test, effect A - B (default: difficult control)")
    p.add_argument("--ties", choices=("drop", "wrong"), default="drop",
                   help="consensus ties: leave out (default) or count wrong")
    p.add_argument("--other", choices=("drop", "wrong"), default="drop",
                   help="OTHER consensus: leave out (default) or count wrong")
    p.add_argument("--dedupe", choices=("first", "last"), default=None,
                   help="keep the first/last of duplicate (reader, image) readings "
                   "(default: error)")
    p.add_argument("--skip-missing", action="store_true",
                   help="leave out (and list) images absent from the truth instead of failing")
    p.add_argument("--classes", default=None, metavar="A,B,...",
                   help="class vocabulary (default: from the truth)")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="N",
                   help="bootstrap resamples (default 2000)")
    p.add_argument("--permutations", type=int, default=10_000, metavar="N",
                   help="image-label permutations (default 10000)")
    p.add_argument("--confidence", type=float, default=0.95, help="interval level (0.95)")
    p.add_argument("--seed", type=int, default=0, help="seed of bootstrap and permutations")
    p.add_argument("--no-glmm", action="store_true", help="skip the crossed GLMM")
    add_json_option(p)
    p.set_defaults(handler=run)

    sub = p.add_subparsers(dest="readers_command", metavar="simulate")
    s = sub.add_parser(
        "simulate",
        help="simulate a readings.csv for the demo dataset",
        description="Simulated readers with individual skill whose chance of a correct answer "
        "falls with each image's latent difficulty (blur, ambiguity) from generation_truth.csv, "
        "confusing classes plausibly; deterministic for a seed.",
    )
    s.add_argument("--generation-truth", required=True, metavar="CSV|DIR",
                   help="the demo dataset's generation_truth.csv (or the dataset folder)")
    s.add_argument("--out", required=True, metavar="readings.csv", help="output CSV")
    s.add_argument("--groups", default=None, metavar="CSV",
                   help="difficulty.csv or image_id,group CSV: read only its images")
    s.add_argument("--n-per-group", type=int, default=None, metavar="N",
                   help="read only N images per group (needs --groups; default: all images)")
    s.add_argument("--n-readers", type=int, default=8, metavar="R", help="readers (default 8)")
    s.add_argument("--seed", type=int, default=0, help="random seed")
    add_json_option(s)
    s.set_defaults(handler=run_simulate)


def run(args: argparse.Namespace) -> int:
    """Handler of ``skin-core readers``; returns the exit status."""
    from skin_core.analysis.readers import analyze_readers, write_reader_report
    from skin_core.errors import ConfigError

    missing = [f"--{n}" for n in ("readings", "truth", "out") if not getattr(args, n)]
    if missing:
        raise ConfigError(f"skin-core readers needs {', '.join(missing)} (or use 'skin-core "
                          "readers simulate ...' to simulate readings).")
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    print("skin-core readers: analysing ...", file=sys.stderr)
    study = analyze_readers(
        args.readings, args.truth, classes=classes, groups=args.groups, cnn=args.cnn,
        compare=tuple(args.compare) if args.compare else None, ties=args.ties,
        other=args.other, dedupe=args.dedupe or "error", skip_missing=args.skip_missing,
        n_bootstrap=args.bootstrap, n_permutations=args.permutations,
        confidence=args.confidence, seed=args.seed, glmm=not args.no_glmm,
    )
    paths = write_reader_report(study, args.out)
    if args.json:
        print_json(study.summary)
        return 0
    s = study.summary
    inp = s["inputs"]
    print(f"{inp['n_readings']} readings, {inp['n_readers']} readers, {inp['n_images']} images")
    for name, g in s["groups"].items():
        c = g["consensus"]
        acc = g["pooled_accuracy"]
        cacc = c["accuracy"]
        print(f"  {name}: {g['n_images']} images, pooled accuracy "
              f"{'n/a' if acc is None else f'{acc:.1%}'}, consensus accuracy "
              f"{'n/a' if cacc is None else f'{cacc:.1%}'} (n={c['n']}, ties {c['n_ties']}, "
              f"OTHER {c['n_other']})")
    for t in s["tests"]:
        p = t["p_value"]
        lo, hi = t["ci"]
        ci = "" if lo is None else f" [{lo:.3f}, {hi:.3f}]"
        eff = "n/a" if t["effect"] is None else f"{t['effect']:.3f}"
        print(f"  {t['name']}: {eff}{ci}" + ("" if p is None else f", p={p:.3g}"))
    for w in s["warnings"]:
        print(f"note: {w}", file=sys.stderr)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    """Handler of ``skin-core readers simulate``; returns the exit status."""
    from skin_core.analysis.reader_sim import read_generation_truth, simulate_readings
    from skin_core.analysis.readers import read_groups
    from skin_core.errors import ConfigError
    from skin_core.io import atomic_write_csv

    if args.n_per_group is not None and args.groups is None:
        raise ConfigError("--n-per-group needs --groups (the groups to sample images from).")
    gt = read_generation_truth(args.generation_truth)
    groups = read_groups(args.groups) if args.groups else None
    images = list(groups.index) if groups is not None and args.n_per_group is None else None
    rd = simulate_readings(gt, groups=groups, n_per_group=args.n_per_group, images=images,
                           n_readers=args.n_readers, seed=args.seed)
    atomic_write_csv(args.out, rd)
    summary = {"out": str(args.out), "n_readings": int(len(rd)),
               "n_readers": int(rd["reader_id"].nunique()),
               "n_images": int(rd["image_id"].nunique()), "seed": args.seed}
    if args.json:
        print_json(summary)
    else:
        print(f"wrote {args.out}: {summary['n_readings']} readings by {summary['n_readers']} "
              f"readers of {summary['n_images']} images")
    return 0
