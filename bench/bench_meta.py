"""Benchmark: nested lesion-grouped CV of the meta-classifier at ISIC 2019 size.

Target (issue 6): 25,331 images x 40 probability features (5 models x 8 classes) + metadata,
the whole ``evaluate_meta`` (3 tuned variants x 5 outer folds, the metadata model trained on
the rows plus ``--masked-copies`` masked copies, calibration, conformal, two referral models,
the two final predictors, 1000 lesion-grouped bootstrap resamples, the eight missing-metadata
scores) in under 3 minutes on 2 cores.

Because the machine is shared, the script reports the process CPU time next to the wall time
(with ``--n-jobs 1`` the CPU time is what one dedicated core would need) and times a *floor*
side by side: one plain LightGBM fit (100 trees, 7 leaves) on the same full feature matrix,
the median of ``--repeats`` runs before and after; the report gives the ratio
evaluate / floor.

Run::

    .venv/bin/python bench/bench_meta.py [--n 25331] [--repeats 3] [--n-resamples 1000]
                                         [--masked-copies 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=25331, help="images (default ISIC 2019 size)")
    parser.add_argument("--repeats", type=int, default=3, help="floor repeats (median)")
    parser.add_argument("--n-resamples", type=int, default=1000)
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--masked-copies", type=int, default=1)
    args = parser.parse_args()

    import lightgbm as lgb

    from skin_core.meta import build_features, evaluate_meta, oof_to_wide
    from skin_core.meta.synthetic import make_synthetic_oof

    warnings.simplefilter("ignore")
    oof, meta = make_synthetic_oof(args.n, seed=args.seed)
    wide = oof_to_wide(oof)
    X, spec = build_features(wide, meta)
    y = wide.label_index()
    n_prob = sum(c.startswith("p__") and "__mean__" not in c for c in spec.columns)

    def floor() -> float:
        t = time.perf_counter()
        lgb.LGBMClassifier(n_estimators=100, num_leaves=7, n_jobs=args.n_jobs, verbose=-1,
                           deterministic=True, force_row_wise=True, max_bin=63).fit(X, y)
        return time.perf_counter() - t

    floors = [floor() for _ in range(args.repeats)]
    t = time.perf_counter()
    cpu = time.process_time()
    result = evaluate_meta(oof, meta, n_resamples=args.n_resamples, seed=args.seed,
                           n_jobs=args.n_jobs, masked_copies=args.masked_copies, progress=True)
    elapsed = time.perf_counter() - t
    cpu = time.process_time() - cpu
    floors += [floor() for _ in range(args.repeats)]
    fl = statistics.median(floors)
    rep = result.report
    mm = rep["missing_metadata"]
    out = {
        "n_images": args.n,
        "n_probability_features": n_prob,
        "n_features_total": len(spec.columns),
        "evaluate_meta_wall_s": round(elapsed, 1),
        "evaluate_meta_cpu_s": round(cpu, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "floor_single_fit_s_median": round(fl, 2),
        "ratio_evaluate_over_floor": round(elapsed / fl, 1),
        "under_3_minutes_wall": elapsed < 180,
        "under_3_minutes_cpu": cpu < 180,
        "balanced_accuracy": round(rep["balanced_accuracy"], 4),
        "baselines": {k: round(v, 4) for k, v in rep["baselines"].items()},
        "difference_vs_mean_ensemble": {
            "effect": round(rep["difference_vs_mean_ensemble"]["effect"], 4),
            "ci": rep["difference_vs_mean_ensemble"]["ci"],
        },
        "conformal_coverage": round(rep["conformal"]["coverage"], 4),
        "mean_set_size": round(rep["conformal"]["mean_set_size"], 3),
        "ece_before_after": [round(rep["calibration"]["ece_before"], 4),
                             round(rep["calibration"]["ece_after"], 4)],
        "referral_auroc": rep["referral"].get("auroc"),
        "masked_copies": args.masked_copies,
        "missing_metadata_balanced_accuracy": {
            k: round(v["balanced_accuracy"], 4) for k, v in mm["subsets"].items()},
        "all_missing_with_metadata_model": round(
            mm["all_missing_with_metadata_model"]["balanced_accuracy"], 4),
        "missing_metadata_ok": mm["ok"],
        "num_leaves_chosen": {v: [t["num_leaves"] for t in rows]
                              for v, rows in rep["tuning"].items()},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
