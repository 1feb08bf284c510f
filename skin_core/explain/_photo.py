"""Heatmaps in the photo's own geometry, and overlays a clinician can read.

The network sees the centre square crop of the photo (side ``min(w, h)``, resized to ``S``;
:func:`skin_core.data.cache.resize_array` with ``resize="center"``) or the whole photo squashed
to ``S x S`` (``resize="stretch"``). :func:`cam_to_photo` puts a map over that input back where
it came from in the photo's pixel grid; :func:`heatmap_on_photo` also draws it on the whole
photo, semi-transparent (the colour's weight grows with the map, so where the map is low the
photo is almost untouched), with a thin contour of the map's top region (at least half its
maximum: the region whose overlap with the lesion ``localisation_scores`` measures) and, when
the network saw only part of the photo, a thin dashed frame around that part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np

from skin_core.errors import ConfigError

#: Longest side of the overlay shown to the user (pixels).
DISPLAY_SIDE = 768
#: The contour is drawn where the map reaches this share of its maximum.
CONTOUR_LEVEL = 0.5

_CROPS = ("center", "stretch")


@dataclass(frozen=True)
class PhotoHeatmap:
    """A map over the network's input, placed on the photo (:func:`heatmap_on_photo`).

    Attributes
    ----------
    overlay:
        ``(h, w, 3)`` uint8 RGB: the whole photo with the map blended on it, long side at most
        ``display_side`` (never enlarged).
    crop_box:
        ``(x0, y0, x1, y1)`` of the network's input in photo pixels (half-open).
    cam:
        The ``(S, S)`` map over the network's input it was made from (in [0, 1]).
    photo_size:
        ``(W, H)`` of the photo.
    resize, max_side:
        As given to :func:`heatmap_on_photo`.
    heat:
        ``(H, W)`` float32 map in [0, 1] on the photo's pixel grid (or on that grid scaled
        down so its long side is at most ``max_side``: same geometry, ``scale`` < 1), ``NaN``
        where the network did not look (outside the centre crop). Computed on first access
        (:func:`cam_to_photo`), so a caller that only shows the overlay does not pay for a
        full-resolution map of a 24-megapixel photo.
    scale:
        Pixels of ``heat`` per photo pixel.
    """

    overlay: np.ndarray
    crop_box: tuple[int, int, int, int]
    cam: np.ndarray = field(repr=False)
    photo_size: tuple[int, int]
    resize: str = "center"
    max_side: int | None = None

    @cached_property
    def heat(self) -> np.ndarray:
        return cam_to_photo(self.cam, *self.photo_size, resize=self.resize,
                            max_side=self.max_side)

    @property
    def scale(self) -> float:
        w, h = self.photo_size
        if self.max_side is None or max(w, h) <= self.max_side:
            return 1.0
        return max(1, round(w * self.max_side / max(w, h))) / w


def crop_box(width: int, height: int, side: int, *, resize: str = "center"
             ) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of the photo region the network input of side ``side`` shows.

    Exactly the window :func:`skin_core.data.cache.resize_array` cuts: the photo is scaled so
    its short side is ``side``, the centre ``side x side`` square is kept; in photo pixels that
    is the centre square of side ``min(width, height)`` (``resize="stretch"``: the whole photo).
    """
    if resize not in _CROPS:
        raise ConfigError(f"The 'resize' of a heatmap must be one of {list(_CROPS)}; got "
                          f"{resize!r} instead.")
    if resize == "stretch":
        return 0, 0, int(width), int(height)
    m = min(width, height)
    scale = side / m
    nw, nh = max(side, round(width * scale)), max(side, round(height * scale))
    x0 = int(round(((nw - side) // 2) / scale))
    y0 = int(round(((nh - side) // 2) / scale))
    return x0, y0, min(int(width), x0 + m), min(int(height), y0 + m)


def _check_cam(cam: np.ndarray) -> np.ndarray:
    c = np.asarray(cam, dtype=np.float32)
    if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < 1:
        raise ConfigError(f"A heatmap must be a 2-D (h, w) array over the network's input; got "
                          f"shape {tuple(c.shape)}.")
    return np.clip(np.nan_to_num(c, nan=0.0), 0.0, 1.0)


def _check_photo(photo: np.ndarray) -> np.ndarray:
    img = np.asarray(photo)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ConfigError(f"The photo for a heatmap must be an (H, W, 3) uint8 RGB array; got "
                          f"shape {tuple(img.shape)} and dtype {img.dtype}.")
    return np.ascontiguousarray(img)


def cam_to_photo(cam: np.ndarray, width: int, height: int, *, resize: str = "center",
                 max_side: int | None = None, outside: float = np.nan) -> np.ndarray:
    """Map a heatmap over the network's input onto the photo's pixel grid.

    Parameters
    ----------
    cam:
        ``(S, S)`` map in [0, 1] over the network input (NaN read as 0).
    width, height:
        The photo's size in pixels.
    resize:
        How the input was cut from the photo: ``"center"`` (centre square crop, the default)
        or ``"stretch"`` (whole photo squashed).
    max_side:
        When given, the grid is the photo's scaled down so its long side is at most this (the
        same geometry at lower resolution, e.g. for a 6000 x 4000 original).
    outside:
        Value outside the network's input window: ``NaN`` (default, "not looked at") or e.g. 0.

    Returns
    -------
    ``(H, W)`` float32, bilinear (half-pixel centres) inside the window.
    """
    import cv2

    c = _check_cam(cam)
    if width < 1 or height < 1:
        raise ConfigError(f"The photo size for a heatmap must be positive; got {width}x{height}.")
    x0, y0, x1, y1 = crop_box(width, height, c.shape[0], resize=resize)
    s = 1.0
    if max_side is not None and max(width, height) > max_side:
        s = max_side / max(width, height)
    gw, gh = max(1, round(width * s)), max(1, round(height * s))
    gx0, gy0 = round(x0 * s), round(y0 * s)
    gx1, gy1 = max(gx0 + 1, round(x1 * s)), max(gy0 + 1, round(y1 * s))
    out = np.full((gh, gw), outside, np.float32)
    out[gy0:gy1, gx0:gx1] = cv2.resize(c, (gx1 - gx0, gy1 - gy0), interpolation=cv2.INTER_LINEAR)
    return out


def _display(img: np.ndarray, display_side: int) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    if max(h, w) <= display_side:
        return img
    s = display_side / max(h, w)
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))),
                      interpolation=cv2.INTER_AREA)


@lru_cache(maxsize=1)
def _turbo_rgb() -> np.ndarray:
    """OpenCV's TURBO colour map as a ``(256, 1, 3)`` user colour map in RGB order."""
    import cv2

    bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_TURBO)
    return np.ascontiguousarray(bgr[:, :, ::-1])


@lru_cache(maxsize=8)
def _weights(alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Lookup tables ``uint8 map -> colour weight`` (``alpha * smoothstep``) and ``1 - it``."""
    v = np.arange(256, dtype=np.float32) / 255.0
    w = (alpha * v * v * (3.0 - 2.0 * v)).astype(np.float32)[None, :]
    return w, (1.0 - w).astype(np.float32)


def _draw(out: np.ndarray, c: np.ndarray, sub: tuple[slice, slice], alpha: float,
          contour: bool, seen: np.ndarray | None, thick: int) -> None:
    """In place on ``out[sub]``: the ``[0, 1]`` map ``c`` (the sub-window's size, no NaN)."""
    import cv2

    c8 = cv2.convertScaleAbs(c, alpha=255.0)  # rounds and saturates to uint8
    colour = cv2.applyColorMap(c8, _turbo_rgb())
    w, w_img = _weights(float(alpha))
    out[sub] = cv2.blendLinear(out[sub], colour, cv2.LUT(c8, w_img), cv2.LUT(c8, w))
    top = int(c8.max())
    if contour and top > 0:
        region = c8 >= max(1, round(CONTOUR_LEVEL * top))
        _contour(out[sub], region, np.ones_like(region) if seen is None else seen, thick)


def blend_heatmap(rgb: np.ndarray, heat: np.ndarray, *, alpha: float = 0.45,
                  contour: bool = True, box: tuple[int, int, int, int] | None = None
                  ) -> np.ndarray:
    """Blend a ``[0, 1]`` map (NaN = not looked at) on an RGB image of the same size.

    The colour (OpenCV's ``TURBO`` map) is weighted by ``alpha * smoothstep(heat)``, so the
    photo stays visible everywhere and is left almost as it is where the map is low (below
    ``0.1``: changed by under 3 % of ``alpha``); a thin white contour with a dark rim marks
    ``heat >= CONTOUR_LEVEL`` (of the map's maximum) where that region ends inside the
    picture; ``box`` (``x0, y0, x1, y1`` in these pixels) draws a thin dashed frame around the
    network's input window.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"The 'alpha' parameter must be between 0 and 1; got {alpha}.")
    img = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = img.shape[:2]
    hm = np.asarray(heat, dtype=np.float32)
    if hm.shape != (h, w):
        raise ConfigError(f"The heatmap ({hm.shape}) must have the image's size ({h}, {w}).")
    out = img.copy()
    seen = np.isfinite(hm)
    rows, cols = np.flatnonzero(seen.any(axis=1)), np.flatnonzero(seen.any(axis=0))
    if rows.size and alpha > 0:  # only the part the network saw is drawn on
        sub = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        c = np.clip(np.nan_to_num(hm[sub], nan=0.0), 0.0, 1.0)
        _draw(out, c, sub, alpha, contour, seen[sub], max(1, round(max(h, w) / 400)))
    if box is not None and box != (0, 0, w, h):
        _dashed_box(out, box, max(1, round(max(h, w) / 500)))
    return out


def _contour(img: np.ndarray, region: np.ndarray, seen: np.ndarray, thick: int) -> None:
    """In place: an anti-aliased white line with a dark rim along the region's edge, except
    where the region meets the picture's border or the part the network did not see."""
    import cv2

    h, w = region.shape
    lines, _ = cv2.findContours(np.uint8(region), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    near_unseen = (np.zeros((h, w), bool) if seen.all() else
                   cv2.dilate(np.uint8(~seen), np.ones((3, 3), np.uint8)) > 0)
    runs = []
    for line in lines:
        pts = line[:, 0, :]
        cut = ((pts[:, 0] == 0) | (pts[:, 1] == 0) | (pts[:, 0] == w - 1) | (pts[:, 1] == h - 1)
               | near_unseen[pts[:, 1], pts[:, 0]])
        if not cut.any():
            runs.append((pts, True))
            continue
        start = int(np.argmax(cut))  # walk from a cut point so that no run wraps around
        pts, cut = np.roll(pts, -start, axis=0), np.roll(cut, -start)
        step = np.diff(np.r_[0, (~cut).astype(np.int8), 0])
        runs += [(pts[a:b], False) for a, b in zip(np.flatnonzero(step == 1),
                                                   np.flatnonzero(step == -1), strict=True)
                 if b - a >= 2]
    for colour, width in (((25, 25, 25), thick + 2), ((255, 255, 255), thick)):
        for pts, closed in runs:
            cv2.polylines(img, [pts.reshape(-1, 1, 2).astype(np.int32)], closed, colour, width,
                          cv2.LINE_AA)


def _dashed_box(img: np.ndarray, box: tuple[int, int, int, int], thick: int) -> None:
    import cv2

    x0, y0, x1, y1 = (int(v) for v in box)
    x1, y1 = min(x1, img.shape[1]) - 1, min(y1, img.shape[0]) - 1
    dash = max(4, round(max(img.shape[:2]) / 60))
    for (ax, ay), (bx, by) in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)),
                               ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        length = max(abs(bx - ax), abs(by - ay))
        for s in range(0, length, 2 * dash):
            e = min(length, s + dash)
            p = (ax + (bx - ax) * s // max(1, length), ay + (by - ay) * s // max(1, length))
            q = (ax + (bx - ax) * e // max(1, length), ay + (by - ay) * e // max(1, length))
            cv2.line(img, p, q, (255, 255, 255), thick, cv2.LINE_AA)


def heatmap_on_photo(photo: np.ndarray, cam: np.ndarray, *, resize: str = "center",
                     display_side: int = DISPLAY_SIDE, alpha: float = 0.45,
                     contour: bool = True, max_side: int | None = None) -> PhotoHeatmap:
    """Place a map over the network's input on the whole photo, and draw it for display.

    Parameters
    ----------
    photo:
        ``(H, W, 3)`` uint8 RGB: the decoded photo the input was cut from (any resolution of
        it: a draft-decoded copy keeps the geometry).
    cam:
        ``(S, S)`` map in [0, 1] over the network's input (e.g. from
        :func:`~skin_core.explain.class_activation_map`).
    resize:
        ``"center"`` (the input is the centre square of side ``min(W, H)``) or ``"stretch"``;
        the member's ``PreprocessConfig.crop``.
    display_side:
        Longest side of the overlay (default 768; smaller photos are not enlarged).
    alpha:
        Colour weight where the map is 1 (0.45: the lesion stays visible under it).
    contour:
        Draw the contour of the map's top region (``>= 0.5`` of its maximum).
    max_side:
        Optional longest side of ``heat`` (the map on the photo grid); default the photo's
        own size.

    Returns
    -------
    PhotoHeatmap
        ``heat`` (photo grid, ``NaN`` outside the window), ``overlay`` (display size),
        ``crop_box`` (photo pixels) and ``scale``.

    Example
    -------
    >>> ph = heatmap_on_photo(rgb, cams[0])  # doctest: +SKIP
    >>> ph.overlay.shape, ph.heat.shape  # doctest: +SKIP
    ((576, 768, 3), (450, 600))
    """
    import cv2

    if resize not in _CROPS:
        raise ConfigError(f"The 'resize' of a heatmap must be one of {list(_CROPS)}; got "
                          f"{resize!r} instead.")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"The 'alpha' parameter must be between 0 and 1; got {alpha}.")
    img = _check_photo(photo)
    h, w = img.shape[:2]
    c = _check_cam(cam)
    box = crop_box(w, h, c.shape[0], resize=resize)
    out = _display(img, display_side).copy()
    dh, dw = out.shape[:2]
    s = dw / w
    x0, y0 = min(dw - 1, round(box[0] * s)), min(dh - 1, round(box[1] * s))
    x1, y1 = max(x0 + 1, min(dw, round(box[2] * s))), max(y0 + 1, min(dh, round(box[3] * s)))
    if alpha > 0:
        cd = cv2.resize(c, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)  # in [0, 1]
        _draw(out, cd, (slice(y0, y1), slice(x0, x1)), alpha, contour, None,
              max(1, round(max(dh, dw) / 400)))
    if (x0, y0, x1, y1) != (0, 0, dw, dh):
        _dashed_box(out, (x0, y0, x1, y1), max(1, round(max(dh, dw) / 500)))
    return PhotoHeatmap(overlay=out, crop_box=box, cam=c, photo_size=(w, h), resize=resize,
                        max_side=max_side)


def overlay_heatmap(rgb: np.ndarray, cam: np.ndarray, *, alpha: float = 0.45,
                    size: int | None = None) -> np.ndarray:
    """Blend a ``[0, 1]`` map on an image it covers entirely (e.g. the network input crop).

    Same drawing as :func:`heatmap_on_photo` (colour weighted by the map, contour), without
    any geometry: ``cam`` is resized to the image (bilinear).

    Parameters
    ----------
    rgb:
        ``(H, W, 3) uint8`` image the heatmap was computed on.
    cam:
        ``(h, w)`` float heatmap in [0, 1].
    alpha:
        Colour weight where the map is 1 (0 = image only).
    size:
        Optional square output side (the image is resized to ``size x size`` first).

    Returns
    -------
    ``(H, W, 3)`` (or ``size x size x 3``) ``uint8`` RGB.
    """
    import cv2

    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"The 'alpha' parameter must be between 0 and 1; got {alpha}.")
    img = np.ascontiguousarray(rgb, dtype=np.uint8)
    if size is not None and img.shape[:2] != (size, size):
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    h, w = img.shape[:2]
    c = _check_cam(cam)
    if c.shape != (h, w):
        c = cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR)
    return blend_heatmap(img, c, alpha=alpha, contour=alpha > 0)
