"""Which images a run trains on, predicts and chooses its epochs on.

- :func:`resolve_folds`: the run's folds (a given ``folds.csv``, the resumed run's own, or
  new lesion-grouped stratified folds), checked against ``config.folds``. Fold
  ``CALIBRATION_FOLD`` (-1) marks the calibration split: never trained on, never predicted.
- :func:`check_classes`: every class can be validated in every fold.
- :func:`inner_split`: with ``epoch_selection: inner``, the share of a fold's training images
  (whole lesions, per class) on which the epoch is chosen; the fold does not train on them.
- :func:`calibration_record`: how many images the run held out for calibration (written to
  ``config.yaml`` and ``metrics.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skin_core.constants import CALIBRATION_FOLD, IMAGE_ID, LABEL, LESION_ID
from skin_core.errors import ConfigError, DataError
from skin_core.training.config import TrainConfig


def check_classes(dataset: Any, k: int, keep: np.ndarray | None = None) -> None:
    """Refuse a class with fewer (kept) images than ``k`` folds, or fewer than 2 classes.

    ``keep`` (boolean per table row) restricts the count to the images the folds cover
    (everything but the calibration split).
    """
    labels = dataset.table[LABEL] if keep is None else dataset.table[LABEL][keep]
    counts = labels.value_counts()
    where = "" if keep is None else " outside the calibration split"
    short = [(c, int(counts.get(c, 0))) for c in dataset.classes if 0 < counts.get(c, 0) < k]
    if short:
        shown = ", ".join(f"{c} ({n} image{'s' if n != 1 else ''}{where})" for c, n in short)
        raise DataError(
            f"Class {shown} has fewer images than the {k} folds, so some folds could not "
            f"validate it; use --folds {min(n for _, n in short)} or fewer, or add images of "
            "that class (or remove it from the dataset)."
        )
    if int((counts > 0).sum()) < 2:
        raise DataError(f"The dataset has images{where} of fewer than 2 classes; training "
                        "needs at least 2 classes.")


def resolve_folds(dataset: Any, config: TrainConfig, folds: Any, run_dir: Path,
                  resume: bool) -> pd.Series:
    """The run's fold per image (-1 = calibration split), in table order.

    Raises
    ------
    DataError
        Folds that do not match the dataset (:func:`~skin_core.data.splits.read_folds`), a
        resumed run given other folds, folds other than ``0..config.folds - 1``, or a class
        with fewer non-calibration images than folds.
    """
    from skin_core.data.splits import make_folds, read_folds

    existing = run_dir / "folds.csv"
    if resume and existing.is_file():
        series = read_folds(existing, dataset)
        if folds is not None and not read_folds(folds, dataset).equals(series):
            raise DataError(
                f"The folds given differ from {existing} of the run being resumed; resume "
                "without --folds-file or start a new run directory."
            )
    elif folds is not None:
        series = read_folds(folds, dataset)
    else:
        series = make_folds(dataset, k=config.folds, seed=config.seed)
    kept = series.to_numpy() != CALIBRATION_FOLD
    present = sorted(set(series[kept].tolist()))
    found_k = max(present) + 1 if present else 0
    if found_k != config.folds or present != list(range(config.folds)):
        raise DataError(
            f"The folds file has folds {present} but the run asks for {config.folds} folds "
            f"(0..{config.folds - 1}); pass --folds {found_k} or a folds file made for "
            f"{config.folds} folds."
        )
    if not kept.all():
        check_classes(dataset, config.folds, kept)
    return series


def inner_seed(seed: int, fold: int) -> int:
    """Seed of fold ``fold``'s inner split: a stable function of the run's ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(fold)]).generate_state(1)[0])


def inner_split(table: pd.DataFrame, train: np.ndarray, *, fraction: float, seed: int,
                fold: int) -> np.ndarray:
    """Boolean per table row: the inner split of fold ``fold``'s training rows ``train``.

    A lesion-grouped, class-stratified ``fraction`` of the training images
    (:func:`~skin_core.data.splits.calibration_split` on them, seeded by
    :func:`inner_seed`), so it depends on the folds and ``seed`` only: every member of a run
    chooses its epoch on the same images of a fold.

    Raises
    ------
    ConfigError
        The fraction takes no lesion of the fold's training images.
    """
    from skin_core.data.splits import calibration_split

    cols = [c for c in (IMAGE_ID, LABEL, LESION_ID) if c in table.columns]
    rows = np.flatnonzero(train)
    held = calibration_split(table.iloc[rows][cols], fraction,
                             seed=inner_seed(seed, fold)).to_numpy()
    if not held.any():
        raise ConfigError(
            f"An inner_fraction of {fraction} takes no lesion of fold {fold}'s {len(rows)} "
            "training images, so no epoch could be chosen; raise inner_fraction or use "
            "epoch_selection: last."
        )
    out = np.zeros(len(table), dtype=bool)
    out[rows[held]] = True
    return out


def calibration_record(dataset: Any, folds: pd.Series) -> dict[str, Any]:
    """``n_images``, ``n_lesions``, ``n_groups`` and ``per_class`` of the calibration split."""
    from skin_core.data.splits import calibration_report

    rep = calibration_report(dataset, folds)
    return {k: rep[k] for k in ("n_images", "n_lesions", "n_groups", "per_class")}
