"""Batched dermoscopy augmentation on ``uint8`` tensors straight from the image cache.

One call transforms a whole batch with **per-image** random parameters, in two vectorised
steps (no per-image Python loop, no JPEG decoding):

1. geometry: one 2x3 affine matrix per image combining a random 90-degree rotation
   (k * 90 deg), a small extra rotation (+-``rotate`` deg), a horizontal flip (with the
   rotations this gives all 8 dihedral poses, so vertical flips are covered), a random resized
   crop (area fraction in ``[crop_area, 1]``, aspect ratio in ``[1/aspect, aspect]`` with
   ``aspect = 4/3``, random position)
   and a small translation; applied with ``affine_grid`` + ``grid_sample`` (bilinear,
   reflection padding), the batched form of ``torchvision.transforms.v2.RandomResizedCrop`` +
   ``RandomAffine`` + flips (v2 draws one parameter set per call, i.e. per batch).
2. colour: per-image brightness, contrast and saturation factors in ``1 +- jitter``
   (``torchvision.transforms.v2.ColorJitter`` semantics: contrast blends with the image's mean
   grey level, saturation with its greyscale image), fused into one per-image 3x3 colour
   matrix + offset with a single clamp (torchvision clamps after each step; only pixels
   pushed past 0 or 1 half-way differ).

Random numbers come from the ``torch.Generator`` passed in, so a resumed run draws exactly
what an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

_GREY = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    """Strength of each augmentation (``0`` turns one off)."""

    rotate: float = 15.0
    crop_area: float = 0.6
    aspect: float = 4 / 3
    translate: float = 0.05
    jitter: float = 0.2
    flips: bool = True


def to_float(batch: torch.Tensor, mean: Any, std: Any) -> torch.Tensor:
    """``(B, S, S, 3) uint8`` -> normalised ``(B, 3, S, S) float32``."""
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x.sub_(m).div_(s)


def augment_batch(
    batch: torch.Tensor,
    *,
    mean: Any,
    std: Any,
    generator: torch.Generator,
    config: AugmentConfig = AugmentConfig(),
) -> torch.Tensor:
    """Augment a ``(B, S, S, 3) uint8`` batch; returns normalised ``(B, 3, S, S) float32``.

    Random parameters are drawn on the CPU from ``generator`` (whatever the batch's device).
    """
    b = batch.shape[0]
    dev = batch.device
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=generator) * (hi - lo) + lo

    k = torch.randint(0, 4, (b,), generator=generator).float() if config.flips else torch.zeros(b)
    angle = k * (math.pi / 2) + u(-1.0, 1.0) * math.radians(config.rotate)
    flip = (torch.rand(b, generator=generator) < 0.5).float() * 2 - 1 if config.flips else (
        torch.ones(b))
    area = u(config.crop_area, 1.0)
    log_r = u(-math.log(config.aspect), math.log(config.aspect))
    ratio = torch.exp(log_r)
    sx = torch.sqrt(area * ratio).clamp(max=1.0)
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (1 - sx) * u(-1.0, 1.0) + u(-1.0, 1.0) * config.translate
    ty = (1 - sy) * u(-1.0, 1.0) + u(-1.0, 1.0) * config.translate
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([
        torch.stack([cos * sx * flip, -sin * sy, tx], dim=1),
        torch.stack([sin * sx * flip, cos * sy, ty], dim=1),
    ], dim=1).to(dev)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if config.jitter > 0:
        # brightness b, contrast c (towards the image's mean grey g) and saturation s (towards
        # each pixel's grey) compose into one per-image colour map, clamped once:
        # x' = c*b*S x + (1 - c)*b*g,  S = s*I + (1 - s) * 1 w^T.
        j = config.jitter
        bright, contrast, sat = u(1 - j, 1 + j), u(1 - j, 1 + j), u(1 - j, 1 + j)
        w = torch.tensor(_GREY)
        smat = sat.view(b, 1, 1) * torch.eye(3) + (1 - sat).view(b, 1, 1) * w.view(1, 1, 3)
        mat = ((contrast * bright).view(b, 1, 1) * smat).to(dev)
        grey_mean = torch.einsum("bchw,c->b", x, w.to(dev)) / (x.shape[2] * x.shape[3])
        offset = ((1 - contrast) * bright).to(dev) * grey_mean
        x = torch.einsum("bij,bjhw->bihw", mat, x).add_(offset.view(b, 1, 1, 1)).clamp_(0, 1)
    m = torch.tensor(mean, dtype=x.dtype, device=dev).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=dev).view(1, 3, 1, 1)
    return x.sub_(m).div_(s)
