"""Training: every run of the workspace; launch a K-fold study, watch it, cancel, resume.

Runs come from the command line (``runs/``, ``studies/*/run``, the demo's study) and from this
page: a launch runs ``skin-core study`` (train -> difficulty -> meta -> bundle -> report) as a
background job, so a finished run arrives analysed and bundled; its study and bundle are then
made active. State lives on disk (skin_core.runs, skin_core.jobs): a browser refresh or an app
restart loses nothing, and a run whose process died shows as interrupted, with Resume.
"""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from pages._ui import active
from skin_core.errors import SkinCoreError
from skin_core.jobs import cancel_job
from skin_core.runs import (
    TRAIN_ARCHS,
    find_run,
    format_seconds,
    launch_training,
    list_runs,
    new_study_name,
    resume_run,
    run_progress,
    runs_table,
    study_steps,
    training_config,
    training_devices,
)
from skin_core.workspace import is_bundle, is_study, set_active, study_info

ws, sel = active()  # first: access is checked before anything is shown

st.title("Training")
st.caption("K-fold x architecture training with the full study afterwards (difficulty, "
           "meta-classifier, bundle). One job per device; it keeps running if you close the "
           "browser.")

runs = list_runs(ws)
running = [r for r in runs if r.active]
ICONS = {"running": ":material/autorenew:", "starting": ":material/autorenew:",
         "finished": ":material/check_circle:", "failed": ":material/error:",
         "cancelled": ":material/cancel:", "interrupted": ":material/pause_circle:"}


def _activate_if_done(run) -> None:
    """A finished app job's study and bundle become active once (marker in the job folder)."""
    job = run.job
    if job is None or run.state != "finished" or run.study is None or not is_study(run.study):
        return
    marker = ws.jobs / job.job_id / "activated"
    if marker.exists():
        return
    info = study_info(run.study)
    set_active(ws, study=run.study, bundle=info.bundle if info.bundle and is_bundle(info.bundle)
               else None)
    marker.write_text(job.finished or "")
    st.toast(f"Study {info.name} and its bundle are now active.", icon=":material/check:")


def panel(run_dir: str) -> None:
    """One run: state, live progress, study steps, Cancel / Resume, log."""
    run = find_run(ws, run_dir)
    _activate_if_done(run)
    prog = run_progress(run.run_dir)
    st.markdown(f"### {ICONS.get(run.state, '')} {run.name} — {run.state}")
    st.caption(f"{run.run_dir} · started by {run.source}")
    frac = 1.0 if run.state == "finished" else prog["progress"]
    st.progress(min(max(frac, 0.0), 1.0), text=f"training {frac:.0%}")
    c = st.columns(6)
    c[0].metric("Model", prog["model"] or "–")
    c[1].metric("Fold", "–" if prog["fold"] is None else prog["fold"])
    c[2].metric("Epoch", "–" if prog["epoch"] is None else prog["epoch"] + 1)
    c[3].metric("Train loss", "–" if prog["train_loss"] is None else f"{prog['train_loss']:.3f}")
    c[4].metric("Val. balanced acc.", "–" if prog["val_balanced_accuracy"] is None
                else f"{prog['val_balanced_accuracy']:.3f}")
    c[5].metric("ETA (training)", format_seconds(prog["eta_s"]) if run.active
                else "done" if run.state == "finished" else "–")
    ev = prog["events"]
    if not ev.empty:
        ev = ev.assign(member=ev["model"] + " fold " + ev["fold"].astype(str),
                       epoch=ev["epoch"] + 1)
        fig = px.line(ev, x="epoch", y="val_balanced_accuracy", color="member", markers=True,
                      title="Validation balanced accuracy per epoch")
        fig.update_layout(height=300)
        st.plotly_chart(fig, width="stretch", key=f"chart-{run.key}")
    if run.study is not None:
        steps = study_steps(run.study)
        st.caption("Study steps: " + " → ".join(
            f"{'✔' if s == 'done' else '·'} {n}" for n, s in zip(steps["step"], steps["status"],
                                                                 strict=True)))
    if run.state == "interrupted":
        st.warning("This run's process is gone before it finished (stopped, killed, or the "
                   "machine restarted). **Resume** continues it: finished folds and study steps "
                   "are kept, an unfinished fold restarts from its last epoch.",
                   icon=":material/pause_circle:")
    b = st.columns(3)
    if run.job is not None and run.job.active and b[0].button("Cancel", key=f"cancel-{run.key}"):
        cancel_job(ws.jobs, run.job.job_id, grace_s=5.0)
        st.rerun()
    if run.resumable and b[0].button("Resume", key=f"resume-{run.key}", type="primary"):
        try:
            resume_run(ws, run)
            st.rerun()
        except SkinCoreError as exc:
            st.error(str(exc))
    if run.state == "finished" and run.study is not None and run.job is not None:
        b[1].success(f"Finished; study **{run.study.name}** and its bundle are active.")
    log = run.job.log_tail if run.job is not None else ""
    if run.state in ("failed", "interrupted") and log:
        st.code(log, language=None)
    if run.job is not None and not run.active:
        with st.expander("Log (last lines)"):
            st.code(log or "(empty)", language=None)


st.subheader("Runs")
if runs:
    table = pd.DataFrame(runs_table(runs))
    st.dataframe(table.drop(columns=["run_dir"]), hide_index=True,
                 column_config={"progress": st.column_config.ProgressColumn(
                     "progress", min_value=0.0, max_value=1.0, format="percent")})
    keys = table["run_dir"].tolist()
    labels = dict(zip(keys, table["name"] + " (" + table["state"] + ")", strict=True))
    chosen = st.selectbox("Show run", keys, format_func=labels.get)
    if find_run(ws, chosen).active:
        st.fragment(run_every=2.0)(panel)(chosen)  # polls while the run trains
    else:
        panel(chosen)
else:
    st.caption(f"No runs yet in {ws.studies} or {ws.runs}.")

st.subheader("New run")
study_spec = study_info(sel.study).dataset if sel.study is not None else None
# enter_to_submit=False: Enter in a number field only confirms it; only the button launches
with st.form("launch", enter_to_submit=False):
    c1, c2 = st.columns(2)
    # the suggested name is made once per session: a default that changed on every rerun (its
    # clock ticks) would make Streamlit see a new widget and drop what the user typed
    if "training_run_name" not in st.session_state:
        st.session_state["training_run_name"] = new_study_name(ws)
    name = c1.text_input("Name", key="training_run_name")
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
        del st.session_state["training_run_name"]  # the next run gets a fresh suggestion
        st.rerun()
    except SkinCoreError as exc:
        st.error(str(exc))
jobs_running = [r for r in running if r.job is not None]
if jobs_running:
    st.caption(f"A job is running on {', '.join(r.device for r in jobs_running)}: a second "
               "launch on the same device is refused until it finishes or is cancelled.")
