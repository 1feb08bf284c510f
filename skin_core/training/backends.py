"""Backends that run the (model, fold) jobs: local (in sequence) and Ray (one task each).

Both call :func:`skin_core.training.engine.train_fold`, which writes its outputs straight into
the run directory; the driver (:func:`skin_core.training.run.train_run`) then assembles
``oof.csv`` from the per-fold parts, whichever backend produced them.

Ray: each job is one ``ray.remote`` task asking for ``num_gpus=1`` when the cluster has GPUs,
else ``num_cpus=config.ray_cpus_per_task``. On a cluster the run directory must be on storage
every node sees (NFS, a shared volume); the jobs carry absolute paths, so the workers' own
working directory does not matter. ``config.ray_address`` (or ``$RAY_ADDRESS``) connects to a
running cluster through :func:`connect_ray`, which turns a head that does not answer or refuses
this client's authentication token into one :class:`~skin_core.errors.ConfigError` sentence
within :data:`RAY_CONNECT_TIMEOUT_S` + :data:`RAY_HANDSHAKE_TIMEOUT_S` seconds at most, instead
of Ray's 20 s to minutes of retries; without an address a local Ray is started
(``include_dashboard=False``) and shut down afterwards. See docs/training.md ("Ray backend").
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skin_core.errors import ConfigError
from skin_core.training.config import TrainConfig
from skin_core.training.engine import FoldJob, train_fold

#: Seconds allowed for the TCP check of a head address, then for a Ray handshake with it (Ray's
#: own ``ray.init`` retries ~20 s on a refused token and minutes with no head at the address).
RAY_CONNECT_TIMEOUT_S = 5.0
RAY_HANDSHAKE_TIMEOUT_S = 15.0
RAY_CLIENT_PREFIX = "ray://"
RAY_CLIENT_PORT = 10001
_SETUP_HINT = "see the README, 'GPU and Ray'"


def run_local(jobs: list[FoldJob], *, status: Any, done: int = 0, progress: bool = False,
              batch_hook: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Train ``jobs`` one after another in this process; returns their sidecars."""
    results = []
    for job in jobs:
        status.write(model=job.model, arch=job.arch, fold=job.fold, epoch=None)
        results.append(train_fold(
            job, progress=progress, batch_hook=batch_hook,
            on_epoch=lambda ev, d=done: status.epoch_done(ev, d)))
        done += 1
        status.write(jobs_done=done, progress=round(done / status.n_jobs, 4))
    return results


def cluster_address(address: str | None = None) -> str | None:
    """The Ray cluster to use: ``address``, else ``$RAY_ADDRESS``, else None (a local Ray).

    ``"local"`` (Ray's word for "start a new local instance") also gives None.
    """
    address = (address or os.environ.get("RAY_ADDRESS") or "").strip()
    return None if address in ("", "local") else address


def parse_ray_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of a head address ``HOST:PORT`` or ``ray://HOST[:PORT]``.

    Raises
    ------
    ConfigError
        The address has no host, or no valid port (a GCS address needs one).
    """
    client = address.startswith(RAY_CLIENT_PREFIX)
    rest = address[len(RAY_CLIENT_PREFIX):] if client else address
    host, sep, port_text = rest.rpartition(":")
    if not sep or "]" in port_text:  # no port (an IPv6 "[::1]" alone ends in "]")
        host, port_text = rest, str(RAY_CLIENT_PORT) if client else ""
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(
            f"The Ray address {address!r} is not HOST:PORT; pass the head's address as "
            "`ray start --head` prints it (e.g. --address 10.0.0.5:6379, or "
            f"ray://10.0.0.5:{RAY_CLIENT_PORT} for the Ray client).")
    return host, int(port_text)


def check_ray_address(address: str, *, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Check that something accepts TCP connections at a Ray head ``address``.

    A plain TCP connect with ``timeout`` seconds, so an address with no head fails at once
    instead of after Ray's minutes of retries. ``"auto"`` (the head last started on this
    machine) is left to Ray.

    Raises
    ------
    ConfigError
        The address is malformed, its host does not resolve, or nothing answers at it.
    """
    if address == "auto":
        return
    host, port = parse_ray_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except socket.gaierror:
        reason = f"the host name {host!r} does not resolve"
    except TimeoutError:
        reason = f"no answer within {timeout:g} s"
    except ConnectionRefusedError:
        reason = "connection refused: nothing listens on that port"
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
    raise ConfigError(
        f"No Ray head answers at {address} ({reason}); start one there with `ray start --head "
        f"--port {port}` (with RAY_AUTH_MODE=token and a token, {_SETUP_HINT}) or pass the "
        "address that `ray start --head` printed.")


def _auth_error(address: str) -> ConfigError:
    mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower()
    if mode != "token":
        found = f"RAY_AUTH_MODE is {mode!r} here" if mode else "RAY_AUTH_MODE is not set here"
        return ConfigError(
            f"The Ray head at {address} requires token authentication but {found}; set "
            "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to the head's token (print it on the head "
            "with `ray get-auth-token`), or RAY_AUTH_TOKEN_PATH to a file holding it "
            f"({_SETUP_HINT}).")
    if not any(os.environ.get(v) for v in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")) \
            and not (Path.home() / ".ray" / "auth_token").is_file():
        return ConfigError(
            f"RAY_AUTH_MODE=token is set but no token was found to connect to the Ray head at "
            f"{address}; set RAY_AUTH_TOKEN to the head's token (print it on the head with `ray "
            f"get-auth-token`), or RAY_AUTH_TOKEN_PATH to a file holding it ({_SETUP_HINT}).")
    return ConfigError(
        f"The Ray head at {address} refused this client's authentication token; set "
        "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token) to the token the head was "
        f"started with (print it on the head with `ray get-auth-token`; {_SETUP_HINT}).")


_AUTH_MARKERS = ("AuthenticationError", "InvalidAuthToken", "Unauthenticated")
_OK_MARK = "skin-core: ray handshake ok"
_HANDSHAKE = f"""
import sys
import ray
address = sys.argv[1]
kwargs = {{}} if address.startswith("{RAY_CLIENT_PREFIX}") else {{"include_dashboard": False}}
ray.init(address=address, log_to_driver=False, **kwargs)
print("{_OK_MARK}", flush=True)
ray.shutdown()
"""


def ray_handshake(address: str, *, timeout: float = RAY_HANDSHAKE_TIMEOUT_S) -> None:
    """Connect to the head at ``address`` in a child process killed after ``timeout`` seconds.

    Ray's own ``ray.init`` retries for ~20 s when the head refuses the token and up to minutes
    when the port does not speak Ray; the child bounds both, and this process only calls
    ``ray.init`` once the child got through. The child inherits the environment (so
    ``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN``...) with Ray's GCS retries cut to
    ``RAY_gcs_server_port_wait_time_s=3`` unless that is set.

    Raises
    ------
    ConfigError
        The head refused this client's token, or no Ray handshake completed within
        ``timeout`` seconds.
    """
    import subprocess
    import sys

    env = dict(os.environ)
    env.setdefault("RAY_gcs_server_port_wait_time_s", "3")
    try:
        proc = subprocess.run([sys.executable, "-c", _HANDSHAKE, address], env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:  # run() has killed the child
        out = _text(exc.stdout) + _text(exc.stderr)
        if any(m in out for m in _AUTH_MARKERS):
            raise _auth_error(address) from None
        raise ConfigError(
            f"Something answers at {address} but no Ray handshake completed within "
            f"{timeout:g} s; pass the GCS address that `ray start --head` printed (port 6379 by "
            f"default) and check that the head runs Ray {_ray_version()} like this machine."
        ) from None
    out = f"{proc.stdout}{proc.stderr}"
    if proc.returncode == 0 and _OK_MARK in proc.stdout:
        return
    if any(m in out for m in _AUTH_MARKERS):
        raise _auth_error(address)
    if address.startswith(RAY_CLIENT_PREFIX) and "ray[client]" in out:
        raise ConfigError(
            f"The Ray client address {address} needs the Ray client, which is not installed; "
            f"run `pip install \"ray[client]=={_ray_version()}\"` or, from a machine inside the "
            "cluster, pass the head's GCS address HOST:6379.")
    last = next((ln.strip() for ln in reversed(out.splitlines()) if ln.strip()), "no output")
    last = last if len(last) <= 200 else last[:197] + "..."
    raise ConfigError(
        f"Something answers at {address} but Ray could not connect to a head there ({last}); "
        "pass the GCS address that `ray start --head` printed (port 6379 by default) and "
        f"check that the head runs Ray {_ray_version()} and the same Python as this machine.")


def _text(out: str | bytes | None) -> str:
    return out.decode(errors="replace") if isinstance(out, bytes) else out or ""


def _ray_version() -> str:
    from importlib.metadata import version

    return version("ray")


def connect_ray(address: str | None, *, timeout: float = RAY_CONNECT_TIMEOUT_S,
                handshake_timeout: float = RAY_HANDSHAKE_TIMEOUT_S) -> bool:
    """Connect this process to the Ray cluster at ``address``, or start a local Ray.

    With an address, the head is first checked with a TCP connect (:func:`check_ray_address`,
    ``timeout`` seconds), then with a full Ray handshake in a child process
    (:func:`ray_handshake`, ``handshake_timeout`` seconds), and only then joined with
    ``ray.init``. A head that refuses this client's token becomes one sentence naming the
    address and the fix: Ray >= 2.59 turns token authentication on by itself when a token
    exists (``~/.ray/auth_token``, written by any earlier local ``ray.init()``), while a client
    given an explicit address sends one only with ``RAY_AUTH_MODE=token``.

    Parameters
    ----------
    address:
        ``HOST:PORT`` of a head's GCS, ``ray://HOST[:PORT]`` (the Ray client; needs
        ``ray[client]``), ``"auto"``, or None to start a local Ray (``include_dashboard=False``).
    timeout, handshake_timeout:
        Seconds for the TCP check and for the handshake.

    Returns
    -------
    bool
        True when this call initialised Ray (the caller shuts it down), False when this
        process was already connected.

    Raises
    ------
    ConfigError
        Nothing answers at the address, the head refuses authentication, or it answers but is
        not a Ray head this Ray can talk to.
    """
    import ray

    if ray.is_initialized():
        return False
    if address is None:
        ray.init(include_dashboard=False, log_to_driver=False)
        return True
    check_ray_address(address, timeout=timeout)
    ray_handshake(address, timeout=handshake_timeout)
    kwargs: dict[str, Any] = {"log_to_driver": False}
    if not address.startswith(RAY_CLIENT_PREFIX):
        kwargs["include_dashboard"] = False
    ray.init(address=address, **kwargs)
    return True


def _absolute(job: FoldJob) -> FoldJob:
    """``job`` with its run directory, image cache and weight files as absolute paths.

    Ray workers do not share the driver's working directory, so a relative ``--out`` would
    otherwise be written somewhere else on every node.
    """
    def resolve(spec: Any) -> Any:
        if isinstance(spec, dict):
            return {k: resolve(v) for k, v in spec.items()}
        if isinstance(spec, str) and spec not in ("none", "hub") and Path(spec).is_file():
            return str(Path(spec).resolve())
        return spec

    config = dict(job.config)
    if "pretrained" in config:
        config["pretrained"] = resolve(config["pretrained"])
    return dataclasses.replace(job, run_dir=str(Path(job.run_dir).resolve()),
                               cache_path=str(Path(job.cache_path).resolve()), config=config)


def _ray_train(job: FoldJob, threads: int) -> dict[str, Any]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    return train_fold(job, progress=False)


def run_ray(jobs: list[FoldJob], *, config: TrainConfig, status: Any, done: int = 0,
            progress: bool = False) -> list[dict[str, Any]]:
    """Run each job as one Ray task; waits for all, updating ``status.json`` as they finish.

    Connects with :func:`connect_ray` unless this process is already connected (the command
    line connects before it writes anything). A failed task re-raises its error here after the
    other tasks are cancelled.
    """
    import ray
    from tqdm.auto import tqdm

    started = connect_ray(cluster_address(config.ray_address))
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        opts: dict[str, Any] = {"num_gpus": 1} if gpus >= 1 else {
            "num_cpus": config.ray_cpus_per_task}
        remote = ray.remote(max_retries=0)(_ray_train).options(**opts)
        threads = 0 if gpus >= 1 else config.ray_cpus_per_task
        pending = {remote.remote(_absolute(job), threads): job for job in jobs}
        results = []
        bar = tqdm(total=len(jobs), disable=not progress, desc="ray jobs", unit="fold")
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                ref = ready[0]
                job = pending.pop(ref)
                try:
                    results.append(ray.get(ref))
                except ray.exceptions.RayTaskError as exc:
                    for other in pending:
                        ray.cancel(other, force=True)
                    cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                    raise cause from exc
                done += 1
                bar.update(1)
                status.write(jobs_done=done, progress=round(done / status.n_jobs, 4),
                             model=job.model, arch=job.arch, fold=job.fold)
        finally:
            bar.close()
        return results
    finally:
        if started:
            ray.shutdown()
