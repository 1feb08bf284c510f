"""Evaluations launched from the app: background jobs, where results go, the last result.

The Validation page starts ``skin-core evaluate`` (:func:`evaluation_args`) as a background
job (:func:`skin_core.jobs.start_job`, so a browser refresh loses nothing) writing into
:func:`new_evaluation_dir` (``ROOT/evaluations/<bundle>-<UTC time>/``), and shows the newest
``evaluation.json`` of the active bundle found there or in the active study's folder
(:func:`last_evaluation`). This module sits with the serving code and so does not start jobs
itself (``skin_core.jobs`` belongs to the application layer, tests/test_layering.py).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from skin_core.evaluation.evaluate import find_evaluations

#: Folder (under the workspace root) of the app's evaluations.
EVALUATIONS_DIR = "evaluations"

#: Job names of evaluations start with this (the Training page's jobs do not).
JOB_PREFIX = "evaluate "


def evaluations_root(ws: Any) -> Path:
    """``ROOT/evaluations`` of a :class:`~skin_core.workspace.Workspace`."""
    return Path(ws.root) / EVALUATIONS_DIR


def evaluation_args(bundle: str | os.PathLike[str], dataset: str, out: str | os.PathLike[str],
                    *, class_map: str | None = None, drop_metadata: str = "none",
                    limit: int | None = None, bootstrap: int = 1000, stability: int = 200,
                    seed: int = 0, device: str = "auto") -> list[str]:
    """The ``skin-core evaluate ...`` arguments for these options (give them to
    :func:`skin_core.jobs.skin_core_argv` to run them with this interpreter).

    Raises
    ------
    ConfigError
        An empty dataset spec or a bundle folder without ``bundle.json``.
    """
    from skin_core.errors import ConfigError

    if not dataset or not dataset.strip():
        raise ConfigError("Enter a dataset spec to evaluate on (e.g. isic2019:data/demo or "
                          "ham10000:DIR).")
    if not (Path(bundle) / "bundle.json").is_file():
        raise ConfigError(f"{bundle} is not a model bundle (no bundle.json); choose a bundle "
                          "on the Overview page.")
    args = ["evaluate", "--bundle", str(bundle), "--dataset", dataset.strip(), "--out",
            str(out), "--drop-metadata", drop_metadata, "--bootstrap", str(int(bootstrap)),
            "--stability", str(int(stability)), "--seed", str(int(seed)), "--device", device]
    if class_map and class_map.strip():
        args += ["--class-map", class_map.strip()]
    if limit:
        args += ["--limit", str(int(limit))]
    return args


def job_device() -> str:
    """The device an evaluation job runs on and holds: ``cuda`` when a GPU is visible, else
    ``cpu`` (the Predictor's ``auto`` choice; one job per device, shared with training)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def new_evaluation_dir(ws: Any, bundle: str | os.PathLike[str]) -> Path:
    """``ROOT/evaluations/<bundle name>-<UTC time>`` (not created)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return evaluations_root(ws) / f"{Path(bundle).name}-{stamp}"


def job_name(bundle: str | os.PathLike[str]) -> str:
    """The background job's name for an evaluation of ``bundle``."""
    return f"{JOB_PREFIX}{Path(bundle).name}"


def evaluation_jobs(jobs: Sequence[Any]) -> list[Any]:
    """The evaluation jobs among :func:`skin_core.jobs.list_jobs` (newest first)."""
    return [j for j in jobs if str(j.name).startswith(JOB_PREFIX)]


def last_evaluation(ws: Any, bundle: str | os.PathLike[str] | None,
                    study: str | os.PathLike[str] | None = None
                    ) -> tuple[Path, dict[str, Any]] | None:
    """The newest ``evaluation.json`` of ``bundle`` under ``ROOT/evaluations`` or the study
    folder, with its content; ``None`` when there is none."""
    if bundle is None:
        return None
    folders = [evaluations_root(ws)] + ([Path(study)] if study is not None else [])
    for path in find_evaluations(folders, bundle=bundle):
        try:
            return path, json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return None


def headline_metrics(ev: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(label, value, "95% CI lo-hi")`` of the headline figures, for metric tiles."""
    from skin_core.evaluation.html import HEADLINE, fmt

    out = []
    ens = ev.get("ensemble") or {}
    items = [*((label, ev.get(key)) for key, label in HEADLINE),
             ("Balanced accuracy, plain ensemble", ens.get("balanced_accuracy"))]
    mel = ev.get("melanoma_sensitivity_at_specificity") or {}
    for key in ("0.80", "0.90"):
        if key in mel:
            items.append((f"{mel.get('class')} sensitivity at {float(key):.0%} specificity",
                          mel[key]))
    for label, f in items:
        f = f or {}
        lo, hi = (f.get("ci") or [None, None])
        ci = "" if lo is None or hi is None else f"95% CI {fmt(lo)}–{fmt(hi)}"
        out.append((label, fmt(f.get("value")), ci))
    return out


__all__ = [
    "EVALUATIONS_DIR",
    "JOB_PREFIX",
    "evaluation_args",
    "evaluation_jobs",
    "evaluations_root",
    "headline_metrics",
    "job_device",
    "job_name",
    "last_evaluation",
    "new_evaluation_dir",
]
