"""Build a bundle's retrieval index (``skin-core index``) and measure kNN against softmax.

:func:`build_index` runs the bundle's members over the training images once (the served
forward pass, :meth:`~skin_core.predict.Predictor.forward_batches`, with every fold model's
probabilities and pre-logits features), then

1. embeds every training image with all members (:mod:`skin_core.retrieval`) and writes the
   index into the bundle (atomically, hashes rewritten);
2. when the folds are known, measures the similar-case diagnosis **out of fold** as Tschandl
   et al. (Br J Dermatol 2019) did: for the images of fold ``k``, the embedding of fold ``k``'s
   models only (which never trained on them), the projection fitted on the other folds'
   images, and the :data:`~skin_core.retrieval.K_VOTE` nearest of those (one per lesion) vote;
   the softmax of the same fold models (on the same single view) is the comparison. Both
   balanced accuracies are recorded in ``retrieval/index.json`` (``oof``) and returned.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from skin_core.errors import DataError


def _forward_all(predictor: Any, paths: list[str], *, batch_size: int, progress: bool
                 ) -> tuple[list[np.ndarray], dict[tuple[str, int], np.ndarray], np.ndarray]:
    feats: list[list[np.ndarray]] = []
    stats: list[np.ndarray] = []
    folds: dict[tuple[str, int], list[np.ndarray]] = {}
    # One view per image: the served embedding is the plain view's (TTA or not, see
    # Predictor._forward), so the flips would cost 4x here and change nothing in the index.
    for fb in predictor.forward_batches(paths, batch_size=batch_size, progress=progress,
                                        total=len(paths), fold_probs=True,
                                        features=True, tta=False):
        bad = [it for it in fb.items if it.error is not None]
        if bad:
            raise DataError(f"Training image {bad[0].name} could not be read ({bad[0].error}); "
                            "fix or remove it and rerun skin-core index.")
        feats.append(fb.features or [])
        stats += [it.stats for it in fb.items]
        for key, p in (fb.fold_probs or {}).items():
            folds.setdefault(key, []).append(p)
    n_members = len(feats[0]) if feats else 0
    per_member = [np.concatenate([b[m] for b in feats]) for m in range(n_members)]
    return per_member, {k: np.concatenate(v) for k, v in folds.items()}, np.stack(stats)


def oof_knn(per_member: list[np.ndarray], fold_probs: dict[tuple[str, int], np.ndarray],
            members: list[Any], folds: np.ndarray, labels: list[str], lesions: list[str],
            classes: tuple[str, ...], *, k: int | None = None) -> dict[str, Any]:
    """Out-of-fold kNN-vote and softmax balanced accuracy (see the module docstring)."""
    from sklearn.metrics import balanced_accuracy_score

    from skin_core.retrieval import (
        K_VOTE,
        RetrievalIndex,
        combine_features,
        fit_projection,
        knn_vote,
        project,
    )

    k = k or K_VOTE
    idx = {c: i for i, c in enumerate(classes)}
    y = np.array([idx[v] for v in labels])
    knn_pred = np.full(len(y), -1)
    soft_pred = np.full(len(y), -1)
    for f in sorted({int(m.fold) for m in members}):
        query = np.flatnonzero(folds == f)
        base = np.flatnonzero((folds != f) & (folds >= 0))
        if len(query) == 0 or len(base) < 2:
            continue
        which = [i for i, m in enumerate(members) if int(m.fold) == f]
        combined = combine_features([per_member[i] for i in which])
        mean, comps = fit_projection(combined[base])
        z = project(combined, mean, comps)
        index = RetrievalIndex(embeddings=z[base], mean=mean, components=comps,
                               image_ids=tuple(str(i) for i in base),
                               labels=tuple(labels[i] for i in base),
                               lesion_ids=tuple(lesions[i] for i in base))
        votes = knn_vote(index.search(z[query], k), classes)
        knn_pred[query] = votes.argmax(axis=1)
        probs = np.mean([fold_probs[(members[i].model, f)][query] for i in which], axis=0)
        soft_pred[query] = probs.argmax(axis=1)
    done = knn_pred >= 0
    if not done.any():
        return {}
    return {
        "n_images": int(done.sum()), "k": int(k),
        "knn_balanced_accuracy": float(balanced_accuracy_score(y[done], knn_pred[done])),
        "softmax_balanced_accuracy": float(balanced_accuracy_score(y[done], soft_pred[done])),
        "agreement": float((knn_pred[done] == soft_pred[done]).mean()),
        "method": "fold k's models embed fold k's images; neighbours (one per lesion) from the "
                  "other folds; projection fitted on those; softmax of the same fold models",
    }


def build_index(
    bundle: str | os.PathLike[str],
    table: Any,
    *,
    folds: np.ndarray | None = None,
    batch_size: int = 64,
    progress: bool = False,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Embed the training images ``table`` (dataset rows: ``image_id, path, label[,
    lesion_id]``) into ``bundle``'s retrieval index; ``folds`` (per row, ``-1`` = not a
    training image) enables the out-of-fold kNN measurement. Returns ``index.json``'s
    content.

    Raises
    ------
    DataError
        Labels the bundle does not predict, unreadable images, fewer than 2 images.
    """
    from skin_core.constants import IMAGE_ID, LABEL, LESION_ID
    from skin_core.io import atomic_write_json
    from skin_core.models.bundle import MANIFEST, edit_bundle, load_bundle
    from skin_core.predict import Predictor
    from skin_core.retrieval import (
        EMBED_DIM,
        RETRIEVAL_DIR,
        STAT_NAMES,
        RetrievalIndex,
        combine_features,
        fit_projection,
        fit_statistics,
        project,
    )

    say = say or (lambda _m: None)
    root = Path(bundle)
    b = load_bundle(root)
    rows = table.reset_index(drop=True)
    if folds is not None:
        keep = np.asarray(folds) >= 0
        rows, folds = rows[keep].reset_index(drop=True), np.asarray(folds)[keep]
    if len(rows) < 2:
        raise DataError(f"Only {len(rows)} training image(s) to index; skin-core index needs "
                        "the run's training images (--dataset SPEC --folds folds.csv).")
    unknown = sorted(set(map(str, rows[LABEL])) - set(b.classes))
    if unknown:
        raise DataError(f"Label(s) {unknown} are not classes of bundle {root} "
                        f"({list(b.classes)}); index the dataset the bundle was trained on.")
    ids = rows[IMAGE_ID].astype(str).tolist()
    labels = rows[LABEL].astype(str).tolist()
    raw = rows[LESION_ID].tolist() if LESION_ID in rows.columns else [None] * len(rows)
    lesions = [str(v) if isinstance(v, str) and v else i for v, i in zip(raw, ids, strict=True)]
    predictor = Predictor(b, device="auto")
    say(f"index: embedding {len(rows)} training images with {len(b.members)} fold models")
    per_member, fold_probs, stats = _forward_all(predictor, [str(p) for p in rows["path"]],
                                          batch_size=batch_size, progress=progress)
    combined = combine_features(per_member)
    mean, comps = fit_projection(combined)
    embeddings = project(combined, mean, comps).astype(np.float16)
    info: dict[str, Any] = {
        "dim": int(comps.shape[1]), "requested_dim": EMBED_DIM, "n_images": len(ids),
        "n_lesions": len(set(lesions)), "feature_dim": int(combined.shape[1]),
        "members": [f"{m.model} fold {m.fold}" for m in b.members],
        "ood_threshold": None, "stats_threshold": None, "ood_fitted_on": None,
        "stat_names": list(STAT_NAMES),
    }
    if folds is not None:
        info["oof"] = oof_knn(per_member, fold_probs, list(b.members), folds, labels, lesions,
                              b.classes)
    stats_mean, stats_precision = fit_statistics(stats)
    index = RetrievalIndex(embeddings=embeddings, mean=mean, components=comps,
                           image_ids=tuple(ids), labels=tuple(labels),
                           lesion_ids=tuple(lesions), info=info, stats_mean=stats_mean,
                           stats_precision=stats_precision)
    with edit_bundle(root) as tmp:
        shutil.rmtree(tmp / RETRIEVAL_DIR, ignore_errors=True)
        index.save(tmp / RETRIEVAL_DIR)
        manifest = json.loads((tmp / MANIFEST).read_text(encoding="utf-8"))
        manifest["retrieval"] = {"folder": RETRIEVAL_DIR, "n_images": len(ids),
                                 "dim": info["dim"], "oof": info.get("oof")}
        atomic_write_json(tmp / MANIFEST, manifest)
    oof = info.get("oof") or {}
    if oof:
        say(f"index: out of fold, kNN vote balanced accuracy {oof['knn_balanced_accuracy']:.3f} "
            f"vs softmax {oof['softmax_balanced_accuracy']:.3f} ({oof['n_images']} images)")
    return {"format": "skin-core-retrieval/1", **info}


__all__ = ["build_index", "oof_knn"]
