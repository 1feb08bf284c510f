"""Training: launch a K-fold study as a background job, watch it live, cancel, resume.

The job runs ``skin-core study`` (train -> difficulty -> meta -> bundle -> report), so a
finished run arrives analysed and bundled; its study and bundle are then made active. Job state
lives on disk (skin_core.jobs): a browser refresh or an app restart loses nothing.
"""

from __future__ import annotations

from pathlib import Path

import plotly.express as px
import streamlit as st

from pages._ui import active
from skin_core.app_support import (
    TRAIN_ARCHS,
    format_seconds,
    jobs_table,
    launch_training,
    new_study_name,
    resume_training,
    run_progress,
    study_steps,
    training_config,
    training_devices,
)
from skin_core.errors import SkinCoreError
from skin_core.jobs import cancel_job, job_status, list_jobs
from skin_core.workspace import is_bundle, is_study, set_active, study_info

st.title("Training")
st.caption("K-fold x architecture training with the full study afterwards (difficulty, "
           "meta-classifier, bundle). One job per device; it keeps running if you close the "
           "browser.")

ws, sel = active()
jobs = list_jobs(ws.jobs)
running = [j for j in jobs if j.active]


def _activate_if_done(job) -> None:
    """A finished job's study and bundle become active once (marker in the job folder)."""
    marker = ws.jobs / job.job_id / "activated"
    study = Path(job.run_dir).parent if job.run_dir else None
    if job.state != "finished" or marker.exists() or study is None or not is_study(study):
        return
    info = study_info(study)
    set_active(ws, study=study, bundle=info.bundle if info.bundle and is_bundle(info.bundle)
               else None)
    marker.write_text(job.finished or "")
    st.toast(f"Study {info.name} and its bundle are now active.", icon=":material/check:")


@st.fragment(run_every=2.0)
def live(job_id: str) -> None:
    job = job_status(ws.jobs, job_id)
    _activate_if_done(job)
    study = Path(job.run_dir).parent if job.run_dir else None
    prog = run_progress(job.run_dir) if job.run_dir else None
    icon = {"running": ":material/autorenew:", "finished": ":material/check_circle:",
            "failed": ":material/error:", "cancelled": ":material/cancel:",
            "lost": ":material/help:"}.get(job.state, "")
    st.markdown(f"### {icon} {job.name} — {job.state}")
    if prog is not None:
        frac = prog["progress"] if job.state != "finished" else 1.0
        st.progress(min(max(frac, 0.0), 1.0),
                    text=f"training {frac:.0%} · {prog['state']}")
        c = st.columns(6)
        c[0].metric("Model", prog["model"] or "–")
        c[1].metric("Fold", "–" if prog["fold"] is None else prog["fold"])
        c[2].metric("Epoch", "–" if prog["epoch"] is None else prog["epoch"] + 1)
        c[3].metric("Train loss", "–" if prog["train_loss"] is None
                    else f"{prog['train_loss']:.3f}")
        c[4].metric("Val. balanced acc.", "–" if prog["val_balanced_accuracy"] is None
                    else f"{prog['val_balanced_accuracy']:.3f}")
        c[5].metric("ETA (training)", format_seconds(prog["eta_s"]) if job.active
                    else "done" if job.state == "finished" else "–")
        ev = prog["events"]
        if not ev.empty:
            ev = ev.assign(member=ev["model"] + " fold " + ev["fold"].astype(str),
                           epoch=ev["epoch"] + 1)
            fig = px.line(ev, x="epoch", y="val_balanced_accuracy", color="member",
                          markers=True, title="Validation balanced accuracy per epoch")
            fig.update_layout(height=300)
            st.plotly_chart(fig, width="stretch")
    if study is not None:
        steps = study_steps(study)
        st.caption("Study steps: " + " → ".join(
            f"{'✔' if s == 'done' else '·'} {n}" for n, s in zip(steps["step"], steps["status"],
                                                                 strict=True)))
    b = st.columns(3)
    if job.active and b[0].button("Cancel", key=f"cancel-{job.job_id}"):
        cancel_job(ws.jobs, job.job_id, grace_s=5.0)
        st.rerun()
    if job.state in ("cancelled", "failed", "lost") and b[0].button(
            "Resume", key=f"resume-{job.job_id}", type="primary"):
        try:
            resume_training(ws, job)
            st.rerun()
        except SkinCoreError as exc:
            st.error(str(exc))
    if job.state == "finished" and study is not None:
        b[1].success(f"Finished; study **{study.name}** and its bundle are active.")
    if job.state in ("failed", "lost") and job.log_tail:
        st.code(job.log_tail, language=None)
    if not job.active:
        with st.expander("Log (last lines)"):
            st.code(job.log_tail or "(empty)", language=None)


st.subheader("Runs")
if jobs:
    table = jobs_table(jobs)
    st.dataframe(table, hide_index=True)
    ids = table["job_id"].tolist()
    default = ids.index(running[0].job_id) if running else 0
    chosen = st.selectbox("Show run", ids, index=default,
                          format_func=lambda i: f"{table.set_index('job_id').loc[i, 'name']} "
                          f"({table.set_index('job_id').loc[i, 'state']})")
    live(chosen)
else:
    st.caption("No runs yet.")

st.subheader("New run")
study_spec = study_info(sel.study).dataset if sel.study is not None else None
with st.form("launch"):
    c1, c2 = st.columns(2)
    name = c1.text_input("Name", value=new_study_name(ws))
    dataset = c2.text_input("Dataset", value=study_spec or ws.demo_spec,
                            help="isic2019:DIR, ham10000:DIR, folder:DIR or csv:FILE")
    archs = st.multiselect("Architectures", list(TRAIN_ARCHS), default=["resnet10t"])
    c = st.columns(5)
    folds = c[0].number_input("Folds", 2, 10, 5)
    epochs = c[1].number_input("Epochs", 1, 200, 6)
    img_size = c[2].selectbox("Image size", [32, 64, 96, 128, 160, 224], index=1)
    device = c[3].selectbox("Device", training_devices())
    backend = c[4].selectbox("Backend", ["local", "ray"])
    fast = st.checkbox("Quick analyses (fewer permutations and bootstrap resamples)",
                       value=True)
    go = st.form_submit_button("Launch", type="primary")
if go:
    try:
        cfg = training_config(archs=archs, folds=folds, epochs=epochs, img_size=img_size,
                              device=device, backend=backend, fast=fast)
        job = launch_training(ws, name=name, dataset=dataset, config=cfg, device=device)
        st.success(f"Started {job.name} ({job.job_id}).")
        st.rerun()
    except SkinCoreError as exc:
        st.error(str(exc))
if running:
    st.caption(f"A job is running on {', '.join(j.device for j in running)}: a second launch "
               "on the same device is refused until it finishes or is cancelled.")
