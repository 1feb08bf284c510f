"""``skin-core train``: K-fold x architecture training with out-of-fold predictions.

Example::

    skin-core train --dataset ham10000:/data/ham10000 --arch mobilenetv2_100 --folds 5 \\
        --epochs 6 --img-size 112 --pretrained weights/mobilenet_v2.pth --out runs/ham-cpu

Options on the command line override those of ``--config FILE`` (YAML, options under
``train:``; a top-level ``dataset:`` is used when ``--dataset`` is absent).
"""

from __future__ import annotations

import argparse
from typing import Any

from skin_core.cli._common import add_json_option, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train architectures with K-fold CV and write out-of-fold predictions",
        description="Train each --arch on every fold (lesion-grouped, stratified) and write a "
        "run directory with config.yaml, folds.csv, status.json, events.jsonl, member "
        "weights, oof.csv and metrics.json. See docs/training.md.",
    )
    p.add_argument("--dataset", metavar="SPEC", help="isic2019:DIR, ham10000:DIR, folder:DIR, "
                   "csv:FILE[,root=DIR] (or 'dataset:' in --config)")
    p.add_argument("--arch", action="append", metavar="NAME",
                   help="timm architecture (repeat for several)")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory (runs/NAME)")
    p.add_argument("--config", metavar="FILE", help="YAML file of training options")
    p.add_argument("--folds", type=int, help="number of folds K (default 5)")
    p.add_argument("--folds-file", metavar="CSV", help="use this folds.csv (image_id,fold; "
                   "fold -1 = calibration split, neither trained on nor predicted)")
    p.add_argument("--epochs", type=int, help="maximum epochs per fold (default 10)")
    p.add_argument("--img-size", type=int, help="square input size in px (default 128)")
    p.add_argument("--batch-size", type=int, help="batch size (default 32)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    p.add_argument("--epoch-selection", choices=("last", "inner"),
                   help="member weights and OOF predictions from the last epoch (default) or "
                   "from the best epoch on an inner split of the training folds")
    p.add_argument("--inner-fraction", type=float, metavar="F",
                   help="share of each fold's training lesions held out as the inner split "
                   "with --epoch-selection inner (default 0.1)")
    p.add_argument("--patience", type=int, help="early stopping on the inner split after this "
                   "many epochs without improvement (needs --epoch-selection inner; 0 = off)")
    p.add_argument("--seeds", type=int, nargs="+", metavar="S",
                   help="training seeds; several give members ARCH@s<S>")
    p.add_argument("--seed", type=int, help="seed of the folds (default 0)")
    p.add_argument("--pretrained", metavar="none|hub|PATH",
                   help="initial weights: none, hub (online) or a .safetensors/.pth file")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--threads", type=int, help="torch CPU threads (0 = default)")
    p.add_argument("--backend", choices=("local", "ray"))
    p.add_argument("--address", metavar="RAY_ADDRESS",
                   help="Ray head to train on, HOST:PORT as `ray start --head` prints it "
                   "(default $RAY_ADDRESS, else a local Ray); a head with token authentication "
                   "needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (README, 'GPU and Ray')")
    p.add_argument("--ray-cpus", type=int, metavar="N",
                   help="CPUs (and torch threads) per Ray task on clusters without GPUs")
    p.add_argument("--cache-dir", metavar="DIR", help="image cache folder "
                   "(default $SKIN_CORE_CACHE_DIR or .cache/images)")
    p.add_argument("--resume", action="store_true",
                   help="continue a run: keep finished folds, restart interrupted ones from "
                   "their last epoch checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_option(p)
    p.set_defaults(handler=run)


_CLI_KEYS = {
    "folds": "folds", "epochs": "epochs", "img_size": "img_size", "batch_size": "batch_size",
    "lr": "lr", "patience": "patience", "seed": "seed", "pretrained": "pretrained",
    "epoch_selection": "epoch_selection", "inner_fraction": "inner_fraction",
    "device": "device", "threads": "threads", "backend": "backend",
    "address": "ray_address", "cache_dir": "cache_dir", "ray_cpus": "ray_cpus_per_task",
}


def options_from_args(args: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
    """Merge ``--config`` and command-line options; returns (options, dataset spec)."""
    from pathlib import Path

    from skin_core.training.config import load_config_file

    source = args.config
    run_config = Path(args.out) / "config.yaml"
    if not source and args.resume and run_config.is_file():
        source = run_config  # resume with the run's own options unless told otherwise
    opts: dict[str, Any] = load_config_file(source) if source else {}
    dataset = opts.pop("dataset", None)
    if isinstance(dataset, dict):  # a run's config.yaml records the spec with its fingerprint
        dataset = dataset.get("spec")
    dataset = args.dataset or dataset
    for attr, key in _CLI_KEYS.items():
        value = getattr(args, attr, None)
        if value is not None:
            opts[key] = value
    if args.arch:
        opts["archs"] = list(args.arch)
    if args.seeds:
        opts["seeds"] = list(args.seeds)
    return opts, dataset


def run(args: argparse.Namespace) -> int:
    from skin_core.data.tables import load_dataset
    from skin_core.errors import ConfigError
    from skin_core.training import config_from_dict, train_run

    opts, spec = options_from_args(args)
    if not spec:
        raise ConfigError("No dataset given; pass --dataset SPEC (e.g. ham10000:DIR) or put "
                          "'dataset: SPEC' in the --config file.")
    config = config_from_dict(opts)
    connected = False
    if config.backend == "ray":
        from skin_core.training.backends import cluster_address, connect_ray

        address = cluster_address(config.ray_address)
        if address is not None:  # a cluster that will not take the jobs fails before any work
            connected = connect_ray(address)
    try:
        dataset = load_dataset(spec)
        result = train_run(dataset, out=args.out, config=config, folds=args.folds_file,
                           resume=args.resume, progress=not args.no_progress)
    finally:
        if connected:
            import ray

            ray.shutdown()
    if args.json:
        print_json(result.to_dict())
    else:
        for model, m in result.metrics.items():
            print(f"{model}: OOF balanced accuracy {m['balanced_accuracy']:.3f}, macro F1 "
                  f"{m['macro_f1']:.3f}, accuracy {m['accuracy']:.3f} (n={m['n']})")
        print(f"run directory: {result.run_dir}\nOOF predictions: {result.oof_path}")
    return 0
