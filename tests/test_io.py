"""Atomic writers leave either the complete file or nothing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from skin_core.io import atomic_path, atomic_write_csv, atomic_write_json, to_json


def test_atomic_write_json_roundtrip(tmp_path):
    target = tmp_path / "sub" / "x.json"
    atomic_write_json(target, {"a": np.int64(3), "b": np.float32(0.5), "c": np.arange(2)})
    assert json.loads(target.read_text()) == {"a": 3, "b": 0.5, "c": [0, 1]}
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "oof.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["oof.csv"]


def test_atomic_write_csv(tmp_path):
    df = pd.DataFrame({"image_id": ["a", "b"], "fold": [0, 1]})
    atomic_write_csv(tmp_path / "folds.csv", df)
    assert (tmp_path / "folds.csv").read_text() == "image_id,fold\na,0\nb,1\n"


def test_to_json_nan_and_records():
    class Rec:
        def to_dict(self):
            return {"x": 1}

    assert json.loads(to_json({"r": Rec(), "v": np.float64("nan")})) == {"r": {"x": 1}, "v": None}
