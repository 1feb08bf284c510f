"""The Experts vs CNN view model: uploaded CSVs, reader tables, confusion matrices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skin_core.app.experts import (
    ReaderInputs,
    cnn_coverage,
    confusion_matrix,
    read_upload_csv,
    reader_accuracy_table,
    reader_group_table,
    reader_tests_table,
    run_reader_study,
)
from skin_core.errors import ConfigError, DataError


def test_read_upload_csv_errors():
    df = read_upload_csv(b"\xef\xbb\xbfreader_id, image_id\nR1,a\n", "r.csv")
    assert list(df.columns) == ["reader_id", "image_id"]
    with pytest.raises(DataError, match=r"r.csv has no column 'diagnosis' \(found reader_id, "
                       r"image_id\); a readings.csv needs the columns reader_id, image_id, "):
        read_upload_csv(b"reader_id,image_id\nR1,a\n", "r.csv",
                            required=("reader_id", "image_id", "diagnosis"), what="readings.csv")
    with pytest.raises(DataError, match="r.csv is empty"):
        read_upload_csv(b"  \n", "r.csv")
    with pytest.raises(DataError, match="not UTF-8"):
        read_upload_csv(b"a,b\n\xff\xfe,1\n", "r.csv")


@pytest.fixture(scope="module")
def reader_study():
    rng = np.random.default_rng(0)
    ids = [f"I{i}" for i in range(20)]
    truth = pd.DataFrame({"image_id": ids, "label": ["MEL", "NV"] * 10})
    groups = pd.DataFrame({"image_id": ids, "group": ["difficult"] * 10 + ["control"] * 10})
    rows = []
    for r in ("R1", "R2", "R3"):
        for i, lab in zip(ids, truth["label"], strict=True):
            wrong = rng.random() < (0.6 if int(i[1:]) < 10 else 0.1)
            rows.append({"reader_id": r, "image_id": i,
                         "diagnosis": ("NV" if lab == "MEL" else "MEL") if wrong else lab})
    cnn = pd.DataFrame({"image_id": ids, "pred": ["NV"] * 20})
    study = run_reader_study(ReaderInputs(pd.DataFrame(rows), truth, groups, cnn),
                                 n_bootstrap=50, n_permutations=50)
    return study, pd.DataFrame(rows)


def test_reader_tables(reader_study):
    study, rows = reader_study
    acc = reader_accuracy_table(study.summary)
    assert acc["who"].tolist()[:4] == ["R1", "R2", "R3", "consensus"]
    assert "CNN ensemble" in acc["who"].tolist()
    r1 = rows[(rows.reader_id == "R1") & rows.image_id.isin([f"I{i}" for i in range(10, 20)])]
    truth = {f"I{i}": ["MEL", "NV"][i % 2] for i in range(20)}
    expected = np.mean([d == truth[i] for i, d in zip(r1.image_id, r1.diagnosis, strict=True)])
    assert acc.set_index("who").loc["R1", "control"] == pytest.approx(expected)
    groups = reader_group_table(study.summary)
    assert set(groups["group"]) == {"difficult", "control"}
    tests = reader_tests_table(study.summary)
    assert len(tests) >= 2 and tests["assumptions"].notna().all()


def test_confusion_matrices(reader_study):
    study, rows = reader_study
    cm = confusion_matrix(study, who="readers")
    assert int(cm.to_numpy().sum()) == len(rows)
    assert list(cm.index)[:2] == ["MEL", "NV"]
    cnn = confusion_matrix(study, who="cnn", group="control")
    assert int(cnn.loc["MEL", "NV"]) == 5 and int(cnn.loc["NV", "NV"]) == 5
    with pytest.raises(ConfigError, match="'who' parameter"):
        confusion_matrix(study, who="robot")
    assert cnn_coverage(study.images) == (20, 20)


def test_cnn_panel_only_for_images_with_predictions(reader_study):
    _, rows = reader_study
    ids = [f"I{i}" for i in range(20)]
    truth = pd.DataFrame({"image_id": ids, "label": ["MEL", "NV"] * 10})
    groups = pd.DataFrame({"image_id": ids, "group": ["difficult"] * 10 + ["control"] * 10})
    cnn = pd.DataFrame({"image_id": ids[:4], "pred": ["NV"] * 4})  # the CNNs saw 4 images
    study = run_reader_study(ReaderInputs(rows, truth, groups, cnn),
                                 n_bootstrap=20, n_permutations=20)
    assert cnn_coverage(study.images) == (4, 20)
    assert cnn_coverage(study.images, "control") == (0, 10)
    cm = confusion_matrix(study, who="cnn")
    assert int(cm.to_numpy().sum()) == 4 and "none" not in cm.columns
    assert int(cm.loc["MEL", "NV"]) == 2 and int(cm.loc["NV", "NV"]) == 2
