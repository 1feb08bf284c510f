"""Benchmark: reader-study resampling (2,000 two-way bootstraps + 10,000 permutations).

The issue's target: 2,000 bootstrap resamples + 10,000 permutations on 1,000 readings in
under 5 s. The readings are simulated (:func:`skin_core.analysis.reader_sim.simulate_readings`)
on a generation truth shaped like the demo data, in several reader x image shapes of about
1,000 readings (8 x 125 as in a typical study; 4 x 250; 40 x 25; 1,000 x 1 is not a reader
study and is left out).

Timed side by side in one process, median of ``--repeats`` runs each:

- ``vectorised``: :func:`two_way_bootstrap` (2,000) + :func:`image_permutation_test`
  (10,000), as :func:`analyze_readers` runs them;
- ``naive``: the literal algorithms (per resample: draw readers and images with replacement,
  index the correctness matrix, sum; per permutation: ``rng.permutation`` of the labels),
  timed on ``--naive-fraction`` of the resamples and extrapolated;
- ``analyze``: the whole :func:`analyze_readers` (parsing, all groups, kappas with their
  bootstraps, all tests) without and with the crossed GLMM.

Run::

    .venv/bin/python bench/bench_readers.py             # ~1 minute on 2 busy cores
    .venv/bin/python bench/bench_readers.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from skin_core.analysis import reader_stats as rs
from skin_core.analysis.reader_sim import simulate_readings
from skin_core.analysis.readers import analyze_readers
from skin_core.constants import ISIC2019_CLASSES

N_BOOT = 2000
N_PERM = 10_000


def make_study(n_readers: int, n_images: int, seed: int = 0):
    """Simulated readings, truth and groups (first half of the images 'difficult')."""
    rng = np.random.default_rng(seed)
    ids = [f"ISIC_{i:07d}" for i in range(n_images)]
    true = rng.choice(np.array(ISIC2019_CLASSES), n_images)
    hard = np.arange(n_images) < n_images // 2
    gt = pd.DataFrame({"image_id": ids, "true_label": true, "label": true,
                       "latent_difficulty": np.where(hard, 0.6 + 0.4 * rng.random(n_images),
                                                     0.3 * rng.random(n_images)),
                       "is_blurred": False, "is_ambiguous": False})
    readings = simulate_readings(gt, n_readers=n_readers, seed=seed)
    truth = pd.Series(true, index=ids)
    groups = pd.Series(np.where(hard, "difficult", "control"), index=ids)
    return readings, truth, groups


def matrices(readings: pd.DataFrame, truth: pd.Series, groups: pd.Series):
    """Correct / read matrices (R x I) and group index per image."""
    readers = sorted(readings["reader_id"].unique())
    images = list(truth.index)
    r = readings["reader_id"].map({x: k for k, x in enumerate(readers)}).to_numpy()
    i = readings["image_id"].map({x: k for k, x in enumerate(images)}).to_numpy()
    read = np.zeros((len(readers), len(images)), bool)
    correct = np.zeros_like(read)
    read[r, i] = True
    correct[r, i] = (readings["diagnosis"].to_numpy() == truth.to_numpy()[i])
    group = (groups[images].to_numpy() == "control").astype(int)
    return correct, read, group


def vectorised(correct, read, group, seed=0):
    cc = np.ones(group.size, bool)
    rs.two_way_bootstrap(correct, read, group, n_groups=2, consensus_counted=cc,
                         consensus_correct=correct[0], n_resamples=N_BOOT, seed=seed)
    rs.image_permutation_test(correct.sum(0), read.sum(0), group == 0,
                              n_permutations=N_PERM, seed=seed)


def naive(correct, read, group, n_boot, n_perm, seed=0):
    """The literal algorithms, one resample at a time."""
    rng = np.random.default_rng(seed)
    r_count = correct.shape[0]
    members = [np.nonzero(group == g)[0] for g in (0, 1)]
    for _ in range(n_boot):
        readers = rng.integers(0, r_count, r_count)
        acc = []
        for idx in members:
            imgs = idx[rng.integers(0, idx.size, idx.size)]
            acc.append(correct[np.ix_(readers, imgs)].sum() / read[np.ix_(readers, imgs)].sum())
    c, m = correct.sum(0), read.sum(0)
    lab = group == 0
    for _ in range(n_perm):
        p = rng.permutation(lab)
        _ = c[p].sum() / m[p].sum() - c[~p].sum() / m[~p].sum()


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--naive-fraction", type=float, default=0.1,
                    help="share of the resamples the naive loops run (extrapolated)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for n_readers, n_images in ((8, 125), (4, 250), (40, 25)):
        rd, truth, groups = make_study(n_readers, n_images)
        correct, read, group = matrices(rd, truth, groups)
        nb, npm = int(N_BOOT * args.naive_fraction), int(N_PERM * args.naive_fraction)
        t_vec = median_time(lambda c=correct, r=read, g=group: vectorised(c, r, g), args.repeats)
        t_naive = median_time(
            lambda c=correct, r=read, g=group, b=nb, p=npm: naive(c, r, g, b, p), args.repeats
        ) / args.naive_fraction
        t_an = median_time(
            lambda d=rd, t=truth, g=groups: analyze_readers(d, t, groups=g, glmm=False),
            args.repeats)
        t_glmm = median_time(
            lambda d=rd, t=truth, g=groups: analyze_readers(d, t, groups=g, glmm=True),
            max(1, args.repeats // 2))
        rows.append({"readers": n_readers, "images": n_images, "readings": int(len(rd)),
                     "vectorised_s": t_vec, "naive_s_extrapolated": t_naive,
                     "speedup_vs_naive": t_naive / t_vec, "analyze_s": t_an,
                     "analyze_with_glmm_s": t_glmm, "target_s": 5.0,
                     "analyze_within_target": t_an < 5.0})
    if args.json:
        print(json.dumps({"n_bootstrap": N_BOOT, "n_permutations": N_PERM,
                          "repeats": args.repeats, "rows": rows}, indent=2))
        return
    print(f"{N_BOOT} two-way bootstrap resamples + {N_PERM} permutations, median of "
          f"{args.repeats} runs")
    print(f"{'R x I':>9} {'readings':>8} {'vectorised':>10} {'naive':>9} {'speedup':>8} "
          f"{'analyze':>8} {'+GLMM':>7}")
    for r in rows:
        print(f"{r['readers']:>3} x {r['images']:<4} {r['readings']:>8} {r['vectorised_s']:>9.3f}s "
              f"{r['naive_s_extrapolated']:>8.2f}s {r['speedup_vs_naive']:>7.0f}x "
              f"{r['analyze_s']:>7.2f}s {r['analyze_with_glmm_s']:>6.2f}s")


if __name__ == "__main__":
    main()
