"""Mixup inference in training: the λ pairs, the 2x2 solve and the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vicinal import MixConfig
from vicinal.torch.mit import (
    MIT_ALPHA,
    MIT_MARGIN,
    MixupInferenceTraining,
    mit_config,
    mit_lambdas,
    recover_logits,
)

C = 5


def _affine(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, C)).to(dtype)


def _batch(b: int = 16, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(b, 3, 4, generator=g, dtype=dtype), torch.randint(0, C, (b,), generator=g)


@pytest.mark.parametrize("granularity", ["batch", "elem"])
@pytest.mark.parametrize("pairing", ["permute", "roll", "flip", "derange"])
def test_an_affine_model_gets_back_the_logits_of_the_raw_samples(granularity: str, pairing: str) -> None:
    net, (x, y) = _affine(), _batch()
    config = MixConfig("mixup", alpha=1.0, granularity=granularity, pairing=pairing)  # type: ignore[arg-type]
    mit = MixupInferenceTraining(config, num_classes=C, seed=3)
    for step in range(4):
        out = mit(net, x, y, step=step)
        batch = mit.mix(x, y, step=step)
        with torch.no_grad():
            raw, raw_partner = net(x), net(x[batch.partners])
        # float64 model and inputs: the solve is exact up to float64 rounding.
        assert torch.allclose(out.logits, raw, rtol=0, atol=1e-12)
        assert torch.allclose(out.logits_partner, raw_partner, rtol=0, atol=1e-12)
        if granularity == "batch":
            assert out.lam1.unique().numel() == 1 and out.lam2.unique().numel() == 1


def test_float32_recovery_is_within_float_precision() -> None:
    net, (x, y) = _affine(torch.float32), _batch(64, torch.float32)
    out = MixupInferenceTraining(num_classes=C, seed=0)(net, x, y, step=0)
    raw = net(x)
    # Condition number <= 1 / margin = 2: a few float32 ulps of the logits' scale.
    assert (out.logits - raw).abs().max() <= 1e-5 * raw.abs().max()


def test_loss_is_the_official_half_and_half_cross_entropy_on_hard_labels() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, C)).double()
    x, y = _batch()
    mit = MixupInferenceTraining(num_classes=C, seed=11)
    out = mit(net, x, y, step=2)
    b = mit.mix(x, y, step=2)
    l1, l2 = float(b.lam1[0]), float(b.lam2[0])
    xb = x[b.partners]
    o1, o2 = net(l1 * x + (1 - l1) * xb), net(l2 * x + (1 - l2) * xb)
    # The official code's form of the solve.
    coef1 = (1 - l1) / (1 - l2)
    out_a = (o1 - coef1 * o2) / (l1 - l2 * coef1)
    coef2 = l2 / l1
    out_b = (o2 - coef2 * o1) / (1 - l2 - (1 - l1) * coef2)
    want = 0.5 * F.cross_entropy(out_a, y) + 0.5 * F.cross_entropy(out_b, y[b.partners])
    assert torch.allclose(out.loss.double(), want, rtol=1e-6)
    assert torch.allclose(out.logits, out_a, atol=1e-10) and torch.allclose(out.logits_partner, out_b, atol=1e-10)
    out.loss.backward()  # differentiable through both forward passes
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_lambda_pairs_satisfy_the_constraints_and_are_exact_in_float32() -> None:
    for alpha, margin in ((0.5, 0.5), (1.0, 0.5), (2.0, 0.3), (1.0, 0.9)):
        for step in range(20):
            l1, l2 = mit_lambdas(mit_config(alpha), margin, 64, seed=step, step=step)
            assert (l1 >= 0.5).all() and (l1 <= 1).all() and (l2 >= 0).all() and (l2 <= 0.5).all()
            assert (l1 - l2 >= margin).all()
            for lam in (l1, l2, 1 - l1, 1 - l2):
                assert np.array_equal(lam.astype(np.float32).astype(np.float64), lam)


def test_lambda_distribution_is_the_rejection_rules_fixed_seed() -> None:
    """α = 1, margin 0.5: λ1 - 0.5 and 0.5 - λ2 are independent U[0, 0.5] conditioned on
    their sum >= 0.5 (uniform on a triangle), so E[λ1] = 0.5 + 2/3·0.5 = 5/6 and E[λ2] = 1/6.
    n = 20,000 pairs: the standard error of either mean is about 0.0008; tolerance 0.005."""
    l1, l2 = mit_lambdas(mit_config(1.0), 0.5, 20_000, seed=0)
    assert abs(l1.mean() - 5 / 6) < 0.005 and abs(l2.mean() - 1 / 6) < 0.005
    assert np.corrcoef(l1, l2)[0, 1] > 0.2  # conditioning couples them (the rule redraws both)


def test_draws_are_a_pure_function_of_seed_epoch_step_rank() -> None:
    args = (mit_config(), 0.5, 8)
    a = mit_lambdas(*args, seed=1, epoch=2, step=3, rank=0)
    assert all(np.array_equal(u, v) for u, v in zip(a, mit_lambdas(*args, seed=1, epoch=2, step=3, rank=0)))
    for other in ({"seed": 2}, {"epoch": 3}, {"step": 4}, {"rank": 1}):
        kw = {"seed": 1, "epoch": 2, "step": 3, "rank": 0, **other}
        assert not np.array_equal(a[0], mit_lambdas(*args, **kw)[0])
    # No concentration: λ1 = 1, λ2 = 0, the two mixes are the samples and their partners.
    l1, l2 = mit_lambdas(MixConfig(alpha=0.0), 0.5, 3, seed=0)
    assert l1.tolist() == [1.0] * 3 and l2.tolist() == [0.0] * 3


def test_counter_and_set_epoch() -> None:
    net, (x, y) = _affine(), _batch()
    mit = MixupInferenceTraining(num_classes=C, seed=0)
    first = mit(net, x, y).loss
    assert mit.step == 1
    with pytest.raises(ValueError, match="logits"):
        mit(lambda t: t.flatten(1), x, y)
    assert mit.step == 1, "a call that raised used up a step"
    assert torch.equal(MixupInferenceTraining(num_classes=C, seed=0)(net, x, y, step=0).loss, first)
    mit.set_epoch(4)
    assert (mit.epoch, mit.step) == (4, 0)


def test_margin_zero_and_other_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match=r"margin must be in \(0, 1\).*singular"):
        MixupInferenceTraining(margin=0)
    for bad in (1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="margin"):
            MixupInferenceTraining(margin=bad)
    with pytest.raises(ValueError, match=r"margin=0.5 with alpha=20.0.*lower the margin or alpha"):
        MixupInferenceTraining(mit_config(20.0))
    with pytest.raises(ValueError, match="method='mixup'"):
        MixupInferenceTraining(MixConfig("cutmix"))
    with pytest.raises(ValueError, match="in-batch partners"):
        MixupInferenceTraining(MixConfig(alpha=1.0, pairing="stream"))
    with pytest.raises(ValueError, match="config.p must be 1"):
        MixupInferenceTraining(MixConfig(alpha=1.0, p=0.5))
    with pytest.raises(ValueError, match="granularity"):
        MixupInferenceTraining(MixConfig(alpha=1.0, granularity="pair", pairing="flip"))
    with pytest.raises(ValueError, match="singular"):
        recover_logits(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0.7, 0.5]), torch.tensor([0.2, 0.5]))
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        recover_logits(torch.zeros(2, 3), torch.zeros(3, 3), 0.8, 0.2)
    assert (MIT_ALPHA, MIT_MARGIN) == (1.0, 0.5)
