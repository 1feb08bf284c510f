"""A training run: K folds x architectures, out-of-fold predictions, one run directory.

:func:`train_run` is what ``skin-core train`` and the app's Training page call. The run
directory (DESIGN.md) holds:

- ``config.yaml``: dataset spec, classes, fingerprint, library versions and every option
  (under ``train``), enough to reproduce the run;
- ``folds.csv``: ``image_id, fold`` (fold -1: the calibration split, never trained on or
  predicted);
- ``status.json``: ``state`` (queued / running / finished / failed / cancelled),
  ``progress`` (0-1), current ``model``/``arch``/``fold``/``epoch``, ``started``,
  ``finished``, ``pid``, ``error``;
- ``events.jsonl``: one JSON object per epoch per fold (and run start/end events);
- ``members/<model>/fold<k>.safetensors`` + ``fold<k>.json`` (+ ``fold<k>.oof.csv``, the
  fold's share of the OOF table);
- ``oof.csv``: ``image_id, lesion_id, model, arch, fold, label, prob_<CLASS>...``, one row
  per image per model (calibration images excluded), images in dataset order;
- ``metrics.json``: per model, OOF ``balanced_accuracy``, ``macro_f1``, ``accuracy``, ``auc``
  per class, ``n``, ``epoch_selection``, ``n_calibration``, and per fold the selected epoch,
  the inner split's size and the fold's metrics.

Every file is written to a temporary name and renamed. ``resume=True`` keeps finished folds and
continues an interrupted fold from its last epoch checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skin_core.constants import (
    CALIBRATION_FOLD,
    FOLD,
    IMAGE_ID,
    LABEL,
    LESION_ID,
    PATH,
    prob_columns,
)
from skin_core.errors import ConfigError, DataError, SkinCoreError
from skin_core.training.config import TrainConfig, config_from_dict, model_ids
from skin_core.training.engine import CANCEL_FILE, FoldJob, TrainingCancelled, fold_finished

STATES: tuple[str, ...] = ("queued", "running", "finished", "failed", "cancelled")


@dataclass(frozen=True)
class RunResult:
    """What a finished run produced."""

    run_dir: Path
    oof_path: Path
    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "oof_path": str(self.oof_path),
                "metrics": self.metrics}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    """Versions of the libraries a run depends on (python, torch, timm, numpy, skin_core...)."""
    import timm
    import torch

    import skin_core

    out = {"python": platform.python_version(), "torch": str(torch.__version__),
           "timm": str(timm.__version__), "numpy": str(np.__version__),
           "pandas": str(pd.__version__), "skin_core": str(skin_core.__version__)}
    try:
        import safetensors

        out["safetensors"] = safetensors.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def dataset_fingerprint(dataset: Any) -> str:
    """``dataset.fingerprint()`` or sha256 of classes + sorted ``(image_id, label)`` pairs."""
    fp = getattr(dataset, "fingerprint", None)
    if callable(fp):
        return str(fp())
    h = hashlib.sha256(("\t".join(dataset.classes) + "\n").encode())
    pairs = dataset.table[[IMAGE_ID, LABEL]].sort_values(IMAGE_ID, kind="stable")
    h.update("\n".join(pairs[IMAGE_ID].astype(str) + "\t" + pairs[LABEL].astype(str)).encode())
    return h.hexdigest()


class RunStatus:
    """Writes ``status.json`` atomically (the app polls it)."""

    def __init__(self, run_dir: Path, n_jobs: int, epochs: int) -> None:
        self.path = run_dir / "status.json"
        self.n_jobs, self.epochs = max(n_jobs, 1), max(epochs, 1)
        self.data: dict[str, Any] = {}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError):
                self.data = {}

    def write(self, **changes: Any) -> None:
        from skin_core.training.checkpoint import write_json

        self.data.update(changes)
        self.data["updated"] = _now()
        write_json(self.path, self.data)

    def epoch_done(self, event: dict[str, Any], jobs_done: int) -> None:
        frac = (jobs_done + (event["epoch"] + 1) / self.epochs) / self.n_jobs
        self.write(progress=round(min(frac, 1.0), 4), model=event["model"], arch=event["arch"],
                   fold=event["fold"], epoch=event["epoch"])


def _check_archs(config: TrainConfig) -> None:
    import timm

    from skin_core.models.registry import check_arch, network_stride, resolve_pretrained

    for arch in config.archs:
        check_arch(arch)
        stride = network_stride(timm.create_model(arch, pretrained=False, num_classes=2))
        size = config.size_for(arch)
        if size < stride:
            raise ConfigError(
                f"Image size {size} px is too small for {arch!r}, which down-samples "
                f"by {stride}; use --img-size {stride} or larger."
            )
    for arch in config.archs:
        p = resolve_pretrained(config.pretrained_for(arch))
        if p not in ("none", "hub") and not Path(p).is_file():
            raise ConfigError(
                f"Weights file {p} (pretrained start of {arch}) does not exist; pass "
                "--pretrained none, hub or the path of a .safetensors / .pth state dict.")


def _run_doc(dataset: Any, config: TrainConfig, fingerprint: str) -> dict[str, Any]:
    return {
        "dataset": {"spec": getattr(dataset, "spec", "frame"), "fingerprint": fingerprint,
                    "n_images": int(len(dataset.table)), "classes": list(dataset.classes)},
        "classes": list(dataset.classes),
        "models": [m for m, _, _ in model_ids(config)],
        "train": config.to_dict(),
        "versions": library_versions(),
        "created": _now(),
        "command": " ".join(sys.argv),
    }


def _check_resume_compatible(run_dir: Path, doc: dict[str, Any]) -> list[str]:
    """Refuse to resume ``run_dir`` with other data or options; return the added archs.

    A run may be extended with more architectures (``--resume`` with a longer ``archs``
    list): the members already trained are kept when their own options (input size, starting
    weights) are unchanged, and only the new architectures are trained.
    """
    import yaml

    p = run_dir / "config.yaml"
    old = yaml.safe_load(p.read_text()) or {}
    if list(old.get("classes", [])) != doc["classes"]:
        raise ConfigError(
            f"{p} was made for classes {old.get('classes')} but the dataset has "
            f"{doc['classes']}; resume with the dataset the run was started on."
        )
    old_fp = (old.get("dataset") or {}).get("fingerprint")
    if old_fp != doc["dataset"]["fingerprint"]:
        raise ConfigError(
            f"{p} was made for dataset fingerprint {str(old_fp)[:12]}... but this dataset's "
            f"is {doc['dataset']['fingerprint'][:12]}...; resume with the same dataset or start "
            "a new run directory."
        )
    old_train = old.get("train") or {}
    new_train = doc["train"]
    if "epoch_selection" not in old_train:
        raise ConfigError(
            f"{p} was trained before epoch_selection existed: its members kept the epoch with "
            "the best score on the very fold they predict, so its out-of-fold predictions are "
            "biased and cannot be mixed with new ones; start a new run directory."
        )
    keys = ["folds", "epochs", "batch_size", "lr", "seeds", "epoch_selection"]
    if new_train["epoch_selection"] == "inner":
        keys += ["inner_fraction", "patience", "seed"]  # what the inner splits depend on
    for key in keys:
        if key in old_train and old_train[key] != new_train[key]:
            raise ConfigError(
                f"{p} has {key}={old_train[key]!r} but this command asks for "
                f"{new_train[key]!r}; resume with the original options (or --config {p})."
            )
    old_archs = list(old_train.get("archs") or [])
    new_archs = list(new_train["archs"])
    dropped = [a for a in old_archs if a not in new_archs]
    if dropped:
        raise ConfigError(
            f"{p} trains {old_archs} but this command leaves out {dropped}; a resumed run can "
            "only add architectures (start a new run directory to drop some)."
        )
    try:
        before = config_from_dict(
            {k: v for k, v in old_train.items() if k in {f.name for f in fields(TrainConfig)}})
    except ConfigError as exc:
        raise ConfigError(f"{p} holds training options this version cannot read ({exc}); "
                          "start a new run directory.") from exc
    after = config_from_dict(new_train)
    for arch in old_archs:
        for what, a, b in (("input size", before.size_for(arch), after.size_for(arch)),
                           ("pretrained", before.pretrained_for(arch),
                            after.pretrained_for(arch))):
            if a != b and not (what == "pretrained" and _same_file(a, b)):
                raise ConfigError(
                    f"{p} trained {arch} with {what} {a!r} but this command asks for {b!r}; "
                    f"resume with the original options (or --config {p})."
                )
    return [a for a in new_archs if a not in old_archs]


def _same_file(a: str, b: str) -> bool:
    """Two ``pretrained`` specs naming one weights file (e.g. a path and its ``pkg:`` name)."""
    from skin_core.models.registry import resolve_pretrained

    try:
        pa, pb = Path(resolve_pretrained(a)), Path(resolve_pretrained(b))
        return pa.is_file() and pb.is_file() and pa.resolve() == pb.resolve()
    except (ConfigError, OSError):
        return False


def build_jobs(dataset: Any, config: TrainConfig, folds: pd.Series, cache: Any,
               run_dir: Path, *, resume: bool) -> list[FoldJob]:
    """One :class:`FoldJob` per (model, fold), in (arch, seed, fold) order.

    Fold ``k`` trains on the images of the other folds (never on the calibration split, fold
    -1) less, with ``epoch_selection: inner``, its inner split
    (:func:`~skin_core.training.folds.inner_split`), and predicts fold ``k``.

    ``cache`` is one image cache, or a mapping ``input size -> cache`` when architectures
    train at different sizes (``config.img_sizes``); each job gets the cache of its size and
    its own ``img_size`` in the job's config.
    """
    from skin_core.training.folds import inner_split

    table = dataset.table
    ids = table[IMAGE_ID].astype(str).to_numpy()
    labels = _label_index(dataset)
    fold_of = folds.reindex(ids).to_numpy()
    caches = cache if isinstance(cache, dict) else {config.img_size: cache}
    masks = []  # per fold: (train, validation, inner); calibration images are in none
    for k in range(config.folds):
        train, val = (fold_of != CALIBRATION_FOLD) & (fold_of != k), fold_of == k
        inner = np.zeros(len(ids), dtype=bool)
        if config.epoch_selection == "inner":
            inner = inner_split(table, train, fraction=config.inner_fraction,
                                seed=config.seed, fold=k)
        masks.append((train & ~inner, val, inner))
    jobs = []
    for model, arch, seed in model_ids(config):
        size = config.size_for(arch)
        arch_cache = caches[size] if size in caches else next(iter(caches.values()))
        rows = arch_cache.rows(ids)
        cfg = config.to_dict()
        cfg["img_size"] = size
        cfg["pretrained"] = config.pretrained_for(arch)
        for k, (tr, va, inner) in enumerate(masks):
            jobs.append(FoldJob(
                run_dir=str(run_dir), model=model, arch=arch, seed=seed, fold=k,
                classes=tuple(dataset.classes), cache_path=str(arch_cache.path),
                cache_shape=tuple(int(x) for x in arch_cache.array.shape),  # type: ignore[arg-type]
                train_rows=tuple(int(x) for x in rows[tr]),
                train_labels=tuple(int(x) for x in labels[tr]),
                val_rows=tuple(int(x) for x in rows[va]),
                val_labels=tuple(int(x) for x in labels[va]),
                val_ids=tuple(ids[va]), config=cfg, resume=resume,
                inner_rows=tuple(int(x) for x in rows[inner]),
                inner_labels=tuple(int(x) for x in labels[inner])))
    return jobs


def _label_index(dataset: Any) -> np.ndarray:
    li = getattr(dataset, "label_index", None)
    if callable(li):
        return np.asarray(li(), dtype=np.int64)
    lookup = {c: i for i, c in enumerate(dataset.classes)}
    return dataset.table[LABEL].map(lookup).to_numpy(dtype=np.int64)


def assemble_oof(run_dir: str | os.PathLike[str], dataset: Any,
                 models: list[tuple[str, str, int]], n_folds: int) -> pd.DataFrame:
    """Concatenate the per-fold OOF parts into the long ``oof.csv`` table (dataset order).

    Columns ``image_id, lesion_id, model, arch, fold, label, prob_<CLASS>...``; ``lesion_id``
    comes from the dataset table (NaN where unknown).
    """
    run_dir = Path(run_dir)
    order = {i: n for n, i in enumerate(dataset.table[IMAGE_ID].astype(str))}
    parts = []
    for model, _, _ in models:
        frames = []
        for k in range(n_folds):
            p = run_dir / "members" / model / f"fold{k}.oof.csv"
            if not p.is_file():
                raise DataError(f"OOF part {p} is missing; rerun with --resume to train it.")
            frames.append(pd.read_csv(p, dtype={IMAGE_ID: str, "model": str, "arch": str,
                                                LABEL: str}))
        df = pd.concat(frames, ignore_index=True)
        df = df.iloc[np.argsort(df[IMAGE_ID].map(order).to_numpy(), kind="stable")]
        parts.append(df)
    oof = pd.concat(parts, ignore_index=True)
    table = dataset.table
    lesions = (table[LESION_ID] if LESION_ID in table.columns
               else pd.Series(np.nan, index=table.index, dtype=object))
    lesion_of = pd.Series(lesions.to_numpy(), index=table[IMAGE_ID].astype(str).to_numpy())
    oof[LESION_ID] = oof[IMAGE_ID].map(lesion_of)
    cols = [IMAGE_ID, LESION_ID, "model", "arch", FOLD, LABEL, *prob_columns(dataset.classes)]
    return oof[cols]


def oof_metrics(oof: pd.DataFrame, classes: tuple[str, ...], run_dir: Path, *,
                config: TrainConfig | None = None, n_calibration: int = 0) -> dict[str, Any]:
    """Per model: OOF metrics over all images plus each fold's sidecar figures.

    Each model's entry also says how its epochs were chosen (``epoch_selection``, with
    ``inner_fraction`` when ``inner``) and how many images the run held out for calibration
    (``n_calibration``); per fold: ``selected_epoch``, ``epochs_run``, ``n_train``,
    ``n_inner`` and the fold's ``balanced_accuracy``, ``macro_f1``, ``accuracy``.
    """
    from skin_core.analysis.metrics import classification_metrics

    lookup = {c: i for i, c in enumerate(classes)}
    out: dict[str, Any] = {}
    for model, df in oof.groupby("model", sort=False):
        labels = df[LABEL].map(lookup).to_numpy(dtype=np.int64)
        m = classification_metrics(labels, df[prob_columns(classes)].to_numpy(), classes)
        m["arch"] = str(df["arch"].iloc[0])
        if config is not None:
            m["epoch_selection"] = config.epoch_selection
            if config.epoch_selection == "inner":
                m["inner_fraction"] = config.inner_fraction
        m["n_calibration"] = int(n_calibration)
        folds = {}
        for side in sorted((run_dir / "members" / str(model)).glob("fold*.json")):
            sc = json.loads(side.read_text())
            folds[str(sc["fold"])] = {
                **{k: sc.get(k) for k in ("selected_epoch", "epochs_run", "n_train",
                                          "n_inner")},
                **{k: sc["metrics"][k] for k in ("balanced_accuracy", "macro_f1", "accuracy")}}
        m["folds"] = folds
        out[str(model)] = m
    return out


def train_run(
    dataset: Any,
    *,
    out: str | os.PathLike[str],
    config: TrainConfig,
    folds: str | os.PathLike[str] | pd.Series | None = None,
    resume: bool = False,
    progress: bool = False,
    batch_hook: Any = None,
) -> RunResult:
    """Train every (model, fold) of ``config`` on ``dataset`` and write the run directory.

    Parameters
    ----------
    dataset:
        A :class:`~skin_core.data.tables.Dataset` (or a dataset spec string for
        :func:`~skin_core.data.tables.load_dataset`).
    out:
        The run directory (created). An existing run needs ``resume=True``.
    config:
        The :class:`TrainConfig` (architectures, folds, epochs, backend...).
    folds:
        A ``folds.csv`` path or a Series ``image_id -> fold``; default: lesion-grouped
        stratified folds made with ``config.seed``. Images of fold -1
        (``constants.CALIBRATION_FOLD``, the calibration split) are neither trained on nor
        predicted; ``config.yaml`` (``calibration``) and ``metrics.json`` (``n_calibration``)
        record how many there were.
    resume:
        Keep finished folds; continue interrupted folds from their last epoch checkpoint.
    progress:
        Show progress bars on stderr.
    batch_hook:
        Test hook passed to :func:`~skin_core.training.engine.train_fold` (local backend).

    Returns
    -------
    RunResult: ``run_dir``, ``oof_path``, ``metrics`` (per model).

    Raises
    ------
    ConfigError
        Unknown architecture, image size too small, missing weights file, an existing run
        without ``resume``, a run/checkpoint made for other classes or options (or before
        ``epoch_selection`` existed), or an inner split that takes no lesion.
    DataError
        Folds that do not match the dataset or ``config.folds``, a class with fewer images
        (outside the calibration split) than folds.
    TrainingCancelled
        The run's ``cancel`` file appeared; ``status.json`` says ``cancelled``.
    """
    import yaml

    from skin_core.data.cache import build_image_cache, content_fingerprint
    from skin_core.data.splits import write_folds
    from skin_core.io import atomic_write_csv, atomic_write_text, to_json
    from skin_core.training.checkpoint import _disk_error, write_json

    if isinstance(dataset, str):
        from skin_core.data.tables import load_dataset

        dataset = load_dataset(dataset)
    from skin_core.training.folds import calibration_record, check_classes, resolve_folds

    run_dir = Path(out)
    added: list[str] = []
    _check_archs(config)
    check_classes(dataset, config.folds)
    fingerprint = dataset_fingerprint(dataset)
    doc = _run_doc(dataset, config, fingerprint)
    if (run_dir / "config.yaml").is_file():
        if not resume:
            raise ConfigError(
                f"Run directory {run_dir} already holds a run; pass --resume to continue it or "
                "choose a new --out."
            )
        added = _check_resume_compatible(run_dir, doc)
    elif resume and run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"{run_dir} has no config.yaml, so there is no run to resume; start "
                          "without --resume or choose another --out.")
    series = resolve_folds(dataset, config, folds, run_dir, resume)
    calibration = calibration_record(dataset, series)
    doc["calibration"] = calibration

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CANCEL_FILE).unlink(missing_ok=True)
    try:
        if added:  # the run grows: config.yaml lists every member from now on
            old = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
            doc["created"] = old.get("created", doc["created"])
            doc["extended"] = [*old.get("extended", []), {"time": _now(), "archs": added}]
        if added or not (run_dir / "config.yaml").is_file():
            atomic_write_text(run_dir / "config.yaml",
                              yaml.safe_dump(json.loads(to_json(doc)), sort_keys=False))
        write_folds(series, run_dir / "folds.csv")
    except OSError as exc:
        raise _disk_error(run_dir / "config.yaml", exc) from exc

    models = model_ids(config)
    status = RunStatus(run_dir, len(models) * config.folds, config.epochs)
    status.write(state="running", progress=status.data.get("progress", 0.0) if resume else 0.0,
                 started=_now(), finished=None, pid=os.getpid(), error=None,
                 backend=config.backend, n_jobs=len(models) * config.folds)
    from skin_core.training.engine import append_event

    append_event(run_dir, {"event": "run_start", "time": _now(), "resume": resume,
                           "pid": os.getpid()})
    try:
        table = dataset.table
        ids = table[IMAGE_ID].astype(str).tolist()
        paths = table[PATH].astype(str).tolist()
        fp = content_fingerprint(ids, paths) + f"-{config.resize}"
        caches = {
            size: build_image_cache(
                ids, paths, size, resize=config.resize, cache_dir=config.cache_dir,
                fingerprint=fp, workers=config.cache_workers or None, progress=progress)
            for size in sorted({config.size_for(a) for a in config.archs})}
        jobs = build_jobs(dataset, config, series, caches, run_dir, resume=resume)
        todo = [j for j in jobs if not (resume and fold_finished(j))]
        done = len(jobs) - len(todo)
        status.write(jobs_done=done)
        if config.backend == "ray":
            from skin_core.training.backends import run_ray

            run_ray(todo, config=config, status=status, done=done, progress=progress)
        else:
            from skin_core.training.backends import run_local

            run_local(todo, status=status, done=done, progress=progress, batch_hook=batch_hook)
        oof = assemble_oof(run_dir, dataset, models, config.folds)
        oof_path = run_dir / "oof.csv"
        metrics = oof_metrics(oof, tuple(dataset.classes), run_dir, config=config,
                              n_calibration=calibration["n_images"])
        try:
            atomic_write_csv(oof_path, oof)
        except OSError as exc:
            raise _disk_error(oof_path, exc) from exc
        write_json(run_dir / "metrics.json", metrics)
    except TrainingCancelled as exc:
        status.write(state="cancelled", finished=_now(), error=str(exc))
        append_event(run_dir, {"event": "run_cancelled", "time": _now()})
        raise
    except BaseException as exc:
        msg = str(exc) if isinstance(exc, SkinCoreError) else f"{type(exc).__name__}: {exc}"
        status.write(state="failed", finished=_now(), error=msg)
        append_event(run_dir, {"event": "run_failed", "time": _now(), "error": msg})
        raise
    status.write(state="finished", progress=1.0, finished=_now(), jobs_done=len(jobs))
    append_event(run_dir, {"event": "run_finished", "time": _now()})
    return RunResult(run_dir, oof_path, {
        m: {k: v for k, v in d.items() if k != "folds"} for m, d in metrics.items()})
