"""Similar cases and out-of-distribution refusal (skin_core.retrieval, skin-core index)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw
from test_predict import build_trained  # the shared tiny trained run (tests/test_predict.py)

from skin_core.errors import DataError
from skin_core.retrieval import RetrievalIndex, combine_features, fit_projection, project


def test_search_returns_one_image_per_lesion_by_decreasing_similarity() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    lesions = tuple(f"L{i // 2}" for i in range(50))  # two images per lesion
    index = RetrievalIndex(embeddings=emb.astype(np.float16), mean=np.zeros(8, np.float32),
                           components=np.eye(8, dtype=np.float32),
                           image_ids=tuple(f"I{i}" for i in range(50)),
                           labels=tuple("AB"[i % 2] for i in range(50)), lesion_ids=lesions)
    q = emb[:3]
    hits = index.search(q, 5)
    for row, query in zip(hits, q, strict=True):
        assert len(row) == 5 and len({h["lesion_id"] for h in row}) == 5
        sims = [h["similarity"] for h in row]
        assert sims == sorted(sims, reverse=True)
        brute = emb.astype(np.float16).astype(np.float32) @ query
        assert sims[0] == pytest.approx(brute.max(), abs=1e-5)
    assert hits[0][0]["image_id"] == "I0"  # an image finds itself first
    s = index.similarities(q)
    top10 = np.sort(s, axis=1)[:, -10:]
    assert index.ood_score(q) == pytest.approx(1 - top10.mean(axis=1), abs=1e-6)


def test_projection_is_normalised_and_index_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    feats = [rng.normal(size=(40, 12)), rng.normal(size=(40, 6)) * 100]
    combined = combine_features(feats)
    assert np.linalg.norm(combined, axis=1) == pytest.approx(1.0, abs=1e-5)
    mean, comps = fit_projection(combined, dim=64)
    assert comps.shape == (18, 18)  # at most min(N-1, F) dimensions
    z = project(combined, mean, comps)
    assert np.linalg.norm(z, axis=1) == pytest.approx(1.0, abs=1e-5)
    index = RetrievalIndex(embeddings=z.astype(np.float16), mean=mean, components=comps,
                           image_ids=tuple(map(str, range(40))), labels=("A",) * 40,
                           lesion_ids=tuple(map(str, range(40))), info={"ood_threshold": 0.3},
                           stats_mean=np.zeros(3), stats_precision=np.eye(3))
    index.save(tmp_path / "r")
    back = RetrievalIndex.load(tmp_path / "r")
    assert np.array_equal(back.embeddings, index.embeddings)
    assert back.ood_threshold == 0.3 and back.stats_score(np.ones((1, 3)))[0] == pytest.approx(
        np.sqrt(3))
    (tmp_path / "r" / "items.csv").write_text("image_id,label,lesion_id\n1,A,1\n")
    with pytest.raises(DataError, match="rebuild the index"):
        RetrievalIndex.load(tmp_path / "r")


# --------------------------------------------------------------------------------------------
# on a tiny trained bundle


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_trained(tmp_path_factory.getbasetemp() / "predict_trained")


@pytest.fixture(scope="module")
def indexed(trained, tmp_path_factory) -> tuple[Path, dict, pd.DataFrame]:
    """The bundle indexed on its training images, then calibrated on 60 held-out images."""
    from skin_core.data.tables import load_dataset
    from skin_core.indexing import build_index
    from skin_core.served import calibrate_bundle

    bundle = tmp_path_factory.mktemp("retrieval") / "bundle"
    shutil.copytree(trained["bundle"], bundle)
    table = load_dataset(f"isic2019:{trained['demo']}").table
    folds = pd.read_csv(trained["run"] / "folds.csv", dtype={"image_id": str})
    fold_of = dict(zip(folds["image_id"], folds["fold"], strict=True))
    info = build_index(bundle, table, folds=np.array([fold_of[i] for i in table["image_id"]]))
    held = load_dataset(f"isic2019:{trained['heldout']}").table
    calibrate_bundle(bundle, held.iloc[:60])
    return bundle, info, held


def _non_lesions() -> list[bytes]:
    rng = np.random.default_rng(0)
    arrays = [np.full((96, 128, 3), c, np.uint8) for c in
              ((0, 0, 0), (255, 255, 255), (200, 30, 30), (30, 200, 30), (128, 128, 128))]
    arrays.append(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    cb = (np.indices((96, 128)).sum(0) // 12 % 2 * 255).astype(np.uint8)
    arrays.append(np.stack([cb] * 3, -1))
    im = Image.new("RGB", (128, 96), "white")
    ImageDraw.Draw(im).text((5, 40), "Patient letter, page 2", fill="black")
    arrays.append(np.array(im))
    out = []
    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def test_index_records_out_of_fold_knn_against_softmax(indexed) -> None:
    from skin_core.models.bundle import load_bundle

    bundle, info, _ = indexed
    oof = info["oof"]
    assert oof["n_images"] == 120 and oof["k"] == 16
    assert 0 <= oof["knn_balanced_accuracy"] <= 1 and 0 <= oof["softmax_balanced_accuracy"] <= 1
    b = load_bundle(bundle)  # hashes rewritten after indexing and calibrating
    assert b.manifest["retrieval"]["n_images"] == 120


def test_a_training_image_finds_itself_and_neighbours_are_distinct_lesions(indexed,
                                                                          trained) -> None:
    from skin_core.predict import Predictor

    bundle, _, _ = indexed
    pred = Predictor(bundle, device="cpu")
    path = sorted((trained["demo"] / "ISIC_2019_Training_Input").glob("*.jpg"))[3]
    r = pred.predict(str(path), similar=5)
    assert r.similar[0]["image_id"] == path.stem
    assert r.similar[0]["similarity"] == pytest.approx(1.0, abs=2e-3)  # float16 storage
    assert len({h["lesion_id"] for h in r.similar}) == len(r.similar) == 5
    assert not r.ood["flagged"]
    assert pred.predict(str(path)).similar == ()  # only when asked


def test_embedding_is_the_plain_views_with_or_without_tta(indexed, trained) -> None:
    """The index is built from one view per image; a TTA-served query embeds the same way."""
    from skin_core.predict import Predictor

    bundle, _, _ = indexed
    paths = [str(p) for p in
             sorted((trained["demo"] / "ISIC_2019_Training_Input").glob("*.jpg"))[:6]]
    feats = {}
    for tta in (False, True):
        pred = Predictor(bundle, device="cpu", tta=tta)
        (fb,) = list(pred.forward_batches(paths, batch_size=8, features=True))
        feats[tta] = fb.features
        hit = pred.predict(paths[2], similar=1).similar[0]
        assert hit["image_id"] == Path(paths[2]).stem
        assert hit["similarity"] == pytest.approx(1.0, abs=2e-3)
    for plain, flipped in zip(feats[False], feats[True], strict=True):
        np.testing.assert_allclose(flipped, plain, rtol=1e-4, atol=1e-5)


def test_non_lesion_images_are_flagged_and_referred_and_held_out_lesions_pass(indexed) -> None:
    from skin_core.predict import OOD_WARNING, Predictor

    bundle, _, held = indexed
    pred = Predictor(bundle, device="cpu")
    odd = pred.predict_batch(_non_lesions())
    flagged = [r.ood["flagged"] for r in odd]
    assert np.mean(flagged) >= 0.9, [r.ood for r in odd]
    for r in odd:
        if r.ood["flagged"]:
            assert r.referral["refer"] and r.referral["reasons"][0] == "out_of_distribution"
            assert r.warnings[0] == OOD_WARNING
    fresh = list(pred.iter_predict(list(held["path"].iloc[60:])))  # not used to set it
    assert np.mean([not r.ood["flagged"] for r in fresh]) >= 0.8


def test_cli_similar_and_ood_in_json(indexed, trained, capsys) -> None:
    from skin_core.cli import main

    bundle, _, held = indexed
    assert main(["predict", "--bundle", str(bundle), str(held["path"].iloc[70]),
                 "--similar", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["similar"]) == 3 and set(out["similar"][0]) == {
        "image_id", "label", "lesion_id", "similarity"}
    assert set(out["ood"]) >= {"score", "threshold", "flagged"}
    assert main(["predict", "--bundle", str(trained["bundle"]), str(held["path"].iloc[70]),
                 "--similar", "3"]) == 2
    assert "skin-core index" in capsys.readouterr().err
