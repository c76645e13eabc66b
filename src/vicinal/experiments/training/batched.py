"""The seeds of one study arm trained together as one stacked model (``vicinal study --batch-seeds``).

The cells of one arm differ only by their seed. :func:`train_stacked` trains them in
one process as one model whose weights are stacked along a leading seed dimension
(:func:`torch.func.stack_module_state`), so that each step runs one forward and one
backward pass for all of them; it drives the same epoch loop as a single model
(:func:`~vicinal.experiments.training.loop.fit`, with :class:`StackedSeeds`). Each seed
keeps everything that makes it that seed's run:

* its initial weights (as every cell starts);
* its data order, mixing plans and label noise (its own
  :class:`~vicinal.experiments.loader.InMemoryLoader`, built as a cell trained alone builds it);
* its dropout masks: the masks the model alone would draw after
  ``torch.manual_seed(epoch_seed(seed, epoch))``, drawn from a ``torch.Generator`` of
  its own seeded the same way, with the same op (``uniform_`` for ``torch.rand_like``,
  ``bernoulli_`` for ``F.dropout``), shape and memory layout, in the same order. The
  masks are *equal*, bit for bit, to those of one-by-one training;
* its optimizer state: one Adam (or SGD with momentum) over the stacked weights is
  elementwise, so it is each seed's own (the step count and the learning-rate schedule
  are shared: the cells of one arm have the same number of steps);
* its crops and flips (drawn by its loader) and its input normalisation (the statistics
  of the training split, the same for every seed).
* for RegMixup and MIT arms, its own library piece (built from its loader as a cell
  alone builds it): its mixing, λ draws, solve and loss, with the forward passes of a
  step (RegMixup: one of 2B; MIT: two of B) stacked over the seeds in the plain order,
  so the dropout masks are drawn as alone.

The forward pass is :func:`torch.func.functional_call` under :func:`torch.func.vmap`,
except for the reference CNN, which runs as grouped convolutions and batched matrix
products (the same arithmetic without vmap's layout copies; :data:`GROUPED_FORWARDS`).
The result differs from one-by-one training only by floating-point summation order
(about 1e-7 relative per forward pass); ``tests/harness/test_batch_seeds.py`` holds
losses to 1e-4 relative and accuracies equal.

Validation and test metrics are computed per seed with the plain module holding that
seed's weights, and each seed's checkpoint is the loop's
:class:`~vicinal.experiments.training.loop.Checkpoint` of the plain model, so a killed
group resumes with ``--batch-seeds`` or without it, and a finished checkpoint is ended
(test metrics, ``result.json``) by :func:`~vicinal.experiments.training.single.train_arm`.

Refused (:class:`BatchSeedsUnsupported`, a ValueError naming the model and the reason):
models with buffers (BatchNorm's running statistics are updated in place, per seed,
which vmap does not do), and models whose forward draws random numbers other than through
``torch.rand_like`` and ``F.dropout`` or that vmap can't run (e.g. ``gru``: no batching
rule for ``aten::gru``); see :func:`try_batched_step`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.overrides import TorchFunctionMode

from vicinal.experiments.augment import Normalizer
from vicinal.experiments.loader import InMemoryLoader
from vicinal.experiments.spec import OptimConfig
from vicinal.experiments.training.loop import (
    Checkpoint,
    ModelRun,
    epoch_seed,
    fit,
    make_optimizer,
    make_schedule,
    restart_metrics,
)
from vicinal.torch.losses import soft_target_cross_entropy
from vicinal.torch.mit import MixupInferenceTraining
from vicinal.torch.regmixup import RegMixup

__all__ = [
    "GROUPED_FORWARDS",
    "BatchSeedsUnsupported",
    "Draw",
    "RecordDraws",
    "ReplayDraws",
    "SeedBatch",
    "SeedMember",
    "StackedSeeds",
    "check_module",
    "seed_optimizer_state",
    "stacked_optimizer_state",
    "train_stacked",
    "try_batched_step",
]


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


class RecordDraws(TorchFunctionMode):
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


class ReplayDraws(TorchFunctionMode):
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
            recorder = RecordDraws()
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
            with ReplayDraws(nb):
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


# --------------------------------------------------------------------------- training a group


@dataclass
class SeedMember:
    """One seed of a stacked group.

    Attributes:
        run: its folder and progress (:meth:`ModelRun.resume` of its checkpoint).
        loader: its training batches.
        seed: its seed (its dropout masks).
        state: the weights it starts from: its initial weights, or its checkpoint's.
        checkpoint: the checkpoint it resumes, or None.
    """

    run: ModelRun
    loader: InMemoryLoader
    seed: int
    state: dict[str, torch.Tensor]
    checkpoint: Checkpoint | None = None


def stacked_optimizer_state(optimizer: torch.optim.Optimizer, states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The stacked optimizer's state dict made of each seed's plain state dict (``states``, in seed order)."""
    stacked: dict[int, dict[str, Any]] = {}
    for i in states[0]["state"]:
        # "step" is Adam's shared count; SGD without momentum keeps momentum_buffer None.
        stacked[i] = {
            key: (value if key == "step" or value is None else torch.stack([s["state"][i][key] for s in states]))
            for key, value in states[0]["state"][i].items()
        }
    return {"state": stacked, "param_groups": optimizer.state_dict()["param_groups"]}


def seed_optimizer_state(optimizer: torch.optim.Optimizer, seed: int) -> dict[str, Any]:
    """Seed ``seed``'s part of the stacked optimizer, as a state dict of the plain model's optimizer."""
    full = optimizer.state_dict()
    state = {
        i: {
            key: (value if value is None else value.clone() if key == "step" else value[seed].clone())
            for key, value in entry.items()
        }
        for i, entry in full["state"].items()
    }
    return {"state": state, "param_groups": full["param_groups"]}


class StackedSeeds:
    """The :class:`~vicinal.experiments.training.loop.Trainer` of S seeds stacked into one :class:`SeedBatch`.

    Args:
        module: the plain model (in training mode); it holds a seed's weights while that
            seed is evaluated and checkpointed.
        batch: the stacked weights.
        loaders: each seed's training batches (the same number of steps).
        seeds: each seed (its dropout generator).
        optimizer: the optimizer over ``batch.params``.
        normalize: the input normalisation of every seed's batches, or None.
    """

    def __init__(
        self,
        module: nn.Module,
        batch: SeedBatch,
        loaders: Sequence[InMemoryLoader],
        seeds: Sequence[int],
        optimizer: torch.optim.Optimizer,
        normalize: Normalizer | None = None,
    ) -> None:
        self.module, self.batch, self.loaders, self.seeds, self.optimizer = module, batch, loaders, seeds, optimizer
        self.normalize = normalize
        self.loss_shape: tuple[int, ...] = (len(loaders),)
        self.steps = len(loaders[0])
        self.device = next(module.parameters()).device
        self.generators: list[torch.Generator] = []
        # RegMixup / MIT: each seed's own, from its loader as a cell trained alone builds it.
        self.step_losses: list[RegMixup | MixupInferenceTraining] = [
            loader.step_loss.build(seed=loader.seed, rank=0, num_classes=loader.num_classes)
            for loader in loaders
            if loader.step_loss is not None
        ]

    def start_epoch(self, epoch: int) -> Iterable[tuple[tuple[torch.Tensor, torch.Tensor], ...]]:
        self.generators = [torch.Generator().manual_seed(epoch_seed(seed, epoch)) for seed in self.seeds]
        return zip(*(loader.epoch(epoch) for loader in self.loaders))

    def loss(
        self, step: int, epoch: int, batch: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xs = [b[0] if self.normalize is None else self.normalize(b[0]) for b in batch]
        targets = torch.stack([b[1] for b in batch])
        if self.step_losses:
            return self._step_loss(step, epoch, xs, [b[1] for b in batch])
        logits = self.batch(xs, self.batch.noises(xs[0], self.generators))
        return vmap(soft_target_cross_entropy)(logits, targets), logits, targets

    def _forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """(S, N, classes): one stacked forward, each seed's dropout drawn as its plain model
        would draw it next (so a step of two forwards draws as the plain step does)."""
        return self.batch(xs, self.batch.noises(xs[0], self.generators))

    def _step_loss(
        self, step: int, epoch: int, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RegMixup or MIT per seed, its forward passes stacked; the library's mixing, solve and loss."""
        objectives = self.step_losses
        if isinstance(objectives[0], RegMixup):
            regs = [o for o in objectives if isinstance(o, RegMixup)]
            halves = [o.mix(x, y, step=step, epoch=epoch) for o, x, y in zip(regs, xs, ys)]
            b = int(xs[0].shape[0])
            both = self._forward([torch.cat([h.x, h.x_mixed]) for h in halves])  # one 2B pass, as alone
            losses = [
                o.loss_of(both[s, :b], both[s, b:], h.targets, h.targets_mixed)
                for s, (o, h) in enumerate(zip(regs, halves))
            ]
            return torch.stack(losses), both[:, :b], torch.stack([h.targets for h in halves])
        mits = [o for o in objectives if isinstance(o, MixupInferenceTraining)]
        mixes = [o.mix(x, y, step=step, epoch=epoch) for o, x, y in zip(mits, xs, ys)]
        out1 = self._forward([m.x1 for m in mixes])
        out2 = self._forward([m.x2 for m in mixes])
        recovered = [o.recover(out1[s], out2[s], m) for s, (o, m) in enumerate(zip(mits, mixes))]
        losses = [o.loss_of(a, p, m.targets, m.targets_partner) for o, (a, p), m in zip(mits, recovered, mixes)]
        return torch.stack(losses), torch.stack([a for a, _ in recovered]), torch.stack([m.targets for m in mixes])

    def model_of(self, index: int) -> nn.Module:
        self.module.load_state_dict(self.batch.state_dict(index))
        return self.module

    def optimizer_state_of(self, index: int) -> dict[str, Any]:
        return seed_optimizer_state(self.optimizer, index)


def train_stacked(
    module: nn.Module,
    members: Sequence[SeedMember],
    *,
    optim: OptimConfig,
    epochs: int,
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    channels_last: bool = False,
    forward: str = "auto",
) -> None:
    """Train ``members`` (the same model and start epoch, at least two) to ``epochs`` as one stacked model.

    Every seed's test metrics are tracked per epoch and its best weights kept, as a
    study cell does; each seed's checkpoint and metrics are written after every epoch.
    With the loaders' normalisation statistics the stacked forward and the evaluation
    normalise their input (``module`` carries the hook while this runs).

    Args:
        module: a fresh model of the members' architecture (its weights are not used),
            in the memory format they train in.
        val, test: uint8 images (N, C, H, W) or float features, and int64 labels (N,), on the CPU.
        forward: see :class:`SeedBatch`.
    """
    batch = SeedBatch(module, [m.state for m in members], forward=forward)
    optimizer = make_optimizer(batch.params.values(), optim)
    steps = len(members[0].loader)
    schedule = make_schedule(optimizer, optim, max(1, epochs * steps), steps_per_epoch=steps)
    first = members[0].checkpoint
    if first is not None:
        optimizer.load_state_dict(stacked_optimizer_state(optimizer, [m.checkpoint.optimizer for m in members]))  # type: ignore[union-attr]
        if schedule is not None:
            schedule.load_state_dict(first.scheduler)  # type: ignore[arg-type]
    for m in members:
        restart_metrics(m.run.out, m.run.history)
    stats = members[0].loader.normalization
    normalize = None if stats is None else Normalizer(stats)
    trainer = StackedSeeds(module, batch, [m.loader for m in members], [m.seed for m in members], optimizer, normalize)
    # The hook goes on after SeedBatch copied the module: the stacked forward normalises
    # explicitly (the grouped forward of the reference CNN runs no hooks).
    with contextlib.nullcontext() if stats is None else stats.attach(module):
        fit(
            trainer,
            [m.run for m in members],
            optimizer=optimizer,
            schedule=schedule,
            epochs=epochs,
            val=val,
            test=test,
            channels_last=channels_last,
            track_test=True,
            keep_best=True,
        )
