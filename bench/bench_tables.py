"""Benchmark: building the ISIC 2019 dataset table (25,331 rows) with the image check.

Builds a temporary ``isic2019:DIR`` layout: symlinks to the real ISIC 2019 CSVs
(``SKIN_CORE_ISIC2019_CSV_DIR`` or ``--csv-dir``; nothing is copied) and 25,331 empty
``.jpg`` files named from the ground truth, then times, side by side in one run (median of
``--repeats``):

- ``floor``      reading the two CSVs with pandas (the I/O no loader can avoid);
- ``table``      ``load_dataset("isic2019:DIR")``, image existence over ONE directory listing;
- ``no_check``   ``load_dataset(..., check_images=False)``;
- ``check_listing`` the existence check alone, as the loader does it (one ``os.scandir``);
- ``check_stat``  the peer: the same check with one ``os.path.exists`` per file;
- ``folds``      ``make_folds(table, k=5)`` and, as the peer, scikit-learn's
  ``StratifiedGroupKFold``.

Absolute times on a shared machine are noisy; the ratios are the figures to compare. The
target is ``table`` under 2 s. Run: ``.venv/bin/python bench/bench_tables.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from skin_core.data.splits import _groups, make_folds
from skin_core.data.tables import (
    ISIC2019_GROUND_TRUTH,
    ISIC2019_IMAGE_DIR,
    ISIC2019_METADATA,
    list_images,
    load_dataset,
)


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build_layout(csv_dir: Path, root: Path) -> int:
    """Symlink the CSVs and create one empty .jpg per ground-truth image; return the count."""
    for name in (ISIC2019_GROUND_TRUTH, ISIC2019_METADATA):
        (root / name).symlink_to((csv_dir / name).resolve())
    ids = pd.read_csv(csv_dir / ISIC2019_GROUND_TRUTH, usecols=["image"])["image"]
    img = root / ISIC2019_IMAGE_DIR
    img.mkdir()
    for image_id in ids:
        (img / f"{image_id}.jpg").touch()
    return len(ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv-dir", default=os.environ.get("SKIN_CORE_ISIC2019_CSV_DIR"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--folds-repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not args.csv_dir or not (Path(args.csv_dir) / ISIC2019_GROUND_TRUTH).is_file():
        print("set SKIN_CORE_ISIC2019_CSV_DIR (or --csv-dir) to the real ISIC 2019 CSV folder",
              file=sys.stderr)
        return 2
    csv_dir = Path(args.csv_dir)
    with tempfile.TemporaryDirectory(prefix="bench_tables_") as tmp:
        root = Path(tmp)
        n = build_layout(csv_dir, root)
        spec = f"isic2019:{root}"
        ds = load_dataset(spec)  # warm-up; also checks every image was found
        assert len(ds) == n, (len(ds), n)
        paths = ds.table["path"].tolist()

        def floor() -> None:
            pd.read_csv(root / ISIC2019_GROUND_TRUTH)
            pd.read_csv(root / ISIC2019_METADATA)

        ids = ds.table["image_id"].tolist()

        def check_listing() -> None:
            index = list_images([root / ISIC2019_IMAGE_DIR])
            assert all(i in index for i in ids)

        def check_stat() -> None:
            assert all(os.path.exists(p) for p in paths)

        t = {
            "floor": median_time(floor, args.repeats),
            "table": median_time(lambda: load_dataset(spec), args.repeats),
            "no_check": median_time(lambda: load_dataset(spec, check_images=False),
                                    args.repeats),
            "check_listing": median_time(check_listing, args.repeats),
            "check_stat": median_time(check_stat, args.repeats),
        }
        from sklearn.model_selection import StratifiedGroupKFold

        labels = ds.table["label"].to_numpy()
        groups = _groups(ds.table)

        def sgkf() -> None:
            splitter = StratifiedGroupKFold(5, shuffle=True, random_state=0)
            for _ in splitter.split(np.zeros(len(labels)), labels, groups):
                pass

        t["folds"] = median_time(lambda: make_folds(ds, k=5, seed=0), args.folds_repeats)
        t["folds_sklearn"] = median_time(sgkf, args.folds_repeats)

    print(f"ISIC 2019 table: {n} images, median of {args.repeats} (folds: {args.folds_repeats})")
    for name, sec in t.items():
        print(f"  {name:<15} {sec:8.3f} s")
    print(f"  table / floor          {t['table'] / t['floor']:6.2f}x")
    print(f"  table / no_check       {t['table'] / t['no_check']:6.2f}x")
    print(f"  check_stat / check_listing {t['check_stat'] / t['check_listing']:6.2f}x")
    print(f"  folds_sklearn / folds  {t['folds_sklearn'] / t['folds']:6.2f}x")
    target = "PASS" if t["table"] < 2.0 else "FAIL"
    print(f"target: table under 2 s -> {target} ({t['table']:.3f} s)")
    return 0 if target == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
