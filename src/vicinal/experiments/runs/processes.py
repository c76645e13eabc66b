"""Worker processes that die with their parent, and runs that stop cleanly on a signal.

``vicinal compare`` trains its arms and ``vicinal study --jobs N`` its cells in spawned
worker processes (:func:`worker_pool`). Every worker

* ignores SIGINT: a Ctrl-C reaches the whole foreground process group, and the parent
  decides what happens;
* turns SIGTERM into an exception that unwinds the training (so an atomic write in
  progress removes its temporary file and every lock is released) and then exits at
  once with status 143, without waiting on a parent that is stopping or gone;
* on Linux, asks the kernel for that SIGTERM when its parent dies, whatever killed the
  parent (``prctl(PR_SET_PDEATHSIG)``, even ``kill -9``);
* everywhere, runs a watchdog thread that waits on multiprocessing's parent sentinel
  (the end of a pipe the parent holds, which closes when the parent dies): when the
  parent is gone it sends SIGTERM to the worker's main thread, and ends the process
  hard if that has not done it within :data:`GRACE_S` seconds.

In the parent, :func:`stop_on_signals` turns SIGINT and SIGTERM into :class:`Interrupted`
(a :class:`KeyboardInterrupt` that carries the signal and how to resume); leaving a
:func:`worker_pool` on any exception stops every worker (SIGTERM, then SIGKILL after
:data:`GRACE_S`) and drops the queued work. Checkpoints are atomic, so the run folder
is left resumable. The command line prints :func:`describe_interrupt`'s one line and
exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM).

Test hooks (a marker file per started worker, workers without the death signal) are
read from the environment by :mod:`vicinal.experiments.testing`.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from vicinal.experiments.errors import RunFailed
from vicinal.experiments.testing import mark_worker_started, parent_death_signal_wanted

__all__ = [
    "GRACE_S",
    "Interrupted",
    "WorkerDied",
    "WorkerPool",
    "WorkerStopped",
    "describe_interrupt",
    "set_parent_death_signal",
    "stop_on_signals",
    "stop_workers",
    "worker_pool",
]

#: Seconds a stopped worker gets to unwind before it is killed outright.
GRACE_S = 30.0

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class WorkerDied(RunFailed):
    """A worker process ended without a result (killed, out of memory, crashed)."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached a run; ``hint`` says how to resume it."""

    def __init__(self, signum: int, hint: str = "") -> None:
        super().__init__(signum, hint)
        self.signum = int(signum)
        self.hint = hint

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process ended by that signal."""
        return 128 + self.signum

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        return f"interrupted by {name}" + (f"; {self.hint}" if self.hint else "")


class WorkerStopped(SystemExit):
    """Raised in a worker by SIGTERM; unwinds its task, then the worker exits."""


def describe_interrupt(exc: BaseException) -> tuple[str, int]:
    """The one-line message and exit status for an interrupted command."""
    if isinstance(exc, Interrupted):
        return str(exc), exc.exit_code
    return "interrupted", 128 + signal.SIGINT


# --------------------------------------------------------------------------- parent side


@contextlib.contextmanager
def stop_on_signals(hint: str) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` carrying ``hint``.

    Only the first signal raises: a second one while the run is stopping its workers is
    ignored, so the stop is not cut short. Signals the process ignores (a job started
    with ``nohup``) stay ignored. Off the main thread, where Python cannot install
    handlers, a :class:`KeyboardInterrupt` is still given the hint.
    """
    if threading.current_thread() is not threading.main_thread():
        try:
            yield
        except Interrupted:
            raise
        except KeyboardInterrupt as exc:
            raise Interrupted(signal.SIGINT, hint) from exc
        return

    raised = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise Interrupted(signum, hint)

    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt as exc:  # a KeyboardInterrupt raised by other code
        raise Interrupted(signal.SIGINT, hint) from exc
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class WorkerPool:
    """The pool of :func:`worker_pool`: :meth:`submit` runs ``fn(*args)`` in a worker."""

    def __init__(self, max_workers: int) -> None:
        self.executor = cf.ProcessPoolExecutor(
            max_workers=max_workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(os.getpid(),),
        )
        # The executor forgets its processes once broken: keep them, to stop and report them.
        self.processes: dict[int, Any] = {}

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> cf.Future[Any]:
        future = self.executor.submit(_call, fn, *args)
        self.processes.update(getattr(self.executor, "_processes", None) or {})
        self._wake_manager()
        return future

    def _wake_manager(self) -> None:
        """Make the executor's manager thread watch the worker just started.

        CPython's ``submit()`` (3.9 to 3.13 at least) wakes the manager thread *before*
        it spawns a new worker, so the manager can go back to waiting on the old list of
        worker sentinels; if the new worker then dies, nothing notices and the run hangs
        for ever. A second wake-up, now that the worker is registered, closes that window.
        """
        lock = getattr(self.executor, "_shutdown_lock", None)
        wakeup = getattr(self.executor, "_executor_manager_thread_wakeup", None)
        if lock is None or wakeup is None:
            return
        with lock, contextlib.suppress(OSError):
            wakeup.wakeup()  # a no-op once the executor has closed it (under the same lock)


@contextlib.contextmanager
def worker_pool(max_workers: int, *, hint: str = "run the same command again to resume") -> Iterator[WorkerPool]:
    """Spawned worker processes that die with their parent (see the module's docstring).

    Leaving the block normally waits for the submitted work; leaving it on an exception
    (an :class:`Interrupted`, a failed task) stops every worker first (:func:`stop_workers`).
    A worker that died on its own (``BrokenProcessPool``) is reported as :class:`WorkerDied`,
    whose message ends with ``hint`` (how to resume).
    """
    pool = WorkerPool(max_workers)
    try:
        yield pool
    except BrokenProcessPool as exc:
        codes = stop_workers(pool)
        raise WorkerDied(_died_message(codes, hint)) from exc
    except BaseException:
        stop_workers(pool)
        raise
    else:
        pool.executor.shutdown(wait=True)


def stop_workers(pool: WorkerPool, grace_s: float = GRACE_S) -> dict[int, Any]:
    """SIGTERM every live worker, wait up to ``grace_s`` for all, SIGKILL the rest, drop queued work.

    Returns each worker's exit code by pid (None for one that could not be reaped).
    """
    processes = {**pool.processes, **(getattr(pool.executor, "_processes", None) or {})}
    for proc in processes.values():
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in processes.values():
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in processes.values():
        if proc.is_alive():
            proc.kill()
            proc.join(5.0)
    pool.executor.shutdown(wait=False, cancel_futures=True)
    return {pid: proc.exitcode for pid, proc in processes.items()}


def _died_message(codes: dict[int, Any], hint: str) -> str:
    def describe(pid: int, code: Any) -> str:
        if isinstance(code, int) and code < 0:
            return f"pid {pid} killed by {signal.Signals(-code).name}"
        return f"pid {pid} exit status {code}"

    unclean = {pid: code for pid, code in codes.items() if code not in (None, 0, 128 + signal.SIGTERM)}
    dead = ", ".join(describe(pid, code) for pid, code in (unclean or codes).items())
    return (
        f"a worker process ended without a result ({dead or 'no exit status'}; out of memory, or killed?); "
        f"the other workers were stopped and finished work is kept; {hint}"
    )


# --------------------------------------------------------------------------- worker side

_stopping = False


def _on_sigterm(signum: int, frame: Any) -> None:
    global _stopping
    if _stopping:
        return  # already unwinding: a second SIGTERM (death signal and watchdog) must not cut it short
    _stopping = True
    raise WorkerStopped(128 + signum)


def _init_worker(parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if sys.platform.startswith("linux") and parent_death_signal_wanted():
        set_parent_death_signal(signal.SIGTERM)
    threading.Thread(target=_watch_parent, name="vicinal-parent-watchdog", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the death signal was asked for
        os._exit(128 + signal.SIGTERM)
    mark_worker_started(parent_pid)


def set_parent_death_signal(sig: int) -> bool:
    """Linux: have the kernel send ``sig`` to this process when its parent dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(grace_s: float = GRACE_S) -> None:
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    parent.join()  # returns when the parent's end of the sentinel pipe closes: the parent is gone
    if hasattr(signal, "pthread_kill"):
        main = threading.main_thread().ident
        if main is not None:
            signal.pthread_kill(main, signal.SIGTERM)  # the main thread unwinds, even from a blocking read
        time.sleep(grace_s)
    os._exit(128 + signal.SIGTERM)


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a task in a worker; a stopped worker leaves as soon as the task has unwound."""
    try:
        return fn(*args)
    except WorkerStopped as exc:
        sys.stderr.flush()
        os._exit(exc.code if isinstance(exc.code, int) else 1)
