"""Skin Disease Expert — Streamlit entry point: page config, access, disclaimer, navigation."""

from __future__ import annotations

import streamlit as st

from pages._ui import require_access
from skin_core.workspace import active_selection, current_workspace

st.set_page_config(
    page_title="Skin Disease Expert",
    page_icon=":material/dermatology:",
    layout="wide",
)

DISCLAIMER = (
    "**For research use only.** Skin Disease Expert is not a medical device and must not be "
    "used for diagnosis or treatment decisions."
)

pages = [
    st.Page("pages/home.py", title="Overview", icon=":material/home:", default=True),
    st.Page("pages/predict.py", title="Predict", icon=":material/image_search:"),
    st.Page("pages/difficult.py", title="Difficult images", icon=":material/grid_view:"),
    st.Page("pages/experts.py", title="Experts vs CNN", icon=":material/groups:"),
    st.Page("pages/training.py", title="Training", icon=":material/model_training:"),
    st.Page("pages/validation.py", title="Validation", icon=":material/fact_check:"),
]
nav = st.navigation(pages)
require_access(user_menu=True)  # localhost: open; elsewhere: login required, or refusal
active = active_selection(current_workspace())
with st.sidebar:
    st.caption(
        f"Study: **{active.study.name if active.study else 'none'}** · "
        f"Bundle: **{active.bundle.name if active.bundle else 'none'}**"
    )
    st.caption(DISCLAIMER)
nav.run()
