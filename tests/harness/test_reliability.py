"""Reliability, third pass (issue 25): damaged run files, a full disk, a vanished run
folder, bad study files and labels, refused studies, failing cells, stale temporaries.

Every fault is injected: bytes flipped or files rewritten on purpose, a patched call, the
testing seam (``vicinal.experiments.testing``), or a real small file system (a tmpfs,
where the test may mount one; skipped otherwise, and the same behaviour is also tested
with a patched call). Nothing waits on a timer.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import vicinal.experiments.atomic as atomic
import vicinal.experiments.runs.cells as cells_module
import vicinal.experiments.runs.compare as compare_module
import vicinal.experiments.runs.seed_groups as seed_groups_module
import vicinal.experiments.runs.study as study_module
import vicinal.experiments.training.single as single_module
from toydata import fake_result
from vicinal.experiments.atomic import (
    DiskFullError,
    UnreadableFileError,
    atomic_write_json,
    checksum_path,
    read_json,
    read_verified,
    remove_stale_temporaries,
)
from vicinal.experiments.cli import main
from vicinal.experiments.data import DatasetError, load_npz
from vicinal.experiments.data.dataset import MAX_UNNAMED_CLASSES
from vicinal.experiments.errors import FAILED, CellsFailed
from vicinal.experiments.runs.study import run_study
from vicinal.experiments.spec import CellSpec, cell_dir, load_study, parse_study
from vicinal.experiments.testing import DELETE_ENV, DELETE_PATH_ENV, WORKER_DIR_ENV
from vicinal.experiments.training.loop import NonFiniteLossError

QUICK = ["--epochs", "2", "--batch-size", "32", "--val-size", "100", "--sequential", "--threads", "1", "--no-progress"]


def _compare(toy: Path, out: Path, *extra: str) -> int:
    return main(["compare", "--dataset", str(toy), *QUICK, "--out", str(out), *extra])


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    """What the command printed on stderr, which must be one line."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def finished_run(toy_npz: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-epoch compare run; tests damage copies of it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert _compare(toy_npz, run) == 0
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def _dead_pid() -> int:
    """The pid of a process that has ended (a child that exited and was reaped)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


# --------------------------------------------------------------------------- a real small file system


class SmallDisk:
    """Mounts tmpfs file systems of a given size (root only); unmounts them at the end."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mounted: list[Path] = []

    def __call__(self, size_kib: int) -> Path:
        where = self.base / f"disk{len(self.mounted)}"
        where.mkdir()
        if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a tmpfs needs root and mount(8)")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(where)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        self.mounted.append(where)
        return where

    def grow(self, where: Path, size_kib: int) -> None:
        """Make room, as a user who freed some space would."""
        subprocess.run(["mount", "-o", f"remount,size={size_kib}k", str(where)], check=True)

    def unmount_all(self) -> None:
        for where in self.mounted:
            if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path)
    try:
        yield disk
    finally:
        disk.unmount_all()


# --------------------------------------------------------------------------- checksums


def test_a_checkpoint_with_flipped_bytes_is_refused_by_name(
    finished_run: Path, toy_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(finished_run, tmp_path)
    (run / "none" / "result.json").unlink()  # the resume goes through the checkpoint
    path = run / "none" / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    at = len(data) // 3  # inside the tensors' bytes: torch.load alone accepts this
    data[at : at + 64] = bytes(b ^ 0xFF for b in data[at : at + 64])
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert _compare(toy_npz, run, "--resume") == 2
    err = _one_line(capsys)
    assert f"{path} is truncated or corrupt" in err and "checkpoint.pt.sha256" in err
    assert "delete it to retrain this arm from the start, or restore it" in err
    assert not (run / "none" / "result.json").exists()  # no result from wrong weights


def test_every_file_a_compare_run_reads_back_carries_its_checksum(finished_run: Path) -> None:
    names = ["config.json", "init.pt", "results.json"]
    names += [f"{arm}/{name}" for arm in ("mixup", "none") for name in ("checkpoint.pt", "result.json")]
    for name in names:
        record = json.loads(checksum_path(finished_run / name).read_text())
        assert record["file"] == Path(name).name and record["checksum"].startswith("sha256:")
        assert record["size"] == (finished_run / name).stat().st_size
        read_verified(finished_run / name)
    # Files nobody reads back get no record.
    assert not checksum_path(finished_run / "summary.md").exists()
    assert not checksum_path(finished_run / "none" / "metrics.jsonl").exists()


def test_a_crash_between_the_record_and_the_rename_leaves_a_pair_that_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "result.json"
    atomic_write_json(path, {"v": 1}, checksum=True)
    real_replace = os.replace

    def dies_before_the_data_rename(src: Any, dst: Any) -> None:
        if Path(dst) == path:  # the checksum record was renamed already
            raise OSError(errno.EIO, "the machine stopped here")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", dies_before_the_data_rename)
    with pytest.raises(OSError, match="stopped here"):
        atomic_write_json(path, {"v": 2}, checksum=True)
    monkeypatch.undo()
    assert (
        json.loads(checksum_path(path).read_text())["checksum"]
        != json.loads(checksum_path(path).read_text())["previous"]
    )
    assert read_json(path) == {"v": 1}  # the old file, still accepted
    assert _temporaries(tmp_path) == []
    atomic_write_json(path, {"v": 3}, checksum=True)
    assert read_json(path) == {"v": 3}
    # A file edited after it was written is refused; one without a record is read unverified.
    path.write_text('{"v": 4}\n')
    with pytest.raises(UnreadableFileError, match="does not match the checksum written with it"):
        read_json(path)
    checksum_path(path).unlink()
    assert read_json(path) == {"v": 4}
    # A damaged record is named, with what to do.
    checksum_path(path).write_text("{not json")
    with pytest.raises(UnreadableFileError, match=r"result\.json\.sha256 is damaged.*delete it"):
        read_json(path)


def test_reads_refuse_non_finite_numbers_and_check_their_schema(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    for text, match in [
        ('{"a": NaN}', "holds NaN"),
        ('{"a": -Infinity}', "holds -Infinity"),
        ('{"a": 1e999}', "holds 1e999"),
    ]:
        path.write_text(text)
        with pytest.raises(UnreadableFileError, match=match):
            read_json(path)
    path.write_text('{"name": "x", "test_acc": "high"}')
    with pytest.raises(UnreadableFileError) as info:
        single_module.read_result(path)
    assert str(path) in str(info.value) and "lacks" in str(info.value)
    good = fake_result(0.8)
    path.write_text(json.dumps({**good, "test_acc": "high"}))
    with pytest.raises(UnreadableFileError, match="test_acc must be float, got str 'high'"):
        single_module.read_result(path)
    path.write_text(json.dumps(good))
    assert single_module.read_result(path)["test_acc"] == 0.8


# --------------------------------------------------------------------------- damaged files before --resume


def _nan_result(run: Path) -> str:
    data = json.loads((run / "none" / "result.json").read_text())
    return json.dumps({**data, "test_acc": float("nan")})


@pytest.mark.parametrize("record", ["kept", "removed"])
@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("none/result.json", lambda run: '{"accuracy": 0.5, "name": "none"}', "has keys ['accuracy']"),
        ("none/result.json", _nan_result, "holds NaN"),
        ("config.json", lambda run: "[1, 2]", "holds a list"),
    ],
)
def test_damaged_files_before_resume_are_refused_by_name(
    finished_run: Path,
    toy_npz: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: Callable[[Path], str],
    problem: str,
    record: str,
) -> None:
    run = _copy(finished_run, tmp_path)
    path = run / name
    path.write_text(content(run))
    if record == "removed":  # a file written by hand, or by an earlier vicinal: the schema check catches it
        checksum_path(path).unlink()
    capsys.readouterr()
    assert _compare(toy_npz, run, "--resume") == 2
    err = _one_line(capsys)
    assert err.startswith(f"vicinal: error: {path}")
    assert ("does not match the checksum" if record == "kept" else problem) in err, err


# --------------------------------------------------------------------------- vicinal report on damaged folders


def _study_folder(root: Path, accs: dict[tuple[str, int], float]) -> Path:
    """A study folder of finished cells, written as a study writes them (with checksum records)."""
    arms = [CellSpec(arm="none", method="none", dataset="toy"), CellSpec(arm="mixup", alpha=0.2, dataset="toy")]
    seeds = sorted({seed for _, seed in accs})
    record = {"name": "s", "description": "", "seeds": seeds, "arms": [asdict(a) for a in arms]}
    root.mkdir()
    atomic_write_json(root / "study.json", json.loads(json.dumps(record)), checksum=True)
    for (arm, seed), acc in accs.items():
        spec = next(a for a in arms if a.arm == arm)
        folder = cell_dir(root, replace(spec, seed=seed))
        folder.mkdir(parents=True)
        atomic_write_json(folder / "result.json", fake_result(acc), checksum=True)
    return root


def test_report_refuses_a_non_finite_result_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _study_folder(tmp_path / "s", {("none", 0): 0.8, ("none", 1): 0.81, ("mixup", 0): 0.83, ("mixup", 1): 0.84})
    assert main(["report", str(root), "--no-preview"]) == 0
    path = root / "cells" / "mixup" / "seed1" / "result.json"
    path.write_text(json.dumps({**fake_result(0.84), "test_acc": float("nan")}))
    capsys.readouterr()
    assert main(["report", str(root), "--no-preview"]) == 2  # the checksum catches it first
    assert f"{path} is truncated or corrupt" in _one_line(capsys)
    checksum_path(path).unlink()  # a hand-made folder: the NaN itself is refused
    assert main(["report", str(root), "--no-preview"]) == 2
    err = _one_line(capsys)
    assert f"{path} holds NaN" in err and "delete it and resume" in err


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("record", ["kept", "removed"])
@pytest.mark.parametrize(
    ("folder", "name", "damage", "problem"),
    [
        ("compare", "results.json", _truncate, "is not valid JSON"),
        ("compare", "results.json", lambda p: p.write_text('{"runs": []}'), "has keys ['runs']"),
        ("compare", "config.json", lambda p: p.write_text('{"epochs": "2"}'), "epochs must be int"),
        ("study", "study.json", _truncate, "is not valid JSON"),
        ("study", "study.json", lambda p: p.write_text('{"name": "s"}'), "lacks ['description', 'seeds', 'arms']"),
        ("study", "cells/none/seed0/result.json", _truncate, "is not valid JSON"),
    ],
)
def test_report_on_damaged_folders_names_the_file(
    finished_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    folder: str,
    name: str,
    damage: Callable[[Path], None],
    problem: str,
    record: str,
) -> None:
    if folder == "compare":
        root = _copy(finished_run, tmp_path)
    else:
        root = _study_folder(tmp_path / "s", {("none", 0): 0.8, ("mixup", 0): 0.83})
    path = root / name
    damage(path)
    if record == "removed":
        checksum_path(path).unlink()
    capsys.readouterr()
    assert main(["report", str(root), "--no-preview"]) == 2
    err = _one_line(capsys)
    assert err.startswith(f"vicinal: error: {path}")
    assert ("does not match the checksum" if record == "kept" else problem) in err, err


# --------------------------------------------------------------------------- study TOML, labels


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[defaults]\nepochs = 1\nbatch_size = "64"\n', "[defaults]: batch_size must be int, got str '64'"),
        ("[[arms]]\nname = 'a'\nepochs = 2.5\n", "arm 'a': epochs must be int, got float 2.5"),
        ('name = "x"\nseeds = 1\n[defaults]\nepochs = 1\n\nx = "ab\n', "not valid TOML: Illegal character"),
    ],
)
def test_a_bad_study_file_is_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, problem: str
) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    assert main(["study", str(toml), "--out", str(tmp_path / "s"), "--no-progress"]) == 2
    err = _one_line(capsys)
    assert f"{toml}" in err and problem in err, err
    assert not (tmp_path / "s").exists()


def test_an_implausible_class_count_is_refused_before_anything_that_size_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.zeros((10, 8, 8), np.uint8)
    y = np.arange(10)
    y[3] = 10**9
    np.savez(tmp_path / "big.npz", x=x, y=y)
    assert main(["compare", "--dataset", str(tmp_path / "big.npz"), *QUICK, "--out", str(tmp_path / "r")]) == 2
    err = _one_line(capsys)
    assert "data error" in err and "'y' holds label 1000000000 (at index 3)" in err and "class names" in err
    y[3] = 50  # more classes than samples
    np.savez(tmp_path / "many.npz", x=x, y=y, x_test=x[:2], y_test=y[:2])
    with pytest.raises(DatasetError, match="'y' holds label 50 .*51 classes, more than its 12 samples"):
        load_npz(tmp_path / "many.npz")
    n = MAX_UNNAMED_CLASSES + 10  # as many samples as classes, but above the cap
    big = np.zeros((n, 1, 1), np.uint8)
    labels = np.zeros(n, np.int64)
    labels[-1] = MAX_UNNAMED_CLASSES
    np.savez(tmp_path / "capped.npz", x=big, y=labels)
    with pytest.raises(DatasetError, match="above the 100,000 a dataset without class names may have"):
        load_npz(tmp_path / "capped.npz")
    np.savez(tmp_path / "ok.npz", x=big[:20], y=np.arange(20) % 10)  # a plausible count: "0".."9"
    assert load_npz(tmp_path / "ok.npz").class_names == tuple(str(i) for i in range(10))


# --------------------------------------------------------------------------- studies: nothing written on refusal

TOY_STUDY = """
name = "toy"
seeds = 2
[defaults]
dataset = "{npz}"
epochs = {epochs}
batch_size = 32
val_size = 100
train_limit = 200
test_limit = 100
[[arms]]
name = "none"
method = "none"
[[arms]]
name = "bad"
method = "mixup"
"""


def _toy_study(tmp_path: Path, toy: Path, epochs: int = 1) -> Path:
    toml = tmp_path / "toy.toml"
    toml.write_text(TOY_STUDY.format(npz=toy, epochs=epochs))
    return toml


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (["--val-size", "10000000"], "leaves no training images"),
        (["--data-dir", "/nonexistent"], "does not exist"),
    ],
)
def test_a_refused_study_writes_nothing(
    toy_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], problem: str
) -> None:
    toml = tmp_path / "s.toml"
    dataset = "fashion-mnist" if "--data-dir" in options else str(toy_npz)
    toml.write_text(TOY_STUDY.format(npz=dataset, epochs=1))
    out = tmp_path / "out"
    assert main(["study", str(toml), "--out", str(out), "--no-progress", *options]) == 2
    assert problem in _one_line(capsys)
    assert not out.exists()


def test_a_study_that_cannot_fit_on_the_disk_is_refused_before_writing(
    toy_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=50_000))
    out = tmp_path / "out"
    assert main(["study", str(_toy_study(tmp_path, toy_npz)), "--out", str(out), "--no-progress"]) == 2
    err = _one_line(capsys)
    assert f"no space left on device for {out}: 49 KiB free" in err and "checkpoints of 4 cells" in err
    assert "(nothing was written)" in err and not out.exists()


# --------------------------------------------------------------------------- a diverging arm


@pytest.fixture
def bad_arm_diverges(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cell of arm 'bad' gets a NaN loss at its fifth step (the other arms train normally)."""
    state = {"arm": "", "steps": 0}
    real_loss, real_train_arm = single_module.soft_target_cross_entropy, cells_module.train_arm

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        state["steps"] += 1
        value = real_loss(logits, target)
        return value * float("nan") if state["arm"] == "bad" and state["steps"] == 5 else value

    def train_arm(name: str, *args: Any, **kwargs: Any) -> Any:
        state["arm"], state["steps"] = name, 0
        return real_train_arm(name, *args, **kwargs)

    monkeypatch.setattr(single_module, "soft_target_cross_entropy", loss)
    monkeypatch.setattr(cells_module, "train_arm", train_arm)


def test_a_diverging_arm_fails_its_cells_and_the_study_goes_on(
    toy_npz: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    bad_arm_diverges: None,
) -> None:
    toml, out = _toy_study(tmp_path, toy_npz), tmp_path / "out"
    assert main(["study", str(toml), "--out", str(out), "--no-progress"]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("vicinal: error: 2 of 4 cells failed and 2 finished")
    assert "bad seed 0: arm 'bad': the training loss became NaN or inf at epoch 1" in err
    assert "Run the same command again to retry the failed cells" in err
    assert "## Failed cells" in captured.out  # the summary of what finished, and what failed
    spec = load_study(str(toml))
    for cell in spec.cells():
        folder = cell_dir(out, cell)
        if cell.arm == "bad":
            assert not (folder / "result.json").exists()
            failure = json.loads((folder / FAILED).read_text())
            assert failure["type"] == "NonFiniteLossError" and "NaN or inf" in failure["error"]
            assert checksum_path(folder / FAILED).exists()
        else:
            assert (folder / "result.json").exists() and not (folder / FAILED).exists()
            for name in ("result.json", "checkpoint.pt", "cell.json"):
                read_verified(folder / name)
    read_verified(out / "study.json")
    read_verified(out / "init" / "reference-cnn-seed0.pt")
    report = (out / "report.md").read_text()
    assert "1 arms × 2 seeds, 2 finished runs, 2 failed (listed below, not counted)" in report
    assert "| bad | 0 | NonFiniteLossError: arm 'bad': the training loss became NaN" in report
    assert "| bad |" not in report.split("## Failed cells")[0]  # never as a result
    json.loads((out / "summary.json").read_text(), parse_constant=lambda token: pytest.fail(f"summary holds {token}"))
    # Running it again retries the failed cells; fixed (no divergence now), they finish and
    # their failure records go, as do the temporary files of a dead process.
    monkeypatch.undo()
    stale = cell_dir(out, spec.cells()[1]) / f".checkpoint.pt.{_dead_pid()}.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert main(["study", str(toml), "--out", str(out), "--no-progress"]) == 0
    assert not stale.exists()
    assert not list(out.glob(f"cells/*/seed*/{FAILED}*")) and len(list(out.glob("cells/*/seed*/result.json"))) == 4


def test_fail_fast_stops_at_the_first_failure(
    toy_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], bad_arm_diverges: None
) -> None:
    toml, out = _toy_study(tmp_path, toy_npz), tmp_path / "out"
    assert main(["study", str(toml), "--out", str(out), "--no-progress", "--fail-fast"]) == 2
    err = _one_line(capsys)
    assert err.startswith("vicinal: error: arm 'bad': the training loss became NaN or inf at epoch 1")
    cells = load_study(str(toml)).cells()  # seed-major: none 0, bad 0, none 1, bad 1
    assert (cell_dir(out, cells[0]) / "result.json").exists()
    assert (cell_dir(out, cells[1]) / FAILED).exists()
    assert not (cell_dir(out, cells[2]) / "result.json").exists()  # never trained


def test_run_study_raises_cells_failed_naming_each_cell(toy_npz: Path, tmp_path: Path, bad_arm_diverges: None) -> None:
    spec = load_study(str(_toy_study(tmp_path, toy_npz)), seeds=1)
    with pytest.raises(CellsFailed) as info:
        run_study(spec, tmp_path / "out", progress=False)
    assert [f.cell for f in info.value.failures] == ["bad seed 0"] and info.value.finished == 1


def test_batch_seeds_finishes_a_failed_group_cell_by_cell(
    toy_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_study(str(_toy_study(tmp_path, toy_npz, epochs=2)))
    calls = []

    def group_diverges(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        raise NonFiniteLossError.at("arm 'x' seed 1", 0, 3)

    monkeypatch.setattr(seed_groups_module, "_train_group", group_diverges)
    results = run_study(spec, tmp_path / "out", progress=False, batch_seeds=True)
    assert len(calls) == 2 and len(results) == 4  # both groups failed; every cell then trained alone
    # A damaged checkpoint fails its own cell only.
    monkeypatch.undo()
    for cell in spec.cells():
        (cell_dir(tmp_path / "out", cell) / "result.json").unlink()
    victim = cell_dir(tmp_path / "out", spec.cells()[0]) / "checkpoint.pt"
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(CellsFailed) as info:
        run_study(spec, tmp_path / "out", progress=False, batch_seeds=True)
    assert [f.cell for f in info.value.failures] == ["none seed 0"] and info.value.finished == 3
    assert "checkpoint.pt is truncated or corrupt" in info.value.failures[0].message


# --------------------------------------------------------------------------- stale temporary files


def test_stale_temporaries_are_removed_on_resume_and_live_ones_kept(
    finished_run: Path, toy_npz: Path, tmp_path: Path
) -> None:
    run = _copy(finished_run, tmp_path)
    (run / "none" / "result.json").unlink()
    dead = _dead_pid()
    stale = [run / "none" / f".checkpoint.pt.{dead}.tmp", run / f".config.json.{dead}.tmp"]
    live = run / "none" / f".checkpoint.pt.{os.getppid()}.tmp"  # our parent: alive
    for path in [*stale, live]:
        path.write_bytes(b"left by a killed process")
    assert _compare(toy_npz, run, "--resume") == 0
    assert not any(p.exists() for p in stale) and live.exists()
    assert remove_stale_temporaries(run / "nowhere") == []


# --------------------------------------------------------------------------- a full disk


def test_a_full_disk_on_a_real_tmpfs(
    toy_npz: Path, small_disk: SmallDisk, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = small_disk(360)  # the initial weights and one checkpoint fit, not two
    run = disk / "run"
    # At the start: refused before anything is written.
    assert _compare(toy_npz, run) == 2
    err = _one_line(capsys)
    assert f"no space left on device for {run}: 360 KiB free" in err and "(nothing was written)" in err
    assert not run.exists()
    # Room for that lower bound, but not for everything a run writes (the records, the
    # logs, two checkpoints at once): the check passes, a later write fails, nothing patched.
    found = re.search(r"need at least (\d+) KiB", err)
    assert found, err
    roomy = small_disk(int(found.group(1)) + 20)
    assert _compare(toy_npz, roomy / "run") == 2
    err = _one_line(capsys)
    assert err.startswith(f"vicinal: error: no space left on device while writing {roomy / 'run'}"), err
    assert err.endswith(f"checkpoint.pt; free some space, then resume with --resume --out {roomy / 'run'}"), err
    assert _temporaries(roomy) == []
    # Without that check, at the second epoch's checkpoint: torch's zip writer is not
    # reached, our own write fails; the documented line, and nothing half-written.
    monkeypatch.setattr(compare_module, "check_free_space", lambda *args: None)
    assert _compare(toy_npz, run) == 2
    err = _one_line(capsys)
    assert err == (
        f"vicinal: error: no space left on device while writing {run / 'mixup' / 'checkpoint.pt'}; "
        f"free some space, then resume with --resume --out {run}"
    )
    assert _temporaries(disk) == []
    read_verified(run / "mixup" / "checkpoint.pt")  # the first epoch's, intact
    small_disk.grow(disk, 4096)
    monkeypatch.undo()
    assert _compare(toy_npz, run, "--resume") == 0


def test_a_full_disk_mid_run_with_a_patched_write(
    toy_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_open = open
    opened = {"checkpoints": 0}

    def full_at_the_second_checkpoint(path: Any, *args: Any, **kwargs: Any) -> Any:
        if re.fullmatch(r"\.checkpoint\.pt\.\d+\.tmp", Path(path).name):  # the data, not its record
            opened["checkpoints"] += 1
            if opened["checkpoints"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", full_at_the_second_checkpoint, raising=False)
    run = tmp_path / "run"
    assert _compare(toy_npz, run) == 2
    assert _one_line(capsys) == (
        f"vicinal: error: no space left on device while writing {run / 'mixup' / 'checkpoint.pt'}; "
        f"free some space, then resume with --resume --out {run}"
    )
    assert _temporaries(run) == []
    monkeypatch.undo()
    assert _compare(toy_npz, run, "--resume") == 0


def test_a_full_disk_while_appending_metrics_is_one_line(
    toy_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import vicinal.experiments.training.loop as loop

    def no_space(out: Path, record: dict[str, float]) -> None:
        with atomic.write_errors(out / loop.METRICS):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(loop, "append_metrics", no_space)
    assert _compare(toy_npz, tmp_path / "run") == 2
    assert "no space left on device while writing" in _one_line(capsys)


@pytest.mark.slow
def test_a_study_with_two_jobs_on_a_full_tmpfs(
    toy_npz: Path,
    tmp_path: Path,
    small_disk: SmallDisk,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    disk = small_disk(200)  # study.json and the initial weights fit, a cell's checkpoint does not
    out = disk / "study"
    toml = _toy_study(tmp_path, toy_npz)
    args = ["study", str(toml), "--out", str(out), "--jobs", "2", "--seeds", "1", "--no-progress"]
    assert main(args) == 2
    assert "(nothing was written)" in _one_line(capsys) and not out.exists()
    monkeypatch.setattr(study_module, "check_free_space", lambda *args: None)  # the workers' writes fail
    assert main(args) == 2
    err = _one_line(capsys)
    assert err.startswith("vicinal: error: no space left on device while writing") and str(out) in err
    assert err.endswith("free some space, then run the same command again to resume (finished cells are kept)")
    assert _temporaries(disk) == []


# --------------------------------------------------------------------------- a vanished run folder


def test_a_run_folder_deleted_mid_run_ends_in_one_line(
    toy_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    monkeypatch.setenv(DELETE_ENV, "mixup:0")
    monkeypatch.setenv(DELETE_PATH_ENV, str(run))
    assert _compare(toy_npz, run) == 1
    err = _one_line(capsys)
    assert err.startswith(f"vicinal: error: the folder {run} disappeared while writing checkpoint.pt")
    assert "Restore the folder and resume, or start a new run" in err
    assert not run.exists()  # nothing was made again in its place


def test_a_study_folder_deleted_mid_run_ends_in_one_line(
    toy_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    monkeypatch.setenv(DELETE_ENV, "none:0")
    monkeypatch.setenv(DELETE_PATH_ENV, str(out))
    assert main(["study", str(_toy_study(tmp_path, toy_npz)), "--out", str(out), "--no-progress"]) == 1
    err = _one_line(capsys)
    assert err.startswith(f"vicinal: error: the folder {out} disappeared while writing result.json"), err
    assert not out.exists()


@pytest.mark.slow
def test_a_run_folder_deleted_under_parallel_workers_stops_them_all(
    toy_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run, markers = tmp_path / "run", tmp_path / "workers"
    markers.mkdir()
    monkeypatch.setenv(DELETE_ENV, "none:0")
    monkeypatch.setenv(DELETE_PATH_ENV, str(run))
    monkeypatch.setenv(WORKER_DIR_ENV, str(markers))
    quick = [a for a in QUICK if a != "--sequential"]
    assert main(["compare", "--dataset", str(toy_npz), *quick, "--out", str(run)]) == 1
    err = _one_line(capsys)
    assert f"the folder {run} disappeared while writing" in err
    pids = [int(p.name.removeprefix("worker-")) for p in markers.glob("worker-*")]
    assert len(pids) == 2
    for pid in pids:  # every worker has ended (the pool reaped them)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not run.exists()


def test_disk_full_error_survives_a_worker_boundary() -> None:
    import pickle

    exc = pickle.loads(pickle.dumps(DiskFullError(errno.ENOSPC, "no space left on device while writing x")))
    assert isinstance(exc, DiskFullError) and exc.errno == errno.ENOSPC and exc.started
    assert exc.strerror == "no space left on device while writing x"
    from vicinal.experiments.errors import CellFailed

    failed = pickle.loads(pickle.dumps(CellFailed("arm 'x': boom", "x seed 0")))
    assert str(failed) == "arm 'x': boom" and failed.cell == "x seed 0"


def test_parse_study_names_its_source() -> None:
    with pytest.raises(ValueError, match=r"^presets/x\.toml: unknown top-level keys"):
        parse_study("foo = 1\n", source="presets/x.toml")
