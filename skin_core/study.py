"""The whole study on one dataset, as resumable steps (``skin-core study``, ``skin-core demo``).

Steps, in order (each skipped when its outputs exist and its configuration is unchanged; see
:mod:`skin_core.pipeline`)::

    summary -> folds -> quality -> train -> difficulty -> readers -> meta -> bundle
            -> index -> calibrate -> report

Every step runs the code of its own ``skin-core`` verb (:func:`skin_core.cli.invoke`), so the
study, the command line and the app cannot drift apart. The study folder::

    DIR/config.yaml            the resolved study configuration
    DIR/steps.json             step fingerprints, timings and summaries (resume state)
    DIR/dataset.csv            the dataset table;  DIR/summary.json  its summary
    DIR/folds.csv              lesion-grouped stratified folds (image_id, fold); fold -1 is
                               the calibration split (config ``calibration.fraction``)
    DIR/quality.csv            image-quality measures and blur_score per image
    DIR/run/                   the training run (config.yaml, oof.csv, members/...)
    DIR/difficulty/            difficulty.csv, significance.json, quality_vs_difficulty.json
    DIR/readers/               readers.json, readers.md, reader_images.csv (with readings)
    DIR/meta/                  meta-classifier, calibration, conformal sets, referral model
    DIR/bundle/ (or --bundle)  the servable model bundle
    DIR/retrieval/index.json   the bundle's similar-case index (kNN vs softmax out of fold)
    DIR/calibration/           validation.json: the served pipeline on the calibration split
    DIR/report.md, report.html the report (tables and Plotly figures)
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from skin_core.cli import invoke
from skin_core.errors import ConfigError
from skin_core.io import (
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    read_yaml_mapping,
)
from skin_core.pipeline import Pipeline, Step, StepContext, StepOutcome

#: Defaults of every section of a study configuration (YAML); a config file overrides them.
DEFAULT_CONFIG: dict[str, Any] = {
    "dataset": None,
    "folds": {"k": 5, "seed": 0},
    # a lesion-grouped, class-stratified share that no CNN and no meta-model trains on; the
    # served pipeline is calibrated and measured there (skin-core calibrate). 0 turns it off.
    "calibration": {"fraction": 0.15, "seed": 0},
    "quality": {"workers": None},
    "train": {},  # TrainConfig fields (skin_core.training.config); defaults there
    "difficulty": {"by": "model", "min_wrong": None, "permutations": 10_000, "seed": 0},
    "readers": {"ties": "drop", "other": "drop", "bootstrap": 2000, "permutations": 10_000,
                "seed": 0,
                # demo only: simulate readings when the dataset has generation_truth.csv
                "simulate": {"enabled": False, "n_readers": 8, "n_per_group": 50, "seed": 0}},
    "meta": {"coverage": 0.9, "bootstrap": 1000, "seed": 0},
    "bundle": {"out": None},
}

STEP_NAMES: tuple[str, ...] = (
    "summary", "folds", "quality", "train", "difficulty", "readers", "meta", "bundle",
    "index", "calibrate", "report",
)


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_study_config(path: str | os.PathLike[str] | None = None,
                      overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The study configuration: :data:`DEFAULT_CONFIG` < the YAML file < ``overrides``.

    Raises
    ------
    ConfigError
        Missing or malformed file, or an unknown top-level section.
    """
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    if path is not None:
        p = Path(path)
        loaded = read_yaml_mapping(p, what="Study config")
        unknown = sorted(set(loaded) - set(DEFAULT_CONFIG))
        if unknown:
            raise ConfigError(f"Study config {p} has unknown section(s) {unknown}; known "
                              f"sections are {sorted(DEFAULT_CONFIG)}.")
        cfg = _merge(cfg, loaded)
    if overrides:
        cfg = _merge(cfg, overrides)
    return cfg


@dataclass(frozen=True)
class StudyResult:
    """What :func:`run_study` did: the folder, per-step outcomes and the step summaries."""

    out: Path
    outcomes: tuple[StepOutcome, ...]
    summaries: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "steps": [{"name": o.name, "status": o.status, "seconds": round(o.seconds, 2)}
                      for o in self.outcomes],
            "summaries": self.summaries,
        }


def _quiet_bars() -> bool:
    return not sys.stderr.isatty()


def build_study(
    dataset: str,
    out: str | os.PathLike[str],
    config: Mapping[str, Any],
    *,
    readings: str | os.PathLike[str] | None = None,
    fingerprint: str = "",
) -> Pipeline:
    """The study's :class:`~skin_core.pipeline.Pipeline` for ``dataset`` in folder ``out``.

    ``fingerprint`` (the dataset's content fingerprint) makes every step redo when the data
    change under the same spec.
    """
    out = Path(out).resolve()
    cfg = dict(config)
    data_root = _dataset_root(dataset)
    truth = data_root / "generation_truth.csv" if data_root is not None else None
    has_truth = truth is not None and truth.is_file()
    bundle_out = Path(cfg["bundle"]["out"]).resolve() if cfg["bundle"].get("out") else (
        out / "bundle")
    sim = cfg["readers"].get("simulate", {}) or {}
    simulate = readings is None and bool(sim.get("enabled")) and has_truth
    readings_path = Path(readings).resolve() if readings is not None else out / "readings.csv"
    train_opts = dict(cfg.get("train") or {})

    def summary(ctx: StepContext) -> dict[str, Any]:
        from skin_core.data.tables import load_dataset

        ds = load_dataset(dataset)
        atomic_write_csv(ctx.path("dataset.csv"), ds.table)
        s = ds.summary()
        atomic_write_json(ctx.path("summary.json"), s)
        return s

    cal = {"fraction": 0.0, "seed": 0, **(cfg.get("calibration") or {})}
    cal_fraction = float(cal["fraction"])
    if not 0.0 <= cal_fraction < 0.5:
        raise ConfigError(f"calibration.fraction must be in [0, 0.5) (e.g. 0.15, or 0 for no "
                          f"calibration split); got {cal['fraction']!r}.")

    def folds(ctx: StepContext) -> dict[str, Any]:
        f = cfg["folds"]
        argv = ["data", "folds", "--dataset", dataset, "--k", str(f["k"]),
                "--seed", str(f["seed"]), "--out", str(ctx.path("folds.csv"))]
        if cal_fraction > 0:
            argv += ["--calibration", str(cal_fraction), "--calibration-seed", str(cal["seed"])]
        return invoke(argv)

    def quality(ctx: StepContext) -> dict[str, Any]:
        argv = ["quality", "--dataset", dataset, "--out", str(ctx.path("quality.csv"))]
        if cfg["quality"].get("workers"):
            argv += ["--workers", str(cfg["quality"]["workers"])]
        return invoke(argv)

    def train(ctx: StepContext) -> dict[str, Any]:
        cfg_path = ctx.path("train.yaml")
        atomic_write_text(cfg_path, yaml.safe_dump({"train": train_opts}, sort_keys=True))
        argv = ["train", "--dataset", dataset, "--config", str(cfg_path), "--folds-file",
                str(ctx.path("folds.csv")), "--out", str(ctx.path("run"))]
        if int(train_opts.get("folds", cfg["folds"]["k"])) != int(cfg["folds"]["k"]):
            raise ConfigError("train.folds must equal folds.k in the study config (the study "
                              "trains on its own folds.csv).")
        argv += ["--folds", str(cfg["folds"]["k"])]
        if (ctx.path("run") / "config.yaml").is_file():
            stale = _stale_run(ctx.path("run"), ctx.path("folds.csv"))
            if stale:
                kept = _move_aside(ctx.path("run"))
                ctx.progress(f"train: the existing run {stale}; it was moved to {kept.name} "
                             "(nothing deleted) and a new run starts")
            else:
                argv.append("--resume")  # an interrupted training continues where it stopped
        if _quiet_bars():
            argv.append("--no-progress")
        return invoke(argv)

    def difficulty(ctx: StepContext) -> dict[str, Any]:
        d = cfg["difficulty"]
        argv = ["difficulty", "--oof", str(ctx.path("run/oof.csv")),
                "--out", str(ctx.path("difficulty")), "--by", str(d["by"]),
                "--permutations", str(d["permutations"]), "--seed", str(d["seed"]),
                "--quality", str(ctx.path("quality.csv"))]
        if d.get("min_wrong") is not None:
            argv += ["--min-wrong", str(d["min_wrong"])]
        if has_truth:
            argv += ["--truth", str(truth)]
        return invoke(argv)

    def readers(ctx: StepContext) -> dict[str, Any]:
        r = cfg["readers"]
        result: dict[str, Any] = {}
        if simulate:
            result["simulated"] = invoke([
                "readers", "simulate", "--generation-truth", str(truth),
                "--groups", str(ctx.path("difficulty/difficulty.csv")),
                "--n-per-group", str(sim["n_per_group"]), "--n-readers", str(sim["n_readers"]),
                "--seed", str(sim["seed"]), "--out", str(readings_path)])
        result["analysis"] = invoke([
            "readers", "--readings", str(readings_path), "--truth", dataset,
            "--groups", str(ctx.path("difficulty/difficulty.csv")),
            "--cnn", str(ctx.path("run/oof.csv")), "--out", str(ctx.path("readers")),
            "--ties", r["ties"], "--other", r["other"], "--bootstrap", str(r["bootstrap"]),
            "--permutations", str(r["permutations"]), "--seed", str(r["seed"]),
            "--skip-missing"])
        return result

    def meta(ctx: StepContext) -> dict[str, Any]:
        m = cfg["meta"]
        return invoke(["meta", "--run", str(ctx.path("run")), "--dataset", dataset,
                       "--out", str(ctx.path("meta")), "--coverage", str(m["coverage"]),
                       "--bootstrap", str(m["bootstrap"]), "--seed", str(m["seed"]),
                       "--quality", str(ctx.path("quality.csv"))])

    def bundle(ctx: StepContext) -> dict[str, Any]:
        return invoke(["bundle", "--run", str(ctx.path("run")), "--meta", str(ctx.path("meta")),
                       "--quality", str(ctx.path("quality.csv")), "--out", str(bundle_out),
                       "--overwrite"])  # the step reruns only when its inputs changed

    def index(ctx: StepContext) -> dict[str, Any]:
        info = invoke(["index", "--bundle", str(bundle_out), "--dataset", dataset, "--folds",
                       str(ctx.path("folds.csv")), "--no-progress"])
        atomic_write_json(ctx.path("retrieval/index.json"), info)
        return {"n_images": info.get("n_images"), "dim": info.get("dim"),
                "oof": info.get("oof")}

    def calibrate(ctx: StepContext) -> dict[str, Any]:
        import pandas as pd

        from skin_core.constants import CALIBRATION_FOLD
        from skin_core.served import MIN_CALIBRATION_IMAGES

        m = cfg["meta"]
        n_cal = int((pd.read_csv(ctx.path("folds.csv"))["fold"] == CALIBRATION_FOLD).sum())
        if n_cal < MIN_CALIBRATION_IMAGES:  # a tiny dataset: say so, keep the OOF thresholds
            skipped = {"skipped": (
                f"the calibration split has {n_cal} images, fewer than the "
                f"{MIN_CALIBRATION_IMAGES} needed to fit served thresholds; the bundle keeps "
                "the out-of-fold ones (raise calibration.fraction or use more images)"),
                "n_images": n_cal}
            atomic_write_json(ctx.path("calibration/validation.json"), skipped)
            ctx.progress(f"calibrate: skipped ({skipped['skipped']})")
            return skipped
        validation = invoke(["calibrate", "--bundle", str(bundle_out), "--dataset", dataset,
                             "--folds", str(ctx.path("folds.csv")), "--coverage",
                             str(m["coverage"]), "--seed", str(cal["seed"]), "--no-progress"])
        atomic_write_json(ctx.path("calibration/validation.json"), validation)
        return {k: validation.get(k) for k in ("n_images", "coverage", "mean_set_size",
                                               "referral_rate", "ece", "balanced_accuracy")}

    def report(ctx: StepContext) -> dict[str, Any]:
        from skin_core.report import write_report

        paths = write_report(ctx.root)
        return {k: str(v) for k, v in paths.items()}

    train_cfg = {**train_opts, "folds": cfg["folds"]}
    have_bundle_verb = _has_verb("bundle")
    steps = [
        Step("summary", summary, ("dataset.csv", "summary.json"),
             config={"dataset": dataset, "fingerprint": fingerprint}),
        Step("folds", folds, ("folds.csv",), ("summary",), config=cfg["folds"]),
        Step("quality", quality, ("quality.csv",), ("summary",), config=cfg["quality"]),
        Step("train", train, ("run/oof.csv", "run/metrics.json"), ("folds",), config=train_cfg),
        Step("difficulty", difficulty,
             ("difficulty/difficulty.csv", "difficulty/significance.json"),
             ("train", "quality"), config=cfg["difficulty"]),
        Step("readers", readers, ("readers/readers.json",), ("difficulty",),
             config={**cfg["readers"], "readings": str(readings_path), "simulate": simulate,
                     "readings_sha256": _file_digest(readings_path) if not simulate else None},
             enabled=simulate or readings is not None),
        Step("meta", meta, ("meta/meta.json",), ("train", "quality"), config=cfg["meta"]),
        Step("bundle", bundle, (os.path.relpath(bundle_out / "bundle.json", out),),
             ("meta",), config={"out": str(bundle_out)}, enabled=have_bundle_verb),
        Step("index", index, ("retrieval/index.json",), ("bundle",), config={"version": 1},
             enabled=have_bundle_verb),
        Step("calibrate", calibrate, ("calibration/validation.json",),
             ("bundle", "index", "folds"),
             config={**cal, "coverage": cfg["meta"]["coverage"]},
             enabled=have_bundle_verb and cal_fraction > 0),
        Step("report", report, ("report.md", "report.html"),
             ("summary", "train", "difficulty", "readers", "meta", "index", "calibrate"),
             config={"version": 2}),
    ]
    return Pipeline(out, steps)


def _stale_run(run: Path, folds: Path) -> str | None:
    """Why an existing run folder cannot be resumed by this study (``None``: it can): it was
    trained on other folds (e.g. before the calibration split existed) or before out-of-fold
    predictions stopped choosing their epoch on the fold they predict."""
    import pandas as pd

    try:
        doc = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return "has an unreadable config.yaml"
    if "epoch_selection" not in (doc.get("train") or {}):
        return "chose each fold's epoch on the fold it predicts (made by an older version)"
    if (run / "folds.csv").is_file() and folds.is_file():
        a = pd.read_csv(run / "folds.csv", dtype={"image_id": str}).sort_values("image_id")
        b = pd.read_csv(folds, dtype={"image_id": str}).sort_values("image_id")
        if not (a["image_id"].tolist() == b["image_id"].tolist()
                and a["fold"].tolist() == b["fold"].tolist()):
            return "was trained on other folds than the study's folds.csv"
    return None


def _move_aside(path: Path) -> Path:
    """Rename ``path`` to ``<name>.replaced-<UTC time>`` beside it; returns the new path."""
    from datetime import datetime, timezone

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.replaced-{stamp}")
    path.rename(target)
    return target


def _file_digest(path: Path) -> str | None:
    """sha256 of a file's content (``None`` when absent), so a step redoes when it changes."""
    import hashlib

    if not path.is_file():
        return None
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _has_verb(name: str) -> bool:
    from skin_core.cli import COMMAND_MODULES

    return name in COMMAND_MODULES


def _dataset_root(spec: str) -> Path | None:
    from skin_core.data.tables import parse_spec

    _kind, path, _opts = parse_spec(spec)
    return path if path.is_dir() else path.parent


def run_study(
    dataset: str | None,
    out: str | os.PathLike[str],
    *,
    config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    readings: str | os.PathLike[str] | None = None,
    force: Iterable[str] = (),
    progress: Callable[[str], None] | None = None,
) -> StudyResult:
    """Run (or resume) the whole study on ``dataset`` into folder ``out``.

    Parameters
    ----------
    dataset:
        Dataset spec (``isic2019:DIR``...); ``None`` takes ``dataset`` from the config.
    out:
        The study folder (created; an existing one is resumed).
    config:
        A study config file (YAML, see ``configs/``) or an already-loaded mapping.
    readings:
        A reader study ``readings.csv`` to analyse against the difficult/control groups.
    force:
        Step names to redo even when up to date (downstream steps follow).
    progress:
        Called with one line per step event.
    """
    cfg = dict(config) if isinstance(config, Mapping) else load_study_config(config)
    spec = dataset or cfg.get("dataset")
    if not spec:
        raise ConfigError("No dataset given; pass --dataset SPEC or set 'dataset:' in the "
                          "study config.")
    cfg["dataset"] = spec
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    from skin_core.data.tables import load_dataset

    fingerprint = load_dataset(spec).fingerprint()
    pipeline = build_study(spec, out, cfg, readings=readings, fingerprint=fingerprint)
    outcomes = pipeline.run(force=force, progress=progress)
    manifest = pipeline.manifest()
    summaries = {name: rec.get("summary") for name, rec in manifest.items()}
    return StudyResult(out=out.resolve(), outcomes=tuple(outcomes), summaries=summaries)
