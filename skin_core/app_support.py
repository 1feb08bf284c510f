"""Kept for compatibility: the page helpers now live in :mod:`skin_core.app`, one module per page.

This module only re-exports the public names it used to define, so code written against
``skin_core.app_support`` keeps working. New code imports from the modules themselves:

- :mod:`skin_core.app.difficult`: gallery table, filters, export, captions, study tables;
- :mod:`skin_core.app.experts`: reader-study inputs, analysis, tables, confusion matrices;
- :mod:`skin_core.app.predict`: one prediction's tables, JSON, HTML report, similar cases;
- :mod:`skin_core.app.quality_panel`: the Predict page's quality strip;
- :mod:`skin_core.app.synthetic`: the synthetic-data notices;
- :mod:`skin_core.app.thumbnails`: thumbnails, data URIs, the HTML grid, page slices;
- :mod:`skin_core.app.common`: :func:`~skin_core.app.common.study_files`.
"""

from __future__ import annotations

from skin_core.app.common import study_files
from skin_core.app.difficult import (
    blur_by_group,
    filter_gallery,
    gallery_export,
    load_gallery,
    model_columns,
    quality_tests_table,
    significance_table,
    thumb_caption,
)
from skin_core.app.experts import (
    ReaderInputs,
    cnn_coverage,
    confusion_matrix,
    demo_reader_inputs,
    read_upload_csv,
    reader_accuracy_table,
    reader_group_table,
    reader_tests_table,
    run_reader_study,
)
from skin_core.app.predict import (
    REFERRAL_REASONS,
    member_probability_frame,
    meta_comparison,
    predict_with_and_without,
    referral_text,
    result_json,
    result_report_html,
    similar_cases,
)
from skin_core.app.quality_panel import (
    QUALITY_LABELS,
    TYPICAL_RANGE,
    quality_strip,
    quality_strip_figure,
    sharpness_percentile,
)
from skin_core.app.synthetic import (
    SYNTHETIC_BUNDLE_NOTICE,
    SYNTHETIC_STUDY_NOTICE,
    synthetic_notice,
)
from skin_core.app.thumbnails import (
    THUMB_QUALITY,
    THUMB_SIDE,
    data_uri,
    page_slice,
    thumbnail_grid_html,
    thumbnail_jpeg,
)

__all__ = [
    "QUALITY_LABELS",
    "REFERRAL_REASONS",
    "SYNTHETIC_BUNDLE_NOTICE",
    "SYNTHETIC_STUDY_NOTICE",
    "THUMB_QUALITY",
    "THUMB_SIDE",
    "TYPICAL_RANGE",
    "ReaderInputs",
    "blur_by_group",
    "cnn_coverage",
    "confusion_matrix",
    "data_uri",
    "demo_reader_inputs",
    "filter_gallery",
    "gallery_export",
    "load_gallery",
    "member_probability_frame",
    "meta_comparison",
    "model_columns",
    "page_slice",
    "predict_with_and_without",
    "quality_strip",
    "quality_strip_figure",
    "quality_tests_table",
    "read_upload_csv",
    "reader_accuracy_table",
    "reader_group_table",
    "reader_tests_table",
    "referral_text",
    "result_json",
    "result_report_html",
    "run_reader_study",
    "sharpness_percentile",
    "significance_table",
    "similar_cases",
    "study_files",
    "synthetic_notice",
    "thumb_caption",
    "thumbnail_grid_html",
    "thumbnail_jpeg",
]
