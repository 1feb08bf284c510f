"""The ``skin-core`` command line: one verb per step of the study (see DESIGN.md).

Each verb lives in its own module under :mod:`skin_core.cli` that defines
``register(subparsers)``; the module imports heavy libraries (torch, LightGBM...) only
inside its handler so ``skin-core --help`` stays fast. Handlers return an exit status.
Bad input raises :class:`~skin_core.errors.SkinCoreError`: its one-sentence message is
printed to stderr and the exit status is 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import sys
from collections.abc import Sequence
from typing import Any

from skin_core import __version__
from skin_core.errors import SkinCoreError

#: Modules under skin_core.cli that register verbs, in help order.
COMMAND_MODULES: tuple[str, ...] = (
    "data",
    "demo_data",
    "train",
    "difficulty",
    "quality",
    "readers",
    "meta",
    "bundle",
    "index",
    "calibrate",
    "predict",
    "evaluate",
    "study",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every registered verb."""
    parser = argparse.ArgumentParser(
        prog="skin-core",
        description="Skin Disease Expert study engine: data, training, difficulty, quality, "
        "reader studies, meta-classifier, bundles and prediction.",
    )
    parser.add_argument("--version", action="version", version=f"skin-core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"skin_core.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except SkinCoreError as exc:
        print(f"skin-core: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("skin-core: interrupted; finished outputs are kept and --resume continues.",
              file=sys.stderr)
        return 130


def invoke(argv: Sequence[str]) -> Any:
    """Run one verb in this process with ``--json`` and return its parsed JSON result.

    The study orchestration uses this so that each step runs exactly the code of its verb.
    Errors propagate (:class:`~skin_core.errors.SkinCoreError` for bad input); the verb's
    progress bars still go to stderr.
    """
    argv = list(argv)
    if "--json" not in argv:
        argv.append("--json")
    args = build_parser().parse_args(argv)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        status = int(args.handler(args) or 0)
    if status != 0:
        raise SkinCoreError(f"skin-core {' '.join(argv)} exited with status {status}.")
    text = buf.getvalue().strip()
    return json.loads(text) if text else None
