"""Skin Disease Expert — Streamlit entry point: page config, disclaimer, navigation."""

from __future__ import annotations

import streamlit as st

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
]
nav = st.navigation(pages)
st.sidebar.caption(DISCLAIMER)
nav.run()
