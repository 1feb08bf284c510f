"""Atomic file writing: a result file is either complete or absent, never half-written.

Every writer goes to a temporary name in the same folder, flushes, then renames over the
target (``os.replace`` is atomic on POSIX and Windows for the same filesystem).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On an exception the temporary file is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically and return the path."""
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(target)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``target`` atomically and return the path."""
    return atomic_write_bytes(target, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def to_json(obj: Any, *, indent: int | None = 2) -> str:
    """JSON text for ``obj``: NumPy scalars/arrays, paths and records with ``to_dict`` allowed."""
    return json.dumps(obj, indent=indent, default=_json_default, allow_nan=True)


def atomic_write_json(target: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``target`` atomically."""
    return atomic_write_text(target, to_json(obj) + "\n")


def atomic_write_csv(target: str | os.PathLike[str], df: Any, **to_csv_kwargs: Any) -> Path:
    """Write a DataFrame as CSV (no index unless asked) to ``target`` atomically."""
    to_csv_kwargs.setdefault("index", False)
    with atomic_path(target) as tmp:
        df.to_csv(tmp, **to_csv_kwargs)
    return Path(target)


def atomic_write_with(target: str | os.PathLike[str], writer: Callable[[BinaryIO], None]) -> Path:
    """Call ``writer(fh)`` on a binary file handle and rename the result onto ``target``."""
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(target)
