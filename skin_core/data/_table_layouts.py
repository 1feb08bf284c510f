"""The layout loaders behind :func:`skin_core.data.tables.load_dataset`.

One private loader per dataset kind (``isic2019``, ``ham10000``, ``folder``, ``csv``; the
layouts are described in :mod:`skin_core.data.tables`), each reading its files into a frame
and validating it with :func:`skin_core.data._table_checks._finalize`. The file and folder
names of the official layouts and the HAM10000 site mapping live here and are re-exported by
:mod:`skin_core.data.tables`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from skin_core.constants import (
    AGE,
    HAM10000_CLASSES,
    HAM10000_TO_ISIC2019,
    IMAGE_EXTENSIONS,
    IMAGE_ID,
    ISIC2019_CLASSES,
    ISIC2019_UNKNOWN,
    LABEL,
    LESION_ID,
    PATH,
    SEX,
    SITE,
    SITE_TRUNK,
)
from skin_core.data._dataset import Dataset
from skin_core.data._table_checks import (
    _default_classes,
    _expand,
    _finalize,
    _isin,
    _Problems,
    _read_csv,
    _strip,
    list_images,
)
from skin_core.errors import DataError

ISIC2019_GROUND_TRUTH = "ISIC_2019_Training_GroundTruth.csv"
ISIC2019_METADATA = "ISIC_2019_Training_Metadata.csv"
ISIC2019_IMAGE_DIR = "ISIC_2019_Training_Input"
HAM10000_METADATA = "HAM10000_metadata.csv"
#: Image folders searched for ``ham10000:DIR``, in order (the first file found for an id wins).
HAM10000_IMAGE_DIRS: tuple[str, ...] = (
    ".",
    "images",
    "HAM10000_images_part_1",
    "HAM10000_images_part_2",
    "ham10000_images_part_1",
    "ham10000_images_part_2",
)

#: HAM10000 ``localization`` -> ``anatom_site_general``. Every entry but ``genital`` and
#: ``trunk`` is exactly the mapping the ISIC archive applied to the same 10,015 images in
#: ``ISIC_2019_Training_Metadata.csv`` (checked by joining the two files). ISIC left
#: ``genital`` missing; it maps unambiguously to ``oral/genital``, so it is mapped here. ISIC
#: also left ``trunk`` missing (anterior, posterior or lateral is not recorded); it is a site of
#: its own here (``constants.SITE_TRUNK``), not a missing value. ``unknown`` stays missing.
HAM10000_SITE_MAP: dict[str, str] = {
    "abdomen": "anterior torso",
    "chest": "anterior torso",
    "back": "posterior torso",
    "face": "head/neck",
    "ear": "head/neck",
    "neck": "head/neck",
    "scalp": "head/neck",
    "upper extremity": "upper extremity",
    "hand": "upper extremity",
    "lower extremity": "lower extremity",
    "foot": "lower extremity",
    "acral": "palms/soles",
    "genital": "oral/genital",
    "trunk": SITE_TRUNK,
}


# --------------------------------------------------------------------------- ISIC 2019


def _read_isic_ground_truth(
    path: Path, problems: _Problems
) -> tuple[pd.DataFrame, list[str]]:
    """One-hot ground truth -> frame ``image_id, label, _line, _file`` (bad rows in problems)."""
    # class columns are parsed by the C parser (floats); text in them falls back to strings
    gt = _read_csv(path, what="ISIC 2019 ground-truth CSV", required=("image", *ISIC2019_CLASSES),
                   dtype={"image": str})
    cols = list(ISIC2019_CLASSES) + ([ISIC2019_UNKNOWN] if ISIC2019_UNKNOWN in gt.columns else [])
    gt = gt.rename(columns={"image": IMAGE_ID})
    raw = gt[cols]
    try:  # fast path: pyarrow casts clean numeric text in C
        values = raw.astype("float64")
    except (ValueError, TypeError):
        values = raw.astype(object).apply(pd.to_numeric, errors="coerce")
    bad_value = (raw.notna() & ~values.isin([0.0, 1.0])).to_numpy()
    values = values.fillna(0.0).to_numpy(dtype=float, copy=True)
    if bad_value.any():
        rows = bad_value.any(axis=1)
        first_col = np.argmax(bad_value, axis=1)
        reason = [
            f"value '{raw.iat[i, first_col[i]]}' is not 0 or 1 (one-hot labels)"
            for i in np.flatnonzero(rows)
        ]
        col_names = np.array(cols)[first_col[rows]]
        for col in np.unique(col_names):
            m = np.zeros(len(gt), dtype=bool)
            idx = np.flatnonzero(rows)[col_names == col]
            m[idx] = True
            r = pd.Series(_expand(m, np.array(reason, dtype=object)[col_names == col]),
                          index=gt.index)
            problems.add(m, gt, column=str(col), reason=r)
        values[bad_value] = 0.0
    bad_rows = bad_value.any(axis=1)
    ones = values == 1.0
    n_ones = ones.sum(axis=1)
    none = (n_ones == 0) & ~bad_rows
    problems.add(none, gt, column=",".join(ISIC2019_CLASSES),
                 reason="no class column is 1 (one-hot row with no label); set exactly one")
    many = (n_ones >= 2) & ~bad_rows
    if many.any():
        names = np.array(cols)
        reason = [
            f"{n} class columns are 1 ({' and '.join(names[ones[i]])}); set exactly one"
            for i, n in zip(np.flatnonzero(many), n_ones[many], strict=True)
        ]
        problems.add(many, gt, column=",".join(cols),
                     reason=pd.Series(_expand(many, np.array(reason, dtype=object)),
                                      index=gt.index))
    label_idx = np.argmax(ones, axis=1)
    labels = np.array(cols, dtype=object)[label_idx]
    unk = (n_ones == 1) & (labels == ISIC2019_UNKNOWN)
    problems.add(unk, gt, column=ISIC2019_UNKNOWN,
                 reason="the row is labelled UNK, which is not a training class; give it one "
                 "of " + ", ".join(ISIC2019_CLASSES) + " or delete it")
    ok = n_ones == 1
    gt[LABEL] = pd.Series(np.where(ok & ~unk, labels, None), index=gt.index, dtype="str")
    return gt[[IMAGE_ID, LABEL, "_line", "_file"]], cols


def _load_isic2019(
    root: Path, options: dict[str, str], *, spec: str, skip_bad: bool, check_images: bool
) -> Dataset:
    root = root.resolve()
    if not root.is_dir():
        raise DataError(f"The ISIC 2019 folder {root} does not exist; check the spec path.")
    problems = _Problems()
    notes: list[str] = []
    gt, _ = _read_isic_ground_truth(root / ISIC2019_GROUND_TRUTH, problems)
    meta = _read_csv(root / ISIC2019_METADATA, what="ISIC 2019 metadata CSV", required=("image",))
    meta = meta.rename(columns={"image": IMAGE_ID, "_line": "_meta_line", "_file": "_meta_file"})
    meta[IMAGE_ID] = _strip(meta[IMAGE_ID])
    mdup = meta[IMAGE_ID].notna() & meta[IMAGE_ID].duplicated(keep="first")
    if mdup.any():
        second = meta.loc[mdup].iloc[0]
        first_line = meta.loc[meta[IMAGE_ID] == second[IMAGE_ID], "_meta_line"].iloc[0]
        raise DataError(
            f"{second['_meta_file']}, line {second['_meta_line']}, image '{second[IMAGE_ID]}', "
            f"column 'image': the image already has a metadata row at line {first_line} "
            f"({int(mdup.sum())} repeated rows in all); keep one row per image."
        )
    meta_cols = [c for c in (AGE, SEX, SITE, LESION_ID) if c in meta.columns]
    absent = [c for c in (AGE, SEX, SITE, LESION_ID) if c not in meta.columns]
    if absent:
        notes.append(
            f"{ISIC2019_METADATA} has no column {', '.join(absent)}; those values are missing"
            + (" and every image is its own group in folds (lesions cannot be kept together)"
               if LESION_ID in absent else "")
        )
    frame = gt.copy()
    frame[IMAGE_ID] = _strip(frame[IMAGE_ID])
    frame = frame.merge(meta[[IMAGE_ID, "_meta_line", "_meta_file", *meta_cols]], on=IMAGE_ID,
                        how="left", sort=False, validate="many_to_one")
    no_meta = frame["_meta_line"].isna() & frame[IMAGE_ID].notna()
    if no_meta.any():
        notes.append(f"{int(no_meta.sum())} image(s) have no row in {ISIC2019_METADATA}; "
                     "their metadata is missing")
    extra = ~_isin(meta[IMAGE_ID], frame[IMAGE_ID])
    if extra.any():
        notes.append(f"{int(extra.sum())} metadata row(s) name images not in "
                     f"{ISIC2019_GROUND_TRUTH}; they were ignored")
    frame["_meta_file"] = frame["_meta_file"].fillna(str(root / ISIC2019_METADATA))
    image_dir = root / ISIC2019_IMAGE_DIR
    if check_images and not image_dir.is_dir():
        raise DataError(
            f"The ISIC 2019 image folder {image_dir} does not exist; put the images there, or "
            "load the CSVs alone with --no-check-images (check_images=False)."
        )
    return _finalize(
        frame,
        classes=ISIC2019_CLASSES,
        problems=problems,
        notes=notes,
        spec=spec,
        root=root,
        skip_bad=skip_bad,
        check_images=check_images,
        image_index=list_images([image_dir]),
        default_dir=image_dir,
        age_line_col="_meta_line",
        age_file_col="_meta_file",
    )


# --------------------------------------------------------------------------- HAM10000


def _load_ham10000(
    root: Path, options: dict[str, str], *, spec: str, skip_bad: bool, check_images: bool
) -> Dataset:
    root = root.resolve()
    if not root.is_dir():
        raise DataError(f"The HAM10000 folder {root} does not exist; check the spec path.")
    problems = _Problems()
    notes: list[str] = []
    meta = _read_csv(root / HAM10000_METADATA, what="HAM10000 metadata CSV",
                     required=(IMAGE_ID, "dx", LESION_ID))
    meta[IMAGE_ID] = _strip(meta[IMAGE_ID])
    dx = _strip(meta["dx"]).str.lower()
    gt_text = options.get("gt") or options.get("isic2019_csv")
    if gt_text:
        gt_path = Path(gt_text).expanduser()
        if not gt_path.is_absolute() and not gt_path.exists():
            gt_path = root / gt_path
        classes: tuple[str, ...] = ISIC2019_CLASSES
        gt_problems = _Problems()
        gt, _ = _read_isic_ground_truth(gt_path.resolve(), gt_problems)
        gt_bad = gt_problems.frame()
        gt = gt.assign(_gt_bad=gt.index.isin(gt_bad["_row"]))
        gt[IMAGE_ID] = _strip(gt[IMAGE_ID])
        gt = gt.drop_duplicates(IMAGE_ID)
        lookup = gt.set_index(IMAGE_ID)
        gt_label = meta[IMAGE_ID].map(lookup[LABEL])
        in_gt = _isin(meta[IMAGE_ID], lookup.index)
        problems.add(~in_gt & meta[IMAGE_ID].notna(), meta, column=IMAGE_ID,
                     reason=f"the image is not in the ISIC 2019 ground truth {gt_path}; use the "
                     "matching ground-truth file or drop gt=")
        gt_row_bad = meta[IMAGE_ID].map(lookup["_gt_bad"]).fillna(False).astype(bool)
        problems.add(gt_row_bad & in_gt, meta, column=LABEL,
                     reason=f"the image's row in {gt_path} is not a valid one-hot label; fix it")
        expected = dx.map(HAM10000_TO_ISIC2019)
        conflict = in_gt & ~gt_row_bad & expected.notna() & (expected != gt_label)
        if conflict.any():
            reason = "dx '" + dx + "' disagrees with the ISIC 2019 label '" + \
                gt_label.astype(str) + "'; check that the files belong together"
            problems.add(conflict, meta, column="dx", reason=reason)
        akiec = dx.eq("akiec") & in_gt & ~gt_row_bad & ~gt_label.isin(["AK", "SCC"])
        if akiec.any():
            reason = "dx 'akiec' but the ISIC 2019 label is '" + gt_label.astype(str) + \
                "' (expected AK or SCC); check that the files belong together"
            problems.add(akiec, meta, column="dx", reason=reason)
        label = gt_label.where(dx.isin(list(HAM10000_TO_ISIC2019)), dx)
    else:
        classes = HAM10000_CLASSES
        label = dx
    meta[LABEL] = label
    if "localization" in meta.columns:
        meta[SITE] = meta["localization"]
    if "dataset" in meta.columns and "source" not in meta.columns:
        meta["source"] = meta["dataset"]
    image_dirs = [root / d for d in HAM10000_IMAGE_DIRS]
    index = list_images(image_dirs)
    if check_images and not index:
        raise DataError(
            f"No image files were found for HAM10000 in {root} (looked in "
            + ", ".join(HAM10000_IMAGE_DIRS)
            + "); put the images there, or pass --no-check-images (check_images=False)."
        )
    default_dir = root / "images" if (root / "images").is_dir() else root
    return _finalize(
        meta,
        classes=classes,
        problems=problems,
        notes=notes,
        spec=spec,
        root=root,
        skip_bad=skip_bad,
        check_images=check_images,
        image_index=index,
        default_dir=default_dir,
        site_mapping=HAM10000_SITE_MAP,
        site_source="localization",
    )


# --------------------------------------------------------------------------- folder / csv


def _load_folder(
    root: Path, options: dict[str, str], *, spec: str, skip_bad: bool, check_images: bool
) -> Dataset:
    root = root.resolve()
    if not root.is_dir():
        raise DataError(f"The image folder {root} does not exist; check the spec path.")
    with os.scandir(root) as it:
        class_dirs = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"The folder {root} has no sub-folders; folder:DIR expects one sub-folder per class "
            "(e.g. DIR/MEL/*.jpg, DIR/NV/*.jpg)."
        )
    classes = _default_classes(pd.Series(class_dirs))
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
    rows: list[tuple[str, str, str]] = []
    n_other = 0
    for cls in classes:
        with os.scandir(root / cls) as it:
            names = sorted(e.name for e in it if not e.name.startswith("."))
        for name in names:
            stem, ext = os.path.splitext(name)
            if ext.lower() in rank:
                rows.append((stem, cls, str(root / cls / name)))
            else:
                n_other += 1
    notes: list[str] = []
    if n_other:
        notes.append(f"{n_other} file(s) in the class folders are not images by extension "
                     f"({', '.join(IMAGE_EXTENSIONS)}) and were ignored")
    empty = [c for c in classes if not any(r[1] == c for r in rows)]
    if empty:
        notes.append(f"class folder(s) {', '.join(empty)} hold no images")
    frame = pd.DataFrame(rows, columns=[IMAGE_ID, LABEL, PATH]).astype("str")
    frame["_file"] = frame[PATH]
    frame["_line"] = pd.array([pd.NA] * len(frame), dtype="Int64")
    problems = _Problems()
    dup = frame[IMAGE_ID].duplicated(keep=False)
    if dup.any():
        where = frame.groupby(IMAGE_ID)[LABEL].agg(lambda s: ", ".join(s))
        reason = "the file name (image id) appears in class folders " + \
            frame[IMAGE_ID].map(where) + "; rename or remove the duplicates"
        problems.add(dup, frame, column=IMAGE_ID, reason=reason)
        # _finalize would also flag the later copies; mark ids so each is reported once
        frame.loc[dup, IMAGE_ID] = frame.loc[dup, IMAGE_ID] + "\x00" + frame.loc[dup, LABEL]
    ds = _finalize(
        frame,
        classes=classes,
        problems=problems,
        notes=notes,
        spec=spec,
        root=root,
        skip_bad=skip_bad,
        check_images=False,  # the listing above is the existence check
    )
    if len(ds.skipped):
        ds.skipped[IMAGE_ID] = ds.skipped[IMAGE_ID].str.split("\x00").str[0]
    return ds


def _load_csv(
    file: Path, options: dict[str, str], *, spec: str, skip_bad: bool, check_images: bool
) -> Dataset:
    file = file.resolve()
    root = Path(options["root"]).expanduser().resolve() if options.get("root") else file.parent
    frame = _read_csv(file, what="dataset CSV", required=(IMAGE_ID, LABEL))
    classes = None
    if options.get("classes"):
        classes = tuple(c.strip() for c in options["classes"].split("|") if c.strip())
    return _from_generic_frame(frame, file=str(file), line_word="line", classes=classes,
                               root=root, spec=spec, skip_bad=skip_bad,
                               check_images=check_images)


def _from_generic_frame(
    frame: pd.DataFrame,
    *,
    file: str,
    line_word: str,
    classes: Sequence[str] | None,
    root: Path,
    spec: str,
    skip_bad: bool,
    check_images: bool,
) -> Dataset:
    missing = [c for c in (IMAGE_ID, LABEL) if c not in frame.columns]
    if missing:
        raise DataError(
            f"The {file} has no column {', '.join(repr(c) for c in missing)} (found "
            f"{', '.join(repr(str(c)) for c in frame.columns if not str(c).startswith('_'))}); "
            "add it."
        )
    frame = frame.copy()
    frame["_file"] = file
    for c in (IMAGE_ID, LABEL):
        frame[c] = frame[c].astype("str")
    if classes is None:
        classes = _default_classes(_strip(frame[LABEL]))
    index = None
    if PATH not in frame.columns or frame[PATH].isna().all():
        index = list_images([root, root / "images"]) if check_images or root.is_dir() else {}
    return _finalize(
        frame,
        classes=tuple(classes),
        problems=_Problems(),
        notes=[],
        spec=spec,
        root=root,
        skip_bad=skip_bad,
        check_images=check_images,
        image_index=index,
        default_dir=root,
        line_word=line_word,
    )
