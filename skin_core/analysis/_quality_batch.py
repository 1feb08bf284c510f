"""Many images: the inputs (paths, a folder, a table or a Dataset), a process pool over
chunks of files, and the ``quality.csv`` table (:func:`compute_quality`, :func:`measure_images`).

Private part of :mod:`skin_core.analysis.quality` (which re-exports every public name here;
import them from there). Measuring a folder never imports pandas: a table is built only by
:meth:`MeasuredImages.to_frame`.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from skin_core.analysis._quality_image import (
    BLURRY_THRESHOLD,
    LONG_SIDE,
    MEASURES,
    _check_long_side,
    _measure_grey,
    read_grey,
)
from skin_core.constants import IMAGE_EXTENSIONS, IMAGE_ID
from skin_core.errors import ConfigError, DataError, SkinCoreError

if TYPE_CHECKING:  # pandas is imported where a table is built: `skin-core quality --images`
    import pandas as pd  # measures and writes its CSV without it (a third of its start-up)

QUALITY_COLUMNS: tuple[str, ...] = (IMAGE_ID, *MEASURES, "blur_score", "is_blurry", "error")


def list_image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files (by extension, recursively, sorted) under ``folder``.

    Raises
    ------
    DataError
        ``folder`` does not exist or holds no image file.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"Image folder {root} does not exist; pass a folder of images.")
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise DataError(
            f"Image folder {root} holds no image files (expected {', '.join(IMAGE_EXTENSIONS)}); "
            "check the path."
        )
    return files


def _as_items(paths_or_table: Any) -> tuple[list[str], list[str]]:
    """``(image_ids, paths)`` from a Dataset, a DataFrame with ``path``, or a list of paths."""
    table = getattr(paths_or_table, "table", paths_or_table)
    pandas = sys.modules.get("pandas")  # a DataFrame exists only once pandas is imported
    if pandas is not None and isinstance(table, pandas.DataFrame):
        if "path" not in table.columns:
            raise DataError(
                "compute_quality needs a table with a 'path' column (and ideally 'image_id'); "
                f"found columns {list(table.columns)}."
            )
        paths = [str(p) for p in table["path"]]
        if IMAGE_ID in table.columns:
            ids = [str(i) for i in table[IMAGE_ID]]
        else:
            ids = [Path(p).stem for p in paths]
    elif isinstance(table, (str, os.PathLike)):
        paths = [str(p) for p in list_image_files(table)]
        ids = [Path(p).stem for p in paths]
    elif isinstance(table, Iterable):
        paths = [os.fspath(p) for p in table]
        ids = [Path(p).stem for p in paths]
    else:
        raise DataError(
            "compute_quality expects a list of image paths, a folder, a DataFrame with a 'path' "
            f"column or a Dataset; got {type(paths_or_table).__name__}."
        )
    if not paths:
        raise DataError("compute_quality was given no images; pass at least one image path.")
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise DataError(
                f"Image id {i!r} occurs more than once in the images to measure; give every "
                "image a distinct id (file name) so quality rows can be joined."
            )
        seen.add(i)
    return ids, paths


_N_VALUES = len(MEASURES) + 1


def _measure_file(path: str, long_side: int) -> tuple[tuple[float, ...], str]:
    try:
        grey = read_grey(path)
        if min(grey.shape) < 8:
            raise SkinCoreError(f"Image {path} is only {grey.shape[1]}x{grey.shape[0]} pixels; "
                                "quality needs at least 8x8.")
        return _measure_grey(grey, long_side), ""
    except SkinCoreError as exc:
        return (math.nan,) * _N_VALUES, str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad image must not stop the run
        return (math.nan,) * _N_VALUES, f"{path}: {type(exc).__name__}: {exc}"


def _measure_chunk(args: tuple[int, list[str], int]) -> tuple[int, tuple[np.ndarray, list[str]]]:
    start, paths, long_side = args
    res = [_measure_file(p, long_side) for p in paths]
    values = np.array([r[0] for r in res], dtype=np.float64).reshape(len(res), _N_VALUES)
    return start, (values, [r[1] for r in res])


def _init_worker() -> None:
    cv2.setNumThreads(1)


def _pool_context() -> Any:
    """``fork`` where available (workers start in milliseconds), else ``spawn``."""
    import multiprocessing as mp

    if "fork" in mp.get_all_start_methods():
        return mp.get_context("fork")
    return mp.get_context("spawn")  # pragma: no cover - Windows


def default_workers() -> int:
    """CPU cores available to this process (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def run_chunked(fn: Any, paths: Sequence[str], extra: tuple, *, workers: int | None,
                progress: bool, desc: str) -> list[Any]:
    """Apply ``fn((start, chunk_paths, *extra)) -> (start, result)`` over ``paths`` in chunks.

    Uses a process pool of ``workers`` (default: every core; 1 = in this process) and shows a
    tqdm bar on stderr when ``progress``. Returns the chunks' results in input order. Shared by
    :func:`compute_quality` and the decode baseline of ``bench/bench_quality.py``, so both pay
    the same pool costs.
    """
    from tqdm import tqdm

    n = len(paths)
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ConfigError(f"The 'workers' parameter must be >= 1; got {workers}.")
    workers = min(workers, n)
    chunk = 64 if workers == 1 else int(min(256, max(8, math.ceil(n / (workers * 8)))))
    starts = list(range(0, n, chunk))
    out: dict[int, Any] = {}
    bar = tqdm(total=n, desc=desc, unit="img", file=sys.stderr, disable=not progress)
    try:
        if workers == 1:
            for s in starts:
                out[s] = fn((s, list(paths[s: s + chunk]), *extra))[1]
                bar.update(min(chunk, n - s))
        else:
            # A process forked while OpenCV's thread pool runs hangs at its first OpenCV call
            # (the pool's threads do not survive fork). Shrinking the pool to one thread
            # (which joins its threads) before forking makes the children safe; the caller's
            # setting is restored afterwards.
            n_threads = cv2.getNumThreads()
            cv2.setNumThreads(1)
            try:
                with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                                         mp_context=_pool_context()) as pool:
                    futures = [pool.submit(fn, (s, list(paths[s: s + chunk]), *extra))
                               for s in starts]
                    for fut in as_completed(futures):
                        s, res = fut.result()
                        out[s] = res
                        bar.update(min(chunk, n - s))
            finally:
                cv2.setNumThreads(n_threads)
    finally:
        bar.close()
    return [out[s] for s in starts]


@dataclass(frozen=True)
class MeasuredImages:
    """What :func:`measure_images` returns: measures of every image, in input order.

    Attributes
    ----------
    image_ids:
        One id per image.
    values:
        ``(N, len(MEASURES) + 1)`` float64: every measure in :data:`MEASURES` order, then
        ``blur_score``; NaN where the image could not be measured.
    errors:
        ``""`` for a measured image, else the reason (one sentence).
    """

    image_ids: list[str]
    values: np.ndarray
    errors: list[str]

    def to_frame(self) -> pd.DataFrame:
        """The ``quality.csv`` table (columns :data:`QUALITY_COLUMNS`)."""
        import pandas as pd

        df = pd.DataFrame(self.values, columns=[*MEASURES, "blur_score"])
        df.insert(0, IMAGE_ID, self.image_ids)
        for col in ("width", "height"):
            df[col] = df[col].round().astype("Int64")
        is_blurry = pd.array(df["blur_score"] < BLURRY_THRESHOLD, dtype="boolean")
        is_blurry[df["blur_score"].isna().to_numpy()] = pd.NA
        df["is_blurry"] = is_blurry
        df["error"] = list(self.errors)
        return df[list(QUALITY_COLUMNS)]

    def write_csv(self, target: str | os.PathLike[str]) -> Path:
        """Write ``quality.csv`` atomically without pandas, exactly as ``to_frame().to_csv``.

        Floats are written as Python's shortest round-trip ``repr`` (as pandas does), sizes
        as integers, ``is_blurry`` as ``True``/``False``, and missing values as empty fields.
        """
        import csv

        from skin_core.io import atomic_path

        def num(x: float) -> str:
            return "" if math.isnan(x) else repr(x)

        with atomic_path(target) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(QUALITY_COLUMNS)
            score_col = len(MEASURES)
            for image_id, row, err in zip(self.image_ids, self.values.tolist(), self.errors,
                                          strict=True):
                sizes = ["" if math.isnan(v) else str(round(v)) for v in row[:2]]
                score = row[score_col]
                blurry = "" if math.isnan(score) else str(score < BLURRY_THRESHOLD)
                w.writerow([image_id, *sizes, *map(num, row[2:]), blurry, err])
        return Path(target)


def measure_images(
    paths_or_table: Any,
    *,
    workers: int | None = None,
    progress: bool = False,
    long_side: int = LONG_SIDE,
) -> MeasuredImages:
    """Measure every image (see :func:`compute_quality`) without building a DataFrame.

    The command line uses this with :meth:`MeasuredImages.write_csv`, so measuring a folder
    never imports pandas; :func:`compute_quality` is ``measure_images(...).to_frame()``.
    """
    long_side = _check_long_side(long_side)
    ids, paths = _as_items(paths_or_table)
    chunks = run_chunked(_measure_chunk, paths, (long_side,), workers=workers,
                         progress=progress, desc="quality")
    return MeasuredImages(image_ids=ids, values=np.vstack([c[0] for c in chunks]),
                          errors=[e for c in chunks for e in c[1]])


def compute_quality(
    paths_or_table: Any,
    *,
    workers: int | None = None,
    progress: bool = False,
    long_side: int = LONG_SIDE,
) -> pd.DataFrame:
    """Measure every image: one row per image, in input order, none dropped.

    Each file is decoded once (:func:`read_grey`) and measured by the same code as
    :func:`measure_quality`, in a process pool.

    Parameters
    ----------
    paths_or_table:
        Image paths (``image_id`` = file stem), a folder (searched recursively), a DataFrame
        with ``path`` (and ``image_id``) columns, or a :class:`~skin_core.data.tables.Dataset`.
    workers:
        Worker processes (default: every core available; 1 = no pool).
    progress:
        Show a progress bar on stderr.
    long_side:
        See :func:`measure_quality`.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`QUALITY_COLUMNS`: ``image_id``, every measure, ``blur_score``,
        ``is_blurry`` (nullable boolean) and ``error`` (``""`` when measured; otherwise the
        reason, with the measures missing).

    Raises
    ------
    DataError
        No images, a folder without images, duplicate image ids or no ``path`` column.
    ConfigError
        ``workers < 1`` or a bad ``long_side``.
    """
    return measure_images(paths_or_table, workers=workers, progress=progress,
                          long_side=long_side).to_frame()
