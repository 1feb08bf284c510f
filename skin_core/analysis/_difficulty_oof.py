"""Out-of-fold tables: read and validate ``oof.csv`` (or a long DataFrame) into an :class:`OOF`.

Private part of :mod:`skin_core.analysis.difficulty` (which re-exports every public name here;
import them from there). Every error is a :class:`~skin_core.errors.DataError` naming the
table, line, image and model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from skin_core.analysis._difficulty_errors import model_errors
from skin_core.constants import IMAGE_ID, LABEL, LESION_ID, PROB_PREFIX, prob_columns
from skin_core.errors import ConfigError, DataError

#: How OOF rows become models: keep ``model`` ids, or pool them per ``arch``.
BY_CHOICES: tuple[str, ...] = ("model", "arch")

#: Tolerance on probability rows summing to 1, and on probabilities leaving [0, 1].
SUM_TOLERANCE = 1e-3
RANGE_TOLERANCE = 1e-6

MODEL = "model"
ARCH = "arch"


# --------------------------------------------------------------------------------------------
# OOF tables
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class OOF:
    """Out-of-fold predictions of ``M`` models on the same ``N`` images, as arrays.

    Attributes
    ----------
    image_ids:
        ``(N,)`` image ids (object array of str), in first-appearance order of the file.
    labels:
        ``(N,)`` integer class indices into ``classes``.
    pred_probs:
        ``(M, N, K)`` float64 probabilities, rows summing to 1.
    models:
        The ``M`` model names (``model`` ids, or ``arch`` names with ``by="arch"``).
    classes:
        The ``K`` class codes, in column order.
    source:
        Where the table came from (a path or ``"<DataFrame>"``).
    n_dropped_images:
        Images left out because some model had no prediction (``on_missing="drop"``).
    members:
        ``model`` -> the ``model`` ids pooled into it (with ``by="arch"``; identity otherwise).
    lesion_ids:
        ``(N,)`` lesion id of each image (object array, ``None`` where unknown) when the table
        has a ``lesion_id`` column; ``None`` otherwise.
    """

    image_ids: np.ndarray
    labels: np.ndarray
    pred_probs: np.ndarray
    models: tuple[str, ...]
    classes: tuple[str, ...]
    source: str = ""
    n_dropped_images: int = 0
    members: dict[str, tuple[str, ...]] = field(default_factory=dict)
    lesion_ids: np.ndarray | None = None

    @property
    def n_images(self) -> int:
        """``N``."""
        return int(self.labels.size)

    @property
    def n_models(self) -> int:
        """``M``."""
        return len(self.models)

    @property
    def pred_probs_list(self) -> list[np.ndarray]:
        """The ``M`` ``(N, K)`` matrices as a list (cleanlab's ``pred_probs_list``)."""
        return list(self.pred_probs)

    def errors(self) -> np.ndarray:
        """``(M, N)`` boolean matrix: model ``m`` misclassifies image ``i``."""
        return model_errors(self.labels, self.pred_probs)


def _where(source: str, line: int | None = None) -> str:
    return f"{source} line {line}" if line is not None else source


def _line(pos: int) -> int:
    """File line of the data row at position ``pos`` (line 1 is the header)."""
    return int(pos) + 2


def read_oof(
    path: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    by: str = "model",
    renormalize: bool = False,
    on_missing: str = "error",
    on_duplicate: str = "error",
) -> OOF:
    """Read and validate an ``oof.csv`` into an :class:`OOF`.

    Parameters
    ----------
    path:
        Long CSV: ``image_id, model, label, prob_<CLASS>...`` (``arch``, ``fold``,
        ``lesion_id`` and other columns optional; ``arch`` defaults to ``model`` up to an
        ``@``). ``lesion_id`` (empty where unknown) must be the same on every row of an image.
    classes:
        Expected class codes in order; default: the ``prob_<CLASS>`` columns in file order.
        Every class needs its ``prob_`` column and no other ``prob_`` column may appear.
    by:
        ``"model"`` keeps each ``model`` id (e.g. ``efficientnet_b0@s1``) as one model;
        ``"arch"`` pools the members of each ``arch`` by averaging, per image, the
        probabilities of the members that scored it (fold predictions combined per image).
    renormalize:
        Divide each probability row by its sum instead of refusing rows that do not sum to
        1 within 1e-3 (probabilities must still lie in [0, 1]).
    on_missing:
        ``"error"`` (default): every model must score every image; ``"drop"``: keep only the
        images all models scored (the count left out is in ``n_dropped_images``).
    on_duplicate:
        ``"error"`` (default): an ``(image_id, model)`` pair may appear once (a K-fold OOF
        scores each image once per model; duplicates usually mean concatenated runs);
        ``"mean"``: average repeated rows (e.g. repeated cross-validation of one model).

    Returns
    -------
    OOF

    Raises
    ------
    DataError
        Unreadable file, missing columns, non-numeric / out-of-range probabilities, rows
        not summing to 1, labels outside ``classes``, an image with two labels, duplicates,
        models missing for some images: one sentence naming the file, line, image and model.
    ConfigError
        Bad ``by`` / ``on_missing`` / ``on_duplicate``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"OOF file {path} does not exist; pass the oof.csv written by "
                        f"'skin-core train'.")
    try:
        df = pd.read_csv(path, dtype={IMAGE_ID: str, MODEL: str, ARCH: str, LABEL: str,
                                      LESION_ID: str},
                         keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"OOF file {path} cannot be read as CSV ({e}); expected columns "
                        f"image_id, model, label, prob_<CLASS>...") from e
    return oof_from_frame(df, classes=classes, by=by, renormalize=renormalize,
                          on_missing=on_missing, on_duplicate=on_duplicate, source=path)


def _choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(f"The '{name}' parameter of read_oof must be one of "
                          f"{sorted(choices)}. Got {value!r} instead.")
    return value


def oof_from_frame(
    df: pd.DataFrame,
    *,
    classes: Sequence[str] | None = None,
    by: str = "model",
    renormalize: bool = False,
    on_missing: str = "error",
    on_duplicate: str = "error",
    source: str = "<DataFrame>",
) -> OOF:
    """Validate an in-memory long OOF table; same contract as :func:`read_oof`.

    ``source`` names the table in error messages; line numbers count the header as line 1
    (they match the CSV file when the frame was read from one).
    """
    _choice("by", by, BY_CHOICES)
    _choice("on_missing", on_missing, ("error", "drop"))
    _choice("on_duplicate", on_duplicate, ("error", "mean"))
    df = df.reset_index(drop=True)
    if len(df) == 0:
        raise DataError(f"OOF table {source} has no rows; expected one row per image per model.")
    missing = [c for c in (IMAGE_ID, MODEL, LABEL) if c not in df.columns]
    if missing:
        raise DataError(f"OOF table {source} lacks column(s) {', '.join(missing)}; expected "
                        f"image_id, model, arch, fold, label, prob_<CLASS>...")
    found = [c[len(PROB_PREFIX):] for c in df.columns if str(c).startswith(PROB_PREFIX)]
    if classes is None:
        if not found:
            raise DataError(f"OOF table {source} has no prob_<CLASS> columns; expected one "
                            f"probability column per class.")
        classes = tuple(found)
    else:
        classes = tuple(str(c) for c in classes)
        absent = [c for c in classes if c not in found]
        if absent:
            raise DataError(f"OOF table {source} lacks probability column(s) "
                            f"{', '.join(prob_columns(absent))} for the expected classes "
                            f"{', '.join(classes)}; add them or pass the file's classes.")
        extra = [c for c in found if c not in classes]
        if extra:
            raise DataError(f"OOF table {source} has probability column(s) "
                            f"{', '.join(prob_columns(extra))} for classes outside "
                            f"{', '.join(classes)}; drop them or pass the full class list.")
    if len(set(classes)) != len(classes):
        raise DataError(f"OOF table {source}: duplicate classes in {', '.join(classes)}.")

    for col in (IMAGE_ID, MODEL, LABEL):
        bad = df[col].isna() | (df[col].astype(str).str.strip() == "")
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"OOF table {_where(source, _line(pos))}: column '{col}' is empty "
                            f"({int(bad.sum())} row(s) like this); every row needs image_id, "
                            f"model and label.")
    image_ids = df[IMAGE_ID].astype(str).str.strip().to_numpy(dtype=object)
    model_ids = df[MODEL].astype(str).str.strip().to_numpy(dtype=object)
    label_str = df[LABEL].astype(str).str.strip().to_numpy(dtype=object)

    probs = _probabilities(df, classes, source, model_ids, image_ids, renormalize)

    label_codes = pd.Index(list(classes)).get_indexer(label_str).astype(np.int64)
    bad = label_codes < 0
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        others = sorted(set(label_str[bad]))
        raise DataError(f"OOF table {_where(source, _line(pos))} (image_id {image_ids[pos]}): "
                        f"label {label_str[pos]!r} is not one of the classes "
                        f"{', '.join(classes)} ({int(bad.sum())} row(s) with label(s) "
                        f"{', '.join(map(repr, others[:5]))}); fix the labels or pass the "
                        f"matching classes.")

    img_codes, img_uniques = pd.factorize(pd.Series(image_ids))
    n_img = len(img_uniques)
    _, first_row = np.unique(img_codes, return_index=True)  # first row of each image
    first_label = label_codes[first_row]
    conflict = first_label[img_codes] != label_codes
    if conflict.any():
        pos = int(np.flatnonzero(conflict)[0])
        raise DataError(f"OOF table {_where(source, _line(pos))} (image_id {image_ids[pos]}, "
                        f"model {model_ids[pos]}): label {label_str[pos]!r} differs from "
                        f"label {classes[first_label[img_codes[pos]]]!r} in an earlier row "
                        f"of the same image ({int(conflict.sum())} row(s)); every row of an "
                        f"image must carry its one true label.")

    mod_codes, mod_uniques = pd.factorize(pd.Series(model_ids))
    pair = img_codes.astype(np.int64) * len(mod_uniques) + mod_codes
    dup = pd.Series(pair).duplicated(keep="first").to_numpy()
    if dup.any() and on_duplicate == "error":
        pos = int(np.flatnonzero(dup)[0])
        raise DataError(f"OOF table {_where(source, _line(pos))}: image_id {image_ids[pos]} "
                        f"has a second row for model {model_ids[pos]} ({int(dup.sum())} "
                        f"duplicate (image_id, model) row(s)); keep one row per image per "
                        f"model, or pass on_duplicate='mean' to average repeats.")

    if by == "arch":
        if ARCH in df.columns and not df[ARCH].isna().any():
            units = df[ARCH].astype(str).str.strip().to_numpy(dtype=object)
        else:
            units = np.array([m.split("@", 1)[0] for m in model_ids], dtype=object)
    else:
        units = model_ids
    unit_codes, unit_uniques = pd.factorize(pd.Series(units))
    models = tuple(str(u) for u in unit_uniques)
    n_units = len(models)
    members: dict[str, tuple[str, ...]] = {}
    for u, name in enumerate(models):
        members[name] = tuple(dict.fromkeys(model_ids[unit_codes == u]))

    flat = unit_codes.astype(np.int64) * n_img + img_codes
    counts = np.bincount(flat, minlength=n_units * n_img).reshape(n_units, n_img)
    sums = np.stack([np.bincount(flat, weights=probs[:, k], minlength=n_units * n_img)
                     for k in range(len(classes))], axis=-1).reshape(n_units, n_img, -1)
    have = counts > 0
    keep = have.all(axis=0)
    n_dropped = int((~keep).sum())
    if n_dropped:
        per_model = ", ".join(f"{name}: {int((~have[u]).sum())}"
                              for u, name in enumerate(models) if not have[u].all())
        if on_missing == "error" or not keep.any():
            first = str(img_uniques[int(np.flatnonzero(~keep)[0])])
            hint = ("no image was scored by all models; check that the runs belong together"
                    if not keep.any() else
                    f"pass on_missing='drop' (--common-images) to keep the {int(keep.sum())} "
                    f"images all models scored")
            raise DataError(f"OOF table {source}: {n_dropped} of {n_img} images lack "
                            f"predictions from some of the {n_units} models (images missing "
                            f"per model: {per_model}; first: {first}); {hint}.")
    with np.errstate(invalid="ignore", divide="ignore"):
        pred_probs = sums[:, keep, :] / counts[:, keep, None]
    lesion_ids = _lesion_ids(df, source, img_codes, n_img, image_ids)
    return OOF(
        image_ids=np.asarray(img_uniques, dtype=object)[keep],
        labels=first_label[keep],
        pred_probs=pred_probs,
        models=models,
        classes=classes,
        source=source,
        n_dropped_images=n_dropped,
        members=members,
        lesion_ids=None if lesion_ids is None else lesion_ids[keep],
    )


def _lesion_ids(df: pd.DataFrame, source: str, img_codes: np.ndarray, n_img: int,
                image_ids: np.ndarray) -> np.ndarray | None:
    """Per-image lesion id from an optional ``lesion_id`` column (``None`` where missing)."""
    if LESION_ID not in df.columns:
        return None
    raw = df[LESION_ID]
    text = raw.astype(str).str.strip()
    known = (~raw.isna() & (text != "")).to_numpy()
    out = np.full(n_img, None, dtype=object)
    if not known.any():
        return out
    pairs = pd.DataFrame({"img": img_codes[known], "lesion": text.to_numpy()[known],
                          "pos": np.flatnonzero(known)}).drop_duplicates(["img", "lesion"])
    twice = pairs["img"].duplicated(keep="first").to_numpy()
    if twice.any():
        pos = int(pairs["pos"].to_numpy()[twice][0])
        first = pairs.loc[pairs["img"] == img_codes[pos], "lesion"].iloc[0]
        raise DataError(f"OOF table {_where(source, _line(pos))} (image_id {image_ids[pos]}): "
                        f"lesion_id {text.iloc[pos]!r} differs from lesion_id {first!r} in an "
                        f"earlier row of the same image; every row of an image must carry "
                        f"its one lesion id.")
    out[pairs["img"].to_numpy()] = pairs["lesion"].to_numpy()
    return out


def _probabilities(
    df: pd.DataFrame, classes: Sequence[str], source: str,
    model_ids: np.ndarray, image_ids: np.ndarray, renormalize: bool,
) -> np.ndarray:
    cols = prob_columns(classes)
    block = df[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(block)
    if bad.any():
        pos, k = (int(v[0]) for v in np.nonzero(bad))
        raw = df[cols[k]].iloc[pos]
        raise DataError(f"OOF table {_where(source, _line(pos))} (image_id {image_ids[pos]}, "
                        f"model {model_ids[pos]}): column {cols[k]} holds {raw!r}, expected a "
                        f"probability in [0, 1] ({int(bad.any(axis=1).sum())} row(s) affected).")
    out = (block < -RANGE_TOLERANCE) | (block > 1 + RANGE_TOLERANCE)
    if out.any():
        pos, k = (int(v[0]) for v in np.nonzero(out))
        raise DataError(f"OOF table {_where(source, _line(pos))} (image_id {image_ids[pos]}, "
                        f"model {model_ids[pos]}): {cols[k]} = {block[pos, k]:g} is outside "
                        f"[0, 1] ({int(out.any(axis=1).sum())} row(s) affected); write "
                        f"probabilities (softmax outputs), not logits.")
    block = np.clip(block, 0.0, 1.0)
    sums = block.sum(axis=1)
    off = np.abs(sums - 1.0) > SUM_TOLERANCE
    if off.any():
        pos = int(np.flatnonzero(off)[0])
        if not renormalize or np.any(sums[off] <= 0):
            hint = ("a row of zeros cannot be renormalised; fix the file" if renormalize else
                    "fix the file or pass renormalize=True (--renormalize) to divide each row "
                    "by its sum")
            raise DataError(f"OOF table {_where(source, _line(pos))} (image_id "
                            f"{image_ids[pos]}, model {model_ids[pos]}): probabilities sum to "
                            f"{sums[pos]:.6g}, expected 1 within {SUM_TOLERANCE:g} "
                            f"({int(off.sum())} row(s) affected); {hint}.")
    return block / sums[:, None]
