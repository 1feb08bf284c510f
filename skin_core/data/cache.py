"""Preprocessed image cache: decode every image once per (dataset, size) into a memmap.

Layout: ``<cache_dir>/<fingerprint>-<S>.u8`` holds a raw C-ordered ``uint8`` array of shape
``(N, S, S, 3)`` (RGB), and ``<fingerprint>-<S>.json`` (the sidecar) holds ``ids`` (row
order), ``size``, ``shape``, ``fingerprint``, ``resize`` and a format version. The data file is
built under a temporary name and renamed only when every row is written; the sidecar is
written (atomically) after it, so an interrupted build is never used: a cache is valid only
when the sidecar exists, names the same fingerprint, and the data file has the exact size.

``fingerprint`` defaults to :func:`content_fingerprint` (sha256 over image ids, paths, file
sizes and modification times), so a changed or replaced image invalidates the cache.

Resize (``resize="center"``, the default): resize the shorter side to ``S`` keeping the aspect
ratio, then crop the central ``S x S`` (dermoscopy lesions are centred; nothing is
distorted). ``resize="stretch"`` resizes straight to ``S x S``. JPEGs are decoded with draft
(DCT-scaled) decoding to at least ``S`` on the shorter side, so 6000x4000 originals decode
8x faster; resampling is Pillow's ``BILINEAR`` with ``reducing_gap`` (area pre-reduction,
anti-aliased).

The cache directory defaults to ``$SKIN_CORE_CACHE_DIR`` or ``.cache/images``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from skin_core.data.images import image_size, read_image
from skin_core.errors import DataError
from skin_core.io import atomic_path, atomic_write_json

CACHE_FORMAT = 1
RESIZE_MODES: tuple[str, ...] = ("center", "stretch")


def default_cache_dir() -> Path:
    """``$SKIN_CORE_CACHE_DIR`` or ``.cache/images`` (relative to the working directory)."""
    return Path(os.environ.get("SKIN_CORE_CACHE_DIR") or ".cache/images")


def content_fingerprint(ids: Sequence[str], paths: Sequence[str]) -> str:
    """sha256 hex over ``(id, path, file size, mtime_ns)`` of every image, in order."""
    h = hashlib.sha256()
    for i, p in zip(ids, paths, strict=True):
        try:
            st = os.stat(p)
            meta = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            meta = "missing"
        h.update(f"{i}\0{p}\0{meta}\n".encode())
    return h.hexdigest()


def resize_array(rgb: np.ndarray, size: int, *, resize: str = "center") -> np.ndarray:
    """Resize an ``(H, W, 3) uint8`` image to ``(size, size, 3)`` (see module docstring)."""
    img = Image.fromarray(rgb)
    w, h = img.size
    if resize == "stretch":
        out = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        return np.asarray(out, dtype=np.uint8)
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=2.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def load_resized(path: str, size: int, *, resize: str = "center") -> np.ndarray:
    """Decode ``path`` (draft decoding for JPEGs) and resize it to ``(size, size, 3)``."""
    reduce_to = (size, size)
    if resize == "center":
        try:
            w, h = image_size(path)
            s = size / min(w, h)
            reduce_to = (max(size, int(w * s)), max(size, int(h * s)))
        except Exception:  # noqa: BLE001 - read_image below reports the real problem
            pass
    return resize_array(read_image(path, reduce_to=reduce_to), size, resize=resize)


@dataclass(frozen=True)
class ImageCache:
    """A built cache: ``array`` is the read-only ``(N, S, S, 3) uint8`` memmap.

    Attributes
    ----------
    array: numpy.memmap, rows in ``ids`` order.
    ids: image ids, one per row.
    size: ``S``.
    path: the ``.u8`` data file.
    fingerprint: what the cache was built from.
    """

    array: np.ndarray
    ids: tuple[str, ...]
    size: int
    path: Path
    fingerprint: str

    def rows(self, image_ids: Sequence[str]) -> np.ndarray:
        """Row indices of ``image_ids`` in :attr:`array` (DataError for unknown ids)."""
        index = {i: k for k, i in enumerate(self.ids)}
        try:
            return np.fromiter((index[i] for i in image_ids), dtype=np.int64,
                               count=len(image_ids))
        except KeyError as exc:
            raise DataError(
                f"Image id {exc.args[0]!r} is not in the image cache {self.path}; rebuild it "
                "(delete the file) or pass the dataset it was built from."
            ) from exc


def _paths(stem: Path) -> tuple[Path, Path]:
    return stem.with_suffix(".u8"), stem.with_suffix(".json")


def open_image_cache(
    fingerprint: str, size: int, *, cache_dir: str | os.PathLike[str] | None = None
) -> ImageCache | None:
    """The valid cache for ``(fingerprint, size)``, or ``None`` when absent or incomplete."""
    stem = Path(cache_dir or default_cache_dir()) / f"{fingerprint}-{int(size)}"
    data, side = _paths(stem)
    if not (data.is_file() and side.is_file()):
        return None
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    n = len(meta.get("ids", []))
    shape = (n, int(size), int(size), 3)
    if (
        meta.get("format") != CACHE_FORMAT
        or meta.get("fingerprint") != fingerprint
        or int(meta.get("size", -1)) != int(size)
        or data.stat().st_size != int(np.prod(shape))
    ):
        return None
    arr = np.memmap(data, dtype=np.uint8, mode="r", shape=shape) if n else np.zeros(
        shape, np.uint8)
    return ImageCache(arr, tuple(meta["ids"]), int(size), data, fingerprint)


def _fill_chunk(args: tuple[str, tuple[int, ...], int, list[str], int, str]) -> None:
    tmp, shape, start, paths, size, resize = args
    out = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=shape)
    for k, p in enumerate(paths):
        out[start + k] = load_resized(p, size, resize=resize)
    out.flush()
    del out


def build_image_cache(
    ids: Sequence[str],
    paths: Sequence[str],
    size: int,
    *,
    fingerprint: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    resize: str = "center",
    workers: int | None = None,
    chunk: int = 256,
    progress: bool = False,
) -> ImageCache:
    """Open the cache for these images at ``size``, building it first when needed.

    Parameters
    ----------
    ids, paths:
        Image ids and their files, same length; row ``i`` of the cache is ``ids[i]``.
    size:
        Square side ``S`` in pixels (>= 8).
    fingerprint:
        Cache key; defaults to :func:`content_fingerprint` of ``ids``/``paths``.
    cache_dir:
        Folder of caches; default :func:`default_cache_dir`.
    resize:
        ``"center"`` (shorter side to ``S``, centre crop) or ``"stretch"``.
    workers:
        Decoding processes (default: CPU count, at most 8); ``1`` decodes in this process.
    chunk:
        Images per task handed to a worker.
    progress:
        Show a tqdm bar on stderr.

    Returns
    -------
    ImageCache

    Raises
    ------
    DataError
        ``ids`` and ``paths`` differ in length, or ``size`` < 8.
    ImageError
        An image cannot be decoded (the message names the file); nothing is kept.
    """
    ids = [str(i) for i in ids]
    paths = [str(p) for p in paths]
    if len(ids) != len(paths):
        raise DataError(f"build_image_cache got {len(ids)} ids but {len(paths)} paths; pass "
                        "one path per image id.")
    if int(size) < 8:
        raise DataError(f"Image cache size must be at least 8 px; got {size}.")
    if resize not in RESIZE_MODES:
        raise DataError(f"The 'resize' parameter must be one of {RESIZE_MODES}; got {resize!r}.")
    size = int(size)
    fingerprint = fingerprint or content_fingerprint(ids, paths)
    cache_dir = Path(cache_dir or default_cache_dir())
    found = open_image_cache(fingerprint, size, cache_dir=cache_dir)
    if found is not None and list(found.ids) == ids:
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    data, side = _paths(cache_dir / f"{fingerprint}-{size}")
    shape = (len(ids), size, size, 3)
    side.unlink(missing_ok=True)
    try:
        _write_rows(data, ids, paths, shape, size, resize, workers, chunk, progress)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DataError(
                f"No space left on the device while writing the image cache {data} "
                f"({int(np.prod(shape)) / 1e6:.0f} MB); nothing half-written was kept: free "
                "disk space or set SKIN_CORE_CACHE_DIR to a folder on a larger disk."
            ) from exc
        raise
    atomic_write_json(side, {
        "format": CACHE_FORMAT,
        "fingerprint": fingerprint,
        "size": size,
        "shape": list(shape),
        "resize": resize,
        "dtype": "uint8",
        "ids": ids,
    })
    found = open_image_cache(fingerprint, size, cache_dir=cache_dir)
    if found is None:  # pragma: no cover - only on a racing writer
        raise DataError(f"Image cache {data} could not be reopened after building it.")
    return found


def _write_rows(data: Path, ids: list[str], paths: list[str], shape: tuple[int, ...],
                size: int, resize: str, workers: int | None, chunk: int,
                progress: bool) -> None:
    """Decode every image into a temporary memmap file, renamed onto ``data`` when done."""
    with atomic_path(data) as tmp:
        if len(ids):
            mm = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape)
            del mm
            tasks = [(str(tmp), shape, s, paths[s:s + chunk], size, resize)
                     for s in range(0, len(ids), chunk)]
            n_workers = workers or min(os.cpu_count() or 1, 8)
            bar = _bar(len(ids), progress, f"caching {len(ids)} images at {size}px")
            try:
                if n_workers <= 1 or len(tasks) == 1:
                    for t in tasks:
                        _fill_chunk(t)
                        bar.update(len(t[3]))
                else:
                    with ProcessPoolExecutor(max_workers=min(n_workers, len(tasks))) as pool:
                        for t, _ in zip(tasks, pool.map(_fill_chunk, tasks), strict=True):
                            bar.update(len(t[3]))
            finally:
                bar.close()

def _bar(total: int, enabled: bool, desc: str):  # noqa: ANN202 - tqdm or a no-op
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img", leave=False)
