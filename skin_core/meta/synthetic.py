"""Synthetic OOF tables with known structure, for tests, benchmarks and demos of the meta step.

:func:`make_synthetic_oof` draws lesions with patient metadata that shifts the class prior
(age, anatomical site, sex: as in dermatology, e.g. AK/BCC/SCC on the head of older patients),
then CNN-like probabilities that see the image (the label through noise) but not the metadata,
with a shared per-image noise term so some images are misclassified by every model. A
meta-classifier that uses the metadata therefore has something real to add over the mean of
the CNNs. Folds are grouped by lesion and stratified by label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.special import softmax

from skin_core.constants import (
    AGE,
    FOLD,
    IMAGE_ID,
    ISIC2019_CLASSES,
    ISIC2019_SITE_VALUES,
    LABEL,
    LESION_ID,
    SEX,
    SITE,
    prob_columns,
)

DEFAULT_ARCHS: tuple[str, ...] = (
    "resnet50", "efficientnet_b0", "densenet121", "inception_v3", "vgg16",
)
_PRIOR = {"MEL": 0.18, "NV": 0.5, "BCC": 0.13, "AK": 0.035, "BKL": 0.1, "DF": 0.01,
          "VASC": 0.01, "SCC": 0.025}
_AGE = {"MEL": 0.4, "NV": -0.9, "BCC": 0.9, "AK": 1.1, "BKL": 0.7, "DF": 0.0, "VASC": 0.0,
        "SCC": 1.0}
_SITE = {
    "head/neck": {"AK": 1.6, "BCC": 1.1, "SCC": 0.9, "NV": -0.6},
    "lower extremity": {"DF": 1.6, "MEL": 0.3},
    "posterior torso": {"NV": 0.5, "MEL": 0.5, "BKL": 0.3},
    "anterior torso": {"NV": 0.5, "BKL": 0.3},
    "oral/genital": {"VASC": 1.2},
    "palms/soles": {"NV": 0.4, "MEL": 0.6},
}


def make_synthetic_oof(
    n_images: int = 2000,
    *,
    classes: Sequence[str] = ISIC2019_CLASSES,
    archs: Sequence[str] = DEFAULT_ARCHS,
    n_folds: int = 5,
    seed: int = 0,
    missing_rate: float = 0.05,
    metadata_strength: float = 1.0,
    cnn_strength: float = 2.5,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A long OOF table and its metadata table.

    Parameters
    ----------
    n_images:
        Number of images (lesions have 1 to about 4 images).
    classes:
        Class codes; ISIC 2019 names get realistic priors and metadata effects, others a
        uniform prior and random effects.
    archs:
        Model ids (one row per image per model).
    n_folds:
        Lesion-grouped, label-stratified folds.
    seed:
        Everything is a function of the seed.
    missing_rate:
        Share of missing age, sex and site values (each independently).
    metadata_strength:
        Scale of the metadata effects on the class prior (0: metadata carries no signal).
    cnn_strength:
        Scale of the label signal in the CNN logits.

    Returns
    -------
    (oof, metadata)
        ``oof``: ``image_id, model, arch, fold, label, prob_<C>...``; ``metadata``:
        ``image_id, label, lesion_id, age_approx, sex, anatom_site_general``.
    """
    rng = np.random.default_rng(seed)
    classes = tuple(classes)
    k = len(classes)
    # Lesions and their images.
    sizes = []
    while sum(sizes) < n_images:
        sizes.append(int(1 + min(rng.poisson(0.5), 3)))
    sizes[-1] -= sum(sizes) - n_images
    sizes = [s for s in sizes if s > 0]
    n_les = len(sizes)
    age = np.clip(np.round(rng.normal(52, 17, n_les) / 5) * 5, 5, 85)
    sex = rng.choice(["male", "female"], n_les)
    site = rng.choice(list(ISIC2019_SITE_VALUES), n_les,
                      p=[0.2, 0.15, 0.05, 0.2, 0.02, 0.03, 0.2, 0.15])
    prior = np.array([_PRIOR.get(c, 1.0 / k) for c in classes])
    logits = np.tile(np.log(prior / prior.sum()), (n_les, 1))
    rand_age = rng.normal(0, 0.7, k)
    age_coef = np.array([_AGE.get(c, rand_age[i]) for i, c in enumerate(classes)])
    logits += metadata_strength * np.outer((age - 50) / 15, age_coef)
    for s, effects in _SITE.items():
        for c, e in effects.items():
            if c in classes:
                logits[site == s, classes.index(c)] += metadata_strength * e
    if "MEL" in classes:
        logits[sex == "male", classes.index("MEL")] += metadata_strength * 0.3
    les_label = np.array([rng.choice(k, p=p) for p in softmax(logits, axis=1)])
    # Lesion-grouped, label-stratified folds.
    les_fold = np.empty(n_les, dtype=int)
    for c in range(k):
        idx = rng.permutation(np.flatnonzero(les_label == c))
        les_fold[idx] = (np.arange(len(idx)) + rng.integers(n_folds)) % n_folds
    lesion_of = np.repeat(np.arange(n_les), sizes)
    n = len(lesion_of)
    label = les_label[lesion_of]
    ids = [f"SYN_{i:07d}" for i in range(n)]
    # Metadata table (missing values independent per column).
    meta = pd.DataFrame({
        IMAGE_ID: ids,
        LABEL: [classes[j] for j in label],
        LESION_ID: [f"SYNL_{j:07d}" for j in lesion_of],
        AGE: age[lesion_of].astype(float),
        SEX: sex[lesion_of].astype(object),
        SITE: site[lesion_of].astype(object),
    })
    for col in (AGE, SEX, SITE):
        meta.loc[rng.random(n) < missing_rate, col] = np.nan
    # CNN probabilities: label signal, shared image noise (consistent errors), model noise.
    difficulty = rng.beta(1.2, 5.0, n)
    shared = rng.normal(0, 1.0, (n, k)) * (0.6 + 2.0 * difficulty)[:, None]
    onehot = np.eye(k)[label]
    rows = []
    for j, arch in enumerate(archs):
        skill = cnn_strength * (0.85 + 0.06 * j)
        z = skill * (1 - difficulty)[:, None] * onehot + shared + rng.normal(0, 0.8, (n, k))
        p = softmax(z, axis=1)
        df = pd.DataFrame(p, columns=prob_columns(classes))
        df.insert(0, IMAGE_ID, ids)
        df.insert(1, "model", arch)
        df.insert(2, "arch", arch)
        df.insert(3, FOLD, les_fold[lesion_of])
        df.insert(4, LABEL, [classes[c] for c in label])
        rows.append(df)
    return pd.concat(rows, ignore_index=True), meta
