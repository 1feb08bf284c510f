"""Which torch device to run on (training and prediction alike), and the CPU allocator."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

from skin_core.errors import ConfigError

_ALLOCATOR_TUNED = False


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


def tune_cpu_allocator() -> bool:
    """Keep freed tensor memory in the process instead of handing it back to the system.

    glibc's ``malloc`` serves every block over a few MB (a batch's activations) with a fresh
    ``mmap`` and returns it with ``munmap`` when freed, so each training step page-faults all
    its activations in again: on 2 CPU cores MobileNetV2 at 160 px spent up to half its time in
    the kernel (a training step 1.2-3.2x slower; docs/performance.md).
    With ``mmap`` off for large blocks and a high trim threshold the heap is reused instead.
    The process keeps its peak memory until it exits, the right trade for a training process.
    Linux with glibc only; elsewhere (and when already done) nothing happens.

    Returns True when the settings were applied by this call.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
    ok = (mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, 2**31 - 1) == 1
          and mallopt(m_top_pad, 256 << 20) == 1)
    _ALLOCATOR_TUNED = bool(ok)
    return _ALLOCATOR_TUNED


__all__ = ["resolve_device", "tune_cpu_allocator"]
