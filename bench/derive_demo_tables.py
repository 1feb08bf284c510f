"""Derive the class-conditional metadata tables used by the demo-data generator.

Run once by hand (never by tests, never at generation time)::

    .venv/bin/python bench/derive_demo_tables.py [DIR]

``DIR`` defaults to ``$SKIN_CORE_ISIC2019_CSV_DIR`` or ``../shared/data/isic2019`` and must
hold the real ``ISIC_2019_Training_GroundTruth.csv`` and ``ISIC_2019_Training_Metadata.csv``.
The script prints Python literals that are pasted into ``skin_core/data/synthetic.py``
(section "Tables derived from the real ISIC 2019 metadata"). All figures are rounded to
4 decimals; the generator renormalises each distribution.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

from skin_core.constants import ISIC2019_CLASSES, ISIC2019_SITE_VALUES

AGE_BINS = tuple(range(0, 90, 5))  # ages in ISIC 2019 are multiples of 5, 0..85
MAX_GROUP = 8  # lesions with >= MAX_GROUP images are pooled into the last bucket


def derive(data_dir: Path) -> dict[str, dict[str, list[float]]]:
    gt = pd.read_csv(data_dir / "ISIC_2019_Training_GroundTruth.csv")
    md = pd.read_csv(data_dir / "ISIC_2019_Training_Metadata.csv")
    df = gt.merge(md, on="image", validate="one_to_one")
    df["label"] = df[list(ISIC2019_CLASSES)].idxmax(axis=1)

    out: dict[str, dict[str, list[float]]] = {
        "counts": {}, "age": {}, "sex": {}, "site": {}, "lesion_missing": {}, "group_size": {}
    }
    for c in ISIC2019_CLASSES:
        d = df[df["label"] == c]
        n = len(d)
        out["counts"][c] = [int(n)]
        age = d["age_approx"]
        hist = [float((age == a).sum()) / n for a in AGE_BINS]
        out["age"][c] = [round(h, 4) for h in hist] + [round(float(age.isna().mean()), 4)]
        sex = d["sex"]
        out["sex"][c] = [round(float((sex == "male").mean()), 4),
                         round(float((sex == "female").mean()), 4),
                         round(float(sex.isna().mean()), 4)]
        site = d["anatom_site_general"]
        out["site"][c] = [round(float((site == s).mean()), 4) for s in ISIC2019_SITE_VALUES] + [
            round(float(site.isna().mean()), 4)
        ]
        out["lesion_missing"][c] = [round(float(d["lesion_id"].isna().mean()), 4)]
        sizes = d.dropna(subset=["lesion_id"]).groupby("lesion_id").size().clip(upper=MAX_GROUP)
        # distribution over IMAGES: P(an image with a lesion_id sits in a lesion of size s)
        img_w = sizes.value_counts().sort_index()
        img_w = img_w * img_w.index
        tot = float(img_w.sum())
        out["group_size"][c] = [round(float(img_w.get(s, 0)) / tot, 4)
                                for s in range(1, MAX_GROUP + 1)]
    return out


def main() -> int:
    default = os.environ.get("SKIN_CORE_ISIC2019_CSV_DIR",
                             str(Path(__file__).resolve().parents[2] / "shared/data/isic2019"))
    data_dir = Path(sys.argv[1] if len(sys.argv) > 1 else default)
    tables = derive(data_dir)
    for name, per_class in tables.items():
        print(f"{name.upper()} = {{")
        for c, vals in per_class.items():
            body = repr(vals[0]) if len(vals) == 1 else "(" + ", ".join(map(repr, vals)) + ")"
            print(f'    "{c}": {body},')
        print("}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
