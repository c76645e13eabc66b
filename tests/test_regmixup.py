"""RegMixup: CE(clean) + η·CE(mixed) on vicinal's plans, one forward of 2B or two of B."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vicinal import MixConfig, MixUp, apply_plan, sample_plan
from vicinal.torch.losses import soft_target_cross_entropy
from vicinal.torch.regmixup import REGMIXUP_ALPHA, RegMixup, regmixup_config

C = 4


def _net(bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(6, 8)]
    if bn:
        layers.append(nn.BatchNorm1d(8))
    return nn.Sequential(*layers, nn.ReLU(), nn.Linear(8, C))


def _batch(b: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.rand(b, 6, generator=g), torch.randint(0, C, (b,), generator=g)


def test_loss_is_clean_ce_plus_eta_times_the_mixed_ce_of_the_plan() -> None:
    net, (x, y) = _net(), _batch()
    reg = RegMixup(eta=0.7, num_classes=C, seed=5)
    for step in range(3):
        out = reg(net, x, y, step=step, epoch=2)
        plan = sample_plan(regmixup_config(), 10, seed=5, epoch=2, step=step)
        x_mixed, y_mixed = apply_plan(plan, x, y, num_classes=C)
        want = F.cross_entropy(net(x), y) + 0.7 * soft_target_cross_entropy(net(x_mixed), y_mixed)
        assert torch.allclose(out.loss, want, rtol=1e-6, atol=1e-7)
        assert torch.allclose(out.logits, net(x), atol=1e-6) and torch.equal(out.targets_mixed, y_mixed)
        # One λ per batch (the official mixup_data), near 0.5 with α = 20.
        assert np.unique(plan.lam).size == 1 and abs(plan.lam[0] - 0.5) < 0.4


def test_official_average_over_2b_is_eta_one_scaled_by_half() -> None:
    """The official step: CE of lam·y_a + (1-lam)·y_b over cat([x, x_mixed]) with y_a = cat([y, y]),
    y_b = cat([y, y[perm]]), averaged over 2B rows."""
    net, (x, y) = _net(), _batch()
    reg = RegMixup(num_classes=C, seed=1)  # eta = 1
    out = reg(net, x, y, step=0)
    plan = sample_plan(regmixup_config(), 10, seed=1, step=0)
    lam, perm = float(plan.lam[0]), torch.from_numpy(plan.partners[:, 0].copy())
    mixed = lam * x + (1 - lam) * x[perm]
    logits = net(torch.cat([x, mixed]))
    ya, yb = torch.cat([y, y]), torch.cat([y, y[perm]])
    official = lam * F.cross_entropy(logits, ya) + (1 - lam) * F.cross_entropy(logits, yb)
    assert torch.allclose(official, 0.5 * out.loss, rtol=1e-5)


def test_concat_runs_one_forward_of_2b_that_batchnorm_sees_whole() -> None:
    x, y = _batch()
    seen: list[int] = []
    net = _net(bn=True)
    net[1].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    one = RegMixup(num_classes=C, seed=0)(net, x, y, step=0)
    assert seen == [20]
    seen.clear()
    net = _net(bn=True)
    net[1].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    two = RegMixup(num_classes=C, seed=0, concat=False)(net, x, y, step=0)
    assert seen == [10, 10]
    # BatchNorm normalises over other rows, so the clean logits differ ...
    assert not torch.allclose(one.logits, two.logits, atol=1e-4)
    # ... and without BatchNorm the two forms are the same loss.
    a = RegMixup(num_classes=C, seed=0)(_net(), x, y, step=0).loss
    b = RegMixup(num_classes=C, seed=0, concat=False)(_net(), x, y, step=0).loss
    assert torch.allclose(a, b, rtol=1e-6)


def test_any_mixer_and_label_smoothing_apply_to_both_halves() -> None:
    net, (x, y) = _net(), _batch()
    mixer = MixUp(alpha=1.0, num_classes=C, label_smoothing=0.1, seed=2)
    out = RegMixup(mixer, eta=2.0)(net, x, y, step=4)
    want_clean = F.one_hot(y, C).float() * 0.9 + 0.1 / C
    assert torch.allclose(out.targets, want_clean)
    x_mixed, y_mixed = mixer(x, y, step=4)
    assert torch.allclose(out.logits_mixed, net(x_mixed), atol=1e-6) and torch.equal(out.targets_mixed, y_mixed)
    want = soft_target_cross_entropy(net(x), want_clean) + 2.0 * soft_target_cross_entropy(net(x_mixed), y_mixed)
    assert torch.allclose(out.loss, want, rtol=1e-6)


def test_same_seed_same_draws_and_the_mixers_counter() -> None:
    x, y = _batch()
    a, b = RegMixup(num_classes=C, seed=9), RegMixup(num_classes=C, seed=9)
    losses = [a(_net(), x, y).loss for _ in range(3)]
    assert a.step == 3 and a.mixer.step == 3 and a.counter is a.mixer.counter
    assert [b(_net(), x, y, step=s).loss for s in range(3)] == losses
    assert b.step == 0  # explicit steps are not counted
    with pytest.raises(ValueError, match="logits"):
        a(lambda t: t.sum(1), x, y)
    assert a.step == 3, "a call that raised used up a step"
    a.set_epoch(1)
    assert (a.epoch, a.step) == (1, 0) and a(_net(), x, y).loss != losses[0]


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="eta"):
        RegMixup(eta=-1.0)
    with pytest.raises(TypeError, match="mixer"):
        RegMixup("mixup")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="targets='dense'"):
        RegMixup(MixUp(num_classes=C, targets="pair"))
    with pytest.raises(ValueError, match="seed belong to the Mixer"):
        RegMixup(MixUp(num_classes=C), seed=3)
    with pytest.raises(TypeError, match="torch tensor"):
        RegMixup(num_classes=C)(_net(), np.zeros((2, 6), np.float32), np.array([0, 1]), step=0)  # type: ignore[arg-type]
    assert REGMIXUP_ALPHA == {"cifar10": 20.0, "cifar100": 10.0}
    assert regmixup_config(10.0) == MixConfig("mixup", alpha=10.0, granularity="batch", pairing="permute")
