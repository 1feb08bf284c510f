"""Shared fixtures: real-data locations (skipped when absent) and small seeded helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


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
