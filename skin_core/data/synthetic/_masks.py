"""Lesion masks of the demo dataset (ISIC 2018 Task 1 layout).

``DIR/ISIC_2019_Training_GroundTruth_Masks/<image_id>_segmentation.png``: an 8-bit greyscale PNG
of the image's size, 255 inside the lesion and 0 outside, written by
:func:`~skin_core.data.synthetic.generate_demo_dataset` beside the images (see the package
docstring for what the mask covers). :func:`write_lesion_masks` draws them for a demo dataset
written before masks existed.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from skin_core.data.synthetic._layout import (
    IMAGES_DIR,
    MASK_SUFFIX,
    MASKS_DIR,
    TRUTH_CSV,
    init_worker,
)
from skin_core.errors import ConfigError
from skin_core.io import atomic_write_bytes


def _mask_job(job: tuple[str, str, str | None, float, int, int, int, str]) -> None:
    """Render one lesion mask (no image) from its generation-truth row."""
    import cv2

    from skin_core.data.synthetic._render import _render_lesion_frame, _render_view

    image_id, label, mix_with, mix_weight, lesion_seed, view_seed, size, target = job
    frame, _, lesion = _render_lesion_frame(size, label, mix_with, mix_weight, lesion_seed)
    _, mask = _render_view(frame, lesion, view_seed=view_seed, hair=False, ruler=False,
                           vignette=False, blur_sigma=0.0)
    ok, png = cv2.imencode(".png", mask)
    if not ok:  # pragma: no cover
        raise RuntimeError(f"OpenCV could not encode the lesion mask of {image_id}.")
    atomic_write_bytes(target, png.tobytes())


def write_lesion_masks(root: str | os.PathLike[str], *, workers: int = 1,
                       overwrite: bool = False) -> int:
    """Write the lesion masks of a demo dataset that has none (made before masks existed).

    The masks are drawn again from ``generation_truth.csv`` (class, blend, lesion and view
    seeds), so they are the ones :func:`generate_demo_dataset` writes today for the same
    rows. Existing masks are kept unless ``overwrite``.

    Returns
    -------
    int
        How many masks were written.

    Raises
    ------
    ConfigError
        ``root`` holds no demo dataset (no ``generation_truth.csv`` or images folder).
    """
    from PIL import Image

    root = Path(root)
    truth_csv, images = root / TRUTH_CSV, root / IMAGES_DIR
    if not truth_csv.is_file() or not images.is_dir():
        raise ConfigError(f"'{root}' holds no demo dataset ({TRUTH_CSV} and {IMAGES_DIR}/ "
                          f"missing); generate one with `skin-core demo-data --out {root}`.")
    truth = pd.read_csv(truth_csv, dtype={"image_id": str})
    (root / MASKS_DIR).mkdir(exist_ok=True)
    jobs = []
    for r in truth.itertuples(index=False):
        target = lesion_mask_path(root, r.image_id)
        if target.exists() and not overwrite:
            continue
        with Image.open(images / f"{r.image_id}.jpg") as im:
            size = int(im.size[0])
        jobs.append((r.image_id, r.true_label,
                     r.ambiguous_with if isinstance(r.ambiguous_with, str) else None,
                     float(r.mix_weight), int(r.lesion_seed), int(r.view_seed), size,
                     str(target)))
    if workers <= 1 or len(jobs) < 32:
        init_worker()
        for job in jobs:
            _mask_job(job)
    else:
        with ProcessPoolExecutor(max_workers=int(workers), initializer=init_worker) as ex:
            list(ex.map(_mask_job, jobs, chunksize=16))
    return len(jobs)


def lesion_mask_path(root: str | os.PathLike[str], image_id: str) -> Path:
    """Where :func:`generate_demo_dataset` wrote the lesion mask of ``image_id`` under ``root``.

    ``root/ISIC_2019_Training_GroundTruth_Masks/<image_id>_segmentation.png`` (ISIC 2018 Task 1
    file names): an 8-bit greyscale PNG of the image's size, 255 inside the lesion, 0 outside.
    """
    return Path(root) / MASKS_DIR / f"{image_id}{MASK_SUFFIX}"
