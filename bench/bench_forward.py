"""Batch forward passes of the served pipeline on the CPU: glibc's default allocator vs tuned.

``Predictor.forward_batches`` (what ``skin-core index``, ``calibrate`` and ``evaluate`` run
over thousands of images) and ``iter_predict`` tune the process's allocator on the CPU
(:func:`skin_core.models.device.tune_cpu_allocator`). This bench runs the same forward pass
(every fold model, pre-logits features and fold probabilities, as the index does; one view, or
four with ``--tta``) over ``--n`` images in child processes, alternating glibc's defaults and
the tuned allocator, ``--repeats`` times each, and prints per run the wall time, forward passes
per second (images x fold models x views), user and system CPU seconds and peak RSS, then the
median ratio.

Run: ``.venv/bin/python bench/bench_forward.py --bundle studies/ham/bundle
--images ../shared/data/ham10000 --n 384 --repeats 3 [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _child(args: argparse.Namespace) -> None:
    if args.allocator == "default":
        # Predictor would tune it: make that a no-op so glibc keeps its defaults.
        from skin_core.models import device

        device._ALLOCATOR_TUNED = True
    from skin_core.predict import Predictor

    paths = sorted(str(p) for p in Path(args.images).rglob("*.jpg"))[:args.n]
    pred = Predictor(args.bundle, device="cpu")
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    n = 0
    for fb in pred.forward_batches(paths, batch_size=args.batch_size, tta=args.tta,
                                   features=True, fold_probs=True):
        n += len(fb.items)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    views = 4 if args.tta else 1
    print(json.dumps({
        "allocator": args.allocator, "images": n, "members": len(pred.bundle.members),
        "views": views, "wall_s": wall,
        "forwards_per_s": n * len(pred.bundle.members) * views / wall,
        "user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime,
        "peak_rss_mb": r1.ru_maxrss / 1024}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--images", required=True, help="folder of .jpg images (searched recursively)")
    p.add_argument("--n", type=int, default=384)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--tta", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--allocator", choices=("default", "tuned"), default=None,
                   help=argparse.SUPPRESS)  # child mode
    args = p.parse_args()
    if args.allocator:
        _child(args)
        return
    runs: list[dict] = []
    base = [sys.executable, __file__, "--bundle", args.bundle, "--images", args.images,
            "--n", str(args.n), "--batch-size", str(args.batch_size)] + (
        ["--tta"] if args.tta else [])
    for _ in range(args.repeats):
        for alloc in ("default", "tuned"):
            out = subprocess.run(base + ["--allocator", alloc], check=True,
                                 capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
    ratios = [d["wall_s"] / t["wall_s"] for d, t in zip(runs[::2], runs[1::2], strict=True)]
    summary = {"speedup_median": statistics.median(ratios), "speedups": ratios,
               "runs": runs}
    print(f"tuned allocator: {summary['speedup_median']:.2f}x faster (median of "
          f"{len(ratios)}; {', '.join(f'{r:.2f}' for r in ratios)})")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
