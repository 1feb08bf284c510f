"""End to end in a real browser: Playwright drives Debian's Chromium against `streamlit run`.

One Streamlit server on a free port serves the tiny study of ``app_workspace``; one browser
page walks through every page, saves screenshots under ``artifacts/screenshots/`` and writes
the measured performance figures to ``artifacts/perf.json`` (quoted in docs/app.md).

``SKIN_CORE_BROWSER_HOME=DIR`` runs the same tests against another workspace instead, e.g. the
checkout after ``skin-core demo`` (``models/demo``, ``studies/demo``, ``data/demo``): that is how
the figures for the full demo bundle in docs/app.md were measured.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts" / "screenshots"
PERF = ROOT / "artifacts" / "perf.json"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
]

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TIMEOUT_MS = 60_000
perf: dict[str, float] = {}

#: Budgets from the issue (seconds): predict result after upload, 200+ thumbnails.
PREDICT_BUDGET_S = 5.0
GALLERY_BUDGET_S = 3.0


def _load_factor() -> float:
    """How oversubscribed the CPUs are (1 on an idle machine, e.g. 3.5 when 7 runnable
    processes share 2 cores); budgets are scaled by it so a shared CI box does not flake.
    The raw figures and the factor are written to artifacts/perf.json either way."""
    load = os.getloadavg()[0]
    n = os.cpu_count() or 1
    perf["load_avg_1min"] = round(load, 2)
    perf["cpus"] = n
    return max(1.0, min(4.0, load / n))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def home(request) -> Path:
    """The workspace the app serves: ``SKIN_CORE_BROWSER_HOME`` or the tiny test study."""
    given = os.environ.get("SKIN_CORE_BROWSER_HOME")
    if given:
        return Path(given).resolve()
    return request.getfixturevalue("app_workspace")


@pytest.fixture(scope="module")
def app_url(home, tmp_path_factory):
    port = _free_port()
    state = tmp_path_factory.mktemp("state")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIN_CORE_")}
    env.update(SKIN_CORE_HOME=str(home), SKIN_CORE_STATE_DIR=str(state))
    log = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
             "--server.headless", "true", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"streamlit did not start: {log.read_text()}") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        from skin_core.jobs import cancel_job, list_jobs

        for job in list_jobs(state / "jobs"):  # a job a failed test launched by mistake
            if job.active:
                cancel_job(state / "jobs", job.job_id, grace_s=2.0)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        perf["workspace"] = str(home)
        PERF.write_text(json.dumps(perf, indent=2) + "\n")


@pytest.fixture(scope="module")
def page(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        pg = context.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        yield pg
        browser.close()


def _shot(pg, name: str, height: int = 2200) -> None:
    """Screenshot of the whole page: Streamlit scrolls inside its own container, so the
    viewport is made tall for the shot (and restored), after every image has decoded."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    size = pg.viewport_size
    pg.set_viewport_size({"width": size["width"], "height": height})
    pg.wait_for_function("() => Array.from(document.images).every(i => i.complete)")
    pg.wait_for_timeout(500)  # let Plotly redraw at the new size
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    pg.set_viewport_size(size)


def _running_done(pg) -> None:
    """Wait until Streamlit is idle (no 'Running...' status widget)."""
    pg.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=TIMEOUT_MS)


def test_home_page_in_browser(page, app_url, home):
    n_images = len(pd.read_csv(home / "studies/demo/dataset.csv"))
    page.goto(app_url)
    page.get_by_text("Images per class").first.wait_for()
    assert page.get_by_text("research use only", exact=False).first.is_visible()
    assert page.get_by_text(f"{n_images:,}").first.is_visible()
    _shot(page, "home")


def _demo_image(home: Path) -> Path:
    return sorted((home / "data/demo/ISIC_2019_Training_Input").glob("*.jpg"))[3]


def test_predict_upload_shows_diagnosis_heatmap_quality(page, app_url, home):
    page.goto(f"{app_url}/predict")
    page.get_by_text("Upload an image to start").wait_for()
    loaded = page.get_by_text("loaded at").first.inner_text()
    t0 = time.perf_counter()
    page.locator("input[type=file]").first.set_input_files(str(_demo_image(home)))
    page.get_by_text("Top diagnosis").first.wait_for()
    page.get_by_text("semi-transparent over the photo").first.wait_for()  # the overlay
    page.get_by_text("Similar training cases").first.wait_for()
    page.get_by_text("Suggested management").first.wait_for()
    page.get_by_text("Image quality").first.wait_for()
    page.get_by_text("Where this image falls among").first.wait_for()
    # the bundle was trained on synthetic images: said above the diagnosis
    notice = page.get_by_text("This model was trained on synthetic demo images").first
    assert notice.is_visible()
    assert (notice.bounding_box()["y"]
            < page.get_by_text("Top diagnosis").first.bounding_box()["y"])
    page.wait_for_function(  # the original and the heatmap overlay are drawn
        "() => Array.from(document.querySelectorAll('[data-testid=stImage] img'))"
        ".filter(i => i.complete && i.naturalWidth > 0).length >= 2")
    perf["predict_visible_s"] = round(time.perf_counter() - t0, 2)
    assert perf["predict_visible_s"] < PREDICT_BUDGET_S * _load_factor()
    _running_done(page)
    _shot(page, "predict")
    # switching pages never reloads the models: the load time stamp is the same afterwards
    page.goto(f"{app_url}/difficult")
    page.get_by_text("images match the filters").first.wait_for()
    t1 = time.perf_counter()
    page.get_by_role("link", name="Predict").first.click()
    page.get_by_text("loaded at").first.wait_for()
    perf["switch_to_predict_s"] = round(time.perf_counter() - t1, 2)
    assert page.get_by_text("loaded at").first.inner_text() == loaded


def test_predict_several_images_triage_first(page, app_url, home):
    """Several uploads: the triage table comes first (one row per image, most urgent first),
    under the synthetic-demo notice, with its CSV export."""
    files = sorted((home / "data/demo/ISIC_2019_Training_Input").glob("*.jpg"))[:4]
    page.goto(f"{app_url}/predict")
    page.get_by_text("Upload an image to start").wait_for()
    page.locator("input[type=file]").first.set_input_files([str(f) for f in files])
    page.get_by_text(f"Triage of {len(files)} images").first.wait_for()
    page.get_by_role("button", name="Download triage (CSV)").wait_for()
    _running_done(page)
    notice = page.get_by_text("This model was trained on synthetic demo images").first
    assert notice.is_visible()
    assert (notice.bounding_box()["y"]
            < page.get_by_text(f"Triage of {len(files)} images").first.bounding_box()["y"])
    assert page.locator("[data-testid=stDataFrame]").count() >= 1  # the triage table
    _shot(page, "predict-triage", height=1400)


def _bomb_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buf, format="PNG")  # 144 Mpx in ~20 kB
    return buf.getvalue()


def test_predict_bad_uploads_show_messages_and_app_keeps_working(page, app_url, home):
    page.goto(f"{app_url}/predict")
    page.get_by_text("Upload an image to start").wait_for()
    page.locator("input[type=file]").first.set_input_files(files=[
        {"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"plain text, not a JPEG"},
        {"name": "bomb.png", "mimeType": "image/png", "buffer": _bomb_png()},
    ])
    page.get_by_text("Triage of 2 images").first.wait_for()  # unreadable rows kept, then:
    alerts = page.locator("[data-testid=stAlertContentError]")  # (with the synthetic notice)
    for name in ("notes.jpg", "bomb.png"):
        alerts.filter(has_text=name).first.wait_for()
    errors = alerts.all_inner_texts()
    assert any("notes.jpg" in e for e in errors) and any("bomb.png" in e for e in errors)
    assert any("pixels" in e for e in errors)
    _shot(page, "predict-bad-input")
    # the app keeps working: a good image joins the two bad ones in the triage
    page.locator("input[type=file]").first.set_input_files(str(_demo_image(home)))
    page.get_by_text("Triage of 3 images").first.wait_for()


def test_gallery_thumbnails_and_filters(page, app_url, home):
    diff = pd.read_csv(home / "studies/demo/difficulty/difficulty.csv")
    n_shown = min(240, len(diff))
    page.goto(f"{app_url}/difficult")
    page.get_by_text("images match the filters").first.wait_for()
    _running_done(page)
    page.locator("[data-testid=stRadio]").filter(has_text="Group").get_by_text(
        "all", exact=True).click()
    page.get_by_role("button", name="Apply filters").click()
    page.get_by_text(f"{len(diff):,} of {len(diff):,} images match").first.wait_for()
    _running_done(page)
    t0 = time.perf_counter()
    page.locator("[data-testid=stRadio]").filter(has_text="Per page").get_by_text(
        "240", exact=True).click()
    page.wait_for_function(
        "n => { const im = document.querySelectorAll('.sde-thumb img');"
        " return im.length >= n && Array.from(im).every(i => i.complete && i.naturalWidth > 0); }",
        arg=n_shown, timeout=TIMEOUT_MS)
    perf["gallery_thumbnails"] = n_shown
    perf["gallery_visible_s"] = round(time.perf_counter() - t0, 2)
    assert n_shown >= 200
    assert perf["gallery_visible_s"] < GALLERY_BUDGET_S * _load_factor()
    _shot(page, "difficult")
    radio = page.locator("[data-testid=stRadio]").filter(has_text="Per page")
    radio.get_by_text("48", exact=True).click()
    page.wait_for_function("() => document.querySelectorAll('.sde-thumb img').length <= 48")
    t1 = time.perf_counter()  # again, with the thumbnails cached
    radio.get_by_text("240", exact=True).click()
    page.wait_for_function(
        "n => { const im = document.querySelectorAll('.sde-thumb img');"
        " return im.length >= n && Array.from(im).every(i => i.complete && i.naturalWidth > 0); }",
        arg=n_shown, timeout=TIMEOUT_MS)
    perf["gallery_visible_warm_s"] = round(time.perf_counter() - t1, 2)
    before = page.get_by_text("images match the filters").first.inner_text()
    page.locator("[data-testid=stRadio]").filter(has_text="Likely mislabeled").get_by_text(
        "only", exact=True).click()
    page.get_by_role("button", name="Apply filters").click()
    n_mis = int(diff["likely_mislabeled"].sum())
    page.get_by_text(f"{n_mis:,} of {len(diff):,} images match").first.wait_for()
    assert page.get_by_text("images match the filters").first.inner_text() != before


def test_experts_page_and_bad_csv(page, app_url, tmp_path):
    page.goto(f"{app_url}/experts")
    page.get_by_text("Tests between groups").first.wait_for()
    page.get_by_text("Confusion matrices").first.wait_for()
    _running_done(page)
    _shot(page, "experts")
    page.get_by_text("Upload readings.csv").first.click()
    page.get_by_role("button", name="Analyse").wait_for()
    bad = tmp_path / "readings.csv"
    bad.write_text("reader_id,image_id\nR1,ISIC_9000000\n")
    page.locator("input[type=file]").first.set_input_files(str(bad))
    page.get_by_text("readings.csv").nth(1).wait_for()
    page.get_by_role("button", name="Analyse").click()
    err = page.locator("[data-testid=stAlertContentError]").first
    err.wait_for()
    assert "diagnosis" in err.inner_text()
    _shot(page, "experts-bad-csv")


def test_training_page(page, app_url, home):
    page.goto(f"{app_url}/training")
    page.get_by_text("New run").first.wait_for()
    _running_done(page)
    _shot(page, "training")
    # Enter in a number field confirms the number; it does not launch the form
    before = sorted(p.name for p in (home / "studies").iterdir())
    name = page.get_by_label("Name")
    name.fill("enter-must-not-launch")
    folds = page.get_by_label("Folds")
    folds.fill("3")
    folds.press("Enter")
    page.wait_for_timeout(2000)
    _running_done(page)
    assert sorted(p.name for p in (home / "studies").iterdir()) == before
    assert page.get_by_text("Started enter-must-not-launch").count() == 0
