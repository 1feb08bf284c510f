"""Lesion clusters (skin_core.analysis.clusters) and the size of the tests under a lesion null.

The slow test simulates studies in which the null holds at lesion level (independent models,
each model's errors shared by a lesion's images; quality a lesion effect independent of the
errors) and checks that the lesion-level tests reject about 5 % of them at the 5 % level,
that the image-level tests reject far more, and that a planted effect is still found.
"""

from __future__ import annotations

import numpy as np
import pytest

from skin_core.analysis.clusters import cluster_codes, lesion_strata, missing_lesion_ids
from skin_core.analysis.lesion_sim import null_rejection_rates, simulate_lesion_study
from skin_core.errors import DataError


def test_cluster_codes_give_every_missing_id_its_own_cluster():
    ids = np.array(["a", "b", None, "a", "", np.nan, " b ", "c"], dtype=object)
    assert missing_lesion_ids(ids).tolist() == [False, False, True, False, True, True, False,
                                                False]
    codes = cluster_codes(ids)
    assert codes.tolist() == [0, 1, 3, 0, 4, 5, 1, 2]
    with pytest.raises(DataError, match="length 3"):
        cluster_codes(ids, 3)


def test_lesion_strata_group_lesions_by_label_sequence():
    labels = np.array([0, 0, 1, 1, 0, 2, 2, 0, 1, 0, 0])
    ids = ["a", "a", "b", "b", "c", "d", "d", None, "e", "e", "f"]
    s = lesion_strata(labels, ids)
    assert s.single.tolist() == [4, 7, 10]  # lesions c and f have one image; 7 has no id
    keys = dict(zip(s.keys, (b.tolist() for b in s.blocks), strict=True))
    assert keys == {(0, 0): [[0, 1]], (1, 1): [[2, 3]], (2, 2): [[5, 6]], (0, 1): [[9, 8]]}
    assert s.n_clusters == 7 and s.n_multi_image_lesions == 4
    assert s.summary()["n_images_in_multi_image_lesions"] == 8
    assert s.summary()["max_lesion_size"] == 2
    no_ids = lesion_strata(labels, None)
    assert no_ids.single.size == labels.size and no_ids.blocks == ()


def test_simulated_study_shares_errors_within_lesions():
    s = simulate_lesion_study(np.random.default_rng(0), n_lesions=400, flip=0.0)
    assert s.errors.shape == (3, s.labels.size) and 1200 <= s.labels.size <= 2000
    for m in range(3):  # without flips a lesion's images are all wrong or all right
        per_lesion = {}
        for lid, e in zip(s.lesion_ids, s.errors[m], strict=True):
            per_lesion.setdefault(lid, set()).add(bool(e))
        assert all(len(v) == 1 for v in per_lesion.values())


@pytest.mark.slow
def test_lesion_level_tests_hold_their_size_and_image_level_tests_do_not():
    """Studies under the lesion null (600 for the consistency tests, 300 for the quality
    tests) and 60 with a planted effect: about a minute on 2 busy cores."""
    null = null_rejection_rates(600, seed=20261206, n_permutations=199, quality_units=())
    quality = null_rejection_rates(300, seed=1, consistency=False, quality_units=("lesion",))
    rates = {**null["rates"], **quality["rates"]}
    # the valid (lesion-level) tests: close to the nominal 5 %
    for test in ("lesion_permutation", "lesion_rank", "lesion_logistic"):
        assert 0.03 <= rates[test] <= 0.08, (test, rates)
    # the lesion-level exact test samples lesion patterns with replacement from their observed
    # frequencies (it does not condition on each model's error counts): valid but conservative
    assert rates["lesion_exact"] <= 0.05, rates
    # the image-level tests of the same data reject far too often
    assert rates["image_permutation"] >= 0.09 and rates["image_exact"] >= 0.06, rates
    effect = null_rejection_rates(60, seed=7, n_permutations=199, quality_units=("lesion",),
                                  effect=0.1, quality_shift=1.5)["rates"]
    for test in ("lesion_permutation", "lesion_exact", "lesion_rank", "lesion_logistic"):
        assert effect[test] >= 0.8, (test, effect)
