"""Validation of a loader's frame into a :class:`~skin_core.data.tables.Dataset`.

Private machinery of :mod:`skin_core.data.tables`: every layout loader reads its files into a
frame (with ``_file``/``_line`` columns naming where each row came from) and hands it to
:func:`_finalize`, which checks ids, labels, lesion ids, age, sex, site and image paths, and
either raises :class:`~skin_core.errors.DataError` on the first bad row or (``skip_bad``) drops
the bad rows and lists them. Row problems are collected vectorised in :class:`_Problems`.
Image existence is checked against ONE listing per folder (:func:`list_images`,
:func:`_listed_paths`), never a ``stat`` per file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from skin_core.constants import (
    AGE,
    HAM10000_CLASSES,
    IMAGE_EXTENSIONS,
    IMAGE_ID,
    ISIC2019_CLASSES,
    LABEL,
    LESION_ID,
    OPTIONAL_COLUMNS,
    PATH,
    SEX,
    SEX_VALUES,
    SITE,
    SITE_VALUES,
    TABLE_COLUMNS,
)
from skin_core.data._dataset import SKIPPED_COLUMNS, Dataset, _empty_skipped
from skin_core.errors import DataError

#: Values read as "missing" in metadata columns (after lower-casing and stripping).
_MISSING_WORDS = frozenset({"", "nan", "na", "n/a", "none", "null", "unknown", "unk", "?"})

_SKIP_HINT = "fix the file, or pass --skip-bad (skip_bad=True) to skip such rows and list them"


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
