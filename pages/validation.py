"""Validation: the served pipeline measured on a labelled dataset (``skin-core evaluate``).

Runs the evaluation as a background job (it survives a browser refresh) and shows the newest
``evaluation.json`` of the active bundle: headline figures with 95% CIs, the reliability
diagram, per-class figures and the subgroup table.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from pages._ui import active, synthetic_banner
from skin_core.errors import SkinCoreError
from skin_core.evaluation.html import (
    figure_per_class,
    figure_reliability,
    missing_metadata_rows,
    stability_rows,
    subgroup_rows,
)
from skin_core.evaluation.runner import (
    evaluation_args,
    evaluation_jobs,
    headline_metrics,
    job_device,
    job_name,
    last_evaluation,
    new_evaluation_dir,
)
from skin_core.jobs import job_status, list_jobs, skin_core_argv, start_job
from skin_core.workspace import read_manifest, study_info

ws, sel = active()  # first: access is checked before anything is shown

st.title("Validation")
st.caption("The served pipeline (meta-classifier, prediction sets, referral) on any labelled "
           "dataset, every figure with a lesion-grouped bootstrap 95% CI. Runs in the "
           "background; it keeps running if you close the browser.")
if sel.bundle is None:
    st.warning("No model bundle is active. Build the demo with `skin-core demo` (or train on "
               "the Training page), then choose the bundle on the Overview page.",
               icon=":material/warning:")
    st.stop()
synthetic_banner(bundle_manifest=read_manifest(sel.bundle))

study_spec = study_info(sel.study).dataset if sel.study is not None else None
with st.form("evaluate"):
    c1, c2 = st.columns([3, 2])
    dataset = c1.text_input("Dataset", value=study_spec or ws.demo_spec,
                            help="isic2019:DIR, ham10000:DIR, folder:DIR or csv:FILE")
    class_map = c2.text_input("Class map (optional)", placeholder="akiec=AK",
                              help="dataset labels onto the bundle's classes")
    c = st.columns(4)
    limit = c[0].number_input("Images (0 = all)", 0, 1_000_000, 0, step=100)
    drop = c[1].selectbox("Withhold metadata", ["none", "age", "sex", "site", "all", "every"])
    bootstrap = c[2].number_input("Bootstrap resamples", 0, 10_000, 1000, step=100)
    stability = c[3].number_input("Stability images", 0, 10_000, 200, step=50)
    go = st.form_submit_button("Evaluate", type="primary")
if go:
    try:
        out, device = new_evaluation_dir(ws, sel.bundle), job_device()
        args = evaluation_args(sel.bundle, dataset, out, class_map=class_map or None,
                               drop_metadata=drop, limit=int(limit) or None,
                               bootstrap=int(bootstrap), stability=int(stability),
                               device=device)
        job = start_job(skin_core_argv(*args), jobs_dir=ws.jobs, name=job_name(sel.bundle),
                        device=device, run_dir=out)
        st.success(f"Started {job.name} ({job.job_id}).")
    except SkinCoreError as exc:
        st.error(str(exc))

running = [j for j in evaluation_jobs(list_jobs(ws.jobs)) if j.active]


@st.fragment(run_every=2.0)
def watch(job_id: str) -> None:
    job = job_status(ws.jobs, job_id)
    if job.active:
        st.info(f"{job.name} is running…", icon=":material/autorenew:")
        st.code(job.log_tail[-1500:] or "(starting)", language=None)
    else:
        st.rerun()  # finished: show its result below


if running:
    watch(running[0].job_id)

last_job = next(iter(evaluation_jobs(list_jobs(ws.jobs))), None)
if last_job is not None and last_job.state in ("failed", "lost"):
    st.error(f"The last evaluation ({last_job.job_id}) {last_job.state}: "
             + (last_job.log_tail.strip().splitlines() or [""])[-1])

found = last_evaluation(ws, sel.bundle, sel.study)
if found is None:
    st.caption(f"No evaluation of bundle **{Path(sel.bundle).name}** yet.")
    st.stop()
path, ev = found
data = ev.get("dataset") or {}
st.subheader("Last evaluation")
st.caption(f"{ev.get('n_images', 0):,} images of {ev.get('n_lesions', 0):,} lesions from "
           f"`{data.get('spec')}` ({ev.get('n_failed', 0)} failed), {ev.get('created')}; "
           f"metadata withheld: {(ev.get('settings') or {}).get('served_metadata')}. "
           f"Files in `{path.parent}`.")
tiles = headline_metrics(ev)
for row in range(0, len(tiles), 4):
    cols = st.columns(4)
    for col, (label, value, ci) in zip(cols, tiles[row:row + 4], strict=False):
        col.metric(label, value, help=ci or None)
        col.caption(ci)
left, right = st.columns(2)
left.plotly_chart(figure_reliability(ev), width="stretch")
right.plotly_chart(figure_per_class(ev), width="stretch")
st.markdown("**Subgroups** (hatched in the report: fewer than 30 images)")
st.dataframe(pd.DataFrame(subgroup_rows(ev)), hide_index=True)
c1, c2 = st.columns(2)
with c1:
    st.markdown("**Stability** (diagnosis changed)")
    st.dataframe(pd.DataFrame(stability_rows(ev)), hide_index=True)
with c2:
    st.markdown("**Missing metadata**")
    st.dataframe(pd.DataFrame(missing_metadata_rows(ev)), hide_index=True)
html_path = path.parent / "evaluation.html"
if html_path.is_file():
    st.download_button("Download the report (HTML)", html_path.read_bytes(),
                       file_name=f"evaluation-{Path(sel.bundle).name}.html", mime="text/html")
