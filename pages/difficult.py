"""Difficult images: the gallery of consistently misclassified images, significance, blur."""

from __future__ import annotations

import json

import plotly.express as px
import streamlit as st

from pages._ui import active, gallery_for, no_study_message, synthetic_banner, thumbnail_uri
from skin_core.app.common import study_files
from skin_core.app.difficult import (
    blur_by_group,
    filter_gallery,
    gallery_export,
    model_columns,
    quality_tests_table,
    significance_table,
    thumb_caption,
)
from skin_core.app.thumbnails import page_slice, thumbnail_grid_html
from skin_core.errors import SkinCoreError

ws, sel = active()  # first: access is checked before anything is shown

st.title("Difficult images")
st.caption("Images that all (or m of M) cross-validated CNNs misclassify, whether that is more "
           "than chance, and how their image quality compares with correctly classified "
           "(control) images.")

if sel.study is None:
    no_study_message("gallery")
    st.stop()
try:
    gallery = gallery_for(sel.study)
except SkinCoreError as exc:
    st.error(str(exc))
    st.stop()
synthetic_banner(study=sel.study)
files = study_files(sel.study)
models = model_columns(gallery)
n_models = int(gallery["n_models"].max()) if len(gallery) else 1

sig = json.loads(files["significance"].read_text()) if "significance" in files else None
if sig:
    c = st.columns(6)
    c[0].metric("Images", f"{sig['n_images']:,}")
    c[1].metric("Wrong by all models", f"{sig['observed_all_wrong']:,}")
    c[2].metric("Expected by chance", f"{sig['expected_all_wrong']:.1f}")
    ratio = sig.get("ratio_all_wrong")
    c[3].metric("Observed / expected", "–" if ratio is None else f"{ratio:.2f}×")
    lesion = (sig.get("clustering") or {}).get("unit") == "lesion"
    c[4].metric("p exact", f"{sig['p_value_exact']:.2g}",
                help="Upper tail under independent models"
                + (", lesion level (a lesion's images together)" if lesion else
                   ", image level (assumes independent images)"))
    c[5].metric("p permutation", f"{sig['p_value_permutation']:.2g}",
                help=f"{sig['n_permutations']:,} permutations: "
                + ("whole lesions permuted within class and lesion size" if lesion
                   else "images permuted within classes"))

tab_gallery, tab_sig, tab_quality, tab_table = st.tabs(
    ["Gallery", "Significance", "Image quality", "Table"])

with st.sidebar:
    st.markdown("**Gallery filters**")
    with st.form("filters"):
        group = st.radio("Group", ["difficult", "control", "other", "all"], horizontal=True,
                         help="difficult: wrong by the models (m of M); control: right by all")
        classes = st.multiselect("True class", sorted(gallery["label"].unique()))
        min_wrong = st.slider("Wrong by at least m of M models", 0, n_models, 0,
                              help="m-of-M agreement: 0 keeps every image of the groups")
        blur = st.slider("Blur score", 0.0, 1.0, (0.0, 1.0), step=0.01,
                         help="0 = very blurry, 1 = sharp; below 0.5 is called blurry")
        mis = st.radio("Likely mislabeled", ["any", "only", "exclude"], horizontal=True)
        st.form_submit_button("Apply filters", type="primary")

rows = filter_gallery(gallery, groups=None if group == "all" else [group], classes=classes,
                      min_wrong=min_wrong or None, blur_range=blur, mislabeled=mis)

@st.fragment
def gallery_section(rows):
    """Paging and the detail view rerun only this fragment, not the whole page."""
    top = st.columns([2, 1, 1])
    top[0].markdown(f"**{len(rows):,}** of {len(gallery):,} images match the filters.")
    per_page = top[1].radio("Per page", [48, 96, 240], horizontal=True)
    n_pages = page_slice(len(rows), 1, per_page)[2]
    page = top[2].number_input("Page", 1, n_pages, 1, step=1)
    start, stop, _ = page_slice(len(rows), page, per_page)
    shown = rows.iloc[start:stop]
    items = [(thumbnail_uri(r["path"]), r["image_id"], thumb_caption(r, models))
             for r in shown.to_dict("records") if isinstance(r.get("path"), str)]
    if items:
        st.html(thumbnail_grid_html(items))
    else:
        st.info("No image matches these filters.", icon=":material/filter_alt_off:")
    if len(shown):
        st.subheader("Detail")
        pick = st.selectbox("Image", shown["image_id"].tolist())
        r = shown.set_index("image_id").loc[pick]
        left, right = st.columns([1, 2])
        left.image(thumbnail_uri(r["path"]), width=260, caption=pick)
        right.dataframe(
            {"model": [m.removeprefix("pred_") for m in models],
             "prediction": [r[m] for m in models],
             "correct": [r[m] == r["label"] for m in models]}, hide_index=True)
        right.markdown(
            f"True label **{r['label']}** · group **{r['group']}** · wrong by "
            f"**{int(r['n_wrong'])}/{int(r['n_models'])}** models · majority answer "
            f"**{r['majority_pred']}** · mean probability of the true class "
            f"{r['mean_true_prob']:.2f} · label quality {r['label_quality']:.2f}"
            + (" · **likely mislabeled**" if r["likely_mislabeled"] else "")
            + (f" · blur score {r['blur_score']:.2f}" if r["blur_score"] == r["blur_score"]
               else ""))


with tab_gallery:
    gallery_section(rows)

with tab_sig:
    if sig is None:
        st.info("The study has no significance.json yet (difficulty step).")
    else:
        st.markdown(
            f"**{sig['observed_all_wrong']}** images are wrong by all {sig['n_models']} models; "
            f"if the models erred independently at their own per-class error rates, about "
            f"**{sig['expected_all_wrong']:.1f}** would be (95% interval "
            f"{sig['null_all_wrong']['exact_interval_95']}).")
        st.dataframe(significance_table(sig), hide_index=True,
                     column_config={"p_value": st.column_config.NumberColumn(format="%.3g")})

with tab_quality:
    box = blur_by_group(gallery)
    if box.empty:
        st.info("No blur scores in this study (quality step).")
    else:
        fig = px.box(box, x="group", y="blur_score", points="all", color="group",
                     color_discrete_map={"difficult": "#c0392b", "control": "#2f6f8f"},
                     title="Blur score: difficult vs control images")
        st.plotly_chart(fig, width="stretch")
    qvd = (json.loads(files["quality_vs_difficulty"].read_text())
           if "quality_vs_difficulty" in files else None)
    if qvd and not qvd.get("computed", True):
        st.info(qvd.get("reason", "The quality comparison was not computed."))
    else:
        st.dataframe(quality_tests_table(qvd), hide_index=True,
                     column_config={"p_value": st.column_config.NumberColumn(format="%.3g"),
                                    "p_holm": st.column_config.NumberColumn(format="%.3g")})
        st.caption("Mann-Whitney U per measure (Holm-adjusted across measures) and Cliff's "
                   "delta, difficult minus control.")

with tab_table:
    st.dataframe(rows.drop(columns=["path"]), hide_index=True)
    st.download_button("Download the filtered table (CSV)", gallery_export(rows),
                       file_name="difficult_images.csv", mime="text/csv")
