"""AugMix (Hendrycks et al., ICLR 2020): per-image chains of augmentations, mixed.

For every image, ``width`` chains each apply ``depth`` (1 to 3, random per chain unless
fixed) operations drawn uniformly from :data:`AUGMIX_OPS` with a random magnitude
scaled by ``severity``; the chain outputs are combined with Dirichlet(α·1_width)
weights and the combination is blended with the original::

    mix = Σ_k w_k · chain_k(x),     w ~ Dirichlet(α, ..., α)
    out = (1 - m) · x + m · mix,     m ~ Beta(α, α)

The operations are the paper's set (its ``augmentations.augmentations``), which leaves
out the ops that overlap the test corruptions (contrast, colour, brightness,
sharpness): autocontrast, equalize, posterize, rotate, solarize, shear_x, shear_y,
translate_x, translate_y. Magnitudes follow the reference code: a level
``U(0.1, severity)`` out of 10, converted as ``int(level/10 · max)`` for rotate
(max 30°), posterize (4 - int bits), solarize (threshold 256 - int(level/10 · 256)) and
translate (max side/3 pixels), and ``level/10 · 0.3`` for the shears; the geometric
ops take a random sign. The paper mixes normalised images; mixing is linear, so
mixing in [0, 1] and normalising afterwards is the same.

Every random decision is in an :class:`AugMixPlan`, drawn on the host by
:func:`sample_augmix_plan` as a pure function of ``(config, B, seed, epoch, step,
rank, view)``; :func:`augmix` applies it to a batch with kornia, one call per
(chain position, op) for all the chains that use that op there. :class:`AugMix`
wraps both with a step count like :class:`vicinal.Mixer`.

Order with the mixing transforms: AugMix works on each image alone, mixup and CutMix
between images, so AugMix goes first and mixup/CutMix on top::

    >>> import torch
    >>> from vicinal import MixUp
    >>> from vicinal.torch.augmix import AugMix, AugMixConfig
    >>> aug = AugMix(AugMixConfig(width=3, severity=3), seed=0)
    >>> mix = MixUp(alpha=0.2, num_classes=10, seed=0)
    >>> x, y = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8), torch.arange(8)
    >>> x_aug = aug(x)                                # per image; uint8 in, uint8 out
    >>> x_mixed, y_mixed = mix(x_aug.float() / 255, y)  # between images
    >>> x_aug.dtype, tuple(x_mixed.shape), tuple(y_mixed.shape)
    (torch.uint8, (8, 1, 28, 28), (8, 10))

For the Jensen–Shannon consistency loss
(:func:`vicinal.torch.losses.jensen_shannon_consistency`) a step needs two independent
augmented views of the same batch: ``aug.views(x)`` returns them (views 0 and 1 of
one step).

This module needs PyTorch and kornia (``pip install 'vicinal[augmix]'``); ``import
vicinal`` does not import it. Plans are NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vicinal._checks import check_concentration, check_int
from vicinal._counter import generator
from vicinal._stepper import Counted, StepCounter
from vicinal.mixing import require_finite
from vicinal.sampling import sample_beta, sample_dirichlet

__all__ = [
    "AUGMIX_OPS",
    "GEOMETRIC_OPS",
    "MAX_DEPTH",
    "AugMix",
    "AugMixConfig",
    "AugMixPlan",
    "augmix",
    "sample_augmix_plan",
]

AUGMIX_OPS: tuple[str, ...] = (
    "autocontrast",
    "equalize",
    "posterize",
    "rotate",
    "solarize",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)
"""The paper's operations; a plan's op index ``i`` means ``AUGMIX_OPS[i]``."""

GEOMETRIC_OPS: frozenset[str] = frozenset({"rotate", "shear_x", "shear_y", "translate_x", "translate_y"})
"""Ops whose magnitude takes a random sign."""

MAX_DEPTH = 3
"""Most ops in one chain: the plan's third axis."""

_IS_GEOMETRIC = np.array([op in GEOMETRIC_OPS for op in AUGMIX_OPS])

# AugMix's chains have a stream of their own (vicinal._counter, purpose 'augmix'), independent
# of the mixing plan of the same (seed, epoch, step, rank).


@dataclass(frozen=True)
class AugMixConfig:
    """AugMix's hyper-parameters; validated on construction.

    Args:
        width: chains per image (the paper's ``mixture_width``, 3).
        depth: ops per chain, 1 to 3; ``None`` draws it uniformly from {1, 2, 3} per
            chain (the paper's ``mixture_depth=-1``).
        severity: magnitude scale, 1 to 10 (the paper's ``aug_severity``, 3): each op's
            level is ``U(0.1, severity)`` out of 10.
        alpha: concentration of the Dirichlet chain weights and of the Beta(α, α) blend
            weight ``m`` (the paper's ``aug_prob_coeff``, 1); > 0.
        ops: the ops to draw from, a non-empty subset of :data:`AUGMIX_OPS` (default:
            all of them).
    """

    width: int = 3
    depth: int | None = None
    severity: int = 3
    alpha: float = 1.0
    ops: tuple[str, ...] = field(default=AUGMIX_OPS)

    def __post_init__(self) -> None:
        check_int("width", self.width, minimum=1)
        if self.depth is not None:
            check_int("depth", self.depth, minimum=1, maximum=MAX_DEPTH)
        check_int("severity", self.severity, minimum=1, maximum=10)
        if check_concentration("alpha", self.alpha) == 0:
            raise ValueError("alpha must be > 0 for AugMix (it is a Dirichlet and a Beta concentration)")
        ops = tuple(self.ops)
        unknown = [op for op in ops if op not in AUGMIX_OPS]
        if not ops or unknown or len(set(ops)) != len(ops):
            raise ValueError(f"ops must be distinct names from {list(AUGMIX_OPS)}, got {list(ops)}")
        object.__setattr__(self, "ops", ops)


@dataclass(frozen=True, eq=False)
class AugMixPlan:
    """Every random decision of AugMix for one batch of ``B`` images.

    Attributes:
        ops: int64 (B, width, 3); ``ops[i, k, j]`` is the index in :data:`AUGMIX_OPS`
            of the ``j``-th op of chain ``k`` of image ``i``, or -1 past the chain's
            depth (used positions come first).
        magnitudes: float64 (B, width, 3); the op's level / 10, in [0.01, severity/10),
            negative for a geometric op with the negative sign; 0 where ``ops`` is -1.
        chain_weights: float64 (B, width), rows >= 0 summing to 1 (Dirichlet).
        m: float64 (B,) in [0, 1]: the weight of the mix against the original.
    """

    ops: np.ndarray
    magnitudes: np.ndarray
    chain_weights: np.ndarray
    m: np.ndarray

    def __post_init__(self) -> None:
        b, w = self.chain_weights.shape
        if self.ops.shape != (b, w, MAX_DEPTH) or self.magnitudes.shape != (b, w, MAX_DEPTH) or self.m.shape != (b,):
            raise ValueError(
                f"inconsistent plan shapes: ops {self.ops.shape}, magnitudes {self.magnitudes.shape}, "
                f"chain_weights {self.chain_weights.shape}, m {self.m.shape}"
            )

    @property
    def batch_size(self) -> int:
        return int(self.m.shape[0])

    @property
    def width(self) -> int:
        return int(self.chain_weights.shape[1])

    def select(self, rows: Any) -> AugMixPlan:
        """The plan of a subset of the batch: rows ``rows`` (an index or a mask)."""
        rows = np.atleast_1d(np.arange(self.batch_size)[rows])
        return AugMixPlan(self.ops[rows], self.magnitudes[rows], self.chain_weights[rows], self.m[rows])


def sample_augmix_plan(
    config: AugMixConfig,
    batch_size: int,
    *,
    seed: int,
    epoch: int = 0,
    step: int = 0,
    rank: int = 0,
    view: int = 0,
) -> AugMixPlan:
    """Draw the AugMix plan of one batch; a pure function of its arguments.

    The draws come from the Philox generator of :mod:`vicinal.sampling` with a counter
    of its own (see the module source), so the plan is independent of the mixing plan
    of the same ``(seed, epoch, step, rank)``.

    Args:
        config: the AugMix hyper-parameters.
        batch_size: B >= 1.
        seed, epoch, step, rank: where the batch is (``step < 2**40``).
        view: which augmented view of the batch (``< 256``): JSD training uses views 0
            and 1 of each step, which are independent.

    Returns:
        An :class:`AugMixPlan` of B rows.

    >>> plan = sample_augmix_plan(AugMixConfig(), 4, seed=0, step=0)
    >>> plan.ops.shape, bool(np.allclose(plan.chain_weights.sum(axis=1), 1.0))
    ((4, 3, 3), True)
    """
    if not isinstance(config, AugMixConfig):
        raise TypeError(f"config must be an AugMixConfig, got {type(config).__name__}")
    b = check_int("batch_size", batch_size, minimum=1)
    rng = generator(seed, "augmix", epoch=epoch, step=step, rank=rank, view=view)
    w = config.width
    if config.depth is None:
        depth = rng.integers(1, MAX_DEPTH + 1, size=(b, w))
    else:
        depth = np.full((b, w), config.depth, dtype=np.int64)
    allowed = np.array([AUGMIX_OPS.index(op) for op in config.ops], dtype=np.int64)
    ops = allowed[rng.integers(0, allowed.size, size=(b, w, MAX_DEPTH))]
    level = rng.uniform(0.1, config.severity, size=(b, w, MAX_DEPTH))  # the paper's sample_level
    sign = np.where(rng.random((b, w, MAX_DEPTH)) < 0.5, -1.0, 1.0)
    used = np.arange(MAX_DEPTH) < depth[..., None]
    magnitudes = np.where(used, level / 10.0 * np.where(_IS_GEOMETRIC[ops], sign, 1.0), 0.0)
    chain_weights = sample_dirichlet(rng, config.alpha, w, b)
    m = sample_beta(rng, config.alpha, config.alpha, b)
    return AugMixPlan(
        ops=np.where(used, ops, -1).astype(np.int64), magnitudes=magnitudes, chain_weights=chain_weights, m=m
    )


# --------------------------------------------------------------------------- ops


def _int_parameter(magnitude: np.ndarray, maxval: float) -> np.ndarray:
    """The reference's ``int(level · maxval / 10)``, keeping the sign of ``magnitude``."""
    out: np.ndarray = np.sign(magnitude) * np.floor(np.abs(magnitude) * maxval)
    return out


def _apply_op(name: str, x: torch.Tensor, magnitude: np.ndarray) -> torch.Tensor:
    """Op ``name`` on float images ``x`` (n, C, H, W) in [0, 1], magnitudes (n,)."""
    import kornia

    def param(values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(values, dtype=x.dtype).to(x.device)

    h, w = x.shape[-2:]
    zero = np.zeros_like(magnitude)
    if name == "autocontrast":
        # PIL's autocontrast: each channel of each image stretched to [0, 1]; a
        # constant channel is left as it is (kornia would map it to 0).
        lo, hi = x.amin(dim=(-2, -1), keepdim=True), x.amax(dim=(-2, -1), keepdim=True)
        return torch.where(hi > lo, kornia.enhance.normalize_min_max(x, 0.0, 1.0, eps=0.0), x)
    if name == "equalize":
        return kornia.enhance.equalize(x)
    if name == "posterize":
        # One call per bit depth (at most 5 values): older kornia reads a (n,) bits
        # tensor per channel rather than per sample.
        bits = 4 - _int_parameter(magnitude, 4).astype(np.int64)
        out = x.clone()
        for value in np.unique(bits):
            rows = torch.from_numpy(np.flatnonzero(bits == value)).to(x.device)
            out.index_copy_(0, rows, kornia.enhance.posterize(x.index_select(0, rows), int(value)))
        return out
    if name == "solarize":
        # PIL inverts the uint8 levels >= threshold: the same as x >= threshold / 255.
        threshold = (256 - _int_parameter(magnitude, 256)) / 255.0
        return kornia.enhance.solarize(x, param(threshold))
    if name == "rotate":
        return kornia.geometry.transform.rotate(x, param(_int_parameter(magnitude, 30)))
    if name == "shear_x":
        return kornia.geometry.transform.shear(x, param(np.stack([magnitude * 0.3, zero], axis=1)))
    if name == "shear_y":
        return kornia.geometry.transform.shear(x, param(np.stack([zero, magnitude * 0.3], axis=1)))
    if name == "translate_x":
        return kornia.geometry.transform.translate(x, param(np.stack([_int_parameter(magnitude, w / 3), zero], 1)))
    if name == "translate_y":
        return kornia.geometry.transform.translate(x, param(np.stack([zero, _int_parameter(magnitude, h / 3)], 1)))
    raise ValueError(f"unknown AugMix op {name!r}")


def augmix(images: torch.Tensor, plan: AugMixPlan) -> torch.Tensor:
    """Apply an AugMix plan to a batch of images, on their device.

    The ``B · width`` chains are processed together: for each chain position ``j`` and
    op, the chains that use that op at ``j`` go through one kornia call.

    Args:
        images: (B, C, H, W), C = 1 or 3; ``uint8`` (0-255) or floating in [0, 1].
        plan: a plan of B rows (:func:`sample_augmix_plan`).

    Returns:
        A new tensor like ``images``: ``uint8`` (rounded) for uint8 input, else the
        input's floating dtype, in [0, 1]. Computed in float32 (float64 input: float64).
        Not differentiable (equalize, posterize and solarize quantise). Chains stay in
        floating point between ops (the reference's PIL chains round to uint8 after each).
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not isinstance(plan, AugMixPlan):
        raise TypeError(f"plan must be an AugMixPlan, got {type(plan).__name__}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (B, C, H, W) with C = 1 or 3, got {tuple(images.shape)}")
    is_uint8 = images.dtype == torch.uint8
    if not is_uint8 and not images.dtype.is_floating_point:
        raise ValueError(f"images must be uint8 or floating, got {images.dtype}")
    b, c, h, w = images.shape
    if plan.batch_size != b:
        raise ValueError(f"the plan is for {plan.batch_size} images, the batch has {b}")
    if not is_uint8:
        # Checked here, not left to kornia: its range error blames a missing /255.
        require_finite("images", images, "AugMix's image ops need finite values in [0, 1]")
        lo, hi = torch.aminmax(images.detach().reshape(b, -1), dim=1)
        outside = ((lo < 0) | (hi > 1)).nonzero().flatten().tolist()
        if outside:
            raise ValueError(
                f"images must be in [0, 1] (or uint8 0-255); samples {outside[:8]} hold values in "
                f"[{float(lo.min()):.4g}, {float(hi.max()):.4g}]"
            )
    work_dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    x = images.to(work_dtype) / 255.0 if is_uint8 else images.to(work_dtype)

    width = plan.width
    chains = x.repeat_interleave(width, dim=0)  # (B·width, C, H, W): image i's chains at i·width + k
    ops = plan.ops.reshape(b * width, MAX_DEPTH)
    magnitudes = plan.magnitudes.reshape(b * width, MAX_DEPTH)
    for j in range(MAX_DEPTH):
        for o in np.unique(ops[:, j]):
            if o < 0:
                continue
            rows = np.flatnonzero(ops[:, j] == o)
            index = torch.from_numpy(rows).to(x.device)
            out = _apply_op(AUGMIX_OPS[o], chains.index_select(0, index), magnitudes[rows, j])
            chains.index_copy_(0, index, out.clamp_(0.0, 1.0))

    weights = torch.as_tensor(plan.chain_weights, dtype=work_dtype).to(x.device)
    mix = (chains.view(b, width, c, h, w) * weights.view(b, width, 1, 1, 1)).sum(dim=1)
    m = torch.as_tensor(plan.m, dtype=work_dtype).to(x.device).view(b, 1, 1, 1)
    out = ((1.0 - m) * x + m * mix).clamp_(0.0, 1.0)
    if is_uint8:
        return out.mul_(255.0).round_().to(torch.uint8)
    return out.to(images.dtype)


class AugMix(Counted):
    """AugMix as a callable batch transform: ``aug(images) -> augmented images``.

    Args:
        config: the hyper-parameters (default: the paper's, :class:`AugMixConfig`).
        seed, rank: the plan stream (rank: the process in a distributed run).

    ``step`` counts successful calls since the last :meth:`set_epoch` unless given
    explicitly, as for :class:`vicinal.Mixer`, so a run is reproducible whatever
    process makes its batches, provided each call is told where it is. Compose with
    mixup/CutMix by calling this first (per image) and the mixer on its output.

    >>> aug = AugMix(seed=0)
    >>> x = torch.rand(4, 3, 32, 32)
    >>> clean_view, (view1, view2) = x, aug.views(x)
    >>> tuple(view1.shape), bool(torch.equal(view1, view2)), aug.step
    ((4, 3, 32, 32), False, 1)
    """

    def __init__(self, config: AugMixConfig | None = None, *, seed: int = 0, rank: int = 0) -> None:
        config = AugMixConfig() if config is None else config
        if not isinstance(config, AugMixConfig):
            raise TypeError(f"config must be an AugMixConfig, got {type(config).__name__}")
        self.config = config
        self.seed = check_int("seed", seed, minimum=0)
        self.rank = check_int("rank", rank, minimum=0)
        self.counter = StepCounter()

    def plan(self, batch_size: int, *, step: int, epoch: int | None = None, view: int = 0) -> AugMixPlan:
        """The plan this transform uses for a batch of ``batch_size`` at ``step``."""
        return sample_augmix_plan(
            self.config,
            batch_size,
            seed=self.seed,
            epoch=self.epoch if epoch is None else epoch,
            step=step,
            rank=self.rank,
            view=view,
        )

    def __call__(
        self, images: torch.Tensor, *, step: int | None = None, epoch: int | None = None, view: int = 0
    ) -> torch.Tensor:
        """Augment one batch (view ``view`` of its step); see :func:`augmix`.

        ``step=None`` uses (and, on success, advances) the internal count.
        """
        return self.views(images, step=step, epoch=epoch, views=(view,))[0]

    def views(
        self,
        images: torch.Tensor,
        *,
        step: int | None = None,
        epoch: int | None = None,
        views: tuple[int, ...] = (0, 1),
    ) -> tuple[torch.Tensor, ...]:
        """Several independent augmentations of one batch at one step (counts one step).

        The default gives the two views of JSD training; the clean view is ``images``.
        """
        if not isinstance(images, torch.Tensor) or images.ndim == 0:
            raise TypeError(f"images must be a (B, C, H, W) torch.Tensor, got {type(images).__name__}")
        epoch, at, counted = self.counter.resolve(step, epoch)
        out = tuple(augmix(images, self.plan(images.shape[0], step=at, epoch=epoch, view=v)) for v in views)
        if counted:  # a call that raised does not use up a step
            self.counter.advance()
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config}, seed={self.seed}, rank={self.rank})"
