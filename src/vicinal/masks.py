"""Masks and saliency maps for the mask-based mixing methods, in NumPy alone.

Every mask here is **the partner's per-pixel weight** ``m`` in ``[0, 1]``, of shape
``(n, H, W)``: ``m = 1`` where the pixel comes from the partner, ``0`` where it stays
the sample's own. The mixed image is ``x·(1 - m) + partner·m`` and the sample's own
label weight is ``1 - mean(m)``, the exact mean of the rendered mask (the caller takes
it in float64). Hard masks are ``bool`` arrays, soft ones ``float32``.

The mask functions take a :class:`numpy.random.Generator` as their first argument and
draw all of their randomness from it, a fixed number of draws for given arguments and
in a fixed order, so a plan drawn from a counter-based generator (Philox) stays a pure
function of its seed. The draws are vectorised over the samples.

* :func:`fmix_masks`: FMix (Harris et al. 2020), thresholded 1/f^δ Fourier noise.
* :func:`gridmix_masks`: a cell-grid mix (each cell of an n×n grid from the partner).
* :func:`smoothmix_masks`: SmoothMix (Lee et al. 2020), a Gaussian or soft-edged square.
* :func:`spectral_residual_saliency` and :func:`saliency_peaks`: the saliency map
  (Hou & Zhang 2007) and its argmax, for placing SaliencyMix's box (Uddin et al. 2021).

Nothing here imports torch or SciPy.

Example::

    >>> rng = np.random.Generator(np.random.Philox(key=0))
    >>> m = fmix_masks(rng, np.array([0.3, 0.75]), (4, 8))  # own weights λ; N = 32 pixels
    >>> m.shape, m.dtype
    ((2, 4, 8), dtype('bool'))
    >>> own = 32 - m.sum(axis=(1, 2))  # floor(λN) or ceil(λN) pixels stay the sample's
    >>> bool(own[0] in (9, 10)), int(own[1])
    (True, 24)
    >>> label_weight = 1.0 - m.mean(axis=(1, 2), dtype=np.float64)  # the sample's own
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from vicinal._checks import check_choice, check_int

__all__ = [
    "SMOOTHMIX_SHAPES",
    "fmix_masks",
    "gridmix_masks",
    "saliency_peaks",
    "smoothmix_masks",
    "spectral_residual_saliency",
]

SMOOTHMIX_SHAPES: tuple[str, ...] = ("gaussian", "square")

BoolMasks = npt.NDArray[np.bool_]
FloatMasks = npt.NDArray[np.float32]
Float64 = npt.NDArray[np.float64]

# Spectral residual: the working resolution and the blur of OpenCV's
# StaticSaliencySpectralResidual (64 x 64; GaussianBlur with a 5 x 5 kernel, sigma 8).
_SR_SIDE = 64
_SR_BLUR_TAPS = 5
_SR_BLUR_SIGMA = 8.0
# ITU-R BT.601 luma weights for an RGB image (what cv2.cvtColor(BGR2GRAY) applies to a
# BGR one).
_LUMA_RGB = (0.299, 0.587, 0.114)
# A working grey image (after the resize) whose standard deviation is at most this
# fraction of its largest absolute value is taken as constant (a resized constant image
# varies by rounding only).
_FLAT_RELATIVE_STD = 1e-10
# Fourier coefficients of the standardised image below this fraction of the RMS
# coefficient carry no information (rounding noise, exact zeros); they get this floor as
# their amplitude in the log spectrum and no weight in the reconstruction.
_SR_AMPLITUDE_FLOOR = 1e-6


# ----------------------------------------------------------------------------------
# argument checks


def _check_rng(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def _check_size(size: Any, *, min_pixels: int, method: str) -> tuple[int, int]:
    if isinstance(size, (str, bytes)) or not isinstance(size, Sequence) or len(size) != 2:
        raise ValueError(f"size must be a pair (H, W) of ints >= 1, got {size!r}")
    h = check_int("size[0] (H)", size[0], minimum=1)
    w = check_int("size[1] (W)", size[1], minimum=1)
    if h * w < min_pixels:
        raise ValueError(
            f"{method} needs an image of at least {min_pixels} pixels (H·W >= {min_pixels}), got size {h}x{w}"
        )
    return h, w


def _check_lam(lam: Any) -> Float64:
    arr = np.asarray(lam)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"lam must be a real array of shape (n,), got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"lam must be a 1-D array of shape (n,), got shape {arr.shape}")
    out = arr.astype(np.float64)
    bad = ~((out >= 0.0) & (out <= 1.0))  # also catches NaN
    if bad.any():
        first = int(np.argmax(bad))
        raise ValueError(
            f"lam must lie in [0, 1] (each sample's own weight), got {float(out[first])!r} at index {first}"
        )
    return out


def _check_real(name: str, value: Any, *, low: float, high: float, low_open: bool = False) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    ok = math.isfinite(v) and (v > low if low_open else v >= low) and v <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be finite and lie in {bracket}{low:g}, {high:g}], got {v!r}")
    return v


# ----------------------------------------------------------------------------------
# FMix


def _fourier_noise(rng: np.random.Generator, n: int, size: tuple[int, int], decay: float) -> Float64:
    """``n`` real images of size ``size`` whose spectrum has amplitude ~ 1/f^decay.

    Complex Gaussian coefficients (independent standard normal real and imaginary
    parts) on the ``rfft2`` grid ``(H, W//2 + 1)``, scaled by ``1/max(f, 1/max(H, W))^decay``
    with ``f`` the radial frequency in cycles per pixel, then ``irfft2`` at ``(H, W)``.
    """
    h, w = size
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    freq = np.sqrt(fy * fy + fx * fx)
    scale = np.maximum(freq, 1.0 / max(h, w)) ** -decay
    # (re, im) pairs, contiguous in the last axis, viewed as one complex128 each.
    spectrum = rng.standard_normal((n, h, w // 2 + 1, 2)).view(np.complex128)[..., 0]
    spectrum *= scale
    noise: Float64 = np.fft.irfft2(spectrum, s=(h, w), axes=(-2, -1))
    return noise


def _descending_ranks(values: Float64) -> npt.NDArray[np.int64]:
    """Rank of each entry of each row, 0 for the largest; ties go to the earlier index."""
    order = np.argsort(-values, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(values.shape[1], dtype=order.dtype), order.shape), axis=1)
    return ranks.astype(np.int64, copy=False)


def _top_k(values: Float64, k: npt.NDArray[np.int64]) -> BoolMasks:
    """Row ``i``: True at its ``k[i]`` largest entries; ties go to the earlier index.

    The same set as ``_descending_ranks(values) < k[:, None]``, by selection instead of
    a full sort: the ``k``-th largest value of each row is found with ``np.partition``,
    which takes one ``kth`` for all rows, so rows (whose ``k`` differ) are selected one
    at a time; the comparisons and the tie-breaking are vectorised.
    """
    n, size = values.shape
    threshold = np.full(n, np.inf)
    for i in range(n):
        if k[i] > 0:
            threshold[i] = np.partition(values[i], size - k[i])[size - k[i]]
    above = values > threshold[:, None]
    tied = values == threshold[:, None]
    room = k - above.sum(axis=1)
    chosen: BoolMasks = above | (tied & (np.cumsum(tied, axis=1) <= room[:, None]))
    return chosen


def fmix_masks(
    rng: np.random.Generator,
    lam: npt.ArrayLike,
    size: tuple[int, int],
    *,
    decay: float = 3.0,
    max_soft: float = 0.0,
) -> BoolMasks | FloatMasks:
    """FMix masks: low-frequency Fourier noise thresholded so that a share λ stays own.

    Harris et al., "FMix: Enhancing Mixed Sample Data Augmentation", arXiv:2002.12047
    (2020); official code github.com/ecs-vlc/FMix (``fmix.py``).

    Per sample: complex Gaussian noise on the ``rfft2`` frequency grid, amplitude scaled
    by ``1/f^decay`` with ``f = sqrt(fy² + fx²)`` in cycles per pixel and the frequency
    clamped below at ``1/max(H, W)`` (so the DC term gets ``max(H, W)^decay``), as in the
    official code; inverse real FFT at exactly ``(H, W)``. The pixels are ranked by their
    noise value, largest first, ties in row-major order (the earlier pixel ranks higher).
    The top ``k`` pixels stay the sample's own (``m = 0``), the rest come from the
    partner (``m = 1``).

    Count rule: ``k = floor(λN) + Bernoulli(frac(λN))`` with ``N = H·W`` (stochastic
    rounding, one uniform draw per sample), so ``k`` is ``floor(λN)`` or ``ceil(λN)``,
    ``|k/N - λ| < 1/N`` and ``E[k/N] = λ`` exactly. The own share of a hard mask is
    ``k/N``; ``1 - mean(m)`` is the label weight to use (not λ).

    ``max_soft > 0`` softens the edge as the official option does: with
    ``s = floor(N·min(max_soft, λ, 1 - λ))`` (clipped to ``[0, min(k, N - k)]``), the
    ``2s`` pixels ranked ``k - s .. k + s - 1`` get own weights falling linearly from 1 to
    0 in rank order (``m`` rising from 0 to 1). The band is symmetric about the
    threshold, so the mask's mean is still ``1 - k/N`` (to float32 rounding) and
    ``m > 0.5`` is exactly the hard mask drawn from the same generator state.

    The binarisation is by rank, never by the noise's values, so there is no min–max
    normalisation and nothing to divide: a constant noise image (all pixels tied) gives
    the first ``k`` pixels in row-major order to the sample.

    Deviations from the official code:

    * one mask per sample (the official code draws one per batch); for batch
      granularity pass a single λ and broadcast the row;
    * λ is this function's input (the caller draws λ ~ Beta(α, α)); the official
      ``sample_mask`` draws it itself;
    * the official ``make_low_freq_image`` reshapes its ``(..., 2)`` real/imaginary
      pairs into the frequency axis before ``irfftn``, so its spectrum is real-valued
      and each column's scale is that of half its frequency; here the noise is complex
      with the stated scale (the intended 1/f^δ spectrum). Its grid for odd W has one
      extra (negative-frequency) column, which ``irfftn`` drops; here the grid is the
      ``rfft2`` grid;
    * the official count is ``ceil(λN)`` or ``floor(λN)`` with probability 1/2 each, whose
      mean is off ``λN`` by ``1/2 - frac(λN)`` (unless λN is whole); here stochastic
      rounding as above;
    * the official mask is the *sample's* weight (``x·mask + x[perm]·(1 - mask)``); here
      ``m`` is the partner's (``m = 1 - mask``);
    * the official code min–max normalises the noise first (a division by zero on a
      constant image); the ranks do not need it.

    Args:
        rng: the generator all draws come from: ``n·H·(W//2 + 1)·2`` standard normals,
            then ``n`` uniforms.
        lam: shape ``(n,)``, each sample's OWN weight in ``[0, 1]``.
        size: ``(H, W)``, ``H·W >= 2``.
        decay: the decay power δ >= 0 of the amplitude spectrum (3 in the paper; 0 gives
            white noise, a uniformly random subset of pixels).
        max_soft: in ``[0, 0.5]``; 0 gives hard masks.

    Returns:
        ``bool`` ``(n, H, W)`` when ``max_soft == 0``, else ``float32`` ``(n, H, W)`` in
        ``[0, 1]``; ``True``/1 means "from the partner".
    """
    gen = _check_rng(rng)
    h, w = _check_size(size, min_pixels=2, method="FMix")
    lam_ = _check_lam(lam)
    decay_ = _check_real("decay", decay, low=0.0, high=math.inf)
    soft = _check_real("max_soft", max_soft, low=0.0, high=0.5)
    n = lam_.shape[0]
    pixels = h * w

    noise = _fourier_noise(gen, n, (h, w), decay_)
    target = lam_ * pixels
    floor = np.floor(target)
    k = np.clip(floor + (gen.random(n) < target - floor), 0, pixels).astype(np.int64)
    values = noise.reshape(n, pixels)
    if soft == 0.0:
        hard: BoolMasks = (~_top_k(values, k)).reshape(n, h, w)
        return hard
    ranks = _descending_ranks(values)
    band = np.floor(pixels * np.minimum(soft, np.minimum(lam_, 1.0 - lam_))).astype(np.int64)
    band = np.minimum(band, np.minimum(k, pixels - k))
    low = (k - band)[:, None]
    denominator = np.maximum(2 * band - 1, 1)[:, None].astype(np.float64)
    partner = np.clip((ranks - low) / denominator, 0.0, 1.0)
    partner[ranks < low] = 0.0
    partner[ranks >= (k + band)[:, None]] = 1.0
    masks: FloatMasks = partner.reshape(n, h, w).astype(np.float32)
    return masks


# ----------------------------------------------------------------------------------
# Grid mix


def gridmix_masks(
    rng: np.random.Generator,
    lam: npt.ArrayLike,
    size: tuple[int, int],
    *,
    grid: tuple[int, int] = (2, 6),
) -> BoolMasks:
    """Cell-grid masks: an n×n grid whose cells each come from the partner with probability 1 - λ.

    This is a documented algorithm of this module, not a port. Baek et al., "GridMix:
    Strong regularization through local context mapping", Pattern Recognition 109 (2021),
    mixes on a grid of patches but has no public code; what libraries ship as "GridMix"
    is Dobrynin's GridMixup (github.com/IlyaDobrynin/GridMixup), a different algorithm:
    a regular grid of *holes* (side ``√(1 - λ)`` of each period) inside one random crop.

    Per sample: ``n`` uniform on ``grid[0] .. grid[1]`` (inclusive), then every cell of the
    n×n grid is taken from the partner independently with probability ``1 - λ``, so
    ``E[mean(m)] = 1 - λ`` for any image size. Cell ``(a, b)`` covers rows
    ``floor(a·H/n) .. floor((a+1)·H/n) - 1`` and columns ``floor(b·W/n) .. floor((b+1)·W/n) - 1``:
    the cells tile the image exactly, aligned, for any H and W (non-square included).
    ``n`` is not clamped to the image: when ``H < n`` (or ``W < n``) some cells have
    zero rows (columns) and vanish, and each pixel still belongs to exactly one cell.

    Draws: ``n`` integers, then ``n·grid[1]²`` uniforms (cell ``(a, b)`` of sample ``i``
    uses uniform ``[i, a, b]``), whatever ``n`` each sample drew.

    Args:
        rng: the generator all draws come from.
        lam: shape ``(n,)``, each sample's OWN weight in ``[0, 1]``.
        size: ``(H, W)``, each >= 1.
        grid: ``(lo, hi)``, ints with ``1 <= lo <= hi``: the range of the grid's cells per side.

    Returns:
        ``bool`` ``(n, H, W)``, ``True`` where the pixel comes from the partner. The own
        label weight is ``1 - mean(m)`` of the realised mask, not λ.
    """
    gen = _check_rng(rng)
    h, w = _check_size(size, min_pixels=1, method="GridMix")
    lam_ = _check_lam(lam)
    if isinstance(grid, (str, bytes)) or not isinstance(grid, Sequence) or len(grid) != 2:
        raise ValueError(f"grid must be a pair (lo, hi) of ints with 1 <= lo <= hi, got {grid!r}")
    lo = check_int("grid[0]", grid[0], minimum=1)
    hi = check_int("grid[1]", grid[1], minimum=1)
    if lo > hi:
        raise ValueError(f"grid must be a pair (lo, hi) with 1 <= lo <= hi, got {grid!r}")
    n = lam_.shape[0]

    cells: npt.NDArray[np.int64] = np.asarray(gen.integers(lo, hi, endpoint=True, size=n), dtype=np.int64)
    partner = gen.random((n, hi, hi)) < (1.0 - lam_)[:, None, None]
    # Pixel y lies in cell a iff floor(a·H/n) <= y < floor((a+1)·H/n), i.e. a = ceil((y+1)·n/H) - 1.
    rows = ((np.arange(h, dtype=np.int64)[None, :] + 1) * cells[:, None] - 1) // h
    cols = ((np.arange(w, dtype=np.int64)[None, :] + 1) * cells[:, None] - 1) // w
    masks: BoolMasks = partner[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return masks


# ----------------------------------------------------------------------------------
# SmoothMix


def smoothmix_masks(
    rng: np.random.Generator,
    n: int,
    size: tuple[int, int],
    *,
    shape: str = "gaussian",
    sigma: tuple[float, float] = (0.25, 0.5),
) -> FloatMasks:
    """SmoothMix masks: a smooth bump G at a uniform centre; G is the partner's weight.

    Lee et al., "SmoothMix: a Simple Yet Effective Data Augmentation to Train Robust
    Classifiers", CVPR Workshops 2020. No code by the authors was found; the
    implementations read for this one are OpenMixup's
    (``openmixup/models/augments/smoothmix.py``) and a third-party copy of the same
    Gaussian kernel code. The paper's own text was not at hand when this was written:
    the Gaussian follows those implementations, the square is this module's definition
    (below), and both should be checked against the paper.

    Per sample: a centre ``(cy, cx)`` uniform on the continuous image ``[0, H) × [0, W)``
    (pixel ``(i, j)`` has its centre at ``(i + 0.5, j + 0.5)``, so the pixel holding the
    centre, the mask's maximum, is uniform over the pixels), and ``s ~ U(sigma[0], sigma[1])``,
    one draw shared by both axes (the implementations draw one σ for both), scaled per
    axis by the side: ``σ_y = s·H``, ``σ_x = s·W``.

    * ``"gaussian"``: ``G = exp(-((y - cy)²/(2σ_y²) + (x - cx)²/(2σ_x²)))``, 1 at the
      centre; with the default ``sigma=(0.25, 0.5)`` the implementations' range
      ``σ ~ U(0.25, 0.5)·H``.
    * ``"square"``: an axis-aligned square (in units of each side) of half side
      ``a_y = s·H``, ``a_x = s·W`` with linear ramps: per axis
      ``p(d) = clip((1.5a - d)/a, 0, 1)`` of the distance ``d`` to the centre (1 up to
      ``a/2``, 0.5 at the square's edge ``a``, 0 from ``1.5a``), ``G = p_y·p_x``. Neither
      implementation has a square; its size range (``sigma``) and ramp width (``a``)
      are this module's choice.

    G extends past the image edges and is cut there, as in the implementations.

    Which label gets ``mean(G)``: the paper writes ``x = G·x_a + (1 - G)·x_b`` with
    ``λ = mean(G)`` the weight of ``y_a``, the image G multiplies. Here G multiplies the
    partner: the mixed image is ``x·(1 - G) + partner·G``, the partner's label weight is
    ``mean(G)`` and the sample's own is ``1 - mean(G)``. OpenMixup's ``smoothmix`` blends
    ``img·(1 - G) + img[perm]·G`` but returns ``mean(G)`` as the weight of ``img``'s own
    label: inverted targets (with ``G ≡ 1`` the image is the partner's and the label the
    sample's).

    Deviations from the implementations: one mask per sample with a continuous centre
    (they draw one integer pixel centre per batch); ``σ`` scales with each side (they
    build an ``H × H`` kernel, so non-square images fail to broadcast).

    Draws: ``3n`` uniforms, as an ``(n, 3)`` array ``(cy, cx, s)``.

    Args:
        rng: the generator all draws come from.
        n: number of masks (>= 0).
        size: ``(H, W)``, each >= 1.
        shape: ``"gaussian"`` or ``"square"``.
        sigma: ``(lo, hi)`` with ``0 < lo <= hi``: the range of ``s`` (fractions of the side).

    Returns:
        ``float32`` ``(n, H, W)`` in ``[0, 1]``, the partner's weight.
    """
    gen = _check_rng(rng)
    count = check_int("n", n, minimum=0)
    h, w = _check_size(size, min_pixels=1, method="SmoothMix")
    kind = check_choice("shape", shape, SMOOTHMIX_SHAPES)
    if isinstance(sigma, (str, bytes)) or not isinstance(sigma, Sequence) or len(sigma) != 2:
        raise ValueError(f"sigma must be a pair (lo, hi) with 0 < lo <= hi, got {sigma!r}")
    s_lo = _check_real("sigma[0]", sigma[0], low=0.0, high=math.inf, low_open=True)
    s_hi = _check_real("sigma[1]", sigma[1], low=0.0, high=math.inf, low_open=True)
    if s_lo > s_hi:
        raise ValueError(f"sigma must be a pair (lo, hi) with 0 < lo <= hi, got {sigma!r}")

    u = gen.random((count, 3))
    scale = s_lo + (s_hi - s_lo) * u[:, 2]
    profile_y = _smooth_profile(kind, np.arange(h, dtype=np.float64) + 0.5, u[:, 0] * h, scale * h)
    profile_x = _smooth_profile(kind, np.arange(w, dtype=np.float64) + 0.5, u[:, 1] * w, scale * w)
    masks: FloatMasks = (profile_y[:, :, None] * profile_x[:, None, :]).astype(np.float32)
    return masks


def _smooth_profile(kind: str, coords: Float64, centre: Float64, width: Float64) -> Float64:
    """One axis of a SmoothMix mask: ``(n, len(coords))`` in [0, 1]."""
    d = np.abs(coords[None, :] - centre[:, None])
    if kind == "gaussian":
        out: Float64 = np.exp(-0.5 * (d / width[:, None]) ** 2)
        return out
    half = width[:, None]
    ramp: Float64 = np.clip((1.5 * half - d) / half, 0.0, 1.0)
    return ramp


# ----------------------------------------------------------------------------------
# Spectral residual saliency


def _linear_resize_matrix(src: int, dst: int) -> Float64:
    """``(dst, src)`` weights of OpenCV's INTER_LINEAR along one axis.

    Output sample ``d`` reads the source at ``(d + 0.5)·src/dst - 0.5`` (pixel centres
    aligned), linearly between the two neighbours, clamped to the edge samples. Each row
    sums to 1, so resizing maps constants to constants and commutes with ``a·x + b``.
    """
    pos = (np.arange(dst) + 0.5) * (src / dst) - 0.5
    left = np.floor(pos).astype(np.int64)
    frac = pos - left
    frac[left < 0] = 0.0
    left[left < 0] = 0
    at_end = left >= src - 1
    left[at_end] = src - 1
    frac[at_end] = 0.0
    right = np.minimum(left + 1, src - 1)
    matrix = np.zeros((dst, src))
    rows = np.arange(dst)
    np.add.at(matrix, (rows, left), 1.0 - frac)
    np.add.at(matrix, (rows, right), frac)
    return matrix


def _resize(images: Float64, height: int, width: int) -> Float64:
    """Bilinear (INTER_LINEAR) resize of ``(n, H, W)`` to ``(n, height, width)``."""
    rows = _linear_resize_matrix(images.shape[1], height)
    cols = _linear_resize_matrix(images.shape[2], width)
    out: Float64 = rows @ images @ cols.T
    return out


def _box3_wrap(a: Float64) -> Float64:
    """3×3 mean over the last two axes with circular borders (the spectrum is periodic)."""
    rows = a + np.roll(a, 1, axis=-2) + np.roll(a, -1, axis=-2)
    out: Float64 = (rows + np.roll(rows, 1, axis=-1) + np.roll(rows, -1, axis=-1)) / 9.0
    return out


def _dc_neighbour_mean(a: Float64) -> Float64:
    """Mean of the 3×3 circular neighbourhood of entry ``(0, 0)``, without the entry itself.

    Each of the eight offsets counts once, also when a side shorter than 3 makes offsets
    land on the same entry; offsets that land back on ``(0, 0)`` are left out.
    """
    h, w = a.shape[-2], a.shape[-1]
    picks = [(dy % h, dx % w) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy % h, dx % w) != (0, 0)]
    if not picks:  # a 1x1 spectrum: nothing around the DC term (the image is constant anyway)
        return np.zeros(a.shape[0])
    ys, xs = zip(*picks)
    out: Float64 = a[:, list(ys), list(xs)].mean(axis=1)
    return out


def _gaussian_blur_reflect101(a: Float64) -> Float64:
    """OpenCV's ``GaussianBlur(ksize=(5, 5), sigmaX=8)`` with ``BORDER_DEFAULT`` (reflect-101)."""
    taps = np.arange(_SR_BLUR_TAPS) - _SR_BLUR_TAPS // 2
    kernel = np.exp(-(taps**2) / (2.0 * _SR_BLUR_SIGMA**2))
    kernel /= kernel.sum()
    pad = _SR_BLUR_TAPS // 2
    padded = np.pad(a, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")  # NumPy's reflect is reflect-101
    h, w = a.shape[1], a.shape[2]
    rows = sum(kernel[i] * padded[:, i : i + h, :] for i in range(_SR_BLUR_TAPS))
    out: Float64 = sum(kernel[j] * rows[:, :, j : j + w] for j in range(_SR_BLUR_TAPS))
    return out


def _to_grey(images: Any, channels_last: bool) -> Float64:
    arr = np.asarray(images)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"images must be a real (float or integer) array, got dtype {arr.dtype}")
    if arr.ndim == 4:
        axis = 3 if channels_last else 1
        channels = arr.shape[axis]
        if channels == 0:
            raise ValueError(f"images must have at least one channel, got shape {arr.shape}")
        if channels == 3:
            grey: Float64 = np.tensordot(arr, np.asarray(_LUMA_RGB), axes=([axis], [0]))
        else:
            grey = arr.mean(axis=axis, dtype=np.float64)
    elif arr.ndim == 3:
        grey = arr.astype(np.float64)
    else:
        layout = "(n, H, W, C)" if channels_last else "(n, C, H, W)"
        raise ValueError(f"images must be {layout} or (n, H, W), got shape {arr.shape}")
    if grey.shape[1] < 1 or grey.shape[2] < 1:
        raise ValueError(f"images must be at least 1x1, got shape {arr.shape}")
    if not np.isfinite(grey).all():
        raise ValueError("images must be finite (no NaN or inf)")
    return grey


def spectral_residual_saliency(images: npt.ArrayLike, *, channels_last: bool = False) -> FloatMasks:
    """Spectral-residual saliency maps (Hou & Zhang 2007), one per image, in [0, 1].

    Hou & Zhang, "Saliency Detection: A Spectral Residual Approach", CVPR 2007; the steps
    follow OpenCV's ``cv::saliency::StaticSaliencySpectralResidual`` (opencv_contrib,
    ``modules/saliency/src/staticSaliencySpectralResidual.cpp``):

    1. grey: for 3 channels the BT.601 luma ``0.299·R + 0.587·G + 0.114·B`` (channels
       taken in RGB order; OpenCV's ``BGR2GRAY`` gives the same weights to a BGR image),
       otherwise the mean over the channels; ``(n, H, W)`` input is grey already;
    2. resize each side longer than 64 to 64, bilinear with OpenCV's INTER_LINEAR
       pixel-centre mapping (separable interpolation matrices, edge samples clamped, no
       antialiasing); sides of 64 or less are kept;
    3. standardise each grey image to mean 0 and standard deviation 1;
    4. the log amplitude ``L`` of its 2-D FFT; the spectral residual ``R = L - box3(L)``
       with a 3×3 mean filter whose border is circular (the spectrum is periodic);
    5. the inverse FFT of ``exp(R)`` with the original phase, and its magnitude;
    6. OpenCV's Gaussian blur (5×5 kernel, σ = 8, reflect-101 border), then squared
       (OpenCV's order; the paper blurs the squared magnitude);
    7. divided by its maximum (as OpenCV), so the maximum is 1 and all values in [0, 1];
    8. resized back to ``(H, W)``, bilinear as in step 2 (the identity when no side
       exceeds 64).

    Invariance: the map of ``a·x + b_c`` equals the map of ``x`` (to float rounding,
    ~1e-6) for any real ``a != 0`` common to all channels and any per-channel offsets
    ``b_c``: so per-channel normalisation ``(x - mean_c)/std`` with one std for all
    channels, ``uint8`` versus ``x/255`` and any affine rescaling of the range give the
    same map. The grey image becomes ``a·g + b'`` and step 3 removes ``a`` (up to its sign,
    which only negates the reconstruction) and ``b'``. Different scales per channel
    change the grey image itself and so the map.

    Deviations from OpenCV (and the official SaliencyMix code, which used OpenCV's
    *fine-grained* static saliency on one image per batch and fed it normalised floats
    where it expects 8-bit images):

    * step 2: OpenCV resizes every image to 64×64, also upwards. An upsampled small
      image (CIFAR's 32×32, MNIST's 28×28) has a smooth, interpolated spectrum whose
      whitened residual is dominated by the interpolation and by the image border. On
      64 blob images like the tests', upsampled to 64×64, the peak missed the blob by
      up to 29 (28×28), 34 (32×32) and 21 (17×23) pixels (medians 0.7, 22, 11); at the
      native size by at most 2 pixels. So sides of 64 or less stay as they are;
    * step 3 and the DC term: OpenCV's map depends on the image's offset and contrast
      through the DC coefficient (the image's sum), which it keeps in the reconstruction
      as a constant added before the magnitude is taken. Here the standardised image
      has no DC component: its log amplitude is replaced by the mean of its eight
      (circular) neighbours before the 3×3 filter, so it neither raises nor lowers the
      residual of the lowest frequencies, and it gets no weight in the reconstruction;
    * coefficients whose amplitude is below 1e-6 of the RMS coefficient (exact zeros and
      rounding noise, e.g. in synthetic images) enter the log spectrum at that floor and
      get no weight in the reconstruction (their phase means nothing); OpenCV takes
      ``log`` of them (``-inf`` for an exact zero);
    * the 3×3 mean filter's border is circular where OpenCV reflects (reflect-101) the
      unshifted spectrum;
    * a constant image (grey standard deviation at most 1e-10 of its largest absolute
      value after step 2) has no salient point: its map is all zeros (OpenCV divides by
      the maximum regardless); :func:`saliency_peaks` then gives ``(0, 0)``;
    * per sample and vectorised over the batch; float64 inside.

    Args:
        images: float or integer ``(n, C, H, W)``, ``(n, H, W, C)`` with
            ``channels_last=True``, or grey ``(n, H, W)`` (``channels_last`` only
            matters for 4-D input); any ``H, W >= 1`` (smaller than 64 and non-square
            included). Must be finite.
        channels_last: whether 4-D input is NHWC.

    Returns:
        ``float32`` ``(n, H, W)`` in ``[0, 1]``.
    """
    grey = _to_grey(images, channels_last)
    _, h, w = grey.shape
    sh, sw = min(h, _SR_SIDE), min(w, _SR_SIDE)
    small = _resize(grey, sh, sw)

    mean = small.mean(axis=(1, 2), keepdims=True)
    centred = small - mean
    std = np.sqrt((centred * centred).mean(axis=(1, 2), keepdims=True))
    largest = np.abs(small).max(axis=(1, 2), keepdims=True)
    flat = std <= _FLAT_RELATIVE_STD * largest
    z = centred / np.where(flat, 1.0, std)

    spectrum = np.fft.fft2(z, axes=(-2, -1))
    amplitude = np.abs(spectrum)
    # With mean 0 and std 1, Parseval gives an RMS coefficient of sqrt(64·64) = 64.
    floor = _SR_AMPLITUDE_FLOOR * math.sqrt(sh * sw)
    informative = amplitude > floor
    informative[:, 0, 0] = False
    log_amplitude = np.log(np.maximum(amplitude, floor))
    log_amplitude[:, 0, 0] = _dc_neighbour_mean(log_amplitude)
    residual = log_amplitude - _box3_wrap(log_amplitude)
    phase = np.where(informative, spectrum / np.where(informative, amplitude, 1.0), 0.0)
    reconstruction = np.fft.ifft2(np.exp(residual) * phase, axes=(-2, -1))

    saliency = _gaussian_blur_reflect101(np.abs(reconstruction)) ** 2
    peak = saliency.max(axis=(1, 2), keepdims=True)
    empty = flat | (peak <= 0.0)
    saliency = np.where(empty, 0.0, saliency / np.where(empty, 1.0, peak))
    out = np.clip(_resize(saliency, h, w), 0.0, 1.0)
    maps: FloatMasks = out.astype(np.float32)
    return maps


def saliency_peaks(saliency: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """The ``(row, col)`` of each map's maximum: ``int64`` ``(n, 2)``.

    Ties go to the first maximum in row-major order (``numpy.argmax``). An all-zero map
    (a constant image's) gives ``(0, 0)``.

    Args:
        saliency: real ``(n, H, W)`` with ``H, W >= 1``, finite.
    """
    arr = np.asarray(saliency)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"saliency must be a real array, got dtype {arr.dtype}")
    if arr.ndim != 3 or arr.shape[1] < 1 or arr.shape[2] < 1:
        raise ValueError(f"saliency must have shape (n, H, W) with H, W >= 1, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("saliency must be finite (no NaN or inf)")
    n, h, w = arr.shape
    flat_index = np.argmax(arr.reshape(n, h * w), axis=1).astype(np.int64)
    peaks: npt.NDArray[np.int64] = np.stack([flat_index // w, flat_index % w], axis=1)
    return peaks
