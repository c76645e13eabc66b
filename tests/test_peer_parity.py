"""vicinal against the published formulas of timm's Mixup and torchvision's v2 MixUp and
CutMix (neither can be installed beside the pinned CPU torch): the expected outputs are
computed here from those formulas, on the same λ and boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vicinal import MixConfig, Mixer, MixPlan, apply_plan, sample_plan

B, C, H, W, NUM_CLASSES = 8, 3, 12, 10, 5


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(B, C, H, W, generator=g, dtype=torch.float64), torch.randint(0, NUM_CLASSES, (B,), generator=g)


def _timm_target(y: torch.Tensor, lam: torch.Tensor, smoothing: float) -> torch.Tensor:
    """timm's mixup_target: smoothed one-hot of y and of y.flip(0), weighted by lam."""
    off = smoothing / NUM_CLASSES
    on = 1.0 - smoothing + off
    y1 = F.one_hot(y, NUM_CLASSES).double() * (on - off) + off
    y2 = F.one_hot(y.flip(0), NUM_CLASSES).double() * (on - off) + off
    lam = lam.view(-1, 1)
    return y1 * lam + y2 * (1 - lam)


def test_timm_batch_mixup_equals_its_formula() -> None:
    x, y = _batch()
    mix = Mixer.from_timm(mixup_alpha=0.8, num_classes=NUM_CLASSES, seed=3)
    plan = mix.plan(x, step=0)
    lam = float(plan.lam[0])
    assert np.all(plan.lam == lam)  # one λ per batch
    xm, ym = mix(x, y, step=0)
    torch.testing.assert_close(xm, x * lam + x.flip(0) * (1 - lam))
    torch.testing.assert_close(ym.double(), _timm_target(y, torch.full((B,), lam, dtype=torch.float64), 0.1))


@pytest.mark.parametrize("correct_lam", [True, False])
def test_timm_cutmix_equals_its_formula(correct_lam: bool) -> None:
    x, y = _batch()
    mix = Mixer.from_timm(mixup_alpha=0.0, cutmix_alpha=1.0, correct_lam=correct_lam, num_classes=NUM_CLASSES, seed=4)
    for step in range(20):
        plan = mix.plan(x, step=step)
        top, left, bottom, right = (int(v) for v in plan.boxes[0])
        expected = x.clone()
        expected[:, :, top:bottom, left:right] = x.flip(0)[:, :, top:bottom, left:right]  # timm's paste
        xm, ym = mix(x, y, step=step)
        torch.testing.assert_close(xm, expected)
        area_lam = 1 - (bottom - top) * (right - left) / (H * W)
        lam = plan.lam[0]
        if correct_lam:
            assert lam == pytest.approx(area_lam)
        torch.testing.assert_close(ym.double(), _timm_target(y, torch.full((B,), float(lam), dtype=torch.float64), 0.1))
    # without the correction the label keeps the sampled λ, which differs from the clipped box's area
    lams = [mix.plan(x, step=s).lam[0] for s in range(20)]
    areas = [
        1 - np.prod(np.diff(mix.plan(x, step=s).boxes[0].reshape(2, 2)[[0, 1]][:, ::-1].T, axis=0)) for s in range(20)
    ]
    assert correct_lam or any(abs(a - b) > 1e-9 for a, b in zip(lams, areas))


def test_timm_cutmix_minmax_draws_sides_in_range_and_corrects_lam() -> None:
    x, _ = _batch()
    mix = Mixer.from_timm(mixup_alpha=0.0, cutmix_minmax=(0.2, 0.6), correct_lam=False, num_classes=NUM_CLASSES)
    for step in range(50):
        plan = mix.plan(x, step=step)
        top, left, bottom, right = plan.boxes[0]
        assert int(H * 0.2) <= bottom - top < int(H * 0.6) and int(W * 0.2) <= right - left < int(W * 0.6)
        assert top >= 0 and bottom <= H and left >= 0 and right <= W
        assert plan.lam[0] == pytest.approx(1 - (bottom - top) * (right - left) / (H * W))


def test_timm_elem_mode_tosses_prob_per_sample() -> None:
    # 4,000 samples, prob 0.3: the mixed fraction is within 4 standard errors of 0.3.
    config = Mixer.from_timm(mixup_alpha=1.0, prob=0.3, mode="elem", num_classes=NUM_CLASSES).config
    plan = sample_plan(config, 4000, seed=0)
    mixed = np.mean(plan.lam < 1.0)
    assert abs(mixed - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 4000)
    assert len(np.unique(plan.lam[plan.lam < 1])) > 1000  # one λ per sample


def test_timm_pair_mode_equals_its_formula() -> None:
    """timm's pair mode: x[i] = x[i]·λ + x[j]·(1-λ) and x[j] = x[j]·λ + x[i]·(1-λ), j = B-1-i."""
    x, y = _batch()
    mix = Mixer.from_timm(mixup_alpha=1.0, mode="pair", num_classes=NUM_CLASSES, label_smoothing=0.0)
    plan = mix.plan(x, step=0)
    lam = torch.from_numpy(plan.lam)
    np.testing.assert_array_equal(plan.lam, plan.lam[::-1])  # a pair shares its λ
    assert len(np.unique(plan.lam)) == B // 2
    xm, ym = mix(x, y, step=0)
    torch.testing.assert_close(xm, x * lam.view(-1, 1, 1, 1) + x.flip(0) * (1 - lam.view(-1, 1, 1, 1)))
    torch.testing.assert_close(ym.double(), _timm_target(y, lam, 0.0))


def test_off_epoch_and_enabled_switch_mixing_off() -> None:
    x, y = _batch()
    mix = Mixer.from_timm(mixup_alpha=1.0, num_classes=NUM_CLASSES, off_epoch=2)
    mixed, _ = mix(x, y, step=0, epoch=1)
    assert not torch.equal(mixed, x)
    plain, targets = mix(x, y, step=0, epoch=2)
    torch.testing.assert_close(plain, x)
    torch.testing.assert_close(targets.double(), _timm_target(y, torch.ones(B, dtype=torch.float64), 0.1))
    mix.enabled = False
    torch.testing.assert_close(mix(x, y, step=0, epoch=0)[0], x)


def test_from_timm_refuses_no_mixing() -> None:
    with pytest.raises(ValueError, match="mixup_alpha > 0"):
        Mixer.from_timm(mixup_alpha=0.0, cutmix_alpha=0.0)
    with pytest.raises(ValueError, match="mode"):
        Mixer.from_timm(mode="global")
    with pytest.raises(ValueError, match="cutmix_minmax"):
        MixConfig("cutmix", cutmix_minmax=(0.6, 0.2))


def test_torchvision_v2_mixup_equals_its_formula() -> None:
    """torchvision: one λ ~ Beta(α, α) per batch, partner = batch.roll(1, 0)."""
    x, y = _batch()
    config = MixConfig("mixup", alpha=1.0, granularity="batch", pairing="roll")
    plan = sample_plan(config, B, seed=5)
    lam = float(plan.lam[0])
    xm, ym = apply_plan(plan, x, y, num_classes=NUM_CLASSES)
    torch.testing.assert_close(xm, x.mul(lam).add(x.roll(1, 0).mul(1 - lam)))
    onehot = F.one_hot(y, NUM_CLASSES).double()
    torch.testing.assert_close(ym.double(), onehot.mul(lam).add(onehot.roll(1, 0).mul(1 - lam)))


def test_torchvision_v2_cutmix_box_through_a_hand_built_plan() -> None:
    """torchvision's box (centre uniform, half-sides int(r·W), int(r·H), r = sqrt(1-λ)/2,
    so its sides are even) through apply_plan equals torchvision's formula."""
    x, y = _batch()
    rng = np.random.default_rng(0)
    lam0 = 0.55
    r_x, r_y = int(rng.integers(W)), int(rng.integers(H))
    r = 0.5 * np.sqrt(1.0 - lam0)
    half_w, half_h = int(r * W), int(r * H)
    x1, y1 = max(r_x - half_w, 0), max(r_y - half_h, 0)
    x2, y2 = min(r_x + half_w, W), min(r_y + half_h, H)
    lam = 1.0 - (x2 - x1) * (y2 - y1) / (W * H)
    plan = MixPlan(
        weights=np.tile([lam, 1 - lam], (B, 1)),
        partners=((np.arange(B) - 1) % B)[:, None],
        shift=(1,),
        cut=np.ones(B, dtype=bool),
        boxes=np.tile([y1, x1, y2, x2], (B, 1)),
        image_size=(H, W),
    )
    xm, ym = apply_plan(plan, x, y, num_classes=NUM_CLASSES)
    expected = x.clone()
    expected[..., y1:y2, x1:x2] = x.roll(1, 0)[..., y1:y2, x1:x2]
    torch.testing.assert_close(xm, expected)
    onehot = F.one_hot(y, NUM_CLASSES).double()
    torch.testing.assert_close(ym.double(), onehot.mul(lam).add(onehot.roll(1, 0).mul(1 - lam)))
