"""The Streamlit app runs (AppTest) on the demo dataset and says what is missing otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]


def _app(monkeypatch, demo: Path) -> AppTest:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("SKIN_CORE_DEMO_DIR", str(demo))
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)


def test_home_shows_demo_summary(monkeypatch, demo_dir):
    at = _app(monkeypatch, demo_dir).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "160"
    assert int(metrics["Classes"]) == 8
    assert any("research use only" in i.value.lower() for i in at.info)


def test_home_explains_missing_demo(monkeypatch, tmp_path):
    at = _app(monkeypatch, tmp_path / "nothing-here").run()
    assert not at.exception
    assert any("not built yet" in w.value for w in at.warning)


def test_home_shows_clear_error_for_bad_spec(monkeypatch, demo_dir, tmp_path):
    at = _app(monkeypatch, demo_dir).run()
    at.text_input[0].set_value(f"isic2019:{tmp_path / 'missing'}").run()
    assert not at.exception
    assert at.error, "a bad dataset spec must show an error on the page"


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "pages").glob("*.py")))
def test_every_page_file_compiles(page):
    compile((ROOT / "pages" / page).read_text(), page, "exec")
