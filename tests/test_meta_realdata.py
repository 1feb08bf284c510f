"""Real-data tests of the meta-classifier (HAM10000 metadata; OOF from a real training run).

``test_meta_on_real_ham10000_oof`` needs the OOF table of a training run on
``SKIN_CORE_HAM10000_DIR`` (``SKIN_CORE_HAM10000_OOF``, e.g. ``../shared/data/ham10000-oof/
oof.csv``: 7 classes, one MobileNetV2) and is skipped otherwise. About 20 s on 2 cores (200
bootstrap resamples, no final predictor). Its figures are in ``docs/meta.md``; set
``SKIN_CORE_META_REPORT=FILE`` to keep the whole report.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skin_core.io import to_json
from skin_core.meta.features import MetaFeatureWarning, build_features, wide_from_probs

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def ham_table(ham10000_dir: Path) -> pd.DataFrame:
    from skin_core.data.tables import load_dataset

    return load_dataset(f"ham10000:{ham10000_dir}", check_images=False).table


def test_real_ham10000_metadata_needs_no_unknown_mapping(ham_table):
    classes = tuple(sorted(ham_table["label"].unique()))
    wide = wide_from_probs(ham_table["image_id"],
                           {"m": np.full((len(ham_table), len(classes)), 1 / len(classes))},
                           classes)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetaFeatureWarning)
        X, spec = build_features(wide, ham_table, include_probs=False)
    assert spec.unknown_values == {}
    assert int(X["age_approx"].isna().sum()) == int(ham_table["age_approx"].isna().sum())
    assert int((X["anatom_site_general"] == "unknown").sum()) == int(
        ham_table["anatom_site_general"].isna().sum())
    assert int((X["sex"] == "unknown").sum()) == int(ham_table["sex"].isna().sum())


@pytest.mark.slow
def test_meta_on_real_ham10000_oof(ham_table):
    path = os.environ.get("SKIN_CORE_HAM10000_OOF")
    if not path or not Path(path).is_file():
        pytest.skip("SKIN_CORE_HAM10000_OOF is not set (no OOF from a real HAM10000 run)")
    from skin_core.meta import evaluate_meta

    oof = pd.read_csv(path, dtype={"image_id": str})
    res = evaluate_meta(oof, ham_table, n_resamples=200, restrict=True, seed=0,
                        fit_final=False)
    rep = res.report
    out = os.environ.get("SKIN_CORE_META_REPORT")
    if out:
        Path(out).write_text(to_json(rep))
    lesion = ham_table.set_index("image_id")["lesion_id"]
    for fold, trained in res.train_ids.items():
        scored = res.predictions.loc[res.predictions["fold"] == fold, "image_id"]
        assert not set(lesion.loc[scored]) & set(lesion.loc[trained])
    d = rep["difference_vs_mean_ensemble"]
    mm = rep["missing_metadata"]
    print(f"meta {rep['balanced_accuracy']:.4f} vs mean ensemble "
          f"{rep['baselines']['mean_ensemble']:.4f}: {d['effect']:+.4f} CI {d['ci']}; "
          + ", ".join(f"{k} {v['balanced_accuracy']:.4f}" for k, v in mm["subsets"].items()))
    assert abs(rep["conformal"]["coverage"] - rep["conformal"]["target_coverage"]) <= 0.02
    # The acceptance criterion (reported honestly in docs/meta.md either way).
    assert d["effect"] > 0
    # Missing metadata never makes the answer worse: with any subset of age, sex and site
    # missing in the validation fold, the served model (all missing: the metadata-free one)
    # stays within 0.01 of the plain mean ensemble.
    ens = rep["baselines"]["mean_ensemble"]
    for name, s in mm["subsets"].items():
        assert s["balanced_accuracy"] >= ens - 0.01, (name, s["balanced_accuracy"], ens)
    assert mm["ok"]
    # ...which the metadata model trained without masked copies is not (0.63 all missing)
    assert mm["all_missing_with_metadata_model"]["balanced_accuracy"] >= ens - 0.02
