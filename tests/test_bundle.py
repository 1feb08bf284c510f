"""Model bundles: build, round trip, hashes, tampering, code-carrying files, class checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_predict import build_trained  # the shared tiny trained run (tests/test_predict.py)

from skin_core.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_trained(tmp_path_factory.getbasetemp() / "predict_trained")


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def _images(trained, n=3):
    return sorted(str(p) for p in (trained["demo"] / "ISIC_2019_Training_Input").glob("*.jpg"))[:n]


def _rehash(bundle: Path) -> None:
    from skin_core.models.bundle import file_sha256

    man = json.loads((bundle / "bundle.json").read_text())
    man["files"] = {k: file_sha256(bundle / k) for k in man["files"]}
    (bundle / "bundle.json").write_text(json.dumps(man))


def test_manifest_lists_every_file_with_its_hash(trained) -> None:
    from skin_core.models.bundle import file_sha256, load_bundle

    b = trained["bundle"]
    man = json.loads((b / "bundle.json").read_text())
    on_disk = {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()}
    assert on_disk - {"bundle.json"} == set(man["files"])
    assert all(file_sha256(b / k) == v for k, v in man["files"].items())
    assert not any(p.suffix in (".pkl", ".pt", ".pth", ".joblib") for p in b.rglob("*"))
    bundle = load_bundle(b)
    assert bundle.classes == tuple(man["classes"]) and len(bundle.members) == 4
    assert bundle.models == ("test_efficientnet", "test_resnet")
    assert bundle.meta is not None and bundle.meta_nometa is not None
    assert not bundle.meta_nometa.feature_spec.metadata
    assert bundle.quality_reference["n_images"] == 120
    ref = man["referral"]
    assert ref["entropy_percentile"] == 90 and 0 < ref["entropy_threshold"] <= np.log(8)
    assert man["run"]["fingerprint"] and man["heatmap_member"]["model"] in bundle.models
    assert {m["preprocessing"]["input_size"] for m in man["members"]} == {32}
    assert not list(b.parent.glob(".bundle.*"))  # no temporary folder left behind


def test_round_trip_copy_gives_identical_probabilities(trained, tmp_path) -> None:
    from skin_core.predict import Predictor

    images = _images(trained)
    a = Predictor(trained["bundle"], device="cpu").predict_batch(images, metadata=[
        (50, "male", "head/neck")] * 3)
    b = Predictor(_copy(trained["bundle"], tmp_path), device="cpu").predict_batch(
        images, metadata=[(50, "male", "head/neck")] * 3)
    for x, y in zip(a, b, strict=True):
        assert x.probs == y.probs and x.meta_probs == y.meta_probs and x.members == y.members
        assert x.prediction_set == y.prediction_set and x.referral == y.referral


def test_rebuild_with_overwrite_and_refusal_without(trained, tmp_path) -> None:
    from skin_core.models.bundle import build_bundle, load_bundle

    out = tmp_path / "b"
    build_bundle(trained["run"], out=out, models=["test_resnet"])
    assert load_bundle(out).models == ("test_resnet",)
    assert load_bundle(out).meta is None and load_bundle(out).quality_reference is None
    with pytest.raises(ConfigError, match="already exists"):
        build_bundle(trained["run"], out=out)
    build_bundle(trained["run"], out=out, overwrite=True)
    assert load_bundle(out).models == ("test_efficientnet", "test_resnet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize("target", ["members/test_resnet/fold0.safetensors",
                                    "meta/meta_model.txt", "meta/meta_predictor.json",
                                    "quality_reference.json"])
def test_tampered_file_is_refused_naming_it(trained, tmp_path, target) -> None:
    from skin_core.models.bundle import load_bundle

    b = _copy(trained["bundle"], tmp_path)
    with open(b / target, "ab") as fh:
        fh.write(b" ")
    with pytest.raises(DataError, match="does not match the sha256") as exc:
        load_bundle(b)
    assert target.split("/")[-1] in str(exc.value) and "\n" not in str(exc.value)


def test_missing_listed_file_is_refused(trained, tmp_path) -> None:
    from skin_core.models.bundle import load_bundle

    b = _copy(trained["bundle"], tmp_path)
    (b / "members/test_efficientnet/fold1.safetensors").unlink()
    with pytest.raises(DataError, match="fold1.safetensors listed in bundle.json is missing"):
        load_bundle(b)


@pytest.mark.parametrize("name", ["evil.pkl", "members/x.pt", "meta/model.joblib", "w.pth"])
def test_unlisted_code_carrying_file_is_refused(trained, tmp_path, name) -> None:
    from skin_core.models.bundle import load_bundle

    b = _copy(trained["bundle"], tmp_path)
    (b / name).parent.mkdir(parents=True, exist_ok=True)
    (b / name).write_bytes(b"\x80\x04K\x01.")  # a pickle of the int 1
    with pytest.raises(DataError, match="not listed in bundle.json") as exc:
        load_bundle(b)
    assert name.split("/")[-1] in str(exc.value)
    (b / name).unlink()
    (b / "README.txt").write_text("notes")  # harmless unlisted files are tolerated
    load_bundle(b)


def test_path_outside_the_bundle_is_refused(trained, tmp_path) -> None:
    from skin_core.models.bundle import load_bundle

    b = _copy(trained["bundle"], tmp_path)
    man = json.loads((b / "bundle.json").read_text())
    man["files"]["../outside.txt"] = "0" * 64
    (b / "bundle.json").write_text(json.dumps(man))
    with pytest.raises(DataError, match="outside the bundle folder"):
        load_bundle(b)


def test_meta_model_with_other_classes_is_refused_at_load_and_build(trained, tmp_path) -> None:
    from skin_core.models.bundle import build_bundle, load_bundle

    b = _copy(trained["bundle"], tmp_path)
    meta_json = b / "meta" / "meta_predictor.json"
    doc = json.loads(meta_json.read_text())
    doc["classes"] = doc["classes"][::-1]
    doc["feature_spec"]["classes"] = doc["feature_spec"]["classes"][::-1]
    meta_json.write_text(json.dumps(doc))
    _rehash(b)  # an internally consistent bundle whose meta-model disagrees
    with pytest.raises(DataError, match="predicts classes") as exc:
        load_bundle(b)
    assert "meta" in str(exc.value)
    with pytest.raises(DataError, match="predicts classes"):
        build_bundle(trained["run"], out=tmp_path / "new", meta=b / "meta")
    assert not (tmp_path / "new").exists()


def test_meta_with_metadata_is_refused_as_the_without_metadata_model(trained, tmp_path):
    from skin_core.models.bundle import build_bundle

    with pytest.raises(DataError, match="uses metadata features"):
        build_bundle(trained["run"], out=tmp_path / "x", meta_without_metadata=trained["meta"])


def test_weights_changed_after_training_are_refused(trained, tmp_path) -> None:
    from skin_core.models.bundle import build_bundle

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    with open(run / "members/test_resnet/fold0.safetensors", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(DataError, match="do not match the sha256"):
        build_bundle(run, out=tmp_path / "b")


def test_not_a_run_or_not_a_bundle(tmp_path) -> None:
    from skin_core.models.bundle import build_bundle, load_bundle

    with pytest.raises(DataError, match="not a training run"):
        build_bundle(tmp_path, out=tmp_path / "b")
    with pytest.raises(DataError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "bundle.json").write_text("{not json")
    with pytest.raises(DataError, match="not readable JSON"):
        load_bundle(tmp_path / "bad")


def test_cli_bundle_and_tampered_predict_exit_2(trained, tmp_path, capsys) -> None:
    from skin_core.cli import main

    out = tmp_path / "cli_bundle"
    code = main(["bundle", "--run", str(trained["run"]), "--meta", str(trained["meta"]),
                 "--no-quality", "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["meta"] is True and summary["n_members"] == 4
    with open(out / "members/test_resnet/fold1.safetensors", "r+b") as fh:
        fh.seek(200)
        fh.write(b"\x01\x02")
    code = main(["predict", "--bundle", str(out), _images(trained, 1)[0]])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("skin-core: error: Bundle file")
    assert "fold1.safetensors" in err and len(err.strip().splitlines()) == 1
    code = main(["bundle", "--run", str(trained["run"]), "--no-quality", "--out", str(out)])
    assert code == 2 and "already exists" in capsys.readouterr().err


def test_run_resize_mode_travels_into_the_members_preprocessing(trained, tmp_path) -> None:
    import yaml

    from skin_core.models.bundle import build_bundle, load_bundle

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    doc = yaml.safe_load((run / "config.yaml").read_text())
    assert load_bundle(trained["bundle"]).members[0].preprocessing["crop"] == "center"
    doc["train"]["resize"] = "stretch"
    (run / "config.yaml").write_text(yaml.safe_dump(doc))
    b = load_bundle(build_bundle(run, out=tmp_path / "b"))
    assert {m.preprocessing["crop"] for m in b.members} == {"stretch"}
