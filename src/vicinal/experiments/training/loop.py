"""The epoch loop both trainers drive, and its parts: schedule, checkpoint, metrics log, loss totals.

:func:`fit` trains one or more models in lockstep, epoch by epoch: a :class:`Trainer`
says how a step's loss is computed (one model: :class:`~vicinal.experiments.training.single.SingleModel`;
the seeds of a study arm stacked into one: :class:`~vicinal.experiments.training.batched.StackedSeeds`),
and each model's run folder (:class:`ModelRun`) gets, after every epoch:

* ``checkpoint.pt`` — :class:`Checkpoint`: model, optimizer, epoch, history, elapsed
  time, schedule and best weights; replaced atomically, with its checksum record
  (``checkpoint.pt.sha256``), and verified and validated when it is loaded;
* ``metrics.jsonl`` — one JSON record per finished epoch (:func:`append_metrics`;
  rebuilt from the checkpoint on resume by :func:`restart_metrics`, so it never holds an
  epoch the checkpoint does not).

Reproducibility: the batches of epoch ``e`` depend on ``(seed, e)`` only and dropout is
reseeded from :func:`epoch_seed` at the start of each epoch, so a run resumed after
epoch ``e`` continues exactly as an uninterrupted one (bit for bit on CPU with the same
thread count), whichever trainer wrote the checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from vicinal.experiments.atomic import (
    atomic_torch_save,
    atomic_write_bytes,
    check_fields,
    check_type,
    load_tensors,
    write_errors,
)
from vicinal.experiments.distributed import SINGLE, DistContext, all_reduce_sum, shard_positions
from vicinal.experiments.loader import to_model_input
from vicinal.experiments.spec import OptimConfig
from vicinal.experiments.testing import EpochHook

__all__ = [
    "CHECKPOINT",
    "CHECKPOINT_REMEDY",
    "DEVICE_EVAL_BATCH",
    "INIT_REMEDY",
    "METRICS",
    "RESULT",
    "Checkpoint",
    "EpochTotals",
    "ModelRun",
    "NonFiniteLossError",
    "ProgressFactory",
    "Trainer",
    "append_metrics",
    "check_weights",
    "checkpoint_bytes",
    "epoch_seed",
    "evaluate",
    "fit",
    "make_optimizer",
    "make_schedule",
    "restart_metrics",
]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
RESULT = "result.json"
#: What to do with a checkpoint that can't be used.
CHECKPOINT_REMEDY = "delete it to retrain this arm from the start, or restore it and its .sha256 record from a copy"
#: What to do with initial weights that can't be used (they are made again from the seed).
INIT_REMEDY = "delete it to make it again from the seed"

#: ``progress(epoch, steps)`` returns an object with ``update(n)``, ``set_postfix(**values)``
#: and ``close()`` (a tqdm bar).
ProgressFactory = Callable[[int, int], Any]


class NonFiniteLossError(ValueError):
    """The training loss became NaN or inf; names the run, epoch and step."""

    @classmethod
    def at(cls, who: str, epoch: int, step: int) -> NonFiniteLossError:
        """The error for ``who`` (e.g. ``"arm 'mixup'"``) at 0-based ``epoch`` and ``step``."""
        return cls(
            f"{who}: the training loss became NaN or inf at epoch {epoch + 1}, step {step}; "
            f"stopped (the checkpoint of epoch {epoch} is kept). Lower the learning rate or check the data"
        )


def epoch_seed(seed: int, epoch: int) -> int:
    """The torch seed of epoch ``epoch`` of a run seeded ``seed`` (its dropout masks): an int in [0, 2**63)."""
    return int(np.random.SeedSequence([seed, epoch, 0x64726F70]).generate_state(1, np.uint64)[0] >> 1)


def make_optimizer(params: Iterable[torch.Tensor], optim: OptimConfig) -> torch.optim.Optimizer:
    """``optim``'s optimizer over ``params``: Adam (fused) or SGD with momentum.

    Both are elementwise (so stacked weights get each model's own optimizer state), and
    ``weight_decay`` adds ``weight_decay * w`` to every gradient, as PyTorch defines it.
    """
    params = list(params)
    if optim.optimizer == "sgd":
        # foreach: one kernel per op over all parameters instead of one per parameter.
        return torch.optim.SGD(
            params,
            lr=optim.lr,
            momentum=optim.momentum,
            nesterov=optim.nesterov,
            weight_decay=optim.weight_decay,
            foreach=True,
        )
    # fused: one kernel per step instead of several per parameter, faster for small models.
    return torch.optim.Adam(
        params, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay, fused=True
    )


def make_schedule(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: int, *, steps_per_epoch: int | None = None
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """The per-step learning-rate schedule of ``optim``, or None for a constant rate.

    ``"cosine"``: from ``lr`` to 0 over ``total_steps`` (>= 1). ``"step"``: ``lr`` times
    ``lr_factor ** m`` in epoch ``e``, where ``m`` counts the milestones ``<= e`` (epoch
    ``e`` is steps ``[e * steps_per_epoch, (e + 1) * steps_per_epoch)``; needs
    ``steps_per_epoch`` >= 1).
    """
    if optim.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
        )
    if optim.schedule == "step":
        if steps_per_epoch is None or steps_per_epoch < 1:
            raise ValueError(f"schedule='step' needs steps_per_epoch >= 1, got {steps_per_epoch}")
        milestones, factor = optim.lr_milestones, optim.lr_factor
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: factor ** sum(step // steps_per_epoch >= m for m in milestones)
        )
    return None


@dataclass
class Checkpoint:
    """What ``checkpoint.pt`` holds after an epoch (the same dict keys whichever trainer wrote it).

    Attributes:
        model: the plain model's state dict.
        optimizer: the plain model's Adam state dict.
        epoch: the last finished epoch (0-based).
        history: one record per finished epoch.
        elapsed: seconds of training and evaluation so far.
        scheduler: the schedule's state dict, or None for a constant rate.
        best_model: the weights of the best validation epoch so far, when tracked.
    """

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    epoch: int
    history: list[dict[str, float]]
    elapsed: float
    # Defaults: checkpoints of earlier versions may lack these keys.
    scheduler: dict[str, Any] | None = None
    best_model: dict[str, torch.Tensor] | None = None

    def save(self, path: Path) -> None:
        """Write the checkpoint to ``path`` atomically, with its checksum record."""
        state = {
            "model": self.model,
            "optimizer": self.optimizer,
            "epoch": self.epoch,
            "history": self.history,
            "elapsed": self.elapsed,
            "scheduler": self.scheduler,
            "best_model": self.best_model,
        }
        atomic_torch_save(state, path, checksum=True)

    @staticmethod
    def check(state: Any) -> None:
        """Raise ValueError or TypeError unless ``state`` is a checkpoint's content: the
        fields of :class:`Checkpoint` with their types, one history record per finished epoch."""
        check_fields(Checkpoint, state, what="a checkpoint's fields")
        if state["epoch"] < 0 or len(state["history"]) != state["epoch"] + 1:
            raise ValueError(
                f"is inconsistent: epoch {state['epoch']} with {len(state['history'])} history records "
                "(one per finished epoch expected)"
            )

    @classmethod
    def load(cls, path: Path) -> Checkpoint | None:
        """The checkpoint at ``path``, or None if there is none.

        Data only (see :func:`~vicinal.experiments.atomic.load_tensors`), verified against
        its checksum record and checked by :meth:`check`, so a damaged checkpoint is
        refused by name instead of resuming from wrong weights.
        """
        if not path.exists():
            return None
        state = load_tensors(path, check=cls.check, remedy=CHECKPOINT_REMEDY)
        return cls(
            model=state["model"],
            optimizer=state["optimizer"],
            epoch=int(state["epoch"]),
            history=list(state["history"]),
            elapsed=float(state["elapsed"]),
            scheduler=state.get("scheduler"),
            best_model=state.get("best_model"),
        )


def check_weights(state: Any) -> None:
    """Raise TypeError unless ``state`` is a state dict: the content of an initial-weights file."""
    check_type(state, dict[str, torch.Tensor], "the weights")


def checkpoint_bytes(model: nn.Module, *, keep_best: bool = False) -> int:
    """A lower bound of the size of ``model``'s checkpoint: its weights, Adam's two
    moments of each parameter, and with ``keep_best`` the best epoch's weights (for
    :func:`~vicinal.experiments.atomic.check_free_space`)."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    weights = params + buffers
    return weights + 2 * params + (weights if keep_best else 0)


def restart_metrics(out: Path, history: list[dict[str, float]]) -> None:
    """Make ``out/metrics.jsonl`` hold exactly ``history`` (removed when it is empty: a fresh start)."""
    if history:
        atomic_write_bytes(out / METRICS, "".join(json.dumps(h) + "\n" for h in history).encode())
    else:
        (out / METRICS).unlink(missing_ok=True)


def append_metrics(out: Path, record: dict[str, float]) -> None:
    """Append one epoch's record to ``out/metrics.jsonl`` (after its checkpoint is written)."""
    with write_errors(out / METRICS), open(out / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int | None = None,
    channels_last: bool = False,
    dist: DistContext = SINGLE,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on uint8 images (N, C, H, W) or float features, and int labels (N,).

    ``batch_size`` defaults to 256 on the CPU (the batch stays in cache) and to
    :data:`DEVICE_EVAL_BATCH` on an accelerator. The sums stay on the images' device and
    are read once, at the end. In a distributed job each rank evaluates its share of the
    rows and the sums are reduced.
    """
    model.eval()
    if batch_size is None:
        batch_size = 256 if images.device.type == "cpu" else DEVICE_EVAL_BATCH
    n_total = int(images.shape[0])
    rows = shard_positions(n_total - n_total % dist.world_size, dist) if dist.enabled else slice(0, n_total)
    if dist.enabled and dist.rank == dist.world_size - 1:
        rows = slice(rows.start, n_total)  # the last rank takes the remainder
    images, labels = images[rows], labels[rows]
    # [loss sum, correct, count] in float64: each batch's float32 loss sum and int count
    # are converted exactly, as the host floats were.
    sums = torch.zeros(3, dtype=torch.float64, device=images.device)
    for start in range(0, int(images.shape[0]), batch_size):
        x = to_model_input(images[start : start + batch_size], channels_last=channels_last)
        y = labels[start : start + batch_size]
        logits = model(x).float()
        sums[0] += torch.nn.functional.cross_entropy(logits, y, reduction="sum").double()
        sums[1] += (logits.argmax(1) == y).sum()
    sums[2] = int(images.shape[0])
    all_reduce_sum(dist, sums)
    loss, acc = (sums[:2] / sums[2]).tolist()  # the one host read
    return loss, acc


#: Evaluation batch on an accelerator (launch overhead, not memory, limits small models).
DEVICE_EVAL_BATCH = 2048


class EpochTotals:
    """The training sums of one epoch of S models trained in lockstep, on the loss's device.

    ``shape`` is ``()`` for one model, ``(S,)`` for stacked ones. Each step adds its
    loss, its correct predictions and, once, the first step whose loss was NaN or inf
    (-1: none); nothing is read on the host until :meth:`finish`, once per epoch.
    """

    def __init__(self, shape: tuple[int, ...], device: torch.device) -> None:
        self.loss_sum = torch.zeros(shape, dtype=torch.float64, device=device)
        self.correct = torch.zeros(shape, dtype=torch.int64, device=device)
        self.first_bad = torch.full(shape, -1, dtype=torch.int64, device=device)
        self.seen = 0

    @torch.no_grad()
    def add(self, step: int, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add a step: ``loss`` of ``shape``, logits and soft targets (``*shape``, B, classes)."""
        b = int(target.shape[-2])
        bad_now = (self.first_bad < 0) & ~torch.isfinite(loss.detach())
        self.first_bad = torch.where(bad_now, step, self.first_bad)
        self.loss_sum += loss.detach().double() * b
        self.correct += (logits.argmax(-1) == target.argmax(-1)).sum(-1)
        self.seen += b

    def running(self) -> dict[str, str]:
        """The mean loss and accuracy so far (of the first model), for a progress bar: a host read."""
        loss, correct = self.loss_sum.reshape(-1)[0], self.correct.reshape(-1)[0]
        return {"loss": f"{float(loss) / self.seen:.4f}", "acc": f"{int(correct) / self.seen:.4f}"}

    def finish(self, names: Sequence[str], epoch: int, dist: DistContext = SINGLE) -> list[tuple[float, float]]:
        """Each model's mean training loss and accuracy over the epoch (reduced over ranks).

        Args:
            names: each model's name for the error, e.g. ``"arm 'mixup' seed 1"``.

        Raises:
            NonFiniteLossError: for the first model whose loss was NaN or inf, naming the step.
        """
        if dist.enabled:  # a rank that stops must not enter the all-reduce: read first_bad first
            bad = [int(self.first_bad)]
        else:  # one host read per epoch for everything
            seen = torch.full_like(self.loss_sum, float(self.seen))
            values = torch.stack([self.loss_sum / seen, self.correct.double() / seen, self.first_bad.double()])
            rows = values.reshape(3, -1).T.tolist()
            bad = [int(r[2]) for r in rows]
        for name, step in zip(names, bad):
            if step >= 0:
                raise NonFiniteLossError.at(name, epoch, step)
        if dist.enabled:
            count = torch.full((), float(self.seen), dtype=torch.float64, device=self.loss_sum.device)
            sums = all_reduce_sum(dist, torch.stack([self.loss_sum, self.correct.double(), count]))
            loss, acc = (sums[:2] / sums[2]).tolist()
            return [(loss, acc)]
        return [(r[0], r[1]) for r in rows]


class Trainer(Protocol):
    """What :func:`fit` drives: S models (S >= 1) trained in lockstep by one optimizer.

    Attributes:
        loss_shape: the shape of a step's loss: ``()`` for one model, ``(S,)`` for stacked ones.
        steps: training steps per epoch.
        device: where the models' weights and the losses are.
    """

    loss_shape: tuple[int, ...]
    steps: int
    device: torch.device

    def start_epoch(self, epoch: int) -> Iterable[Any]:
        """Seed the epoch's randomness, set training mode; returns the epoch's batches."""
        ...

    def loss(self, step: int, epoch: int, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, logits, targets)`` of one step: loss of :attr:`loss_shape` (float32), logits and
        soft targets (``*loss_shape``, B, classes)."""
        ...

    def model_of(self, index: int) -> nn.Module:
        """A plain module holding model ``index``'s current weights (for evaluation and the checkpoint)."""
        ...

    def optimizer_state_of(self, index: int) -> dict[str, Any]:
        """Model ``index``'s part of the optimizer, as the state dict of a plain model's optimizer."""
        ...


@dataclass
class ModelRun:
    """One model's progress through :func:`fit`: its folder and what its checkpoint holds.

    Attributes:
        name: how errors name it, e.g. ``"arm 'mixup'"``.
        out: its folder (``checkpoint.pt``, ``metrics.jsonl``).
        start_epoch: the first epoch still to train.
        on_epoch: called with each epoch's record once it is on disk.
    """

    name: str
    out: Path
    start_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    elapsed: float = 0.0
    on_epoch: Sequence[EpochHook] = ()

    @classmethod
    def resume(
        cls, name: str, out: Path, checkpoint: Checkpoint | None, on_epoch: Sequence[EpochHook] = ()
    ) -> ModelRun:
        """A run that continues after ``checkpoint`` (None: from the start)."""
        if checkpoint is None:
            return cls(name, out, on_epoch=on_epoch)
        return cls(
            name,
            out,
            start_epoch=checkpoint.epoch + 1,
            history=checkpoint.history,
            best_state=checkpoint.best_model,
            elapsed=checkpoint.elapsed,
            on_epoch=on_epoch,
        )


def fit(
    trainer: Trainer,
    runs: Sequence[ModelRun],
    *,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler | None,
    epochs: int,
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    channels_last: bool = False,
    track_test: bool = False,
    keep_best: bool = False,
    progress: ProgressFactory | None = None,
    dist: DistContext = SINGLE,
) -> None:
    """Train ``trainer``'s models from ``runs[0].start_epoch`` (the same for all) to ``epochs``.

    Each step: ``trainer.loss``, zero the gradients, backward (of the sum over stacked
    models: each model's gradient is that of its own loss), an optimizer step and a
    schedule step. After each epoch, per model: validation (and with ``track_test``
    test) loss and accuracy, the record in its history, its best weights (with
    ``keep_best``), its checkpoint and its metrics line (rank 0 only), then every run's
    ``on_epoch`` callbacks.

    Args:
        val, test: uint8 images (N, C, H, W) or float features, and int64 labels (N,).
        progress: a bar per epoch for a single model (:data:`ProgressFactory`), or None.
        dist: in a distributed job training and evaluation sums are reduced across ranks
            and only rank 0 writes files.

    Raises:
        NonFiniteLossError: at the end of the epoch in which a loss became NaN or inf;
            the checkpoint of the epoch before is kept.
    """
    writer = dist.is_main
    names = [run.name for run in runs]
    start = runs[0].start_epoch
    device = trainer.device
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        batches = trainer.start_epoch(epoch)
        bar = progress(epoch, trainer.steps) if progress else None
        totals = EpochTotals(trainer.loss_shape, device)
        for step, batch in enumerate(batches):
            loss, logits, target = trainer.loss(step, epoch, batch)
            optimizer.zero_grad(set_to_none=True)
            (loss if loss.ndim == 0 else loss.sum()).backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            totals.add(step, loss, logits, target)
            if bar is not None:
                bar.update(1)
                if step % 50 == 0 and device.type == "cpu":  # a host read: on an accelerator, once per epoch only
                    bar.set_postfix(**totals.running())
        train_s = time.perf_counter() - t0
        train_metrics = totals.finish(names, epoch, dist)
        records = []
        for index, (run, (train_loss, train_acc)) in enumerate(zip(runs, train_metrics)):
            t1 = time.perf_counter()
            model = trainer.model_of(index)
            val_loss, val_acc = evaluate(model, *val, channels_last=channels_last, dist=dist)
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
            }
            if track_test:
                record["test_loss"], record["test_acc"] = evaluate(model, *test, channels_last=channels_last, dist=dist)
            # Each model's share of the lockstep training time, plus its own evaluation.
            run.elapsed += train_s / len(runs) + time.perf_counter() - t1
            record["elapsed_s"] = run.elapsed
            if keep_best and (not run.history or val_acc > max(h["val_acc"] for h in run.history)):
                run.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if bar is not None:
                bar.set_postfix(loss=f"{train_loss:.4f}", acc=f"{train_acc:.4f}", val_acc=f"{val_acc:.4f}")
                bar.close()
            run.history.append(record)
            if writer:
                # Checkpoint first: metrics.jsonl is rebuilt from it on resume.
                Checkpoint(
                    model=model.state_dict(),
                    optimizer=trainer.optimizer_state_of(index),
                    epoch=epoch,
                    history=run.history,
                    elapsed=run.elapsed,
                    scheduler=None if schedule is None else schedule.state_dict(),
                    best_model=run.best_state,
                ).save(run.out / CHECKPOINT)
                append_metrics(run.out, record)
            records.append(record)
        for run, record in zip(runs, records):
            for hook in run.on_epoch:
                hook(record)
