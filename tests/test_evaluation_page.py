"""The Validation page (AppTest) on a small workspace: the tiny trained bundle as models/demo
and its held-out demo images as data/demo."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from test_predict import build_trained  # the shared tiny trained run (tests/test_predict.py)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    trained = build_trained(tmp_path_factory.getbasetemp() / "predict_trained")
    root = tmp_path_factory.mktemp("validation_ws")
    shutil.copytree(trained["bundle"], root / "models" / "demo")
    shutil.copytree(trained["heldout"], root / "data" / "demo")
    return root


@pytest.fixture
def page(monkeypatch, workspace, tmp_path):
    monkeypatch.chdir(ROOT)
    for var in ("SKIN_CORE_DEMO_DIR", "SKIN_CORE_MODELS_DIR", "SKIN_CORE_RUNS_DIR",
                "SKIN_CORE_STUDIES_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SKIN_CORE_HOME", str(workspace))
    monkeypatch.setenv("SKIN_CORE_STATE_DIR", str(tmp_path / "state"))

    def make() -> AppTest:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
        at.switch_page("pages/validation.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return make


def _evaluations(workspace: Path) -> Path:
    return workspace / "evaluations"


def test_page_renders_without_an_evaluation(page, workspace) -> None:
    shutil.rmtree(_evaluations(workspace), ignore_errors=True)
    at = page()
    assert at.title[0].value == "Validation"
    assert at.text_input[0].value == f"isic2019:{workspace / 'data' / 'demo'}"
    assert any("No evaluation of bundle **demo**" in c.value for c in at.caption)
    assert not at.get("plotly_chart")


def test_page_shows_the_last_evaluation_of_the_active_bundle(page, workspace) -> None:
    from skin_core.evaluation import evaluate

    ev = evaluate(workspace / "models" / "demo", f"isic2019:{workspace / 'data' / 'demo'}",
                  _evaluations(workspace) / "demo-test", n_resamples=50, stability=4,
                  device="cpu", workers=1)
    at = page()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Balanced accuracy"] == f"{ev['balanced_accuracy']['value']:.3f}"
    lo, hi = ev["balanced_accuracy"]["ci"]
    assert any(f"95% CI {lo:.3f}–{hi:.3f}" == c.value for c in at.caption)
    assert "MEL sensitivity at 90% specificity" in metrics
    assert len(at.get("plotly_chart")) == 2  # reliability diagram, per class
    subgroups = at.dataframe[0].value
    assert set(subgroups["subgroup"]) == {"age", "sex", "anatom_site_general"}
    assert at.get("download_button")[0].label == "Download the report (HTML)"


@pytest.mark.slow
def test_evaluate_button_runs_a_background_job(page, workspace) -> None:
    from skin_core.jobs import list_jobs
    from skin_core.workspace import current_workspace

    shutil.rmtree(_evaluations(workspace), ignore_errors=True)
    at = page()
    at.number_input[0].set_value(30)  # images
    at.number_input[1].set_value(40)  # bootstrap
    at.number_input[2].set_value(0)  # stability off
    at.button[0].click().run()
    assert any("Started evaluate demo" in s.value for s in at.success), [
        e.value for e in at.error]
    jobs_dir = current_workspace().jobs
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and list_jobs(jobs_dir)[0].active:
        time.sleep(1)
    job = list_jobs(jobs_dir)[0]
    assert job.state == "finished", job.log_tail
    at = page()
    assert any("30 images" in c.value for c in at.caption)
    assert len(at.get("plotly_chart")) == 2
