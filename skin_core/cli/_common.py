"""Small helpers shared by the CLI verbs (output of results, common options)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from skin_core.io import to_json


def add_dataset_option(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--dataset SPEC`` (``isic2019:DIR``, ``ham10000:DIR``, ``folder:DIR``, ``csv:FILE``)."""
    parser.add_argument(
        "--dataset",
        required=required,
        metavar="SPEC",
        help="dataset spec: isic2019:DIR, ham10000:DIR[,isic2019_csv=FILE], folder:DIR, "
        "csv:FILE[,root=DIR]",
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """``--json``: print machine-readable results on stdout."""
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def print_json(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout (NumPy values and records allowed)."""
    sys.stdout.write(to_json(obj) + "\n")
