"""Which torch device to run on (training and prediction alike)."""

from __future__ import annotations

from skin_core.errors import ConfigError


def resolve_device(name: str = "auto") -> str:
    """``auto`` -> ``cuda`` if available, else ``mps``, else ``cpu``; checks explicit names."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else ("mps" if has_mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use "
                          "--device auto or cpu.")
    if name == "mps" and not has_mps:
        raise ConfigError("--device mps was asked for but Apple MPS is not available; use "
                          "--device auto or cpu.")
    return name


__all__ = ["resolve_device"]
