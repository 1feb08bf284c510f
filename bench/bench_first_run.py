"""First run of the README's run command on a fresh checkout, and a later start.

Clones this repository into a temporary folder (no ``.venv``, no demo, no caches), runs
``./run.sh`` on a free port and times, from the moment it starts:

- ``install_s``: until ``scripts/setup.sh`` says ``setup: done`` (the virtual environment with
  the pinned requirements; pip's download cache is the machine's own, as it is for any user),
- ``demo_s``: until the demo build finishes (``skin-core demo``),
- ``ready_s``: until the app answers on ``/_stcore/health`` and its Home page is served.

Then it stops the app and runs ``./run.sh`` again in the same checkout (``later_start_s``:
everything is installed and built, so only the stamp check and Streamlit's start remain).
Targets (issue #8): fresh machine to app ready < 10 min on 2 cores, a later start < 20 s.

Usage::

    .venv/bin/python bench/bench_first_run.py [--keep DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def start(checkout: Path, log: Path, timeout: float) -> dict[str, float]:
    """Run ``./run.sh`` until the app is healthy; return the stage times (seconds)."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SKIN_CORE_", "VIRTUAL_ENV"))}
    env.update(PORT=str(port), PYTHONUNBUFFERED="1")
    marks: dict[str, float] = {}
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        proc = subprocess.Popen(
            ["./run.sh", "--server.headless", "true", "--server.address", "127.0.0.1"],
            cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1, start_new_session=True)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                now = time.perf_counter() - t0
                fh.write(f"[{now:7.1f}] {line}")
                if "setup: done" in line or "is up to date" in line:
                    marks.setdefault("install_s", now)
                if line.startswith("demo ready"):
                    marks.setdefault("demo_s", now)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            while not _healthy(port):
                if proc.poll() is not None:
                    raise RuntimeError(f"./run.sh exited with {proc.returncode}; see {log}")
                if time.perf_counter() - t0 > timeout:
                    raise RuntimeError(f"app not ready after {timeout:.0f} s; see {log}")
                time.sleep(0.25)
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read()
            marks["ready_s"] = time.perf_counter() - t0
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    return {k: round(v, 1) for k, v in marks.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", default=None, help="clone into this folder and keep it")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="sde-first-run-"))
    checkout = work / "checkout"
    if checkout.exists():
        shutil.rmtree(checkout)
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(checkout)], check=True)
    log = work / "run.log"
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "load_avg_before": round(os.getloadavg()[0], 2),
        "first_run": start(checkout, log, args.timeout),
        "later_start_s": start(checkout, log, args.timeout)["ready_s"],
        "load_avg_after": round(os.getloadavg()[0], 2),
        "log": str(log),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
