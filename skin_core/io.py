"""Atomic file writing: a result file is either complete or absent, never half-written.

Every writer goes to a temporary name in the same folder, flushes, then renames over the
target (``os.replace`` is atomic on POSIX and Windows for the same filesystem).
"""

from __future__ import annotations

import json
import math
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
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; results are ordinary files
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


def _plain(obj: Any) -> Any:
    """Recursively turn ``obj`` into plain JSON types; non-finite floats become ``None``."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return _plain(obj.to_dict())
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def to_json(obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> str:
    """Strict JSON text for ``obj``.

    NumPy scalars and arrays, paths and records with ``to_dict`` are converted; NaN and
    infinities become ``null`` so every reader (browsers included) can parse the result.
    """
    return json.dumps(_plain(obj), indent=indent, allow_nan=False, sort_keys=sort_keys)


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


def read_yaml_mapping(path: str | os.PathLike[str], *, what: str = "Config file") -> dict[str, Any]:
    """Read a YAML file that must hold a mapping (``yaml.safe_load``: no code runs).

    Raises
    ------
    ConfigError
        The file is missing, is not valid YAML, or does not hold a mapping.
    """
    import yaml

    from skin_core.errors import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p} does not exist; check the --config path (configs/ has "
                          "examples).")
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {p} is not valid YAML ({exc}); fix its syntax.") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{what} {p} must hold a mapping of options; got "
                          f"{type(doc).__name__}.")
    return doc
