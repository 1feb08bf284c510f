"""Drawing of one synthetic dermoscopic image (vectorised NumPy + OpenCV, no global state).

The picture is built in two frames:

* the **lesion frame** (everything fixed by ``lesion_seed``): skin patch, lesion outline,
  colours and dermoscopic structures. Images of the same lesion share it.
* the **view** (everything fixed by ``view_seed``): rotation, scale and shift of the lesion
  frame, lighting and white balance, sensor noise, hairs, ruler marks, the dermoscope's
  circular field of view and the focus blur. Re-imaging a lesion draws a new view.

All lengths are fractions of the image side ``size`` so the images look alike at 64 px and
at 512 px. Colours are RGB floats in [0, 1]. The drawing primitives (noise, blending and the
dermoscopic structures) are in :mod:`skin_core.data.synthetic._structures`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from skin_core.constants import ISIC2019_CLASSES
from skin_core.data.synthetic._structures import (
    PALETTE,
    _blend,
    _blob,
    _dots,
    _fbm,
    _lacunae,
    _network,
    _noise,
    _smoothstep,
    _u,
    _vessels_arborizing,
)
from skin_core.errors import ConfigError

_ACCENTS = frozenset({"black", "blue_grey", "red", "dark_red", "purple"})
_N_ANGLES = 1024  # resolution of the tabulated lesion border


#: Dermoscopic structures a lesion may show; each class has an affinity in [0, 1] for each.
FEATURES: tuple[str, ...] = (
    "network",        # pigment network (reticular lines)
    "atypical_net",   # irregular, broken network of varying thickness
    "globules",       # brown dots and globules
    "black_dots",     # irregular black dots, mostly peripheral
    "streaks",        # radial streaks / pseudopods at the border
    "veil",           # blue-white veil
    "regression",     # white scar-like area with grey peppering
    "nests",          # blue-grey ovoid nests
    "arborizing",     # arborizing (tree-like) vessels
    "dotted",         # dotted / glomerular vessels
    "ulcer",          # ulceration / crust
    "milia",          # milia-like cysts (bright white dots)
    "comedo",         # comedo-like openings (dark yellow-brown plugs)
    "lacunae",        # red-purple lacunae separated by pale septa
    "central_white",  # central white scar-like patch
    "scale",          # white-yellow surface scale
    "keratin",        # central keratin mass
    "erythema",       # pink-red background around the lesion
)


@dataclass(frozen=True)
class ClassLook:
    """How a class tends to look: ranges for shape and colour, affinities for structures."""

    radius: tuple[float, float]        # mean radius, fraction of the image side
    aspect: tuple[float, float]        # ratio of the two axes
    irregularity: tuple[float, float]  # amplitude of border harmonics (fraction of radius)
    edge: tuple[float, float]          # border softness (fraction of radius)
    colours: tuple[tuple[str, float], ...]  # palette names with weights
    n_colours: tuple[int, int]         # how many colour zones
    opacity: tuple[float, float]       # how strongly the lesion colour covers the skin
    features: dict[str, float]         # structure -> affinity (probability x strength)


#: Per-class looks. Classes share several structures on purpose (NV and MEL both show network
#: and globules; BCC and SCC both show vessels; AK and SCC both scale) so that the class signal
#: is real but overlapping, as in dermoscopy.
LOOKS: dict[str, ClassLook] = {
    # brown lesions (NV, MEL, BKL, DF) share size, outline and colours to a large extent and
    # differ mostly by their fine structures; so do the pink ones (BCC, AK, SCC)
    "NV": ClassLook(
        radius=(0.14, 0.30), aspect=(0.7, 1.0), irregularity=(0.03, 0.10), edge=(0.08, 0.3),
        colours=(("light_brown", 3.0), ("mid_brown", 2.0), ("tan", 1.5), ("dark_brown", 0.7)),
        n_colours=(1, 2), opacity=(0.55, 0.9),
        features={"network": 0.95, "globules": 0.15, "black_dots": 0.02, "dotted": 0.02,
                  "comedo": 0.02, "atypical_net": 0.03, "streaks": 0.02},
    ),
    "MEL": ClassLook(
        radius=(0.18, 0.34), aspect=(0.65, 0.95), irregularity=(0.05, 0.14), edge=(0.05, 0.25),
        colours=(("mid_brown", 2.0), ("dark_brown", 2.0), ("light_brown", 1.5), ("black", 0.6),
                 ("blue_grey", 0.4), ("red", 0.05)),
        n_colours=(1, 3), opacity=(0.6, 0.92),
        features={"network": 0.05, "atypical_net": 0.6, "globules": 0.1, "black_dots": 0.95,
                  "streaks": 0.6, "veil": 0.35, "regression": 0.4, "dotted": 0.08,
                  "milia": 0.02},
    ),
    "BCC": ClassLook(
        radius=(0.15, 0.30), aspect=(0.65, 1.0), irregularity=(0.04, 0.12), edge=(0.10, 0.35),
        colours=(("pearly", 3.0), ("pink", 2.0), ("light_brown", 0.4)),
        n_colours=(1, 2), opacity=(0.45, 0.8),
        features={"arborizing": 0.95, "nests": 0.55, "ulcer": 0.2, "dotted": 0.05,
                  "erythema": 0.3, "globules": 0.1, "veil": 0.03},
    ),
    "AK": ClassLook(
        radius=(0.18, 0.34), aspect=(0.6, 1.0), irregularity=(0.05, 0.13), edge=(0.2, 0.5),
        colours=(("pink", 3.0), ("red", 1.0), ("light_brown", 0.6)),
        n_colours=(1, 2), opacity=(0.5, 0.8),
        features={"erythema": 0.95, "scale": 0.95, "dotted": 0.1, "network": 0.03,
                  "keratin": 0.05},
    ),
    "BKL": ClassLook(
        radius=(0.14, 0.30), aspect=(0.7, 1.0), irregularity=(0.03, 0.10), edge=(0.08, 0.3),
        colours=(("light_brown", 3.0), ("mid_brown", 2.0), ("tan", 1.5), ("dark_brown", 0.7)),
        n_colours=(1, 2), opacity=(0.55, 0.9),
        features={"milia": 0.95, "comedo": 0.7, "network": 0.03, "scale": 0.15,
                  "globules": 0.05, "regression": 0.05, "dotted": 0.03},
    ),
    "DF": ClassLook(
        radius=(0.12, 0.28), aspect=(0.7, 1.0), irregularity=(0.03, 0.10), edge=(0.08, 0.3),
        colours=(("light_brown", 3.0), ("mid_brown", 2.0), ("tan", 1.5), ("dark_brown", 0.7)),
        n_colours=(1, 2), opacity=(0.55, 0.9),
        features={"central_white": 0.95, "network": 0.4, "erythema": 0.2, "dotted": 0.05,
                  "globules": 0.05},
    ),
    "VASC": ClassLook(
        radius=(0.08, 0.18), aspect=(0.7, 1.0), irregularity=(0.03, 0.09), edge=(0.03, 0.12),
        colours=(("red", 2.0), ("dark_red", 2.0), ("purple", 1.5)),
        n_colours=(1, 2), opacity=(0.8, 1.0),
        features={"lacunae": 0.95, "erythema": 0.2, "dotted": 0.05, "veil": 0.03},
    ),
    "SCC": ClassLook(
        radius=(0.15, 0.32), aspect=(0.65, 1.0), irregularity=(0.05, 0.12), edge=(0.15, 0.4),
        colours=(("pink", 2.5), ("pearly", 1.5), ("red", 0.6)),
        n_colours=(1, 2), opacity=(0.45, 0.75),
        features={"keratin": 0.9, "dotted": 0.95, "scale": 0.15, "erythema": 0.3,
                  "ulcer": 0.25, "arborizing": 0.05},
    ),
}
assert set(LOOKS) == set(ISIC2019_CLASSES)

#: Skin tones (RGB 0-255) of lightly to moderately pigmented skin under dermoscopic light.
_SKIN = np.array(
    [(236, 196, 180), (226, 178, 160), (238, 206, 190), (214, 166, 140), (222, 186, 170),
     (200, 150, 125), (230, 190, 185)], np.float32,
) / 255.0



def _pick_colour(rng: np.random.Generator, colours: list[tuple[str, float]]) -> str:
    names = [c for c, _ in colours]
    w = np.array([w for _, w in colours], np.float64)
    return names[int(rng.choice(len(names), p=w / w.sum()))]


# ---------------------------------------------------------------------------------------------
# Lesion parameters (mixing two classes for ambiguous lesions)
# ---------------------------------------------------------------------------------------------
def _mixed_look(label: str, mix_with: str | None, mix_weight: float,
                rng: np.random.Generator) -> dict:
    """Numeric look of one lesion: class ranges interpolated, structure affinities blended.

    Every lesion also borrows a little (0-5 %) of a random other class, so that classes
    overlap and a classifier cannot be perfect even on typical images.
    """
    weights = {label: 1.0}
    if mix_with is not None and mix_weight > 0:
        weights = {label: 1.0 - mix_weight, mix_with: mix_weight}
    drift = str(rng.choice([c for c in ISIC2019_CLASSES if c != label]))
    d = float(rng.uniform(0.0, 0.05))
    weights = {c: w * (1.0 - d) for c, w in weights.items()}
    weights[drift] = weights.get(drift, 0.0) + d

    def interp(attr: str) -> tuple[float, float]:
        lo = sum(w * getattr(LOOKS[c], attr)[0] for c, w in weights.items())
        hi = sum(w * getattr(LOOKS[c], attr)[1] for c, w in weights.items())
        return lo, hi

    feats = {f: sum(w * LOOKS[c].features.get(f, 0.0) for c, w in weights.items())
             for f in FEATURES}
    colours: dict[str, float] = {}
    for c, w in weights.items():
        for name, cw in LOOKS[c].colours:
            colours[name] = colours.get(name, 0.0) + w * cw
    nlo, nhi = interp("n_colours")
    return {
        "radius": interp("radius"), "aspect": interp("aspect"),
        "irregularity": interp("irregularity"), "edge": interp("edge"),
        "opacity": interp("opacity"), "n_colours": (round(nlo), round(nhi)),
        "colours": sorted(colours.items()), "features": feats,
    }

# ---------------------------------------------------------------------------------------------
# The lesion frame
# ---------------------------------------------------------------------------------------------
def _render_lesion_frame(size: int, label: str, mix_with: str | None, mix_weight: float,
                         lesion_seed: int) -> tuple[np.ndarray, float, np.ndarray]:
    """Skin + lesion in the canonical frame.

    Returns ``(image, strength, lesion)``: the ``HxWx3`` float image, the feature strength and
    the ``HxW`` float32 lesion mask (1 inside the lesion's outline, 0 outside; the outline is
    where the body's soft edge ``mask`` crosses 0.5, i.e. ``inside > 0``). Streaks reaching
    beyond the outline and the erythema halo around it are not part of the lesion mask.
    """
    rng = np.random.default_rng(lesion_seed)
    if not mix_weight > 0:
        mix_with = None
    look = _mixed_look(label, mix_with, mix_weight, rng)
    strength = float(rng.uniform(0.45, 1.0))  # how textbook-like this lesion is

    # --- skin: tone, blotchy colour, fine texture and skin lines -------------------------------
    # jitter green and blue against red so skin never turns greenish
    jit = np.array([1.0, rng.uniform(0.95, 1.02), rng.uniform(0.94, 1.04)], np.float32)
    tone = _SKIN[int(rng.integers(0, len(_SKIN)))] * jit
    img = np.empty((size, size, 3), np.float32)
    img[:] = tone
    blotch = _fbm(rng, size, (3, 7))
    img *= 1.0 + 0.05 * blotch[..., None] * np.array([1.0, 1.3, 1.3], np.float32)
    red = _fbm(rng, size, (4, 9))
    _blend(img, PALETTE["pink"], 0.18 * np.clip(red, 0, 1))
    texture = _fbm(rng, size, (size // 6, size // 3))
    img *= 1.0 + 0.035 * texture[..., None]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    a = float(rng.uniform(0, math.pi))
    furrows = np.zeros((size, size), np.float32)
    for da in (0.0, 1.1):
        w = np.sin((xx * math.cos(a + da) + yy * math.sin(a + da)) * (2 * math.pi / (size * 0.06))
                   + 4.0 * _noise(rng, size, 5))
        furrows = np.maximum(furrows, _smoothstep((w - 0.9) * 10.0))
    furrows *= _smoothstep(_noise(rng, size, 4) + 0.5)
    img *= 1.0 - 0.025 * furrows[..., None]
    if rng.random() < 0.3:  # freckles
        _dots(img, rng, (size / 2, size / 2), size * 0.7, 1.0, int(rng.integers(3, 15)),
              (0.003, 0.01), PALETTE["light_brown"], 0.35, soft=True)

    # --- lesion geometry ----------------------------------------------------------------------
    r0 = _u(rng, look["radius"]) * size
    aspect = _u(rng, look["aspect"])
    rot = float(rng.uniform(0, math.pi))
    cx = size / 2 + rng.normal(0, 0.04) * size
    cy = size / 2 + rng.normal(0, 0.04) * size
    dx, dy = xx - cx, yy - cy
    u = dx * math.cos(rot) + dy * math.sin(rot)
    v = (-dx * math.sin(rot) + dy * math.cos(rot)) / aspect
    rho = np.sqrt(u * u + v * v)
    irr = _u(rng, look["irregularity"])
    # border = sum of harmonics amp * cos(k theta + phase), tabulated over the angle
    angles = np.linspace(-math.pi, math.pi, _N_ANGLES, endpoint=False)
    table = np.ones(_N_ANGLES)
    for k in range(2, 9):
        amp = irr * rng.uniform(0.3, 1.0) / (1.0 + 0.25 * (k - 2))
        table += amp * np.cos(k * angles + rng.uniform(0, 2 * math.pi))
    theta = np.arctan2(v, u)
    idx = ((theta + math.pi) * (_N_ANGLES / (2 * math.pi))).astype(np.int32) % _N_ANGLES
    rad = table.astype(np.float32)[idx]
    rad += 0.5 * irr * _noise(rng, size, 12)  # fine border roughness
    rad *= r0
    inside = 1.0 - rho / rad  # 1 at the centre, 0 on the border, < 0 outside
    edge = _u(rng, look["edge"])
    mask = _smoothstep(inside / edge + 0.5)
    lesion = (inside > 0).astype(np.float32)

    feats = look["features"]

    def present(name: str) -> float:
        """Strength in [0, 1] of a structure, 0 when absent in this lesion."""
        p = feats[name]
        if p <= 0 or rng.random() >= p:
            return 0.0
        return float(np.clip(strength * rng.uniform(0.8, 1.2), 0.35, 1.0))

    s_ery = present("erythema")
    if s_ery:
        halo = _smoothstep((1.0 - rho / (rad * rng.uniform(1.25, 1.6))) * 2.0)
        _blend(img, PALETTE["pink"] * 0.97, 0.55 * s_ery * halo * (0.8 + 0.2 * blotch))

    # --- lesion body: colour zones --------------------------------------------------------------
    n_col = max(1, int(rng.integers(look["n_colours"][0], look["n_colours"][1] + 1)))
    # the base colour comes from the class itself (or its ambiguity partner), never from the
    # small borrowed look, and is not an accent (black, blue-grey, red...) unless the class
    # has nothing else (VASC)
    allowed: set[str] = set()
    for cls in (label, mix_with) if mix_with else (label,):
        own = {c for c, _ in LOOKS[cls].colours}
        allowed |= (own - _ACCENTS) or own
    base = [(c, w) for c, w in look["colours"] if c in allowed]
    colours = [_pick_colour(rng, base)]
    colours += [_pick_colour(rng, look["colours"]) for _ in range(n_col - 1)]
    body = np.empty_like(img)
    body[:] = PALETTE[colours[0]]
    if len(colours) > 1 and (mask > 0.5).any():
        # nested zones of a smooth field; accents (blue-grey, black, red) stay small
        zone = _fbm(rng, size, (3, 6)) + 0.6 * (inside - 0.5)
        inner = zone[mask > 0.5]
        for j, name in enumerate(colours[1:]):
            q = 0.45 + 0.3 * j / (len(colours) - 1)
            if name in _ACCENTS:
                q = max(q, float(rng.uniform(0.75, 0.9)))
            thr = float(np.quantile(inner, q))
            _blend(body, PALETTE[name], _smoothstep((zone - thr) * 2.5 + 0.5))
    shade = 1.0 + 0.10 * _fbm(rng, size, (5, 11)) + 0.08 * _fbm(rng, size, (size // 10, size // 5))
    shade *= 1.0 - float(rng.uniform(0.0, 0.25)) * _smoothstep(np.clip(inside, 0, 1) * 1.5)
    body *= shade[..., None]
    opacity = _u(rng, look["opacity"])
    _blend(img, body, mask * opacity)

    centre = (cx, cy)
    s = present("network")
    s_at = present("atypical_net")
    if s or s_at:
        _network(img, rng, np.clip(inside, 0, 1), mask, max(s, s_at),
                 atypical=s_at / max(s, s_at))
    if s := present("globules"):
        _dots(img, rng, centre, r0, mask, int(12 + 16 * s), (0.014, 0.024),
              PALETTE["dark_brown"], 0.85 * s, soft=True)
    if s := present("black_dots"):
        _dots(img, rng, centre, r0, mask, int(16 + 20 * s), (0.01, 0.016), PALETTE["black"],
              0.9, peripheral=True)
    if s := present("streaks"):
        layer = np.zeros((size, size), np.float32)
        t0 = rng.uniform(0, 2 * math.pi)
        span = rng.uniform(0.8, 2 * math.pi)  # streaks occupy part of the border
        for _ in range(int(5 + 10 * s)):
            t = t0 + rng.uniform(0, span)
            ln = rng.uniform(1.08, 1.3)
            half = rng.uniform(0.03, 0.05)
            tri = np.array([
                (cx + 0.8 * r0 * math.cos(t - half), cy + 0.8 * r0 * math.sin(t - half)),
                (cx + 0.8 * r0 * math.cos(t + half), cy + 0.8 * r0 * math.sin(t + half)),
                (cx + ln * r0 * math.cos(t), cy + ln * r0 * math.sin(t)),
            ])
            cv2.fillPoly(layer, [np.round(tri * 4).astype(np.int32)], 1.0, cv2.LINE_AA, 2)
        layer = cv2.GaussianBlur(layer, (0, 0), max(0.5, size / 300))
        _blend(img, PALETTE["dark_brown"], 0.7 * np.clip(layer, 0, 1))
    if s := present("veil"):
        t = rng.uniform(0, 2 * math.pi)
        c = (cx + 0.3 * r0 * math.cos(t), cy + 0.3 * r0 * math.sin(t))
        veil = _blob(rng, size, c, r0 * rng.uniform(0.25, 0.45)) * mask
        veil *= np.clip(0.55 + 0.45 * _fbm(rng, size, (4, 9)), 0, 1)
        tex = 1.0 + 0.12 * _fbm(rng, size, (size // 16, size // 8))[..., None]
        _blend(img, PALETTE["blue_white"] * tex, 0.45 * s * veil)
        _blend(img, PALETTE["blue_grey"], 0.2 * s * veil)
    if s := present("regression"):
        t = rng.uniform(0, 2 * math.pi)
        c = (cx + 0.4 * r0 * math.cos(t), cy + 0.4 * r0 * math.sin(t))
        reg = _blob(rng, size, c, r0 * rng.uniform(0.25, 0.45)) * mask
        _blend(img, PALETTE["white"] * 0.92, 0.7 * s * reg)
        _dots(img, rng, c, r0 * 0.35, reg, int(8 + 14 * s), (0.006, 0.01),
              PALETTE["blue_grey"], 0.9)
    if s := present("nests"):
        layer = np.zeros((size, size), np.float32)
        for _ in range(int(2 + 6 * s)):
            t = rng.uniform(0, 2 * math.pi)
            rr = math.sqrt(rng.uniform(0.0, 0.7)) * r0
            axes = (max(1, int(r0 * rng.uniform(0.08, 0.2))), max(1, int(r0 * rng.uniform(0.05,
                                                                                          0.12))))
            cv2.ellipse(layer, (int(cx + rr * math.cos(t)), int(cy + rr * math.sin(t))), axes,
                        float(rng.uniform(0, 180)), 0, 360, 1.0, -1, cv2.LINE_AA)
        layer = cv2.GaussianBlur(layer, (0, 0), max(0.8, size / 180))
        _blend(img, PALETTE["blue_grey"], 0.85 * s * layer * mask)
    if s := present("central_white"):
        cw = _blob(rng, size, (cx, cy), r0 * rng.uniform(0.4, 0.6), cells=6) * mask
        _blend(img, PALETTE["white"], min(1.0, 0.6 + 0.4 * s) * cw)
    if s := present("lacunae"):
        _lacunae(img, rng, centre, r0, mask)
    if s := present("keratin"):
        ker = _blob(rng, size, (cx, cy), r0 * rng.uniform(0.3, 0.6), cells=7) * mask
        tex = 1.0 + 0.1 * _noise(rng, size, size // 10)[..., None]
        _blend(img, PALETTE["yellow_white"] * tex, 0.85 * s * ker)
    if s := present("scale"):
        flakes = _smoothstep((_fbm(rng, size, (size // 20, size // 10)) - 0.05) * 3.0)
        _blend(img, PALETTE["white"], 0.9 * s * flakes * _smoothstep(inside * 2 + 0.6))
    if s := present("ulcer"):
        t = rng.uniform(0, 2 * math.pi)
        c = (cx + 0.3 * r0 * math.cos(t), cy + 0.3 * r0 * math.sin(t))
        ul = _blob(rng, size, c, r0 * rng.uniform(0.15, 0.3), cells=8) * mask
        _blend(img, PALETTE["dark_red"] * 0.8, 0.85 * s * ul)
    if s := present("milia"):
        _dots(img, rng, centre, r0, mask, int(15 + 18 * s), (0.014, 0.024),
              PALETTE["yellow_white"] * 1.04, 1.0, soft=True)
    if s := present("comedo"):
        _dots(img, rng, centre, r0, mask, int(10 + 14 * s), (0.012, 0.02),
              PALETTE["dark_brown"] * 0.7, 0.9)
    if s := present("arborizing"):
        _vessels_arborizing(img, rng, centre, r0, mask, s)
    if s := present("dotted"):
        n = int(25 + 30 * s)
        _dots(img, rng, centre, r0, mask, n, (0.009, 0.013), PALETTE["red"], 1.0)
    # surface micro-texture (pores, skin relief) over skin and lesion: what focus blur erases
    micro = cv2.GaussianBlur(rng.standard_normal((size, size), dtype=np.float32), (0, 0),
                             max(0.5, 0.7 * size / 256))
    micro *= 0.025 / max(1e-6, float(micro.std()))
    img *= 1.0 + micro[..., None]
    return np.clip(img, 0.0, 1.0), strength, lesion


# ---------------------------------------------------------------------------------------------
# The view
# ---------------------------------------------------------------------------------------------
def _hairs(img: np.ndarray, rng: np.random.Generator) -> None:
    size = img.shape[0]
    layer = np.zeros((size, size), np.float32)
    colour = PALETTE["black"] * rng.uniform(0.6, 1.6)
    for _ in range(int(rng.integers(1, 14))):
        # a quadratic Bezier curve crossing the field
        p0 = rng.uniform(-0.1, 1.1, 2) * size
        ang = rng.uniform(0, 2 * math.pi)
        length = rng.uniform(0.3, 0.9) * size
        p2 = p0 + length * np.array([math.cos(ang), math.sin(ang)])
        p1 = (p0 + p2) / 2 + rng.normal(0, 0.06, 2) * length
        t = np.linspace(0, 1, 24)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
        w = max(1, int(round(size / 256 * rng.uniform(0.6, 1.8))))
        cv2.polylines(layer, [np.round(pts * 4).astype(np.int32)], False, 1.0, w,
                      cv2.LINE_AA, 2)
    _blend(img, colour, 0.9 * np.clip(layer, 0, 1))


def _ruler(img: np.ndarray, rng: np.random.Generator) -> None:
    size = img.shape[0]
    layer = np.zeros((size, size), np.float32)
    ang = rng.uniform(0, 2 * math.pi)
    dist = rng.uniform(0.3, 0.42) * size  # distance from the centre
    nx, ny = math.cos(ang), math.sin(ang)  # normal direction
    tx, ty = -ny, nx
    cx, cy = size / 2 + dist * nx, size / 2 + dist * ny
    spacing = size * rng.uniform(0.018, 0.03)
    n = int(0.5 * size / spacing)
    w = max(1, size // 256)
    for i in range(-n, n + 1):
        length = size * (0.05 if i % 5 == 0 else 0.025)
        bx, by = cx + i * spacing * tx, cy + i * spacing * ty
        cv2.line(layer, (int(bx), int(by)), (int(bx - length * nx), int(by - length * ny)), 1.0,
                 w, cv2.LINE_AA)
    e0 = (int(cx - n * spacing * tx), int(cy - n * spacing * ty))
    e1 = (int(cx + n * spacing * tx), int(cy + n * spacing * ty))
    cv2.line(layer, e0, e1, 1.0, w, cv2.LINE_AA)
    _blend(img, PALETTE["black"], 0.85 * layer)


def render_view(frame: np.ndarray, *, view_seed: int, hair: bool, ruler: bool,
                vignette: bool, blur_sigma: float, jitter: bool = True) -> np.ndarray:
    """Image the lesion frame once: pose, light, artefacts, optics and blur -> uint8 RGB."""
    pixels, _ = _render_view(frame, None, view_seed=view_seed, hair=hair, ruler=ruler,
                             vignette=vignette, blur_sigma=blur_sigma, jitter=jitter)
    return pixels


def _render_view(frame: np.ndarray, lesion: np.ndarray | None, *, view_seed: int, hair: bool,
                 ruler: bool, vignette: bool, blur_sigma: float, jitter: bool = True
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`render_view` plus the lesion mask moved by the same pose.

    ``lesion`` is the frame's ``HxW`` float lesion mask (or ``None``); it goes through the
    same flip and affine warp as the picture (bilinear, same border mode), then is cut at 0.5:
    the second value is a ``HxW`` uint8 mask, 255 inside the lesion, 0 outside (``None``
    without ``lesion``). It is the lesion as drawn, before hairs, field of view and blur. The
    picture's pixels do not depend on whether a mask is asked for.
    """
    size = frame.shape[0]
    rng = np.random.default_rng(view_seed)
    img = frame
    if jitter:
        ang = float(rng.uniform(-180, 180))
        scale = float(rng.uniform(0.9, 1.1))
        m = cv2.getRotationMatrix2D((size / 2, size / 2), ang, scale)
        m[:, 2] += rng.normal(0, 0.03, 2) * size
        if rng.random() < 0.5:
            img = img[:, ::-1]
            lesion = None if lesion is None else lesion[:, ::-1]
        img = cv2.warpAffine(np.ascontiguousarray(img), m, (size, size),
                             flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        if lesion is not None:
            lesion = cv2.warpAffine(np.ascontiguousarray(lesion), m, (size, size),
                                    flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    else:
        img = img.copy()
    mask = None if lesion is None else np.where(lesion > 0.5, 255, 0).astype(np.uint8)
    # white balance, exposure and uneven illumination
    wb = np.array([1.0, rng.uniform(0.94, 1.0), rng.uniform(0.92, 1.03)], np.float32)
    wb *= np.float32(rng.uniform(0.9, 1.05))  # white balance (red as reference) and exposure
    xx = np.arange(size, dtype=np.float32)[None, :]
    yy = np.arange(size, dtype=np.float32)[:, None]
    gx, gy = (float(g) for g in rng.normal(0, 0.08, 2))
    r2 = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2) / (size / 2) ** 2
    light = 1.0 + gx * (xx / size - 0.5) + gy * (yy / size - 0.5) - 0.08 * r2
    img *= light[..., None] * wb
    if hair:
        _hairs(img, rng)
    if ruler:
        _ruler(img, rng)
    if vignette:
        radius = rng.uniform(0.52, 0.72) * size
        ox, oy = (float(o) * size for o in rng.normal(0, 0.02, 2))
        d = np.sqrt((xx - size / 2 - ox) ** 2 + (yy - size / 2 - oy) ** 2)
        field = _smoothstep((radius - d) / (0.03 * size))
        img *= field[..., None]
        img += (1 - field[..., None]) * 0.04
    if blur_sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur_sigma)
    img += 0.005 * rng.standard_normal(img.shape, dtype=np.float32)  # sensor noise
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8), mask


def render_lesion(label: str, *, lesion_seed: int, view_seed: int = 0, size: int = 256,
                  mix_with: str | None = None, mix_weight: float = 0.0,
                  blur_sigma: float = 0.0, hair: bool = False, ruler: bool = False,
                  vignette: bool = False, return_mask: bool = False
                  ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic dermoscopic image.

    Parameters
    ----------
    label : str
        True class (an ISIC 2019 code, e.g. ``"MEL"``).
    lesion_seed : int
        Fixes the lesion itself (skin patch, outline, colours, structures). Images of the same
        lesion share it.
    view_seed : int, default 0
        Fixes this acquisition: pose, lighting, hairs, ruler, field of view, sensor noise.
    size : int, default 256
        Side of the square image in pixels.
    mix_with : str or None
        Second class whose structures are blended in (intrinsically ambiguous lesion).
    mix_weight : float, default 0.0
        Weight of ``mix_with`` in [0, 0.5]; 0.5 is an even blend.
    blur_sigma : float, default 0.0
        Standard deviation in pixels of the Gaussian focus blur (0 = sharp).
    hair, ruler, vignette : bool
        Draw hairs, ruler marks, and the dermoscope's circular field of view.
    return_mask : bool, default False
        Also return the lesion mask (what ``generate_demo_dataset`` writes as
        ``<image_id>_segmentation.png``).

    Returns
    -------
    numpy.ndarray or (numpy.ndarray, numpy.ndarray)
        ``(size, size, 3)`` uint8 RGB image. The same arguments give the same pixels, with or
        without ``return_mask``. With ``return_mask``, also the ``(size, size)`` uint8 lesion
        mask (255 inside the lesion's outline, 0 outside), moved by the same pose as the
        picture, before hairs, field of view and blur.

    Raises
    ------
    ConfigError
        ``label`` or ``mix_with`` is not an ISIC 2019 class, or ``mix_weight`` is outside
        [0, 0.5].
    """
    for name, value in (("label", label), ("mix_with", mix_with)):
        if value is not None and value not in LOOKS:
            raise ConfigError(f"The '{name}' of render_lesion must be one of "
                              f"{list(ISIC2019_CLASSES)}; got {value!r} instead.")
    if not 0.0 <= mix_weight <= 0.5:
        raise ConfigError(f"The 'mix_weight' of render_lesion must be in [0, 0.5]; got "
                          f"{mix_weight!r} instead.")
    frame, _, lesion = _render_lesion_frame(int(size), label, mix_with, float(mix_weight),
                                            int(lesion_seed))
    pixels, mask = _render_view(frame, lesion if return_mask else None, view_seed=view_seed,
                                hair=hair, ruler=ruler, vignette=vignette, blur_sigma=blur_sigma)
    return (pixels, mask) if return_mask else pixels
