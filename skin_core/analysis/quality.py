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

Code layout: this module is the public face (the column constants, the reference distribution
of :func:`quality_reference` and the helpers that ``quality_difficulty`` uses). The sharpness
measures and the ``blur_score`` model are in ``analysis/_quality_sharpness.py``, one image
(decoding to grey, every measure) in ``analysis/_quality_image.py``, and many images (inputs,
process pool, the ``quality.csv`` table and CSV writer) in ``analysis/_quality_batch.py``.
Their public names are re-exported here: import them from ``skin_core.analysis.quality``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from skin_core.analysis._quality_batch import (
    QUALITY_COLUMNS,
    MeasuredImages,
    compute_quality,
    default_workers,
    list_image_files,
    measure_images,
    run_chunked,
)
from skin_core.analysis._quality_image import (
    BLURRY_THRESHOLD,
    LONG_SIDE,
    MEASURES,
    measure_quality,
    read_grey,
)
from skin_core.analysis._quality_image import _jpeg_frame as _jpeg_frame
from skin_core.analysis._quality_sharpness import (
    BLUR_B0,
    BLUR_B1,
    BLUR_B2,
    FFT_HF_RADIUS,
    FFT_SIDE,
    blur_score_from,
)
from skin_core.analysis._quality_sharpness import _fft_hf_ratio as _fft_hf_ratio
from skin_core.constants import IMAGE_ID
from skin_core.errors import ConfigError, DataError

if TYPE_CHECKING:  # pandas is imported where a table is built: `skin-core quality --images`
    import pandas as pd  # measures and writes its CSV without it (a third of its start-up)

__all__ = [
    "BLURRY_THRESHOLD",
    "BLUR_B0",
    "BLUR_B1",
    "BLUR_B2",
    "COMPARE_MEASURES",
    "FFT_HF_RADIUS",
    "FFT_SIDE",
    "LONG_SIDE",
    "MEASURES",
    "MODEL_MEASURES",
    "QUALITY_COLUMNS",
    "MeasuredImages",
    "blur_score_from",
    "compute_quality",
    "default_workers",
    "list_image_files",
    "measure_images",
    "measure_quality",
    "percentile_of",
    "percentile_table",
    "percentiles_from_table",
    "quality_reference",
    "read_grey",
    "run_chunked",
]

#: Measures compared between difficult and control images by default (sizes excluded).
COMPARE_MEASURES: tuple[str, ...] = MEASURES[2:] + ("blur_score",)

#: Covariates of the default logistic model of difficulty (non-redundant, standardised).
MODEL_MEASURES: tuple[str, ...] = ("blur_score", "brightness", "contrast", "entropy")


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
