"""Derive the ``blur_score`` constants of ``skin_core.analysis.quality`` (run once, by hand).

Fits a logistic regression of "original" (1) against "Gaussian blur, sigma 2 or 4 px" (0) on
``log(laplacian_var + 1e-3)`` and ``log(wavelet_ratio)`` of real HAM10000 images with **odd**
ISIC ids (the realdata test samples even ids), each variant measured as decoded and after a
JPEG quality-75 round trip. Prints the constants to paste into ``quality.py``.

    SKIN_CORE_HAM10000_DIR=../shared/data/ham10000 .venv/bin/python bench/calibrate_blur.py \
        [--n 600] [--seed 0] [--json bench/calibrate_blur.json]
"""

from __future__ import annotations

import argparse
import io
import os
import re
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from skin_core.analysis.quality import BLUR_B0, BLUR_B1, BLUR_B2, measure_quality
from skin_core.data.images import read_image
from skin_core.io import atomic_write_json

SIGMAS = (1.0, 2.0, 4.0)


def jpeg_round_trip(rgb: np.ndarray, quality: int = 75) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def features(rgb: np.ndarray) -> tuple[float, float]:
    q = measure_quality(rgb)
    return np.log(q["laplacian_var"] + 1e-3), np.log(max(q["wavelet_ratio"], 1e-6))


def ham_files(root: Path, parity: int) -> list[Path]:
    files = sorted((root / "images").glob("ISIC_*.jpg"))
    return [p for p in files if int(re.sub(r"\D", "", p.stem)) % 2 == parity]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    root = Path(os.environ.get("SKIN_CORE_HAM10000_DIR", "../shared/data/ham10000"))
    files = ham_files(root, parity=1)
    rng = np.random.default_rng(args.seed)
    pick = [files[i] for i in rng.choice(len(files), args.n, replace=False)]
    feats = {s: [] for s in (0.0, *SIGMAS)}
    for p in pick:
        rgb = read_image(p)
        for s in feats:
            im = rgb if s == 0 else cv2.GaussianBlur(rgb, (0, 0), s)
            feats[s].append(features(im))
            feats[s].append(features(jpeg_round_trip(im)))
    F = {s: np.asarray(v) for s, v in feats.items()}
    X = np.vstack([F[0.0], F[2.0], F[4.0]])
    y = np.r_[np.ones(len(F[0.0])), np.zeros(len(F[2.0]) + len(F[4.0]))]
    lr = LogisticRegression(C=1.0, max_iter=1000).fit(X, y)
    b0, (b1, b2) = float(lr.intercept_[0]), lr.coef_[0]
    report = {"n_images": args.n, "seed": args.seed,
              "fitted": {"B0": b0, "B1": float(b1), "B2": float(b2)},
              "in_use": {"B0": BLUR_B0, "B1": BLUR_B1, "B2": BLUR_B2}, "auroc_in_sample": {}}
    for name, (c0, c1, c2) in (("fitted", (b0, b1, b2)), ("in_use", (BLUR_B0, BLUR_B1, BLUR_B2))):
        def score(a: np.ndarray, c0=c0, c1=c1, c2=c2) -> np.ndarray:
            return 1 / (1 + np.exp(-(c0 + c1 * a[:, 0] + c2 * a[:, 1])))
        for s in SIGMAS:
            yy = np.r_[np.ones(len(F[0.0])), np.zeros(len(F[s]))]
            auc = roc_auc_score(yy, np.r_[score(F[0.0]), score(F[s])])
            report["auroc_in_sample"][f"{name}_sigma{s:g}"] = float(auc)
        report[f"{name}_blurry_rate"] = {
            f"sigma{s:g}": float((score(F[s]) < 0.5).mean()) for s in (0.0, *SIGMAS)}
    print(f"BLUR_B0 = {b0:.2f}\nBLUR_B1 = {b1:.2f}\nBLUR_B2 = {b2:.2f}")
    for k, v in report.items():
        print(k, v)
    if args.json:
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
