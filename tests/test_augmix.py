"""AugMix plans and their application (vicinal.torch.augmix), and the JSD consistency loss."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("kornia")

from PIL import Image, ImageOps  # noqa: E402

from vicinal import MixConfig, MixUp, sample_plan  # noqa: E402
from vicinal.torch.augmix import (  # noqa: E402
    AUGMIX_OPS,
    GEOMETRIC_OPS,
    MAX_DEPTH,
    AugMix,
    AugMixConfig,
    AugMixPlan,
    augmix,
    sample_augmix_plan,
)
from vicinal.torch.losses import jensen_shannon_consistency  # noqa: E402


def _digits(n: int, channels: int = 1, size: int = 28, seed: int = 0) -> torch.Tensor:
    """uint8 (n, C, size, size) rings and bars: digit-like strokes on black."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cx, cy = rng.uniform(0.35 * size, 0.65 * size, (2, n, 1, 1))
    r = rng.uniform(0.18 * size, 0.3 * size, (n, 1, 1))
    ring = np.clip(1.5 - np.abs(np.hypot(xx - cx, yy - cy) - r), 0, 1)
    img = (ring * rng.uniform(150, 255, (n, 1, 1))).astype(np.uint8)[:, None]
    img = np.repeat(img, channels, axis=1)
    if channels == 3:
        img = (img * rng.uniform(0.3, 1.0, (n, 3, 1, 1))).astype(np.uint8)
    return torch.from_numpy(img)


def _single_op_plan(b: int, op: str, magnitude: float) -> AugMixPlan:
    """A plan whose output is ``op(x)``: one chain of one op, weight 1, m = 1."""
    ops = np.full((b, 1, MAX_DEPTH), -1, dtype=np.int64)
    ops[:, 0, 0] = AUGMIX_OPS.index(op)
    mags = np.zeros((b, 1, MAX_DEPTH))
    mags[:, 0, 0] = magnitude
    return AugMixPlan(ops=ops, magnitudes=mags, chain_weights=np.ones((b, 1)), m=np.ones(b))


# --------------------------------------------------------------------------- plans


def test_plan_is_a_pure_function_of_its_counter():
    config = AugMixConfig()
    kw = {"seed": 3, "epoch": 2, "step": 5, "rank": 1, "view": 0}
    a, b = sample_augmix_plan(config, 16, **kw), sample_augmix_plan(config, 16, **kw)
    for name in ("ops", "magnitudes", "chain_weights", "m"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for change in ({"step": 6}, {"epoch": 3}, {"rank": 0}, {"view": 1}, {"seed": 4}):
        other = sample_augmix_plan(config, 16, **{**kw, **change})
        assert not np.array_equal(a.m, other.m), change
        assert not np.array_equal(a.chain_weights, other.chain_weights), change


def test_plan_shapes_weights_and_blend_weight():
    plan = sample_augmix_plan(AugMixConfig(width=4), 500, seed=0, step=1)
    assert plan.ops.shape == plan.magnitudes.shape == (500, 4, MAX_DEPTH)
    assert plan.chain_weights.shape == (500, 4) and plan.m.shape == (500,)
    assert (plan.chain_weights >= 0).all()
    np.testing.assert_allclose(plan.chain_weights.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert ((plan.m >= 0) & (plan.m <= 1)).all()
    # Beta(1, 1) is uniform: mean 1/2 ± 4 standard errors (sd 1/sqrt(12)).
    assert abs(plan.m.mean() - 0.5) < 4 / np.sqrt(12 * 500)
    # Dirichlet(1·1_4): each weight has mean 1/4, sd sqrt(3/80) ≈ 0.19.
    assert np.all(np.abs(plan.chain_weights.mean(axis=0) - 0.25) < 4 * np.sqrt(3 / 80) / np.sqrt(500))


def test_depths_are_uniform_on_1_to_3_and_used_positions_come_first():
    plan = sample_augmix_plan(AugMixConfig(), 3000, seed=0, step=0)
    used = plan.ops >= 0
    depth = used.sum(axis=2)
    # Used positions are a prefix: once a position is unused, all later ones are.
    assert (np.diff(used.astype(int), axis=2) <= 0).all()
    assert (plan.magnitudes[~used] == 0).all()
    counts = np.bincount(depth.ravel(), minlength=4)
    assert counts[0] == 0
    # 9000 chains, 3 depths: chi-square with 2 dof below 13.8 (p = 0.001).
    expected = depth.size / 3
    assert ((counts[1:] - expected) ** 2 / expected).sum() < 13.8
    fixed = sample_augmix_plan(AugMixConfig(depth=2), 50, seed=0, step=0)
    assert ((fixed.ops >= 0).sum(axis=2) == 2).all()


def test_ops_are_drawn_uniformly():
    plan = sample_augmix_plan(AugMixConfig(), 4000, seed=11, step=7)
    ops = plan.ops[plan.ops >= 0]
    counts = np.bincount(ops, minlength=len(AUGMIX_OPS))
    # ~24,000 draws over 9 ops: chi-square with 8 dof below 26.1 (p = 0.001).
    expected = ops.size / len(AUGMIX_OPS)
    assert ((counts - expected) ** 2 / expected).sum() < 26.1
    subset = sample_augmix_plan(AugMixConfig(ops=("rotate", "equalize")), 100, seed=0, step=0)
    assert set(np.unique(subset.ops[subset.ops >= 0])) == {AUGMIX_OPS.index("rotate"), AUGMIX_OPS.index("equalize")}


def test_magnitudes_follow_severity_and_signs():
    severity = 3
    plan = sample_augmix_plan(AugMixConfig(severity=severity), 4000, seed=2, step=0)
    used = plan.ops >= 0
    mag = plan.magnitudes[used]
    assert (np.abs(mag) >= 0.01).all() and (np.abs(mag) < severity / 10).all()
    geometric = np.isin(plan.ops[used], [AUGMIX_OPS.index(o) for o in GEOMETRIC_OPS])
    assert (mag[~geometric] > 0).all()
    # Geometric signs are fair coins: the fraction negative is 1/2 ± 4 standard errors.
    n = geometric.sum()
    assert abs((mag[geometric] < 0).mean() - 0.5) < 4 * 0.5 / np.sqrt(n)
    # |magnitude| · 10 ~ U(0.1, severity): mean 1.55 ± 4 standard errors.
    sd = (severity - 0.1) / np.sqrt(12)
    assert abs(np.abs(mag).mean() * 10 - (0.1 + severity) / 2) < 4 * sd / np.sqrt(mag.size)


def test_augmix_plan_is_independent_of_the_mixing_plan_of_the_same_step():
    steps = range(2000)
    m = np.array([sample_augmix_plan(AugMixConfig(), 1, seed=0, step=s).m[0] for s in steps])
    lam = np.array([sample_plan(MixConfig(alpha=1.0), 1, seed=0, step=s).lam[0] for s in steps])
    # Same counter in the mixing plan: uncorrelated within 4/sqrt(n).
    assert abs(np.corrcoef(m, lam)[0, 1]) < 4 / np.sqrt(len(m))
    assert not np.any(np.isclose(m, lam, rtol=0, atol=1e-15))


def test_config_is_validated():
    for bad in ({"width": 0}, {"depth": 4}, {"severity": 11}, {"alpha": 0.0}, {"ops": ("blur",)}, {"ops": ()}):
        with pytest.raises(ValueError):
            AugMixConfig(**bad)
    with pytest.raises(ValueError):
        sample_augmix_plan(AugMixConfig(), 4, seed=0, view=256)


# --------------------------------------------------------------------------- application


@pytest.mark.parametrize(("dtype", "channels"), [("uint8", 1), ("uint8", 3), ("float32", 1), ("float32", 3)])
def test_augmix_keeps_shape_dtype_and_range(dtype, channels):
    x = _digits(12, channels)
    if dtype == "float32":
        x = x.float() / 255
    plan = sample_augmix_plan(AugMixConfig(), 12, seed=0, step=0)
    out = augmix(x, plan)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= (255 if dtype == "uint8" else 1.0)
    assert not torch.equal(out, x)  # 12 images with m ~ U(0, 1): some change
    # Same plan, same output; another step, another output.
    assert torch.equal(augmix(x, plan), out)
    assert not torch.equal(augmix(x, sample_augmix_plan(AugMixConfig(), 12, seed=0, step=1)), out)


def test_float64_stays_float64_and_matches_float32():
    x = _digits(6).double() / 255
    plan = sample_augmix_plan(AugMixConfig(), 6, seed=1, step=0)
    out64 = augmix(x, plan)
    assert out64.dtype == torch.float64
    # Quantising ops (posterize, equalize, solarize) may flip a level at a boundary.
    diff = (out64 - augmix(x.float(), plan).double()).abs()
    assert float(diff.mean()) < 1e-3


def test_m_zero_returns_the_input_exactly():
    x = _digits(8, 3)
    plan = sample_augmix_plan(AugMixConfig(), 8, seed=0, step=0)
    identity = AugMixPlan(plan.ops, plan.magnitudes, plan.chain_weights, np.zeros(8))
    assert torch.equal(augmix(x, identity), x)


def test_batched_application_equals_per_image_application():
    x = _digits(16).float() / 255
    plan = sample_augmix_plan(AugMixConfig(), 16, seed=5, step=2)
    batched = augmix(x, plan)
    for i in (0, 7, 15):
        alone = augmix(x[i : i + 1], plan.select(i))
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("op", "magnitude", "reference", "tolerance"),
    [
        # PIL's autocontrast truncates its lookup table, we round: at most one level apart.
        ("autocontrast", 0.1, ImageOps.autocontrast, 1),
        ("equalize", 0.1, ImageOps.equalize, 0),
        ("posterize", 0.26, lambda im: ImageOps.posterize(im, 3), 0),  # 4 - int(0.26·4) = 3 bits
        ("solarize", 0.2, lambda im: ImageOps.solarize(im, 256 - 51), 0),  # int(0.2·256) = 51
    ],
)
def test_intensity_ops_match_pillow(op, magnitude, reference, tolerance):
    x = _digits(6, 3, seed=4)
    x[:, :, :4] = 0  # a constant band; and the third image wholly constant (autocontrast leaves it)
    x[2] = 77
    out = augmix(x, _single_op_plan(6, op, magnitude)).numpy()
    for i in range(6):
        expected = np.asarray(reference(Image.fromarray(x[i].permute(1, 2, 0).numpy()))).transpose(2, 0, 1)
        assert np.abs(out[i].astype(int) - expected.astype(int)).max() <= tolerance, i


def test_translations_shift_by_whole_pixels_and_fill_black():
    x = _digits(4)
    # int(0.25 · 28/3) = 2 pixels.
    right = augmix(x, _single_op_plan(4, "translate_x", 0.25))
    assert torch.equal(right[..., 2:], x[..., :-2]) and not right[..., :2].any()
    left = augmix(x, _single_op_plan(4, "translate_x", -0.25))
    assert torch.equal(left[..., :-2], x[..., 2:]) and not left[..., -2:].any()
    down = augmix(x, _single_op_plan(4, "translate_y", 0.25))
    assert torch.equal(down[..., 2:, :], x[..., :-2, :])


def test_geometric_ops_keep_the_image_mass_roughly():
    x = _digits(8).float() / 255  # rings away from the border: little leaves the frame
    for op in ("rotate", "shear_x", "shear_y"):
        out = augmix(x, _single_op_plan(8, op, 0.25))
        assert not torch.equal(out, x), op
        ratio = out.sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))
        assert float((ratio - 1).abs().max()) < 0.1, op


def test_inputs_are_validated():
    plan = sample_augmix_plan(AugMixConfig(), 2, seed=0, step=0)
    with pytest.raises(ValueError):
        augmix(torch.zeros(2, 2, 8, 8), plan)  # two channels
    with pytest.raises(ValueError):
        augmix(torch.zeros(3, 1, 8, 8), plan)  # batch of 3, plan of 2
    with pytest.raises(ValueError):
        augmix(torch.zeros(2, 1, 8, 8, dtype=torch.int32), plan)
    with pytest.raises(TypeError):
        augmix(np.zeros((2, 1, 8, 8), np.uint8), plan)


# --------------------------------------------------------------------------- transform


def test_transform_counts_steps_like_a_mixer():
    x = _digits(8)
    aug = AugMix(AugMixConfig(), seed=9, rank=1)
    first = aug(x)
    assert aug.step == 1
    np.testing.assert_array_equal(first.numpy(), augmix(x, sample_augmix_plan(aug.config, 8, seed=9, rank=1)).numpy())
    second = aug(x)
    assert not torch.equal(first, second)
    assert torch.equal(aug(x, step=0), first) and aug.step == 2  # explicit steps are not counted
    aug.set_epoch(1)
    assert aug.step == 0 and not torch.equal(aug(x), first)
    aug.set_epoch(0)
    assert torch.equal(aug(x), first)


def test_views_are_independent_augmentations_of_one_step():
    x = _digits(8)
    aug = AugMix(seed=0)
    v1, v2 = aug.views(x)
    assert aug.step == 1 and not torch.equal(v1, v2)
    assert torch.equal(v1, aug(x, step=0, view=0)) and torch.equal(v2, aug(x, step=0, view=1))


def test_composes_with_mixup_on_top():
    x, y = _digits(8), torch.arange(8) % 4
    aug, mix = AugMix(seed=0), MixUp(alpha=1.0, num_classes=4, seed=0)
    x_aug = aug(x)
    x_mixed, y_mixed = mix(x_aug.float() / 255, y)
    plan = mix.plan(x_aug, step=0)
    lam = torch.as_tensor(plan.lam, dtype=torch.float32).view(-1, 1, 1, 1)
    partner = x_aug.float()[torch.as_tensor(plan.partners[:, 0])] / 255
    torch.testing.assert_close(x_mixed, lam * x_aug.float() / 255 + (1 - lam) * partner)
    torch.testing.assert_close(y_mixed.sum(dim=1), torch.ones(8))


# --------------------------------------------------------------------------- JSD


def _logits(seed: int, b: int = 6, c: int = 5) -> torch.Tensor:
    return torch.randn(b, c, generator=torch.Generator().manual_seed(seed)) * 3


def test_jsd_is_zero_for_identical_inputs_and_positive_otherwise():
    a = _logits(0)
    assert float(jensen_shannon_consistency(a, a, a)) < 1e-6
    assert float(jensen_shannon_consistency(a, a.clone(), a + 5.0)) < 1e-6  # softmax ignores a shift
    js = float(jensen_shannon_consistency(a, _logits(1), _logits(2)))
    assert 1e-3 < js <= np.log(3)


def test_jsd_matches_the_definition():
    a, b, c = _logits(0).double(), _logits(1).double(), _logits(2).double()
    p = [torch.softmax(t, dim=1) for t in (a, b, c)]
    m = (p[0] + p[1] + p[2]) / 3
    expected = sum((q * (q.log() - m.log())).sum(dim=1) for q in p).mean() / 3
    torch.testing.assert_close(jensen_shannon_consistency(a, b, c).double(), expected, rtol=1e-5, atol=1e-6)


def test_jsd_is_symmetric_in_its_arguments():
    args = (_logits(3), _logits(4), _logits(5))
    values = [float(jensen_shannon_consistency(*perm)) for perm in itertools.permutations(args)]
    np.testing.assert_allclose(values, values[0], rtol=1e-6)


def test_jsd_gradients_are_finite_even_for_extreme_logits():
    # At scale 1e4 softmax probabilities underflow to exactly 0: the reference's
    # kl_div(log M, p) gives NaN gradients there.
    for scale in (1.0, 1e4):
        args = [(_logits(s) * scale).requires_grad_() for s in (6, 7, 8)]
        js = jensen_shannon_consistency(*args)
        js.backward()
        assert torch.isfinite(js) and float(js.detach()) > 0.01
        for t in args:
            assert t.grad is not None and torch.isfinite(t.grad).all()
        if scale == 1.0:  # (saturated softmaxes have zero gradient)
            assert all(float(t.grad.abs().sum()) > 0 for t in args)


def test_jsd_refuses_mismatched_shapes():
    with pytest.raises(ValueError):
        jensen_shannon_consistency(_logits(0), _logits(1), _logits(2, b=5))
    with pytest.raises(ValueError):
        jensen_shannon_consistency(*(torch.zeros(5) for _ in range(3)))


def test_augmix_names_the_nonfinite_samples_before_kornia_sees_them():
    x = torch.rand(5, 3, 8, 8)
    x[3, 1, 2, 2] = float("nan")
    x[4, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"images holds NaN or inf in samples \[3, 4\]"):
        AugMix(seed=0)(x)


def test_augmix_refuses_images_outside_0_1_naming_the_samples():
    x = torch.rand(4, 1, 8, 8)
    x[2] *= 255.0
    with pytest.raises(ValueError, match=r"images must be in \[0, 1\].*samples \[2\]"):
        AugMix(seed=0)(x)
    AugMix(seed=0)(torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8))  # uint8 0-255 is fine
