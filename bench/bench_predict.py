"""Prediction benchmark: end-to-end costs as ratios against the members' raw forward passes.

Measured side by side in one run, interleaved call by call; each ratio is computed within a
repeat and the median over ``--repeats`` repeats is reported (absolute times as medians too):

* **single**: ``Predictor.predict(path, age, sex, site)`` (decode, preprocess, every member,
  meta-classifier, conformal set, quality, referral; no heatmap) against the *floor*: the summed
  time of every member's forward pass (``inference_mode``) on an already prepared ``1 x 3 x S x S``
  tensor. Target ratio <= 1.3.
* **heatmap**: the same with ``heatmap=True`` against floor + one backward pass of one member
  (the backward of the top logit through that whole member, timed on its own). Reported both
  against ``floor + backward`` and against the allowance ``1.3 x floor + backward`` (the
  single-image overhead allowed on top, the target's reading), plus the heatmap's own extra
  time over the plain prediction as a share of the backward (target <= 1).
* **batch**: ``iter_predict`` over ``--n-batch`` image files (batch 64, ``--workers`` decoding
  threads) against the floor throughput: the same batches' forward passes through every member
  on prepared tensors (the same memory layout as the predictor's inputs). Target >= 0.8. Also
  the CPU ratio (floor CPU / end-to-end CPU, all threads of the process): the share of the
  work that is forward passes, an upper bound of the wall ratio once every core is busy.
* **cold load**: ``Predictor(bundle)`` (verify every sha256, build and load every member, load
  the LightGBM models) in a fresh process, after imports; target < 3 s. Warm predictions load
  nothing (checked in ``tests/test_predict.py``).

Without ``--bundle``, a demo-like bundle is trained first in ``--work`` (kept for reruns):
3 small architectures x 3 folds x 1 epoch on a 500-image synthetic demo at 64 px, with the
meta-classifiers with and without metadata and the training quality reference.

Run: ``.venv/bin/python bench/bench_predict.py [--repeats 7] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ARCHS = ("test_resnet", "test_efficientnet", "mobilenetv3_small_050")


def build_demo_bundle(work: Path, n: int = 500) -> Path:
    import pandas as pd

    from skin_core.analysis.quality import compute_quality
    from skin_core.data.synthetic import generate_demo_dataset
    from skin_core.data.tables import load_dataset
    from skin_core.meta import evaluate_meta, save_predictor
    from skin_core.models.bundle import build_bundle
    from skin_core.training import TrainConfig, train_run

    bundle = work / "bundle"
    if (bundle / "bundle.json").is_file():
        return bundle
    t0 = time.perf_counter()
    if not (work / "demo" / "ISIC_2019_Training_GroundTruth.csv").is_file():
        generate_demo_dataset(work / "demo", n=n, seed=0, size=96, workers=1)
    ds = load_dataset(f"isic2019:{work / 'demo'}")
    cfg = TrainConfig(archs=ARCHS, folds=3, epochs=1, img_size=64, batch_size=32, lr=3e-3,
                      cache_dir=str(work / "cache"), cache_workers=1, patience=0)
    if not (work / "run" / "oof.csv").is_file():
        train_run(ds, out=work / "run", config=cfg, resume=(work / "run").exists())
    oof = pd.read_csv(work / "run" / "oof.csv", dtype={"image_id": str})
    md = ds.table.copy()
    md["lesion_id"] = md["lesion_id"].astype(object).where(md["lesion_id"].notna(),
                                                           md["image_id"])
    save_predictor(evaluate_meta(oof, md, classes=ds.classes, n_resamples=0).predictor,
                   work / "meta")
    save_predictor(evaluate_meta(oof, None, classes=ds.classes, n_resamples=0).predictor,
                   work / "meta_nometa")
    build_bundle(work / "run", out=bundle, meta=work / "meta",
                 meta_without_metadata=work / "meta_nometa",
                 quality=compute_quality(ds.table, workers=1), overwrite=True)
    print(f"built the demo bundle in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return bundle


CPU: list[float] = []  # process CPU seconds of each _timeit call, in call order


def _timeit(fn, repeats: int) -> list[float]:
    """Wall seconds of each call; the process CPU seconds go to ``CPU`` (less sensitive to
    other processes on a shared machine, but blind to overlap between threads)."""
    out = []
    for _ in range(repeats):
        c = time.process_time()
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
        CPU.append(time.process_time() - c)
    return out


def cold_load(bundle: Path, repeats: int) -> list[float]:
    code = ("import time, torch, timm, lightgbm, safetensors.torch; "
            "from skin_core.predict import Predictor; t=time.perf_counter(); "
            f"Predictor({str(bundle)!r}, device='cpu'); print(time.perf_counter()-t)")
    times = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                             text=True)
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return times


def main(argv: list[str] | None = None) -> dict:
    import numpy as np
    import torch

    from skin_core.predict import Predictor
    from skin_core.training.augment import to_float

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=None, help="existing bundle (default: build a demo one)")
    ap.add_argument("--work", default="/tmp/skin_core_bench_predict")
    ap.add_argument("--images", default=None, help="folder of images (default: the demo's)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--n-batch", type=int, default=500)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--workers", type=int, default=2, help="decoding threads of the batch run")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core machine 2 OpenMP threads "
                    "mostly wait for each other)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()

    work = Path(args.work)
    bundle = Path(args.bundle) if args.bundle else build_demo_bundle(work)
    img_dir = Path(args.images) if args.images else work / "demo" / "ISIC_2019_Training_Input"
    files = sorted(str(p) for p in img_dir.glob("*.jpg"))
    batch_files = (files * (args.n_batch // max(len(files), 1) + 1))[:args.n_batch]
    pred = Predictor(bundle, device="cpu")
    members = pred._members  # (spec, preprocess config, network)
    hm_net = members[pred._heatmap_index][2]
    one = files[0]
    item = pred.prepare(one)

    def prepared(batch_items):
        xs = {}
        for _, pre, _ in members:
            key = (pre.input_size, pre.crop, tuple(pre.mean), tuple(pre.std))
            if key not in xs:
                u8 = torch.from_numpy(np.stack([it.inputs[(pre.input_size, pre.crop)]
                                                for it in batch_items]))
                xs[key] = to_float(u8, pre.mean, pre.std)
        return xs

    x1 = prepared([item])

    def floor_single():
        with torch.inference_mode():
            for _, pre, net in members:
                net(x1[(pre.input_size, pre.crop, tuple(pre.mean), tuple(pre.std))])

    hm_pre = members[pred._heatmap_index][1]
    x_hm = x1[(hm_pre.input_size, hm_pre.crop, tuple(hm_pre.mean), tuple(hm_pre.std))]

    def backward_only() -> float:
        logits = hm_net(x_hm)
        score = logits[0, int(logits.argmax())]
        t = time.perf_counter()
        score.backward()
        dt = time.perf_counter() - t
        hm_net.zero_grad(set_to_none=True)
        return dt

    def single():
        pred.predict(one, age=55, sex="male", site="posterior torso")

    def single_heatmap():
        pred.predict(one, age=55, sex="male", site="posterior torso", heatmap=True)

    # warm-up
    for f in (floor_single, single, single_heatmap):
        f()
    backward_only()
    # Interleaved one call each per repeat; ratios are taken within a repeat (the load of a
    # shared machine drifts between repeats), then the median over repeats is reported.
    t_floor, t_single, t_heat, t_bwd = [], [], [], []
    c_floor, c_single, c_heat = [], [], []
    for _ in range(args.repeats):
        t_floor += _timeit(floor_single, 1)
        c_floor.append(CPU[-1])
        t_single += _timeit(single, 1)
        c_single.append(CPU[-1])
        t_heat += _timeit(single_heatmap, 1)
        c_heat.append(CPU[-1])
        t_bwd.append(backward_only())
    med = statistics.median
    floor, e2e, heat, bwd = med(t_floor), med(t_single), med(t_heat), med(t_bwd)
    r_single = med([s / f for s, f in zip(t_single, t_floor, strict=True)])
    r_heat = med([h / (f + b) for h, f, b in zip(t_heat, t_floor, t_bwd, strict=True)])
    r_heat_allow = med([h / (1.3 * f + b) for h, f, b in zip(t_heat, t_floor, t_bwd,
                                                             strict=True)])
    extra = med([h - s for h, s in zip(t_heat, t_single, strict=True)])
    cpu_single = med(c_single) / med(c_floor)
    cpu_heat_extra = med(c_heat) - med(c_single)

    # batch throughput
    bs = 64
    prepared_batches = []
    for s in range(0, len(batch_files), bs):
        prepared_batches.append(prepared([pred.prepare(f) for f in batch_files[s:s + bs]]))

    def floor_batch():
        with torch.inference_mode():
            for xs in prepared_batches:
                for _, pre, net in members:
                    net(xs[(pre.input_size, pre.crop, tuple(pre.mean), tuple(pre.std))])

    def e2e_batch():
        n = sum(1 for r in pred.iter_predict(batch_files, batch_size=bs, workers=args.workers)
                if r.ok)
        assert n == len(batch_files)

    b_floor, b_e2e, cb_floor, cb_e2e = [], [], [], []
    for _ in range(max(3, args.repeats // 4)):
        b_floor += _timeit(floor_batch, 1)
        cb_floor.append(CPU[-1])
        b_e2e += _timeit(e2e_batch, 1)
        cb_e2e.append(CPU[-1])
    n = len(batch_files)
    thr_floor, thr_e2e = n / med(b_floor), n / med(b_e2e)
    r_batch = med([f / e for f, e in zip(b_floor, b_e2e, strict=True)])
    r_batch_cpu = med([f / e for f, e in zip(cb_floor, cb_e2e, strict=True)])

    cold = cold_load(bundle, 3)
    res = {
        "bundle": str(bundle), "n_members": len(members),
        "archs": sorted({s.arch for s, _, _ in members}),
        "input_size": sorted({p.input_size for _, p, _ in members}),
        "torch_threads": torch.get_num_threads(), "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "load_average_1min": {"start": load_start[0], "end": os.getloadavg()[0]},
        "single": {"floor_ms": floor * 1e3, "end_to_end_ms": e2e * 1e3,
                   "ratio": r_single, "ratio_of_medians": e2e / floor,
                   "cpu_floor_ms": med(c_floor) * 1e3, "cpu_end_to_end_ms": med(c_single) * 1e3,
                   "cpu_ratio": cpu_single, "target": "<= 1.3"},
        "heatmap": {"end_to_end_ms": heat * 1e3, "backward_ms": bwd * 1e3,
                    "budget_ms": (floor + bwd) * 1e3, "ratio_to_floor_plus_backward": r_heat,
                    "ratio_to_allowance": r_heat_allow,
                    "extra_over_plain_ms": extra * 1e3,
                    "extra_over_plain_vs_backward": extra / bwd,
                    "cpu_extra_over_plain_ms": cpu_heat_extra * 1e3,
                    "target": "<= floor + one backward (1.3 x floor + backward with the "
                              "single-image allowance)"},
        "batch": {"n_images": n, "batch_size": bs, "decode_workers": args.workers,
                  "floor_img_s": thr_floor,
                  "end_to_end_img_s": thr_e2e, "ratio": r_batch,
                  "cpu_floor_s": med(cb_floor), "cpu_end_to_end_s": med(cb_e2e),
                  "cpu_ratio": r_batch_cpu,
                  "target": ">= 0.8"},
        "cold_load_s": {"median": med(cold), "runs": cold, "target": "< 3"},
    }
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
