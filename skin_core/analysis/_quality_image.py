"""One image: decode it to grey (:func:`read_grey`) and take every quality measure of it
(:func:`measure_quality`; brightness, contrast, entropy and vignette beside the sharpness
measures of ``analysis/_quality_sharpness.py``).

Private part of :mod:`skin_core.analysis.quality` (which re-exports every public name here;
import them from there). The columns are defined in that module's docstring.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from skin_core.analysis._quality_sharpness import (
    _EPS_WAVELET,
    _fft_hf_ratio,
    _haar_detail_energies,
    _laplacian_var,
    blur_score_from,
)
from skin_core.constants import MAX_IMAGE_PIXELS
from skin_core.data.images import read_image
from skin_core.errors import ConfigError, SkinCoreError

#: Default long side (pixels) of the resolution-normalised grey image.
LONG_SIDE = 256

#: ``is_blurry`` is ``blur_score < BLURRY_THRESHOLD``.
BLURRY_THRESHOLD = 0.5

#: Measure columns, in output order (``blur_score`` and ``is_blurry`` follow).
MEASURES: tuple[str, ...] = (
    "width",
    "height",
    "laplacian_var_full",
    "laplacian_var",
    "wavelet_detail_energy",
    "wavelet_ratio",
    "fft_hf_ratio",
    "brightness",
    "contrast",
    "entropy",
    "vignette",
)

# cells of the 8x8 block-mean grid: the four corners, and the two middle cells of each side
_CORNER_CELLS = (np.array([0, 0, 7, 7]), np.array([0, 7, 0, 7]))
_SIDE_CELLS = (np.array([0, 0, 7, 7, 3, 4, 3, 4]), np.array([3, 4, 3, 4, 0, 0, 7, 7]))


def _measure_grey(grey_full: np.ndarray, long_side: int) -> tuple[float, ...]:
    """The unchecked core: values in ``MEASURES`` order, then ``blur_score``.

    ``grey_full`` is a C-contiguous ``(H, W) uint8`` grey image of at least 8x8 pixels.
    """
    h, w = grey_full.shape
    lap_full = _laplacian_var(grey_full)
    scale = long_side / max(h, w)
    if scale < 1.0:
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        grey = cv2.resize(grey_full, size, interpolation=cv2.INTER_AREA)
        lap = _laplacian_var(grey)
    else:
        grey, lap = grey_full, lap_full
    gh, gw = grey.shape
    mean, sd = cv2.meanStdDev(grey)
    mu, sigma = float(mean[0, 0]), float(sd[0, 0])
    h8, w8 = gh // 8 * 8, gw // 8 * 8
    d1, d2, d3 = _haar_detail_energies(grey[:h8, :w8].astype(np.float32))
    wavelet_ratio = (d2 + _EPS_WAVELET) / (d3 + _EPS_WAVELET)
    hf = _fft_hf_ratio(grey)
    sub = grey[::2, ::2]  # every 4th pixel estimates the histogram well enough, at 1/4 cost
    hist = cv2.calcHist([sub], [0], None, [256], [0, 256]).ravel()
    p = hist[hist > 0] / sub.size
    entropy = float(-(p @ np.log2(p)))
    # block means on the 8-divisible crop: an integer area scale takes OpenCV's fast path
    cells = cv2.resize(grey[:h8, :w8], (8, 8), interpolation=cv2.INTER_AREA).astype(np.float64)
    corners = float(cells[_CORNER_CELLS].sum()) / 4.0
    sides = float(cells[_SIDE_CELLS].sum()) / 8.0
    vignette = 1.0 - corners / sides if sides > 0 else 0.0
    score = blur_score_from(lap, wavelet_ratio)
    return (
        float(w), float(h), lap_full, lap, d1, wavelet_ratio, hf,
        mu / 255.0, sigma / 255.0, entropy, vignette, score,
    )


def _to_grey(rgb: np.ndarray) -> np.ndarray:
    if rgb.ndim == 2:
        return np.ascontiguousarray(rgb)
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def _check_long_side(long_side: int) -> int:
    if isinstance(long_side, bool) or not isinstance(long_side, (int, np.integer)) \
            or long_side < 16:
        raise ConfigError(
            f"The 'long_side' parameter must be an integer >= 16 (pixels); got {long_side!r}."
        )
    return int(long_side)


def measure_quality(rgb: np.ndarray, *, long_side: int = LONG_SIDE) -> dict[str, float]:
    """Every quality measure of one decoded image.

    Parameters
    ----------
    rgb:
        ``(H, W, 3)`` RGB or ``(H, W)`` grey ``uint8`` array, e.g. from
        :func:`skin_core.data.images.read_image`. At least 8x8 pixels.
    long_side:
        Long side (pixels) of the resolution-normalised grey image used by every measure
        except ``laplacian_var_full`` (larger images are area-downscaled, smaller ones are
        used as they are).

    Returns
    -------
    dict
        ``{measure: value}`` for every name in :data:`MEASURES`, plus ``blur_score`` (float in
        [0, 1], lower = blurrier) and ``is_blurry`` (``blur_score < 0.5``, as 1.0 / 0.0).

    Raises
    ------
    SkinCoreError
        ``rgb`` is not a ``uint8`` image array of that shape.

    Example
    -------
    >>> q = measure_quality(np.full((64, 64, 3), 128, np.uint8))
    >>> q["is_blurry"], round(q["brightness"], 3)
    (1.0, 0.502)
    """
    long_side = _check_long_side(long_side)
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8:
        found = rgb.dtype if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise SkinCoreError(
            f"measure_quality expects a uint8 image array (as read_image returns); got {found}."
        )
    if not (rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] == 3)) or min(rgb.shape[:2]) < 8:
        raise SkinCoreError(
            "measure_quality expects an (H, W, 3) RGB or (H, W) grey array of at least 8x8 "
            f"pixels; got shape {rgb.shape}."
        )
    values = _measure_grey(_to_grey(rgb), long_side)
    out = dict(zip((*MEASURES, "blur_score"), values, strict=True))
    out["is_blurry"] = float(out["blur_score"] < BLURRY_THRESHOLD)
    return out


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """``(height, width, components)`` from a JPEG's frame header, or None if not a plain JPEG.

    Walks the marker segments from SOI to the first SOF; any irregularity gives None (the
    caller then uses the safe decoder).
    """
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2: i + 4], "big")
        if marker in _SOF_MARKERS:
            if i + 10 > n:
                return None
            h = int.from_bytes(data[i + 5: i + 7], "big")
            w = int.from_bytes(data[i + 7: i + 9], "big")
            return h, w, data[i + 9]
        if marker == 0xDA or length < 2:  # start of scan before any frame header
            return None
        i += 2 + length
    return None


def read_grey(path: str | os.PathLike[str] | bytes, *, max_pixels: int = MAX_IMAGE_PIXELS,
              name: str | None = None) -> np.ndarray:
    """Decode ``path`` (a file, or its bytes) to an upright ``(H, W) uint8`` grey image.

    Grey is ITU-R 601 luma. ``name`` names the image in error messages (default: the path).
    The prediction code measures uploads with this same function, so an image's quality
    scores at prediction time equal those in the study's ``quality.csv``.

    A fast path for plain JPEGs decodes only the luma channel with OpenCV (about twice as fast
    as a full RGB decode with Pillow, which is what makes :func:`compute_quality` cheap). It is
    taken only when the file is a JPEG whose frame header declares 1 or 3 components and at
    most ``max_pixels`` pixels (checked before decoding), that ends with the end-of-image
    marker (so it is not truncated), and that OpenCV decodes (applying the EXIF orientation)
    to the declared size. Everything else goes through
    :func:`~skin_core.data.images.read_image` (every format and mode, EXIF orientation,
    decompression-bomb and truncation checks), then to grey. Both give the same pixels up to
    +-1 grey level of rounding.

    Raises
    ------
    ImageError
        As :func:`~skin_core.data.images.read_image`: missing, empty, not an image, truncated
        or corrupt, or larger than ``max_pixels``.
    """
    data: bytes | None = path if isinstance(path, (bytes, bytearray)) else None
    try:
        if data is None:
            with open(path, "rb") as fh:
                data = fh.read()
        frame = _jpeg_frame(data)
        if (
            frame is not None and frame[2] in (1, 3) and 0 < frame[0] * frame[1] <= max_pixels
            and data.rstrip(b"\0\r\n ")[-2:] == b"\xff\xd9"
        ):
            grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
            if grey is not None and grey.shape in ((frame[0], frame[1]), (frame[1], frame[0])):
                return grey
    except Exception:  # noqa: BLE001 - anything odd: the safe decoder decides and explains
        pass
    return _to_grey(read_image(data if data is not None else path, max_pixels=max_pixels,
                               name=name))
