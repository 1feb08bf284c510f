"""Similar cases and out-of-distribution scores in the members' own feature space.

Tschandl et al. (Br J Dermatol 2019) showed that the diagnoses of the most similar training
images, found with the network's own features, match softmax accuracy and, unlike a
probability, can be checked by a clinician. A bundle therefore keeps a **retrieval index**:

* the **embedding** of an image: every member's pre-logits features (timm
  ``forward_head(..., pre_logits=True)``), each L2-normalised, concatenated, centred and
  projected on the first :data:`EMBED_DIM` principal components of the training images, then
  L2-normalised (so a dot product is a cosine similarity); stored as ``float16``;
* per training image its ``image_id``, ``label`` and ``lesion_id``.

:meth:`RetrievalIndex.search` returns the ``k`` most similar training images, one per lesion
(the most similar image of each), and :meth:`RetrievalIndex.ood_score` how unlike the
training images an image is: one minus the mean cosine similarity of its :data:`K_OOD`
nearest training images. The threshold is set on the calibration split so that 95 % of
in-distribution images pass (:mod:`skin_core.served`); above it the served result says first
that the image does not look like the dermoscopic images the model was trained on.

On disk (inside the bundle, hash-verified like every bundle file)::

    retrieval/index.safetensors   embeddings (N, D) float16, pca_mean (F,), pca_components (F, D)
    retrieval/items.csv           image_id, label, lesion_id (row i = embedding i)
    retrieval/index.json          format, dims, members, thresholds, out-of-fold kNN figures

No pickle: tensors through safetensors, the table as CSV, the rest as JSON.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skin_core.errors import DataError

INDEX_FORMAT = "skin-core-retrieval/1"
RETRIEVAL_DIR = "retrieval"
TENSORS = "index.safetensors"
ITEMS = "items.csv"
INFO = "index.json"

#: Dimensions kept by the projection (fewer when there are fewer training images/features).
EMBED_DIM = 64
#: Neighbours averaged by the out-of-distribution score.
K_OOD = 10
#: Share of in-distribution (calibration split) images that pass the OOD check (both
#: detectors together; each gets half the rest: :data:`DETECTOR_PASS`).
OOD_PASS = 0.95
DETECTOR_PASS = 1.0 - (1.0 - OOD_PASS) / 2

#: Image statistics of the second out-of-distribution detector (Mahalanobis distance to the
#: training images'): sharpness and texture from the quality measures, colour from the
#: network's input crop. A uniform colour, noise, a checkerboard or text on white is far from
#: every dermoscopic image here even when a small CNN's features are not.
STAT_NAMES: tuple[str, ...] = (
    "log_laplacian_var", "log_wavelet_ratio", "fft_hf_ratio", "brightness", "contrast",
    "entropy", "vignette", "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b",
    "saturation", "white_frac", "dark_frac",
)
#: Neighbours whose votes make the kNN diagnosis (Tschandl et al. used 16).
K_VOTE = 16
#: Candidates considered before keeping one image per lesion.
_CANDIDATES = 512


def image_statistics(quality: dict[str, float], crop: np.ndarray) -> np.ndarray:
    """:data:`STAT_NAMES` of one image from its quality measures and ``(S, S, 3)`` uint8 crop."""
    rgb = np.asarray(crop, dtype=np.float32) / 255.0
    flat = rgb.reshape(-1, 3)
    mx, mn = flat.max(axis=1), flat.min(axis=1)
    sat = np.where(mx > 1e-6, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    grey = flat.mean(axis=1)

    def q(name: str) -> float:
        v = quality.get(name)
        return float(v) if v is not None and np.isfinite(v) else 0.0

    return np.array([
        np.log(max(q("laplacian_var"), 0.0) + 1e-3), np.log(max(q("wavelet_ratio"), 1e-6)),
        q("fft_hf_ratio"), q("brightness"), q("contrast"), q("entropy"), q("vignette"),
        *flat.mean(axis=0), *flat.std(axis=0), float(sat.mean()),
        float((grey > 0.94).mean()), float((grey < 0.06).mean()),
    ], dtype=np.float64)


def fit_statistics(stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and Ledoit-Wolf shrunk precision matrix of training image statistics."""
    from sklearn.covariance import LedoitWolf

    x = np.asarray(stats, dtype=np.float64)
    lw = LedoitWolf().fit(x)
    return lw.location_.astype(np.float64), lw.precision_.astype(np.float64)


def mahalanobis(stats: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """``(B,)`` Mahalanobis distances of image statistics to the training images'."""
    d = np.asarray(stats, dtype=np.float64) - mean
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, precision, d), 0.0))


def combine_features(features: Sequence[np.ndarray]) -> np.ndarray:
    """``(N, F)`` concatenation of every member's ``(N, F_m)`` pre-logits features, each
    L2-normalised and scaled by ``1/sqrt(M)`` (so the concatenation has unit norm)."""
    if not features:
        raise DataError("No member features to embed; the bundle has no members.")
    scale = 1.0 / np.sqrt(len(features))
    parts = []
    for f in features:
        f = np.asarray(f, dtype=np.float32)
        norm = np.linalg.norm(f, axis=1, keepdims=True)
        parts.append(f / np.maximum(norm, 1e-12) * scale)
    return np.concatenate(parts, axis=1)


def fit_projection(combined: np.ndarray, *, dim: int = EMBED_DIM, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """PCA of training features: ``(mean (F,), components (F, D))``, ``D = min(dim, N-1, F)``."""
    from sklearn.decomposition import PCA

    x = np.asarray(combined, dtype=np.float32)
    d = int(max(1, min(dim, x.shape[0] - 1, x.shape[1])))
    pca = PCA(n_components=d, svd_solver="randomized" if d < min(x.shape) // 2 else "full",
              random_state=seed).fit(x)
    return pca.mean_.astype(np.float32), pca.components_.T.astype(np.float32)


def project(combined: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """``(N, D)`` L2-normalised embeddings of combined features."""
    z = (np.asarray(combined, dtype=np.float32) - mean) @ components
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class RetrievalIndex:
    """Embeddings of the training images with their ids, labels and lesions.

    Attributes
    ----------
    embeddings: ``(N, D)`` float16, L2-normalised rows.
    mean, components: the projection (``(F,)``, ``(F, D)`` float32).
    image_ids, labels, lesion_ids: per row (``lesion_ids`` falls back to the image id).
    info: ``index.json`` (members, OOD threshold, out-of-fold kNN figures...).
    """

    embeddings: np.ndarray
    mean: np.ndarray
    components: np.ndarray
    image_ids: tuple[str, ...]
    labels: tuple[str, ...]
    lesion_ids: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)
    stats_mean: np.ndarray | None = None
    stats_precision: np.ndarray | None = None

    @property
    def ood_threshold(self) -> float | None:
        """Threshold of the embedding detector (set on the calibration split)."""
        t = self.info.get("ood_threshold")
        return None if t is None else float(t)

    @property
    def stats_threshold(self) -> float | None:
        """Threshold of the image-statistics detector (set on the calibration split)."""
        t = self.info.get("stats_threshold")
        return None if t is None else float(t)

    def stats_score(self, stats: np.ndarray) -> np.ndarray | None:
        """Mahalanobis distance of image statistics to the training images' (or ``None``)."""
        if self.stats_mean is None or self.stats_precision is None:
            return None
        return mahalanobis(stats, self.stats_mean, self.stats_precision)

    def ood(self, queries: np.ndarray, stats: np.ndarray | None, *,
            sims: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Per image the out-of-distribution record: ``score`` (embedding) and
        ``image_score`` (image statistics) with their ``threshold`` / ``image_threshold``,
        and ``flagged`` when either is above its threshold."""
        emb = self.ood_score(queries, sims=sims)
        img = self.stats_score(stats) if stats is not None else None
        t, ti = self.ood_threshold, self.stats_threshold
        out = []
        for j, v in enumerate(emb):
            rec: dict[str, Any] = {"score": float(v), "threshold": t}
            flagged = t is not None and v > t
            if img is not None:
                rec.update({"image_score": float(img[j]), "image_threshold": ti})
                flagged = flagged or (ti is not None and img[j] > ti)
            rec["flagged"] = bool(flagged)
            out.append(rec)
        return out

    def embed(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings of new images from every member's ``(B, F_m)`` pre-logits features."""
        return project(combine_features(features), self.mean, self.components)

    def _matrix(self) -> np.ndarray:
        cached = self.__dict__.get("_f32")
        if cached is None:
            cached = np.ascontiguousarray(self.embeddings, dtype=np.float32)
            object.__setattr__(self, "_f32", cached)
            lesion = np.unique(np.asarray(self.lesion_ids), return_inverse=True)[1]
            object.__setattr__(self, "_lesion_codes", lesion)
        return cached

    def similarities(self, queries: np.ndarray) -> np.ndarray:
        """``(B, N)`` cosine similarities of queries to every training image."""
        return np.asarray(queries, dtype=np.float32) @ self._matrix().T

    def ood_score(self, queries: np.ndarray, *, sims: np.ndarray | None = None) -> np.ndarray:
        """``(B,)`` one minus the mean similarity of the :data:`K_OOD` nearest training images
        (0 = like the training images; up to 2 for the opposite direction)."""
        s = self.similarities(queries) if sims is None else sims
        k = min(K_OOD, s.shape[1])
        top = np.partition(s, s.shape[1] - k, axis=1)[:, -k:]
        return 1.0 - top.mean(axis=1)

    def search(self, queries: np.ndarray, k: int, *, sims: np.ndarray | None = None
               ) -> list[list[dict[str, Any]]]:
        """The ``k`` most similar training images per query, one per lesion (its most similar
        image), as ``{"image_id", "label", "lesion_id", "similarity"}`` by decreasing
        similarity."""
        s = self.similarities(queries) if sims is None else sims
        self._matrix()
        codes = self.__dict__["_lesion_codes"]
        n = s.shape[1]
        out = []
        for row in s:
            c = min(n, max(_CANDIDATES, 8 * k))
            cand = np.argpartition(-row, c - 1)[:c] if c < n else np.arange(n)
            cand = cand[np.argsort(-row[cand], kind="stable")]
            seen: set[int] = set()
            hits = []
            for j in cand:
                if codes[j] in seen:
                    continue
                seen.add(int(codes[j]))
                hits.append({"image_id": self.image_ids[j], "label": self.labels[j],
                             "lesion_id": self.lesion_ids[j], "similarity": float(row[j])})
                if len(hits) == k:
                    break
            out.append(hits)
        return out

    # ---- storage ------------------------------------------------------------------------

    def save(self, folder: str | Path) -> list[Path]:
        """Write the three files into ``folder`` (created); returns their paths."""
        from safetensors.numpy import save_file

        from skin_core.io import atomic_write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = folder / TENSORS
        tmp = tensors.with_name(tensors.name + ".tmp")
        tensors_out = {"embeddings": np.ascontiguousarray(self.embeddings, dtype=np.float16),
                       "pca_mean": np.ascontiguousarray(self.mean, dtype=np.float32),
                       "pca_components": np.ascontiguousarray(self.components,
                                                              dtype=np.float32)}
        if self.stats_mean is not None and self.stats_precision is not None:
            tensors_out["stats_mean"] = np.ascontiguousarray(self.stats_mean)
            tensors_out["stats_precision"] = np.ascontiguousarray(self.stats_precision)
        save_file(tensors_out, str(tmp))
        tmp.replace(tensors)
        items = folder / ITEMS
        tmp = items.with_name(items.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["image_id", "label", "lesion_id"])
            w.writerows(zip(self.image_ids, self.labels, self.lesion_ids, strict=True))
        tmp.replace(items)
        atomic_write_json(folder / INFO, {"format": INDEX_FORMAT, **self.info})
        return [tensors, items, folder / INFO]

    @classmethod
    def load(cls, folder: str | Path) -> RetrievalIndex:
        """Read an index written by :meth:`save` (the bundle verified the hashes)."""
        from safetensors.numpy import load_file

        folder = Path(folder)
        try:
            info = json.loads((folder / INFO).read_text(encoding="utf-8"))
            t = load_file(str(folder / TENSORS))
            with open(folder / ITEMS, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"The retrieval index in {folder} is not readable ({e}); rebuild "
                            "it with `skin-core index`.") from e
        if info.get("format") != INDEX_FORMAT:
            raise DataError(f"{folder / INFO} has format {info.get('format')!r}; this version "
                            f"reads {INDEX_FORMAT!r} (rebuild with `skin-core index`).")
        emb = t["embeddings"]
        if len(rows) != emb.shape[0]:
            raise DataError(f"{folder / ITEMS} has {len(rows)} rows for {emb.shape[0]} "
                            "embeddings; rebuild the index with `skin-core index`.")
        return cls(embeddings=emb, mean=t["pca_mean"], components=t["pca_components"],
                   image_ids=tuple(r["image_id"] for r in rows),
                   labels=tuple(r["label"] for r in rows),
                   lesion_ids=tuple(r["lesion_id"] or r["image_id"] for r in rows), info=info,
                   stats_mean=t.get("stats_mean"), stats_precision=t.get("stats_precision"))


def knn_vote(similar: list[list[dict[str, Any]]], classes: Sequence[str]) -> np.ndarray:
    """``(B, K)`` share of each class among each query's neighbours (the kNN diagnosis)."""
    idx = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(similar), len(classes)))
    for i, hits in enumerate(similar):
        for h in hits:
            if h["label"] in idx:
                out[i, idx[h["label"]]] += 1
        out[i] /= max(1, len(hits))
    return out


__all__ = [
    "EMBED_DIM",
    "INDEX_FORMAT",
    "K_OOD",
    "K_VOTE",
    "OOD_PASS",
    "STAT_NAMES",
    "RETRIEVAL_DIR",
    "RetrievalIndex",
    "combine_features",
    "fit_projection",
    "fit_statistics",
    "image_statistics",
    "knn_vote",
    "project",
]
