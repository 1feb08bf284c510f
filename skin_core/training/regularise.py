"""Regularisers of the training loop: mixup / CutMix of a batch, and weight averaging.

**Mixup and CutMix**: pairs of images (or cached activations) blended.

With ``freeze`` the batch is the frozen stages' cached activations, so this is *manifold*
mixup (Verma et al., ICML 2019) at the frozen boundary: each epoch sees blends no cached view
holds, which is the regulariser a handful of cached augmentations lacks. Without ``freeze`` the
batch is the augmented images (Zhang et al. 2018; CutMix: Yun et al. 2019).

- ``mixup: a`` (``a > 0``): ``x = lam * x + (1 - lam) * x[perm]``, ``lam ~ Beta(a, a)``;
- ``cutmix: a``: a box of area ``1 - lam`` (``lam ~ Beta(a, a)``) is pasted from ``x[perm]``
  and ``lam`` is then the share of the sample left uncovered;
- both: one or the other per batch, with probability 1/2 each (timm's convention).

The loss is ``lam * loss(out, y) + (1 - lam) * loss(out, y[perm])``, whatever the class
weighting. Every random draw comes from the training job's torch generator (one integer
per batch seeds a numpy generator), so a resumed run mixes exactly as the uninterrupted one.

**Weight averaging** (``ema``, :class:`WeightAverage`): the member is an exponential moving
average of the weights along the last epochs, not the last step's weights.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def mix_batch(x: Any, y: Any, *, mixup: float, cutmix: float,
              generator: Any) -> tuple[Any, Any, Any, float]:
    """``(x_mixed, y, y_partner, lam)``; ``lam == 1.0`` and ``x`` untouched when both are 0."""
    import torch

    if not (mixup > 0 or cutmix > 0) or len(x) < 2:
        return x, y, y, 1.0
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    rng = np.random.default_rng(seed)
    use_cut = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    perm_np = rng.permutation(len(x))
    perm = torch.from_numpy(perm_np).to(x.device)
    fmt = (torch.channels_last if x.dim() == 4 and x.is_contiguous(
        memory_format=torch.channels_last) and not x.is_contiguous() else torch.contiguous_format)
    if use_cut:
        lam = float(rng.beta(cutmix, cutmix))
        h, w = int(x.shape[-2]), int(x.shape[-1])
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(round(h * cut)), int(round(w * cut))
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch - ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw - cw // 2, w)
        out = x.clone(memory_format=fmt)
        out[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    else:
        lam = float(rng.beta(mixup, mixup))
        out = (lam * x + (1.0 - lam) * x[perm]).contiguous(memory_format=fmt)
    return out, y, y[perm], lam


def mixed_loss(loss_fn: Any, out: Any, y: Any, y2: Any, lam: float) -> Any:
    """The loss of a mixed batch (plain ``loss_fn(out, y)`` when ``lam == 1``)."""
    if lam >= 1.0:
        return loss_fn(out, y)
    return lam * loss_fn(out, y) + (1.0 - lam) * loss_fn(out, y2)


class WeightAverage:
    """An exponential moving average of a network's weights (Polyak averaging), the member
    when ``ema`` is set: ``avg = d * avg + (1 - d) * weights`` after every optimisation step,
    batch-norm statistics included, with ``d = min(ema, (1 + step) / (10 + step))`` so the
    first steps do not drag the random head's start along (timm's ``ModelEma`` warm-up).

    ``model`` is a copy kept in eval mode; it is what the epoch is scored with, what the fold
    predicts out of fold and what is saved as the member. Its tensors go into the resumable
    checkpoint (``ema.*``) and the step count is the training step, so a resumed run
    averages exactly as the uninterrupted one.
    """

    def __init__(self, model: Any, decay: float) -> None:
        import copy

        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def update(self, model: Any, step: int) -> None:
        import torch

        d = min(self.decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            live = model.state_dict()
            for name, avg in self.model.state_dict().items():
                cur = live[name].detach()
                if avg.dtype.is_floating_point:
                    avg.mul_(d).add_(cur.to(avg.dtype), alpha=1.0 - d)
                else:
                    avg.copy_(cur)

    def tensors(self) -> dict[str, Any]:
        """The averaged weights, named for the checkpoint (``ema.<name>``)."""
        return {f"ema.{k}": v for k, v in self.model.state_dict().items()}

    def restore(self, tensors: dict[str, Any]) -> None:
        """Load the averaged weights saved by :meth:`tensors` (a checkpoint's tensors)."""
        self.model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
