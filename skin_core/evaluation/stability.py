"""Stability of the served diagnosis under small, label-preserving changes of the image.

For a seeded subsample of the evaluated images, each image is decoded once (its longest side
capped at :data:`MAX_SIDE` px, which is still above every network input), and four copies are
written losslessly (uncompressed BMP) and sent through the same served pipeline with the same
metadata:

* ``reencode``: the copy unchanged, the control: it measures how often the diagnosis changes
  through the decode path alone (a full decode, resized when large, instead of the
  Predictor's own reduced JPEG decode of the file);
* ``hflip``: mirrored left-right;
* ``rot90``: rotated by 90 degrees (counter-clockwise);
* ``crop90``: the central crop keeping 90 % of each side (10 % crop).

A diagnosis "changes" when the served label of the copy differs from the served label of the
original file (the one in ``predictions.csv``). The shares come with lesion-grouped bootstrap
CIs; ``any`` is the share that changes under at least one of ``hflip``, ``rot90``, ``crop90``.
Each copy costs one more prediction, hence the subsample (``--stability N``, default 200).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

#: The transformed copies, in the order they are predicted per image.
TRANSFORMS: tuple[str, ...] = ("reencode", "hflip", "rot90", "crop90")

#: Transforms whose changes count towards ``any`` (the control does not).
PERTURBATIONS: tuple[str, ...] = ("hflip", "rot90", "crop90")

#: Longest side of the decoded copy (px): keeps the copies small for large ISIC photographs.
MAX_SIDE = 1024

#: Share of each side kept by ``crop90``.
CROP_KEEP = 0.9

#: Default subsample size of ``skin-core evaluate --stability``.
DEFAULT_STABILITY_N = 200


def transform(rgb: np.ndarray, name: str) -> np.ndarray:
    """The copy ``name`` (one of :data:`TRANSFORMS`) of an ``(H, W, 3)`` image."""
    if name == "reencode":
        return rgb
    if name == "hflip":
        return np.ascontiguousarray(rgb[:, ::-1])
    if name == "rot90":
        return np.ascontiguousarray(np.rot90(rgb))
    if name == "crop90":
        h, w = rgb.shape[:2]
        ch, cw = max(1, round(h * CROP_KEEP)), max(1, round(w * CROP_KEEP))
        top, left = (h - ch) // 2, (w - cw) // 2
        return np.ascontiguousarray(rgb[top:top + ch, left:left + cw])
    raise ValueError(f"Unknown transform {name!r}; expected one of {TRANSFORMS}.")


def _lossless(rgb: np.ndarray) -> bytes:
    """Uncompressed BMP bytes: lossless and about 100 times faster to write than PNG (at most
    3 MB with the :data:`MAX_SIDE` cap, well under the Predictor's upload limit)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="BMP")
    return buf.getvalue()


def _decoded(path: str) -> np.ndarray | None:
    from PIL import Image

    from skin_core.data.images import read_image
    from skin_core.errors import ImageError

    try:
        rgb = read_image(path)
    except ImageError:
        return None
    h, w = rgb.shape[:2]
    if max(h, w) > MAX_SIDE:
        s = MAX_SIDE / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    return rgb


def _copies(paths: Sequence[str]) -> Iterator[bytes]:
    """The lossless bytes of every copy of every image, lazily (one decode per image)."""
    for path in paths:
        rgb = _decoded(path)
        for name in TRANSFORMS:
            yield b"" if rgb is None else _lossless(transform(rgb, name))


def stability_labels(predictor: Any, paths: Sequence[str], metadata: Sequence[Any], *,
                     batch_size: int = 32, workers: int = 2, progress: bool = False
                     ) -> dict[str, list[str | None]]:
    """Served labels of every copy: transform -> one label per image (``None`` on failure).

    ``metadata``: one ``(age, sex, site)`` per image, passed with each of its copies.
    """
    meta = [m for m in metadata for _ in TRANSFORMS]
    labels: list[str | None] = []
    offset = 0
    for batch in predictor.forward_batches(_copies(paths), batch_size=batch_size,
                                           workers=workers, progress=progress,
                                           total=len(meta)):
        n = len(batch.items)
        labels.extend(r.label if r.ok else None
                      for r in predictor.assemble(batch, meta[offset:offset + n]))
        offset += n
    return {name: labels[i::len(TRANSFORMS)] for i, name in enumerate(TRANSFORMS)}


def stability_record(original: Sequence[str], copies: dict[str, list[str | None]],
                     codes: np.ndarray, *, n_resamples: int, seed: int,
                     n_available: int) -> dict[str, Any]:
    """The ``stability`` record of ``evaluation.json`` (see the module docstring).

    Parameters
    ----------
    original:
        The served label of each sampled image's original file.
    copies:
        :func:`stability_labels` of the same images.
    codes:
        Lesion codes of the sampled images (bootstrap groups).
    n_available:
        How many images the sample was drawn from.
    """
    from skin_core.evaluation.figures import share_figures

    orig = np.asarray(original, dtype=object)
    flags: dict[str, np.ndarray] = {}
    failed = np.zeros(len(orig), dtype=bool)
    for name in TRANSFORMS:
        got = np.asarray(copies[name], dtype=object)
        bad = np.array([g is None for g in got], dtype=bool)
        failed |= bad
        flags[name] = np.where(bad, np.nan, (got != orig).astype(float))
    pert = np.stack([flags[t] for t in PERTURBATIONS])
    flags["any"] = np.where(np.isnan(pert).any(axis=0), np.nan, np.nanmax(
        np.where(np.isnan(pert), 0.0, pert), axis=0))
    figs = share_figures(flags, codes, n_resamples=n_resamples, seed=seed)
    return {
        "n_images": int(len(orig)), "n_available": int(n_available),
        "n_failed": int(failed.sum()), "seed": int(seed),
        "changed": {name: {**figs[name], "n_changed": int(np.nansum(flags[name]))}
                    for name in (*TRANSFORMS, "any")},
        "method": ("share of sampled images whose served label differs from the original "
                   "file's, per lossless copy (reencode = control, hflip, rot90, crop90 = "
                   f"central {CROP_KEEP:.0%} of each side; longest side capped at {MAX_SIDE} "
                   "px); any = hflip, rot90 or crop90; lesion-grouped bootstrap CIs"),
    }


__all__ = [
    "CROP_KEEP",
    "DEFAULT_STABILITY_N",
    "MAX_SIDE",
    "PERTURBATIONS",
    "TRANSFORMS",
    "stability_labels",
    "stability_record",
    "transform",
]
