"""The harness arms ``--method regmixup`` and ``--method mit``: the step mixes plain batches
with the library's pieces, runs record the temperature, and --batch-seeds trains them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vicinal import MixConfig
from vicinal.experiments.cli import main
from vicinal.experiments.loader import InMemoryLoader
from vicinal.experiments.report.report import render_report
from vicinal.experiments.runs.study import run_study
from vicinal.experiments.spec import CellSpec, CompareConfig, OptimConfig, StepLoss, parse_study
from vicinal.experiments.training.loop import make_optimizer
from vicinal.experiments.training.single import SingleModel
from vicinal.torch.mit import MixupInferenceTraining, mit_config
from vicinal.torch.regmixup import RegMixup, regmixup_config
from vicinal.transforms import Mixer

QUICK = ["--epochs", "1", "--batch-size", "32", "--val-size", "100", "--sequential", "--threads", "1", "--no-progress"]


@pytest.mark.parametrize(
    ("method", "extra", "described"),
    [
        ("regmixup", ["--eta", "0.5"], "regmixup, alpha=20.0, granularity=batch, pairing=permute, eta=0.5"),
        ("mit", ["--mit-margin", "0.4"], "mit, alpha=1.0, granularity=batch, pairing=permute, mit_margin=0.4"),
    ],
)
def test_compare_trains_the_arm(toy_npz: Path, tmp_path: Path, method: str, extra: list[str], described: str) -> None:
    out = tmp_path / method
    assert main(["compare", "--dataset", str(toy_npz), "--method", method, *extra, *QUICK, "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["method"] == method and saved["granularity"] == "batch" and saved["pairing"] == "permute"
    assert f"Mixed arm: {described}." in (out / "summary.md").read_text()
    arms = {a["name"]: a for a in json.loads((out / "results.json").read_text())["arms"]}
    assert arms["mixup"]["test_acc"] > 0.5 and np.isfinite(arms["mixup"]["history"][0]["train_loss"])


def _loader(step_loss: StepLoss, seed: int = 4) -> InMemoryLoader:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 8, 8), generator=g, dtype=torch.uint8)
    return InMemoryLoader(images, torch.arange(40) % 3, num_classes=3, batch_size=8, seed=seed, step_loss=step_loss)


@pytest.mark.parametrize("method", ["regmixup", "mit"])
def test_the_step_is_the_library_piece_at_the_loaders_seed_epoch_and_step(method: str) -> None:
    if method == "regmixup":
        step_loss = StepLoss("regmixup", regmixup_config(), eta=0.5)
        piece: RegMixup | MixupInferenceTraining = RegMixup(Mixer(regmixup_config(), num_classes=3, seed=4), eta=0.5)
    else:
        step_loss = StepLoss("mit", mit_config(), margin=0.3)
        piece = MixupInferenceTraining(mit_config(), margin=0.3, num_classes=3, seed=4)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    loader = _loader(step_loss)
    trainer = SingleModel(model, model, loader, make_optimizer(model.parameters(), OptimConfig()))
    batches = list(trainer.start_epoch(1))
    assert batches[0][1].shape == (8, 3)  # plain batches, one-hot targets
    first_rows = torch.from_numpy(loader.order(1)[:8].copy())
    assert torch.equal(batches[0][1], torch.nn.functional.one_hot(loader.labels[first_rows], 3).float())
    for step in (0, 3):
        loss, logits, targets = trainer.loss(step, 1, batches[step])
        want = piece(model, *batches[step], step=step, epoch=1)
        assert torch.equal(loss, want.loss) and torch.equal(logits, want.logits) and torch.equal(targets, want.targets)


def test_study_cells_record_the_temperature_and_the_ece_after_scaling(toy_npz: Path, tmp_path: Path) -> None:
    study = (
        f"name='sl'\nseeds=1\n[defaults]\ndataset='{toy_npz}'\nepochs=1\nbatch_size=32\nval_size=100\n"
        "pairing='stream'\n"  # inherited by none; the step-loss arms set their own
        "[[arms]]\nname='none'\nmethod='none'\n"
        "[[arms]]\nname='regmixup'\nmethod='regmixup'\nalpha=10.0\npairing='permute'\nbaseline='none'\n"
        "[[arms]]\nname='mit'\nmethod='mit'\nmit_margin=0.5\npairing='permute'\nbaseline='none'\n"
    )
    results = run_study(parse_study(study), tmp_path / "s", progress=False, threads=1)
    for r in results:
        for which in ("last", "best"):
            m = r["metrics"][which]
            assert 0.01 <= m["temperature"] <= 100 and 0 <= m["ece_ts"] <= 1 and np.isfinite(m["nll_ts"])
            assert 0 <= m["ece"] <= 1
    cell = json.loads((tmp_path / "s" / "cells" / "regmixup" / "seed0" / "cell.json").read_text())
    assert (cell["method"], cell["alpha"], cell["eta"], cell["granularity"]) == ("regmixup", 10.0, 1.0, "batch")
    report = render_report(tmp_path / "s", preview=False)["markdown"].read_text()
    assert "ECE after temperature scaling" in report and "temperature T" in report


def test_batch_seeds_trains_them_as_one_by_one(tmp_path: Path) -> None:
    """Stacked and alone: the same mixing, λ draws and dropout masks per seed; the losses
    agree to 1e-4 relative (summation order only), the accuracies exactly."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    x = rng.normal(size=(400, 12))
    for c in range(3):
        x[y == c, 3 * c : 3 * c + 3] += 1.0
    npz = tmp_path / "tab.npz"
    np.savez(npz, x=x.astype(np.float32), y=y)
    spec = parse_study(
        f"name='b'\nseeds=2\n[defaults]\ndataset='{npz}'\nmodel='mlp'\nepochs=2\nbatch_size=32\nval_size=100\n"
        "[[arms]]\nname='regmixup'\nmethod='regmixup'\n[[arms]]\nname='mit'\nmethod='mit'\n"
    )
    batched = run_study(spec, tmp_path / "batched", progress=False, batch_seeds=True, threads=1)
    alone = run_study(spec, tmp_path / "alone", progress=False, threads=1)
    for arm in ("regmixup", "mit"):
        cell = json.loads((tmp_path / "batched" / "cells" / arm / "seed1" / "cell.json").read_text())
        assert cell["batch_seeds"] is True  # trained stacked, not refused nor alone
    assert len(batched) == len(alone) == 4
    for rb, ra in zip(batched, alone):
        assert rb["name"] == ra["name"] and rb["test_acc"] == ra["test_acc"]
        for hb, ha in zip(rb["history"], ra["history"]):
            assert hb["train_acc"] == ha["train_acc"] and hb["val_acc"] == ha["val_acc"]
            assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-4)
        assert rb["metrics"]["last"]["temperature"] == pytest.approx(ra["metrics"]["last"]["temperature"], rel=1e-3)


def test_refusals_name_the_option() -> None:
    with pytest.raises(ValueError, match=r"method='mit': margin must be in \(0, 1\).*singular"):
        CompareConfig(method="mit", mit_margin=0.0).validate()
    with pytest.raises(ValueError, match="eta=2.0 is not used by method='mit'"):
        CompareConfig(method="mit", eta=2.0).validate()
    with pytest.raises(ValueError, match="method='regmixup': eta must be"):
        CompareConfig(method="regmixup", eta=-1.0).validate()
    with pytest.raises(ValueError, match=r"mixes within the batch.*set pairing on the arm"):
        CellSpec(method="regmixup", pairing="stream").validate()
    with pytest.raises(ValueError, match="jsd needs AugMix without input mixing"):
        CompareConfig(method="regmixup", augmix=True, jsd=True).validate()
    assert CompareConfig(method="mit").validate().loader_mixing() is None
    step_loss = StepLoss("mit", mit_config())
    with pytest.raises(ValueError, match="global batch"):
        InMemoryLoader(torch.zeros(4, 3), torch.zeros(4), num_classes=2, step_loss=step_loss, policy="global")
    with pytest.raises(ValueError, match="mix=None"):
        InMemoryLoader(torch.zeros(4, 3), torch.zeros(4), num_classes=2, step_loss=step_loss, mix=MixConfig())
