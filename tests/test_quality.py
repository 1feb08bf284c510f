"""Tests of skin_core.analysis.quality and ``skin-core quality``."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skin_core.analysis import quality as Q
from skin_core.analysis.quality import (
    BLURRY_THRESHOLD,
    MEASURES,
    QUALITY_COLUMNS,
    compute_quality,
    measure_images,
    measure_quality,
    percentile_of,
    quality_reference,
    read_grey,
)
from skin_core.analysis.quality_difficulty import cliffs_delta, compare_quality
from skin_core.analysis.records import TestResult
from skin_core.cli import main
from skin_core.data.images import read_image
from skin_core.errors import ConfigError, DataError, SkinCoreError

# ---------------------------------------------------------------------------------- helpers


def texture(h: int = 160, w: int = 200, seed: int = 0) -> np.ndarray:
    """A sharp, lesion-like RGB test image: smooth blob + fine random texture + edges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-(((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2))
    fine = rng.normal(0, 1, (h, w))
    grey = 170 - 90 * blob + 18 * fine + 25 * ((xx // 9 + yy // 13) % 2)
    rgb = np.stack([grey * 1.0, grey * 0.8, grey * 0.7], axis=2)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    return rgb if sigma == 0 else cv2.GaussianBlur(rgb, (0, 0), sigma)


def save_jpeg(path: Path, rgb: np.ndarray, quality: int = 90, **kw) -> Path:
    Image.fromarray(rgb).save(path, "JPEG", quality=quality, **kw)
    return path


def study_fft_centre_ratio(grey: np.ndarray, radius: int = 30) -> float:
    """The study's (mistaken) measure: energy INSIDE a radius of the shifted spectrum centre."""
    f = np.fft.fftshift(np.fft.fft2(grey.astype(float)))
    mag = np.abs(f) ** 2
    h, w = grey.shape
    yy, xx = np.ogrid[:h, :w]
    inside = (yy - h // 2) ** 2 + (xx - w // 2) ** 2 <= radius**2
    return float(mag[inside].sum() / mag.sum())


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) + P(tie) / 2 by brute force (independent of sklearn)."""
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


# ---------------------------------------------------------------------------- one image


def test_measure_quality_returns_every_measure_and_flags_flat_image():
    q = measure_quality(np.full((64, 80, 3), 128, np.uint8))
    assert set(q) == {*MEASURES, "blur_score", "is_blurry"}
    assert q["width"] == 80 and q["height"] == 64
    assert q["laplacian_var_full"] == 0.0 and q["laplacian_var"] == 0.0
    assert q["brightness"] == pytest.approx(128 / 255)
    assert q["contrast"] == 0.0 and q["entropy"] == 0.0
    assert q["blur_score"] < 1e-6 and q["is_blurry"] == 1.0


def test_laplacian_var_full_is_the_studys_measure():
    rgb = texture(300, 420)  # larger than long_side: the normalised measure differs
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    expected = cv2.Laplacian(grey, cv2.CV_64F).var()
    q = measure_quality(rgb)
    assert q["laplacian_var_full"] == pytest.approx(expected, rel=1e-9)
    small = cv2.resize(grey, (256, 183), interpolation=cv2.INTER_AREA)
    assert q["laplacian_var"] == pytest.approx(cv2.Laplacian(small, cv2.CV_64F).var(), rel=1e-9)
    assert q["laplacian_var"] != pytest.approx(q["laplacian_var_full"], rel=0.05)


def test_small_image_is_not_resized():
    q = measure_quality(texture(150, 200))
    assert q["laplacian_var"] == q["laplacian_var_full"]


def test_wavelet_detail_energy_matches_pywavelets():
    pywt = pytest.importorskip("pywt")
    rgb = texture(160, 200)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(float)
    _, (ch, cv, cd) = pywt.dwt2(grey, "haar", mode="periodization")
    expected = (np.sum(ch**2) + np.sum(cv**2) + np.sum(cd**2)) / grey.size
    assert measure_quality(rgb)["wavelet_detail_energy"] == pytest.approx(expected, rel=1e-4)
    # level 2 / level 3 ratio from the multilevel transform
    coeffs = pywt.wavedec2(grey, "haar", mode="periodization", level=3)
    e3, e2 = (sum(float(np.sum(c**2)) for c in coeffs[k]) for k in (1, 2))
    assert measure_quality(rgb)["wavelet_ratio"] == pytest.approx(e2 / e3, rel=1e-3)


def test_fft_hf_ratio_matches_full_numpy_spectrum():
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (64, 64)).astype(np.uint8)
    crop = grey.astype(float) - grey.mean()
    x = crop * np.outer(np.hanning(64), np.hanning(64))
    p = np.abs(np.fft.fft2(x)) ** 2
    fy, fx = np.fft.fftfreq(64)[:, None], np.fft.fftfreq(64)[None, :]
    expected = p[fy**2 + fx**2 > 0.25**2].sum() / p.sum()
    assert Q._fft_hf_ratio(grey) == pytest.approx(expected, rel=1e-4)


def test_fft_hf_ratio_rises_with_sharpness_and_the_studys_centre_measure_does_not():
    rgb = texture()
    sigmas = [4, 2, 1, 0.5, 0]  # increasingly sharp
    ours = [measure_quality(blur(rgb, s))["fft_hf_ratio"] for s in sigmas]
    theirs = [study_fft_centre_ratio(cv2.cvtColor(blur(rgb, s), cv2.COLOR_RGB2GRAY))
              for s in sigmas]
    assert all(b > a for a, b in zip(ours, ours[1:], strict=False)), ours
    assert ours[-1] > 20 * ours[0]
    # the low-frequency share moves the other way: it cannot tell sharp from blurred as a
    # "high-frequency energy"
    assert all(b <= a for a, b in zip(theirs, theirs[1:], strict=False)), theirs


@pytest.mark.parametrize("measure", ["laplacian_var", "wavelet_detail_energy", "wavelet_ratio",
                                     "fft_hf_ratio", "blur_score"])
def test_sharpness_measures_fall_with_blur(measure):
    rgb = texture(seed=1)
    values = [measure_quality(blur(rgb, s))[measure] for s in (0, 1, 2, 4)]
    if measure == "fft_hf_ratio":
        # beyond sigma 2 only the uint8 rounding noise is left above half Nyquist: a floor
        assert values[0] > values[1] > values[2] and values[3] < 1.5 * values[2], values
        assert values[2] < 1e-3
    else:
        assert all(b < a for a, b in zip(values, values[1:], strict=False)), values


def test_blur_score_separates_sharp_from_blurred_and_threshold_is_documented():
    rgb = texture(seed=2)
    sharp, blurred = measure_quality(rgb), measure_quality(blur(rgb, 3))
    assert 0.0 <= blurred["blur_score"] < BLURRY_THRESHOLD < sharp["blur_score"] <= 1.0
    assert sharp["is_blurry"] == 0.0 and blurred["is_blurry"] == 1.0
    z = Q.BLUR_B0 + Q.BLUR_B1 * math.log(sharp["laplacian_var"] + 1e-3) \
        + Q.BLUR_B2 * math.log(sharp["wavelet_ratio"])
    assert sharp["blur_score"] == pytest.approx(1 / (1 + math.exp(-z)))


def test_blur_score_is_robust_to_resolution():
    """The same scene at 4x the pixels scores like the original (normalised long side)."""
    rgb = texture(150, 200, seed=4)
    big = cv2.resize(rgb, (800, 600), interpolation=cv2.INTER_CUBIC)
    big = blur(big, 1.0)  # an upscaled photo is a little soft at full resolution
    s_small, s_big = measure_quality(rgb)["blur_score"], measure_quality(big)["blur_score"]
    assert s_small > BLURRY_THRESHOLD and s_big > BLURRY_THRESHOLD
    # while the study's full-resolution measure drops by an order of magnitude
    full_small = measure_quality(rgb)["laplacian_var_full"]
    assert measure_quality(big)["laplacian_var_full"] < full_small / 10


def test_vignette_detects_dark_corners():
    rgb = np.full((160, 200, 3), 180, np.uint8)
    yy, xx = np.mgrid[0:160, 0:200]
    r = np.hypot(yy - 80, xx - 100)
    dark = rgb.copy()
    dark[r > 105] = 10
    assert measure_quality(rgb)["vignette"] == pytest.approx(0.0)
    assert measure_quality(dark)["vignette"] > 0.5


def test_measure_quality_accepts_grey_and_rejects_bad_arrays():
    rgb = texture()
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    assert measure_quality(grey) == measure_quality(rgb)
    with pytest.raises(SkinCoreError, match="uint8"):
        measure_quality(rgb.astype(np.float32))
    with pytest.raises(SkinCoreError, match="at least 8x8"):
        measure_quality(np.zeros((4, 40, 3), np.uint8))
    with pytest.raises(SkinCoreError, match="RGB"):
        measure_quality(np.zeros((20, 20, 4), np.uint8))
    with pytest.raises(ConfigError, match="long_side"):
        measure_quality(rgb, long_side=4)


# -------------------------------------------------------------------------- decoding files


def test_read_grey_fast_path_matches_read_image(tmp_path):
    rgb = texture()
    path = save_jpeg(tmp_path / "a.jpg", rgb)
    ref = cv2.cvtColor(read_image(path), cv2.COLOR_RGB2GRAY).astype(int)
    assert np.abs(read_grey(path).astype(int) - ref).max() <= 1


def test_read_grey_applies_exif_orientation(tmp_path):
    rgb = texture(120, 200)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = save_jpeg(tmp_path / "rot.jpg", rgb, exif=exif.tobytes())
    upright = read_image(path)
    assert upright.shape[:2] == (200, 120)
    grey = read_grey(path)
    assert grey.shape == (200, 120)
    ref = cv2.cvtColor(upright, cv2.COLOR_RGB2GRAY).astype(int)
    assert np.abs(grey.astype(int) - ref).max() <= 1


def test_read_grey_other_formats_and_modes(tmp_path):
    rgb = texture(64, 64)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", "JPEG", quality=95)
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    for name in ("cmyk.jpg", "p.png"):
        ref = cv2.cvtColor(read_image(tmp_path / name), cv2.COLOR_RGB2GRAY)
        assert np.array_equal(read_grey(tmp_path / name), ref)


def test_read_grey_progressive_and_trailing_bytes(tmp_path):
    rgb = texture(90, 120)
    prog = save_jpeg(tmp_path / "prog.jpg", rgb, progressive=True)
    tail = tmp_path / "tail.jpg"
    tail.write_bytes(save_jpeg(tmp_path / "plain.jpg", rgb).read_bytes() + b"GARBAGE")
    for path in (prog, tail):
        ref = cv2.cvtColor(read_image(path), cv2.COLOR_RGB2GRAY).astype(int)
        assert np.abs(read_grey(path).astype(int) - ref).max() <= 1
    assert Q._jpeg_frame(prog.read_bytes())[:2] == (90, 120)
    assert Q._jpeg_frame(b"\x89PNG\r\n") is None


def test_read_grey_refuses_decompression_bombs_before_decoding(tmp_path):
    path = save_jpeg(tmp_path / "big.jpg", texture(100, 100))
    with pytest.raises(SkinCoreError, match="megapixels"):
        read_grey(path, max_pixels=5000)


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = save_jpeg(tmp_path / "good.jpg", texture())
    data = good.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    Image.fromarray(texture(4, 4)).save(tmp_path / "tiny.png")
    return {n: tmp_path / n for n in ("good.jpg", "truncated.jpg", "empty.jpg", "text.png",
                                      "tiny.png")}


def test_compute_quality_keeps_unreadable_images_as_error_rows(tmp_path):
    files = _bad_files(tmp_path)
    Image.fromarray(texture(seed=5)).save(tmp_path / "good2.png")
    paths = [*files.values(), tmp_path / "good2.png"]
    df = compute_quality(paths, workers=1)
    assert list(df.columns) == list(QUALITY_COLUMNS)
    assert list(df["image_id"]) == [p.stem for p in paths]
    err = dict(zip(df["image_id"], df["error"], strict=True))
    assert err["good"] == "" and err["good2"] == ""
    assert "truncated or corrupt" in err["truncated"]
    assert "empty (0 bytes)" in err["empty"]
    assert "not an image" in err["text"]
    assert "at least 8x8" in err["tiny"]
    bad = df["error"] != ""
    assert df.loc[bad, list(MEASURES) + ["blur_score"]].isna().all().all()
    assert df.loc[bad, "is_blurry"].isna().all()
    assert df.loc[~bad, "blur_score"].between(0, 1).all()
    assert str(df["is_blurry"].dtype) == "boolean"


def test_compute_quality_same_result_in_a_process_pool(tmp_path):
    paths = []
    for k in range(12):
        paths.append(save_jpeg(tmp_path / f"img{k:02d}.jpg", blur(texture(seed=k), k % 3)))
    serial = compute_quality(paths, workers=1)
    pooled = compute_quality(paths, workers=2)
    pd.testing.assert_frame_equal(serial, pooled)
    # measures equal measure_quality on the decoded grey image
    one = measure_quality(read_grey(paths[3]))
    for m in ("laplacian_var_full", "wavelet_ratio", "fft_hf_ratio", "blur_score"):
        assert serial.loc[3, m] == pytest.approx(one[m])


def test_write_csv_is_byte_identical_to_pandas_and_needs_no_pandas(tmp_path):
    """The command line's pandas-free CSV writer = DataFrame.to_csv, error rows included."""
    import subprocess
    import sys

    files = _bad_files(tmp_path)
    paths = [*files.values(), save_jpeg(tmp_path / "sharp.jpg", texture(seed=3))]
    measured = measure_images(paths, workers=1)
    measured.write_csv(tmp_path / "fast.csv")
    measured.to_frame().to_csv(tmp_path / "pandas.csv", index=False)
    assert (tmp_path / "fast.csv").read_text() == (tmp_path / "pandas.csv").read_text()
    back = pd.read_csv(tmp_path / "fast.csv", keep_default_na=False)
    assert back.loc[back["image_id"] == "truncated", "is_blurry"].item() == ""
    pd.testing.assert_frame_equal(compute_quality(paths, workers=1), measured.to_frame())
    # `skin-core quality --images` never imports pandas (a third of its start-up time)
    code = ("import sys; from skin_core.cli import main; "
            f"main(['quality', '--images', {str(tmp_path)!r}, '--out', "
            f"{str(tmp_path / 'cli.csv')!r}, '--workers', '1', '--json']); "
            "print('PANDAS', 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "PANDAS False" in out
    measure_images(tmp_path, workers=1).write_csv(tmp_path / "folder.csv")
    assert (tmp_path / "cli.csv").read_text() == (tmp_path / "folder.csv").read_text()


@pytest.mark.timeout(120)
def test_process_pool_survives_opencv_threads_used_before(tmp_path):
    """Forking after OpenCV ran multi-threaded used to hang the workers."""
    big = np.random.default_rng(0).integers(0, 255, (1500, 1500, 3)).astype(np.uint8)
    before = cv2.getNumThreads()
    cv2.GaussianBlur(big, (0, 0), 3)  # starts OpenCV's thread pool in this process
    paths = [save_jpeg(tmp_path / f"t{k}.jpg", texture(seed=k)) for k in range(4)]
    df = compute_quality(paths, workers=2)
    assert (df["error"] == "").all()
    assert cv2.getNumThreads() == before


def test_compute_quality_inputs_and_bad_input(tmp_path):
    p = save_jpeg(tmp_path / "x.jpg", texture())
    table = pd.DataFrame({"image_id": ["ID1"], "path": [str(p)], "label": ["NV"]})
    assert list(compute_quality(table, workers=1)["image_id"]) == ["ID1"]
    assert list(compute_quality(tmp_path, workers=1)["image_id"]) == ["x"]
    with pytest.raises(DataError, match="no images"):
        compute_quality([], workers=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no image files"):
        compute_quality(tmp_path / "empty", workers=1)
    with pytest.raises(DataError, match="'path' column"):
        compute_quality(pd.DataFrame({"image_id": ["a"]}))
    with pytest.raises(DataError, match="more than once"):
        compute_quality([p, p], workers=1)
    with pytest.raises(ConfigError, match="workers"):
        compute_quality([p], workers=0)


# ----------------------------------------------------------------------- reference / percentile


def test_quality_reference_and_percentile_of():
    df = pd.DataFrame({"image_id": [f"i{k}" for k in range(101)],
                       "blur_score": np.linspace(0, 1, 101), "brightness": 0.5,
                       "error": [""] * 100 + ["broken"]})
    ref = quality_reference(df, measures=["blur_score", "brightness"])
    json.dumps(ref)  # JSON-ready
    assert ref["n_images"] == 100
    entry = ref["measures"]["blur_score"]
    assert entry["n"] == 100 and len(entry["quantiles"]) == 101
    assert percentile_of(entry["quantiles"][25], ref, "blur_score") == pytest.approx(25)
    assert percentile_of(0.5, entry) == pytest.approx(50.5, abs=0.6)
    assert percentile_of(-1, entry) == 0.0 and percentile_of(2, entry) == 100.0
    assert math.isnan(percentile_of(float("nan"), entry))
    # a constant measure: ties count at the middle
    assert percentile_of(0.5, ref, "brightness") == 50.0
    assert percentile_of(0.1, ref, "brightness") == 0.0
    with pytest.raises(ConfigError, match="one of"):
        percentile_of(0.5, ref, "entropy")


# ------------------------------------------------------------------ quality versus difficulty


def brute_cliff(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Cliff's delta and Cliff's (1993) variance from the full pairwise dominance matrix."""
    d = np.sign(x[:, None] - y[None, :])
    m, n = d.shape
    delta = d.mean()
    di, dj = d.mean(axis=1), d.mean(axis=0)
    s2i = ((di - delta) ** 2).sum() / (m - 1)
    s2j = ((dj - delta) ** 2).sum() / (n - 1)
    s2ij = ((d - delta) ** 2).sum() / ((m - 1) * (n - 1))
    return float(delta), float(((n - 1) * s2i + (m - 1) * s2j + s2ij) / (m * n))


def test_cliffs_delta_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, 23).astype(float)
    y = rng.integers(1, 7, 31).astype(float)
    res = cliffs_delta(x, y)
    delta, var = brute_cliff(x, y)
    assert res.effect == pytest.approx(delta, abs=1e-12)
    assert res.extra["se"] ** 2 == pytest.approx(var, rel=1e-9)
    assert res.ci[0] < res.effect < res.ci[1]
    assert -1 <= res.ci[0] and res.ci[1] <= 1
    assert cliffs_delta(np.array([3.0, 4, 5]), np.array([0.0, 1, 2])).effect == 1.0


def _tables(n: int = 60, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ids = [f"ISIC_{k:07d}" for k in range(n)]
    group = np.where(np.arange(n) % 3 == 0, "difficult", "control")
    group[np.arange(n) % 10 == 1] = "other"
    label = np.array(["MEL", "NV"])[np.arange(n) % 2]
    blur_score = np.where(group == "difficult", rng.uniform(0.2, 0.9, n), rng.uniform(0.5, 1, n))
    quality = pd.DataFrame({
        "image_id": ids, "blur_score": blur_score,
        "brightness": rng.uniform(0.3, 0.7, n), "contrast": rng.uniform(0.05, 0.2, n),
        "entropy": rng.uniform(5, 7, n), "error": [""] * n,
    })
    difficulty = pd.DataFrame({"image_id": ids, "label": label, "group": group})
    return quality, difficulty


def test_compare_quality_pins_against_independent_computations():
    from scipy.stats import mannwhitneyu

    quality, difficulty = _tables()
    quality.loc[5, "error"] = "broken"
    quality.loc[5, "blur_score"] = np.nan
    res = compare_quality(quality, difficulty, measures=["blur_score", "brightness"], n_boot=500)
    json.loads(json.dumps(res, default=lambda o: o.to_dict()))
    merged = difficulty.merge(quality[quality["error"] == ""], on="image_id")
    x = merged.loc[merged["group"] == "difficult", "blur_score"].to_numpy()
    y = merged.loc[merged["group"] == "control", "blur_score"].to_numpy()
    assert res["n"]["difficult"] == len(x) and res["n"]["control"] == len(y)
    assert res["n"]["quality_errors"] == 1 and res["n"]["not_measured"] == 1
    r = res["measures"]["blur_score"]
    ref = mannwhitneyu(x, y, alternative="two-sided")
    assert isinstance(r["mann_whitney"], TestResult)
    assert r["mann_whitney"].statistic == pytest.approx(ref.statistic)
    assert r["mann_whitney"].p_value == pytest.approx(ref.pvalue)
    assert r["mann_whitney"].effect == pytest.approx(auroc(x, y))
    assert r["cliffs_delta"].effect == pytest.approx(brute_cliff(x, y)[0])
    assert r["cliffs_delta"].effect < 0  # difficult images are blurrier (lower blur_score)
    md = r["median_difference"]
    assert md.effect == pytest.approx(np.median(x) - np.median(y))
    assert md.ci[0] <= md.effect <= md.ci[1] and md.ci[1] < 0
    again = compare_quality(quality, difficulty, measures=["blur_score"], n_boot=500)
    assert again["measures"]["blur_score"]["median_difference"].ci == md.ci
    p_holm = [res["measures"][m]["mann_whitney"].extra["p_holm"] for m in res["measures"]]
    assert all(0 <= p <= 1 for p in p_holm)


def test_mann_whitney_hand_case():
    ids = list("abcdefg")
    quality = pd.DataFrame({"image_id": ids, "blur_score": [1.0, 2, 3, 4, 5, 6, 7]})
    difficulty = pd.DataFrame({"image_id": ids, "label": ["NV"] * 7,
                               "group": ["difficult"] * 3 + ["control"] * 4})
    res = compare_quality(quality, difficulty, measures=["blur_score"], n_boot=200,
                          model_measures=["blur_score"])
    mw = res["measures"]["blur_score"]["mann_whitney"]
    # difficult {1,2,3} below every control {4..7}: U = 0, exact two-sided p = 2 / C(7,3)
    assert mw.statistic == 0.0
    assert mw.p_value == pytest.approx(2 / 35)
    assert res["measures"]["blur_score"]["cliffs_delta"].effect == -1.0


def test_logistic_model_matches_statsmodels_formula_fit():
    import statsmodels.formula.api as smf

    quality, difficulty = _tables(n=240, seed=1)
    res = compare_quality(quality, difficulty, measures=["blur_score"], n_boot=200)
    lg = res["logistic"]
    assert lg["error"] is None and lg["converged"]
    d = difficulty[difficulty["group"] != "other"].merge(quality, on="image_id")
    d["y"] = (d["group"] == "difficult").astype(float)
    for m in ("blur_score", "brightness", "contrast", "entropy"):
        d[m] = (d[m] - d[m].mean()) / d[m].std(ddof=0)
    fit = smf.logit("y ~ blur_score + brightness + contrast + entropy + C(label)", d).fit(disp=0)
    ci = np.exp(fit.conf_int().loc["blur_score"].to_numpy())
    orr = lg["odds_ratios"]["blur_score"]
    assert orr.effect == pytest.approx(np.exp(fit.params["blur_score"]), rel=1e-6)
    assert orr.ci == pytest.approx(tuple(ci), rel=1e-6)
    assert orr.p_value == pytest.approx(fit.pvalues["blur_score"], rel=1e-6)
    assert orr.effect < 1  # sharper -> less likely difficult
    assert lg["n"] == {"difficult": int(d["y"].sum()), "control": int((1 - d["y"]).sum())}


def test_logistic_drops_single_group_classes_and_constant_measures():
    quality, difficulty = _tables(n=120, seed=2)
    difficulty.loc[difficulty["label"] == "MEL", "group"] = "control"
    difficulty.loc[0, "label"] = "DF"  # a class whose one image is difficult
    difficulty.loc[0, "group"] = "difficult"
    quality["contrast"] = 0.1
    lg = compare_quality(quality, difficulty, n_boot=200)["logistic"]
    assert lg["classes_dropped"] == ["DF", "MEL"]
    assert lg["measures_dropped"] == ["contrast"]
    assert set(lg["odds_ratios"]) == {"blur_score", "brightness", "entropy"}


def test_compare_quality_bad_input():
    quality, difficulty = _tables()
    with pytest.raises(DataError, match="'group' column"):
        compare_quality(quality, difficulty.drop(columns="group"))
    with pytest.raises(DataError, match="at least 2 measured difficult"):
        compare_quality(quality, difficulty.assign(image_id=[f"x{k}" for k in range(60)]))
    with pytest.raises(DataError, match="more than once in the difficulty table"):
        compare_quality(quality, pd.concat([difficulty, difficulty.iloc[:1]]))
    with pytest.raises(ConfigError, match="not columns"):
        compare_quality(quality, difficulty, measures=["sharpness"])


def test_compare_quality_reads_quality_csv_round_trip(tmp_path):
    quality, difficulty = _tables()
    quality.to_csv(tmp_path / "q.csv", index=False)  # empty error -> NaN when read back
    back = pd.read_csv(tmp_path / "q.csv", dtype={"image_id": str})
    res = compare_quality(back, difficulty, measures=["blur_score"], n_boot=200)
    assert res["n"]["quality_errors"] == 0


def test_cliffs_delta_pins_effsize_consistent_variance_reference():
    # R effsize::cliff.delta(treatment, control, use.unbiased=FALSE): its source documents the
    # three variance terms of this example as 0.2669753 (rows), 0.447 (columns), 1.0055556
    treatment = np.array([10, 10, 20, 20, 20, 30, 30, 30, 40, 50], dtype=float)
    control = np.array([10, 20, 30, 40, 40, 50], dtype=float)
    res = cliffs_delta(treatment, control)
    assert res.effect == pytest.approx(-0.25)
    m, n = 10, 6
    var = ((n - 1) * 0.26697530864 + (m - 1) * 0.447 + 1.00555555556) / (m * n)
    assert res.extra["se"] ** 2 == pytest.approx(var, rel=1e-9)
    z, d = 1.959963984540054, -0.25  # Feng & Cliff (2004) interval with a normal quantile
    root = z * math.sqrt(var) * math.sqrt((1 - d * d) ** 2 + z * z * var)
    want = ((d - d**3 - root) / (1 - d * d + z * z * var),
            (d - d**3 + root) / (1 - d * d + z * z * var))
    assert res.ci == pytest.approx(want, rel=1e-9)
    assert "consistent" in res.method


# --------------------------------------------------------------- lesion-clustered comparison


def _obuchowski_brute(x, y, cx, cy):
    """Obuchowski (1997) variance of the AUC from the full psi matrix, cluster by cluster."""
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    m, n = psi.shape
    theta = psi.mean()
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    clusters = sorted(set(cx) | set(cy))
    a = np.array([v10[cx == g].sum() - (cx == g).sum() * theta for g in clusters])
    b = np.array([v01[cy == g].sum() - (cy == g).sum() * theta for g in clusters])
    i10, i01, i = len(set(cx)), len(set(cy)), len(clusters)
    s10 = i10 / ((i10 - 1) * m) * (a**2).sum()
    s01 = i01 / ((i01 - 1) * n) * (b**2).sum()
    s11 = i / (i - 1) * (a * b).sum()
    return theta, s10 / m + s01 / n + 2 * s11 / (m * n)


def test_clustered_auc_test_matches_brute_force_and_reduces_to_delong():
    from skin_core.analysis.quality_difficulty import clustered_auc_test

    rng = np.random.default_rng(3)
    x = np.round(rng.normal(0.4, 1, 60), 1)  # ties on purpose
    y = np.round(rng.normal(0.0, 1, 90), 1)
    cx, cy = rng.integers(0, 40, 60), rng.integers(0, 40, 90)  # lesions with both groups
    res = clustered_auc_test(x, y, cx, cy)
    theta, var = _obuchowski_brute(x, y, cx, cy)
    assert res.effect == pytest.approx(theta, rel=1e-12)
    assert res.extra["se"] ** 2 == pytest.approx(var, rel=1e-10)
    assert res.statistic == pytest.approx((theta - 0.5) / math.sqrt(var))
    assert res.n["clusters"] == len(set(cx) | set(cy))
    # one image per cluster: DeLong's variance (sample variances of the placements)
    single = clustered_auc_test(x, y, np.arange(60), 60 + np.arange(90))
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    delong = psi.mean(axis=1).var(ddof=1) / 60 + psi.mean(axis=0).var(ddof=1) / 90
    assert single.extra["se"] ** 2 == pytest.approx(delong, rel=1e-10)


def test_cluster_bootstrap_equals_literal_resampling_of_lesions():
    from skin_core.analysis.quality_difficulty import _cluster_bootstrap

    rng = np.random.default_rng(4)
    x, y = rng.normal(0.3, 1, 50), rng.normal(0, 1, 70)
    cx, cy = rng.integers(0, 25, 50), rng.integers(0, 25, 70)
    got = _cluster_bootstrap(x, y, cx, cy, 25, 400, 9, 0.9)
    draw_rng = np.random.default_rng(9)
    draws = draw_rng.integers(0, 25, (400, 25))  # the same draws, one resample per row
    meds, deltas = [], []
    for d in draws:
        mult = np.bincount(d, minlength=25)
        xe, ye = np.repeat(x, mult[cx]), np.repeat(y, mult[cy])
        meds.append(np.median(xe) - np.median(ye))
        deltas.append(np.sign(xe[:, None] - ye[None, :]).mean())
    assert got["median_ci"] == pytest.approx(tuple(np.quantile(meds, [0.05, 0.95])), abs=1e-12)
    assert got["delta_ci"] == pytest.approx(tuple(np.quantile(deltas, [0.05, 0.95])),
                                            abs=1e-12)
    assert got["n_failed"] == 0


def _lesion_tables(n_lesions: int = 120, seed: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    k = rng.integers(1, 5, n_lesions)
    lesion = np.repeat(np.arange(n_lesions), k)
    hard = rng.random(n_lesions) < 0.35
    q = rng.normal(size=n_lesions) - 0.8 * hard
    n = lesion.size
    group = np.where(hard[lesion], "difficult", "control").astype(object)
    group[rng.random(n) < 0.1] = "other"
    ids = [f"ISIC_{i:07d}" for i in range(n)]
    quality = pd.DataFrame({"image_id": ids, "blur_score": q[lesion] + 0.3 * rng.normal(size=n),
                            "brightness": rng.uniform(0.3, 0.7, n)})
    lesion_ids = np.array([f"HAM_{v:05d}" for v in lesion], dtype=object)
    lesion_ids[rng.random(n) < 0.05] = None  # unknown: a cluster of its own
    difficulty = pd.DataFrame({"image_id": ids, "label": np.array(["MEL", "NV"])[lesion % 2],
                               "group": group, "lesion_id": lesion_ids})
    return quality, difficulty


def test_compare_quality_uses_lesion_clusters_when_the_table_has_lesion_ids():
    import statsmodels.api as sm

    from skin_core.analysis.clusters import cluster_codes

    quality, difficulty = _lesion_tables()
    res = compare_quality(quality, difficulty, measures=["blur_score"],
                          model_measures=["blur_score", "brightness"], n_boot=300)
    json.loads(json.dumps(res, default=lambda o: o.to_dict()))
    merged = difficulty[difficulty["group"] != "other"].merge(quality, on="image_id")
    groups = cluster_codes(merged["lesion_id"].to_numpy())
    assert res["clustering"]["unit"] == "lesion"
    assert res["clustering"]["n_clusters"] == int(groups.max()) + 1
    r = res["measures"]["blur_score"]
    x = merged.loc[merged["group"] == "difficult", "blur_score"].to_numpy()
    y = merged.loc[merged["group"] == "control", "blur_score"].to_numpy()
    mw = r["mann_whitney"]
    assert "Obuchowski" in mw.method and mw.p_value < 0.05
    assert mw.effect == pytest.approx(r["mann_whitney_image_level"].effect)
    assert mw.p_value > r["mann_whitney_image_level"].p_value  # clustering widens the null
    assert 0 <= mw.extra["p_holm"] <= 1
    cd = r["cliffs_delta"]
    assert cd.effect == pytest.approx(brute_cliff(x, y)[0]) and cd.effect < 0
    assert "cluster bootstrap" in cd.method and cd.ci[0] < cd.effect < cd.ci[1]
    lo_img, hi_img = cd.extra["ci_image_level"]
    assert cd.ci[1] - cd.ci[0] > hi_img - lo_img  # wider than the independent-image CI
    md = r["median_difference"]
    assert md.effect == pytest.approx(np.median(x) - np.median(y))
    assert "cluster bootstrap" in md.method and md.ci[0] <= md.effect <= md.ci[1]
    # the logistic model: statsmodels GLM with the same design and lesion-clustered errors
    lg = res["logistic"]
    assert lg["error"] is None and lg["n"]["lesions"] == res["clustering"]["n_clusters"]
    d = merged.assign(y=(merged["group"] == "difficult").astype(float))
    z = (d[["blur_score", "brightness"]] - d[["blur_score", "brightness"]].mean()) / d[
        ["blur_score", "brightness"]].std(ddof=0)
    design = sm.add_constant(pd.concat(
        [z, pd.get_dummies(d["label"], prefix="label", drop_first=True, dtype=float)], axis=1))
    fit = sm.GLM(d["y"], design, family=sm.families.Binomial()).fit(
        cov_type="cluster", cov_kwds={"groups": groups})
    orr = lg["odds_ratios"]["blur_score"]
    assert orr.effect == pytest.approx(np.exp(fit.params["blur_score"]), rel=1e-6)
    assert orr.p_value == pytest.approx(fit.pvalues["blur_score"], rel=1e-5)
    assert orr.ci == pytest.approx(tuple(np.exp(fit.conf_int().loc["blur_score"])), rel=1e-5)
    assert "clustered by lesion" in orr.method


def test_compare_quality_clusters_option():
    quality, difficulty = _lesion_tables()
    kw = {"measures": ["blur_score"], "model_measures": ["blur_score"], "n_boot": 200}
    image = compare_quality(quality, difficulty, clusters="image", **kw)
    plain = compare_quality(quality, difficulty.drop(columns="lesion_id"), **kw)
    assert image["clustering"] == plain["clustering"] == {"unit": "image"}
    assert image["measures"]["blur_score"]["cliffs_delta"].ci == \
        plain["measures"]["blur_score"]["cliffs_delta"].ci
    assert "mann_whitney_image_level" not in image["measures"]["blur_score"]
    with pytest.raises(DataError, match="needs a 'lesion_id' column"):
        compare_quality(quality, difficulty.drop(columns="lesion_id"), clusters="lesion", **kw)
    with pytest.raises(DataError, match="needs a 'lesion_id' column"):
        compare_quality(quality, difficulty.assign(lesion_id=None), clusters="lesion", **kw)
    with pytest.raises(ConfigError, match="must be one of"):
        compare_quality(quality, difficulty, clusters="patient", **kw)


def test_holm_adjustment_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    from skin_core.analysis.quality_difficulty import _holm

    p = np.random.default_rng(0).random(9) ** 3
    np.testing.assert_allclose(_holm(p), multipletests(p, method="holm")[1], rtol=1e-12)
    assert np.isnan(_holm(np.array([0.01, np.nan, 0.04]))[1])


# ---------------------------------------------------------------------------------- CLI


def test_cli_quality_images_folder(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    files = _bad_files(tmp_path / "imgs")
    out = tmp_path / "quality.csv"
    ref = tmp_path / "ref.json"
    code = main(["quality", "--images", str(tmp_path / "imgs"), "--out", str(out),
                 "--workers", "1", "--reference", str(ref), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {"n_images": len(files), "n_blurry": 0, "n_errors": 4, "out": str(out),
                      "reference": str(ref)}
    df = pd.read_csv(out)
    assert list(df.columns) == list(QUALITY_COLUMNS) and len(df) == len(files)
    assert "blur_score" in json.loads(ref.read_text())["measures"]


def test_cli_quality_empty_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "none").mkdir()
    code = main(["quality", "--images", str(tmp_path / "none"), "--out",
                 str(tmp_path / "q.csv")])
    assert code == 2
    assert "holds no image files" in capsys.readouterr().err
    assert not (tmp_path / "q.csv").exists()


def test_cli_quality_dataset_spec(tmp_path, capsys):
    pytest.importorskip("skin_core.data.tables")
    for cls in ("MEL", "NV"):
        (tmp_path / "ds" / cls).mkdir(parents=True)
        for k in range(2):
            save_jpeg(tmp_path / "ds" / cls / f"{cls}_{k}.jpg", texture(seed=k))
    out = tmp_path / "q.csv"
    code = main(["quality", "--dataset", f"folder:{tmp_path / 'ds'}", "--out", str(out),
                 "--workers", "1", "--json"])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["n_images"] == 4
    assert sorted(pd.read_csv(out)["image_id"]) == ["MEL_0", "MEL_1", "NV_0", "NV_1"]


# ----------------------------------------------------------------------- blur ground truth


def _jpeg_round_trip(rgb: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=75)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


@pytest.mark.realdata
def test_blur_score_detects_gaussian_blur_on_real_ham10000(ham10000_dir):
    """200 real images (even ISIC ids; calibration used odd ids), seeded; AUROC vs originals."""
    files = sorted((ham10000_dir / "images").glob("ISIC_*.jpg"))
    files = [p for p in files if int(re.sub(r"\D", "", p.stem)) % 2 == 0]
    rng = np.random.default_rng(0)
    pick = [files[i] for i in rng.choice(len(files), 200, replace=False)]
    scores: dict[float, list[float]] = {0.0: [], 1.0: [], 2.0: [], 4.0: []}
    jpeg_scores: dict[float, list[float]] = {0.0: [], 2.0: []}
    for p in pick:
        rgb = read_image(p)
        for s in scores:
            scores[s].append(measure_quality(blur(rgb, s))["blur_score"])
        for s in jpeg_scores:
            jpeg_scores[s].append(measure_quality(_jpeg_round_trip(blur(rgb, s)))["blur_score"])
    aucs = {s: auroc(np.array(scores[0.0]), np.array(scores[s])) for s in (1.0, 2.0, 4.0)}
    assert aucs[2.0] >= 0.95 and aucs[4.0] >= 0.95, aucs
    assert aucs[1.0] >= 0.85, aucs
    assert auroc(np.array(jpeg_scores[0.0]), np.array(jpeg_scores[2.0])) >= 0.95
    # few originals are called blurry, most sigma >= 2 copies are
    assert np.mean(np.array(scores[0.0]) < BLURRY_THRESHOLD) <= 0.05
    assert np.mean(np.array(scores[2.0]) < BLURRY_THRESHOLD) >= 0.9


@pytest.mark.slow
def test_blur_score_detects_blur_in_demo_data(tmp_path):
    synthetic = pytest.importorskip("skin_core.data.synthetic")
    if not hasattr(synthetic, "generate_demo_dataset"):
        pytest.skip("skin_core.data.synthetic.generate_demo_dataset is not available yet")
    synthetic.generate_demo_dataset(tmp_path, n=60, seed=0, size=256, workers=1,
                                    blur_fraction=0.5)
    truth = pd.read_csv(tmp_path / "generation_truth.csv", dtype={"image_id": str})
    q = compute_quality(tmp_path / "ISIC_2019_Training_Input", workers=1)
    m = truth.merge(q, on="image_id", validate="one_to_one")
    assert (m["error"] == "").all()
    orig = m.loc[~m["is_blurred"].astype(bool), "blur_score"].to_numpy()
    strong = m.loc[m["blur_sigma"] >= 2, "blur_score"].to_numpy()
    assert len(orig) >= 10 and len(strong) >= 5
    assert auroc(orig, strong) >= 0.95
    # is_blurry: the strongly blurred images are flagged, originals are not
    assert m.loc[m["blur_sigma"] >= 2, "is_blurry"].astype(bool).mean() >= 0.8
    assert m.loc[~m["is_blurred"].astype(bool), "is_blurry"].astype(bool).mean() <= 0.05
