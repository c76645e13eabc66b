"""Manifold Mixup for any nn.Module."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from vicinal import MixConfig, apply_plan, sample_plan
from vicinal.torch.manifold import ManifoldMixup

NUM_CLASSES = 3


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, NUM_CLASSES))


def _batch(b: int = 8, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(b, 5, generator=g, dtype=dtype), torch.randint(0, NUM_CLASSES, (b,), generator=g)


def test_mixing_at_input_is_exactly_input_mixup() -> None:
    net, (x, y) = _net(), _batch()
    config = MixConfig(alpha=1.0)
    mm = ManifoldMixup(net, ["input"], config, num_classes=NUM_CLASSES, seed=4)
    for step in range(3):
        out, targets = mm(x, y, step=step)
        x_mixed, want = apply_plan(sample_plan(config, 8, seed=4, step=step), x, y, num_classes=NUM_CLASSES)
        assert torch.equal(out, net(x_mixed)) and torch.equal(targets, want)


def test_mixing_at_a_hidden_layer_mixes_its_output_and_the_labels_alike() -> None:
    net, (x, y) = _net(), _batch()
    config = MixConfig(alpha=1.0, pairing="permute")
    mm = ManifoldMixup(net, ["1"], config, num_classes=NUM_CLASSES, seed=2)
    out, targets = mm(x, y, step=5)
    plan = sample_plan(config, 8, seed=2, step=5)
    h = net[1](net[0](x))
    h_mixed, want = apply_plan(plan, h, y, num_classes=NUM_CLASSES)
    torch.testing.assert_close(out, net[4](net[3](net[2](h_mixed))))
    torch.testing.assert_close(targets, want)


def test_gradients_flow_through_the_mixed_layer_to_the_layers_below() -> None:
    net = _net().double()
    x, y = _batch(dtype=torch.float64)
    mm = ManifoldMixup(net, ["2"], MixConfig(alpha=1.0), num_classes=NUM_CLASSES, seed=0)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp: mm(inp, y, step=0)[0], (x,))
    out, targets = mm(x, y, step=1)
    (-(targets * out.log_softmax(1)).sum()).backward()
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0


def test_the_layer_choice_is_reproducible_and_follows_probs() -> None:
    layers = ["input", "0", "2", "4"]
    a = ManifoldMixup(_net(), layers, seed=7)
    b = ManifoldMixup(_net(), layers, seed=7)
    choices = [a.choose_layer(step=s) for s in range(4000)]
    assert choices == [b.choose_layer(step=s) for s in range(4000)]
    assert choices != [ManifoldMixup(_net(), layers, seed=8).choose_layer(step=s) for s in range(4000)]
    counts = np.array([choices.count(name) for name in layers])
    # uniform: each count within 4 binomial standard deviations of 1000
    assert np.all(np.abs(counts - 1000) < 4 * np.sqrt(4000 * 0.25 * 0.75)), counts
    weighted = ManifoldMixup(_net(), ["input", "2"], probs=[0.9, 0.1], seed=7)
    share = np.mean([weighted.choose_layer(step=s) == "input" for s in range(4000)])
    assert abs(share - 0.9) < 4 * np.sqrt(0.09 / 4000)


class _TupleBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.linear(x)
        return h, h.detach().clone()


class _TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = _TupleBlock()
        self.head = nn.Linear(4, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, aux = self.block(x)
        return self.head(h), aux


def test_a_tuple_output_has_its_first_element_mixed() -> None:
    torch.manual_seed(0)
    net, (x, y) = _TupleNet(), _batch()
    (logits, aux), _ = ManifoldMixup(net, ["block"], MixConfig(alpha=1.0), num_classes=NUM_CLASSES)(x, y, step=0)
    h = net.block.linear(x)
    torch.testing.assert_close(aux, h)  # passed through unmixed
    assert not torch.allclose(logits, net.head(h))


def test_batchnorm_below_the_mixed_layer_sees_real_samples() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, NUM_CLASSES))
    twin = copy.deepcopy(net)
    x, y = _batch()
    ManifoldMixup(net, ["2"], num_classes=NUM_CLASSES)(x, y, step=0)
    twin(x)
    torch.testing.assert_close(net[1].running_mean, twin[1].running_mean)


@pytest.mark.parametrize("b", [1, 7])
def test_batch_of_one_and_odd_batches(b: int) -> None:
    net, (x, y) = _net(), _batch(b)
    out, targets = ManifoldMixup(net, ["1"], MixConfig(alpha=1.0), num_classes=NUM_CLASSES)(x, y, step=0)
    assert out.shape == (b, NUM_CLASSES) and targets.shape == (b, NUM_CLASSES)
    torch.testing.assert_close(targets.sum(1), torch.ones(b))
    if b == 1:  # a batch of one has only itself as partner: unmixed
        torch.testing.assert_close(out, net(x))


def test_hooks_are_inert_outside_a_call_even_after_an_exception_and_removed_on_close() -> None:
    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    net = nn.Sequential(nn.Linear(5, 5), Boom())
    mm = ManifoldMixup(net, ["0"], num_classes=NUM_CLASSES)
    with pytest.raises(RuntimeError, match="boom"):
        mm(*_batch(), step=0)
    x = _batch()[0]
    torch.testing.assert_close(net[0](x), net[0].forward(x))  # the hook left behind does nothing
    mm.close()
    assert not net[0]._forward_hooks
    ok = _net()
    with ManifoldMixup(ok, ["0", "2"], num_classes=NUM_CLASSES) as mm2:
        mm2(*_batch(), step=0)
        torch.testing.assert_close(ok(x), _net()(x))  # plain calls of the model are not mixed
    assert all(not m._forward_hooks for m in ok.modules())
    with pytest.raises(RuntimeError, match="closed"):
        mm2(*_batch(), step=1)


def test_bad_layers_and_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="not modules of the model"):
        ManifoldMixup(_net(), ["nope"])
    with pytest.raises(ValueError, match="stream"):
        ManifoldMixup(_net(), ["input"], MixConfig(pairing="stream"))
    with pytest.raises(ValueError, match="probs"):
        ManifoldMixup(_net(), ["input", "0"], probs=[0.5, 0.2])
    net = _TupleNet()
    net.unused = nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="did not run"):
        ManifoldMixup(net, ["unused"], num_classes=NUM_CLASSES)(*_batch(), step=0)


def test_compare_trains_a_manifold_arm_and_records_its_layers(toy_npz: object, tmp_path: object) -> None:
    import json
    from pathlib import Path

    from vicinal.experiments.cli import main

    out = Path(str(tmp_path)) / "run"
    args = ["compare", "--dataset", str(toy_npz), "--model", "preact-resnet-small", "--epochs", "1"]
    args += ["--batch-size", "32", "--val-size", "100", "--sequential", "--threads", "1", "--no-progress"]
    assert main([*args, "--method", "manifold", "--mix-layers", "input,blocks.0,blocks.2", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["mix_layers"] == ["input", "blocks.0", "blocks.2"] and saved["alpha"] == 2.0
    assert "manifold, alpha=2.0" in (out / "summary.md").read_text()
    assert main([*args, "--method", "manifold", "--out", str(out) + "-2"]) == 2  # no layers given
    assert main([*args, "--method", "manifold", "--mix-layers", "input,nope", "--out", str(out) + "-3"]) == 2
    assert not (Path(str(out) + "-3")).exists()


def test_manifold_mixup_under_ddp_and_torch_compile(tmp_path: object) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    x, y = _batch()
    config = MixConfig(alpha=1.0)
    plain = ManifoldMixup(_net(), ["2"], config, num_classes=NUM_CLASSES, seed=3)(x, y, step=0)[0]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(_net())
        out, _ = ManifoldMixup(ddp, ["2"], config, num_classes=NUM_CLASSES, seed=3)(x, y, step=0)  # layers of .module
        torch.testing.assert_close(out, plain)
    finally:
        dist.destroy_process_group()
    compiled = torch.compile(_net(), backend="eager")
    layers = ["input", "0", "2", "4"]
    on_compiled = ManifoldMixup(compiled, layers, config, num_classes=NUM_CLASSES, seed=3)
    on_eager = ManifoldMixup(_net(), layers, config, num_classes=NUM_CLASSES, seed=3)
    seen = set()
    for step in range(12):  # the compiled model is traced at step 0; later steps choose other layers
        a, b = on_compiled(x, y, step=step), on_eager(x, y, step=step)
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(a[1], b[1])
        seen.add(on_compiled.last_layer)
    assert seen == set(layers)


def test_a_study_with_a_manifold_arm_resumes(toy_npz: object, tmp_path: object) -> None:
    from pathlib import Path

    from vicinal.experiments.runs.study import run_study
    from vicinal.experiments.spec import parse_study

    text = (
        f"seeds=1\n[defaults]\ndataset='{toy_npz}'\nepochs=1\nbatch_size=32\nval_size=100\n"
        "[[arms]]\nname='manifold'\nmethod='manifold'\nmix_layers=['input','fc1']\n"
    )
    out = Path(str(tmp_path)) / "study"
    first = run_study(parse_study(text), out, progress=False)
    again = run_study(parse_study(text), out, progress=False)  # study.json read back: lists, not tuples
    assert [r["test_acc"] for r in first] == [r["test_acc"] for r in again]
