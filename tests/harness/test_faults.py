"""Faults and bad input in the harness end with one clear line and lose nothing finished.

Every fault is injected (a patched call, a file written on purpose), never timed.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

import vicinal.experiments.atomic as atomic
import vicinal.experiments.training.single as train
from vicinal.experiments.atomic import DiskFullError, UnreadableFileError, atomic_write_json, load_tensors
from vicinal.experiments.cli import main

QUICK = ["--epochs", "2", "--batch-size", "32", "--val-size", "100", "--sequential", "--threads", "1", "--no-progress"]


def _compare(toy: Path, out: Path, *extra: str) -> int:
    return main(["compare", "--dataset", str(toy), *QUICK, "--out", str(out), *extra])


class _RunsCode:
    """Unpickling this calls ``Path.touch`` on the marker: what a hostile checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (["--seed", "-1"], "seed"),
        (["--seed", "99999999999999999999999"], "seed must be an int <="),
        (["--label-smoothing", "1.5"], "label_smoothing"),
        (["--model", "nosuch"], "model must be one of"),
        (["--val-size", "0"], "val_size"),
        (["--alpha", "1e-320"], "alpha"),
        (["--method", "cutmix", "--alpha", "0.7"], "not used by method='cutmix'"),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(
    toy_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], match: str
) -> None:
    out = tmp_path / "run"
    assert _compare(toy_npz, out, *options) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_an_out_folder_that_cannot_be_written_is_refused_first(
    toy_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert _compare(toy_npz, blocker / "run") == 2
    assert "is a file, not a folder" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("record", ["matching", "none"])
def test_a_checkpoint_that_carries_code_is_refused_and_the_code_never_runs(
    toy_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], record: str
) -> None:
    run = tmp_path / "run"
    assert _compare(toy_npz, run) == 0
    marker = tmp_path / "code-ran"
    (run / "mixup" / "result.json").unlink()
    planted = pickle.dumps({"model": _RunsCode(marker)})
    # Whoever can plant a file can plant its checksum record too (or delete it): the
    # checksum catches damage, weights_only=True is what keeps code from running.
    if record == "matching":
        atomic.atomic_write_bytes(run / "mixup" / "checkpoint.pt", planted, checksum=True)
    else:
        (run / "mixup" / "checkpoint.pt").write_bytes(planted)
        atomic.checksum_path(run / "mixup" / "checkpoint.pt").unlink()
    capsys.readouterr()
    assert _compare(toy_npz, run, "--resume") == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt holds objects other than tensors" in err and "could run code" in err
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"])
def test_a_truncated_checkpoint_names_the_file(
    toy_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    run = tmp_path / "run"
    assert _compare(toy_npz, run) == 0
    (run / "none" / "result.json").unlink()
    (run / "none" / "checkpoint.pt").write_bytes(content)
    capsys.readouterr()
    assert _compare(toy_npz, run, "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoint.pt is truncated or corrupt" in err and len(err.splitlines()) == 1


def test_a_malformed_config_names_the_file(toy_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{not json")
    assert _compare(toy_npz, run, "--resume") == 2
    assert f"{run / 'config.json'} is not valid JSON" in capsys.readouterr().err


def test_load_tensors_reads_plain_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(2), "epoch": 3, "history": [{"a": 1.0}]}, path)
    assert load_tensors(path)["epoch"] == 3
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(UnreadableFileError):
        load_tensors(tmp_path / "bad.pt")


def test_disk_full_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "results.json"
    atomic_write_json(path, {"finished": 1})

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", no_space)
    with pytest.raises(DiskFullError, match=f"no space left on device while writing {path}"):
        atomic_write_json(path, {"finished": 2})
    assert json.loads(path.read_text()) == {"finished": 1}
    assert os.listdir(tmp_path) == ["results.json"]


def test_disk_full_during_a_run_ends_with_one_line(
    toy_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_save = torch.save

    def failing_save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        if isinstance(obj, dict) and "optimizer" in obj:  # checkpoints, not init.pt
            raise RuntimeError("[enforce fail at inline_container.cc:672] PytorchStreamWriter failed writing file")
        real_save(obj, f, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "save", failing_save)
    run = tmp_path / "run"
    assert _compare(toy_npz, run) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vicinal: error: no space left on device while writing") and "checkpoint.pt" in err
    assert len(err.splitlines()) == 1
    leftovers = [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_a_non_finite_loss_stops_the_arm_naming_epoch_and_step(
    toy_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = {"n": 0}
    real_loss = train.soft_target_cross_entropy

    def loss_that_blows_up(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = real_loss(logits, target)
        return loss * float("nan") if calls["n"] == 30 else loss  # in epoch 2 (about 20 steps an epoch)

    monkeypatch.setattr(train, "soft_target_cross_entropy", loss_that_blows_up)
    run = tmp_path / "run"
    assert _compare(toy_npz, run) == 2
    err = capsys.readouterr().err
    found = re.search(r"arm 'mixup': the training loss became NaN or inf at epoch 2, step (\d+)", err)
    assert found, err
    assert 0 <= int(found.group(1)) < 29
    assert not (run / "results.json").exists()
    records = (run / "mixup" / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 1  # epoch 1 finished and kept
