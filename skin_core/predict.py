"""Prediction on new images: ensemble, meta-classifier, conformal set, heatmap, quality, referral.

:class:`Predictor` loads a bundle (:mod:`skin_core.models.bundle`) once: every fold model on
the device (CUDA with AMP autocast when available, else CPU), the meta-classifiers and the
training quality reference. Then::

    predictor = Predictor("models/demo")
    result = predictor.predict("lesion.jpg", age=55, sex="male", site="back", heatmap=True)
    result.label, result.prediction_set, result.referral["refer"]
    for r in predictor.iter_predict(paths, batch_size=64, progress=True): ...

Per image (the same steps training used for evaluation, reusing its functions):

1. decode with :func:`~skin_core.data.images.read_image` (bombs, truncation, every PIL mode,
   EXIF) with the same JPEG draft size as :func:`skin_core.data.cache.load_resized`, then
   :func:`~skin_core.data.cache.resize_array` to each member's input size (centre crop), and
   :func:`~skin_core.training.augment.to_float` (the members' mean / std). Files above
   ``max_bytes`` (default 50 MB) or with a side under :data:`MIN_SIDE` px are refused;
2. every fold model's softmax (optionally averaged over flips: test-time augmentation);
   ``members`` = per architecture, the mean over its fold models (and seeds); ``probs`` = the
   ensemble, the mean over models (as the OOF ``mean_ensemble``);
3. the meta-classifier (calibrated LightGBM) on those probabilities with the metadata:
   with age / sex / site, the bundle's with-metadata model; without any, its
   without-metadata model when the bundle has one, otherwise the with-metadata model with
   the metadata passed as missing (``meta_source`` says which). ``label`` is the top class of
   ``meta_probs`` (calibrated) or, without a meta-classifier, of ``probs``;
4. ``prediction_set``: the meta-classifier's conformal set, or without one the ensemble's
   own conformal set (thresholds fitted on the training OOF ensemble at bundle time);
5. quality: :func:`~skin_core.analysis.quality.measure_quality` on the full-resolution grey
   image from :func:`~skin_core.analysis.quality.read_grey` (the decode the study's
   ``quality.csv`` used, so the scores are the same as there for the same file), percentiles
   in the training distribution, ``is_blurry`` and a plain-language warning;
6. referral (``refer`` is true when any reason holds):

   - ``risk``: the meta package's referral model, the probability that every CNN gets this
     image wrong, with ``refer`` at its threshold (chosen at meta time for 80 % sensitivity);
   - ``low_quality``: ``is_blurry`` or a blur score below the 5th percentile of training;
   - ``model_disagreement``: the models' top classes differ;
   - ``high_entropy``: ensemble entropy above the 90th percentile of the training OOF
     ensemble's (``bundle.json`` ``referral.entropy_threshold``);
7. optional Grad-CAM heatmap (:mod:`skin_core.explain`) of the top class on the fold model
   with the best OOF balanced accuracy, reusing that model's forward pass.

Metadata: an age that is not a number or outside 0-120, and a sex or site outside the
vocabulary, give a warning in the result and are treated as missing / unknown.

Batch prediction (:meth:`Predictor.iter_predict`) decodes in a thread pool ahead of the
forward passes (overlap: a bounded prefetch of :data:`PREFETCH_BATCHES` batches whose decoding
threads also write the normalised float inputs into preallocated batch tensors), runs models on
batches, and yields one result per input in order; an unreadable image becomes a result with
``error`` set and never stops the others.

The meta step runs the meta package's NumPy fast path
(:meth:`~skin_core.meta.io.MetaPredictor.predict_arrays`: the numbers of its DataFrame path, to
1e-12, without building DataFrames), so a single image costs little more than the members'
forward passes (``docs/performance.md``, Prediction).
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from skin_core.constants import (
    AGE,
    IMAGE_ID,
    MAX_IMAGE_PIXELS,
    SEX,
    SEX_VALUES,
    SITE,
    SITE_VALUES,
    prob_columns,
)
from skin_core.errors import ConfigError, ImageError, SkinCoreError

#: Files larger than this are refused before reading (the app's upload limit).
MAX_UPLOAD_BYTES = 50 * 1024 * 1024

#: Images with a side shorter than this are refused (no dermoscopic detail survives).
MIN_SIDE = 32

#: Batches that :meth:`Predictor.iter_predict` decodes ahead of the one running through the models.
PREFETCH_BATCHES = 2

#: Accepted age range in years (inclusive); outside it the age is treated as missing.
AGE_RANGE = (0.0, 120.0)

#: Sex spellings mapped onto the vocabulary (case-insensitive).
_SEX_ALIASES = {"m": "male", "f": "female", "man": "male", "woman": "female"}

#: Site spellings mapped onto the ISIC 2019 vocabulary (case-insensitive).
_SITE_ALIASES = {
    "back": "posterior torso", "chest": "anterior torso", "abdomen": "anterior torso",
    "head": "head/neck", "neck": "head/neck", "face": "head/neck", "scalp": "head/neck",
    "arm": "upper extremity", "hand": "upper extremity", "leg": "lower extremity",
    "foot": "lower extremity", "palms": "palms/soles", "soles": "palms/soles",
    "oral": "oral/genital", "genital": "oral/genital", "trunk": "anterior torso",
}


# --------------------------------------------------------------------------------------------
# result record


@dataclass(frozen=True)
class PredictionResult:
    """Everything known about one image.

    Attributes
    ----------
    image: the image's name (path as given, or the uploaded file's name).
    image_id: file stem (or the name given).
    label: calibrated top diagnosis (``meta_probs`` when present, else ``probs``); ``None``
        when the image could not be read.
    probs: ensemble probabilities, class -> p (mean over models).
    members: architecture -> class -> p (mean over its fold models).
    meta_probs: calibrated meta-classifier probabilities, or ``None`` without a meta-model.
    meta_source: ``"with_metadata"``, ``"without_metadata"``, ``"metadata_missing"`` (the
        with-metadata model given missing metadata) or ``None``.
    prediction_set: conformal prediction set (classes by decreasing probability).
    coverage: the set's target coverage.
    quality: ``blur_score``, ``is_blurry``, ``blur_percentile``, ``percentiles``
        (measure -> percentile in training), ``measures`` and ``warning`` (plain language).
    referral: ``risk`` (or ``None``), ``refer``, ``reasons`` (list), ``threshold``,
        ``entropy``, ``entropy_threshold``, ``disagreement``.
    metadata: the age / sex / site used (after validation).
    warnings: every warning about this image and its metadata.
    heatmap: ``(S, S)`` float32 Grad-CAM in [0, 1] over the network's input crop, or ``None``.
    overlay: ``(S', S', 3)`` uint8 RGB heatmap blended on that crop, or ``None``.
    heatmap_member: ``"model fold k"`` the heatmap was computed on.
    error: why the image could not be predicted (one sentence), else ``None``.
    """

    image: str
    image_id: str
    label: str | None = None
    probs: dict[str, float] = field(default_factory=dict)
    members: dict[str, dict[str, float]] = field(default_factory=dict)
    meta_probs: dict[str, float] | None = None
    meta_source: str | None = None
    prediction_set: tuple[str, ...] = ()
    coverage: float | None = None
    quality: dict[str, Any] = field(default_factory=dict)
    referral: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    heatmap: np.ndarray | None = field(default=None, repr=False, compare=False)
    overlay: np.ndarray | None = field(default=None, repr=False, compare=False)
    heatmap_member: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self, *, arrays: bool = False) -> dict[str, Any]:
        """JSON-ready dict (keys of ``skin-core predict --json``); arrays only when asked."""
        d: dict[str, Any] = {
            "image": self.image, "image_id": self.image_id, "label": self.label,
            "probs": self.probs, "members": self.members, "meta_probs": self.meta_probs,
            "meta_source": self.meta_source, "prediction_set": list(self.prediction_set),
            "coverage": self.coverage, "quality": self.quality, "referral": self.referral,
            "metadata": self.metadata, "warnings": list(self.warnings),
            "heatmap_member": self.heatmap_member, "error": self.error,
        }
        if arrays:
            d["heatmap"] = None if self.heatmap is None else self.heatmap.tolist()
        return d

    def to_row(self, classes: Sequence[str]) -> dict[str, Any]:
        """One flat CSV row (``image, image_id, label, prob_<C>..., meta_prob_<C>..., ...``)."""
        row: dict[str, Any] = {"image": self.image, "image_id": self.image_id,
                               "label": self.label or ""}
        for c, col in zip(classes, prob_columns(classes), strict=True):
            row[col] = _fmt(self.probs.get(c))
        for c in classes:
            row[f"meta_prob_{c}"] = _fmt((self.meta_probs or {}).get(c))
        q, r = self.quality, self.referral
        row.update({
            "meta_source": self.meta_source or "",
            "prediction_set": "|".join(self.prediction_set),
            "set_size": len(self.prediction_set) if self.ok else "",
            "blur_score": _fmt(q.get("blur_score")),
            "is_blurry": "" if q.get("is_blurry") is None else bool(q.get("is_blurry")),
            "blur_percentile": _fmt(q.get("blur_percentile")),
            "risk": _fmt(r.get("risk")),
            "refer": "" if r.get("refer") is None else bool(r.get("refer")),
            "reasons": "|".join(r.get("reasons") or ()),
            "warnings": " ".join(self.warnings),
            "error": self.error or "",
        })
        return row


def csv_columns(classes: Sequence[str]) -> list[str]:
    """Columns of the prediction CSV, in order."""
    return ["image", "image_id", "label", *prob_columns(classes),
            *(f"meta_prob_{c}" for c in classes), "meta_source", "prediction_set", "set_size",
            "blur_score", "is_blurry", "blur_percentile", "risk", "refer", "reasons",
            "warnings", "error"]


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else round(v, 6)
    return v


# --------------------------------------------------------------------------------------------
# metadata


def normalize_metadata(age: Any = None, sex: Any = None, site: Any = None
                       ) -> tuple[dict[str, Any], list[str]]:
    """Validate patient metadata; bad values become missing with a warning.

    Returns
    -------
    (metadata, warnings)
        ``{"age_approx": float | None, "sex": str | None, "anatom_site_general": str | None}``
        and a list of one-sentence warnings.
    """
    warnings: list[str] = []
    age_v: float | None = None
    if age is not None and not (isinstance(age, str) and not age.strip()):
        try:
            a = float(age)
        except (TypeError, ValueError):
            a = float("nan")
            warnings.append(f"Age {age!r} is not a number; it was treated as missing.")
        else:
            if not math.isfinite(a) or not AGE_RANGE[0] <= a <= AGE_RANGE[1]:
                warnings.append(f"Age {age!r} is outside {AGE_RANGE[0]:.0f}-{AGE_RANGE[1]:.0f} "
                                "years; it was treated as missing.")
            else:
                age_v = a
        if age_v is None and not warnings:
            warnings.append(f"Age {age!r} is not a number; it was treated as missing.")
    sex_v = _vocab(sex, SEX_VALUES, _SEX_ALIASES, "Sex", warnings)
    site_v = _vocab(site, SITE_VALUES, _SITE_ALIASES, "Anatomical site", warnings)
    return {AGE: age_v, SEX: sex_v, SITE: site_v}, warnings


def _vocab(value: Any, vocab: tuple[str, ...], aliases: Mapping[str, str], what: str,
           warnings: list[str]) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    v = str(value).strip().lower().replace("_", " ")
    if not v or v in ("unknown", "nan", "none"):
        return None
    v = aliases.get(v, v)
    if v in vocab:
        return v
    warnings.append(f"{what} {value!r} is not one of {', '.join(vocab)}; it was treated as "
                    "unknown.")
    return None


# --------------------------------------------------------------------------------------------
# decoding


@dataclass
class _Prepared:
    name: str
    image_id: str
    inputs: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def _source_name(src: Any, name: str | None) -> tuple[str, str]:
    if name:
        return name, Path(name).stem or name
    if isinstance(src, (str, os.PathLike)):
        return str(src), Path(src).stem
    return "uploaded image", "uploaded_image"


def _size_of(src: Any) -> int | None:
    if isinstance(src, (bytes, bytearray)):
        return len(src)
    if isinstance(src, (str, os.PathLike)):
        try:
            return os.stat(src).st_size
        except OSError:
            return None
    return None


# --------------------------------------------------------------------------------------------
# predictor


class Predictor:
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
        both flips.
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
                 tta: bool = False, max_bytes: int = MAX_UPLOAD_BYTES,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        import torch
        from safetensors.torch import load_file

        from skin_core.models.bundle import Bundle, load_bundle
        from skin_core.models.registry import PreprocessConfig, create_model
        from skin_core.training.engine import resolve_device

        t0 = time.perf_counter()
        self.bundle: Bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        if device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"The 'device' parameter must be 'auto', 'cpu' or 'cuda'; got "
                              f"{device!r}.")
        self.device = "cpu" if resolve_device(device) == "mps" else resolve_device(device)
        self.amp = bool(amp and self.device == "cuda")
        self.tta = bool(tta)
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

    # ---- forward passes -------------------------------------------------------------------

    def _forward(self, batch: list[_Prepared], *, tta: bool, heatmap: bool,
                 folds: dict[tuple[str, int], np.ndarray] | None = None,
                 inputs: Mapping[tuple, Any] | None = None,
                 ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """Per-model ``(B, K)`` probabilities (mean over folds) and optional Grad-CAMs.

        ``folds``, when given, receives every fold model's probabilities. ``inputs``, when
        given, holds the batch's float network inputs per input key (see
        :meth:`_input_buffers`, filled by the decoding threads); otherwise they are made here
        from the items' crops.
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
            if heatmap and i == self._heatmap_index:
                from skin_core.explain import grad_cam

                with torch.autocast("cuda", enabled=self.amp):
                    cams, logits = grad_cam(net, x)
                cams = cams[:b]
            else:
                with torch.inference_mode(), torch.autocast("cuda", enabled=self.amp):
                    logits = net(x)
            p = torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float64)
            if tta:
                p = p.reshape(4, b, -1).mean(axis=0)
            if folds is not None:
                folds[(spec.model, spec.fold)] = p
            sums[spec.model] = sums.get(spec.model, 0.0) + p
            counts[spec.model] = counts.get(spec.model, 0) + 1
        return {m: sums[m] / counts[m] for m in sums}, cams

    # ---- public API -----------------------------------------------------------------------

    def predict(self, image: Any, *, age: Any = None, sex: Any = None, site: Any = None,
                heatmap: bool = False, tta: bool | None = None, name: str | None = None
                ) -> PredictionResult:
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
                                      tta=self.tta if tta is None else tta)[0]

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
                      names: Sequence[str] | None = None) -> list[PredictionResult]:
        """Predict several images in one batch; unreadable ones get ``error`` set.

        ``metadata``: one ``(age, sex, site)`` tuple or mapping per image (or ``None``).
        """
        items = [self.prepare(s, name=names[i] if names else None) for i, s in enumerate(images)]
        meta = list(metadata) if metadata is not None else [None] * len(items)
        return self._predict_prepared(items, meta, heatmap=heatmap,
                                      tta=self.tta if tta is None else tta)

    def fold_probabilities(self, images: Sequence[Any], *, tta: bool = False
                           ) -> dict[tuple[str, int], np.ndarray]:
        """Every fold model's ``(N, K)`` softmax for ``images`` (no TTA by default).

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
        self._forward(items, tta=tta, heatmap=False, folds=folds)
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
        """
        from tqdm.auto import tqdm

        if batch_size < 1 or workers < 1:
            raise ConfigError(f"batch_size and workers must be at least 1; got {batch_size} and "
                              f"{workers}.")
        tta = self.tta if tta is None else tta
        lookup = _metadata_lookup(metadata)
        bar = tqdm(total=total, disable=not progress, unit="img", desc="predict",
                   dynamic_ncols=True)
        it = iter(images)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
        # Bounded prefetch: PREFETCH_BATCHES batches decode while one runs through the
        # models. Each batch owns a set of preallocated input tensors that the decoding threads
        # fill row by row (uint8 crop -> normalised float32 by table lookup, the GIL released),
        # so the main thread neither stacks nor converts; a set is reused once its batch ran.
        inflight: deque[tuple[list[Any], dict[tuple, Any]]] = deque()
        free: list[dict[tuple, Any]] = []
        for key in self._input_keys():
            self._input_lut(key)  # built once, before the decoding threads need it

        def submit_batch() -> None:
            srcs = list(islice(it, batch_size))
            if srcs:
                bufs = free.pop() if free else self._input_buffers(batch_size)
                inflight.append(([pool.submit(self._prepare_row, src, bufs, j)
                                  for j, src in enumerate(srcs)], bufs))

        try:
            for _ in range(PREFETCH_BATCHES):
                submit_batch()
            while inflight:
                futures, bufs = inflight.popleft()
                submit_batch()  # keep the decoders busy while this batch runs
                items = [f.result() for f in futures]
                meta = [lookup(it_.image_id) for it_ in items]
                results = self._predict_prepared(items, meta, heatmap=heatmap, tta=tta,
                                                 buffers=bufs)
                free.append(bufs)
                for r in results:
                    bar.update(1)
                    yield r
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()

    def _input_keys(self) -> list[tuple]:
        """Distinct network inputs ``(size, crop, mean, std)``, in member order."""
        keys = [(p.input_size, p.crop, tuple(p.mean), tuple(p.std)) for _, p, _ in self._members]
        return list(dict.fromkeys(keys))

    def _input_buffers(self, rows: int) -> dict[tuple, tuple[Any, np.ndarray]]:
        """Per input key, a preallocated ``(rows, 3, S, S)`` float32 tensor with the strides of
        :func:`~skin_core.training.augment.to_float`'s output (a permuted ``(B, S, S, 3)``
        block, so the networks see the memory layout of training's evaluation) and the
        ``(rows, S, S, 3)`` ndarray view of the same memory that the decoding threads fill."""
        import torch

        pin = self.device == "cuda"
        out = {}
        for key in self._input_keys():
            block = torch.empty((rows, key[0], key[0], 3), dtype=torch.float32, pin_memory=pin)
            out[key] = (block.permute(0, 3, 1, 2), block.numpy())
        return out

    def _input_lut(self, key: tuple) -> np.ndarray:
        """``(3, 256)`` float32: :func:`~skin_core.training.augment.to_float` of every uint8
        value in each channel for input ``key``. ``to_float`` is elementwise, so looking a
        crop's values up here gives its output bit for bit (tested) without running torch
        operators (and their OpenMP thread teams) in the decoding threads."""
        luts = self.__dict__.setdefault("_luts", {})
        if key not in luts:
            import torch

            from skin_core.training.augment import to_float

            values = torch.arange(256, dtype=torch.uint8).view(1, 1, 256, 1).expand(1, 1, 256, 3)
            luts[key] = to_float(values.contiguous(), key[2], key[3])[0, :, 0, :].numpy().copy()
        return luts[key]

    def _prepare_row(self, src: Any, buffers: Mapping[tuple, tuple[Any, np.ndarray]],
                     row: int) -> _Prepared:
        """:meth:`prepare`, then the image's normalised float inputs into row ``row`` of
        ``buffers`` (runs in a decoding thread; NumPy releases the GIL)."""
        item = self.prepare(src)
        if item.error is None:
            for key, (_, block) in buffers.items():
                lut, crop, dst = self._input_lut(key), item.inputs[(key[0], key[1])], block[row]
                for c in range(3):
                    np.take(lut[c], crop[:, :, c], out=dst[:, :, c], mode="clip")
        return item

    # ---- assembly -------------------------------------------------------------------------

    def _predict_prepared(self, items: list[_Prepared], meta: Sequence[Any], *,
                          heatmap: bool, tta: bool,
                          buffers: Mapping[tuple, tuple[Any, np.ndarray]] | None = None,
                          ) -> list[PredictionResult]:
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
        forward = (self._forward(batch, tta=tta, heatmap=heatmap, inputs=inputs) if batch
                   else ({}, None))
        return self._assemble(items, meta, *forward)

    def _assemble(self, items: list[_Prepared], meta: Sequence[Any],
                  per_model: dict[str, np.ndarray], cams: np.ndarray | None
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
            if quality.get("warning") and quality.get("low_quality"):
                w.append(quality["warning"])
            heat = overlay = None
            if cams is not None:
                from skin_core.explain import overlay_heatmap

                spec_pre = self._members[self._heatmap_index][1]
                heat = cams[j]
                crop = it.inputs[(spec_pre.input_size, spec_pre.crop)]
                overlay = overlay_heatmap(crop, heat, size=max(224, spec_pre.input_size))
            out[i] = PredictionResult(
                image=it.name, image_id=it.image_id, label=label, probs=probs, members=members,
                meta_probs=mp, meta_source=meta_source[j], prediction_set=tuple(pset),
                coverage=coverage, quality=quality, referral=referral, metadata=metas[j],
                warnings=tuple(w), heatmap=heat, overlay=overlay,
                heatmap_member=f"{hm_spec.model} fold {hm_spec.fold}" if cams is not None
                else None,
            )
        return out  # type: ignore[return-value]

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


def _normalize_any(m: Any) -> tuple[dict[str, Any], list[str]]:
    if m is None:
        return normalize_metadata()
    if isinstance(m, Mapping):
        return normalize_metadata(m.get(AGE, m.get("age")), m.get(SEX),
                                  m.get(SITE, m.get("site")))
    age, sex, site = m
    return normalize_metadata(age, sex, site)


def _metadata_lookup(metadata: Any) -> Any:
    if metadata is None:
        return lambda _id: None
    if hasattr(metadata, "columns"):  # DataFrame
        df = metadata
        if IMAGE_ID not in df.columns:
            raise ConfigError("The metadata table needs an image_id column (plus age_approx, "
                              "sex, anatom_site_general).")
        recs = {str(r[IMAGE_ID]): {c: (None if _isna(r.get(c)) else r.get(c))
                                   for c in (AGE, SEX, SITE)}
                for r in df.to_dict("records")}
        return lambda image_id: recs.get(image_id)
    if isinstance(metadata, Mapping):
        return lambda image_id: metadata.get(image_id)
    return lambda _id: metadata


def _isna(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def write_predictions_csv(results: Iterable[PredictionResult], path: str | os.PathLike[str],
                          classes: Sequence[str]) -> dict[str, Any]:
    """Stream results into a CSV (temporary name, renamed when complete).

    Returns
    -------
    dict with ``n``, ``n_errors``, ``first_error`` and ``path``.
    """
    from skin_core.io import atomic_path

    n = n_err = 0
    first_error = None
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=csv_columns(classes))
            writer.writeheader()
            for r in results:
                writer.writerow(r.to_row(classes))
                n += 1
                if r.error is not None:
                    n_err += 1
                    first_error = first_error or r.error
    return {"n": n, "n_errors": n_err, "first_error": first_error, "path": str(path)}


__all__ = [
    "AGE_RANGE",
    "MAX_UPLOAD_BYTES",
    "MIN_SIDE",
    "PredictionResult",
    "Predictor",
    "csv_columns",
    "normalize_metadata",
    "write_predictions_csv",
]
