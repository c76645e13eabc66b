"""The standard CIFAR training recipe: random crop with zero padding and horizontal flip
(drawn from the run's seed, applied on the data's device in one gather), per-channel
normalisation from the training split, SGD with momentum (Nesterov optional) and weight
decay, a step or cosine schedule, mixed precision where it pays; as options of the
harness, recorded with the run.

Statistical tests use fixed seeds (so they are deterministic) and state their tolerance.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vicinal import MixConfig
from vicinal.experiments.augment import ChannelStats, CropFlip, Normalizer, crop_flip
from vicinal.experiments.cli import COMPARE_OPTIONS, build_parser, main, spec_values
from vicinal.experiments.loader import InMemoryLoader
from vicinal.experiments.runs.study import run_study
from vicinal.experiments.spec import (
    STUDY_OVERRIDES,
    CompareConfig,
    OptimConfig,
    autocast_dtype,
    cell_dir,
    parse_study,
    resolve_optim,
)
from vicinal.experiments.training.batched import BatchSeedsUnsupported
from vicinal.experiments.training.loop import make_optimizer, make_schedule
from vicinal.experiments.training.single import train_arm

# --------------------------------------------------------------------------- crop and flip draws

N_DRAWS = 90_000


def test_crop_offsets_are_uniform_and_flips_fair() -> None:
    draws = CropFlip(4, True).sample(N_DRAWS, seed=11, epoch=3, step=7)
    assert draws.shape == (N_DRAWS, 3) and draws.dtype == np.int64
    # Offsets uniform over 0..8 on each axis: chi-square with 8 degrees of freedom below
    # 26.1 (its 0.1 % quantile), and every value present.
    for axis in (0, 1):
        counts = np.bincount(draws[:, axis], minlength=9)
        assert counts.size == 9 and counts.min() > 0
        expected = N_DRAWS / 9
        assert ((counts - expected) ** 2 / expected).sum() < 26.1
    # The two offsets independent: their correlation within 4 standard errors of 0.
    assert abs(np.corrcoef(draws[:, 0], draws[:, 1])[0, 1]) < 4 / math.sqrt(N_DRAWS)
    # Flips: Bernoulli(1/2), the mean within 4 standard errors (0.5 / sqrt(n)) of 1/2.
    assert set(np.unique(draws[:, 2])) == {0, 1}
    assert abs(draws[:, 2].mean() - 0.5) < 4 * 0.5 / math.sqrt(N_DRAWS)
    # Flips independent of offsets: the flip rate at each x offset within 4 standard errors.
    for value in range(9):
        sel = draws[draws[:, 1] == value, 2]
        assert abs(sel.mean() - 0.5) < 4 * 0.5 / math.sqrt(sel.size)


def test_crop_draws_are_a_pure_function_of_seed_epoch_step_rank() -> None:
    c = CropFlip(4, True)
    a = c.sample(64, seed=5, epoch=2, step=9, rank=1)
    np.testing.assert_array_equal(a, c.sample(64, seed=5, epoch=2, step=9, rank=1))
    for other in ({"seed": 6}, {"epoch": 3}, {"step": 10}, {"rank": 0}):
        kw = {"seed": 5, "epoch": 2, "step": 9, "rank": 1, **other}
        assert not np.array_equal(a, c.sample(64, **kw)), other
    # The mixing plan of the same step draws from another stream.
    from vicinal._counter import generator

    plan_draws = generator(5, "plan", epoch=2, step=9, rank=1).integers(0, 9, size=(64, 2))
    assert not np.array_equal(a[:, :2], plan_draws)
    assert not CropFlip(0, True).sample(50, seed=0)[:, :2].any()
    assert not CropFlip(4, False).sample(50, seed=0)[:, 2].any()
    with pytest.raises(ValueError, match="does nothing"):
        CropFlip(0, False)
    with pytest.raises(ValueError, match="crop_padding must be an int >= 0"):
        CropFlip(-1)


def _reference_crop_flip(images: torch.Tensor, draws: np.ndarray, padding: int) -> torch.Tensor:
    """One image at a time, as torchvision's RandomCrop(padding) + RandomHorizontalFlip do it."""
    out = []
    h, w = images.shape[-2:]
    for img, (dy, dx, flip) in zip(images, draws):
        padded = F.pad(img, (padding,) * 4)
        window = padded[:, dy : dy + h, dx : dx + w]
        out.append(window.flip(-1) if flip else window)
    return torch.stack(out)


@pytest.mark.parametrize(
    ("padding", "flip", "shape"),
    [(4, True, (3, 32, 32)), (2, True, (1, 5, 7)), (0, True, (3, 4, 6)), (3, False, (2, 6, 4))],
)
def test_crop_flip_equals_the_per_image_reference(padding: int, flip: bool, shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (33, *shape), dtype=np.uint8))
    draws = CropFlip(padding, flip).sample(33, seed=1)
    out = crop_flip(images, torch.from_numpy(draws), padding)
    assert out.dtype == torch.uint8 and out.shape == images.shape and out.is_contiguous()
    assert torch.equal(out, _reference_crop_flip(images, draws, padding))
    as_float = crop_flip(images.float(), torch.from_numpy(draws), padding)
    assert torch.equal(as_float, out.float())


# --------------------------------------------------------------------------- in the loader


def _images(n: int = 96, shape: tuple[int, ...] = (3, 8, 8), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, 4, n)


MIXES = [
    None,
    MixConfig(alpha=1.0, pairing="stream"),
    MixConfig(alpha=1.0, granularity="batch", pairing="permute"),
    MixConfig("cutmix", cutmix_alpha=1.0, pairing="stream"),
    MixConfig("saliencymix", mask_alpha=1.0, pairing="stream"),
]


@pytest.mark.parametrize("mix", MIXES, ids=lambda m: "plain" if m is None else f"{m.method}-{m.pairing}")
def test_epoch_plan_batches_equal_the_per_step_recipe_with_crops(mix: MixConfig | None) -> None:
    x, y = _images()
    loader = InMemoryLoader(x, y, num_classes=4, batch_size=20, seed=3, mix=mix, crop=CropFlip(2, True))
    for epoch in (0, 2):
        fast = list(loader.epoch(epoch))
        slow = list(loader.epoch_per_step(epoch))
        assert len(fast) == len(slow) == 5
        for (xa, ta), (xb, tb) in zip(fast, slow):
            assert torch.equal(xa, xb) and torch.equal(ta, tb)


def test_plain_batches_are_the_rows_cropped_by_the_steps_draws() -> None:
    x, y = _images()
    loader = InMemoryLoader(x, y, num_classes=4, batch_size=32, seed=1, crop=CropFlip(4, True))
    order = loader.order(1)
    for step, (xb, _) in enumerate(loader.epoch(1)):
        rows = order[step * 32 : (step + 1) * 32]
        draws = loader.crop_draws(1, step, len(rows))[: len(rows)]
        expected = _reference_crop_flip(torch.from_numpy(x[rows]), draws, 4).float() / 255
        assert torch.equal(xb, expected)
    plain = InMemoryLoader(x, y, num_classes=4, batch_size=32, seed=1)
    assert not torch.equal(next(iter(plain.epoch(1)))[0], next(iter(loader.epoch(1)))[0])
    # Another loader of the same seed: the same batches (a resumed run sees what it would have).
    again = InMemoryLoader(x, y, num_classes=4, batch_size=32, seed=1, crop=CropFlip(4, True))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(loader.epoch(1), again.epoch(1)))


@pytest.mark.skipif(importlib.util.find_spec("kornia") is None, reason="AugMix needs kornia")
def test_jsd_views_share_the_crop() -> None:
    from vicinal.torch.augmix import AugMixConfig

    x, y = _images(40)
    loader = InMemoryLoader(
        x, y, num_classes=4, batch_size=8, seed=2, augmix=AugMixConfig(), jsd=True, crop=CropFlip(2, True)
    )
    fast, slow = list(loader.epoch(0)), list(loader.epoch_per_step(0))
    for (xa, ta), (xb, tb) in zip(fast, slow):
        torch.testing.assert_close(xa, xb)
        assert torch.equal(ta, tb)


def test_crops_and_normalisation_refused_on_features() -> None:
    x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    y = np.arange(40) % 2
    with pytest.raises(ValueError, match="apply to images.*drop --crop-padding, --flip and --normalize"):
        InMemoryLoader(x, y, num_classes=2, crop=CropFlip(4, True))
    with pytest.raises(ValueError, match="apply to images"):
        InMemoryLoader(x, y, num_classes=2, normalize=True)


# --------------------------------------------------------------------------- normalisation


def test_channel_stats_are_exact_and_order_free() -> None:
    x, _ = _images(200, (3, 6, 5))
    x[:, 2] = 77  # a constant channel: its std is recorded as 1 (centred, not scaled)
    stats = ChannelStats.of(torch.from_numpy(x))
    scaled = x.astype(np.float64) / 255
    np.testing.assert_allclose(stats.mean, scaled.mean(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats.std[:2], scaled.std(axis=(0, 2, 3))[:2], rtol=0, atol=1e-12)
    assert stats.std[2] == 1.0
    assert ChannelStats.of(x[::-1].copy()) == stats
    with pytest.raises(ValueError, match="uint8 images"):
        ChannelStats.of(torch.rand(4, 3, 2, 2))


def test_the_model_normalises_in_training_and_evaluation() -> None:
    x, _ = _images(50)
    stats = ChannelStats.of(x)
    seen: list[torch.Tensor] = []

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3 * 8 * 8, 4)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            seen.append(t.detach().clone())
            return self.fc(t.flatten(1))

    model = Probe()
    batch = torch.from_numpy(x[:5]).float() / 255
    with stats.attach(model):
        with torch.inference_mode():
            model(batch)
        model(batch).sum().backward()  # the statistics first met in inference mode serve autograd too
    model(batch)
    mean = torch.tensor(stats.mean).view(1, 3, 1, 1)
    std = torch.tensor(stats.std).view(1, 3, 1, 1).float()
    expected = (batch - mean.float()) / std
    assert torch.equal(seen[0], expected) and torch.equal(seen[1], expected)
    assert torch.equal(seen[2], batch)  # the hook is gone
    # Channels-last input stays channels-last.
    out = Normalizer(stats)(batch.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="3-channel images"):
        Normalizer(stats)(torch.rand(2, 1, 8, 8))


# --------------------------------------------------------------------------- optimizer and schedule


def test_optimizer_options_resolve_per_optimizer_and_schedule() -> None:
    assert resolve_optim("adam", "constant", {}) == dict.fromkeys(
        ("lr", "momentum", "nesterov", "lr_milestones", "lr_factor")
    ) | {"lr": 1e-3}
    sgd = resolve_optim("sgd", "step", {"lr_milestones": (100, 150)})
    assert sgd == {"lr": 0.1, "momentum": 0.9, "nesterov": False, "lr_milestones": (100, 150), "lr_factor": 0.1}
    with pytest.raises(ValueError, match=r"momentum=0.5 is not used by optimizer='adam' \(it uses lr\)"):
        resolve_optim("adam", "constant", {"momentum": 0.5})
    with pytest.raises(ValueError, match=r"lr_factor=0.5 is not used by schedule='cosine'"):
        resolve_optim("sgd", "cosine", {"lr_factor": 0.5})
    with pytest.raises(ValueError, match="schedule='step' needs lr_milestones"):
        resolve_optim("sgd", "step", {})
    # Inherited from a study's [defaults], an unused option is dropped silently.
    assert resolve_optim("adam", "constant", {"momentum": 0.9}, inherited=frozenset({"momentum"}))["momentum"] is None
    with pytest.raises(ValueError, match="optimizer must be one of"):
        resolve_optim("lamb", "constant", {})


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"lr": 0.0}, "lr must be a finite real number in \\(0.0, inf\\)"),
        ({"optimizer": "sgd", "momentum": 1.0}, "momentum must be in \\[0, 1\\)"),
        ({"optimizer": "sgd", "momentum": 0.0, "nesterov": True}, "nesterov=True needs momentum > 0"),
        ({"weight_decay": -1e-4}, "weight_decay must be"),
        ({"schedule": "step", "lr_milestones": (150, 100)}, "lr_milestones must be increasing epochs >= 1"),
        ({"schedule": "step", "lr_milestones": (0,)}, "lr_milestones must be increasing"),
        ({"schedule": "step", "lr_milestones": (5,), "lr_factor": 2.0}, "lr_factor must be"),
    ],
)
def test_bad_optimizer_options_are_refused_by_name(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        OptimConfig(**kwargs)  # type: ignore[arg-type]


def test_sgd_step_is_momentum_sgd_with_weight_decay() -> None:
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    for nesterov in (False, True):
        with torch.no_grad():
            w.copy_(torch.tensor([1.0, -2.0]))
        opt = make_optimizer(
            [w], OptimConfig(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
        )
        assert isinstance(opt, torch.optim.SGD)
        group = opt.param_groups[0]
        assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.1, 0.9, nesterov, 0.01)
        expected = w.detach().clone()
        buf = None
        for _ in range(3):
            opt.zero_grad()
            (w**2).sum().backward()
            g = 2 * expected + 0.01 * expected
            buf = g if buf is None else 0.9 * buf + g
            expected = expected - 0.1 * (g + 0.9 * buf if nesterov else buf)
            opt.step()
            torch.testing.assert_close(w.detach(), expected)
    adam = make_optimizer([w], OptimConfig(weight_decay=1e-4))
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["weight_decay"] == 1e-4


def test_step_schedule_divides_the_rate_at_its_milestones() -> None:
    w = torch.zeros(1, requires_grad=True)
    optim = OptimConfig(optimizer="sgd", lr=0.1, schedule="step", lr_milestones=(2, 3), lr_factor=0.1)
    opt = make_optimizer([w], optim)
    schedule = make_schedule(opt, optim, total_steps=15, steps_per_epoch=3)
    assert schedule is not None
    rates = []
    for _ in range(15):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    np.testing.assert_allclose(rates, [0.1] * 6 + [0.01] * 3 + [0.001] * 6, rtol=1e-12)
    # The same as PyTorch's MultiStepLR stepped once per epoch.
    opt2 = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    multi = torch.optim.lr_scheduler.MultiStepLR(opt2, milestones=[2, 3], gamma=0.1)
    per_epoch = []
    for _ in range(5):
        per_epoch.append(opt2.param_groups[0]["lr"])
        opt2.step()
        multi.step()
    np.testing.assert_allclose(rates[::3], per_epoch, rtol=1e-12)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        make_schedule(opt, optim, total_steps=15)


def test_precision_auto_is_bf16_on_cuda_only() -> None:
    assert autocast_dtype("auto", "cpu") is None and autocast_dtype("fp32", "cpu") is None
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16
    if torch.cuda.is_available():
        expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        assert autocast_dtype("auto", "cuda") is expected


# --------------------------------------------------------------------------- as options of the harness

RECIPE = [
    "--optimizer", "sgd", "--lr", "0.05", "--nesterov", "--weight-decay", "5e-4", "--schedule", "step",
    "--lr-milestones", "1,2", "--lr-factor", "0.2", "--crop-padding", "2", "--flip", "--normalize",
    "--precision", "auto",
]  # fmt: skip


def test_recipe_options_parse_into_the_config() -> None:
    args = build_parser().parse_args(["compare", *RECIPE])
    cfg = CompareConfig(**spec_values(args, COMPARE_OPTIONS)).validate()
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay) == ("sgd", 0.05, 0.9, True, 5e-4)
    assert (cfg.schedule, cfg.lr_milestones, cfg.lr_factor) == ("step", (1, 2), 0.2)
    assert (cfg.crop_padding, cfg.flip, cfg.normalize, cfg.precision) == (2, True, True, "auto")
    assert cfg.optim() == OptimConfig(
        optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="step",
        lr_milestones=(1, 2), lr_factor=0.2,
    )  # fmt: skip
    assert cfg.crop_flip() == CropFlip(2, True)
    # The defaults are the keras.io reference's: Adam 1e-3, constant, no crop, no flip.
    plain = CompareConfig().validate()
    assert (plain.optimizer, plain.lr, plain.momentum, plain.schedule, plain.crop_flip()) == (
        "adam",
        1e-3,
        None,
        "constant",
        None,
    )
    assert "precision" in STUDY_OVERRIDES


def test_bad_recipe_options_are_one_line_errors(
    toy_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (["--momentum", "0.5"], "momentum=0.5 is not used by optimizer='adam'"),
        (["--schedule", "step"], "schedule='step' needs lr_milestones"),
        (["--schedule", "step", "--lr-milestones", "5,3"], "lr_milestones must be increasing epochs"),
        (["--crop-padding", "-1"], "crop_padding must be an int >= 0"),
    ]
    for extra, message in cases:
        code = main(["compare", "--dataset", str(toy_npz), *extra, "--out", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, (extra, err)


def test_help_lists_the_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = capsys.readouterr().out
    for flag in ("--optimizer", "--momentum", "--nesterov", "--weight-decay", "--schedule", "--lr-milestones",
                 "--lr-factor", "--crop-padding", "--flip", "--normalize", "--precision"):  # fmt: skip
        assert flag in text, flag
    assert "optimizer and learning-rate schedule (every arm)" in text
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    assert "--precision" in capsys.readouterr().out


def test_compare_trains_with_the_recipe_and_records_it(toy_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    quick = ["--epochs", "2", "--batch-size", "32", "--val-size", "100", "--train-limit", "160", "--test-limit", "100"]
    args = ["compare", "--dataset", str(toy_npz), "--model", "preact-resnet18", *quick, *RECIPE]
    assert main([*args, "--alpha", "1", "--sequential", "--threads", "1", "--no-progress", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert {k: saved[k] for k in ("optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule")} == {
        "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "schedule": "step",
    }  # fmt: skip
    assert (saved["lr_milestones"], saved["lr_factor"], saved["crop_padding"], saved["flip"]) == ([1, 2], 0.2, 2, True)
    assert saved["normalize"] is True and saved["precision"] == "auto" and saved["model"] == "preact-resnet18"
    for arm in ("mixup", "none"):
        result = json.loads((out / arm / "result.json").read_text())
        assert len(result["history"]) == 2 and all(math.isfinite(h["train_loss"]) for h in result["history"])
    # Resuming with the same options is accepted; with another recipe it is refused.
    assert (
        main([*args, "--alpha", "1", "--sequential", "--threads", "1", "--no-progress", "--resume", "--out", str(out)])
        == 0
    )
    assert main([*args, "--alpha", "1", "--lr", "0.1", "--no-progress", "--resume", "--out", str(out)]) == 2


def _study(npz: Path, extra: str = "", seeds: int = 2, model: str = "reference-cnn") -> str:
    return (
        f'name = "recipe"\nseeds = {seeds}\n[defaults]\ndataset = "{npz}"\nmodel = "{model}"\nepochs = 2\n'
        'batch_size = 32\nval_size = 100\ntrain_limit = 192\ntest_limit = 100\noptimizer = "sgd"\nlr = 0.05\n'
        'weight_decay = 5e-4\nschedule = "step"\nlr_milestones = [1]\ncrop_padding = 2\nflip = true\n'
        f"normalize = true\n{extra}"
        '[[arms]]\nname = "none"\nmethod = "none"\n[[arms]]\nname = "mixup"\nmethod = "mixup"\nalpha = 1.0\n'
    )


def test_study_cells_record_the_recipe_and_repeat_exactly(toy_npz: Path, tmp_path: Path) -> None:
    spec = parse_study(_study(toy_npz, seeds=1))
    first = run_study(spec, tmp_path / "a", progress=False, threads=1)
    second = run_study(spec, tmp_path / "b", progress=False, threads=1)
    for ra, rb in zip(first, second):  # the same seed: the same numbers on the CPU
        assert [h["train_loss"] for h in ra["history"]] == [h["train_loss"] for h in rb["history"]]
        assert ra["test_acc"] == rb["test_acc"]
    cell = json.loads((cell_dir(tmp_path / "a", spec.cells()[1]) / "cell.json").read_text())
    assert (cell["optimizer"], cell["momentum"], cell["lr_milestones"], cell["crop_padding"], cell["flip"]) == (
        "sgd", 0.9, [1], 2, True,
    )  # fmt: skip
    assert cell["normalize"] is True and cell["precision"] == "fp32"


def test_batch_seeds_trains_the_recipe_as_one_by_one(toy_npz: Path, tmp_path: Path) -> None:
    # The stacked seeds see their own crops (their loaders) and the same normalisation; SGD
    # with momentum over the stacked weights is each seed's own (elementwise).
    spec = parse_study(_study(toy_npz))
    batched = run_study(spec, tmp_path / "batched", progress=False, batch_seeds=True, threads=1)
    alone = run_study(spec, tmp_path / "alone", progress=False, threads=1)
    for rb, ra in zip(batched, alone):
        assert rb["test_acc"] == ra["test_acc"]
        for hb, ha in zip(rb["history"], ra["history"]):
            assert hb["train_acc"] == ha["train_acc"] and hb["val_acc"] == ha["val_acc"]
            assert math.isclose(hb["train_loss"], ha["train_loss"], rel_tol=1e-4)
    bf16 = parse_study(_study(toy_npz, extra='precision = "bf16"\n'))
    with pytest.raises(BatchSeedsUnsupported, match="--batch-seeds trains in float32"):
        run_study(bf16, tmp_path / "bf16", progress=False, batch_seeds=True, threads=1)


def test_train_arm_leaves_the_model_without_the_normalisation_hook(toy_npz: Path, tmp_path: Path) -> None:
    data = np.load(toy_npz)
    x, y = data["x"][:, None][:64], data["y"][:64]
    loader = InMemoryLoader(x, y, num_classes=3, batch_size=32, seed=0, normalize=True, crop=CropFlip(2, True))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 3))
    val = (torch.from_numpy(x[:16]), torch.from_numpy(y[:16]))
    result = train_arm(
        "a", model, loader, val=val, test=val, epochs=1, out_dir=tmp_path / "arm", optim=OptimConfig(optimizer="sgd")
    )
    assert math.isfinite(result.test_loss)
    assert not model._forward_pre_hooks
