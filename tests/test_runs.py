"""Training runs of a workspace: listing with states, interrupted runs, resume, launch, progress."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from skin_core import runs
from skin_core.errors import ConfigError
from skin_core.jobs import (
    JobBusyError,
    cancel_job,
    job_status,
    list_jobs,
    pid_alive,
    start_job,
)
from skin_core.workspace import current_workspace

DEAD_PID = 2**22 + 12345  # above the default pid_max: no process has it


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIN_CORE_HOME", str(tmp_path))
    for var in ("SKIN_CORE_DEMO_DIR", "SKIN_CORE_MODELS_DIR", "SKIN_CORE_RUNS_DIR",
                "SKIN_CORE_STUDIES_DIR", "SKIN_CORE_STATE_DIR"):
        monkeypatch.delenv(var, raising=False)
    return current_workspace()


def _run(run_dir, state, pid=DEAD_PID, progress=0.5, started="2026-01-01T00:00:00+00:00",
         device="cpu"):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(f"models: [m]\ntrain:\n  device: {device}\n")
    (run_dir / "status.json").write_text(json.dumps(
        {"state": state, "pid": pid, "progress": progress, "started": started}))
    return run_dir


def _study(ws, name, state, *, complete, pid=DEAD_PID, started="2026-01-01T00:00:00+00:00"):
    d = ws.studies / name
    d.mkdir(parents=True)
    (d / "steps.json").write_text("{}")
    (d / "config.yaml").write_text("dataset: isic2019:/data/x\n")
    if complete:
        (d / "report.html").write_text("<html></html>")
    _run(d / "run", state, pid=pid, started=started)
    return d


def _wait(jobs_dir, job_id, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = job_status(jobs_dir, job_id)
        if not st.active:
            return st
        time.sleep(0.1)
    raise AssertionError("job did not finish")


def test_every_run_of_the_workspace_is_listed_with_its_state(ws):
    _run(ws.runs / "cli-run", "running", started="2026-01-02T00:00:00+00:00")
    _study(ws, "demo", "finished", complete=True, started="2026-01-03T00:00:00+00:00")
    _study(ws, "half", "finished", complete=False, started="2026-01-04T00:00:00+00:00")
    _study(ws, "live", "running", complete=False, pid=os.getpid())
    (ws.runs / "not-a-run").mkdir()
    found = {r.name: r for r in runs.list_runs(ws)}
    assert set(found) == {"cli-run", "demo", "half", "live"}
    assert found["cli-run"].state == "interrupted" and found["cli-run"].source == "train"
    assert found["cli-run"].study is None and found["cli-run"].resumable
    assert found["demo"].state == "finished" and found["demo"].progress == 1.0
    assert found["demo"].study == (ws.studies / "demo").resolve()
    assert found["half"].state == "interrupted"  # trained, but the study's process died
    assert found["live"].state == "running" and found["live"].active
    assert [r.name for r in runs.list_runs(ws)] == ["live", "half", "demo", "cli-run"]
    rows = runs.runs_table(runs.list_runs(ws))
    assert rows[0]["name"] == "live" and rows[0]["state"] == "running"


def test_resume_commands(ws):
    study = _study(ws, "s", "running", complete=False)
    bare = _run(ws.runs / "r", "cancelled")
    s_info = runs.find_run(ws, study / "run")
    assert s_info.state == "interrupted" and s_info.study == study.resolve()
    assert runs.resume_argv(s_info)[-5:] == ["study", "--out", str(study.resolve()), "--config",
                                             str(study.resolve() / "config.yaml")]
    r_info = runs.find_run(ws, bare)
    assert r_info.state == "cancelled" and r_info.resumable
    assert runs.resume_argv(r_info)[-4:] == ["train", "--out", str(bare.resolve()), "--resume"]
    done = runs.find_run(ws, _run(ws.runs / "done", "finished"))
    with pytest.raises(ConfigError, match="is finished; only an interrupted"):
        runs.resume_run(ws, done)


def test_an_app_job_run_follows_its_job_and_resumes_with_the_same_command(ws):
    rd = ws.studies / "appjob" / "run"
    argv = [sys.executable, "-c", "import sys; sys.exit(2)"]
    job = start_job(argv, jobs_dir=ws.jobs, name="appjob", run_dir=rd)
    _wait(ws.jobs, job.job_id)
    info = next(r for r in runs.list_runs(ws) if r.name == "appjob")
    assert info.source == "app" and info.state == "failed" and info.job.job_id == job.job_id
    rd.mkdir(parents=True)
    (rd / "cancel").write_text("x")
    again = runs.resume_run(ws, info)
    assert not (rd / "cancel").exists() and list(again.argv) == argv
    _wait(ws.jobs, again.job_id)
    assert runs.find_run(ws, rd).job.job_id == again.job_id  # the latest job counts
    assert len(runs.list_runs(ws)) == 1


def test_a_lost_job_is_an_interrupted_run(ws):
    rd = ws.studies / "lost" / "run"
    job = start_job([sys.executable, "-c", "pass"], jobs_dir=ws.jobs, name="lost", run_dir=rd)
    _wait(ws.jobs, job.job_id)
    deadline = time.monotonic() + 30
    while pid_alive(job.pid) and time.monotonic() < deadline:  # exit.json comes just before
        time.sleep(0.05)
    (ws.jobs / job.job_id / "exit.json").unlink()  # as if the machine had died
    assert runs.find_run(ws, rd).state == "interrupted"


def test_a_refused_launch_leaves_no_study_folder(ws, monkeypatch):
    cfg = runs.training_config(archs=["test_resnet"], folds=2, epochs=1, img_size=32)
    busy = start_job([sys.executable, "-c", "import time; time.sleep(30)"], jobs_dir=ws.jobs,
                     name="busy", device="cpu")
    try:
        with pytest.raises(JobBusyError, match="already running on cpu"):
            runs.launch_training(ws, name="second", dataset="isic2019:/x", config=cfg)
        assert not (ws.studies / "second").exists()
        # a launch that passed the check but lost the race to start_job cleans up too
        monkeypatch.setattr(runs, "active_job", lambda *a, **k: None)
        with pytest.raises(JobBusyError):
            runs.launch_training(ws, name="third", dataset="isic2019:/x", config=cfg)
        assert not (ws.studies / "third").exists()
    finally:
        cancel_job(ws.jobs, busy.job_id, grace_s=0.5)
    assert [j.name for j in list_jobs(ws.jobs)] == ["busy"]


def test_training_config_and_errors():
    cfg = runs.training_config(archs=["test_resnet"], folds=3, epochs=2, img_size=32, fast=True)
    assert cfg["train"]["archs"] == ["test_resnet"] and cfg["folds"]["k"] == 3
    assert cfg["train"]["folds"] == 3 and cfg["difficulty"]["permutations"] == 200
    with pytest.raises(ConfigError, match="at least one architecture"):
        runs.training_config(archs=[], folds=3, epochs=2, img_size=32)
    with pytest.raises(ConfigError, match="folds >= 2"):
        runs.training_config(archs=["x"], folds=1, epochs=2, img_size=32)


def test_run_progress_eta_and_events(tmp_path):
    assert runs.run_progress(tmp_path)["state"] == "starting"
    (tmp_path / "status.json").write_text(json.dumps({
        "state": "running", "progress": 0.25, "started": "2026-01-01T00:00:00+00:00",
        "model": "m", "fold": 1}))
    ev = {"event": "epoch", "model": "m", "arch": "m", "fold": 1, "epoch": 2, "train_loss": 1.5,
          "val_loss": 1.7, "val_balanced_accuracy": 0.4, "images_per_s": 10, "elapsed_s": 3}
    (tmp_path / "events.jsonl").write_text(json.dumps({"event": "run_start"}) + "\n"
                                           + json.dumps(ev) + "\n{partial")
    from datetime import datetime

    now = datetime.fromisoformat("2026-01-01T00:01:00+00:00").timestamp()
    p = runs.run_progress(tmp_path, now=now)
    assert p["elapsed_s"] == 60 and p["eta_s"] == pytest.approx(180)
    assert p["epoch"] == 2 and p["val_balanced_accuracy"] == 0.4 and len(p["events"]) == 1
    assert runs.format_seconds(180) == "3 min 00 s" and runs.format_seconds(None) == "–"
    assert runs.format_seconds(3725) == "1 h 02 min"


def test_launch_refuses_bad_name_and_existing_study(tmp_path, monkeypatch):
    from skin_core.workspace import current_workspace

    monkeypatch.setenv("SKIN_CORE_HOME", str(tmp_path))
    ws = current_workspace()
    cfg = runs.training_config(archs=["test_resnet"], folds=2, epochs=1, img_size=32)
    with pytest.raises(ConfigError, match="must be 1-64 letters"):
        runs.launch_training(ws, name="../x", dataset="isic2019:/x", config=cfg)
    (ws.studies / "taken").mkdir(parents=True)
    with pytest.raises(ConfigError, match="already exists"):
        runs.launch_training(ws, name="taken", dataset="isic2019:/x", config=cfg)
    assert runs.new_study_name(ws).startswith("run-")


def test_training_devices_put_the_gpu_first_when_there_is_one(monkeypatch):
    import torch

    from skin_core.runs import training_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training_devices() == ["cuda", "cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_devices() == ["cpu", "cuda"]
