"""Worker processes die with their parent; SIGINT/SIGTERM stop a run cleanly; it resumes exactly.

Every fault is injected at a known point: the hold hook (VICINAL_HOLD_AFTER_EPOCH) parks
each worker right after it has checkpointed an epoch and writes a marker file, the test
waits for the markers (an event) and only then signals the parent. Timeouts below are
failure bounds, never the means of the test.
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
from typing import Any

import pytest
import torch
from filelock import FileLock

from vicinal.experiments.cli import main
from vicinal.experiments.runs.cells import CLAIM_LOCK, CLAIMS_LOG
from vicinal.experiments.runs.processes import GRACE_S, Interrupted, describe_interrupt, stop_on_signals
from vicinal.experiments.runs.study import default_threads, run_study
from vicinal.experiments.spec import cell_dir, load_study
from vicinal.experiments.testing import HOLD_ENV, NO_PDEATHSIG_ENV, WORKER_DIR_ENV

BOUND_S = 180.0  # failure bound for any awaited event


def _compare_args(toy: Path) -> list[str]:
    return [
        "compare",
        "--dataset",
        str(toy),
        "--epochs",
        "3",
        "--batch-size",
        "32",
        "--val-size",
        "100",
        "--seed",
        "2",
        "--no-progress",
    ]


STUDY = """
name = "kill"
seeds = 2
[defaults]
dataset = "{npz}"
epochs = 2
batch_size = 32
val_size = 100
[[arms]]
name = "none"
method = "none"
[[arms]]
name = "mixup"
method = "mixup"
"""


class _Vicinal:
    """``python -m vicinal ARGS`` whose workers write their pid into ``folder`` and hold after epoch 0.

    Its output goes to files, not pipes: the workers of a killed parent inherit the
    parent's output, and a pipe they hold open would block the test.
    """

    def __init__(self, args: list[str], folder: Path, **env: str) -> None:
        folder.mkdir(exist_ok=True)
        self.folder = folder
        full_env = {**os.environ, WORKER_DIR_ENV: str(folder), HOLD_ENV: "0", **env}
        with open(folder / "stdout.txt", "w") as out, open(folder / "stderr.txt", "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vicinal", *args],
                env=full_env,
                stdout=out,
                stderr=err,
                # A runner started in the background may ignore SIGINT, and children inherit that.
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )

    @property
    def stderr(self) -> str:
        return (self.folder / "stderr.txt").read_text()

    def held(self) -> int:
        return len(list(self.folder.glob("held-*")))

    def worker_pids(self) -> list[int]:
        return sorted(int(p.name.split("-")[1]) for p in self.folder.glob("worker-*"))

    def wait(self) -> int:
        return self.proc.wait(timeout=BOUND_S)

    def kill(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        return self.wait()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., _Vicinal]]:
    """Start ``python -m vicinal``; whatever is left of it after the test (a failed one) is killed."""
    runs: list[_Vicinal] = []

    def start_run(args: list[str], name: str = "workers", **env: str) -> _Vicinal:
        runs.append(_Vicinal(args, tmp_path / name, **env))
        return runs[-1]

    yield start_run
    for run in runs:
        for pid in [run.proc.pid, *run.worker_pids()]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        run.proc.wait()


def _wait_for(condition: Callable[[], bool], run: _Vicinal | None, what: str, bound_s: float = BOUND_S) -> bool:
    deadline = time.monotonic() + bound_s
    while not condition():
        if run is not None and run.proc.poll() is not None:
            pytest.fail(f"the process ended (rc {run.proc.returncode}) before {what}:\n{run.stderr[-3000:]}")
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by init, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _assert_workers_gone(pids: list[int]) -> None:
    """Every worker ends (well within GRACE_S + a margin); survivors are killed, then reported."""
    assert pids
    if not _wait_for(lambda: not any(_alive(pid) for pid in pids), None, "the workers' exit", GRACE_S + 30):
        survivors = [pid for pid in pids if _alive(pid)]
        for pid in survivors:
            os.kill(pid, signal.SIGKILL)
        pytest.fail(f"workers {survivors} outlived their parent")


def _history_without_clock(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in h.items() if k != "elapsed_s"} for h in history]


def _check_stopped(run: _Vicinal, sig: signal.Signals, hint: str) -> None:
    if sig == signal.SIGKILL:
        assert run.proc.returncode == -signal.SIGKILL
    else:
        # One line, the signal's exit status, no traceback.
        err = run.stderr
        assert run.proc.returncode == 128 + sig, err
        assert err.strip().splitlines() == [f"vicinal: interrupted by {sig.name}; {hint}"], err


def _signal_self(sig: signal.Signals) -> None:
    """Send ``sig`` to this process; its Python handler runs at the next bytecode boundary."""
    os.kill(os.getpid(), sig)
    for _ in range(1000):  # a bound, not a timer: the handler has run long before
        time.sleep(0.001)


def test_stop_on_signals_raises_once_with_the_hint_and_restores_the_handlers() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with stop_on_signals("resume with --resume --out X"):
        with pytest.raises(Interrupted) as info:
            _signal_self(signal.SIGTERM)
        _signal_self(signal.SIGTERM)  # a second signal while the run stops its workers: ignored
    assert info.value.exit_code == 143 and info.value.signum == signal.SIGTERM
    assert describe_interrupt(info.value) == ("interrupted by SIGTERM; resume with --resume --out X", 143)
    assert {s: signal.getsignal(s) for s in before} == before
    with pytest.raises(Interrupted) as info, stop_on_signals("again"):
        raise KeyboardInterrupt  # a KeyboardInterrupt from elsewhere gets the hint and status 130
    assert describe_interrupt(info.value) == ("interrupted by SIGINT; again", 130)
    assert describe_interrupt(KeyboardInterrupt()) == ("interrupted", 130)


@pytest.fixture(scope="module")
def compare_reference(toy_npz: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """An uninterrupted run, one thread per arm as in the parallel runs below."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main([*_compare_args(toy_npz), "--sequential", "--threads", "1", "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text())["arms"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "env"),
    [
        pytest.param(signal.SIGKILL, {}, id="SIGKILL"),
        pytest.param(signal.SIGKILL, {NO_PDEATHSIG_ENV: "1"}, id="SIGKILL-watchdog-only"),
        pytest.param(signal.SIGTERM, {}, id="SIGTERM"),
        pytest.param(signal.SIGINT, {}, id="SIGINT"),
    ],
)
def test_compare_workers_die_with_their_parent_and_the_run_resumes_exactly(
    start: Callable[..., _Vicinal],
    toy_npz: Path,
    tmp_path: Path,
    compare_reference: list[dict[str, Any]],
    sig: signal.Signals,
    env: dict[str, str],
) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("vicinal compare trains its arms in parallel only on 2 or more cores")
    run = tmp_path / "run"
    vicinal = start([*_compare_args(toy_npz), "--threads", "2", "--out", str(run)], **env)
    assert _wait_for(lambda: vicinal.held() == 2, vicinal, "both arms checkpointing epoch 0")
    pids = vicinal.worker_pids()
    assert len(pids) == 2 and vicinal.proc.pid not in pids
    vicinal.kill(sig)
    _check_stopped(vicinal, sig, f"resume with --resume --out {run}")
    _assert_workers_gone(pids)
    for arm in ("mixup", "none"):
        lines = (run / arm / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [0]
        assert not (run / arm / "result.json").exists()
    assert not list(run.rglob("*.tmp"))

    assert main([*_compare_args(toy_npz), "--resume", "--sequential", "--threads", "1", "--out", str(run)]) == 0
    resumed = json.loads((run / "results.json").read_text())["arms"]
    assert [r["name"] for r in resumed] == [r["name"] for r in compare_reference] == ["mixup", "none"]
    for ref, res in zip(compare_reference, resumed):
        assert (res["test_acc"], res["test_loss"]) == (ref["test_acc"], ref["test_loss"])
        assert _history_without_clock(res["history"]) == _history_without_clock(ref["history"])


@pytest.mark.slow
def test_a_worker_that_dies_stops_the_other_with_one_line(
    start: Callable[..., _Vicinal], toy_npz: Path, tmp_path: Path
) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("vicinal compare trains its arms in parallel only on 2 or more cores")
    run = tmp_path / "run"
    # The mixed arm's worker kills itself after epoch 0; the plain arm's holds there, alive.
    vicinal = start(
        [*_compare_args(toy_npz), "--threads", "2", "--out", str(run)],
        VICINAL_HOLD_AFTER_EPOCH="none:0",
        VICINAL_FAULT_KILL_AFTER_EPOCH="mixup:0",
    )
    assert vicinal.wait() == 1, vicinal.stderr
    lines = vicinal.stderr.strip().splitlines()
    assert len(lines) == 1, vicinal.stderr
    assert lines[0].startswith("vicinal: error: a worker process ended without a result (pid ")
    assert "killed by SIGKILL" in lines[0] and lines[0].endswith(f"resume with --resume --out {run}")
    _assert_workers_gone(vicinal.worker_pids())


@pytest.fixture(scope="module")
def study_toml(toy_npz: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("study") / "kill.toml"
    path.write_text(STUDY.format(npz=toy_npz))
    return path


@pytest.fixture(scope="module")
def study_reference(study_toml: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """An uninterrupted study, with the threads per cell of `--jobs 2`."""
    out = tmp_path_factory.mktemp("study-reference")
    previous = torch.get_num_threads()
    try:
        results = run_study(load_study(str(study_toml)), out, progress=False, threads=default_threads(2))
    finally:
        torch.set_num_threads(previous)
    return {f"{c.arm}/{c.seed}": r for c, r in zip(load_study(str(study_toml)).cells(), results)}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=lambda s: s.name)
def test_study_workers_die_with_their_parent_and_the_study_resumes_exactly(
    start: Callable[..., _Vicinal],
    study_toml: Path,
    study_reference: dict[str, dict[str, Any]],
    tmp_path: Path,
    sig: signal.Signals,
) -> None:
    out = tmp_path / "study"
    vicinal = start(["study", str(study_toml), "--jobs", "2", "--no-progress", "--out", str(out)])
    assert _wait_for(lambda: vicinal.held() == 2, vicinal, "two cells checkpointing epoch 0")
    pids = vicinal.worker_pids()
    assert len(pids) == 2
    vicinal.kill(sig)
    _check_stopped(vicinal, sig, f"run the same command again to resume: finished cells are kept in {out}")
    _assert_workers_gone(pids)
    spec = load_study(str(study_toml))
    started = [c for c in spec.cells() if (cell_dir(out, c) / "checkpoint.pt").exists()]
    assert len(started) == 2 and not list(out.rglob("result.json"))
    for cell in started:  # no claim outlives its process: each lock is free at once
        lock = FileLock(cell_dir(out, cell) / CLAIM_LOCK)
        lock.acquire(timeout=0)
        lock.release()

    previous = torch.get_num_threads()
    try:
        results = run_study(spec, out, progress=False, threads=default_threads(2))
    finally:
        torch.set_num_threads(previous)
    for cell, res in zip(spec.cells(), results):
        ref = study_reference[f"{cell.arm}/{cell.seed}"]
        assert (res["test_acc"], res["test_loss"]) == (ref["test_acc"], ref["test_loss"]), cell
        assert _history_without_clock(res["history"]) == _history_without_clock(ref["history"]), cell
        assert res["metrics"] == ref["metrics"], cell
        log = (cell_dir(out, cell) / CLAIMS_LOG).read_text().splitlines()
        claims = [(c["pid"], c["resume"]) for c in map(json.loads, log)]
        if cell in started:  # claimed by a worker, then resumed here
            assert len(claims) == 2 and claims[0][0] in pids and claims[0][1] is False, claims
            assert claims[1] == (os.getpid(), True)
        else:  # trained here, once
            assert claims == [(os.getpid(), False)]
