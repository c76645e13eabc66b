"""Mixing in the training loops people write: under autograd, without host syncs, compiled."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from vicinal import CutMix, KWayMix, MixConfig, MixUp, MixUpOrCutMix, apply_plan, sample_plan
from vicinal.mixing import PlanTensors, plan_to_tensors

GRAD_CONFIGS = {
    "mixup-roll": MixConfig(alpha=1.0),
    "mixup-permute": MixConfig(alpha=1.0, pairing="permute"),
    "mixup-pair-flip": MixConfig(alpha=1.0, granularity="pair", pairing="flip"),
    "cutmix": MixConfig("cutmix"),
    "switch": MixConfig("switch", alpha=1.0, pairing="permute"),
    "kway-roll": MixConfig("kway", alpha=1.0, k=3),
    "kway-permute": MixConfig("kway", alpha=1.0, k=4, pairing="permute"),
}
STREAM_CONFIGS = {
    "mixup-stream": MixConfig(alpha=1.0, pairing="stream"),
    "switch-stream": MixConfig("switch", alpha=1.0, pairing="stream"),
}


# --------------------------------------------------------------------------- autograd


def test_mixing_a_layer_output_is_differentiable() -> None:
    """The issue's reproduction: a hidden state that requires grad, MixUp and CutMix."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 16)
    h = layer(torch.rand(8, 16))
    xm, ym = MixUp(num_classes=10)(h, torch.arange(8))
    assert xm.requires_grad and xm.grad_fn is not None
    (xm * torch.arange(16.0)).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    with torch.no_grad():  # the in-place fast path gives the same values
        torch.testing.assert_close(xm.detach(), MixUp(num_classes=10)(h.detach(), torch.arange(8))[0], rtol=0, atol=0)
    assert ym.shape == (8, 10)

    conv_out = torch.nn.Conv2d(3, 4, 3, padding=1)(torch.rand(6, 3, 8, 8))
    for mixer in (CutMix(num_classes=3), MixUpOrCutMix(num_classes=3), KWayMix(num_classes=3)):
        xm, _ = mixer(conv_out, torch.arange(6) % 3)
        assert xm.requires_grad
        xm.sum().backward(retain_graph=True)


@pytest.mark.parametrize("name", sorted(GRAD_CONFIGS))
def test_gradcheck_in_batch_pairings(name: str) -> None:
    b, shape = 5, (2, 4, 3)
    plan = sample_plan(GRAD_CONFIGS[name], b, seed=7, image_size=shape[-2:])
    if plan.cut is not None:
        assert plan.has_cut and 0 < plan.weights[:, 1].max() < 1  # boxes that paste part of an image
    x = torch.rand(b, *shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: apply_plan(plan, x)[0], (x,))
    # and through the tensor plan
    t = plan_to_tensors(plan)
    assert torch.autograd.gradcheck(lambda x: apply_plan(t, x)[0], (x,))


@pytest.mark.parametrize("name", sorted(STREAM_CONFIGS))
def test_gradcheck_stream_pairing_wrt_both_batches(name: str) -> None:
    b, shape = 4, (3, 5)
    plan = sample_plan(STREAM_CONFIGS[name], b, seed=3, image_size=shape)
    x = torch.rand(b, *shape, dtype=torch.float64, requires_grad=True)
    x2 = torch.rand(b, *shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, x2: apply_plan(plan, x, x_partner=x2)[0], (x, x2))


def test_gradient_of_mixup_is_lambda_and_one_minus_lambda() -> None:
    b = 6
    plan = sample_plan(MixConfig(alpha=1.0, pairing="stream"), b, seed=1)
    x = torch.rand(b, 3, requires_grad=True)
    x2 = torch.rand(b, 3, requires_grad=True)
    apply_plan(plan, x, x_partner=x2)[0].sum().backward()
    lam = torch.from_numpy(plan.lam).float()[:, None].expand(b, 3)
    torch.testing.assert_close(x.grad, lam)
    torch.testing.assert_close(x2.grad, 1 - lam)


@pytest.mark.parametrize("name", sorted(GRAD_CONFIGS))
def test_grad_path_equals_in_place_path(name: str) -> None:
    b = 9
    x = torch.rand(b, 3, 7, 5).contiguous(memory_format=torch.channels_last)
    plan = sample_plan(GRAD_CONFIGS[name], b, seed=2, image_size=(7, 5))
    fast, _ = apply_plan(plan, x)
    graded, _ = apply_plan(plan, x.clone().requires_grad_())
    assert graded.requires_grad
    assert graded.is_contiguous(memory_format=torch.channels_last)  # the memory format is kept
    torch.testing.assert_close(graded.detach(), fast, rtol=0, atol=0)


def test_out_with_grad_is_refused_and_allowed_under_no_grad() -> None:
    x = torch.rand(4, 3, requires_grad=True)
    plan = sample_plan(MixConfig(alpha=1.0), 4, seed=0)
    with pytest.raises(ValueError, match=r"out= mixes in place.*requires grad.*out=None"):
        apply_plan(plan, x, out=torch.empty(4, 3))
    with pytest.raises(ValueError, match="out= mixes in place"):
        apply_plan(plan, torch.rand(4, 3), out=torch.empty(4, 3, requires_grad=True))
    with torch.no_grad():
        buf = torch.empty(4, 3)
        res, _ = apply_plan(plan, x, out=buf)
    assert res is buf and not res.requires_grad
    torch.testing.assert_close(res, apply_plan(plan, x)[0].detach(), rtol=0, atol=0)


def test_soft_labels_that_require_grad_get_gradients() -> None:
    y = torch.softmax(torch.randn(6, 4), dim=1).requires_grad_()  # e.g. a teacher's output
    plan = sample_plan(MixConfig(alpha=1.0, pairing="permute"), 6, seed=4)
    _, ym = apply_plan(plan, torch.rand(6, 2), y)
    ym.sum().backward()
    # d(sum)/dy_i = λ_i + (1 - λ_j) for the sample j whose partner is i
    expected = plan.lam.copy()
    np.add.at(expected, plan.partners[:, 0], 1 - plan.lam)
    torch.testing.assert_close(y.grad, torch.from_numpy(expected).float()[:, None].expand(6, 4))


# --------------------------------------------------------------------------- host syncs


_HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy", "nonzero")


@contextmanager
def _count_host_reads(monkeypatch: pytest.MonkeyPatch, *, fail: bool) -> Iterator[list[str]]:
    """Patch every torch.Tensor method that reads values to the host to record (or raise)."""
    calls: list[str] = []
    with monkeypatch.context() as m:
        for name in _HOST_READS:
            original = getattr(torch.Tensor, name)

            def patched(self, *args, __name=name, __original=original, **kwargs):  # type: ignore[no-untyped-def]
                if fail:
                    raise AssertionError(f"host read: Tensor.{__name}")
                calls.append(__name)
                return __original(self, *args, **kwargs)

            m.setattr(torch.Tensor, name, patched)
        yield calls


SYNC_CONFIGS = {
    "mixup": MixConfig(alpha=1.0),
    "mixup-permute": MixConfig(alpha=1.0, pairing="permute"),
    "cutmix": MixConfig("cutmix"),
    "switch": MixConfig("switch"),
    "kway": MixConfig("kway", k=3, pairing="permute"),
}


@pytest.mark.parametrize("name", sorted(SYNC_CONFIGS))
def test_no_host_read_on_the_fast_path_without_validation(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.rand(8, 3, 6, 6)
    x8 = torch.randint(0, 256, (8, 3, 6, 6), dtype=torch.uint8)
    ids = torch.randint(0, 5, (8,))
    soft = torch.softmax(torch.randn(8, 5), dim=1)
    plan = sample_plan(SYNC_CONFIGS[name], 8, seed=0, image_size=(6, 6))
    expected = apply_plan(plan, x, ids, num_classes=5)
    with _count_host_reads(monkeypatch, fail=True):
        got = apply_plan(plan, x, ids, num_classes=5, validate=False)
        apply_plan(plan, x8, soft, validate=False, out=x8.clone())
        apply_plan(plan, x.clone(), ids, num_classes=5, validate=False, out=torch.empty_like(x))
        apply_plan(plan_to_tensors(plan), x, soft, validate=False)
        if plan.num_sources == 2:
            apply_plan(plan, x, ids, num_classes=5, validate=False, targets="pair")
        with torch.enable_grad():
            apply_plan(plan, x.clone().requires_grad_(), ids, num_classes=5, validate=False)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=0)


def test_validation_costs_one_host_read_per_label_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.rand(8, 3)
    plan = sample_plan(MixConfig(alpha=1.0, pairing="stream"), 8, seed=0)
    ids = torch.randint(0, 5, (8,))
    soft = torch.softmax(torch.randn(8, 5), dim=1)
    for y in (ids, soft):
        with _count_host_reads(monkeypatch, fail=False) as calls:
            apply_plan(plan, x, y, num_classes=5, x_partner=x, y_partner=y)
        assert len(calls) == 2, calls  # y and y_partner, one read each


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(SYNC_CONFIGS))
def test_no_cuda_sync_without_validation(name: str) -> None:
    dev = torch.device("cuda")
    x = torch.rand(16, 3, 32, 32, device=dev)
    x8 = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, device=dev)
    y = torch.randint(0, 10, (16,), device=dev)
    plan = sample_plan(SYNC_CONFIGS[name], 16, seed=0, image_size=(32, 32))
    expected = apply_plan(plan, x.cpu(), y.cpu(), num_classes=10)
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = apply_plan(plan, x, y, num_classes=10, validate=False)
        apply_plan(plan, x8, y, num_classes=10, validate=False, out=torch.empty_like(x8))
        apply_plan(plan_to_tensors(plan, dev), x, y, num_classes=10, validate=False)
        apply_plan(plan, x.clone().requires_grad_(), y, num_classes=10, validate=False)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    torch.testing.assert_close(got[0].cpu(), expected[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(got[1].cpu(), expected[1], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- torch.compile


def _compiled_mixer(**kwargs):  # type: ignore[no-untyped-def]
    def mix(t: PlanTensors, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return apply_plan(t, x, y, num_classes=10, **kwargs)

    return mix, torch.compile(mix, fullgraph=True, backend="aot_eager")


COMPILE_CASES = {
    "mixup": (MixConfig(alpha=0.4), torch.float32),
    "cutmix": (MixConfig("cutmix"), torch.float32),
    "kway-permute": (MixConfig("kway", k=3, pairing="permute"), torch.float32),
    "switch-uint8": (MixConfig("switch"), torch.uint8),
}


@pytest.mark.parametrize("name", sorted(COMPILE_CASES))
def test_compiles_fullgraph_equal_to_eager_without_recompiling(name: str) -> None:
    cfg, dtype = COMPILE_CASES[name]
    torch._dynamo.reset()
    counters.clear()
    eager, compiled = _compiled_mixer()
    for step in range(3):  # a new plan every step, one graph
        x = torch.rand(8, 3, 10, 12) if dtype == torch.float32 else torch.randint(0, 256, (8, 3, 10, 12)).to(dtype)
        y = torch.randint(0, 10, (8,))
        t = plan_to_tensors(sample_plan(cfg, 8, seed=1, step=step, image_size=(10, 12)))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no Dynamo warning either
            got = compiled(t, x, y)
        want = eager(t, x, y)
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
        torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)
        # and the tensor plan mixes as the host plan does
        torch.testing.assert_close(
            got[0], apply_plan(sample_plan(cfg, 8, seed=1, step=step, image_size=(10, 12)), x)[0]
        )
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1


def test_compiled_training_step_gives_eager_gradients() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(48, 16), torch.nn.Linear(16, 10))

    def step(t: PlanTensors, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = model[0](x.flatten(1))  # mix hidden features, which require grad
        xm, ym = apply_plan(t, h, y, num_classes=10, validate=False)
        return torch.sum(-ym * torch.log_softmax(model[1](xm), dim=1)) / xm.shape[0]

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x, y = torch.rand(8, 3, 4, 4), torch.randint(0, 10, (8,))
    t = plan_to_tensors(sample_plan(MixConfig(alpha=1.0, pairing="permute"), 8, seed=2))
    grads = []
    for fn in (step, compiled):
        model.zero_grad()
        fn(t, x, y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0])
    assert dict(counters["graph_break"]) == {}


def test_validation_inside_compile_is_an_async_assert() -> None:
    torch._dynamo.reset()
    counters.clear()
    _, compiled = _compiled_mixer()
    t = plan_to_tensors(sample_plan(MixConfig(), 4, seed=0))
    x = torch.rand(4, 3)
    compiled(t, x, torch.tensor([0, 1, 2, 9]))
    with pytest.raises(RuntimeError, match=r"class ids outside \[0, 10\)"):
        compiled(t, x, torch.tensor([0, 1, 2, 10]))
    assert dict(counters["graph_break"]) == {}


def test_plan_tensors_refuse_mismatches() -> None:
    plan = sample_plan(MixConfig(), 4, seed=0)
    t = plan_to_tensors(plan)
    with pytest.raises(TypeError, match="plan must be a MixPlan"):
        plan_to_tensors(t)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="PlanTensors plan mixes torch tensors"):
        apply_plan(t, np.zeros((4, 3), np.float32))
    with pytest.raises(TypeError, match="PlanTensors plan mixes torch labels"):
        apply_plan(t, torch.zeros(4, 3), np.arange(4), num_classes=4)
    with pytest.raises(ValueError, match="batch_size=4"):
        apply_plan(t, torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"plan's tensors are on meta.*plan_to_tensors\(plan, x.device\)"):
        apply_plan(plan_to_tensors(plan, "meta"), torch.zeros(4, 3))
