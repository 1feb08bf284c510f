"""Plain view models behind the Streamlit pages, one module per page plus what they share.

Everything the pages show is computed here, so it is testable without Streamlit and usable
from a notebook; this package never imports Streamlit. Functions take paths, DataFrames and
result records and return DataFrames, dicts, strings or bytes.

- :mod:`skin_core.app.difficult`: the Difficult images gallery and the study's tables;
- :mod:`skin_core.app.experts`: the Experts vs CNN reader-study dashboard;
- :mod:`skin_core.app.predict`: one prediction's tables, JSON, HTML report and similar cases;
- :mod:`skin_core.app.quality_panel`: the Predict page's image-quality strip;
- :mod:`skin_core.app.synthetic`: the synthetic-data notices;
- :mod:`skin_core.app.thumbnails`: thumbnails, data URIs and the HTML grid;
- :mod:`skin_core.app.common`: the study's result files and small formatters.

Training runs (list, launch, resume, progress) are in :mod:`skin_core.runs`; where the app
finds data, studies and bundles in :mod:`skin_core.workspace`; who may open the app in
:mod:`skin_core.access`. Import from the modules; this package re-exports nothing.
"""
