"""Every page of the app on a tiny real study (AppTest): runs, and the main interactions work.

Uses the session fixture ``app_workspace`` (tests/conftest.py): a 240-image synthetic study
with two tiny CNNs, its bundle and simulated readers.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["home", "predict", "difficult", "experts", "training", "validation"]

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


SYNTHETIC = "synthetic demo images"  # in both notices (bundle and study)


def _errors(at: AppTest) -> list[str]:
    """Error messages on the page, without the (red) referral banner of a prediction and the
    (red) notice that the test workspace's data are synthetic."""
    return [e.value for e in at.error
            if "Refer for specialist review" not in e.value and SYNTHETIC not in e.value]


def _flat(node, out=None) -> list:
    """Every element of the page in display order (depth first)."""
    out = [] if out is None else out
    for child in getattr(node, "children", {}).values():
        out.append(child)
        _flat(child, out)
    return out


def _position(at: AppTest, kind: str, text: str) -> int:
    """Index in display order of the first ``kind`` element whose label or value has text."""
    for i, el in enumerate(_flat(at.main)):
        if type(el).__name__ == kind and text in str(getattr(el, "label", "")) + str(
                getattr(el, "value", "") if kind != "Dataframe" else ""):
            return i
    raise AssertionError(f"no {kind} with {text!r} on the page")


def _texts(at: AppTest) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption])


@pytest.mark.parametrize("page", PAGES)
def test_every_page_runs(app, page):
    at = app(page)
    assert at.title[0].value in {"Skin Disease Expert", "Predict", "Difficult images",
                                 "Experts vs CNN", "Training", "Validation"}
    assert not _errors(at), _errors(at)
    # the test study and bundle are synthetic: every page with diagnoses says so
    assert (page == "training") != any(SYNTHETIC in e.value for e in at.error)


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
    # the synthetic-data notice stands above the diagnosis
    assert _position(at, "Error", SYNTHETIC) < _position(at, "Metric", "Top diagnosis")
    table = _meta_table(at)
    assert table["variant"].tolist() == ["with metadata", "without metadata"]
    assert table["source"][0] == "with_metadata"
    assert table["source"][1] in {"without_metadata", "metadata_missing"}
    strip = next(c for c in at.get("plotly_chart") if "falls among" in c.proto.spec)
    spec = json.loads(strip.proto.spec)
    assert len(spec["data"][0]["y"]) >= 3  # one dot per quality measure of the reference
    assert len(at.get("image")) >= 2  # the original and the Grad-CAM overlay
    assert {b.label for b in at.get("download_button")} == {
        "Download result (JSON)", "Download one-page report (HTML)",
        "Download this table (YAML)"}
    # what to do, with the cost table behind it, and similar training cases to compare with
    assert any("Suggested management" in m.value for m in [*at.info, *at.warning])
    assert any("Similar training cases" in m.value for m in at.markdown)


def _meta_table(at):
    return next(d.value for d in at.dataframe if "variant" in d.value.columns)


def test_several_images_give_a_triage_table_first(app, app_workspace):
    at = app("predict")
    files = sorted((app_workspace / "data/demo/ISIC_2019_Training_Input").glob("*.jpg"))[:3]
    at.file_uploader[0].set_value([(f.name, f.read_bytes(), "image/jpeg") for f in files])
    at.run()
    assert not at.exception and not _errors(at), _errors(at)
    assert any(h.value == "Triage of 3 images" for h in at.subheader)
    triage = next(d.value for d in at.dataframe if "diagnosis" in d.value.columns
                  and "refer" in d.value.columns)
    assert sorted(triage["image"]) == sorted(f.name for f in files)
    assert "Download triage (CSV)" in {b.label for b in at.get("download_button")}


def test_predict_without_metadata_still_shows_both_rows(app, app_workspace):
    at = app("predict")
    at.file_uploader[0].set_value(("plain.jpg", _demo_image(app_workspace), "image/jpeg")).run()
    assert not at.exception and not _errors(at), _errors(at)
    table = _meta_table(at)
    assert table["variant"].tolist() == ["with metadata", "without metadata"]
    assert table["diagnosis"][0] == "–" and "enter age, sex or site" in table["source"][0]
    assert table["diagnosis"][1] == {m.label: m.value for m in at.metric}["Top diagnosis"]


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
    assert metrics["Readers"] == "3" and not _errors(at)
    assert len(at.dataframe) >= 2  # groups + tests
    readings = pd.read_csv(app_workspace / "studies/demo/readings.csv")
    two = readings[readings["reader_id"].isin(sorted(readings["reader_id"].unique())[:2])]
    at.radio[0].set_value("Upload readings.csv").run()
    at.file_uploader[0].set_value(("readings.csv", two.to_csv(index=False).encode(),
                                   "text/csv"))
    at.button[0].click().run()
    assert not at.exception and not _errors(at), _errors(at)
    assert {m.label: m.value for m in at.metric}["Readers"] == "2"
    bad = two.drop(columns=["diagnosis"]).to_csv(index=False).encode()
    at.file_uploader[0].set_value(("bad.csv", bad, "text/csv"))
    at.button[0].click().run()
    assert not at.exception
    assert _errors(at) and "diagnosis" in _errors(at)[0] and "bad.csv" in _errors(at)[0]


def _chart_titles(at: AppTest) -> list[str]:
    out = []
    for c in at.get("plotly_chart"):
        title = json.loads(c.proto.spec).get("layout", {}).get("title", {})
        out.append(title.get("text", "") if isinstance(title, dict) else str(title))
    return out


def test_experts_no_cnn_panel_for_images_the_cnns_never_saw(app):
    ids = [f"NEW_{i:03d}" for i in range(12)]
    truth = pd.DataFrame({"image_id": ids, "label": ["MEL", "NV", "BCC"] * 4})
    readings = pd.DataFrame([{"reader_id": r, "image_id": i, "diagnosis": d}
                             for r in ("R1", "R2") for i, d in zip(ids, ["MEL", "NV"] * 6,
                                                                   strict=True)])
    at = app("experts")
    assert "CNN ensemble" in _chart_titles(at)  # the study's own readings: CNN answers exist
    at.radio[0].set_value("Upload readings.csv").run()
    at.file_uploader[0].set_value(("readings.csv", readings.to_csv(index=False).encode(),
                                   "text/csv"))
    at.file_uploader[1].set_value(("truth.csv", truth.to_csv(index=False).encode(),
                                   "text/csv"))
    groups = truth.assign(group=["difficult", "control"] * 6)[["image_id", "group"]]
    at.file_uploader[2].set_value(("groups.csv", groups.to_csv(index=False).encode(),
                                   "text/csv"))
    at.button[0].click().run()
    assert not at.exception and not _errors(at), _errors(at)
    assert "CNN ensemble" not in _chart_titles(at)
    assert "Readers (every reading)" in _chart_titles(at)
    assert not any(SYNTHETIC in e.value for e in at.error)  # nothing here is the study's
    assert any("predicted 0 of these 12 images, so there is no CNN panel" in c.value
               for c in at.caption)


def _form(at: AppTest) -> dict:
    widgets = [*at.text_input, *at.number_input, *at.selectbox, *at.multiselect]
    return {w.label: w for w in widgets}


def test_training_lists_the_demo_run_and_launches_only_on_the_button(app, app_workspace):
    from skin_core.jobs import list_jobs
    from skin_core.workspace import current_workspace

    at = app("training")
    runs = at.dataframe[0].value.set_index("name")  # the study `skin-core demo` made
    assert runs.loc["demo", "state"] == "finished" and runs.loc["demo", "source"] == "study"
    assert at.get("form")[0].proto.form.enter_to_submit is False
    n_studies = len(list((app_workspace / "studies").iterdir()))
    form = _form(at)
    form["Name"].set_value("enter-pressed")
    form["Folds"].set_value(3)  # typed, then Enter: confirms the value, launches nothing
    at.run()
    form = _form(at)
    form["Epochs"].set_value(2).run()
    assert not list_jobs(current_workspace().jobs)
    assert len(list((app_workspace / "studies").iterdir())) == n_studies


def test_training_shows_an_interrupted_run_with_resume(app, monkeypatch, tmp_path):
    from skin_core.jobs import list_jobs
    from skin_core.workspace import current_workspace

    runs = tmp_path / "runs"
    run = runs / "crashed"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("models: [m]\ntrain: {device: cpu, folds: 2, epochs: 2}\n")
    (run / "status.json").write_text(json.dumps({
        "state": "running", "pid": 2**22 + 12345, "progress": 0.25,
        "started": "2030-01-01T00:00:00+00:00"}))
    monkeypatch.setenv("SKIN_CORE_RUNS_DIR", str(runs))
    at = app("training")
    table = at.dataframe[0].value.set_index("name")
    assert table.loc["crashed", "state"] == "interrupted"
    assert table.loc["demo", "state"] == "finished"
    show = next(s for s in at.selectbox if s.label == "Show run")
    show.set_value(str(run.resolve())).run()
    assert any("process is gone before it finished" in w.value for w in at.warning)
    resume = next(b for b in at.button if b.label == "Resume")
    resume.click().run()
    jobs = list_jobs(current_workspace().jobs)
    assert len(jobs) == 1 and jobs[0].argv[-4:] == ("train", "--out", str(run.resolve()),
                                                    "--resume")
    deadline = time.monotonic() + 120  # the fake run has no data: the job fails; let it end
    while time.monotonic() < deadline and list_jobs(current_workspace().jobs)[0].active:
        time.sleep(1)


def test_training_launch_refuse_second_and_finish(app, app_workspace):
    at = app("training")
    form = _form(at)
    form["Name"].set_value("tiny")
    form["Architectures"].set_value(["test_resnet"])
    form["Folds"].set_value(2)
    form["Epochs"].set_value(1)
    form["Image size"].set_value(32)
    next(b for b in at.button if b.label == "Launch").click().run()
    assert not at.exception and not _errors(at), _errors(at)
    names = at.dataframe[0].value["name"].tolist()
    assert "tiny" in names and "demo" in names  # (a job of an earlier test may be newer)
    # a second launch on the same device is refused while the first runs, leaving nothing
    _form(at)["Name"].set_value("second")
    next(b for b in at.button if b.label == "Launch").click().run()
    assert _errors(at) and "already running" in _errors(at)[0]
    assert not (app_workspace / "studies" / "second").exists()
    deadline = time.monotonic() + 600
    state = None
    while time.monotonic() < deadline:
        time.sleep(3)
        at.run()
        table = at.dataframe[0].value.set_index("name")
        state = table.loc["tiny", "state"]
        if state not in ("running", "starting"):
            break
    assert state == "finished", "\n".join(c.value for c in at.code)
    at.run()
    from skin_core.workspace import active_selection, current_workspace

    sel = active_selection(current_workspace())
    assert sel.study.name == "tiny" and sel.bundle.name == "tiny"
    assert (app_workspace / "models/tiny/bundle.json").is_file()
    next(s for s in at.selectbox if s.label == "Show run").set_value(
        str((app_workspace / "studies/tiny/run").resolve())).run()
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




def test_training_name_survives_reruns(app):
    """The typed run name is the one launched even when the page's clock ticked before the
    click (the suggested default is made once per session: a default that changed every second
    made Streamlit see a new widget and launch under the suggestion instead)."""
    at = app("training")
    {w.label: w for w in at.text_input}["Name"].set_value("demo")  # an existing study
    time.sleep(1.1)  # the suggestion's clock has ticked
    at.button[-1].click().run()  # Launch: refused, nothing started
    assert any("'demo' already exists" in e.value for e in at.error), [e.value for e in at.error]
    assert {w.label: w for w in at.text_input}["Name"].value == "demo"


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
        # the job stops (its run's cancel file, then a terminate after the grace period)
        stop_by = time.monotonic() + 60
        while any(j.active for j in list_jobs(jobs_dir)) and time.monotonic() < stop_by:
            time.sleep(1)
        assert not any(j.active for j in list_jobs(jobs_dir))
        resume = next(b for b in at.button if b.label == "Resume")
        resume.click().run()
        assert not (app_workspace / "studies/cancel-me/run/cancel").exists()
        table = at.dataframe[0].value  # one row per run: the resumed run is running again
        assert table["name"].tolist().count("cancel-me") == 1
        assert table.set_index("name").loc["cancel-me", "state"] in ("starting", "running")
    finally:
        for job in list_jobs(jobs_dir):
            if job.active:
                cancel_job(jobs_dir, job.job_id, grace_s=5.0)
