"""K-fold x architecture training: run directory, OOF, resume, cancel, bad input."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skin_core.constants import prob_columns
from skin_core.errors import ConfigError, DataError, SkinCoreError
from skin_core.training import TrainConfig, TrainingCancelled, config_from_dict, train_run
from skin_core.training.checkpoint import DiskFullError

COLOURS = {"A": (200, 60, 60), "B": (60, 200, 60), "C": (60, 60, 200)}


def make_tiny_dataset(root: Path, *, per_class: int = 16, classes=COLOURS, seed: int = 0):
    """A dataset whose class is the image colour: 40x48 PNGs, two images per lesion."""
    from skin_core.data.tables import table_from_frame

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for c, n in (per_class.items() if isinstance(per_class, dict) else
                 ((c, per_class) for c in classes)):
        for i in range(n):
            a = np.clip(rng.normal(COLOURS[c], 30, (40, 48, 3)), 0, 255).astype(np.uint8)
            p = root / f"{c}_{i}.png"
            Image.fromarray(a).save(p)
            rows.append({"image_id": f"{c}_{i}", "path": str(p), "label": c,
                         "lesion_id": f"L{c}{i // 2}"})
    return table_from_frame(pd.DataFrame(rows), classes=tuple(classes), root=root)


def tiny_config(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(archs=("test_resnet",), folds=2, epochs=2, img_size=32, batch_size=8, lr=3e-3,
                threads=1, cache_dir=str(tmp_path / "cache"), cache_workers=1, patience=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def test_two_fold_run_writes_the_run_directory(tiny, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    cfg = tiny_config(tmp_path, archs=("test_resnet", "test_efficientnet"))
    res = train_run(tiny, out=tmp_path / "run", config=cfg)
    run = tmp_path / "run"
    for name in ("config.yaml", "folds.csv", "status.json", "events.jsonl", "oof.csv",
                 "metrics.json"):
        assert (run / name).is_file(), name
    oof = pd.read_csv(run / "oof.csv")
    assert list(oof.columns) == ["image_id", "lesion_id", "model", "arch", "fold", "label",
                                 *prob_columns(("A", "B", "C"))]
    lesion_of = dict(zip(tiny.table["image_id"], tiny.table["lesion_id"], strict=True))
    assert (oof["lesion_id"] == oof["image_id"].map(lesion_of)).all()
    assert len(oof) == 2 * 48 and set(oof["model"]) == {"test_resnet", "test_efficientnet"}
    np.testing.assert_allclose(oof[prob_columns("ABC")].sum(axis=1), 1.0, atol=1e-5)
    folds = pd.read_csv(run / "folds.csv")
    merged = oof.merge(folds, on="image_id", suffixes=("", "_file"))
    assert (merged["fold"] == merged["fold_file"]).all()  # each image predicted by its fold
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["progress"] == 1.0
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert len(epochs) == 2 * 2 * 2
    assert {"arch", "fold", "epoch", "train_loss", "val_loss", "val_balanced_accuracy",
            "images_per_s", "lr", "elapsed_s"} <= set(epochs[0])
    side = json.loads((run / "members/test_resnet/fold1.json").read_text())
    assert side["classes"] == ["A", "B", "C"] and side["preprocessing"]["input_size"] == 32
    # the default member is the last epoch of the schedule, not one chosen on the fold
    assert side["epoch_selection"] == "last" and side["selected_epoch"] == 1
    assert side["n_inner"] == 0 and side["epochs_run"] == 2
    assert side["metrics"]["balanced_accuracy"] == side["history"][-1]["val_balanced_accuracy"]
    weights = load_file(str(run / "members/test_resnet/fold1.safetensors"))
    assert weights["fc.weight"].shape[0] == 3
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["test_resnet"]) >= {"balanced_accuracy", "macro_f1", "accuracy", "auc"}
    assert metrics["test_resnet"]["epoch_selection"] == "last"
    assert metrics["test_resnet"]["n_calibration"] == 0
    assert metrics["test_resnet"]["folds"]["0"]["selected_epoch"] == 1
    assert res.metrics["test_resnet"]["n"] == 48
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").rglob("*.json"))


def test_colour_is_learned_above_chance(tiny, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, epochs=4, augment=False)
    res = train_run(tiny, out=tmp_path / "run", config=cfg)
    assert res.metrics["test_resnet"]["balanced_accuracy"] >= 0.6  # chance is 1/3


def test_demo_dataset_two_folds_end_to_end(tmp_path: Path) -> None:
    synthetic = pytest.importorskip("skin_core.data.synthetic")
    if not hasattr(synthetic, "generate_demo_dataset"):
        pytest.skip("generate_demo_dataset not available yet")
    from skin_core.data.tables import load_dataset

    synthetic.generate_demo_dataset(tmp_path / "demo", n=160, seed=0, size=48, workers=1)
    ds = load_dataset(f"isic2019:{tmp_path / 'demo'}")
    k = sum(1 for c in ds.classes if (ds.table["label"] == c).any())
    cfg = tiny_config(tmp_path, epochs=1, img_size=32, batch_size=16)
    res = train_run(ds, out=tmp_path / "run", config=cfg)
    oof = pd.read_csv(res.oof_path)
    assert len(oof) == len(ds.table) and k >= 2
    assert set(oof["image_id"]) == set(ds.table["image_id"])


def _crash_after(n: int):
    calls = {"n": 0}

    def hook(step: int) -> None:
        calls["n"] += 1
        if calls["n"] > n:
            raise RuntimeError("simulated crash")

    return hook


def assert_resume_is_exact(table, tmp_path: Path, cfg: TrainConfig) -> pd.DataFrame:
    """Train ``cfg`` whole, then crash it in fold 1 epoch 1 and resume: the OOF tables must
    agree. Returns the uninterrupted run's OOF table."""
    full = train_run(table, out=tmp_path / "full", config=cfg)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(table, out=tmp_path / "cut", config=cfg, batch_hook=_crash_after(9 + 4))
    res = train_run(table, out=tmp_path / "cut", config=cfg, resume=True)
    a, b = pd.read_csv(full.oof_path), pd.read_csv(res.oof_path)
    cols = prob_columns(table.classes)
    np.testing.assert_allclose(a[cols], b[cols], atol=1e-5)
    return a


@pytest.mark.parametrize("selection", ["last", "inner"])
def test_kill_and_resume_equals_uninterrupted_run(tiny, tmp_path: Path, selection) -> None:
    # inner: a quarter of the training lesions (one 2-image lesion per class and fold)
    cfg = tiny_config(tmp_path, epochs=3, epoch_selection=selection, inner_fraction=0.25)
    full = train_run(tiny, out=tmp_path / "full", config=cfg)
    # fold 0 has 3 epochs x 3 batches = 9 steps; crash in fold 1, epoch 1.
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(tiny, out=tmp_path / "cut", config=cfg, batch_hook=_crash_after(9 + 4))
    cut = tmp_path / "cut"
    assert json.loads((cut / "status.json").read_text())["state"] == "failed"
    assert not (cut / "oof.csv").exists()
    assert (cut / "members/test_resnet/fold0.json").is_file()
    ckpt = json.loads((cut / "checkpoints/test_resnet/fold1/last.json").read_text())
    assert ckpt["epoch"] == 0
    kinds = {p.suffix for p in (cut / "checkpoints").rglob("*") if p.is_file()}
    assert kinds == {".safetensors", ".json"}  # no pickle anywhere
    trained = []
    res = train_run(tiny, out=cut, config=cfg, resume=True,
                    batch_hook=lambda step: trained.append(step))
    assert min(trained) == 3  # fold 0 skipped; fold 1 restarted at epoch 1 (step 3)
    a = pd.read_csv(full.oof_path)
    b = pd.read_csv(res.oof_path)
    assert a[["image_id", "model", "fold", "label"]].equals(b[["image_id", "model", "fold",
                                                                "label"]])
    np.testing.assert_allclose(a[prob_columns("ABC")], b[prob_columns("ABC")], atol=1e-5)
    assert json.loads((cut / "status.json").read_text())["state"] == "finished"
    for k in (0, 1):
        sa, sb = (json.loads((d / f"members/test_resnet/fold{k}.json").read_text())
                  for d in (tmp_path / "full", cut))
        assert sa["epoch_selection"] == sb["epoch_selection"] == selection
        assert sa["selected_epoch"] == sb["selected_epoch"] and sa["n_inner"] == sb["n_inner"]


def test_cancel_file_stops_between_batches_and_resume_finishes(tiny, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    run = tmp_path / "run"

    def cancel_at(step: int) -> None:
        if step == 4:
            (run / "cancel").write_text("now")

    with pytest.raises(TrainingCancelled, match="--resume"):
        train_run(tiny, out=run, config=cfg, batch_hook=cancel_at)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "cancelled" and not (run / "oof.csv").exists()
    res = train_run(tiny, out=run, config=cfg, resume=True)  # clears the cancel request
    assert len(pd.read_csv(res.oof_path)) == 48


def test_several_seeds_give_member_ids(tiny, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, epochs=1, seeds=(0, 1))
    res = train_run(tiny, out=tmp_path / "run", config=cfg)
    assert set(res.metrics) == {"test_resnet@s0", "test_resnet@s1"}


def test_each_arch_trains_at_its_own_size(tiny, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, epochs=1, archs=("test_resnet", "test_efficientnet"),
                      img_size=32, img_sizes={"test_efficientnet": 48})
    train_run(tiny, out=tmp_path / "run", config=cfg)
    sizes = {m: json.loads((tmp_path / "run" / "members" / m / "fold0.json").read_text())
             ["preprocessing"]["input_size"] for m in ("test_resnet", "test_efficientnet")}
    assert sizes == {"test_resnet": 32, "test_efficientnet": 48}
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.u8"))[0].endswith("-32.u8")
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 2
    with pytest.raises(ConfigError, match="img_sizes"):
        config_from_dict({"archs": ["test_resnet"], "img_sizes": {"resnet50": 224}})
    with pytest.raises(ConfigError, match="too small for 'test_efficientnet'"):
        train_run(tiny, out=tmp_path / "run2", config=tiny_config(
            tmp_path, archs=("test_resnet", "test_efficientnet"), img_sizes={
                "test_efficientnet": 8}))


def test_resume_can_add_an_architecture_with_its_own_weights(tiny, tmp_path: Path) -> None:
    """Extending a finished run trains only the new arch; old members stay byte-identical."""
    import hashlib

    import timm
    import yaml
    from safetensors.torch import save_file

    run = tmp_path / "run"
    train_run(tiny, out=run, config=tiny_config(tmp_path, epochs=1))
    old = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
           for p in (run / "members" / "test_resnet").iterdir()}
    weights = tmp_path / "eff.safetensors"
    save_file(timm.create_model("test_efficientnet", pretrained=False).state_dict(), weights)
    cfg = tiny_config(tmp_path, epochs=1, archs=("test_resnet", "test_efficientnet"),
                      pretrained={"test_efficientnet": str(weights)})
    assert cfg.pretrained_for("test_resnet") == "none"
    assert cfg.pretrained_for("test_efficientnet") == str(weights)
    res = train_run(tiny, out=run, config=cfg, resume=True)
    assert set(res.metrics) == {"test_resnet", "test_efficientnet"}
    assert old == {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                   for p in (run / "members" / "test_resnet").iterdir()}
    side = json.loads((run / "members" / "test_efficientnet" / "fold0.json").read_text())
    assert side["pretrained"] == str(weights)
    doc = yaml.safe_load((run / "config.yaml").read_text())
    assert doc["models"] == ["test_resnet", "test_efficientnet"]
    assert doc["extended"][0]["archs"] == ["test_efficientnet"]
    oof = pd.read_csv(run / "oof.csv")
    assert oof.groupby("model").size().to_dict() == {"test_efficientnet": 48, "test_resnet": 48}
    # dropping an arch, or changing a trained arch's weights, is refused
    with pytest.raises(ConfigError, match="can only add architectures"):
        train_run(tiny, out=run, config=tiny_config(tmp_path, epochs=1,
                                                     archs=("test_efficientnet",)), resume=True)
    with pytest.raises(ConfigError, match="trained test_resnet with pretrained 'none'"):
        train_run(tiny, out=run, config=cfg.replace(pretrained=str(weights)), resume=True)
    with pytest.raises(ConfigError, match="'pretrained' training option must be keyed"):
        config_from_dict({"archs": ["test_resnet"], "pretrained": {"resnet50": "hub"}})


# ----------------------------------------------------------------------------- bad input


def test_unknown_arch_is_refused_before_anything_is_written(tiny, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        train_run(tiny, out=tmp_path / "run", config=tiny_config(tmp_path, archs=("resnet-18",)))
    assert not (tmp_path / "run").exists()


def test_image_size_too_small(tiny, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="too small for 'test_resnet'"):
        train_run(tiny, out=tmp_path / "run", config=tiny_config(tmp_path, img_size=16))


def test_folds_file_that_does_not_match_the_dataset(tiny, tmp_path: Path) -> None:
    bad = tmp_path / "folds.csv"
    pd.DataFrame({"image_id": ["A_0", "zzz"], "fold": [0, 1]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match="'zzz' is not in the dataset"):
        train_run(tiny, out=tmp_path / "run", config=tiny_config(tmp_path), folds=bad)
    three = tmp_path / "three.csv"
    ids = tiny.table["image_id"]
    lesion_fold = {les: i % 3 for i, les in enumerate(tiny.table["lesion_id"].unique())}
    pd.DataFrame({"image_id": ids, "fold": tiny.table["lesion_id"].map(lesion_fold)}).to_csv(
        three, index=False)
    with pytest.raises(DataError, match=r"run asks for 2 folds.*--folds 3"):
        train_run(tiny, out=tmp_path / "run", config=tiny_config(tmp_path), folds=three)
    assert not (tmp_path / "run").exists()


def test_class_with_fewer_images_than_folds(tmp_path: Path) -> None:
    ds = make_tiny_dataset(tmp_path / "d", per_class={"A": 8, "B": 8, "C": 2})
    with pytest.raises(DataError, match=r"Class C \(2 images\) has fewer images than the 3 "):
        train_run(ds, out=tmp_path / "run", config=tiny_config(tmp_path, folds=3))


def test_out_of_disk_while_saving_leaves_nothing_half_written(
        tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    run = tmp_path / "run"
    with pytest.raises(DiskFullError, match="No space left on the device while writing"):
        train_run(tiny, out=run, config=tiny_config(tmp_path, epochs=1))
    leftovers = [p for p in run.rglob("*") if p.is_file() and (
        p.suffix in (".tmp", ".safetensors") or p.name.endswith(".oof.csv"))]
    assert leftovers == []
    assert not (run / "oof.csv").exists()
    assert json.loads((run / "status.json").read_text())["state"] == "failed"


def test_checkpoint_with_other_classes_is_refused_on_resume(tiny, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, epochs=2)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError):
        train_run(tiny, out=run, config=cfg, batch_hook=_crash_after(4))
    side = run / "checkpoints/test_resnet/fold0/last.json"
    state = json.loads(side.read_text())
    state["classes"] = ["MEL", "NV", "BCC"]
    side.write_text(json.dumps(state))
    with pytest.raises(ConfigError, match=r"made for classes \['MEL', 'NV', 'BCC'\]"):
        train_run(tiny, out=run, config=cfg, resume=True)


def test_resume_with_another_dataset_is_refused(tiny, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, epochs=1)
    train_run(tiny, out=tmp_path / "run", config=cfg)
    other = make_tiny_dataset(tmp_path / "o", classes={"A": 0, "B": 0})
    with pytest.raises(ConfigError, match="made for classes"):
        train_run(other, out=tmp_path / "run", config=cfg, resume=True)
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        train_run(tiny, out=tmp_path / "run", config=cfg)


def test_bad_options_are_one_sentence() -> None:
    with pytest.raises(ConfigError, match="'folds' training option must be an integer >= 2"):
        TrainConfig(folds=1)
    with pytest.raises(SkinCoreError, match="'backend'"):
        TrainConfig(backend="slurm")


# ----------------------------------------------------------------------------- CLI


def test_cli_train_json_and_config_file(tiny, tmp_path: Path, capsys) -> None:
    from skin_core.cli import main

    table = tiny.table[["image_id", "path", "label", "lesion_id"]]
    table.to_csv(tmp_path / "ds.csv", index=False)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"dataset: csv:{tmp_path / 'ds.csv'}\ntrain:\n  folds: 2\n  epochs: 1\n"
                   f"  img_size: 32\n  batch_size: 8\n  threads: 1\n"
                   f"  cache_dir: {tmp_path / 'cache'}\n")
    rc = main(["train", "--config", str(cfg), "--arch", "test_resnet", "--out",
               str(tmp_path / "run"), "--json", "--no-progress"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["oof_path"].endswith("oof.csv") and "balanced_accuracy" in out["metrics"][
        "test_resnet"]
    rc = main(["train", "--config", str(cfg), "--arch", "efficientnet_bo", "--out",
               str(tmp_path / "run2")])
    assert rc == 2
    assert "did you mean 'efficientnet_b0'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- augmentation


def test_augmentation_is_per_image_seeded_and_identity_when_off() -> None:
    import torch

    from skin_core.training.augment import AugmentConfig, augment_batch, to_float

    x = torch.randint(0, 256, (6, 24, 24, 3), dtype=torch.uint8)
    kw = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    a = augment_batch(x, generator=torch.Generator().manual_seed(3), **kw)
    b = augment_batch(x, generator=torch.Generator().manual_seed(3), **kw)
    assert a.shape == (6, 3, 24, 24) and torch.equal(a, b)
    assert a.min() >= -2.0 - 1e-6 and a.max() <= 2.0 + 1e-6  # (0 - .5)/.25 .. (1 - .5)/.25
    same = torch.stack([a[0]] * 6)
    assert not torch.allclose(a, same)  # different parameters per image
    off = AugmentConfig(rotate=0, crop_area=1.0, aspect=1.0, translate=0, jitter=0, flips=False)
    ident = augment_batch(x, generator=torch.Generator().manual_seed(0), config=off, **kw)
    torch.testing.assert_close(ident, to_float(x, **kw), atol=1e-4, rtol=0)


def test_colour_jitter_matches_sequential_definition() -> None:
    import torch

    from skin_core.training.augment import AugmentConfig, augment_batch

    # mid-grey-ish image: no clamping half-way, so the fused map equals the 3-step definition
    x = torch.full((1, 8, 8, 3), 100, dtype=torch.uint8)
    x[..., 0] = 140
    cfg = AugmentConfig(rotate=0, crop_area=1.0, aspect=1.0, translate=0, jitter=0.2,
                        flips=False)
    gen = torch.Generator().manual_seed(5)
    out = augment_batch(x, mean=(0, 0, 0), std=(1, 1, 1), generator=gen, config=cfg)
    ref_gen = torch.Generator().manual_seed(5)
    for _ in range(7):  # geometry draws without flips: angle, area, ratio, tx x2, ty x2
        torch.rand(1, generator=ref_gen)
    b, c, s = (torch.rand(1, generator=ref_gen).item() * 0.4 + 0.8 for _ in range(3))
    img = x.permute(0, 3, 1, 2).float() / 255
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    img = img * b
    img = c * img + (1 - c) * (img * w).sum(1, keepdim=True).mean()
    img = s * img + (1 - s) * (img * w).sum(1, keepdim=True)
    torch.testing.assert_close(out, img, atol=1e-4, rtol=0)


def test_cli_resume_uses_the_runs_own_config(tiny, tmp_path: Path, capsys) -> None:
    from skin_core.cli import main

    tiny.table[["image_id", "path", "label", "lesion_id"]].to_csv(tmp_path / "ds.csv",
                                                                   index=False)
    args = ["train", "--dataset", f"csv:{tmp_path / 'ds.csv'}", "--arch", "test_resnet",
            "--folds", "2", "--epochs", "1", "--img-size", "32", "--batch-size", "8",
            "--threads", "1", "--cache-dir", str(tmp_path / "cache"), "--out",
            str(tmp_path / "run"), "--no-progress"]
    assert main(args) == 0
    (tmp_path / "run" / "oof.csv").unlink()
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--no-progress"]) == 0
    assert (tmp_path / "run" / "oof.csv").is_file()
