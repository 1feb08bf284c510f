"""How well heatmaps find the lesion: pointing game and IoU against lesion masks.

* **Pointing game** (Zhang et al., IJCV 2018): a hit when the map's maximum lies inside the
  lesion mask. A map with no maximum (all zero, or all ``NaN``) is a miss. Where the map is
  flat at its maximum, the maximum is the middle of that flat top (the pixel of it nearest its
  centroid), not its first pixel: bilinear upsampling of a coarse map (2 x 2 cells for a
  stride-32 layer at 64 px) holds a border cell's value out to the photo's edge, and the
  first pixel of that plateau is a corner of the photo.
* **IoU**: the map cut at ``threshold`` (0.5) of its own maximum, against the mask.
* The **centre baseline** needs no model: its "maximum" is the photo's centre pixel, and its
  map is an isotropic Gaussian at the centre with ``sigma = centre_sigma * min(H, W)``
  (0.25), so that cut at 0.5 it is the centred disc of radius ``0.29 min(H, W)``, about a
  fifth of a 4:3 photo: a typical dermoscopic lesion. A heatmap that does not beat it tells
  a clinician less than "look at the middle".

Maps are compared in the photo's geometry (:func:`skin_core.explain.cam_to_photo`): ``NaN``
(outside the network's input) counts as 0, and a map of another size than its mask is resized
to the mask (bilinear) first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from skin_core.errors import DataError

CENTRE_SIGMA = 0.25


def centre_map(height: int, width: int, *, sigma: float = CENTRE_SIGMA) -> np.ndarray:
    """The centre baseline's map: a Gaussian at the photo centre, ``sigma * min(H, W)`` wide."""
    yy = (np.arange(height, dtype=np.float64) + 0.5 - height / 2)[:, None]
    xx = (np.arange(width, dtype=np.float64) + 0.5 - width / 2)[None, :]
    s = sigma * min(height, width)
    return np.exp(-(xx * xx + yy * yy) / (2 * s * s)).astype(np.float32)


def _as_mask(mask: Any, i: int) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[2] in (1, 3, 4):
        m = m[..., 0]
    if m.ndim != 2 or m.size == 0:
        raise DataError(f"Lesion mask {i} must be a 2-D (H, W) array; got shape "
                        f"{tuple(m.shape)}.")
    if m.dtype == np.bool_:
        return m
    return m > (127 if m.dtype == np.uint8 and m.max() > 1 else 0.5)


def _as_map(cam: Any, shape: tuple[int, int], i: int) -> np.ndarray:
    import cv2

    c = np.asarray(cam, dtype=np.float32)
    if c.ndim != 2 or c.size == 0:
        raise DataError(f"Heatmap {i} must be a 2-D (H, W) array in the photo's geometry; got "
                        f"shape {tuple(c.shape)}.")
    c = np.nan_to_num(c, nan=0.0, posinf=0.0, neginf=0.0)
    if c.shape != shape:
        c = cv2.resize(c, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return c


def _peak(c: np.ndarray, top: float) -> tuple[int, int]:
    """The map's maximum as one pixel: the first maximum, or, where the map is flat at its
    maximum, the pixel of that flat top nearest its centroid."""
    import cv2

    y, x = np.unravel_index(int(np.argmax(c)), c.shape)
    flat = c >= top * (1.0 - 1e-6)
    if flat.sum() == 1:
        return int(y), int(x)
    _, labels = cv2.connectedComponents(np.uint8(flat), connectivity=8)
    ys, xs = np.nonzero(labels == labels[y, x])
    k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return int(ys[k]), int(xs[k])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def localisation_per_image(cams_in_photo: Sequence[Any], masks: Sequence[Any], *,
                           threshold: float = 0.5, centre_sigma: float = CENTRE_SIGMA
                           ) -> dict[str, np.ndarray]:
    """Per-image hits and IoUs (see :func:`localisation_scores`); arrays of length ``n``."""
    if len(cams_in_photo) != len(masks):
        raise DataError(f"localisation_scores needs one mask per heatmap; got "
                        f"{len(cams_in_photo)} heatmaps and {len(masks)} masks.")
    if not 0.0 < threshold < 1.0:
        raise DataError(f"The IoU threshold must be a share of the map's maximum in (0, 1); "
                        f"got {threshold!r}.")
    n = len(masks)
    hit, iou = np.zeros(n, bool), np.zeros(n)
    c_hit, c_iou = np.zeros(n, bool), np.zeros(n)
    for i, (cam, mask) in enumerate(zip(cams_in_photo, masks, strict=True)):
        m = _as_mask(mask, i)
        c = _as_map(cam, m.shape, i)
        top = float(c.max())
        if top > 0:
            y, x = _peak(c, top)
            hit[i] = bool(m[y, x])
            iou[i] = _iou(c >= threshold * top, m)
        h, w = m.shape
        c_hit[i] = bool(m[h // 2, w // 2])
        c_iou[i] = _iou(centre_map(h, w, sigma=centre_sigma) >= threshold, m)
    return {"pointing": hit, "iou": iou, "centre_pointing": c_hit, "centre_iou": c_iou}


def localisation_scores(cams_in_photo: Sequence[Any], masks: Sequence[Any], *,
                        threshold: float = 0.5, centre_sigma: float = CENTRE_SIGMA
                        ) -> dict[str, float | int]:
    """Pointing game and IoU of heatmaps against lesion masks, with the centre baseline.

    Parameters
    ----------
    cams_in_photo:
        One map per image in the photo's geometry (``(H, W)`` float, ``NaN`` = not looked
        at), e.g. :attr:`PhotoHeatmap.heat`; resized to its mask when the sizes differ.
    masks:
        One lesion mask per image, ``(H, W)`` (or ``(H, W, C)``, first channel): bool, 0/1,
        or uint8 0/255 (ISIC 2018 Task 1 PNGs; above 127 is lesion).
    threshold:
        Share of each map's maximum at which it is cut for the IoU (0.5).
    centre_sigma:
        Width of the centre baseline's Gaussian, as a share of the photo's short side.

    Returns
    -------
    dict
        ``pointing_game`` (share of maps whose maximum is in the lesion), ``iou`` (mean IoU
        of the cut map with the lesion), ``centre_pointing_game`` (share of photos whose
        centre pixel is in the lesion), ``centre_iou`` (mean IoU of the centre disc) and
        ``n``. With no images the four shares are ``NaN``.

    Raises
    ------
    DataError
        Counts differ, or a map or mask is not 2-D.

    Example
    -------
    >>> m = np.zeros((4, 6), bool); m[1:3, 2:4] = True
    >>> localisation_scores([m.astype(float)], [m])["pointing_game"]
    1.0
    """
    per = localisation_per_image(cams_in_photo, masks, threshold=threshold,
                                 centre_sigma=centre_sigma)
    n = len(per["iou"])

    def mean(a: np.ndarray) -> float:
        return float(np.mean(a)) if n else float("nan")

    return {"pointing_game": mean(per["pointing"]), "iou": mean(per["iou"]),
            "centre_pointing_game": mean(per["centre_pointing"]),
            "centre_iou": mean(per["centre_iou"]), "n": int(n)}
