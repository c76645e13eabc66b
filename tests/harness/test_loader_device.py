"""The device path of the harness (`vicinal compare --device cuda`), tested on the CPU.

Every batch comes from an :class:`~vicinal.experiments.loader.EpochPlan` (the epoch's
index and plan tensors, built once and moved in one copy); on the CPU the batches and
the training results must be those of the per-step recipe the harness used before
(:meth:`InMemoryLoader.epoch_per_step`), bit for bit, and match numbers recorded with
that code. The training loop must read the host once per epoch, not per step. Tests
that need a GPU are skipped cleanly without one.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from toydata import without_wall_clock
from vicinal import MixConfig
from vicinal.experiments.distributed import DistContext
from vicinal.experiments.loader import EpochPlan, InMemoryLoader
from vicinal.experiments.models import build_model
from vicinal.experiments.runs.compare import run_compare
from vicinal.experiments.spec import CompareConfig
from vicinal.experiments.training.loop import evaluate
from vicinal.experiments.training.single import train_arm

ROOT = Path(__file__).resolve().parents[2]
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
needs_kornia = pytest.mark.skipif(importlib.util.find_spec("kornia") is None, reason="AugMix needs kornia")


@pytest.fixture
def one_thread() -> Any:
    """Bit-for-bit CPU results need a fixed thread count (the recorded numbers used 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data() -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(5)
    return {
        "img1": torch.from_numpy(rng.integers(0, 256, (50, 1, 8, 8), dtype=np.uint8)),
        "img3": torch.from_numpy(rng.integers(0, 256, (50, 3, 8, 6), dtype=np.uint8)),
        "feat": torch.from_numpy(rng.normal(size=(50, 5)).astype(np.float32)),
        "seq": torch.from_numpy(rng.normal(size=(50, 4, 3)).astype(np.float32)),
        "y": torch.from_numpy(rng.integers(0, 4, 50)),
        "img16": torch.from_numpy(rng.integers(0, 256, (50, 3, 16, 16), dtype=np.uint8)),  # for a model
    }


# name: (data, loader options). 50 samples, batch 16: a smaller last step.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("img1", {}),
    "plain_smooth_noshuffle": ("img1", {"label_smoothing": 0.1, "shuffle": False}),
    "mixup_roll": ("img1", {"mix": MixConfig(alpha=1.0)}),
    "mixup_random_smooth": ("img1", {"mix": MixConfig(alpha=0.4, pairing="permute"), "label_smoothing": 0.1}),
    "mixup_stream": ("img1", {"mix": MixConfig(alpha=0.2, pairing="stream")}),
    "mixup_batch_gran": ("img1", {"mix": MixConfig(alpha=0.5, granularity="batch")}),
    "mixup_p": ("img1", {"mix": MixConfig(alpha=0.5, p=0.5, p_mode="elem")}),
    "cutmix": ("img3", {"mix": MixConfig("cutmix"), "channels_last": True}),
    "cutmix_stream": ("img3", {"mix": MixConfig("cutmix", pairing="stream")}),
    "switch": ("img3", {"mix": MixConfig("switch", alpha=0.8), "drop_last": True}),
    "kway": ("img1", {"mix": MixConfig("kway", alpha=1.0, k=3, pairing="derange")}),
    "features": ("feat", {"mix": MixConfig(alpha=1.0)}),
    "features_plain": ("feat", {}),
    "sequence_stream": ("seq", {"mix": MixConfig(alpha=1.0, pairing="stream")}),
    "dist_indep": ("img1", {"mix": MixConfig(alpha=1.0), "dist": DistContext(1, 2)}),
    "dist_global": (
        "img1",
        {"mix": MixConfig(alpha=1.0, pairing="permute"), "dist": DistContext(1, 2), "policy": "global"},
    ),
    "dist_shared_stream": (
        "img1",
        {"mix": MixConfig(alpha=1.0, pairing="stream"), "dist": DistContext(1, 3), "policy": "shared"},
    ),
    "dist_plain": ("img1", {"dist": DistContext(0, 3)}),
    # Identity plans (the coin says "no mixing" for the whole batch, or alpha 0): labels only.
    "identity_steps": ("img3", {"mix": MixConfig("cutmix", p=0.5), "label_smoothing": 0.2}),
    "alpha_zero_stream": ("img1", {"mix": MixConfig(alpha=0.0, pairing="stream")}),
}


def _loader(case: str, **extra: Any) -> InMemoryLoader:
    data = _data()
    key, options = CASES[case]
    return InMemoryLoader(data[key], data["y"], num_classes=4, batch_size=16, seed=3, **options, **extra)


def _stats(t: torch.Tensor) -> list[float]:
    d = t.detach().double().flatten()
    w = torch.linspace(-1.0, 1.0, d.numel(), dtype=torch.float64)
    return [float(d.sum()), float((d * w).sum())]


@pytest.mark.parametrize("case", sorted(CASES))
def test_epoch_plan_batches_equal_the_per_step_recipe(case: str) -> None:
    loader = _loader(case)
    for epoch in (0, 2):
        planned, per_step = list(loader.epoch(epoch)), list(loader.epoch_per_step(epoch))
        assert len(planned) == len(per_step) == len(loader)
        for step, ((xa, ta), (xb, tb)) in enumerate(zip(planned, per_step)):
            assert torch.equal(xa, xb), (case, epoch, step)
            assert torch.equal(ta, tb), (case, epoch, step)
            assert xa.dtype == xb.dtype and ta.dtype == tb.dtype and xa.stride() == xb.stride()


# Per step of epochs 0 and 2: [shape, sum(x), weighted sum(x), sum(targets), weighted sum(targets)],
# recorded with the per-step loader before the epoch plan existed (commit a2fc2e0).
RECORDED_BATCHES: dict[str, list[list[Any]]] = {
    "mixup_stream": [
        [[16, 1, 8, 8], 508.9261557384161, -0.1295294852330784, 15.999999996238573, -0.23312596190963886],
        [[16, 1, 8, 8], 497.8764498186356, 3.087788370414227, 16.00000000384817, 0.008967200055944313],
        [[16, 1, 8, 8], 497.00588033643726, -1.731416339957537, 15.999999989362067, -0.3570635407970806],
        [[2, 1, 8, 8], 63.27658387972042, -1.660567907495497, 2.0000000298023224, -0.12316250375338966],
        [[16, 1, 8, 8], 500.25143723236397, 6.671150043388717, 15.999999985098839, -0.35732843788961555],
        [[16, 1, 8, 8], 513.7924602647545, 2.429830129786019, 15.99999997211853, -0.1586343731282146],
        [[16, 1, 8, 8], 490.74142247821146, 6.817151631824141, 16.00000003285545, 0.12746529866047207],
        [[2, 1, 8, 8], 65.0198267698288, 0.1404782866868448, 2.0000000190029823, -0.5714157800017087],
    ],
    "cutmix": [
        [[16, 3, 8, 6], 1150.9333557509817, -17.993059412563138, 16.000000029802322, -0.13029100828700568],
        [[16, 3, 8, 6], 1146.2823762027547, 2.4273744918498172, 16.000000029802322, -0.12169312531985943],
        [[16, 3, 8, 6], 1090.149041752331, 3.9000455442956845, 16.0, -0.23412698601919507],
        [[2, 3, 8, 6], 147.21176747698337, 2.2967412410732306, 2.0, -0.2619047505514962],
        [[16, 3, 8, 6], 1166.1176696624607, 0.8299522607244025, 16.0, -0.2870370338833519],
        [[16, 3, 8, 6], 1123.066689862404, 11.657881645412353, 16.0, -0.13492063870505655],
        [[16, 3, 8, 6], 1152.7215905683115, -2.124134889376368, 16.0, -0.12103174413953521],
        [[2, 3, 8, 6], 143.91372828837484, -2.5099407030619973, 2.0, 0.3333333219800676],
    ],
    "kway": [
        [[16, 1, 8, 8], 504.9887554552406, -3.384124280899428, 15.999999968335032, 0.03667257800106977],
        [[16, 1, 8, 8], 520.5281775910407, 3.8855103312855963, 15.999999865656719, -0.1436343933862173],
        [[16, 1, 8, 8], 501.21023482456803, 2.7408580621149152, 16.000000066123903, -0.22062986951676167],
        [[2, 1, 8, 8], 66.28859244659543, 0.3113216648362293, 1.9999999925494194, -0.5824142577392714],
        [[16, 1, 8, 8], 492.93468880839646, 4.220935645026178, 15.999999935156666, -0.32044823097235087],
        [[16, 1, 8, 8], 518.6460311152041, 1.130406040406971, 15.99999990221113, -0.007457994028097714],
        [[16, 1, 8, 8], 492.77213780302554, -2.4949433195831636, 16.000000085681677, -0.012979866729842637],
        [[2, 1, 8, 8], 67.00614706240594, 0.03207775098308291, 1.9999999105930328, 0.10522523522377014],
    ],
    "dist_global": [
        [[16, 1, 8, 8], 517.7119482569396, 1.164467702414897, 16.0, -0.16150150791047096],
        [[9, 1, 8, 8], 280.2620257982053, 3.533340614979841, 8.99999999254942, -0.33555268581424424],
        [[16, 1, 8, 8], 518.8131052758545, 3.1853523968863677, 15.999999962747097, -0.1513444214822755],
        [[9, 1, 8, 8], 275.15818175207824, -0.4830530418261243, 9.0, 0.06002491031374246],
    ],
    "plain_smooth_noshuffle": [
        [[16, 1, 8, 8], 505.2470692661591, 2.9254977725002798, 15.99999925494194, -0.11428570818333417],
        [[16, 1, 8, 8], 508.05099038686603, 4.1644258703526615, 15.99999925494194, -0.31428569750416846],
        [[16, 1, 8, 8], 505.254912274424, -1.7816419172772502, 15.99999925494194, -0.05714285409166686],
        [[2, 1, 8, 8], 60.643138570245355, -1.047460224945099, 1.9999999068677425, 0.7714285302375044],
        [[16, 1, 8, 8], 505.2470692661591, 2.9254977725002798, 15.99999925494194, -0.11428570818333417],
        [[16, 1, 8, 8], 508.05099038686603, 4.1644258703526615, 15.99999925494194, -0.31428569750416846],
        [[16, 1, 8, 8], 505.254912274424, -1.7816419172772502, 15.99999925494194, -0.05714285409166686],
        [[2, 1, 8, 8], 60.643138570245355, -1.047460224945099, 1.9999999068677425, 0.7714285302375044],
    ],
}


@pytest.mark.parametrize("case", sorted(RECORDED_BATCHES))
def test_epoch_plan_batches_match_the_recorded_ones(case: str) -> None:
    # Exact when recorded; the tolerance only absorbs float-rounding changes of the mixing ops.
    loader = _loader(case)
    rows = [[list(x.shape), *_stats(x), *_stats(t)] for epoch in (0, 2) for x, t in loader.epoch(epoch)]
    assert [r[0] for r in rows] == [r[0] for r in RECORDED_BATCHES[case]]
    for got, want in zip(rows, RECORDED_BATCHES[case]):
        assert got[1:] == pytest.approx(want[1:], rel=1e-9, abs=1e-9)


@needs_kornia
@pytest.mark.parametrize(
    "options",
    [
        {"augmix": True},
        {"augmix": True, "mix": MixConfig(alpha=0.4, pairing="stream")},
        {"augmix": True, "mix": MixConfig("cutmix")},
        {"augmix": True, "jsd": True},
    ],
    ids=["augmix", "augmix_stream", "augmix_cutmix", "jsd"],
)
def test_epoch_plan_with_augmix_equals_the_per_step_recipe(options: dict[str, Any]) -> None:
    from vicinal.torch.augmix import AugMixConfig

    data = _data()
    options = dict(options, augmix=AugMixConfig(width=2, severity=3))
    loader = InMemoryLoader(data["img3"][:20], data["y"][:20], num_classes=4, batch_size=8, seed=1, **options)
    for (xa, ta), (xb, tb) in zip(loader.epoch(1), loader.epoch_per_step(1), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ta, tb)


def test_epoch_plan_is_one_buffer_on_the_loaders_device() -> None:
    loader = _loader("cutmix_stream")
    plan = loader.epoch_plan(1)
    assert isinstance(plan, EpochPlan) and plan.epoch == 1 and len(plan.steps) == len(loader)
    storage = plan.buffer.untyped_storage().data_ptr()
    for st in plan.steps:
        assert st.plan is not None and st.stream_rows is not None
        tensors = [st.rows, st.stream_rows, st.plan.weights, st.plan.input_weights, st.plan.partners]
        tensors += [st.plan.boxes] if st.plan.boxes is not None else []
        for t in tensors:
            assert t.device == loader.device
            assert t.untyped_storage().data_ptr() == storage  # views: the epoch moved in one copy
        assert st.rows.dtype == torch.int64 and st.plan.weights.dtype == torch.float32
    # The rows are the epoch order's, step by step.
    order = loader.order(1)
    assert torch.equal(torch.cat([st.rows for st in plan.steps]), torch.from_numpy(order.astype(np.int64)))
    assert plan.nbytes == plan.buffer.numel() > 0
    with pytest.raises(ValueError, match="epoch"):
        loader.epoch_plan(-1)


def _tiny_arm(batch_size: int = 16, **kw: Any) -> tuple[torch.nn.Module, InMemoryLoader]:
    """The reference CNN (fixed initial weights) and a loader of 50 random 3x16x16 images."""
    data = _data()
    torch.manual_seed(0)
    model = build_model("reference-cnn", (3, 16, 16), 4)
    loader = InMemoryLoader(data["img16"], data["y"], num_classes=4, batch_size=batch_size, seed=2, **kw)
    return model, loader


def _val_test(device: str = "cpu") -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    data = _data()
    x, y = data["img16"].to(device), data["y"].to(device)
    return (x[:20], y[:20]), (x[20:], y[20:])


def test_training_on_epoch_plans_equals_training_step_by_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    val, test = _val_test()
    results = []
    for per_step in (False, True):
        model, loader = _tiny_arm(mix=MixConfig("switch", alpha=0.4, pairing="stream"))
        if per_step:
            monkeypatch.setattr(loader, "epoch", loader.epoch_per_step)
        r = train_arm(
            "m", model, loader, val=val, test=test, epochs=2, out_dir=tmp_path / f"arm{per_step}", full_metrics=True
        )
        results.append(r)
    a, b = results

    assert without_wall_clock(a.history) == without_wall_clock(b.history)
    assert (a.test_acc, a.test_loss, a.metrics) == (b.test_acc, b.test_loss, b.metrics)


# Recorded with the code before the device path (commit a2fc2e0), threads=1: run_compare
# on the toy set (tests/toydata.py) with epochs=2, batch 32, val_size=100, seed 1, test_limit=300.
RECORDED_COMPARE = {
    "mixup": {
        "mixup": (
            0.003330071767171224,
            [
                (0.8704791576631608, 0.8741935483870967, 0.27372365951538086, 1.0),
                (0.2595139716902087, 0.9774193548387097, 0.003364696204662323, 1.0),
            ],
        ),
        "none": (
            0.0018369946214887832,
            [
                (0.8476003971792037, 0.8951612903225806, 0.3067526626586914, 1.0),
                (0.1104586795122633, 0.9951612903225806, 0.0018233691155910491, 1.0),
            ],
        ),
    },
    "cutmix": {  # with train_limit=300
        "mixup": (
            0.3305298063490126,
            [
                (1.0531298565864562, 0.7166666666666667, 0.8638670349121094, 1.0),
                (0.8413849862416586, 0.8466666666666667, 0.33065052032470704, 1.0),
            ],
        ),
        "none": (
            0.2795516120062934,
            [
                (1.0147504687309266, 0.79, 0.8366731262207031, 1.0),
                (0.6486526358127594, 0.9966666666666667, 0.279942626953125, 1.0),
            ],
        ),
    },
}


# Trained losses depend on the CPU's convolution kernels (their vector width and
# accumulation order), so the recorded numbers only hold on the kind of CPU they were
# recorded on; the code-path comparisons above hold everywhere.
RECORDED_ON = "AVX512"


@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() != RECORDED_ON,
    reason=f"numbers recorded on an {RECORDED_ON} CPU; this one is {torch.backends.cpu.get_cpu_capability()}",
)
@pytest.mark.parametrize("method", ["mixup", "cutmix"])
def test_compare_on_cpu_reproduces_the_recorded_results(toy_npz: Path, tmp_path: Path, method: str) -> None:
    extra = {"train_limit": 300} if method == "cutmix" else {}
    cfg = CompareConfig(
        dataset=str(toy_npz),
        method=method,
        epochs=2,
        batch_size=32,
        val_size=100,
        seed=1,
        parallel=False,
        threads=1,
        test_limit=300,
        device="cpu",
        **extra,  # type: ignore[arg-type]
    )
    results = run_compare(cfg, tmp_path / "run", progress=False)
    for r in results:
        test_loss, history = RECORDED_COMPARE[method][r.name]
        got = [(h["train_loss"], h["train_acc"], h["val_loss"], h["val_acc"]) for h in r.history]
        # Bit for bit when recorded; the tolerance only absorbs float-rounding changes elsewhere.
        assert got == [pytest.approx(h, rel=1e-6) for h in history], r.name
        assert r.test_loss == pytest.approx(test_loss, rel=1e-5) and r.test_acc == 1.0


def _count_host_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every Python-level read of a tensor's value on the host (a sync on a GPU)."""
    calls: list[str] = []
    for name in ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "cpu"):
        real = getattr(torch.Tensor, name)

        def spy(self: torch.Tensor, *args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            calls.append(_name)
            return _real(self, *args, **kw)

        monkeypatch.setattr(torch.Tensor, name, spy)
    return calls


@pytest.mark.parametrize("mix", [None, MixConfig(alpha=0.4, pairing="stream"), MixConfig("cutmix")])
def test_training_reads_the_host_per_epoch_not_per_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mix: MixConfig | None
) -> None:
    import vicinal.experiments.training.loop as train

    # Keep the checkpoint writes out of the count (they read tensors by design, once per epoch).
    monkeypatch.setattr(train, "atomic_torch_save", lambda *a, **k: None)
    val, test = _val_test()
    counts = []
    for batch_size in (5, 25):  # 10 and 2 steps per epoch
        model, loader = _tiny_arm(batch_size=batch_size, mix=mix)
        with monkeypatch.context() as m:
            calls = _count_host_reads(m)
            train_arm("m", model, loader, val=val, test=test, epochs=2, out_dir=tmp_path / f"r{batch_size}")
        counts.append(len(calls))
    assert counts[0] == counts[1], counts  # independent of the number of steps
    assert counts[0] <= 8, counts  # a handful per epoch and at the end


def test_evaluate_reads_the_host_once(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = _tiny_arm()
    (x, y), _ = _val_test()
    expected = evaluate(model, x, y, batch_size=7)
    calls = _count_host_reads(monkeypatch)
    assert evaluate(model, x, y, batch_size=7) == expected
    assert calls == ["tolist"]
    assert evaluate(model, x, y, batch_size=20) == pytest.approx(expected, rel=1e-6)


def test_gpu_benchmark_says_clearly_that_it_needs_a_gpu() -> None:
    if CUDA:
        pytest.skip("a GPU is present: the benchmark would run")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_compare.py"), "--epochs", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "needs a CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- CUDA only


@needs_cuda
@pytest.mark.parametrize("case", ["mixup_stream", "cutmix", "kway", "dist_global", "identity_steps", "plain"])
def test_cuda_batches_match_the_cpu_ones(case: str) -> None:
    cpu, gpu = _loader(case), _loader(case, device="cuda")
    assert gpu.images.device.type == "cuda" and gpu.images.dtype == cpu.images.dtype
    for (xa, ta), (xb, tb) in zip(cpu.epoch(1), gpu.epoch(1), strict=True):
        assert xb.device.type == "cuda" and tb.device.type == "cuda"
        torch.testing.assert_close(xb.cpu(), xa, rtol=0, atol=1e-6)
        torch.testing.assert_close(tb.cpu(), ta, rtol=0, atol=1e-6)


@needs_cuda
def test_cuda_epoch_makes_no_host_sync(tmp_path: Path) -> None:
    """A whole epoch of batches and training steps under CUDA's sync debug mode."""
    from vicinal.torch.losses import soft_target_cross_entropy

    for mix in (None, MixConfig(alpha=0.4, pairing="stream"), MixConfig("cutmix")):
        model, loader = _tiny_arm(mix=mix, device="cuda")
        model.cuda()
        opt = torch.optim.Adam(model.parameters(), fused=True)
        loss_sum = torch.zeros((), dtype=torch.float64, device="cuda")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for x, target in loader.epoch(0):
                loss = soft_target_cross_entropy(model(x), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach().double() * target.shape[0]
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(loss_sum).item()


@needs_cuda
def test_cuda_training_syncs_per_epoch_not_per_step(tmp_path: Path) -> None:
    """train_arm itself under CUDA's sync debug mode: as many syncs for 10 steps an epoch as for 2."""
    import warnings

    val, test = _val_test("cuda")
    counts = []
    for batch_size in (5, 25):
        model, loader = _tiny_arm(batch_size=batch_size, mix=MixConfig(alpha=0.4, pairing="stream"), device="cuda")
        model.cuda()
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_arm("m", model, loader, val=val, test=test, epochs=2, out_dir=tmp_path / f"r{batch_size}")
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts[0] == counts[1], counts


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compare_on_cuda_trains_both_arms(toy_npz: Path, tmp_path: Path, precision: str) -> None:
    cfg = CompareConfig(
        dataset=str(toy_npz), epochs=2, batch_size=32, val_size=100, seed=1, device="cuda", precision=precision
    )
    results = run_compare(cfg, tmp_path / "run", progress=False)
    assert [r.name for r in results] == ["mixup", "none"]
    for r in results:
        assert r.test_acc > 0.8 and len(r.history) == 2


@needs_cuda
def test_train_arm_on_cuda_with_full_metrics(tmp_path: Path) -> None:
    val, test = _val_test("cuda")
    model, loader = _tiny_arm(mix=MixConfig("switch"), device="cuda")
    r = train_arm(
        "m", model.cuda(), loader, val=val, test=test, epochs=2, out_dir=tmp_path / "arm", full_metrics=True,
        track_test=True,
    )  # fmt: skip
    assert r.metrics is not None and set(r.metrics["last"]["fgsm"]) == {"0.01", "0.03", "0.1"}
    assert 0.0 <= r.test_acc <= 1.0 and len(r.history) == 2
