"""Every page of the app on a tiny real study (AppTest): runs, and the main interactions work.

Uses the session fixture ``app_workspace`` (tests/conftest.py): a 240-image synthetic study
with two tiny CNNs, its bundle and simulated readers.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["home", "predict", "difficult", "experts", "training"]

pytestmark = pytest.mark.slow  # the shared study takes about a minute to build


@pytest.fixture
def app(monkeypatch, app_workspace, tmp_path):
    monkeypatch.chdir(ROOT)
    for var in ("SKIN_CORE_DEMO_DIR", "SKIN_CORE_MODELS_DIR", "SKIN_CORE_RUNS_DIR",
                "SKIN_CORE_STUDIES_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SKIN_CORE_HOME", str(app_workspace))
    monkeypatch.setenv("SKIN_CORE_STATE_DIR", str(tmp_path / "state"))

    def make(page: str | None = None) -> AppTest:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
        if page is not None and page != "home":
            at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return make


def _errors(at: AppTest) -> list[str]:
    """Error messages on the page, without the (red) referral banner of a prediction."""
    return [e.value for e in at.error if "Refer for specialist review" not in e.value]


def _texts(at: AppTest) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption])


@pytest.mark.parametrize("page", PAGES)
def test_every_page_runs(app, page):
    at = app(page)
    assert at.title[0].value in {"Skin Disease Expert", "Predict", "Difficult images",
                                 "Experts vs CNN", "Training"}
    assert not at.error, [e.value for e in at.error]


def test_home_shows_active_study_and_bundle(app, app_workspace):
    at = app()
    assert at.selectbox[0].value == (app_workspace / "studies" / "demo").resolve()
    assert {m.label: m.value for m in at.metric}["Images"] == "240"
    at.button[0].click().run()  # "Make active" persists the choice
    assert any("saved" in s.value for s in at.success)
    assert (Path(str(app_workspace)) / "studies").is_dir()


def _demo_image(app_workspace: Path) -> bytes:
    path = sorted((app_workspace / "data/demo/ISIC_2019_Training_Input").glob("*.jpg"))[0]
    return path.read_bytes()


def test_predict_demo_image_with_metadata(app, app_workspace):
    at = app("predict")
    assert any("Upload an image" in i.value for i in at.info)
    at.number_input[0].set_value(55)
    at.selectbox[0].set_value("male")
    at.selectbox[1].set_value("posterior torso")
    at.file_uploader[0].set_value(("lesion.jpg", _demo_image(app_workspace), "image/jpeg"))
    at.run()
    assert not at.exception and not _errors(at), _errors(at)
    metrics = {m.label: m.value for m in at.metric}
    refer = [e.value for e in at.error if "Refer for specialist review" in e.value]
    assert refer or any("No referral reason" in s.value for s in at.success)
    assert metrics["Top diagnosis"] in {"MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"}
    assert metrics["Calibrated probability"].endswith("%")
    assert "Blur score" in metrics and "Sharper than" in metrics
    table = at.dataframe[0].value
    assert table["variant"].tolist() == ["with metadata", "without metadata"]
    assert table["source"][0] == "with_metadata"
    assert table["source"][1] in {"without_metadata", "metadata_missing"}
    assert len(at.get("image")) >= 2  # the original and the Grad-CAM overlay
    assert {b.label for b in at.get("download_button")} == {
        "Download result (JSON)", "Download one-page report (HTML)"}


def _bomb_png() -> bytes:
    img = Image.new("1", (12_000, 12_000))  # 144 Mpx > 100 Mpx limit, tiny file
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name,data,message", [
    ("notes.jpg", b"this is not an image at all", "not"),
    ("bomb.png", None, "pixels"),
])
def test_predict_bad_upload_shows_message_and_keeps_working(app, app_workspace, name, data,
                                                            message):
    at = app("predict")
    at.file_uploader[0].set_value((name, data if data is not None else _bomb_png(),
                                   "image/png")).run()
    assert not at.exception
    errors = _errors(at)
    assert errors and message in errors[0].lower() and name in errors[0]
    at.file_uploader[0].set_value(("ok.jpg", _demo_image(app_workspace), "image/jpeg")).run()
    assert not _errors(at) and "Top diagnosis" in {m.label for m in at.metric}


def test_gallery_filters_change_what_is_shown(app, app_workspace):
    diff = pd.read_csv(app_workspace / "studies/demo/difficulty/difficulty.csv")
    n_diff = int((diff["group"] == "difficult").sum())
    assert 0 < n_diff < len(diff) and (diff["group"] == "control").any()
    at = app("difficult")
    assert f"**{n_diff:,}** of {len(diff):,} images match" in _texts(at)
    assert "sde-thumb" in at.get("html")[0].proto.body
    cls = diff.loc[diff["group"] == "difficult", "label"].value_counts().index[0]
    want = int(((diff["group"] == "difficult") & (diff["label"] == cls)).sum())
    at.sidebar.multiselect[0].set_value([cls])
    at.sidebar.button[0].click().run()
    assert f"**{want:,}** of {len(diff):,} images match" in _texts(at)
    at.sidebar.radio[0].set_value("control")
    at.sidebar.multiselect[0].set_value([])
    at.sidebar.button[0].click().run()
    n_ctrl = int((diff["group"] == "control").sum())
    assert f"**{n_ctrl:,}** of {len(diff):,} images match" in _texts(at)
    assert at.get("download_button")[0].label.startswith("Download the filtered table")


def test_experts_default_and_uploaded_readings(app, app_workspace):
    at = app("experts")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Readers"] == "3" and not at.error
    assert len(at.dataframe) >= 2  # groups + tests
    readings = pd.read_csv(app_workspace / "studies/demo/readings.csv")
    two = readings[readings["reader_id"].isin(sorted(readings["reader_id"].unique())[:2])]
    at.radio[0].set_value("Upload readings.csv").run()
    at.file_uploader[0].set_value(("readings.csv", two.to_csv(index=False).encode(),
                                   "text/csv"))
    at.button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert {m.label: m.value for m in at.metric}["Readers"] == "2"
    bad = two.drop(columns=["diagnosis"]).to_csv(index=False).encode()
    at.file_uploader[0].set_value(("bad.csv", bad, "text/csv"))
    at.button[0].click().run()
    assert not at.exception
    assert at.error and "diagnosis" in at.error[0].value and "bad.csv" in at.error[0].value


def test_training_launch_refuse_second_and_finish(app, app_workspace):
    at = app("training")
    assert "No runs yet." in _texts(at)
    form = {w.label: w for w in at.text_input}
    form["Name"].set_value("tiny")
    at.multiselect[0].set_value(["test_resnet"])
    at.number_input[0].set_value(2)
    at.number_input[1].set_value(1)
    at.selectbox[0].set_value(32)
    at.button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.dataframe[0].value["name"].tolist() == ["tiny"]
    # a second launch on the same device is refused while the first runs
    form = {w.label: w for w in at.text_input}
    form["Name"].set_value("second")
    at.button[-1].click().run()
    assert at.error and "already running" in at.error[0].value
    deadline = time.monotonic() + 600
    state = None
    while time.monotonic() < deadline:
        time.sleep(3)
        at.run()
        state = at.dataframe[0].value["state"].tolist()[0]
        if state != "running":
            break
    assert state == "finished", "\n".join(c.value for c in at.code)
    at.run()
    from skin_core.workspace import active_selection, current_workspace

    sel = active_selection(current_workspace())
    assert sel.study.name == "tiny" and sel.bundle.name == "tiny"
    assert (app_workspace / "models/tiny/bundle.json").is_file()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["ETA (training)"] == "done" and metrics["Fold"] == "1"


def test_pages_without_a_study_say_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("SKIN_CORE_HOME", str(tmp_path))
    monkeypatch.setenv("SKIN_CORE_STATE_DIR", str(tmp_path / "state"))
    for page in PAGES[1:4]:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception
        assert at.warning and "skin-core demo" in at.warning[0].value




def test_training_cancel_and_resume(app, app_workspace, tmp_path):
    from skin_core.jobs import cancel_job, list_jobs
    from skin_core.workspace import current_workspace

    at = app("training")
    {w.label: w for w in at.text_input}["Name"].set_value("cancel-me")
    at.multiselect[0].set_value(["test_resnet"])
    at.number_input[0].set_value(2)
    at.number_input[1].set_value(50)  # long enough to be cancelled mid-run
    at.selectbox[-3].set_value(32)
    at.button[-1].click().run()
    jobs_dir = current_workspace().jobs
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # wait until the trainer is running
            time.sleep(2)
            at.run()
            if any(m.label == "Epoch" and m.value != "–" for m in at.metric):
                break
        cancel = next(b for b in at.button if b.label == "Cancel")
        cancel.click().run()
        assert at.dataframe[0].value["state"].tolist()[0] == "cancelled"
        assert (app_workspace / "studies/cancel-me/run/cancel").is_file()
        resume = next(b for b in at.button if b.label == "Resume")
        resume.click().run()
        assert not (app_workspace / "studies/cancel-me/run/cancel").exists()
        states = at.dataframe[0].value["state"].tolist()
        assert states[0] == "running" and states.count("cancelled") == 1
    finally:
        for job in list_jobs(jobs_dir):
            if job.active:
                cancel_job(jobs_dir, job.job_id, grace_s=5.0)
