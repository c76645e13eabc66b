"""Mixup inference in training (Wang et al., CVPR 2023, "On the pitfall of mixup for
uncertainty calibration"), the logit-level variant (MIT-L).

Each step mixes the same pairs twice, with λ₁ ≥ 0.5 ≥ λ₂ and λ₁ − λ₂ ≥ ``margin``, runs
the model on both mixes, and recovers the logits of the two raw samples of each pair
by solving the 2×2 linear system

    [o₁]   [λ₁  1−λ₁] [f(x_a)]          f(x_a) = ((1−λ₂)·o₁ − (1−λ₁)·o₂) / (λ₁ − λ₂)
    [o₂] = [λ₂  1−λ₂] [f(x_b)]    ⇒     f(x_b) = (λ₁·o₂ − λ₂·o₁) / (λ₁ − λ₂)

(exact when the model is affine in its input), then trains with cross-entropy on the
*hard* labels: ``loss = ½·CE(f(x_a), y_a) + ½·CE(f(x_b), y_b)``. Mixup thus still shapes
the network, but the predictions trained against one-hot labels are those of raw
samples, which is what the paper shows keeps the model calibratable by temperature
scaling. At test time the model is used as it is.

>>> import torch
>>> from vicinal.torch.mit import MixupInferenceTraining
>>> net = torch.nn.Linear(4, 3)  # affine: the recovery is exact
>>> mit = MixupInferenceTraining(num_classes=3, seed=0)  # mit_config(): α = 1, margin 0.5
>>> x, y = torch.rand(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
>>> out = mit(net, x, y, step=0)
>>> bool(torch.allclose(out.logits, net(x), atol=1e-5)), out.loss.ndim
(True, 0)
>>> float(out.lam1.min()) >= 0.5 >= float(out.lam2.max()), bool((out.lam1 - out.lam2 >= 0.5).all())
(True, True)

**How λ₁ and λ₂ are drawn** (official code, dengbaowang/Mixup-Inference-in-Training
``main.py``, method ``MIT-L``): once per batch, ``λ₁ = max(B, 1−B)`` and
``λ₂ = min(B′, 1−B′)`` with B, B′ ~ Beta(α, α) independent, both redrawn until
``|λ₁ − λ₂| >= margin``; the partners are a random permutation of the batch
(``torch.randperm``). Its argparse defaults are ``--alpha 0.5 --margin 0.5``; the
README's demo commands use ``--alpha 1.0`` with ``--margin 0`` (MIT-L, MIT-A) and
``--margin 0.5`` (MIT-A). Here (:func:`mit_lambdas`) the same rejection rule, with
these differences:

* the draws come from vicinal's counter (purpose ``"mit"``), a pure function of
  ``(seed, epoch, step, rank)``, not NumPy's global generator; candidates are drawn in
  blocks and the first accepted pair of the sequence is taken (the same distribution);
  the partners are the plan's (:func:`vicinal.sample_plan` of the config; a uniform
  permutation with :func:`mit_config`, any in-batch pairing allowed);
* each Beta draw is rounded to a multiple of 2⁻²⁴ (a change of at most 3·10⁻⁸) so that
  λ and 1 − λ are exact in float32: the mixing kernels and the solve use the very same
  numbers, and the recovery of an affine model is exact up to float rounding;
* ``margin`` must be in (0, 1). The official code accepts 0, and its README uses it,
  but λ₁ = λ₂ = 0.5 is then allowed, where the system is singular (its determinant is
  λ₁ − λ₂), and near it the recovered logits amplify the model's non-linearity by
  1/(λ₁ − λ₂) without bound. Pairs (α, margin) that almost never pass are refused at
  construction (under 10⁻³ of the draws, estimated deterministically);
* ``granularity="elem"`` gives each sample its own (λ₁, λ₂) and 2×2 system (the
  official code: one pair per batch, ``granularity="batch"``, the default);
* labels may be soft or smoothed (``label_smoothing``; the official code uses one-hot
  labels), and the solve is the closed form above (algebraically the official
  ``coef1``/``coef2`` expressions), computed in float32 or wider;
* only the logit-level variant: the official MIT-A, which decouples and remixes between
  every block of its ResNet, is not provided.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vicinal._checks import check_int, check_probability, check_real_range
from vicinal._counter import generator
from vicinal._stepper import Counted, StepCounter
from vicinal.labels import batch_size_of, check_labels, is_torch_tensor, soft_unchecked
from vicinal.mixing import apply_plan
from vicinal.sampling import MixConfig, MixPlan, sample_beta, sample_plan
from vicinal.torch.losses import soft_target_cross_entropy

__all__ = [
    "MIT_ALPHA",
    "MIT_MARGIN",
    "MITBatch",
    "MITOutput",
    "MixupInferenceTraining",
    "mit_config",
    "mit_lambdas",
    "recover_logits",
]

MIT_ALPHA = 1.0
"""α of the official README's demo commands (its argparse default is 0.5)."""
MIT_MARGIN = 0.5
"""The official default margin (argparse ``--margin``)."""

# λ is rounded to a multiple of 2**-24: then λ and 1 - λ are both exact in float32 (and
# float64), so the float32 weights the kernels mix with are the λ the solve uses.
_GRID = float(2**24)
# Fewer accepted draws than this is refused at construction (see _acceptance_rate).
_MIN_ACCEPTANCE = 1e-3
_RATE_DRAWS = 1 << 16
# Rejection rounds: candidates per pending unit start at 16 and double each round, with
# at most 2**20 candidates per round; at the minimum acceptance rate the chance that a
# unit has no accepted pair after all rounds is below e**-30.
_FIRST_BLOCK = 16
_ROUNDS = 16
_MAX_ROUND_DRAWS = 1 << 20


def mit_config(alpha: float = MIT_ALPHA) -> MixConfig:
    """The official MIT pairing: MixUp with one (λ₁, λ₂) per batch (``granularity="batch"``)
    and partners a uniform random permutation (``pairing="permute"``). Only ``alpha`` (and
    ``beta``, ``granularity``, ``pairing``) of the config matter to MIT."""
    return MixConfig("mixup", alpha=alpha, granularity="batch", pairing="permute")


def _check_margin(margin: Any) -> float:
    m = check_real_range("margin", margin, low=0.0, high=1.0)
    if m == 0.0 or m == 1.0:
        why = (
            "margin=0 allows λ1 = λ2 = 0.5, where the 2x2 system is singular (its determinant is λ1 - λ2), and "
            "margins near 0 amplify the model's non-linearity by 1/(λ1 - λ2) in the recovered logits"
            if m == 0.0
            else "λ1 - λ2 <= 1 always, so margin=1 is (almost surely) never reached"
        )
        raise ValueError(f"margin must be in (0, 1) (default {MIT_MARGIN}), got {m}: {why}")
    return m


def _concentrations(config: MixConfig) -> tuple[float, float]:
    return config.alpha, config.alpha if config.beta is None else config.beta


def _candidates(rng: np.random.Generator, a: float, b: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` candidate pairs: λ₁ = max(B, 1−B), λ₂ = min(B′, 1−B′), B and B′ on the 2⁻²⁴ grid."""
    u = np.round(sample_beta(rng, a, b, 2 * k) * _GRID) / _GRID
    first, second = u[:k], u[k:]
    return np.maximum(first, 1.0 - first), np.minimum(second, 1.0 - second)


def _acceptance_rate(a: float, b: float, margin: float) -> float:
    """The fraction of candidate pairs with λ₁ − λ₂ >= margin, estimated from a fixed stream
    (seed 0, epoch 0, step 0 and the last rank the counter allows: no training draw uses it)."""
    rng = generator(0, "mit", epoch=0, step=0, rank=(1 << 32) - 1)
    l1, l2 = _candidates(rng, a, b, _RATE_DRAWS)
    return float(np.mean(l1 - l2 >= margin))


def mit_lambdas(
    config: MixConfig,
    margin: float,
    n: int,
    *,
    seed: int,
    epoch: int = 0,
    step: int = 0,
    rank: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs (λ₁, λ₂) for ``(seed, epoch, step, rank)``, a pure function of its arguments.

    λ₁ = max(B, 1−B), λ₂ = min(B′, 1−B′), B, B′ ~ Beta(α, β) (``config.alpha``, ``config.beta``),
    redrawn until λ₁ − λ₂ >= ``margin`` (see the module docstring). A concentration of 0
    (no mixing) gives λ₁ = 1, λ₂ = 0.

    Returns:
        ``(lam1, lam2)``: float64 (n,), ``0.5 <= lam1 <= 1``, ``0 <= lam2 <= 0.5``,
        ``lam1 - lam2 >= margin``, multiples of 2⁻²⁴.

    Raises:
        RuntimeError: no accepted pair for some unit after every round (only when the
            acceptance rate is far below what :class:`MixupInferenceTraining` accepts).
    """
    if not isinstance(config, MixConfig):
        raise TypeError(f"config must be a MixConfig, got {type(config).__name__}")
    m = _check_margin(margin)
    n = check_int("n", n, minimum=1)
    a, b = _concentrations(config)
    if a == 0.0 or b == 0.0:  # Beta(0, ·) and Beta(·, 0) put all their mass on 0 or 1
        return np.ones(n), np.zeros(n)
    rng = generator(seed, "mit", epoch=epoch, step=step, rank=rank)
    lam1, lam2 = np.empty(n), np.empty(n)
    pending = np.arange(n)
    k = _FIRST_BLOCK
    for _ in range(_ROUNDS):
        l1, l2 = _candidates(rng, a, b, pending.size * k)
        l1, l2 = l1.reshape(pending.size, k), l2.reshape(pending.size, k)
        ok = l1 - l2 >= m
        hit = ok.any(axis=1)
        first = ok.argmax(axis=1)[hit]
        rows = np.flatnonzero(hit)
        lam1[pending[hit]], lam2[pending[hit]] = l1[rows, first], l2[rows, first]
        pending = pending[~hit]
        if pending.size == 0:
            return lam1, lam2
        k = min(2 * k, max(1, _MAX_ROUND_DRAWS // pending.size))
    raise RuntimeError(
        f"no (λ1, λ2) with λ1 - λ2 >= margin={m} was drawn for {pending.size} of {n} units "
        f"(alpha={a}, beta={b}); lower the margin or alpha"
    )


def recover_logits(
    out1: torch.Tensor, out2: torch.Tensor, lam1: torch.Tensor | float, lam2: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of the two raw samples of each pair, from the outputs on their two mixes.

    Solves ``o₁ = λ₁·f(x_a) + (1−λ₁)·f(x_b)``, ``o₂ = λ₂·f(x_a) + (1−λ₂)·f(x_b)`` per row.

    Args:
        out1, out2: (B, C) outputs on ``λ₁·x_a + (1−λ₁)·x_b`` and ``λ₂·x_a + (1−λ₂)·x_b``.
        lam1, lam2: (B,) tensors or numbers, ``lam1 != lam2`` on every row.

    Returns:
        ``(f(x_a), f(x_b))``, each (B, C), in float32 or the outputs' wider dtype.

    Raises:
        ValueError: mismatched shapes, or a row with ``lam1 == lam2`` (singular; one
            host read of the λ's).
    """
    if out1.ndim != 2 or tuple(out1.shape) != tuple(out2.shape):
        raise ValueError(f"out1 and out2 must both be (B, C), got {tuple(out1.shape)} and {tuple(out2.shape)}")
    l1, l2 = (_as_column(lam, out1, name) for lam, name in ((lam1, "lam1"), (lam2, "lam2")))
    if bool((l1 == l2).any()):
        raise ValueError("lam1 and lam2 must differ on every row: with lam1 == lam2 the 2x2 system is singular")
    return _solve(out1, out2, l1, l2)


def _as_column(lam: torch.Tensor | float, like: torch.Tensor, name: str) -> torch.Tensor:
    dtype = torch.promote_types(like.dtype, torch.float32)
    t = torch.as_tensor(lam, dtype=dtype, device=like.device)
    if t.ndim == 0:
        t = t.expand(like.shape[0])
    if t.shape != (like.shape[0],):
        raise ValueError(f"{name} must be a number or a (B,) tensor with B = {like.shape[0]}, got {tuple(t.shape)}")
    return t[:, None]


def _solve(
    out1: torch.Tensor, out2: torch.Tensor, l1: torch.Tensor, l2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The closed-form solve; ``l1``, ``l2`` (B, 1) in the solve's dtype, never equal."""
    o1, o2 = out1.to(l1.dtype), out2.to(l1.dtype)
    det = l1 - l2
    return ((1.0 - l2) * o1 - (1.0 - l1) * o2) / det, (l1 * o2 - l2 * o1) / det


@dataclass(frozen=True, eq=False)
class MITBatch:
    """The two mixes of one MIT step (:meth:`MixupInferenceTraining.mix`).

    Attributes:
        x1, x2: the mixes ``λ₁·x + (1−λ₁)·x_partner`` and ``λ₂·x + (1−λ₂)·x_partner``,
            x's shape, dtype and device.
        lam1, lam2: float32 (B,) on x's device, the λ of each row (exact float32 values).
        partners: int64 (B,) on the labels' device, the partner row of each row.
        targets, targets_partner: float32 (B, C), the rows' and their partners' labels as
            distributions (one-hot unless smoothed or soft).
    """

    x1: torch.Tensor
    x2: torch.Tensor
    lam1: torch.Tensor
    lam2: torch.Tensor
    partners: torch.Tensor
    targets: torch.Tensor
    targets_partner: torch.Tensor


@dataclass(frozen=True, eq=False)
class MITOutput:
    """What one MIT step computed (:meth:`MixupInferenceTraining.__call__`).

    Attributes:
        loss: float32 scalar, ``½·CE(logits, targets) + ½·CE(logits_partner, targets_partner)``.
        logits, logits_partner: float32 (B, C), the recovered logits of each row and of its partner.
        targets, targets_partner, lam1, lam2: as in :class:`MITBatch`.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    logits_partner: torch.Tensor
    targets: torch.Tensor
    targets_partner: torch.Tensor
    lam1: torch.Tensor
    lam2: torch.Tensor


class MixupInferenceTraining(Counted):
    """MIT's loss (the logit-level variant) for any model and training loop.

    Args:
        config: the MixUp whose ``alpha`` (``beta``), ``granularity`` (``"batch"``: one
            (λ₁, λ₂) per batch, or ``"elem"``: per sample) and ``pairing`` (in-batch:
            ``"roll"``, ``"flip"``, ``"permute"``, ``"derange"``) are used; default
            :func:`mit_config` (α = 1). ``method`` must be ``"mixup"`` (the system
            assumes a blend of whole inputs) and ``p`` 1.
        margin: λ₁ − λ₂ >= margin, in (0, 1) (0.5, the official default).
        num_classes: needed when labels are class ids.
        label_smoothing: ε applied to the labels (0 in the paper).
        seed, rank: the stream of the plans and of the λ draws.
        validate: check the label values (one host read per call on an accelerator).

    Inputs should be floating point: integer inputs are rounded after mixing, which
    breaks the linear relation the recovery relies on.
    """

    def __init__(
        self,
        config: MixConfig | None = None,
        *,
        margin: float = MIT_MARGIN,
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
        seed: int = 0,
        rank: int = 0,
        validate: bool = True,
    ) -> None:
        config = mit_config() if config is None else config
        if not isinstance(config, MixConfig):
            raise TypeError(f"config must be a MixConfig or None, got {type(config).__name__}")
        if config.method != "mixup":
            raise ValueError(
                f"MIT needs config.method='mixup' (its 2x2 system assumes a blend of whole inputs), "
                f"got {config.method!r}"
            )
        if config.granularity not in ("batch", "elem"):
            raise ValueError(f"MIT needs config.granularity 'batch' or 'elem', got {config.granularity!r}")
        if config.pairing == "stream":
            raise ValueError(
                "MIT needs in-batch partners (pairing 'roll', 'flip', 'permute' or 'derange'), got 'stream'"
            )
        if config.p != 1.0:
            raise ValueError(f"MIT mixes every batch: config.p must be 1, got {config.p}")
        self.config = config
        self.margin = _check_margin(margin)
        a, b = _concentrations(config)
        if a > 0 and b > 0:
            rate = _acceptance_rate(a, b, self.margin)
            if rate < _MIN_ACCEPTANCE:
                raise ValueError(
                    f"margin={self.margin} with alpha={a}, beta={b}: about {rate:.1e} of the (λ1, λ2) draws have "
                    f"λ1 - λ2 >= margin (fewer than {_MIN_ACCEPTANCE:g}); lower the margin or alpha"
                )
        self.num_classes = None if num_classes is None else check_int("num_classes", num_classes, minimum=1)
        self.label_smoothing = check_probability("label_smoothing", label_smoothing)
        self.seed = check_int("seed", seed, minimum=0)
        self.rank = check_int("rank", rank, minimum=0)
        if not isinstance(validate, bool):
            raise TypeError(f"validate must be a bool, got {type(validate).__name__}")
        self.validate = validate
        self.counter = StepCounter()

    def plans(self, batch_size: int, *, step: int, epoch: int | None = None) -> tuple[MixPlan, MixPlan]:
        """The plans of the two mixes of step ``step``: the config's partners, weights (λ₁, 1−λ₁) and (λ₂, 1−λ₂)."""
        e = self.epoch if epoch is None else epoch
        base = sample_plan(self.config, batch_size, seed=self.seed, epoch=e, step=step, rank=self.rank)
        n = 1 if self.config.granularity == "batch" else batch_size
        lam1, lam2 = mit_lambdas(self.config, self.margin, n, seed=self.seed, epoch=e, step=step, rank=self.rank)

        def with_lam(lam: np.ndarray) -> MixPlan:
            lam = np.broadcast_to(lam, (batch_size,))
            return dataclasses.replace(base, weights=np.stack([lam, 1.0 - lam], axis=1))

        return with_lam(lam1), with_lam(lam2)

    def mix(self, x: torch.Tensor, y: Any, *, step: int, epoch: int | None = None) -> MITBatch:
        """The two mixes of step ``step`` and the labels (nothing is counted).

        Args:
            x: (B, ...) floating inputs, a torch tensor.
            y: int class ids (B,) or soft labels (B, C).
        """
        if not is_torch_tensor(x):
            raise TypeError(f"x must be a torch tensor, got {type(x).__name__}")
        b = batch_size_of("x", x)
        c = check_labels(y, self.num_classes, validate=self.validate)
        if batch_size_of("y", y) != b:
            raise ValueError(f"y has {batch_size_of('y', y)} rows but x has {b}")
        plan1, plan2 = self.plans(b, step=step, epoch=epoch)
        x1, _ = apply_plan(plan1, x)
        x2, _ = apply_plan(plan2, x)
        targets = soft_unchecked(y, c, self.label_smoothing)
        partners = torch.from_numpy(plan1.partners[:, 0].copy()).to(targets.device)
        lam1 = torch.from_numpy(plan1.lam.astype(np.float32)).to(x.device)
        lam2 = torch.from_numpy(plan2.lam.astype(np.float32)).to(x.device)
        return MITBatch(x1, x2, lam1, lam2, partners, targets, targets.index_select(0, partners))

    def recover(self, out1: torch.Tensor, out2: torch.Tensor, batch: MITBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The recovered logits ``(f(x), f(x_partner))`` of ``batch`` from the outputs on its two mixes."""
        if out1.ndim != 2 or tuple(out1.shape) != tuple(out2.shape) or out1.shape[0] != batch.lam1.shape[0]:
            raise ValueError(
                f"the model must return (B, C) logits with B = {batch.lam1.shape[0]} for both mixes, got "
                f"{tuple(out1.shape)} and {tuple(out2.shape)}"
            )
        dtype = torch.promote_types(out1.dtype, torch.float32)
        # λ1 - λ2 >= margin > 0 by construction: no singular row, no host read.
        return _solve(out1, out2, batch.lam1.to(dtype)[:, None], batch.lam2.to(dtype)[:, None])

    @staticmethod
    def loss_of(
        logits: torch.Tensor, logits_partner: torch.Tensor, targets: torch.Tensor, targets_partner: torch.Tensor
    ) -> torch.Tensor:
        """``½·CE(logits, targets) + ½·CE(logits_partner, targets_partner)``: float32 scalar (batch means)."""
        return 0.5 * soft_target_cross_entropy(logits, targets) + 0.5 * soft_target_cross_entropy(
            logits_partner, targets_partner
        )

    def __call__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        y: Any,
        *,
        step: int | None = None,
        epoch: int | None = None,
    ) -> MITOutput:
        """One step's loss: two mixes, two forward passes of ``model``, the solve, the cross-entropies.

        Args:
            model: returns (N, C) logits for N inputs (a module, or its DDP wrapper).
            x: (B, ...) floating inputs, a torch tensor.
            y: int class ids (B,) or soft labels (B, C).
            step, epoch: where this batch is; default: the internal count (advanced after
                a successful call) and the current epoch.
        """
        epoch, step, counted = self.counter.resolve(step, epoch)
        batch = self.mix(x, y, step=step, epoch=epoch)
        logits, logits_partner = self.recover(model(batch.x1), model(batch.x2), batch)
        loss = self.loss_of(logits, logits_partner, batch.targets, batch.targets_partner)
        if counted:
            self.counter.advance()
        return MITOutput(loss, logits, logits_partner, batch.targets, batch.targets_partner, batch.lam1, batch.lam2)

    def __repr__(self) -> str:
        return f"MixupInferenceTraining({self.config}, margin={self.margin:g}, seed={self.seed})"
