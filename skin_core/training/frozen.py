"""Frozen early stages: their activations computed once, so epochs only run the trainable top.

On a CPU most of a small CNN's training time goes to its first, high-resolution stages
(MobileNetV2 at 160 px on 2 cores: 40 training images/s for the whole network, 211/s for
everything after its third stage; docs/results-ham10000.md). Those stages hold generic
ImageNet filters (edges, colour, texture) that fine-tuning barely changes. With
``freeze: N`` in the training config:

- the stem and the first ``N`` stages keep their pretrained weights (batch norm frozen too);
- their output for every image of the cache is computed **once per run and architecture**
  and stored as a ``float16`` file, for ``views`` versions of each image: version 0 is the
  image itself (used to score the fold after each epoch), versions 1.. are random augmentations
  (:func:`~skin_core.training.augment.augment_batch`: rotations, flips, crops, colour) drawn
  from a fixed seed, so a resumed or repeated run reads the same file;
- each epoch then trains only the rest of the network, each image reading one random
  augmented version.

The member is still the whole network (frozen stages included) and is served like any other:
the served pipeline never sees the activation file. Out-of-fold predictions are made by the
whole network from the image cache, as served (:func:`~skin_core.training.engine.predict_rows`).

Works for timm's EfficientNet-family networks (MobileNetV2/V3, EfficientNet, EfficientNet-Lite,
MixNet...: a ``conv_stem``, ``bn1`` and ``blocks`` stages); :func:`check_split` proves on a
random input that the split network computes what the whole one does, and refuses otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skin_core.errors import ConfigError, SkinCoreError

#: Bump when the way activations are computed changes (old files are then not reused).
FEATURE_CACHE_VERSION = 1


def _stages(model: Any) -> Any:
    if not all(hasattr(model, a) for a in ("conv_stem", "bn1", "blocks", "forward_head")):
        raise ConfigError(
            f"freeze works for EfficientNet-family networks (a stem and stages, like "
            f"mobilenetv2_100 or efficientnet_lite0), not {type(model).__name__}; set freeze: 0 "
            "for this architecture."
        )
    return model.blocks


def prefix_modules(model: Any, n: int) -> list[Any]:
    """The modules that stay frozen with ``freeze: n``: the stem and the first ``n`` stages."""
    blocks = _stages(model)
    if not 0 < n < len(blocks):
        raise ConfigError(
            f"freeze must be between 1 and {len(blocks) - 1} for {type(model).__name__} "
            f"(it has {len(blocks)} stages); got {n}."
        )
    return [model.conv_stem, model.bn1, *list(blocks)[:n]]


def forward_prefix(model: Any, x: Any, n: int) -> Any:
    """Activations after the stem and the first ``n`` stages."""
    x = model.bn1(model.conv_stem(x))
    for stage in list(model.blocks)[:n]:
        x = stage(x)
    return x


def forward_suffix(model: Any, f: Any, n: int) -> Any:
    """Logits from the activations of :func:`forward_prefix` (the remaining stages + head)."""
    for stage in list(model.blocks)[n:]:
        f = stage(f)
    if hasattr(model, "bn2") and hasattr(model, "conv_head") and not hasattr(model, "norm_head"):
        f = model.bn2(model.conv_head(f))  # EfficientNet: head conv inside forward_features
    return model.forward_head(f)


def check_split(model: Any, n: int, size: int) -> None:
    """Refuse ``freeze`` when prefix + suffix does not reproduce ``model`` (eval mode)."""
    import torch

    prefix_modules(model, n)
    was = model.training
    model.eval()
    try:
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(
            next(model.parameters()).device)
        with torch.inference_mode():
            whole = model(x)
            split = forward_suffix(model, forward_prefix(model, x, n), n)
    finally:
        model.train(was)
    if not torch.allclose(whole, split, rtol=1e-4, atol=1e-4):
        raise ConfigError(
            f"freeze: {n} cannot split {type(model).__name__} into frozen stages and a "
            "trainable top (their outputs differ from the whole network); set freeze: 0."
        )


def freeze_prefix(model: Any, n: int) -> list[Any]:
    """Stop gradients into the frozen stages; returns them (keep them in eval mode)."""
    mods = prefix_modules(model, n)
    for m in mods:
        for p in m.parameters():
            p.requires_grad_(False)
    return mods


def set_train_mode(model: Any, frozen: list[Any]) -> None:
    """``model.train()`` with the frozen stages' batch norm kept at its pretrained statistics."""
    model.train()
    for m in frozen:
        m.eval()


@dataclass(frozen=True)
class FeatureCache:
    """The activation file of one (run, architecture): ``(views, rows, C, H, W)`` float16."""

    path: str
    shape: tuple[int, int, int, int, int]

    def open(self) -> FeatureReader:
        return FeatureReader(self.path, self.shape)


class FeatureReader:
    """Rows of an activation file, read into fresh arrays (``reader[v, rows]``, as numpy's
    ``memmap[v, rows]`` would give: ``(len(rows), C, H, W)`` float16; ``v`` one view or one
    per row).

    Not a memmap on purpose: a mapped file counts in the process's resident memory as soon as
    it has been read once (the whole file after one epoch: 2.0-2.5 GB for the laptop recipe's
    members), whereas rows read with ``readinto`` pass through the kernel's page cache, which
    the system gives back to whoever needs it. A batch of 48 random rows of 25-32 KB takes
    0.19 ms from the page cache (the memmap 0.07 ms; a training step ~180 ms) and ~11 ms
    from a cold file.
    """

    def __init__(self, path: str, shape: tuple[int, ...]) -> None:
        self.path, self.shape = str(path), tuple(int(s) for s in shape)
        self._row_bytes = int(np.prod(self.shape[2:])) * 2
        self._fh = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed in close()/__del__

    def __getitem__(self, key: tuple[Any, Any]) -> np.ndarray:
        views, rows = key
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        views = np.broadcast_to(np.asarray(views, dtype=np.int64), rows.shape)
        out = np.empty((len(rows), *self.shape[2:]), dtype=np.float16)
        flat = out.reshape(len(rows), self._row_bytes // 2).view(np.uint8)
        for i, (v, r) in enumerate(zip(views.tolist(), rows.tolist(), strict=True)):
            if not (0 <= v < self.shape[0] and 0 <= r < self.shape[1]):
                raise IndexError(f"view {v}, row {r} outside the activation file {self.shape}")
            self._fh.seek((v * self.shape[1] + r) * self._row_bytes)
            if self._fh.readinto(flat[i]) != self._row_bytes:
                raise SkinCoreError(
                    f"The activation file {self.path} is shorter than its {self.shape} rows; "
                    "delete it (and its .json) so that the next run computes it again.")
        return out

    def close(self) -> None:
        self._fh.close()

    def __del__(self) -> None:
        fh = getattr(self, "_fh", None)
        if fh is not None:
            fh.close()


def feature_cache_key(*, image_cache: str, arch: str, weights: str, size: int, n: int,
                      views: int, seed: int, mean: Any, std: Any) -> str:
    """A digest of everything the activations depend on (weights by content)."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": FEATURE_CACHE_VERSION, "cache": os.path.abspath(image_cache),
                         "arch": arch, "size": size, "n": n, "views": views, "seed": seed,
                         "mean": list(mean), "std": list(std)}, sort_keys=True).encode())
    h.update(weights.encode())
    return h.hexdigest()[:20]


def weights_digest(model: Any, frozen: list[Any]) -> str:
    """sha256 of the frozen stages' tensors (their pretrained weights and statistics)."""
    h = hashlib.sha256()
    for m in frozen:
        for name, t in m.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def build_feature_cache(model: Any, n: int, *, image_cache: np.ndarray, image_cache_path: str,
                        arch: str, mean: Any, std: Any, views: int, seed: int,
                        out_dir: str | os.PathLike[str], batch_size: int = 64,
                        device: str = "cpu", channels_last: bool = True) -> FeatureCache:
    """Compute (or reuse) the frozen stages' activations for every row of ``image_cache``.

    ``model`` is the freshly created network (pretrained weights, frozen stages untouched).
    Written to ``out_dir/feat-<key>.f16`` through a temporary file and one rename, so an
    interrupted build leaves nothing half-written; an existing file of the same key is reused.
    """
    import torch

    from skin_core.training.augment import augment_batch, to_float

    frozen = prefix_modules(model, n)
    rows, size = int(image_cache.shape[0]), int(image_cache.shape[1])
    key = feature_cache_key(image_cache=image_cache_path, arch=arch,
                            weights=weights_digest(model, frozen), size=size, n=n,
                            views=views, seed=seed, mean=mean, std=std)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path, meta = out / f"feat-{key}.f16", out / f"feat-{key}.json"
    if path.is_file() and meta.is_file():
        shape = tuple(json.loads(meta.read_text())["shape"])
        if path.stat().st_size == int(np.prod(shape)) * 2:
            return FeatureCache(str(path), shape)  # type: ignore[arg-type]
    was = model.training
    model.eval()
    gen = torch.Generator().manual_seed(int(seed))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with torch.inference_mode():
        probe = forward_prefix(model, to_float(torch.from_numpy(
            np.array(image_cache[:1])).to(device), mean, std), n)
    shape = (int(views), rows, *(int(s) for s in probe.shape[1:]))
    tmp = out / f".feat-{key}.{os.getpid()}.tmp"
    try:
        # written in file order (view, then row) through a plain file, not a writable
        # memmap, whose dirty pages would count in the resident memory (the whole file)
        with open(tmp, "wb") as fh, torch.inference_mode():
            for v in range(views):
                for i in range(0, rows, batch_size):
                    x = torch.from_numpy(
                        np.array(image_cache[i:i + batch_size])).to(device)
                    x = (to_float(x, mean, std) if v == 0 else
                         augment_batch(x, mean=mean, std=std, generator=gen))
                    f = forward_prefix(model, x.contiguous(memory_format=fmt), n)
                    fh.write(f.half().cpu().contiguous().numpy().tobytes())
        if tmp.stat().st_size != int(np.prod(shape)) * 2:  # pragma: no cover - a bug guard
            raise SkinCoreError(f"The activation file {tmp} came out with the wrong size.")
        os.replace(tmp, path)
        meta.write_text(json.dumps({"shape": list(shape), "arch": arch, "freeze": n,
                                    "views": views, "seed": seed, "size": size}))
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was)
    return FeatureCache(str(path), shape)  # type: ignore[arg-type]


def load_feature_batch(feats: FeatureReader | np.ndarray, rows: np.ndarray, labels: np.ndarray, *,
                       generator: Any, augment: bool, device: str,
                       channels_last: bool = True) -> tuple[Any, Any]:
    """One training batch of activations: each row reads a random augmented version
    (``1..views-1``; version 0, the plain image, when ``augment`` is off)."""
    import torch

    n_views = feats.shape[0]
    srt = np.argsort(rows, kind="stable")
    rows = rows[srt]
    if augment and n_views > 1:
        v = torch.randint(1, n_views, (len(rows),), generator=generator).numpy()
    else:
        v = np.zeros(len(rows), dtype=np.int64)
    x = torch.from_numpy(np.ascontiguousarray(feats[v, rows])).float().to(device)
    y = torch.from_numpy(np.asarray(labels)[srt]).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt), y


def score_features(model: Any, feats: FeatureReader | np.ndarray, rows: np.ndarray, n: int, *,
                   device: str, batch_size: int, amp: bool = False,
                   channels_last: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and logits of the trainable top on the plain images' cached
    activations (view 0) of ``rows``, in eval mode: the per-epoch learning curve of a frozen
    run (its out-of-fold predictions are made by the whole network, as served)."""
    import torch

    model.eval()
    probs, logits_all = [], []
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            x = torch.from_numpy(feats[0, rows[i:i + batch_size]]).float().to(device)
            with torch.autocast("cuda", enabled=amp and device == "cuda"):
                out = forward_suffix(model, x.contiguous(memory_format=fmt), n).float()
            logits_all.append(out.cpu().numpy())
            probs.append(torch.softmax(out, dim=1).cpu().numpy())
    if not probs:
        k = int(getattr(model, "num_classes", 0))
        return np.zeros((0, k)), np.zeros((0, k))
    return np.concatenate(probs).astype(np.float64), np.concatenate(logits_all)
