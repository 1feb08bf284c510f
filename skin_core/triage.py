"""Many images at once: uploads (files, zip archives, folders) in, a triage table out.

:func:`expand_uploads` (or the streaming :func:`iter_uploads`) turns what a user gives --
several files, zip archives, folders -- into ``(name, bytes)`` items, reading zip members one
at a time with size caps and refusing unsafe members; whatever is not used is listed with its
reason. :func:`iter_predict_uploads` runs the items through a
:class:`~skin_core.predict.Predictor` in batches. :func:`triage_table` turns the results
into one row per image, the rows a clinician should look at first on top
(:data:`PRIORITIES`, docs/management.md "Triage"):

1. ``out of distribution``: the model cannot judge the image (not a lesion it knows);
2. ``unreadable``: the image could not be analysed (its error is in the row);
3. ``refer``: flagged for referral (high risk, low quality, disagreement, uncertainty);
4. ``routine``: the rest.

Within a tier, by the calibrated probability of a malignant class (:data:`MALIGNANT_CLASSES`)
descending, then the referral risk descending (missing last), then upload order. No row is
ever dropped. :func:`triage_csv` exports it (cells that a spreadsheet would run as a formula
are quoted); :func:`read_triage_csv` reads the export back.
"""

from __future__ import annotations

import io
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from skin_core.constants import IMAGE_EXTENSIONS
from skin_core.errors import DataError

#: Classes counted as malignant for the triage order (upper-case; matched ignoring case).
#: AK is included with SCC because HAM10000's ``akiec`` merges actinic keratosis with
#: intraepidermal carcinoma and the HAM10000 literature counts it malignant.
MALIGNANT_CLASSES: frozenset[str] = frozenset({"MEL", "BCC", "SCC", "AK", "AKIEC"})

#: Triage tiers, most urgent first.
PRIORITIES: tuple[str, ...] = ("out of distribution", "unreadable", "refer", "routine")

#: Columns of :func:`triage_table`, in order.
TRIAGE_COLUMNS: tuple[str, ...] = (
    "rank", "priority", "image", "image_id", "diagnosis", "probability",
    "malignant_probability", "prediction_set", "refer", "reasons", "ood", "blur_score",
    "action", "risk", "error",
)
_FLOAT_COLUMNS = ("probability", "malignant_probability", "blur_score", "risk")
_BOOL_COLUMNS = ("refer", "ood")
_TEXT_COLUMNS = ("priority", "image", "image_id", "diagnosis", "prediction_set", "reasons",
                 "action", "error")

#: A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

_CHUNK = 1 << 20  # bytes read at a time from a zip member or a file


# --------------------------------------------------------------------------------------------
# triage table


def triage_table(results: Sequence[Any], *, table: Any = None, management: bool = True,
                 malignant: Iterable[str] = MALIGNANT_CLASSES) -> Any:
    """One row per result, most urgent first.

    Parameters
    ----------
    results:
        :class:`~skin_core.predict.PredictionResult` records, in upload order.
    table:
        The :class:`~skin_core.management.CostTable` for the ``action`` column; default the
        built-in table.
    management:
        ``False`` leaves ``action`` empty (e.g. a model whose classes no table covers).
    malignant:
        Class codes whose calibrated probabilities add up to ``malignant_probability``.

    Returns
    -------
    pandas.DataFrame
        :data:`TRIAGE_COLUMNS`; the index is each row's position in ``results`` (to open
        the single-image view of a selected row: ``results[frame.index[i]]``). ``diagnosis``
        and ``action`` are empty and numbers NaN where there is nothing to say;
        ``prediction_set`` and ``reasons`` are joined with ``", "``; an unreadable image has
        ``refer`` true, reason ``unreadable``, action ``refer`` and its ``error``.

    Raises
    ------
    ConfigError
        ``table`` has no cost for a class of the results.
    """
    import pandas as pd

    from skin_core.management import suggest_management

    bad = {c.upper() for c in malignant}
    n = len(results)
    cols: dict[str, list[Any]] = {c: [] for c in TRIAGE_COLUMNS if c != "rank"}
    tier = np.empty(n, dtype=np.int64)
    nan = float("nan")
    for i, r in enumerate(results):
        error = getattr(r, "error", None)
        ood = bool((getattr(r, "ood", None) or {}).get("flagged"))
        referral = getattr(r, "referral", None) or {}
        probs = getattr(r, "meta_probs", None) or getattr(r, "probs", None) or {}
        label = getattr(r, "label", None)
        if error:
            tier[i] = 1
            refer, reasons = True, ["unreadable"]
            prob = mal = blur = risk = nan
        else:
            refer = bool(referral.get("refer")) or ood
            reasons = list(referral.get("reasons") or ())
            if ood and "out_of_distribution" not in reasons:
                reasons.insert(0, "out_of_distribution")
            tier[i] = 0 if ood else 2 if refer else 3
            prob = _float(probs.get(label)) if label is not None else nan
            mal = (float(sum(v for c, v in probs.items() if str(c).upper() in bad))
                   if probs else nan)
            blur = _float((getattr(r, "quality", None) or {}).get("blur_score"))
            risk = _float(referral.get("risk"))
        action = suggest_management(r, table).action if management else ""
        cols["priority"].append(PRIORITIES[tier[i]])
        cols["image"].append(str(getattr(r, "image", "")))
        cols["image_id"].append(str(getattr(r, "image_id", "")))
        cols["diagnosis"].append("" if error or label is None else str(label))
        cols["probability"].append(prob)
        cols["malignant_probability"].append(mal)
        cols["prediction_set"].append(", ".join(getattr(r, "prediction_set", ()) or ()))
        cols["refer"].append(refer)
        cols["reasons"].append(", ".join(reasons))
        cols["ood"].append(ood)
        cols["blur_score"].append(blur)
        cols["action"].append(action)
        cols["risk"].append(risk)
        cols["error"].append(str(error) if error else "")
    mal = np.asarray(cols["malignant_probability"], dtype=float)
    risk = np.asarray(cols["risk"], dtype=float)
    # np.lexsort: the last key is the primary one; NaN keys sort last (as +inf).
    order = np.lexsort((np.arange(n), np.nan_to_num(-risk, nan=np.inf),
                        np.nan_to_num(-mal, nan=np.inf), tier))
    frame = pd.DataFrame(cols, columns=list(TRIAGE_COLUMNS[1:]))
    for c in _FLOAT_COLUMNS:
        frame[c] = frame[c].astype(float)
    for c in _BOOL_COLUMNS:
        frame[c] = frame[c].astype(bool)
    frame = frame.iloc[order]
    frame.insert(0, "rank", np.arange(1, n + 1, dtype=np.int64))
    frame.index.name = "position"
    return frame


def _float(v: Any) -> float:
    try:
        return float(v) if v is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def triage_counts(frame: Any) -> dict[str, int]:
    """Rows per :data:`PRIORITIES` tier (every tier present, 0 when empty)."""
    counts = frame["priority"].value_counts()
    return {p: int(counts.get(p, 0)) for p in PRIORITIES}


def triage_csv(frame: Any) -> bytes:
    """The triage table as UTF-8 CSV bytes (for ``st.download_button`` or a file).

    Text cells starting with ``= + - @`` (or a tab / carriage return) get a leading ``'`` so
    that a spreadsheet shows them instead of running them as formulas (an uploaded file name
    is user input); :func:`read_triage_csv` removes it again.
    """
    out = frame.loc[:, list(TRIAGE_COLUMNS)].copy()
    for c in _TEXT_COLUMNS:
        out[c] = [("'" + v) if v.startswith(_FORMULA_START) else v for v in out[c]]
    return out.to_csv(index=False, lineterminator="\n").encode("utf-8")


def write_triage_csv(frame: Any, path: str | os.PathLike[str]) -> Path:
    """Write :func:`triage_csv` atomically to ``path``."""
    from skin_core.io import atomic_write_bytes

    return atomic_write_bytes(path, triage_csv(frame))


def read_triage_csv(src: str | os.PathLike[str] | bytes) -> Any:
    """Read a :func:`triage_csv` export back (same columns, values and dtypes; the index is
    a fresh range).

    Raises
    ------
    DataError
        The file is missing or lacks triage columns.
    """
    import pandas as pd

    what = "the triage CSV" if isinstance(src, bytes) else f"triage CSV {src}"
    try:
        raw = pd.read_csv(io.BytesIO(src) if isinstance(src, bytes) else src, dtype=str,
                          keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"Could not read {what} ({exc}); export it again.") from exc
    missing = [c for c in TRIAGE_COLUMNS if c not in raw.columns]
    if missing:
        raise DataError(f"{what[0].upper()}{what[1:]} lacks column(s) {', '.join(missing)}; "
                        "export it again with triage_csv.")
    out = raw.loc[:, list(TRIAGE_COLUMNS)].copy()
    out["rank"] = out["rank"].astype(np.int64)
    for c in _FLOAT_COLUMNS:
        out[c] = pd.to_numeric(out[c].replace("", np.nan)).astype(float)
    for c in _BOOL_COLUMNS:
        out[c] = out[c].map({"True": True, "False": False}).astype(bool)
    for c in _TEXT_COLUMNS:
        out[c] = [v[1:] if v.startswith("'") and v[1:].startswith(_FORMULA_START) else v
                  for v in out[c]]
    return out


# --------------------------------------------------------------------------------------------
# uploads


@dataclass(frozen=True)
class UploadLimits:
    """Caps on what :func:`iter_uploads` reads.

    Attributes
    ----------
    max_image_bytes: one image (a file, or a zip member once decompressed); default the
        predictor's upload limit, 50 MB.
    max_total_bytes: all images together, counting every decompressed byte read (a zip
        member refused for its size included), so a many-member zip bomb stops early.
    max_images: images per batch.
    """

    max_image_bytes: int = 50 * 1024 * 1024
    max_total_bytes: int = 1 << 30
    max_images: int = 2000


@dataclass(frozen=True)
class ExpandedUploads:
    """What :func:`expand_uploads` found: ``items`` to predict and ``skipped`` with reasons."""

    items: tuple[tuple[str, bytes], ...]
    skipped: tuple[tuple[str, str], ...] = ()

    def __len__(self) -> int:
        return len(self.items)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.items]

    def skipped_frame(self) -> Any:
        """``name, reason`` per skipped entry (for the page)."""
        import pandas as pd

        return pd.DataFrame(list(self.skipped), columns=["name", "reason"])


@dataclass
class _Budget:
    limits: UploadLimits
    images: int = 0
    bytes_read: int = 0
    exhausted: str | None = field(default=None)

    @property
    def left(self) -> int:
        return max(0, self.limits.max_total_bytes - self.bytes_read)


def expand_uploads(sources: Iterable[Any], *, limits: UploadLimits | None = None
                   ) -> ExpandedUploads:
    """Every image in ``sources`` as ``(name, bytes)``, plus what was skipped and why.

    Parameters
    ----------
    sources:
        Any mix of: ``(name, bytes)`` pairs, uploaded-file objects (``.name`` and
        ``.getvalue()`` or ``.read()``, e.g. Streamlit's), paths to image files, paths to
        zip archives, folders (searched recursively, sorted). Zip archives -- given as a path
        or as an upload named ``*.zip`` or starting with the zip signature -- are expanded
        member by member (see :func:`iter_uploads`).
    limits:
        :class:`UploadLimits` (default: 50 MB per image, 1 GiB in all, 2,000 images).

    Returns
    -------
    ExpandedUploads
        ``items`` in the order given (zip members in archive order, folders sorted);
        ``skipped`` as ``(name, reason)``: not an image, unsafe path, too large, corrupt
        archive, over a limit...

    Raises
    ------
    DataError
        Nothing usable at all: the sentence says why (the first skip reason).
    """
    skipped: list[tuple[str, str]] = []
    items = tuple(iter_uploads(sources, limits=limits, skipped=skipped))
    if not items:
        if not skipped:
            raise DataError("No image found in the uploads; upload JPEG, PNG, BMP, TIFF or "
                            "WebP images, a zip of them or a folder.")
        name, reason = skipped[0]
        more = f" ({len(skipped) - 1} other item(s) skipped too)" if len(skipped) > 1 else ""
        raise DataError(f"No image found in the uploads{more}; {name} was skipped: {reason}")
    return ExpandedUploads(items, tuple(skipped))


def iter_uploads(sources: Iterable[Any], *, limits: UploadLimits | None = None,
                 skipped: list[tuple[str, str]] | None = None) -> Iterator[tuple[str, bytes]]:
    """Stream :func:`expand_uploads`: yield ``(name, bytes)`` one image at a time.

    Zip members are read one at a time in chunks, never more than the per-image cap plus one
    chunk past it whatever the header claims, so an archive never needs its decompressed
    size in memory. Members refused: paths that leave the archive (absolute, drive letter or
    ``..``), links, encrypted members, nested archives, macOS / Windows metadata
    (``__MACOSX/``, ``._*``, ``.DS_Store``, ``Thumbs.db``), files that are not images (by
    extension, else by their first bytes), and members above the caps. A corrupt archive is
    one skip entry whose reason says so and how to fix it; the other sources go on.

    ``skipped`` (a list the caller passes) receives ``(name, reason)`` for each of them.
    """
    limits = limits or UploadLimits()
    skipped = [] if skipped is None else skipped
    budget = _Budget(limits)
    for i, src in enumerate(sources):
        if budget.exhausted:
            skipped.append((_name_of(src, i), budget.exhausted))
            continue
        if isinstance(src, (str, os.PathLike)):
            path = Path(src)
            if path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink())
                for k, f in enumerate(files):
                    if budget.exhausted:
                        skipped.append((f"{path} ({len(files) - k} more files)",
                                        budget.exhausted))
                        break
                    yield from _from_path(f, budget, skipped)
            else:
                yield from _from_path(path, budget, skipped)
            continue
        try:
            name, data = _named_bytes(src, i)
        except (OSError, ValueError) as exc:
            skipped.append((_name_of(src, i), f"unreadable ({exc})."))
            continue
        yield from _from_bytes(name, data, budget, skipped)


def _name_of(src: Any, i: int) -> str:
    if isinstance(src, tuple) and src:
        return str(src[0])
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    return str(getattr(src, "name", None) or f"upload {i + 1}")


def _named_bytes(src: Any, i: int) -> tuple[str, bytes]:
    if isinstance(src, tuple) and len(src) == 2:
        return str(src[0]), bytes(src[1])
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"upload {i + 1}", bytes(src)
    if hasattr(src, "getvalue"):
        return _name_of(src, i), bytes(src.getvalue())
    if hasattr(src, "read"):
        return _name_of(src, i), bytes(src.read())
    raise ValueError(f"expected a file, a folder, (name, bytes) or an uploaded file, got "
                     f"{type(src).__name__}")


def _from_path(path: Path, budget: _Budget, skipped: list[tuple[str, str]]
               ) -> Iterator[tuple[str, bytes]]:
    name = str(path)
    if _junk(path.name):
        skipped.append((name, "system metadata file, not an image."))
        return
    if path.is_symlink() and not path.exists():
        skipped.append((name, "a broken link."))
        return
    if not path.is_file():
        skipped.append((name, "missing or not a file; check the path."))
        return
    ext = path.suffix.lower()
    if ext == ".zip" or (ext not in IMAGE_EXTENSIONS and _is_zip_file(path)):
        yield from _from_zip(name, path, budget, skipped)
        return
    size = path.stat().st_size
    if size > budget.limits.max_image_bytes:
        skipped.append((name, _too_large(size, budget.limits)))
        return
    with open(path, "rb") as fh:
        if ext not in IMAGE_EXTENSIONS and not _looks_like_image(fh.read(16)):
            skipped.append((name, _not_image(ext)))
            return
        fh.seek(0)
        data = _read_capped(fh, budget, name, skipped)
    if data is not None:
        yield from _accept(name, data, budget, skipped)


def _from_bytes(name: str, data: bytes, budget: _Budget, skipped: list[tuple[str, str]]
                ) -> Iterator[tuple[str, bytes]]:
    ext = Path(name).suffix.lower()
    if ext == ".zip" or (ext not in IMAGE_EXTENSIONS and data[:4] in (b"PK\x03\x04",
                                                                      b"PK\x05\x06")):
        yield from _from_zip(name, io.BytesIO(data), budget, skipped)
        return
    if _junk(Path(name).name):
        skipped.append((name, "system metadata file, not an image."))
        return
    if ext not in IMAGE_EXTENSIONS and not _looks_like_image(data[:16]):
        skipped.append((name, _not_image(ext)))
        return
    if len(data) > budget.limits.max_image_bytes:
        skipped.append((name, _too_large(len(data), budget.limits)))
        return
    budget.bytes_read += len(data)
    yield from _accept(name, data, budget, skipped)


def _accept(name: str, data: bytes, budget: _Budget, skipped: list[tuple[str, str]]
            ) -> Iterator[tuple[str, bytes]]:
    if budget.images >= budget.limits.max_images:
        budget.exhausted = (f"not read: the limit is {budget.limits.max_images} images per "
                            "batch; upload the rest separately.")
        skipped.append((name, budget.exhausted))
        return
    budget.images += 1
    yield name, data


def _from_zip(name: str, file: Any, budget: _Budget, skipped: list[tuple[str, str]]
              ) -> Iterator[tuple[str, bytes]]:
    try:
        zf = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        skipped.append((name, f"not a readable zip archive ({_short(exc)}); make the zip "
                              "again (e.g. `zip -r images.zip FOLDER`) or upload the images "
                              "themselves."))
        return
    with zf:
        infos = [info for info in zf.infolist() if not info.is_dir()]
        for k, info in enumerate(infos):
            member = info.filename
            shown = f"{name}/{member}"
            if budget.exhausted:
                skipped.append((f"{name} ({len(infos) - k} more members)", budget.exhausted))
                break
            reason = _refuse_member(info)
            if reason:
                skipped.append((shown, reason))
                continue
            ext = Path(member).suffix.lower()
            if info.file_size > budget.limits.max_image_bytes:
                skipped.append((shown, _too_large(info.file_size, budget.limits)))
                continue
            try:
                with zf.open(info) as fh:
                    if ext not in IMAGE_EXTENSIONS:
                        head = fh.read(16)
                        budget.bytes_read += len(head)
                        if not _looks_like_image(head):
                            skipped.append((shown, _not_image(ext)))
                            continue
                    else:
                        head = b""
                    data = _read_capped(fh, budget, shown, skipped, head=head)
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError, RuntimeError,
                    NotImplementedError) as exc:
                skipped.append((shown, f"not decompressed ({_short(exc)}); the archive is "
                                       "damaged, make it again."))
                continue
            if data is not None:
                yield from _accept(shown, data, budget, skipped)


def _refuse_member(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member is refused before reading it, or ``None``."""
    member = info.filename
    norm = member.replace("\\", "/")
    parts = norm.split("/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or ".." in parts:
        return ("refused: its path leaves the archive (absolute, drive letter or '..'); only "
                "plain relative paths are read.")
    if any(_junk(p) for p in parts) or "__MACOSX" in parts:
        return "system metadata file, not an image."
    if stat.S_ISLNK(info.external_attr >> 16):
        return "refused: a symbolic link, not a file."
    if info.flag_bits & 0x1:
        return "encrypted; unzip it with its password and upload the images."
    if Path(norm).suffix.lower() == ".zip":
        return "a zip inside the zip is not opened; unzip it and upload its images."
    return None


def _read_capped(fh: Any, budget: _Budget, name: str, skipped: list[tuple[str, str]], *,
                 head: bytes = b"") -> bytes | None:
    """Read ``fh`` to its end in chunks, stopping one chunk past the per-image cap or the
    batch's byte budget (then a skip entry and ``None``)."""
    cap = budget.limits.max_image_bytes
    chunks = [head] if head else []
    got = len(head)
    while True:
        chunk = fh.read(_CHUNK)
        if not chunk:
            break
        got += len(chunk)
        budget.bytes_read += len(chunk)
        if got > cap:
            skipped.append((name, f"decompresses to more than {_mb(cap)} (the limit per "
                                  "image; a zip bomb or a very large file), not read."))
            return None
        if budget.bytes_read > budget.limits.max_total_bytes:
            budget.exhausted = (f"not read: the uploads hold more than "
                                f"{_mb(budget.limits.max_total_bytes)} of images in all; "
                                "upload fewer at a time.")
            skipped.append((name, budget.exhausted))
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _junk(base: str) -> bool:
    return base.startswith("._") or base in (".DS_Store", "Thumbs.db", "desktop.ini")


def _is_zip_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in (b"PK\x03\x04", b"PK\x05\x06")
    except OSError:
        return False


def _looks_like_image(head: bytes) -> bool:
    """JPEG, PNG, BMP, TIFF, WebP or GIF signature."""
    return (head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00",
                             b"MM\x00*", b"GIF87a", b"GIF89a"))
            or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"))


def _not_image(ext: str) -> str:
    return (f"not an image ({ext or 'no extension'}); only JPEG, PNG, BMP, TIFF and WebP "
            "files are read.")


def _too_large(size: int, limits: UploadLimits) -> str:
    return (f"{_mb(size)}, above the limit of {_mb(limits.max_image_bytes)} per image; "
            "export a smaller JPEG or PNG.")


def _mb(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


# --------------------------------------------------------------------------------------------
# prediction of the expanded uploads


def iter_predict_uploads(predictor: Any, items: Iterable[tuple[str, bytes]], *,
                         metadata: Any = None, batch_size: int = 16, heatmap: bool = False,
                         similar: int = 0) -> Iterator[Any]:
    """Predict ``(name, bytes)`` items in batches with their names; yield one result per item,
    in order (an unreadable image is a result with ``error``, never an exception).

    ``metadata``: one ``(age, sex, site)`` for every image, or ``None``. Only one batch of
    bytes is held at a time, so ``items`` may be :func:`iter_uploads` itself.
    """
    it = iter(items)
    while True:
        chunk = list(islice(it, max(1, batch_size)))
        if not chunk:
            return
        names = [n for n, _ in chunk]
        yield from predictor.predict_batch([b for _, b in chunk],
                                           metadata=[metadata] * len(chunk), names=names,
                                           heatmap=heatmap, similar=similar)


__all__ = [
    "MALIGNANT_CLASSES",
    "PRIORITIES",
    "TRIAGE_COLUMNS",
    "ExpandedUploads",
    "UploadLimits",
    "expand_uploads",
    "iter_predict_uploads",
    "iter_uploads",
    "read_triage_csv",
    "triage_counts",
    "triage_csv",
    "triage_table",
    "write_triage_csv",
]
