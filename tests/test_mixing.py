"""Applying plans: values, labels, dtypes, fast paths against the generic formula."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vicinal import CutMix, KWayMix, MixConfig, MixUp, MixUpOrCutMix, apply_plan, sample_plan
from vicinal.labels import to_soft
from vicinal.mixing import KernelPolicy, plan_to_tensors

MASK_KERNEL = KernelPolicy(region_copy_min_bytes=1 << 40)  # pastes through a (B, H, W) mask
REGION_KERNEL = KernelPolicy(region_copy_min_bytes=0)  # pastes boxes by region copies

CONFIGS = {
    "mixup-elem-roll": MixConfig(alpha=0.4),
    "mixup-batch-flip": MixConfig(alpha=0.4, granularity="batch", pairing="flip"),
    "mixup-pair-permute": MixConfig(alpha=0.4, granularity="pair", pairing="permute"),
    "mixup-derange-p": MixConfig(alpha=1.0, pairing="derange", p=0.5, p_mode="elem"),
    "cutmix": MixConfig("cutmix"),
    "switch": MixConfig("switch", alpha=1.0, pairing="permute"),
    "kway": MixConfig("kway", alpha=0.5, k=3),
    "kway-permute": MixConfig("kway", alpha=0.5, k=4, pairing="permute"),
    "fmix": MixConfig("fmix"),
    "fmix-soft-batch": MixConfig("fmix", fmix_max_soft=0.3, granularity="batch", pairing="flip"),
    "resizemix": MixConfig("resizemix", pairing="permute"),
    "gridmix-pair": MixConfig("gridmix", granularity="pair", pairing="permute"),
    "smoothmix": MixConfig("smoothmix", p=0.7, p_mode="elem"),
    "choice": MixConfig("choice", choices={"mixup": 0.3, "resizemix": 0.3, "fmix": 0.2, "smoothmix": 0.2}),
}


def _sources(plan, x, x_partner=None):  # type: ignore[no-untyped-def]
    """Per-sample list of source arrays (self + partners) for checking bounds."""
    srcs = [x]
    for j in range(plan.num_sources - 1):
        srcs.append(x_partner if plan.source == "stream" else x[plan.partners[:, j]])
    if plan.source_rows is not None:  # ResizeMix: the partner as resampled into its box
        b = np.arange(x.shape[0])[:, None, None]
        resampled = np.moveaxis(srcs[1], 1, -1)[b, plan.source_rows[:, :, None], plan.source_cols[:, None, :]]
        srcs.append(np.moveaxis(resampled, -1, 1))
    return np.stack(srcs)


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(sorted(CONFIGS)),
    b=st.integers(1, 9),
    seed=st.integers(0, 10_000),
    dtype=st.sampled_from(["float32", "float64", "uint8"]),
    backend=st.sampled_from(["numpy", "torch"]),
)
def test_mixed_values_between_sources_and_labels_sum_to_one(name, b, seed, dtype, backend) -> None:  # type: ignore[no-untyped-def]
    cfg = CONFIGS[name]
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(b, 2, 5, 6)).astype(dtype)
    if dtype != "uint8":
        x = x / 255.0
        x = x.astype(dtype)
    y = rng.integers(0, 7, size=b)
    plan = sample_plan(cfg, b, seed=seed, image_size=(5, 6))
    xin, yin = (torch.from_numpy(x), torch.from_numpy(y)) if backend == "torch" else (x, y)
    xm, ym = apply_plan(plan, xin, yin, num_classes=7)
    xm, ym = np.asarray(xm), np.asarray(ym)
    assert xm.dtype == x.dtype and xm.shape == x.shape
    src = _sources(plan, x).astype(np.float64)
    tol = 1e-6 if dtype != "uint8" else 0.0
    assert np.all(xm >= src.min(axis=0) - tol) and np.all(xm <= src.max(axis=0) + tol)
    assert ym.dtype == np.float32 and ym.shape == (b, 7)
    assert np.all(ym >= 0)
    np.testing.assert_allclose(ym.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_lambda_one_returns_input(backend: str) -> None:
    x = np.random.default_rng(0).random((6, 3, 4, 4), dtype=np.float32)
    plan = sample_plan(MixConfig(alpha=1.0), 6, seed=0)
    plan = replace(plan, weights=np.tile([1.0, 0.0], (6, 1)))
    xin = torch.from_numpy(x) if backend == "torch" else x
    xm, ym = apply_plan(plan, xin, np.arange(6) if backend == "numpy" else torch.arange(6), num_classes=6)
    np.testing.assert_array_equal(np.asarray(xm), x)
    np.testing.assert_array_equal(np.asarray(ym), np.eye(6, dtype=np.float32))
    # α = 0 and p = 0 give identity plans too.
    for cfg in (MixConfig(alpha=0.0), MixConfig(alpha=0.5, p=0.0)):
        xm, _ = apply_plan(sample_plan(cfg, 6, seed=1), xin)
        np.testing.assert_array_equal(np.asarray(xm), x)


def test_reference_configuration_matches_formula() -> None:
    # keras.io reference: α = 0.2, one λ per sample, two independently shuffled streams.
    rng = np.random.default_rng(1)
    x1 = rng.random((64, 28, 28, 1), dtype=np.float32)
    x2 = rng.random((64, 28, 28, 1), dtype=np.float32)
    y1 = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 64)]
    y2 = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 64)]
    plan = sample_plan(MixConfig(alpha=0.2, granularity="elem", pairing="stream"), 64, seed=5)
    lam = plan.lam.astype(np.float32)
    x_l, y_l = lam.reshape(64, 1, 1, 1), lam.reshape(64, 1)
    expected_x = x1 * x_l + x2 * (1 - x_l)
    expected_y = y1 * y_l + y2 * (1 - y_l)
    xm, ym = apply_plan(plan, x1, y1, x_partner=x2, y_partner=y2)
    np.testing.assert_array_equal(xm, expected_x)  # the generic path is the formula itself
    np.testing.assert_array_equal(ym, expected_y)
    # The torch fast path uses one fused lerp: equal up to float32 rounding (1 ulp of 1).
    xt, yt = apply_plan(
        plan, torch.from_numpy(x1), torch.from_numpy(y1), x_partner=torch.from_numpy(x2), y_partner=torch.from_numpy(y2)
    )
    np.testing.assert_allclose(xt.numpy(), expected_x, rtol=0, atol=2**-23)
    np.testing.assert_array_equal(yt.numpy(), expected_y)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("b", [1, 2, 5, 16])
def test_torch_paths_match_generic_formula(name: str, b: int) -> None:
    cfg = CONFIGS[name]
    x = torch.rand(b, 3, 7, 5)
    plan = sample_plan(cfg, b, seed=b, image_size=(7, 5))
    expected, _ = apply_plan(plan, x.double().numpy())
    got, _ = apply_plan(plan, x)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=3e-7)
    # in place (out=x) and into a reused buffer give the same values
    buf = torch.full_like(x, float("nan"))
    apply_plan(plan, x, out=buf)
    torch.testing.assert_close(buf, got, rtol=0, atol=0)
    xi = x.clone()
    res, _ = apply_plan(plan, xi, out=xi)
    assert res.data_ptr() == xi.data_ptr()
    torch.testing.assert_close(xi, got, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_tensor_plan_mixes_as_the_host_plan(name: str, dtype: torch.dtype) -> None:
    b = 7
    x = torch.randint(0, 256, (b, 3, 6, 5)).to(dtype)
    y = torch.randint(0, 4, (b,))
    plan = sample_plan(CONFIGS[name], b, seed=5, image_size=(6, 5))
    t = plan_to_tensors(plan)
    assert t.weights.dtype == torch.float32 and t.partners.dtype == torch.int64
    assert (t.boxes is not None) == (plan.boxes is not None)  # boxes even when no row is cut: a fixed structure
    np.testing.assert_array_equal(t.partners.numpy(), plan.partners)
    np.testing.assert_array_equal(t.input_weights.numpy(), plan.input_weights.astype(np.float32))
    want = apply_plan(plan, x, y, num_classes=4)
    got = apply_plan(t, x, y, num_classes=4)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)
    buf = torch.empty_like(x)
    assert apply_plan(t, x, out=buf)[0] is buf
    torch.testing.assert_close(buf, want[0], rtol=0, atol=0)


def test_torch_labels_with_numpy_inputs_and_the_reverse() -> None:
    plan = sample_plan(MixConfig("kway", k=3, pairing="permute"), 6, seed=1)
    x = np.random.default_rng(0).random((6, 4)).astype(np.float32)
    y = np.arange(6) % 3
    ref_x, ref_y = apply_plan(plan, x, y, num_classes=3)
    got_x, got_y = apply_plan(plan, x, torch.from_numpy(y), num_classes=3)
    np.testing.assert_array_equal(got_x, ref_x)
    np.testing.assert_allclose(got_y.numpy(), ref_y, atol=1e-7)
    got_x, got_y = apply_plan(plan, torch.from_numpy(x), y, num_classes=3)
    np.testing.assert_allclose(got_x.numpy(), ref_x, atol=1e-6)
    np.testing.assert_array_equal(got_y, ref_y)


@pytest.mark.parametrize("block_bytes", [1 << 20, 4000])  # one block; blocks of 3 samples
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_uint8_equals_float_path_rounded(name: str, block_bytes: int) -> None:
    x8 = torch.randint(0, 256, (33, 3, 20, 20), dtype=torch.uint8)
    plan = sample_plan(CONFIGS[name], 33, seed=3, image_size=(20, 20))
    got, _ = apply_plan(plan, x8, policy=KernelPolicy(uint8_block_bytes=block_bytes))
    ref, _ = apply_plan(plan, x8.float())
    assert got.dtype == torch.uint8
    torch.testing.assert_close(got, ref.round().to(torch.uint8), rtol=0, atol=0)
    # and the generic (float64 formula) path agrees up to ties at .5
    gen, _ = apply_plan(plan, x8.numpy())
    assert np.mean(np.abs(gen.astype(int) - got.numpy().astype(int)) > 0) < 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_and_layout_preserved(dtype: torch.dtype) -> None:
    x = torch.rand(8, 3, 6, 6).to(dtype).contiguous(memory_format=torch.channels_last)
    xm, ym = MixUp(0.5, num_classes=4)(x, torch.randint(0, 4, (8,)))
    assert xm.dtype == dtype and xm.shape == x.shape and xm.device == x.device
    assert ym.dtype == torch.float32
    ref, _ = MixUp(0.5, num_classes=4)(x.double(), None, step=0)
    tol = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-6
    torch.testing.assert_close(xm.double(), ref, rtol=0, atol=tol)


def test_non_image_features() -> None:
    x = torch.randn(10, 7, 3)  # (B, T, F)
    xm, _ym = MixUp(1.0, num_classes=3)(x, torch.randint(0, 3, (10,)))
    assert xm.shape == x.shape
    plan = MixUp(1.0).plan(x, step=0)
    lam = torch.from_numpy(plan.lam).float().view(-1, 1, 1)
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x.roll(1, 0))


def test_cutmix_lambda_equals_pasted_fraction() -> None:
    b, h, w = 64, 17, 23
    zeros, ones = torch.zeros(b, 2, h, w), torch.ones(b, 2, h, w)
    plan = sample_plan(MixConfig("cutmix", pairing="stream"), b, seed=11, image_size=(h, w))
    xm, ym = apply_plan(
        plan,
        zeros,
        torch.zeros(b, dtype=torch.long),
        x_partner=ones,
        y_partner=torch.ones(b, dtype=torch.long),
        num_classes=2,
    )
    pasted = xm.mean(dim=(1, 2, 3)).double().numpy()
    np.testing.assert_allclose(pasted, plan.weights[:, 1], atol=1e-12)
    np.testing.assert_allclose(ym[:, 1].numpy(), pasted, atol=1e-6)
    assert 0 < pasted.mean() < 1


def test_cutmix_channels_last_and_box_location() -> None:
    b, h, w = 4, 9, 11
    x = torch.zeros(b, h, w, 3)
    partner = torch.ones(b, h, w, 3)
    plan = sample_plan(MixConfig("cutmix", pairing="stream"), b, seed=2, image_size=(h, w))
    xm, _ = apply_plan(plan, x, x_partner=partner, data_format="channels_last")
    for i, (top, left, bottom, right) in enumerate(plan.boxes):
        expected = torch.zeros(h, w)
        expected[top:bottom, left:right] = 1
        for c in range(3):
            torch.testing.assert_close(xm[i, :, :, c], expected)


def test_pair_form_and_dense_form_agree() -> None:
    y = torch.randint(0, 5, (12,))
    x = torch.rand(12, 1, 4, 4)
    dense = MixUp(1.0, num_classes=5, seed=3)(x, y, step=0)[1]
    pair = MixUp(1.0, num_classes=5, seed=3, targets="pair")(x, y, step=0)[1]
    assert pair.y_a.dtype == torch.long  # ids stay ids for losses that want them
    recon = pair.lam[:, None] * torch.eye(5)[pair.y_a] + (1 - pair.lam[:, None]) * torch.eye(5)[pair.y_b]
    torch.testing.assert_close(recon, dense)


def test_label_smoothing_commutes_with_mixing() -> None:
    y = torch.randint(0, 10, (32,))
    x = torch.rand(32, 1, 2, 2)
    smoothed_then_mixed = MixUp(0.5, num_classes=10, label_smoothing=0.1)(x, y, step=0)[1]
    mixed = MixUp(0.5, num_classes=10)(x, y, step=0)[1]
    torch.testing.assert_close(smoothed_then_mixed, mixed * 0.9 + 0.01)


def test_soft_label_input() -> None:
    y = torch.softmax(torch.randn(8, 6), dim=1)
    _, ym = MixUp(1.0)(torch.rand(8, 3), y)
    torch.testing.assert_close(ym.sum(1), torch.ones(8))


def test_batch_of_one_is_unchanged() -> None:
    x = torch.rand(1, 1, 5, 5)
    for m in (MixUp(1.0, num_classes=3), CutMix(num_classes=3), KWayMix(num_classes=3), MixUpOrCutMix(num_classes=3)):
        xm, ym = m(x, torch.tensor([2]))
        torch.testing.assert_close(xm, x)
        torch.testing.assert_close(ym, torch.tensor([[0.0, 0.0, 1.0]]))


def test_inputs_not_modified() -> None:
    x = torch.rand(8, 1, 4, 4)
    y = torch.randint(0, 3, (8,))
    x0, y0 = x.clone(), y.clone()
    for m in (MixUp(1.0, num_classes=3), CutMix(num_classes=3), KWayMix(num_classes=3)):
        m(x, y)
        torch.testing.assert_close(x, x0)
        torch.testing.assert_close(y, y0)


def _bad(call, exc, match):  # type: ignore[no-untyped-def]
    with pytest.raises(exc, match=match):
        call()


def test_bad_inputs_raise_and_change_nothing() -> None:
    x = torch.rand(4, 1, 6, 6)
    x0 = x.clone()
    mix = MixUp(0.2, num_classes=3)
    _bad(lambda: mix(x, torch.tensor([0, 1, 2, 3])), ValueError, r"class ids in \[0, 3\]")
    _bad(lambda: mix(x, torch.tensor([0, -1, 2, 1])), ValueError, "class ids")
    _bad(lambda: MixUp(0.2)(x, torch.tensor([0, 1, 2, 1])), ValueError, "num_classes is required")
    _bad(lambda: MixUp(0.2)(x, torch.ones(4, 3, dtype=torch.int32).bool()), (TypeError, ValueError), "y")
    _bad(lambda: MixUp(0.2)(x, torch.ones(4, 3, 1)), ValueError, r"\(B, C\)")
    _bad(lambda: mix(x, torch.tensor([0, 1, 2])), ValueError, "same batch size")
    _bad(lambda: mix(torch.rand(0, 1, 6, 6), torch.zeros(0, dtype=torch.long)), ValueError, "empty batch")
    _bad(lambda: CutMix(num_classes=3)(torch.rand(4, 6), torch.tensor([0, 1, 2, 1])), ValueError, "spatial")
    _bad(lambda: MixUp(0.2, num_classes=3, pairing="stream")(x, torch.tensor([0, 1, 2, 1])), ValueError, "x_partner")
    _bad(lambda: mix(x, torch.tensor([0, 1, 2, 1]), out=torch.empty(4, 1, 6, 5)), ValueError, "out must match")
    _bad(lambda: mix(x.int(), None), TypeError, "uint8")
    _bad(lambda: apply_plan("plan", x), TypeError, "plan must be")
    _bad(lambda: apply_plan(sample_plan(MixConfig(), 3, seed=0), x), ValueError, "batch_size=3")
    _bad(lambda: MixUp(-1.0), ValueError, "alpha")
    _bad(lambda: MixUp(0.2, p=2.0), ValueError, "p must")
    _bad(lambda: KWayMix(k=1), ValueError, "k must")
    _bad(lambda: to_soft(np.array([0.5, 0.5]), 2), ValueError, r"\(B, C\)")
    torch.testing.assert_close(x, x0)


# --------------------------------------------------------------------------- fast paths


def _reference_cutmix(plan, x, x_partner=None, channels_last=False):  # type: ignore[no-untyped-def]
    """The textbook CutMix of ``plan``: each sample, its partner's box pasted over it."""
    ref = x.clone()
    src = x if x_partner is None else x_partner
    for i, (top, left, bottom, right) in enumerate(plan.boxes.tolist()):
        p = int(plan.partners[i, 0])
        if channels_last:
            ref[i, top:bottom, left:right, :] = src[p, top:bottom, left:right, :]
        else:
            ref[i, ..., top:bottom, left:right] = src[p, ..., top:bottom, left:right]
    return ref


@pytest.mark.parametrize("pairing", ["roll", "flip", "permute", "stream"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "memory-channels-last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_box_paste_path_equals_the_formula_and_the_mask_path(pairing: str, layout: str, dtype: torch.dtype) -> None:
    b, h, w = 9, 12, 10
    gen = torch.Generator().manual_seed(1)
    shape = (b, h, w, 3) if layout == "nhwc" else (b, 3, h, w)
    x = (torch.rand(shape, generator=gen) * 255).to(dtype)
    if layout == "memory-channels-last":
        x = x.contiguous(memory_format=torch.channels_last)
    x2 = (torch.rand(shape, generator=gen) * 255).to(dtype) if pairing == "stream" else None
    data_format = "channels_last" if layout == "nhwc" else "channels_first"
    plan = sample_plan(MixConfig("cutmix", pairing=pairing), b, seed=4, image_size=(h, w))
    ref = _reference_cutmix(plan, x, x2, channels_last=layout == "nhwc")
    kw = dict(x_partner=x2, data_format=data_format)
    masked, _ = apply_plan(plan, x, policy=MASK_KERNEL, **kw)
    got, _ = apply_plan(plan, x, policy=REGION_KERNEL, **kw)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    torch.testing.assert_close(got, masked, rtol=0, atol=0)
    assert got.is_contiguous(memory_format=torch.channels_last) == x.is_contiguous(memory_format=torch.channels_last)
    # out= a buffer, in place, and the tensor plan
    buf = torch.empty_like(x)
    assert apply_plan(plan, x, out=buf, policy=REGION_KERNEL, **kw)[0] is buf
    torch.testing.assert_close(buf, ref, rtol=0, atol=0)
    inplace = x.clone()
    apply_plan(plan, inplace, out=inplace, policy=REGION_KERNEL, **kw)
    torch.testing.assert_close(inplace, ref, rtol=0, atol=0)
    torch.testing.assert_close(apply_plan(plan_to_tensors(plan), x, **kw)[0], ref, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("pairing", ["roll", "permute"])
def test_box_paste_path_blends_the_switch_rows_as_the_mask_path(dtype: torch.dtype, pairing: str) -> None:
    x = (torch.rand(16, 3, 8, 8) * 255).to(dtype)
    y = torch.randint(0, 4, (16,))
    plan = sample_plan(MixConfig("switch", alpha=1.0, pairing=pairing), 16, seed=2, image_size=(8, 8))
    assert plan.has_cut and not plan.cut.all()  # type: ignore[union-attr]
    masked, y_masked = apply_plan(plan, x, y, num_classes=4, policy=MASK_KERNEL)
    got, y_got = apply_plan(plan, x, y, num_classes=4, policy=REGION_KERNEL)
    torch.testing.assert_close(got, masked, rtol=0, atol=0)
    torch.testing.assert_close(y_got, y_masked, rtol=0, atol=0)
    inplace = x.clone()
    apply_plan(plan, inplace, out=inplace, policy=REGION_KERNEL)
    torch.testing.assert_close(inplace, masked, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.37])
@pytest.mark.parametrize("targets", ["dense", "pair"])
@pytest.mark.parametrize("id_dtype", [torch.int64, torch.int32, torch.uint8])
def test_host_label_path_equals_the_torch_path(name: str, eps: float, targets: str, id_dtype: torch.dtype) -> None:
    # validate=True mixes CPU class ids in NumPy; validate=False keeps the torch ops.
    if targets == "pair" and CONFIGS[name].num_sources != 2:
        return
    y = torch.randint(0, 7, (13,)).to(id_dtype)
    x = torch.rand(13, 3, 6, 6)
    plan = sample_plan(CONFIGS[name], 13, seed=5, image_size=(6, 6))
    kw = dict(num_classes=7, label_smoothing=eps, targets=targets)
    _, fast = apply_plan(plan, x, y, **kw)
    _, ref = apply_plan(plan, x, y, validate=False, **kw)
    if targets == "dense":
        assert fast.dtype == torch.float32
        torch.testing.assert_close(fast, ref, rtol=0, atol=0)
    else:
        for a, b in zip((fast.y_a, fast.y_b, fast.lam), (ref.y_a, ref.y_b, ref.lam)):
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_host_label_path_with_a_second_stream_and_bad_ids() -> None:
    x, x2 = torch.rand(8, 5), torch.rand(8, 5)
    y, y2 = torch.randint(0, 3, (8,)), torch.randint(0, 3, (8,))
    plan = sample_plan(MixConfig(pairing="stream"), 8, seed=0)
    _, fast = apply_plan(plan, x, y, num_classes=3, x_partner=x2, y_partner=y2)
    _, ref = apply_plan(plan, x, y, num_classes=3, x_partner=x2, y_partner=y2, validate=False)
    torch.testing.assert_close(fast, ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"y_partner holds class ids in \[0, 3\]"):
        apply_plan(plan, x, y, num_classes=3, x_partner=x2, y_partner=torch.tensor([3] + [0] * 7))
    with pytest.raises(ValueError, match="num_classes is required"):
        apply_plan(plan, x, y, x_partner=x2, y_partner=y2)


@pytest.mark.parametrize("pairing", ["roll", "permute", "stream"])
def test_uint8_roll_blocks_wrap_around(pairing: str) -> None:
    # Blocks of 2 samples: the first block's partners wrap to the end of the batch.
    blocks = KernelPolicy(uint8_block_bytes=2 * 3 * 5 * 5)
    x8 = torch.randint(0, 256, (7, 3, 5, 5), dtype=torch.uint8)
    x8p = torch.randint(0, 256, (7, 3, 5, 5), dtype=torch.uint8) if pairing == "stream" else None
    plan = sample_plan(MixConfig(alpha=1.0, pairing=pairing), 7, seed=8)
    got, _ = apply_plan(plan, x8, x_partner=x8p, policy=blocks)
    ref, _ = apply_plan(plan, x8.float(), x_partner=None if x8p is None else x8p.float())
    torch.testing.assert_close(got, ref.round().to(torch.uint8), rtol=0, atol=0)
    inplace = x8.clone()
    apply_plan(plan, inplace, x_partner=x8p, out=inplace, policy=blocks)
    torch.testing.assert_close(inplace, got, rtol=0, atol=0)
