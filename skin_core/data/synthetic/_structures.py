"""Drawing primitives of the synthetic lesions: smooth noise, alpha blending and the
dermoscopic structures (pigment network, dots and globules, arborizing vessels, blobs,
lacunae), each drawn into the lesion frame. Used by :mod:`skin_core.data.synthetic._render`.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# ---------------------------------------------------------------------------------------------
# Palette (RGB, 0-255) of dermoscopic colours.
# ---------------------------------------------------------------------------------------------
_C = {
    "tan": (196, 150, 105),
    "light_brown": (172, 112, 70),
    "mid_brown": (130, 78, 45),
    "dark_brown": (82, 45, 28),
    "black": (38, 28, 28),
    "blue_grey": (112, 114, 130),
    "blue_white": (165, 175, 200),
    "pink": (228, 150, 150),
    "pearly": (236, 190, 185),
    "red": (200, 55, 65),
    "dark_red": (140, 30, 45),
    "purple": (120, 45, 85),
    "white": (242, 236, 228),
    "yellow_white": (236, 222, 170),
}

PALETTE: dict[str, np.ndarray] = {k: np.array(v, np.float32) / 255.0 for k, v in _C.items()}



# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth value noise in about [-1, 1]: a ``cells`` x ``cells`` grid upsampled bicubically."""
    grid = rng.standard_normal((cells + 1, cells + 1), dtype=np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def _fbm(rng: np.random.Generator, size: int, cells: tuple[int, ...]) -> np.ndarray:
    out = np.zeros((size, size), np.float32)
    amp = 1.0
    for c in cells:
        out += amp * _noise(rng, size, max(2, min(c, size // 2)))
        amp *= 0.55
    return out / max(1e-6, float(np.abs(out).max()))


def _blend(img: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> None:
    """In place: ``img = img * (1 - alpha) + colour * alpha`` (alpha HxW, colour RGB or HxWx3).

    Only the bounding box of the non-zero alpha is touched (most layers are lesion-sized).
    """
    rows = np.flatnonzero(alpha.any(axis=1))
    if rows.size == 0:
        return
    cols = np.flatnonzero(alpha.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    a = alpha[box][..., None]
    if isinstance(colour, np.ndarray) and colour.ndim == 3:
        colour = colour[box]
    sub = img[box]
    sub += a * (colour - sub)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)



# ---------------------------------------------------------------------------------------------
# Structures (each draws into ``img`` inside the lesion, in the lesion frame)
# ---------------------------------------------------------------------------------------------
def _network(img, rng, inside, mask, strength, atypical):
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = size * float(rng.uniform(0.05, 0.07)) * (1.0 + 0.2 * atypical)
    k = 2.0 * math.pi / period
    ang = float(rng.uniform(0, math.pi))
    warp_u = (0.8 + 0.8 * atypical) * period * _fbm(rng, size, (6, 14))
    warp_v = (0.8 + 0.8 * atypical) * period * _fbm(rng, size, (6, 14))
    fine = max(4, int(size / period / 1.5))  # wobble of the individual cell walls
    u = (xx * math.cos(ang) - yy * math.sin(ang)) + warp_u + 0.3 * period * _noise(rng, size, fine)
    v = (xx * math.sin(ang) + yy * math.cos(ang)) + warp_v + 0.3 * period * _noise(rng, size, fine)
    # hexagonal cells: the sum of three cosines is low on the cell walls
    h = np.cos(k * u) + np.cos(k * (0.5 * u + 0.866 * v)) + np.cos(k * (0.5 * u - 0.866 * v))
    width = 0.2 + (0.9 * atypical) * (0.5 + 0.5 * _noise(rng, size, 6))
    lines = _smoothstep((width - h) / 0.9)
    if atypical > 0.3:  # broken, patchy network
        lines *= _smoothstep((_noise(rng, size, 7) + 0.3) * 3.0)
    # a benign network fades out at the periphery and covers only part of the lesion
    fade = _smoothstep(inside * 4.0) if atypical < 0.3 else np.float32(1.0)
    cover = _smoothstep((_noise(rng, size, 3) + 1.0) * 2.0)
    alpha = (0.75 + 0.15 * atypical) * strength * lines * mask * fade * cover
    img *= 1.0 - 0.55 * alpha[..., None]
    _blend(img, PALETTE["dark_brown"], 0.3 * alpha)


def _dots(img, rng, centre, r0, mask_fn, count, radius, colour, alpha, peripheral=False,
          soft=False):
    size = img.shape[0]
    layer = np.zeros((size, size), np.float32)
    for _ in range(count):
        t = rng.uniform(0, 2 * math.pi)
        rr = rng.uniform(0.6, 0.95) if peripheral else math.sqrt(rng.uniform(0, 0.85))
        x = centre[0] + rr * r0 * math.cos(t)
        y = centre[1] + rr * r0 * math.sin(t)
        rad = max(1, int(round(rng.uniform(*radius) * size)))
        cv2.circle(layer, (int(x), int(y)), rad, float(rng.uniform(0.7, 1.0)), -1, cv2.LINE_AA)
    if soft:
        layer = cv2.GaussianBlur(layer, (0, 0), max(0.6, size / 256.0))
    _blend(img, colour, np.clip(layer * alpha, 0, 1) * mask_fn)


def _vessels_arborizing(img, rng, centre, r0, mask, strength):
    size = img.shape[0]
    layer = np.zeros((size, size), np.float32)
    n_trunks = int(rng.integers(4, 8))
    for _ in range(n_trunks):
        t = rng.uniform(0, 2 * math.pi)
        start = (centre[0] + 0.8 * r0 * math.cos(t), centre[1] + 0.8 * r0 * math.sin(t))
        heading = t + math.pi + rng.uniform(-0.6, 0.6)
        stack = [(start, heading, max(1.0, size / 45.0), 0)]
        while stack:
            (x, y), h, w, depth = stack.pop()
            pts = [(x, y)]
            seg = int(rng.integers(4, 9))
            step = r0 * rng.uniform(0.05, 0.1)
            for _ in range(seg):
                h += rng.normal(0, 0.35)
                x += step * math.cos(h)
                y += step * math.sin(h)
                pts.append((x, y))
            arr = np.round(np.array(pts) * 4).astype(np.int32)  # 2 fractional bits
            cv2.polylines(layer, [arr], False, 1.0, max(1, int(round(w))), cv2.LINE_AA, 2)
            if depth < 3:
                for sign in (-1, 1):
                    if rng.random() < 0.75:
                        stack.append(((x, y), h + sign * rng.uniform(0.4, 1.0), w * 0.65,
                                      depth + 1))
    alpha = np.clip(layer, 0, 1) * mask * (0.8 + 0.2 * strength)
    _blend(img, PALETTE["red"], alpha)


def _blob(rng, size, centre, radius, cells=5, thresh=0.0):
    """Soft irregular blob mask around ``centre``."""
    yy, xx = np.ogrid[0:size, 0:size]
    d = np.sqrt((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2).astype(np.float32) / radius
    n = _noise(rng, size, cells)
    return _smoothstep((1.0 - d + 0.45 * n - thresh) * 2.5)


def _lacunae(img, rng, centre, r0, mask):
    size = img.shape[0]
    _blend(img, PALETTE["pearly"] * 0.95, 0.8 * mask)  # pale septa
    cols = [PALETTE["red"], PALETTE["dark_red"], PALETTE["purple"]]
    n = int(rng.integers(6, 16))
    layer = np.zeros((size, size, 3), np.float32)
    alpha = np.zeros((size, size), np.float32)
    for _ in range(n):
        t = rng.uniform(0, 2 * math.pi)
        rr = math.sqrt(rng.uniform(0, 0.8)) * r0
        rad = max(1, int(r0 * rng.uniform(0.15, 0.35)))
        c = cols[int(rng.integers(0, 3))] * rng.uniform(0.8, 1.05)
        x, y = int(centre[0] + rr * math.cos(t)), int(centre[1] + rr * math.sin(t))
        cv2.circle(layer, (x, y), rad, tuple(float(v) for v in c), -1, cv2.LINE_AA)
        cv2.circle(alpha, (x, y), rad, 1.0, -1, cv2.LINE_AA)
        # a pale rim keeps neighbouring lacunae apart
        cv2.circle(alpha, (x, y), rad, 0.0, max(1, size // 200), cv2.LINE_AA)
    _blend(img, layer, alpha * mask)
