"""Lesion-grouped, class-stratified folds: properties, warnings, folds.csv round trip."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skin_core.constants import CALIBRATION_FOLD
from skin_core.data.splits import (
    FoldWarning,
    calibration_report,
    calibration_split,
    fold_report,
    make_folds,
    read_folds,
    write_folds,
)
from skin_core.data.tables import Dataset, load_dataset
from skin_core.errors import ConfigError, DataError


def random_table(seed: int, n: int, n_classes: int, lesion_frac: float) -> pd.DataFrame:
    """Images with skewed classes; a fraction belong to multi-image, single-class lesions."""
    rng = np.random.default_rng(seed)
    p = np.array([0.5, 0.25, 0.15, 0.1][:n_classes])
    labels = rng.choice(list("ABCD")[:n_classes], size=n, p=p / p.sum())
    lesion = np.array([None] * n, dtype=object)
    grouped = rng.random(n) < lesion_frac
    # lesions hold 2-4 images of one class (as in ISIC: a lesion has one diagnosis)
    for cls in np.unique(labels):
        idx = np.flatnonzero(grouped & (labels == cls))
        rng.shuffle(idx)
        start = 0
        while start < len(idx):
            size = int(rng.integers(2, 5))
            lesion[idx[start:start + size]] = f"L_{cls}_{start}"
            start += size
    return pd.DataFrame({"image_id": [f"img{i}" for i in range(n)], "label": labels,
                         "lesion_id": lesion})


tables_st = st.builds(
    random_table,
    seed=st.integers(0, 10_000),
    n=st.integers(12, 120),
    n_classes=st.integers(2, 4),
    lesion_frac=st.sampled_from([0.0, 0.3, 0.7]),
)


@settings(max_examples=25, deadline=None)
@given(table=tables_st, k=st.integers(2, 5), seed=st.integers(0, 3))
def test_no_lesion_in_two_folds_and_every_image_once(table, k, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FoldWarning)
        folds = make_folds(table, k=k, seed=seed)
    assert folds.index.tolist() == table["image_id"].tolist()
    assert folds.between(0, k - 1).all()
    per_lesion = pd.Series(folds.to_numpy()).groupby(table["lesion_id"].to_numpy()).nunique()
    assert (per_lesion == 1).all()
    assert fold_report(table, folds)["lesions_in_two_folds"] == 0


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(10, 150),
    n_classes=st.integers(1, 4),
    k=st.integers(2, 6),
)
def test_singleton_groups_give_per_class_counts_within_one_of_even(seed, n, n_classes, k):
    table = random_table(seed, n, n_classes, lesion_frac=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FoldWarning)
        folds = make_folds(table, k=k, seed=seed)
    counts = pd.crosstab(folds.to_numpy(), table["label"].to_numpy()).reindex(
        range(k), fill_value=0
    )
    assert (counts.max() - counts.min() <= 1).all()


@settings(max_examples=20, deadline=None)
@given(table=tables_st, seed=st.integers(0, 100))
def test_folds_are_deterministic_per_seed(table, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FoldWarning)
        a = make_folds(table, k=3, seed=seed)
        b = make_folds(table.copy(), k=3, seed=seed)
    pd.testing.assert_series_equal(a, b)


def test_different_seeds_give_different_folds():
    table = random_table(0, 200, 3, 0.3)
    assert not make_folds(table, k=5, seed=0).equals(make_folds(table, k=5, seed=1))


def test_grouped_lesions_stay_balanced():
    table = random_table(1, 600, 4, 0.5)
    report = fold_report(table, make_folds(table, k=5, seed=0))
    sizes = list(report["fold_sizes"].values())
    assert max(sizes) - min(sizes) <= 4  # lesions hold up to 4 images
    assert all(spread <= 4 for spread in report["max_class_spread"].values())


@pytest.mark.slow  # imports scikit-learn (~2 s on a loaded machine)
@pytest.mark.parametrize("seed", range(6))
def test_at_least_as_balanced_as_sklearn_stratified_group_kfold(seed):
    from sklearn.model_selection import StratifiedGroupKFold

    from skin_core.data.splits import _groups

    table = random_table(seed, 150, 4, [0.0, 0.3, 0.7][seed % 3])
    k = 3 + seed % 3
    ref = np.empty(len(table), dtype=np.int64)
    splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
    for fold, (_, test) in enumerate(splitter.split(table, table["label"], _groups(table))):
        ref[test] = fold
    ours = fold_report(table, make_folds(table, k=k, seed=seed))["max_class_spread"]
    theirs = fold_report(table, pd.Series(ref, index=table["image_id"]))["max_class_spread"]
    assert sum(ours.values()) <= sum(theirs.values())


def test_every_class_below_k_images_still_splits():
    # StratifiedGroupKFold raises here; the data allow a split, so make_folds makes one
    table = pd.DataFrame({"image_id": [f"i{i}" for i in range(10)], "label": list("AAABBBCCDD")})
    with pytest.warns(FoldWarning):
        folds = make_folds(table, k=4, seed=0)
    assert sorted(folds.value_counts().tolist()) == [2, 2, 3, 3]
    counts = pd.crosstab(folds.to_numpy(), table["label"].to_numpy())
    assert (counts.max() - counts.min() <= 1).all()


def test_images_without_lesion_id_are_their_own_group():
    table = pd.DataFrame({"image_id": list("abcd"), "label": list("AAAA"),
                          "lesion_id": [np.nan] * 4})
    folds = make_folds(table, k=4, seed=0)
    assert sorted(folds.tolist()) == [0, 1, 2, 3]
    no_column = make_folds(table.drop(columns="lesion_id"), k=4, seed=0)
    assert sorted(no_column.tolist()) == [0, 1, 2, 3]


def test_class_with_fewer_groups_than_folds_warns():
    table = pd.DataFrame({
        "image_id": [f"i{i}" for i in range(12)],
        "label": ["A"] * 9 + ["B"] * 3,
        "lesion_id": [None] * 9 + ["LB", "LB", None],  # B: 2 groups
    })
    with pytest.warns(FoldWarning, match=r"B \(2 groups\) have fewer lesion groups than k=3"):
        folds = make_folds(table, k=3, seed=0)
    assert folds[["i9", "i10"]].nunique() == 1


def test_bad_k_and_bad_tables_are_clear_errors():
    table = pd.DataFrame({"image_id": list("abc"), "label": list("ABA"),
                          "lesion_id": ["L", "L", None]})
    with pytest.raises(ConfigError, match="k must be an integer >= 2"):
        make_folds(table, k=1)
    with pytest.raises(ConfigError, match=r"larger than the number of lesion groups \(2\)"):
        make_folds(table, k=3)
    with pytest.raises(DataError, match="'a' is missing or repeated"):
        make_folds(pd.concat([table, table.iloc[:1]]), k=2)
    with pytest.raises(DataError, match="has no column 'label'"):
        make_folds(table.drop(columns="label"))
    with pytest.raises(DataError, match="Image 'b' has no label"):
        make_folds(table.assign(label=["A", None, "A"]), k=2)


def test_accepts_a_dataset():
    table = random_table(2, 40, 2, 0.3).assign(path="x")
    ds = Dataset(table, ("A", "B"))
    pd.testing.assert_series_equal(make_folds(ds, k=3, seed=5), make_folds(table, k=3, seed=5))


# ----------------------------------------------------------------------------- folds.csv


def test_write_and_read_folds_round_trip(tmp_path):
    table = random_table(3, 60, 3, 0.4)
    folds = make_folds(table, k=4, seed=0)
    path = tmp_path / "out" / "folds.csv"
    write_folds(folds, path)
    assert path.read_text().splitlines()[0] == "image_id,fold"
    assert not list(path.parent.glob(".*tmp"))  # no temporary file left behind
    back = read_folds(path, table)
    pd.testing.assert_series_equal(back, folds)
    # a DataFrame works too, and row order in the file does not matter
    write_folds(folds.reset_index().iloc[::-1], path)
    pd.testing.assert_series_equal(read_folds(path, Dataset(table, ("A", "B", "C"))), folds)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("image_id,fold\na,0\nb,x\n", r"line 3, image 'b', column 'fold': 'x' is not a fold"),
        ("image_id,fold\na,0\nb,-2\n", r"line 3, image 'b', column 'fold': '-2' is not a fold "
         r"number \(an integer >= 0, or -1 for the calibration split\)"),
        ("image_id,fold\na,0\nb,1.5\n", r"'1.5' is not a fold number"),
        ("image_id,fold\na,0\na,1\nb,1\n", r"line 3, column 'image_id': image 'a' is listed twice"),
        ("image_id,fold\na,0\nb,1\nz,1\nc,0\n", r"line 4, column 'image_id': image 'z' is not in"),
        ("image_id,fold\na,0\n", r"2 image\(s\) of the dataset have no fold \(first: 'b'\)"),
        ("image,fold\na,0\n", r"have no column 'image_id'"),
        ("image_id,fold\na,0\nb,1\nc,0\n", r"lesion 'L' has images in 2 folds"),
    ],
)
def test_read_folds_rejects_bad_files(tmp_path, text, needle):
    table = pd.DataFrame({"image_id": list("abc"), "label": list("AAB"),
                          "lesion_id": ["L", "L", None]})
    path = tmp_path / "folds.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=needle) as e:
        read_folds(path, table)
    assert "folds.csv" in str(e.value)


def test_read_folds_validates_in_memory_folds():
    table = pd.DataFrame({"image_id": list("abc"), "label": list("AAB"),
                          "lesion_id": ["L", "L", None]})
    good = pd.Series([1, 1, 0], index=list("abc"))
    assert read_folds(good, table).tolist() == [1, 1, 0]
    frame = pd.DataFrame({"image_id": list("cab"), "fold": [0, 1, 1]})
    assert read_folds(frame, table).tolist() == [1, 1, 0]
    with pytest.raises(DataError, match=r"the folds, row 2, image 'b', column 'fold': '-2'"):
        read_folds(pd.Series([0, -2, 0], index=list("abc")), table)
    with pytest.raises(DataError, match=r"the folds, column 'fold': lesion 'L'"):
        read_folds(pd.Series([0, 1, 0], index=list("abc")), table)


def test_read_folds_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist; make it with skin-core data folds"):
        read_folds(tmp_path / "nope.csv", pd.DataFrame({"image_id": ["a"], "label": ["A"]}))


def test_write_folds_rejects_other_objects(tmp_path):
    with pytest.raises(DataError, match="write_folds expects"):
        write_folds([0, 1], tmp_path / "f.csv")


# ----------------------------------------------------------------------------- calibration


def _largest_lesion_per_class(table: pd.DataFrame) -> pd.Series:
    lesion = table["lesion_id"].fillna(table["image_id"])
    return table.groupby([table["label"], lesion]).size().groupby(level=0).max()


@settings(max_examples=30, deadline=None)
@given(table=tables_st, fraction=st.sampled_from([0.05, 0.1, 0.2, 0.35]),
       seed=st.integers(0, 50))
def test_calibration_split_keeps_lesions_whole_and_each_class_near_the_fraction(
        table, fraction, seed):
    held = calibration_split(table, fraction, seed=seed)
    assert held.index.tolist() == table["image_id"].tolist() and held.dtype == bool
    per_lesion = pd.Series(held.to_numpy()).groupby(table["lesion_id"].to_numpy()).nunique()
    assert (per_lesion == 1).all()  # no lesion on both sides
    n = table["label"].value_counts()
    taken = table["label"][held.to_numpy()].value_counts().reindex(n.index, fill_value=0)
    # within half the class's largest lesion of the target (half an image for singletons)
    bound = _largest_lesion_per_class(table).reindex(n.index) / 2
    assert (np.abs(taken - fraction * n) <= bound + 1e-9).all()
    pd.testing.assert_series_equal(held, calibration_split(table.copy(), fraction, seed=seed))


def test_calibration_split_samples_lesions_of_every_size():
    # 300 single images and 100 four-image lesions of one class: a 20 % share taken largest-first
    # would be all four-image lesions, smallest-first all single images; a random sample mixes
    table = pd.DataFrame({
        "image_id": [f"i{j}" for j in range(700)], "label": "A",
        "lesion_id": [None] * 300 + [f"L{j // 4}" for j in range(400)]})
    held = calibration_split(table, 0.2, seed=0).to_numpy()
    assert held.sum() == 140
    singles, in_lesions = held[:300].sum(), held[300:].sum()
    assert 20 <= singles <= 100 and 40 <= in_lesions <= 120  # expected 60 and 80


def test_calibration_split_differs_by_seed_and_zero_selects_nothing():
    table = random_table(5, 300, 3, 0.4)
    assert not calibration_split(table, 0.1, seed=0).equals(calibration_split(table, 0.1, seed=1))
    assert not calibration_split(table, 0.0).any()
    for bad in (-0.1, 1.0, "0.1", True):
        with pytest.raises(ConfigError, match=r"calibration fraction must be a number in \[0, 1\)"):
            calibration_split(table, bad)


def test_make_folds_with_calibration_folds_the_rest_as_usual():
    table = random_table(7, 400, 4, 0.5)
    folds = make_folds(table, k=4, seed=2, calibration=0.15, calibration_seed=9)
    held = calibration_split(table, 0.15, seed=9)
    assert ((folds == CALIBRATION_FOLD) == held).all()
    rest = table[~held.to_numpy()]
    pd.testing.assert_series_equal(folds[~held], make_folds(rest, k=4, seed=2))
    report = fold_report(table, folds)
    assert report["lesions_in_two_folds"] == 0 and report["k"] == 4
    assert report["n_calibration"] == int(held.sum())
    assert sum(report["fold_sizes"].values()) == len(table) - int(held.sum())
    cal = calibration_report(table, folds)
    assert cal["n_images"] == int(held.sum())
    assert sum(cal["per_class"].values()) == cal["n_images"]
    assert cal["n_groups"] >= cal["n_lesions"] > 0
    assert all(abs(v - 0.15) < 0.06 for v in cal["share"].values())
    # the calibration seed defaults to the folds' seed
    pd.testing.assert_series_equal(make_folds(table, k=4, seed=2, calibration=0.15),
                                   make_folds(table, k=4, seed=2, calibration=0.15,
                                              calibration_seed=2))
    # no calibration = today's folds, unchanged
    pd.testing.assert_series_equal(make_folds(table, k=4, seed=2, calibration=0.0),
                                   make_folds(table, k=4, seed=2))


def test_calibration_fraction_too_small_for_any_lesion_is_an_error():
    table = pd.DataFrame({"image_id": list("abcdef"), "label": list("AAABBB")})
    with pytest.raises(DataError, match="takes no lesion of the 6 images"):
        make_folds(table, k=2, calibration=0.1)


def test_folds_file_with_a_calibration_split_round_trips(tmp_path):
    table = random_table(3, 80, 3, 0.4)
    folds = make_folds(table, k=3, seed=0, calibration=0.2)
    write_folds(folds, tmp_path / "folds.csv")
    back = read_folds(tmp_path / "folds.csv", table)
    pd.testing.assert_series_equal(back, folds)
    assert (back == -1).sum() == (folds == -1).sum() > 0
    # a lesion split between the calibration split and a fold is refused
    lesion = table["lesion_id"].dropna().iloc[0]
    rows = np.flatnonzero((table["lesion_id"] == lesion).to_numpy())
    broken = folds.copy()
    broken.iloc[rows[0]] = -1
    broken.iloc[rows[1]] = 0
    with pytest.raises(DataError, match=f"lesion '{lesion}' has images in 2 folds"):
        read_folds(broken, table)


# ----------------------------------------------------------------------------- real data


@pytest.mark.realdata
@pytest.mark.slow
def test_real_isic2019_folds_leak_no_lesion(isic2019_csv_dir, tmp_path):
    ds = load_dataset(f"isic2019:{isic2019_csv_dir}", check_images=False)
    folds = make_folds(ds, k=5, seed=0)
    report = fold_report(ds, folds)
    assert report["lesions_in_two_folds"] == 0
    # 65% of images share a lesion, yet every class is within a few images of even
    assert all(spread <= 2 for spread in report["max_class_spread"].values())
    assert all(min(row.values()) > 0 for row in report["counts"].values())
    write_folds(folds, tmp_path / "folds.csv")
    pd.testing.assert_series_equal(read_folds(tmp_path / "folds.csv", ds), folds)


@pytest.mark.realdata
def test_real_ham10000_calibration_split(ham10000_dir):
    ds = load_dataset(f"ham10000:{ham10000_dir}")
    folds = make_folds(ds, k=5, seed=0, calibration=0.1)
    report, cal = fold_report(ds, folds), calibration_report(ds, folds)
    assert report["lesions_in_two_folds"] == 0
    assert 950 <= cal["n_images"] <= 1050  # 10 % of 10,015 images
    assert all(abs(share - 0.1) < 0.01 for share in cal["share"].values())
    assert all(spread <= 2 for spread in report["max_class_spread"].values())
