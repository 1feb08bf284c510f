"""Benchmark: difficulty + exact test + 10,000 permutations on 25,331 images x 5 models.

The targets: the whole ``skin-core difficulty`` analysis (read and validate ``oof.csv``,
per-image difficulty with cleanlab label-issue scores, pairwise kappa, the exact test and a
10,000-permutation test) in under 10 s on the 2-core dev machine (issue 4), and the
**lesion-clustered** permutation test with 10,000 permutations under 10 s (issue 13).

The OOF table is synthetic but shaped like the real study: the ISIC 2019 class counts
(MEL 4522, NV 12875, BCC 3323, AK 867, BKL 2624, DF 239, VASC 253, SCC 628), 5 models,
errors correlated through a latent difficulty (so "wrong by all" is far above chance, as in
the study), and ISIC 2019's lesion structure: 2,084 images without a lesion id and 11,847
lesions with the real size histogram (6,788 single-image lesions, 2,505 of two images, ...,
one of 31; ``ISIC_2019_Training_Metadata.csv``), lesions never crossing a class (a lesion cut
by a class boundary becomes two). The latent difficulty is a lesion effect plus image noise,
so a lesion's images tend to be wrong together. Everything is timed side by side in one
process, as medians of ``--repeats`` runs, with two floors for scale: ``pandas.read_csv`` of
the same file (the cost of merely parsing it) and the literal within-class shuffle
permutation test (the reference sampler, timed on ``--shuffle-permutations`` and
extrapolated to the full count).

``--calibration N`` instead simulates ``N`` lesion-clustered studies under the lesion-level
null (and ``N // 4`` with a planted effect: 10 % of lesions wrong for every model, with 1.5 SD
lower quality) and prints how often each 5 % test rejects
(:func:`skin_core.analysis.lesion_sim.null_rejection_rates`).

Run::

    .venv/bin/python bench/bench_difficulty.py            # ~1-2 minutes on 2 busy cores
    .venv/bin/python bench/bench_difficulty.py --json
    .venv/bin/python bench/bench_difficulty.py --with-quality --json   # + compare_quality
    .venv/bin/python bench/bench_difficulty.py --calibration 2000 --json
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
from skin_core.analysis.significance import (
    consistent_error_significance,
    exact_test,
    permutation_null,
)
from skin_core.constants import ISIC2019_CLASSES, prob_columns

#: ISIC 2019 training class counts (ISIC_2019_Training_GroundTruth.csv, UNK has none).
ISIC2019_COUNTS = {"MEL": 4522, "NV": 12875, "BCC": 3323, "AK": 867, "BKL": 2624, "DF": 239,
                   "VASC": 253, "SCC": 628}

#: The class each class is most often confused with (drives realistic confusions).
CONFUSER = {"MEL": "NV", "NV": "MEL", "BCC": "BKL", "AK": "BKL", "BKL": "MEL", "DF": "NV",
            "VASC": "NV", "SCC": "AK"}


#: ISIC 2019 lesion sizes: number of lesions with 1, 2, ... images (ISIC_2019_Training_Metadata,
#: 11,847 lesions, 23,247 images); a further 2,084 images have no lesion id.
ISIC2019_LESION_SIZES = {1: 6788, 2: 2505, 3: 1306, 4: 468, 5: 248, 6: 198, 7: 112, 8: 59,
                         9: 54, 10: 24, 11: 18, 12: 19, 13: 10, 14: 7, 15: 3, 16: 3, 17: 5,
                         18: 3, 19: 6, 20: 6, 21: 1, 24: 1, 26: 1, 27: 1, 31: 1}
ISIC2019_NO_LESION_ID = 2084


def synthetic_lesions(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ISIC-2019-like lesion ids for images sorted by class (``None``: no lesion id)."""
    n = labels.size
    sizes = np.repeat(list(ISIC2019_LESION_SIZES), list(ISIC2019_LESION_SIZES.values()))
    sizes = rng.permutation(sizes)
    no_id = rng.choice(n, ISIC2019_NO_LESION_ID, replace=False)
    has_id = np.setdiff1d(np.arange(n), no_id)  # ascending: images stay sorted by class
    lesion = np.repeat(np.arange(sizes.size), sizes)[: has_id.size]
    # a lesion cut by a class boundary becomes two lesions
    cut = np.r_[0, np.cumsum(np.diff(labels[has_id]) != 0)]
    ids = np.full(n, None, dtype=object)
    ids[has_id] = [f"IL_{a:05d}_{b}" for a, b in zip(lesion, cut, strict=True)]
    return ids


def synthetic_oof(n_models: int = 5, seed: int = 0) -> pd.DataFrame:
    """Long OOF table: ISIC 2019 class counts and lesions, errors correlated across models."""
    rng = np.random.default_rng(seed)
    classes = list(ISIC2019_CLASSES)
    k = len(classes)
    labels = np.repeat(np.arange(k), [ISIC2019_COUNTS[c] for c in classes])
    n = labels.size
    lesion_ids = synthetic_lesions(labels, rng)
    confuser = np.array([classes.index(CONFUSER[c]) for c in classes])[labels]
    # shared difficulty: most images easy, a tail hard; a lesion effect plus image noise
    codes = pd.factorize(pd.Series(lesion_ids).fillna(pd.Series(np.arange(n)).astype(str)))[0]
    lesion_latent = rng.beta(0.6, 3.0, codes.max() + 1)
    latent = np.clip(lesion_latent[codes] + rng.normal(scale=0.05, size=n), 0.0, 1.0)
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
        d.insert(5, "lesion_id", lesion_ids)
        frames.append(d)
    return pd.concat(frames, ignore_index=True)


def _median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def quality_timing(oof: Any, table: pd.DataFrame, seed: int) -> dict[str, float]:
    """Seconds of ``compare_quality`` (all default measures, 2,000 resamples) per level."""
    from skin_core.analysis.quality import COMPARE_MEASURES
    from skin_core.analysis.quality_difficulty import compare_quality

    rng = np.random.default_rng(seed)
    quality = pd.DataFrame({"image_id": oof.image_ids,
                            **{m: rng.normal(size=oof.n_images) for m in COMPARE_MEASURES}})
    out = {}
    for unit in ("image", "lesion"):
        t0 = time.perf_counter()
        compare_quality(quality, table, clusters=unit, seed=seed)
        out[f"compare_quality_{unit}_level"] = time.perf_counter() - t0
    return out


def run(repeats: int, n_models: int, n_permutations: int, shuffle_permutations: int,
        seed: int, with_quality: bool = False) -> dict[str, Any]:
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
        lesions = oof.lesion_ids
        t_perm_lesion, null_lesion = _median_time(lambda: permutation_null(
            errors, oof.labels, n_permutations=n_permutations, seed=seed, lesions=lesions),
            repeats)
        t_perm_lesion_m, _ = _median_time(lambda: permutation_null(
            errors, oof.labels, min_wrong=max(1, n_models - 2), n_permutations=n_permutations,
            seed=seed, lesions=lesions), repeats)
        t_exact_lesion, _ = _median_time(lambda: exact_test(errors, oof.labels,
                                                            lesions=lesions), repeats)
        t_sig_lesion, sig_lesion = _median_time(lambda: consistent_error_significance(
            errors, oof.labels, n_permutations=n_permutations, seed=seed, lesions=lesions),
            repeats)

        def full_lesion() -> Any:
            oof = read_oof(path)
            table = compute_difficulty(oof)
            kappa = error_consistency(oof.labels, oof.pred_probs, models=oof.models)
            sig = consistent_error_significance(oof.errors(), oof.labels,
                                                n_permutations=n_permutations, seed=seed,
                                                lesions=oof.lesion_ids)
            return oof, table, kappa, sig

        t_full_lesion, _ = _median_time(full_lesion, repeats)
        t_quality = quality_timing(oof, table, seed) if with_quality else {}

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
            "lesion_permutation_null": t_perm_lesion,
            "lesion_permutation_null_min_wrong_M_minus_2": t_perm_lesion_m,
            "lesion_exact_test": t_exact_lesion,
            "lesion_significance_exact_plus_permutations_plus_image_level": t_sig_lesion,
            "full_analysis_lesion_level": t_full_lesion,
            **t_quality,
        },
        "ratios": {
            "full_analysis_vs_read_csv": t_full / t_parse,
            "read_oof_vs_read_csv": t_read / t_parse,
            "shuffle_vs_hypergeometric_sampler": t_shuffle_full / t_hyper,
            "lesion_vs_image_permutation_null": t_perm_lesion / t_hyper,
            "full_lesion_vs_full_image": t_full_lesion / t_full,
        },
        "target_seconds": 10.0,
        "meets_target": t_full < 10.0 and t_perm_lesion < 10.0,
        "lesions": sig_lesion.clustering,
        "groups": {str(g): int(c) for g, c in groups.items()},
        "significance": {
            "observed_all_wrong": sig.observed_all_wrong,
            "expected_all_wrong": sig.expected_all_wrong,
            "log10_p_value_exact": sig.log10_p_value_exact,
            "p_value_permutation": sig.p_value_permutation,
            "lesion_expected_all_wrong": sig_lesion.expected_all_wrong,
            "lesion_log10_p_value_exact": sig_lesion.log10_p_value_exact,
            "lesion_p_value_permutation": sig_lesion.p_value_permutation,
            "lesion_permutation_null_mean": float(null_lesion.mean()),
            "lesion_permutation_null_sd": float(null_lesion.std(ddof=1)),
        },
        "shuffle_permutations_timed": shuffle_permutations,
    }


def calibration(n_studies: int, seed: int, n_permutations: int) -> dict[str, Any]:
    """Rejection rates of the 5 % tests under the lesion-level null and a planted effect."""
    from skin_core.analysis.lesion_sim import null_rejection_rates

    t0 = time.perf_counter()
    null = null_rejection_rates(n_studies, seed=seed, n_permutations=n_permutations)
    power = null_rejection_rates(max(1, n_studies // 4), seed=seed + 1,
                                 n_permutations=n_permutations, effect=0.1, quality_shift=1.5)
    return {"null": null, "effect_0.1": power, "seconds": time.perf_counter() - t0,
            "n_permutations": n_permutations,
            "study": "300 lesions of 3-5 images, 3 classes, 3 models with lesion error rates "
            "U(0.3, 0.5) per class, 10 % image flips; effect: 10 % of lesions wrong for every "
            "model, their quality 1.5 SD lower"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n-models", type=int, default=5)
    ap.add_argument("--permutations", type=int, default=10_000)
    ap.add_argument("--shuffle-permutations", type=int, default=50,
                    help="permutations timed for the literal-shuffle reference sampler")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--with-quality", action="store_true",
                    help="also time compare_quality at image and lesion level (one run each)")
    ap.add_argument("--calibration", type=int, default=0, metavar="N",
                    help="instead: rejection rates over N simulated lesion-clustered studies")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.calibration:
        cal = calibration(args.calibration, args.seed, min(args.permutations, 199))
        if args.json:
            print(json.dumps(cal, indent=2))
            return 0
        print(cal["study"])
        for name in ("null", "effect_0.1"):
            r = cal[name]
            print(f"{name}: {r['n_studies']} studies, share rejecting at 5 %:")
            for test, rate in r["rates"].items():
                print(f"  {test:22s} {rate:6.3f}")
        print(f"  ({cal['seconds']:.0f} s)")
        return 0
    res = run(args.repeats, args.n_models, args.permutations, args.shuffle_permutations,
              args.seed, args.with_quality)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{res['n_images']} images x {res['n_models']} models, {res['n_permutations']} "
          f"permutations, medians of {res['repeats']} runs")
    for name, sec in res["seconds_median"].items():
        print(f"  {name:42s} {sec:8.3f} s")
    for name, r in res["ratios"].items():
        print(f"  {name:42s} {r:8.2f} x")
    print(f"  full analysis and lesion permutation null under {res['target_seconds']:.0f} s: "
          f"{res['meets_target']}; lesions: {res['lesions']}")
    s = res["significance"]
    print(f"  wrong by all: observed {s['observed_all_wrong']}, expected "
          f"{s['expected_all_wrong']:.1f}, log10 p exact {s['log10_p_value_exact']:.1f}, "
          f"p permutation {s['p_value_permutation']:.2g}; groups {res['groups']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
