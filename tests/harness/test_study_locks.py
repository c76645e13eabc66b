"""Several `vicinal study` processes on one folder: every cell trained once; --shard I/N.

Concurrency is arranged with events, not timers: a process parked by the hold hook
(VICINAL_HOLD_AFTER_EPOCH) keeps its cell claimed for as long as the test needs, and the
test waits for marker and result files before it acts. Timeouts are failure bounds only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from filelock import FileLock, Timeout

from vicinal.experiments.cli import main
from vicinal.experiments.runs.cells import CLAIMS_LOG
from vicinal.experiments.runs.study import STUDY_LOCK, parse_shard, run_study, shard_cells
from vicinal.experiments.spec import CellSpec, cell_dir, load_study
from vicinal.experiments.testing import HOLD_ENV, WORKER_DIR_ENV

BOUND_S = 180.0

STUDY = """
name = "locks"
seeds = 2
[defaults]
dataset = "{npz}"
epochs = {epochs}
batch_size = 32
val_size = 100
[[arms]]
name = "none"
method = "none"
[[arms]]
name = "mixup"
method = "mixup"
[[arms]]
name = "cutmix"
method = "cutmix"
"""


def _toml(tmp_path: Path, npz: Path, epochs: int) -> Path:
    path = tmp_path / "locks.toml"
    path.write_text(STUDY.format(npz=npz, epochs=epochs))
    return path


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``python -m vicinal study ...``; whatever still runs after the test is killed."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], name: str, **env: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / f"{name}.out", "w") as out, open(tmp_path / f"{name}.err", "w") as err:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "vicinal", "study", *args],
                    env={**os.environ, **env},
                    stdout=out,
                    stderr=err,
                )
            )
        return procs[-1]

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _wait_for(condition: Callable[[], bool], procs: list[subprocess.Popen[bytes]], what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not condition():
        ended = [p for p in procs if p.poll() is not None]
        if ended:
            pytest.fail(f"{what}: process {ended[0].args} ended early with rc {ended[0].returncode}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {BOUND_S} s")
        time.sleep(0.05)


def _claims(out: Path, cell: CellSpec) -> list[dict[str, object]]:
    return [json.loads(line) for line in (cell_dir(out, cell) / CLAIMS_LOG).read_text().splitlines()]


def _epochs(out: Path, cell: CellSpec) -> list[int]:
    return [json.loads(line)["epoch"] for line in (cell_dir(out, cell) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_on_one_study_train_every_cell_once(
    spawn: Callable[..., subprocess.Popen[bytes]], toy_npz: Path, tmp_path: Path
) -> None:
    toml, out = _toml(tmp_path, toy_npz, epochs=2), tmp_path / "study"
    args = [str(toml), "--out", str(out), "--no-progress"]
    procs = [spawn(args, "a"), spawn(args, "b")]
    for name, proc in zip("ab", procs):
        assert proc.wait(timeout=BOUND_S) == 0, (tmp_path / f"{name}.err").read_text()[-3000:]
    cells = load_study(str(toml)).cells()
    assert len(cells) == 6
    trainers = set()
    for cell in cells:
        claims = _claims(out, cell)
        assert len(claims) == 1, (cell.arm, cell.seed, claims)  # one trainer per cell
        assert claims[0]["pid"] in {p.pid for p in procs} and claims[0]["resume"] is False
        trainers.add(claims[0]["pid"])
        assert _epochs(out, cell) == [0, 1]  # every record once, none interleaved
        result = json.loads((cell_dir(out, cell) / "result.json").read_text())
        assert [h["epoch"] for h in result["history"]] == [0, 1]
    record = json.loads((out / "study.json").read_text())
    assert record["seeds"] == [0, 1] and len(record["arms"]) == 3
    assert (out / "report.md").exists()
    for proc in procs:  # both ended with the complete study: each printed the results of all six cells
        assert proc.returncode == 0
    assert all(f"| {arm} |" in (tmp_path / "a.out").read_text() for arm in ("none", "mixup", "cutmix"))
    assert all(f"| {arm} |" in (tmp_path / "b.out").read_text() for arm in ("none", "mixup", "cutmix"))
    assert trainers <= {p.pid for p in procs}


@pytest.mark.slow
def test_a_claimed_cell_is_skipped_and_taken_over_when_its_process_dies(
    spawn: Callable[..., subprocess.Popen[bytes]], toy_npz: Path, tmp_path: Path
) -> None:
    toml, out, markers = _toml(tmp_path, toy_npz, epochs=2), tmp_path / "study", tmp_path / "markers"
    markers.mkdir()
    args = [str(toml), "--out", str(out), "--no-progress"]
    cells = load_study(str(toml)).cells()
    # A claims the first cell and parks after its epoch 0, holding the claim.
    holder = spawn(args, "holder", **{HOLD_ENV: "0", WORKER_DIR_ENV: str(markers)})
    _wait_for(lambda: any(markers.glob("held-*")), [holder], "the first cell held")
    # B skips that cell, trains all the others, then waits for it.
    other = spawn(args, "other")
    rest = cells[1:]
    _wait_for(lambda: all((cell_dir(out, c) / "result.json").exists() for c in rest), [holder, other], "other cells")
    assert not (cell_dir(out, cells[0]) / "result.json").exists()
    assert other.poll() is None  # still waiting for the held cell
    # The holder dies; the OS releases its claim and B takes the cell over from its checkpoint.
    holder.send_signal(signal.SIGKILL)
    assert holder.wait(timeout=BOUND_S) == -signal.SIGKILL
    assert other.wait(timeout=BOUND_S) == 0, (tmp_path / "other.err").read_text()[-3000:]
    first = _claims(out, cells[0])
    assert [(c["pid"], c["resume"]) for c in first] == [(holder.pid, False), (other.pid, True)]
    assert _epochs(out, cells[0]) == [0, 1]  # epoch 0 from the holder, epoch 1 from B, each once
    for cell in rest:
        assert [(c["pid"], c["resume"]) for c in _claims(out, cell)] == [(other.pid, False)]
        assert _epochs(out, cell) == [0, 1]


def test_shards_are_disjoint_complete_and_deterministic() -> None:
    cells = [CellSpec(arm=f"a{i}", seed=s) for s in range(2) for i in range(5)]  # 10 cells
    for count in (1, 2, 3, 4, 10, 11):
        parts = [shard_cells(cells, f"{index}/{count}") for index in range(count)]
        flat = [c for part in parts for c in part]
        assert sorted(flat, key=cells.index) == cells and len(flat) == len(cells)  # complete, disjoint
        for index, part in enumerate(parts):
            assert part == [c for i, c in enumerate(cells) if i % count == index]
            assert part == shard_cells(cells, (index, count))
    assert parse_shard(None) == (0, 1) and parse_shard(" 3 / 8 ") == (3, 8)
    for bad in ("4/4", "5/4", "-1/4", "1/0", "1", "a/b", "1/2/3", ""):
        with pytest.raises(ValueError, match="--shard must be I/N"):
            parse_shard(bad)


def test_shard_option_trains_its_cells_only(toy_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml, out = _toml(tmp_path, toy_npz, epochs=1), tmp_path / "study"
    cells = load_study(str(toml)).cells()
    assert main(["study", str(toml), "--out", str(out), "--no-progress", "--shard", "1/4"]) == 0
    done = [c for c in cells if (cell_dir(out, c) / "result.json").exists()]
    assert done == [cells[1], cells[5]]
    assert not (cell_dir(out, cells[0]) / CLAIMS_LOG).exists()
    spec = load_study(str(toml))
    for index in (0, 2, 3):  # the other tasks of the array
        trained = run_study(spec, out, progress=False, shard=f"{index}/4")
        assert len(trained) == len(cells[index::4])
    for cell in cells:  # all six, each trained once, by the shard that owns it
        assert len(_claims(out, cell)) == 1 and _epochs(out, cell) == [0]
    capsys.readouterr()
    assert main(["study", str(toml), "--out", str(tmp_path / "x"), "--shard", "4/4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vicinal: error: --shard must be I/N") and "4/4" in err
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_study_json_is_written_under_the_study_lock(
    toy_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vicinal.experiments.runs.study as atomic  # the module that writes study.json

    out = tmp_path / "study"
    spec = load_study(str(_toml(tmp_path, toy_npz, epochs=1)))
    held_while_writing: dict[str, bool] = {}
    real = atomic.atomic_write_json

    def probing_write(path: Path, obj: object, **options: object) -> None:
        if Path(path).name == "study.json":
            probe = FileLock(out / STUDY_LOCK)
            try:
                probe.acquire(timeout=0)
            except Timeout:  # held: by the run that is writing study.json
                held_while_writing[str(path)] = True
            else:
                probe.release()
                held_while_writing[str(path)] = False
        real(path, obj, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(atomic, "atomic_write_json", probing_write)
    run_study(spec, out, progress=False, shard="0/6")
    assert held_while_writing == {str(out / "study.json"): True}
