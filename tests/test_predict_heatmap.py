"""Classic Grad-CAM (skin_core.explain.grad_cam, the last layer) pinned against the grad-cam
package; the other methods and layers: tests/test_explain.py; overlays: test_explain_photo.py."""

from __future__ import annotations

import numpy as np
import pytest

from skin_core.errors import ConfigError


@pytest.fixture(scope="module")
def resnet():
    import timm
    import torch

    torch.manual_seed(0)
    net = timm.create_model("test_resnet", num_classes=4)
    net.eval()
    return net


def _batch(seed: int, size: int = 96):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, size, size, generator=g)


@pytest.mark.parametrize("seed", [0, 1])
def test_grad_cam_equals_pytorch_grad_cam_on_layer4(resnet, seed) -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from skin_core.explain import grad_cam

    x = _batch(seed)
    cam, logits = grad_cam(resnet, x)
    assert cam.shape == (2, 96, 96) and cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() <= 1.0 and cam.max() > 0.99
    top = logits.argmax(dim=1).tolist()
    with GradCAM(model=resnet, target_layers=[resnet.layer4]) as ref:
        expected = ref(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in top])
    # the feature map here is 3x3, so the maps have real spatial structure
    assert expected.std() > 0.05
    np.testing.assert_allclose(cam, expected, atol=2e-4)


def test_explicit_class_and_logits_of_the_same_pass(resnet) -> None:
    import torch

    from skin_core.explain import grad_cam

    x = _batch(3)
    cam2, logits = grad_cam(resnet, x, class_index=2)
    with torch.no_grad():
        np.testing.assert_allclose(logits.numpy(), resnet(x).numpy(), atol=1e-5)
    cam_top, _ = grad_cam(resnet, x)
    if (logits.argmax(1) != 2).any():
        assert not np.allclose(cam2, cam_top)


def test_grad_cam_refuses_models_without_a_spatial_feature_map() -> None:
    import torch

    from skin_core.explain import grad_cam

    class Tokens(torch.nn.Module):
        def forward_features(self, x):
            return x.flatten(2)

        def forward_head(self, f):
            return f.mean(-1)

    with pytest.raises(ConfigError, match="B x C x h x w"):
        grad_cam(Tokens(), torch.zeros(1, 3, 8, 8))
