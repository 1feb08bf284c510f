"""Train one (model, fold): the unit of work of every backend.

:func:`train_fold` trains a member on the training rows of one fold and keeps the weights of
one epoch, chosen without looking at the fold it predicts (``epoch_selection``):

- ``last`` (default): the last epoch of the fixed schedule;
- ``inner``: the epoch with the best balanced accuracy on the job's inner split (a
  lesion-grouped share of the fold's training images, not trained on), with optional early
  stopping (``patience``) on the same split.

The fold's own validation images are predicted after every epoch only to report the learning
curve (``events.jsonl``); that score never chooses anything. It writes into the run directory:

- ``members/<model>/fold<k>.safetensors``: the selected epoch's weights (model tensors only);
- ``members/<model>/fold<k>.oof.csv``: that model's probabilities for the fold's validation
  images (``image_id, model, arch, fold, label, prob_<CLASS>...``);
- ``members/<model>/fold<k>.json``: the sidecar (arch, classes, preprocessing, metrics,
  ``epoch_selection``, ``selected_epoch``, ``n_inner``, sha256 of the weights). Written last:
  its presence marks the fold as finished;
- one line per epoch in ``events.jsonl``;
- ``checkpoints/<model>/fold<k>/``: the resumable per-epoch state, deleted once the fold has
  finished.

Pixels come from the image cache memmap (``uint8``), are augmented batched on tensors
(:mod:`skin_core.training.augment`), and never decoded from JPEG here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import random
import shutil
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from skin_core.constants import prob_columns
from skin_core.errors import ConfigError, SkinCoreError
from skin_core.models.device import resolve_device, tune_cpu_allocator
from skin_core.training.config import TrainConfig
from skin_core.training.losses import (  # noqa: F401 - class_weights: re-exported
    class_weights,
    epoch_order,
    logit_adjustment,
    make_loss,
)
from skin_core.training.regularise import WeightAverage, mix_batch, mixed_loss

CANCEL_FILE = "cancel"


class TrainingCancelled(SkinCoreError):
    """The run's cancel file appeared; the last epoch checkpoint is kept for --resume."""


@dataclass(frozen=True)
class FoldJob:
    """Everything one (model, fold) needs; plain values so it travels to Ray workers.

    ``train_rows`` / ``val_rows`` / ``inner_rows`` index the image cache (``cache_path``,
    shape ``cache_shape``); labels are class indices into ``classes``. ``inner_rows`` (empty
    unless ``epoch_selection`` is ``inner``) are the fold's inner split, disjoint from
    ``train_rows``.
    """

    run_dir: str
    model: str
    arch: str
    seed: int
    fold: int
    classes: tuple[str, ...]
    cache_path: str
    cache_shape: tuple[int, int, int, int]
    train_rows: tuple[int, ...]
    train_labels: tuple[int, ...]
    val_rows: tuple[int, ...]
    val_labels: tuple[int, ...]
    val_ids: tuple[str, ...]
    config: dict[str, Any]
    resume: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    inner_rows: tuple[int, ...] = ()
    inner_labels: tuple[int, ...] = ()

    @property
    def member_dir(self) -> Path:
        return Path(self.run_dir) / "members" / self.model

    @property
    def sidecar(self) -> Path:
        return self.member_dir / f"fold{self.fold}.json"

    @property
    def ckpt_dir(self) -> Path:
        return Path(self.run_dir) / "checkpoints" / self.model / f"fold{self.fold}"


def fold_finished(job: FoldJob) -> bool:
    """True when the fold's sidecar, weights and OOF part are all present."""
    d = job.member_dir
    return job.sidecar.is_file() and (d / f"fold{job.fold}.safetensors").is_file() and (
        d / f"fold{job.fold}.oof.csv").is_file()


def job_seed(seed: int, arch: str, fold: int) -> int:
    """Seed of one (arch, seed, fold): stable across processes and machines."""
    return (int(seed) * 1_000_003 + zlib.crc32(arch.encode()) + 7919 * int(fold)) % (2**31)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - seeds the global state libraries use
    torch.manual_seed(seed)


def lr_at(step: int, *, total: int, warmup: int, peak: float) -> float:
    """Linear warmup from ``peak / warmup`` to ``peak``, then cosine decay to 1 % of peak."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def append_event(run_dir: str | os.PathLike[str], event: dict[str, Any]) -> None:
    """Append one JSON line to ``events.jsonl`` (a single ``write`` in append mode)."""
    line = json.dumps(event, default=float) + "\n"
    with open(Path(run_dir) / "events.jsonl", "a", encoding="utf-8") as fh:
        fh.write(line)


def _batches(n: int, batch_size: int, order: np.ndarray) -> list[np.ndarray]:
    out = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if len(out) > 1 and len(out[-1]) < 2:  # BatchNorm cannot train on one image
        out.pop()
    return out


def load_batch(cache: np.ndarray, rows: np.ndarray, labels: np.ndarray, *, device: str,
               mean: Any, std: Any, generator: Any, augment: bool = True,
               channels_last: bool = True) -> tuple[Any, Any]:
    """One training batch from the cache memmap: ``(x, y)`` tensors on ``device``.

    Rows are read in sorted order (sequential memmap access), then augmented batched on
    tensors (:func:`~skin_core.training.augment.augment_batch`) and normalised; returned in
    channels-last memory layout when ``channels_last`` (else contiguous NCHW).
    """
    import torch

    from skin_core.training.augment import augment_batch, to_float

    srt = np.argsort(rows, kind="stable")
    x = torch.from_numpy(np.ascontiguousarray(cache[rows[srt]])).to(device)
    y = torch.from_numpy(np.asarray(labels)[srt]).to(device)
    if augment:
        x = augment_batch(x, mean=mean, std=std, generator=generator)
    else:
        x = to_float(x, mean, std)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt), y


def predict_rows(model: Any, cache: np.ndarray, rows: np.ndarray, *, device: str, mean: Any,
                 std: Any, batch_size: int, amp: bool = False, channels_last: bool = True,
                 tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and logits of ``model`` for cache ``rows`` (eval mode).

    With ``tta`` the probabilities are the mean softmax over the identity, horizontal,
    vertical and both flips, as the served :class:`~skin_core.predict.Predictor` computes them
    (the logits are then the identity's).
    """
    import torch

    from skin_core.training.augment import to_float

    model.eval()
    probs, logits_all = [], []
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            r = rows[i:i + batch_size]
            order = np.argsort(r, kind="stable")
            x = torch.from_numpy(np.ascontiguousarray(cache[r[order]])).to(device)
            x = to_float(x, mean, std).contiguous(
                memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            views = [x, x.flip(3), x.flip(2), x.flip(2).flip(3)] if tta else [x]
            outs = []
            for v in views:  # one flip at a time: a fourth of the activations' memory
                with torch.autocast("cuda", enabled=amp and device == "cuda"):
                    outs.append(model(v).float())
            # as the Predictor: the float64 mean of the flips' softmaxes
            p = np.mean([torch.softmax(o, dim=1).cpu().numpy().astype(np.float64)
                         for o in outs], axis=0)
            inv = np.argsort(order, kind="stable")
            logits_all.append(outs[0].cpu().numpy()[inv])
            probs.append(p[inv])
    k = model.num_classes if hasattr(model, "num_classes") else 0
    if not probs:
        return np.zeros((0, k)), np.zeros((0, k))
    return np.concatenate(probs).astype(np.float64), np.concatenate(logits_all)


def train_fold(
    job: FoldJob,
    *,
    progress: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    batch_hook: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train ``job``'s member on its fold and write its outputs (see module docstring).

    Parameters
    ----------
    job:
        The (model, fold) to train.
    progress:
        Show a tqdm bar (fold, epoch, images/s, ETA) on stderr.
    on_epoch:
        Called with each epoch's event dict (the local backend updates ``status.json``).
    batch_hook:
        Called with the global step number before each optimisation step (tests use it to
        simulate a crash).

    Returns
    -------
    dict: the sidecar's content (``model``, ``fold``, ``epoch_selection``,
    ``selected_epoch``, ``metrics``...).

    Raises
    ------
    TrainingCancelled
        ``<run_dir>/cancel`` appeared (checked between batches).
    ConfigError
        ``--resume`` found a checkpoint made for other classes or another architecture, or
        ``epoch_selection`` is ``inner`` but the job has no inner split.
    DiskFullError
        The disk filled up while saving (nothing half-written is kept).
    """
    import torch

    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        return _train_fold(job, progress=progress, on_epoch=on_epoch, batch_hook=batch_hook)
    finally:  # leave the process's torch settings as they were
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=det_warn)


def _train_fold(
    job: FoldJob,
    *,
    progress: bool,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    batch_hook: Callable[[int], None] | None,
) -> dict[str, Any]:
    import torch
    from tqdm.auto import tqdm

    from skin_core.analysis.metrics import classification_metrics
    from skin_core.io import atomic_write_csv
    from skin_core.models.registry import create_model, preprocess_config
    from skin_core.training import checkpoint as ck

    cfg = TrainConfig(**{**job.config, "archs": tuple(job.config["archs"]),
                         "seeds": tuple(job.config["seeds"])})
    run_dir = Path(job.run_dir)
    k = len(job.classes)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    tune_cpu_allocator()  # reuse freed activations instead of page-faulting them in each step
    if device == "cpu" and cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed = job_seed(job.seed, job.arch, job.fold)
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)

    model = create_model(job.arch, num_classes=k, pretrained=cfg.pretrained,
                         input_size=cfg.img_size, drop_rate=cfg.drop_rate,
                         drop_path_rate=cfg.drop_path_rate)
    # how the served pipeline must feed this member: the cache's resize mode and the TTA its
    # out-of-fold predictions used
    pre = dataclasses.replace(preprocess_config(job.arch, cfg.img_size), crop=cfg.resize,
                              tta=cfg.tta)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    cache = np.memmap(job.cache_path, dtype=np.uint8, mode="r", shape=tuple(job.cache_shape))
    frozen: list[Any] = []
    feats: Any = None  # frozen.FeatureReader
    if cfg.freeze:
        from skin_core.training import frozen as fz

        fz.check_split(model, cfg.freeze, cfg.img_size)
        frozen = fz.freeze_prefix(model, cfg.freeze)
        feats = fz.build_feature_cache(
            model, cfg.freeze, image_cache=cache, image_cache_path=job.cache_path,
            arch=job.arch, mean=pre.mean, std=pre.std, views=cfg.freeze_views,
            seed=job_seed(cfg.seed, job.arch, -1), out_dir=Path(job.cache_path).parent,
            device=device, channels_last=cfg.channels_last).open()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    ema = WeightAverage(model, cfg.ema) if cfg.ema else None
    member = ema.model if ema is not None else model  # scored, predicted and saved
    use_amp = bool(cfg.amp and device == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    train_rows = np.asarray(job.train_rows, dtype=np.int64)
    train_labels = np.asarray(job.train_labels, dtype=np.int64)
    val_rows = np.asarray(job.val_rows, dtype=np.int64)
    val_labels = np.asarray(job.val_labels, dtype=np.int64)
    inner_rows = np.asarray(job.inner_rows, dtype=np.int64)
    inner_labels = np.asarray(job.inner_labels, dtype=np.int64)
    select_inner = cfg.epoch_selection == "inner"
    if select_inner and not len(inner_rows):
        raise ConfigError(
            f"{job.model} fold {job.fold} has no inner split to choose its epoch on; build the "
            "jobs with skin_core.training.run.build_jobs or use epoch_selection: last."
        )
    n = len(train_rows)
    loss_fn = make_loss(train_labels, k, weighting=cfg.loss_weighting, sampling=cfg.sampling,
                        label_smoothing=cfg.label_smoothing, device=device)
    eval_loss = torch.nn.CrossEntropyLoss()
    steps_per_epoch = len(_batches(n, cfg.batch_size, np.arange(n)))
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    eval_bs = cfg.eval_batch_size or 2 * cfg.batch_size

    start_epoch, step = 0, 0
    # best_*: the selected epoch so far (inner split score; with "last", the latest epoch)
    best_score, best_epoch, since_best = -1.0, -1, 0
    last_probs: np.ndarray | None = None
    best_state: dict[str, Any] | None = None
    history: list[dict[str, Any]] = []
    ckpt_dir = job.ckpt_dir
    if job.resume:
        found = ck.load_checkpoint(ckpt_dir)
        if found is not None:
            tensors, state = found
            if tuple(state.get("classes", ())) != tuple(job.classes):
                raise ConfigError(
                    f"Checkpoint {ckpt_dir / 'last.json'} was made for classes "
                    f"{list(state.get('classes', []))} but the dataset has {list(job.classes)}; "
                    "resume with the dataset the run was started on, or start a new run "
                    "directory."
                )
            if state.get("arch") != job.arch:
                raise ConfigError(
                    f"Checkpoint {ckpt_dir / 'last.json'} was made for architecture "
                    f"{state.get('arch')!r}, not {job.arch!r}; start a new run directory."
                )
            ck.restore_training(tensors, state, model=model, optimizer=opt, generator=gen)
            if ema is not None:
                ema.restore(tensors)
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            start_epoch, step = int(state["epoch"]) + 1, int(state["step"])
            best_score, best_epoch = float(state["best_score"]), int(state["best_epoch"])
            since_best, history = int(state["since_best"]), list(state.get("history", []))
            best_state = ck.load_best(ckpt_dir, state)
    elif ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)

    cancel_file = run_dir / CANCEL_FILE
    bar = tqdm(total=total_steps, initial=step, disable=not progress, unit="batch",
               desc=f"{job.model} fold {job.fold}", leave=False, dynamic_ncols=True)
    t_run = time.perf_counter()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if select_inner and cfg.patience and since_best >= cfg.patience:
                break
            if feats is not None:
                fz.set_train_mode(model, frozen)
            else:
                model.train()
            order = epoch_order(train_labels, k, cfg.sampling, gen)
            t0 = time.perf_counter()
            loss_sum, seen = 0.0, 0
            for batch in _batches(n, cfg.batch_size, order):
                if cancel_file.exists():
                    raise TrainingCancelled(
                        f"Training was cancelled ({cancel_file} exists) during {job.model} fold "
                        f"{job.fold} epoch {epoch}; delete the cancel file and rerun with "
                        "--resume to continue from the last finished epoch."
                    )
                if batch_hook is not None:
                    batch_hook(step)
                if feats is not None:
                    x, y = fz.load_feature_batch(
                        feats, train_rows[batch], train_labels[batch], generator=gen,
                        augment=cfg.augment, device=device, channels_last=cfg.channels_last)
                else:
                    x, y = load_batch(cache, train_rows[batch], train_labels[batch],
                                      device=device, mean=pre.mean, std=pre.std, generator=gen,
                                      augment=cfg.augment, channels_last=cfg.channels_last)
                x, y, y2, lam = mix_batch(x, y, mixup=cfg.mixup, cutmix=cfg.cutmix,
                                          generator=gen)
                lr = lr_at(step, total=total_steps, warmup=warmup, peak=cfg.lr)
                for g in opt.param_groups:
                    g["lr"] = lr
                with torch.autocast("cuda", enabled=use_amp):
                    out = (model(x) if feats is None
                           else fz.forward_suffix(model, x, cfg.freeze))
                    loss = mixed_loss(loss_fn, out, y, y2, lam)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                if ema is not None:
                    ema.update(model, step)
                loss_sum += float(loss.detach()) * len(batch)
                seen += len(batch)
                step += 1
                bar.update(1)
            train_time = time.perf_counter() - t0
            # the learning curve (one pass, no TTA; from the cached activations with freeze)
            score_rows = functools.partial(
                _score_rows, member, cache, feats, device=device, pre=pre, batch_size=eval_bs,
                amp=use_amp, channels_last=cfg.channels_last, freeze=cfg.freeze)
            probs, logits = score_rows(val_rows)
            last_probs = probs
            val_loss = float(eval_loss(torch.from_numpy(logits).float(),
                                       torch.from_numpy(val_labels)))
            # the predicted fold's score: reported (learning curve), never used to choose
            score = classification_metrics(val_labels, probs, job.classes)["balanced_accuracy"]
            inner: dict[str, float] = {}
            improved = False
            if select_inner:
                iprobs, ilogits = score_rows(inner_rows)
                inner = {
                    "inner_loss": float(eval_loss(torch.from_numpy(ilogits).float(),
                                                  torch.from_numpy(inner_labels))),
                    "inner_balanced_accuracy": classification_metrics(
                        inner_labels, iprobs, job.classes)["balanced_accuracy"],
                }
                improved = inner["inner_balanced_accuracy"] > best_score
                if improved:
                    best_score, best_epoch, since_best = (
                        inner["inner_balanced_accuracy"], epoch, 0)
                    best_state = {key: v.detach().to("cpu").clone()
                                  for key, v in member.state_dict().items()}
                else:
                    since_best += 1
            else:
                best_epoch = epoch
            event = {
                "event": "epoch", "model": job.model, "arch": job.arch, "fold": job.fold,
                "epoch": epoch, "train_loss": loss_sum / max(seen, 1), "val_loss": val_loss,
                "val_balanced_accuracy": score, **inner,
                "images_per_s": seen / max(train_time, 1e-9),
                "lr": lr_at(max(step - 1, 0), total=total_steps, warmup=warmup, peak=cfg.lr),
                "elapsed_s": time.perf_counter() - t_run, "selected_epoch": best_epoch,
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            history.append({key: event[key] for key in (
                "epoch", "train_loss", "val_loss", "val_balanced_accuracy", *inner)})
            ck.save_checkpoint(
                ckpt_dir, model=model, optimizer=opt, generator=gen,
                best_state=best_state if improved else None,
                state={
                    "arch": job.arch, "model": job.model, "fold": job.fold,
                    "classes": list(job.classes), "epoch": epoch, "step": step,
                    "epoch_selection": cfg.epoch_selection,
                    "best_score": best_score, "best_epoch": best_epoch,
                    "since_best": since_best, "history": history,
                    "scaler": scaler.state_dict() if use_amp else None,
                    "best_file": _best_file(ckpt_dir),
                },
                extra_tensors=ema.tensors() if ema is not None else None,
            )
            append_event(run_dir, event)
            bar.set_postfix(epoch=epoch, img_s=f"{event['images_per_s']:.0f}",
                            bacc=f"{score:.3f}")
            if on_epoch is not None:
                on_epoch(event)
    finally:
        bar.close()

    if not history:  # pragma: no cover - at least one epoch always runs
        raise SkinCoreError(f"{job.model} fold {job.fold} finished without a trained epoch.")
    if select_inner:
        if best_state is None:  # pragma: no cover - the first epoch always improves
            raise SkinCoreError(f"{job.model} fold {job.fold}: the selected epoch's weights "
                                "are missing; rerun without --resume.")
        model.load_state_dict(best_state)
        member_state = best_state
        probs = None
    else:  # the weights now in the member are the last epoch's (or their average)
        model = member
        member_state = model.state_dict()
        # predicted right after that epoch, in this process, as served (whole network from
        # the image cache, no TTA); else predicted again below as served
        probs = last_probs if not (cfg.tta or cfg.freeze) else None
    if probs is None:
        probs, _ = predict_rows(model, cache, val_rows, device=device, mean=pre.mean,
                                std=pre.std, batch_size=eval_bs, amp=use_amp,
                                channels_last=cfg.channels_last, tta=cfg.tta)
    metrics = classification_metrics(val_labels, probs, job.classes)
    member_dir = job.member_dir
    member_dir.mkdir(parents=True, exist_ok=True)
    weights_path = member_dir / f"fold{job.fold}.safetensors"
    digest = ck.save_tensors(weights_path, member_state, metadata={
        "arch": job.arch, "classes": json.dumps(list(job.classes)),
        "preprocessing": json.dumps(pre.to_dict())})
    oof = _oof_frame(job, probs)
    try:
        atomic_write_csv(member_dir / f"fold{job.fold}.oof.csv", oof)
    except OSError as exc:
        raise ck._disk_error(member_dir / f"fold{job.fold}.oof.csv", exc) from exc
    sidecar = {
        "model": job.model, "arch": job.arch, "seed": job.seed, "fold": job.fold,
        "classes": list(job.classes), "preprocessing": pre.to_dict(),
        "num_classes": k, "epoch_selection": cfg.epoch_selection,
        "selected_epoch": int(best_epoch), "epochs_run": len(history),
        "n_inner": int(len(inner_rows)),
        "inner_fraction": float(cfg.inner_fraction) if select_inner else None,
        "inner_balanced_accuracy": float(best_score) if select_inner else None,
        "metrics": metrics, "n_train": int(n), "n_val": int(len(val_rows)),
        "weights": weights_path.name, "sha256": digest, "pretrained": cfg.pretrained,
        "history": history, "device": device, "freeze": int(cfg.freeze), "tta": bool(cfg.tta),
    }
    ck.write_json(job.sidecar, sidecar)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    for parent in (ckpt_dir.parent, ckpt_dir.parent.parent):
        try:
            parent.rmdir()  # only when empty: other folds may still hold checkpoints
        except OSError:
            break
    return sidecar


def _score_rows(model: Any, cache: np.ndarray, feats: Any, rows: np.ndarray, *,
                device: str, pre: Any, batch_size: int, amp: bool, channels_last: bool,
                freeze: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and logits for scoring an epoch: the whole network on the image cache, or
    with ``freeze`` the trainable top on the cached activations of the plain images."""
    if feats is None:
        return predict_rows(model, cache, rows, device=device, mean=pre.mean, std=pre.std,
                            batch_size=batch_size, amp=amp, channels_last=channels_last)
    from skin_core.training.frozen import score_features

    return score_features(model, feats, rows, freeze, device=device, batch_size=batch_size,
                          amp=amp, channels_last=channels_last)


def _best_file(ckpt_dir: Path) -> str | None:
    side = ckpt_dir / "last.json"
    if side.is_file():
        try:
            return json.loads(side.read_text()).get("best_file")
        except (OSError, json.JSONDecodeError):
            return None
    return None


def _oof_frame(job: FoldJob, probs: np.ndarray):  # noqa: ANN202 - pandas DataFrame
    import pandas as pd

    df = pd.DataFrame({
        "image_id": list(job.val_ids),
        "model": job.model,
        "arch": job.arch,
        "fold": job.fold,
        "label": [job.classes[i] for i in job.val_labels],
    })
    for c, col in enumerate(prob_columns(job.classes)):
        df[col] = probs[:, c]
    return df
