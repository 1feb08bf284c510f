"""Shared fixtures: real-data locations (skipped when absent) and small seeded helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# One torch/OpenMP thread per test process: CI runs `pytest -n 2` on 2 cores, and 2 threads per
# worker oversubscribe them; torch's OpenMP threads then spin at barriers and training tests
# (the full demo) slow down by an order of magnitude (docs/demo-data.md).
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _env_dir(var: str) -> Path | None:
    value = os.environ.get(var)
    if not value:
        return None
    path = Path(value)
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def ham10000_dir() -> Path:
    """The real HAM10000 folder (``SKIN_CORE_HAM10000_DIR``); skips the test when unset."""
    path = _env_dir("SKIN_CORE_HAM10000_DIR")
    if path is None:
        pytest.skip("SKIN_CORE_HAM10000_DIR is not set (real HAM10000 data not available)")
    return path


@pytest.fixture(scope="session")
def isic2019_csv_dir() -> Path:
    """The real ISIC 2019 CSV folder (``SKIN_CORE_ISIC2019_CSV_DIR``); skips when unset."""
    path = _env_dir("SKIN_CORE_ISIC2019_CSV_DIR")
    if path is None:
        pytest.skip("SKIN_CORE_ISIC2019_CSV_DIR is not set (real ISIC 2019 CSVs not available)")
    return path


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A small embedded-demo dataset (ISIC 2019 layout), generated once per test session."""
    from skin_core.data.synthetic import generate_demo_dataset

    out = tmp_path_factory.mktemp("demo")
    generate_demo_dataset(out, n=160, seed=0, size=96)
    return out


#: Study config of the app tests' workspace: two tiny CNNs, 2 folds, 2 epochs at 32 px, no
#: class weighting (so some images are right by every model: difficult AND control images).
APP_STUDY_CONFIG = {
    "folds": {"k": 2, "seed": 0},
    # no calibration split: 240 images leave too few for both it and images every tiny model
    # gets right (the gallery's control group); the served calibration is tested on its own
    # (tests/test_served.py) and in the full demo (tests/test_demo_full.py)
    "calibration": {"fraction": 0},
    "train": {"archs": ["test_resnet", "test_efficientnet"], "epochs": 2, "img_size": 32,
              "batch_size": 32, "folds": 2, "loss_weighting": "none", "augment": False,
              "lr": 3e-3},
    "difficulty": {"permutations": 200},
    "readers": {"bootstrap": 50, "permutations": 100,
                "simulate": {"enabled": True, "n_readers": 3, "n_per_group": 12}},
    "meta": {"bootstrap": 50},
}


@pytest.fixture(scope="session")
def app_workspace(tmp_path_factory, demo_dir) -> Path:
    """A workspace (``SKIN_CORE_HOME``) with a tiny real study and bundle for the app tests.

    ``data/demo`` (240 synthetic images, 96 px), ``studies/demo`` (the whole study with
    simulated readers) and ``models/demo`` (its bundle). About a minute on 2 CPU cores.

    ``demo_dir`` is requested first on purpose: its generator forks worker processes, which
    can deadlock once this fixture's in-process training has started torch / OpenCV threads.
    This fixture's own generation uses one worker (no fork) for the same reason.
    """
    from skin_core.data.synthetic import generate_demo_dataset
    from skin_core.demo import demo_config
    from skin_core.study import run_study

    root = tmp_path_factory.mktemp("workspace")
    generate_demo_dataset(root / "data" / "demo", n=240, seed=0, size=96, workers=1)
    cfg = demo_config(APP_STUDY_CONFIG)
    cfg["bundle"] = {"out": str(root / "models" / "demo")}
    run_study(f"isic2019:{root / 'data' / 'demo'}", root / "studies" / "demo", config=cfg)
    return root
