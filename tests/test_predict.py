"""Predictor on a tiny trained run: golden output, metadata, bad input, conformal, CLI."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skin_core.errors import DataError, ImageError

ARCHS = ("test_resnet", "test_efficientnet")


def build_trained(root: Path) -> dict[str, Path]:
    """A 2-arch x 2-fold run on a 120-image demo (48 px images, 32 px input), meta-classifiers
    with and without metadata, and a bundle. Cached under ``root`` (built once per session)."""
    from skin_core.analysis.quality import compute_quality
    from skin_core.data.synthetic import generate_demo_dataset
    from skin_core.data.tables import load_dataset
    from skin_core.meta import evaluate_meta, save_predictor
    from skin_core.models.bundle import build_bundle
    from skin_core.training import TrainConfig, train_run

    paths = {"demo": root / "demo", "run": root / "run", "meta": root / "meta",
             "meta_nometa": root / "meta_nometa", "bundle": root / "bundle",
             "heldout": root / "heldout"}
    if (paths["bundle"] / "bundle.json").is_file():
        return paths
    generate_demo_dataset(paths["demo"], n=120, seed=0, size=48, workers=1)
    ds = load_dataset(f"isic2019:{paths['demo']}")
    cfg = TrainConfig(archs=ARCHS, folds=2, epochs=2, img_size=32, batch_size=16, lr=3e-3,
                      threads=1, cache_dir=str(root / "cache"), cache_workers=1, patience=0)
    train_run(ds, out=paths["run"], config=cfg)
    oof = pd.read_csv(paths["run"] / "oof.csv", dtype={"image_id": str})
    md = ds.table.copy()
    # every image its own lesion when unknown (string ids, as the meta package expects)
    md["lesion_id"] = md["lesion_id"].astype(object).where(md["lesion_id"].notna(),
                                                           md["image_id"])
    grid = {"num_leaves": [7], "learning_rate": [0.1]}
    r = evaluate_meta(oof, md, classes=ds.classes, n_resamples=0, param_grid=grid)
    save_predictor(r.predictor, paths["meta"])
    r2 = evaluate_meta(oof, None, classes=ds.classes, n_resamples=0, param_grid=grid)
    save_predictor(r2.predictor, paths["meta_nometa"])
    quality = compute_quality(ds.table, workers=1)
    build_bundle(paths["run"], out=paths["bundle"], meta=paths["meta"],
                 meta_without_metadata=paths["meta_nometa"], quality=quality)
    generate_demo_dataset(paths["heldout"], n=120, seed=1, size=48, workers=1)
    return paths


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_trained(tmp_path_factory.getbasetemp() / "predict_trained")


@pytest.fixture(scope="module")
def predictor(trained):
    from skin_core.predict import Predictor

    return Predictor(trained["bundle"], device="cpu")


def demo_images(trained, n: int | None = None, which: str = "demo") -> list[str]:
    files = sorted(str(p) for p in (trained[which] / "ISIC_2019_Training_Input").glob("*.jpg"))
    return files[:n] if n else files


# --------------------------------------------------------------------------------------------
# golden output


def test_member_probabilities_equal_an_independent_timm_path(trained, predictor) -> None:
    """Per-architecture probabilities = mean over folds of plain timm + training preprocessing."""
    import timm
    import torch
    from safetensors.torch import load_file

    from skin_core.data.cache import load_resized
    from skin_core.training.augment import to_float

    images = demo_images(trained, 3)
    results = [predictor.predict(p) for p in images]
    for arch in ARCHS:
        per_fold = []
        for side in sorted((trained["run"] / "members" / arch).glob("fold?.json")):
            doc = json.loads(side.read_text())
            net = timm.create_model(arch, num_classes=len(doc["classes"]))
            net.load_state_dict(load_file(str(side.with_suffix(".safetensors"))))
            net.eval()
            pre = doc["preprocessing"]
            x = torch.from_numpy(np.stack([load_resized(p, pre["input_size"]) for p in images]))
            with torch.no_grad():
                per_fold.append(torch.softmax(net(to_float(x, pre["mean"], pre["std"])), 1)
                                .numpy())
        expected = np.mean(per_fold, axis=0)
        got = np.array([[r.members[arch][c] for c in predictor.classes] for r in results])
        np.testing.assert_allclose(got, expected, atol=1e-5)
    ens = np.array([[r.probs[c] for c in predictor.classes] for r in results])
    members = np.array([[[r.members[a][c] for c in predictor.classes] for r in results]
                        for a in ARCHS])
    np.testing.assert_allclose(ens, members.mean(axis=0), atol=1e-12)


def test_fold_models_reproduce_the_runs_oof_probabilities(trained, predictor) -> None:
    """A validation image scored by its own fold model gives exactly the training OOF row."""
    oof = pd.read_csv(trained["run"] / "oof.csv", dtype={"image_id": str})
    cols = [f"prob_{c}" for c in predictor.classes]
    images = demo_images(trained, 6)
    folds = predictor.fold_probabilities(images)
    ids = [Path(p).stem for p in images]
    for arch in ARCHS:
        sub = oof[oof["model"] == arch].set_index("image_id").loc[ids]
        for i, (fold, row) in enumerate(zip(sub["fold"], sub[cols].to_numpy(), strict=True)):
            np.testing.assert_allclose(folds[(arch, int(fold))][i], row, atol=1e-5)


def test_meta_probabilities_equal_the_meta_package_on_the_same_inputs(trained, predictor):
    from skin_core.meta import load_predictor, wide_from_probs

    img = demo_images(trained, 1)[0]
    r = predictor.predict(img, age=60, sex="female", site="head/neck")
    meta = load_predictor(trained["meta"])
    probs = {m: np.array([[r.members[m][c] for c in predictor.classes]]) for m in ARCHS}
    md = pd.DataFrame({"image_id": ["x"], "age_approx": [60.0], "sex": ["female"],
                       "anatom_site_general": ["head/neck"]})
    out = meta.predict(wide_from_probs(["x"], probs, predictor.classes), md)
    expected = out[[f"prob_{c}" for c in predictor.classes]].to_numpy()[0]
    np.testing.assert_allclose([r.meta_probs[c] for c in predictor.classes], expected,
                               atol=1e-9)
    assert r.meta_source == "with_metadata"
    assert r.label == predictor.classes[int(np.argmax(expected))]
    assert tuple(out["pred_set"].iloc[0].split("|")) == r.prediction_set
    assert r.referral["risk"] == pytest.approx(float(out["referral_prob"].iloc[0]))


def test_batch_meta_step_equals_the_meta_packages_dataframe_path(trained, predictor):
    """The predictor's NumPy meta step gives the DataFrame path's numbers for every kind of
    metadata (valid, partial, missing, invalid) in one batch."""
    from skin_core.meta import load_predictor, wide_from_probs

    metas = [(60, "female", "head/neck"), None, (30, "M", None), (200, "x", "elbow pit"),
             (45, None, "back"), ("abc", "F", ""), (80, "female", "palms/soles"),
             (None, "male", None)]
    results = predictor.predict_batch(demo_images(trained, len(metas)), metadata=metas)
    packages = {"with_metadata": load_predictor(trained["meta"]),
                "without_metadata": load_predictor(trained["meta_nometa"])}
    assert [r.meta_source for r in results].count("without_metadata") == 2  # rows 1 and 3
    for r in results:
        probs = {m: np.array([[r.members[m][c] for c in predictor.classes]]) for m in ARCHS}
        md = pd.DataFrame({"image_id": ["x"], **{k: [v] for k, v in r.metadata.items()}})
        out = packages[r.meta_source].predict(wide_from_probs(["x"], probs, predictor.classes),
                                              md)
        np.testing.assert_allclose([r.meta_probs[c] for c in predictor.classes],
                                   out[[f"prob_{c}" for c in predictor.classes]].to_numpy()[0],
                                   rtol=0, atol=1e-12)
        assert r.prediction_set == tuple(out["pred_set"].iloc[0].split("|"))
        assert r.referral["risk"] == pytest.approx(float(out["referral_prob"].iloc[0]),
                                                   abs=1e-12)
        assert ("high_risk" in r.referral["reasons"]) == bool(out["refer"].iloc[0])


def test_result_record_json_keys_and_ranges(trained, predictor) -> None:
    r = predictor.predict(demo_images(trained, 1)[0], age=40, sex="male")
    d = json.loads(json.dumps(r.to_dict()))
    assert {"label", "probs", "members", "meta_probs", "prediction_set", "quality",
            "referral"} <= set(d)
    assert {"blur_score", "is_blurry", "blur_percentile", "warning"} <= set(d["quality"])
    assert {"risk", "refer", "reasons"} <= set(d["referral"])
    assert set(d["members"]) == set(ARCHS)
    assert sum(d["probs"].values()) == pytest.approx(1.0, abs=1e-6)
    assert sum(d["meta_probs"].values()) == pytest.approx(1.0, abs=1e-6)
    assert d["label"] in d["prediction_set"]
    assert 0 <= d["quality"]["blur_percentile"] <= 100
    assert isinstance(d["referral"]["refer"], bool)
    assert d["referral"]["refer"] == bool(d["referral"]["reasons"])


def test_without_metadata_uses_the_model_fitted_without_it(trained, predictor) -> None:
    img = demo_images(trained, 1)[0]
    r = predictor.predict(img)
    assert r.meta_source == "without_metadata"
    assert r.metadata == {"age_approx": None, "sex": None, "anatom_site_general": None}


def test_tta_averages_flips(trained, predictor) -> None:
    img = demo_images(trained, 1)[0]
    plain = predictor.predict(img)
    tta = predictor.predict(img, tta=True)
    assert sum(tta.probs.values()) == pytest.approx(1.0)
    assert not np.allclose(list(plain.probs.values()), list(tta.probs.values()), atol=1e-7)


def test_tta_follows_the_members_validation_by_default(trained, predictor, tmp_path) -> None:
    """A bundle whose members' out-of-fold predictions used TTA is served with TTA."""
    import shutil

    from skin_core.models.bundle import edit_bundle
    from skin_core.predict import Predictor

    assert predictor.tta is False  # trained without TTA: served without
    copy = tmp_path / "bundle"
    shutil.copytree(trained["bundle"], copy)
    with edit_bundle(copy) as tmp:
        doc = json.loads((tmp / "bundle.json").read_text())
        for m in doc["members"]:
            m["preprocessing"]["tta"] = True
        (tmp / "bundle.json").write_text(json.dumps(doc))
    served = Predictor(copy, device="cpu")
    assert served.tta is True
    img = demo_images(trained, 1)[0]
    assert served.predict(img).probs == pytest.approx(predictor.predict(img, tta=True).probs,
                                                      abs=1e-12)
    assert Predictor(copy, device="cpu", tta=False).predict(img).probs == pytest.approx(
        predictor.predict(img).probs, abs=1e-12)


def test_heatmap_shape_range_and_overlay(trained, predictor) -> None:
    r = predictor.predict(demo_images(trained, 1)[0], heatmap=True)
    assert r.heatmap.shape == (32, 32) and r.heatmap.dtype == np.float32
    # (at 32 px the tiny ResNet's last feature map is 1x1, so the map is flat here; the
    # spatial case is pinned against pytorch_grad_cam in test_predict_heatmap.py)
    assert r.heatmap.min() >= 0.0 and r.heatmap.max() <= 1.0
    assert r.heatmap_member == "test_resnet fold 1" or r.heatmap_member.endswith(("0", "1"))
    # the overlay covers the whole photo in its own geometry (48x48 demo images)
    assert r.overlay.dtype == np.uint8 and r.overlay.shape == (48, 48, 3)
    plain = predictor.predict(demo_images(trained, 1)[0])
    np.testing.assert_allclose(list(r.probs.values()), list(plain.probs.values()), atol=1e-6)


# --------------------------------------------------------------------------------------------
# metadata


def test_metadata_validation_warns_and_treats_as_missing() -> None:
    from skin_core.predict import normalize_metadata

    md, w = normalize_metadata(150, "robot", "moon")
    assert md == {"age_approx": None, "sex": None, "anatom_site_general": None}
    assert len(w) == 3 and "outside 0-120" in w[0] and "robot" in w[1] and "moon" in w[2]
    md, w = normalize_metadata("abc", "F", "Back")
    assert md == {"age_approx": None, "sex": "female", "anatom_site_general": "posterior torso"}
    assert len(w) == 1 and "not a number" in w[0]
    md, w = normalize_metadata("45", None, "")
    assert md["age_approx"] == 45.0 and w == []
    assert normalize_metadata(-1)[0]["age_approx"] is None


def test_unknown_sex_site_and_bad_age_are_warnings_in_the_result(trained, predictor) -> None:
    img = demo_images(trained, 1)[0]
    r = predictor.predict(img, age=200, sex="x", site="elbow pit")
    assert r.error is None and len(r.warnings) >= 3
    missing = predictor.predict(img)
    # all three treated as missing -> same as no metadata at all
    assert r.meta_probs == missing.meta_probs


# --------------------------------------------------------------------------------------------
# bad input: one sentence, the others unharmed


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def _encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
    files = {
        "text": b"this is not an image\n",
        "pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n",
        "empty": b"",
        "truncated": _encode(rgb, "JPEG", quality=90)[:400],
        "bomb": _png_header_only(30_000, 30_000),
        "tiny": _encode(np.zeros((1, 1, 3), np.uint8), "PNG"),
    }
    ext = {"text": ".txt", "pdf": ".pdf", "empty": ".jpg", "truncated": ".jpg", "bomb": ".png",
           "tiny": ".png"}
    out = {}
    for k, data in files.items():
        p = d / f"{k}{ext[k]}"
        p.write_bytes(data)
        out[k] = p
    huge = d / "huge.jpg"
    with open(huge, "wb") as fh:  # sparse: 60 MB on paper, nothing on disk
        fh.seek(60 * 1024 * 1024)
        fh.write(b"\0")
    out["huge"] = huge
    return out


@pytest.mark.parametrize("kind,words", [
    ("text", "not an image"), ("pdf", "not an image"), ("empty", "empty"),
    ("truncated", "truncated"), ("bomb", "decompression bomb"), ("tiny", "1x1 pixels"),
    ("huge", "upload limit"),
])
def test_bad_image_is_one_sentence_and_others_unharmed(predictor, trained, bad_files, kind,
                                                       words) -> None:
    with pytest.raises(ImageError) as exc:
        predictor.predict(bad_files[kind])
    msg = str(exc.value)
    assert words in msg and str(bad_files[kind]) in msg
    assert msg.count(". ") == 0 and "\n" not in msg  # one sentence
    good = demo_images(trained, 1)[0]
    results = predictor.predict_batch([good, bad_files[kind], good])
    assert results[1].error == msg and results[1].label is None
    assert results[0].error is None and results[2].error is None
    assert results[0].probs == pytest.approx(results[2].probs)


def test_every_pil_mode_and_exif_rotation_is_predicted(predictor, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    grey16 = (rng.integers(0, 65535, (48, 64))).astype(np.uint16)
    cases = {
        "png16.png": Image.fromarray(grey16),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full((48, 64), 128, np.uint8)])),
        "grey.png": Image.fromarray(rgb[:, :, 0]),
    }
    assert [cases[k].mode for k in cases] == ["I;16", "CMYK", "RGBA", "L"]
    for name, img in cases.items():
        img.save(tmp_path / name)
        r = predictor.predict(tmp_path / name)
        assert r.error is None and sum(r.probs.values()) == pytest.approx(1.0), name
    # EXIF orientation 6 (rotate 90 CW to display): stored sideways, displayed upright
    upright = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(upright).save(tmp_path / "upright.png")
    stored = Image.fromarray(np.rot90(upright, k=1))  # what a camera held sideways stores
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rotated.png", exif=exif.tobytes())
    a = predictor.predict(tmp_path / "upright.png")
    b = predictor.predict(tmp_path / "rotated.png")
    assert b.quality["measures"]["width"] == 56 and b.quality["measures"]["height"] == 40
    np.testing.assert_allclose(list(a.probs.values()), list(b.probs.values()), atol=1e-6)


def test_uploaded_bytes_and_file_objects(trained, predictor) -> None:
    path = demo_images(trained, 1)[0]
    data = Path(path).read_bytes()
    a = predictor.predict(path)
    b = predictor.predict(data, name="upload.jpg")
    c = predictor.predict(io.BytesIO(data), name="upload.jpg")
    assert b.image == "upload.jpg" and b.probs == pytest.approx(a.probs) == c.probs


# --------------------------------------------------------------------------------------------
# conformal coverage on held-out data


CENTRES = {"A": (150, 100, 100), "B": (100, 150, 100), "C": (100, 100, 150)}


def colour_images(root: Path, n_per_class: int, seed: int) -> pd.DataFrame:
    """Overlapping colour classes: each image's colour is its class centre plus a random
    per-image shift, so a small CNN is right often but not always."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for c, centre in CENTRES.items():
        for i in range(n_per_class):
            colour = np.array(centre) + rng.normal(0, 22, 3)
            a = np.clip(rng.normal(colour, 12, (40, 40, 3)), 0, 255).astype(np.uint8)
            p = root / f"{c}{seed}_{i}.png"
            Image.fromarray(a).save(p)
            rows.append({"image_id": p.stem, "path": str(p), "label": c,
                         "lesion_id": p.stem})
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_conformal_sets_cover_held_out_images_at_the_promised_rate(tmp_path: Path) -> None:
    """Held-out images from the same generator: coverage >= 90 % minus noise, and the sets
    are informative (smaller than all classes) because the ensemble is partly right."""
    from skin_core.data.tables import table_from_frame
    from skin_core.models.bundle import build_bundle
    from skin_core.predict import Predictor
    from skin_core.training import TrainConfig, train_run

    ds = table_from_frame(colour_images(tmp_path / "train", 60, seed=0), classes=("A", "B", "C"),
                          root=tmp_path / "train")
    cfg = TrainConfig(archs=("test_resnet",), folds=3, epochs=6, img_size=32, batch_size=16,
                      lr=1e-2, threads=1, cache_dir=str(tmp_path / "cache"), cache_workers=1,
                      patience=0, augment=False)
    train_run(ds, out=tmp_path / "run", config=cfg)
    build_bundle(tmp_path / "run", out=tmp_path / "bundle")
    pred = Predictor(tmp_path / "bundle", device="cpu")
    held = colour_images(tmp_path / "held", 100, seed=1)
    results = list(pred.iter_predict(held["path"], batch_size=64))
    covered = np.array([lab in r.prediction_set for lab, r in
                        zip(held["label"], results, strict=True)])
    sizes = np.array([len(r.prediction_set) for r in results])
    se = np.sqrt(0.9 * 0.1 / len(held))
    assert covered.mean() >= 0.9 - 3 * se, (covered.mean(), sizes.mean())
    assert sizes.mean() < 2.5, sizes.mean()  # not the trivial "every class" set
    assert results[0].coverage == 0.9 and results[0].meta_probs is None


# --------------------------------------------------------------------------------------------
# batch streaming and CLI


def test_iter_predict_keeps_order_and_matches_single_predictions(trained, predictor) -> None:
    images = demo_images(trained, 10)
    images.insert(4, str(trained["demo"] / "missing.jpg"))
    results = list(predictor.iter_predict(iter(images), batch_size=3, workers=2))
    assert [r.image for r in results] == images
    assert results[4].error and "does not exist" in results[4].error
    single = predictor.predict(images[7])
    assert results[7].probs == pytest.approx(single.probs, abs=1e-6)
    assert results[7].meta_probs == pytest.approx(single.meta_probs, abs=1e-6)


def test_batch_work_on_the_cpu_tunes_the_allocator_and_single_images_do_not(
        trained, predictor, monkeypatch) -> None:
    from skin_core.models import device

    calls: list[int] = []
    monkeypatch.setattr(device, "tune_cpu_allocator", lambda: calls.append(1) or True)
    predictor.predict(demo_images(trained, 1)[0])
    assert calls == []
    list(predictor.iter_predict(demo_images(trained, 3), batch_size=2))
    list(predictor.forward_batches(demo_images(trained, 3), batch_size=2))
    assert calls == [1, 1]


def test_streamed_batches_equal_in_memory_batches_with_tta_and_heatmap(trained, predictor):
    """The streaming path (inputs written by the decoding threads) gives exactly the numbers
    of predict_batch (inputs stacked and converted in the caller) for the same batch."""
    images = demo_images(trained, 5)
    streamed = list(predictor.iter_predict(images, batch_size=5, tta=True, heatmap=True))
    in_memory = predictor.predict_batch(images, tta=True, heatmap=True)
    for a, b in zip(streamed, in_memory, strict=True):
        assert a.probs == b.probs and a.members == b.members and a.meta_probs == b.meta_probs
        np.testing.assert_array_equal(a.heatmap, b.heatmap)
        assert a.quality == b.quality and a.referral == b.referral


def test_iter_predict_stopped_early_leaves_no_decoding_thread(trained, predictor) -> None:
    import threading

    gen = predictor.iter_predict(demo_images(trained, 12), batch_size=2, workers=2)
    first = next(gen)
    gen.close()  # the consumer stops: queued decodes are cancelled, the pool shut down
    assert first.error is None
    assert not [t for t in threading.enumerate() if t.name.startswith("decode")]


def test_decoding_threads_fill_the_same_inputs_as_training_preprocessing(trained, predictor):
    """Rows written by the decoding threads equal to_float of the stacked crops, bit for bit,
    with the same memory layout; a failed image's row is skipped."""
    import torch

    from skin_core.training.augment import to_float

    images = demo_images(trained, 4)
    images.insert(1, str(trained["demo"] / "missing.jpg"))
    bufs = predictor._input_buffers(8)
    items = [predictor._prepare_row(p, bufs, j) for j, p in enumerate(images)]
    assert items[1].error and all(it.error is None for i, it in enumerate(items) if i != 1)
    for key, (x, _) in bufs.items():
        u8 = torch.from_numpy(np.stack([it.inputs[key[:2]] for it in items if it.error is None]))
        want = to_float(u8, key[2], key[3])
        assert torch.equal(x[[0, 2, 3, 4]], want)
        assert x[:4].stride() == want.stride()
        # the lookup table is to_float itself, on any size (vectorised loops and their tails)
        rng = np.random.default_rng(0)
        odd = rng.integers(0, 256, (2, 97, 97, 3), dtype=np.uint8)
        lut = predictor._input_lut(key)
        looked_up = np.stack([lut[c][odd[..., c]] for c in range(3)], axis=1)
        np.testing.assert_array_equal(looked_up,
                                      to_float(torch.from_numpy(odd), key[2], key[3]).numpy())


def test_warm_up_predicts_a_synthetic_image_and_changes_nothing(trained, predictor) -> None:
    image = demo_images(trained, 1)[0]
    before = predictor.predict(image, heatmap=True)
    assert predictor.warm_up() > 0
    after = predictor.predict(image, heatmap=True)
    assert before.probs == after.probs and before.meta_probs == after.meta_probs
    np.testing.assert_array_equal(before.heatmap, after.heatmap)


def test_quality_equals_the_studys_quality_csv_for_the_same_file(trained, predictor) -> None:
    """Upload-time quality uses the study's own decode and measures: identical numbers."""
    from skin_core.analysis.quality import compute_quality

    files = demo_images(trained, 4)
    want = compute_quality(files, workers=1).set_index("image_id")
    for f, res in zip(files, predictor.predict_batch(files), strict=True):
        row = want.loc[Path(f).stem]
        assert res.quality["blur_score"] == row["blur_score"]
        for m in ("laplacian_var_full", "wavelet_ratio", "fft_hf_ratio", "entropy"):
            assert res.quality["measures"][m] == row[m], m


def test_quality_percentiles_equal_percentile_of(trained, predictor) -> None:
    from skin_core.analysis.quality import percentile_of, percentiles_from_table
    from skin_core.predict import _percentile_tables

    ref = predictor.bundle.quality_reference
    tied = {"measures": {"tied": {"levels": [0, 25, 50, 75, 100],
                                  "quantiles": [1.0, 2.0, 2.0, 2.0, 5.0]},
                         "flat": {"levels": [0, 50, 100], "quantiles": [3.0, 3.0, 3.0]}}}
    for reference in (ref, tied):
        tables = _percentile_tables(reference)
        assert list(tables) == list(reference["measures"])
        for m, entry in reference["measures"].items():
            lo, hi = min(entry["quantiles"]), max(entry["quantiles"])
            values = [*np.linspace(lo - 1, hi + 1, 41), *entry["quantiles"], float("nan"),
                      float("inf")]
            want = [percentile_of(v, reference, m) for v in values]
            np.testing.assert_array_equal(percentiles_from_table(np.array(values), tables[m]), want,
                                          err_msg=m)


def _cli(argv, capsys):
    from skin_core.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_single_image_json(trained, capsys) -> None:
    img = demo_images(trained, 1)[0]
    code, out, err = _cli(["predict", "--bundle", str(trained["bundle"]), img, "--age", "50",
                           "--sex", "female", "--site", "lower extremity", "--json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert {"label", "probs", "members", "meta_probs", "prediction_set", "quality",
            "referral"} <= set(d)
    assert d["meta_source"] == "with_metadata" and d["metadata"]["age_approx"] == 50


def test_cli_folder_and_list_to_csv_with_one_bad_image(trained, bad_files, tmp_path, capsys):
    images = demo_images(trained, 5)
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join([*images[2:], str(bad_files["truncated"])]) + "\n")
    out = tmp_path / "pred.csv"
    code, stdout, err = _cli(["predict", "--bundle", str(trained["bundle"]), *images[:2],
                              "--list", str(lst), "--out", str(out), "--batch-size", "2",
                              "--heatmap-dir", str(tmp_path / "cams")], capsys)
    assert code == 2
    assert err.count("skin-core: error:") == 1 and "1 of 6 images" in err
    df = pd.read_csv(out, keep_default_na=False)
    assert len(df) == 6 and list(df["image"]) == [*images, str(bad_files["truncated"])]
    assert (df["error"].iloc[:5] == "").all() and "truncated" in df["error"].iloc[5]
    assert set(df["label"].iloc[:5]) <= set(trained_classes(trained))
    probs = df[[f"prob_{c}" for c in trained_classes(trained)]].iloc[:5].to_numpy(float)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert len(list((tmp_path / "cams").glob("*_gradcam.png"))) == 5


def trained_classes(trained) -> list[str]:
    return json.loads((trained["bundle"] / "bundle.json").read_text())["classes"]


@pytest.mark.parametrize("kind", ["text", "bomb", "huge"])
def test_cli_bad_single_image_exits_2_with_one_sentence(trained, bad_files, kind, capsys):
    code, out, err = _cli(["predict", "--bundle", str(trained["bundle"]),
                           str(bad_files[kind])], capsys)
    assert code == 2
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("skin-core: error:")
    assert str(bad_files[kind]) in lines[0]


def test_cli_missing_bundle_exits_2(tmp_path, capsys) -> None:
    code, out, err = _cli(["predict", "--bundle", str(tmp_path / "nope"), "x.jpg"], capsys)
    assert code == 2 and "does not exist" in err


def test_predictor_refuses_a_folder_that_is_no_bundle(tmp_path) -> None:
    from skin_core.predict import Predictor

    with pytest.raises(DataError, match="bundle.json is missing"):
        Predictor(tmp_path)


def test_cold_load_is_quick_and_warm_predictions_load_nothing(trained, monkeypatch) -> None:
    import skin_core.models.bundle as bundle_mod
    from skin_core.predict import Predictor

    p = Predictor(trained["bundle"], device="cpu")
    assert p.load_seconds < 30  # generous on a loaded CI machine; the benchmark measures it

    def boom(*a, **k):  # pragma: no cover - must not be called
        raise AssertionError("warm prediction loaded the bundle again")

    monkeypatch.setattr(bundle_mod, "load_bundle", boom)
    monkeypatch.setattr("safetensors.torch.load_file", boom)
    assert p.predict(demo_images(trained, 1)[0]).error is None


def test_meta_with_quality_features_gets_the_images_own_measures(trained, tmp_path) -> None:
    """The study fits the meta-classifier with quality.csv features: the predictor feeds it
    the new image's measures (same names as quality.csv)."""
    from skin_core.analysis.quality import compute_quality
    from skin_core.data.tables import load_dataset
    from skin_core.meta import evaluate_meta, save_predictor, wide_from_probs
    from skin_core.models.bundle import build_bundle
    from skin_core.predict import Predictor

    ds = load_dataset(f"isic2019:{trained['demo']}")
    quality = compute_quality(ds.table, workers=1)
    oof = pd.read_csv(trained["run"] / "oof.csv", dtype={"image_id": str})
    md = ds.table.copy()
    md["lesion_id"] = md["lesion_id"].astype(object).where(md["lesion_id"].notna(),
                                                           md["image_id"])
    res = evaluate_meta(oof, md, classes=ds.classes, quality=quality, n_resamples=0,
                        param_grid={"num_leaves": [7], "learning_rate": [0.1]})
    assert res.predictor.feature_spec.quality_columns
    save_predictor(res.predictor, tmp_path / "meta_q")
    build_bundle(trained["run"], out=tmp_path / "b", meta=tmp_path / "meta_q", quality=quality)
    pred = Predictor(tmp_path / "b", device="cpu")
    img = demo_images(trained, 1)[0]
    r = pred.predict(img, age=30, sex="male")
    row = quality[quality["image_id"] == Path(img).stem].assign(image_id="x")
    probs = {m: np.array([[r.members[m][c] for c in pred.classes]]) for m in ARCHS}
    meta_md = pd.DataFrame({"image_id": ["x"], "age_approx": [30.0], "sex": ["male"],
                            "anatom_site_general": [None]})
    out = res.predictor.predict(wide_from_probs(["x"], probs, pred.classes), meta_md,
                                quality=row)
    np.testing.assert_allclose([r.meta_probs[c] for c in pred.classes],
                               out[[f"prob_{c}" for c in pred.classes]].to_numpy()[0],
                               atol=1e-9)
