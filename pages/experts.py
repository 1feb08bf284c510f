"""Experts vs CNN: the reader study dashboard (the study's readings, or an uploaded CSV)."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from pages._ui import active, no_study_message, synthetic_banner
from skin_core.app.common import study_files
from skin_core.app.experts import (
    ReaderInputs,
    cnn_coverage,
    confusion_matrix,
    demo_reader_inputs,
    read_upload_csv,
    reader_accuracy_table,
    reader_group_table,
    reader_tests_table,
    run_reader_study,
)
from skin_core.errors import SkinCoreError


@st.cache_data(show_spinner="Analysing the reader study…", max_entries=8)
def analyse(readings, truth, groups, cnn):
    """The ReaderStudy pieces the page shows (cached per inputs)."""
    study = run_reader_study(ReaderInputs(readings, truth, groups, cnn))
    return study.summary, study.images, study.readings


class _Study:  # confusion_matrix needs summary / images / readings attributes
    def __init__(self, summary, images, readings):
        self.summary, self.images, self.readings = summary, images, readings


ws, sel = active()  # first: access is checked before anything is shown

st.title("Experts vs CNN")
st.caption("Readers' accuracy on the difficult and control images, their agreement, the "
           "CNNs on the same images, and tests that respect the readers x images design.")

source = st.radio("Readings", ["The active study's reader study", "Upload readings.csv"],
                  horizontal=True)
inputs = None
study_truth = True  # whether the truth shown is the active study's
if source.startswith("The active"):
    if sel.study is None:
        no_study_message("reader study")
        st.stop()
    inputs = demo_reader_inputs(sel.study)
    if inputs is None:
        st.info("The active study has no readings.csv; upload one below.")
        st.stop()
else:
    with st.form("upload"):
        st.markdown("`readings.csv`: **reader_id, image_id, diagnosis** (+ optional comment). "
                    "Truth and groups default to the active study's dataset and "
                    "difficulty.csv; upload your own to override them.")
        up_readings = st.file_uploader("readings.csv", type=["csv"])
        c1, c2 = st.columns(2)
        up_truth = c1.file_uploader("Truth (image_id, label)", type=["csv"])
        up_groups = c2.file_uploader("Groups (image_id, group)", type=["csv"])
        st.form_submit_button("Analyse", type="primary")
    if not up_readings:
        st.info("Upload a readings.csv and press Analyse.", icon=":material/upload_file:")
        st.stop()
    try:
        files = study_files(sel.study) if sel.study is not None else {}
        base = demo_reader_inputs(sel.study) if sel.study is not None else None
        readings = read_upload_csv(up_readings.getvalue(), up_readings.name,
                                   required=("reader_id", "image_id", "diagnosis"),
                                   what="readings.csv")
        truth = (read_upload_csv(up_truth.getvalue(), up_truth.name,
                                 required=("image_id", "label"), what="truth CSV")
                 if up_truth else (base.truth if base else None))
        groups = (read_upload_csv(up_groups.getvalue(), up_groups.name,
                                  required=("image_id", "group"), what="groups CSV")
                  if up_groups else files.get("difficulty"))
        if truth is None:
            st.error("No truth to compare the readings with: upload a truth CSV "
                     "(image_id, label) or make a study active.")
            st.stop()
        inputs = ReaderInputs(readings, truth, groups, files.get("oof"))
        study_truth = not up_truth
    except SkinCoreError as exc:
        st.error(str(exc))
        st.stop()

try:
    summary, images, readings = analyse(inputs.readings, inputs.truth, inputs.groups, inputs.cnn)
except SkinCoreError as exc:
    st.error(str(exc))
    st.stop()
study = _Study(summary, images, readings)
if sel.study is not None and (study_truth or cnn_coverage(images)[0] > 0):
    synthetic_banner(study=sel.study)  # the study's truth or CNN answers are on the page

inp = summary["inputs"]
c = st.columns(4)
c[0].metric("Readers", inp["n_readers"])
c[1].metric("Images", inp["n_images"])
c[2].metric("Readings", inp["n_readings"])
c[3].metric("Groups", len(summary["groups"]))

st.subheader("Per group")
st.dataframe(reader_group_table(summary), hide_index=True,
             column_config={k: st.column_config.NumberColumn(format="%.3f") for k in (
                 "pooled accuracy", "consensus accuracy", "Cohen's kappa (consensus vs truth)",
                 "Fleiss' kappa", "mean pairwise kappa", "CNN accuracy")})

acc = reader_accuracy_table(summary)
long = acc.melt(id_vars=["who", "kind"], var_name="group", value_name="accuracy").dropna()
fig = px.bar(long, x="who", y="accuracy", color="group", barmode="group",
             hover_data=["kind"], title="Accuracy per reader, consensus and CNN",
             color_discrete_map={"difficult": "#c0392b", "control": "#2f6f8f",
                                 "other": "#8a9aa5", "all": "#2f6f8f"})
fig.update_yaxes(range=[0, 1])
st.plotly_chart(fig, width="stretch")

st.subheader("Tests between groups")
tests = reader_tests_table(summary)
if tests.empty:
    st.info(summary.get("tests_note") or "No between-group tests (one group only).")
else:
    st.dataframe(tests, hide_index=True,
                 column_config={"p_value": st.column_config.NumberColumn(format="%.3g"),
                                "effect": st.column_config.NumberColumn(format="%.3f"),
                                "statistic": st.column_config.NumberColumn(format="%.3g")})
    st.caption("Effects are first group minus second. The two-way cluster bootstrap and the "
               "image permutation test are valid for readers x images; Fisher's test on "
               "pooled readings treats correlated readings as independent.")

st.subheader("Confusion matrices")
cc = st.columns(3)
group = cc[0].selectbox("Group", ["all", *summary["groups"]])
n_cnn, n_images = cnn_coverage(images, None if group == "all" else group)
whos = ["readers", "consensus"] + (["cnn"] if n_cnn else [])
cols = st.columns(len(whos))
for col, who in zip(cols, whos, strict=True):
    tab = confusion_matrix(study, who=who, group=None if group == "all" else group)
    fig = px.imshow(tab, text_auto=True, color_continuous_scale="Blues",
                    title={"readers": "Readers (every reading)", "consensus": "Reader consensus",
                           "cnn": "CNN ensemble"}[who])
    fig.update_layout(height=420, coloraxis_showscale=False,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    col.plotly_chart(fig, width="stretch")
if n_cnn < n_images:
    st.caption(f"The active study's CNNs predicted {n_cnn:,} of these {n_images:,} images"
               + ("; the CNN panel shows those only." if n_cnn else
                  ", so there is no CNN panel."))
for w in summary.get("warnings") or []:
    st.caption(f"Note: {w}")
