"""Real-data tests of the meta-classifier (HAM10000 metadata; OOF from a real training run).

``test_meta_on_real_ham10000_oof`` needs the OOF table of a training run on
``SKIN_CORE_HAM10000_DIR``: set ``SKIN_CORE_HAM10000_OOF=/path/to/runs/<id>/oof.csv``. It is
skipped otherwise. Its figures go to ``docs/meta.md`` (run ``skin-core meta`` for the full
``meta.json``).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

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
def test_meta_on_real_ham10000_oof(ham_table, tmp_path):
    path = os.environ.get("SKIN_CORE_HAM10000_OOF")
    if not path or not Path(path).is_file():
        pytest.skip("SKIN_CORE_HAM10000_OOF is not set (no OOF from a real HAM10000 run)")
    from skin_core.meta import evaluate_meta

    oof = pd.read_csv(path, dtype={"image_id": str})
    res = evaluate_meta(oof, ham_table, n_resamples=1000, restrict=True, seed=0)
    rep = res.report
    out = os.environ.get("SKIN_CORE_META_REPORT")
    if out:
        Path(out).write_text(json.dumps(rep, indent=2, default=str))
    lesion = ham_table.set_index("image_id")["lesion_id"]
    for fold, trained in res.train_ids.items():
        scored = res.predictions.loc[res.predictions["fold"] == fold, "image_id"]
        assert not set(lesion.loc[scored]) & set(lesion.loc[trained])
    d = rep["difference_vs_mean_ensemble"]
    print(f"meta {rep['balanced_accuracy']:.4f} vs mean ensemble "
          f"{rep['baselines']['mean_ensemble']:.4f}: {d['effect']:+.4f} CI {d['ci']}")
    assert abs(rep["conformal"]["coverage"] - rep["conformal"]["target_coverage"]) <= 0.02
    # The acceptance criterion (reported honestly in docs/meta.md either way).
    assert d["effect"] > 0
