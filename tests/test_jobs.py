"""Background jobs: status on disk, one job per device, cancel, survive a new process."""

from __future__ import annotations

import sys
import time

import pytest

from skin_core.jobs import (
    JobBusyError,
    active_job,
    cancel_job,
    job_status,
    list_jobs,
    skin_core_argv,
    start_job,
)


def _wait(jobs_dir, job_id, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = job_status(jobs_dir, job_id)
        if not st.active:
            return st
        time.sleep(0.1)
    raise AssertionError("job did not finish")


def test_job_runs_and_records_exit_status(tmp_path):
    st = start_job(skin_core_argv("--version"), jobs_dir=tmp_path, name="version")
    st = _wait(tmp_path, st.job_id)
    assert st.state == "finished" and st.returncode == 0
    assert "skin-core" in st.log_tail
    assert [j.job_id for j in list_jobs(tmp_path)] == [st.job_id]


def test_failed_job_is_failed(tmp_path):
    st = start_job([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
                   jobs_dir=tmp_path)
    st = _wait(tmp_path, st.job_id)
    assert st.state == "failed" and st.returncode == 3 and "boom" in st.log_tail


def test_second_job_on_same_device_is_refused_then_allowed(tmp_path):
    slow = [sys.executable, "-c", "import time; time.sleep(30)"]
    st = start_job(slow, jobs_dir=tmp_path, name="long", device="cpu")
    try:
        assert active_job(tmp_path, "cpu").job_id == st.job_id
        with pytest.raises(JobBusyError, match="already running on cpu"):
            start_job(slow, jobs_dir=tmp_path, device="cpu")
        other = start_job([sys.executable, "-c", "pass"], jobs_dir=tmp_path, device="cuda:0")
        assert _wait(tmp_path, other.job_id).state == "finished"
    finally:
        done = cancel_job(tmp_path, st.job_id, grace_s=0.5)
    assert done.state == "cancelled"
    assert active_job(tmp_path, "cpu") is None
    again = start_job([sys.executable, "-c", "pass"], jobs_dir=tmp_path, device="cpu")
    assert _wait(tmp_path, again.job_id).state == "finished"


def test_cancel_writes_run_cancel_file_and_lets_job_stop_itself(tmp_path):
    run_dir = tmp_path / "run"
    code = ("import pathlib, time\n"
            f"p = pathlib.Path({str(run_dir)!r}) / 'cancel'\n"
            "while not p.exists(): time.sleep(0.05)\n"
            "print('stopping cleanly')\n")
    st = start_job([sys.executable, "-c", code], jobs_dir=tmp_path / "jobs", run_dir=run_dir)
    time.sleep(0.3)
    done = cancel_job(tmp_path / "jobs", st.job_id, grace_s=10)
    assert done.state == "cancelled"
    assert done.returncode == 0 and "stopping cleanly" in done.log_tail


def test_status_readable_from_a_fresh_process(tmp_path):
    import subprocess

    st = start_job([sys.executable, "-c", "pass"], jobs_dir=tmp_path)
    _wait(tmp_path, st.job_id)
    code = (f"from skin_core.jobs import job_status; "
            f"print(job_status({str(tmp_path)!r}, {st.job_id!r}).state)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "finished"


def test_unknown_job_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="No job 'nope'"):
        job_status(tmp_path, "nope")
