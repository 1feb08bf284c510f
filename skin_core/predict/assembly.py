"""From the forward passes' outputs to result records: meta step, sets, quality,
similar cases, out-of-distribution and referral."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from skin_core.constants import AGE, SEX, SITE
from skin_core.predict.inputs import _Prepared
from skin_core.predict.metadata import _normalize_any
from skin_core.predict.results import PredictionResult

#: What an out-of-distribution result says first (and it refers, whatever the classes say).
OOD_WARNING = ("This does not look like the dermoscopic images this model was trained on; its "
               "diagnosis is not reliable for this image. Refer for specialist review.")


class Assembly:
    """The :class:`~skin_core.predict.Predictor`'s assembly of results (no networks here)."""

    def _assemble(self, items: list[_Prepared], meta: Sequence[Any],
                  per_model: dict[str, np.ndarray], cams: np.ndarray | None, *,
                  features: list[np.ndarray] | None = None, similar: int = 0
                  ) -> list[PredictionResult]:
        """Results from the forward passes' outputs (meta-classifier, sets, referral...)."""
        good = [i for i, it in enumerate(items) if it.error is None]
        out: list[PredictionResult | None] = [None] * len(items)
        for i, it in enumerate(items):
            if it.error is not None:
                out[i] = PredictionResult(image=it.name, image_id=it.image_id, error=it.error)
        if not good:
            return out  # type: ignore[return-value]
        batch = [items[i] for i in good]
        k = len(self.classes)
        ens = np.mean([per_model[m] for m in self.models], axis=0)
        metas, warns = [], []
        for i in good:
            md, w = _normalize_any(meta[i])
            metas.append(md)
            warns.append(w)
        meta_probs = meta_sets = risk = refer_model = None
        meta_source: list[str | None] = [None] * len(batch)
        ref_threshold = None
        has_md = np.array([any(v is not None for v in md.values()) for md in metas])
        groups = []  # (source name per row, predictor, rows)
        with_md, without_md = self.bundle.meta, self.bundle.meta_nometa
        if with_md is not None and without_md is not None:
            groups = [("with_metadata", with_md, has_md), ("without_metadata", without_md, ~has_md)]
        elif with_md is not None:
            groups = [("with_metadata", with_md, np.ones(len(batch), bool))]
        elif without_md is not None:
            groups = [("without_metadata", without_md, np.ones(len(batch), bool))]
        if groups:
            meta_probs = np.zeros((len(batch), k))
            meta_sets = [()] * len(batch)
            risk = np.full(len(batch), np.nan)
            refer_model = np.zeros(len(batch), dtype=bool)
        for src_name, pred, mask in groups:
            if not mask.any():
                continue
            idx = np.flatnonzero(mask)
            res = self._run_meta(pred, {m: per_model[m][idx] for m in per_model},
                                 [metas[j] for j in idx], [batch[j] for j in idx])
            meta_probs[idx] = res.probs
            for j, s in zip(idx, res.sets, strict=True):
                meta_sets[j] = tuple(s.split("|")) if s else ()
                meta_source[j] = ("metadata_missing" if src_name == "with_metadata"
                                  and pred.feature_spec.metadata and not has_md[j]
                                  else src_name)
            if res.referral_prob is not None and pred.referral is not None:
                risk[idx] = res.referral_prob
                refer_model[idx] = res.refer
                ref_threshold = float(pred.referral.threshold)
        from skin_core.models.bundle import ensemble_entropy

        entropy = ensemble_entropy(ens)
        tops = np.stack([per_model[m].argmax(axis=1) for m in self.models])
        disagree = (tops != tops[0]).any(axis=0)
        ens_sets = self._ens_conformal.labels(ens) if self._ens_conformal is not None else None
        hm_spec = self._members[self._heatmap_index][0]
        by_arch: dict[str, list[np.ndarray]] = {}
        for m in self.models:
            by_arch.setdefault(self._arch_of[m], []).append(per_model[m])
        arch_means = {arch: np.mean(ps, axis=0) for arch, ps in by_arch.items()}
        percentiles = self._batch_percentiles([it.quality for it in batch])
        oods, neighbours = self._retrieve(features, batch, similar)
        for j, i in enumerate(good):
            it = batch[j]
            probs = dict(zip(self.classes, ens[j].tolist(), strict=True))
            members = {arch: dict(zip(self.classes, a[j].tolist(), strict=True))
                       for arch, a in arch_means.items()}
            if meta_probs is not None:
                mp = dict(zip(self.classes, meta_probs[j].tolist(), strict=True))
                label = self.classes[int(np.argmax(meta_probs[j]))]
                pset = meta_sets[j]
                coverage = float((with_md or without_md).conformal.coverage)
            else:
                mp = None
                label = self.classes[int(np.argmax(ens[j]))]
                pset = tuple(ens_sets[j].split("|")) if ens_sets is not None else (label,)
                coverage = (float(self._ens_conformal.coverage)
                            if self._ens_conformal is not None else None)
            quality = self._quality_record(it.quality, percentiles[j])
            reasons = []
            if oods[j].get("flagged"):
                reasons.append("out_of_distribution")
            if quality["low_quality"]:
                reasons.append("low_quality")
            if bool(disagree[j]):
                reasons.append("model_disagreement")
            if float(entropy[j]) > self.entropy_threshold:
                reasons.append("high_entropy")
            r = None if risk is None or not np.isfinite(risk[j]) else float(risk[j])
            if r is not None and bool(refer_model[j]):
                reasons.append("high_risk")
            referral = {
                "risk": r, "refer": bool(reasons), "reasons": reasons,
                "threshold": ref_threshold, "entropy": float(entropy[j]),
                "entropy_threshold": self.entropy_threshold,
                "disagreement": bool(disagree[j]),
                "model_top_classes": {m: self.classes[int(per_model[m][j].argmax())]
                                      for m in self.models},
            }
            w = list(warns[j])
            if oods[j].get("flagged"):
                w.insert(0, OOD_WARNING)
            if quality.get("warning") and quality.get("low_quality"):
                w.append(quality["warning"])
            heat = overlay = None
            if cams is not None:
                spec_pre = self._members[self._heatmap_index][1]
                heat = cams[j]
                overlay = self._overlay(it, heat, spec_pre)
            out[i] = PredictionResult(
                image=it.name, image_id=it.image_id, label=label, probs=probs, members=members,
                meta_probs=mp, meta_source=meta_source[j], prediction_set=tuple(pset),
                coverage=coverage, quality=quality, referral=referral, metadata=metas[j],
                warnings=tuple(w), heatmap=heat, overlay=overlay,
                heatmap_member=f"{hm_spec.model} fold {hm_spec.fold}" if cams is not None
                else None, similar=tuple(neighbours[j]), ood=oods[j],
            )
        return out  # type: ignore[return-value]

    def _overlay(self, item: _Prepared, heat: np.ndarray, pre: Any) -> np.ndarray:
        """The heatmap drawn semi-transparently over the whole uploaded photo, in its own
        geometry (the square the network saw framed; :func:`skin_core.explain.
        heatmap_on_photo`); over the network's crop when the photo's bytes are not at hand."""
        from skin_core.explain import heatmap_on_photo, overlay_heatmap

        if item.raw is None:
            crop = item.inputs[(pre.input_size, pre.crop)]
            return overlay_heatmap(crop, heat, size=max(224, pre.input_size))
        from skin_core.data.images import read_image

        photo = read_image(item.raw, max_pixels=self.max_pixels, reduce_to=(768, 768),
                           name=item.name)
        return heatmap_on_photo(photo, heat, resize=pre.crop).overlay

    def _retrieve(self, features: list[np.ndarray] | None, batch: list[_Prepared],
                  similar: int) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
        """Per image the out-of-distribution record and the ``similar`` nearest training
        images (one per lesion), from the members' features and the image statistics;
        empty without an index."""
        n = len(batch)
        if self.retrieval is None or not features:
            return [{} for _ in range(n)], [[] for _ in range(n)]
        q = self.retrieval.embed(features)
        sims = self.retrieval.similarities(q)
        stats = (np.stack([it.stats for it in batch])
                 if all(it.stats is not None for it in batch) else None)
        oods = self.retrieval.ood(q, stats, sims=sims)
        hits = (self.retrieval.search(q, similar, sims=sims) if similar > 0
                else [[] for _ in range(n)])
        return oods, hits

    def _run_meta(self, pred: Any, probs: dict[str, np.ndarray],
                  metas: list[dict[str, Any]], items: list[_Prepared]) -> Any:
        """The meta package's NumPy fast path (:meth:`MetaPredictor.predict_arrays`): the
        same numbers as its DataFrame path, without building DataFrames per batch."""
        spec = pred.feature_spec
        age = sex = site = quality = None
        if spec.metadata:
            age = np.array([np.nan if m[AGE] is None else m[AGE] for m in metas], dtype=float)
            sex = [m[SEX] for m in metas]
            site = [m[SITE] for m in metas]
        if spec.quality_columns:
            # as a table of the items' measures: NaN where an item lacks one
            quality = {c: [it.quality.get(c) for it in items] for c in spec.quality_columns
                       if any(c in it.quality for it in items)}
        return pred.predict_arrays(probs, age=age, sex=sex, site=site, quality=quality)

    def _batch_percentiles(self, qs: list[dict[str, float]]) -> list[dict[str, float]]:
        """Per image, measure -> percentile among the training images (the measures it has)."""
        from skin_core.analysis.quality import percentiles_from_table

        out: list[dict[str, float]] = [{} for _ in qs]
        for m, table in self._percentile_tables.items():
            rows = [j for j, q in enumerate(qs) if m in q]
            if rows:
                values = percentiles_from_table(np.array([float(qs[j][m]) for j in rows]),
                                                table)
                for j, v in zip(rows, values.tolist(), strict=True):
                    out[j][m] = v
        return out

    def _quality_record(self, q: dict[str, float], percentiles: dict[str, float]
                        ) -> dict[str, Any]:
        blur = float(q["blur_score"])
        blurry = bool(q["is_blurry"])
        pct = percentiles.get("blur_score")
        low_pct = pct is not None and pct < self.blur_percentile_cut
        low = blurry or low_pct
        if blurry:
            msg = (f"The image looks blurry (blur score {blur:.2f}; below 0.5 means blurry"
                   + (f", sharper than only {pct:.0f}% of the training images" if pct is not None
                      else "") + "); retake it in focus before relying on the result.")
        elif low_pct:
            msg = (f"The image is less sharp than {100 - pct:.0f}% of the training images (blur "
                   f"score {blur:.2f}); the result may be less reliable, consider retaking it.")
        else:
            msg = "Image sharpness is within the range of the training images."
        return {"blur_score": blur, "is_blurry": blurry, "blur_percentile": pct,
                "low_quality": bool(low), "percentiles": percentiles,
                "measures": {k: float(v) for k, v in q.items()}, "warning": msg}


def _percentile_tables(reference: Mapping[str, Any] | None
                       ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per measure of a quality reference, its :func:`~skin_core.analysis.quality.
    percentile_table`, built once at load instead of on every lookup."""
    from skin_core.analysis.quality import percentile_table

    return {m: percentile_table(entry)
            for m, entry in ((reference or {}).get("measures") or {}).items()}
