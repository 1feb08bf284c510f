"""Lesion clusters: images of one lesion are not independent.

Two thirds of ISIC 2019 images share their lesion with other images (HAM10000: 4,501 of
10,015), and a model that misreads a lesion tends to misread all its images. Every test that
counts images must therefore treat the **lesion** as its unit. This module turns ``lesion_id``
values into cluster codes and the lesions into the strata the lesion-level tests permute
within.

* :func:`cluster_codes`: ``(N,)`` integer cluster of each image; an image without a lesion id
  (``None``, NaN or an empty string) is a cluster of its own.
* :func:`lesion_strata`: single-image clusters, and the multi-image lesions grouped by their
  **stratum**, the sequence of class labels of their images (for a lesion of one class and
  ``k`` images: that class, ``k`` times). Within a lesion, images are put in a canonical
  order (by label, then by position in the input), so that lesions of one stratum line up
  image by image: a permutation that moves lesion ``a``'s errors onto lesion ``b`` moves the
  error of ``a``'s ``j``-th image onto ``b``'s ``j``-th image, which has the same label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from skin_core.errors import DataError

__all__ = ["LesionStrata", "cluster_codes", "lesion_strata", "missing_lesion_ids"]


def missing_lesion_ids(lesion_ids: Any) -> np.ndarray:
    """``(N,)`` mask of images without a lesion id (``None``, NaN, ``""`` or blanks)."""
    import pandas as pd

    s = pd.Series(np.asarray(lesion_ids, dtype=object).ravel(), dtype=object)
    return (s.isna() | (s.astype(str).str.strip() == "")).to_numpy()


def cluster_codes(lesion_ids: Any, n: int | None = None) -> np.ndarray:
    """Integer cluster code of each image: one code per lesion id, a new one per missing id.

    Parameters
    ----------
    lesion_ids:
        ``(N,)`` lesion ids (any hashable values; compared as strings after stripping blanks).
    n:
        Expected ``N`` (checked when given).

    Returns
    -------
    numpy.ndarray
        ``(N,)`` int64 codes ``0 .. G-1`` (``G`` clusters); the ``G - n_missing`` lesions come
        first, in order of first appearance.

    Raises
    ------
    DataError
        ``lesion_ids`` is not 1-D, or its length differs from ``n``.

    Examples
    --------
    >>> cluster_codes(["a", "b", None, "a", ""]).tolist()
    [0, 1, 2, 0, 3]
    """
    import pandas as pd

    ids = np.asarray(lesion_ids, dtype=object)
    if ids.ndim != 1 or (n is not None and ids.size != n):
        want = f"{n} (one per image)" if n is not None else "1-D"
        raise DataError(f"The 'lesions' must be a 1-D array of lesion ids of length {want}; "
                        f"got shape {ids.shape}.")
    missing = missing_lesion_ids(ids)
    codes = np.empty(ids.size, dtype=np.int64)
    known = pd.Series(ids[~missing]).astype(str).str.strip()
    c, uniques = pd.factorize(known)
    codes[~missing] = c
    codes[missing] = len(uniques) + np.arange(int(missing.sum()))
    return codes


@dataclass(frozen=True, eq=False)
class LesionStrata:
    """Images grouped into lesions and lesions into strata (see the module docstring).

    Attributes
    ----------
    n_images:
        ``N``.
    codes:
        ``(N,)`` cluster code of each image (:func:`cluster_codes`).
    single:
        Indices of the images that are a cluster on their own (lesions with one image and
        images without a lesion id), in input order. Their stratum is their class.
    blocks:
        One ``(n_s, k)`` array of image indices per stratum of multi-image lesions: row = one
        lesion, column = position in the canonical order; all rows of a block have the same
        label sequence ``keys[s]``.
    keys:
        The label sequence of each block.
    """

    n_images: int
    codes: np.ndarray
    single: np.ndarray
    blocks: tuple[np.ndarray, ...]
    keys: tuple[tuple[int, ...], ...]

    @property
    def n_clusters(self) -> int:
        """Clusters (lesions, with every image without a lesion id counted as one)."""
        return int(self.single.size + sum(b.shape[0] for b in self.blocks))

    @property
    def n_multi_image_lesions(self) -> int:
        """Lesions with two or more images."""
        return int(sum(b.shape[0] for b in self.blocks))

    @property
    def n_images_in_multi_image_lesions(self) -> int:
        """Images that share their lesion with at least one other image."""
        return int(sum(b.size for b in self.blocks))

    def summary(self) -> dict[str, Any]:
        """Counts for result files (``significance.json``'s ``clustering``)."""
        sizes = [b.shape[1] for b in self.blocks]
        return {
            "n_clusters": self.n_clusters,
            "n_single_image_clusters": int(self.single.size),
            "n_multi_image_lesions": self.n_multi_image_lesions,
            "n_images_in_multi_image_lesions": self.n_images_in_multi_image_lesions,
            "n_strata_multi_image": len(self.blocks),
            "max_lesion_size": int(max(sizes)) if sizes else 1,
        }


def lesion_strata(labels: np.ndarray, lesion_ids: Any) -> LesionStrata:
    """Group images into lesions and multi-image lesions into strata of equal label sequence.

    Parameters
    ----------
    labels:
        ``(N,)`` integer class indices.
    lesion_ids:
        ``(N,)`` lesion ids; missing values make single-image clusters. ``None`` (the whole
        argument): every image is its own cluster.

    Returns
    -------
    LesionStrata

    Examples
    --------
    >>> s = lesion_strata(np.array([0, 0, 1, 0, 0]), ["a", "a", "b", "c", "c"])
    >>> s.single.tolist(), [b.tolist() for b in s.blocks], s.keys
    ([2], [[[0, 1], [3, 4]]], ((0, 0),))
    """
    lab = np.asarray(labels, dtype=np.int64)
    n = lab.size
    if lesion_ids is None:
        codes = np.arange(n, dtype=np.int64)
    else:
        codes = cluster_codes(lesion_ids, n)
    sizes = np.bincount(codes, minlength=int(codes.max()) + 1 if n else 0)
    multi = sizes[codes] > 1
    single = np.flatnonzero(~multi)
    idx = np.flatnonzero(multi)
    idx = idx[np.lexsort((idx, lab[idx], codes[idx]))]  # by lesion, then label, then input
    blocks: list[np.ndarray] = []
    keys: list[tuple[int, ...]] = []
    if idx.size:
        cl = codes[idx]
        starts = np.flatnonzero(np.r_[True, cl[1:] != cl[:-1]])
        k_of = sizes[cl[starts]]
        for k in np.unique(k_of):
            rows = idx[starts[k_of == k][:, None] + np.arange(k)]  # (n_k, k) image indices
            uniq, inv = np.unique(lab[rows], axis=0, return_inverse=True)
            inv = inv.ravel()
            for u in range(uniq.shape[0]):
                blocks.append(rows[inv == u])
                keys.append(tuple(int(v) for v in uniq[u]))
    return LesionStrata(n_images=n, codes=codes, single=single, blocks=tuple(blocks),
                        keys=tuple(keys))
