"""Single-image latency of the second opinion: heatmap + similar cases + OOD, against a
reference checkout's ``predict(heatmap=True)`` on the same bundle.

Each side runs in its own process (the reference from ``--ref-src``, e.g. a ``git worktree``
of the commit before the change; this checkout otherwise), alternating ``--rounds`` times; in
each process the Predictor is loaded and warmed up, then ``--calls`` predictions of one image
are timed and their median kept. The ratio is the median over rounds of new / reference.
Target (issue 14): <= 1.3.

Run::

    git worktree add /tmp/ref bb7a95b
    .venv/bin/python bench/bench_second_opinion.py --bundle models/demo --ref-src /tmp/ref
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, statistics, sys, time
import torch
torch.set_num_threads({threads})
from skin_core.predict import Predictor
p = Predictor({bundle!r}, device="cpu")
kw = dict(age=55, sex="female", site="lower extremity", heatmap=True)
if {similar}:
    kw["similar"] = {similar}
for _ in range(3):
    p.predict({image!r}, **kw)
ts = []
for _ in range({calls}):
    t0 = time.perf_counter(); r = p.predict({image!r}, **kw); ts.append(time.perf_counter() - t0)
print(json.dumps({{"median_ms": 1e3 * statistics.median(ts),
                  "similar": len(getattr(r, "similar", ()) or ()),
                  "ood": bool(getattr(r, "ood", None))}}))
"""


def run_side(src: Path, bundle: str, image: str, *, similar: int, calls: int,
             threads: int) -> dict:
    code = CHILD.format(bundle=bundle, image=image, similar=similar, calls=calls,
                        threads=threads)
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=src, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--ref-src", required=True, help="reference checkout (the code before)")
    ap.add_argument("--image", default=None, help="default: the demo's first image")
    ap.add_argument("--similar", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    here = Path(__file__).resolve().parents[1]
    bundle = str(Path(args.bundle).resolve())
    image = args.image or str(sorted((here / "data/demo/ISIC_2019_Training_Input")
                                     .glob("*.jpg"))[0])
    ref, new, ratios = [], [], []
    for _ in range(args.rounds):
        r = run_side(Path(args.ref_src).resolve(), bundle, image, similar=0, calls=args.calls,
                     threads=args.threads)
        n = run_side(here, bundle, image, similar=args.similar, calls=args.calls,
                     threads=args.threads)
        ref.append(r["median_ms"])
        new.append(n["median_ms"])
        ratios.append(n["median_ms"] / r["median_ms"])
    res = {"reference_heatmap_ms": statistics.median(ref),
           "new_heatmap_similar_ood_ms": statistics.median(new),
           "ratio": statistics.median(ratios), "ratios": ratios, "target": 1.3,
           "similar": args.similar, "threads": args.threads, "load_avg": os.getloadavg()[0],
           "bundle": bundle, "image": image}
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
