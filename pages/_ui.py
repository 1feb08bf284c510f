"""Shared Streamlit helpers of the pages: access, the synthetic-data banner, cached loaders."""

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
    """(workspace, active selection) read fresh on every run (a file on disk).

    Also enforces access (:func:`require_access`): app.py does so before any page runs, and
    this covers a page script run on its own (Streamlit's folder mode on a first request to
    ``/page``, see docs/app.md).
    """
    require_access()
    ws = current_workspace()
    return ws, active_selection(ws)


def _secrets() -> dict:
    """``st.secrets`` as a plain dict; ``{}`` without a secrets.toml."""
    try:
        return st.secrets.to_dict()
    except Exception:  # noqa: BLE001 - no secrets file, or one Streamlit cannot parse
        return {}


def authlib_installed() -> bool:
    """Whether Authlib, which ``st.login`` needs, can be imported."""
    import importlib.util

    return importlib.util.find_spec("authlib") is not None


def require_access(*, user_menu: bool = False) -> None:
    """Serve only as :func:`skin_core.access.access_decision` allows; else say why and stop.

    Bound to localhost: nothing to do. Bound elsewhere without a configured login: the
    refusal sentence and nothing else. With a login configured: a login button per provider
    until ``st.user.is_logged_in``; then, with ``user_menu`` (app.py, once per run), the user
    and a logout button in the sidebar.
    """
    from skin_core.access import access_decision, is_loopback

    address = st.get_option("server.address")
    if is_loopback(address):
        return  # this machine only: no login (secrets are not even read)
    decision = access_decision(address, _secrets(), authlib_available=authlib_installed())
    if not decision.allowed:
        st.error(decision.reason, icon=":material/lock:")
        st.stop()
    if not decision.login_required:
        return
    if not st.user.get("is_logged_in"):  # missing (e.g. no auth section parsed): not in
        st.title("Skin Disease Expert")
        st.info("Log in to use the app: it serves patients' images and diagnoses.",
                icon=":material/lock:")
        for provider in decision.providers:
            st.button("Log in" + (f" with {provider}" if provider else ""), type="primary",
                      on_click=st.login, args=(provider,) if provider else (),
                      key=f"login-{provider}")
        st.stop()
    if not user_menu:
        return
    with st.sidebar:
        st.caption(f"Logged in as **{st.user.get('email') or st.user.get('name') or 'user'}**")
        st.button("Log out", on_click=st.logout, key="logout")


def synthetic_banner(*, bundle_manifest=None, study=None) -> bool:
    """Say in red, above what follows, that the diagnoses come from synthetic demo data.

    Returns whether it did (the decision is :func:`skin_core.app.synthetic.synthetic_notice`).
    """
    from skin_core.app.synthetic import synthetic_notice

    notice = synthetic_notice(bundle_manifest=bundle_manifest, study=study)
    if notice:
        st.error(f"**{notice}**", icon=":material/science:")
    return notice is not None


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
    from skin_core.app.difficult import load_gallery

    return load_gallery(study)


def gallery_for(study: Path) -> pd.DataFrame:
    return _gallery(str(study), _stamp(study / "difficulty" / "difficulty.csv"))


@st.cache_data(show_spinner=False, max_entries=5000)
def thumbnail_uri(path: str) -> str:
    """A small in-memory JPEG of the image as a data URI (cached per path)."""
    from skin_core.app.thumbnails import data_uri, thumbnail_jpeg

    return data_uri(thumbnail_jpeg(path))


def no_study_message(what: str) -> None:
    st.warning(f"No study is active, so there is no {what} to show. Build the demo with "
               "`skin-core demo` (or launch a run on the Training page), then choose it on the "
               "Overview page.", icon=":material/warning:")
