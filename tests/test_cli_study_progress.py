"""``skin-core study`` prints one line per trained epoch with an ETA (not only step lines)."""

from __future__ import annotations

import re

import pytest
import yaml


@pytest.mark.slow
def test_study_prints_per_fold_epoch_progress_with_eta(tmp_path, demo_dir, capsys):
    from skin_core.cli import main

    cfg = tmp_path / "study.yaml"
    cfg.write_text(yaml.safe_dump({
        "folds": {"k": 2, "seed": 0},
        "train": {"archs": ["test_resnet"], "epochs": 2, "img_size": 32, "batch_size": 32,
                  "folds": 2, "loss_weighting": "none", "augment": False, "patience": 0},
        "difficulty": {"permutations": 200},
        "meta": {"bootstrap": 50},
    }))
    assert main(["study", "--dataset", f"isic2019:{demo_dir}", "--out",
                 str(tmp_path / "study"), "--config", str(cfg)]) == 0
    err = capsys.readouterr().err  # pytest's stderr is no terminal: the study trains bar-less
    lines = [ln for ln in err.splitlines() if ln.startswith("skin-core: train ")]
    want = [f"skin-core: train test_resnet fold {f}/2 epoch {e}/2" for f in (1, 2) for e in (1, 2)]
    epochs = [ln for ln in lines if "epoch" in ln]
    heads = [ln.split(" · ")[0] for ln in epochs]
    assert heads == want  # every epoch once, in order
    assert all(re.search(r"· ETA (\d+ s|\d+ min|\d+ h \d\d min)$", ln) for ln in epochs)
    assert epochs[-1].split(" · ")[-2] == "100%" and lines[len(epochs)].startswith(
        "skin-core: train finished in")
    # said while the study trains, and all of them before the next step says anything (a late
    # poll once landed inside the meta step's progress bar and the line was lost)
    assert err.index("train: running") < err.index(lines[0])
    assert err.index(lines[len(epochs)]) < err.index("train: done")


def test_demo_follows_the_run_where_build_demo_puts_its_study(tmp_path, demo_dir, monkeypatch,
                                                             capsys):
    """``skin-core demo`` watches the very folder build_demo trains in (here moved by
    ``SKIN_CORE_STUDIES_DIR``); the study itself is replaced by a fake that writes events."""
    import json
    import time
    from types import SimpleNamespace

    import skin_core.demo
    from skin_core.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SKIN_CORE_HOME", raising=False)
    monkeypatch.setenv("SKIN_CORE_DEMO_DIR", str(demo_dir))
    monkeypatch.setenv("SKIN_CORE_STUDIES_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("SKIN_CORE_MODELS_DIR", str(tmp_path / "models"))

    def fake_study(spec, out, **kwargs):
        run = out / "run"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text("models: [m]\ntrain: {folds: 1, epochs: 2}\n")
        for epoch in range(2):
            time.sleep(1.2)  # the follower polls once a second
            with open(run / "events.jsonl", "a") as fh:
                fh.write(json.dumps({"event": "epoch", "model": "m", "fold": 0,
                                     "epoch": epoch, "elapsed_s": 1.0}) + "\n")
        return SimpleNamespace(to_dict=lambda: {"steps": []})

    monkeypatch.setattr(skin_core.demo, "run_study", fake_study)
    assert main(["demo"]) == 0
    err = capsys.readouterr().err
    assert "skin-core: train m fold 1/1 epoch 1/2 · " in err
    assert "skin-core: train m fold 1/1 epoch 2/2 · " in err and "100% · ETA 0 s" in err
    assert (tmp_path / "elsewhere" / "demo" / "run" / "events.jsonl").is_file()
