"""Workspace: finding studies and bundles, the active choice persisted on disk."""

from __future__ import annotations

import json

import pytest

from skin_core.errors import ConfigError
from skin_core.workspace import (
    active_selection,
    current_workspace,
    list_bundles,
    list_studies,
    set_active,
)


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIN_CORE_HOME", str(tmp_path))
    for var in ("SKIN_CORE_DEMO_DIR", "SKIN_CORE_MODELS_DIR", "SKIN_CORE_RUNS_DIR",
                "SKIN_CORE_STUDIES_DIR", "SKIN_CORE_STATE_DIR"):
        monkeypatch.delenv(var, raising=False)
    return current_workspace()


def _study(ws, name, bundle_out=None):
    d = ws.studies / name
    d.mkdir(parents=True)
    (d / "steps.json").write_text("{}")
    cfg = "dataset: isic2019:/data/x\n"
    if bundle_out is not None:
        cfg += f"bundle:\n  out: {bundle_out}\n"
    (d / "config.yaml").write_text(cfg)
    return d


def _bundle(path, models=("a", "b")):
    path.mkdir(parents=True)
    (path / "bundle.json").write_text(json.dumps({
        "name": path.name, "classes": ["MEL", "NV"], "created": "2026-01-01",
        "members": [{"model": m, "fold": f} for m in models for f in (0, 1)]}))
    return path


def test_paths_follow_home_and_state_override(ws, tmp_path, monkeypatch):
    assert ws.studies == tmp_path / "studies" and ws.jobs == tmp_path / ".skin-core" / "jobs"
    monkeypatch.setenv("SKIN_CORE_STATE_DIR", str(tmp_path / "st"))
    assert current_workspace().jobs == tmp_path / "st" / "jobs"


def test_lists_studies_and_bundles_including_study_bundles(ws):
    _bundle(ws.models / "demo")
    _study(ws, "demo", bundle_out=ws.models / "demo")
    s2 = _study(ws, "zeta")
    _bundle(s2 / "bundle", models=("c",))
    (ws.studies / "not-a-study").mkdir()
    studies = list_studies(ws)
    assert [s.name for s in studies] == ["demo", "zeta"]
    assert studies[0].bundle == (ws.models / "demo").resolve()
    assert studies[0].dataset == "isic2019:/data/x"
    assert studies[1].bundle == (s2 / "bundle").resolve()
    bundles = list_bundles(ws)
    assert [b.path for b in bundles] == sorted([(ws.models / "demo").resolve(),
                                                (s2 / "bundle").resolve()], key=str)
    assert bundles[0].models == ("a", "b") or bundles[1].models == ("a", "b")


def test_default_active_is_demo_then_choice_persists(ws):
    _bundle(ws.models / "demo")
    _study(ws, "alpha")
    _study(ws, "demo", bundle_out=ws.models / "demo")
    other = _bundle(ws.models / "other")
    sel = active_selection(ws)
    assert sel.study.name == "demo" and sel.bundle.name == "demo" and not sel.explicit
    set_active(ws, study=ws.studies / "alpha", bundle=other)
    again = active_selection(ws)  # a fresh read from disk (app restart)
    assert again.study.name == "alpha" and again.bundle.name == "other" and again.explicit
    assert (ws.state / ".gitignore").read_text() == "*\n"
    set_active(ws, bundle=ws.models / "demo")  # study kept
    assert active_selection(ws).study.name == "alpha"


def test_set_active_refuses_non_study_and_vanished_choice_falls_back(ws):
    _study(ws, "demo")
    with pytest.raises(ConfigError, match="not a study folder"):
        set_active(ws, study=ws.root)
    with pytest.raises(ConfigError, match="not a model bundle"):
        set_active(ws, bundle=ws.root)
    b = _bundle(ws.models / "gone")
    set_active(ws, bundle=b)
    (b / "bundle.json").unlink()
    assert active_selection(ws).bundle is None
    (ws.state / "active.json").write_text("not json")
    assert active_selection(ws).study.name == "demo"


def test_synthetic_datasets_are_recognised_by_the_generator_truth(tmp_path):
    from skin_core.workspace import (
        bundle_is_synthetic,
        dataset_is_synthetic,
        dataset_root,
        read_manifest,
    )

    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "generation_truth.csv").write_text("image_id\n")
    (demo / "table.csv").write_text("image_id,label\n")
    assert dataset_root(f"isic2019:{demo}") == demo
    assert dataset_root(f"csv:{demo / 'table.csv'},root={demo}") == demo
    assert dataset_root("not a spec") is None and dataset_root(None) is None
    assert dataset_is_synthetic(f"csv:{demo / 'table.csv'}")
    assert not dataset_is_synthetic(f"ham10000:{tmp_path / 'elsewhere'}")
    assert bundle_is_synthetic({"run": {"dataset": {"spec": f"isic2019:{demo}"}}})
    assert not bundle_is_synthetic({"provenance": {"synthetic": False, "dataset": "x"}})
    assert bundle_is_synthetic({"provenance": {"synthetic": True}})
    assert not bundle_is_synthetic(None)
    b = _bundle(tmp_path / "b")
    assert read_manifest(b)["name"] == "b" and read_manifest(tmp_path / "none") == {}
