"""Training progress as plain lines with an ETA, for logs, pipes and the app's job log.

A training run writes one JSON object per epoch to ``RUN/events.jsonl``
(:mod:`skin_core.training.run`). :class:`TrainingProgress` turns such events into lines like::

    train test_resnet fold 2/5 epoch 3/8 · val bal. acc 0.412 · 3.1 s/epoch · 27% · ETA 4 min

and :func:`follow_training` tails a run's ``events.jsonl`` in a background thread while the run
trains in the same process (``skin-core study`` runs ``skin-core train`` in-process), so the
lines appear whatever the backend (local or Ray: both write the same events file).

The ETA is the epochs still to train times the seconds per epoch measured so far in this
process (from the start of the first fold seen training, so image-cache building is not
counted). Folds that stop early (``patience``) end sooner than planned: until the run knows a
fold has finished, the ETA counts its remaining epochs, so it errs on the long side.

Lines go to the ``say`` callable, by default standard error: never standard output, which
:func:`skin_core.cli.invoke` captures for the verb's JSON result.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

Say = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def format_eta(seconds: float | None) -> str:
    """``ETA 40 s``, ``ETA 4 min``, ``ETA 1 h 05 min``; ``ETA –`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "ETA –"
    s = int(round(seconds))
    if s < 60:
        return f"ETA {s} s"
    if s < 3600:
        return f"ETA {max(1, round(s / 60))} min"
    return f"ETA {s // 3600} h {s % 3600 // 60:02d} min"


class TrainingProgress:
    """Callable that turns training events into progress lines with an ETA.

    Parameters
    ----------
    models:
        The run's model ids (``config.yaml`` ``models``), or their number.
    folds, epochs:
        Folds ``K`` and the maximum epochs ``E`` per fold.
    say:
        Receives each line (default: standard error).
    clock:
        Seconds, monotonic (a test passes a fake clock).
    is_finished:
        ``(model, fold) -> bool``: whether that fold has finished (e.g. its member sidecar
        exists); lets the ETA drop the epochs a fold skipped by stopping early.

    Call it with every event (a dict as in ``events.jsonl``); epoch events return the line
    they said, other events ``None`` (``run_finished`` says a closing line). Epochs seen twice
    (a resumed fold replays from its checkpoint) are counted once.

    Example
    -------
    >>> lines = []
    >>> p = TrainingProgress(["m"], folds=2, epochs=2, say=lines.append, clock=lambda: 10.0)
    >>> p({"event": "epoch", "model": "m", "fold": 0, "epoch": 0, "elapsed_s": 5.0,
    ...    "val_balanced_accuracy": 0.5})
    'train m fold 1/2 epoch 1/2 · val bal. acc 0.500 · 5.0 s/epoch · 25% · ETA 15 s'
    """

    def __init__(self, models: Sequence[str] | int, *, folds: int, epochs: int,
                 say: Say | None = None, clock: Callable[[], float] = time.monotonic,
                 is_finished: Callable[[str, int], bool] | None = None) -> None:
        n_models = models if isinstance(models, int) else len(models)
        self.folds, self.epochs = max(1, int(folds)), max(1, int(epochs))
        self.total = max(1, int(n_models)) * self.folds * self.epochs
        self.say = say or _stderr
        self.clock = clock
        self.is_finished = is_finished
        self._seen: dict[tuple[str, int], set[int]] = {}
        self._t0: float | None = None
        self._n_new = 0

    def replay(self, events: Iterator[Mapping[str, Any]] | Sequence[Mapping[str, Any]]) -> None:
        """Count epochs trained before this process started (no lines, no timing)."""
        for ev in events:
            if ev.get("event") == "epoch":
                self._seen.setdefault((str(ev.get("model")), int(ev["fold"])), set()).add(
                    int(ev["epoch"]))

    def _done_units(self, current: tuple[str, int]) -> int:
        done = 0
        for job, epochs in self._seen.items():
            n = min(len(epochs), self.epochs)
            if (n < self.epochs and job != current and self.is_finished is not None
                    and self.is_finished(*job)):
                n = self.epochs  # stopped early: its remaining epochs will not run
            done += n
        return min(done, self.total)

    def __call__(self, event: Mapping[str, Any]) -> str | None:
        kind = event.get("event")
        if kind == "run_finished" and self._t0 is not None:
            line = f"train finished in {_duration(self.clock() - self._t0)}"
            self.say(line)
            return line
        if kind != "epoch":
            return None
        now = self.clock()
        model, fold, epoch = str(event.get("model")), int(event["fold"]), int(event["epoch"])
        seen = self._seen.setdefault((model, fold), set())
        if epoch not in seen:
            seen.add(epoch)
            if self._t0 is None:  # when this fold's epochs began (excludes cache building)
                self._t0 = now - max(0.0, float(event.get("elapsed_s") or 0.0))
            self._n_new += 1
        # the event's own fold counts as far as the event goes (a file being tailed may
        # already show that fold finished, which is news for a later line)
        done = self._done_units((model, fold))
        per_epoch = (now - self._t0) / self._n_new if self._t0 is not None and self._n_new else None
        eta = None if per_epoch is None else (self.total - done) * per_epoch
        parts = [f"train {model} fold {fold + 1}/{self.folds} epoch {epoch + 1}/{self.epochs}"]
        acc = event.get("val_balanced_accuracy")
        if isinstance(acc, (int, float)) and math.isfinite(acc):
            parts.append(f"val bal. acc {acc:.3f}")
        if per_epoch is not None:
            parts.append(f"{per_epoch:.1f} s/epoch")
        parts += [f"{100 * done / self.total:.0f}%", format_eta(eta)]
        line = " · ".join(parts)
        self.say(line)
        return line


def _duration(seconds: float) -> str:
    s = int(round(max(0.0, seconds)))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def _run_plan(run_dir: Path) -> tuple[list[str], int, int] | None:
    """``(models, folds, epochs)`` from the run's ``config.yaml`` once it exists."""
    import yaml

    try:
        doc = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    train = doc.get("train") or {}
    models = doc.get("models") or train.get("archs")
    if not models or not train.get("folds") or not train.get("epochs"):
        return None
    return [str(m) for m in models], int(train["folds"]), int(train["epochs"])


class _Follower:
    """Tails ``events.jsonl`` and feeds new events to a :class:`TrainingProgress`."""

    def __init__(self, run_dir: Path, say: Say, interval: float) -> None:
        self.run_dir, self.say, self.interval = run_dir, say, interval
        self.path = run_dir / "events.jsonl"
        self.offset = self.path.stat().st_size if self.path.is_file() else 0
        self.before = self.offset  # events written before we started: replayed, not said
        self.partial = b""
        self.progress: TrainingProgress | None = None
        self.plan: tuple[list[str], int, int] | None = None
        self.history: list[dict[str, Any]] = []  # every event counted so far
        self.stop = threading.Event()
        self.lock = threading.Lock()  # the final poll may overlap a late background one

    def _finished(self, model: str, fold: int) -> bool:
        return (self.run_dir / "members" / model / f"fold{fold}.json").is_file()

    def poll(self) -> None:
        with self.lock:
            self._poll()

    def flush(self) -> None:
        """Say what the run has written so far, now (errors of the display are swallowed)."""
        with contextlib.suppress(Exception):
            self.poll()

    def _start(self, plan: tuple[list[str], int, int]) -> None:
        """Count against ``plan``, the events so far as done (replayed, not said)."""
        models, folds, epochs = plan
        self.plan = plan
        self.progress = TrainingProgress(models, folds=folds, epochs=epochs, say=self.say,
                                         is_finished=self._finished)
        self.progress.replay(self.history)

    def _poll(self) -> None:
        if self.progress is None:
            plan = _run_plan(self.run_dir)
            if plan is None:
                return  # the run has not written its config yet; events wait
            if self.before:
                with open(self.path, "rb") as fh:
                    old = fh.read(self.before)
                self.history = _parse(old.splitlines())
            self._start(plan)
        try:
            size = self.path.stat().st_size
        except OSError:
            return
        if size < self.offset:  # the file was replaced: start over
            self.offset, self.partial = 0, b""
        if size == self.offset:
            return
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read(size - self.offset)
        self.offset = size
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()  # an incomplete last line waits for the next poll
        for ev in _parse(lines):
            if ev.get("event") == "run_start":
                # A resumed run that adds architectures has rewritten config.yaml (before
                # this event): count against its plan, or a run of 1 member that grows to 2
                # would read 100 % from its first new epoch.
                plan = _run_plan(self.run_dir)
                if plan is not None and plan != self.plan:
                    self._start(plan)
            self.history.append(ev)
            assert self.progress is not None
            self.progress(ev)

    def loop(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - progress must never stop training
                self.say(f"(progress display stopped: {type(exc).__name__}: {exc})")
                return


def _parse(lines: Sequence[bytes]) -> list[dict[str, Any]]:
    out = []
    for raw in lines:
        try:
            ev = json.loads(raw)
        except ValueError:
            continue
        if isinstance(ev, dict):
            out.append(ev)
    return out


@contextlib.contextmanager
def follow_training(run_dir: str | os.PathLike[str], *, say: Say | None = None,
                    interval: float = 1.0) -> Iterator[Any]:
    """Say a progress line per trained epoch of the run in ``run_dir`` while the block runs.

    Use it around in-process training::

        with follow_training(study / "run", say=ctx.progress) as follower:
            invoke(["train", ..., "--out", str(study / "run"), "--no-progress"])
            follower.flush()  # every epoch line and "train finished" before what comes next

    Events already in ``events.jsonl`` (a resumed run) count as done but are not said again.
    A background thread polls the file every ``interval`` seconds; ``flush()`` says what is
    there at once (call it before saying anything else, so that a late poll never lands in the
    middle of the next step's output); leaving the block reads what is left and stops it.
    Errors of the display are said once and never reach the block.
    """
    f = _Follower(Path(run_dir), say or _stderr, interval)
    thread = threading.Thread(target=f.loop, name="skin-core-progress", daemon=True)
    thread.start()
    try:
        yield f
    finally:
        f.stop.set()
        thread.join(timeout=5 * interval + 1)
        with contextlib.suppress(Exception):
            f.poll()  # the last epochs and "train finished"
