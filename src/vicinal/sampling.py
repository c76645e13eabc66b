"""Mixing plans: every random decision for one batch, drawn on the host with NumPy.

A :class:`MixPlan` holds the per-sample mixing weights, the partner of each sample,
and CutMix boxes. It is a pure function of ``(config, batch_size, seed, epoch, step,
rank)``: the draws come from a counter-based generator (Philox) whose key is the seed
and whose counter encodes ``(epoch, step, rank)``. Nothing depends on how many
DataLoader workers there are, in which order plans are requested, or which process
requests them, so a run can be reproduced and resumed exactly.

This module knows nothing about tensors; :mod:`vicinal.mixing` applies plans.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from vicinal import masks
from vicinal._checks import check_choice, check_concentration, check_int, check_probability, check_real_range
from vicinal._counter import MAX_SEED, generator

__all__ = [
    "APPLY_MODES",
    "CHOOSABLE_METHODS",
    "GRANULARITIES",
    "METHODS",
    "PAIRINGS",
    "PASTE_METHODS",
    "SMOOTH_SHAPES",
    "ApplyMode",
    "Granularity",
    "Method",
    "MixConfig",
    "MixPlan",
    "Pairing",
    "SmoothShape",
    "boxes_at",
    "epoch_order",
    "identity_plan",
    "plan_generator",
    "replace_boxes",
    "resize_maps",
    "sample_beta",
    "sample_choice",
    "sample_dirichlet",
    "sample_plan",
]

Method = Literal[
    "mixup", "cutmix", "switch", "kway", "fmix", "resizemix", "gridmix", "smoothmix", "saliencymix", "choice"
]
Granularity = Literal["batch", "elem", "pair"]
Pairing = Literal["roll", "flip", "permute", "derange", "stream"]
ApplyMode = Literal["batch", "elem"]
SmoothShape = Literal["gaussian", "square"]

METHODS: tuple[str, ...] = get_args(Method)
GRANULARITIES: tuple[str, ...] = get_args(Granularity)
PAIRINGS: tuple[str, ...] = get_args(Pairing)
APPLY_MODES: tuple[str, ...] = get_args(ApplyMode)
SMOOTH_SHAPES: tuple[str, ...] = get_args(SmoothShape)

PASTE_METHODS: tuple[str, ...] = ("cutmix", "fmix", "resizemix", "gridmix", "smoothmix", "saliencymix")
"""Methods that paste (part of) the partner over the sample through a box or a mask
instead of blending the whole images; they need the image size."""
CHOOSABLE_METHODS: tuple[str, ...] = ("mixup", *PASTE_METHODS)
"""The two-source methods ``method="choice"`` can choose among. Their parameters are
drawn in this order (whatever the order of ``choices``), after the choice itself."""


@dataclass(frozen=True)
class MixConfig:
    """What to mix and how; validated on construction.

    Args:
        method: ``"mixup"`` (convex combination), ``"cutmix"`` (paste a box from the
            partner), ``"kway"`` (convex combination of ``k`` samples with
            Dirichlet(α·1_k) weights), the mask family: ``"fmix"`` (a low-frequency
            Fourier mask), ``"resizemix"`` (the whole partner shrunk into a box),
            ``"gridmix"`` (a grid of cells), ``"smoothmix"`` (a soft Gaussian or
            square blob), ``"saliencymix"`` (a CutMix box centred on the partner's
            saliency peak; placed from the images, see
            :func:`vicinal.mixing.place_boxes`), or a random choice among methods:
            ``"choice"`` (``choices``) and ``"switch"`` (CutMix with probability
            ``switch_prob``, else MixUp: ``choices=(("cutmix", p), ("mixup", 1-p))``).
            :mod:`vicinal.masks` documents each mask and its sources.
        alpha: MixUp / k-way concentration. λ ~ Beta(alpha, beta). ``0`` disables mixing.
        beta: second Beta parameter; defaults to ``alpha`` (symmetric, as in the paper).
        cutmix_alpha: concentration of CutMix's Beta(a, a) area draw.
        mask_alpha: concentration of the Beta(a, a) draw of λ for FMix, GridMix and
            SaliencyMix (1.0: the papers' CIFAR settings).
        granularity: one λ per ``"batch"``, per sample (``"elem"``, the keras.io
            reference), or per ``"pair"`` (a sample and its partner share λ and 1-λ;
            needs an involutive pairing: ``"flip"`` or ``"permute"``).
        pairing: partner of sample ``i``: ``"roll"`` (``i-1``, gather-free; relies on the
            batch order being random, as it is from a shuffled loader), ``"flip"``
            (``B-1-i``), ``"permute"`` (uniform random permutation), ``"derange"``
            (uniform random permutation without fixed points), or ``"stream"`` (row ``i``
            of a second, independently shuffled batch, as in the keras.io reference).
        p: probability that mixing is applied; ``p_mode`` says whether the coin is tossed
            once per batch or once per λ draw (unmixed samples keep their own label).
        switch_prob: probability of CutMix under ``method="switch"``.
        choices: for ``method="choice"``: ``((method, probability), ...)`` (or a dict)
            over :data:`CHOOSABLE_METHODS`, probabilities summing to 1. Each method
            takes its parameters from the fields of this config.
        choice_mode: ``"elem"``: the method is chosen per λ draw (per sample with
            ``granularity="elem"``); ``"batch"``: once per batch.
        k: number of samples combined by ``method="kway"`` (>= 2).
        correct_lam: CutMix label weight: the exact fraction of pixels kept once the box
            is clipped to the image (True), or the sampled λ (False, timm's
            ``correct_lam=False``).
        cutmix_minmax: ``(lo, hi)`` with ``0 <= lo < hi <= 1``: draw each box side
            uniformly in ``[lo, hi)`` of the image side instead of from the area λ
            (timm's ``cutmix_minmax``); the label weight is then the exact kept area.
        fmix_decay: FMix's spectral decay δ (amplitude 1/f^δ), > 0; 3 in the paper.
        fmix_max_soft: FMix's soft edge width in [0, 0.5]; 0 gives a binary mask.
        resize_scale: ResizeMix's range ``(lo, hi)`` of the pasted partner's side as a
            fraction of the image's, ``0 < lo <= hi <= 1``; (0.1, 0.8) in the paper.
        grid: GridMix's range ``(lo, hi)`` of cells per side, ``1 <= lo <= hi``.
        smooth_shape: SmoothMix's mask, ``"gaussian"`` or ``"square"``.
        smooth_sigma: SmoothMix's range of the mask's width as a fraction of the image
            side, ``0 < lo <= hi``; (0.25, 0.5) in the paper.
    """

    method: Method = "mixup"
    alpha: float = 0.2
    beta: float | None = None
    cutmix_alpha: float = 1.0
    granularity: Granularity = "elem"
    pairing: Pairing = "roll"
    p: float = 1.0
    p_mode: ApplyMode = "batch"
    switch_prob: float = 0.5
    k: int = 2
    correct_lam: bool = True
    cutmix_minmax: tuple[float, float] | None = None
    mask_alpha: float = 1.0
    choices: tuple[tuple[str, float], ...] | None = None
    choice_mode: ApplyMode = "elem"
    fmix_decay: float = 3.0
    fmix_max_soft: float = 0.0
    resize_scale: tuple[float, float] = (0.1, 0.8)
    grid: tuple[int, int] = (2, 6)
    smooth_shape: SmoothShape = "gaussian"
    smooth_sigma: tuple[float, float] = (0.25, 0.5)

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        check_concentration("alpha", self.alpha)
        if self.beta is not None:
            check_concentration("beta", self.beta)
        check_concentration("cutmix_alpha", self.cutmix_alpha)
        check_concentration("mask_alpha", self.mask_alpha)
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("pairing", self.pairing, PAIRINGS)
        check_probability("p", self.p)
        check_choice("p_mode", self.p_mode, APPLY_MODES)
        check_probability("switch_prob", self.switch_prob)
        check_choice("choice_mode", self.choice_mode, APPLY_MODES)
        check_int("k", self.k, minimum=2)
        if self.granularity == "pair" and self.pairing not in ("flip", "permute"):
            raise ValueError(
                f"granularity='pair' needs pairing 'flip' or 'permute' (an involution), got {self.pairing!r}"
            )
        if self.method == "kway" and self.pairing in ("flip", "stream"):
            raise ValueError(f"method='kway' needs pairing 'roll', 'permute' or 'derange', got {self.pairing!r}")
        if self.method == "kway" and self.granularity == "pair":
            raise ValueError("method='kway' does not support granularity='pair'")
        if self.method != "kway" and self.k != 2:
            raise ValueError(f"k is only used by method='kway'; got k={self.k} with method={self.method!r}")
        if not isinstance(self.correct_lam, bool):
            raise TypeError(f"correct_lam must be a bool, got {type(self.correct_lam).__name__}")
        if self.cutmix_minmax is not None:
            mm = self.cutmix_minmax
            if (
                len(mm) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in mm)
                or not 0 <= mm[0] < mm[1] <= 1
            ):
                raise ValueError(f"cutmix_minmax must be (lo, hi) with 0 <= lo < hi <= 1, got {mm!r}")
            object.__setattr__(self, "cutmix_minmax", (float(mm[0]), float(mm[1])))
        check_real_range("fmix_decay", self.fmix_decay, low=0.0, high=None, low_open=True)
        check_real_range("fmix_max_soft", self.fmix_max_soft, low=0.0, high=0.5)
        object.__setattr__(self, "resize_scale", _check_range("resize_scale", self.resize_scale, 0.0, 1.0))
        object.__setattr__(self, "smooth_sigma", _check_range("smooth_sigma", self.smooth_sigma, 0.0, None))
        check_choice("smooth_shape", self.smooth_shape, SMOOTH_SHAPES)
        grid = self.grid
        if (
            not isinstance(grid, (tuple, list))
            or len(grid) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in grid)
            or not 1 <= grid[0] <= grid[1]
        ):
            raise ValueError(f"grid must be (lo, hi) cells per side with 1 <= lo <= hi, got {grid!r}")
        object.__setattr__(self, "grid", (int(grid[0]), int(grid[1])))
        self._check_choices()

    def _check_choices(self) -> None:
        if self.method != "choice":
            if self.choices is not None:
                raise ValueError(f"choices is only used by method='choice'; got method={self.method!r}")
            if self.choice_mode != "elem":
                raise ValueError(f"choice_mode is only used by method='choice'; got method={self.method!r}")
            return
        if self.choices is None:
            raise ValueError("method='choice' needs choices: ((method, probability), ...) or a dict")
        items = list(self.choices.items()) if isinstance(self.choices, Mapping) else list(self.choices)
        expected = f"((method, probability), ...) with methods in {list(CHOOSABLE_METHODS)}"
        if not items or not all(isinstance(item, (tuple, list)) and len(item) == 2 for item in items):
            raise ValueError(f"choices must be {expected}, got {self.choices!r}")
        names = [check_choice("choices method", name, CHOOSABLE_METHODS) for name, _ in items]
        if len(set(names)) != len(names):
            raise ValueError(f"choices names a method twice: {names}")
        probs = [check_probability(f"choices probability of {name!r}", q) for name, q in items]
        if abs(sum(probs) - 1.0) > 1e-9:
            raise ValueError(f"choices' probabilities must sum to 1, got {sum(probs)} ({dict(zip(names, probs))})")
        object.__setattr__(self, "choices", tuple(zip(names, probs)))

    @property
    def num_sources(self) -> int:
        """Number of samples each output combines (the plan's K)."""
        return self.k if self.method == "kway" else 2

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods a plan of this config can use, in their draw order."""
        if self.method == "switch":
            return ("mixup", "cutmix")
        if self.method == "choice":
            assert self.choices is not None
            chosen = {name for name, _ in self.choices}
            return tuple(m for m in CHOOSABLE_METHODS if m in chosen)
        return (self.method,)

    @property
    def needs_image_size(self) -> bool:
        """Whether plans are drawn in pixels (a box or a mask), so need (H, W)."""
        return any(m in PASTE_METHODS for m in self.methods)

    @property
    def needs_images(self) -> bool:
        """Whether plans are completed from the images themselves (SaliencyMix's
        placement, :func:`vicinal.mixing.place_boxes`)."""
        return "saliencymix" in self.methods


def _check_range(name: str, value: object, low: float, high: float | None) -> tuple[float, float]:
    """``(lo, hi)`` with ``low < lo <= hi`` (``<= high``), as floats."""
    bound = "" if high is None else f" <= {high}"
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) for v in value)
        or not (low < value[0] <= value[1])
        or (high is not None and value[1] > high)
    ):
        raise ValueError(f"{name} must be (lo, hi) with {low} < lo <= hi{bound}, got {value!r}")
    return float(value[0]), float(value[1])


@dataclass(frozen=True, eq=False)
class MixPlan:
    """Every random decision for one batch of ``B`` samples combining ``K`` sources.

    Output sample ``i`` is made in two steps (the reference formula,
    :func:`vicinal.mixing.apply_plan`):

    1. blend: ``Σ_j input_weights[i, j] · source_j`` (source 0: the sample itself,
       source ``j``: its partner ``j``);
    2. paste, on rows where ``cut`` is True: with ``m`` the partner's per-pixel weight
       (the box's indicator from ``boxes``, or ``masks[i]``) and ``P`` the pasted
       image (partner 0, or partner 0 resampled through ``source_rows`` and
       ``source_cols``), ``out = blend · (1 - m) + P · m``.

    Attributes:
        weights: float64 (B, K); row ``i`` weighs sample ``i`` (column 0) and its
            partners (columns 1..K-1) in the mixed label. Rows are >= 0 and sum to 1.
            For pasted rows the partner weight is the exact mean of ``m`` (the pasted
            fraction; the sampled λ with CutMix's ``correct_lam=False``).
        partners: int64 (B, K-1); indices into the batch, or for ``source == "stream"``
            into the second batch (then ``partners[:, 0] == arange(B)``).
        source: ``"batch"`` (partners are rows of the same batch) or ``"stream"``.
        shift: for ``pairing="roll"``, ``partners[:, j] == (arange(B) - shift[j]) % B``,
            which lets the mixer read partners as shifted views instead of gathering.
        cut: bool (B,) or None; True where the partner is pasted rather than blended.
        boxes: int64 (B, 4) or None; ``(top, left, bottom, right)``, bottom/right
            exclusive: the region of the output taken from the partner, on ``cut`` rows
            that use a box (CutMix, ResizeMix, SaliencyMix); all 0 on other rows.
        image_size: (H, W) the plan was drawn for, for plans that paste; else None.
        stream_indices: int64 (B,) or None; for ``"stream"`` plans sampled with a
            ``dataset_size``, the dataset indices of the partner batch.
        masks: bool or float32 (B, H, W) in [0, 1], or None: the partner's per-pixel
            weight on ``cut`` rows that use a mask (FMix, GridMix, SmoothMix); all 0 on
            other rows. bool for binary masks, float32 when a soft mask is present.
        source_rows, source_cols: int64 (B, H) and (B, W), or None: the pasted image
            ``P[i, h, w] = partner_i[source_rows[i, h], source_cols[i, w]]`` (ResizeMix:
            nearest-neighbour resampling of the whole partner into its box); identity
            maps on other rows. None: ``P`` is partner 0 itself.
        unplaced: bool (B,) or None: rows whose box has its size but not yet its place
            (SaliencyMix before :func:`vicinal.mixing.place_boxes`); such a plan cannot
            be applied.
    """

    weights: np.ndarray
    partners: np.ndarray
    source: Literal["batch", "stream"] = "batch"
    shift: tuple[int, ...] | None = None
    cut: np.ndarray | None = None
    boxes: np.ndarray | None = None
    image_size: tuple[int, int] | None = None
    stream_indices: np.ndarray | None = None
    masks: np.ndarray | None = None
    source_rows: np.ndarray | None = None
    source_cols: np.ndarray | None = None
    unplaced: np.ndarray | None = None

    @property
    def batch_size(self) -> int:
        return int(self.weights.shape[0])

    @property
    def num_sources(self) -> int:
        return int(self.weights.shape[1])

    @property
    def lam(self) -> np.ndarray:
        """float64 (B,): the weight of each sample itself (λ in the mixup paper)."""
        return self.weights[:, 0]

    @property
    def is_identity(self) -> bool:
        """True when applying the plan returns the input unchanged."""
        return bool((self.weights[:, 0] == 1.0).all())

    @property
    def has_cut(self) -> bool:
        """True when at least one sample gets a box or a mask pasted."""
        return self.cut is not None and bool(self.cut.any())

    @property
    def is_placed(self) -> bool:
        """False while some box still awaits its place (:func:`vicinal.mixing.place_boxes`)."""
        return self.unplaced is None or not bool(self.unplaced.any())

    @property
    def input_weights(self) -> np.ndarray:
        """float64 (B, K): the weights that blend the *inputs*.

        Equal to :attr:`weights` except on pasted rows, which are ``(1, 0, ...)``:
        their partner's box or mask is pasted over the sample instead of blended. The
        label weights stay :attr:`weights` (the pasted fraction).
        """
        if not self.has_cut:
            return self.weights
        w = self.weights.copy()
        w[self.cut] = 0.0
        w[self.cut, 0] = 1.0
        return w


def identity_plan(plan: MixPlan) -> MixPlan:
    """A plan of the same shape as ``plan`` that leaves every sample as it is.

    Used to switch mixing off (``Mixer.enabled``, ``off_epoch``) without changing what
    a batch looks like: same partners and source, weights ``(1, 0, ...)``, no boxes.
    """
    weights = np.zeros_like(plan.weights)
    weights[:, 0] = 1.0
    return MixPlan(
        weights=weights,
        partners=plan.partners,
        source=plan.source,
        shift=plan.shift,
        image_size=plan.image_size,
        stream_indices=plan.stream_indices,
    )


# --------------------------------------------------------------------------- generators


def plan_generator(seed: int, *, epoch: int = 0, step: int = 0, rank: int = 0) -> np.random.Generator:
    """The generator that :func:`sample_plan` draws from for ``(seed, epoch, step, rank)``.

    Returned object is shared per thread and reset on the next call: use it at once.
    """
    return generator(seed, "plan", epoch=epoch, step=step, rank=rank)


def sample_choice(probs: np.ndarray, *, seed: int, epoch: int = 0, step: int = 0, rank: int = 0) -> int:
    """An index drawn with probabilities ``probs``, a pure function of its arguments.

    Independent of the plan of the same ``(seed, epoch, step, rank)``: Manifold Mixup
    uses it to choose the layer a step mixes at.

    Args:
        probs: float (n,), >= 0, summing to 1.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 1 or probs.size == 0 or (probs < 0).any() or not np.isclose(probs.sum(), 1.0):
        raise ValueError(f"probs must be a non-empty 1-d array of probabilities summing to 1, got {probs}")
    rng = generator(seed, "choice", epoch=epoch, step=step, rank=rank)
    return int(np.searchsorted(np.cumsum(probs), rng.random() * probs.sum(), side="right").clip(0, probs.size - 1))


@functools.lru_cache(maxsize=16)
def _epoch_order_cached(seed: int, epoch: int, n: int, stream: int) -> np.ndarray:
    order = generator(seed, "order", epoch=epoch, rank=stream).permutation(n)
    order.setflags(write=False)
    return order


def epoch_order(seed: int, epoch: int, n: int, *, stream: int = 0) -> np.ndarray:
    """A permutation of ``range(n)`` for one epoch, a pure function of its arguments.

    ``stream`` numbers independent orders of the same epoch: the training loader uses
    stream 0 and the reference's second shuffled stream uses stream 1.

    Returns:
        int64 (n,), read-only (cached: the same epoch is asked for once per batch).
    """
    check_int("seed", seed, minimum=0, maximum=MAX_SEED)
    check_int("epoch", epoch, minimum=0)
    check_int("n", n, minimum=1)
    check_int("stream", stream, minimum=0)
    return _epoch_order_cached(seed, epoch, n, stream)


# --------------------------------------------------------------------------- distributions


def _log_gamma(rng: np.random.Generator, shape: float, size: int) -> np.ndarray:
    """log of Gamma(shape, 1) draws, finite even when the draw itself underflows.

    Uses Gamma(a) = Gamma(a + 1) · U^(1/a) (U ~ Uniform(0, 1]), so for tiny ``a``
    (e.g. 0.01, where most draws are below the smallest double) the log is still
    exact instead of ``log(0) = -inf``.
    """
    g = rng.standard_gamma(shape + 1.0, size)
    u = rng.random(size)
    # log(g) + log(1 - u) / shape, in place: the same ops (same values), fewer allocations.
    np.subtract(1.0, u, out=u)  # in (0, 1]: log is finite
    np.log(g, out=g)
    np.log(u, out=u)
    np.divide(u, shape, out=u)
    np.add(g, u, out=g)
    return g


def _sigmoid(d: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-d) without overflow, and without cancellation for very negative d.

    Computed in place in ``d`` (which it returns) as ``exp(-logaddexp(0, -d))``.
    """
    np.negative(d, out=d)
    np.logaddexp(0.0, d, out=d)
    np.negative(d, out=d)
    np.exp(d, out=d)
    return d


def sample_beta(rng: np.random.Generator, alpha: float, beta: float, size: int) -> np.ndarray:
    """Draws of Beta(alpha, beta) as G1 / (G1 + G2), G1 ~ Gamma(alpha), G2 ~ Gamma(beta).

    This is the keras.io reference's ratio of two Gamma draws, evaluated in log space
    so that it never yields NaN: when both Gamma draws underflow (alpha = 0.01), λ is
    still the exact ratio, which is then almost surely 0 or 1, never a clamped 0.5.

    Returns:
        float64 (size,) in [0, 1].
    """
    if alpha == beta:
        lg = _log_gamma(rng, alpha, 2 * size)  # one call for both: half the overhead
        return _sigmoid(np.subtract(lg[:size], lg[size:], out=lg[:size]))
    lg1 = _log_gamma(rng, alpha, size)
    lg2 = _log_gamma(rng, beta, size)
    return _sigmoid(np.subtract(lg1, lg2, out=lg1))


def sample_dirichlet(rng: np.random.Generator, alpha: float, k: int, size: int) -> np.ndarray:
    """Draws of Dirichlet(alpha·1_k) as normalised Gamma draws, in log space.

    Returns:
        float64 (size, k), rows >= 0 summing to 1 (never NaN, even for tiny alpha).
    """
    lg = _log_gamma(rng, alpha, size * k).reshape(size, k)
    lg -= lg.max(axis=1, keepdims=True)
    w: np.ndarray = np.exp(lg)
    w /= w.sum(axis=1, keepdims=True)
    return w


# --------------------------------------------------------------------------- plans


@functools.lru_cache(maxsize=64)
def _fixed_pairing(
    pairing: str, granularity: str, k1: int, b: int
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...] | None, int]:
    """:func:`_partners_and_units` of a pairing that draws nothing (roll, flip, stream),
    cached read-only: a batch size is asked for once per step."""
    ar = np.arange(b)
    shift = None
    if pairing == "roll":
        shift = tuple(range(1, k1 + 1))
        partners = np.stack([(ar - s) % b for s in shift], axis=1)
    elif pairing == "flip":
        partners = (b - 1 - ar)[:, None]
    else:  # stream
        partners = ar[:, None]
    if granularity == "batch":
        units, n_units = np.zeros(b, dtype=np.int64), 1
    elif granularity == "elem":
        units, n_units = ar, b
    else:  # pair, with pairing "flip" (MixConfig refuses the other fixed pairings)
        units, n_units, shift = np.minimum(ar, b - 1 - ar), (b + 1) // 2, None
    partners = partners.astype(np.int64, copy=False)
    for a in (partners, units):
        a.setflags(write=False)
    return partners, units, shift, n_units


def _partners_and_units(
    rng: np.random.Generator, config: MixConfig, b: int
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...] | None, int]:
    """Partner indices (B, K-1), the λ-draw unit of each sample (B,), roll shifts, #units.

    The partners returned are a fresh (writable) array; the units may be read-only.
    """
    k1 = config.num_sources - 1
    if config.pairing in ("roll", "flip", "stream"):
        partners, units, shift, n_units = _fixed_pairing(config.pairing, config.granularity, k1, b)
        return partners.copy(), units, shift, n_units
    ar = np.arange(b)
    shift = None
    cols = []
    for _ in range(k1):
        perm = rng.permutation(b)
        if config.pairing == "derange" and b > 1:
            # Rejection keeps the derangement uniform; ~e tries on average.
            while np.any(perm == ar):
                perm = rng.permutation(b)
        cols.append(perm)
    partners = np.stack(cols, axis=1)

    if config.granularity == "batch":
        return partners, np.zeros(b, dtype=np.int64), shift, 1
    if config.granularity == "elem":
        return partners, ar, shift, b
    # pair: turn the pairing into an involution and give each pair one unit.
    units = np.empty(b, dtype=np.int64)
    perm = partners[:, 0]
    matched = np.empty(b, dtype=np.int64)
    half = b // 2
    first, second = perm[0 : 2 * half : 2], perm[1 : 2 * half : 2]
    matched[first], matched[second] = second, first
    units[first] = units[second] = np.arange(half)
    if b % 2:
        matched[perm[-1]] = perm[-1]  # the odd one out is paired with itself: unmixed
        units[perm[-1]] = half
    return matched[:, None], units, None, half + b % 2


def boxes_at(
    cy: np.ndarray, cx: np.ndarray, cut_h: np.ndarray, cut_w: np.ndarray, image_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of ``cut_h × cut_w`` centred at ``(cy, cx)``, clipped to the image; returns
    them and each box's exact kept fraction ``1 - area / (H·W)``."""
    h, w = image_size
    # np.clip's integer path builds iinfo objects each call; minimum/maximum give the
    # same values at a fraction of the cost.
    boxes = np.empty((cy.shape[0], 4), dtype=np.int64)
    np.subtract(cy, cut_h // 2, out=boxes[:, 0])
    np.subtract(cx, cut_w // 2, out=boxes[:, 1])
    np.add(boxes[:, 0], cut_h, out=boxes[:, 2])
    np.add(boxes[:, 1], cut_w, out=boxes[:, 3])
    np.maximum(boxes, 0, out=boxes)
    np.minimum(boxes, (h, w, h, w), out=boxes)
    top, left, bottom, right = boxes.T
    exact_lam = 1.0 - (bottom - top) * (right - left) / float(h * w)
    return boxes, exact_lam


def _box_sides(area_lam: np.ndarray, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Sides of a box covering ~(1 - λ) of the image: ``floor(side·√(1-λ))``."""
    ratio = np.sqrt(1.0 - area_lam)
    return np.floor(image_size[0] * ratio).astype(np.int64), np.floor(image_size[1] * ratio).astype(np.int64)


def _minmax_boxes(
    rng: np.random.Generator, n: int, image_size: tuple[int, int], minmax: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes whose sides are uniform in ``[lo, hi)`` of the image's, placed inside it."""
    h, w = image_size
    cut_h = rng.integers(int(h * minmax[0]), max(int(h * minmax[1]), int(h * minmax[0]) + 1), size=n)
    cut_w = rng.integers(int(w * minmax[0]), max(int(w * minmax[1]), int(w * minmax[0]) + 1), size=n)
    top = rng.integers(0, h - cut_h + 1)
    left = rng.integers(0, w - cut_w + 1)
    boxes = np.stack([top, left, top + cut_h, left + cut_w], axis=1)
    return boxes, 1.0 - cut_h * cut_w / float(h * w)


def resize_maps(boxes: np.ndarray, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour maps that shrink a whole (H, W) image into each box.

    Output pixel ``(h, w)`` inside box ``(top, left, bottom, right)`` reads source pixel
    ``(floor((h - top)·H / bh), floor((w - left)·W / bw))`` (``bh``, ``bw``: the box's
    sides), the rule of ``torch.nn.functional.interpolate(mode="nearest")``, which
    OpenMixup's ResizeMix uses; outside the box the maps are the identity.

    Returns:
        int64 (n, H) row and (n, W) column maps, in [0, H) and [0, W).
    """
    h, w = image_size
    top, left, bottom, right = (boxes[:, i, None] for i in range(4))
    ys, xs = np.arange(h)[None, :], np.arange(w)[None, :]
    bh, bw = np.maximum(bottom - top, 1), np.maximum(right - left, 1)
    rows = np.where((ys >= top) & (ys < bottom), ((ys - top) * h) // bh, ys)
    cols = np.where((xs >= left) & (xs < right), ((xs - left) * w) // bw, xs)
    return np.clip(rows, 0, h - 1).astype(np.int64), np.clip(cols, 0, w - 1).astype(np.int64)


@dataclass
class _Draw:
    """One method's draws for ``n`` λ units: the units' label weight of the sample
    itself and, for pasting methods, what is pasted."""

    lam: np.ndarray  # float64 (n,)
    cut: bool = False
    boxes: np.ndarray | None = None  # int64 (n, 4)
    masks: np.ndarray | None = None  # bool / float32 (n, H, W)
    resized: bool = False  # boxes hold the whole partner, shrunk
    unplaced: bool = False  # boxes have their size only (SaliencyMix)


def _beta_or_constant(rng: np.random.Generator, a: float, b: float, n: int) -> np.ndarray:
    """Beta(a, b) draws; Beta(0, b>0) puts all its mass on 0 and Beta(a>0, 0) on 1, and
    Beta(0, 0) is "no mixing" (1) by convention. No draw is made for a constant."""
    if a > 0 and b > 0:
        return sample_beta(rng, a, b, n)
    return np.full(n, 0.0 if (a == 0 and b > 0) else 1.0)


def _draw_method(
    rng: np.random.Generator, config: MixConfig, method: str, n: int, image_size: tuple[int, int] | None
) -> _Draw:
    """The draws of one two-source ``method`` for ``n`` units, from ``rng``."""
    if method == "mixup":
        beta = config.alpha if config.beta is None else config.beta
        return _Draw(lam=_beta_or_constant(rng, config.alpha, beta, n))
    assert image_size is not None
    h, w = image_size
    if method == "cutmix":
        if config.cutmix_minmax is not None:
            boxes, lam = _minmax_boxes(rng, n, image_size, config.cutmix_minmax)
        else:
            area_lam = (
                np.ones(n)
                if config.cutmix_alpha == 0
                else sample_beta(rng, config.cutmix_alpha, config.cutmix_alpha, n)
            )
            cut_h, cut_w = _box_sides(area_lam, image_size)
            boxes, exact_lam = boxes_at(
                rng.integers(0, h, size=n), rng.integers(0, w, size=n), cut_h, cut_w, image_size
            )
            lam = exact_lam if config.correct_lam else area_lam
        return _Draw(lam=lam, cut=True, boxes=boxes)
    if method == "saliencymix":
        cut_h, cut_w = _box_sides(_beta_or_constant(rng, config.mask_alpha, config.mask_alpha, n), image_size)
        zeros = np.zeros(n, dtype=np.int64)
        boxes = np.stack([zeros, zeros, cut_h, cut_w], axis=1)  # sizes; place_boxes centres them
        return _Draw(lam=1.0 - cut_h * cut_w / float(h * w), cut=True, boxes=boxes, unplaced=True)
    if method == "resizemix":
        lo, hi = config.resize_scale
        tau = rng.uniform(lo, hi, size=n)
        bh = np.clip(np.floor(tau * h), 1, h).astype(np.int64)
        bw = np.clip(np.floor(tau * w), 1, w).astype(np.int64)
        top = np.floor(rng.random(n) * (h - bh + 1)).astype(np.int64)
        left = np.floor(rng.random(n) * (w - bw + 1)).astype(np.int64)
        boxes = np.stack([top, left, top + bh, left + bw], axis=1)
        return _Draw(lam=1.0 - bh * bw / float(h * w), cut=True, boxes=boxes, resized=True)
    if method == "fmix":
        lam = _beta_or_constant(rng, config.mask_alpha, config.mask_alpha, n)
        m = masks.fmix_masks(rng, lam, image_size, decay=config.fmix_decay, max_soft=config.fmix_max_soft)
    elif method == "gridmix":
        lam = _beta_or_constant(rng, config.mask_alpha, config.mask_alpha, n)
        m = masks.gridmix_masks(rng, lam, image_size, grid=config.grid)
    else:  # smoothmix
        m = masks.smoothmix_masks(rng, n, image_size, shape=config.smooth_shape, sigma=config.smooth_sigma)
    # The label weight is the exact mean of the rendered mask (float64 sums).
    return _Draw(lam=1.0 - m.reshape(n, -1).mean(axis=1, dtype=np.float64), cut=True, masks=m)


def _choice_table(config: MixConfig) -> tuple[tuple[str, ...], np.ndarray]:
    """The methods a choice config chooses among, in ``choices`` order, and their
    cumulative probabilities. ``"switch"`` is the choice ``(cutmix, p), (mixup, 1-p)``."""
    if config.method == "switch":
        return ("cutmix", "mixup"), np.cumsum([config.switch_prob, 1.0 - config.switch_prob])
    assert config.choices is not None
    names = tuple(name for name, _ in config.choices)
    return names, np.cumsum([q for _, q in config.choices])


def _draw_units(
    rng: np.random.Generator, config: MixConfig, n: int, image_size: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray | None, list[tuple[str, _Draw]]]:
    """λ-unit draws: label weights (n, K), and for configs that paste the per-unit index
    into the returned ``(method, draw)`` list (None when nothing can be pasted)."""
    k = config.num_sources
    if config.method == "kway":
        if config.alpha > 0:
            return sample_dirichlet(rng, config.alpha, k, n), None, []
        w = np.zeros((n, k))
        w[:, 0] = 1.0
        return w, None, []
    if config.method in ("switch", "choice"):
        names, cum = _choice_table(config)
        u = rng.random(1 if config.choice_mode == "batch" else n)
        chosen = np.searchsorted(cum, u, side="right").clip(0, len(names) - 1)
        chosen = np.broadcast_to(chosen, (n,))
        # Every method in the choice is drawn for every unit, in CHOOSABLE_METHODS order,
        # so a unit's draws do not depend on which method another unit got.
        draws = [(m, _draw_method(rng, config, m, n, image_size)) for m in config.methods]
        order = [next(j for j, (m, _) in enumerate(draws) if m == name) for name in names]
        which = np.asarray(order)[chosen]
    else:
        if config.method == "cutmix":
            # CutMix plans draw (and ignore) a MixUp λ first: kept so that their draws stay
            # those of every earlier version.
            beta = config.alpha if config.beta is None else config.beta
            _beta_or_constant(rng, config.alpha, beta, n)
        draws = [(config.method, _draw_method(rng, config, config.method, n, image_size))]
        which = np.zeros(n, dtype=np.int64)
    lam = draws[0][1].lam if len(draws) == 1 else np.choose(which, [d.lam for _, d in draws])
    weights = np.empty((n, 2))
    weights[:, 0] = lam
    np.subtract(1.0, lam, out=weights[:, 1])
    if not any(d.cut for _, d in draws):
        return weights, None, draws
    return weights, which, draws


def _paste_fields(
    draws: list[tuple[str, _Draw]], which: np.ndarray, image_size: tuple[int, int]
) -> dict[str, np.ndarray | None]:
    """Combine the methods' per-unit pastes into a plan's ``cut``, ``boxes``, ``masks``,
    ``source_rows``/``source_cols`` and ``unplaced`` (per unit)."""
    n = which.shape[0]
    h, w = image_size
    if len(draws) == 1:  # one method: its arrays as they are (no per-row selection)
        d = draws[0][1]
        rows = np.ones(n, dtype=bool)
        return {
            "cut": rows,
            "boxes": d.boxes,
            "masks": d.masks,
            "resized": rows.copy() if d.resized else None,
            "unplaced": rows.copy() if d.unplaced else None,
        }
    cut = np.zeros(n, dtype=bool)
    boxes: np.ndarray | None = None
    masks: np.ndarray | None = None
    resized: np.ndarray | None = None
    unplaced: np.ndarray | None = None
    any_boxes = any(d.boxes is not None for _, d in draws)
    any_masks = [d.masks for _, d in draws if d.masks is not None]
    if any_boxes:
        boxes = np.zeros((n, 4), dtype=np.int64)
    if any_masks:
        soft = any(m.dtype != np.bool_ for m in any_masks)
        masks = np.zeros((n, h, w), dtype=np.float32 if soft else np.bool_)
    # The fields a plan has depend on its config only, never on which rows got what.
    if any(d.resized for _, d in draws):
        resized = np.zeros(n, dtype=bool)
    if any(d.unplaced for _, d in draws):
        unplaced = np.zeros(n, dtype=bool)
    for j, (_, d) in enumerate(draws):
        rows = which == j
        if not d.cut or not rows.any():
            continue
        cut |= rows
        if d.boxes is not None:
            assert boxes is not None
            boxes[rows] = d.boxes[rows]
            if d.resized:
                assert resized is not None
                resized[rows] = True
            if d.unplaced:
                assert unplaced is not None
                unplaced[rows] = True
        else:
            assert masks is not None and d.masks is not None
            masks[rows] = d.masks[rows]
    return {"cut": cut, "boxes": boxes, "masks": masks, "resized": resized, "unplaced": unplaced}


def sample_plan(
    config: MixConfig,
    batch_size: int,
    *,
    seed: int,
    epoch: int = 0,
    step: int = 0,
    rank: int = 0,
    image_size: tuple[int, int] | None = None,
    dataset_size: int | None = None,
    stream_offset: int | None = None,
) -> MixPlan:
    """Draw the plan for one batch; a pure function of its arguments.

    Args:
        config: what to mix.
        batch_size: B >= 1. With B = 1 in-batch partners are the sample itself, so
            MixUp and CutMix return it unchanged (its label stays one-hot).
        seed, epoch, step, rank: the counter that makes the plan reproducible.
        image_size: (H, W) of the images; required by the methods that paste
            (:attr:`MixConfig.needs_image_size`: boxes and masks are drawn in pixels).
        dataset_size: for ``pairing="stream"``, the number of training samples; the
            plan then carries ``stream_indices``, the partner batch's dataset indices,
            taken from :func:`epoch_order` stream 1 at ``stream_offset`` (default
            ``step * batch_size``; positions past ``dataset_size`` wrap around).

    Returns:
        A :class:`MixPlan` with K = ``config.num_sources`` columns. For SaliencyMix
        its boxes still need their place: pass it to :func:`vicinal.mixing.place_boxes`
        with the images (the transforms do).
    """
    if not isinstance(config, MixConfig):
        raise TypeError(f"config must be a MixConfig, got {type(config).__name__}")
    b = check_int("batch_size", batch_size, minimum=1)
    rng = plan_generator(seed, epoch=epoch, step=step, rank=rank)
    if config.needs_image_size:
        if image_size is None or len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(
                f"image_size must be (H, W) with H, W >= 1 for method={config.method!r}, got {image_size!r}"
            )
        image_size = (int(image_size[0]), int(image_size[1]))

    partners, units, shift, n_units = _partners_and_units(rng, config, b)

    # Whether each unit is mixed at all (p); no draw is made when it cannot vary.
    applied_units = None
    if config.p < 1.0:
        if config.p_mode == "batch":
            applied_units = np.full(n_units, rng.random() < config.p)
        else:
            applied_units = rng.random(n_units) < config.p
    weights_units, which, draws = _draw_units(rng, config, n_units, image_size)
    paste = None
    if which is not None:
        assert image_size is not None
        paste = _paste_fields(draws, which, image_size)

    if applied_units is not None:
        weights_units[~applied_units] = 0.0
        weights_units[~applied_units, 0] = 1.0
        if paste is not None:
            paste["cut"] &= applied_units

    per_sample = config.granularity == "elem"  # units are the samples themselves

    def per_row(a: np.ndarray | None) -> np.ndarray | None:
        return a if a is None or per_sample else a[units]

    weights = per_row(weights_units)
    fields: dict[str, np.ndarray | None] = {"cut": None, "boxes": None, "masks": None}
    source_rows = source_cols = unplaced = None
    if paste is not None:
        cut = per_row(paste["cut"])
        assert cut is not None
        fields = {"cut": cut, "boxes": per_row(paste["boxes"]), "masks": per_row(paste["masks"])}
        not_cut = ~cut
        for key in ("boxes", "masks"):
            value = fields[key]
            if value is not None:
                if not per_sample:
                    value = value.copy()
                value[not_cut] = 0
                fields[key] = value
        if paste["unplaced"] is not None:
            unplaced = per_row(paste["unplaced"]) & cut
        if paste["resized"] is not None:
            assert image_size is not None and fields["boxes"] is not None
            resized = per_row(paste["resized"]) & cut
            source_rows, source_cols = resize_maps(np.where(resized[:, None], fields["boxes"], 0), image_size)

    stream_indices = None
    if config.pairing == "stream" and dataset_size is not None:
        n = check_int("dataset_size", dataset_size, minimum=1)
        offset = step * b if stream_offset is None else check_int("stream_offset", stream_offset, minimum=0)
        # Positions past the end wrap around, as a distributed sampler pads its last shard.
        stream_indices = epoch_order(seed, epoch, n, stream=1)[(offset + np.arange(b)) % n]

    # The dataclass's __init__ sets each field through object.__setattr__ (frozen): filling
    # the instance dict directly is the same object at a third of the cost.
    plan = object.__new__(MixPlan)
    plan.__dict__.update(
        weights=weights,
        partners=partners.astype(np.int64, copy=False),
        source="stream" if config.pairing == "stream" else "batch",
        shift=shift,
        image_size=image_size if config.needs_image_size else None,
        stream_indices=stream_indices,
        source_rows=source_rows,
        source_cols=source_cols,
        unplaced=unplaced,
        **fields,
    )
    return plan


def replace_boxes(plan: MixPlan, rows: np.ndarray, boxes: np.ndarray) -> MixPlan:
    """``plan`` with the boxes of ``rows`` (bool (B,)) replaced by ``boxes`` (int64
    (B, 4), read on ``rows``), those rows' label weights set to the boxes' exact kept
    fractions, and those rows marked placed."""
    assert plan.boxes is not None and plan.image_size is not None
    h, w = plan.image_size
    new_boxes = plan.boxes.copy()
    new_boxes[rows] = boxes[rows]
    area = (new_boxes[:, 2] - new_boxes[:, 0]) * (new_boxes[:, 3] - new_boxes[:, 1]) / float(h * w)
    weights = plan.weights.copy()
    weights[rows, 0] = 1.0 - area[rows]
    weights[rows, 1] = area[rows]
    unplaced = None if plan.unplaced is None else plan.unplaced & ~rows
    return dataclasses.replace(plan, boxes=new_boxes, weights=weights, unplaced=unplaced)
