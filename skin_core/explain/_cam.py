"""Class activation maps of timm CNNs: Grad-CAM and its variants, on any stage, over fold models.

For a target class ``c`` with logit ``y_c``, a target layer with activations ``A`` (``B x C x h x
w``) and gradients ``G = d y_c / d A``, the methods are (``ReLU`` after the channel sum)::

    gradcam    cam = ReLU(sum_k mean_ij(G_k) A_k)               Selvaraju et al., ICCV 2017
    gradcam++  cam = ReLU(sum_k w_k A_k), w_k = sum_ij ReLU(G_k) a_kij,
               a_kij = G_k^2 / (2 G_k^2 + sum_ij(A_k) G_k^3)   Chattopadhay et al., WACV 2018
    hirescam   cam = ReLU(sum_k G_k A_k)                       Draelos & Carin, 2020
    layercam   cam = ReLU(sum_k ReLU(G_k) A_k)                 Jiang et al., IEEE TIP 2021

then per image ``cam = (cam - min) / (max + 1e-7)``, bilinear upsampling to the input size
(half-pixel centres) and min-max again. Several layers are averaged after that (then min-max
again); several fold models (:func:`ensemble_cam`) too. Every step is what the ``grad-cam``
package (``pytorch_grad_cam``) computes for the same target layers; the tests pin them.

The **layer** is named by the stride of its feature map: ``"last"`` is the output of the
model's ``forward_features`` (the classic Grad-CAM layer, stride 32 in most CNNs), an integer
``r`` is the last activated map of stride ``r`` (:func:`resolve_layers`: a ResNet's ``layer3``
for 16, a MobileNetV2's ``blocks.5.0.bn1.act``, since its ``blocks.4`` ends in a linear
bottleneck), a string is a module name, and a tuple averages several (leaving out, by
default, maps of fewer than 4 x 4 cells). A stride-16 map has 4 times the cells of the last.
The default, LayerCAM on strides 8, 16 and the last layer, was chosen on lesion masks
(``docs/heatmaps.md``).

Cost: one forward pass (which also gives the logits) plus the backward pass from the logits to
the target layer only. The part of the network before the earliest target layer runs without
autograd; for ``"last"`` only the classifier head is differentiated.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from skin_core.errors import ConfigError

#: CAM methods by name (see the module docstring).
CAM_METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "hirescam", "layercam")

#: The default method and layer of :func:`class_activation_map` and :func:`ensemble_cam`,
#: chosen on lesion masks (``bench/bench_heatmap.py``, ``docs/heatmaps.md``).
DEFAULT_METHOD = "layercam"
DEFAULT_LAYER: str | int | tuple[str | int, ...] = (8, 16, "last")
DEFAULT_MIN_CELLS = 4

Layer = str | int | tuple[str | int, ...]


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------
_ACTIVATIONS = ("ReLU", "ReLU6", "SiLU", "GELU", "Hardswish", "LeakyReLU", "ELU", "Mish",
                "Swish", "GELUTanh", "QuickGELU")
_PROBES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _probe(model: Any, side: int) -> tuple[list[tuple[str, int]], dict[str, int], set[str],
                                           int]:
    """One forward pass at input side ``side`` (then cached per model and side): every
    activation module that runs once, ``(name, stride)`` in forward order; each timm
    ``feature_info`` stage's stride; and the stages whose output is an activation's output
    (a ReLU-like map, not a linear bottleneck); and the width of the last feature map."""
    import torch

    cache = _PROBES.setdefault(model, {})
    if side in cache:
        return cache[side]
    acts: list[tuple[str, int, Any]] = []
    stages: dict[str, tuple[int, Any]] = {}
    handles = []
    info = {f["module"] for f in list(getattr(model, "feature_info", None) or [])}

    def stride(out: Any) -> int:
        return max(1, round(side / out.shape[-1]))

    for name, mod in model.named_modules():
        if type(mod).__name__ in _ACTIVATIONS:
            def hook(_m: Any, _i: Any, out: Any, name: str = name) -> None:
                if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] > 0:
                    acts.append((name, stride(out), out))  # kept: no address is reused
            handles.append(mod.register_forward_hook(hook))
        if name in info:
            def stage(_m: Any, _i: Any, out: Any, name: str = name) -> None:
                if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] > 0:
                    stages[name] = (stride(out), out)
            handles.append(mod.register_forward_hook(stage))
    try:
        p = next(model.parameters(), None)
        x = torch.zeros(1, 3, side, side, device=None if p is None else p.device,
                        dtype=None if p is None else p.dtype)
        with torch.no_grad():
            last = model.forward_features(x)
    finally:
        for h in handles:
            h.remove()
    counts: dict[str, int] = {}
    for name, _, _ in acts:
        counts[name] = counts.get(name, 0) + 1
    once = [(n, r) for n, r, _ in acts if counts[n] == 1]
    ptrs = {out.data_ptr() for _, _, out in acts}
    activated = {n for n, (_, out) in stages.items() if out.data_ptr() in ptrs}
    width = int(last.shape[-1]) if last.ndim == 4 else 0
    cache[side] = (once, {n: r for n, (r, _) in stages.items()}, activated, width)
    return cache[side]


def resolve_layers(model: Any, layer: Layer, side: int, *, min_cells: int = 1) -> list[str]:
    """Module names (``"last"`` for the ``forward_features`` output) that ``layer`` means for
    ``model`` at input side ``side``, in forward order.

    With several layers, those whose map is narrower than ``min_cells`` cells at this input
    side are left out (the finest one is kept if none is wide enough): a 2 x 2 map (stride 32
    at 64 px) can only point at a quarter of the picture, and averaged in it drags the
    finer maps' maxima towards a quadrant's centre.

    A stride ``r`` is timm's ``feature_info`` stage of that stride when the stage ends in an
    activation (a ResNet's ``layer3`` for 16); when it ends in a linear bottleneck (MobileNet,
    EfficientNet: a sum without activation, with negative values, which the CAM methods'
    weighting of activations assumes away), the **last activation** (ReLU, ReLU6, SiLU,
    GELU... module) with output stride ``r``: there, the next block's expansion, the last map
    before the resolution halves. On the HAM10000 MobileNetV2 that choice is worth 0.35 of
    pointing game and 0.3 of IoU (``docs/heatmaps.md``).
    """
    items = list(layer) if isinstance(layer, (tuple, list)) else [layer]
    if not items:
        raise ConfigError("The 'layer' of a class activation map must name at least one layer; "
                          "got an empty tuple.")
    modules = dict(model.named_modules())
    names: list[str] = []
    cells: dict[str, int] = {}
    for item in items:
        if isinstance(item, str) and item == "last":
            name = "last"
            if len(items) > 1:
                cells[name] = _probe(model, side)[3]
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            once, stages, activated, _ = _probe(model, side)
            acts = [n for n, r in once if r == int(item)]
            info = [n for n, r in stages.items() if r == int(item)]
            if not acts and not info:
                have = sorted({r for _, r in once} | set(stages.values()))
                raise ConfigError(
                    f"{type(model).__name__} has no stage with stride {int(item)} at "
                    f"{side} px; choose one of {have} or 'last'." if have else
                    f"{type(model).__name__} has no activation or timm feature_info to find a "
                    f"stage of stride {int(item)}; name the layer as 'last' or by its module "
                    f"name."
                )
            if info and (info[-1] in activated or not acts):
                name = info[-1]
            else:
                name = acts[-1]
            cells[name] = -(-side // int(item))
        elif isinstance(item, str) and item in modules and item:
            name = item
        else:
            raise ConfigError(
                f"The 'layer' of a class activation map must be 'last', a stride (e.g. 16) or a "
                f"module name of {type(model).__name__}; got {item!r} instead."
            )
        if name not in names:
            names.append(name)
    wide = [n for n in names if cells.get(n, min_cells) >= min_cells]
    if not wide:
        wide = [min(names, key=lambda n: -cells.get(n, 0))]
    names = wide
    order = {n: i for i, n in enumerate(modules)}
    return sorted(names, key=lambda n: order.get(n, len(order)))  # "last" runs last


def _check_method(method: str) -> str:
    if method not in CAM_METHODS:
        raise ConfigError(f"The 'method' of a class activation map must be one of "
                          f"{list(CAM_METHODS)}; got {method!r} instead.")
    return method


# ---------------------------------------------------------------------------------------------
# Forward with taps
# ---------------------------------------------------------------------------------------------
class _Taps:
    """Forward hooks that keep the target layers' outputs as leaves of a new autograd graph.

    The forward pass starts without autograd; the earliest target layer's hook switches it on
    and detaches its output (so only the rest of the network is differentiated); later target
    layers are kept as they are (still in the graph).
    """

    def __init__(self, model: Any, names: Sequence[str]) -> None:
        import torch

        self.acts: dict[str, Any] = {}
        self._handles = []
        modules = dict(model.named_modules())
        self._first = names[0]
        for name in names:
            if name != "last":
                self._handles.append(modules[name].register_forward_hook(self._hook(name)))
        self._torch = torch

    def _hook(self, name: str):
        def hook(_module: Any, _inputs: Any, out: Any) -> Any:
            if not isinstance(out, self._torch.Tensor) or out.ndim != 4:
                raise ConfigError(
                    f"The layer {name!r} gives {type(out).__name__} "
                    f"{tuple(getattr(out, 'shape', ()))}, not a B x C x h x w feature map; "
                    f"choose another layer."
                )
            if name == self._first:
                self._torch.set_grad_enabled(True)  # restored by the caller's no_grad block
                out = out.detach().requires_grad_(True)
            self.acts[name] = out
            return out
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _forward(model: Any, x: Any, names: Sequence[str]) -> tuple[dict[str, Any], Any]:
    """Logits with the target layers' activations as differentiable inputs of the rest."""
    import torch

    taps = _Taps(model, names)
    try:
        with torch.no_grad():
            feats = model.forward_features(x)
            if feats.ndim != 4:
                raise ConfigError(
                    f"Class activation maps need a CNN whose last feature map is B x C x h x w; "
                    f"{type(model).__name__} gives shape {tuple(feats.shape)}."
                )
            if names[0] == "last":
                torch.set_grad_enabled(True)
                feats = feats.detach().requires_grad_(True)
            if "last" in names:
                taps.acts["last"] = feats
            logits = model.forward_head(feats)
    finally:
        taps.remove()
    missing = [n for n in names if n not in taps.acts]
    if missing:
        raise ConfigError(f"The layer(s) {missing} of {type(model).__name__} did not run in "
                          f"forward_features; choose a layer of the backbone.")
    return taps.acts, logits


def _targets(logits: Any, class_index: Any) -> Any:
    import torch

    b = logits.shape[0]
    if class_index is None:
        return logits.argmax(dim=1)
    idx = np.broadcast_to(np.asarray(class_index), (b,)).astype(np.int64)
    k = logits.shape[1]
    if (idx < 0).any() or (idx >= k).any():
        raise ConfigError(f"The 'class_index' of a class activation map must be in [0, {k}); "
                          f"got {np.asarray(class_index).tolist()!r} instead.")
    return torch.as_tensor(idx.copy(), device=logits.device)


def _cam_of(method: str, act: Any, grad: Any) -> Any:
    """``(B, 1, h, w)`` raw map (after the ReLU) of one layer."""
    import torch

    a, g = act.float(), grad.float()
    if method == "gradcam":
        cam = (g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True)
    elif method == "hirescam":
        cam = (g * a).sum(dim=1, keepdim=True)
    elif method == "layercam":
        cam = (torch.relu(g) * a).sum(dim=1, keepdim=True)
    else:  # gradcam++, as pytorch_grad_cam.GradCAMPlusPlus
        g2 = g * g
        g3 = g2 * g
        s = a.sum(dim=(2, 3), keepdim=True)
        aij = g2 / (2 * g2 + s * g3 + 1e-6)
        aij = torch.where(g != 0, aij, torch.zeros_like(aij))
        w = (torch.relu(g) * aij).sum(dim=(2, 3), keepdim=True)
        cam = (w * a).sum(dim=1, keepdim=True)
    return torch.relu(cam)


def _minmax(cam: Any) -> Any:
    flat = cam.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    cam = cam - lo
    hi = cam.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
    return cam / (hi + 1e-7)


def _maps(method: str, acts: dict[str, Any], logits: Any, target: Any, names: Sequence[str],
          size: tuple[int, int]) -> Any:
    """``(B, 1, H, W)`` map in [0, 1]: every layer normalised, upsampled, averaged, normalised."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    with torch.enable_grad():  # the caller may hold a no_grad block
        score = logits.gather(1, target.view(-1, 1)).sum()
    grads = torch.autograd.grad(score, [acts[n] for n in names])
    with torch.no_grad():
        layers = []
        for name, g in zip(names, grads, strict=True):
            cam = _minmax(_cam_of(method, acts[name].detach(), g))
            layers.append(F.interpolate(cam, size=size, mode="bilinear", align_corners=False))
        cam = layers[0] if len(layers) == 1 else torch.stack(layers).clamp_min(0).mean(dim=0)
        return _minmax(cam)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
def class_activation_map(model: Any, x: Any, *, method: str = DEFAULT_METHOD,
                         layer: Layer = DEFAULT_LAYER, class_index: Any = None,
                         min_cells: int = DEFAULT_MIN_CELLS) -> tuple[np.ndarray, Any]:
    """Class activation map of ``model`` for a normalised input batch.

    Parameters
    ----------
    model:
        A timm CNN in eval mode (``forward_features`` must return ``B x C x h x w``).
    x:
        ``(B, 3, S, S)`` float tensor (already normalised): the network's input crop.
    method:
        One of :data:`CAM_METHODS` (default :data:`DEFAULT_METHOD`).
    layer:
        ``"last"``, a stride such as ``16`` (timm ``feature_info``), a module name, or a tuple
        of them (averaged); default :data:`DEFAULT_LAYER`. A model without a stage of the asked
        stride is refused.
    class_index:
        Target class per image (int or sequence of ``B`` ints); default: each image's top
        class.
    min_cells:
        Of several layers, leave out those whose map is narrower than this many cells
        (:func:`resolve_layers`); default :data:`DEFAULT_MIN_CELLS`.

    Returns
    -------
    (cam, logits)
        ``cam``: ``(B, S, S)`` float32 array in [0, 1] over the input crop; ``logits``: the
        ``(B, K)`` logits of the same forward pass (detached tensor).

    Raises
    ------
    ConfigError
        Unknown method or layer, a class index out of range, or an architecture without a
        spatial feature map (e.g. a ViT's tokens).

    Example
    -------
    >>> cam, logits = class_activation_map(net, x)  # doctest: +SKIP
    >>> cam, logits = class_activation_map(net, x, method="gradcam", layer="last")  # classic
    """
    cams, logits = ensemble_cam([(model, x)], method=method, layer=layer,
                                class_index=class_index, min_cells=min_cells)
    return cams, logits[0]


def ensemble_cam(pairs: Sequence[tuple[Any, Any]], *, method: str = DEFAULT_METHOD,
                 layer: Layer = DEFAULT_LAYER, class_index: Any = None,
                 min_cells: int = DEFAULT_MIN_CELLS) -> tuple[np.ndarray, list[Any]]:
    """Mean class activation map over several models (e.g. every fold model of a bundle).

    Parameters
    ----------
    pairs:
        ``(model, x)`` per model: the model and its own normalised input batch. Every ``x``
        must show the same crop of the same images (the inputs may differ in size and
        normalisation, e.g. one per architecture); every model must have the same classes.
    method, layer, min_cells:
        As in :func:`class_activation_map`; the layers are resolved per model.
    class_index:
        Target class per image; default: the top class of the models' mean probabilities
        (softmax of each model's logits, averaged), so that every map explains the same class.

    Returns
    -------
    (cam, logits)
        ``cam``: ``(B, S, S)`` float32 in [0, 1], ``S`` the largest input side: each model's
        map normalised to [0, 1], upsampled to ``S``, averaged, then normalised again;
        ``logits``: one ``(B, K)`` detached tensor per pair (same order), from the same
        forward passes, so a caller needs no other pass for its probabilities.

    Raises
    ------
    ConfigError
        No pairs, pairs with different batch sizes or classes, or as in
        :func:`class_activation_map`.

    Notes
    -----
    Cost: the models' forward passes plus, per model, the backward pass from the logits to the
    target layer (see the module docstring); the forward graphs are held until the target
    class is known, which for the default stride-16 layer is the network's last stages only.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    _check_method(method)
    pairs = list(pairs)
    if not pairs:
        raise ConfigError("ensemble_cam needs at least one (model, input) pair; got none.")
    runs = []
    for model, x in pairs:
        names = resolve_layers(model, layer, int(x.shape[-1]), min_cells=min_cells)
        acts, logits = _forward(model, x, names)
        runs.append((names, acts, logits, tuple(int(s) for s in x.shape[-2:])))
    shapes = {tuple(r[2].shape) for r in runs}
    if len(shapes) != 1:
        raise ConfigError(f"The (model, input) pairs of ensemble_cam must give logits of one "
                          f"shape (same images, same classes); got {sorted(shapes)}.")
    if class_index is None and len(runs) > 1:
        with torch.no_grad():
            mean_p = torch.stack([torch.softmax(r[2].float(), dim=1) for r in runs]).mean(0)
        target = mean_p.argmax(dim=1)
    else:
        target = _targets(runs[0][2], class_index)
    side = max(max(r[3]) for r in runs)
    total = None
    for names, acts, logits, size in runs:
        cam = _maps(method, acts, logits, target.to(logits.device), names, size)
        if size != (side, side):
            cam = F.interpolate(cam, size=(side, side), mode="bilinear", align_corners=False)
        total = cam.float().cpu() if total is None else total + cam.float().cpu()
    cam = total if len(runs) == 1 else _minmax(total / len(runs))
    return cam[:, 0].numpy().astype(np.float32), [r[2].detach() for r in runs]


def grad_cam(model: Any, x: Any, class_index: Any = None) -> tuple[np.ndarray, Any]:
    """Classic Grad-CAM on the last feature map (``method="gradcam", layer="last"``).

    Kept for the callers that ask for exactly Selvaraju et al.'s map; the better-localising
    default is :func:`class_activation_map`. Returns ``(cam, logits)`` as it does.
    """
    return class_activation_map(model, x, method="gradcam", layer="last",
                                class_index=class_index)
