"""``skin_core.app_support`` is a compatibility shim over :mod:`skin_core.app`.

The behaviour of the page helpers is tested module by module (``tests/test_app_difficult.py``,
``test_app_experts.py``, ``test_app_predict.py``, ``test_app_quality_panel.py``,
``test_app_synthetic.py``, ``test_app_thumbnails.py``); here: the old import path still gives
every public name it defined before the split, as the very same objects.
"""

from __future__ import annotations

import importlib

import pytest

from skin_core import app_support as aps

#: The public names ``skin_core.app_support`` defined before the split, with their new home.
MOVED: dict[str, str] = {
    "study_files": "common",
    "load_gallery": "difficult", "model_columns": "difficult", "filter_gallery": "difficult",
    "gallery_export": "difficult", "significance_table": "difficult",
    "quality_tests_table": "difficult", "blur_by_group": "difficult",
    "thumb_caption": "difficult",
    "ReaderInputs": "experts", "demo_reader_inputs": "experts", "read_upload_csv": "experts",
    "run_reader_study": "experts", "reader_group_table": "experts",
    "reader_accuracy_table": "experts", "reader_tests_table": "experts",
    "confusion_matrix": "experts", "cnn_coverage": "experts",
    "predict_with_and_without": "predict", "member_probability_frame": "predict",
    "REFERRAL_REASONS": "predict", "referral_text": "predict", "meta_comparison": "predict",
    "result_json": "predict", "result_report_html": "predict", "similar_cases": "predict",
    "QUALITY_LABELS": "quality_panel", "TYPICAL_RANGE": "quality_panel",
    "quality_strip": "quality_panel", "quality_strip_figure": "quality_panel",
    "sharpness_percentile": "quality_panel",
    "SYNTHETIC_BUNDLE_NOTICE": "synthetic", "SYNTHETIC_STUDY_NOTICE": "synthetic",
    "synthetic_notice": "synthetic",
    "THUMB_SIDE": "thumbnails", "THUMB_QUALITY": "thumbnails", "thumbnail_jpeg": "thumbnails",
    "data_uri": "thumbnails", "thumbnail_grid_html": "thumbnails", "page_slice": "thumbnails",
}


def test_shim_exports_exactly_the_old_public_names():
    assert sorted(aps.__all__) == sorted(MOVED)


@pytest.mark.parametrize("name", sorted(MOVED))
def test_shim_name_is_the_new_modules_object(name):
    module = importlib.import_module(f"skin_core.app.{MOVED[name]}")
    assert getattr(aps, name) is getattr(module, name)
