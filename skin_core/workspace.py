"""Where the app and the CLI find the demo dataset, studies, runs and model bundles.

The project root is ``$SKIN_CORE_HOME`` when set, otherwise the current directory. Each
location can be overridden by its own environment variable, which the tests use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    """Folders the app reads: ``data/demo``, ``models/``, ``runs/`` and ``studies/``."""

    root: Path
    demo_data: Path
    models: Path
    runs: Path
    studies: Path

    @property
    def demo_spec(self) -> str:
        """Dataset spec of the embedded demo (ISIC 2019 layout)."""
        return f"isic2019:{self.demo_data}"

    def demo_ready(self) -> bool:
        """Whether the demo dataset has been built (``skin-core demo-data``)."""
        return (self.demo_data / "ISIC_2019_Training_GroundTruth.csv").is_file()


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
    )
