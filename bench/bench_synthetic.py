"""Benchmark of the demo-data generator (and a learnability sanity check).

Usage::

    .venv/bin/python bench/bench_synthetic.py                 # everything (about 2 minutes)
    .venv/bin/python bench/bench_synthetic.py --skip-full     # only the side-by-side ratios
    .venv/bin/python bench/bench_synthetic.py --learn         # add the learnability check
    .venv/bin/python bench/bench_synthetic.py --skip-full --repeats 0 --cnn   # small CNN
    .venv/bin/python bench/bench_synthetic.py --skip-full --repeats 0 \
        --contact-sheet docs/img/demo-contact-sheet.png           # redraw the docs picture
    .venv/bin/python bench/bench_synthetic.py --skip-full --repeats 0 --demo   # skin-core demo

Reports, in one run on this machine:

* ``full``: wall time of ``generate_demo_dataset(n=2000, size=256, workers=2)`` (the
  requirement is under 60 s on 2 cores), once.
* ``ratios``: medians of ``--repeats`` runs measured side by side on ``--n`` images:
  ``workers1_over_workers2`` (parallel speed-up on 2 cores) and ``generate_over_floor``
  (generation vs the floor of JPEG-encoding and writing the same number of 256 px images,
  i.e. how much the drawing itself costs on top of the unavoidable I/O).
* ``full.cpu_seconds``: CPU time of the run (all processes); ``wall_if_2_cores_free`` =
  CPU time / 2, the wall time on two otherwise idle cores.
* ``cnn_learnability`` (``--cnn``): a small CNN trained from scratch at 64 px on 1,000 demo
  images (about 2 CPU-minutes), balanced accuracy on held-out lesions.
* ``demo`` (``--demo``): the whole embedded demo (``skin_core.demo.build_demo``, what
  ``skin-core demo`` runs) from scratch in a temporary folder: wall time (issue 8: under
  5 minutes on 2 CPU cores), CPU time of all processes, seconds per step, the load average
  before and after (on a shared machine the wall time is only meaningful with the load), and
  the phenomena the demo must show (members' balanced accuracy, difficult images, enrichment
  of the generator's flags, ``blur_score`` difference, reader accuracy by group).
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
import resource
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


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its reaped children so far."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(out: Path, **kwargs) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    generate_demo_dataset(out, **kwargs)
    return time.perf_counter() - t


def _images(out: Path, ids, side: int) -> np.ndarray:
    import cv2
    from PIL import Image

    return np.stack([
        cv2.resize(np.asarray(Image.open(out / "ISIC_2019_Training_Input" / f"{i}.jpg")),
                   (side, side), interpolation=cv2.INTER_AREA) for i in ids
    ])


def cnn_learnability(tmp: Path, *, n: int = 1000, side: int = 64, epochs: int = 15,
                     seed: int = 0) -> dict[str, float]:
    """A small CNN trained from scratch on one lesion-grouped 80/20 split (about 2 CPU-minutes).

    Four conv blocks (16-32-64-96 channels), AdamW, light flips; balanced accuracy on the
    held-out lesions against the given labels.
    """
    import pandas as pd
    import torch
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold
    from torch import nn

    from skin_core.constants import ISIC2019_CLASSES

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    out = tmp / "cnn"
    shutil.rmtree(out, ignore_errors=True)
    generate_demo_dataset(out, n=n, seed=seed, size=128, workers=2)
    truth = pd.read_csv(out / "generation_truth.csv")
    x = torch.from_numpy(_images(out, truth["image_id"], side)).permute(0, 3, 1, 2).float() / 255
    x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)
    y = torch.tensor([ISIC2019_CLASSES.index(c) for c in truth["label"]])
    groups = truth["lesion_id"].fillna(truth["image_id"]).to_numpy()
    tr, te = next(StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(
        np.zeros(n), y.numpy(), groups))

    def block(i: int, o: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                             nn.MaxPool2d(2))

    model = nn.Sequential(block(3, 16), block(16, 32), block(32, 64), block(64, 96),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                          nn.Linear(96, len(ISIC2019_CLASSES)))
    counts = torch.bincount(y[tr], minlength=len(ISIC2019_CLASSES)).float()
    loss_fn = nn.CrossEntropyLoss(weight=(counts.sum() / counts.clamp(min=1)) ** 0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * (len(tr) // 32 + 1))
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        perm = torch.from_numpy(np.random.default_rng(seed + _).permutation(tr))
        for k in range(0, len(perm), 32):
            idx = perm[k:k + 32]
            xb = x[idx]
            if np.random.default_rng(k).random() < 0.5:
                xb = xb.flip(3)
            opt.zero_grad()
            loss_fn(model(xb), y[idx]).backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        pred = model(x[te]).argmax(1).numpy()
    truth_te = truth.iloc[te]
    return {
        "n_images": n, "side": side, "epochs": epochs, "n_test": int(len(te)),
        "train_seconds": round(time.perf_counter() - t0, 1),
        "chance": 1 / 8,
        "balanced_accuracy": round(float(balanced_accuracy_score(y[te].numpy(), pred)), 4),
        "balanced_accuracy_vs_true_label": round(float(balanced_accuracy_score(
            [ISIC2019_CLASSES.index(c) for c in truth_te["true_label"]], pred)), 4),
    }


def learnability(tmp: Path, *, n: int = 600, seed: int = 0) -> dict[str, float]:
    """Balanced accuracy of logistic regression on 16x16 pixels (lesion-grouped 5-fold CV)."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = tmp / "learn"
    shutil.rmtree(out, ignore_errors=True)
    generate_demo_dataset(out, n=n, seed=seed, size=128, workers=2)
    truth = pd.read_csv(out / "generation_truth.csv")
    x = _images(out, truth["image_id"], 16).reshape(n, -1).astype(np.float32) / 255.0
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


def demo_run(tmp: Path) -> dict[str, object]:
    """Build the embedded demo from scratch in ``tmp`` and report its time and phenomena."""
    from skin_core.demo import build_demo

    root = tmp / "demo_root"
    shutil.rmtree(root, ignore_errors=True)
    load0 = os.getloadavg()
    cpu0 = _cpu_seconds()
    res = build_demo(root)
    cpu = _cpu_seconds() - cpu0
    study = Path(res["study"])

    def load(rel: str) -> dict:
        return json.loads((study / rel).read_text(encoding="utf-8"))

    sig, truth = load("difficulty/significance.json"), load("difficulty/ground_truth_check.json")
    blur = load("difficulty/quality_vs_difficulty.json")["measures"]["blur_score"]
    readers = load("readers/readers.json")
    per_reader = [t for t in readers["tests"] if t["name"].startswith("per-reader")]
    return {
        "seconds": round(float(res["seconds"]), 1),
        "cpu_seconds": round(cpu, 1),
        "load_average_before": [round(v, 2) for v in load0],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "steps": {s["name"]: s["seconds"] for s in res["steps"]},
        "balanced_accuracy": {a: round(m["balanced_accuracy"], 3)
                              for a, m in load("run/metrics.json").items()},
        "difficult": sig["observed_all_wrong"], "expected": round(sig["expected_all_wrong"], 1),
        "log10_p_exact": round(sig["log10_p_value_exact"], 1),
        "enrichment": {k: round(truth[k]["enrichment"], 2)
                       for k in ("is_ambiguous", "is_mislabeled", "is_blurred")},
        "blur_score_cliffs_delta": round(blur["cliffs_delta"]["effect"], 3),
        "blur_score_mann_whitney_p": blur["mann_whitney"]["p_value"],
        "reader_accuracy": {g: readers["groups"][g]["pooled_accuracy"]
                            for g in ("difficult", "control")},
        "per_reader_p": {t["name"]: t["p_value"] for t in per_reader},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="images per ratio run (default 200)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-full", action="store_true", help="skip the 2,000-image run")
    ap.add_argument("--learn", action="store_true", help="add the learnability check")
    ap.add_argument("--cnn", action="store_true", help="add the small-CNN learnability check")
    ap.add_argument("--demo", action="store_true",
                    help="time the whole embedded demo (skin-core demo) and report its phenomena")
    ap.add_argument("--contact-sheet", type=Path, metavar="PNG",
                    help="also write a contact sheet of 24 demo images to PNG")
    args = ap.parse_args()

    result: dict[str, object] = {"cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory(prefix="bench_synthetic_") as tmp_s:
        tmp = Path(tmp_s)
        if not args.skip_full:
            load0 = os.getloadavg()[0]
            cpu0 = _cpu_seconds()
            secs = _timed(tmp / "full", n=2000, seed=0, size=256, workers=2)
            cpu = _cpu_seconds() - cpu0
            result["full"] = {
                "n": 2000, "size": 256, "workers": 2, "seconds": round(secs, 2),
                "images_per_second": round(2000 / secs, 1),
                "cpu_seconds": round(cpu, 1),
                # what the wall time would be with both cores free: CPU time / 2
                "wall_if_2_cores_free": round(cpu / 2, 1),
                "load_average_at_start": round(load0, 2),
            }
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
        if args.cnn:
            result["cnn_learnability"] = cnn_learnability(tmp)
        if args.contact_sheet:
            result["contact_sheet"] = contact_sheet(args.contact_sheet, tmp)
        if args.demo:
            result["demo"] = demo_run(tmp)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
