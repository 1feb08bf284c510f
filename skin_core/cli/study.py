"""``skin-core study`` (the whole study on a dataset) and ``skin-core demo`` (the embedded demo)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from skin_core.cli._common import add_json_option, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    from skin_core.study import STEP_NAMES

    p = subparsers.add_parser(
        "study",
        help="run the whole study on a dataset (resumable)",
        description="Data summary -> folds -> quality -> K-fold training -> difficulty and "
        "significance -> reader study (with --readings) -> meta-classifier -> bundle -> report. "
        "Each step is skipped when its outputs exist and match the config.",
    )
    p.add_argument("--dataset", metavar="SPEC",
                   help="isic2019:DIR, ham10000:DIR, folder:DIR or csv:FILE "
                   "(or 'dataset:' in --config)")
    p.add_argument("--out", required=True, metavar="DIR", help="study folder")
    p.add_argument("--config", metavar="FILE", help="study config YAML (see configs/)")
    p.add_argument("--readings", metavar="CSV", help="reader study readings.csv")
    p.add_argument("--resume", action="store_true",
                   help="accepted for clarity: an existing study folder is always resumed")
    p.add_argument("--force", action="append", default=[], choices=STEP_NAMES, metavar="STEP",
                   help=f"redo STEP even if up to date (one of {', '.join(STEP_NAMES)})")
    add_json_option(p)
    p.set_defaults(handler=run_study_cmd)

    d = subparsers.add_parser(
        "demo",
        help="build the embedded demo: synthetic data, a small real study, readers, bundle",
        description="Generate the demo dataset into data/demo (when missing), run the study "
        "with the built-in demo config (skin_core.demo.DEMO_CONFIG: three tiny CNNs x 5 folds "
        "at 64 px) into studies/demo with simulated readers, and write the bundle to "
        "models/demo. Deterministic; under 4 minutes on 2 CPU cores.",
    )
    d.add_argument("--root", default=".", metavar="DIR", help="project folder (default .)")
    d.add_argument("--config", metavar="FILE", help="study config (default: built-in demo)")
    d.add_argument("--force", action="append", default=[], choices=STEP_NAMES, metavar="STEP")
    add_json_option(d)
    d.set_defaults(handler=run_demo_cmd)


def _say(line: str) -> None:
    """One progress line on stderr (above any progress bar when stderr is a terminal)."""
    text = f"skin-core: {line}"
    if sys.stderr.isatty():
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)  # clears and redraws the bars around the line
    else:
        print(text, file=sys.stderr, flush=True)


def _following(study_dir: Path) -> Any:
    """Per-epoch lines with an ETA while the study trains (:mod:`skin_core.progress`)."""
    from skin_core.progress import follow_training

    return follow_training(study_dir / "run", say=_say)


def _after(follower: Any) -> Any:
    """``_say`` that first says the training lines pending in ``follower``: the epochs and
    "train finished" then come before the next step's own lines (and its progress bars)."""
    def say(line: str) -> None:
        follower.flush()
        _say(line)
    return say


def run_study_cmd(args: argparse.Namespace) -> int:
    from skin_core.study import run_study

    with _following(Path(args.out)) as follower:
        result = run_study(args.dataset, args.out, config=args.config, readings=args.readings,
                           force=args.force, progress=_after(follower))
    if args.json:
        print_json(result.to_dict())
    else:
        ran = [o.name for o in result.outcomes if o.status == "ran"]
        print(f"study in {result.out}: ran {', '.join(ran) or 'nothing (all up to date)'}; "
              f"report {result.out / 'report.html'}")
    return 0


def run_demo_cmd(args: argparse.Namespace) -> int:
    from skin_core.demo import build_demo
    from skin_core.workspace import current_workspace

    root = Path(args.root).resolve()
    # where build_demo puts the study: the workspace's studies/ in the current folder
    studies = current_workspace().studies if root == Path.cwd().resolve() else root / "studies"
    with _following(studies / "demo") as follower:
        result = build_demo(args.root, config=args.config, force=args.force,
                            progress=_after(follower))
    if args.json:
        print_json(result)
    else:
        print(f"demo ready: data {result['data']}, study {result['study']}, bundle "
              f"{result['bundle']} ({result['seconds']:.0f} s)")
    return 0
