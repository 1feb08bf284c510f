"""Class activation maps (skin_core.explain._cam): every method and layer pinned against the
grad-cam package, the fold mean, layer names and errors."""

from __future__ import annotations

import numpy as np
import pytest

from skin_core.errors import ConfigError


def _net(arch: str, seed: int = 0, k: int = 4):
    import timm
    import torch

    torch.manual_seed(seed)
    return timm.create_model(arch, num_classes=k).eval()


@pytest.fixture(scope="module")
def resnet():
    return _net("test_resnet")


def _batch(seed: int, size: int = 96, b: int = 2):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, size, size, generator=g)


REFERENCE = {"gradcam": "GradCAM", "hirescam": "HiResCAM", "layercam": "LayerCAM",
             "gradcam++": "GradCAMPlusPlus"}


@pytest.mark.parametrize("arch", ["test_resnet", "test_efficientnet"])
@pytest.mark.parametrize("method", sorted(REFERENCE))
@pytest.mark.parametrize("layer", [16, (8, 16)])
def test_every_method_and_layer_equals_pytorch_grad_cam(arch, method, layer) -> None:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from skin_core.explain import class_activation_map, resolve_layers

    net = _net(arch)
    x = _batch(1)
    cam, logits = class_activation_map(net, x, method=method, layer=layer)
    assert cam.shape == (2, 96, 96) and cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() <= 1.0
    names = resolve_layers(net, layer, 96)
    assert len(names) == (1 if isinstance(layer, int) else len(layer))
    modules = dict(net.named_modules())
    targets = [modules[n] for n in names]
    top = logits.argmax(dim=1).tolist()
    with getattr(pytorch_grad_cam, REFERENCE[method])(model=net, target_layers=targets) as ref:
        expected = ref(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in top])
    assert expected.std() > 0.05  # real spatial structure, not a flat map
    np.testing.assert_allclose(cam, expected, atol=2e-4)


def test_default_is_the_documented_variant(resnet) -> None:
    from skin_core.explain import DEFAULT_LAYER, DEFAULT_METHOD, class_activation_map

    x = _batch(2)
    a, _ = class_activation_map(resnet, x)
    b, _ = class_activation_map(resnet, x, method=DEFAULT_METHOD, layer=DEFAULT_LAYER)
    np.testing.assert_array_equal(a, b)
    c, _ = class_activation_map(resnet, x, method="gradcam", layer="last")
    assert not np.allclose(a, c)  # the default is not the classic map


def test_logits_are_those_of_the_model_and_classes_are_honoured(resnet) -> None:
    import torch

    from skin_core.explain import class_activation_map

    x = _batch(3)
    cam2, logits = class_activation_map(resnet, x, layer=16, class_index=2)
    with torch.no_grad():
        np.testing.assert_allclose(logits.numpy(), resnet(x).numpy(), atol=1e-5)
    assert not logits.requires_grad
    cam_top, _ = class_activation_map(resnet, x, layer=16)
    assert (logits.argmax(1) != 2).any()
    assert not np.allclose(cam2, cam_top)
    with pytest.raises(ConfigError, match="class_index"):
        class_activation_map(resnet, x, class_index=9)


def test_layers_by_stride_name_and_tuple(resnet) -> None:
    from skin_core.explain import class_activation_map

    x = _batch(4)
    by_stride, _ = class_activation_map(resnet, x, method="gradcam", layer=16)
    by_name, _ = class_activation_map(resnet, x, method="gradcam", layer="layer3")
    np.testing.assert_array_equal(by_stride, by_name)
    for bad, match in ((4 * 1000, "no stage with stride"), ("layer9", "module name"),
                       ((), "at least one layer")):
        with pytest.raises(ConfigError, match=match):
            class_activation_map(resnet, x, layer=bad)
    with pytest.raises(ConfigError, match="'method'"):
        class_activation_map(resnet, x, method="scorecam")


def test_the_backbone_before_the_target_layer_is_not_differentiated(resnet) -> None:
    import torch

    from skin_core.explain import class_activation_map

    seen = {}

    def spy(name):
        def hook(_module, _inputs, _out) -> None:
            seen[name] = torch.is_grad_enabled()
        return hook

    hook = resnet.layer2.register_forward_hook(spy("layer2"))
    hook4 = resnet.layer4.register_forward_hook(spy("layer4"))
    try:
        class_activation_map(resnet, _batch(5), layer=16)
    finally:
        hook.remove()
        hook4.remove()
    assert seen == {"layer2": False, "layer4": True}
    with torch.no_grad():
        class_activation_map(resnet, _batch(5), layer=16)
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()


def test_ensemble_cam_is_the_mean_of_normalised_maps_for_the_mean_top_class() -> None:
    import torch

    from skin_core.explain import class_activation_map, ensemble_cam

    nets = [_net("test_resnet", seed=s) for s in range(3)]
    x = _batch(6)
    cams, logits = ensemble_cam([(n, x) for n in nets], method="layercam", layer=16)
    assert cams.shape == (2, 96, 96) and len(logits) == 3
    mean_p = torch.stack([torch.softmax(lg, 1) for lg in logits]).mean(0)
    target = mean_p.argmax(1).numpy()
    each = [class_activation_map(n, x, method="layercam", layer=16, class_index=target)[0]
            for n in nets]
    expected = np.mean(each, axis=0)
    lo = expected.min(axis=(1, 2), keepdims=True)
    expected = (expected - lo) / ((expected - lo).max(axis=(1, 2), keepdims=True) + 1e-7)
    np.testing.assert_allclose(cams, expected, atol=1e-5)
    for net, lg in zip(nets, logits, strict=True):
        with torch.no_grad():
            np.testing.assert_allclose(lg.numpy(), net(x).numpy(), atol=1e-5)
    # one pair is exactly the single-model map
    one, _ = ensemble_cam([(nets[0], x)], method="layercam", layer=16)
    np.testing.assert_array_equal(one, class_activation_map(nets[0], x, method="layercam",
                                                            layer=16)[0])


def test_ensemble_cam_mixes_architectures_and_input_sizes() -> None:
    import torch.nn.functional as F  # noqa: N812

    from skin_core.explain import ensemble_cam

    a, b = _net("test_resnet"), _net("test_efficientnet")
    x = _batch(7, size=96)
    x64 = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    cams, logits = ensemble_cam([(a, x), (b, x64)], layer=16)
    assert cams.shape == (2, 96, 96)
    assert [tuple(lg.shape) for lg in logits] == [(2, 4), (2, 4)]
    with pytest.raises(ConfigError, match="one shape"):
        ensemble_cam([(a, x), (_net("test_resnet", k=5), x)])
    with pytest.raises(ConfigError, match="at least one"):
        ensemble_cam([])


def test_refuses_models_without_a_spatial_feature_map() -> None:
    import torch

    from skin_core.explain import class_activation_map, grad_cam

    class Tokens(torch.nn.Module):
        def forward_features(self, x):
            return x.flatten(2)

        def forward_head(self, f):
            return f.mean(-1)

    with pytest.raises(ConfigError, match="B x C x h x w"):
        grad_cam(Tokens(), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="no activation or timm feature_info"):
        class_activation_map(Tokens(), torch.zeros(1, 3, 8, 8), layer=16)


def test_strides_mean_activated_maps_stage_outputs_or_expansions() -> None:
    import torch

    from skin_core.explain import resolve_layers

    resnet = _net("test_resnet")
    assert resolve_layers(resnet, 16, 64) == ["layer3"]  # ends in a ReLU: the stage itself
    assert resolve_layers(resnet, (16, 8, "last"), 64) == ["layer2", "layer3", "last"]
    eff = _net("test_efficientnet")
    # EfficientNet blocks end in a linear bottleneck: the next block's expansion activation
    assert resolve_layers(eff, 16, 64) == ["blocks.4.0.bn1.act"]
    seen = {}
    modules = dict(eff.named_modules())
    hooks = [modules[n].register_forward_hook(
        lambda _m, _i, out, n=n: seen.__setitem__(n, out)) for n in ("blocks.3",
                                                                      "blocks.4.0.bn1.act")]
    try:
        with torch.no_grad():
            eff(_batch(8, size=64))
    finally:
        for h in hooks:
            h.remove()
    assert (seen["blocks.3"] < 0).float().mean() > 0.2  # linear: signed values
    assert seen["blocks.4.0.bn1.act"].min() >= -0.2785  # SiLU: bounded below by -0.278
    assert seen["blocks.4.0.bn1.act"].shape[-1] == seen["blocks.3"].shape[-1] == 4


def test_coarse_layers_are_left_out_of_a_mix() -> None:
    from skin_core.explain import DEFAULT_LAYER, class_activation_map, resolve_layers

    net = _net("test_resnet")
    # at 64 px the stride-32 map is 2 x 2: left out of the default mix; at 128 px it is 4 x 4
    assert resolve_layers(net, DEFAULT_LAYER, 64, min_cells=4) == ["layer2", "layer3"]
    assert resolve_layers(net, DEFAULT_LAYER, 128, min_cells=4) == ["layer2", "layer3", "last"]
    assert resolve_layers(net, DEFAULT_LAYER, 64, min_cells=1) == ["layer2", "layer3", "last"]
    # a single layer is never dropped; if none is wide enough the finest stays
    assert resolve_layers(net, "last", 64, min_cells=4) == ["last"]
    assert resolve_layers(net, (16, "last"), 32, min_cells=4) == ["layer3"]
    x = _batch(9, size=64)
    a, _ = class_activation_map(net, x)
    b, _ = class_activation_map(net, x, layer=(8, 16), min_cells=1)
    np.testing.assert_array_equal(a, b)
