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
     image wrong, with ``refer`` at its threshold (refitted on the calibration split with the
     served pipeline by ``skin-core calibrate``, for 80 % sensitivity there);
   - ``low_quality``: ``is_blurry`` or a blur score below the 5th percentile of training;
   - ``model_disagreement``: the models' top classes differ;
   - ``high_entropy``: ensemble entropy above the 90th percentile of the served ensemble's on
     the calibration split (``bundle.json`` ``referral.entropy_threshold``);
7. with a retrieval index in the bundle (``skin-core index``, :mod:`skin_core.retrieval`):
   ``ood``, how unlike the training images the image is (members' features and image
   statistics, thresholds set on the calibration split); when flagged, the result says so
   first and refers (``out_of_distribution``), whatever the classes say; and, when asked
   (``similar=k``), the ``k`` most similar training images, one per lesion;
8. optional Grad-CAM heatmap (:mod:`skin_core.explain`) of the top class on the fold model
   with the best OOF balanced accuracy, reusing that model's forward pass.

Metadata: an age that is not a number or outside 0-120, and a sex or site outside the
vocabulary, give a warning in the result and are treated as missing / unknown.

Batch prediction (:meth:`Predictor.iter_predict`) decodes in a thread pool ahead of the
forward passes (overlap: a bounded prefetch of :data:`PREFETCH_BATCHES` batches whose decoding
threads also write the normalised float inputs into preallocated batch tensors), runs models on
batches, and yields one result per input in order; an unreadable image becomes a result with
``error`` set and never stops the others.

:meth:`Predictor.forward_batches` gives the forward passes alone and :meth:`Predictor.assemble`
the rest of the pipeline on them: :mod:`skin_core.served` fits the served thresholds that way and
``skin-core evaluate`` measures variants without running the networks twice.

Layout: :mod:`.predictor` (the class), :mod:`.inputs` (decoding and batch buffers),
:mod:`.assembly` (results from the networks' outputs), :mod:`.results` (the record and CSV),
:mod:`.metadata` (validation of age, sex and site).

The meta step runs the meta package's NumPy fast path
(:meth:`~skin_core.meta.io.MetaPredictor.predict_arrays`: the numbers of its DataFrame path, to
1e-12, without building DataFrames), so a single image costs little more than the members'
forward passes (``docs/performance.md``, Prediction).
"""

from __future__ import annotations

from skin_core.predict.assembly import OOD_WARNING, _percentile_tables
from skin_core.predict.inputs import MAX_UPLOAD_BYTES, MIN_SIDE, PREFETCH_BATCHES, ForwardBatch
from skin_core.predict.metadata import (
    AGE_RANGE,
    _metadata_lookup,
    _normalize_any,
    normalize_metadata,
)
from skin_core.predict.predictor import Predictor
from skin_core.predict.results import PredictionResult, csv_columns, write_predictions_csv

__all__ = [
    "AGE_RANGE",
    "MAX_UPLOAD_BYTES",
    "MIN_SIDE",
    "OOD_WARNING",
    "PREFETCH_BATCHES",
    "ForwardBatch",
    "PredictionResult",
    "Predictor",
    "_metadata_lookup",
    "_normalize_any",
    "_percentile_tables",
    "csv_columns",
    "normalize_metadata",
    "write_predictions_csv",
]
