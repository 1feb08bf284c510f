"""Shared Streamlit helpers of the pages: cached loaders (one Predictor per process)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from skin_core.workspace import active_selection, current_workspace

DISCLAIMER = (
    "For research use only. Not a medical device; not for diagnosis or treatment decisions."
)


def active():
    """(workspace, active selection) read fresh on every run (a file on disk)."""
    ws = current_workspace()
    return ws, active_selection(ws)


@st.cache_resource(show_spinner="Loading the model bundle…", max_entries=2)
def get_predictor(bundle: str, stamp: float):
    """(Predictor, load time stamp): loaded once per process (``stamp``: bundle.json mtime).

    On the GPU when there is one (the bundle's ensemble with AMP), the CPU otherwise; one
    warm-up prediction here pays the networks' first-call costs during loading, not after
    the first upload.
    """
    from skin_core.predict import Predictor

    predictor = Predictor(bundle)
    predictor.warm_up()
    return predictor, time.strftime("%H:%M:%S")


def predictor_for(bundle: Path):
    """The active bundle's Predictor and when it was loaded (cached across pages)."""
    return get_predictor(str(bundle), (bundle / "bundle.json").stat().st_mtime)


def _stamp(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


@st.cache_data(show_spinner="Reading the study…", max_entries=4)
def _gallery(study: str, stamp: float) -> pd.DataFrame:
    from skin_core.app_support import load_gallery

    return load_gallery(study)


def gallery_for(study: Path) -> pd.DataFrame:
    return _gallery(str(study), _stamp(study / "difficulty" / "difficulty.csv"))


@st.cache_data(show_spinner=False, max_entries=5000)
def thumbnail_uri(path: str) -> str:
    """A small in-memory JPEG of the image as a data URI (cached per path)."""
    from skin_core.app_support import data_uri, thumbnail_jpeg

    return data_uri(thumbnail_jpeg(path))


def no_study_message(what: str) -> None:
    st.warning(f"No study is active, so there is no {what} to show. Build the demo with "
               "`skin-core demo` (or launch a run on the Training page), then choose it on the "
               "Overview page.", icon=":material/warning:")
