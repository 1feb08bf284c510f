"""Pickle-free checkpoints: tensors in safetensors, everything else in a JSON sidecar.

A training checkpoint of one (model, fold) holds the model, AdamW state, the torch RNG
states (uint8 tensors), and in JSON: epoch, step, best score, early-stopping counter,
NumPy / Python RNG states, classes and preprocessing. Each file is written to a temporary
name and renamed, and the JSON (written last) is what marks the checkpoint as complete, so a
kill in the middle of a save leaves the previous complete checkpoint in use.

Member weights (``members/<model>/fold<k>.safetensors``) hold only the model's tensors and
load with ``safetensors.torch.load_file``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np

from skin_core.errors import SkinCoreError
from skin_core.io import atomic_path, atomic_write_json

CHECKPOINT_FORMAT = 1


class DiskFullError(SkinCoreError):
    """The disk filled up while saving; nothing half-written was kept."""


def _disk_error(path: Path, exc: OSError) -> SkinCoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"No space left on the device while writing {path}; nothing half-written was kept "
            "(free some disk space, then rerun the same command with --resume)."
        )
    return SkinCoreError(
        f"Could not write {path} ({exc.strerror or exc}); check the folder's permissions, then "
        "rerun with --resume."
    )


def save_tensors(path: str | os.PathLike[str], tensors: dict[str, Any],
                 metadata: dict[str, str] | None = None) -> str:
    """Write ``tensors`` to a safetensors file atomically; returns its sha256 hex.

    Raises
    ------
    DiskFullError
        On ``ENOSPC`` (no space left); the target is untouched and no temp file remains.
    """
    from safetensors.torch import save_file

    path = Path(path)
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    try:
        with atomic_path(path) as tmp:
            save_file(clean, str(tmp), metadata=metadata)
            with open(tmp, "rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
                os.fsync(fh.fileno())
    except OSError as exc:
        raise _disk_error(path, exc) from exc
    return digest


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """:func:`skin_core.io.atomic_write_json` with a clear error on a full disk."""
    try:
        atomic_write_json(path, obj)
    except OSError as exc:
        raise _disk_error(Path(path), exc) from exc


def file_sha256(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _flatten_optimizer(opt_state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch

    tensors: dict[str, Any] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in opt_state["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"opt.{idx}.{key}"] = val
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        if name.startswith("opt."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = val
    for idx, sc in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(sc)
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_snapshot(generator: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Torch RNG states as tensors and NumPy / Python RNG states as JSON-able values."""
    import torch

    tensors = {"rng.torch": torch.get_rng_state()}
    if generator is not None:
        tensors["rng.generator"] = generator.get_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    np_state = np.random.get_state()  # noqa: NPY002 - the global state libraries use
    py_state = random.getstate()
    js = {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, js


def rng_restore(tensors: dict[str, Any], js: dict[str, Any], generator: Any = None) -> None:
    import torch

    torch.set_rng_state(tensors["rng.torch"])
    if generator is not None and "rng.generator" in tensors:
        generator.set_state(tensors["rng.generator"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    n = js["numpy"]
    legacy = (n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4])
    np.random.set_state(legacy)  # noqa: NPY002 - the global state libraries use
    p = js["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def save_checkpoint(
    ckpt_dir: str | os.PathLike[str],
    *,
    model: Any,
    optimizer: Any,
    generator: Any,
    best_state: dict[str, Any] | None,
    state: dict[str, Any],
    extra_tensors: dict[str, Any] | None = None,
) -> None:
    """Save a resumable training state into ``ckpt_dir`` (``last.safetensors`` + ``last.json``).

    ``state`` holds JSON-able bookkeeping (epoch, step, best score, classes...). The best
    epoch's weights go to ``best.safetensors`` when ``best_state`` is given; ``extra_tensors``
    (e.g. the averaged weights ``ema.*``) are saved beside the model's and come back from
    :func:`load_checkpoint` under their own names.
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    rng_tensors, rng_js = rng_snapshot(generator)
    tensors.update(rng_tensors)
    tensors.update(extra_tensors or {})
    best_file = state.get("best_file")
    if best_state is not None:
        best_file = f"best_e{int(state['best_epoch'])}.safetensors"
        save_tensors(ckpt_dir / best_file, best_state)
    digest = save_tensors(ckpt_dir / "last.safetensors", tensors)
    write_json(ckpt_dir / "last.json", {
        "format": CHECKPOINT_FORMAT,
        **state,
        "best_file": best_file,
        "optimizer": opt_meta,
        "rng": rng_js,
        "sha256": digest,
    })
    for old in ckpt_dir.glob("best_e*.safetensors"):
        if old.name != best_file:
            old.unlink(missing_ok=True)


def load_checkpoint(
    ckpt_dir: str | os.PathLike[str],
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(tensors, state)`` of the last complete checkpoint in ``ckpt_dir``, or ``None``."""
    from safetensors.torch import load_file

    ckpt_dir = Path(ckpt_dir)
    side = ckpt_dir / "last.json"
    data = ckpt_dir / "last.safetensors"
    if not (side.is_file() and data.is_file()):
        return None
    state = json.loads(side.read_text())
    if state.get("format") != CHECKPOINT_FORMAT or file_sha256(data) != state.get("sha256"):
        return None
    return load_file(str(data)), state


def restore_training(tensors: dict[str, Any], state: dict[str, Any], *, model: Any,
                     optimizer: Any, generator: Any) -> None:
    """Load model, optimizer and RNG states from a checkpoint (see :func:`load_checkpoint`)."""
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
    rng_restore(tensors, state["rng"], generator)


def load_best(ckpt_dir: str | os.PathLike[str], state: dict[str, Any]) -> dict[str, Any] | None:
    """The best epoch's model tensors named by checkpoint ``state`` (``None`` when absent)."""
    from safetensors.torch import load_file

    name = state.get("best_file")
    p = Path(ckpt_dir) / str(name)
    return load_file(str(p)) if name and p.is_file() else None
