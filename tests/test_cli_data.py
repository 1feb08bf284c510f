"""``skin-core data summary|folds`` through the real ``main`` entry point."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

import skin_core.cli as cli
from skin_core.constants import ISIC2019_CLASSES

HEADER = "image," + ",".join(ISIC2019_CLASSES) + ",UNK"


@pytest.fixture(autouse=True)
def only_data_verb(monkeypatch):
    """Run ``main`` with just this verb, independent of verbs other modules add."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("data",))


def isic_dir(root: Path, n: int = 20, *, bad_rows: tuple[str, ...] = ()) -> Path:
    labels = ["NV", "MEL", "BCC", "NV"]
    gt = [HEADER]
    meta = ["image,age_approx,anatom_site_general,lesion_id,sex"]
    (root / "ISIC_2019_Training_Input").mkdir(parents=True)
    for i in range(n):
        image = f"ISIC_{i:07d}"
        lab = labels[i % 4]
        gt.append(image + "," + ",".join("1" if c == lab else "0" for c in (*ISIC2019_CLASSES,
                                                                            "UNK")))
        lesion = f"L{i // 2}" if i < 8 else ""
        meta.append(f"{image},{20 + i},anterior torso,{lesion},{'male' if i % 2 else ''}")
        (root / "ISIC_2019_Training_Input" / f"{image}.jpg").write_bytes(b"")
    gt.extend(bad_rows)
    (root / "ISIC_2019_Training_GroundTruth.csv").write_text("\n".join(gt) + "\n")
    (root / "ISIC_2019_Training_Metadata.csv").write_text("\n".join(meta) + "\n")
    return root


def test_summary_json_has_the_documented_keys(tmp_path, capsys):
    root = isic_dir(tmp_path / "isic")
    assert cli.main(["data", "summary", "--dataset", f"isic2019:{root}", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_images"] == 20
    assert out["classes"] == {"MEL": 5, "NV": 10, "BCC": 5, "AK": 0, "BKL": 0, "DF": 0,
                              "VASC": 0, "SCC": 0}
    assert out["n_lesions"] == 4
    assert out["missing"] == {"lesion_id": 12, "age_approx": 0, "sex": 10,
                              "anatom_site_general": 0}
    assert out["skipped"] == [] and out["n_skipped"] == 0


def test_summary_text(tmp_path, capsys):
    root = isic_dir(tmp_path / "isic")
    assert cli.main(["data", "summary", "--dataset", f"isic2019:{root}"]) == 0
    out = capsys.readouterr().out
    assert "images       20" in out
    assert re.search(r"^  NV +10 +50\.0%$", out, re.M)
    assert "lesions      4" in out
    assert re.search(r"^  sex +10$", out, re.M)


def test_bad_input_exits_2_with_one_sentence(tmp_path, capsys):
    root = isic_dir(tmp_path / "isic", bad_rows=("ISIC_9999999,1,1,0,0,0,0,0,0,0",))
    assert cli.main(["data", "summary", "--dataset", f"isic2019:{root}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skin-core: error: ")
    assert "line 22, image 'ISIC_9999999'" in err and "MEL and NV" in err
    assert len(err.strip().splitlines()) == 1
    assert cli.main(["data", "summary", "--dataset", "nope:/x"]) == 2
    assert "must be one of" in capsys.readouterr().err


def test_skip_bad_lists_skipped_rows(tmp_path, capsys):
    root = isic_dir(tmp_path / "isic", bad_rows=("ISIC_9999999,0,0,0,0,0,0,0,0,0",))
    args = ["data", "summary", "--dataset", f"isic2019:{root}", "--skip-bad"]
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "skipped 1 row(s):" in err
    assert "line 22 image 'ISIC_9999999'" in err and "no class column is 1" in err
    assert cli.main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_images"] == 20 and out["n_skipped"] == 1
    assert out["skipped"][0]["line"] == 22 and out["skipped"][0]["image_id"] == "ISIC_9999999"


def test_no_check_images_loads_csvs_alone(tmp_path, capsys):
    root = isic_dir(tmp_path / "isic")
    for p in (root / "ISIC_2019_Training_Input").iterdir():
        p.unlink()
    assert cli.main(["data", "summary", "--dataset", f"isic2019:{root}"]) == 2
    assert "--no-check-images" in capsys.readouterr().err
    args = ["data", "summary", "--dataset", f"isic2019:{root}", "--no-check-images", "--json"]
    assert cli.main(args) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 20


def test_folds_writes_csv_and_reports(tmp_path, capsys):
    root = isic_dir(tmp_path / "isic")
    out_csv = tmp_path / "runs" / "folds.csv"
    args = ["data", "folds", "--dataset", f"isic2019:{root}", "--k", "2", "--seed", "3",
            "--out", str(out_csv), "--json"]
    assert cli.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    folds = pd.read_csv(out_csv)
    assert list(folds.columns) == ["image_id", "fold"] and len(folds) == 20
    assert set(folds["fold"]) == {0, 1}
    assert report["lesions_in_two_folds"] == 0 and report["k"] == 2
    assert sum(report["fold_sizes"].values()) == 20
    lesion_of = {f"ISIC_{i:07d}": f"L{i // 2}" for i in range(8)}
    per = folds.assign(lesion=folds["image_id"].map(lesion_of)).dropna().groupby("lesion")
    assert (per["fold"].nunique() == 1).all()
    # deterministic: the same command gives the same file
    first = out_csv.read_text()
    assert cli.main(args) == 0
    assert out_csv.read_text() == first


def test_folds_text_and_warning(tmp_path, capsys):
    root = isic_dir(tmp_path / "isic", n=12)
    out_csv = tmp_path / "folds.csv"
    args = ["data", "folds", "--dataset", f"isic2019:{root}", "--k", "4", "--out", str(out_csv)]
    assert cli.main(args) == 0
    cap = capsys.readouterr()
    assert f"wrote {out_csv}: 12 images in 4 folds (seed 0)" in cap.out
    assert "lesions in two folds: 0" in cap.out
    # BCC and MEL have 3 images each, MEL's two sharing lesion L0/L2... fewer groups than 4
    assert "warning: Class(es)" in cap.err and "fewer lesion groups than k=4" in cap.err


def test_folds_with_a_calibration_split(tmp_path, capsys):
    root = isic_dir(tmp_path / "isic", n=40)
    out_csv = tmp_path / "folds.csv"
    args = ["data", "folds", "--dataset", f"isic2019:{root}", "--k", "3", "--seed", "1",
            "--calibration", "0.25", "--calibration-seed", "4", "--out", str(out_csv), "--json"]
    assert cli.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    folds = pd.read_csv(out_csv)
    held = folds["fold"] == -1
    cal = report["calibration"]
    assert cal["fraction"] == 0.25 and cal["seed"] == 4
    assert cal["n_images"] == int(held.sum())
    target = {"NV": 5, "MEL": 2.5, "BCC": 2.5}  # a quarter of NV 20, MEL 10, BCC 10
    assert all(abs(cal["per_class"][c] - t) <= 1 for c, t in target.items())
    assert sum(cal["per_class"].values()) == cal["n_images"]
    assert cal["n_groups"] >= cal["n_lesions"]
    assert set(folds.loc[~held, "fold"]) == {0, 1, 2}
    assert sum(report["fold_sizes"].values()) == 40 - cal["n_images"]
    assert report["lesions_in_two_folds"] == 0
    lesion_of = {f"ISIC_{i:07d}": f"L{i // 2}" for i in range(8)}
    per = folds.assign(lesion=folds["image_id"].map(lesion_of)).dropna().groupby("lesion")
    assert (per["fold"].nunique() == 1).all()
    # text output names the split; without --calibration nothing is held out
    assert cli.main(args[:-1]) == 0
    text = capsys.readouterr().out
    assert f"calibration split (fold -1, seed 4): {cal['n_images']} images" in text
    assert cli.main(["data", "folds", "--dataset", f"isic2019:{root}", "--k", "3", "--out",
                     str(out_csv), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["calibration"]["n_images"] == 0
    assert (pd.read_csv(out_csv)["fold"] >= 0).all()
    assert cli.main(["data", "folds", "--dataset", f"isic2019:{root}", "--calibration", "1.5",
                     "--out", str(out_csv)]) == 2
    assert "calibration fraction must be a number in [0, 1)" in capsys.readouterr().err


def test_folds_bad_k_exits_2(tmp_path, capsys):
    root = isic_dir(tmp_path / "isic", n=4)
    args = ["data", "folds", "--dataset", f"isic2019:{root}", "--k", "9", "--out",
            str(tmp_path / "f.csv")]
    assert cli.main(args) == 2
    assert "larger than the number of lesion groups (2)" in capsys.readouterr().err
    assert not (tmp_path / "f.csv").exists()


def test_verify_images_option(tmp_path, capsys):
    root = isic_dir(tmp_path / "isic", n=4)  # empty .jpg files: exist, but unreadable
    base = ["data", "summary", "--dataset", f"isic2019:{root}"]
    assert cli.main(base) == 0
    capsys.readouterr()
    assert cli.main([*base, "--verify-images"]) == 2
    assert "empty (0 bytes)" in capsys.readouterr().err
    from PIL import Image

    Image.new("RGB", (8, 8)).save(root / "ISIC_2019_Training_Input" / "ISIC_0000000.jpg")
    assert cli.main([*base, "--verify-images", "--skip-bad", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_images"] == 1 and out["n_skipped"] == 3
