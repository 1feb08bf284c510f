"""Heatmaps that show where a CNN looked, on the whole photo, and how well they find lesions.

* :mod:`._cam`: class activation maps of timm CNNs (Grad-CAM, Grad-CAM++, HiResCAM,
  LayerCAM) on any stage, for one model (:func:`class_activation_map`) or the mean over
  several, e.g. every fold model (:func:`ensemble_cam`). The default (:data:`DEFAULT_METHOD`
  on :data:`DEFAULT_LAYER`) was chosen on lesion masks (``docs/heatmaps.md``);
  :func:`grad_cam` is the classic last-layer Grad-CAM.
* :mod:`._photo`: the map put back in the photo's own geometry (:func:`cam_to_photo`) and drawn
  on the whole photo, semi-transparent with a contour (:func:`heatmap_on_photo`).
* :mod:`._scores`: pointing game and IoU against lesion masks, with the centre-point baseline
  (:func:`localisation_scores`).

Example
-------
>>> cams, logits = class_activation_map(net, x)                       # doctest: +SKIP
>>> shown = heatmap_on_photo(rgb, cams[0])                            # doctest: +SKIP
>>> localisation_scores([shown.heat], [mask])["pointing_game"]        # doctest: +SKIP
"""

from __future__ import annotations

from skin_core.explain._cam import (
    CAM_METHODS,
    DEFAULT_LAYER,
    DEFAULT_METHOD,
    class_activation_map,
    ensemble_cam,
    grad_cam,
    resolve_layers,
)
from skin_core.explain._photo import (
    DISPLAY_SIDE,
    PhotoHeatmap,
    blend_heatmap,
    cam_to_photo,
    crop_box,
    heatmap_on_photo,
    overlay_heatmap,
)
from skin_core.explain._scores import (
    centre_map,
    localisation_per_image,
    localisation_scores,
)

__all__ = [
    "CAM_METHODS",
    "DEFAULT_LAYER",
    "DEFAULT_METHOD",
    "DISPLAY_SIDE",
    "PhotoHeatmap",
    "blend_heatmap",
    "cam_to_photo",
    "centre_map",
    "class_activation_map",
    "crop_box",
    "ensemble_cam",
    "grad_cam",
    "heatmap_on_photo",
    "localisation_per_image",
    "localisation_scores",
    "overlay_heatmap",
    "resolve_layers",
]
