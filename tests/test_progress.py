"""Training progress lines with an ETA, from events (in-process callback and file tailing)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml

from skin_core.progress import TrainingProgress, follow_training, format_eta


def _ev(model, fold, epoch, elapsed=1.0, acc=0.5):
    return {"event": "epoch", "model": model, "fold": fold, "epoch": epoch,
            "elapsed_s": elapsed, "val_balanced_accuracy": acc}


class Clock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


def test_format_eta():
    assert format_eta(40) == "ETA 40 s" and format_eta(240) == "ETA 4 min"
    assert format_eta(3725) == "ETA 1 h 02 min" and format_eta(None) == "ETA –"
    assert format_eta(float("nan")) == "ETA –"


def test_lines_count_folds_and_epochs_and_extrapolate_the_eta():
    lines, clock = [], Clock()
    p = TrainingProgress(["a", "b"], folds=2, epochs=3, say=lines.append, clock=clock)
    clock.t = 110.0  # first epoch took 10 s (elapsed_s), 10 s after the fold began
    assert p(_ev("a", 0, 0, elapsed=10.0, acc=0.25)) == (
        "train a fold 1/2 epoch 1/3 · val bal. acc 0.250 · 10.0 s/epoch · 8% · ETA 2 min")
    clock.t = 130.0  # 2 epochs in 30 s: 15 s/epoch, 10 of 12 epochs left
    line = p(_ev("a", 0, 1, elapsed=30.0))
    assert "epoch 2/3" in line and "15.0 s/epoch" in line and "17%" in line
    assert line.endswith("ETA 2 min")  # 10 x 15 s = 150 s
    assert p({"event": "run_start"}) is None and len(lines) == 2
    clock.t = 160.0
    assert p({"event": "run_finished"}) == "train finished in 1 min 00 s"


def test_replayed_and_repeated_epochs_count_once_and_early_stop_drops_epochs():
    lines, clock = [], Clock()
    done = set()
    p = TrainingProgress(["a"], folds=2, epochs=4, say=lines.append, clock=clock,
                         is_finished=lambda m, f: (m, f) in done)
    p.replay([_ev("a", 0, 0), _ev("a", 0, 1), {"event": "run_start"}])
    clock.t = 104.0
    assert "epoch 2/4" in p(_ev("a", 0, 1, elapsed=4.0))  # replayed: not new, not timed
    assert "25%" in lines[-1] and "ETA –" in lines[-1]
    clock.t = 108.0
    assert "38%" in p(_ev("a", 0, 2, elapsed=8.0))
    done.add(("a", 0))  # fold 0 stops early after 3 epochs (patience)
    clock.t = 112.0
    line = p(_ev("a", 1, 0, elapsed=2.0))
    assert "fold 2/2 epoch 1/4" in line and "62%" in line  # 4 + 1 of 8
    assert "6.0 s/epoch" in line and line.endswith("ETA 18 s")  # (112 - 100) / 2 new; x 3 left
    done.add(("a", 1))  # a tailed file may show a fold finished before its epochs are read
    assert "75%" in p(_ev("a", 1, 1, elapsed=4.0))  # its own line counts 2 epochs, not 4


def _write_run(run_dir, events, models=("m",), folds=2, epochs=2):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(
        {"models": list(models), "train": {"folds": folds, "epochs": epochs}}))
    with open(run_dir / "events.jsonl", "a") as fh:
        for ev in events:
            fh.write(json.dumps(ev) + "\n")


def test_follow_training_tails_new_events_only(tmp_path):
    run = tmp_path / "run"
    _write_run(run, [_ev("m", 0, 0)])  # from an earlier, interrupted process
    lines: list[str] = []

    def train():  # what the trainer does meanwhile: append lines, one in two writes
        time.sleep(0.1)
        with open(run / "events.jsonl", "a") as fh:
            fh.write(json.dumps(_ev("m", 0, 1))[:20])
            fh.flush()
            time.sleep(0.1)
            fh.write(json.dumps(_ev("m", 0, 1))[20:] + "\n")
            fh.write(json.dumps(_ev("m", 1, 0)) + "\n")
            fh.write(json.dumps({"event": "run_finished"}) + "\n")

    with follow_training(run, say=lines.append, interval=0.02):
        t = threading.Thread(target=train)
        t.start()
        t.join()
    assert len(lines) == 3, lines
    assert lines[0].startswith("train m fold 1/2 epoch 2/2 · ")
    assert lines[1].startswith("train m fold 2/2 epoch 1/2 · ")
    assert "50%" in lines[0] and "75%" in lines[1] and lines[2].startswith("train finished in")


def test_a_resumed_run_that_adds_an_architecture_counts_against_the_new_plan(tmp_path):
    """Member m finished in an earlier process (2 folds x 2 epochs); the resumed run adds n
    and rewrites config.yaml before its run_start event: the first new epoch is 5 of 8, not
    100 % of the old plan."""
    run = tmp_path / "run"
    _write_run(run, [_ev("m", f, e) for f in range(2) for e in range(2)])
    lines: list[str] = []

    def resume():
        time.sleep(0.1)  # the follower has read the old config.yaml by now
        _write_run(run, [], models=["m", "n"])
        with open(run / "events.jsonl", "a") as fh:
            fh.write(json.dumps({"event": "run_start", "resume": True}) + "\n")
            fh.write(json.dumps(_ev("n", 0, 0)) + "\n")

    with follow_training(run, say=lines.append, interval=0.02):
        t = threading.Thread(target=resume)
        t.start()
        t.join()
    assert len(lines) == 1, lines
    assert lines[0].startswith("train n fold 1/2 epoch 1/2 · ") and "62%" in lines[0]


def test_follow_training_waits_for_the_run_config_and_never_raises(tmp_path):
    run = tmp_path / "run"
    lines: list[str] = []
    with follow_training(run, say=lines.append, interval=0.02):
        time.sleep(0.05)  # no run folder yet
        _write_run(run, [_ev("m", 0, 0)], folds=1, epochs=1)
        time.sleep(0.1)
    assert len(lines) == 1 and "fold 1/1 epoch 1/1" in lines[0] and "100%" in lines[0]
    broken = tmp_path / "broken"
    _write_run(broken, [])
    (broken / "events.jsonl").unlink()
    (broken / "events.jsonl").mkdir()  # unreadable as a file: the display gives up quietly
    with follow_training(broken, say=lines.append, interval=0.02):
        time.sleep(0.1)
    assert any("progress display stopped" in ln for ln in lines[1:])


@pytest.mark.slow
def test_progress_of_a_real_in_process_training(tmp_path, demo_dir, capsys):
    """What ``skin-core study`` does: ``skin-core train --no-progress`` in-process, followed."""
    from skin_core.cli import invoke

    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"train": {
        "archs": ["test_resnet"], "epochs": 2, "img_size": 32, "batch_size": 32, "folds": 2,
        "patience": 0, "augment": False, "pretrained": "none", "device": "cpu"}}))
    lines: list[str] = []
    with follow_training(tmp_path / "run", say=lines.append, interval=0.1):
        result = invoke(["train", "--dataset", f"isic2019:{demo_dir}", "--config", str(cfg),
                         "--out", str(tmp_path / "run"), "--folds", "2", "--no-progress"])
    assert result["oof_path"]  # stdout stayed the verb's JSON: progress went elsewhere
    assert [ln.split(" · ")[0] for ln in lines[:-1]] == [
        f"train test_resnet fold {f}/2 epoch {e}/2" for f in (1, 2) for e in (1, 2)]
    assert [ln.split(" · ")[-2] for ln in lines[:-1]] == ["25%", "50%", "75%", "100%"]
    assert lines[-1].startswith("train finished in")
    assert "ETA" not in capsys.readouterr().out
