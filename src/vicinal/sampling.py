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

import functools
import threading
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from vicinal._checks import check_choice, check_concentration, check_int, check_probability

Method = Literal["mixup", "cutmix", "switch", "kway"]
Granularity = Literal["batch", "elem", "pair"]
Pairing = Literal["roll", "flip", "permute", "derange", "stream"]
ApplyMode = Literal["batch", "elem"]

METHODS: tuple[str, ...] = get_args(Method)
GRANULARITIES: tuple[str, ...] = get_args(Granularity)
PAIRINGS: tuple[str, ...] = get_args(Pairing)
APPLY_MODES: tuple[str, ...] = get_args(ApplyMode)

_MAX_SEED = 2**63 - 1
# Counter word 3 separates independent uses of one (seed, epoch): plans vs. epoch orders.
_PURPOSE_PLAN = 0
_PURPOSE_ORDER = 1 << 32
_PURPOSE_CHOICE = 2 << 32


@dataclass(frozen=True)
class MixConfig:
    """What to mix and how; validated on construction.

    Args:
        method: ``"mixup"`` (convex combination), ``"cutmix"`` (paste a box from the
            partner), ``"switch"`` (CutMix with probability ``switch_prob``, else MixUp,
            decided per λ draw), ``"kway"`` (convex combination of ``k`` samples with
            Dirichlet(α·1_k) weights).
        alpha: MixUp / k-way concentration. λ ~ Beta(alpha, beta). ``0`` disables mixing.
        beta: second Beta parameter; defaults to ``alpha`` (symmetric, as in the paper).
        cutmix_alpha: concentration of CutMix's Beta(a, a) area draw.
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
        k: number of samples combined by ``method="kway"`` (>= 2).
        correct_lam: CutMix label weight: the exact fraction of pixels kept once the box
            is clipped to the image (True), or the sampled λ (False, timm's
            ``correct_lam=False``).
        cutmix_minmax: ``(lo, hi)`` with ``0 <= lo < hi <= 1``: draw each box side
            uniformly in ``[lo, hi)`` of the image side instead of from the area λ
            (timm's ``cutmix_minmax``); the label weight is then the exact kept area.
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

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        check_concentration("alpha", self.alpha)
        if self.beta is not None:
            check_concentration("beta", self.beta)
        check_concentration("cutmix_alpha", self.cutmix_alpha)
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("pairing", self.pairing, PAIRINGS)
        check_probability("p", self.p)
        check_choice("p_mode", self.p_mode, APPLY_MODES)
        check_probability("switch_prob", self.switch_prob)
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

    @property
    def num_sources(self) -> int:
        """Number of samples each output combines (the plan's K)."""
        return self.k if self.method == "kway" else 2

    @property
    def needs_image_size(self) -> bool:
        return self.method in ("cutmix", "switch")


@dataclass(frozen=True, eq=False)
class MixPlan:
    """Every random decision for one batch of ``B`` samples combining ``K`` sources.

    Attributes:
        weights: float64 (B, K); row ``i`` weighs sample ``i`` (column 0) and its
            partners (columns 1..K-1) in the mixed label. Rows are >= 0 and sum to 1.
            For CutMix rows the partner weight is the exact fraction of pixels pasted
            from the partner (the sampled λ with ``correct_lam=False``).
        partners: int64 (B, K-1); indices into the batch, or for ``source == "stream"``
            into the second batch (then ``partners[:, 0] == arange(B)``).
        shift: for ``pairing="roll"``, ``partners[:, j] == (arange(B) - shift[j]) % B``,
            which lets the mixer read partners as shifted views instead of gathering.
        cut: bool (B,) or None; True where the sample is CutMix'ed rather than MixUp'ed.
        boxes: int64 (B, 4) or None; ``(top, left, bottom, right)``, bottom/right
            exclusive, the region taken from the partner where ``cut`` is True.
        source: ``"batch"`` (partners are rows of the same batch) or ``"stream"``.
        stream_indices: int64 (B,) or None; for ``"stream"`` plans sampled with a
            ``dataset_size``, the dataset indices of the partner batch.
    """

    weights: np.ndarray
    partners: np.ndarray
    source: Literal["batch", "stream"] = "batch"
    shift: tuple[int, ...] | None = None
    cut: np.ndarray | None = None
    boxes: np.ndarray | None = None
    image_size: tuple[int, int] | None = None
    stream_indices: np.ndarray | None = None

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
        """True when at least one sample gets a CutMix box."""
        return self.cut is not None and bool(self.cut.any())

    @property
    def input_weights(self) -> np.ndarray:
        """float64 (B, K): the weights that blend the *inputs*.

        Equal to :attr:`weights` except on CutMix'ed rows, which are ``(1, 0, ...)``:
        their partner's box is pasted over the sample instead of blended. The label
        weights stay :attr:`weights` (the pasted area).
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

_local = threading.local()
_PHILOX_KEY_WORD_1 = 0x76696369


def _generator(seed: int, counter: tuple[int, int, int, int]) -> np.random.Generator:
    """A Philox generator positioned at ``counter`` under key ``seed``.

    Building a new ``Philox`` costs ~25 µs; resetting the state of a per-thread one
    costs ~4 µs, and ~1.5 µs when the state dict and its arrays are reused (the setter
    copies the values out of them). The result is the same generator.
    """
    state = getattr(_local, "state", None)
    if state is None:
        _local.bitgen = np.random.Philox(key=0)
        _local.gen = np.random.Generator(_local.bitgen)
        state = _local.state = {
            "bit_generator": "Philox",
            "state": {"counter": np.zeros(4, dtype=np.uint64), "key": np.zeros(2, dtype=np.uint64)},
            "buffer": np.zeros(4, dtype=np.uint64),
            "buffer_pos": 4,
            "has_uint32": 0,
            "uinteger": 0,
        }
        state["state"]["key"][1] = _PHILOX_KEY_WORD_1
    inner = state["state"]
    inner["counter"][:] = counter
    inner["key"][0] = seed
    _local.bitgen.state = state
    gen: np.random.Generator = _local.gen
    return gen


def _check_seed(seed: int) -> int:
    return check_int("seed", seed, minimum=0, maximum=_MAX_SEED)


def plan_generator(seed: int, *, epoch: int = 0, step: int = 0, rank: int = 0) -> np.random.Generator:
    """The generator that :func:`sample_plan` draws from for ``(seed, epoch, step, rank)``.

    Returned object is shared per thread and reset on the next call: use it at once.
    """
    _check_seed(seed)
    for name, value in (("epoch", epoch), ("step", step), ("rank", rank)):
        check_int(name, value, minimum=0)
    if rank >= 1 << 32:
        raise ValueError(f"rank must be < 2**32, got {rank}")
    return _generator(seed, (0, step, epoch, _PURPOSE_PLAN | rank))


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
    plan_generator(seed, epoch=epoch, step=step, rank=rank)  # validates the counter
    rng = _generator(seed, (0, step, epoch, _PURPOSE_CHOICE | rank))
    return int(np.searchsorted(np.cumsum(probs), rng.random() * probs.sum(), side="right").clip(0, probs.size - 1))


@functools.lru_cache(maxsize=16)
def _epoch_order_cached(seed: int, epoch: int, n: int, stream: int) -> np.ndarray:
    order = _generator(seed, (0, 0, epoch, _PURPOSE_ORDER | stream)).permutation(n)
    order.setflags(write=False)
    return order


def epoch_order(seed: int, epoch: int, n: int, *, stream: int = 0) -> np.ndarray:
    """A permutation of ``range(n)`` for one epoch, a pure function of its arguments.

    ``stream`` numbers independent orders of the same epoch: the training loader uses
    stream 0 and the reference's second shuffled stream uses stream 1.

    Returns:
        int64 (n,), read-only (cached: the same epoch is asked for once per batch).
    """
    _check_seed(seed)
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


def _cutmix_boxes(
    rng: np.random.Generator, area_lam: np.ndarray, image_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes covering ~(1 - λ) of the image, clipped to it; returns boxes and exact λ."""
    h, w = image_size
    n = area_lam.shape[0]
    ratio = np.sqrt(1.0 - area_lam)
    cut_h = np.floor(h * ratio).astype(np.int64)
    cut_w = np.floor(w * ratio).astype(np.int64)
    cy = rng.integers(0, h, size=n)
    cx = rng.integers(0, w, size=n)
    top = np.clip(cy - cut_h // 2, 0, h)
    left = np.clip(cx - cut_w // 2, 0, w)
    bottom = np.clip(cy - cut_h // 2 + cut_h, 0, h)
    right = np.clip(cx - cut_w // 2 + cut_w, 0, w)
    boxes = np.stack([top, left, bottom, right], axis=1)
    exact_lam = 1.0 - (bottom - top) * (right - left) / float(h * w)
    return boxes, exact_lam


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
        image_size: (H, W) of the images; required by CutMix (boxes are drawn in pixels).
        dataset_size: for ``pairing="stream"``, the number of training samples; the
            plan then carries ``stream_indices``, the partner batch's dataset indices,
            taken from :func:`epoch_order` stream 1 at ``stream_offset`` (default
            ``step * batch_size``; positions past ``dataset_size`` wrap around).

    Returns:
        A :class:`MixPlan` with K = ``config.num_sources`` columns.
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
    k = config.num_sources

    # Which units are mixed at all (p), and which of those are CutMix. No draw is made
    # for a decision that cannot vary (p = 1, method without a switch).
    applied_units = None
    if config.p < 1.0:
        if config.p_mode == "batch":
            applied_units = np.full(n_units, rng.random() < config.p)
        else:
            applied_units = rng.random(n_units) < config.p
    cut_units = None
    if config.method == "cutmix":
        cut_units = np.ones(n_units, dtype=bool)
    elif config.method == "switch":
        cut_units = rng.random(n_units) < config.switch_prob

    boxes_units = None
    if config.method == "kway":
        if config.alpha > 0:
            weights_units = sample_dirichlet(rng, config.alpha, k, n_units)
        else:
            weights_units = np.zeros((n_units, k))
            weights_units[:, 0] = 1.0
    else:
        beta = config.alpha if config.beta is None else config.beta
        if config.alpha > 0 and beta > 0:
            lam = sample_beta(rng, config.alpha, beta, n_units)
        else:
            # Beta(0, b>0) puts all its mass on 0 and Beta(a>0, 0) on 1; Beta(0, 0) is
            # "no mixing" by convention.
            lam = np.full(n_units, 0.0 if (config.alpha == 0 and beta > 0) else 1.0)
        if cut_units is not None:
            assert image_size is not None
            if config.cutmix_minmax is not None:
                boxes_units, cut_lam = _minmax_boxes(rng, n_units, image_size, config.cutmix_minmax)
            else:
                if config.cutmix_alpha > 0:
                    area_lam = sample_beta(rng, config.cutmix_alpha, config.cutmix_alpha, n_units)
                else:
                    area_lam = np.ones(n_units)
                boxes_units, exact_lam = _cutmix_boxes(rng, area_lam, image_size)
                cut_lam = exact_lam if config.correct_lam else area_lam
            lam = np.where(cut_units, cut_lam, lam)
        weights_units = np.empty((n_units, 2))
        weights_units[:, 0] = lam
        np.subtract(1.0, lam, out=weights_units[:, 1])

    if applied_units is not None:
        weights_units[~applied_units] = 0.0
        weights_units[~applied_units, 0] = 1.0
        if cut_units is not None:
            cut_units &= applied_units

    per_sample = config.granularity == "elem"  # units are the samples themselves
    weights = weights_units if per_sample else weights_units[units]
    cut = boxes = None
    if cut_units is not None:
        cut = cut_units if per_sample else cut_units[units]
        boxes = boxes_units if per_sample else boxes_units[units]  # type: ignore[index]
        boxes[~cut] = 0  # type: ignore[index]

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
        cut=cut,
        boxes=boxes,
        image_size=image_size if config.needs_image_size else None,
        stream_indices=stream_indices,
    )
    return plan
