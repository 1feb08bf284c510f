"""Training runs of a workspace: list them with their state, launch, resume and watch them.

Runs are made three ways, and the Training page lists them all:

- ``skin-core train --out runs/NAME``: a bare run under ``runs/``;
- ``skin-core study --out studies/NAME`` and ``skin-core demo`` (``studies/demo``): the run of a
  study is ``STUDY/run/``;
- the Training page's *Launch*: a background job (:mod:`skin_core.jobs`) running
  ``skin-core study`` into ``studies/NAME``.

A run's state comes from its job when the app started it (the job knows whether its process
ended and how), otherwise from the run's own ``status.json``: a run that says ``running`` but
whose process (``pid``) is gone was interrupted (killed, machine restarted), and so was a
study whose training finished but whose later steps never did. Interrupted, cancelled and
failed runs can be resumed: finished folds and study steps are kept.

:func:`launch_training` starts a study from the app's form as a background job (refused
before anything is written when the device is busy); :func:`run_progress` and
:func:`study_steps` read a run's live state for the page's poller.

Process checks only see this machine: a run trained by another host (Ray on shared storage)
shows as interrupted here while it may still run there.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from skin_core.errors import ConfigError
from skin_core.jobs import (
    JobBusyError,
    JobStatus,
    active_job,
    list_jobs,
    pid_alive,
    skin_core_argv,
    start_job,
)
from skin_core.workspace import Workspace

#: States from which :func:`resume_run` restarts a run.
RESUMABLE: tuple[str, ...] = ("interrupted", "cancelled", "failed")

_JOB_STATE = {"running": "running", "finished": "finished", "failed": "failed",
              "cancelled": "cancelled", "lost": "interrupted"}


@dataclass(frozen=True)
class RunInfo:
    """One training run and what is known about it right now.

    Attributes
    ----------
    name: the study's name for a study's run, else the run folder's name.
    run_dir: the run directory.
    study: the study folder when the run belongs to one, else ``None``.
    state: ``starting``, ``running``, ``finished``, ``failed``, ``cancelled`` or
        ``interrupted`` (its process is gone without finishing).
    progress: training progress 0-1 from ``status.json``.
    started, finished: ISO times (``None`` when unknown).
    source: ``app`` (a job of the Training page), ``study`` or ``train`` (the command line).
    job: the latest job of this run, when the app started one.
    device: the device its job holds (``None`` for command-line runs).
    """

    name: str
    run_dir: Path
    study: Path | None
    state: str
    progress: float
    started: str | None
    finished: str | None
    source: str
    job: JobStatus | None = None
    device: str | None = None

    @property
    def resumable(self) -> bool:
        return self.state in RESUMABLE

    @property
    def active(self) -> bool:
        return self.state in ("starting", "running")

    @property
    def key(self) -> str:
        """A stable id for widgets: the run directory."""
        return str(self.run_dir)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "status.json").is_file() or (path / "config.yaml").is_file())


def _study_complete(study: Path) -> bool:
    return (study / "report.html").is_file()


def _state_from_disk(run_dir: Path, study: Path | None, status: dict[str, Any]) -> str:
    state = str(status.get("state") or "")
    alive = pid_alive(int(status.get("pid") or -1))
    if state in ("running", "queued"):
        return "running" if alive else "interrupted"
    if state == "finished" and study is not None and not _study_complete(study):
        # the study runs its later steps in the process that trained
        return "running" if alive else "interrupted"
    if state in ("finished", "failed", "cancelled"):
        return state
    return "interrupted"  # a config.yaml without any status: the run never got going


def run_info(run_dir: str | os.PathLike[str], *, job: JobStatus | None = None,
             study: str | os.PathLike[str] | None = None) -> RunInfo:
    """Describe one run directory (its latest ``job`` when the app started it)."""
    rd = Path(run_dir).resolve()
    st = Path(study).resolve() if study is not None else (
        rd.parent if rd.name == "run" and ((rd.parent / "steps.json").is_file()
                                           or (rd.parent / "config.yaml").is_file()
                                           or (rd.parent / "launch.yaml").is_file()) else None)
    status = _read_json(rd / "status.json")
    if job is not None:
        state = _JOB_STATE.get(job.state, job.state)
        if state == "running" and not status:
            state = "starting"
        source = "app"
    else:
        state = _state_from_disk(rd, st, status)
        source = "study" if st is not None else "train"
    started = status.get("started") or (job.started if job is not None else None)
    finished = (job.finished if job is not None and job.finished else status.get("finished"))
    progress = 1.0 if state == "finished" else float(status.get("progress") or 0.0)
    return RunInfo(name=st.name if st is not None else rd.name, run_dir=rd, study=st,
                   state=state, progress=progress, started=started, finished=finished,
                   source=source, job=job, device=job.device if job is not None else None)


def list_runs(ws: Workspace) -> list[RunInfo]:
    """Every run of the workspace: ``runs/*``, ``studies/*/run`` and the app's jobs.

    One entry per run directory (its latest job when there are several, e.g. after a
    resume); active runs first, then the newest.
    """
    latest: dict[Path, JobStatus] = {}
    for job in list_jobs(ws.jobs):  # newest first
        if job.run_dir:
            latest.setdefault(Path(job.run_dir).resolve(), job)
    dirs: dict[Path, Path | None] = {}
    if ws.runs.is_dir():
        for d in sorted(ws.runs.iterdir()):
            if _is_run_dir(d):
                dirs[d.resolve()] = None
    if ws.studies.is_dir():
        for s in sorted(ws.studies.iterdir()):
            if _is_run_dir(s / "run"):
                dirs[(s / "run").resolve()] = s.resolve()
    for rd in latest:
        dirs.setdefault(rd, rd.parent if rd.name == "run" else None)
    out = [run_info(rd, job=latest.get(rd), study=study) for rd, study in dirs.items()]
    out.sort(key=lambda r: r.started or "", reverse=True)
    out.sort(key=lambda r: not r.active)  # stable: active first, each part newest first
    return out


def find_run(ws: Workspace, run_dir: str | os.PathLike[str]) -> RunInfo:
    """The current :class:`RunInfo` of one run directory (with its latest job, if any)."""
    rd = Path(run_dir).resolve()
    job = next((j for j in list_jobs(ws.jobs)
                if j.run_dir and Path(j.run_dir).resolve() == rd), None)
    return run_info(rd, job=job)


def runs_table(runs: list[RunInfo]) -> list[dict[str, Any]]:
    """Rows for the Training page: ``name, state, progress, source, started, finished,
    run_dir``."""
    return [{"name": r.name, "state": r.state, "progress": round(r.progress, 3),
             "source": r.source, "started": r.started, "finished": r.finished,
             "run_dir": str(r.run_dir)} for r in runs]


def _config_device(run: RunInfo) -> str:
    """The device a command-line run trained on (``cpu`` / ``cuda``), from its config."""
    import yaml

    cfg_path = run.run_dir / "config.yaml"
    try:
        doc = yaml.safe_load(cfg_path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        doc = {}
    device = str((doc.get("train") or {}).get("device") or "auto")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


def resume_argv(run: RunInfo) -> list[str]:
    """The command that resumes ``run``: its job's own command, ``skin-core study`` on the
    study folder (with the study's ``config.yaml``), or ``skin-core train --resume``."""
    if run.job is not None:
        return list(run.job.argv)
    if run.study is not None:
        argv = ["study", "--out", str(run.study)]
        if (run.study / "config.yaml").is_file():
            argv += ["--config", str(run.study / "config.yaml")]
        return skin_core_argv(*argv)
    return skin_core_argv("train", "--out", str(run.run_dir), "--resume")


def resume_run(ws: Workspace, run: RunInfo, *, device: str | None = None) -> JobStatus:
    """Restart an interrupted, cancelled or failed run as a background job.

    Finished folds (and a study's finished steps) are kept. The run's ``cancel`` file is
    removed first (the trainer would stop at once otherwise).

    Raises
    ------
    ConfigError
        The run is running, starting or finished.
    JobBusyError
        Another job runs on the device.
    """
    if not run.resumable:
        raise ConfigError(f"Run {run.name!r} is {run.state}; only an interrupted, cancelled or "
                          "failed run can be resumed.")
    (run.run_dir / "cancel").unlink(missing_ok=True)
    dev = device or (run.job.device if run.job is not None else _config_device(run))
    return start_job(resume_argv(run), jobs_dir=ws.jobs, name=run.name, device=dev,
                     run_dir=run.run_dir, env={"PYTHONUNBUFFERED": "1"})


# --------------------------------------------------------------------------------------------
# launching a run from the app, and watching it

#: Architectures offered by the training page (timm names; small ones train on a CPU).
TRAIN_ARCHS: tuple[str, ...] = (
    "resnet10t", "mobilenetv3_small_050", "efficientnet_b0", "resnet18", "mobilenetv2_100",
    "densenet121", "convnext_tiny", "test_resnet", "test_efficientnet",
)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def training_config(*, archs: Sequence[str], folds: int, epochs: int, img_size: int,
                    device: str = "cpu", backend: str = "local", batch_size: int = 32,
                    bundle_out: str | os.PathLike[str] | None = None,
                    fast: bool = False) -> dict[str, Any]:
    """A study configuration whose ``train`` section is the chosen options.

    ``fast`` shrinks the analyses' resampling (permutations, bootstrap) for a quick look.

    Raises
    ------
    ConfigError
        No architecture, ``folds`` < 2, ``epochs`` < 1 or ``img_size`` < 16.
    """
    from skin_core.study import load_study_config

    if not archs:
        raise ConfigError("Choose at least one architecture to train.")
    if int(folds) < 2 or int(epochs) < 1 or int(img_size) < 16:
        raise ConfigError(f"Training needs folds >= 2, epochs >= 1 and an image size >= 16 px; "
                          f"got folds={folds}, epochs={epochs}, image size={img_size}.")
    overrides: dict[str, Any] = {
        "folds": {"k": int(folds), "seed": 0},
        "train": {"archs": list(archs), "folds": int(folds), "epochs": int(epochs),
                  "img_size": int(img_size), "batch_size": int(batch_size), "device": device,
                  "backend": backend, "pretrained": "none"},
    }
    if fast:
        overrides["difficulty"] = {"permutations": 200}
        overrides["meta"] = {"bootstrap": 50}
    if bundle_out is not None:
        overrides["bundle"] = {"out": str(bundle_out)}
    return load_study_config(None, overrides)


def training_devices() -> list[str]:
    """Devices for the Training page, the best first: ``cuda`` first when a GPU is visible."""
    import torch

    return ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu", "cuda"]


def new_study_name(ws: Any, prefix: str = "run") -> str:
    """A fresh study name ``PREFIX-YYYYmmdd-HHMMSS`` not yet used under ``ws.studies``."""
    base = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    name, i = base, 1
    while (ws.studies / name).exists() or (ws.models / name).exists():
        i += 1
        name = f"{base}-{i}"
    return name


def launch_training(ws: Any, *, name: str, dataset: str, config: Mapping[str, Any],
                    device: str = "cpu") -> Any:
    """Start ``skin-core study`` as a background job: train, analyse and bundle in one go.

    The study goes to ``ws.studies / name`` and its bundle to ``ws.models / name``; the job's
    config is kept at ``STUDY/launch.yaml``. The job holds ``device`` (one job per device).

    Returns
    -------
    :class:`skin_core.jobs.JobStatus` of the started job.

    Raises
    ------
    ConfigError
        An invalid study name or an existing study of that name.
    JobBusyError
        Another job already runs on ``device`` (then no study folder is created).
    """
    import yaml

    from skin_core.io import atomic_write_text

    if not _NAME_RE.match(name):
        raise ConfigError(f"Study name {name!r} must be 1-64 letters, digits, '_', '-' or '.', "
                          "starting with a letter or digit.")
    out = ws.studies / name
    if out.exists():
        raise ConfigError(f"A study named {name!r} already exists in {ws.studies}; choose "
                          "another name or resume it from the list of runs.")
    busy = active_job(ws.jobs, device)
    if busy is not None:  # refuse before anything is written
        raise JobBusyError(f"Job {busy.name!r} ({busy.job_id}) is already running on {device}; "
                           "wait for it to finish or cancel it before starting another.")
    cfg = dict(config)
    cfg["bundle"] = {"out": str(ws.models / name)}
    cfg["dataset"] = dataset
    out.mkdir(parents=True)
    cfg_path = out / "launch.yaml"
    atomic_write_text(cfg_path, yaml.safe_dump(cfg, sort_keys=False))
    argv = skin_core_argv("study", "--dataset", dataset, "--out", str(out),
                          "--config", str(cfg_path))
    try:
        return start_job(argv, jobs_dir=ws.jobs, name=name, device=device,
                         run_dir=out / "run", env={"PYTHONUNBUFFERED": "1"})
    except JobBusyError:  # another launch took the device meanwhile: leave nothing behind
        cfg_path.unlink(missing_ok=True)
        if not any(out.iterdir()):
            out.rmdir()
        raise


def run_events(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The run's per-epoch events (``events.jsonl`` lines with ``event == "epoch"``)."""
    path = Path(run_dir) / "events.jsonl"
    cols = ["model", "arch", "fold", "epoch", "train_loss", "val_loss", "val_balanced_accuracy",
            "images_per_s", "elapsed_s"]
    rows = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            if isinstance(ev, dict) and ev.get("event") == "epoch":
                rows.append({c: ev.get(c) for c in cols})
    return pd.DataFrame(rows, columns=cols)


def run_progress(run_dir: str | os.PathLike[str], *, now: float | None = None
                 ) -> dict[str, Any]:
    """Live progress of a training run from ``status.json`` and ``events.jsonl``.

    Returns
    -------
    dict with ``state`` (or ``"starting"`` before the trainer wrote anything), ``progress``
    (0-1), ``model``, ``fold``, ``epoch``, the last epoch's ``train_loss``, ``val_loss`` and
    ``val_balanced_accuracy``, ``elapsed_s`` and ``eta_s`` (remaining seconds extrapolated
    from progress so far; ``None`` until there is progress), and ``events`` (DataFrame).
    """
    from datetime import datetime

    rd = Path(run_dir)
    status = _read_json(rd / "status.json")
    events = run_events(rd)
    out: dict[str, Any] = {
        "state": status.get("state", "starting"), "progress": float(status.get("progress") or 0),
        "model": status.get("model"), "fold": status.get("fold"), "epoch": None,
        "train_loss": None, "val_loss": None, "val_balanced_accuracy": None,
        "elapsed_s": None, "eta_s": None, "events": events, "error": status.get("error"),
    }
    if not events.empty:
        last = events.iloc[-1]
        out.update({k: (None if pd.isna(last[k]) else float(last[k])) for k in
                    ("train_loss", "val_loss", "val_balanced_accuracy")})
        out["epoch"] = int(last["epoch"])
        out["model"] = out["model"] or last["model"]
        if out["fold"] is None:
            out["fold"] = int(last["fold"])
    started = status.get("started")
    if started:
        try:
            t0 = datetime.fromisoformat(started).timestamp()
        except ValueError:
            t0 = None
        if t0 is not None:
            end = status.get("finished")
            t1 = datetime.fromisoformat(end).timestamp() if end else (now or time.time())
            out["elapsed_s"] = max(0.0, t1 - t0)
            p = out["progress"]
            if out["state"] == "running" and 0 < p < 1:
                out["eta_s"] = out["elapsed_s"] * (1 - p) / p
            elif out["state"] == "finished":
                out["eta_s"] = 0.0
    return out


def study_steps(study: str | os.PathLike[str]) -> pd.DataFrame:
    """The study's steps so far from ``steps.json``: ``step, status, seconds``."""
    from skin_core.study import STEP_NAMES

    rec = _read_json(Path(study) / "steps.json")
    steps = rec.get("steps", rec) if isinstance(rec, dict) else {}
    rows = []
    for name in STEP_NAMES:
        r = steps.get(name) if isinstance(steps, dict) else None
        if isinstance(r, dict):
            rows.append({"step": name, "status": "done", "seconds": r.get("seconds")})
        else:
            rows.append({"step": name, "status": "pending", "seconds": None})
    return pd.DataFrame(rows, columns=["step", "status", "seconds"])


def format_seconds(s: float | None) -> str:
    """``1 h 02 min``, ``3 min 05 s``, ``42 s`` or ``–``."""
    if s is None or not math.isfinite(s):
        return "–"
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"
