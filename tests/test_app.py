"""The Streamlit app runs (AppTest) on the demo dataset and says what is missing otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]


def _app(monkeypatch, demo: Path) -> AppTest:
    monkeypatch.chdir(ROOT)
    home = demo.parent / "empty-home"  # no studies or bundles: the dataset section only
    monkeypatch.setenv("SKIN_CORE_HOME", str(home))
    for var in ("SKIN_CORE_MODELS_DIR", "SKIN_CORE_RUNS_DIR", "SKIN_CORE_STUDIES_DIR",
                "SKIN_CORE_STATE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SKIN_CORE_DEMO_DIR", str(demo))
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)


def test_home_shows_demo_summary(monkeypatch, demo_dir):
    at = _app(monkeypatch, demo_dir).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "160"
    assert int(metrics["Classes"]) == 8
    assert any("research use only" in i.value.lower() for i in at.info)
    assert any("No study in" in c.value for c in at.caption)
    assert any("research use only" in c.value.lower() for c in at.sidebar.caption)


def test_home_explains_missing_demo(monkeypatch, tmp_path):
    at = _app(monkeypatch, tmp_path / "nothing-here").run()
    assert not at.exception
    assert any("not built yet" in w.value for w in at.warning)


def test_home_shows_clear_error_for_bad_spec(monkeypatch, demo_dir, tmp_path):
    at = _app(monkeypatch, demo_dir).run()
    at.text_input[0].set_value(f"isic2019:{tmp_path / 'missing'}").run()
    assert not at.exception
    assert at.error, "a bad dataset spec must show an error on the page"


def test_navigation_lists_every_page(monkeypatch, demo_dir):
    at = _app(monkeypatch, demo_dir).run()
    for page in ("predict", "difficult", "experts", "training"):
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, page


def test_config_binds_localhost_without_usage_stats():
    import tomllib

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "localhost"
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["server"]["maxUploadSize"] == 50


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "pages").glob("*.py")))
def test_every_page_file_compiles(page):
    compile((ROOT / "pages" / page).read_text(), page, "exec")
