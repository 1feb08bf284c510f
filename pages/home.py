"""Overview: what the app does, the active study and bundle (chooser), the dataset summary."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from pages._ui import DISCLAIMER, active, synthetic_banner
from skin_core.errors import SkinCoreError
from skin_core.workspace import list_bundles, list_studies, read_manifest, set_active


@st.cache_data(show_spinner="Reading the dataset…")
def dataset_summary(spec: str) -> dict:
    from skin_core.data.tables import load_dataset

    return load_dataset(spec, check_images=False).summary()


ws, sel = active()  # first: access is checked before anything is shown

st.title("Skin Disease Expert")
st.markdown(
    "Dermoscopic lesion classification that does not stop at *the model says X*: an ensemble "
    "of CNNs trained with lesion-grouped cross-validation, the images that **every** model gets "
    "wrong and whether that is chance, their image quality, experts versus CNNs, and a "
    "meta-classifier with patient metadata."
)
st.info(DISCLAIMER, icon=":material/info:")

studies, bundles = list_studies(ws), list_bundles(ws)
synthetic_banner(bundle_manifest=read_manifest(sel.bundle) if sel.bundle else None,
                 study=sel.study)
st.subheader("Active study and model bundle")
if not studies and not bundles:
    st.caption(f"No study in {ws.studies} and no bundle in {ws.models} yet: build the demo with "
               "`skin-core demo`, or launch a run on the Training page.")
else:
    with st.form("active"):
        c1, c2 = st.columns(2)
        s_paths = [s.path for s in studies]
        b_paths = [b.path for b in bundles]
        study = c1.selectbox("Study", s_paths, format_func=lambda p: p.name,
                             index=s_paths.index(sel.study) if sel.study in s_paths else 0,
                             help="Study folders under studies/ (skin-core study)")
        bundle = c2.selectbox("Model bundle", b_paths,
                              format_func=lambda p: f"{p.parent.name}/{p.name}",
                              index=b_paths.index(sel.bundle) if sel.bundle in b_paths else 0,
                              help="Bundles under models/ and inside studies")
        if st.form_submit_button("Make active", type="primary"):
            try:
                sel = set_active(ws, study=study, bundle=bundle)
                st.success("Active study and bundle saved; every page now uses them.")
            except SkinCoreError as exc:
                st.error(str(exc))
    b = next((b for b in bundles if b.path == sel.bundle), None)
    if b is not None:
        st.caption(f"Bundle **{b.name}**: {len(b.models)} model(s) ({', '.join(b.models)}), "
                   f"classes {' '.join(b.classes)}, created {b.created or 'unknown'}.")

st.subheader("Dataset")
study_spec = next((s.dataset for s in studies if s.path == sel.study and s.dataset), None)
default_spec = study_spec or ws.demo_spec
spec = st.text_input("Dataset", value=default_spec,
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
left, right = st.columns([3, 2])
left.plotly_chart(px.bar(counts, x="class", y="images", title="Images per class",
                         color_discrete_sequence=["#2f6f8f"]), width="stretch")
missing = pd.DataFrame({"column": list(summary["missing"]),
                        "missing": list(summary["missing"].values())})
right.markdown("**Missing metadata** (kept missing, never imputed)")
right.dataframe(missing, hide_index=True)
