"""Backends that run the (model, fold) jobs: local (in sequence) and Ray (one task each).

Both call :func:`skin_core.training.engine.train_fold`, which writes its outputs straight into
the run directory; the driver (:func:`skin_core.training.run.train_run`) then assembles
``oof.csv`` from the per-fold parts, whichever backend produced them.

Ray: each job is one ``ray.remote`` task asking for ``num_gpus=1`` when the cluster has GPUs,
else ``num_cpus=config.ray_cpus_per_task``. On a cluster the run directory must be on storage
every node sees (NFS, a shared volume). ``config.ray_address`` connects to a running cluster;
otherwise a local Ray is started (``include_dashboard=False``) and shut down afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from skin_core.training.config import TrainConfig
from skin_core.training.engine import FoldJob, train_fold


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


def _ray_train(job: FoldJob, threads: int) -> dict[str, Any]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    return train_fold(job, progress=False)


def run_ray(jobs: list[FoldJob], *, config: TrainConfig, status: Any, done: int = 0,
            progress: bool = False) -> list[dict[str, Any]]:
    """Run each job as one Ray task; waits for all, updating ``status.json`` as they finish.

    A failed task re-raises its error here after the other tasks are cancelled.
    """
    import ray
    from tqdm.auto import tqdm

    started = False
    if not ray.is_initialized():
        if config.ray_address:
            ray.init(address=config.ray_address, include_dashboard=False,
                     log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)
        started = True
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        opts: dict[str, Any] = {"num_gpus": 1} if gpus >= 1 else {
            "num_cpus": config.ray_cpus_per_task}
        remote = ray.remote(max_retries=0)(_ray_train).options(**opts)
        threads = 0 if gpus >= 1 else config.ray_cpus_per_task
        pending = {remote.remote(job, threads): job for job in jobs}
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
