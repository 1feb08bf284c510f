"""Grad-CAM heatmaps on timm CNNs (Selvaraju et al., ICCV 2017) and their overlays.

:func:`grad_cam` splits a timm model at ``forward_features`` / ``forward_head``: the last
feature map ``A`` (``B x C x h x w``) is the target layer. For the target class ``c`` (default:
the top class), with ``y_c`` its logit::

    w_k   = mean over (i, j) of d y_c / d A_k[i, j]      (spatial mean of the gradients)
    cam   = ReLU(sum_k w_k A_k)
    cam   = (cam - min) / (max + 1e-7)                   (per image)
    cam   = bilinear upsample to the input size (half-pixel centres), then min-max again

which is exactly what ``pytorch_grad_cam.GradCAM`` computes with the same target layer (e.g. a
ResNet's ``layer4``, whose output is ``forward_features``); ``tests/test_predict_heatmap.py``
pins the two against each other. The same forward pass gives the logits, so a heatmap costs one
backward pass through the classifier head on top of the prediction (the gradient with respect
to the feature map does not need the backbone's graph, so the backbone runs without autograd).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from skin_core.errors import ConfigError


def grad_cam(model: Any, x: Any, class_index: Any = None) -> tuple[np.ndarray, Any]:
    """Grad-CAM of ``model`` for a normalised input batch.

    Parameters
    ----------
    model:
        A timm CNN in eval mode (``forward_features`` must return ``B x C x h x w``).
    x:
        ``(B, 3, S, S)`` float tensor (already normalised).
    class_index:
        Target class per image (int or sequence of ``B`` ints); default: each image's top
        class.

    Returns
    -------
    (cam, logits)
        ``cam``: ``(B, S, S)`` float32 array in [0, 1]; ``logits``: the ``(B, K)`` logits of
        the same forward pass (detached tensor).

    Raises
    ------
    ConfigError
        The architecture has no spatial feature map (e.g. a ViT's tokens).
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    with torch.no_grad():
        feats = model.forward_features(x)
    if feats.ndim != 4:
        raise ConfigError(
            f"Grad-CAM needs a CNN whose last feature map is B x C x h x w; "
            f"{type(model).__name__} gives shape {tuple(feats.shape)}."
        )
    # Gradients of the logits with respect to the feature map need only the head's graph.
    with torch.enable_grad():
        feats = feats.detach().requires_grad_(True)
        logits = model.forward_head(feats)
        b = logits.shape[0]
        if class_index is None:
            target = logits.argmax(dim=1)
        else:
            target = torch.as_tensor(np.broadcast_to(np.asarray(class_index), (b,)).copy(),
                                     device=logits.device)
        score = logits.gather(1, target.view(-1, 1)).sum()
        (grads,) = torch.autograd.grad(score, feats)
    with torch.no_grad():
        weights = grads.float().mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((weights * feats.float()).sum(dim=1, keepdim=True))
        cam = _minmax(cam)
        cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
        cam = _minmax(cam)
    return cam[:, 0].cpu().numpy().astype(np.float32), logits.detach()


def _minmax(cam: Any) -> Any:
    flat = cam.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    cam = cam - lo
    hi = cam.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
    return cam / (hi + 1e-7)


def overlay_heatmap(rgb: np.ndarray, cam: np.ndarray, *, alpha: float = 0.45,
                    size: int | None = None) -> np.ndarray:
    """Blend a ``[0, 1]`` heatmap (jet colormap) onto an RGB image.

    Parameters
    ----------
    rgb:
        ``(H, W, 3) uint8`` image the heatmap was computed on (e.g. the network input crop).
    cam:
        ``(h, w)`` float heatmap in [0, 1]; resized to the image (bilinear).
    alpha:
        Weight of the heatmap colour (0 = image only, 1 = heatmap only).
    size:
        Optional square output side (the overlay is resized to ``size x size``).

    Returns
    -------
    ``(H, W, 3)`` (or ``size x size x 3``) ``uint8`` RGB.
    """
    import cv2

    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"The 'alpha' parameter must be between 0 and 1; got {alpha}.")
    img = np.ascontiguousarray(rgb, dtype=np.uint8)
    if size is not None and img.shape[:2] != (size, size):
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    h, w = img.shape[:2]
    c = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0, 1.0)
    if c.shape != (h, w):
        c = cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.uint8(np.rint(c * 255)), cv2.COLORMAP_JET)[:, :, ::-1]
    out = (1.0 - alpha) * img.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


__all__ = ["grad_cam", "overlay_heatmap"]
