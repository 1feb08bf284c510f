"""Sharpness measures behind ``blur_score``: Laplacian variance, Haar wavelet energies, the
high-frequency share of the spectrum, and the calibrated logistic model that combines them.

Private part of :mod:`skin_core.analysis.quality` (which re-exports every public name here;
import them from there). The measures and the calibration are defined in that module's
docstring.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

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

_EPS_LAP = 1e-3
_EPS_WAVELET = 1e-6


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
