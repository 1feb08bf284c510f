"""Dataset loaders: every supported layout becomes the canonical **dataset table**.

The dataset table (DESIGN.md) has one row per image and the columns
``image_id, path, label, lesion_id, age_approx, sex, anatom_site_general`` (plus optional
``source`` and ``split``). Missing metadata stays missing (NaN); it is never imputed.

Four layouts are read, each named by a *dataset spec* ``KIND:PATH[,key=value...]``:

``isic2019:DIR``
    The official ISIC 2019 training layout: ``DIR/ISIC_2019_Training_GroundTruth.csv``
    (one-hot ``image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC[,UNK]``), ``DIR/ISIC_2019_Training_Metadata.csv``
    (``image,age_approx,anatom_site_general,lesion_id,sex``, joined on ``image``) and the
    images in ``DIR/ISIC_2019_Training_Input/``. Ids ending in ``_downsampled`` are ordinary ids.
``ham10000:DIR[,gt=FILE]``
    ``DIR/HAM10000_metadata.csv`` with the images in ``DIR``, ``DIR/images/`` or
    ``DIR/HAM10000_images_part_1/`` + ``DIR/HAM10000_images_part_2/``. The 7 ``dx`` classes by
    default; with ``gt=`` (the ISIC 2019 ground-truth CSV; ``isic2019_csv=`` is an alias) the 8
    ISIC 2019 classes, ``akiec`` being split into AK / SCC.
``folder:DIR``
    One sub-folder per class; ``image_id`` is the file stem.
``csv:FILE[,root=DIR][,classes=A|B|C]``
    Columns ``image_id, label`` plus optional ``path`` (relative to ``root``), ``lesion_id``,
    ``age_approx`` (or ``age``), ``sex``, ``anatom_site_general``, ``source``, ``split``. Images
    are found under ``root`` (default: the CSV's folder). A saved ``dataset.csv`` loads this way.

Every problem a user can cause (missing file or column, duplicate id, no or two labels,
unknown class, missing image, non-numeric age...) raises :class:`~skin_core.errors.DataError`
with one sentence naming the file, line or id, column, what was found and what to do. With
``skip_bad=True`` the offending rows are skipped instead and listed in :attr:`Dataset.skipped`
(never dropped silently). Whether images exist is checked against ONE listing per image
folder, never a ``stat`` per file, so a 25,331-image table builds in well under a second.

Code layout: this module is the public face (specs, :func:`load_dataset`,
:func:`table_from_frame`, :func:`verify_images`). The :class:`Dataset` record lives in
``data/_dataset.py``, the validation shared by every loader (ids, labels, metadata, image
paths, skipped rows) in ``data/_table_checks.py`` and one loader per layout, with the layouts'
file names, in ``data/_table_layouts.py``. Their public names are re-exported here: import
them from ``skin_core.data.tables``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from skin_core.constants import IMAGE_ID, PATH
from skin_core.constants import SITE_VALUES as SITE_VALUES
from skin_core.data._dataset import SKIPPED_COLUMNS, Dataset
from skin_core.data._table_checks import _SKIP_HINT, list_images
from skin_core.data._table_layouts import HAM10000_IMAGE_DIRS as HAM10000_IMAGE_DIRS
from skin_core.data._table_layouts import (
    HAM10000_METADATA,
    HAM10000_SITE_MAP,
    ISIC2019_GROUND_TRUTH,
    ISIC2019_IMAGE_DIR,
    ISIC2019_METADATA,
    _from_generic_frame,
    _load_csv,
    _load_folder,
    _load_ham10000,
    _load_isic2019,
)
from skin_core.errors import ConfigError, DataError, ImageError

__all__ = [
    "Dataset",
    "DATASET_KINDS",
    "HAM10000_SITE_MAP",
    "ISIC2019_GROUND_TRUTH",
    "ISIC2019_METADATA",
    "ISIC2019_IMAGE_DIR",
    "HAM10000_METADATA",
    "SKIPPED_COLUMNS",
    "list_images",
    "load_dataset",
    "parse_spec",
    "table_from_frame",
    "verify_images",
]


# --------------------------------------------------------------------------- specs

#: Dataset kinds and the options each accepts.
DATASET_KINDS: dict[str, tuple[str, ...]] = {
    "isic2019": (),
    "ham10000": ("gt", "isic2019_csv"),
    "folder": (),
    "csv": ("root", "classes"),
}


def parse_spec(spec: str) -> tuple[str, Path, dict[str, str]]:
    """Split ``KIND:PATH[,key=value...]`` into ``(kind, path, options)``.

    Raises
    ------
    ConfigError
        Unknown kind, empty path or an option the kind does not accept.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(
            f"The dataset spec must look like KIND:PATH with KIND one of "
            f"{sorted(DATASET_KINDS)} (e.g. isic2019:data/isic2019). Got {spec!r} instead."
        )
    kind, rest = spec.split(":", 1)
    kind = kind.strip().lower()
    if kind not in DATASET_KINDS:
        raise ConfigError(
            f"The dataset kind in spec {spec!r} must be one of {sorted(DATASET_KINDS)}. "
            f"Got {kind!r} instead."
        )
    parts = rest.split(",")
    path_text = parts[0].strip()
    if not path_text:
        raise ConfigError(f"The dataset spec {spec!r} has no path after '{kind}:'; add one.")
    options: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in DATASET_KINDS[kind]:
            allowed = ", ".join(f"{k}=..." for k in DATASET_KINDS[kind]) or "none"
            raise ConfigError(
                f"The option {part!r} in dataset spec {spec!r} is not valid for '{kind}'; "
                f"options allowed: {allowed}."
            )
        options[key] = value.strip()
    return kind, Path(path_text).expanduser(), options


def load_dataset(spec: str, *, skip_bad: bool = False, check_images: bool = True) -> Dataset:
    """Load the dataset named by ``spec`` into the canonical dataset table.

    Parameters
    ----------
    spec:
        ``isic2019:DIR``, ``ham10000:DIR[,gt=FILE]``, ``folder:DIR`` or
        ``csv:FILE[,root=DIR][,classes=A|B|C]`` (see the module docstring).
    skip_bad:
        Skip rows with problems (listed in :attr:`Dataset.skipped`) instead of raising.
    check_images:
        Require every image file to exist (checked over one directory listing per folder).
        With ``False`` the table is built from the CSVs alone and ``path`` holds where each
        image is expected (e.g. for the ISIC 2019 CSVs without their images).

    Returns
    -------
    Dataset

    Raises
    ------
    ConfigError
        A malformed spec.
    DataError
        A missing file or column, or (without ``skip_bad``) any bad row: the message names
        the file, line or id, column, what was found and what to do.

    Examples
    --------
    >>> ds = load_dataset("isic2019:/data/isic2019", check_images=False)  # doctest: +SKIP
    >>> ds.summary()["n_images"]  # doctest: +SKIP
    25331
    """
    kind, path, options = parse_spec(spec)
    loader = {
        "isic2019": _load_isic2019,
        "ham10000": _load_ham10000,
        "folder": _load_folder,
        "csv": _load_csv,
    }[kind]
    return loader(path, options, spec=spec, skip_bad=skip_bad, check_images=check_images)


def table_from_frame(
    df: pd.DataFrame,
    classes: Sequence[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    *,
    spec: str = "frame",
    skip_bad: bool = False,
    check_images: bool = False,
) -> Dataset:
    """Validate an in-memory DataFrame into a :class:`Dataset`.

    Parameters
    ----------
    df:
        Columns ``image_id`` and ``label``; optional ``path`` (relative paths are joined to
        ``root``), ``lesion_id``, ``age_approx`` (or ``age``), ``sex``,
        ``anatom_site_general``, ``source``, ``split``. Other columns are ignored.
    classes:
        The ordered class codes; default: the labels present, in the ISIC 2019 or HAM10000
        order when they belong to one of them, else sorted.
    root:
        Folder for relative paths and for ``<root>/<image_id>.<ext>`` when there is no
        ``path`` column. Default: the current folder.
    check_images:
        Require every image file to exist (default ``False``: frames are often built for
        tests or tables of predictions without images).

    Raises
    ------
    DataError
        Missing columns or (without ``skip_bad``) bad rows, as for :func:`load_dataset`.
    """
    if not isinstance(df, pd.DataFrame):
        raise DataError(
            f"table_from_frame expects a pandas DataFrame; got {type(df).__name__} instead."
        )
    root_path = Path(root).expanduser().resolve() if root is not None else Path.cwd()
    frame = df.copy()
    frame["_line"] = pd.array(np.arange(len(frame)) + 1, dtype="Int64")
    return _from_generic_frame(
        frame,
        file="DataFrame",
        line_word="row",
        classes=classes,
        root=root_path,
        spec=spec,
        skip_bad=skip_bad,
        check_images=check_images,
    )


def verify_images(
    dataset: Dataset, *, skip_bad: bool = False, progress: bool = False
) -> Dataset:
    """Decode every image of ``dataset`` and refuse (or skip) the unreadable ones.

    :func:`load_dataset` only checks that image files exist (one directory listing); this
    opens each one through :func:`skin_core.data.images.read_image` (JPEGs decoded at a
    reduced DCT scale, so it is fast), catching empty, truncated, corrupt, non-image and
    oversized files.

    Parameters
    ----------
    dataset:
        A loaded :class:`Dataset`.
    skip_bad:
        Drop unreadable images and add them to :attr:`Dataset.skipped` instead of raising.
    progress:
        Show a tqdm progress bar on stderr.

    Returns
    -------
    Dataset
        ``dataset`` itself when every image decodes, else a copy without the bad rows.

    Raises
    ------
    DataError
        (without ``skip_bad``) the first unreadable image, naming its id, file and the cause.
    """
    from skin_core.data.images import read_image

    t = dataset.table
    bad: list[tuple[int, str, str, str]] = []
    rows = zip(t[IMAGE_ID].tolist(), t[PATH].tolist(), strict=True)
    if progress:
        from tqdm import tqdm

        rows = tqdm(rows, total=len(t), desc="verify images", unit="img", file=sys.stderr)
    for i, (image_id, path) in enumerate(rows):
        try:
            read_image(path, reduce_to=(32, 32))
        except ImageError as e:
            bad.append((i, image_id, path, str(e).rstrip(".")))
    if not bad:
        return dataset
    if not skip_bad:
        _, image_id, path, msg = bad[0]
        more = f" ({len(bad) - 1} more unreadable image(s))" if len(bad) > 1 else ""
        raise DataError(f"Image '{image_id}', column 'path': {msg}{more}; {_SKIP_HINT}.")
    new_skipped = pd.DataFrame(
        {
            "file": [b[2] for b in bad],
            "line": pd.array([pd.NA] * len(bad), dtype="Int64"),
            IMAGE_ID: [b[1] for b in bad],
            "column": PATH,
            "reason": [b[3] for b in bad],
        }
    )
    skipped = pd.concat([dataset.skipped, new_skipped], ignore_index=True) if len(
        dataset.skipped) else new_skipped
    kept = t.drop(index=t.index[[b[0] for b in bad]]).reset_index(drop=True)
    if kept.empty:
        raise DataError(f"No image of {dataset.spec} could be read ({len(bad)} tried); "
                        "check the image files.")
    return replace(
        dataset,
        table=kept,
        skipped=skipped,
        notes=(*dataset.notes, f"{len(bad)} unreadable image(s) were skipped"),
    )
