"""Tests for the synthetic demo dataset (skin_core.data.synthetic, skin-core demo-data)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import skin_core.data.synthetic as syn
from skin_core.cli import main
from skin_core.constants import ISIC2019_CLASSES, SITE_VALUES
from skin_core.data.synthetic import (
    CONFUSABLE,
    class_counts,
    generate_demo_dataset,
    render_lesion,
)
from skin_core.errors import ConfigError

GT_COLUMNS = ["image", *ISIC2019_CLASSES, "UNK"]
META_COLUMNS = ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"]
TRUTH_REQUIRED = [
    "image_id", "true_label", "label", "lesion_id", "blur_sigma", "is_blurred", "is_ambiguous",
    "ambiguous_with", "is_mislabeled", "has_hair", "has_ruler", "latent_difficulty",
]


def _lap_var(rgb: np.ndarray) -> float:
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float64)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, syn.DemoSummary]:
    out = tmp_path_factory.mktemp("demo") / "ds"
    summary = generate_demo_dataset(out, n=120, seed=7, size=64, workers=1)
    return out, summary


@pytest.fixture(scope="module")
def plan2000() -> pd.DataFrame:
    plan, _ = syn._plan(2000, 0, class_floor=0.04, blur_fraction=0.15,
                        ambiguous_fraction=0.10, mislabel_fraction=0.03)
    return plan


# --- class counts ----------------------------------------------------------------------------
@pytest.mark.parametrize("n", [8, 50, 333, 2000, 25331])
def test_class_counts_sum_floor_and_isic_order(n: int) -> None:
    counts = class_counts(n)
    assert list(counts) == list(ISIC2019_CLASSES)
    assert sum(counts.values()) == n
    assert min(counts.values()) >= math.ceil(0.04 * n)
    if n >= 50:
        assert max(counts, key=counts.get) == "NV"
    if n >= 333:
        assert counts["NV"] > counts["MEL"] > counts["BCC"] > counts["BKL"] > counts["AK"]


def test_class_counts_for_2000_images() -> None:
    assert class_counts(2000) == {"MEL": 325, "NV": 927, "BCC": 239, "AK": 80, "BKL": 189,
                                  "DF": 80, "VASC": 80, "SCC": 80}
    # without a floor the ISIC 2019 proportions come through (DF 239/25331 of 25331)
    assert class_counts(25331, class_floor=0.0)["DF"] == 239


@pytest.mark.parametrize("bad", [0, 7, -5, 2.5, "100", True])
def test_class_counts_rejects_bad_n(bad) -> None:
    with pytest.raises(ConfigError, match="at least 8"):
        class_counts(bad)


# --- layout ----------------------------------------------------------------------------------
def test_layout_is_isic2019(demo) -> None:
    out, summary = demo
    gt = pd.read_csv(out / "ISIC_2019_Training_GroundTruth.csv")
    assert list(gt.columns) == GT_COLUMNS
    assert len(gt) == 120 == summary.n_images
    assert gt["image"].is_unique and gt["image"].str.fullmatch(r"ISIC_9\d{6}").all()
    onehot = gt[list(ISIC2019_CLASSES)].to_numpy()
    assert set(np.unique(onehot)) <= {0.0, 1.0}
    assert (onehot.sum(axis=1) == 1.0).all()
    assert (gt["UNK"] == 0.0).all()
    first_row = (out / "ISIC_2019_Training_GroundTruth.csv").read_text().splitlines()[1]
    assert first_row.count("0.0") == 8 and first_row.count("1.0") == 1

    meta = pd.read_csv(out / "ISIC_2019_Training_Metadata.csv")
    assert list(meta.columns) == META_COLUMNS
    assert list(meta["image"]) == list(gt["image"])
    assert set(meta["sex"].dropna()) <= {"male", "female"}
    assert set(meta["anatom_site_general"].dropna()) <= set(SITE_VALUES)
    ages = meta["age_approx"].dropna()
    assert ((ages % 5 == 0) & (ages >= 0) & (ages <= 85)).all()

    truth = pd.read_csv(out / "generation_truth.csv")
    assert list(truth.columns[: len(TRUTH_REQUIRED)]) == TRUTH_REQUIRED
    assert list(truth["image_id"]) == list(gt["image"])
    labels = gt[list(ISIC2019_CLASSES)].idxmax(axis=1)
    assert (labels.to_numpy() == truth["label"].to_numpy()).all()
    assert truth["latent_difficulty"].between(0, 1).all()

    files = sorted(p.name for p in (out / "ISIC_2019_Training_Input").iterdir())
    assert files == [f"{i}.jpg" for i in gt["image"]]
    with Image.open(out / "ISIC_2019_Training_Input" / files[0]) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (64, 64)
    assert "SYNTHETIC" in (out / "README.txt").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left
    masks = sorted(p.name for p in (out / "ISIC_2019_Training_GroundTruth_Masks").iterdir())
    assert masks == [f"{i}_segmentation.png" for i in gt["image"]]
    assert summary.files["masks"] == str(out / "ISIC_2019_Training_GroundTruth_Masks")


def test_loads_through_the_isic2019_loader(demo) -> None:
    tables = pytest.importorskip("skin_core.data.tables")
    out, _ = demo
    ds = tables.load_dataset(f"isic2019:{out}")
    truth = pd.read_csv(out / "generation_truth.csv")
    assert tuple(ds.classes) == ISIC2019_CLASSES
    assert len(ds.table) == 120
    merged = ds.table.merge(truth, on="image_id", suffixes=("", "_truth"))
    assert (merged["label"] == merged["label_truth"]).all()
    assert all(Path(p).is_file() for p in ds.table["path"])


# --- determinism -----------------------------------------------------------------------------
def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    a = generate_demo_dataset(tmp_path / "a", n=40, seed=11, size=48, workers=1)
    b = generate_demo_dataset(tmp_path / "b", n=40, seed=11, size=48, workers=2)
    snap_a, snap_b = _snapshot(tmp_path / "a"), _snapshot(tmp_path / "b")
    assert len(snap_a) == 2 * 40 + 4  # images, masks, 4 tables + README
    assert snap_a == snap_b
    assert a.class_counts == b.class_counts
    generate_demo_dataset(tmp_path / "c", n=40, seed=12, size=48, workers=1)
    snap_c = _snapshot(tmp_path / "c")
    differing = [k for k in snap_a if k.endswith(".jpg") and snap_a[k] != snap_c.get(k)]
    assert len(differing) == 40


def test_render_lesion_is_deterministic_and_shaped() -> None:
    a = render_lesion("MEL", lesion_seed=5, view_seed=1, size=80, hair=True, ruler=True)
    b = render_lesion("MEL", lesion_seed=5, view_seed=1, size=80, hair=True, ruler=True)
    c = render_lesion("MEL", lesion_seed=5, view_seed=2, size=80, hair=True, ruler=True)
    assert a.shape == (80, 80, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


# --- ground truth of the generation ------------------------------------------------------------
def test_fractions_match_what_was_asked(plan2000: pd.DataFrame) -> None:
    p = plan2000
    assert len(p) == 2000 and p["image_id"].is_unique
    assert p["is_blurred"].sum() == 300
    assert set(p.loc[p["is_blurred"], "blur_sigma_256"]) <= set(syn.BLUR_SIGMAS_256)
    assert (p.loc[~p["is_blurred"], "blur_sigma_256"] == 0).all()
    assert abs(int(p["is_ambiguous"].sum()) - 200) <= 4
    assert abs(int(p["is_mislabeled"].sum()) - 60) <= 4
    assert not (p["is_ambiguous"] & p["is_mislabeled"]).any()
    flipped = p[p["is_mislabeled"]]
    assert (flipped["label"] != flipped["true_label"]).all()
    pairs = zip(flipped["true_label"], flipped["label"], strict=True)
    assert all(lab in CONFUSABLE[t] for t, lab in pairs)
    clean = p[~p["is_mislabeled"]]
    assert (clean["label"] == clean["true_label"]).all()
    amb = p[p["is_ambiguous"]]
    pairs = zip(amb["true_label"], amb["ambiguous_with"], strict=True)
    assert all(w in CONFUSABLE[t] for t, w in pairs)
    assert amb["mix_weight"].between(0.3, 0.5).all()
    assert p.loc[~p["is_ambiguous"], "ambiguous_with"].isna().all()
    # the floor holds for the labels written in the CSV too
    assert p["label"].value_counts().min() >= 80
    assert p["true_label"].value_counts().to_dict() == class_counts(2000)


def test_lesions_share_metadata_and_drawing(plan2000: pd.DataFrame) -> None:
    p = plan2000.dropna(subset=["lesion_id"])
    cols = ["true_label", "label", "age_approx", "sex", "anatom_site_general", "lesion_seed",
            "is_ambiguous", "has_hair"]
    per_lesion = p.groupby("lesion_id")[cols].nunique(dropna=False)
    assert (per_lesion == 1).all().all()
    sizes = p.groupby("lesion_id").size()
    assert (sizes >= 2).sum() > 100
    share_multi = sizes[sizes >= 2].sum() / len(plan2000)
    assert 0.5 < share_multi < 0.85  # real ISIC 2019: 65 % of images share a lesion
    assert plan2000.groupby("lesion_id")["view_seed"].nunique().sum() == len(p)


def test_metadata_follows_the_real_class_conditionals(plan2000: pd.DataFrame) -> None:
    p = plan2000
    age = p.groupby("true_label")["age_approx"].mean()
    assert age["NV"] + 10 < age["BCC"]  # naevi are seen in younger patients
    site = p[p["true_label"] == "AK"]["anatom_site_general"].value_counts()
    assert site.index[0] == "head/neck"
    assert 0.03 < p["anatom_site_general"].isna().mean() < 0.2  # ISIC 2019: 10.4 % missing
    assert p["age_approx"].isna().mean() < 0.05
    assert (p[p["true_label"] == "BCC"]["lesion_id"].notna()).all()
    assert p[p["true_label"] == "NV"]["lesion_id"].isna().mean() > 0.05


def test_latent_difficulty_combines_ambiguity_and_blur(demo) -> None:
    out, _ = demo
    t = pd.read_csv(out / "generation_truth.csv")
    hard = t[t["is_ambiguous"] | (t["blur_sigma"] > 0)]["latent_difficulty"]
    easy = t[~t["is_ambiguous"] & (t["blur_sigma"] == 0)]["latent_difficulty"]
    assert hard.min() >= 0.3 * 0.5
    assert hard.mean() > easy.mean() + 0.2
    assert easy.max() <= 0.5 * (1 - 0.45) + 1e-9


# --- pixels ----------------------------------------------------------------------------------
def test_blurred_images_are_blurrier_than_their_sharp_twins() -> None:
    for i, label in enumerate(ISIC2019_CLASSES):
        sharp = render_lesion(label, lesion_seed=100 + i, view_seed=i, size=96)
        blurred = render_lesion(label, lesion_seed=100 + i, view_seed=i, size=96,
                                blur_sigma=1.5)
        assert _lap_var(blurred) < 0.5 * _lap_var(sharp), label


def test_blurred_images_in_the_dataset_are_blurrier(demo) -> None:
    out, _ = demo
    t = pd.read_csv(out / "generation_truth.csv")
    lap = [_lap_var(np.asarray(Image.open(out / "ISIC_2019_Training_Input" / f"{i}.jpg")))
           for i in t["image_id"]]
    t["lap"] = lap
    assert t[t["blur_sigma"] > 0]["lap"].median() < 0.6 * t[t["blur_sigma"] == 0]["lap"].median()


def _at_cnn_input(img: np.ndarray, side: int = 64) -> np.ndarray:
    return cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)


def _lesion_detail(img64: np.ndarray) -> float:
    """Fine-structure energy in the centre of a 64 px image (variance of the Laplacian)."""
    return _lap_var(np.ascontiguousarray(img64[16:48, 16:48]))


def test_class_structures_survive_the_cnn_input_size_and_blur_erases_them() -> None:
    """The fine structures are visible at 64 px; the demo's focus blur wipes them out."""
    sigma = syn.BLUR_SIGMAS_256[0] * 128 / 256  # the mildest demo blur, at the demo's 128 px
    for i, label in enumerate(("NV", "MEL", "BKL", "BCC", "AK", "SCC")):
        sharp, blurred = [], []
        for seed in range(4):
            kw = {"lesion_seed": 300 + 10 * i + seed, "view_seed": seed, "size": 128}
            sharp.append(_lesion_detail(_at_cnn_input(render_lesion(label, **kw))))
            blurred.append(_lesion_detail(_at_cnn_input(
                render_lesion(label, blur_sigma=sigma, **kw))))
        assert np.median(blurred) < 0.25 * np.median(sharp), (label, sharp, blurred)


def test_blurred_melanoma_and_naevus_look_alike() -> None:
    """MEL and NV differ by structures, not by mean colour: blurred, little is left to tell."""
    sigma = syn.BLUR_SIGMAS_256[-1] * 128 / 256

    def lesion(label: str) -> tuple[np.ndarray, float]:
        rgb, detail = [], []
        for seed in range(10):
            kw = {"lesion_seed": 500 + seed, "view_seed": seed, "size": 128}
            img = render_lesion(label, blur_sigma=sigma, **kw).astype(float)
            rgb.append(img[48:80, 48:80].reshape(-1, 3).mean(axis=0))
            detail.append(_lesion_detail(_at_cnn_input(render_lesion(label, **kw))))
        return np.mean(rgb, axis=0), float(np.median(detail))

    (mel, mel_detail), (nv, nv_detail), (bcc, _) = (lesion(c) for c in ("MEL", "NV", "BCC"))
    assert np.abs(mel - nv).max() < 12  # blurred: same mean colour within 12 grey levels
    assert np.abs(nv - bcc).max() > 40  # brown and pink groups stay apart
    assert min(mel_detail, nv_detail) > 50  # sharp: both carry fine structure at 64 px


def test_images_look_like_lesions_on_skin_not_noise() -> None:
    size = 96
    c = slice(size // 2 - 8, size // 2 + 8)
    for label in ("MEL", "NV", "BKL"):
        darker = 0
        for seed in range(8):
            img = render_lesion(label, lesion_seed=seed, view_seed=seed, size=size)
            grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(float)
            border = np.concatenate([grey[:6].ravel(), grey[-6:].ravel()])
            darker += grey[c, c].mean() < border.mean() - 10
            # smooth structure: neighbouring pixels are strongly correlated
            assert np.corrcoef(grey[:, :-1].ravel(), grey[:, 1:].ravel())[0, 1] > 0.7
        assert darker >= 7, label


def test_colour_statistics_differ_by_class() -> None:
    def centre_rgb(label: str) -> np.ndarray:
        vals = []
        for seed in range(8):
            img = render_lesion(label, lesion_seed=seed, view_seed=seed, size=64).astype(float)
            vals.append(img[26:38, 26:38].reshape(-1, 3).mean(axis=0))
        return np.mean(vals, axis=0)

    mel, nv, bcc, vasc = (centre_rgb(c) for c in ("MEL", "NV", "BCC", "VASC"))
    assert mel.mean() + 10 < nv.mean() < bcc.mean() - 10  # dark MEL, brown NV, pearly BCC
    assert vasc[2] - vasc[1] > nv[2] - nv[1] + 10  # red-purple lacunae vs brown naevi


# --- atomic writing and errors ----------------------------------------------------------------
def test_interrupted_run_leaves_no_complete_looking_dataset(tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    real = syn._render_job

    def flaky(job):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(syn, "_render_job", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_demo_dataset(tmp_path / "x", n=12, size=32, workers=1)
    assert list((tmp_path / "x").iterdir()) == []


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    generate_demo_dataset(tmp_path, n=8, size=32, workers=1, seed=1)
    with pytest.raises(ConfigError, match="already holds a dataset.*--overwrite"):
        generate_demo_dataset(tmp_path, n=8, size=32, workers=1, seed=2)
    s = generate_demo_dataset(tmp_path, n=9, size=32, workers=1, seed=2, overwrite=True)
    assert s.n_images == 9
    assert len(list((tmp_path / "ISIC_2019_Training_Input").iterdir())) == 9


@pytest.mark.parametrize("kwargs, match", [
    ({"size": 16}, "size"), ({"blur_fraction": 1.5}, "blur_fraction"), ({"seed": -1}, "seed"),
    ({"workers": 0}, "workers"), ({"ambiguous_fraction": 0.6, "mislabel_fraction": 0.5}, "add up"),
])
def test_bad_options_are_refused_before_writing(tmp_path: Path, kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        generate_demo_dataset(tmp_path / "o", n=8, **kwargs)
    assert not (tmp_path / "o").exists()


def test_cli_json_and_bad_input(tmp_path: Path, capsys) -> None:
    rc = main(["demo-data", "--out", str(tmp_path / "d"), "--n", "10", "--size", "32",
               "--workers", "1", "--seed", "3", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_images"] == 10 and out["spec"].startswith("isic2019:")
    assert sum(out["class_counts"].values()) == 10
    assert main(["demo-data", "--out", str(tmp_path / "e"), "--n", "3"]) == 2
    assert "at least 8" in capsys.readouterr().err


# --- the literal tables are faithful to the real CSVs -----------------------------------------
@pytest.mark.realdata
def test_tables_match_the_real_isic2019_metadata(isic2019_csv_dir: Path) -> None:
    path = Path(__file__).resolve().parents[1] / "bench" / "derive_demo_tables.py"
    spec = importlib.util.spec_from_file_location("derive_demo_tables", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    derived = mod.derive(isic2019_csv_dir)
    from skin_core.data.synthetic import _tables

    for c in ISIC2019_CLASSES:
        assert derived["counts"][c][0] == _tables.COUNTS[c]
        assert derived["lesion_missing"][c][0] == _tables.LESION_MISSING[c]
        for name in ("age", "sex", "site", "group_size"):
            assert tuple(derived[name][c]) == getattr(_tables, name.upper())[c], (name, c)


def test_render_lesion_refuses_unknown_classes() -> None:
    with pytest.raises(ConfigError, match="'label' of render_lesion"):
        render_lesion("mel", lesion_seed=0)
    with pytest.raises(ConfigError, match="'mix_with'"):
        render_lesion("MEL", lesion_seed=0, mix_with="XYZ", mix_weight=0.3)
    with pytest.raises(ConfigError, match="mix_weight"):
        render_lesion("MEL", lesion_seed=0, mix_with="NV", mix_weight=0.9)
    ambiguous = render_lesion("MEL", lesion_seed=3, size=48, mix_with="NV", mix_weight=0.5)
    assert not np.array_equal(ambiguous, render_lesion("MEL", lesion_seed=3, size=48))


def test_written_metadata_is_shared_within_lesions(demo) -> None:
    out, _ = demo
    meta = pd.read_csv(out / "ISIC_2019_Training_Metadata.csv")
    gt = pd.read_csv(out / "ISIC_2019_Training_GroundTruth.csv")
    meta["label"] = gt[list(ISIC2019_CLASSES)].idxmax(axis=1)
    grouped = meta.dropna(subset=["lesion_id"]).groupby("lesion_id")
    assert (grouped.size() >= 2).any()
    cols = ["age_approx", "sex", "anatom_site_general", "label"]
    assert (grouped[cols].nunique(dropna=False) == 1).all().all()


# --- lesion masks (ISIC 2018 Task 1 layout) -----------------------------------------------------
def _read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "L"
        return np.asarray(im)


def test_masks_are_binary_pngs_of_the_image_size(demo) -> None:
    out, _ = demo
    gt = pd.read_csv(out / "ISIC_2019_Training_GroundTruth.csv")
    fractions = []
    for image_id in gt["image"]:
        mask = _read_mask(syn.lesion_mask_path(out, image_id))
        assert mask.shape == (64, 64)
        assert set(np.unique(mask)) <= {0, 255}
        fractions.append((mask > 0).mean())
    # radii 0.08-0.34 of the side (VASC smallest, MEL largest), aspect 0.6-1, pose scale 0.9-1.1
    assert 0.01 < min(fractions) and max(fractions) < 0.5
    assert 0.05 < float(np.median(fractions)) < 0.3


def test_mask_is_the_lesion_drawn_in_the_image() -> None:
    for i, label in enumerate(ISIC2019_CLASSES):
        img, mask = render_lesion(label, lesion_seed=40 + i, view_seed=7 + i, size=128,
                                  return_mask=True)
        assert np.array_equal(img, render_lesion(label, lesion_seed=40 + i, view_seed=7 + i,
                                                 size=128))  # asking for the mask changes nothing
        inside = mask > 0
        # the lesion body differs from the surrounding skin: colour distance to the median skin
        # colour (a ring just outside the lesion) is much larger inside than in that ring
        ring = (cv2.dilate(mask, np.ones((15, 15), np.uint8)) > 0) & ~inside
        skin = np.median(img[ring].astype(float), axis=0)
        dist = np.linalg.norm(img.astype(float) - skin, axis=2)
        assert np.median(dist[inside]) > 2.5 * np.median(dist[ring]) + 5, label
        # one main connected region holding almost all of the mask
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        assert stats[1:, cv2.CC_STAT_AREA].max() > 0.9 * inside.sum(), label


def test_mask_follows_the_pose_and_ignores_blur_and_hair() -> None:
    kw = {"lesion_seed": 3, "size": 96, "return_mask": True}
    _, a = render_lesion("NV", view_seed=1, **kw)
    _, b = render_lesion("NV", view_seed=2, **kw)
    assert not np.array_equal(a, b)  # another pose moves the outline
    # same lesion, same pose: about the same area (the pose scales it by 0.9-1.1 at most)
    assert 0.75 < (a > 0).sum() / (b > 0).sum() < 1.35
    sharp_img, sharp = render_lesion("NV", view_seed=1, **kw)
    blur_img, blurred = render_lesion("NV", view_seed=1, blur_sigma=4.0, hair=True, **kw)
    assert np.array_equal(sharp, blurred) and not np.array_equal(sharp_img, blur_img)


def test_write_lesion_masks_redraws_the_same_masks(demo, tmp_path: Path) -> None:
    import shutil

    out, _ = demo
    copy = tmp_path / "old"
    shutil.copytree(out, copy)
    masks = copy / "ISIC_2019_Training_GroundTruth_Masks"
    first = sorted(masks.iterdir())[:5]
    originals = {p.name: p.read_bytes() for p in first}
    for p in first:
        p.unlink()
    assert syn.write_lesion_masks(copy) == 5
    assert {p.name: p.read_bytes() for p in first} == originals  # byte-identical
    assert syn.write_lesion_masks(copy) == 0  # nothing missing
    assert syn.write_lesion_masks(copy, overwrite=True) == 120
    with pytest.raises(ConfigError, match="holds no demo dataset"):
        syn.write_lesion_masks(tmp_path / "nothing")
