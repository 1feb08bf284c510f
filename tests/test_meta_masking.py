"""Tests of skin_core.meta.masking: missing-metadata subsets and masked training copies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skin_core.errors import ConfigError
from skin_core.meta.classifier import inner_split
from skin_core.meta.features import build_features
from skin_core.meta.masking import (
    MASKED_SUBSETS,
    MISSING_SUBSETS,
    draw_masks,
    mask_metadata,
    repeat_for_copies,
    with_masked_copies,
)
from skin_core.meta.synthetic import make_synthetic_oof

CLASSES = ("MEL", "NV", "BCC")
META = ("age_approx", "sex", "anatom_site_general")


@pytest.fixture(scope="module")
def features() -> tuple[pd.DataFrame, pd.DataFrame]:
    oof, meta = make_synthetic_oof(90, classes=CLASSES, archs=("a", "b"), n_folds=3, seed=1,
                                   missing_rate=0.0)
    X, _ = build_features(oof, meta)
    return X, meta


def _missing(X: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"age_approx": X["age_approx"].isna(),
                         "sex": X["sex"] == "unknown",
                         "anatom_site_general": X["anatom_site_general"] == "unknown"})


def test_every_subset_is_named_once_none_first_all_last():
    assert list(MISSING_SUBSETS) == ["none", "age", "sex", "site", "age+sex", "age+site",
                                     "sex+site", "all"]
    assert MISSING_SUBSETS["all"] == META and MISSING_SUBSETS["none"] == ()
    assert MISSING_SUBSETS["age+site"] == ("age_approx", "anatom_site_general")
    assert MASKED_SUBSETS == tuple(list(MISSING_SUBSETS)[1:])


def test_masking_encodes_missing_exactly_as_build_features_does(features):
    X, meta = features
    oof, _ = make_synthetic_oof(90, classes=CLASSES, archs=("a", "b"), n_folds=3, seed=1,
                                missing_rate=0.0)
    for cols in MISSING_SUBSETS.values():
        blank = meta.copy()
        blank[list(cols)] = None
        want, _ = build_features(oof, blank)
        pd.testing.assert_frame_equal(mask_metadata(X, cols), want)
    assert not _missing(X).any().any()  # the input is left as it was


def test_copies_follow_the_originals_with_their_drawn_subset_missing(features):
    X, _ = features
    masks = draw_masks(len(X), copies=2, seed=[0, 1])
    out = with_masked_copies(X, masks)
    assert len(out) == 3 * len(X) and list(out.columns) == list(X.columns)
    assert (out.index[:len(X)] == X.index).all() and (out.index[len(X):2 * len(X)] == X.index).all()
    pd.testing.assert_frame_equal(out.iloc[:len(X)], X)
    probs = [c for c in X.columns if c.startswith("p__")]
    for c, which in enumerate(masks, start=1):
        part = out.iloc[c * len(X):(c + 1) * len(X)]
        np.testing.assert_array_equal(part[probs].to_numpy(), X[probs].to_numpy())
        want = np.array([[col in MISSING_SUBSETS[MASKED_SUBSETS[j]] for col in META]
                         for j in which])
        np.testing.assert_array_equal(_missing(part).to_numpy(), want)
        assert want.any(axis=1).all()  # every copy loses something
    assert set(masks.ravel()) == set(range(len(MASKED_SUBSETS)))


def test_masks_are_seeded_and_apply_alike_to_frames_with_fewer_metadata_columns(features):
    X, _ = features
    a = draw_masks(len(X), copies=1, seed=[3, 2])
    np.testing.assert_array_equal(a, draw_masks(len(X), copies=1, seed=[3, 2]))
    assert not np.array_equal(a, draw_masks(len(X), copies=1, seed=[3, 1]))
    R = X[["p__a__MEL", "sex"]]  # e.g. a referral frame without age and site
    out = with_masked_copies(R, a)
    full = with_masked_copies(X, a)
    pd.testing.assert_series_equal(out["sex"], full["sex"])
    assert with_masked_copies(X, draw_masks(len(X), copies=0, seed=0)) is X
    with pytest.raises(ConfigError, match="masked_copies"):
        draw_masks(3, copies=-1, seed=0)


def test_an_image_and_its_copies_are_always_on_the_same_side_of_the_inner_split(features):
    X, meta = features
    lesions = meta.set_index("image_id").loc[X.index, "lesion_id"].to_numpy()
    y = np.arange(len(X)) % 3
    masks = draw_masks(len(X), copies=2, seed=0)
    groups = repeat_for_copies(lesions, masks)
    train, val = inner_split(repeat_for_copies(y, masks), groups, random_state=0)
    side = np.zeros(len(groups), dtype=bool)
    side[val] = True
    per_image = side.reshape(3, len(X))
    assert (per_image == per_image[0]).all()
    assert not set(groups[train]) & set(groups[val])
