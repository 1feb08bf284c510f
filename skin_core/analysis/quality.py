"""Image-quality measures (blur first) and their comparison between difficult and control images.

Per image (:func:`measure_quality` on a decoded array, :func:`compute_quality` on many files):

============================  ==============================================================
column                        definition
============================  ==============================================================
``width``, ``height``         decoded size in pixels (after the EXIF orientation is applied)
``laplacian_var_full``        variance of the 3x3 Laplacian of the **full-resolution** grey
                              image (0-255 units): the study's measure, so its figures compare
``laplacian_var``             the same on the grey image resized (area) to a long side of at
                              most ``long_side`` (default 256; never upscaled): resolution-
                              normalised sharpness
``wavelet_detail_energy``     level-1 Haar detail energy per pixel (``cH**2 + cV**2 + cD**2``
                              summed, divided by the pixel count) of that image cropped to a
                              multiple of 8 px; equals PyWavelets'
                              ``dwt2(grey, "haar", mode="periodization")`` on the same crop
``wavelet_ratio``             Haar detail energy at level 2 divided by level 3: how much
                              structure survives at 2-4 px relative to 4-8 px. Independent of
                              contrast, it falls as blur removes fine detail
``fft_hf_ratio``              fraction of the power spectrum (Hann-windowed, mean-removed,
                              centre square crop of up to 64x64 px of that image) at radial
                              frequencies above ``0.25`` cycles/pixel (half the Nyquist
                              frequency), i.e. energy **outside** a low-frequency radius of the
                              shifted spectrum. It rises with sharpness. (The study took the
                              centre of the shifted spectrum: the low frequencies.)
``brightness``                mean grey level / 255, in [0, 1]
``contrast``                  RMS contrast: standard deviation of grey / 255, in [0, 0.5]
``entropy``                   Shannon entropy of the 256-bin grey histogram (of every second
                              pixel in each direction), bits, in [0, 8]
``vignette``                  ``1 - mean(corners) / mean(edge middles)`` over an 8x8 grid of
                              block means of that image (the 4 corner cells against the 8 cells
                              at the middle of the sides, away from a centred lesion): the dark
                              round field of a dermatoscope gives values near 1, none about 0
``blur_score``                in [0, 1], lower = blurrier (as in cleanvision), see below
``is_blurry``                 ``blur_score < BLURRY_THRESHOLD`` (0.5)
``error``                     empty when the image was measured, otherwise why not (the row is
                              kept with missing measures; an image is never dropped)
============================  ==============================================================

``blur_score`` is a logistic model of two resolution-normalised, log-transformed sharpness
measures::

    blur_score = 1 / (1 + exp(-(B0 + B1 * log(laplacian_var + 1e-3)
                                 + B2 * log(wavelet_ratio))))

The constants were calibrated once, by ``bench/calibrate_blur.py``, as a logistic regression
of "original" against "blurred with a Gaussian of sigma 2 or 4 px" on 600 real HAM10000 images
(200x150 px, odd-numbered ISIC ids; the realdata test uses even-numbered ones), each also
re-encoded as JPEG (quality 75) so compression does not pass for sharpness. So ``blur_score``
reads as the probability that an image is as sharp as an ordinary dermoscopic image rather than
one blurred by 2 px at a 256-px long side, and ``is_blurry`` (``blur_score < 0.5``) is that
model's decision boundary. ``laplacian_var`` carries the sharpness, ``wavelet_ratio`` (a ratio
of scales, free of contrast) keeps low-contrast but sharp lesions from being called blurry.

:func:`compute_quality` decodes each file once with :func:`read_grey` (luma only; plain
JPEGs through OpenCV, everything else through :func:`~skin_core.data.images.read_image`).

Quality versus difficulty (``compare_quality``, ``cliffs_delta``) lives in
:mod:`skin_core.analysis.quality_difficulty` (lesion-clustered tests when lesion ids are
known); it uses the helpers below.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from skin_core.constants import (
    IMAGE_EXTENSIONS,
    IMAGE_ID,
    MAX_IMAGE_PIXELS,
)
from skin_core.data.images import read_image
from skin_core.errors import ConfigError, DataError, SkinCoreError

if TYPE_CHECKING:  # pandas is imported where a table is built: `skin-core quality --images`
    import pandas as pd  # measures and writes its CSV without it (a third of its start-up)

#: Default long side (pixels) of the resolution-normalised grey image.
LONG_SIDE = 256

#: ``is_blurry`` is ``blur_score < BLURRY_THRESHOLD``.
BLURRY_THRESHOLD = 0.5

#: Radial frequency (cycles/pixel; Nyquist = 0.5) above which ``fft_hf_ratio`` counts energy.
FFT_HF_RADIUS = 0.25

#: Largest side of the centre square on which ``fft_hf_ratio`` is computed (power of two).
FFT_SIDE = 64

# blur_score = sigmoid(B0 + B1 * log(laplacian_var + 1e-3) + B2 * log(wavelet_ratio)).
# Fitted by bench/calibrate_blur.py (sklearn LogisticRegression, C=1) on 600 real HAM10000
# images (odd ISIC ids, seed 0): originals (y=1) against Gaussian sigma 2 and 4 px blurs (y=0),
# each decoded as-is and after a JPEG quality-75 round trip. Re-run that script to re-derive.
BLUR_B0 = -8.49
BLUR_B1 = 5.18
BLUR_B2 = 3.70

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

#: Measures compared between difficult and control images by default (sizes excluded).
COMPARE_MEASURES: tuple[str, ...] = MEASURES[2:] + ("blur_score",)

#: Covariates of the default logistic model of difficulty (non-redundant, standardised).
MODEL_MEASURES: tuple[str, ...] = ("blur_score", "brightness", "contrast", "entropy")

QUALITY_COLUMNS: tuple[str, ...] = (IMAGE_ID, *MEASURES, "blur_score", "is_blurry", "error")

_EPS_LAP = 1e-3
# cells of the 8x8 block-mean grid: the four corners, and the two middle cells of each side
_CORNER_CELLS = (np.array([0, 0, 7, 7]), np.array([0, 7, 0, 7]))
_SIDE_CELLS = (np.array([0, 0, 7, 7, 3, 4, 3, 4]), np.array([3, 4, 3, 4, 0, 0, 7, 7]))
_EPS_WAVELET = 1e-6


# --------------------------------------------------------------------------------------------
# one image


def blur_score_from(laplacian_var: float, wavelet_ratio: float) -> float:
    """``blur_score`` in [0, 1] (lower = blurrier) from the two normalised sharpness measures."""
    if not (math.isfinite(laplacian_var) and math.isfinite(wavelet_ratio)):
        return float("nan")
    z = (
        BLUR_B0
        + BLUR_B1 * math.log(max(laplacian_var, 0.0) + _EPS_LAP)
        + BLUR_B2 * math.log(max(wavelet_ratio, _EPS_WAVELET))
    )
    if z < -700:
        return 0.0
    return 1.0 / (1.0 + math.exp(-z))


@lru_cache(maxsize=8)
def _fft_plan(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Hann window and per-slot weights of OpenCV's packed (CCS) real spectrum, ``side`` even.

    ``cv2.dft`` of a real ``side x side`` image packs the half-spectrum as real numbers (CCS:
    see the OpenCV ``dft`` documentation). Each slot holds the real or imaginary part of one
    frequency ``(fy, fx)``; its weight is 1 where that frequency lies outside the radius
    :data:`FFT_HF_RADIUS` times its multiplicity in the full spectrum (2 for a frequency that
    also stands for its conjugate mirror, 1 for self-conjugate ones), else 0. Then
    ``sum(weights * ccs**2)`` is the full spectrum's energy outside the radius.
    """
    n = side
    window = np.outer(np.hanning(n), np.hanning(n)).astype(np.float32)
    f = np.fft.fftfreq(n)

    def w(fy: float, fx: float, mult: float) -> float:
        return mult if fy * fy + fx * fx > FFT_HF_RADIUS**2 else 0.0

    weights = np.zeros((n, n), dtype=np.float32)
    for j in range(n):  # inner columns: frequencies (j, l), l = 1 .. n/2 - 1, and mirrors
        for ll in range(1, n // 2):
            weights[j, 2 * ll - 1] = weights[j, 2 * ll] = w(f[j], ll / n, 2.0)
    for col, fx in ((0, 0.0), (n - 1, 0.5)):  # first / last column: fx = 0 and Nyquist
        weights[0, col] = w(0.0, fx, 1.0)
        for k in range(1, n // 2):
            weights[2 * k - 1, col] = weights[2 * k, col] = w(k / n, fx, 2.0)
        weights[n - 1, col] = w(0.5, fx, 1.0)
    return window, weights


def _fft_hf_ratio(grey: np.ndarray) -> float:
    """Fraction of spectral energy above ``FFT_HF_RADIUS`` cycles/pixel (centre square crop)."""
    h, w = grey.shape
    side = min(FFT_SIDE, 1 << (min(h, w).bit_length() - 1))
    if side < 8:
        return float("nan")
    y0, x0 = (h - side) // 2, (w - side) // 2
    window, weights = _fft_plan(side)
    crop = grey[y0: y0 + side, x0: x0 + side].astype(np.float32)
    crop -= np.float32(cv2.mean(crop)[0])
    x = cv2.multiply(crop, window)
    total = cv2.norm(x, cv2.NORM_L2SQR) * (side * side)  # Parseval; the DC term is ~0
    if total <= 0:
        return 0.0
    ccs = cv2.dft(x)
    high = float(cv2.multiply(ccs, ccs).ravel() @ weights.ravel())
    return min(1.0, high / total)


def _sq_mean(a: np.ndarray) -> float:
    return cv2.norm(a, cv2.NORM_L2SQR) / a.size


def _haar_detail_energies(g32: np.ndarray, levels: int = 3) -> list[float]:
    """Per-pixel Haar detail energy at levels 1..``levels`` (orthonormal Haar).

    With ``m_0 = x`` and ``m_k`` the 2x2 block means of ``m_{k-1}``, the level-k detail energy
    per original pixel is ``mean(m_{k-1}**2) - mean(m_k**2)`` (Parseval for the Haar basis).
    ``g32`` must have sides divisible by ``2**levels``.
    """
    m = g32
    prev = _sq_mean(m)
    out = []
    for _ in range(levels):
        m = cv2.resize(m, (m.shape[1] // 2, m.shape[0] // 2), interpolation=cv2.INTER_AREA)
        cur = _sq_mean(m)
        out.append(max(prev - cur, 0.0))
        prev = cur
    return out


def _laplacian_var(grey: np.ndarray) -> float:
    lap = cv2.Laplacian(grey, cv2.CV_16S)  # exact for uint8 input
    mean = cv2.mean(lap)[0]
    return max(cv2.norm(lap, cv2.NORM_L2SQR) / lap.size - mean * mean, 0.0)


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


# --------------------------------------------------------------------------------------------
# many images


def list_image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files (by extension, recursively, sorted) under ``folder``.

    Raises
    ------
    DataError
        ``folder`` does not exist or holds no image file.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"Image folder {root} does not exist; pass a folder of images.")
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise DataError(
            f"Image folder {root} holds no image files (expected {', '.join(IMAGE_EXTENSIONS)}); "
            "check the path."
        )
    return files


def _as_items(paths_or_table: Any) -> tuple[list[str], list[str]]:
    """``(image_ids, paths)`` from a Dataset, a DataFrame with ``path``, or a list of paths."""
    table = getattr(paths_or_table, "table", paths_or_table)
    pandas = sys.modules.get("pandas")  # a DataFrame exists only once pandas is imported
    if pandas is not None and isinstance(table, pandas.DataFrame):
        if "path" not in table.columns:
            raise DataError(
                "compute_quality needs a table with a 'path' column (and ideally 'image_id'); "
                f"found columns {list(table.columns)}."
            )
        paths = [str(p) for p in table["path"]]
        if IMAGE_ID in table.columns:
            ids = [str(i) for i in table[IMAGE_ID]]
        else:
            ids = [Path(p).stem for p in paths]
    elif isinstance(table, (str, os.PathLike)):
        paths = [str(p) for p in list_image_files(table)]
        ids = [Path(p).stem for p in paths]
    elif isinstance(table, Iterable):
        paths = [os.fspath(p) for p in table]
        ids = [Path(p).stem for p in paths]
    else:
        raise DataError(
            "compute_quality expects a list of image paths, a folder, a DataFrame with a 'path' "
            f"column or a Dataset; got {type(paths_or_table).__name__}."
        )
    if not paths:
        raise DataError("compute_quality was given no images; pass at least one image path.")
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise DataError(
                f"Image id {i!r} occurs more than once in the images to measure; give every "
                "image a distinct id (file name) so quality rows can be joined."
            )
        seen.add(i)
    return ids, paths


_N_VALUES = len(MEASURES) + 1


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


def _measure_file(path: str, long_side: int) -> tuple[tuple[float, ...], str]:
    try:
        grey = read_grey(path)
        if min(grey.shape) < 8:
            raise SkinCoreError(f"Image {path} is only {grey.shape[1]}x{grey.shape[0]} pixels; "
                                "quality needs at least 8x8.")
        return _measure_grey(grey, long_side), ""
    except SkinCoreError as exc:
        return (math.nan,) * _N_VALUES, str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad image must not stop the run
        return (math.nan,) * _N_VALUES, f"{path}: {type(exc).__name__}: {exc}"


def _measure_chunk(args: tuple[int, list[str], int]) -> tuple[int, tuple[np.ndarray, list[str]]]:
    start, paths, long_side = args
    res = [_measure_file(p, long_side) for p in paths]
    values = np.array([r[0] for r in res], dtype=np.float64).reshape(len(res), _N_VALUES)
    return start, (values, [r[1] for r in res])


def _init_worker() -> None:
    cv2.setNumThreads(1)


def _pool_context() -> Any:
    """``fork`` where available (workers start in milliseconds), else ``spawn``."""
    import multiprocessing as mp

    if "fork" in mp.get_all_start_methods():
        return mp.get_context("fork")
    return mp.get_context("spawn")  # pragma: no cover - Windows


def default_workers() -> int:
    """CPU cores available to this process (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def run_chunked(fn: Any, paths: Sequence[str], extra: tuple, *, workers: int | None,
                progress: bool, desc: str) -> list[Any]:
    """Apply ``fn((start, chunk_paths, *extra)) -> (start, result)`` over ``paths`` in chunks.

    Uses a process pool of ``workers`` (default: every core; 1 = in this process) and shows a
    tqdm bar on stderr when ``progress``. Returns the chunks' results in input order. Shared by
    :func:`compute_quality` and the decode baseline of ``bench/bench_quality.py``, so both pay
    the same pool costs.
    """
    from tqdm import tqdm

    n = len(paths)
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ConfigError(f"The 'workers' parameter must be >= 1; got {workers}.")
    workers = min(workers, n)
    chunk = 64 if workers == 1 else int(min(256, max(8, math.ceil(n / (workers * 8)))))
    starts = list(range(0, n, chunk))
    out: dict[int, Any] = {}
    bar = tqdm(total=n, desc=desc, unit="img", file=sys.stderr, disable=not progress)
    try:
        if workers == 1:
            for s in starts:
                out[s] = fn((s, list(paths[s: s + chunk]), *extra))[1]
                bar.update(min(chunk, n - s))
        else:
            # A process forked while OpenCV's thread pool runs hangs at its first OpenCV call
            # (the pool's threads do not survive fork). Shrinking the pool to one thread
            # (which joins its threads) before forking makes the children safe; the caller's
            # setting is restored afterwards.
            n_threads = cv2.getNumThreads()
            cv2.setNumThreads(1)
            try:
                with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                                         mp_context=_pool_context()) as pool:
                    futures = [pool.submit(fn, (s, list(paths[s: s + chunk]), *extra))
                               for s in starts]
                    for fut in as_completed(futures):
                        s, res = fut.result()
                        out[s] = res
                        bar.update(min(chunk, n - s))
            finally:
                cv2.setNumThreads(n_threads)
    finally:
        bar.close()
    return [out[s] for s in starts]


@dataclass(frozen=True)
class MeasuredImages:
    """What :func:`measure_images` returns: measures of every image, in input order.

    Attributes
    ----------
    image_ids:
        One id per image.
    values:
        ``(N, len(MEASURES) + 1)`` float64: every measure in :data:`MEASURES` order, then
        ``blur_score``; NaN where the image could not be measured.
    errors:
        ``""`` for a measured image, else the reason (one sentence).
    """

    image_ids: list[str]
    values: np.ndarray
    errors: list[str]

    def to_frame(self) -> pd.DataFrame:
        """The ``quality.csv`` table (columns :data:`QUALITY_COLUMNS`)."""
        import pandas as pd

        df = pd.DataFrame(self.values, columns=[*MEASURES, "blur_score"])
        df.insert(0, IMAGE_ID, self.image_ids)
        for col in ("width", "height"):
            df[col] = df[col].round().astype("Int64")
        is_blurry = pd.array(df["blur_score"] < BLURRY_THRESHOLD, dtype="boolean")
        is_blurry[df["blur_score"].isna().to_numpy()] = pd.NA
        df["is_blurry"] = is_blurry
        df["error"] = list(self.errors)
        return df[list(QUALITY_COLUMNS)]

    def write_csv(self, target: str | os.PathLike[str]) -> Path:
        """Write ``quality.csv`` atomically without pandas, exactly as ``to_frame().to_csv``.

        Floats are written as Python's shortest round-trip ``repr`` (as pandas does), sizes
        as integers, ``is_blurry`` as ``True``/``False``, and missing values as empty fields.
        """
        import csv

        from skin_core.io import atomic_path

        def num(x: float) -> str:
            return "" if math.isnan(x) else repr(x)

        with atomic_path(target) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(QUALITY_COLUMNS)
            score_col = len(MEASURES)
            for image_id, row, err in zip(self.image_ids, self.values.tolist(), self.errors,
                                          strict=True):
                sizes = ["" if math.isnan(v) else str(round(v)) for v in row[:2]]
                score = row[score_col]
                blurry = "" if math.isnan(score) else str(score < BLURRY_THRESHOLD)
                w.writerow([image_id, *sizes, *map(num, row[2:]), blurry, err])
        return Path(target)


def measure_images(
    paths_or_table: Any,
    *,
    workers: int | None = None,
    progress: bool = False,
    long_side: int = LONG_SIDE,
) -> MeasuredImages:
    """Measure every image (see :func:`compute_quality`) without building a DataFrame.

    The command line uses this with :meth:`MeasuredImages.write_csv`, so measuring a folder
    never imports pandas; :func:`compute_quality` is ``measure_images(...).to_frame()``.
    """
    long_side = _check_long_side(long_side)
    ids, paths = _as_items(paths_or_table)
    chunks = run_chunked(_measure_chunk, paths, (long_side,), workers=workers,
                         progress=progress, desc="quality")
    return MeasuredImages(image_ids=ids, values=np.vstack([c[0] for c in chunks]),
                          errors=[e for c in chunks for e in c[1]])


def compute_quality(
    paths_or_table: Any,
    *,
    workers: int | None = None,
    progress: bool = False,
    long_side: int = LONG_SIDE,
) -> pd.DataFrame:
    """Measure every image: one row per image, in input order, none dropped.

    Each file is decoded once (:func:`read_grey`) and measured by the same code as
    :func:`measure_quality`, in a process pool.

    Parameters
    ----------
    paths_or_table:
        Image paths (``image_id`` = file stem), a folder (searched recursively), a DataFrame
        with ``path`` (and ``image_id``) columns, or a :class:`~skin_core.data.tables.Dataset`.
    workers:
        Worker processes (default: every core available; 1 = no pool).
    progress:
        Show a progress bar on stderr.
    long_side:
        See :func:`measure_quality`.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`QUALITY_COLUMNS`: ``image_id``, every measure, ``blur_score``,
        ``is_blurry`` (nullable boolean) and ``error`` (``""`` when measured; otherwise the
        reason, with the measures missing).

    Raises
    ------
    DataError
        No images, a folder without images, duplicate image ids or no ``path`` column.
    ConfigError
        ``workers < 1`` or a bad ``long_side``.
    """
    return measure_images(paths_or_table, workers=workers, progress=progress,
                          long_side=long_side).to_frame()


# --------------------------------------------------------------------------------------------
# reference distribution


def quality_reference(
    quality: pd.DataFrame,
    *,
    measures: Sequence[str] | None = None,
    n_quantiles: int = 101,
) -> dict[str, Any]:
    """Quantiles of each measure over a reference set (e.g. the training images), JSON-ready.

    Parameters
    ----------
    quality:
        A :func:`compute_quality` table; rows with an ``error`` or missing values are ignored.
    measures:
        Which measures (default: every measure in :data:`COMPARE_MEASURES` present).
    n_quantiles:
        Number of evenly spaced quantile levels from 0 to 100 percent (>= 2).

    Returns
    -------
    dict
        ``{"n_images": N, "measures": {measure: {"n": n, "levels": [...percent...],
        "quantiles": [...]}}}``, for :func:`percentile_of`.
    """
    import pandas as pd

    if n_quantiles < 2:
        raise ConfigError(f"The 'n_quantiles' parameter must be >= 2; got {n_quantiles}.")
    measures = _pick_measures(quality, measures, "quality_reference")
    ok = _ok_rows(quality)
    levels = np.linspace(0.0, 100.0, n_quantiles)
    out: dict[str, Any] = {"n_images": int(ok.sum()), "measures": {}}
    for m in measures:
        v = pd.to_numeric(quality.loc[ok, m], errors="coerce").to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        if len(v) == 0:
            continue
        out["measures"][m] = {
            "n": int(len(v)),
            "levels": [float(x) for x in levels],
            "quantiles": [float(x) for x in np.percentile(v, levels)],
        }
    if not out["measures"]:
        raise DataError("quality_reference found no measured image (every row has an error).")
    return out


def percentile_table(entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The interpolation table of one reference measure: distinct quantiles and, for each,
    the mean level of the quantiles tied to it. Build it once to look up many values
    (:func:`percentiles_from_table`); :func:`percentile_of` is the one-value form."""
    q = np.asarray(entry["quantiles"], dtype=float)
    lv = np.asarray(entry["levels"], dtype=float)
    uq, inverse = np.unique(q, return_inverse=True)
    return uq, np.bincount(inverse, weights=lv) / np.bincount(inverse)


def percentiles_from_table(values: np.ndarray, table: tuple[np.ndarray, np.ndarray]
                           ) -> np.ndarray:
    """Percentiles (0-100) of every value from a :func:`percentile_table`; NaN where the value
    is not finite."""
    uq, ulv = table
    values = np.asarray(values, dtype=float)
    out = np.full(values.shape, np.nan)
    ok = np.isfinite(values)
    v = values[ok]
    if len(uq) == 1:
        out[ok] = np.where(v < uq[0], 0.0, np.where(v > uq[0], 100.0, 50.0))
    else:
        out[ok] = np.interp(v, uq, ulv, left=0.0, right=100.0)
    return out


def percentile_of(value: float, reference: dict[str, Any], measure: str | None = None) -> float:
    """Percentile (0-100) of ``value`` within a reference distribution.

    ``reference`` is one measure's entry of :func:`quality_reference` (with ``levels`` and
    ``quantiles``), or the whole result together with ``measure``. Values between quantiles
    are interpolated linearly; tied quantiles count at the middle of their levels; values
    outside the reference range give 0 or 100. NaN gives NaN.
    """
    entry = reference
    if "measures" in reference:
        if measure is None or measure not in reference["measures"]:
            raise ConfigError(
                f"percentile_of needs a measure of this reference, one of "
                f"{sorted(reference['measures'])}; got {measure!r}."
            )
        entry = reference["measures"][measure]
    if value is None:
        return float("nan")
    return float(percentiles_from_table(np.array([value], dtype=float),
                                        percentile_table(entry))[0])


# --------------------------------------------------------------------------------------------
# helpers shared with quality_difficulty


def _ok_rows(quality: pd.DataFrame) -> np.ndarray:
    if "error" in quality.columns:
        err = quality["error"]
        return (err.isna() | (err.astype(str) == "")).to_numpy()
    return np.ones(len(quality), dtype=bool)


def _pick_measures(df: pd.DataFrame, measures: Sequence[str] | None, who: str) -> list[str]:
    if measures is None:
        return [m for m in COMPARE_MEASURES if m in df.columns]
    if isinstance(measures, str):
        measures = [measures]
    missing = [m for m in measures if m not in df.columns]
    if missing:
        raise ConfigError(
            f"{who}: measure(s) {missing} are not columns of the quality table; available: "
            f"{[c for c in df.columns if c not in (IMAGE_ID, 'error', 'is_blurry')]}."
        )
    return list(measures)

