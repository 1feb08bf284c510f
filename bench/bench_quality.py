"""Benchmark ``skin-core quality`` against a bare decode and cleanvision's blurry check.

Side by side in one run, interleaved, median of ``--repeats`` (>= 3) runs each, on the same
``--n`` real HAM10000 files with the same worker count:

- ``decode``: Pillow ``Image.open(path).load()`` of every file (the floor), in the same
  process pool machinery as ``compute_quality``;
- ``quality``: :func:`skin_core.analysis.quality.compute_quality` (what ``skin-core quality``
  runs; the CLI adds only start-up and the CSV write, timed separately as ``quality_cli``);
- ``cleanvision``: ``Imagelab(filepaths=...).find_issues({"blurry": {}}, n_jobs=workers)``.

Also measures blur detection on ``--n-auc`` images with even ISIC ids blurred in memory with a
Gaussian (sigma 1, 2, 4 px): AUROC of ``blur_score`` and of cleanvision's ``blurry_score``
(written as PNG so cleanvision sees the same pixels), originals vs blurred.

    SKIN_CORE_HAM10000_DIR=../shared/data/ham10000 .venv/bin/python bench/bench_quality.py \
        --n 2000 --repeats 3 --json bench/bench_quality.json
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from skin_core.analysis.quality import compute_quality, default_workers, run_chunked
from skin_core.io import atomic_write_json


def _decode_chunk(args: tuple[int, list[str]]) -> tuple[int, None]:
    from PIL import Image

    start, paths = args
    for p in paths:
        with Image.open(p) as img:
            img.load()
    return start, None


def _cpu() -> float:
    """CPU seconds of this process and of its finished (waited-for) descendants."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, *args) -> tuple[float, float]:
    """``(wall seconds, CPU seconds)`` of ``fn(*args)`` including its worker processes."""
    c0, t0 = _cpu(), time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0, _cpu() - c0


def run_decode(files: list[str], workers: int) -> None:
    run_chunked(_decode_chunk, files, (), workers=workers, progress=False, desc="decode")


def run_quality(files: list[str], workers: int) -> None:
    df = compute_quality(files, workers=workers)
    assert (df["error"] == "").all()


def run_quality_cli(folder: str, workers: int, out: str) -> None:
    subprocess.run([sys.executable, "-m", "skin_core", "quality", "--images", folder,
                    "--out", out, "--workers", str(workers)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


_CLEANVISION_PROCESS = """
import contextlib, io, sys
from cleanvision import Imagelab
files = sys.argv[2:]
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    Imagelab(filepaths=files).find_issues({"blurry": {}}, n_jobs=int(sys.argv[1]), verbose=False)
"""


def run_cleanvision_process(files: list[str], workers: int) -> None:
    """cleanvision's blurry check in a fresh process, like-for-like with ``quality_cli``."""
    subprocess.run([sys.executable, "-c", _CLEANVISION_PROCESS, str(workers), *files],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cleanvision_scores(files: list[str], workers: int) -> np.ndarray:
    import contextlib
    import io

    from cleanvision import Imagelab

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        lab = Imagelab(filepaths=files)
        lab.find_issues({"blurry": {}}, n_jobs=workers, verbose=False)
    return lab.issues.loc[files, "blurry_score"].to_numpy(dtype=float)




def blur_aurocs(root: Path, n: int, seed: int, workers: int) -> dict:
    from sklearn.metrics import roc_auc_score

    from skin_core.data.images import read_image

    files = sorted((root / "images").glob("ISIC_*.jpg"))
    files = [p for p in files if int(re.sub(r"\D", "", p.stem)) % 2 == 0]
    rng = np.random.default_rng(seed)
    pick = [files[i] for i in rng.choice(len(files), n, replace=False)]
    out: dict = {"n_images": n, "seed": seed, "ours": {}, "cleanvision": {}, "ours_is_blurry": {}}
    with tempfile.TemporaryDirectory() as tmp:
        paths: dict[float, list[str]] = {s: [] for s in (0.0, 1.0, 2.0, 4.0)}
        for p in pick:
            rgb = read_image(p)
            for s in paths:
                im = rgb if s == 0 else cv2.GaussianBlur(rgb, (0, 0), s)
                dst = os.path.join(tmp, f"{p.stem}_s{s:g}.png")
                cv2.imwrite(dst, cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
                paths[s].append(dst)
        allp = [q for s in paths for q in paths[s]]
        ours = compute_quality(allp, workers=workers).set_index("image_id")
        cv = dict(zip(allp, cleanvision_scores(allp, workers), strict=True))
        for s in (1.0, 2.0, 4.0):
            y = np.r_[np.ones(n), np.zeros(n)]
            ids = [Path(q).stem for q in paths[0.0] + paths[s]]
            out["ours"][f"sigma{s:g}"] = float(roc_auc_score(y, ours.loc[ids, "blur_score"]))
            out["cleanvision"][f"sigma{s:g}"] = float(
                roc_auc_score(y, [cv[q] for q in paths[0.0] + paths[s]]))
        for s in paths:
            ids = [Path(q).stem for q in paths[s]]
            out["ours_is_blurry"][f"sigma{s:g}"] = float(ours.loc[ids, "is_blurry"].mean())
    return out


def demo_truth_check(n: int, seed: int, workers: int) -> dict:
    """Precision / recall of ``is_blurry`` against the demo generator's ``is_blurred``."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from skin_core.data.synthetic import generate_demo_dataset

    with tempfile.TemporaryDirectory() as tmp:
        generate_demo_dataset(tmp, n=n, seed=seed, size=256, workers=workers)
        truth = pd.read_csv(os.path.join(tmp, "generation_truth.csv"), dtype={"image_id": str})
        q = compute_quality(os.path.join(tmp, "ISIC_2019_Training_Input"), workers=workers)
    m = truth.merge(q, on="image_id", validate="one_to_one")
    blurred = m["is_blurred"].astype(bool).to_numpy()
    flagged = m["is_blurry"].astype(bool).to_numpy()
    tp = int((blurred & flagged).sum())
    out = {
        "n_images": n, "seed": seed, "size": 256, "n_blurred": int(blurred.sum()),
        "n_flagged": int(flagged.sum()), "true_positives": tp,
        "precision": tp / max(1, int(flagged.sum())), "recall": tp / max(1, int(blurred.sum())),
        "auroc_blur_score": float(roc_auc_score(blurred, -m["blur_score"])),
        "recall_by_sigma": {f"{s:g}": float(g["is_blurry"].astype(bool).mean())
                            for s, g in m[blurred].groupby("blur_sigma")},
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--n-auc", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-cleanvision", action="store_true")
    ap.add_argument("--demo-n", type=int, default=0,
                    help="also check is_blurry against a demo dataset of this many images")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    root = Path(os.environ.get("SKIN_CORE_HAM10000_DIR", "../shared/data/ham10000"))
    all_files = sorted(str(p) for p in (root / "images").glob("ISIC_*.jpg"))
    rng = np.random.default_rng(args.seed)
    files = sorted(all_files[i] for i in rng.choice(len(all_files), args.n, replace=False))
    names = ["decode", "quality", "quality_cli"] + ([] if args.skip_cleanvision
                                                    else ["cleanvision", "cleanvision_process"])
    times: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "images")
        os.mkdir(folder)
        for f in files:
            os.symlink(f, os.path.join(folder, os.path.basename(f)))
        for f in files:  # warm the page cache once for everybody
            Path(f).read_bytes()
        jobs = {
            "decode": (run_decode, files, args.workers),
            "quality": (run_quality, files, args.workers),
            "quality_cli": (run_quality_cli, folder, args.workers, os.path.join(tmp, "q.csv")),
            "cleanvision": (cleanvision_scores, files, args.workers),
            "cleanvision_process": (run_cleanvision_process, files, args.workers),
        }
        for r in range(args.repeats):
            for k in names:
                wall, cpu_s = timed(*jobs[k])
                times[k].append(wall)
                cpu[k].append(cpu_s)
            print(f"repeat {r}: " + ", ".join(f"{k} {times[k][-1]:.2f}s ({cpu[k][-1]:.2f} cpu)"
                                              for k in names), file=sys.stderr)
    med = {k: float(np.median(v)) for k, v in times.items()}
    med_cpu = {k: float(np.median(v)) for k, v in cpu.items()}
    report = {
        "n_images": args.n, "workers": args.workers, "repeats": args.repeats,
        "load_average": os.getloadavg(),
        "seconds": times, "cpu_seconds": cpu, "median_seconds": med,
        "median_cpu_seconds": med_cpu,
        "images_per_second": {k: args.n / v for k, v in med.items()},
        "quality_over_decode": med["quality"] / med["decode"],
        "quality_cli_over_decode": med["quality_cli"] / med["decode"],
        "quality_over_decode_cpu": med_cpu["quality"] / med_cpu["decode"],
    }
    if not args.skip_cleanvision:
        report["speedup_vs_cleanvision"] = med["cleanvision"] / med["quality"]
        report["speedup_cli_vs_cleanvision"] = med["cleanvision"] / med["quality_cli"]
        # both as whole processes (interpreter start-up and imports on both sides)
        report["speedup_cli_vs_cleanvision_process"] = (
            med["cleanvision_process"] / med["quality_cli"])
        report["speedup_vs_cleanvision_cpu"] = med_cpu["cleanvision"] / med_cpu["quality"]
    if args.n_auc:
        report["blur_auroc"] = blur_aurocs(root, args.n_auc, args.seed, args.workers)
    if args.demo_n:
        report["demo_ground_truth"] = demo_truth_check(args.demo_n, args.seed, args.workers)
    from skin_core.io import to_json

    print(to_json(report))
    if args.json:
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
