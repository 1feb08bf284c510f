"""The study report: a synthetic-data notice on top, readable step times, figures with data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skin_core.report import SYNTHETIC_REPORT_NOTICE, write_report


def make_study(root: Path, *, synthetic: bool, n: int = 200, seed: int = 0) -> Path:
    """A study folder as ``skin-core study`` leaves it after train/difficulty/quality, with
    the analyses' files made by the real functions on seeded random data (no training)."""
    from skin_core.analysis.quality_difficulty import compare_quality
    from skin_core.analysis.significance import consistent_error_significance
    from skin_core.io import to_json

    rng = np.random.default_rng(seed)
    data = root / "data"
    data.mkdir(parents=True)
    (data / "ISIC_2019_Training_GroundTruth.csv").write_text("image,MEL,NV\n")
    if synthetic:
        (data / "generation_truth.csv").write_text("image_id\n")
    spec = f"isic2019:{data}"
    study = root / "study"
    (study / "run").mkdir(parents=True)
    (study / "difficulty").mkdir()
    (study / "config.yaml").write_text(f"dataset: {spec}\nfolds:\n  k: 5\n")
    ids = [f"ISIC_{i:07d}" for i in range(n)]
    labels = rng.integers(0, 2, n)
    (study / "summary.json").write_text(json.dumps({
        "spec": spec, "n_images": n, "n_lesions": n // 2,
        "classes": {"MEL": int((labels == 0).sum()), "NV": int((labels == 1).sum())},
        "missing": {"age_approx": 3}}))
    (study / "run" / "metrics.json").write_text(json.dumps({
        m: {"balanced_accuracy": 0.6 + 0.05 * i, "macro_f1": 0.55, "accuracy": 0.7, "n": n}
        for i, m in enumerate(("resnet", "effnet", "mobilenet"))}))
    hard = rng.random(n) < 0.2  # correlated errors: hard images are wrong by every model
    errors = np.stack([hard | (rng.random(n) < 0.15) for _ in range(3)])  # (M, N)
    sig = consistent_error_significance(errors, labels, n_permutations=200, seed=0,
                                        models=["resnet", "effnet", "mobilenet"],
                                        classes=["MEL", "NV"]).to_dict()
    (study / "difficulty" / "significance.json").write_text(json.dumps(sig))
    n_wrong = errors.sum(axis=0)
    group = np.where(n_wrong == 3, "difficult", np.where(n_wrong == 0, "control", "other"))
    diff = pd.DataFrame({"image_id": ids, "label": np.array(["MEL", "NV"])[labels],
                         "n_models": 3, "n_wrong": n_wrong, "group": group})
    diff.to_csv(study / "difficulty" / "difficulty.csv", index=False)
    lap = np.exp(rng.normal(5.5, 1.0, n)) * np.where(hard, 0.3, 1.0)
    quality = pd.DataFrame({
        "image_id": ids, "laplacian_var": lap, "contrast": rng.uniform(0.1, 0.3, n),
        "blur_score": np.where(lap > 20, 1.0, 0.2), "is_blurry": lap <= 20, "error": ""})
    quality.to_csv(study / "quality.csv", index=False)
    qvd = compare_quality(quality, diff, measures=["laplacian_var", "contrast", "blur_score"],
                          model_measures=["contrast"], n_boot=100, seed=0)
    (study / "difficulty" / "quality_vs_difficulty.json").write_text(to_json(qvd))
    (study / "steps.json").write_text(json.dumps({
        "summary": {"seconds": 0.032, "finished": "2026-01-01T00:00:00+00:00"},
        "train": {"seconds": 185.4, "finished": "2026-01-01T00:03:05+00:00"},
        "difficulty": {"seconds": 4.25, "finished": "2026-01-01T00:03:10+00:00"}}))
    return study


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    out = {}
    for synthetic in (True, False):
        study = make_study(tmp_path_factory.mktemp("report"), synthetic=synthetic)
        write_report(study)
        out[synthetic] = study
    return out


def test_synthetic_study_says_so_at_the_top(reports):
    md = (reports[True] / "report.md").read_text()
    html = (reports[True] / "report.html").read_text()
    assert md.index(SYNTHETIC_REPORT_NOTICE) < md.index("## Data")
    assert html.index("class='notice'") < html.index("<h2>Data</h2>")
    assert "not taken from patients" in html
    assert SYNTHETIC_REPORT_NOTICE not in (reports[False] / "report.md").read_text()
    assert "class='notice'" not in (reports[False] / "report.html").read_text()


def test_step_times_are_plain_durations(reports):
    md = (reports[True] / "report.md").read_text()
    assert "| summary | 0.03 s |" in md and "| train | 3 min 05 s |" in md
    assert "| difficulty | 4.2 s |" in md or "| difficulty | 4.3 s |" in md
    assert "e-02" not in md.split("## Steps")[1]


def test_chance_figure_and_sharpness_figure_carry_data(reports):
    html = (reports[True] / "report.html").read_text()
    for title in ("Images wrong by all models: observed vs chance", "Sharpness by group"):
        assert title in html
    import plotly.io as pio

    from skin_core.report import _chance_figure, _sharpness_figure

    sig = json.loads((reports[True] / "difficulty" / "significance.json").read_text())
    fig = _chance_figure(sig)
    assert list(fig.data[0].x) == ["chance (exact)", "chance (permutation)", "observed"]
    assert fig.data[0].y[-1] == sig["observed_all_wrong"] > fig.data[0].y[0]
    assert len(fig.data[0].error_y.array) == 3
    q = pd.read_csv(reports[True] / "quality.csv")
    d = pd.read_csv(reports[True] / "difficulty" / "difficulty.csv")
    merged = q.merge(d[["image_id", "group"]], on="image_id")
    merged = merged[merged["group"].isin(["difficult", "control"])]
    box = _sharpness_figure(merged)
    assert [t.name for t in box.data] == ["difficult", "control"]
    spread = [float(np.ptp(np.asarray(t.y, dtype=float))) for t in box.data]
    assert min(spread) > 0.5  # log10 Laplacian variance keeps its spread; blur_score would not
    assert pio.to_json(box)  # serialisable as the report embeds it
    md = (reports[True] / "report.md").read_text()
    assert "blurry (blur_score < 0.5)" in md


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

#: Per Plotly figure of the page: its title, traces in ``data``, trace groups and marks drawn.
_FIGURES_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => ({
    title: String((gd.layout.title && (gd.layout.title.text || gd.layout.title)) || ''),
    traces: (gd.data || []).length,
    drawn_traces: gd.querySelectorAll('g.trace').length,
    marks: gd.querySelectorAll('g.trace path.point, g.trace .point, g.trace path.box, '
                               + 'g.trace .bars path, g.trace path.js-line').length}))"""


def _figures_in_chromium(html: Path) -> list[dict]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(html.as_uri())
            page.wait_for_function("() => window.Plotly && document.querySelectorAll("
                                   "'.js-plotly-plot .main-svg').length > 0", timeout=60_000)
            page.wait_for_timeout(300)
            n_divs = page.evaluate("() => document.querySelectorAll('.plotly-graph-div').length")
            return [{**f, "n_divs": n_divs} for f in page.evaluate(_FIGURES_JS)]
        finally:
            browser.close()


def _assert_every_figure_drawn(figures: list[dict]) -> None:
    assert figures and all(f["n_divs"] == len(figures) for f in figures)
    empty = [f["title"] for f in figures
             if f["traces"] < 1 or f["drawn_traces"] < 1 or f["marks"] < 1]
    assert not empty, f"figures drawn without data: {empty}"


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_every_report_figure_has_drawn_data_in_chromium(reports):
    figures = _figures_in_chromium(reports[True] / "report.html")
    titles = [f["title"] for f in figures]
    assert "Images wrong by all models: observed vs chance" in titles
    assert any(t.startswith("Sharpness by group") for t in titles)
    _assert_every_figure_drawn(figures)


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_the_pipelines_own_report_has_drawn_data_in_chromium(app_workspace):
    """The report ``skin-core study`` wrote for the app tests' study (real pipeline files)."""
    report = app_workspace / "studies" / "demo" / "report.html"
    html = report.read_text()
    assert html.index("class='notice'") < html.index("<h2>")  # the demo data are synthetic
    _assert_every_figure_drawn(_figures_in_chromium(report))
