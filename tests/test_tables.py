"""Dataset loaders: every layout, every bad input, skip-bad listing, real-data counts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skin_core.constants import HAM10000_CLASSES, ISIC2019_CLASSES, TABLE_COLUMNS
from skin_core.data import tables
from skin_core.data.tables import (
    Dataset,
    load_dataset,
    parse_spec,
    table_from_frame,
    verify_images,
)
from skin_core.errors import ConfigError, DataError

GT_HEADER = ["image", *ISIC2019_CLASSES, "UNK"]


def _onehot(label: str | None, *extra: str) -> list[str]:
    on = {label, *extra} - {None}
    return ["1.0" if c in on else "0.0" for c in [*ISIC2019_CLASSES, "UNK"]]


def write_isic(
    root: Path,
    rows: list[tuple[str, str | None]],
    meta: list[tuple] | None = None,
    *,
    images: bool | list[str] = True,
    gt_lines: list[str] | None = None,
) -> Path:
    """ISIC 2019 layout: rows = (image, label); meta = (image, age, site, lesion, sex)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [",".join(GT_HEADER)] + [",".join([i, *_onehot(lab)]) for i, lab in rows]
    if gt_lines:
        lines += gt_lines
    (root / tables.ISIC2019_GROUND_TRUTH).write_text("\n".join(lines) + "\n")
    if meta is None:
        meta = [(i, "50", "anterior torso", "", "female") for i, _ in rows]
    mlines = ["image,age_approx,anatom_site_general,lesion_id,sex"] + [
        ",".join(str(v) for v in m) for m in meta
    ]
    (root / tables.ISIC2019_METADATA).write_text("\n".join(mlines) + "\n")
    img_dir = root / tables.ISIC2019_IMAGE_DIR
    img_dir.mkdir(exist_ok=True)
    names = [i for i, _ in rows] if images is True else (images or [])
    for name in names:
        (img_dir / f"{name}.jpg").write_bytes(b"")
    return root


ROWS = [
    ("ISIC_0000000", "NV"),
    ("ISIC_0000001", "MEL"),
    ("ISIC_0000002", "BCC"),
    ("ISIC_0000003_downsampled", "NV"),
    ("ISIC_0000004", "SCC"),
]
META = [
    ("ISIC_0000000", "55", "anterior torso", "", "female"),
    ("ISIC_0000001", "30", "head/neck", "IL_1", "male"),
    ("ISIC_0000002", "", "", "IL_1", ""),
    ("ISIC_0000003_downsampled", "70", "palms/soles", "IL_2", "unknown"),
    ("ISIC_0000004", "45.0", "upper extremity", "", "female"),
]


# ----------------------------------------------------------------------------- specs


def test_parse_spec_splits_kind_path_and_options(tmp_path):
    kind, path, opts = parse_spec(f"ham10000:{tmp_path},gt=a.csv")
    assert (kind, path, opts) == ("ham10000", tmp_path, {"gt": "a.csv"})


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("nocolon", "KIND:PATH"),
        ("imagenet:/x", "must be one of"),
        ("isic2019:", "no path"),
        ("folder:/x,root=/y", "not valid for 'folder'"),
    ],
)
def test_parse_spec_rejects_bad_specs(spec, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_spec(spec)


# ----------------------------------------------------------------------------- ISIC 2019


def test_isic2019_loads_canonical_table(tmp_path):
    root = write_isic(tmp_path / "isic", ROWS, META)
    ds = load_dataset(f"isic2019:{root}")
    t = ds.table
    assert isinstance(ds, Dataset)
    assert list(t.columns) == list(TABLE_COLUMNS)
    assert ds.classes == ISIC2019_CLASSES
    assert t["image_id"].tolist() == [r[0] for r in ROWS]  # _downsampled is an ordinary id
    assert t["label"].tolist() == ["NV", "MEL", "BCC", "NV", "SCC"]
    assert ds.label_index().tolist() == [1, 0, 2, 1, 7]
    assert all(os.path.isabs(p) and os.path.exists(p) for p in t["path"])
    assert t["path"].iloc[3].endswith("ISIC_0000003_downsampled.jpg")
    assert t["age_approx"].dtype == np.float64
    assert t["age_approx"].isna().tolist() == [False, False, True, False, False]
    assert t["age_approx"].iloc[4] == 45.0
    assert t["sex"].tolist()[:2] == ["female", "male"]
    assert t["sex"].isna().tolist() == [False, False, True, True, False]
    assert t["lesion_id"].isna().tolist() == [True, False, False, False, True]
    assert t["anatom_site_general"].isna().sum() == 1
    assert ds.root == root.resolve()
    assert ds.skipped.empty


def test_summary_counts_and_keys(tmp_path):
    ds = load_dataset(f"isic2019:{write_isic(tmp_path / 'isic', ROWS, META)}")
    s = ds.summary()
    assert s["n_images"] == 5
    assert s["classes"] == {"MEL": 1, "NV": 2, "BCC": 1, "AK": 0, "BKL": 0, "DF": 0,
                            "VASC": 0, "SCC": 1}
    assert s["n_lesions"] == 2  # IL_1, IL_2
    assert s["n_groups"] == 4  # + two images without lesion_id
    assert s["missing"] == {"lesion_id": 2, "age_approx": 1, "sex": 2, "anatom_site_general": 1}
    assert s["n_skipped"] == 0


def test_fingerprint_ignores_order_and_paths_but_not_labels(tmp_path):
    ds = load_dataset(f"isic2019:{write_isic(tmp_path / 'isic', ROWS, META)}")
    shuffled = Dataset(ds.table.iloc[::-1].assign(path="x"), ds.classes)
    assert shuffled.fingerprint() == ds.fingerprint()
    relabelled = ds.table.copy()
    relabelled.loc[0, "label"] = "MEL"
    assert Dataset(relabelled, ds.classes).fingerprint() != ds.fingerprint()
    assert len(ds.fingerprint()) == 64


def test_isic2019_unk_column_optional(tmp_path):
    root = write_isic(tmp_path / "isic", ROWS[:2])
    gt = pd.read_csv(root / tables.ISIC2019_GROUND_TRUTH).drop(columns="UNK")
    gt.to_csv(root / tables.ISIC2019_GROUND_TRUTH, index=False)
    assert load_dataset(f"isic2019:{root}").table["label"].tolist() == ["NV", "MEL"]


@pytest.mark.parametrize(
    "bad_row, needle",
    [
        ("ISIC_9,0,0,0,0,0,0,0,0,0", "no class column is 1"),
        ("ISIC_9,1,1,0,0,0,0,0,0,0", "2 class columns are 1 \\(MEL and NV\\)"),
        ("ISIC_9,0,0,0,0,0,0,0,0,1", "labelled UNK"),
        ("ISIC_9,0,yes,0,0,0,0,0,0,0", "value 'yes' is not 0 or 1"),
        ("ISIC_9,0,0.5,0,0,0,0,0,0,0", "value '0.5' is not 0 or 1"),
    ],
)
def test_isic2019_bad_onehot_row_names_file_line_and_id(tmp_path, bad_row, needle):
    root = write_isic(tmp_path / "isic", ROWS[:2], gt_lines=[bad_row], images=True)
    (root / tables.ISIC2019_IMAGE_DIR / "ISIC_9.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=needle) as e:
        load_dataset(f"isic2019:{root}")
    msg = str(e.value)
    assert tables.ISIC2019_GROUND_TRUTH in msg and "line 4" in msg and "ISIC_9" in msg
    assert "--skip-bad" in msg


def test_isic2019_skip_bad_lists_every_bad_row(tmp_path):
    bad = ["ISIC_8,0,0,0,0,0,0,0,0,0", "ISIC_9,1,1,0,0,0,0,0,0,0", "ISIC_0000000,0,1,0,0,0,0,0,0,0"]
    root = write_isic(tmp_path / "isic", ROWS[:3], gt_lines=bad)
    with pytest.raises(DataError, match=r"2 more rows also have problems"):
        load_dataset(f"isic2019:{root}")
    ds = load_dataset(f"isic2019:{root}", skip_bad=True)
    assert ds.table["image_id"].tolist() == [r[0] for r in ROWS[:3]]
    sk = ds.skipped
    assert list(sk.columns) == ["file", "line", "image_id", "column", "reason"]
    assert sk["image_id"].tolist() == ["ISIC_8", "ISIC_9", "ISIC_0000000"]
    assert sk["line"].tolist() == [5, 6, 7]
    assert "no class column" in sk["reason"].iloc[0]
    assert "duplicate image id (first at line 2)" in sk["reason"].iloc[2]
    assert ds.summary()["n_skipped"] == 3
    assert any("skipped" in n for n in ds.notes)


def test_isic2019_missing_files_and_columns(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"isic2019:{tmp_path / 'nope'}")
    root = write_isic(tmp_path / "isic", ROWS[:2])
    (root / tables.ISIC2019_METADATA).unlink()
    with pytest.raises(DataError, match="ISIC 2019 metadata CSV .* does not exist"):
        load_dataset(f"isic2019:{root}")
    root = write_isic(tmp_path / "isic2", ROWS[:2])
    gt = pd.read_csv(root / tables.ISIC2019_GROUND_TRUTH).drop(columns="DF")
    gt.to_csv(root / tables.ISIC2019_GROUND_TRUTH, index=False)
    with pytest.raises(DataError, match="has no column 'DF'"):
        load_dataset(f"isic2019:{root}")
    (root / tables.ISIC2019_GROUND_TRUTH).unlink()
    with pytest.raises(DataError, match="ground-truth CSV .* does not exist"):
        load_dataset(f"isic2019:{root}")


def test_isic2019_metadata_without_lesion_id_column_is_noted(tmp_path):
    root = write_isic(tmp_path / "isic", ROWS[:2], META[:2])
    meta = pd.read_csv(root / tables.ISIC2019_METADATA).drop(columns="lesion_id")
    meta.to_csv(root / tables.ISIC2019_METADATA, index=False)
    ds = load_dataset(f"isic2019:{root}")
    assert ds.table["lesion_id"].isna().all()
    assert any("no column lesion_id" in n and "own group" in n for n in ds.notes)


def test_isic2019_duplicate_metadata_row_is_an_error(tmp_path):
    root = write_isic(tmp_path / "isic", ROWS[:2], [*META[:2], META[1]])
    with pytest.raises(DataError, match=r"line 4, image 'ISIC_0000001'.*row at line 3"):
        load_dataset(f"isic2019:{root}")


def test_isic2019_non_numeric_age_names_metadata_line(tmp_path):
    meta = [META[0], ("ISIC_0000001", "thirty", "head/neck", "", "male")]
    root = write_isic(tmp_path / "isic", ROWS[:2], meta)
    with pytest.raises(DataError) as e:
        load_dataset(f"isic2019:{root}")
    msg = str(e.value)
    assert tables.ISIC2019_METADATA in msg and "line 3" in msg
    assert "column 'age_approx'" in msg and "'thirty'" in msg
    ds = load_dataset(f"isic2019:{root}", skip_bad=True)
    assert ds.table["image_id"].tolist() == ["ISIC_0000000"]
    assert ds.skipped["column"].tolist() == ["age_approx"]


def test_isic2019_missing_image_is_an_error_unless_unchecked(tmp_path):
    root = write_isic(tmp_path / "isic", ROWS, META, images=[r[0] for r in ROWS[1:]])
    with pytest.raises(DataError, match=r"image 'ISIC_0000000', column 'path'.*missing"):
        load_dataset(f"isic2019:{root}")
    ds = load_dataset(f"isic2019:{root}", check_images=False)
    assert len(ds) == 5
    assert ds.table["path"].iloc[0] == str(
        root.resolve() / tables.ISIC2019_IMAGE_DIR / "ISIC_0000000.jpg"
    )
    ds = load_dataset(f"isic2019:{root}", skip_bad=True)
    assert len(ds) == 4 and ds.skipped["image_id"].tolist() == ["ISIC_0000000"]


def test_isic2019_csvs_alone_need_check_images_false(tmp_path):
    root = write_isic(tmp_path / "isic", ROWS, META, images=False)
    (root / tables.ISIC2019_IMAGE_DIR).rmdir()
    with pytest.raises(DataError, match="--no-check-images"):
        load_dataset(f"isic2019:{root}")
    assert len(load_dataset(f"isic2019:{root}", check_images=False)) == 5


def test_isic2019_other_image_extension_is_found(tmp_path):
    root = write_isic(tmp_path / "isic", ROWS[:2], images=["ISIC_0000000"])
    (root / tables.ISIC2019_IMAGE_DIR / "ISIC_0000001.PNG").write_bytes(b"")
    ds = load_dataset(f"isic2019:{root}")
    assert ds.table["path"].iloc[1].endswith("ISIC_0000001.PNG")


def test_metadata_gaps_and_odd_values_are_reported_not_imputed(tmp_path):
    meta = [("ISIC_0000000", "55", "belly", "", "X"), ("ISIC_0000002", "1", "", "", "m")]
    root = write_isic(tmp_path / "isic", ROWS[:2], meta)
    ds = load_dataset(f"isic2019:{root}")
    t = ds.table
    assert t["sex"].isna().tolist() == [True, True]
    assert t["anatom_site_general"].isna().all()
    assert t["age_approx"].iloc[1] != t["age_approx"].iloc[1]  # NaN, never imputed
    notes = " | ".join(ds.notes)
    assert "'X' x1" in notes and "'belly' x1" in notes
    assert "1 image(s) have no row" in notes and "1 metadata row(s) name images not in" in notes


def test_image_check_uses_one_listing_not_a_stat_per_file(tmp_path, monkeypatch):
    rows = [(f"ISIC_{i:07d}", "NV") for i in range(300)]
    root = write_isic(tmp_path / "isic", rows)
    calls = {"n": 0}
    real_stat = os.stat

    def counting_stat(*args, **kwargs):
        calls["n"] += 1
        return real_stat(*args, **kwargs)

    monkeypatch.setattr(os, "stat", counting_stat)
    ds = load_dataset(f"isic2019:{root}")
    assert len(ds) == 300
    assert calls["n"] < 30  # a handful for the CSVs and folders, not one per image


# ----------------------------------------------------------------------------- HAM10000

HAM_ROWS = [
    # lesion_id, image_id, dx, dx_type, age, sex, localization
    ("HAM_1", "ISIC_0024306", "nv", "follow_up", "45.0", "male", "back"),
    ("HAM_1", "ISIC_0024307", "nv", "follow_up", "45.0", "male", "back"),
    ("HAM_2", "ISIC_0024308", "akiec", "histo", "", "unknown", "face"),
    ("HAM_3", "ISIC_0024309", "akiec", "histo", "70.0", "female", "trunk"),
    ("HAM_4", "ISIC_0024310", "mel", "histo", "60.0", "female", "genital"),
    ("HAM_5", "ISIC_0024311", "bkl", "histo", "80.0", "male", "unknown"),
]


def write_ham(root: Path, rows=HAM_ROWS, *, layout: str = "images") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    header = "lesion_id,image_id,dx,dx_type,age,sex,localization"
    lines = [header] + [",".join(r) for r in rows]
    (root / tables.HAM10000_METADATA).write_text("\n".join(lines) + "\n")
    for i, r in enumerate(rows):
        if layout == "images":
            d = root / "images"
        elif layout == "parts":
            d = root / f"HAM10000_images_part_{1 + i % 2}"
        else:
            d = root
        d.mkdir(exist_ok=True)
        (d / f"{r[1]}.jpg").write_bytes(b"")
    return root


@pytest.mark.parametrize("layout", ["images", "parts", "flat"])
def test_ham10000_seven_classes_in_every_image_layout(tmp_path, layout):
    ds = load_dataset(f"ham10000:{write_ham(tmp_path / 'ham', layout=layout)}")
    t = ds.table
    assert ds.classes == HAM10000_CLASSES
    assert t["label"].tolist() == ["nv", "nv", "akiec", "akiec", "mel", "bkl"]
    assert all(os.path.exists(p) for p in t["path"])
    if layout == "parts":
        assert "HAM10000_images_part_2" in t["path"].iloc[1]
    assert t["lesion_id"].tolist()[:3] == ["HAM_1", "HAM_1", "HAM_2"]
    assert t["age_approx"].isna().tolist() == [False, False, True, False, False, False]
    assert t["sex"].isna().tolist() == [False, False, True, False, False, False]


def test_ham10000_sites_are_mapped_to_isic_vocabulary(tmp_path):
    ds = load_dataset(f"ham10000:{write_ham(tmp_path / 'ham')}")
    sites = ds.table["anatom_site_general"].tolist()
    assert sites[:3] == ["posterior torso", "posterior torso", "head/neck"]
    assert sites[3] == "trunk"  # a site of its own: the side of the torso is not recorded
    assert sites[4] == "oral/genital"
    assert pd.isna(sites[5])  # unknown: missing
    assert not any("trunk" in n for n in ds.notes)  # a known value, not a reported one


def test_every_ham10000_localization_maps_into_the_site_vocabulary():
    from skin_core.constants import ISIC2019_SITE_VALUES, SITE_TRUNK, SITE_VALUES

    assert set(tables.HAM10000_SITE_MAP.values()) <= set(SITE_VALUES)
    assert tables.HAM10000_SITE_MAP["trunk"] == SITE_TRUNK == SITE_VALUES[-1]
    assert SITE_VALUES[:-1] == ISIC2019_SITE_VALUES  # ISIC 2019 values keep their positions


def test_trunk_is_a_site_in_csv_datasets_too(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.jpg").write_bytes(b"")
    pd.DataFrame({"image_id": ["a", "b"], "label": ["MEL", "NV"],
                  "anatom_site_general": ["Trunk", "belly"]}).to_csv(tmp_path / "d.csv",
                                                                     index=False)
    ds = load_dataset(f"csv:{tmp_path / 'd.csv'}")
    assert ds.table["anatom_site_general"].iloc[0] == "trunk"
    assert pd.isna(ds.table["anatom_site_general"].iloc[1])
    assert any("'belly' x1" in n for n in ds.notes)


def write_gt(path: Path, rows: list[tuple[str, str]]) -> Path:
    lines = [",".join(GT_HEADER)] + [",".join([i, *_onehot(lab)]) for i, lab in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


GT_FOR_HAM = [
    ("ISIC_0024306", "NV"),
    ("ISIC_0024307", "NV"),
    ("ISIC_0024308", "AK"),
    ("ISIC_0024309", "SCC"),
    ("ISIC_0024310", "MEL"),
    ("ISIC_0024311", "BKL"),
]


def test_ham10000_with_isic_ground_truth_splits_akiec(tmp_path):
    root = write_ham(tmp_path / "ham")
    gt = write_gt(tmp_path / "gt.csv", GT_FOR_HAM)
    ds = load_dataset(f"ham10000:{root},gt={gt}")
    assert ds.classes == ISIC2019_CLASSES
    assert ds.table["label"].tolist() == ["NV", "NV", "AK", "SCC", "MEL", "BKL"]
    # relative gt= resolves against the dataset folder, and isic2019_csv= is an alias
    (root / "gt.csv").write_text(gt.read_text())
    alias = load_dataset(f"ham10000:{root},isic2019_csv=gt.csv")
    assert alias.table["label"].tolist() == ds.table["label"].tolist()


def test_ham10000_ground_truth_conflicts_are_errors(tmp_path):
    root = write_ham(tmp_path / "ham")
    rows = [*GT_FOR_HAM[:4], ("ISIC_0024310", "NV")]  # mel vs NV; ISIC_0024311 absent
    gt = write_gt(tmp_path / "gt.csv", rows)
    with pytest.raises(DataError, match=r"line 6, image 'ISIC_0024310', column 'dx'.*disagrees"):
        load_dataset(f"ham10000:{root},gt={gt}")
    ds = load_dataset(f"ham10000:{root},gt={gt}", skip_bad=True)
    reasons = dict(zip(ds.skipped["image_id"], ds.skipped["reason"], strict=True))
    assert set(reasons) == {"ISIC_0024310", "ISIC_0024311"}
    assert "not in the ISIC 2019 ground truth" in reasons["ISIC_0024311"]


def test_ham10000_bad_age_names_the_age_column(tmp_path):
    rows = [*HAM_ROWS[:2], ("HAM_9", "ISIC_0024312", "nv", "histo", "old", "male", "back")]
    root = write_ham(tmp_path / "ham", rows)
    with pytest.raises(DataError, match=r"line 4, image 'ISIC_0024312', column 'age': age 'old'"):
        load_dataset(f"ham10000:{root}")


def test_ham10000_unknown_dx_and_missing_images(tmp_path):
    rows = [*HAM_ROWS[:2], ("HAM_9", "ISIC_0099999", "melanoma", "histo", "1", "male", "back")]
    root = write_ham(tmp_path / "ham", rows)
    with pytest.raises(DataError, match=r"unknown class 'melanoma'; expected one of akiec"):
        load_dataset(f"ham10000:{root}")
    (root / "images" / "ISIC_0024306.jpg").unlink()
    ds = load_dataset(f"ham10000:{root}", skip_bad=True)
    assert ds.table["image_id"].tolist() == ["ISIC_0024307"]
    assert ds.skipped["column"].tolist() == ["path", "label"]
    empty = write_ham(tmp_path / "ham2")
    for p in (empty / "images").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="No image files were found"):
        load_dataset(f"ham10000:{empty}")


# ----------------------------------------------------------------------------- folder


def write_folder(root: Path, layout: dict[str, list[str]]) -> Path:
    for cls, names in layout.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for n in names:
            (root / cls / n).write_bytes(b"")
    return root


def test_folder_one_subfolder_per_class(tmp_path):
    root = write_folder(tmp_path / "f", {"NV": ["b.jpg", "a.png"], "MEL": ["c.JPG", "notes.txt"]})
    ds = load_dataset(f"folder:{root}")
    assert ds.classes == ("MEL", "NV")  # ISIC 2019 order
    assert ds.table["image_id"].tolist() == ["c", "a", "b"]
    assert ds.table["label"].tolist() == ["MEL", "NV", "NV"]
    assert ds.table["lesion_id"].isna().all()
    assert any("not images" in n for n in ds.notes)
    other = write_folder(tmp_path / "g", {"zeta": ["a.jpg"], "alpha": ["b.jpg"]})
    assert load_dataset(f"folder:{other}").classes == ("alpha", "zeta")


def test_folder_duplicate_stems_are_an_error(tmp_path):
    root = write_folder(tmp_path / "f", {"NV": ["a.jpg", "b.jpg"], "MEL": ["a.png"]})
    with pytest.raises(DataError, match=r"image 'a'.*appears in class folders MEL, NV"):
        load_dataset(f"folder:{root}")
    ds = load_dataset(f"folder:{root}", skip_bad=True)
    assert ds.table["image_id"].tolist() == ["b"]
    assert ds.skipped["image_id"].tolist() == ["a", "a"]


def test_folder_without_subfolders_is_an_error(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="one sub-folder per class"):
        load_dataset(f"folder:{tmp_path}")


# ----------------------------------------------------------------------------- csv / frame


def test_csv_with_root_and_optional_columns(tmp_path):
    img = tmp_path / "imgs"
    img.mkdir()
    for n in ("a", "b", "c"):
        (img / f"{n}.jpg").write_bytes(b"")
    csv = tmp_path / "d.csv"
    pd.DataFrame({
        "image_id": ["a", "b", "c"], "label": ["nv", "mel", "nv"], "age": ["3", "", "90"],
        "lesion_id": ["L", "L", ""], "source": ["x", "y", "x"], "extra": [1, 2, 3],
    }).to_csv(csv, index=False)
    ds = load_dataset(f"csv:{csv},root={img}")
    assert ds.classes == ("mel", "nv")  # HAM10000 vocabulary order
    assert ds.table["path"].tolist() == [str(img.resolve() / f"{n}.jpg") for n in "abc"]
    assert ds.table["age_approx"].tolist()[::2] == [3.0, 90.0]
    assert ds.table["source"].tolist() == ["x", "y", "x"]
    assert "extra" not in ds.table.columns


def test_csv_path_column_and_classes_option(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jpg").write_bytes(b"")
    csv = tmp_path / "d.csv"
    csv.write_text("image_id,label,path\na,B,sub/a.jpg\nb,A,sub/b.jpg\n")
    with pytest.raises(DataError, match=r"d.csv, line 3, image 'b', column 'path'") as e:
        load_dataset(f"csv:{csv}")
    assert f"{tmp_path / 'sub' / 'b.jpg'} does not exist" in str(e.value)
    ds = load_dataset(f"csv:{csv},classes=B|A|C", check_images=False)
    assert ds.classes == ("B", "A", "C") and ds.label_index().tolist() == [0, 1]
    with pytest.raises(DataError, match=r"unknown class 'A'; expected one of B, C"):
        load_dataset(f"csv:{csv},classes=B|C", check_images=False)


def test_csv_missing_column_and_file(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("image,label\na,B\n")
    with pytest.raises(DataError, match=r"has no column 'image_id' \(found 'image', 'label'\)"):
        load_dataset(f"csv:{csv}")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"csv:{tmp_path / 'none.csv'}")


def test_saved_table_round_trips_through_csv_spec(tmp_path):
    root = write_isic(tmp_path / "isic", ROWS, META)
    ds = load_dataset(f"isic2019:{root}")
    ds.table.to_csv(tmp_path / "dataset.csv", index=False)
    back = load_dataset(f"csv:{tmp_path / 'dataset.csv'},classes={'|'.join(ISIC2019_CLASSES)}")
    pd.testing.assert_frame_equal(back.table, ds.table)
    assert back.fingerprint() == ds.fingerprint()


def test_table_from_frame_validates_in_memory_frames(tmp_path):
    df = pd.DataFrame({"image_id": ["x", "y"], "label": ["NV", "MEL"], "sex": ["X", "F"]})
    ds = table_from_frame(df, ISIC2019_CLASSES, tmp_path)
    assert ds.table["path"].tolist() == [str(tmp_path / "x.jpg"), str(tmp_path / "y.jpg")]
    assert ds.table["sex"].tolist()[1] == "female" and pd.isna(ds.table["sex"].iloc[0])
    assert ds.classes == ISIC2019_CLASSES and ds.spec == "frame"
    assert table_from_frame(df).classes == ("MEL", "NV")
    with pytest.raises(DataError, match=r"DataFrame, row 2, image 'y', column 'label'"):
        table_from_frame(df, ("NV",))
    with pytest.raises(DataError, match="has no column 'label'"):
        table_from_frame(df.drop(columns="label"))
    with pytest.raises(DataError, match=r"row 3, image 'x'.*duplicate image id \(first at row 1\)"):
        table_from_frame(pd.concat([df, df.iloc[:1]]))
    with pytest.raises(DataError, match="column 'path'"):
        table_from_frame(df, ISIC2019_CLASSES, tmp_path, check_images=True)


def test_all_rows_bad_is_an_error_even_with_skip_bad(tmp_path):
    root = write_isic(tmp_path / "isic", ROWS[:2], images=False)
    with pytest.raises(DataError, match=r"no usable images \(2 rows were skipped\)"):
        load_dataset(f"isic2019:{root}", skip_bad=True)


def test_verify_images_refuses_or_skips_unreadable_files(tmp_path):
    from PIL import Image

    root = write_isic(tmp_path / "isic", ROWS[:4], images=[])
    img = root / tables.ISIC2019_IMAGE_DIR
    Image.new("RGB", (40, 30), (200, 120, 90)).save(img / "ISIC_0000000.jpg")
    Image.new("L", (20, 20), 128).save(img / "ISIC_0000001.png")
    good = (img / "ISIC_0000000.jpg").read_bytes()
    (img / "ISIC_0000002.jpg").write_bytes(good[: len(good) // 2])  # truncated
    (img / "ISIC_0000003_downsampled.jpg").write_bytes(b"")  # empty
    ds = load_dataset(f"isic2019:{root}")  # existence only: all four are there
    assert len(ds) == 4
    with pytest.raises(DataError, match=r"(?i)Image 'ISIC_0000002', column 'path': .*truncat") as e:
        verify_images(ds)
    assert "1 more unreadable image(s)" in str(e.value)
    checked = verify_images(ds, skip_bad=True)
    assert checked.table["image_id"].tolist() == ["ISIC_0000000", "ISIC_0000001"]
    assert checked.skipped["image_id"].tolist() == ["ISIC_0000002", "ISIC_0000003_downsampled"]
    assert "empty (0 bytes)" in checked.skipped["reason"].iloc[1]
    fine = table_from_frame(ds.table.iloc[:2], ISIC2019_CLASSES)
    assert verify_images(fine) is fine


# ----------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_ham10000_counts(ham10000_dir):
    ds = load_dataset(f"ham10000:{ham10000_dir}")
    s = ds.summary()
    assert s["n_images"] == 10_015
    assert s["classes"] == {"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113,
                            "nv": 6705, "vasc": 142}
    assert s["n_lesions"] == 7_470
    assert s["missing"]["lesion_id"] == 0
    assert ds.skipped.empty


@pytest.mark.realdata
def test_real_ham10000_trunk_is_a_site_of_its_own(ham10000_dir):
    ds = load_dataset(f"ham10000:{ham10000_dir}")
    site = ds.table["anatom_site_general"]
    assert int((site == "trunk").sum()) == 1_404
    assert int(site.isna().sum()) == 234  # only 'unknown' is missing now
    assert set(site.dropna()) <= set(tables.SITE_VALUES)
    assert not any("localization" in n for n in ds.notes)  # every value is known


@pytest.mark.realdata
def test_real_ham10000_eight_class_mapping(ham10000_dir, isic2019_csv_dir):
    gt = isic2019_csv_dir / tables.ISIC2019_GROUND_TRUTH
    s = load_dataset(f"ham10000:{ham10000_dir},gt={gt}").summary()
    assert s["classes"]["AK"] == 130 and s["classes"]["SCC"] == 197
    assert s["classes"]["MEL"] == 1113 and s["n_images"] == 10_015


@pytest.mark.realdata
def test_real_isic2019_csvs_load_with_official_counts(isic2019_csv_dir):
    ds = load_dataset(f"isic2019:{isic2019_csv_dir}", check_images=False)
    s = ds.summary()
    assert s["n_images"] == 25_331
    assert s["classes"] == {"MEL": 4522, "NV": 12875, "BCC": 3323, "AK": 867, "BKL": 2624,
                            "DF": 239, "VASC": 253, "SCC": 628}
    assert s["n_lesions"] == 11_847
    assert s["missing"] == {"lesion_id": 2084, "age_approx": 437, "sex": 384,
                            "anatom_site_general": 2631}
    assert int(ds.table["image_id"].str.endswith("_downsampled").sum()) == 2074
    with pytest.raises(DataError, match="ISIC_2019_Training_Input does not exist"):
        load_dataset(f"isic2019:{isic2019_csv_dir}")
