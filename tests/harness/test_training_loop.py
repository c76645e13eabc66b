"""The parts of the epoch loop both trainers drive, each on its own (training/loop.py, testing.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from vicinal.experiments.spec import OptimConfig
from vicinal.experiments.testing import FAULT_ENV, HOLD_ENV, WORKER_DIR_ENV, epoch_hooks
from vicinal.experiments.training.loop import (
    METRICS,
    Checkpoint,
    EpochTotals,
    ModelRun,
    NonFiniteLossError,
    append_metrics,
    make_optimizer,
    make_schedule,
    restart_metrics,
)


def test_cosine_schedule_anneals_per_step_to_zero_and_constant_has_none() -> None:
    weights = [torch.zeros(2, requires_grad=True)]
    optim = OptimConfig(lr=0.1, schedule="cosine")
    optimizer = make_optimizer(weights, optim)
    schedule = make_schedule(optimizer, optim, total_steps=4)
    assert schedule is not None
    rates = []
    for _ in range(5):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx(
        [0.1, 0.1 * (1 + math.cos(math.pi / 4)) / 2, 0.05, 0.1 * (1 - math.cos(math.pi / 4)) / 2, 0]
    )
    assert make_schedule(make_optimizer(weights, OptimConfig()), OptimConfig(), total_steps=4) is None


def test_epoch_totals_sum_in_float64_and_name_the_first_non_finite_step() -> None:
    totals = EpochTotals((2,), torch.device("cpu"))
    target = torch.eye(3)[[0, 1]].expand(2, 2, 3)  # (S=2, B=2, classes=3)
    logits = torch.tensor([[[5.0, 0, 0], [0, 5.0, 0]], [[5.0, 0, 0], [5.0, 0, 0]]])
    totals.add(0, torch.tensor([0.5, 0.25]), logits, target)
    totals.add(1, torch.tensor([0.5, float("nan")]), logits, target)
    totals.add(2, torch.tensor([0.5, float("inf")]), logits, target)
    with pytest.raises(NonFiniteLossError, match=r"^arm 'b': the training loss became NaN or inf at epoch 4, step 1;"):
        totals.finish(["arm 'a'", "arm 'b'"], epoch=3)
    fine = EpochTotals((), torch.device("cpu"))
    for step, loss in enumerate((0.1, 0.2, 0.3)):
        fine.add(step, torch.tensor(loss), logits[1], target[1])
    ((loss, acc),) = fine.finish(["arm 'a'"], epoch=0)
    assert loss == (float(torch.tensor(0.1)) * 2 + float(torch.tensor(0.2)) * 2 + float(torch.tensor(0.3)) * 2) / 6
    assert acc == 0.5


def test_checkpoint_round_trip_and_resume_point(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = make_optimizer(model.parameters(), OptimConfig())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    history = [{"epoch": 0, "val_acc": 0.5}, {"epoch": 1, "val_acc": 0.75}]
    stored_seconds = 3.5  # a recorded field round-tripped, not a measured time
    Checkpoint(model.state_dict(), optimizer.state_dict(), 1, history, stored_seconds, None, model.state_dict()).save(
        tmp_path / "checkpoint.pt"
    )
    loaded = Checkpoint.load(tmp_path / "checkpoint.pt")
    assert loaded is not None and Checkpoint.load(tmp_path / "missing.pt") is None
    assert (loaded.epoch, loaded.history, loaded.elapsed, loaded.scheduler) == (1, history, stored_seconds, None)
    assert all(torch.equal(loaded.model[k], v) for k, v in model.state_dict().items())
    run = ModelRun.resume("arm 'x'", tmp_path, loaded)
    assert (run.start_epoch, run.history, run.elapsed) == (2, history, stored_seconds)
    assert ModelRun.resume("arm 'x'", tmp_path, None).start_epoch == 0


def test_metrics_log_is_rebuilt_from_the_history_or_removed(tmp_path: Path) -> None:
    append_metrics(tmp_path, {"epoch": 0})
    append_metrics(tmp_path, {"epoch": 1})  # an epoch the checkpoint does not hold
    restart_metrics(tmp_path, [{"epoch": 0}])
    assert [json.loads(line) for line in (tmp_path / METRICS).read_text().splitlines()] == [{"epoch": 0}]
    restart_metrics(tmp_path, [])
    assert not (tmp_path / METRICS).exists()


def test_epoch_hooks_read_the_environment_once_and_only_for_their_arm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(FAULT_ENV, raising=False)
    monkeypatch.delenv(HOLD_ENV, raising=False)
    assert epoch_hooks("mixup") == []
    monkeypatch.setenv(FAULT_ENV, "none:1")
    assert epoch_hooks("mixup") == []  # another arm's
    (kill,) = epoch_hooks("none")
    kill({"epoch": 0})  # not its epoch: returns (at epoch 1 it would SIGKILL this process)
    monkeypatch.setenv(FAULT_ENV, "mixup:x")
    with pytest.raises(ValueError, match=f"{FAULT_ENV} must be 'ARM:EPOCH' or 'EPOCH', got 'mixup:x'"):
        epoch_hooks("mixup")
    monkeypatch.delenv(FAULT_ENV)
    monkeypatch.setenv(HOLD_ENV, "2")
    monkeypatch.delenv(WORKER_DIR_ENV, raising=False)
    with pytest.raises(ValueError, match=f"{HOLD_ENV} needs {WORKER_DIR_ENV}"):
        epoch_hooks("mixup")
