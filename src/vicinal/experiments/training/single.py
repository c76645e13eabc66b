"""Training one arm: epochs, validation, test, metrics, atomic checkpoints, resume.

An arm's folder holds:

* ``checkpoint.pt`` — model, optimizer, epoch and history; replaced atomically after
  every epoch;
* ``metrics.jsonl`` — one JSON record per finished epoch (rewritten from the
  checkpoint on resume, so it never holds an epoch the checkpoint does not);
* ``result.json`` — written atomically once the arm is finished and tested.

Reproducibility: the batches of epoch ``e`` depend on ``(seed, e)`` only and dropout is
reseeded from ``(seed, e)`` at the start of each epoch, so a run resumed after epoch
``e`` continues exactly as an uninterrupted one (bit for bit on CPU with the same
thread count).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vicinal._checks import check_choice
from vicinal.experiments.atomic import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    load_tensors,
    read_json,
)
from vicinal.experiments.distributed import SINGLE, DistContext, all_reduce_sum, barrier, shard_positions
from vicinal.experiments.loader import InMemoryLoader, to_model_input
from vicinal.experiments.spec import PRECISIONS, SCHEDULES
from vicinal.losses import jensen_shannon_consistency, soft_target_cross_entropy
from vicinal.sampling import MixConfig

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
RESULT = "result.json"


class NonFiniteLossError(ValueError):
    """The training loss became NaN or inf; names the arm, epoch and step."""


@dataclass(frozen=True)
class OptimConfig:
    """Adam as Keras configures it by default; ``schedule="cosine"`` anneals the learning
    rate per step from ``lr`` to 0 over the whole run."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-7
    schedule: str = "constant"

    def __post_init__(self) -> None:
        check_choice("schedule", self.schedule, SCHEDULES)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class ArmResult:
    name: str
    test_acc: float
    test_loss: float
    best_val_acc: float
    best_epoch: int
    wall_s: float
    history: list[dict[str, float]] = field(default_factory=list)
    # With full_metrics: {"last": evaluate_all(...), "best": evaluate_all(...) at the best val epoch}
    metrics: dict[str, Any] | None = None


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
    """Mean cross-entropy and accuracy on uint8 images (N, C, H, W) and int labels.

    Batches of 256 stay in cache on CPU and measured faster than 1024 here (the default
    there); on an accelerator the default is :data:`DEVICE_EVAL_BATCH` (fewer launches).
    The sums stay on the images' device and are read once, at the end. In a distributed
    job each rank evaluates its share of the rows and the sums are reduced.
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


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, 0x64726F70]).generate_state(1, np.uint64)[0] >> 1)


def train_arm(
    name: str,
    model: nn.Module,
    loader: InMemoryLoader,
    *,
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    epochs: int,
    out_dir: str | os.PathLike,
    optim: OptimConfig = OptimConfig(),
    resume: bool = False,
    channels_last: bool = False,
    progress: Callable[[int, int], Any] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
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
        loader: the training batches (mixed or plain).
        val, test: uint8 images (N, C, H, W) and int64 labels.
        out_dir: the arm's folder (created).
        resume: continue from ``out_dir/checkpoint.pt`` if present; a finished arm
            (``result.json``) is returned as it is.
        progress: ``progress(epoch, steps)`` returns an object with ``update(n)``,
            ``set_postfix(dict)`` and ``close()`` (a tqdm bar), or None for silence.
        track_test: also record test loss/accuracy after every epoch (``test_acc`` in
            the history: the mixup paper's "best" test accuracy is its maximum).
        full_metrics: at the end, compute :func:`vicinal.experiments.metrics.evaluate_all` on the test
            set for the last epoch's weights and for the best validation epoch's weights.
        precision: ``"fp32"``, or ``"bf16"`` for bfloat16 autocast of the forward pass
            (worth it on GPUs and on CPUs with AMX; several times slower than fp32 on
            the AVX2-only development CPU, so not the default).
        manifold: ``(config, layers)``: Manifold Mixup, mixing the plain batches of
            ``loader`` inside the model at one of ``layers`` per step
            (:class:`vicinal.manifold.ManifoldMixup`, plans of ``(loader.seed, epoch,
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
    device = next(model.parameters()).device
    device_type = device.type
    on_cpu = device_type == "cpu"
    out = Path(out_dir)
    writer = dist.is_main
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    if resume and (out / RESULT).exists():
        return ArmResult(**read_json(out / RESULT))

    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    # fused Adam: ~1.5-2 ms less per step of the reference CNN on CPU than the default.
    opt = torch.optim.Adam(model.parameters(), lr=optim.lr, betas=optim.betas, eps=optim.eps, fused=True)
    total_steps = max(1, epochs * len(loader))
    sched = None
    if optim.schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
        )
    history: list[dict[str, float]] = []
    best_state: dict[str, torch.Tensor] | None = None
    start_epoch, elapsed = 0, 0.0
    ckpt_path = out / CHECKPOINT
    if resume and ckpt_path.exists():
        state = load_tensors(ckpt_path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        best_state = state.get("best_model")
        history = state["history"]
        start_epoch, elapsed = state["epoch"] + 1, state["elapsed"]
        if writer:
            _rewrite_metrics(out, history)
    elif writer and (out / METRICS).exists():
        (out / METRICS).unlink()
    net: nn.Module = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model)
    manifold_mixup = None
    if manifold is not None:
        from vicinal.manifold import ManifoldMixup

        manifold_mixup = ManifoldMixup(net, manifold[1], manifold[0], seed=loader.seed, rank=dist.rank)

    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        torch.manual_seed(_epoch_seed(loader.seed, epoch) + dist.rank)  # each rank its own dropout masks
        net.train()
        bar = progress(epoch, len(loader)) if progress else None
        # Training sums and the first step whose loss was NaN or inf (-1: none) stay on the
        # loss's device and are read once per epoch: no host sync per step.
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        seen = 0
        for step, (x, target) in enumerate(loader.epoch(epoch)):
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                if manifold_mixup is not None:
                    logits, target = manifold_mixup(x, target, step=step, epoch=epoch)
                else:
                    logits = net(x)  # with JSD: one pass over all three views, as in the paper's code
            if jsd_weight > 0:
                logits, logits_aug1, logits_aug2 = logits.float().split(target.shape[0])
                loss = soft_target_cross_entropy(logits, target) + jsd_weight * jensen_shannon_consistency(
                    logits, logits_aug1, logits_aug2
                )
            else:
                loss = soft_target_cross_entropy(logits, target)  # in float32 whatever the autocast
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            with torch.no_grad():
                b = target.shape[0]
                bad_now = (first_bad < 0) & ~torch.isfinite(loss.detach())
                first_bad = torch.where(bad_now, step, first_bad)
                loss_sum += loss.detach().double() * b
                correct += (logits.argmax(1) == target.argmax(1)).sum()
                seen += b
            if bar is not None:
                bar.update(1)
                if step % 50 == 0 and on_cpu:  # a host read: on an accelerator, once per epoch only
                    bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}", acc=f"{int(correct) / seen:.4f}")
        totals = torch.stack(
            [loss_sum, correct.double(), torch.full((), float(seen), dtype=torch.float64, device=device)]
        )
        if dist.enabled:  # a rank that stops must not enter the all-reduce: read first_bad first
            bad = int(first_bad)
            train_loss = train_acc = math.nan
        else:  # one host read per epoch for both
            values = torch.cat([totals[:2] / totals[2], first_bad.double()[None]]).tolist()
            train_loss, train_acc, bad = values[0], values[1], int(values[2])
        if bad >= 0:
            raise NonFiniteLossError(
                f"arm {name!r}: the training loss became NaN or inf at epoch {epoch + 1}, step {bad}; "
                f"stopped (the checkpoint of epoch {epoch} is kept). Lower the learning rate or check the data"
            )
        if dist.enabled:
            sums = all_reduce_sum(dist, totals)
            train_loss, train_acc = (sums[:2] / sums[2]).tolist()
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
        elapsed += time.perf_counter() - t0
        record["elapsed_s"] = elapsed
        if full_metrics and (not history or val_acc > max(h["val_acc"] for h in history)):
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if bar is not None:
            bar.set_postfix(loss=f"{train_loss:.4f}", acc=f"{train_acc:.4f}", val_acc=f"{val_acc:.4f}")
            bar.close()
        history.append(record)
        if writer:
            # Checkpoint first: metrics.jsonl is rebuilt from it on resume.
            atomic_torch_save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "epoch": epoch,
                    "history": history,
                    "elapsed": elapsed,
                    "scheduler": None if sched is None else sched.state_dict(),
                    "best_model": best_state,
                },
                ckpt_path,
            )
            with open(out / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")
        if on_epoch is not None:
            on_epoch(record)
        _fault_injection(name, epoch)

    test_loss, test_acc = evaluate(model, *test, channels_last=channels_last, dist=dist)
    best = max(history, key=lambda h: h["val_acc"]) if history else {"val_acc": math.nan, "epoch": -1}
    metrics = None
    if full_metrics:
        from vicinal.experiments.metrics import evaluate_all

        metrics = {"last": evaluate_all(model, *test, channels_last=channels_last)}
        if extra_metrics is not None:
            metrics["last"].update(extra_metrics(model))
        if best_state is not None:
            last_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(best_state)
            metrics["best"] = evaluate_all(model, *test, channels_last=channels_last)
            metrics["best"]["epoch"] = int(best["epoch"])
            model.load_state_dict(last_state)
    result = ArmResult(
        name=name,
        test_acc=test_acc,
        test_loss=test_loss,
        best_val_acc=best["val_acc"],
        best_epoch=int(best["epoch"]),
        wall_s=elapsed,
        history=history,
        metrics=metrics,
    )
    if writer:
        atomic_write_json(out / RESULT, asdict(result))
    barrier(dist)  # no rank moves on (e.g. to the next arm) before the result is on disk
    return result


#: Fault injection for tests: "ARM:EPOCH" (or "EPOCH") makes the process kill itself
#: with SIGKILL once that arm has checkpointed that epoch, exactly like a `kill -9`
#: at that point, with no dependence on the machine's speed.
FAULT_ENV = "VICINAL_FAULT_KILL_AFTER_EPOCH"


def _fault_injection(arm: str, epoch: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    target_arm, _, target_epoch = spec.rpartition(":")
    if target_arm in ("", arm) and int(target_epoch) == epoch:
        os.kill(os.getpid(), signal.SIGKILL)


def _rewrite_metrics(out: Path, history: list[dict[str, float]]) -> None:
    atomic_write_bytes(out / METRICS, "".join(json.dumps(h) + "\n" for h in history).encode())
