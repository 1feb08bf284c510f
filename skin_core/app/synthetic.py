"""The synthetic-data notices: what every page says when its source is the demo data.

Owns :data:`SYNTHETIC_BUNDLE_NOTICE`, :data:`SYNTHETIC_STUDY_NOTICE` and
:func:`synthetic_notice` (which one, if any, a page shows); the Predict page, the Difficult
images and Experts pages, the prediction report and ``skin-core predict`` use them. Whether a
bundle or study is synthetic is decided by :mod:`skin_core.workspace`. Never imports Streamlit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

#: Said above every diagnosis of a bundle trained on synthetic images.
SYNTHETIC_BUNDLE_NOTICE = (
    "This model was trained on synthetic demo images, not on real patients: its diagnoses "
    "mean nothing for a real lesion. Use it only to try the app."
)
#: Said above the labels, predictions and statistics of a study of synthetic images.
SYNTHETIC_STUDY_NOTICE = (
    "This study's images are synthetic demo images drawn by a program, not real patients: its "
    "labels, model answers and statistics only demonstrate the method."
)


def synthetic_notice(*, bundle_manifest: Mapping[str, Any] | None = None,
                     study: str | os.PathLike[str] | None = None) -> str | None:
    """The sentence a page shows above its diagnoses when their source is synthetic.

    Parameters
    ----------
    bundle_manifest:
        The active bundle's ``bundle.json`` (``Bundle.manifest`` or
        :func:`skin_core.workspace.read_manifest`): synthetic by its ``provenance`` record,
        or for older bundles by ``generation_truth.csv`` in its training dataset's folder.
    study:
        The active study folder: synthetic when its dataset holds ``generation_truth.csv``.

    Returns
    -------
    :data:`SYNTHETIC_BUNDLE_NOTICE` for a synthetic bundle, else
    :data:`SYNTHETIC_STUDY_NOTICE` for a synthetic study, else ``None`` (real data, or
    nothing given).
    """
    from skin_core.workspace import bundle_is_synthetic, study_is_synthetic

    if bundle_manifest is not None and bundle_is_synthetic(dict(bundle_manifest)):
        return SYNTHETIC_BUNDLE_NOTICE
    if study is not None and study_is_synthetic(study):
        return SYNTHETIC_STUDY_NOTICE
    return None
