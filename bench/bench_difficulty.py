"""Benchmark: difficulty + exact test + 10,000 permutations on 25,331 images x 5 models.

The issue's target: the whole ``skin-core difficulty`` analysis (read and validate
``oof.csv``, per-image difficulty with cleanlab label-issue scores, pairwise kappa, the exact
Poisson-binomial test and a 10,000-permutation test) in under 10 s on the 2-core dev machine.

The OOF table is synthetic but shaped like the real study: the ISIC 2019 class counts
(MEL 4522, NV 12875, BCC 3323, AK 867, BKL 2624, DF 239, VASC 253, SCC 628), 5 models,
errors correlated through a per-image latent difficulty (so "wrong by all" is far above
chance, as in the study). Everything is timed side by side in one process, as medians of
``--repeats`` runs, with two floors for scale: ``pandas.read_csv`` of the same file (the cost
of merely parsing it) and the literal within-class shuffle permutation test (the reference
sampler, timed on ``--shuffle-permutations`` and extrapolated to the full count).

Run::

    .venv/bin/python bench/bench_difficulty.py            # ~1 minute on 2 busy cores
    .venv/bin/python bench/bench_difficulty.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skin_core.analysis.difficulty import compute_difficulty, error_consistency, read_oof
from skin_core.analysis.significance import consistent_error_significance, permutation_null
from skin_core.constants import ISIC2019_CLASSES, prob_columns

#: ISIC 2019 training class counts (ISIC_2019_Training_GroundTruth.csv, UNK has none).
ISIC2019_COUNTS = {"MEL": 4522, "NV": 12875, "BCC": 3323, "AK": 867, "BKL": 2624, "DF": 239,
                   "VASC": 253, "SCC": 628}

#: The class each class is most often confused with (drives realistic confusions).
CONFUSER = {"MEL": "NV", "NV": "MEL", "BCC": "BKL", "AK": "BKL", "BKL": "MEL", "DF": "NV",
            "VASC": "NV", "SCC": "AK"}


def synthetic_oof(n_models: int = 5, seed: int = 0) -> pd.DataFrame:
    """Long OOF table with ISIC 2019 class counts and errors correlated across models."""
    rng = np.random.default_rng(seed)
    classes = list(ISIC2019_CLASSES)
    k = len(classes)
    labels = np.repeat(np.arange(k), [ISIC2019_COUNTS[c] for c in classes])
    n = labels.size
    confuser = np.array([classes.index(CONFUSER[c]) for c in classes])[labels]
    latent = rng.beta(0.6, 3.0, n)  # shared difficulty: most images easy, a tail hard
    ids = np.array([f"ISIC_{i:07d}" for i in rng.permutation(n)], dtype=object)
    folds = rng.integers(0, 5, n)
    frames = []
    for m in range(n_models):
        skill = rng.uniform(3.0, 3.8)
        logits = rng.normal(scale=0.8, size=(n, k))
        logits[np.arange(n), labels] += skill * (1.0 - 1.5 * latent)
        logits[np.arange(n), confuser] += 2.0 * latent
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        d = pd.DataFrame(p, columns=prob_columns(classes))
        d.insert(0, "image_id", ids)
        d.insert(1, "model", f"arch{m}@s0")
        d.insert(2, "arch", f"arch{m}")
        d.insert(3, "fold", folds)
        d.insert(4, "label", np.asarray(classes, dtype=object)[labels])
        frames.append(d)
    return pd.concat(frames, ignore_index=True)


def _median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run(repeats: int, n_models: int, n_permutations: int, shuffle_permutations: int,
        seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "oof.csv"
        synthetic_oof(n_models, seed).to_csv(path, index=False)
        # warm-up: imports (cleanlab, scipy) and file cache, not timed
        warm = read_oof(path)
        compute_difficulty(warm)

        def full() -> Any:
            oof = read_oof(path)
            table = compute_difficulty(oof)
            kappa = error_consistency(oof.labels, oof.pred_probs, models=oof.models)
            sig = consistent_error_significance(oof.errors(), oof.labels,
                                                n_permutations=n_permutations, seed=seed)
            return oof, table, kappa, sig

        t_parse, _ = _median_time(lambda: pd.read_csv(path), repeats)
        t_read, oof = _median_time(lambda: read_oof(path), repeats)
        t_diff, table = _median_time(lambda: compute_difficulty(oof), repeats)
        t_kappa, _ = _median_time(
            lambda: error_consistency(oof.labels, oof.pred_probs, models=oof.models), repeats)
        errors = oof.errors()
        t_sig, sig = _median_time(lambda: consistent_error_significance(
            errors, oof.labels, n_permutations=n_permutations, seed=seed), repeats)
        t_full, _ = _median_time(full, repeats)
        t_shuffle, _ = _median_time(lambda: permutation_null(
            errors, oof.labels, n_permutations=shuffle_permutations, seed=seed,
            method="shuffle"), max(1, repeats // 2))
        t_shuffle_full = t_shuffle * n_permutations / shuffle_permutations
        t_hyper, _ = _median_time(lambda: permutation_null(
            errors, oof.labels, n_permutations=n_permutations, seed=seed), repeats)

    groups = table["group"].value_counts().to_dict()
    return {
        "n_images": oof.n_images,
        "n_models": oof.n_models,
        "n_permutations": n_permutations,
        "repeats": repeats,
        "seconds_median": {
            "pandas_read_csv_floor": t_parse,
            "read_oof": t_read,
            "compute_difficulty": t_diff,
            "error_consistency": t_kappa,
            "significance_exact_plus_permutations": t_sig,
            "full_analysis": t_full,
            "permutation_null_hypergeometric": t_hyper,
            "permutation_null_shuffle_extrapolated": t_shuffle_full,
        },
        "ratios": {
            "full_analysis_vs_read_csv": t_full / t_parse,
            "read_oof_vs_read_csv": t_read / t_parse,
            "shuffle_vs_hypergeometric_sampler": t_shuffle_full / t_hyper,
        },
        "target_seconds": 10.0,
        "meets_target": t_full < 10.0,
        "groups": {str(g): int(c) for g, c in groups.items()},
        "significance": {
            "observed_all_wrong": sig.observed_all_wrong,
            "expected_all_wrong": sig.expected_all_wrong,
            "log10_p_value_exact": sig.log10_p_value_exact,
            "p_value_permutation": sig.p_value_permutation,
        },
        "shuffle_permutations_timed": shuffle_permutations,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n-models", type=int, default=5)
    ap.add_argument("--permutations", type=int, default=10_000)
    ap.add_argument("--shuffle-permutations", type=int, default=50,
                    help="permutations timed for the literal-shuffle reference sampler")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    res = run(args.repeats, args.n_models, args.permutations, args.shuffle_permutations,
              args.seed)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{res['n_images']} images x {res['n_models']} models, {res['n_permutations']} "
          f"permutations, medians of {res['repeats']} runs")
    for name, sec in res["seconds_median"].items():
        print(f"  {name:42s} {sec:8.3f} s")
    for name, r in res["ratios"].items():
        print(f"  {name:42s} {r:8.2f} x")
    print(f"  full analysis under {res['target_seconds']:.0f} s: {res['meets_target']}")
    s = res["significance"]
    print(f"  wrong by all: observed {s['observed_all_wrong']}, expected "
          f"{s['expected_all_wrong']:.1f}, log10 p exact {s['log10_p_value_exact']:.1f}, "
          f"p permutation {s['p_value_permutation']:.2g}; groups {res['groups']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
