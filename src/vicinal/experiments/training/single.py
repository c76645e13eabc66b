"""Training one arm: :func:`train_arm` drives :func:`~vicinal.experiments.training.loop.fit` with one model.

An arm's folder holds what the loop writes after every epoch (``checkpoint.pt``,
``metrics.jsonl``) and ``result.json``, written atomically once the arm is finished
and tested. A finished checkpoint is finished by :func:`train_arm` whichever trainer
wrote it (the stacked-seeds trainer ends its cells this way).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vicinal import MixConfig
from vicinal._checks import check_choice
from vicinal.experiments.atomic import atomic_write_json, check_fields, read_json
from vicinal.experiments.distributed import SINGLE, DistContext, barrier
from vicinal.experiments.loader import InMemoryLoader
from vicinal.experiments.metrics import evaluate_all
from vicinal.experiments.spec import PRECISIONS, OptimConfig, autocast_dtype
from vicinal.experiments.testing import EpochHook
from vicinal.experiments.training.loop import (
    CHECKPOINT,
    RESULT,
    Checkpoint,
    ModelRun,
    ProgressFactory,
    epoch_seed,
    evaluate,
    fit,
    make_optimizer,
    make_schedule,
    restart_metrics,
)
from vicinal.torch.losses import jensen_shannon_consistency, soft_target_cross_entropy
from vicinal.torch.manifold import ManifoldMixup
from vicinal.torch.mit import MixupInferenceTraining
from vicinal.torch.regmixup import RegMixup

__all__ = ["RESULT_REMEDY", "ArmResult", "SingleModel", "read_result", "train_arm"]

#: What to do with a ``result.json`` that can't be used (the checkpoint of the last epoch is kept).
RESULT_REMEDY = "delete it and resume: the arm's test is redone from its last checkpoint"


@dataclass
class ArmResult:
    """A finished arm, as ``result.json`` holds it.

    Attributes:
        test_acc, test_loss: on the test set with the last epoch's weights.
        best_val_acc, best_epoch: the best validation accuracy and its (0-based) epoch.
        wall_s: seconds of training and evaluation.
        history: one record per epoch.
        metrics: with ``full_metrics``: ``{"last": evaluate_all(...), "best": evaluate_all(...)}``
            (the best validation epoch's weights).
    """

    name: str
    test_acc: float
    test_loss: float
    best_val_acc: float
    best_epoch: int
    wall_s: float
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, Any] | None = None


def read_result(path: Path) -> dict[str, Any]:
    """A finished arm's ``result.json``, verified and checked against :class:`ArmResult`'s fields.

    Raises:
        UnreadableFileError: damaged, of another schema, or holding NaN; names the file.
    """
    result: dict[str, Any] = read_json(path, check=lambda data: check_fields(ArmResult, data), remedy=RESULT_REMEDY)
    return result


class SingleModel:
    """The :class:`~vicinal.experiments.training.loop.Trainer` of one model.

    Args:
        model: the plain model (weights, checkpoints, evaluation).
        net: what the step runs: ``model``, or its DistributedDataParallel wrapper.
        loader: the training batches.
        optimizer: the model's optimizer.
        precision: ``"fp32"``, ``"bf16"`` for bfloat16 autocast of the forward pass, or
            ``"auto"``: bf16 on a CUDA GPU that supports it, else fp32 (:func:`autocast_dtype`).
        manifold: Manifold Mixup of ``net`` (the batches are then plain), or None.
        jsd_weight: > 0 with a loader that yields (3B, ...) AugMix views for B targets.
        rank: this process's rank (its own dropout masks).

    A loader carrying RegMixup or MIT (``loader.step_loss``) has its plain batches mixed
    inside the step, with plans of ``(loader.seed, epoch, step, rank)`` (rank 0 unless the
    loader's policy is "independent", as for the loader's own plans).
    """

    loss_shape: tuple[int, ...] = ()

    def __init__(
        self,
        model: nn.Module,
        net: nn.Module,
        loader: InMemoryLoader,
        optimizer: torch.optim.Optimizer,
        *,
        precision: str = "fp32",
        manifold: ManifoldMixup | None = None,
        jsd_weight: float = 0.0,
        rank: int = 0,
    ) -> None:
        self.model, self.net, self.loader, self.optimizer = model, net, loader, optimizer
        self.step_loss: RegMixup | MixupInferenceTraining | None = None
        if loader.step_loss is not None:
            step_rank = rank if loader.policy == "independent" else 0
            self.step_loss = loader.step_loss.build(seed=loader.seed, rank=step_rank, num_classes=loader.num_classes)
        self.device = next(model.parameters()).device
        self.steps = len(loader)
        self.autocast_dtype = autocast_dtype(precision, self.device)
        self.manifold, self.jsd_weight, self.rank = manifold, jsd_weight, rank

    def start_epoch(self, epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        torch.manual_seed(epoch_seed(self.loader.seed, epoch) + self.rank)  # each rank its own dropout masks
        self.net.train()
        return self.loader.epoch(epoch)

    def loss(
        self, step: int, epoch: int, batch: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, target = batch
        dtype = self.autocast_dtype
        if self.step_loss is not None:  # RegMixup or MIT: the step mixes and runs the model itself
            with torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                out = self.step_loss(self.net, x, target, step=step, epoch=epoch)
            return out.loss, out.logits, out.targets  # the clean (MIT: recovered) logits
        with torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            if self.manifold is not None:
                logits, target = self.manifold(x, target, step=step, epoch=epoch)
            else:
                logits = self.net(x)  # with JSD: one pass over all three views, as in the paper's code
        if self.jsd_weight > 0:
            logits, logits_aug1, logits_aug2 = logits.float().split(target.shape[0])
            loss = soft_target_cross_entropy(logits, target) + self.jsd_weight * jensen_shannon_consistency(
                logits, logits_aug1, logits_aug2
            )
        else:
            loss = soft_target_cross_entropy(logits, target)  # in float32 whatever the autocast
        return loss, logits, target

    def model_of(self, index: int) -> nn.Module:
        return self.model

    def optimizer_state_of(self, index: int) -> dict[str, Any]:
        return self.optimizer.state_dict()


def train_arm(
    name: str,
    model: nn.Module,
    loader: InMemoryLoader,
    *,
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    epochs: int,
    out_dir: str | os.PathLike,
    optim: OptimConfig | None = None,
    resume: bool = False,
    channels_last: bool = False,
    progress: ProgressFactory | None = None,
    on_epoch: Sequence[EpochHook] = (),
    track_test: bool = False,
    full_metrics: bool = False,
    dist: DistContext = SINGLE,
    precision: str = "fp32",
    manifold: tuple[MixConfig, Sequence[str]] | None = None,
    jsd_weight: float = 0.0,
    extra_metrics: Callable[[nn.Module], dict[str, Any]] | None = None,
) -> ArmResult:
    """Train ``model`` (already holding the initial weights) for ``epochs`` epochs.

    Args:
        loader: the training batches (mixed or plain; plain ones carrying RegMixup or MIT,
            ``loader.step_loss``, are mixed by the step: :class:`SingleModel`). With its
            normalisation statistics (:attr:`InMemoryLoader.normalization`) the model
            normalises its input while it trains and is evaluated here (the hook is
            removed before returning).
        val, test: uint8 images (N, C, H, W) or float features, and int64 labels (N,).
        out_dir: the arm's folder (created).
        optim: the optimizer and its schedule (default: :class:`OptimConfig`'s defaults: Adam).
        resume: continue from ``out_dir/checkpoint.pt`` if present; a finished arm
            (``result.json``) is returned as it is.
        progress: ``progress(epoch, steps)`` returns an object with ``update(n)``,
            ``set_postfix(**values)`` and ``close()`` (a tqdm bar), or None for silence.
        on_epoch: called with each epoch's record once it is on disk.
        track_test: also record test loss/accuracy after every epoch (``test_acc`` in
            the history: the mixup paper's "best" test accuracy is its maximum).
        full_metrics: at the end, compute :func:`vicinal.experiments.metrics.evaluate_all` on the test
            set for the last epoch's weights and for the best validation epoch's weights,
            with the temperature fitted on ``val`` and the ECE after scaling.
        precision: ``"fp32"``, ``"bf16"`` for bfloat16 autocast of the forward pass
            (see docs/results.md for which CPUs it pays on), or ``"auto"`` (bf16 on a
            CUDA GPU that supports it, fp32 elsewhere).
        manifold: ``(config, layers)``: Manifold Mixup, mixing the plain batches of
            ``loader`` inside the model at one of ``layers`` per step
            (:class:`vicinal.torch.manifold.ManifoldMixup`, plans of ``(loader.seed, epoch,
            step, rank)``).
        jsd_weight: with a loader that yields the three AugMix views of each batch
            (clean, view 1, view 2; (3B, ...) inputs for B targets): the weight of the
            Jensen-Shannon consistency loss (12 in the AugMix paper) added to the
            cross-entropy of the clean view. 0: plain batches.
        extra_metrics: ``extra_metrics(model) -> dict`` merged into ``metrics["last"]``
            at the end (with ``full_metrics``), e.g. accuracy on a corrupted test set.
        dist: in a distributed job the model is wrapped in DistributedDataParallel,
            training and evaluation sums are reduced across ranks (every rank returns the
            same result), and only rank 0 writes files.
    """
    check_choice("precision", precision, PRECISIONS)
    out = Path(out_dir)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    if resume and (out / RESULT).exists():
        return ArmResult(**read_result(out / RESULT))

    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optim = optim or OptimConfig()
    # The model normalises its input while it trains and is evaluated here, not after.
    with contextlib.nullcontext() if loader.normalization is None else loader.normalization.attach(model):
        optimizer = make_optimizer(model.parameters(), optim)
        schedule = make_schedule(optimizer, optim, max(1, epochs * len(loader)), steps_per_epoch=len(loader))
        checkpoint = Checkpoint.load(out / CHECKPOINT) if resume else None
        if checkpoint is not None:
            model.load_state_dict(checkpoint.model)
            optimizer.load_state_dict(checkpoint.optimizer)
            if schedule is not None:
                schedule.load_state_dict(checkpoint.scheduler)  # type: ignore[arg-type]
        run = ModelRun.resume(f"arm {name!r}", out, checkpoint, on_epoch)
        if dist.is_main:
            restart_metrics(out, run.history)
        net: nn.Module = DistributedDataParallel(model) if dist.enabled else model
        mixer = None
        if manifold is not None:
            mixer = ManifoldMixup(net, manifold[1], manifold[0], seed=loader.seed, rank=dist.rank)
        trainer = SingleModel(
            model, net, loader, optimizer, precision=precision, manifold=mixer, jsd_weight=jsd_weight, rank=dist.rank
        )
        fit(
            trainer,
            [run],
            optimizer=optimizer,
            schedule=schedule,
            epochs=epochs,
            val=val,
            test=test,
            channels_last=channels_last,
            track_test=track_test,
            keep_best=full_metrics,
            progress=progress,
            dist=dist,
        )

        test_loss, test_acc = evaluate(model, *test, channels_last=channels_last, dist=dist)
        history = run.history
        best = max(history, key=lambda h: h["val_acc"]) if history else {"val_acc": math.nan, "epoch": -1}
        metrics = None
        if full_metrics:
            metrics = {"last": evaluate_all(model, *test, channels_last=channels_last, val=val)}
            if extra_metrics is not None:
                metrics["last"].update(extra_metrics(model))
            if run.best_state is not None:
                last_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                model.load_state_dict(run.best_state)
                metrics["best"] = evaluate_all(model, *test, channels_last=channels_last, val=val)
                metrics["best"]["epoch"] = int(best["epoch"])
                model.load_state_dict(last_state)
        result = ArmResult(
            name=name,
            test_acc=test_acc,
            test_loss=test_loss,
            best_val_acc=best["val_acc"],
            best_epoch=int(best["epoch"]),
            wall_s=run.elapsed,
            history=history,
            metrics=metrics,
        )
        if dist.is_main:
            atomic_write_json(out / RESULT, asdict(result), checksum=True)
        barrier(dist)  # no rank moves on (e.g. to the next arm) before the result is on disk
        return result
