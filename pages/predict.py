"""Predict: upload lesion images (+ metadata): diagnosis, heatmap, quality, referral, similar
cases, what to do; several images (or a zip) give a triage table first.

Uploaded images are processed in memory and never written to disk.
"""

from __future__ import annotations

import hashlib

import streamlit as st

from pages._ui import active, predictor_for, synthetic_banner
from pages.views.predict_view import cost_table_editor, show_single
from skin_core.app.synthetic import synthetic_notice
from skin_core.constants import SITE_VALUES
from skin_core.errors import SkinCoreError
from skin_core.triage import (
    expand_uploads,
    iter_predict_uploads,
    triage_counts,
    triage_csv,
    triage_table,
)

ws, sel = active()  # first: access is checked before anything is shown

st.title("Predict")
st.caption("Upload one or more dermoscopic images (or a zip of them). Images are analysed in "
           "memory and are not stored.")

if sel.bundle is None:
    st.warning("No model bundle is active. Build the demo with `skin-core demo` (or train on "
               "the Training page), then choose the bundle on the Overview page.",
               icon=":material/warning:")
    st.stop()
try:
    predictor, loaded_at = predictor_for(sel.bundle)
except SkinCoreError as exc:
    st.error(str(exc))
    st.stop()
classes = list(predictor.classes)
notice = synthetic_notice(bundle_manifest=predictor.bundle.manifest)
synthetic_banner(bundle_manifest=predictor.bundle.manifest)
dataset_spec = predictor.bundle.provenance.get("dataset")

with st.container(border=True):
    c1, c2, c3 = st.columns(3)
    age = c1.number_input("Age (years, optional)", min_value=0, max_value=120, value=None,
                          step=5)
    sex = c2.selectbox("Sex (optional)", ["male", "female"], index=None,
                       placeholder="unknown")
    site = c3.selectbox("Anatomical site (optional)", list(SITE_VALUES), index=None,
                        placeholder="unknown")
    uploads = st.file_uploader("Lesion images", type=["jpg", "jpeg", "png", "bmp", "tif",
                                                      "tiff", "webp", "zip"],
                               accept_multiple_files=True)
    if st.toggle("Use the camera"):
        shot = st.camera_input("Take a photo of the lesion")
        if shot is not None:
            uploads = [*(uploads or []), shot]
cost_table_editor(classes)

st.caption(f"Bundle {sel.bundle.name} loaded at {loaded_at} ({predictor.load_seconds:.1f} s), "
           "once per app process.")
if not uploads:
    st.info(f"Bundle **{sel.bundle.name}**: {len(predictor.models)} model(s), classes "
            f"{' '.join(classes)}. Upload an image to start.", icon=":material/upload:")
    st.stop()

view = {"age": age, "sex": sex, "site": site, "bundle_key": str(sel.bundle), "notice": notice,
        "dataset_spec": dataset_spec}
if len(uploads) == 1 and not uploads[0].name.lower().endswith(".zip"):
    show_single(predictor, uploads[0].name, uploads[0].getvalue(), **view)
    st.stop()

try:
    batch = expand_uploads(uploads)
except SkinCoreError as exc:
    st.error(str(exc))
    st.stop()
if batch.skipped:
    with st.expander(f"{len(batch.skipped)} file(s) skipped"):
        st.dataframe(batch.skipped_frame(), hide_index=True)
digest = hashlib.sha256(repr((age, sex, site, str(sel.bundle))).encode())
for _, data in batch.items:
    digest.update(hashlib.sha256(data).digest())
if st.session_state.get("triage_key") != digest.hexdigest():
    bar, results = st.progress(0.0, text="Analysing…"), []
    for i, r in enumerate(iter_predict_uploads(predictor, batch.items,
                                               metadata=(age, sex, site))):
        results.append(r)
        bar.progress((i + 1) / len(batch), text=f"Analysed {i + 1} of {len(batch)} images")
    bar.empty()
    st.session_state.update(triage_key=digest.hexdigest(), triage_results=results,
                            triage_items=batch.items)
results, items = st.session_state["triage_results"], st.session_state["triage_items"]
table = st.session_state.get("cost_table")
frame = triage_table(results, table=table, management=table is not None)
n = triage_counts(frame)
if notice:
    st.error(f"**{notice}**", icon=":material/science:")
st.subheader(f"Triage of {len(frame)} images")
st.caption("Most urgent first: out of distribution, unreadable, referred, routine; within each "
           "by the calibrated probability of a malignant class, then referral risk. "
           f"{n['out of distribution']} out of distribution, {n['unreadable']} unreadable, "
           f"{n['refer']} referred. Select a row to open it.")
event = st.dataframe(
    frame, hide_index=True, on_select="rerun", selection_mode="single-row", key="triage_table",
    column_config={
        "probability": st.column_config.ProgressColumn("probability", format="%.2f",
                                                       min_value=0.0, max_value=1.0),
        "malignant_probability": st.column_config.ProgressColumn(
            "P(malignant)", format="%.2f", min_value=0.0, max_value=1.0),
        "blur_score": st.column_config.NumberColumn("blur score", format="%.2f"),
        "risk": st.column_config.NumberColumn("referral risk", format="%.2f")})
st.download_button("Download triage (CSV)", triage_csv(frame), file_name="triage.csv",
                   mime="text/csv")
for r in results:  # each unreadable image, with what to do about it
    if r.error:
        st.error(str(r.error), icon=":material/error:")
if event.selection.rows:
    name, data = items[int(frame.index[event.selection.rows[0]])]
    show_single(predictor, name, data, **view)
