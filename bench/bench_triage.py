"""Benchmark: triage of many results and expansion of a zip of uploads (skin_core.triage).

Times, side by side in one run (median of ``--repeats``):

- ``triage``      ``triage_table`` of ``--n`` hand-made results (management suggestion per row
  included; a mix of routine, referred, out-of-distribution and unreadable results);
- ``rows_peer``   the peer: one DataFrame from ``PredictionResult.to_row`` per result (the
  prediction CSV's own rows, no suggestion, no sort);
- ``suggest``     ``suggest_management`` alone, per result;
- ``csv``         ``triage_csv`` and ``read_triage_csv`` of that table;
- ``zip``         ``expand_uploads`` of a zip with ``--n`` members of ``--member-kb`` kB
  (stored, as JPEGs are) plus a few non-image members;
- ``zip_floor``   the floor: ``zipfile`` reading every member in one go, no checks.

The target is ``triage`` under 100 ms for 500 results. Absolute times on a shared machine
are noisy; the ratios are the figures to compare.
Run: ``.venv/bin/python bench/bench_triage.py [--n 500] [--repeats 20]``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import zipfile
from collections.abc import Callable

import numpy as np
import pandas as pd

from skin_core.management import default_cost_table, suggest_management
from skin_core.predict import PredictionResult
from skin_core.triage import expand_uploads, read_triage_csv, triage_csv, triage_table

CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_results(n: int, seed: int = 0) -> list[PredictionResult]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if i % 50 == 0:
            out.append(PredictionResult(image=f"f{i}.jpg", image_id=f"f{i}",
                                        error=f"f{i}.jpg is not an image Pillow can read."))
            continue
        probs = dict(zip(CLASSES, rng.dirichlet(np.ones(len(CLASSES))).tolist(), strict=True))
        meta = dict(zip(CLASSES, rng.dirichlet(np.ones(len(CLASSES))).tolist(), strict=True))
        ood = i % 37 == 0
        reasons = (["out_of_distribution"] if ood else []) + (["high_entropy"] if i % 7 == 0
                                                               else [])
        label = max(meta, key=meta.get)
        out.append(PredictionResult(
            image=f"img{i}.jpg", image_id=f"img{i}", label=label, probs=probs, meta_probs=meta,
            prediction_set=(label,), quality={"blur_score": float(rng.uniform()),
                                              "is_blurry": False},
            referral={"risk": float(rng.uniform()), "refer": bool(reasons), "reasons": reasons},
            ood={"score": 0.9 if ood else 0.1, "threshold": 0.5, "flagged": ood}))
    return out


def make_zip(n: int, member_kb: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            body = rng.integers(0, 256, member_kb * 1024 - 4, dtype=np.uint8).tobytes()
            zf.writestr(f"case{i // 100}/img{i}.jpg", b"\xff\xd8\xff\xe0" + body)
        zf.writestr("README.txt", b"not an image")
        zf.writestr("__MACOSX/._img0.jpg", b"\0\5\26\7")
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--member-kb", type=int, default=64)
    args = ap.parse_args()
    results = make_results(args.n)
    table = default_cost_table()
    triage_table(results)  # warm caches (resolved table, pandas)
    t_triage = median_time(lambda: triage_table(results, table=table), args.repeats)
    t_rows = median_time(lambda: pd.DataFrame([r.to_row(CLASSES) for r in results]),
                         args.repeats)
    t_suggest = median_time(lambda: [suggest_management(r, table) for r in results],
                            args.repeats) / args.n
    frame = triage_table(results)
    t_csv = median_time(lambda: read_triage_csv(triage_csv(frame)), args.repeats)
    data = make_zip(args.n, args.member_kb)

    def floor() -> None:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            [zf.read(i) for i in zf.infolist()]

    t_zip = median_time(lambda: expand_uploads([("batch.zip", data)]), max(3, args.repeats // 4))
    t_floor = median_time(floor, max(3, args.repeats // 4))
    out = expand_uploads([("batch.zip", data)])
    print(f"results: {args.n}; zip: {args.n} members x {args.member_kb} kB "
          f"({len(data) / 1e6:.1f} MB), {len(out)} images, {len(out.skipped)} skipped")
    print(f"triage      {t_triage * 1e3:8.2f} ms   (target < 100 ms)")
    print(f"rows_peer   {t_rows * 1e3:8.2f} ms   triage / peer = {t_triage / t_rows:.2f}")
    print(f"suggest     {t_suggest * 1e6:8.2f} us per result")
    print(f"csv         {t_csv * 1e3:8.2f} ms   (export + read back)")
    print(f"zip         {t_zip * 1e3:8.2f} ms")
    print(f"zip_floor   {t_floor * 1e3:8.2f} ms   zip / floor = {t_zip / t_floor:.2f}")


if __name__ == "__main__":
    main()
