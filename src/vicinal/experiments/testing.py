"""The testing seam: environment variables that stop or hold a run at a known point.

Tests, and scripts outside the project that test resumes, set these in a run's
environment; the runs read them here only, never inside the training loop. The
runners (:mod:`vicinal.experiments.runs`) pass :func:`epoch_hooks` to the trainers as
ordinary ``on_epoch`` callbacks, which the loop calls once an epoch is recorded
(checkpoint and metrics written) for every model it trains.

* :data:`FAULT_ENV` ``="ARM:EPOCH"`` (or ``"EPOCH"``): once that arm (any arm) has
  recorded that epoch, the process kills itself with SIGKILL, exactly like a ``kill -9``
  at that point, with no dependence on the machine's speed.
* :data:`DELETE_ENV` ``="ARM:EPOCH"`` (or ``"EPOCH"``) with :data:`DELETE_PATH_ENV`
  ``=FOLDER``: at the same point the process deletes ``FOLDER`` (the run or study
  folder), as a user's ``rm -rf`` would while the run goes on.
* :data:`HOLD_ENV` ``="ARM:EPOCH"`` (or ``"EPOCH"``): at the same point the process
  writes ``$VICINAL_TEST_WORKER_DIR/held-<pid>-<arm>`` and waits for a signal, standing
  in for a long training at a known point.
* :data:`WORKER_DIR_ENV` ``=DIR``: each worker process writes ``DIR/worker-<pid>`` when
  it starts (:func:`mark_worker_started`).
* :data:`NO_PDEATHSIG_ENV` ``=1``: workers skip ``prctl(PR_SET_PDEATHSIG)``, so that
  their watchdog thread alone is tested (:func:`parent_death_signal_wanted`).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "DELETE_ENV",
    "DELETE_PATH_ENV",
    "FAULT_ENV",
    "HOLD_ENV",
    "NO_PDEATHSIG_ENV",
    "WORKER_DIR_ENV",
    "EpochHook",
    "epoch_hooks",
    "mark_worker_started",
    "parent_death_signal_wanted",
]

FAULT_ENV = "VICINAL_FAULT_KILL_AFTER_EPOCH"
DELETE_ENV = "VICINAL_FAULT_DELETE_AFTER_EPOCH"
DELETE_PATH_ENV = "VICINAL_FAULT_DELETE_PATH"
HOLD_ENV = "VICINAL_HOLD_AFTER_EPOCH"
WORKER_DIR_ENV = "VICINAL_TEST_WORKER_DIR"
NO_PDEATHSIG_ENV = "VICINAL_NO_PDEATHSIG"

#: A callback given each epoch's record (``{"epoch": e, "train_loss": ..., ...}``) once it is on disk.
EpochHook = Callable[[dict[str, float]], None]


def _target_epoch(variable: str, arm: str) -> int | None:
    """The epoch ``variable`` (``"ARM:EPOCH"`` or ``"EPOCH"``) names for ``arm``; None if unset or another arm's."""
    spec = os.environ.get(variable)
    if not spec:
        return None
    target_arm, _, target_epoch = spec.rpartition(":")
    try:
        epoch = int(target_epoch)
    except ValueError:
        raise ValueError(f"{variable} must be 'ARM:EPOCH' or 'EPOCH', got {spec!r}") from None
    return epoch if target_arm in ("", arm) else None


def epoch_hooks(arm: str) -> list[EpochHook]:
    """The ``on_epoch`` callbacks of arm ``arm`` that the environment asks for: deleting
    a folder (:data:`DELETE_ENV`), holding (:data:`HOLD_ENV`), then killing
    (:data:`FAULT_ENV`); empty when none is set.

    Raises:
        ValueError: a variable that is not ``"ARM:EPOCH"`` or ``"EPOCH"``,
            :data:`HOLD_ENV` without :data:`WORKER_DIR_ENV`, or :data:`DELETE_ENV`
            without :data:`DELETE_PATH_ENV`.
    """
    hooks: list[EpochHook] = []
    delete_epoch = _target_epoch(DELETE_ENV, arm)
    if delete_epoch is not None:
        doomed = os.environ.get(DELETE_PATH_ENV)
        if not doomed:
            raise ValueError(f"{DELETE_ENV} needs {DELETE_PATH_ENV}: the folder to delete")

        def delete(record: dict[str, float]) -> None:
            if int(record["epoch"]) == delete_epoch:
                shutil.rmtree(doomed, ignore_errors=True)

        hooks.append(delete)
    hold_epoch = _target_epoch(HOLD_ENV, arm)
    if hold_epoch is not None:
        folder = os.environ.get(WORKER_DIR_ENV)
        if not folder:
            raise ValueError(f"{HOLD_ENV} needs {WORKER_DIR_ENV}: the folder the held marker is written to")

        def hold(record: dict[str, float]) -> None:
            if int(record["epoch"]) != hold_epoch:
                return
            (Path(folder) / f"held-{os.getpid()}-{arm}").write_text(f"{hold_epoch}\n")
            while True:  # until a signal handler raises
                if hasattr(signal, "pause"):
                    signal.pause()
                else:  # pragma: no cover - Windows
                    threading.Event().wait()

        hooks.append(hold)
    kill_epoch = _target_epoch(FAULT_ENV, arm)
    if kill_epoch is not None:

        def kill(record: dict[str, float]) -> None:
            if int(record["epoch"]) == kill_epoch:
                os.kill(os.getpid(), signal.SIGKILL)

        hooks.append(kill)
    return hooks


def mark_worker_started(parent_pid: int) -> None:
    """With :data:`WORKER_DIR_ENV` set: write ``DIR/worker-<pid>`` holding the parent's pid."""
    folder = os.environ.get(WORKER_DIR_ENV)
    if folder:
        (Path(folder) / f"worker-{os.getpid()}").write_text(f"{parent_pid}\n")


def parent_death_signal_wanted() -> bool:
    """False when :data:`NO_PDEATHSIG_ENV` asks workers to rely on their watchdog alone."""
    return not os.environ.get(NO_PDEATHSIG_ENV)
