"""Predict: upload lesion images (+ metadata): diagnosis, heatmap, quality and referral.

Uploaded images are processed in memory and never written to disk.
"""

from __future__ import annotations

import hashlib

import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from pages._ui import DISCLAIMER, active, predictor_for
from skin_core.app_support import (
    member_probability_frame,
    meta_comparison,
    predict_with_and_without,
    reference_curve,
    referral_text,
    result_json,
    result_report_html,
)
from skin_core.constants import SITE_VALUES
from skin_core.errors import SkinCoreError

st.title("Predict")
st.caption("Upload one or more dermoscopic images. Images are analysed in memory and are not "
           "stored.")

ws, sel = active()
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

with st.container(border=True):
    c1, c2, c3 = st.columns(3)
    age = c1.number_input("Age (years, optional)", min_value=0, max_value=120, value=None,
                          step=5)
    sex = c2.selectbox("Sex (optional)", ["male", "female"], index=None,
                       placeholder="unknown")
    site = c3.selectbox("Anatomical site (optional)", list(SITE_VALUES), index=None,
                        placeholder="unknown")
    uploads = st.file_uploader("Lesion images", type=["jpg", "jpeg", "png", "bmp", "tif",
                                                      "tiff", "webp"],
                               accept_multiple_files=True)
    if st.toggle("Use the camera"):
        shot = st.camera_input("Take a photo of the lesion")
        if shot is not None:
            uploads = [*(uploads or []), shot]

st.caption(f"Bundle {sel.bundle.name} loaded at {loaded_at} ({predictor.load_seconds:.1f} s), "
           "once per app process.")
if not uploads:
    st.info(f"Bundle **{sel.bundle.name}**: {len(predictor.models)} model(s), classes "
            f"{' '.join(classes)}. Upload an image to start.", icon=":material/upload:")
    st.stop()

cache = st.session_state.setdefault("predictions", {})
for up in uploads:
    data = up.getvalue()
    key = (hashlib.sha256(data).hexdigest(), age, sex, site, str(sel.bundle))
    st.divider()
    st.subheader(up.name)
    if key not in cache:
        try:
            with st.spinner("Analysing…"):
                cache[key] = predict_with_and_without(predictor, data, name=up.name, age=age,
                                                      sex=sex, site=site)
        except SkinCoreError as exc:
            st.error(str(exc), icon=":material/error:")
            continue
        if len(cache) > 32:
            cache.pop(next(iter(cache)))
    result, without = cache[key]
    probs = result.meta_probs or result.probs
    ref = result.referral

    m = st.columns(4)
    m[0].metric("Top diagnosis", result.label,
                help="Calibrated meta-classifier when the bundle has one, else the ensemble")
    m[1].metric("Calibrated probability", f"{probs[result.label]:.0%}")
    m[2].metric(f"Prediction set ({result.coverage or 0:.0%} coverage)",
                ", ".join(result.prediction_set))
    m[3].metric("Referral risk", "–" if ref.get("risk") is None else f"{ref['risk']:.0%}")
    if ref.get("refer"):
        st.error("**Refer for specialist review.** "
                 + " ".join(f"• {t}." for t in referral_text(ref)), icon=":material/emergency:")
    else:
        st.success("No referral reason found.", icon=":material/check_circle:")

    c_img, c_heat, c_bars = st.columns([1, 1, 2])
    c_img.image(data, caption="Original", width="stretch")
    if result.overlay is not None:
        c_heat.image(result.overlay, caption=f"Grad-CAM heatmap ({result.heatmap_member})",
                     width="stretch")
    bars = member_probability_frame(result, classes)
    fig = px.bar(bars, x="class", y="probability", color="source", barmode="group",
                 title="Probabilities per architecture, ensemble and meta-classifier",
                 category_orders={"class": classes})
    fig.update_yaxes(range=[0, 1])
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      legend={"orientation": "h", "y": -0.2})
    c_bars.plotly_chart(fig, width="stretch", key=f"bars-{key[0]}")

    st.markdown("**Meta-classifier with and without metadata**")
    st.dataframe(meta_comparison(result, without), hide_index=True,
                 column_config={"probability": st.column_config.NumberColumn(format="%.3f")})

    q = result.quality
    with st.container(border=True):
        st.markdown("**Image quality**")
        qc = st.columns([1, 1, 3])
        qc[0].metric("Blur score", f"{q['blur_score']:.2f}",
                     help="0 = very blurry, 1 = sharp; below 0.5 is called blurry")
        pct = q.get("blur_percentile")
        qc[1].metric("Sharper than", "–" if pct is None else f"{pct:.0f}%",
                     help="Share of the training images this image is sharper than")
        curve = reference_curve(predictor.bundle.quality_reference)
        if not curve.empty:
            g = go.Figure(go.Scatter(x=curve["value"], y=curve["percentile"], mode="lines",
                                     name="training images", line={"color": "#2f6f8f"}))
            g.add_vline(x=q["blur_score"], line={"color": "#c0392b", "dash": "dash"},
                        annotation_text="this image")
            g.update_layout(height=220, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                            title="Blur score against the training distribution (CDF)",
                            xaxis_title="blur score", yaxis_title="percentile")
            qc[2].plotly_chart(g, width="stretch", key=f"q-{key[0]}")
        (st.warning if q.get("low_quality") else st.caption)(q["warning"])
    for w in result.warnings:
        if w != q.get("warning"):
            st.warning(w)

    d1, d2 = st.columns(2)
    d1.download_button("Download result (JSON)", result_json(result, without),
                       file_name=f"{result.image_id}.json", mime="application/json",
                       key=f"json-{key[0]}")
    from skin_core.data.images import read_image

    report = result_report_html(result, original=read_image(data, reduce_to=(480, 480)),
                                without=without, disclaimer=DISCLAIMER)
    d2.download_button("Download one-page report (HTML)", report,
                       file_name=f"{result.image_id}-report.html", mime="text/html",
                       key=f"html-{key[0]}")
