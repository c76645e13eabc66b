"""The experiment harness: loader, model, trainer, resume, the compare command."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vicinal import MixConfig
from vicinal.experiments.cli import main
from vicinal.experiments.loader import InMemoryLoader
from vicinal.experiments.models import ReferenceCNN, available_models, build_model
from vicinal.experiments.runs.compare import run_compare
from vicinal.experiments.spec import CompareConfig
from vicinal.sampling import epoch_order

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _tiny(toy: Path, **kw: object) -> CompareConfig:
    base = dict(dataset=str(toy), epochs=2, batch_size=32, val_size=100, seed=1, parallel=False, threads=1)
    base.update(kw)
    return CompareConfig(**base)  # type: ignore[arg-type]


def test_loader_visits_every_sample_once_per_epoch() -> None:
    n = 203
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 16, 16).contiguous()
    labels = torch.arange(n) % 5
    loader = InMemoryLoader(images, labels, num_classes=5, batch_size=16, seed=3)
    assert len(loader) == 13
    seen = torch.cat([(x[:, 0, 0, 0] * 255).round().long() for x, _ in loader.epoch(0)])
    assert sorted(seen.tolist()) == list(range(n))
    np.testing.assert_array_equal(seen.numpy(), epoch_order(3, 0, n))
    seen1 = torch.cat([(x[:, 0, 0, 0] * 255).round().long() for x, _ in loader.epoch(1)])
    assert not torch.equal(seen, seen1)
    assert len(InMemoryLoader(images, labels, num_classes=5, batch_size=16, drop_last=True)) == 12


def test_loader_stream_mixing_matches_reference_formula() -> None:
    n = 100
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 12, 12), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 4, (n,), generator=g)
    cfg = MixConfig(alpha=0.2, pairing="stream")
    loader = InMemoryLoader(images, labels, num_classes=4, batch_size=32, seed=7, mix=cfg)
    from vicinal.sampling import sample_plan

    for step, (x, y) in enumerate(loader.epoch(2)):
        idx = np.array(epoch_order(7, 2, n)[step * 32 : (step + 1) * 32])
        plan = sample_plan(cfg, len(idx), seed=7, epoch=2, step=step, dataset_size=n, stream_offset=step * 32)
        pidx = plan.stream_indices
        lam = torch.from_numpy(plan.lam).float()
        x1, x2 = images[idx].float() / 255, images[pidx].float() / 255
        expected = x1 * lam.view(-1, 1, 1, 1) + x2 * (1 - lam.view(-1, 1, 1, 1))
        torch.testing.assert_close(x, expected, rtol=0, atol=2**-23)
        y1, y2 = torch.eye(4)[labels[idx]], torch.eye(4)[labels[pidx]]
        torch.testing.assert_close(y, y1 * lam[:, None] + y2 * (1 - lam[:, None]), rtol=0, atol=0)


def test_loader_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        InMemoryLoader(torch.zeros(4, 1, 12, 12), torch.zeros(4, dtype=torch.long), num_classes=2)
    with pytest.raises(ValueError, match="labels"):
        InMemoryLoader(torch.zeros(4, 1, 12, 12, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), num_classes=2)
    with pytest.raises(ValueError, match="class ids"):
        InMemoryLoader(torch.zeros(4, 1, 12, 12, dtype=torch.uint8), torch.tensor([0, 1, 2, 5]), num_classes=3)


def test_reference_cnn_shape_and_keras_init() -> None:
    assert "reference-cnn" in available_models()
    torch.manual_seed(0)
    model = build_model("reference-cnn", (1, 28, 28), 10)
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert isinstance(model, ReferenceCNN)
    # Glorot-uniform bound sqrt(6 / (fan_in + fan_out)); biases zero.
    for layer, fan_in, fan_out in [
        (model.conv1, 25, 16 * 25),
        (model.conv2, 16 * 25, 32 * 25),
        (model.fc1, 32, 128),
        (model.fc2, 128, 10),
    ]:
        bound = math.sqrt(6 / (fan_in + fan_out))
        w = layer.weight.detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
        assert torch.count_nonzero(layer.bias) == 0
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == (16 * 25 + 16) + (32 * 16 * 25 + 32) + (32 * 128 + 128) + (128 * 10 + 10)
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("resnet-9000", (1, 28, 28), 10)


def test_compare_runs_learns_and_writes_run_folder(toy_npz: Path, tmp_path: Path) -> None:
    results = run_compare(_tiny(toy_npz, epochs=3), tmp_path / "run", progress=False)
    assert [r.name for r in results] == ["mixup", "none"]
    for r in results:
        assert r.test_acc > 0.8  # the toy classes are easy: both arms must learn them
        assert len(r.history) == 3
    run = tmp_path / "run"
    for name in ("config.json", "init.pt", "preview.png", "curves.png", "summary.md", "results.json"):
        assert (run / name).exists(), name
    assert (run / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (run / "mixup" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]
    assert "| mixup |" in (run / "summary.md").read_text()
    # the mixed arm trains on soft targets: its training loss is higher than the plain arm's
    assert results[0].history[-1]["train_loss"] > results[1].history[-1]["train_loss"]
    with pytest.raises(FileExistsError):
        run_compare(_tiny(toy_npz, epochs=3), run, progress=False)


def test_both_arms_start_from_the_saved_initial_weights(
    toy_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vicinal.experiments.runs.compare as compare

    starts: dict[str, dict[str, torch.Tensor]] = {}
    real_train_arm = compare.train_arm

    def recording_train_arm(name: str, model: torch.nn.Module, *args: object, **kwargs: object) -> object:
        starts[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return real_train_arm(name, model, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(compare, "train_arm", recording_train_arm)
    run_compare(_tiny(toy_npz, epochs=1), tmp_path / "run", progress=False)
    init = torch.load(tmp_path / "run" / "init.pt", weights_only=True)
    assert set(starts) == {"mixup", "none"}
    for state in starts.values():
        assert state.keys() == init.keys()
        for k in init:
            assert torch.equal(state[k], init[k]), k
    other = tmp_path / "other"
    run_compare(_tiny(toy_npz, epochs=1, seed=2), other, progress=False)
    other_init = torch.load(other / "init.pt", weights_only=True)
    assert any(not torch.equal(other_init[k], init[k]) for k in init)


@pytest.mark.slow
def test_same_seed_same_results_and_parallel_equals_sequential(toy_npz: Path, tmp_path: Path) -> None:
    a = run_compare(_tiny(toy_npz), tmp_path / "a", progress=False)
    b = run_compare(_tiny(toy_npz, parallel=True, threads=2), tmp_path / "b", progress=False)
    for ra, rb in zip(a, b):
        assert ra.test_acc == rb.test_acc and ra.test_loss == rb.test_loss
        assert [h["train_loss"] for h in ra.history] == [h["train_loss"] for h in rb.history]


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted_run(toy_npz: Path, tmp_path: Path) -> None:
    args = [
        "compare",
        "--dataset",
        str(toy_npz),
        "--epochs",
        "4",
        "--batch-size",
        "32",
        "--val-size",
        "100",
        "--seed",
        "2",
        "--sequential",
        "--threads",
        "1",
        "--no-progress",
    ]
    assert main(args + ["--out", str(tmp_path / "full")]) == 0

    killed = tmp_path / "killed"
    # The trainer kills itself (SIGKILL) right after the mixed arm checkpoints epoch 1.
    env = dict(os.environ, VICINAL_FAULT_KILL_AFTER_EPOCH="mixup:1")
    proc = subprocess.run(
        [sys.executable, "-m", "vicinal", *args, "--out", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL
    lines = (killed / "mixup" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]
    assert not (killed / "mixup" / "result.json").exists()

    assert main(args + ["--out", str(killed), "--resume"]) == 0
    full = json.loads((tmp_path / "full" / "results.json").read_text())["arms"]
    resumed = json.loads((killed / "results.json").read_text())["arms"]
    for f, r in zip(full, resumed):
        assert f["test_acc"] == r["test_acc"] and f["test_loss"] == r["test_loss"]
        strip = lambda h: [{k: v for k, v in e.items() if k != "elapsed_s"} for e in h]
        assert strip(f["history"]) == strip(r["history"])
    sa = torch.load(tmp_path / "full" / "none" / "checkpoint.pt", weights_only=False)["model"]
    sb = torch.load(killed / "none" / "checkpoint.pt", weights_only=False)["model"]
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_cli_help_and_bad_options(capsys: pytest.CaptureFixture[str], toy_npz: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        main(["compare", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--dataset",
        "--data-dir",
        "--epochs",
        "--batch-size",
        "--alpha",
        "--method",
        "--pairing",
        "--seed",
        "--out",
        "--device",
        "--threads",
        "--resume",
    ):
        assert option in out
    assert main(["compare", "--dataset", str(toy_npz), "--alpha", "-1", "--out", str(tmp_path / "x")]) == 2
    assert "alpha" in capsys.readouterr().err
    assert main(["compare", "--dataset", "cifar-1000", "--out", str(tmp_path / "y")]) == 2
    assert "dataset must be one of" in capsys.readouterr().err
    assert main(["compare", "--dataset", str(toy_npz), "--resume"]) == 2
    assert main(["preview", "--dataset", str(toy_npz), "--val-size", "10", "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").exists()


@pytest.mark.skipif(not (SHARED / "fashion-mnist").exists(), reason="shared Fashion-MNIST not present")
def test_compare_on_fashion_mnist_tiny(tmp_path: Path) -> None:
    rc = main(
        [
            "compare",
            "--data-dir",
            str(SHARED),
            "--epochs",
            "1",
            "--train-limit",
            "640",
            "--test-limit",
            "500",
            "--val-size",
            "200",
            "--no-progress",
            "--out",
            str(tmp_path / "fm"),
        ]
    )
    assert rc == 0
    res = json.loads((tmp_path / "fm" / "results.json").read_text())
    assert {a["name"] for a in res["arms"]} == {"mixup", "none"}
    cfg = json.loads((tmp_path / "fm" / "config.json").read_text())
    assert cfg["dataset"] == "fashion-mnist" and cfg["alpha"] == 0.2 and cfg["pairing"] == "stream"


def test_bf16_autocast_option_trains(toy_npz: Path, tmp_path: Path) -> None:
    results = run_compare(_tiny(toy_npz, epochs=2, precision="bf16", arms=("none",)), tmp_path / "bf", progress=False)
    assert results[0].test_acc > 0.8
    with pytest.raises(ValueError, match="precision"):
        _tiny(toy_npz, precision="fp8").validate()
