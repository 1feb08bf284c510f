"""Evaluation benchmark: ``skin-core evaluate`` against ``skin-core predict`` on the same images.

Target: evaluate (every figure with a 1,000-resample lesion bootstrap, subgroups, the stability
subsample of 200 images x 4 copies, the three output files) costs at most 1.2 x predict (the
same bundle, images, batch size, decoding threads and device, writing its CSV).

Both verbs run as fresh processes (``python -m skin_core ...``, imports and bundle loading
included), interleaved, ``--repeats`` times; per repeat the ratio evaluate / predict of the wall
time and of the CPU time (user + system of the child, every thread) is taken, and the medians
are reported. The CPU ratio is the steadier figure on a shared machine. Separately, in this
process: the bootstrap alone (:func:`skin_core.evaluation.figures.evaluation_figures` on the
written predictions.csv, 1,000 resamples): overall figures only, and with every subgroup and
metadata variant (median of ``--repeats``).

Defaults: the tests' tiny bundle (tests/test_predict.py ``build_trained``: 2 architectures x 2
folds at 32 px, meta-classifiers with and without metadata), built once in ``--work``; the
dataset is HAM10000 (``SKIN_CORE_HAM10000_DIR``, 10,015 images, ``--class-map akiec=AK``) when
set, else a ``--n``-image synthetic demo generated in ``--work``.

Run: ``.venv/bin/python bench/bench_evaluate.py [--repeats 3] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bundle(work: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_predict import build_trained

    return build_trained(work / "trained")["bundle"]


def _dataset(args: argparse.Namespace) -> tuple[str, str | None]:
    if args.dataset:
        return args.dataset, args.class_map
    ham = os.environ.get("SKIN_CORE_HAM10000_DIR")
    if ham and Path(ham).is_dir():
        return f"ham10000:{ham}", "akiec=AK"
    from skin_core.data.synthetic import generate_demo_dataset

    demo = args.work / f"demo{args.n}"
    if not (demo / "ISIC_2019_Training_GroundTruth.csv").is_file():
        generate_demo_dataset(demo, n=args.n, seed=3, size=96, workers=1)
    return f"isic2019:{demo}", None


def _run(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system of the child and its threads) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])}... failed ({proc.returncode}):\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _bootstrap_seconds(out: Path, bundle: Path, repeats: int) -> dict[str, float]:
    import numpy as np
    import pandas as pd

    from skin_core.evaluation.bootstrap import lesion_codes
    from skin_core.evaluation.evaluate import SUBGROUP_EXTRA
    from skin_core.evaluation.figures import Outcomes, evaluation_figures, subgroup_columns

    classes = json.loads((bundle / "bundle.json").read_text())["classes"]
    df = pd.read_csv(out / "predictions.csv", dtype={"image_id": str, "lesion_id": str})
    df = df[df["error"].isna()].reset_index(drop=True)
    ci = {c: i for i, c in enumerate(classes)}
    o = Outcomes(y=df["label"].map(ci).to_numpy(), pred=df["pred"].map(ci).to_numpy(),
                 probs=df[[f"prob_{c}" for c in classes]].to_numpy(),
                 ens_pred=df["ensemble_pred"].map(ci).to_numpy(),
                 sets=np.array([[c in str(s).split("|") for c in classes]
                                for s in df["prediction_set"]]),
                 refer=df["refer"].to_numpy(bool),
                 codes=lesion_codes(df["lesion_id"], df["image_id"]))
    groups = subgroup_columns(df, SUBGROUP_EXTRA)
    mel = classes.index("MEL") if "MEL" in classes else None
    times: dict[str, list[float]] = {"overall": [], "all_groups": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        evaluation_figures(o, classes, melanoma=mel, n_resamples=1000, seed=0)
        times["overall"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        evaluation_figures(o, classes, melanoma=mel, n_resamples=1000, seed=0, groups=groups,
                           variants={"none": o.pred})
        times["all_groups"].append(time.perf_counter() - t0)
    return {"n_images": len(o), "n_lesions": o.n_lesions,
            "n_subgroups": sum(v.nunique() for v in groups.values()),
            **{f"{k}_s": statistics.median(v) for k, v in times.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=None)
    p.add_argument("--dataset", default=None, help="dataset spec (default: HAM10000 or demo)")
    p.add_argument("--class-map", default=None)
    p.add_argument("--n", type=int, default=10_000, help="synthetic images without HAM10000")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work", type=Path, default=Path("/tmp/skin_core_bench_evaluate"))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()[0]
    bundle = args.bundle or _bundle(args.work)
    spec, cmap = _dataset(args)

    from skin_core.data.tables import load_dataset

    paths = load_dataset(spec).table["path"].tolist()
    listing = args.work / "images.txt"
    listing.write_text("\n".join(paths) + "\n")
    py = [sys.executable, "-m", "skin_core"]
    common = ["--bundle", str(bundle), "--device", "cpu", "--batch-size", "32", "--workers", "2"]
    predict = [*py, "predict", *common, "--list", str(listing), "--out",
               str(args.work / "predict.csv")]
    out = args.work / "evaluation"
    evaluate = [*py, "evaluate", *common, "--dataset", spec, "--out", str(out), "--json"]
    if cmap:
        evaluate += ["--class-map", cmap]
    rows = []
    for i in range(args.repeats):
        pw, pc = _run(predict)
        ew, ec = _run(evaluate)
        rows.append({"predict_wall_s": pw, "predict_cpu_s": pc, "evaluate_wall_s": ew,
                     "evaluate_cpu_s": ec, "wall_ratio": ew / pw, "cpu_ratio": ec / pc})
        print(f"repeat {i + 1}: predict {pw:.1f} s ({pc:.1f} CPU s), evaluate {ew:.1f} s "
              f"({ec:.1f} CPU s): ratio {ew / pw:.2f} wall, {ec / pc:.2f} CPU", file=sys.stderr)
    ev = json.loads((out / "evaluation.json").read_text())
    result = {
        "bundle": str(bundle), "dataset": spec, "n_images": len(paths),
        "repeats": args.repeats, "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_start": load_start, "load_average_end": os.getloadavg()[0],
        **{f"median_{k}": statistics.median(r[k] for r in rows) for k in rows[0]},
        "evaluate_seconds_last": ev.get("seconds"),
        "bootstrap": _bootstrap_seconds(out, Path(bundle), args.repeats),
        "runs": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
