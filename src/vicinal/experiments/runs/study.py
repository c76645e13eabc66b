"""Studies: a grid of arms × seeds, each cell one training run, resumable and parallel.

A study is described in TOML (a file of your own, or a preset shipped in
``vicinal/experiments/presets/``; parsed by :func:`~vicinal.experiments.spec.parse_study`)::

    name = "alpha"
    seeds = 3                       # or a list: [0, 1, 2]
    [defaults]                      # CellSpec fields shared by every arm
    epochs = 10
    pairing = "stream"
    [[arms]]                        # explicit arms; "method" = "none" trains on plain batches
    name = "none"
    method = "none"
    [[arms]]
    name = "mixup"
    method = "mixup"
    [grid]                          # optional: every arm with a "grid" key set to true is
    alpha = [0.1, 0.2, 0.4]         # expanded over the cartesian product of these values

Every cell trains with :func:`vicinal.experiments.training.single.train_arm` into
``<study>/cells/<arm>/seed<k>/`` (:mod:`vicinal.experiments.runs.cells`). Running a study
again skips finished cells (``result.json``) and resumes interrupted ones from their
checkpoint, so a killed study loses no finished work. All arms of one seed start from
the same initial weights (``<study>/init/``) and see the same data order, which makes
per-seed differences paired.

Any number of processes may run one study folder at once (one machine, or several
sharing a file system: a Slurm job array with ``--shard I/N``, a Kubernetes indexed
job): a process trains a cell only while it holds the cell's OS file lock, so no cell
is trained twice, and a dead process's lock is released by the OS (see :func:`run_study`).

A cell that fails on its own (its loss diverges, a file of its folder is damaged) is
recorded in its folder (``failed.json``, never as a result) and the study goes on with
the other cells; at the end :func:`run_study` raises
:class:`~vicinal.experiments.errors.CellsFailed`, which names them (the command line
renders the report of the finished cells, then exits with status 1). With
``fail_fast=True`` (``--fail-fast``) the first failure stops the study instead. Running
the study again retries the failed cells.

Everything is checked (the data of every cell, the sizes, the free disk space, an
existing ``study.json``) before the study folder is created, so a refused study writes
nothing.

``run_study(..., batch_seeds=True)`` (``vicinal study --batch-seeds``) trains the cells
of each arm that differ only by seed together, in one process, as one batched model
(:mod:`vicinal.experiments.runs.seed_groups`).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeAlias

import torch
from filelock import FileLock
from tqdm.auto import tqdm

from vicinal._checks import check_int
from vicinal.experiments.atomic import atomic_write_json, check_free_space, remove_stale_temporaries
from vicinal.experiments.errors import CellFailed, CellsFailed
from vicinal.experiments.runs.cells import cell_dir, check_cell, ensure_init, run_cell, space_needed
from vicinal.experiments.runs.processes import stop_on_signals, worker_pool
from vicinal.experiments.runs.seed_groups import check_batch_seeds, run_seed_group, seed_groups
from vicinal.experiments.spec import CellSpec, StudySpec, check_device, read_study
from vicinal.experiments.training.loop import RESULT
from vicinal.experiments.training.single import read_result

__all__ = [
    "STUDY_LOCK",
    "default_threads",
    "parse_shard",
    "run_study",
    "shard_cells",
    "study_lock",
]

STUDY_LOCK = "study.lock"

#: What became of a cell: its result, its failure, or None (another process holds it).
_Outcome: TypeAlias = "dict[str, Any] | CellFailed | None"


def study_lock(study_dir: str | os.PathLike) -> FileLock:
    """The study's lock (``<study>/study.lock``), held while ``study.json``, the initial
    weights or the report are written, so concurrent processes never interleave them."""
    return FileLock(Path(study_dir) / STUDY_LOCK)


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int]:
    """``"I/N"`` (or ``(I, N)``) as ``(I, N)``, checked: ``0 <= I < N``; None is ``(0, 1)``."""
    if shard is None:
        return 0, 1
    if isinstance(shard, str):
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
        if match is None:
            raise ValueError(f"--shard must be I/N with whole numbers 0 <= I < N (e.g. --shard 0/4), got {shard!r}")
        index, count = int(match[1]), int(match[2])
    else:
        index, count = shard
    if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
        raise ValueError(f"--shard must be I/N with whole numbers 0 <= I < N (e.g. --shard 0/4), got {index}/{count}")
    return index, count


def shard_cells(cells: list[CellSpec], shard: str | tuple[int, int] | None) -> list[CellSpec]:
    """The cells ``i`` (positions in ``cells``) with ``i % N == I``."""
    index, count = parse_shard(shard)
    return [cell for i, cell in enumerate(cells) if i % count == index]


def default_threads(jobs: int) -> int:
    """CPU threads per cell: the cores shared among ``jobs`` processes (torch's default for one)."""
    return max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else torch.get_num_threads()


def _check_same_study(root: Path, old: dict[str, Any], record: dict[str, Any]) -> None:
    if old["arms"] != record["arms"]:
        raise ValueError(f"{root} holds a different study; use another --out or the same options")


def run_study(
    spec: StudySpec,
    study_dir: str | os.PathLike,
    *,
    jobs: int = 1,
    progress: bool = True,
    shard: str | tuple[int, int] | None = None,
    threads: int | None = None,
    batch_seeds: bool = False,
    device: str = "cpu",
    fail_fast: bool = False,
) -> list[dict[str, Any]]:
    """Run every unfinished cell of ``spec`` (of its ``shard``) with ``jobs`` worker processes.

    Any number of processes may run one study folder at the same time, on one machine
    or on several sharing a file system: each cell is trained by one process only (see
    :func:`~vicinal.experiments.runs.cells.run_cell`). A process first trains the cells
    nobody holds, then waits for those other processes hold, so it returns once every
    cell of its shard is finished.

    Args:
        jobs: cells trained at once, one worker process each (>= 1).
        shard: ``"I/N"`` trains only the cells ``i`` with ``i % N == I`` (positions in
            ``spec.cells()``): the part of a scheduler's task ``I`` of ``N``.
        threads: CPU threads per cell (>= 1; default: :func:`default_threads`), or per
            group of seeds with ``batch_seeds``.
        batch_seeds: train the cells of each arm that differ only by seed together, in
            one process, as one batched model (:mod:`vicinal.experiments.runs.seed_groups`);
            each cell's folder ends up as if it had trained alone. Refused (ValueError,
            before anything is written) for arms it can't train that way.
        device: where each cell trains (``"cpu"``, ``"cuda"``, ``"cuda:N"``); not part
            of a cell's identity, so a study may be resumed on another device.
        fail_fast: stop at the first cell that fails (the other workers are stopped)
            instead of training every other cell first.

    Returns:
        The result records of the shard's cells, in ``spec.cells()`` order.

    Raises:
        CellsFailed: some cells failed (each recorded in its ``failed.json``); the others finished.
        CellFailed: with ``fail_fast``, the first cell that failed.
    """
    check_int("jobs (--jobs)", jobs, minimum=1)
    if threads is not None:
        check_int("threads (--threads)", threads, minimum=1)
    if batch_seeds and device != "cpu":
        raise ValueError(f"--batch-seeds trains on the CPU only; got device={device!r}")
    check_device(device)
    index, count = parse_shard(shard)
    cells = shard_cells(spec.cells(), shard)
    if batch_seeds:
        check_batch_seeds(cells)
    root = Path(study_dir)
    saved = root / "study.json"
    record = spec.record()
    # Everything that can refuse the study is checked before its folder is made.
    checked = {cell: check_cell(cell) for cell in cells}
    if saved.exists():
        _check_same_study(root, read_study(saved), record)
    check_free_space(root, space_needed(root, cells), f"the initial weights and checkpoints of {len(cells)} cells")
    root.mkdir(parents=True, exist_ok=True)
    with study_lock(root):
        if saved.exists():  # again, under the lock: another process may have written it since
            old = read_study(saved)
            _check_same_study(root, old, record)
            record["seeds"] = sorted(set(old["seeds"]) | set(spec.seeds))  # adding seeds extends a study
        atomic_write_json(saved, record, checksum=True)
        remove_stale_temporaries(root / "init")  # initial weights are written under this lock only
        for cell in cells:
            ensure_init(root, cell, checked[cell])
    todo = [c for c in cells if not (cell_dir(root, c) / RESULT).exists()]
    t0 = time.perf_counter()
    threads = threads or default_threads(jobs)
    hint = f"run the same command again to resume: finished cells are kept in {root}"
    with stop_on_signals(hint), contextlib.ExitStack() as stack:
        bar = None
        if progress:
            bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc=f"study {spec.name}", unit="cell")
            stack.callback(bar.close)
        units = len({c.arm for c in todo}) if batch_seeds else len(todo)
        pool = stack.enter_context(worker_pool(jobs, hint=hint)) if jobs > 1 and units > 1 else None

        def attempt(call: Any, *args: Any) -> _Outcome:
            """A cell's outcome; with ``fail_fast`` a failure stops the study (the pool stops its workers)."""
            try:
                outcome: _Outcome = call(*args)
            except CellFailed as exc:
                if fail_fast:
                    raise
                return exc
            return outcome

        def run(batch: list[CellSpec], wait: bool) -> Iterator[tuple[CellSpec, _Outcome]]:
            if batch_seeds and not wait:
                yield from run_groups(batch)
                return
            if pool is None:
                for c in batch:
                    yield c, attempt(run_cell, str(root), c, threads, wait, device)
                return
            futures = {pool.submit(run_cell, str(root), c, threads, wait, device): c for c in batch}
            for f in cf.as_completed(futures):
                yield futures[f], attempt(f.result)

        def run_groups(batch: list[CellSpec]) -> Iterator[tuple[CellSpec, _Outcome]]:
            groups = seed_groups(batch)
            if pool is None:
                for group in groups:
                    yield from run_seed_group(str(root), group, threads, fail_fast)
                return
            futures = [pool.submit(run_seed_group, str(root), group, threads, fail_fast) for group in groups]
            for f in cf.as_completed(futures):
                yield from f.result()

        failures: dict[CellSpec, CellFailed] = {}
        held: list[CellSpec] = []  # cells another process trains: waited for once every free cell is done
        for cell, outcome in run(todo, False):
            if outcome is None:
                held.append(cell)
                continue
            if isinstance(outcome, CellFailed):
                failures[cell] = outcome
            if bar:
                bar.update(1)
        for cell, outcome in run(held, True):
            if isinstance(outcome, CellFailed):
                failures[cell] = outcome
            if bar:
                bar.update(1)
    timing = {
        "cells": len(cells),
        "unfinished_at_start": len(todo),
        "jobs": jobs,
        "batch_seeds": batch_seeds,
        "threads": threads,
        "device": device,
        "shard": f"{index}/{count}",
        "host": socket.gethostname(),
        "wall_s": time.perf_counter() - t0,
        "failed": len(failures),
    }
    atomic_write_json(root / f"timing-{int(time.time())}-{socket.gethostname()}-{os.getpid()}.json", timing)
    if failures:
        raise CellsFailed([failures[c] for c in cells if c in failures], len(cells) - len(failures), str(root))
    return [read_result(cell_dir(root, c) / RESULT) for c in cells]
