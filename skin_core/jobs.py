"""Background jobs (training launched from the app): start, status, cancel, resume.

A job is a detached process group started with ``sys.executable``; everything about it lives on
disk under ``<jobs_dir>/<job_id>/``, so a browser refresh or an app restart loses nothing:

- ``job.json``: id, name, argv, device, run directory, pid, started (written before start);
- ``log.txt``: the process's stdout and stderr;
- ``exit.json``: the exit status and finish time, written by the job's own wrapper when the
  command ends (so the status is known even when the app that started it is gone).

Only one job at a time may hold a device: ``<jobs_dir>/device-<name>.lock`` names the job that
holds it; a second :func:`start_job` for the same device raises :class:`JobBusyError` while that
job runs. Cancelling writes the run's ``cancel`` file (the trainer stops between batches and
leaves a resumable state), then terminates the process group after a grace period.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from skin_core.errors import SkinCoreError
from skin_core.io import atomic_write_json


class JobBusyError(SkinCoreError):
    """Another job holds the requested device."""


@dataclass(frozen=True)
class JobStatus:
    """What is known about a job right now.

    ``state`` is one of ``running``, ``finished`` (exit 0), ``failed`` (non-zero exit),
    ``cancelled`` or ``lost`` (the process is gone without writing its exit status).
    """

    job_id: str
    name: str
    state: str
    pid: int
    device: str
    run_dir: str | None
    argv: tuple[str, ...]
    started: str
    finished: str | None
    returncode: int | None
    log_tail: str

    @property
    def active(self) -> bool:
        return self.state == "running"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def skin_core_argv(*args: str) -> list[str]:
    """The argv that runs ``skin-core ARGS...`` with this interpreter."""
    return [sys.executable, "-m", "skin_core", *args]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (not a zombie; exited children reaped)."""
    if pid is None or int(pid) <= 0:
        return False
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)  # reaps our own exited children
        if finished == pid:
            return False
    except ChildProcessError:
        pass  # not our child (e.g. started before an app restart)
    except OSError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().split(") ")[-1][:1] != "Z"
        except OSError:
            return False
    return True


def _job_dir(jobs_dir: Path, job_id: str) -> Path:
    return Path(jobs_dir) / job_id


def job_status(jobs_dir: str | os.PathLike[str], job_id: str, *, tail_lines: int = 20) -> JobStatus:
    """Read a job's state from disk (works from any process, after an app restart too)."""
    d = _job_dir(Path(jobs_dir), job_id)
    meta_path = d / "job.json"
    if not meta_path.is_file():
        raise SkinCoreError(f"No job {job_id!r} in {jobs_dir}; list jobs with list_jobs().")
    meta = json.loads(meta_path.read_text())
    exit_path = d / "exit.json"
    finished = returncode = None
    if exit_path.is_file():
        info = json.loads(exit_path.read_text())
        returncode, finished = int(info["returncode"]), info["finished"]
        if (d / "cancelled").exists():
            state = "cancelled"
        else:
            state = "finished" if returncode == 0 else "failed"
    elif pid_alive(int(meta["pid"])):
        state = "running"
    elif int(meta["pid"]) < 0 and time.time() - meta_path.stat().st_mtime < 60:
        state = "running"  # start_job is between writing job.json and starting the process
    else:
        state = "cancelled" if (d / "cancelled").exists() else "lost"
    log = d / "log.txt"
    tail = ""
    if log.is_file():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-tail_lines:])
    return JobStatus(
        job_id=job_id, name=meta.get("name", job_id), state=state, pid=int(meta["pid"]),
        device=meta.get("device", "cpu"), run_dir=meta.get("run_dir"),
        argv=tuple(meta["argv"]), started=meta["started"], finished=finished,
        returncode=returncode, log_tail=tail,
    )


def list_jobs(jobs_dir: str | os.PathLike[str]) -> list[JobStatus]:
    """Every job under ``jobs_dir``, newest first."""
    root = Path(jobs_dir)
    if not root.is_dir():
        return []
    dirs = [d for d in root.iterdir() if (d / "job.json").is_file()]
    # started has a resolution of one second: the job file's time orders jobs of one second
    stamp = {d.name: (d / "job.json").stat().st_mtime_ns for d in dirs}
    out = [job_status(root, d.name) for d in dirs]
    return sorted(out, key=lambda s: (s.started, stamp[s.job_id]), reverse=True)


def active_job(jobs_dir: str | os.PathLike[str], device: str = "cpu") -> JobStatus | None:
    """The running job that holds ``device``, if any (stale locks are ignored)."""
    lock = Path(jobs_dir) / f"device-{device}.lock"
    if not lock.is_file():
        return None
    try:
        job_id = json.loads(lock.read_text())["job_id"]
        status = job_status(jobs_dir, job_id)
    except (SkinCoreError, KeyError, ValueError, OSError):
        return None
    return status if status.active else None


def start_job(
    argv: Sequence[str],
    *,
    jobs_dir: str | os.PathLike[str],
    name: str = "job",
    device: str = "cpu",
    run_dir: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
) -> JobStatus:
    """Start ``argv`` as a detached background job holding ``device``.

    Raises
    ------
    JobBusyError
        When a running job already holds ``device`` (one training job per device).
    """
    root = Path(jobs_dir)
    root.mkdir(parents=True, exist_ok=True)
    busy = active_job(root, device)
    if busy is not None:
        raise JobBusyError(
            f"Job {busy.name!r} ({busy.job_id}) is already running on {device}; wait for it to "
            "finish or cancel it before starting another."
        )
    job_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    d = _job_dir(root, job_id)
    d.mkdir()
    meta = {"job_id": job_id, "name": name, "argv": list(argv), "device": device,
            "run_dir": str(run_dir) if run_dir is not None else None, "started": _now(), "pid": -1}
    atomic_write_json(d / "job.json", meta)
    with open(d / "log.txt", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "skin_core.jobs", str(d)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, **(env or {})},
        )
    meta["pid"] = proc.pid
    atomic_write_json(d / "job.json", meta)
    atomic_write_json(root / f"device-{device}.lock", {"job_id": job_id, "pid": proc.pid})
    return job_status(root, job_id)


def cancel_job(
    jobs_dir: str | os.PathLike[str], job_id: str, *, grace_s: float = 10.0
) -> JobStatus:
    """Ask a job to stop: write the run's ``cancel`` file, then terminate it after ``grace_s``."""
    status = job_status(jobs_dir, job_id)
    d = _job_dir(Path(jobs_dir), job_id)
    if not status.active:
        return status
    (d / "cancelled").write_text(_now())
    if status.run_dir:
        Path(status.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(status.run_dir) / "cancel").write_text(_now())
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and pid_alive(status.pid):
        time.sleep(0.2)
    if pid_alive(status.pid):
        try:
            os.killpg(status.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and pid_alive(status.pid):
            time.sleep(0.1)
    return job_status(jobs_dir, job_id)


def _run(job_dir: Path) -> int:
    """The wrapper that runs inside the job: run the command, then record its exit status."""
    meta = json.loads((job_dir / "job.json").read_text())
    rc = 1
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: object) -> None:
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    try:
        child = subprocess.Popen(meta["argv"])
        rc = child.wait()
    finally:
        atomic_write_json(job_dir / "exit.json", {"returncode": rc, "finished": _now()})
    return rc


if __name__ == "__main__":  # pragma: no cover - exercised through start_job in tests
    raise SystemExit(_run(Path(sys.argv[1])))
