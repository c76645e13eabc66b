"""``vicinal study --batch-seeds``: the seeds of one arm trained together as one batched model.

The cells of one arm differ only by their seed. :func:`run_seed_group` trains them in
one process as one model whose weights are stacked along a leading seed dimension
(:func:`torch.func.stack_module_state`), so that each step runs one forward and one
backward pass for all of them. Each seed keeps everything that makes it that seed's
run:

* its initial weights (``<study>/init/<model>-seed<k>.pt``, as every cell starts);
* its data order, mixing plans and label noise (its own
  :class:`~vicinal.experiments.loader.InMemoryLoader`, built as :func:`run_cell` builds it);
* its dropout masks: the masks the model alone would draw after
  ``torch.manual_seed(_epoch_seed(seed, epoch))``, drawn from a ``torch.Generator`` of
  its own seeded the same way, with the same op (``uniform_`` for ``torch.rand_like``,
  ``bernoulli_`` for ``F.dropout``), shape and memory layout, in the same order. The
  masks are *equal*, bit for bit, to those of one-by-one training;
* its Adam state: one fused Adam over the stacked weights is elementwise, so it is
  each seed's own Adam (the step count and the learning-rate schedule are shared: the
  cells of one arm have the same number of steps).

The forward pass is :func:`torch.func.functional_call` under :func:`torch.func.vmap`,
except for the reference CNN, which runs as grouped convolutions and batched matrix
products (the same arithmetic without vmap's layout copies: measured 2.1x faster per
step here; :data:`GROUPED_FORWARDS`). The result differs from one-by-one training only
by floating-point summation order (about 1e-7 relative per forward pass); the test
``tests/harness/test_batch_seeds.py`` holds losses to 1e-4 relative and accuracies equal.

Validation and test metrics are computed per seed with the plain module holding that
seed's weights, through :func:`vicinal.experiments.training.single.evaluate`, and the end of a
cell (test metrics, ``full_metrics``, corruption metrics, ``result.json``) is
:func:`~vicinal.experiments.training.single.train_arm` itself resuming the finished checkpoint,
so a cell's folder holds exactly what a cell trained alone holds. Checkpoints are
written in ``train_arm``'s format after every epoch, atomically: a killed group resumes
with ``--batch-seeds`` or without it.

Refused (:class:`BatchSeedsUnsupported`, a ValueError naming the arm and the reason):
models with buffers (BatchNorm's running statistics are updated in place, per seed,
which vmap does not do), models whose forward draws random numbers other than through
``torch.rand_like`` and ``F.dropout`` or that vmap can't run (e.g. ``gru``: no batching
rule for ``aten::gru``), Manifold Mixup, AugMix and JSD, and distributed (torchrun) jobs.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from filelock import FileLock, Timeout
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.overrides import TorchFunctionMode

from vicinal.experiments.runs.study import (
    CLAIM_LOCK,
    CellSpec,
    _log_claim,
    _splits_for,
    cell_dir,
    cell_loader,
    cell_train_options,
    init_path,
    train_claimed_cell,
    write_cell_record,
)
from vicinal.losses import soft_target_cross_entropy


class BatchSeedsUnsupported(ValueError):
    """A study arm that ``--batch-seeds`` can't train as one batched model; says why."""


# --------------------------------------------------------------------------- random draws

#: Random ops a model's forward may use: their draws are replayed per seed.
_NOISE_OPS: tuple[Callable[..., Any], ...] = (torch.rand_like, F.dropout)
#: Random ops that are refused (their draws are not replayed).
_OTHER_RANDOM_OPS: tuple[Callable[..., Any], ...] = (
    torch.rand,
    torch.randn,
    torch.randn_like,
    torch.randint,
    torch.randint_like,
    torch.randperm,
    torch.bernoulli,
    torch.normal,
    torch.multinomial,
    torch.Tensor.bernoulli_,
    torch.Tensor.uniform_,
    torch.Tensor.normal_,
    torch.Tensor.random_,
    torch.Tensor.exponential_,
    torch.Tensor.geometric_,
    torch.Tensor.cauchy_,
    torch.Tensor.log_normal_,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.feature_alpha_dropout,
    F.gumbel_softmax,
    F.rrelu,
)


@dataclass(frozen=True)
class Draw:
    """One random draw of a forward pass: ``torch.rand_like`` (``p`` None) or ``F.dropout`` with ``p``."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    p: float | None = None

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """What the plain op draws from ``generator``: ``rand_like`` is ``empty_like(x).uniform_()``,
        ``dropout`` (CPU) is ``empty_like(x).bernoulli_(1 - p).div_(1 - p)``."""
        t = torch.empty_strided(self.shape, self.stride, dtype=self.dtype)
        if self.p is None:
            return t.uniform_(generator=generator)
        return t.bernoulli_(1.0 - self.p, generator=generator).div_(1.0 - self.p)


def _dropout_args(args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[torch.Tensor, float, bool, bool]:
    names = ("input", "p", "training", "inplace")
    values = {"p": 0.5, "training": True, "inplace": False, **dict(zip(names, args)), **kwargs}
    return values["input"], float(values["p"]), bool(values["training"]), bool(values["inplace"])


def _draws_noise(func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    if func is torch.rand_like:
        return True
    _, p, training, _ = _dropout_args(args, kwargs)
    return training and 0.0 < p < 1.0  # p = 0 and p = 1 draw nothing


def _refuse_random(func: Callable[..., Any]) -> BatchSeedsUnsupported:
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
    return BatchSeedsUnsupported(
        f"the model draws random numbers with {name}, whose draws --batch-seeds can't replay per seed "
        "(it replays torch.rand_like and F.dropout)"
    )


class _RecordDraws(TorchFunctionMode):
    """Records the random draws of a plain forward pass (shape, memory layout, dropout rate)."""

    def __init__(self) -> None:
        super().__init__()
        self.draws: list[Draw] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _NOISE_OPS and _draws_noise(func, args, kwargs):
            x = args[0] if args else kwargs["input"]
            p = None if func is torch.rand_like else _dropout_args(args, kwargs)[1]
            self.draws.append(Draw(tuple(x.shape), tuple(x.stride()), x.dtype, p))
        elif func in _OTHER_RANDOM_OPS:
            raise _refuse_random(func)
        return func(*args, **kwargs)


class _ReplayDraws(TorchFunctionMode):
    """Inside the batched forward: each recorded draw returns the seed's own noise."""

    def __init__(self, noises: Sequence[torch.Tensor]) -> None:
        super().__init__()
        self.noises = list(noises)
        self.next = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _NOISE_OPS and _draws_noise(func, args, kwargs):
            x = args[0] if args else kwargs["input"]
            if self.next >= len(self.noises) or tuple(self.noises[self.next].shape) != tuple(x.shape):
                raise RuntimeError("--batch-seeds: the batched forward draws other random numbers than the plain one")
            noise = self.noises[self.next]
            self.next += 1
            if func is torch.rand_like:
                return noise
            return x.mul_(noise) if _dropout_args(args, kwargs)[3] else x * noise
        if func in _OTHER_RANDOM_OPS:
            raise _refuse_random(func)
        return func(*args, **kwargs)


# --------------------------------------------------------------------------- the batched model


def _reference_cnn_grouped(
    module: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, noises: Sequence[torch.Tensor]
) -> torch.Tensor:
    """:class:`~vicinal.experiments.models.ReferenceCNN` for S seeds at once.

    ``x`` (S, B, C, H, W) is laid out as (B, S·C, H, W) channels-last, the convolutions
    run with ``groups=S`` and the dense layers as batched matrix products; the dropout
    noise (S, B, 32, h, w) is the seed's ``rand_like`` draw. Returns (S, B, classes).
    """
    s, b, c, h, w = x.shape
    z = x.transpose(0, 1).reshape(b, s * c, h, w).contiguous(memory_format=torch.channels_last)
    for conv in ("conv1", "conv2"):
        weight, bias = params[f"{conv}.weight"], params[f"{conv}.bias"]
        z = torch.max_pool2d(F.conv2d(z, weight.flatten(0, 1), bias.flatten(), groups=s), 2).relu_()
    z = z.view(b, s, -1, *z.shape[2:]).transpose(0, 1)  # (S, B, 32, h, w)
    p = float(module.dropout.p)  # type: ignore[union-attr, arg-type]
    if p > 0:
        (noise,) = noises
        z = z * (noise >= p).to(z.dtype).mul_(1.0 / (1.0 - p))
    elif noises:
        raise RuntimeError("--batch-seeds: the reference CNN drew noise without dropout")
    z = z.mean(dim=(3, 4))
    z = torch.baddbmm(params["fc1.bias"].unsqueeze(1), z, params["fc1.weight"].transpose(1, 2)).relu_()
    return torch.baddbmm(params["fc2.bias"].unsqueeze(1), z, params["fc2.weight"].transpose(1, 2))


#: Hand-batched forwards by model class name: faster than vmap's generic batching rules.
GROUPED_FORWARDS: dict[str, Callable[..., torch.Tensor]] = {"ReferenceCNN": _reference_cnn_grouped}


def check_module(model: str, module: nn.Module) -> None:
    """Refuse a model whose state is more than its parameters (BatchNorm running statistics)."""
    buffers = [name for name, _ in module.named_buffers()]
    if not buffers:
        return
    norms = sorted({type(m).__name__ for m in module.modules() if isinstance(m, nn.modules.batchnorm._NormBase)})
    what = f"{', '.join(norms)} layers, whose running statistics" if norms else f"buffers ({', '.join(buffers[:3])})"
    raise BatchSeedsUnsupported(
        f"model {model!r} has {what} are updated in place during training; --batch-seeds stacks parameters "
        "only and vmap can't update them per seed: train this study without --batch-seeds"
    )


class SeedBatch:
    """S copies of one model with stacked weights: ``params[name]`` is (S, *shape).

    Args:
        module: the model (any seed's weights; they are not used), in training mode.
        states: each seed's state dict.
        forward: ``"auto"`` (the hand-batched forward of :data:`GROUPED_FORWARDS` where
            there is one, else vmap), ``"vmap"`` or ``"grouped"``.
    """

    def __init__(self, module: nn.Module, states: Sequence[dict[str, torch.Tensor]], *, forward: str = "auto") -> None:
        self.module = module.train()
        copies = []
        for state in states:
            m = copy.deepcopy(module)
            m.load_state_dict(state)
            copies.append(m)
        params, _ = stack_module_state(copies)
        self.params: dict[str, torch.Tensor] = {k: v.detach().contiguous().requires_grad_() for k, v in params.items()}
        self.base = copy.deepcopy(module).to("meta")
        grouped = GROUPED_FORWARDS.get(type(module).__name__)
        if forward == "grouped" and grouped is None:
            raise ValueError(f"no grouped forward for {type(module).__name__}")
        if forward not in ("auto", "vmap", "grouped"):
            raise ValueError(f"forward must be 'auto', 'vmap' or 'grouped', got {forward!r}")
        self.grouped = None if forward == "vmap" else grouped
        self._draws: dict[tuple[Any, ...], list[Draw]] = {}

    @property
    def seeds(self) -> int:
        return int(next(iter(self.params.values())).shape[0])

    def draws(self, x: torch.Tensor) -> list[Draw]:
        """The random draws the plain model makes on a batch shaped like ``x`` (recorded once per shape)."""
        key = (tuple(x.shape), tuple(x.stride()), x.dtype)
        if key not in self._draws:
            self.module.train()  # evaluation between epochs leaves it in eval mode
            recorder = _RecordDraws()
            with torch.random.fork_rng(devices=[]), torch.no_grad(), recorder:
                self.module(torch.zeros_like(x))
            self._draws[key] = recorder.draws
        return self._draws[key]

    def noises(self, x: torch.Tensor, generators: Sequence[torch.Tensor | torch.Generator]) -> list[torch.Tensor]:
        """Each draw of the plain forward on ``x``, for every seed from its generator: (S, ...) each."""
        return [torch.stack([d.sample(g) for g in generators]) for d in self.draws(x)]  # type: ignore[arg-type]

    def __call__(self, xs: Sequence[torch.Tensor], noises: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits (S, B, classes) of each seed's model on its batch ``xs[s]``."""
        x = torch.stack(list(xs))
        if self.grouped is not None:
            return self.grouped(self.module, self.params, x, noises)

        def one(params: dict[str, torch.Tensor], xb: torch.Tensor, nb: list[torch.Tensor]) -> torch.Tensor:
            with _ReplayDraws(nb):
                return functional_call(self.base, params, (xb,))

        return vmap(one)(self.params, x, list(noises))

    def state_dict(self, seed: int) -> dict[str, torch.Tensor]:
        return {k: v[seed].detach() for k, v in self.params.items()}


def try_batched_step(model: str, module: nn.Module, x: torch.Tensor) -> None:
    """One batched training step of two copies on ``x``; a failure becomes :class:`BatchSeedsUnsupported`."""
    check_module(model, module)
    try:
        with torch.random.fork_rng(devices=[]):
            batch = SeedBatch(module, [module.state_dict()] * 2)
            gens = [torch.Generator().manual_seed(i) for i in range(2)]
            logits = batch([x, x], batch.noises(x, gens))
            logits.float().logsumexp(-1).sum().backward()
    except BatchSeedsUnsupported as exc:
        raise BatchSeedsUnsupported(f"model {model!r}: {exc}") from exc
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BatchSeedsUnsupported(
            f"model {model!r} can't be trained with --batch-seeds: its forward pass fails under torch.func.vmap "
            f"({first}); train this study without --batch-seeds"
        ) from exc


def check_batch_seeds(cells: Sequence[CellSpec]) -> None:
    """Refuse, before anything is written, an arm that ``--batch-seeds`` can't train as one batched model."""
    from vicinal.experiments.distributed import launched_by_torchrun
    from vicinal.experiments.loader import to_model_input
    from vicinal.experiments.models import build_model

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
        if cell.augmix_config() is not None or cell.jsd:
            raise BatchSeedsUnsupported(
                f"arm {cell.arm!r}: --batch-seeds does not run AugMix or its JSD loss (three views per batch, "
                "augmented by a separate pipeline): train this study without --batch-seeds"
            )
        splits = _splits_for(cell)
        key = (cell.model, splits.input_shape, len(splits.class_names), cell.channels_last)
        if key in checked:
            continue
        checked.add(key)
        with torch.random.fork_rng(devices=[]):
            module = build_model(cell.model, splits.input_shape, len(splits.class_names))
        if cell.channels_last:
            module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x = to_model_input(splits.train[0][:2], channels_last=cell.channels_last)
        try:
            try_batched_step(cell.model, module, x)
        except BatchSeedsUnsupported as exc:
            raise BatchSeedsUnsupported(f"arm {cell.arm!r}: {exc}") from exc


# --------------------------------------------------------------------------- training a group


@dataclass
class _Member:
    cell: CellSpec
    out: Path
    loader: Any
    state: dict[str, torch.Tensor]
    checkpoint: dict[str, Any] | None
    history: list[dict[str, float]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    elapsed: float = 0.0

    @property
    def start_epoch(self) -> int:
        return 0 if self.checkpoint is None else int(self.checkpoint["epoch"]) + 1


def _member(root: Path, cell: CellSpec, splits: Any) -> _Member:
    from vicinal.experiments.atomic import load_tensors
    from vicinal.experiments.training.single import CHECKPOINT, METRICS

    out = cell_dir(root, cell)
    write_cell_record(root, cell, splits, batch_seeds=True)
    ckpt = load_tensors(out / CHECKPOINT) if (out / CHECKPOINT).exists() else None
    if ckpt is None:
        if (out / METRICS).exists():
            (out / METRICS).unlink()
        return _Member(cell, out, cell_loader(cell, splits), load_tensors(init_path(root, cell)), None)
    return _Member(
        cell,
        out,
        cell_loader(cell, splits),
        ckpt["model"],
        ckpt,
        history=list(ckpt["history"]),
        best_state=ckpt.get("best_model"),
        elapsed=float(ckpt["elapsed"]),
    )


def _stacked_optimizer_state(opt: torch.optim.Optimizer, members: Sequence[_Member]) -> dict[str, Any]:
    states = [m.checkpoint["optimizer"] for m in members]  # type: ignore[index]
    stacked: dict[int, dict[str, Any]] = {}
    for i in states[0]["state"]:
        stacked[i] = {
            key: (value if key == "step" else torch.stack([s["state"][i][key] for s in states]))
            for key, value in states[0]["state"][i].items()
        }
    return {"state": stacked, "param_groups": opt.state_dict()["param_groups"]}


def _seed_optimizer_state(opt: torch.optim.Optimizer, seed: int) -> dict[str, Any]:
    """Seed ``seed``'s part of the stacked Adam, as a state dict of the plain model's Adam."""
    full = opt.state_dict()
    state = {
        i: {key: (value.clone() if key == "step" else value[seed].clone()) for key, value in entry.items()}
        for i, entry in full["state"].items()
    }
    return {"state": state, "param_groups": full["param_groups"]}


def train_members(root: Path, members: list[_Member], splits: Any, *, forward: str = "auto") -> None:
    """Train ``members`` (the same arm and start epoch) to the end as one batched model,
    checkpointing every cell after every epoch in ``train_arm``'s format."""
    from vicinal.experiments.atomic import atomic_torch_save, atomic_write_bytes
    from vicinal.experiments.models import build_model
    from vicinal.experiments.runs.processes import epoch_hook
    from vicinal.experiments.training.single import (
        CHECKPOINT,
        METRICS,
        NonFiniteLossError,
        _epoch_seed,
        _fault_injection,
        evaluate,
    )

    cell = members[0].cell
    options = cell_train_options(root, cell, splits)
    optim, epochs, channels_last = options["optim"], cell.epochs, cell.channels_last
    start = members[0].start_epoch
    module = build_model(cell.model, splits.input_shape, len(splits.class_names))
    if channels_last:
        module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    batch = SeedBatch(module, [m.state for m in members], forward=forward)
    opt = torch.optim.Adam(list(batch.params.values()), lr=optim.lr, betas=optim.betas, eps=optim.eps, fused=True)
    steps = len(members[0].loader)
    total_steps = max(1, epochs * steps)
    sched = None
    if optim.schedule == "cosine":
        import math

        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
        )
    if members[0].checkpoint is not None:
        opt.load_state_dict(_stacked_optimizer_state(opt, members))
        if sched is not None:
            sched.load_state_dict(members[0].checkpoint["scheduler"])
    for m in members:
        if m.checkpoint is not None:  # metrics.jsonl holds no epoch the checkpoint does not
            atomic_write_bytes(m.out / METRICS, "".join(json.dumps(h) + "\n" for h in m.history).encode())
    hooks = [epoch_hook(m.cell.arm) for m in members]
    n = len(members)
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        generators = [torch.Generator().manual_seed(_epoch_seed(m.cell.seed, epoch)) for m in members]
        loss_sum = torch.zeros(n, dtype=torch.float64)
        correct = torch.zeros(n, dtype=torch.int64)
        first_bad = torch.full((n,), -1, dtype=torch.int64)
        seen = 0
        for step, batches in enumerate(zip(*(m.loader.epoch(epoch) for m in members))):
            xs = [b[0] for b in batches]
            targets = torch.stack([b[1] for b in batches])
            logits = batch(xs, batch.noises(xs[0], generators))
            losses = vmap(soft_target_cross_entropy)(logits, targets)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()  # each seed's gradient is that of its own loss
            opt.step()
            if sched is not None:
                sched.step()
            with torch.no_grad():
                b = targets.shape[1]
                bad_now = (first_bad < 0) & ~torch.isfinite(losses.detach())
                first_bad = torch.where(bad_now, step, first_bad)
                loss_sum += losses.detach().double() * b
                correct += (logits.argmax(-1) == targets.argmax(-1)).sum(-1)
                seen += b
        train_s = time.perf_counter() - t0
        for i, m in enumerate(members):
            if int(first_bad[i]) >= 0:
                raise NonFiniteLossError(
                    f"arm {m.cell.arm!r} seed {m.cell.seed}: the training loss became NaN or inf at epoch "
                    f"{epoch + 1}, step {int(first_bad[i])}; stopped (the checkpoint of epoch {epoch} is kept). "
                    "Lower the learning rate or check the data"
                )
        records = []
        for i, m in enumerate(members):
            t1 = time.perf_counter()
            module.load_state_dict(batch.state_dict(i))
            val_loss, val_acc = evaluate(module, *splits.val, channels_last=channels_last)
            record = {
                "epoch": epoch,
                "train_loss": float(loss_sum[i] / seen),
                "train_acc": float(correct[i].double() / seen),
                "val_loss": val_loss,
                "val_acc": val_acc,
            }
            record["test_loss"], record["test_acc"] = evaluate(module, *splits.test, channels_last=channels_last)
            # Each cell's share of the batched training time, plus its own evaluation.
            m.elapsed += train_s / n + time.perf_counter() - t1
            record["elapsed_s"] = m.elapsed
            if not m.history or val_acc > max(h["val_acc"] for h in m.history):
                m.best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            m.history.append(record)
            atomic_torch_save(
                {
                    "model": module.state_dict(),
                    "optimizer": _seed_optimizer_state(opt, i),
                    "epoch": epoch,
                    "history": m.history,
                    "elapsed": m.elapsed,
                    "scheduler": None if sched is None else sched.state_dict(),
                    "best_model": m.best_state,
                },
                m.out / CHECKPOINT,
            )
            with open(m.out / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")
            records.append(record)
        for hook, record in zip(hooks, records):
            if hook is not None:
                hook(record)
        _fault_injection(cell.arm, epoch)


def _finish(root: Path, cell: CellSpec, splits: Any) -> dict[str, Any]:
    """``train_arm`` resuming the cell's last checkpoint: the test metrics and ``result.json``."""
    from dataclasses import asdict

    from vicinal.experiments.models import build_model
    from vicinal.experiments.training.single import train_arm

    model = build_model(cell.model, splits.input_shape, len(splits.class_names))
    return asdict(train_arm(cell.arm, model, cell_loader(cell, splits), **cell_train_options(root, cell, splits)))


def run_seed_group(
    study_dir: str, cells: list[CellSpec], threads: int, *, forward: str = "auto"
) -> list[tuple[CellSpec, dict[str, Any] | None]]:
    """Train the unfinished cells of ``cells`` (one arm, several seeds) as one batched model.

    Every cell is claimed as :func:`~vicinal.experiments.runs.study.run_cell` claims it, without
    waiting: a cell another live process holds is left to it (its result is None here;
    :func:`~vicinal.experiments.runs.study.run_study` waits for it afterwards). The claims
    are held until the group is finished. Cells resumed from different epochs train in
    sub-groups of the same start epoch; a sub-group of one cell trains alone.

    Returns:
        ``(cell, result record or None)`` for each of ``cells``, in order.
    """
    from vicinal.experiments.atomic import read_json
    from vicinal.experiments.training.single import CHECKPOINT, RESULT

    torch.set_num_threads(threads)
    root = Path(study_dir)
    results: dict[CellSpec, dict[str, Any] | None] = {}
    with contextlib.ExitStack() as claims:
        todo: list[CellSpec] = []
        for cell in cells:
            out = cell_dir(root, cell)
            if (out / RESULT).exists():
                results[cell] = read_json(out / RESULT)
                continue
            out.mkdir(parents=True, exist_ok=True)
            try:
                claims.enter_context(FileLock(out / CLAIM_LOCK).acquire(timeout=0))
            except Timeout:
                results[cell] = None  # another live process trains this cell
                continue
            if (out / RESULT).exists():  # finished by the process that held it
                results[cell] = read_json(out / RESULT)
                continue
            _log_claim(out, resumed=(out / CHECKPOINT).exists())
            todo.append(cell)
        if todo:
            splits = _splits_for(todo[0])
            members = [_member(root, cell, splits) for cell in todo]
            by_start: dict[int, list[_Member]] = {}
            for m in members:
                by_start.setdefault(m.start_epoch, []).append(m)
            for group in by_start.values():
                if len(group) == 1:
                    results[group[0].cell] = train_claimed_cell(root, group[0].cell)
                    continue
                if group[0].start_epoch < group[0].cell.epochs:
                    train_members(root, group, splits, forward=forward)
                for m in group:
                    results[m.cell] = _finish(root, m.cell, splits)
    return [(cell, results[cell]) for cell in cells]


def seed_groups(cells: Sequence[CellSpec]) -> list[list[CellSpec]]:
    """``cells`` grouped by arm (cells of one arm differ only by seed), in first-seen order."""
    groups: dict[str, list[CellSpec]] = {}
    for cell in cells:
        groups.setdefault(cell.arm, []).append(cell)
    return list(groups.values())
