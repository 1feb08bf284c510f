"""Where the app and the CLI find the demo dataset, studies, runs and model bundles.

The project root is ``$SKIN_CORE_HOME`` when set, otherwise the current directory. Each
location can be overridden by its own environment variable, which the tests use:
``SKIN_CORE_DEMO_DIR``, ``SKIN_CORE_MODELS_DIR``, ``SKIN_CORE_RUNS_DIR``,
``SKIN_CORE_STUDIES_DIR`` and ``SKIN_CORE_STATE_DIR`` (default ``ROOT/.skin-core``: the
active study and bundle in ``active.json`` and the background jobs in ``jobs/``).

A *study* is a folder made by :func:`skin_core.study.run_study` (it has ``steps.json`` or
``summary.json``); a *bundle* is a folder with a ``bundle.json``
(:mod:`skin_core.models.bundle`). :func:`list_studies` and :func:`list_bundles` find them
under ``studies/`` and ``models/`` (a study's own ``bundle/`` folder counts too), and
:func:`active_selection` / :func:`set_active` remember the user's choice on disk so that an
app restart keeps it.

Example
-------
>>> ws = current_workspace()                               # doctest: +SKIP
>>> [s.name for s in list_studies(ws)]                     # doctest: +SKIP
['demo']
>>> set_active(ws, study=ws.studies / "demo", bundle=ws.models / "demo")   # doctest: +SKIP
>>> active_selection(ws).bundle                            # doctest: +SKIP
PosixPath('/project/models/demo')
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from skin_core.io import atomic_write_json, atomic_write_text

#: File (under the state folder) that stores the active study and bundle.
ACTIVE_FILE = "active.json"


@dataclass(frozen=True)
class Workspace:
    """Folders the app reads: ``data/demo``, ``models/``, ``runs/``, ``studies/`` and state."""

    root: Path
    demo_data: Path
    models: Path
    runs: Path
    studies: Path
    state_dir: Path | None = None

    @property
    def demo_spec(self) -> str:
        """Dataset spec of the embedded demo (ISIC 2019 layout)."""
        return f"isic2019:{self.demo_data}"

    def demo_ready(self) -> bool:
        """Whether the demo dataset has been built (``skin-core demo-data``)."""
        return (self.demo_data / "ISIC_2019_Training_GroundTruth.csv").is_file()

    @property
    def state(self) -> Path:
        """App state folder (``active.json``, ``jobs/``); default ``ROOT/.skin-core``."""
        return self.state_dir if self.state_dir is not None else self.root / ".skin-core"

    @property
    def jobs(self) -> Path:
        """Folder of background jobs (:mod:`skin_core.jobs`)."""
        return self.state / "jobs"


def current_workspace() -> Workspace:
    """The workspace from the environment (``SKIN_CORE_HOME``, ``SKIN_CORE_DEMO_DIR``...)."""
    root = Path(os.environ.get("SKIN_CORE_HOME") or Path.cwd()).resolve()

    def pick(var: str, default: str) -> Path:
        value = os.environ.get(var)
        return Path(value).resolve() if value else root / default

    return Workspace(
        root=root,
        demo_data=pick("SKIN_CORE_DEMO_DIR", "data/demo"),
        models=pick("SKIN_CORE_MODELS_DIR", "models"),
        runs=pick("SKIN_CORE_RUNS_DIR", "runs"),
        studies=pick("SKIN_CORE_STUDIES_DIR", "studies"),
        state_dir=pick("SKIN_CORE_STATE_DIR", ".skin-core"),
    )


# --------------------------------------------------------------------------------------------
# studies and bundles


@dataclass(frozen=True)
class StudyInfo:
    """A study folder and what it holds.

    Attributes
    ----------
    name: the folder name.
    path: the study folder.
    dataset: the dataset spec from its ``config.yaml`` (``None`` when unknown).
    bundle: its bundle folder when built (``config.yaml`` ``bundle.out`` or ``DIR/bundle``).
    has_difficulty, has_readers, has_run: which outputs exist.
    """

    name: str
    path: Path
    dataset: str | None = None
    bundle: Path | None = None
    has_difficulty: bool = False
    has_readers: bool = False
    has_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "dataset": self.dataset,
                "bundle": None if self.bundle is None else str(self.bundle),
                "has_difficulty": self.has_difficulty, "has_readers": self.has_readers,
                "has_run": self.has_run}


@dataclass(frozen=True)
class BundleInfo:
    """A bundle folder (``bundle.json`` present) and its manifest's headline fields."""

    name: str
    path: Path
    classes: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    created: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "classes": list(self.classes),
                "models": list(self.models), "created": self.created}


def is_study(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a study folder (``steps.json`` or ``summary.json`` inside)."""
    p = Path(path)
    return p.is_dir() and ((p / "steps.json").is_file() or (p / "summary.json").is_file())


def is_bundle(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a ``bundle.json``."""
    return (Path(path) / "bundle.json").is_file()


def _study_config(path: Path) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def study_info(path: str | os.PathLike[str]) -> StudyInfo:
    """Describe one study folder (reads only its ``config.yaml`` and file names)."""
    p = Path(path).resolve()
    cfg = _study_config(p)
    out = (cfg.get("bundle") or {}).get("out") if isinstance(cfg.get("bundle"), dict) else None
    candidates = [Path(out)] if out else []
    candidates.append(p / "bundle")
    bundle = next((c.resolve() for c in candidates if is_bundle(c)), None)
    dataset = cfg.get("dataset")
    return StudyInfo(
        name=p.name, path=p, dataset=str(dataset) if dataset else None, bundle=bundle,
        has_difficulty=(p / "difficulty" / "difficulty.csv").is_file(),
        has_readers=(p / "readers" / "readers.json").is_file(),
        has_run=(p / "run" / "oof.csv").is_file(),
    )


def bundle_info(path: str | os.PathLike[str]) -> BundleInfo:
    """Describe one bundle folder from its ``bundle.json`` (no weights are read)."""
    p = Path(path).resolve()
    try:
        manifest = json.loads((p / "bundle.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    members = manifest.get("members") or []
    models = tuple(dict.fromkeys(str(m.get("model")) for m in members if isinstance(m, dict)))
    return BundleInfo(name=str(manifest.get("name") or p.name), path=p,
                      classes=tuple(manifest.get("classes") or ()), models=models,
                      created=manifest.get("created"), meta=manifest.get("metrics") or {})


def _subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: d.name)


def list_studies(ws: Workspace) -> list[StudyInfo]:
    """Every study folder directly under ``ws.studies``, by name."""
    return [study_info(d) for d in _subdirs(ws.studies) if is_study(d)]


def list_bundles(ws: Workspace) -> list[BundleInfo]:
    """Every bundle under ``ws.models`` and inside the studies (``STUDY/bundle``), by path."""
    seen: dict[Path, BundleInfo] = {}
    for d in _subdirs(ws.models):
        if is_bundle(d):
            seen[d.resolve()] = bundle_info(d)
    for s in list_studies(ws):
        if s.bundle is not None and s.bundle not in seen:
            seen[s.bundle] = bundle_info(s.bundle)
    return sorted(seen.values(), key=lambda b: str(b.path))


# --------------------------------------------------------------------------------------------
# synthetic (demo) or real data

#: The demo generator's file of per-image generation truth; only synthetic datasets have it.
GENERATION_TRUTH = "generation_truth.csv"


def dataset_root(spec: str | None) -> Path | None:
    """The folder a dataset spec points at (the file's folder for ``csv:FILE``), or ``None``
    when the spec is missing or malformed."""
    if not spec:
        return None
    from skin_core.data.tables import parse_spec
    from skin_core.errors import SkinCoreError

    try:
        _kind, path, _opts = parse_spec(str(spec))
    except SkinCoreError:
        return None
    return path if path.is_dir() else path.parent


def dataset_is_synthetic(spec: str | None) -> bool:
    """Whether the dataset of ``spec`` was drawn by the demo generator (its folder holds
    ``generation_truth.csv``)."""
    root = dataset_root(spec)
    return root is not None and (root / GENERATION_TRUTH).is_file()


def bundle_is_synthetic(manifest: dict[str, Any] | None) -> bool:
    """Whether a bundle (its parsed ``bundle.json``) was trained on synthetic images.

    ``provenance.synthetic`` when the manifest records it; for older bundles without
    provenance, whether the training run's dataset folder (``run.dataset``) holds the
    generator's ``generation_truth.csv``.
    """
    manifest = manifest or {}
    prov = manifest.get("provenance") or {}
    if isinstance(prov, dict) and isinstance(prov.get("synthetic"), bool):
        return prov["synthetic"]
    run = manifest.get("run") or {}
    spec = run.get("dataset") if isinstance(run, dict) else None
    if isinstance(spec, dict):
        spec = spec.get("spec")
    return dataset_is_synthetic(spec if isinstance(spec, str) else None)


def read_manifest(bundle: str | os.PathLike[str]) -> dict[str, Any]:
    """A bundle's ``bundle.json`` as a dict (``{}`` when missing or unreadable)."""
    try:
        doc = json.loads((Path(bundle) / "bundle.json").read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def study_is_synthetic(study: str | os.PathLike[str]) -> bool:
    """Whether a study folder's dataset (``config.yaml`` ``dataset``) is synthetic."""
    return dataset_is_synthetic(study_info(study).dataset)


# --------------------------------------------------------------------------------------------
# the active study and bundle


@dataclass(frozen=True)
class ActiveSelection:
    """The study and bundle the app shows (``None`` when there is none)."""

    study: Path | None
    bundle: Path | None
    explicit: bool = False  # True when read from active.json, False for the default choice


def _default_selection(ws: Workspace) -> ActiveSelection:
    studies = list_studies(ws)
    demo = next((s for s in studies if s.name == "demo"), None)
    study = demo or (studies[0] if studies else None)
    bundle = None
    if is_bundle(ws.models / "demo"):
        bundle = (ws.models / "demo").resolve()
    elif study is not None and study.bundle is not None:
        bundle = study.bundle
    else:
        bundles = list_bundles(ws)
        bundle = bundles[0].path if bundles else None
    return ActiveSelection(study=study.path if study else None, bundle=bundle)


def active_selection(ws: Workspace) -> ActiveSelection:
    """The active study and bundle: ``active.json`` when it names existing folders, otherwise
    the demo (``studies/demo``, ``models/demo``), otherwise the first of each found."""
    default = _default_selection(ws)
    path = ws.state / ACTIVE_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return default
    if not isinstance(saved, dict):
        return default
    study = Path(saved["study"]) if saved.get("study") else None
    bundle = Path(saved["bundle"]) if saved.get("bundle") else None
    study = study if study is not None and is_study(study) else default.study
    bundle = bundle if bundle is not None and is_bundle(bundle) else default.bundle
    return ActiveSelection(study=study, bundle=bundle, explicit=True)


def _ensure_state(ws: Workspace) -> Path:
    state = ws.state
    state.mkdir(parents=True, exist_ok=True)
    ignore = state / ".gitignore"
    if not ignore.exists():  # app state is never committed
        atomic_write_text(ignore, "*\n")
    return state


def set_active(ws: Workspace, *, study: str | os.PathLike[str] | None = None,
               bundle: str | os.PathLike[str] | None = None) -> ActiveSelection:
    """Make ``study`` and/or ``bundle`` active (persisted in ``STATE/active.json``).

    An argument left ``None`` keeps the current choice.

    Raises
    ------
    ConfigError
        ``study`` is not a study folder or ``bundle`` has no ``bundle.json``.
    """
    from skin_core.errors import ConfigError

    current = active_selection(ws)
    if study is not None and not is_study(study):
        raise ConfigError(f"{study} is not a study folder (no steps.json or summary.json); "
                          "choose a folder made by skin-core study.")
    if bundle is not None and not is_bundle(bundle):
        raise ConfigError(f"{bundle} is not a model bundle (no bundle.json); choose a folder "
                          "made by skin-core bundle.")
    new_study = Path(study).resolve() if study is not None else current.study
    new_bundle = Path(bundle).resolve() if bundle is not None else current.bundle
    atomic_write_json(_ensure_state(ws) / ACTIVE_FILE, {
        "study": None if new_study is None else str(new_study),
        "bundle": None if new_bundle is None else str(new_bundle),
    })
    return ActiveSelection(study=new_study, bundle=new_bundle, explicit=True)
