"""The embedded demo dataset: synthetic dermoscopy in the exact ISIC 2019 layout.

:func:`generate_demo_dataset` writes::

    DIR/ISIC_2019_Training_Input/ISIC_9000000.jpg ...   square RGB JPEGs (quality 90)
    DIR/ISIC_2019_Training_GroundTruth_Masks/ISIC_9000000_segmentation.png ...
                                                         lesion masks (ISIC 2018 Task 1 layout)
    DIR/ISIC_2019_Training_GroundTruth.csv               image,MEL,...,SCC,UNK (1.0 / 0.0)
    DIR/ISIC_2019_Training_Metadata.csv                  image,age_approx,anatom_site_general,
                                                         lesion_id,sex (blank = missing)
    DIR/generation_truth.csv                             what the generator did, per image
    DIR/README.txt                                       says the data are synthetic

so ``load_dataset("isic2019:DIR")`` reads it through the same code as the real data (the
loaders read only the images folder and the CSVs; the masks folder is for localisation
measures, :func:`skin_core.explain.localisation_scores`).

**Lesion masks** follow the ISIC 2018 Task 1 ground truth: one ``<image_id>_segmentation.png``
per image, an 8-bit greyscale PNG of the image's size, 255 inside the lesion and 0 outside. The
mask is the lesion's outline as drawn (where the body's soft edge crosses one half), moved by
the same pose as the picture, before hairs, the field of view and the focus blur: a blurred
image keeps the mask of its sharp lesion. Radial streaks reaching beyond the outline and the
pink erythema halo around some lesions are outside it (:func:`lesion_mask_path`).

What is drawn (ground truth for the later analyses):

* **Classes** follow the ISIC 2019 imbalance with a floor: every class gets at least
  ``ceil(class_floor * n)`` images (4 % by default), the rest is shared in ISIC 2019
  proportions (largest remainders). For n = 2000: NV 927, MEL 325, BCC 239, BKL 189, and
  AK, DF, VASC, SCC 80 each.
* **Lesions**: images are grouped into lesions whose sizes, and the share of images without a
  ``lesion_id``, follow the real per-class distributions. All images of a lesion share the
  lesion's metadata and its drawing (``lesion_seed``); each image is a new view (pose, light,
  hairs, ruler, field of view, blur).
* **Metadata** (age, sex, site, with missing values) is sampled per lesion from the real
  class-conditional distributions of ISIC 2019 (:mod:`._tables`). It depends on the true class.
* **Ambiguous** lesions (``ambiguous_fraction`` of the images, whole lesions) blend the
  structures, colours and shape of a confusable second class with weight 0.3-0.5.
* **Mislabeled** lesions (``mislabel_fraction`` of the images, whole lesions, disjoint from the
  ambiguous ones) get the label of a confusable class in the CSV. Only classes above the
  floor are flipped, so every class keeps its floor in the ground-truth CSV too.
* **Blurred** images (``blur_fraction``, chosen per image) get a Gaussian focus blur with
  sigma 8, 10, 12 or 14 px at 256 px (scaled with ``size``). The classes are told apart mainly
  by fine structures (network, dots, globules, vessels, milia, scale) a few pixels across at
  64 px, while their outline and colours overlap within the brown (NV, MEL, BKL, DF) and pink
  (BCC, AK, SCC) groups; blur erases the structures, so a blurred lesion looks like a
  featureless one that its neighbouring classes also produce (as in dermoscopy).
* ``latent_difficulty = 1 - (1 - a) (1 - b) (1 - 0.5 (1 - s))`` with ``a = 2 * mix_weight``
  (ambiguity, 0 when not ambiguous), ``b = blur_sigma_256 / 14`` and ``s`` the lesion's
  feature strength (how textbook-like its structures are, in [0.45, 1]).

Every random choice comes from ``seed``: a plan (classes, lesions, metadata, flags and one
seed per lesion and per image) is drawn first in one process, then images are rendered in
parallel from their own seeds, so the same ``seed`` and ``n`` give the same bytes whatever
the number of workers.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skin_core.constants import ISIC2019_CLASSES, ISIC2019_SITE_VALUES, ISIC2019_UNKNOWN
from skin_core.data.synthetic import _tables
from skin_core.data.synthetic._layout import (
    GROUND_TRUTH_CSV,
    IMAGES_DIR,
    MASK_SUFFIX,
    MASKS_DIR,
    METADATA_CSV,
    README_TXT,
    TRUTH_CSV,
)
from skin_core.data.synthetic._layout import init_worker as _init_worker
from skin_core.data.synthetic._masks import lesion_mask_path, write_lesion_masks
from skin_core.data.synthetic._render import render_lesion
from skin_core.errors import ConfigError
from skin_core.io import atomic_write_csv, atomic_write_text

__all__ = [
    "BLUR_SIGMAS_256",
    "CONFUSABLE",
    "DemoSummary",
    "class_counts",
    "generate_demo_dataset",
    "lesion_mask_path",
    "render_lesion",
    "write_lesion_masks",
]

FIRST_ID = 9_000_000

#: Blur levels (Gaussian sigma in pixels for a 256 px image; scaled linearly with ``size``).
BLUR_SIGMAS_256: tuple[float, ...] = (8.0, 10.0, 12.0, 14.0)

#: For each class, the classes it is most often confused with in dermoscopy; ambiguous lesions
#: blend with one of them and flipped labels go to one of them.
CONFUSABLE: dict[str, tuple[str, ...]] = {
    "MEL": ("NV", "BKL", "BCC"),
    "NV": ("MEL", "BKL", "DF"),
    "BCC": ("SCC", "MEL", "AK"),
    "AK": ("SCC", "BKL", "BCC"),
    "BKL": ("MEL", "NV", "AK"),
    "DF": ("NV", "BKL", "MEL"),
    "VASC": ("MEL", "BCC", "NV"),
    "SCC": ("AK", "BCC", "BKL"),
}

TRUTH_COLUMNS: tuple[str, ...] = (
    "image_id", "true_label", "label", "lesion_id", "blur_sigma", "is_blurred", "is_ambiguous",
    "ambiguous_with", "is_mislabeled", "has_hair", "has_ruler", "latent_difficulty",
    # extras
    "mix_weight", "feature_strength", "has_vignette", "lesion_seed", "view_seed",
)

_HAIR_P = 0.1     # per lesion (hairy body sites stay hairy)
_RULER_P = 0.1    # per image
_VIGNETTE_P = 0.15 # per image


@dataclass(frozen=True)
class DemoSummary:
    """What :func:`generate_demo_dataset` wrote."""

    out_dir: str
    spec: str
    n_images: int
    n_lesions: int
    size: int
    seed: int
    class_counts: dict[str, int]
    true_class_counts: dict[str, int]
    n_blurred: int
    n_ambiguous: int
    n_mislabeled: int
    n_hair: int
    n_ruler: int
    workers: int
    seconds: float
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------------------------
def class_counts(n: int, *, class_floor: float = 0.04) -> dict[str, int]:
    """Images per class for ``n`` images: ISIC 2019 proportions with a floor.

    Classes whose ISIC 2019 share is below ``class_floor`` get ``ceil(class_floor * n)``
    images; the others share the rest in ISIC 2019 proportions (largest remainders).

    Parameters
    ----------
    n : int
        Number of images, at least 8 (one per class).
    class_floor : float, default 0.04
        Minimum share of each class, in [0, 0.125].

    Returns
    -------
    dict
        Class code -> count, in ISIC 2019 order; the counts sum to ``n``.

    Examples
    --------
    >>> class_counts(2000)["DF"], class_counts(2000)["NV"]
    (80, 927)
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < len(ISIC2019_CLASSES):
        raise ConfigError(
            f"The number of demo images must be an integer of at least "
            f"{len(ISIC2019_CLASSES)} (one per class); got {n!r} instead."
        )
    if not 0.0 <= class_floor <= 1.0 / len(ISIC2019_CLASSES):
        raise ConfigError(
            f"The class floor must be between 0 and {1 / len(ISIC2019_CLASSES)}; "
            f"got {class_floor!r} instead."
        )
    total = sum(_tables.COUNTS.values())
    share = {c: _tables.COUNTS[c] / total for c in ISIC2019_CLASSES}
    floor_n = max(1, math.ceil(class_floor * n))
    floored: set[str] = set()
    while True:
        free = [c for c in ISIC2019_CLASSES if c not in floored]
        rest = n - floor_n * len(floored)
        mass = sum(share[c] for c in free)
        low = {c for c in free if share[c] / mass * rest < floor_n}
        if not low:
            break
        floored |= low
    counts = {c: floor_n for c in floored}
    free = [c for c in ISIC2019_CLASSES if c not in floored]
    rest = n - floor_n * len(floored)
    mass = sum(share[c] for c in free)
    exact = {c: share[c] / mass * rest for c in free}
    base = {c: int(math.floor(v)) for c, v in exact.items()}
    left = rest - sum(base.values())
    for c in sorted(free, key=lambda c: (-(exact[c] - base[c]), ISIC2019_CLASSES.index(c)))[:left]:
        base[c] += 1
    counts.update(base)
    return {c: counts[c] for c in ISIC2019_CLASSES}


def _choice(rng: np.random.Generator, probs: Iterable[float]) -> int:
    p = np.asarray(list(probs), np.float64)
    return int(rng.choice(len(p), p=p / p.sum()))


def _pick_lesions(rng: np.random.Generator, sizes: list[int], eligible: list[int],
                  target: int) -> set[int]:
    """Whole lesions (indices) whose image counts add up to ``target`` (or as close as fits)."""
    chosen: set[int] = set()
    remaining = target
    for i in rng.permutation(eligible):
        if remaining <= 0:
            break
        if sizes[i] <= remaining:
            chosen.add(int(i))
            remaining -= sizes[i]
    return chosen


def _plan(n: int, seed: int, *, class_floor: float, blur_fraction: float,
          ambiguous_fraction: float, mislabel_fraction: float) -> tuple[pd.DataFrame, int]:
    """Every random decision except pixels: one row per image (before ids are shuffled)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2019]))
    counts = class_counts(n, class_floor=class_floor)
    floor_n = max(1, math.ceil(class_floor * n))

    # lesions: (class, size, has_id)
    les_class: list[str] = []
    les_size: list[int] = []
    les_has_id: list[bool] = []
    for c in ISIC2019_CLASSES:
        n_c = counts[c]
        n_noid = int(round(_tables.LESION_MISSING[c] * n_c))
        for _ in range(n_noid):
            les_class.append(c)
            les_size.append(1)
            les_has_id.append(False)
        left = n_c - n_noid
        img_p = np.asarray(_tables.GROUP_SIZE[c], np.float64)
        les_p = img_p / np.arange(1, len(img_p) + 1)  # image-weighted -> lesion-weighted
        while left > 0:
            s = _choice(rng, les_p) + 1
            if s == _tables.MAX_GROUP:  # the pooled ">= 8" bucket
                s = int(rng.integers(_tables.MAX_GROUP, 2 * _tables.MAX_GROUP))
            s = min(s, left)
            les_class.append(c)
            les_size.append(s)
            les_has_id.append(True)
            left -= s
    n_les = len(les_class)

    # per-lesion truth: ambiguity and flipped labels (disjoint sets of whole lesions)
    amb = _pick_lesions(rng, les_size, list(range(n_les)), int(round(ambiguous_fraction * n)))
    given_counts = dict(counts)
    flip_ok = [i for i in range(n_les) if i not in amb and counts[les_class[i]] > floor_n]
    flipped: dict[int, str] = {}
    remaining = int(round(mislabel_fraction * n))
    for i in rng.permutation(flip_ok):
        i = int(i)
        c = les_class[i]
        if remaining <= 0:
            break
        if les_size[i] > remaining or given_counts[c] - les_size[i] < floor_n:
            continue
        flipped[i] = str(rng.choice(CONFUSABLE[c]))
        given_counts[c] -= les_size[i]
        given_counts[flipped[i]] += les_size[i]
        remaining -= les_size[i]

    rows: list[dict[str, Any]] = []
    lesion_counter = 0
    for i in range(n_les):
        c = les_class[i]
        age_i = _choice(rng, _tables.AGE[c])
        age = _tables.AGE_VALUES[age_i] if age_i < len(_tables.AGE_VALUES) else None
        sex = (("male", "female", None))[_choice(rng, _tables.SEX[c])]
        site_i = _choice(rng, _tables.SITE[c])
        site = (ISIC2019_SITE_VALUES[site_i] if site_i < len(ISIC2019_SITE_VALUES)
                else None)
        lesion_id = None
        if les_has_id[i]:
            lesion_counter += 1
            lesion_id = f"SYN_{lesion_counter:07d}"
        mix_with = str(rng.choice(CONFUSABLE[c])) if i in amb else None
        mix_weight = float(rng.uniform(0.3, 0.5)) if i in amb else 0.0
        hair = bool(rng.random() < _HAIR_P)
        lesion_seed = int(rng.integers(0, 2**31 - 1))
        for _ in range(les_size[i]):
            rows.append({
                "true_label": c, "label": flipped.get(i, c), "lesion_id": lesion_id,
                "age_approx": age, "sex": sex, "anatom_site_general": site,
                "is_ambiguous": i in amb, "ambiguous_with": mix_with, "mix_weight": mix_weight,
                "is_mislabeled": i in flipped, "has_hair": hair,
                "has_ruler": bool(rng.random() < _RULER_P),
                "has_vignette": bool(rng.random() < _VIGNETTE_P),
                "lesion_seed": lesion_seed, "view_seed": int(rng.integers(0, 2**31 - 1)),
                "_lesion": i,
            })
    plan = pd.DataFrame(rows)
    blurred = rng.choice(n, size=int(round(blur_fraction * n)), replace=False)
    sigma = np.zeros(n)
    sigma[blurred] = rng.choice(BLUR_SIGMAS_256, size=len(blurred))
    plan["blur_sigma_256"] = sigma
    plan["is_blurred"] = sigma > 0
    # shuffle so images of a lesion are not neighbours, then number them
    plan = plan.iloc[rng.permutation(n)].reset_index(drop=True)
    plan.insert(0, "image_id", [f"ISIC_{FIRST_ID + k:07d}" for k in range(n)])
    return plan, n_les


# ---------------------------------------------------------------------------------------------
# Rendering (worker side)
# ---------------------------------------------------------------------------------------------
def _render_job(job: tuple[str, str, str | None, float, int, int, int, float, bool, bool, bool,
                           str]) -> float:
    """Render one image and its lesion mask into the staging folder (JPEG into its
    ``IMAGES_DIR``, PNG into its ``MASKS_DIR``); return the feature strength."""
    import cv2
    from PIL import Image

    from skin_core.data.synthetic._render import _render_lesion_frame, _render_view

    (image_id, label, mix_with, mix_weight, lesion_seed, view_seed, size, blur_sigma, hair,
     ruler, vignette, folder) = job
    frame, strength, lesion = _render_lesion_frame(size, label, mix_with, mix_weight,
                                                   lesion_seed)
    pixels, mask = _render_view(frame, lesion, view_seed=view_seed, hair=hair, ruler=ruler,
                                vignette=vignette, blur_sigma=blur_sigma)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    with open(os.path.join(folder, IMAGES_DIR, f"{image_id}.jpg"), "wb") as fh:
        fh.write(buf.getvalue())
    ok, png = cv2.imencode(".png", mask)  # 8-bit greyscale, 0 / 255
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 array
        raise RuntimeError(f"OpenCV could not encode the lesion mask of {image_id}.")
    with open(os.path.join(folder, MASKS_DIR, f"{image_id}{MASK_SUFFIX}"), "wb") as fh:
        fh.write(png.tobytes())
    return strength


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------
def _check_fraction(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"The '{name}' option of generate_demo_dataset must be a fraction in "
                          f"[0, 1); got {value!r} instead.")
    return float(value)


def generate_demo_dataset(
    out_dir: str | os.PathLike[str],
    *,
    n: int = 2000,
    seed: int = 0,
    size: int = 256,
    workers: int | None = None,
    progress: bool = False,
    blur_fraction: float = 0.15,
    ambiguous_fraction: float = 0.10,
    mislabel_fraction: float = 0.03,
    class_floor: float = 0.04,
    overwrite: bool = False,
) -> DemoSummary:
    """Write a synthetic dermoscopy dataset in the ISIC 2019 layout (see the module docstring).

    Parameters
    ----------
    out_dir : path
        Folder to write into (created if needed). It must not already hold a dataset
        unless ``overwrite`` is true.
    n : int, default 2000
        Number of images (at least 8).
    seed : int, default 0
        Master seed; the same ``seed`` and ``n`` give identical CSVs and image bytes (for a
        given ``size``), whatever ``workers`` is.
    size : int, default 256
        Side of the square images in pixels, 32 to 1024.
    workers : int or None
        Rendering processes; ``None`` uses every CPU (``os.cpu_count()``), 1 renders inline.
    progress : bool, default False
        Show a tqdm progress bar on stderr.
    blur_fraction, ambiguous_fraction, mislabel_fraction : float
        Fractions of the images that are blurred (per image), intrinsically ambiguous (whole
        lesions) and given a wrong label (whole lesions, disjoint from the ambiguous ones).
    class_floor : float, default 0.04
        Minimum share of every class.
    overwrite : bool, default False
        Replace an existing demo dataset in ``out_dir`` (its images folder and CSVs).

    Returns
    -------
    DemoSummary

    Raises
    ------
    ConfigError
        An option is out of range, or ``out_dir`` already holds a dataset and ``overwrite``
        is false.

    Notes
    -----
    Images and masks go to a hidden staging folder, renamed into place when all are written;
    the ground-truth CSV is written last (atomically), so an interrupted run never leaves a
    dataset that looks complete.

    Examples
    --------
    >>> s = generate_demo_dataset("/tmp/demo", n=64, size=96, workers=1)  # doctest: +SKIP
    >>> s.spec  # doctest: +SKIP
    'isic2019:/tmp/demo'
    """
    t0 = time.perf_counter()
    blur_fraction = _check_fraction("blur_fraction", blur_fraction)
    ambiguous_fraction = _check_fraction("ambiguous_fraction", ambiguous_fraction)
    mislabel_fraction = _check_fraction("mislabel_fraction", mislabel_fraction)
    if ambiguous_fraction + mislabel_fraction >= 1.0:
        raise ConfigError("The ambiguous and mislabel fractions of generate_demo_dataset must "
                          "add up to less than 1; lower one of them.")
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not 32 <= size <= 1024:
        raise ConfigError(f"The demo image size must be an integer from 32 to 1024 pixels; "
                          f"got {size!r} instead.")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"The demo seed must be a non-negative integer; got {seed!r} instead.")
    if workers is None:
        workers = os.cpu_count() or 1
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ConfigError(f"The number of workers must be a positive integer; got {workers!r} "
                          f"instead.")
    plan, n_lesions = _plan(n, seed, class_floor=class_floor, blur_fraction=blur_fraction,
                            ambiguous_fraction=ambiguous_fraction,
                            mislabel_fraction=mislabel_fraction)

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"The demo-data output '{out}' is a file, not a folder; choose a "
                          f"folder path.")
    ours = [out / IMAGES_DIR, out / MASKS_DIR, out / GROUND_TRUTH_CSV, out / METADATA_CSV,
            out / TRUTH_CSV]
    present = [p.name for p in ours if p.exists()]
    if present and not overwrite:
        raise ConfigError(f"The folder '{out}' already holds a dataset ({', '.join(present)}); "
                          f"choose an empty folder or pass --overwrite to replace it.")
    out.mkdir(parents=True, exist_ok=True)
    # A dataset being replaced must stop looking complete before anything else changes.
    (out / GROUND_TRUTH_CSV).unlink(missing_ok=True)

    scale = size / 256.0
    plan["blur_sigma"] = (plan["blur_sigma_256"] * scale).round(4)
    staging = Path(tempfile.mkdtemp(prefix=f".{IMAGES_DIR}.", suffix=".partial", dir=out))
    try:
        (staging / IMAGES_DIR).mkdir()
        (staging / MASKS_DIR).mkdir()
        jobs = [
            (r.image_id, r.true_label,
             r.ambiguous_with if isinstance(r.ambiguous_with, str) else None, float(r.mix_weight),
             int(r.lesion_seed), int(r.view_seed), int(size), float(r.blur_sigma),
             bool(r.has_hair), bool(r.has_ruler), bool(r.has_vignette), str(staging))
            for r in plan.itertuples(index=False)
        ]
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(jobs), desc="demo images", unit="img", leave=False)
        strengths: list[float] = []
        if workers == 1 or len(jobs) < 32:
            _init_worker()
            for job in jobs:
                strengths.append(_render_job(job))
                if bar is not None:
                    bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=int(workers), initializer=_init_worker) as ex:
                chunk = max(1, min(32, len(jobs) // (4 * int(workers))))
                for value in ex.map(_render_job, jobs, chunksize=chunk):
                    strengths.append(value)
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        for name in (IMAGES_DIR, MASKS_DIR):
            if (out / name).exists():
                shutil.rmtree(out / name)
            os.replace(staging / name, out / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.rmdir()

    plan["feature_strength"] = np.round(strengths, 4)
    amb = 2.0 * plan["mix_weight"].to_numpy()
    blur = np.clip(plan["blur_sigma_256"].to_numpy() / max(BLUR_SIGMAS_256), 0.0, 1.0)
    faint = 1.0 - plan["feature_strength"].to_numpy()
    plan["latent_difficulty"] = np.round(1.0 - (1 - amb) * (1 - blur) * (1 - 0.5 * faint), 4)

    order = plan.sort_values("image_id").reset_index(drop=True)
    truth = order[list(TRUTH_COLUMNS)]
    atomic_write_csv(out / TRUTH_CSV, truth)
    meta = pd.DataFrame({
        "image": order["image_id"],
        "age_approx": [None if a is None or pd.isna(a) else str(int(a))
                       for a in order["age_approx"]],
        "anatom_site_general": order["anatom_site_general"],
        "lesion_id": order["lesion_id"],
        "sex": order["sex"],
    })
    atomic_write_csv(out / METADATA_CSV, meta)
    atomic_write_text(out / README_TXT, _readme(n=n, seed=seed, size=size,
                                                blur_fraction=blur_fraction,
                                                ambiguous_fraction=ambiguous_fraction,
                                                mislabel_fraction=mislabel_fraction,
                                                class_floor=class_floor))
    gt = pd.DataFrame(0.0, index=range(n), columns=[*ISIC2019_CLASSES, ISIC2019_UNKNOWN])
    for c in ISIC2019_CLASSES:
        gt.loc[(order["label"] == c).to_numpy(), c] = 1.0
    gt.insert(0, "image", order["image_id"])
    atomic_write_csv(out / GROUND_TRUTH_CSV, gt)  # last: the dataset now looks complete

    given = order["label"].value_counts()
    true = order["true_label"].value_counts()
    return DemoSummary(
        out_dir=str(out.resolve()),
        spec=f"isic2019:{out.resolve()}",
        n_images=n,
        n_lesions=n_lesions,
        size=int(size),
        seed=int(seed),
        class_counts={c: int(given.get(c, 0)) for c in ISIC2019_CLASSES},
        true_class_counts={c: int(true.get(c, 0)) for c in ISIC2019_CLASSES},
        n_blurred=int(order["is_blurred"].sum()),
        n_ambiguous=int(order["is_ambiguous"].sum()),
        n_mislabeled=int(order["is_mislabeled"].sum()),
        n_hair=int(order["has_hair"].sum()),
        n_ruler=int(order["has_ruler"].sum()),
        workers=int(workers),
        seconds=round(time.perf_counter() - t0, 3),
        files={"images": str(out / IMAGES_DIR), "masks": str(out / MASKS_DIR),
               "ground_truth": str(out / GROUND_TRUTH_CSV),
               "metadata": str(out / METADATA_CSV), "generation_truth": str(out / TRUTH_CSV),
               "readme": str(out / README_TXT)},
    )


def _readme(**params: Any) -> str:
    lines = [
        "SYNTHETIC DEMO DATA - NOT REAL PATIENTS, NOT FOR CLINICAL OR RESEARCH CONCLUSIONS",
        "",
        "Written by `skin-core demo-data` (skin_core.data.synthetic.generate_demo_dataset).",
        "Layout: ISIC 2019 training set (ISIC_2019_Training_Input/, "
        "ISIC_2019_Training_GroundTruth.csv, ISIC_2019_Training_Metadata.csv);",
        "load it with the dataset spec isic2019:<this folder>.",
        f"{MASKS_DIR}/<image>{MASK_SUFFIX}: lesion masks (ISIC 2018 Task 1 layout,",
        "8-bit PNG, 255 = lesion), the lesion outline as drawn, before hairs and blur.",
        "",
        "The images are drawn programmatically (skin, lesion, dermoscopic structures, hairs,",
        "rulers, field of view, blur). generation_truth.csv says, per image, the true class,",
        "the label written in the ground-truth CSV (flipped when is_mislabeled), the blur",
        "sigma, whether the lesion blends two classes (is_ambiguous, ambiguous_with), the",
        "artefacts and a latent difficulty in [0, 1].",
        "Age, sex, site and lesion grouping are sampled from the class-conditional",
        "distributions of the real ISIC 2019 training metadata.",
        "",
        "Parameters:",
    ]
    lines += [f"  {k} = {v}" for k, v in params.items()]
    return "\n".join(lines) + "\n"
