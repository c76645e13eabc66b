"""The mask family (FMix, ResizeMix, GridMix, SmoothMix, SaliencyMix) and the method
choice, tested on their contracts: label weights equal the rendered paste's exact mean,
every kernel equals the reference formula, pastes are what the papers say."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from vicinal import MixConfig, apply_plan, sample_plan
from vicinal.mixing import KernelPolicy, place_boxes, plan_arrays, plan_to_tensors
from vicinal.transforms import FMix, GridMix, MixUpOrCutMix, RandomMethod, ResizeMix, SaliencyMix, SmoothMix

MASK_KERNEL = KernelPolicy(region_copy_min_bytes=1 << 40)
REGION_KERNEL = KernelPolicy(region_copy_min_bytes=0)

PASTE_CONFIGS = {
    "cutmix": MixConfig("cutmix"),
    "fmix": MixConfig("fmix"),
    "fmix-soft": MixConfig("fmix", fmix_max_soft=0.2),
    "resizemix": MixConfig("resizemix"),
    "gridmix": MixConfig("gridmix"),
    "smoothmix": MixConfig("smoothmix"),
    "smoothmix-square": MixConfig("smoothmix", smooth_shape="square"),
    "choice": MixConfig("choice", choices={"cutmix": 0.25, "resizemix": 0.25, "fmix": 0.25, "smoothmix": 0.25}),
}


def _rendered(plan, h: int, w: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """float64 (B, H, W): the partner's pixel weight the plan pastes, rendered."""
    m = np.zeros((plan.batch_size, h, w))
    if plan.boxes is not None:
        for i, (t, left, b, r) in enumerate(plan.boxes.tolist()):
            m[i, t:b, left:r] = 1.0
    if plan.masks is not None:
        m = np.maximum(m, plan.masks.astype(np.float64))
    return m


@pytest.mark.parametrize("name", sorted(PASTE_CONFIGS))
@pytest.mark.parametrize("size", [(28, 28), (17, 31), (5, 3)])
def test_label_weight_is_the_exact_mean_of_the_rendered_paste(name: str, size: tuple[int, int]) -> None:
    plan = sample_plan(PASTE_CONFIGS[name], 33, seed=4, step=2, image_size=size)
    assert plan.cut is not None and plan.cut.all()
    m = _rendered(plan, *size)
    np.testing.assert_allclose(plan.weights[:, 1], m.reshape(33, -1).mean(axis=1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(plan.weights.sum(axis=1), 1.0, atol=1e-12)
    assert plan.input_weights[:, 0].tolist() == [1.0] * 33  # pasted rows are not blended


@pytest.mark.parametrize("name", sorted(PASTE_CONFIGS))
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "grey"])
@pytest.mark.parametrize("b", [1, 6])
def test_every_kernel_equals_the_reference(name: str, layout: str, b: int) -> None:
    """The NumPy reference against the torch kernels: the batched mask kernel, the region
    copies, out= a buffer, in place, the tensor plan, autograd and uint8."""
    h, w = 9, 7
    shape = {"nchw": (b, 3, h, w), "nhwc": (b, h, w, 3), "grey": (b, h, w)}[layout]
    fmt = "channels_last" if layout == "nhwc" else "channels_first"
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(shape, generator=gen)
    plan = sample_plan(PASTE_CONFIGS[name], b, seed=9, image_size=(h, w))
    ref, _ = apply_plan(plan, x.double().numpy(), data_format=fmt)
    outs = {
        "mask": apply_plan(plan, x, data_format=fmt, policy=MASK_KERNEL)[0],
        "region": apply_plan(plan, x, data_format=fmt, policy=REGION_KERNEL)[0],
        "tensors": apply_plan(plan_to_tensors(plan), x, data_format=fmt)[0],
        "grad": apply_plan(plan, x.clone().requires_grad_(True), data_format=fmt)[0].detach(),
    }
    buf = torch.empty_like(x)
    outs["out"] = apply_plan(plan, x, out=buf, data_format=fmt, policy=REGION_KERNEL)[0]
    inplace = x.clone()
    outs["in-place"] = apply_plan(plan, inplace, out=inplace, data_format=fmt, policy=REGION_KERNEL)[0]
    for kernel, got in outs.items():
        np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=3e-7, err_msg=kernel)
    x8 = (x * 255).to(torch.uint8)
    got8 = apply_plan(plan, x8, data_format=fmt)[0]
    ref8 = apply_plan(plan, x8.numpy(), data_format=fmt)[0]
    assert got8.dtype == torch.uint8
    assert np.mean(got8.numpy() != ref8) < 2e-2  # ties at .5 only (float32 vs float64)
    assert np.abs(got8.numpy().astype(int) - ref8).max() <= 1


@pytest.mark.parametrize("name", ["fmix-soft", "smoothmix", "resizemix"])
def test_gradients_flow_through_soft_and_resampled_pastes(name: str) -> None:
    plan = plan_to_tensors(sample_plan(PASTE_CONFIGS[name], 3, seed=1, image_size=(4, 5)))
    x = torch.rand(3, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: apply_plan(plan, a)[0], (x,))


def test_smoothmix_gives_the_mask_weight_to_the_partner() -> None:
    """A mask G ≡ 1 (infinitely wide blob) is the partner everywhere: the output is the
    partner and so is the target. An implementation that blends x·(1-G) + x[π]·G but
    gives mean(G) to the anchor's label fails this."""
    config = MixConfig("smoothmix", smooth_sigma=(1e6, 1e6), pairing="flip")
    x = torch.rand(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    xm, ym = apply_plan(sample_plan(config, 4, seed=0, image_size=(8, 8)), x, y, num_classes=4)
    torch.testing.assert_close(xm, x.flip(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(ym, torch.eye(4).flip(0), atol=1e-6, rtol=0)


def test_resizemix_pastes_the_whole_partner_shrunk_inside_the_image() -> None:
    h, w = 40, 30
    n = 4000
    plan = sample_plan(MixConfig("resizemix"), n, seed=2, image_size=(h, w))
    top, left, bottom, right = plan.boxes.T  # type: ignore[union-attr]
    assert (top >= 0).all() and (left >= 0).all() and (bottom <= h).all() and (right <= w).all()
    scale = (bottom - top) / h
    assert scale.min() >= 0.1 - 1 / h and scale.max() <= 0.8
    # τ ~ U(0.1, 0.8): the side fraction floor(τ·H)/H is uniform within 1/H (KS test, p > 0.001)
    assert stats.kstest(scale + 0.5 / h, stats.uniform(0.1, 0.7).cdf).statistic < 1.5 / h + 0.03
    # the pasted image is the whole partner: its corners land on the box's corners
    x = torch.arange(2 * h * w, dtype=torch.float32).reshape(2, 1, h, w)
    p2 = sample_plan(MixConfig("resizemix", pairing="flip"), 2, seed=5, image_size=(h, w))
    out, _ = apply_plan(p2, x)
    t, lft, b, r = p2.boxes[0].tolist()  # type: ignore[union-attr]
    assert out[0, 0, t, lft] == x[1, 0, 0, 0]
    assert out[0, 0, t, lft + 1] != out[0, 0, t, lft] or (r - lft) < w  # resampled, not cropped
    np.testing.assert_allclose(p2.weights[0, 1], (b - t) * (r - lft) / (h * w))


def test_saliencymix_centres_its_box_on_the_partner_blob() -> None:
    h, w = 32, 40
    yy, xx = np.mgrid[0:h, 0:w]
    centres = [(8, 10), (20, 30), (25, 6), (5, 33)]
    images = np.stack([np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0) for cy, cx in centres])[:, None]
    images = images + 0.01 * np.random.default_rng(0).random(images.shape)
    mixer = SaliencyMix(pairing="flip", num_classes=4, seed=3)
    plan = mixer.plan(images.astype(np.float32), step=0)
    assert plan.is_placed
    for i, (top, left, bottom, right) in enumerate(plan.boxes.tolist()):  # type: ignore[union-attr]
        cy, cx = centres[3 - i]  # flip: the partner of row i is row 3 - i
        assert top <= cy < bottom and left <= cx < right
    m = _rendered(plan, h, w)
    np.testing.assert_allclose(plan.weights[:, 1], m.reshape(4, -1).mean(axis=1), atol=1e-12)
    # an unplaced plan is refused by name
    raw = sample_plan(MixConfig("saliencymix"), 4, seed=0, image_size=(h, w))
    with pytest.raises(ValueError, match="place_boxes"):
        apply_plan(raw, images)
    assert place_boxes(raw, images).is_placed


def test_choice_frequencies_match_their_probabilities() -> None:
    probs = {"mixup": 0.5, "cutmix": 0.3, "gridmix": 0.2}
    config = MixConfig("choice", choices=probs)
    n, counts = 0, np.zeros(3)
    for step in range(40):
        plan = sample_plan(config, 100, seed=1, step=step, image_size=(12, 12))
        boxes = plan.boxes.any(axis=1)  # type: ignore[union-attr]
        counts += [(~plan.cut).sum(), boxes.sum(), (plan.cut & ~boxes).sum()]  # type: ignore[operator]
        n += 100
    # chi-square goodness of fit at a fixed seed
    assert stats.chisquare(counts, np.array(list(probs.values())) * n).pvalue > 1e-3
    # per batch: every row of a batch uses the same method
    per_batch = MixConfig("choice", choices=probs, choice_mode="batch")
    for step in range(10):
        plan = sample_plan(per_batch, 16, seed=2, step=step, image_size=(12, 12))
        assert len(set(plan.cut.tolist())) == 1  # type: ignore[union-attr]


def test_switch_is_the_two_method_choice() -> None:
    """MixUpOrCutMix keeps its draws and equals the choice (cutmix p, mixup 1-p)."""
    switch = MixConfig("switch", alpha=0.4, switch_prob=0.3)
    choice = MixConfig("choice", alpha=0.4, choices=(("cutmix", 0.3), ("mixup", 0.7)))
    for step in range(5):
        a = sample_plan(switch, 20, seed=7, step=step, image_size=(10, 12))
        b = sample_plan(choice, 20, seed=7, step=step, image_size=(10, 12))
        for key in ("weights", "partners", "boxes"):
            np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
        np.testing.assert_array_equal(a.cut, b.cut)
    assert MixUpOrCutMix(0.4, switch_prob=0.3).config.methods == ("mixup", "cutmix")


def test_transforms_and_collate_take_every_method() -> None:
    from torch.utils.data import TensorDataset

    from vicinal.torch.collate import mixing_loader

    x = torch.rand(24, 3, 16, 16)
    y = torch.randint(0, 5, (24,))
    mixers = [
        FMix(num_classes=5),
        ResizeMix(num_classes=5),
        GridMix(num_classes=5),
        SmoothMix(num_classes=5),
        SaliencyMix(num_classes=5),
        RandomMethod({"mixup": 0.5, "fmix": 0.5}, num_classes=5, alpha=0.4),
    ]
    for mixer in mixers:
        xm, ym = mixer(x, y)
        assert xm.shape == x.shape and ym.shape == (24, 5)
        torch.testing.assert_close(ym.sum(1), torch.ones(24))
        loader = mixing_loader(TensorDataset(x, y), mixer, batch_size=8, num_workers=2, persistent_workers=True)
        for xb, yb in loader:
            assert xb.shape == (8, 3, 16, 16) and yb.shape == (8, 5)


def test_plan_arrays_key_set_depends_on_the_config_only() -> None:
    config = MixConfig("choice", choices={"mixup": 0.5, "resizemix": 0.25, "fmix": 0.25}, p=0.5)
    keys = {tuple(sorted(plan_arrays(sample_plan(config, 4, seed=0, step=s, image_size=(6, 6))))) for s in range(30)}
    assert keys == {("boxes", "input_weights", "masks", "partners", "source_cols", "source_rows", "weights")}


def test_bad_method_parameters_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="choices"):
        MixConfig("choice")
    with pytest.raises(ValueError, match="sum to 1"):
        MixConfig("choice", choices={"mixup": 0.5, "cutmix": 0.4})
    with pytest.raises(ValueError, match="choices method"):
        MixConfig("choice", choices={"kway": 1.0})
    with pytest.raises(ValueError, match="resize_scale"):
        MixConfig("resizemix", resize_scale=(0.0, 0.5))
    with pytest.raises(ValueError, match="grid"):
        MixConfig("gridmix", grid=(3, 2))
    with pytest.raises(ValueError, match="fmix_max_soft"):
        MixConfig("fmix", fmix_max_soft=0.7)
    with pytest.raises(ValueError, match="choices is only used"):
        MixConfig("mixup", choices={"mixup": 1.0})


def test_a_compiled_training_step_with_the_mixer_inside() -> None:
    """Regression: torch.compile(step) with ``mixer(x, y)`` inside crashed (dynamo traced
    the NumPy plan draws). The plan is now drawn eagerly; the compiled step mixes as the
    eager mixer does, advances the counter, and is not recompiled per step."""
    import torch._dynamo

    torch._dynamo.reset()
    for mixer_cls in (FMix, MixUpOrCutMix):
        eager_mixer, compiled_mixer = mixer_cls(num_classes=4, seed=5), mixer_cls(num_classes=4, seed=5)
        x = torch.rand(6, 1, 8, 8)
        y = torch.randint(0, 4, (6,))

        def step(a: torch.Tensor, b: torch.Tensor, mixer=compiled_mixer):  # type: ignore[no-untyped-def]
            xm, ym = mixer(a, b)
            return xm * 2.0, ym

        compiled = torch.compile(step)
        for _ in range(3):
            got_x, got_y = compiled(x, y)
            want_x, want_y = eager_mixer(x, y)
            torch.testing.assert_close(got_x, want_x * 2.0)
            torch.testing.assert_close(got_y, want_y)
        assert compiled_mixer.step == 3
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert frames <= 8  # a few graphs around the eager plan draw, not one per step


def test_label_weight_distributions_follow_the_papers() -> None:
    """FMix with α = 1: λ ~ U(0, 1) and the mask's mean is within 1/N of 1 - λ, so the
    partner weights are uniform (KS test); GridMix's realised share has mean E[1-λ] = 1/2
    (a CLT bound at 5 standard errors)."""
    n = 3000
    fmix = sample_plan(MixConfig("fmix"), n, seed=3, image_size=(16, 16)).weights[:, 1]
    assert stats.kstest(fmix, "uniform").pvalue > 1e-3
    grid = sample_plan(MixConfig("gridmix"), n, seed=4, image_size=(24, 24)).weights[:, 1]
    assert abs(grid.mean() - 0.5) < 5 * grid.std() / np.sqrt(n)


@pytest.mark.parametrize("cls", ["CutMix", "FMix", "GridMix", "SaliencyMix"])
def test_a_bad_alpha_is_named_as_the_user_wrote_it(cls: str) -> None:
    import vicinal.transforms as transforms

    with pytest.raises(ValueError, match=r"^alpha must be a finite real number >= 0, got -1.0"):
        getattr(transforms, cls)(alpha=-1.0, num_classes=3)
