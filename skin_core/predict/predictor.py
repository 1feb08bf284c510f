"""The :class:`Predictor`: a loaded bundle that turns images into result records."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from skin_core.constants import MAX_IMAGE_PIXELS
from skin_core.errors import ConfigError, ImageError, SkinCoreError
from skin_core.predict.assembly import Assembly, _percentile_tables
from skin_core.predict.inputs import (
    MAX_UPLOAD_BYTES,
    MIN_SIDE,
    BatchInputs,
    ForwardBatch,
    _Prepared,
    _size_of,
    _source_name,
)
from skin_core.predict.metadata import _metadata_lookup
from skin_core.predict.results import PredictionResult


class Predictor(BatchInputs, Assembly):
    """A loaded bundle that turns images into :class:`PredictionResult` records.

    Parameters
    ----------
    bundle:
        A bundle folder or a loaded :class:`~skin_core.models.bundle.Bundle`.
    device:
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"`` or ``"cuda"``.
    amp:
        Mixed precision (autocast) on CUDA.
    tta:
        Default test-time augmentation: average over the identity, horizontal, vertical and
        both flips. ``None`` (default): as the bundle's members were validated (their
        preprocessing's ``tta``), so out-of-fold, calibration and served predictions agree.
    max_bytes, max_pixels:
        Upload limits: larger files / images are refused with one sentence.

    Raises
    ------
    DataError
        The bundle fails verification (see :func:`~skin_core.models.bundle.load_bundle`).
    ConfigError
        Unknown device or weights that do not fit their architecture.
    """

    def __init__(self, bundle: Any, *, device: str = "auto", amp: bool = True,
                 tta: bool | None = None, max_bytes: int = MAX_UPLOAD_BYTES,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        import torch
        from safetensors.torch import load_file

        from skin_core.models.bundle import Bundle, load_bundle
        from skin_core.models.device import resolve_device
        from skin_core.models.registry import PreprocessConfig, create_model

        t0 = time.perf_counter()
        self.bundle: Bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        if device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"The 'device' parameter must be 'auto', 'cpu' or 'cuda'; got "
                              f"{device!r}.")
        self.device = "cpu" if resolve_device(device) == "mps" else resolve_device(device)
        self.amp = bool(amp and self.device == "cuda")
        self.max_bytes = int(max_bytes)
        self.max_pixels = int(max_pixels)
        self.classes = self.bundle.classes
        k = len(self.classes)
        self._members = []
        for spec in self.bundle.members:
            pre = PreprocessConfig.from_dict(spec.preprocessing)
            net = create_model(spec.arch, num_classes=k, input_size=pre.input_size)
            path = self.bundle.path / spec.file
            try:
                net.load_state_dict(load_file(str(path), device="cpu"), strict=True)
            except (RuntimeError, OSError) as e:
                raise ConfigError(
                    f"Bundle weights {path} do not fit architecture {spec.arch!r} with {k} "
                    f"classes ({str(e).splitlines()[0][:120]}); rebuild the bundle."
                ) from e
            net.eval().to(self.device)
            if self.device == "cuda":
                net.to(memory_format=torch.channels_last)
            self._members.append((spec, pre, net))
        self.models = self.bundle.models
        self.tta = (all(p.tta for _, p, _ in self._members) if tta is None else bool(tta))
        hm = self.bundle.heatmap_member
        self._heatmap_index = next(i for i, (s, _, _) in enumerate(self._members)
                                   if s.model == hm.model and s.fold == hm.fold)
        self._sizes = sorted({(p.input_size, p.crop) for _, p, _ in self._members})
        self._arch_of = {s.model: s.arch for s, _, _ in self._members}
        ref = self.bundle.referral
        self.entropy_threshold = float(ref.get("entropy_threshold", float("inf")))
        self.blur_percentile_cut = float(ref.get("blur_percentile_cut", 5.0))
        self._ens_conformal = None
        if self.bundle.manifest.get("ensemble_conformal"):
            from skin_core.meta.conformal import ConformalThresholds

            self._ens_conformal = ConformalThresholds.from_dict(
                self.bundle.manifest["ensemble_conformal"])
        self._percentile_tables = _percentile_tables(self.bundle.quality_reference)
        self.retrieval = None
        from skin_core.retrieval import INFO, RETRIEVAL_DIR, RetrievalIndex

        if f"{RETRIEVAL_DIR}/{INFO}" in self.bundle.manifest.get("files", {}):
            self.retrieval = RetrievalIndex.load(self.bundle.path / RETRIEVAL_DIR)
        self.load_seconds = time.perf_counter() - t0

    # ---- decoding -----------------------------------------------------------------------

    def prepare(self, src: Any, *, name: str | None = None) -> _Prepared:
        """Decode one image and build every network input plus its quality measures.

        Never raises for a bad image: the returned record has ``error`` set instead.
        """
        label, image_id = _source_name(src, name)
        item = _Prepared(label, image_id)
        try:
            self._prepare(src, item)
        except SkinCoreError as e:
            item.error = str(e)
        except Exception as e:  # noqa: BLE001 - one image must never stop the others
            item.error = (f"{label} could not be processed ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:160] if str(e) else ''}).")
        return item

    def _prepare(self, src: Any, item: _Prepared) -> None:
        from skin_core.analysis.quality import measure_quality, read_grey
        from skin_core.data.cache import resize_array
        from skin_core.data.images import image_size, read_image

        what = item.name
        if isinstance(src, (str, os.PathLike)) and Path(src).is_dir():
            raise ImageError(f"{what} is a folder, not an image file.")
        nbytes = _size_of(src)
        if nbytes is not None and nbytes > self.max_bytes:
            raise ImageError(
                f"{what} is {nbytes / 1e6:.1f} MB, above the upload limit of "
                f"{self.max_bytes / 1e6:.0f} MB; export a smaller JPEG or PNG."
            )
        if isinstance(src, (str, os.PathLike)) and nbytes is not None and nbytes > 0:
            with open(src, "rb") as fh:  # read once; every decode below uses these bytes
                src = fh.read()
        if isinstance(src, (bytes, bytearray)):
            item.raw = bytes(src)  # the heatmap is drawn on the photo itself (compressed bytes)
        w, h = image_size(src, name=what)
        if w * h > self.max_pixels:
            read_image(src, max_pixels=self.max_pixels, name=what)  # raises the bomb error
        if min(w, h) < MIN_SIDE:
            raise ImageError(
                f"{what} is only {w}x{h} pixels; a dermoscopic image needs at least "
                f"{MIN_SIDE}x{MIN_SIDE} pixels, upload the original photograph."
            )
        for size, crop in self._sizes:
            # Same draft (DCT-scaled) decode size as skin_core.data.cache.load_resized.
            reduce_to = (size, size)
            if crop == "center":
                s = size / min(w, h)
                reduce_to = (max(size, int(w * s)), max(size, int(h * s)))
            rgb = read_image(src, max_pixels=self.max_pixels, reduce_to=reduce_to, name=what)
            item.inputs[(size, crop)] = resize_array(rgb, size, resize=crop)
        # Quality from the same full-resolution grey decode as the study's quality.csv
        # (OpenCV's luma-only JPEG path, about half the cost of a full RGB decode).
        item.quality = measure_quality(read_grey(src, max_pixels=self.max_pixels, name=what))
        from skin_core.retrieval import image_statistics

        item.stats = image_statistics(item.quality, item.inputs[self._sizes[0]])

    # ---- forward passes -------------------------------------------------------------------

    def _forward(self, batch: list[_Prepared], *, tta: bool, heatmap: bool,
                 folds: dict[tuple[str, int], np.ndarray] | None = None,
                 inputs: Mapping[tuple, Any] | None = None,
                 features: list[np.ndarray] | None = None,
                 ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """Per-model ``(B, K)`` probabilities (mean over folds) and optional Grad-CAMs.

        ``folds``, when given, receives every fold model's probabilities. ``inputs``, when
        given, holds the batch's float network inputs per input key (see
        :meth:`_input_buffers`, filled by the decoding threads); otherwise they are made here
        from the items' crops. ``features``, when given, receives every member's ``(B, F)``
        pre-logits features (member order), from the same forward pass as its logits; with
        TTA those of the plain view only, so an image's embedding does not depend on TTA and
        the retrieval index can be built with one view per image (a quarter of the cost).
        """
        import torch

        from skin_core.training.augment import to_float

        x_cache: dict[tuple, Any] = {}
        u8_cache: dict[tuple, Any] = {}
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        cams = None
        b = len(batch)
        for i, (spec, pre, net) in enumerate(self._members):
            key = (pre.input_size, pre.crop, tuple(pre.mean), tuple(pre.std))
            if key not in x_cache:
                ukey = (pre.input_size, pre.crop)
                if inputs is not None:
                    x = inputs[key].to(self.device)
                else:
                    if ukey not in u8_cache:
                        u8_cache[ukey] = torch.from_numpy(
                            np.stack([it.inputs[ukey] for it in batch])).to(self.device)
                    x = to_float(u8_cache[ukey], pre.mean, pre.std)
                if tta:
                    x = torch.cat([x, x.flip(3), x.flip(2), x.flip(2).flip(3)])
                if self.device == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                x_cache[key] = x
            x = x_cache[key]
            pre = None
            if heatmap and i == self._heatmap_index:
                from skin_core.explain import class_activation_map

                with torch.autocast("cuda", enabled=self.amp):
                    cams, logits = class_activation_map(net, x)
                cams = cams[:b]
                if features is not None:
                    with torch.inference_mode(), torch.autocast("cuda", enabled=self.amp):
                        pre = net.forward_head(net.forward_features(x), pre_logits=True)
            elif features is not None:
                with torch.inference_mode(), torch.autocast("cuda", enabled=self.amp):
                    fmap = net.forward_features(x)
                    pre = net.forward_head(fmap, pre_logits=True)
                    logits = net.forward_head(fmap)
            else:
                with torch.inference_mode(), torch.autocast("cuda", enabled=self.amp):
                    logits = net(x)
            p = torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float64)
            if tta:
                p = p.reshape(4, b, -1).mean(axis=0)
            if pre is not None:
                f = pre.float().cpu().numpy()
                features.append(f[:b] if tta else f)
            if folds is not None:
                folds[(spec.model, spec.fold)] = p
            sums[spec.model] = sums.get(spec.model, 0.0) + p
            counts[spec.model] = counts.get(spec.model, 0) + 1
        return {m: sums[m] / counts[m] for m in sums}, cams

    # ---- public API -----------------------------------------------------------------------

    def predict(self, image: Any, *, age: Any = None, sex: Any = None, site: Any = None,
                heatmap: bool = False, tta: bool | None = None, name: str | None = None,
                similar: int = 0) -> PredictionResult:
        """Predict one image (path, bytes or binary file) with optional patient metadata.

        Raises
        ------
        ImageError
            The image cannot be used (not an image, truncated, too large, too small...).
        """
        if hasattr(image, "read") and not isinstance(image, (bytes, bytearray)):
            name = name or getattr(image, "name", None)  # e.g. Streamlit's UploadedFile
            image = image.read()
        item = self.prepare(image, name=name)
        if item.error is not None:
            raise ImageError(item.error)
        return self._predict_prepared([item], [(age, sex, site)], heatmap=heatmap,
                                      tta=self.tta if tta is None else tta,
                                      similar=similar)[0]

    def warm_up(self, *, heatmap: bool = True) -> float:
        """Predict one synthetic image and discard it; returns the seconds it took.

        The first forward pass of each network pays one-time costs (oneDNN picks its kernels,
        lazy imports, the first Grad-CAM graph), seconds on a CPU for an ensemble. A server
        calls this right after loading (the app does, inside its cached loader), so the
        first clinician's upload is as fast as every later one.
        """
        import io

        from PIL import Image

        rng = np.random.default_rng(0)
        side = 4 * MIN_SIDE
        pixels = rng.integers(64, 192, (side, side * 4 // 3, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        t0 = time.perf_counter()
        self.predict(buf.getvalue(), age=50, sex="female", site="anterior torso",
                     heatmap=heatmap, name="warm-up image")
        return time.perf_counter() - t0

    def predict_batch(self, images: Sequence[Any], *, metadata: Sequence[Any] | None = None,
                      heatmap: bool = False, tta: bool | None = None,
                      names: Sequence[str] | None = None, similar: int = 0
                      ) -> list[PredictionResult]:
        """Predict several images in one batch; unreadable ones get ``error`` set.

        ``metadata``: one ``(age, sex, site)`` tuple or mapping per image (or ``None``).
        """
        items = [self.prepare(s, name=names[i] if names else None) for i, s in enumerate(images)]
        meta = list(metadata) if metadata is not None else [None] * len(items)
        return self._predict_prepared(items, meta, heatmap=heatmap,
                                      tta=self.tta if tta is None else tta, similar=similar)

    def fold_probabilities(self, images: Sequence[Any], *, tta: bool | None = None
                           ) -> dict[tuple[str, int], np.ndarray]:
        """Every fold model's ``(N, K)`` softmax for ``images`` (TTA as the predictor's).

        Raises
        ------
        ImageError
            One of the images cannot be used.
        """
        items = [self.prepare(s) for s in images]
        bad = [it for it in items if it.error is not None]
        if bad:
            raise ImageError(bad[0].error)
        folds: dict[tuple[str, int], np.ndarray] = {}
        self._forward(items, tta=self.tta if tta is None else tta, heatmap=False, folds=folds)
        return folds

    def iter_predict(
        self,
        images: Iterable[Any],
        *,
        metadata: Mapping[str, Any] | Any = None,
        batch_size: int = 32,
        workers: int = 2,
        heatmap: bool = False,
        tta: bool | None = None,
        progress: bool = False,
        total: int | None = None,
        similar: int = 0,
    ) -> Iterator[PredictionResult]:
        """Stream images through in batches; yields one result per image, in input order.

        Parameters
        ----------
        images:
            Paths (or bytes); any iterable (consumed lazily, so 10,000 paths are fine).
        metadata:
            ``(age, sex, site)`` for every image, or a mapping ``image_id -> (age, sex, site)``
            (or a DataFrame with ``image_id, age_approx, sex, anatom_site_general``).
        batch_size:
            Images per forward pass.
        workers:
            Decoding threads; decoding runs ahead of the forward passes
            (:data:`PREFETCH_BATCHES` batches, each with its own preallocated input tensors).
        progress:
            tqdm progress bar on stderr.
        similar:
            Nearest training images to return per image (one per lesion; needs the bundle's
            retrieval index).
        """
        tta = self.tta if tta is None else tta
        lookup = _metadata_lookup(metadata)
        for items, bufs in self._decoded_batches(images, batch_size=batch_size,
                                                 workers=workers, progress=progress,
                                                 total=total):
            meta = [lookup(it_.image_id) for it_ in items]
            yield from self._predict_prepared(items, meta, heatmap=heatmap, tta=tta,
                                              buffers=bufs, similar=similar)

    def forward_batches(
        self,
        images: Iterable[Any],
        *,
        batch_size: int = 32,
        workers: int = 2,
        tta: bool | None = None,
        progress: bool = False,
        total: int | None = None,
        fold_probs: bool = False,
        features: bool | None = None,
    ) -> Iterator[ForwardBatch]:
        """The served pipeline's forward passes only, batch by batch, in input order.

        Each :class:`ForwardBatch` holds the decoded items (name, quality measures, error;
        their pixel crops are dropped) and every model's ``(B, K)`` probabilities for the
        items without error. :meth:`assemble` turns a batch into the
        :class:`PredictionResult` records :meth:`iter_predict` would give, so a caller can
        refit the served thresholds on these numbers and then measure the pipeline with them
        without running the networks twice (:mod:`skin_core.served`). ``fold_probs`` also
        keeps every fold model's probabilities; ``features`` every member's pre-logits
        features (default: when the bundle has a retrieval index).
        """
        tta = self.tta if tta is None else tta
        for items, bufs in self._decoded_batches(images, batch_size=batch_size,
                                                 workers=workers, progress=progress,
                                                 total=total):
            good = [i for i, it in enumerate(items) if it.error is None]
            per_model: dict[str, np.ndarray] = {}
            want = self.retrieval is not None if features is None else features
            feats: list[np.ndarray] | None = [] if want else None
            folds: dict[tuple[str, int], np.ndarray] | None = {} if fold_probs else None
            if good:
                for _, block in bufs.values():
                    for dst, src in enumerate(good):
                        if dst != src:
                            block[dst] = block[src]
                inputs = {key: x[:len(good)] for key, (x, _) in bufs.items()}
                per_model, _ = self._forward([items[i] for i in good], tta=tta,
                                             heatmap=False, inputs=inputs, features=feats,
                                             folds=folds)
            for it in items:
                it.inputs, it.raw = {}, None
            yield ForwardBatch(items=items, per_model=per_model,
                               features=feats if good else None, fold_probs=folds)

    def assemble(self, batch: ForwardBatch, metadata: Sequence[Any], *, similar: int = 0
                 ) -> list[PredictionResult]:
        """The results of a :meth:`forward_batches` batch with this predictor's meta-models,
        calibration, sets, out-of-distribution and referral rules (``metadata``: one entry per
        item, as in :meth:`predict_batch`). No heatmaps."""
        return self._assemble(batch.items, metadata, batch.per_model, None,
                              features=batch.features, similar=similar)

    # ---- assembly -------------------------------------------------------------------------

    def _predict_prepared(self, items: list[_Prepared], meta: Sequence[Any], *,
                          heatmap: bool, tta: bool,
                          buffers: Mapping[tuple, tuple[Any, np.ndarray]] | None = None,
                          similar: int = 0) -> list[PredictionResult]:
        """Forward passes and assembly of decoded items. ``buffers``: the items' float inputs,
        row ``i`` for ``items[i]`` (from :meth:`_prepare_row`)."""
        good = [i for i, it in enumerate(items) if it.error is None]
        batch = [items[i] for i in good]
        inputs = None
        if buffers is not None and batch:
            for _, block in buffers.values():
                for dst, src in enumerate(good):  # close the failed images' gaps, in place
                    if dst != src:
                        block[dst] = block[src]
            inputs = {key: x[:len(good)] for key, (x, _) in buffers.items()}  # views
        feats: list[np.ndarray] | None = [] if self.retrieval is not None else None
        forward = (self._forward(batch, tta=tta, heatmap=heatmap, inputs=inputs,
                                 features=feats) if batch else ({}, None))
        return self._assemble(items, meta, *forward, features=feats, similar=similar)
