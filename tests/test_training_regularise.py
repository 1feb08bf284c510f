"""Mixup / CutMix of training batches (manifold mixup on cached activations with freeze),
weight averaging, dropout and stochastic depth, class-balanced sampling: definitions,
determinism, exact resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_training import assert_resume_is_exact, make_tiny_dataset, tiny_config
from test_training_recipe import start_weights  # noqa: F401 - fixture

from skin_core.constants import prob_columns
from skin_core.errors import ConfigError
from skin_core.training import train_run
from skin_core.training.regularise import WeightAverage, mix_batch, mixed_loss


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny-mix"))


def _batch():
    import torch

    x = torch.randn(6, 4, 10, 12, generator=torch.Generator().manual_seed(1))
    return x.contiguous(memory_format=torch.channels_last), torch.arange(6)


def test_off_leaves_the_batch_untouched_and_draws_nothing() -> None:
    import torch

    x, y = _batch()
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    out, y1, y2, lam = mix_batch(x, y, mixup=0.0, cutmix=0.0, generator=g)
    assert out is x and y1 is y and y2 is y and lam == 1.0
    assert torch.equal(g.get_state(), state)


def test_mixup_blends_each_sample_with_its_partner() -> None:
    import torch

    x, y = _batch()
    out, y1, y2, lam = mix_batch(x, y, mixup=0.4, cutmix=0.0,
                                 generator=torch.Generator().manual_seed(3))
    assert 0.0 < lam < 1.0 and torch.equal(y1, y)
    perm = y2  # labels are 0..5, so the partner labels are the permutation itself
    assert sorted(perm.tolist()) == list(range(6)) and not torch.equal(perm, y)
    torch.testing.assert_close(out, lam * x + (1 - lam) * x[perm])
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_cutmix_pastes_one_box_and_lam_is_the_uncovered_share() -> None:
    import torch

    x, y = _batch()
    for seed in range(5):
        out, _, perm, lam = mix_batch(x, y, mixup=0.0, cutmix=1.0,
                                      generator=torch.Generator().manual_seed(seed))
        moved = [i for i in range(6) if perm[i] != i]
        box = (out[moved[0]] != x[moved[0]]).any(dim=0)  # (H, W): pixels from the partner
        for i in moved:  # the same box for every sample, filled from its partner
            assert torch.equal((out[i] != x[i]).any(dim=0), box)
            assert torch.equal(out[i][:, box], x[perm[i]][:, box])
            assert torch.equal(out[i][:, ~box], x[i][:, ~box])
        rows, cols = box.any(dim=1).nonzero().flatten(), box.any(dim=0).nonzero().flatten()
        if len(rows):  # a rectangle: every pixel between its extreme rows/cols is inside
            assert box[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        assert lam == pytest.approx(1 - box.float().mean().item())


def test_mixing_is_seeded_by_the_job_generator() -> None:
    import torch

    x, y = _batch()
    a = mix_batch(x, y, mixup=0.2, cutmix=1.0, generator=torch.Generator().manual_seed(7))
    b = mix_batch(x, y, mixup=0.2, cutmix=1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) and a[3] == b[3]
    kinds = set()
    g = torch.Generator().manual_seed(0)
    for _ in range(40):  # both: one or the other per batch
        out, _, perm, lam = mix_batch(x, y, mixup=0.2, cutmix=1.0, generator=g)
        kinds.add("cut" if bool(((out == x) | (out == x[perm])).all()) else "mix")
    assert kinds == {"cut", "mix"}


def test_mixed_loss_is_the_lam_weighted_sum() -> None:
    import torch

    out = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    y, y2 = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0, 2])
    ce = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5]))
    assert torch.equal(mixed_loss(ce, out, y, y2, 1.0), ce(out, y))
    torch.testing.assert_close(mixed_loss(ce, out, y, y2, 0.3),
                               0.3 * ce(out, y) + 0.7 * ce(out, y2))


@pytest.mark.parametrize("opt,value", [("mixup", -0.1), ("cutmix", True), ("drop_rate", 1.0),
                                       ("drop_path_rate", -0.5), ("ema", 1.0)])
def test_bad_values_are_one_sentence(opt, value) -> None:
    with pytest.raises(ConfigError, match=f"'{opt}' training option"):
        tiny_config(Path("."), **{opt: value})


def test_dropout_and_drop_path_change_training_not_the_served_weights() -> None:
    from skin_core.models.registry import create_model

    plain = create_model("test_efficientnet", num_classes=3)
    reg = create_model("test_efficientnet", num_classes=3, drop_rate=0.3, drop_path_rate=0.2)
    assert reg.drop_rate == pytest.approx(0.3) and plain.drop_rate == 0
    assert any(type(m).__name__ == "DropPath" for m in reg.modules())
    assert not any(type(m).__name__ == "DropPath" for m in plain.modules())
    assert set(reg.state_dict()) == set(plain.state_dict())  # served by a plain network


def test_frozen_mixed_run_resumes_exactly_and_differs_from_the_plain_run(
        tiny, tmp_path: Path, start_weights: Path) -> None:  # noqa: F811 - fixture
    """Manifold mixup + CutMix on cached activations, dropout, stochastic depth, weight
    averaging: a run killed mid-fold and resumed equals the uninterrupted one, and its
    out-of-fold probabilities are not those of the same run without them."""
    cfg = tiny_config(tmp_path, archs=("test_efficientnet",), epochs=3, freeze=1,
                      freeze_views=3, mixup=0.4, cutmix=1.0, drop_rate=0.2,
                      drop_path_rate=0.1, ema=0.9, pretrained=str(start_weights))
    a = assert_resume_is_exact(tiny, tmp_path, cfg)
    # not the unmixed run: the options reach the training loop
    plain = train_run(tiny, out=tmp_path / "plain", config=cfg.replace(
        mixup=0.0, cutmix=0.0, drop_rate=0.0, drop_path_rate=0.0, ema=0.0))
    c = pd.read_csv(plain.oof_path)
    cols = prob_columns("ABC")
    assert np.abs(a[cols].to_numpy() - c[cols].to_numpy()).max() > 1e-3


def test_weight_average_is_the_warmed_up_exponential_average() -> None:
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    avg = WeightAverage(net, 0.9)
    w0 = net[0].weight.detach().clone()
    assert not avg.model.training and not any(p.requires_grad for p in avg.model.parameters())
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].num_batches_tracked.fill_(5)
    avg.update(net, step=0)  # warm-up: d = min(0.9, 1/10) = 0.1
    torch.testing.assert_close(avg.model[0].weight, 0.1 * w0 + 0.9 * (w0 + 1))
    assert int(avg.model[1].num_batches_tracked) == 5  # integer buffers are copied
    before = avg.model[0].weight.detach().clone()
    avg.update(net, step=1000)  # d = 0.9
    torch.testing.assert_close(avg.model[0].weight, 0.9 * before + 0.1 * (w0 + 1))
    other = WeightAverage(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)),
                          0.9)
    other.restore(avg.tensors())  # the checkpoint round trip
    torch.testing.assert_close(other.model[0].weight, avg.model[0].weight)
    assert all(k.startswith("ema.") for k in avg.tensors())


def test_sampling_streams_and_the_loss_corrections_that_follow_them() -> None:
    import torch

    from skin_core.training.losses import (
        class_weights,
        epoch_order,
        logit_adjustment,
        stream_counts,
    )

    labels = np.array([0] * 80 + [1] * 16 + [2] * 4)
    np.testing.assert_allclose(stream_counts(labels, 4), [80, 16, 4, 0])
    np.testing.assert_allclose(stream_counts(labels, 4, "balanced"), [100 / 3] * 3 + [0])
    sq = np.sqrt([80, 16, 4])
    np.testing.assert_allclose(stream_counts(labels, 4, "sqrt")[:3], 100 * sq / sq.sum())
    # balanced: nothing left to correct (equal weights, a constant logit shift)
    np.testing.assert_allclose(class_weights(labels, 4, "balanced"), [1, 1, 1, 0])
    adj = logit_adjustment(labels, 4, "balanced")
    np.testing.assert_allclose(adj[:3], np.log(1 / 3))
    np.testing.assert_allclose(class_weights(labels, 4), [100 / 240, 100 / 48, 100 / 12, 0])
    g = torch.Generator().manual_seed(0)
    uni = epoch_order(labels, 4, "uniform", g)
    assert sorted(uni.tolist()) == list(range(100))  # each image once
    draws = np.concatenate([epoch_order(labels, 4, "balanced", g) for _ in range(200)])
    shares = np.bincount(labels[draws], minlength=3) / len(draws)
    np.testing.assert_allclose(shares, 1 / 3, atol=0.01)
    rare = draws[labels[draws] == 2]
    assert set(rare.tolist()) == {96, 97, 98, 99}  # the rare class's own images, recurring
    a = epoch_order(labels, 4, "sqrt", torch.Generator().manual_seed(5))
    b = epoch_order(labels, 4, "sqrt", torch.Generator().manual_seed(5))
    assert np.array_equal(a, b) and len(a) == 100
    with pytest.raises(ConfigError, match="'sampling' training option"):
        tiny_config(Path("."), sampling="oversample")


def test_balanced_sampling_trains_and_resumes_exactly(tiny, tmp_path: Path) -> None:
    assert_resume_is_exact(tiny, tmp_path, tiny_config(tmp_path, epochs=3, sampling="balanced"))
