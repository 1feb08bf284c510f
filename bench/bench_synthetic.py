"""Benchmark of the demo-data generator (and a learnability sanity check).

Usage::

    .venv/bin/python bench/bench_synthetic.py                 # everything (about 2 minutes)
    .venv/bin/python bench/bench_synthetic.py --skip-full     # only the side-by-side ratios
    .venv/bin/python bench/bench_synthetic.py --learn         # add the learnability check
    .venv/bin/python bench/bench_synthetic.py --skip-full --repeats 0 \
        --contact-sheet docs/img/demo-contact-sheet.png           # redraw the docs picture

Reports, in one run on this machine:

* ``full``: wall time of ``generate_demo_dataset(n=2000, size=256, workers=2)`` (the
  requirement is under 60 s on 2 cores), once.
* ``ratios``: medians of ``--repeats`` runs measured side by side on ``--n`` images:
  ``workers1_over_workers2`` (parallel speed-up on 2 cores) and ``generate_over_floor``
  (generation vs the floor of JPEG-encoding and writing the same number of 256 px images,
  i.e. how much the drawing itself costs on top of the unavoidable I/O).
* ``learnability`` (``--learn``): balanced accuracy of a multinomial logistic regression on
  16x16 RGB pixels of 600 demo images, 5-fold cross-validation grouped by lesion. It must be
  clearly above chance (1/8 = 0.125) and well below 1.

Absolute times are noisy on a shared machine; compare the ratios.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from skin_core.data.synthetic import generate_demo_dataset


def _floor(n: int, size: int, folder: Path) -> float:
    """Encode and write ``n`` constant JPEGs: the I/O floor of any generator."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.full((size, size, 3), 180, np.uint8))
    t = time.perf_counter()
    for i in range(n):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        (folder / f"{i}.jpg").write_bytes(buf.getvalue())
    return time.perf_counter() - t


def _timed(out: Path, **kwargs) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    generate_demo_dataset(out, **kwargs)
    return time.perf_counter() - t


def learnability(tmp: Path, *, n: int = 600, seed: int = 0) -> dict[str, float]:
    """Balanced accuracy of logistic regression on 16x16 pixels (lesion-grouped 5-fold CV)."""
    import cv2
    import pandas as pd
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = tmp / "learn"
    shutil.rmtree(out, ignore_errors=True)
    generate_demo_dataset(out, n=n, seed=seed, size=128, workers=2)
    truth = pd.read_csv(out / "generation_truth.csv")
    x = np.stack([
        cv2.resize(np.asarray(Image.open(out / "ISIC_2019_Training_Input" / f"{i}.jpg")),
                   (16, 16), interpolation=cv2.INTER_AREA).ravel()
        for i in truth["image_id"]
    ]).astype(np.float32) / 255.0
    groups = truth["lesion_id"].fillna(truth["image_id"]).to_numpy()
    y = truth["label"].to_numpy()
    pred = np.empty_like(y)
    cv = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
    for tr, te in cv.split(x, y, groups):
        model = make_pipeline(StandardScaler(), LogisticRegression(
            C=0.05, max_iter=3000, class_weight="balanced"))
        model.fit(x[tr], y[tr])
        pred[te] = model.predict(x[te])
    clean = ~(truth["is_ambiguous"] | truth["is_blurred"] | truth["is_mislabeled"]).to_numpy()
    return {
        "n_images": int(n),
        "chance": 1 / 8,
        "balanced_accuracy": round(float(balanced_accuracy_score(y, pred)), 4),
        "balanced_accuracy_vs_true_label": round(float(balanced_accuracy_score(
            truth["true_label"], pred)), 4),
        "accuracy_clean_images": round(float((pred[clean] == y[clean]).mean()), 4),
        "accuracy_hard_images": round(float((pred[~clean] == y[~clean]).mean()), 4),
    }


def contact_sheet(path: Path, tmp: Path, *, seed: int = 0, per_class: int = 3,
                  thumb: int = 128) -> dict[str, object]:
    """Write a labelled grid of ``per_class`` demo images per class (8 x per_class tiles)."""
    import pandas as pd
    from PIL import Image, ImageDraw

    from skin_core.constants import ISIC2019_CLASSES

    out = tmp / "sheet"
    shutil.rmtree(out, ignore_errors=True)
    generate_demo_dataset(out, n=400, seed=seed, size=256, workers=2)
    truth = pd.read_csv(out / "generation_truth.csv")
    tiles = []
    for c in ISIC2019_CLASSES:
        for r in truth[truth["true_label"] == c].head(per_class).itertuples():
            im = Image.open(out / "ISIC_2019_Training_Input" / f"{r.image_id}.jpg")
            im = im.convert("RGB").resize((thumb, thumb), Image.Resampling.LANCZOS)
            note = c
            if r.is_blurred:
                note += f" blur {r.blur_sigma:g}"
            if r.is_ambiguous:
                note += f" ~{r.ambiguous_with}"
            draw = ImageDraw.Draw(im)
            draw.rectangle((0, 0, 7 * len(note) + 6, 13), fill=(0, 0, 0))
            draw.text((3, 1), note, fill=(255, 255, 255))
            tiles.append(np.asarray(im))
    cols = 2 * per_class
    rows = [np.concatenate(tiles[i:i + cols], axis=1) for i in range(0, len(tiles), cols)]
    sheet = Image.fromarray(np.concatenate(rows, axis=0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return {"path": str(path), "bytes": path.stat().st_size, "tiles": len(tiles)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="images per ratio run (default 200)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-full", action="store_true", help="skip the 2,000-image run")
    ap.add_argument("--learn", action="store_true", help="add the learnability check")
    ap.add_argument("--contact-sheet", type=Path, metavar="PNG",
                    help="also write a contact sheet of 24 demo images to PNG")
    args = ap.parse_args()

    result: dict[str, object] = {"cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory(prefix="bench_synthetic_") as tmp_s:
        tmp = Path(tmp_s)
        if not args.skip_full:
            secs = _timed(tmp / "full", n=2000, seed=0, size=256, workers=2)
            result["full"] = {"n": 2000, "size": 256, "workers": 2, "seconds": round(secs, 2),
                              "images_per_second": round(2000 / secs, 1)}
        w1, w2, fl = [], [], []
        for r in range(args.repeats):
            w1.append(_timed(tmp / "w1", n=args.n, seed=r, size=256, workers=1))
            w2.append(_timed(tmp / "w2", n=args.n, seed=r, size=256, workers=2))
            fl.append(_floor(args.n, 256, tmp / f"floor{r}"))
        if args.repeats > 0:
            m1, m2, mf = (statistics.median(v) for v in (w1, w2, fl))
            result["ratios"] = {
                "n": args.n, "size": 256, "repeats": args.repeats,
                "median_seconds": {"workers1": round(m1, 3), "workers2": round(m2, 3),
                                   "io_floor": round(mf, 3)},
                "workers1_over_workers2": round(m1 / m2, 2),
                "generate_over_floor": round(m2 / mf, 1),
            }
        if args.learn:
            result["learnability"] = learnability(tmp)
        if args.contact_sheet:
            result["contact_sheet"] = contact_sheet(args.contact_sheet, tmp)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
