"""The keras.io reference experiment: the same network trained with and without mixing.

:func:`run_compare` loads the data, holds out the first ``val_size`` training images,
saves one set of initial weights, trains every arm from them, and writes the run folder:

* ``config.json`` — the resolved configuration;
* ``init.pt`` — the shared initial weights;
* ``<arm>/`` — each arm's checkpoint, ``metrics.jsonl`` and ``result.json``;
* ``results.json`` — every arm's result, for ``vicinal report``;
* ``preview.png`` — nine mixed training images with their soft labels;
* ``curves.png`` — accuracy and loss per epoch for every arm;
* ``summary.md`` — the results table.

Every file that is read back (``config.json``, ``init.pt``, checkpoints, results) has
its checksum record beside it (``<name>.sha256``) and is verified and validated when it
is read (:mod:`vicinal.experiments.atomic`). Before anything is written the run is
refused if its files can't fit on the disk; a resumed run first removes the temporary
files of dead processes.

Arms can train in parallel processes (one per arm, threads split between them): on a
small CPU this is the fastest way to use all cores, because one step of the reference
CNN is too small to spread over several threads. On a GPU (``device="cuda"``) the arms'
processes share the device: a step of the reference CNN is bound by the host's kernel
launches, not by the GPU, so two processes launching at once overlap (not measured yet:
``benchmarks/gpu_compare.py`` times both modes; ``--sequential`` keeps one). Each arm
keeps its data on the device as ``uint8`` and makes its batches there
(:class:`~vicinal.experiments.loader.EpochPlan`); see ``docs/gpu.md``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vicinal.experiments.atomic import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    check_fields,
    check_free_space,
    load_tensors,
    read_json,
    remove_stale_temporaries,
)
from vicinal.experiments.distributed import (
    SINGLE,
    DistContext,
    barrier,
    collective_errors,
    init_from_env,
    launched_by_torchrun,
)
from vicinal.experiments.loader import InMemoryLoader
from vicinal.experiments.models import build_model, describe_input
from vicinal.experiments.report.plots import learning_curves, write_preview
from vicinal.experiments.runs.processes import stop_on_signals, worker_pool
from vicinal.experiments.spec import CompareConfig
from vicinal.experiments.splits import Splits, check_fits, load_any, make_splits, training_batches
from vicinal.experiments.testing import epoch_hooks
from vicinal.experiments.training.loop import (
    CHECKPOINT,
    INIT_REMEDY,
    RESULT,
    ProgressFactory,
    check_weights,
    checkpoint_bytes,
)
from vicinal.experiments.training.single import ArmResult, train_arm

__all__ = [
    "CONFIG_REMEDY",
    "config_differences",
    "initial_weights",
    "make_loader",
    "progress_bars",
    "run_compare",
    "space_needed",
    "summary_table",
    "train_one_arm",
]


#: What to do with a ``config.json`` that can't be used: without it a resume can't check its options.
CONFIG_REMEDY = "restore it and its .sha256 record from a copy, or start a new run with another --out"


def config_differences(saved: dict[str, Any], current: dict[str, Any], *, ignore: Collection[str] = ()) -> list[str]:
    """``"name: saved -> current"`` for each option that differs, paths compared normalised."""

    def norm(name: str, value: Any) -> Any:
        if name == "data_dir" and value is not None:
            return os.path.normpath(os.path.abspath(os.path.expanduser(str(value))))
        return list(value) if isinstance(value, tuple) else value

    names = (set(saved) | set(current)) - set(ignore)
    return [
        f"{name}: {saved.get(name)!r} -> {current.get(name)!r}"
        for name in sorted(names)
        if norm(name, saved.get(name)) != norm(name, current.get(name))
    ]


def make_loader(cfg: CompareConfig, splits: Splits, arm: str, dist: DistContext = SINGLE) -> InMemoryLoader:
    """The training batches of ``arm`` (mixed for ``"mixup"``, plain for ``"none"``) on ``cfg.device``."""
    return training_batches(cfg, splits, mixed=arm == "mixup", device=cfg.device, dist=dist, policy=cfg.mix_policy)


def initial_weights(cfg: CompareConfig, splits: Splits, run_dir: Path) -> dict[str, torch.Tensor]:
    """The shared initial weights: loaded from ``init.pt`` if the run has them, else made.

    ``cfg.model`` must be set (see :meth:`CompareConfig.for_data`).
    """
    assert cfg.model is not None
    path = run_dir / "init.pt"
    if path.exists():
        weights: dict[str, torch.Tensor] = load_tensors(path, check=check_weights, remedy=INIT_REMEDY)
        return weights
    torch.manual_seed(cfg.seed)
    state = build_model(cfg.model, splits.input_shape, splits.num_classes).state_dict()
    atomic_torch_save(state, path, checksum=True)
    return state


def space_needed(cfg: CompareConfig, splits: Splits, run: Path) -> int:
    """A lower bound of the bytes the run still writes and keeps: the initial weights if
    missing, a checkpoint per unfinished arm that has none yet, and the one being replaced."""
    assert cfg.model is not None
    with torch.random.fork_rng(devices=[]):  # measured on a throw-away model
        model = build_model(cfg.model, splits.input_shape, splits.num_classes)
    checkpoint = checkpoint_bytes(model)
    unfinished = [arm for arm in cfg.arms if not (run / arm / RESULT).exists()]
    started = [arm for arm in unfinished if (run / arm / CHECKPOINT).exists()]
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    need = 0 if (run / "init.pt").exists() else weights
    need += checkpoint * (len(unfinished) - len(started))
    if started or (unfinished and cfg.epochs > 1):  # an old checkpoint and its replacement, at once
        need += checkpoint
    return need


def progress_bars(position: int, arm: str) -> ProgressFactory:
    """One tqdm bar per epoch of ``arm``, on line ``position`` (arms training at once each keep a line)."""

    def make(epoch: int, steps: int) -> Any:
        return tqdm(
            total=steps,
            desc=f"{arm:>6} epoch {epoch + 1}",
            position=position,
            leave=True,
            dynamic_ncols=True,
            mininterval=0.5,
        )

    return make


def train_one_arm(
    cfg: CompareConfig,
    splits: Splits,
    run_dir: str,
    arm: str,
    position: int,
    threads: int,
    resume: bool,
    progress: bool,
    dist: DistContext = SINGLE,
) -> ArmResult:
    """Train (or resume) ``arm`` of the run in ``run_dir`` with ``threads`` CPU threads (a worker's task)."""
    assert cfg.model is not None
    torch.set_num_threads(threads)
    state = initial_weights(cfg, splits, Path(run_dir))
    model = build_model(cfg.model, splits.input_shape, splits.num_classes)
    model.load_state_dict(state)
    model.to(cfg.device)
    val = (splits.val[0].to(cfg.device), splits.val[1].to(cfg.device))
    test = (splits.test[0].to(cfg.device), splits.test[1].to(cfg.device))
    mixed = arm == "mixup"
    # A dead rank fails DDP's gradient all-reduce inside backward(): one line, not gloo's traceback.
    with collective_errors(dist, f"training arm {arm!r}"):
        return train_arm(
            arm,
            model,
            make_loader(cfg, splits, arm, dist),
            val=val,
            test=test,
            epochs=cfg.epochs,
            out_dir=Path(run_dir) / arm,
            optim=cfg.optim(),
            resume=resume,
            channels_last=cfg.channels_last,
            progress=progress_bars(position, arm) if progress and dist.is_main else None,
            on_epoch=epoch_hooks(arm),
            dist=dist,
            precision=cfg.precision,
            manifold=cfg.manifold() if mixed else None,
            jsd_weight=cfg.jsd_weight() if mixed else 0.0,
        )


def summary_table(results: list[ArmResult]) -> str:
    """The results as a Markdown table: one row per arm."""
    lines = [
        "| arm | test accuracy | test loss | best val accuracy (epoch) | wall time |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {100 * r.test_acc:.2f}% | {r.test_loss:.4f} | "
            f"{100 * r.best_val_acc:.2f}% ({r.best_epoch + 1}) | {r.wall_s:.1f} s |"
        )
    return "\n".join(lines)


def run_compare(
    cfg: CompareConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    splits: Splits | None = None,
) -> list[ArmResult]:
    """Run (or resume) the comparison into ``run_dir``; returns one result per arm.

    Under ``torchrun`` (WORLD_SIZE > 1) every arm trains with DistributedDataParallel
    across the ranks, one arm after the other, and only rank 0 writes files.
    """
    cfg = cfg.validate()
    dist = init_from_env(cfg.device, cfg.dist_timeout_s) if launched_by_torchrun() else SINGLE
    run = Path(run_dir)
    cfg_path = run / "config.json"
    if cfg_path.exists() and not resume:
        raise FileExistsError(f"{run} already holds a run; pass --resume to continue it or choose another --out")
    if splits is None:
        splits = make_splits(load_any(cfg.dataset, cfg.data_dir), cfg)
    model_note = "" if cfg.model is not None else f" (the default for {describe_input(splits.input_shape)})"
    cfg = cfg.for_data(splits.input_shape)
    if resume and cfg_path.exists():
        saved = read_json(cfg_path, check=lambda data: check_fields(CompareConfig, data), remedy=CONFIG_REMEDY)
        diffs = config_differences(saved, asdict(cfg), ignore=("parallel", "threads"))
        if diffs:
            raise ValueError(
                f"--resume: {cfg_path} was written with other options; resume with the same ones. "
                f"Differences (saved -> now): {'; '.join(diffs)}"
            )
    check_fits(cfg, splits)  # before anything is written
    # On every rank, as the checks above: a rank that refused alone would leave the others at the barrier.
    arms = ", ".join(cfg.arms)
    check_free_space(run, space_needed(cfg, splits, run), f"the initial weights and checkpoints of the arms {arms}")
    barrier(dist)  # every rank has checked the folder before rank 0 writes into it
    if model_note and dist.is_main:
        print(f"vicinal compare: model {cfg.model}{model_note}; --model chooses another", flush=True)
    if dist.is_main:
        if resume:  # what a killed run could not clean up (the run has no other writer)
            for folder in (run, *(run / arm for arm in cfg.arms)):
                remove_stale_temporaries(folder)
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cfg_path, asdict(cfg), checksum=True)
        initial_weights(cfg, splits, run)
    barrier(dist)

    t0 = time.perf_counter()
    total_threads = cfg.threads or torch.get_num_threads()
    # On CUDA too: each worker process makes its own CUDA context (spawned, not forked).
    parallel = cfg.parallel and not dist.enabled and len(cfg.arms) > 1 and (os.cpu_count() or 1) > 1
    # SIGINT/SIGTERM stop every worker (they also die with this process, even on kill -9)
    # and leave the run resumable: checkpoints are atomic.
    hint = f"resume with --resume --out {run}"
    with stop_on_signals(hint):
        if parallel:
            per_arm = max(1, total_threads // len(cfg.arms))
            with worker_pool(len(cfg.arms), hint=hint) as pool:
                futures = [
                    pool.submit(train_one_arm, cfg, splits, str(run), arm, i, per_arm, resume, progress)
                    for i, arm in enumerate(cfg.arms)
                ]
                results = [f.result() for f in futures]
        else:
            results = [
                train_one_arm(cfg, splits, str(run), arm, 0, total_threads, resume, progress, dist) for arm in cfg.arms
            ]
    wall = time.perf_counter() - t0
    if not dist.is_main:
        return results

    if "mixup" in cfg.arms and cfg.loader_mixing() is not None:
        write_preview(cfg, splits, run / "preview.png")
    learning_curves({r.name: r.history for r in results}, run / "curves.png")
    table = summary_table(results)
    mode = (
        f"DDP over {dist.world_size} processes, mix policy {cfg.mix_policy}"
        if dist.enabled
        else "arms in parallel"
        if parallel
        else "arms one after another"
    )
    summary = [
        f"# vicinal compare: {cfg.dataset}, {cfg.model}, {cfg.epochs} epochs, batch {cfg.batch_size}",
        *([] if not model_note else ["", f"Model: {cfg.model}{model_note}."]),
        "",
        table,
        "",
        f"Total wall time: {wall:.1f} s ({mode}).",
        f"Mixed arm: {cfg.describe_mixing()}"
        + (f", label smoothing {cfg.label_smoothing}" if cfg.label_smoothing else "")
        + ".",
        f"Training images: {len(splits.train[1])}, validation: {len(splits.val[1])}, test: {len(splits.test[1])} "
        f"(split: {splits.rule}); seed {cfg.seed}.",
        f"Data: {splits.source}.",
        "",
        "A single seed: differences of about a point are within seed-to-seed noise on Fashion-MNIST.",
        "",
        "![preview](preview.png)" if "mixup" in cfg.arms and cfg.loader_mixing() is not None else "",
        "![curves](curves.png)",
        "",
    ]
    atomic_write_bytes(run / "summary.md", "\n".join(summary).encode())
    atomic_write_json(
        run / "results.json",
        {
            "wall_s": wall,
            "parallel": parallel,
            "world_size": dist.world_size,
            "split_rule": splits.rule,
            "data_source": splits.source,
            "arms": [asdict(r) for r in results],
        },
        checksum=True,
    )
    return results
