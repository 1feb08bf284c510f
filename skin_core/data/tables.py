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
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
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
    OPTIONAL_COLUMNS,
    PATH,
    SEX,
    SEX_VALUES,
    SITE,
    SITE_TRUNK,
    SITE_VALUES,
    TABLE_COLUMNS,
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

#: Columns of :attr:`Dataset.skipped`: where the bad row is and why it was skipped.
SKIPPED_COLUMNS: tuple[str, ...] = ("file", "line", IMAGE_ID, "column", "reason")

#: Values read as "missing" in metadata columns (after lower-casing and stripping).
_MISSING_WORDS = frozenset({"", "nan", "na", "n/a", "none", "null", "unknown", "unk", "?"})

_SKIP_HINT = "fix the file, or pass --skip-bad (skip_bad=True) to skip such rows and list them"


def _empty_skipped() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="str") for c in SKIPPED_COLUMNS}).astype(
        {"line": "Int64"}
    )


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset: the canonical table plus where it came from.

    Attributes
    ----------
    table:
        One row per image, columns ``image_id, path, label, lesion_id, age_approx, sex,
        anatom_site_general`` (+ optional ``source``, ``split``), index ``0..N-1``.
        ``path`` is an absolute path string; ``age_approx`` is float (NaN = missing);
        ``lesion_id``, ``sex`` and ``anatom_site_general`` are strings or NaN.
    classes:
        The ordered class codes; ``label`` values are always among them.
    spec:
        The dataset spec the table was loaded from (``"frame"`` for in-memory frames).
    root:
        The dataset folder (absolute), or ``None``.
    skipped:
        Rows skipped with ``skip_bad=True``: columns ``file, line, image_id, column, reason``
        (one row per skipped image). Empty when nothing was skipped.
    notes:
        Human-readable remarks about values that were read as missing (unknown sex,
        unmapped sites, images without metadata...). Nothing is changed silently.
    """

    table: pd.DataFrame
    classes: tuple[str, ...]
    spec: str = "frame"
    root: Path | None = None
    skipped: pd.DataFrame = field(default_factory=_empty_skipped)
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.table)

    def label_index(self) -> np.ndarray:
        """``label`` as an ``(N,)`` int64 array of indices into :attr:`classes`."""
        lookup = {c: i for i, c in enumerate(self.classes)}
        return self.table[LABEL].map(lookup).to_numpy(dtype=np.int64)

    def fingerprint(self) -> str:
        """SHA-256 hex digest of the classes and the sorted ``(image_id, label)`` pairs.

        Independent of row order and of paths or metadata, so the same images with the same
        labels give the same fingerprint on every machine.
        """
        h = hashlib.sha256()
        h.update(("classes\t" + "\t".join(self.classes) + "\n").encode("utf-8"))
        pairs = self.table[[IMAGE_ID, LABEL]].sort_values(IMAGE_ID, kind="stable")
        text = "\n".join(pairs[IMAGE_ID].astype(str) + "\t" + pairs[LABEL].astype(str))
        h.update(text.encode("utf-8"))
        return h.hexdigest()

    def summary(self) -> dict:
        """Counts for display and ``--json``.

        Returns
        -------
        dict
            ``spec``; ``n_images``; ``classes`` (class -> image count, in class order, zeros
            included); ``n_lesions`` (distinct known ``lesion_id`` values); ``n_groups``
            (lesions plus images without a ``lesion_id``: the units that folds keep together);
            ``missing`` (column -> missing count for ``lesion_id`` and the metadata columns);
            ``n_skipped``; ``notes``; ``fingerprint``.
        """
        t = self.table
        counts = t[LABEL].value_counts()
        lesions = t[LESION_ID]
        n_lesions = int(lesions.nunique(dropna=True))
        return {
            "spec": self.spec,
            "n_images": len(t),
            "classes": {c: int(counts.get(c, 0)) for c in self.classes},
            "n_lesions": n_lesions,
            "n_groups": n_lesions + int(lesions.isna().sum()),
            "missing": {c: int(t[c].isna().sum()) for c in (LESION_ID, AGE, SEX, SITE)},
            "n_skipped": len(self.skipped),
            "notes": list(self.notes),
            "fingerprint": self.fingerprint(),
        }


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


# --------------------------------------------------------------------------- helpers


class _Problems:
    """Row problems collected vectorised; each names file, line, image id, column, reason."""

    def __init__(self) -> None:
        self._parts: list[pd.DataFrame] = []

    def add(
        self,
        mask: pd.Series | np.ndarray,
        frame: pd.DataFrame,
        *,
        column: str,
        reason: str | pd.Series,
        file: str | None = None,
        line_col: str = "_line",
        file_col: str = "_file",
    ) -> None:
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        sub = frame.loc[mask]
        files = pd.Series(file, index=sub.index) if file is not None else sub[file_col]
        reasons = reason[mask] if isinstance(reason, pd.Series) else reason
        self._parts.append(
            pd.DataFrame(
                {
                    "_row": sub.index.to_numpy(),
                    "file": files.astype(str).to_numpy(),
                    "line": pd.array(sub[line_col], dtype="Int64"),
                    IMAGE_ID: sub[IMAGE_ID].to_numpy(dtype=object),
                    "column": column,
                    "reason": np.asarray(reasons, dtype=object)
                    if not isinstance(reasons, str)
                    else reasons,
                }
            )
        )

    def rows(self) -> set:
        return set() if not self._parts else set(pd.concat(self._parts)["_row"])

    def frame(self) -> pd.DataFrame:
        if not self._parts:
            return pd.DataFrame(columns=["_row", *SKIPPED_COLUMNS])
        return pd.concat(self._parts, ignore_index=True)

    def resolve(
        self, frame: pd.DataFrame, *, skip_bad: bool, line_word: str = "line"
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Raise on the first problem, or drop the bad rows and return ``(kept, skipped)``."""
        probs = self.frame()
        if probs.empty:
            return frame, _empty_skipped()
        # table order (the main file's line order); the first problem added for a row first
        probs = probs.sort_values("_row", kind="stable")
        if not skip_bad:
            first = probs.iloc[0]
            n_rows = probs["_row"].nunique()
            more = (
                f" ({n_rows - 1} more row{'s' if n_rows > 2 else ''} also "
                f"ha{'ve' if n_rows > 2 else 's'} problems)"
                if n_rows > 1
                else ""
            )
            raise DataError(f"{_where(first, line_word)}: {first['reason']}{more}; {_SKIP_HINT}.")
        several = probs["_row"].duplicated(keep=False)
        merged = (
            probs[several]
            .groupby("_row", sort=False)
            .agg(
                file=("file", "first"),
                line=("line", "first"),
                image_id=(IMAGE_ID, "first"),
                column=("column", lambda s: ", ".join(dict.fromkeys(s))),
                reason=("reason", lambda s: "; ".join(dict.fromkeys(s))),
            )
            .reset_index()
        )
        skipped = (
            pd.concat([probs[~several], merged], ignore_index=True)
            .sort_values("_row", kind="stable")
            .reset_index(drop=True)
        )
        skipped["line"] = skipped["line"].astype("Int64")
        kept = frame.drop(index=skipped["_row"].to_numpy())
        return kept, skipped[list(SKIPPED_COLUMNS)]


def _where(problem: pd.Series, line_word: str = "line") -> str:
    parts = [str(problem["file"])]
    if pd.notna(problem["line"]):
        parts.append(f"{line_word} {int(problem['line'])}")
    image_id = problem[IMAGE_ID]
    if isinstance(image_id, str) and image_id:
        parts.append(f"image '{image_id}'")
    parts.append(f"column '{problem['column']}'")
    return ", ".join(parts)


def _read_csv(
    path: Path, *, what: str, required: Iterable[str], dtype: object = str
) -> pd.DataFrame:
    """Read a CSV (default: all strings; only empty cells are missing) with line numbers."""
    if not path.is_file():
        raise DataError(
            f"The {what} {path} does not exist; check the dataset folder or the spec path."
        )
    try:
        df = pd.read_csv(path, dtype=dtype, keep_default_na=False, na_values=[""],
                         skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"The {what} {path} is not a readable CSV file ({e}); fix it.") from e
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"The {what} {path} has no column {', '.join(repr(c) for c in missing)} "
            f"(found {', '.join(repr(c) for c in df.columns)}); add it or point the spec at "
            "the right file."
        )
    df["_line"] = pd.array(np.arange(len(df)) + 2, dtype="Int64")  # line 1 is the header
    df["_file"] = str(path)
    return df


def _strip(s: pd.Series) -> pd.Series:
    return s.astype("str").str.strip()


def _isin(s: pd.Series, values: Iterable) -> pd.Series:
    """``s.isin(values)`` through object arrays: pandas' Arrow-string ``isin`` converts every
    value to a pyarrow scalar in Python, which costs ~0.1 s per 25,000 values."""
    vals = values.to_numpy(dtype=object) if isinstance(values, (pd.Series, pd.Index)) else \
        np.fromiter(values, dtype=object)
    return pd.Series(pd.Index(s.to_numpy(dtype=object), dtype=object).isin(vals), index=s.index)


def list_images(folders: Iterable[str | os.PathLike[str]]) -> dict[str, str]:
    """Map image stem -> absolute path from ONE listing of each folder (no ``stat`` per file).

    Folders that do not exist are ignored. Files are image files by extension
    (:data:`~skin_core.constants.IMAGE_EXTENSIONS`, any case). The first folder holding a
    stem wins; within a folder, ``.jpg`` wins over ``.jpeg``, ``.png``... in that order.
    """
    index: dict[str, str] = {}
    rank = {ext.lstrip("."): i for i, ext in enumerate(IMAGE_EXTENSIONS)}
    for folder in folders:
        folder = os.path.abspath(folder)
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        found: dict[str, tuple[int, str]] = {}
        for name in names:
            stem, dot, ext = name.rpartition(".")
            r = rank.get(ext) if dot else None
            if r is None:
                r = rank.get(ext.lower()) if dot else None
                if r is None:
                    continue
            if not stem or stem[0] == ".":
                continue
            prev = found.get(stem)
            if prev is None or r < prev[0]:
                found[stem] = (r, name)
        prefix = folder + os.sep
        for stem, (_, name) in found.items():
            if stem not in index:
                index[stem] = prefix + name
    return index


def _default_classes(labels: pd.Series) -> tuple[str, ...]:
    present = set(labels.dropna().unique())
    for vocab in (ISIC2019_CLASSES, HAM10000_CLASSES):
        if present and present <= set(vocab):
            return tuple(c for c in vocab if c in present)
    return tuple(sorted(present))


def _normalise_vocab(
    frame: pd.DataFrame,
    column: str,
    allowed: Sequence[str],
    notes: list[str],
    *,
    mapping: Mapping[str, str] | None = None,
    source_name: str | None = None,
) -> None:
    """Lower-case/strip ``column``; map; values outside ``allowed`` become NaN and are noted."""
    if column not in frame.columns:
        frame[column] = pd.Series(np.nan, index=frame.index, dtype="str")
        return
    raw = _strip(frame[column])
    low = raw.str.lower()
    missing_word = low.isin(_MISSING_WORDS)
    mapped = low.map(mapping).where(low.isin(list(mapping)), low) if mapping else low
    ok = mapped.isin(list(allowed))
    unknown = low.notna() & ~missing_word & ~ok
    if unknown.any():
        vals = raw[unknown].value_counts()
        shown = ", ".join(f"{v!r} x{n}" for v, n in vals.head(8).items())
        name = source_name or column
        notes.append(
            f"{int(unknown.sum())} value(s) of '{name}' outside the {column} vocabulary were "
            f"read as missing: {shown}{' ...' if len(vals) > 8 else ''}"
        )
    frame[column] = mapped.where(ok).astype("str")


def _finalize(
    frame: pd.DataFrame,
    *,
    classes: Sequence[str],
    problems: _Problems,
    notes: list[str],
    spec: str,
    root: Path | None,
    skip_bad: bool,
    check_images: bool,
    image_index: Mapping[str, str] | None = None,
    default_dir: Path | None = None,
    line_word: str = "line",
    age_line_col: str = "_line",
    age_file_col: str = "_file",
    site_mapping: Mapping[str, str] | None = None,
    site_source: str | None = None,
    sex_source: str | None = None,
) -> Dataset:
    """Common validation of a loader's frame -> :class:`Dataset` (see module docstring)."""
    classes = tuple(classes)
    frame = frame.reset_index(drop=True)
    # image_id: present and unique
    ids = _strip(frame[IMAGE_ID])
    frame[IMAGE_ID] = ids
    problems.add(ids.isna(), frame, column=IMAGE_ID,
                 reason="the image id is empty; fill it in or delete the row")
    dup = ids.notna() & ids.duplicated(keep="first")
    if dup.any():
        first_line = frame.loc[ids.notna()].drop_duplicates(IMAGE_ID).set_index(IMAGE_ID)["_line"]
        reason = f"duplicate image id (first at {line_word} " + \
            ids.map(first_line).astype(str) + "); keep one row per image"
        problems.add(dup, frame, column=IMAGE_ID, reason=reason)
    # label: a known class
    labels = _strip(frame[LABEL])
    frame[LABEL] = labels
    already = np.zeros(len(frame), dtype=bool)
    already[list(problems.rows())] = True
    bad_label = ~labels.isin(list(classes)) & ~already
    if bad_label.any():
        shown = ", ".join(classes)
        reason = np.where(
            labels[bad_label].isna(),
            f"the label is empty; expected one of {shown}",
            "unknown class '" + labels[bad_label].fillna("").astype(str) + f"'; expected one of "
            f"{shown} (fix the label or add the class)",
        )
        problems.add(bad_label, frame, column=LABEL,
                     reason=pd.Series(_expand(bad_label, reason), index=frame.index))
    # lesion_id: string or NaN
    if LESION_ID in frame.columns:
        les = _strip(frame[LESION_ID])
        frame[LESION_ID] = les.where(~les.str.lower().isin(_MISSING_WORDS))
    else:
        frame[LESION_ID] = pd.Series(np.nan, index=frame.index, dtype="str")
    # age_approx: numeric in [0, 120] or NaN
    age_column = AGE
    if AGE not in frame.columns and "age" in frame.columns:
        frame[AGE] = frame["age"]
        age_column = "age"  # name the column as the file does
    if AGE in frame.columns:
        raw = _strip(frame[AGE])
        raw = raw.where(~raw.str.lower().isin(_MISSING_WORDS))
        age = pd.to_numeric(raw, errors="coerce")
        bad = raw.notna() & (age.isna() | (age < 0) | (age > 120))
        if bad.any():
            reason = "age '" + raw.astype(str) + "' is not a number of years in 0-120; " \
                "correct it or leave the cell empty"
            problems.add(bad, frame, column=age_column, reason=reason, line_col=age_line_col,
                         file_col=age_file_col)
        frame[AGE] = age.where(~bad).astype("float64")
    else:
        frame[AGE] = np.nan
    # sex, site: fixed vocabularies; anything else becomes missing and is noted
    _normalise_vocab(frame, SEX, SEX_VALUES, notes, source_name=sex_source,
                     mapping={"m": "male", "f": "female"})
    _normalise_vocab(frame, SITE, SITE_VALUES, notes, mapping=site_mapping,
                     source_name=site_source)
    # path
    from_column = PATH in frame.columns and bool(frame[PATH].notna().any())
    if from_column:
        raw_path = _strip(frame[PATH])
        base = str(root if root is not None else Path.cwd())
        paths = raw_path.map(
            lambda p: p if not isinstance(p, str) else os.path.normpath(os.path.join(base, p))
        )
        folders = sorted({os.path.dirname(p) for p in paths.dropna()})
        listing = _listed_paths(folders) if check_images else set()
        exists = _isin(paths, listing) if check_images else paths.notna()
    else:
        index = image_index or {}
        fallback = str(default_dir if default_dir is not None else (root or Path.cwd()))
        found = ids.map(index)
        exists = found.notna()
        paths = found.where(exists, fallback + os.sep + ids.fillna("") + ".jpg")
    frame[PATH] = paths.astype("str")
    if check_images:
        missing = ~exists & ids.notna()
        fix = "; add it, or load without the image check (--no-check-images / check_images=False)"
        if from_column:
            reason: str | pd.Series = "the image file " + paths.fillna("").astype(str) + \
                " does not exist" + fix
        else:
            where = str(default_dir) if default_dir is not None else "the image folder"
            reason = f"the image file is missing from {where}{fix}"
        problems.add(missing, frame, column=PATH, reason=reason)
    kept, skipped = problems.resolve(frame, skip_bad=skip_bad, line_word=line_word)
    if len(skipped):
        notes.append(f"{len(skipped)} row(s) with problems were skipped (see Dataset.skipped)")
    columns = list(TABLE_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in kept.columns]
    table = kept[columns].reset_index(drop=True)
    for c in OPTIONAL_COLUMNS:
        if c in table.columns:
            table[c] = _strip(table[c])
    if table.empty:
        raise DataError(
            f"The dataset {spec} has no usable images"
            + (f" ({len(skipped)} rows were skipped)" if len(skipped) else "")
            + "; check the spec path and the files."
        )
    return Dataset(
        table=table,
        classes=classes,
        spec=spec,
        root=root,
        skipped=skipped,
        notes=tuple(notes),
    )


def _expand(mask: pd.Series, values: np.ndarray) -> np.ndarray:
    out = np.empty(len(mask), dtype=object)
    out[np.asarray(mask, dtype=bool)] = values
    return out


def _listed_paths(folders: Iterable[str]) -> set[str]:
    """Absolute paths of every entry of each folder, from one listing per folder."""
    out: set[str] = set()
    for folder in folders:
        try:
            with os.scandir(folder) as it:
                out.update(os.path.join(folder, e.name) for e in it)
        except (FileNotFoundError, NotADirectoryError):
            continue
    return out


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
