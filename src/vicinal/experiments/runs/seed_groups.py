"""``vicinal study --batch-seeds``: the cells of one arm claimed together and trained as one stacked model.

:func:`run_seed_group` claims the cells of one arm (several seeds) as
:func:`~vicinal.experiments.runs.cells.run_cell` claims a cell, and trains the unfinished
ones with :func:`~vicinal.experiments.training.batched.train_stacked`; each cell's
folder ends up as a cell trained alone leaves it, up to float rounding.
:func:`check_batch_seeds` refuses, before anything is written, the arms it can't train
that way: Manifold Mixup, AugMix and JSD, torchrun jobs, and models the stacked model
can't run (:func:`~vicinal.experiments.training.batched.try_batched_step`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from vicinal.experiments.atomic import load_tensors, remove_stale_temporaries
from vicinal.experiments.distributed import launched_by_torchrun
from vicinal.experiments.errors import CellFailed
from vicinal.experiments.loader import to_model_input
from vicinal.experiments.models import build_model
from vicinal.experiments.runs.cells import (
    CLAIM_LOCK,
    cell_dir,
    cell_loader,
    cell_train_options,
    clear_failure,
    init_path,
    log_claim,
    make_cell_dir,
    record_failure,
    train_recorded,
    write_cell_record,
)
from vicinal.experiments.spec import CellSpec, autocast_dtype
from vicinal.experiments.splits import Splits, load_splits
from vicinal.experiments.testing import epoch_hooks
from vicinal.experiments.training.batched import BatchSeedsUnsupported, SeedMember, train_stacked, try_batched_step
from vicinal.experiments.training.loop import CHECKPOINT, INIT_REMEDY, RESULT, Checkpoint, ModelRun, check_weights
from vicinal.experiments.training.single import read_result

__all__ = ["check_batch_seeds", "run_seed_group", "seed_groups"]


def check_batch_seeds(cells: Sequence[CellSpec]) -> None:
    """Refuse, before anything is written, an arm that ``--batch-seeds`` can't train as one batched model.

    ``cells`` have their model set (see :meth:`CellSpec.for_data`).

    Raises:
        BatchSeedsUnsupported: naming the arm and the reason.
    """
    if launched_by_torchrun():
        raise BatchSeedsUnsupported(
            "--batch-seeds trains the seeds of an arm in one process; it does not run under torchrun "
            "(distributed): run the study without torchrun, or without --batch-seeds"
        )
    checked: set[tuple[Any, ...]] = set()
    for cell in cells:
        if cell.manifold() is not None:
            raise BatchSeedsUnsupported(
                f"arm {cell.arm!r}: --batch-seeds does not run Manifold Mixup (it mixes hidden states inside the "
                "model through hooks, with a layer drawn per step): train this study without --batch-seeds"
            )
        if autocast_dtype(cell.precision, "cpu") is not None:
            raise BatchSeedsUnsupported(
                f"arm {cell.arm!r}: --batch-seeds trains in float32; precision={cell.precision!r} autocasts to "
                "bfloat16: train this study without --batch-seeds, or with --precision fp32"
            )
        if cell.augmix_config() is not None or cell.jsd:
            raise BatchSeedsUnsupported(
                f"arm {cell.arm!r}: --batch-seeds does not run AugMix or its JSD loss (three views per batch, "
                "augmented by a separate pipeline): train this study without --batch-seeds"
            )
        assert cell.model is not None
        splits = load_splits(cell)
        key = (cell.model, splits.input_shape, splits.num_classes, cell.channels_last)
        if key in checked:
            continue
        checked.add(key)
        with torch.random.fork_rng(devices=[]):
            module = build_model(cell.model, splits.input_shape, splits.num_classes)
        if cell.channels_last:
            module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x = to_model_input(splits.train[0][:2], channels_last=cell.channels_last)
        try:
            try_batched_step(cell.model, module, x)
        except BatchSeedsUnsupported as exc:
            raise BatchSeedsUnsupported(f"arm {cell.arm!r}: {exc}") from exc


def _member(root: Path, cell: CellSpec, splits: Splits) -> SeedMember:
    """``cell`` as a member of a stacked group: from its checkpoint, else from its initial weights."""
    out = cell_dir(root, cell)
    write_cell_record(root, cell, splits, batch_seeds=True)
    checkpoint = Checkpoint.load(out / CHECKPOINT)
    run = ModelRun.resume(f"arm {cell.arm!r} seed {cell.seed}", out, checkpoint, epoch_hooks(cell.arm))
    if checkpoint is None:
        state = load_tensors(init_path(root, cell), check=check_weights, remedy=INIT_REMEDY)
    else:
        state = checkpoint.model
    return SeedMember(run, cell_loader(cell, splits), cell.seed, state, checkpoint)


def _train_group(root: Path, cells: Sequence[CellSpec], members: Sequence[SeedMember], splits: Splits) -> None:
    """Train ``members`` (the cells ``cells``, one arm, one start epoch) to the end as one stacked model."""
    cell = cells[0]
    assert cell.model is not None
    module = build_model(cell.model, splits.input_shape, splits.num_classes)
    if cell.channels_last:
        module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    options = cell_train_options(root, cell, splits)
    train_stacked(
        module,
        members,
        optim=options["optim"],
        epochs=cell.epochs,
        val=options["val"],
        test=options["test"],
        channels_last=cell.channels_last,
    )


def run_seed_group(
    study_dir: str, cells: list[CellSpec], threads: int, fail_fast: bool = False
) -> list[tuple[CellSpec, dict[str, Any] | CellFailed | None]]:
    """Train the unfinished cells of ``cells`` (one arm, several seeds) as one batched model.

    Every cell is claimed as :func:`~vicinal.experiments.runs.cells.run_cell` claims it, without
    waiting: a cell another live process holds is left to it (its result is None here;
    :func:`~vicinal.experiments.runs.study.run_study` waits for it afterwards). The claims
    are held until the group is finished. Cells resumed from different epochs train in
    sub-groups of the same start epoch; a sub-group of one cell trains alone.

    A failure of one cell (a diverged seed, a damaged checkpoint) is recorded in its
    ``failed.json``. Without ``fail_fast``, a sub-group that fails is finished cell by
    cell from the checkpoints it saved, so that the seeds that train well are kept, and
    each failed cell's :class:`~vicinal.experiments.errors.CellFailed` is returned in
    its place; with ``fail_fast`` the first failure is raised.

    Returns:
        ``(cell, result record, CellFailed or None)`` for each of ``cells``, in order.
    """
    torch.set_num_threads(threads)
    root = Path(study_dir)
    results: dict[CellSpec, dict[str, Any] | CellFailed | None] = {}

    def alone(cell: CellSpec, **options: Any) -> None:
        try:
            results[cell] = train_recorded(root, cell, **options)
        except CellFailed as exc:
            if fail_fast:
                raise
            results[cell] = exc

    with contextlib.ExitStack() as claims:
        todo: list[CellSpec] = []
        for cell in cells:
            out = cell_dir(root, cell)
            if (out / RESULT).exists():
                results[cell] = read_result(out / RESULT)
                continue
            make_cell_dir(root, cell)
            try:
                claims.enter_context(FileLock(out / CLAIM_LOCK).acquire(timeout=0))
            except Timeout:
                results[cell] = None  # another live process trains this cell
                continue
            if (out / RESULT).exists():  # finished by the process that held it
                results[cell] = read_result(out / RESULT)
                continue
            remove_stale_temporaries(out)  # under the claim, no other process writes here
            clear_failure(out)
            log_claim(out, resumed=(out / CHECKPOINT).exists())
            todo.append(cell)
        if todo:
            splits = load_splits(todo[0])
            by_start: dict[int, list[tuple[CellSpec, SeedMember]]] = {}
            for cell in todo:
                try:
                    member = _member(root, cell, splits)
                except ValueError as exc:  # e.g. its checkpoint is damaged: this cell fails, not the group
                    failed = record_failure(root, cell, exc)
                    if fail_fast:
                        raise failed from exc
                    results[cell] = failed
                    continue
                by_start.setdefault(member.run.start_epoch, []).append((cell, member))
            for start, group in by_start.items():
                group_cells = [cell for cell, _ in group]
                if len(group) == 1:
                    alone(group_cells[0])
                    continue
                if start < group_cells[0].epochs:
                    try:
                        _train_group(root, group_cells, [member for _, member in group], splits)
                    except ValueError:
                        if fail_fast:
                            raise
                        # One seed diverged (or the like): each cell goes on alone from its last
                        # checkpoint, so only the cells that fail on their own are lost.
                        for cell in group_cells:
                            alone(cell, write_record=False)
                        continue
                for cell in group_cells:  # the test metrics and result.json, as a cell trained alone ends
                    alone(cell, write_record=False)
    return [(cell, results[cell]) for cell in cells]


def seed_groups(cells: Sequence[CellSpec]) -> list[list[CellSpec]]:
    """``cells`` grouped by arm (cells of one arm differ only by seed), in first-seen order."""
    groups: dict[str, list[CellSpec]] = {}
    for cell in cells:
        groups.setdefault(cell.arm, []).append(cell)
    return list(groups.values())
