"""Resumable steps: run a step only when its outputs are missing or its inputs changed.

A :class:`Step` declares its name, the steps it depends on, the configuration it reads, the
files it writes (relative to the study folder) and a function that writes them. The
:class:`Pipeline` keeps ``steps.json`` in the study folder: for every finished step, a
fingerprint of its configuration and of its upstream steps' fingerprints, the finish time and
its outputs. A step is skipped when its fingerprint is unchanged, all its outputs exist and
none of the steps it depends on was redone in this run, so an interrupted study resumes where
it stopped; ``force`` redoes a step and everything downstream of it.

Outputs are written by the steps through :mod:`skin_core.io` (temporary name, then rename), and
a step is recorded as finished only after its function returned, so a killed step is redone.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from skin_core.errors import ConfigError
from skin_core.io import atomic_write_json, to_json

MANIFEST = "steps.json"


@dataclass(frozen=True)
class Step:
    """One resumable step of a pipeline.

    Attributes
    ----------
    name:
        Short unique name (used by ``--force NAME``).
    run:
        ``run(ctx) -> dict | None``: does the work; the dict (JSON-able) is kept in the manifest
        as the step's summary.
    outputs:
        Paths, relative to the pipeline folder, that the step writes; all must exist after it.
    depends_on:
        Names of upstream steps.
    config:
        The configuration values the step reads (hashed into its fingerprint).
    enabled:
        ``False`` skips the step entirely (e.g. the reader study without readings).
    """

    name: str
    run: Callable[[StepContext], Mapping[str, Any] | None]
    outputs: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    enabled: bool = True


@dataclass
class StepContext:
    """What a step function receives: the folder, the results so far, a progress callback."""

    root: Path
    results: dict[str, Any]
    progress: Callable[[str], None]

    def path(self, relative: str) -> Path:
        return self.root / relative


@dataclass(frozen=True)
class StepOutcome:
    name: str
    status: str  # "ran", "skipped", "disabled"
    seconds: float
    summary: Mapping[str, Any] | None


def _fingerprint(step: Step, upstream: Mapping[str, str]) -> str:
    payload = {"step": step.name, "config": step.config,
               "upstream": {d: upstream.get(d, "") for d in step.depends_on}}
    # key order must not matter: a config read back from YAML comes sorted
    text = to_json(payload, indent=None, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Pipeline:
    """An ordered list of :class:`Step` run in a folder with a manifest (``steps.json``)."""

    def __init__(self, root: str | Path, steps: Sequence[Step]):
        self.root = Path(root)
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise ConfigError(f"Duplicate step names in pipeline: {names}.")
        seen: set[str] = set()
        for s in steps:
            missing = [d for d in s.depends_on if d not in seen]
            if missing:
                raise ConfigError(f"Step {s.name!r} depends on {missing}, which do not run "
                                  "before it.")
            seen.add(s.name)
        self.steps = list(steps)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def manifest(self) -> dict[str, Any]:
        """The recorded state of finished steps (empty when nothing ran yet)."""
        if not self.manifest_path.is_file():
            return {}
        try:
            return json.loads(self.manifest_path.read_text())
        except ValueError:
            return {}  # a corrupt manifest only means steps are redone

    def run(
        self,
        *,
        force: Iterable[str] = (),
        progress: Callable[[str], None] | None = None,
    ) -> list[StepOutcome]:
        """Run every enabled step whose outputs are missing or stale; return what happened."""
        force = set(force)
        unknown = force - {s.name for s in self.steps}
        if unknown:
            raise ConfigError(
                f"Unknown step(s) {sorted(unknown)} for --force; steps are "
                f"{[s.name for s in self.steps]}.")
        self.root.mkdir(parents=True, exist_ok=True)
        say = progress or (lambda _msg: None)
        manifest = self.manifest()
        fingerprints: dict[str, str] = {}
        results: dict[str, Any] = {}
        outcomes: list[StepOutcome] = []
        ran: set[str] = set()  # steps redone now: whatever depends on them is redone too
        total = sum(1 for s in self.steps if s.enabled)
        i = 0
        for step in self.steps:
            if not step.enabled:
                outcomes.append(StepOutcome(step.name, "disabled", 0.0, None))
                continue
            i += 1
            fp = _fingerprint(step, fingerprints)
            fingerprints[step.name] = fp
            record = manifest.get(step.name, {})
            have_outputs = all((self.root / o).exists() for o in step.outputs)
            upstream_ran = any(d in ran for d in step.depends_on)
            if (step.name not in force and not upstream_ran
                    and record.get("fingerprint") == fp and have_outputs):
                results[step.name] = record.get("summary")
                outcomes.append(StepOutcome(step.name, "skipped", 0.0, record.get("summary")))
                say(f"[{i}/{total}] {step.name}: up to date")
                continue
            say(f"[{i}/{total}] {step.name}: running")
            t0 = time.perf_counter()
            ctx = StepContext(self.root, results, say)
            summary = step.run(ctx)
            missing = [o for o in step.outputs if not (self.root / o).exists()]
            if missing:
                raise RuntimeError(f"Step {step.name!r} finished without writing {missing}.")
            seconds = time.perf_counter() - t0
            results[step.name] = summary
            manifest[step.name] = {
                "fingerprint": fp,
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seconds": round(seconds, 3),
                "outputs": list(step.outputs),
                "summary": summary,
            }
            # downstream records are invalidated by the fingerprint chain; save after each step
            atomic_write_json(self.manifest_path, manifest)
            ran.add(step.name)
            outcomes.append(StepOutcome(step.name, "ran", seconds, summary))
            say(f"[{i}/{total}] {step.name}: done in {seconds:.1f} s")
        return outcomes
