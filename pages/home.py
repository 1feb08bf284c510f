"""Overview: what the app does, the active dataset and its summary."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from skin_core.errors import SkinCoreError
from skin_core.workspace import current_workspace


@st.cache_data(show_spinner="Reading the dataset…")
def dataset_summary(spec: str) -> dict:
    from skin_core.data.tables import load_dataset

    return load_dataset(spec).summary()


st.title("Skin Disease Expert")
st.markdown(
    "Dermoscopic lesion classification that does not stop at *the model says X*: an ensemble "
    "of CNNs trained with lesion-grouped cross-validation, the images that **every** model gets "
    "wrong and whether that is chance, their image quality, experts versus CNNs, and a "
    "meta-classifier with patient metadata."
)
st.info(
    "For research use only. Not a medical device; not for diagnosis or treatment decisions.",
    icon=":material/info:",
)

ws = current_workspace()
spec = st.text_input("Dataset", value=ws.demo_spec,
                     help="isic2019:DIR, ham10000:DIR, folder:DIR or csv:FILE")
if spec == ws.demo_spec and not ws.demo_ready():
    st.warning(f"The demo dataset is not built yet. Run `skin-core demo-data --out {ws.demo_data}` "
               "(or `./run.sh`, which builds it).")
    st.stop()
try:
    summary = dataset_summary(spec)
except SkinCoreError as exc:
    st.error(str(exc))
    st.stop()

c1, c2, c3 = st.columns(3)
c1.metric("Images", f"{summary['n_images']:,}")
c2.metric("Lesions", f"{summary['n_lesions']:,}")
c3.metric("Classes", len(summary["classes"]))

counts = pd.DataFrame(
    {"class": list(summary["classes"]), "images": list(summary["classes"].values())}
)
st.plotly_chart(px.bar(counts, x="class", y="images", title="Images per class"),
                width="stretch")
missing = pd.DataFrame({"column": list(summary["missing"]),
                        "missing": list(summary["missing"].values())})
st.subheader("Missing metadata (kept missing, never imputed)")
st.dataframe(missing, hide_index=True)
