"""Training on a real Ray cluster through ``--address``, and the sentences a bad address gets.

The slow tests start a real head with ``ray start --head --block`` on 127.0.0.1 only, with token
authentication (``RAY_AUTH_MODE=token`` and a random ``RAY_AUTH_TOKEN``, as the README tells a
cluster user), and stop it in the fixture's teardown by its own process id (SIGTERM makes the
blocking ``ray start`` drain and stop every process it started; stragglers of its session get
SIGKILL). ``ray stop --force`` is not used: it kills every Ray process of the user on the
machine, which would take down other tests' or other users' Ray instances.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_training import make_tiny_dataset

from skin_core.errors import ConfigError
from skin_core.training.backends import (
    _absolute,
    check_ray_address,
    cluster_address,
    connect_ray,
    parse_ray_address,
)
from skin_core.training.engine import FoldJob

LOOPBACK = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _tiny_csv(root: Path) -> str:
    ds = make_tiny_dataset(root, per_class=10)
    csv = root / "dataset.csv"
    ds.table[["image_id", "path", "label", "lesion_id"]].to_csv(csv, index=False)
    return f"csv:{csv},classes=A|B|C"


def _train_args(spec: str, out: str, cache: str) -> list[str]:
    return ["train", "--dataset", spec, "--arch", "test_resnet", "--folds", "2", "--epochs", "1",
            "--img-size", "32", "--batch-size", "8", "--lr", "3e-3", "--threads", "1",
            "--patience", "0", "--cache-dir", cache, "--no-progress", "--json", "--out", out]


# --- fast: addresses, and a head that is not there ------------------------------------------

@pytest.mark.parametrize(("address", "want"), [
    ("10.0.0.5:6379", ("10.0.0.5", 6379)),
    ("ray://head.example:10001", ("head.example", 10001)),
    ("ray://head.example", ("head.example", 10001)),
    ("[::1]:6380", ("::1", 6380)),
])
def test_parse_ray_address(address: str, want: tuple[str, int]) -> None:
    assert parse_ray_address(address) == want


@pytest.mark.parametrize("address", ["head", "head:", ":6379", "head:99999", "head:port", "[::1]"])
def test_malformed_address_is_one_sentence(address: str) -> None:
    with pytest.raises(ConfigError, match=r"is not HOST:PORT; pass the head's address") as err:
        parse_ray_address(address)
    assert "\n" not in str(err.value) and address in str(err.value)


def test_cluster_address_falls_back_to_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address(None) is None
    assert cluster_address("10.0.0.5:6379") == "10.0.0.5:6379"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    assert cluster_address(None) == "10.0.0.9:6379"
    assert cluster_address("10.0.0.5:6379") == "10.0.0.5:6379"
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert cluster_address(None) is None


def test_unreachable_head_is_one_sentence_within_30_s(tmp_path: Path, capsys) -> None:
    """Nothing listens at the port: exit 2 with one sentence naming the address and the fix,
    at once (Ray's own ``ray.init`` retries for minutes), before the run directory exists."""
    from skin_core.cli import main

    spec = _tiny_csv(tmp_path / "d")
    port = _free_port()
    address = f"{LOOPBACK}:{port}"
    out = tmp_path / "run"
    t0 = time.monotonic()
    rc = main([*_train_args(spec, str(out), str(tmp_path / "cache")), "--backend", "ray",
               "--address", address])
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err.strip()
    assert rc == 2 and elapsed < 30, (rc, elapsed)
    assert err.count("\n") == 0 and err.startswith(f"skin-core: error: No Ray head answers at "
                                                    f"{address} (connection refused")
    assert f"`ray start --head --port {port}`" in err and "RAY_AUTH_MODE=token" in err
    assert not out.exists()


def test_check_ray_address_reports_a_silent_port_within_its_timeout() -> None:
    """A listener whose backlog is full never completes the TCP handshake (Linux drops the
    SYNs): the check gives up after ``timeout`` seconds, not the kernel's minutes."""
    with socket.socket() as server:
        server.bind((LOOPBACK, 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):  # fill the accept queue (never accepted)
                c = socket.socket()
                c.setblocking(False)
                c.connect_ex((LOOPBACK, port))
                fillers.append(c)
            t0 = time.monotonic()
            with pytest.raises(ConfigError, match=rf"No Ray head answers at {LOOPBACK}:{port} "
                               r"\(no answer within 1 s\)"):
                check_ray_address(f"{LOOPBACK}:{port}", timeout=1.0)
            assert time.monotonic() - t0 < 5
        finally:
            for c in fillers:
                c.close()


def test_jobs_travel_to_ray_with_absolute_paths(tmp_path: Path, monkeypatch) -> None:
    """Ray workers do not share the driver's working directory (a worker of a head started
    in /tmp works in /tmp), so relative run, cache and weight paths are resolved first."""
    monkeypatch.chdir(tmp_path)
    Path("w.safetensors").write_bytes(b"x")
    job = FoldJob(run_dir="runs/a", model="m", arch="test_resnet", seed=0, fold=0,
                  classes=("A", "B"), cache_path=".cache/c.u8", cache_shape=(1, 2, 2, 3),
                  train_rows=(0,), train_labels=(0,), val_rows=(), val_labels=(), val_ids=(),
                  config={"pretrained": {"test_resnet": "w.safetensors", "default": "hub"}})
    moved = _absolute(job)
    assert moved.run_dir == str(tmp_path / "runs" / "a")
    assert moved.cache_path == str(tmp_path / ".cache" / "c.u8")
    assert moved.config["pretrained"] == {"test_resnet": str(tmp_path / "w.safetensors"),
                                          "default": "hub"}
    assert job.run_dir == "runs/a"  # the original is left alone


# --- slow: a real head on 127.0.0.1 -----------------------------------------------------------

@dataclass(frozen=True)
class Head:
    address: str
    token: str
    log: Path
    cwd: Path  # where the head (and so its workers) runs


def _session_pids(sid: int) -> list[int]:
    """Processes of session ``sid`` (the head's ``ray start`` and everything it started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if int(fields[3]) == sid:
            pids.append(int(entry.name))
    return pids


def _stop_head(proc: subprocess.Popen) -> None:
    """SIGTERM to the blocking ``ray start`` (it stops its processes), then SIGKILL leftovers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _session_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in _session_pids(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _ray_env(token: str | None) -> dict[str, str]:
    """This environment without Ray's address and auth variables, plus ``token`` if given."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env["OMP_NUM_THREADS"] = "1"
    if token is not None:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    return env


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    """A one-CPU head on 127.0.0.1 with token authentication and no dashboard."""
    import secrets

    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.is_file():
        pytest.skip("the `ray` command is not installed beside this Python")
    token = secrets.token_hex(32)
    port = _free_port()
    temp = Path(tempfile.mkdtemp(prefix="skray", dir="/tmp"))  # short: Ray's socket paths
    log = tmp_path_factory.mktemp("head") / "head.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [str(ray_bin), "start", "--head", "--block", "--node-ip-address", LOOPBACK,
             "--port", str(port), "--num-cpus", "1", "--include-dashboard", "false",
             "--temp-dir", str(temp), "--object-store-memory", str(100 * 2**20),
             "--disable-usage-stats"],
            env=_ray_env(token), cwd=temp, stdout=fh, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield Head(f"{LOOPBACK}:{port}", token, log, temp)
    finally:
        _stop_head(proc)
        shutil.rmtree(temp, ignore_errors=True)
    assert not _session_pids(proc.pid), "Ray head processes survived the teardown"


def _skin_core(args: list[str], *, cwd: Path, token: str | None,
               timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "import sys; from skin_core.cli import main; "
           "sys.exit(main(sys.argv[1:]))", *args]
    return subprocess.run(cmd, cwd=cwd, env=_ray_env(token), capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.slow
@pytest.mark.ray
def test_cli_trains_through_address_like_locally(ray_head: Head, tmp_path: Path) -> None:
    """``skin-core train --backend ray --address 127.0.0.1:PORT`` with the head's token gives
    the local run's ``oof.csv`` byte for byte: the same code, seeds and deterministic CPU
    kernels, one torch thread on both sides (``--threads 1``, ``--ray-cpus 1``)."""
    from skin_core.cli import main

    spec = _tiny_csv(tmp_path / "d")
    assert main(_train_args(spec, str(tmp_path / "local"), str(tmp_path / "cache"))) == 0
    # relative --out and --cache-dir: the head's workers run in another directory
    proc = _skin_core([*_train_args(spec, "ray-run", "ray-cache"), "--backend", "ray",
                       "--address", ray_head.address, "--ray-cpus", "1"],
                      cwd=tmp_path, token=ray_head.token)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "ray-run"
    assert (run / "oof.csv").read_bytes() == (tmp_path / "local" / "oof.csv").read_bytes()
    for k in (0, 1):
        assert (run / "members" / "test_resnet" / f"fold{k}.safetensors").is_file()
    assert '"backend": "ray"' in (run / "status.json").read_text()
    assert not (ray_head.cwd / "ray-run").exists()


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize(("token", "want"), [
    (None, "requires token authentication but RAY_AUTH_MODE is not set here; set "
           "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to the head's token"),
    ("not-the-token", "refused this client's authentication token; set RAY_AUTH_TOKEN"),
])
def test_unauthorised_client_is_one_sentence_within_30_s(ray_head: Head, tmp_path: Path,
                                                         token: str | None, want: str) -> None:
    """Without the head's token (Ray's own ``ray.init`` retries ~20 s, then a traceback)."""
    t0 = time.monotonic()
    proc = _skin_core([*_train_args("csv:never-read.csv", "run", "cache"), "--backend", "ray",
                       "--address", ray_head.address], cwd=tmp_path, token=token, timeout=60)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2 and elapsed < 30, (proc.returncode, elapsed, proc.stderr)
    err = proc.stderr.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"skin-core: error: The Ray head at {ray_head.address} ")
    assert want in err and "README, 'GPU and Ray'" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.ray
def test_a_port_that_is_not_a_ray_head_is_one_sentence(tmp_path: Path) -> None:
    """Something accepts connections but never speaks Ray: the child handshake is killed after
    its timeout (Ray itself waits ~40 s per attempt here)."""
    with socket.socket() as server:
        server.bind((LOOPBACK, 0))
        server.listen(8)
        address = f"{LOOPBACK}:{server.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(ConfigError, match="no Ray handshake completed within 4 s") as err:
            connect_ray(address, handshake_timeout=4)
        assert time.monotonic() - t0 < 15
    assert address in str(err.value) and "\n" not in str(err.value)
