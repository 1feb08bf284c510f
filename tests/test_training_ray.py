"""The Ray backend: each (arch, fold) one task on a local Ray; same oof.csv as local."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_training import make_tiny_dataset, tiny_config

from skin_core.constants import prob_columns
from skin_core.training import train_run

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_ray_backend_matches_local(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    ds = make_tiny_dataset(tmp_path / "d", per_class=10)
    cfg = tiny_config(tmp_path, epochs=1)
    local = train_run(ds, out=tmp_path / "local", config=cfg)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = train_run(ds, out=tmp_path / "ray", config=cfg.replace(backend="ray"))
    finally:
        ray.shutdown()
    a, b = pd.read_csv(local.oof_path), pd.read_csv(res.oof_path)
    assert len(b) == len(ds.table)
    assert (a["image_id"] == b["image_id"]).all() and (a["fold"] == b["fold"]).all()
    np.testing.assert_allclose(a[prob_columns("ABC")], b[prob_columns("ABC")], atol=1e-4)
    for k in (0, 1):
        assert (tmp_path / "ray" / "members" / "test_resnet" / f"fold{k}.json").is_file()
