"""Skin Disease Expert: the study engine behind the app.

Dermoscopic lesion classification with CNN ensembles trained by lesion-grouped K-fold
cross-validation, the images that every model gets wrong, their significance and image
quality, reader studies, and a metadata meta-classifier. See ``DESIGN.md`` for the layout.

This package never imports :mod:`streamlit`; the app (``app.py``, ``pages/``) sits on top.
"""

from __future__ import annotations

__version__ = "0.1.0"

from skin_core.errors import SkinCoreError

__all__ = ["SkinCoreError", "__version__"]
