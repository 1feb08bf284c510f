"""A simulated reader study for the demo dataset (``readings.csv`` shape).

The demo generator writes ``generation_truth.csv`` with each image's true class, its dataset
label (which differs from the true class on *mislabeled* images), blur, ambiguity and a
``latent_difficulty`` in ``[0, 1]``. :func:`simulate_readings` lets ``R`` simulated readers
read those images:

* reader ``r`` has a skill ``s_r ~ Normal(skill_mean, skill_sd)`` on the logit scale; every
  image has a shared random effect ``u_i ~ Normal(0, image_sd)`` (readers agree on what is
  hard beyond the recorded difficulty);
* ``logit P(reader r recognises the true class of image i) = s_r + u_i
  - difficulty_weight * latent_difficulty_i - blur_weight * is_blurred_i
  - ambiguity_weight * is_ambiguous_i``;
* a reader who does not recognise the class answers, with probability ``p_other``, an
  out-of-vocabulary answer (``"other"``) and otherwise a plausible confusion: the image's
  ``ambiguous_with`` class (probability ``ambiguous_pull``) for ambiguous images, else a class
  drawn from :data:`CONFUSION_PRIOR` (MEL <-> NV, BCC <-> BKL/AK, AK <-> SCC <-> BKL, ...);
* on a mislabeled image a reader who recognises the lesion answers its TRUE class, which the
  dataset label counts as wrong (as for real label noise).

Everything is drawn from ``numpy.random.default_rng(seed)`` over images sorted by id, so the
result depends only on the inputs and the seed.

The readers never see any model's output: which images they get wrong depends only on the
generator's truth. Calibration of the defaults (8 readers on all 2,000 images of the embedded
demo, seed 0): sharp, unambiguous, correctly labelled images are read correctly about 77 % of
the time (the published study: 70 % on control images), blurred ones about 25 %, ambiguous
ones about 23 % and mislabeled ones about 8 % (the published study: 31 % on the images every
CNN got wrong). See docs/readers.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from skin_core.constants import ISIC2019_CLASSES
from skin_core.errors import ConfigError, DataError

#: Relative chance of answering class ``b`` when a lesion of class ``a`` is not recognised.
CONFUSION_PRIOR: dict[str, dict[str, float]] = {
    "MEL": {"NV": 0.55, "BKL": 0.25, "BCC": 0.08, "DF": 0.04, "VASC": 0.04, "SCC": 0.02,
            "AK": 0.02},
    "NV": {"MEL": 0.60, "BKL": 0.20, "DF": 0.10, "BCC": 0.05, "VASC": 0.05},
    "BCC": {"BKL": 0.30, "AK": 0.20, "SCC": 0.20, "MEL": 0.15, "NV": 0.10, "DF": 0.05},
    "AK": {"SCC": 0.40, "BKL": 0.35, "BCC": 0.15, "MEL": 0.10},
    "BKL": {"MEL": 0.30, "AK": 0.20, "NV": 0.20, "BCC": 0.15, "SCC": 0.10, "DF": 0.05},
    "DF": {"NV": 0.50, "MEL": 0.20, "BKL": 0.20, "BCC": 0.10},
    "VASC": {"NV": 0.30, "MEL": 0.30, "BCC": 0.20, "DF": 0.20},
    "SCC": {"AK": 0.40, "BCC": 0.30, "BKL": 0.20, "MEL": 0.10},
}

_REQUIRED = ("image_id", "true_label")
#: File name of the demo generator's per-image generation truth.
GENERATION_TRUTH_CSV = "generation_truth.csv"


def sample_study_images(
    groups: pd.Series | pd.DataFrame,
    *,
    n_per_group: int | Mapping[str, int],
    seed: int = 0,
) -> list[str]:
    """Sample up to ``n_per_group`` image ids from each group (e.g. difficult and control).

    Parameters
    ----------
    groups:
        Series ``image_id -> group`` or a frame with ``image_id`` and ``group`` columns
        (``difficulty.csv``).
    n_per_group:
        Images per group (an int for every group, or a mapping group -> count; groups absent
        from the mapping are not sampled).
    seed:
        Random seed.

    Returns
    -------
    The sampled image ids, sorted.
    """
    if isinstance(groups, pd.DataFrame):
        if not {"image_id", "group"} <= set(groups.columns):
            raise DataError("The groups table needs columns image_id and group (found "
                            f"{', '.join(map(str, groups.columns))}).")
        groups = pd.Series(groups["group"].to_numpy(), index=groups["image_id"].astype(str))
    rng = np.random.default_rng(seed)
    picked: list[str] = []
    for name in sorted(groups.dropna().unique(), key=str):
        n = n_per_group.get(name, 0) if isinstance(n_per_group, Mapping) else int(n_per_group)
        ids = np.array(sorted(groups.index[groups == name].astype(str)))
        if n > 0 and ids.size:
            picked.extend(rng.choice(ids, size=min(n, ids.size), replace=False).tolist())
    return sorted(picked)


def simulate_readings(
    generation_truth: pd.DataFrame,
    *,
    groups: pd.Series | pd.DataFrame | None = None,
    images: Iterable[str] | None = None,
    n_per_group: int | Mapping[str, int] | None = None,
    n_readers: int = 8,
    seed: int = 0,
    classes: Iterable[str] = ISIC2019_CLASSES,
    skill_mean: float = 1.6,
    skill_sd: float = 0.5,
    image_sd: float = 0.6,
    difficulty_weight: float = 3.0,
    blur_weight: float = 0.5,
    ambiguity_weight: float = 0.5,
    ambiguous_pull: float = 0.7,
    p_other: float = 0.05,
) -> pd.DataFrame:
    """Simulated readings of the demo images by ``n_readers`` readers (see module docstring).

    Parameters
    ----------
    generation_truth:
        ``generation_truth.csv`` as a frame; needs ``image_id`` and ``true_label``; uses
        ``latent_difficulty``, ``is_blurred``, ``is_ambiguous`` and ``ambiguous_with`` when
        present (missing ones count as 0 / none).
    groups, n_per_group:
        With both, only a sample of ``n_per_group`` images per group is read
        (:func:`sample_study_images`), e.g. 50 difficult and 50 control images as in the study.
    images:
        Alternatively, the exact image ids to read (intersected with the sample, if both).
    n_readers:
        Number of readers (ids ``R01``, ``R02``, ...).
    seed:
        Random seed; the same inputs and seed give the same readings.
    classes:
        Class vocabulary the readers answer in.
    skill_mean, skill_sd, image_sd, difficulty_weight, blur_weight, ambiguity_weight:
        Logit-scale parameters of the chance of a correct answer (module docstring).
    ambiguous_pull, p_other:
        Chance that a wrong answer on an ambiguous image is its ``ambiguous_with`` class, and
        that a wrong answer is out of vocabulary (``"other"``).

    Returns
    -------
    DataFrame ``reader_id, image_id, diagnosis`` (one row per reader per image, sorted by
    reader then image).

    Examples
    --------
    >>> gt = pd.DataFrame({"image_id": ["a", "b"], "true_label": ["MEL", "NV"],
    ...                    "latent_difficulty": [0.1, 0.9]})
    >>> simulate_readings(gt, n_readers=2, seed=0).shape
    (4, 3)
    """
    classes = tuple(classes)
    if n_readers < 1:
        raise ConfigError(f"The 'n_readers' parameter of simulate_readings must be >= 1. Got "
                          f"{n_readers!r} instead.")
    if not 0 <= p_other <= 1 or not 0 <= ambiguous_pull <= 1:
        raise ConfigError("The 'p_other' and 'ambiguous_pull' parameters of simulate_readings "
                          f"must be in [0, 1]. Got {p_other!r} and {ambiguous_pull!r} instead.")
    missing = [c for c in _REQUIRED if c not in generation_truth.columns]
    if missing:
        raise DataError(f"The generation truth has no column {', '.join(missing)} (found "
                        f"{', '.join(map(str, generation_truth.columns))}); pass the demo "
                        "dataset's generation_truth.csv.")
    gt = generation_truth.copy()
    gt["image_id"] = gt["image_id"].astype(str).str.strip()
    if groups is not None and n_per_group is not None:
        keep = set(sample_study_images(groups, n_per_group=n_per_group, seed=seed))
        gt = gt[gt["image_id"].isin(keep)]
    if images is not None:
        gt = gt[gt["image_id"].isin({str(i).strip() for i in images})]
    gt = gt.drop_duplicates("image_id").sort_values("image_id").reset_index(drop=True)
    if gt.empty:
        raise DataError("No image is left to read: the image selection does not match the "
                        "generation truth's image ids.")
    true = gt["true_label"].astype(str).str.strip().to_numpy()
    bad = sorted(set(true) - set(classes))
    if bad:
        raise DataError(f"The generation truth has true_label values {bad[:5]} outside the "
                        f"classes {', '.join(classes)}; pass classes=.")

    def num(col: str) -> np.ndarray:
        if col not in gt.columns:
            return np.zeros(len(gt))
        s = gt[col]
        if s.dtype == object or str(s.dtype).startswith(("string", "str")):
            s = s.astype(str).str.strip().str.lower().map(
                {"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0, "": 0.0, "nan": 0.0})
        return pd.to_numeric(s, errors="coerce").fillna(0.0).to_numpy(float)

    difficulty = np.clip(num("latent_difficulty"), 0.0, 1.0)
    blurred = num("is_blurred") > 0
    ambiguous = num("is_ambiguous") > 0
    amb_with = (gt["ambiguous_with"].astype(object).where(gt["ambiguous_with"].notna(), "")
                .astype(str).str.strip().to_numpy() if "ambiguous_with" in gt.columns
                else np.full(len(gt), ""))

    k = len(classes)
    cidx = {c: i for i, c in enumerate(classes)}
    prior = np.full((k, k), 1.0)
    for a, row in CONFUSION_PRIOR.items():
        if a in cidx and any(b in cidx for b in row):
            prior[cidx[a]] = 0.0
            for b, w in row.items():
                if b in cidx:
                    prior[cidx[a], cidx[b]] = w
    np.fill_diagonal(prior, 0.0)
    prior = prior / prior.sum(axis=1, keepdims=True)
    cum = np.cumsum(prior, axis=1)

    rng = np.random.default_rng(seed)
    n_img = len(gt)
    skill = rng.normal(skill_mean, skill_sd, n_readers)
    u = rng.normal(0.0, image_sd, n_img)
    eta = (skill[:, None] + u[None, :] - difficulty_weight * difficulty[None, :]
           - blur_weight * blurred[None, :] - ambiguity_weight * ambiguous[None, :])
    p_ok = 1.0 / (1.0 + np.exp(-eta))
    r_ok = rng.random((n_readers, n_img))
    r_other = rng.random((n_readers, n_img))
    r_amb = rng.random((n_readers, n_img))
    r_conf = rng.random((n_readers, n_img))
    t_idx = np.array([cidx[t] for t in true])
    confused = (r_conf[..., None] > cum[t_idx][None, :, :]).sum(axis=-1)
    confused = np.minimum(confused, k - 1)
    labels = np.array(classes, dtype=object)
    answer = labels[confused]
    amb_ok = np.array([a in cidx and a != t for a, t in zip(amb_with, true, strict=True)])
    use_amb = ambiguous[None, :] & amb_ok[None, :] & (r_amb < ambiguous_pull)
    answer = np.where(use_amb, amb_with[None, :].astype(object), answer)
    answer = np.where(r_other < p_other, "other", answer)
    answer = np.where(r_ok < p_ok, labels[t_idx][None, :], answer)
    reader_ids = [f"R{r + 1:02d}" for r in range(n_readers)]
    return pd.DataFrame({
        "reader_id": np.repeat(reader_ids, n_img),
        "image_id": np.tile(gt["image_id"].to_numpy(), n_readers),
        "diagnosis": answer.reshape(-1).astype(str),
    })


def read_generation_truth(source: str | Path) -> pd.DataFrame:
    """``generation_truth.csv`` of a demo dataset (the file, or the dataset folder holding it)."""
    path = Path(source)
    if path.is_dir():
        path = path / GENERATION_TRUTH_CSV
    if not path.is_file():
        raise DataError(f"The generation truth file {path} does not exist; build the demo "
                        "dataset with 'skin-core demo-data --out DIR' first.")
    try:
        return pd.read_csv(path, dtype={"image_id": str, "true_label": str, "label": str,
                                        "ambiguous_with": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"The generation truth file {path} is not a readable CSV ({e}); "
                        "rebuild the demo dataset.") from e


def simulate_demo_readings(
    demo_dir: str | Path,
    *,
    groups: pd.Series | pd.DataFrame | None = None,
    n_per_group: int | Mapping[str, int] | None = 50,
    n_readers: int = 8,
    seed: int = 0,
) -> pd.DataFrame:
    """Simulated ``readings.csv`` for a demo dataset folder, as the app's dashboard uses it.

    With ``groups`` (e.g. ``difficulty.csv`` read by
    :func:`skin_core.analysis.readers.read_groups`), ``n_per_group`` images per group are read
    (all of them when ``n_per_group`` is None); without, every image is read.
    """
    gt = read_generation_truth(demo_dir)
    if groups is None:
        return simulate_readings(gt, n_readers=n_readers, seed=seed)
    return simulate_readings(gt, groups=groups, n_per_group=n_per_group,
                             images=None if n_per_group is not None else list(
                                 groups.index if isinstance(groups, pd.Series)
                                 else groups["image_id"]),
                             n_readers=n_readers, seed=seed)
