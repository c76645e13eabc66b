"""Mask and saliency renderers (vicinal.masks): the contract of each, with fixed seeds.

Statistical checks state their tolerance next to them; "SE" is a standard error
computed from the draws themselves, and 4 SE is the tolerance unless said otherwise
(a false alarm about 1 in 16,000 per check, fixed seeds make each run the same).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from vicinal import masks
from vicinal.masks import (
    fmix_masks,
    gridmix_masks,
    saliency_peaks,
    smoothmix_masks,
    spectral_residual_saliency,
)

ODD_SIZES = [(7, 5), (1, 9), (9, 1), (31, 17), (2, 1)]


def gen(seed: int) -> np.random.Generator:
    """A counter-based generator, as the plans use."""
    return np.random.Generator(np.random.Philox(key=seed))


def hf_share(m: np.ndarray, cutoff: float) -> np.ndarray:
    """Per mask: share of the spectral energy of the centred ±1 mask above ``cutoff`` cycles/pixel."""
    z = 2.0 * m.astype(np.float64) - 1.0
    z -= z.mean(axis=(1, 2), keepdims=True)
    energy = np.abs(np.fft.fft2(z)) ** 2
    h, w = m.shape[1:]
    freq = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2)
    return energy[:, freq > cutoff].sum(axis=1) / energy.sum(axis=(1, 2))


def boundary_pixels(hard: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of the other value."""
    out = np.zeros_like(hard)
    dy = hard[:, 1:, :] != hard[:, :-1, :]
    dx = hard[:, :, 1:] != hard[:, :, :-1]
    out[:, 1:, :] |= dy
    out[:, :-1, :] |= dy
    out[:, :, 1:] |= dx
    out[:, :, :-1] |= dx
    return out


# ---------------------------------------------------------------------------------
# FMix


@pytest.mark.parametrize("size", ODD_SIZES + [(32, 32)])
@pytest.mark.parametrize("n", [1, 3])
def test_fmix_shapes_and_dtypes(size: tuple[int, int], n: int) -> None:
    lam = np.linspace(0.2, 0.8, n)
    hard = fmix_masks(gen(0), lam, size)
    assert hard.shape == (n, *size) and hard.dtype == np.bool_
    soft = fmix_masks(gen(0), lam, size, max_soft=0.2)
    assert soft.shape == (n, *size) and soft.dtype == np.float32
    assert np.all((soft >= 0) & (soft <= 1))
    assert fmix_masks(gen(0), np.zeros(0), size).shape == (0, *size)


@pytest.mark.parametrize("size", [(7, 5), (1, 9), (31, 17), (2, 1), (32, 32)])
def test_fmix_count_rule(size: tuple[int, int]) -> None:
    # Own pixels k = floor(λN) or ceil(λN), hence |mean(m) - (1 - λ)| < 1/N, exactly.
    pixels = size[0] * size[1]
    lam = np.concatenate([[0.0, 1.0, 0.5, 1 / pixels], gen(1).random(300)])
    m = fmix_masks(gen(2), lam, size)
    own = pixels - m.reshape(len(lam), -1).sum(axis=1)
    assert np.all((own == np.floor(lam * pixels)) | (own == np.ceil(lam * pixels)))
    assert np.all(np.abs(m.mean(axis=(1, 2), dtype=np.float64) - (1 - lam)) < 1 / pixels)
    assert own[0] == 0 and own[1] == pixels and own[3] == 1  # an exact λN is never rounded
    if pixels % 2 == 0:
        assert own[2] == pixels // 2


def test_fmix_stochastic_rounding_is_unbiased() -> None:
    # 5x7 = 35 pixels, λN = 10.25: ceil (11) with probability 0.25, else floor (10).
    # Binomial test of the ceiling count over 4000 masks (fixed seed, 0.1% level), and
    # E[own/N] = λ to 4 SE.
    lam = np.full(4000, 10.25 / 35)
    m = fmix_masks(gen(3), lam, (5, 7))
    own = 35 - m.reshape(4000, -1).sum(axis=1)
    assert set(np.unique(own)) == {10, 11}
    ceil = int((own == 11).sum())
    assert stats.binomtest(ceil, 4000, 0.25).pvalue > 1e-3
    share = own / 35
    assert abs(share.mean() - lam[0]) < 4 * share.std() / math.sqrt(4000)


def test_fmix_is_low_frequency() -> None:
    # 200 masks at λ = 0.5 on 32x32: share of the energy of the centred ±1 mask above
    # 0.25 cycles/pixel (wavelengths under 4 pixels). Measured here (seed 4): FMix
    # mean 0.064, max 0.095; an i.i.d. Bernoulli(0.5) mask: 0.81 (the share of such
    # frequencies among all, 1 - π/16). Bounds: FMix mean < 0.10 and every mask < 0.15;
    # i.i.d. > 0.75; FMix mean below a fifth of the i.i.d. one.
    m = fmix_masks(gen(4), np.full(200, 0.5), (32, 32))
    iid = gen(5).random((200, 32, 32)) < 0.5
    fmix_share, iid_share = hf_share(m, 0.25), hf_share(iid, 0.25)
    assert fmix_share.mean() < 0.10 and fmix_share.max() < 0.15
    assert iid_share.mean() > 0.75
    assert fmix_share.mean() < 0.2 * iid_share.mean()
    # Odd, non-square: 31x17 (measured mean 0.066, max 0.149).
    odd = hf_share(fmix_masks(gen(6), np.full(200, 0.5), (31, 17)), 0.25)
    assert odd.mean() < 0.10 and odd.max() < 0.2


def test_fmix_higher_decay_means_less_high_frequency_energy() -> None:
    # Same generator state for every decay (common random numbers): mean share above
    # 0.25 cycles/pixel, 200 masks at 32x32; measured 0.81, 0.43, 0.11, 0.063, 0.054.
    shares = [hf_share(fmix_masks(gen(7), np.full(200, 0.5), (32, 32), decay=d), 0.25).mean() for d in (0, 1, 2, 3, 5)]
    assert all(a > b for a, b in itertools.pairwise(shares)), shares
    assert shares[0] > 0.75  # decay 0 is white noise: like an i.i.d. mask


@pytest.mark.parametrize("size", [(32, 32), (31, 17)])
def test_fmix_soft_edges(size: tuple[int, int]) -> None:
    pixels = size[0] * size[1]
    lam = gen(8).uniform(0.1, 0.9, 100)
    soft = fmix_masks(gen(9), lam, size, max_soft=0.1)
    hard = fmix_masks(gen(9), lam, size)
    assert soft.dtype == np.float32 and np.all((soft >= 0) & (soft <= 1))
    # Same draws: thresholding the soft mask at 1/2 gives the hard mask, and the mean is kept.
    assert np.array_equal(soft > 0.5, hard)
    assert np.allclose(soft.mean(axis=(1, 2), dtype=np.float64), hard.mean(axis=(1, 2)), atol=1e-6)
    # At most 2s fractional pixels, s = floor(N·min(0.1, λ, 1 - λ)).
    band = np.floor(pixels * np.minimum(0.1, np.minimum(lam, 1 - lam)))
    fractional = (soft > 0) & (soft < 1)
    assert np.all(fractional.reshape(100, -1).sum(axis=1) <= 2 * band)
    assert fractional.any()
    # Near the boundary: 90% of the fractional pixels lie within 2 pixels (Euclidean) of a
    # pixel of the hard mask's boundary (measured here: 95% at 32x32, 97% at 31x17), far
    # more than of all pixels (measured 36% and 40%).
    edge = boundary_pixels(hard)
    near_frac, near_all = [], []
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    for i in range(100):
        by, bx = np.nonzero(edge[i])
        dist = np.sqrt((yy[..., None] - by) ** 2 + (xx[..., None] - bx) ** 2).min(axis=-1)
        near_frac.append(dist[fractional[i]] <= 2)
        near_all.append(dist.ravel() <= 2)
    share_frac = np.concatenate(near_frac).mean()
    share_all = np.concatenate(near_all).mean()
    assert share_frac > 0.9 and share_frac > share_all + 0.2, (share_frac, share_all)
    # No pure-partner pixel touches a pure-own pixel at max_soft = 0.3 (a band wide enough).
    wide = fmix_masks(gen(9), lam, size, max_soft=0.3)
    one, zero = wide == 1, wide == 0
    assert not ((one[:, 1:] & zero[:, :-1]) | (zero[:, 1:] & one[:, :-1])).any()
    assert not ((one[:, :, 1:] & zero[:, :, :-1]) | (zero[:, :, 1:] & one[:, :, :-1])).any()


def test_fmix_soft_band_is_linear_in_rank() -> None:
    # The 2s pixels of the band have partner weights j/(2s-1), j = 0..2s-1, each once.
    size, lam = (16, 16), np.array([0.5])
    soft = fmix_masks(gen(10), lam, size, max_soft=0.05)
    s = math.floor(256 * 0.05)
    values = np.sort(soft[(soft > 0) & (soft < 1)])
    expected = np.arange(1, 2 * s - 1) / (2 * s - 1)
    assert np.allclose(values, expected, atol=1e-6)


def test_fmix_constant_noise_does_not_divide_by_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    # All pixels tie: the first k pixels in row-major order stay the sample's own.
    monkeypatch.setattr(masks, "_fourier_noise", lambda rng, n, size, decay: np.zeros((n, *size)))
    with np.errstate(all="raise"):
        hard = fmix_masks(gen(11), np.array([0.25, 0.0, 1.0]), (4, 4))
        soft = fmix_masks(gen(11), np.array([0.25, 0.5]), (4, 4), max_soft=0.125)
    expected = np.ones(16, dtype=bool)
    expected[:4] = False
    assert np.array_equal(hard[0].ravel(), expected)
    assert hard[1].all() and not hard[2].any()
    assert np.all(np.isfinite(soft)) and np.all((soft >= 0) & (soft <= 1))
    assert np.all(np.diff(soft.reshape(2, -1), axis=1) >= 0)  # rising in row-major order


def test_fmix_ties_hard_and_rank_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    # Coarsely quantised noise (many ties): the hard path (selection) and the soft path
    # with an empty band (full ranking) choose the same pixels.
    quantised = lambda rng, n, size, decay: np.round(2 * rng.standard_normal((n, *size)))
    monkeypatch.setattr(masks, "_fourier_noise", quantised)
    lam = gen(12).random(200)
    hard = fmix_masks(gen(13), lam, (6, 7))
    ranked = fmix_masks(gen(13), lam, (6, 7), max_soft=1e-9)
    assert np.array_equal(hard, ranked.astype(bool))
    assert np.array_equal(ranked, ranked.round())


def test_fmix_draws() -> None:
    # n·H·(W//2+1)·2 standard normals, then n uniforms: the generator ends where one that
    # drew exactly those ends.
    a, b = gen(14), gen(14)
    fmix_masks(a, np.full(3, 0.4), (7, 5))
    b.standard_normal((3, 7, 3, 2))
    b.random(3)
    assert a.random() == b.random()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": (1, 1)}, "at least 2 pixels"),
        ({"size": (0, 5)}, "size"),
        ({"size": (3,)}, "size"),
        ({"size": "ab"}, "size"),
        ({"lam": np.array([0.5, 1.1])}, "lam"),
        ({"lam": np.array([-0.1])}, "lam"),
        ({"lam": np.array([np.nan])}, "lam"),
        ({"lam": np.array([[0.5]])}, "lam"),
        ({"decay": -1.0}, "decay"),
        ({"decay": math.nan}, "decay"),
        ({"max_soft": 0.6}, "max_soft"),
        ({"max_soft": -0.1}, "max_soft"),
    ],
)
def test_fmix_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"lam": np.array([0.5]), "size": (8, 8)} | kwargs
    lam, size = args.pop("lam"), args.pop("size")
    with pytest.raises(ValueError, match=match):
        fmix_masks(gen(0), lam, size, **args)  # type: ignore[arg-type]


def test_bad_types() -> None:
    with pytest.raises(TypeError, match="rng"):
        fmix_masks(np.random.RandomState(0), np.array([0.5]), (8, 8))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="size"):
        gridmix_masks(gen(0), np.array([0.5]), (2.5, 3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lam"):
        gridmix_masks(gen(0), np.array([True]), (4, 4))
    with pytest.raises(TypeError, match="n"):
        smoothmix_masks(gen(0), 2.0, (4, 4))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="images"):
        spectral_residual_saliency(np.zeros((1, 4, 4), dtype=bool))
    with pytest.raises(TypeError, match="images"):
        spectral_residual_saliency(np.zeros((1, 4, 4), dtype=complex))


# ---------------------------------------------------------------------------------
# Grid mix


def cell_edges(side: int, n: int) -> np.ndarray:
    return np.array([k * side // n for k in range(n + 1)])


@pytest.mark.parametrize("size", [(7, 5), (2, 9), (1, 1), (31, 17), (12, 12)])
@pytest.mark.parametrize("cells", [1, 3, 4])
def test_gridmix_cells_are_aligned_and_constant(size: tuple[int, int], cells: int) -> None:
    m = gridmix_masks(gen(20), gen(21).random(40), size, grid=(cells, cells))
    assert m.shape == (40, *size) and m.dtype == np.bool_
    ys, xs = cell_edges(size[0], cells), cell_edges(size[1], cells)
    for a in range(cells):
        for b in range(cells):
            block = m[:, ys[a] : ys[a + 1], xs[b] : xs[b + 1]]
            if block.size:
                assert np.all(block == block[:, :1, :1]), (a, b)
    # The cells are the finest such partition: when every cell has pixels, neighbouring
    # cells differ in some sample (they are independent coins).
    if size[0] >= cells and size[1] >= cells and cells > 1:
        for a in range(cells - 1):
            assert (m[:, ys[a]] != m[:, ys[a + 1]]).any()


def test_gridmix_grid_range() -> None:
    # n is uniform on 2..6: on 60x60 (divisible by each) the coarsest grid a mask is
    # constant on is its n, unless its cells happen to agree in a coarser pattern (rare
    # at λ = 0.5). Every mask has its coarsest grid in 1..6, and each n in 2..6 is the
    # coarsest for 60-100 of 400 masks (expected 80, measured 70-84; 13 masks are constant).
    m = gridmix_masks(gen(22), np.full(400, 0.5), (60, 60), grid=(2, 6))
    coarsest = np.zeros(400, dtype=np.int64)
    for n in range(8, 0, -1):
        e = cell_edges(60, n)
        constant = np.ones(400, dtype=bool)
        for a in range(n):
            for b in range(n):
                block = m[:, e[a] : e[a + 1], e[b] : e[b + 1]]
                constant &= (block == block[:, :1, :1]).all(axis=(1, 2))
        coarsest[constant] = n
    assert np.all((coarsest >= 1) & (coarsest <= 6))
    counts = np.bincount(coarsest, minlength=7)
    assert np.all((counts[2:] >= 60) & (counts[2:] <= 100)), counts


def test_gridmix_partner_share() -> None:
    # λ = 0.3 on 12x12 with a 3x3 grid (equal cells): the partner cells out of 9·4000
    # are Binomial(36000, 0.7); exact binomial test at the 0.1% level.
    m = gridmix_masks(gen(23), np.full(4000, 0.3), (12, 12), grid=(3, 3))
    partner_cells = int(m[:, ::4, ::4].sum())
    assert stats.binomtest(partner_cells, 36000, 0.7).pvalue > 1e-3
    # Unequal cells (13x18, n in 2..6) and per-sample λ ~ U(0, 1): the realised partner
    # share minus 1 - λ averages to 0 (4 SE).
    lam = gen(24).random(4000)
    share = gridmix_masks(gen(25), lam, (13, 18)).mean(axis=(1, 2), dtype=np.float64)
    diff = share - (1 - lam)
    assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(4000)
    assert abs(gridmix_masks(gen(26), np.full(4000, 0.3), (13, 18)).mean() - 0.7) < 0.01


def test_gridmix_extremes_and_draws() -> None:
    assert not gridmix_masks(gen(27), np.ones(5), (9, 7)).any()
    assert gridmix_masks(gen(27), np.zeros(5), (9, 7)).all()
    a, b = gen(28), gen(28)
    gridmix_masks(a, np.full(3, 0.5), (9, 7), grid=(2, 5))
    b.integers(2, 5, endpoint=True, size=3)
    b.random((3, 5, 5))
    assert a.random() == b.random()


@pytest.mark.parametrize("grid", [(0, 3), (4, 2), (2,), (2.0, 3), "ab"])
def test_gridmix_bad_grid(grid: object) -> None:
    with pytest.raises((ValueError, TypeError), match="grid"):
        gridmix_masks(gen(0), np.array([0.5]), (8, 8), grid=grid)  # type: ignore[arg-type]


def test_gridmix_bad_lam_and_size() -> None:
    with pytest.raises(ValueError, match="lam"):
        gridmix_masks(gen(0), np.array([1.5]), (8, 8))
    with pytest.raises(ValueError, match="size"):
        gridmix_masks(gen(0), np.array([0.5]), (8, 0))


# ---------------------------------------------------------------------------------
# SmoothMix


def smooth_profile(shape: str, d: np.ndarray, width: np.ndarray) -> np.ndarray:
    """The documented per-axis profile, written out independently."""
    if shape == "gaussian":
        return np.exp(-(d**2) / (2 * width**2))
    return np.clip((1.5 * width - d) / width, 0, 1)


def expected_mean(shape: str, size: tuple[int, int], sigma: tuple[float, float]) -> float:
    """E[mean(G)] by quadrature: uniform centre, s ~ U(sigma), G separable given s."""
    s = sigma[0] + (sigma[1] - sigma[0]) * (np.arange(200) + 0.5) / 200
    factors = []
    for side in size:
        centres = (np.arange(1000) + 0.5) / 1000 * side
        d = np.abs(np.arange(side)[None, None, :] + 0.5 - centres[None, :, None])
        factors.append(smooth_profile(shape, d, (s * side)[:, None, None]).mean(axis=(1, 2)))
    return float((factors[0] * factors[1]).mean())


@pytest.mark.parametrize("shape", ["gaussian", "square"])
@pytest.mark.parametrize("size", [(7, 5), (1, 9), (31, 17)])
def test_smoothmix_shapes_and_range(shape: str, size: tuple[int, int]) -> None:
    g = smoothmix_masks(gen(30), 6, size, shape=shape)
    assert g.shape == (6, *size) and g.dtype == np.float32
    assert np.all((g >= 0) & (g <= 1))
    assert smoothmix_masks(gen(30), 0, size, shape=shape).shape == (0, *size)
    assert smoothmix_masks(gen(30), 1, size, shape=shape).shape == (1, *size)


@pytest.mark.parametrize("shape", ["gaussian", "square"])
@pytest.mark.parametrize(("size", "sigma"), [((16, 24), (0.25, 0.5)), ((20, 20), (0.1, 0.2))])
def test_smoothmix_mean_matches_expectation(shape: str, size: tuple[int, int], sigma: tuple[float, float]) -> None:
    # Monte Carlo mean of mean(G) over 6000 masks against the quadrature of the
    # documented formula over a uniform centre and s ~ U(sigma), to 4 SE.
    g = smoothmix_masks(gen(31), 6000, size, shape=shape, sigma=sigma)
    means = g.mean(axis=(1, 2), dtype=np.float64)
    target = expected_mean(shape, size, sigma)
    assert abs(means.mean() - target) < 4 * means.std() / math.sqrt(6000), (means.mean(), target)


def test_smoothmix_peak_at_uniform_centre() -> None:
    # The maximum of the Gaussian is the pixel holding the centre: ≈ 1 there (>= 0.99 on
    # 32x32, where the centre is at most half a pixel away per axis and σ >= 8 pixels).
    g = smoothmix_masks(gen(32), 200, (32, 32))
    assert np.all(g.reshape(200, -1).max(axis=1) >= 0.99)
    # That pixel is uniform over the image: chi-square over the 8x6 = 48 pixels of
    # 4800 masks (expected 100 each), at the 0.1% level.
    g = smoothmix_masks(gen(33), 4800, (8, 6))
    peaks = saliency_peaks(g)
    counts = np.bincount(peaks[:, 0] * 6 + peaks[:, 1], minlength=48)
    assert stats.chisquare(counts).pvalue > 1e-3
    # The square's plateau (G = 1) always holds that pixel when s·side >= 1.
    sq = smoothmix_masks(gen(34), 200, (16, 12), shape="square")
    assert np.all(sq.reshape(200, -1).max(axis=1) == 1.0)


def test_smoothmix_is_the_partners_weight() -> None:
    # σ → ∞: G ≡ 1, so the mixed image is the partner and the sample keeps no label weight.
    g = smoothmix_masks(gen(35), 3, (8, 8), sigma=(1e6, 1e6))
    assert np.allclose(g, 1.0)
    assert np.allclose(1 - g.mean(axis=(1, 2), dtype=np.float64), 0.0)


def test_smoothmix_draws() -> None:
    a, b = gen(36), gen(36)
    smoothmix_masks(a, 4, (9, 7), shape="square")
    b.random((4, 3))
    assert a.random() == b.random()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape": "circle"}, "shape"),
        ({"sigma": (0.0, 0.5)}, r"sigma\[0\]"),
        ({"sigma": (-1.0, 0.5)}, r"sigma\[0\]"),
        ({"sigma": (0.5, 0.25)}, "sigma"),
        ({"sigma": (math.nan, 0.5)}, r"sigma\[0\]"),
        ({"sigma": (0.25, math.inf)}, r"sigma\[1\]"),
        ({"sigma": (0.3,)}, "sigma"),
        ({"n": -1}, "n"),
        ({"size": (4, 0)}, "size"),
    ],
)
def test_smoothmix_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"n": 2, "size": (8, 8)} | kwargs
    n, size = args.pop("n"), args.pop("size")
    with pytest.raises(ValueError, match=match):
        smoothmix_masks(gen(0), n, size, **args)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------
# Saliency


def blob_images(rng: np.random.Generator, count: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """RGB (count, 3, H, W) in [0, 1]: one bright Gaussian blob on a noisy grey background."""
    h, w = size
    centres = np.stack([rng.uniform(0.2 * h, 0.8 * h, count), rng.uniform(0.2 * w, 0.8 * w, count)], axis=1)
    yy, xx = np.mgrid[0:h, 0:w]
    radius = 0.06 * min(h, w)
    d2 = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
    blob = np.exp(-d2 / (2 * radius**2))
    colour = np.array([0.7, 0.6, 0.4])[None, :, None, None]
    images = 0.3 + colour * blob[:, None] + 0.05 * rng.standard_normal((count, 3, h, w))
    return np.clip(images, 0, 1), centres


@pytest.mark.parametrize("size", [(28, 28), (32, 32), (64, 64), (96, 80), (17, 23)])
def test_saliency_peak_on_the_blob(size: tuple[int, int]) -> None:
    # The peak lies within 3 pixels (Euclidean) of the blob's centre (measured: at most
    # 2.1 pixels over these sizes). The three layouts give the same map.
    images, centres = blob_images(gen(40), 16, size)
    nchw = spectral_residual_saliency(images)
    nhwc = spectral_residual_saliency(images.transpose(0, 2, 3, 1), channels_last=True)
    grey = spectral_residual_saliency(np.tensordot(images, [0.299, 0.587, 0.114], axes=([1], [0])))
    assert nchw.shape == (16, *size) and nchw.dtype == np.float32
    assert np.allclose(nchw, nhwc, atol=1e-6) and np.allclose(nchw, grey, atol=1e-6)
    error = np.hypot(*(saliency_peaks(nchw) - centres).T)
    assert error.max() <= 3.0, error
    # Maps are in [0, 1] with maximum 1 at the working resolution: exactly 1 when no side
    # exceeds 64 (no resizing), else the bilinear resize back may miss the peak (>= 0.85).
    peak = nchw.reshape(16, -1).max(axis=1)
    assert np.all((nchw >= 0) & (nchw <= 1))
    assert np.all(peak == 1.0) if max(size) <= 64 else np.all(peak >= 0.85), peak


def test_saliency_large_image() -> None:
    # 160x120 works at 64x64: the peak within 3 working pixels (7.5 image pixels;
    # measured 1.6).
    images, centres = blob_images(gen(41), 8, (160, 120))
    error = np.hypot(*(saliency_peaks(spectral_residual_saliency(images)) - centres).T)
    assert error.max() <= 7.5, error


@pytest.mark.parametrize("size", [(32, 32), (96, 80), (17, 23)])
def test_saliency_invariance(size: tuple[int, int]) -> None:
    # x -> a·x + b_c (a != 0 shared by the channels, offsets per channel) keeps the map
    # to 1e-5: uint8 vs x/255 (float64 and float32), per-channel normalisation with one
    # std, a negative scale. Per-channel stds differ: the map changes (> 1e-2).
    rng = gen(42)
    images, _ = blob_images(rng, 4, size)
    u8 = np.round(images * 255).astype(np.uint8)
    x = u8 / 255.0
    base = spectral_residual_saliency(u8)
    mean = np.array([0.485, 0.456, 0.406])[None, :, None, None]
    variants = [
        x,
        x.astype(np.float32),
        ((x - mean) / 0.226).astype(np.float32),
        -7.0 * x + np.array([1.0, -2.0, 3.0])[None, :, None, None],
    ]
    for v in variants:
        assert np.abs(spectral_residual_saliency(v) - base).max() < 1e-5
    per_channel = (x - mean) / np.array([0.1, 0.5, 2.0])[None, :, None, None]
    assert np.abs(spectral_residual_saliency(per_channel) - base).max() > 1e-2


def test_saliency_constant_image_is_zero_and_does_not_leak() -> None:
    images, _ = blob_images(gen(43), 2, (20, 24))
    batch = np.concatenate([images, np.full((1, 3, 20, 24), 0.7), np.zeros((1, 3, 20, 24))])
    with np.errstate(all="raise"):
        maps = spectral_residual_saliency(batch)
        alone = spectral_residual_saliency(images)
        u8 = spectral_residual_saliency(np.full((2, 5, 5, 3), 200, dtype=np.uint8), channels_last=True)
    assert np.all(np.isfinite(maps)) and not maps[2:].any() and not u8.any()
    assert np.array_equal(maps[:2], alone)  # per sample: the constant images change nothing
    assert np.array_equal(saliency_peaks(maps[2:]), [[0, 0], [0, 0]])


@pytest.mark.parametrize("size", [(1, 1), (1, 9), (9, 1), (2, 2), (7, 5), (65, 3)])
def test_saliency_tiny_and_odd_sizes(size: tuple[int, int]) -> None:
    with np.errstate(all="raise"):
        maps = spectral_residual_saliency(gen(44).random((3, 2, *size)))
    assert maps.shape == (3, *size) and np.all(np.isfinite(maps)) and np.all((maps >= 0) & (maps <= 1))


@pytest.mark.parametrize(
    "images",
    [
        np.zeros((4, 4)),
        np.zeros((1, 1, 1, 4, 4)),
        np.zeros((1, 0, 4, 4)),
        np.zeros((1, 0, 4)),
        np.full((1, 4, 4), np.nan),
    ],
)
def test_saliency_bad_input(images: np.ndarray) -> None:
    with pytest.raises(ValueError, match="images"):
        spectral_residual_saliency(images)


def test_saliency_peaks() -> None:
    maps = np.zeros((3, 4, 5), dtype=np.float32)
    maps[0, 2, 3] = 1.0
    maps[1, 1, 4] = maps[1, 3, 0] = 0.5  # tie: the first in row-major order
    peaks = saliency_peaks(maps)
    assert peaks.dtype == np.int64 and np.array_equal(peaks, [[2, 3], [1, 4], [0, 0]])
    for bad in (np.zeros((4, 5)), np.zeros((2, 0, 3)), np.full((1, 2, 2), np.nan)):
        with pytest.raises(ValueError, match="saliency"):
            saliency_peaks(bad)


# ---------------------------------------------------------------------------------
# Determinism


@pytest.mark.parametrize(
    "render",
    [
        lambda rng: fmix_masks(rng, np.full(4, 0.4), (9, 11)),
        lambda rng: fmix_masks(rng, np.full(4, 0.4), (9, 11), max_soft=0.2),
        lambda rng: gridmix_masks(rng, np.full(4, 0.4), (9, 11)),
        lambda rng: smoothmix_masks(rng, 4, (9, 11)),
        lambda rng: smoothmix_masks(rng, 4, (9, 11), shape="square"),
    ],
    ids=["fmix", "fmix-soft", "gridmix", "smoothmix", "smoothmix-square"],
)
def test_same_seed_same_masks(render) -> None:  # type: ignore[no-untyped-def]
    first, again, other = render(gen(50)), render(gen(50)), render(gen(51))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert np.array_equal(render(np.random.default_rng(7)), render(np.random.default_rng(7)))


def test_empty_batches() -> None:
    assert fmix_masks(gen(60), np.zeros(0), (3, 4), max_soft=0.1).shape == (0, 3, 4)
    assert gridmix_masks(gen(60), np.zeros(0), (3, 4)).shape == (0, 3, 4)
    assert smoothmix_masks(gen(60), 0, (3, 4)).shape == (0, 3, 4)
    maps = spectral_residual_saliency(np.zeros((0, 3, 5, 7)))
    assert maps.shape == (0, 5, 7) and maps.dtype == np.float32
    peaks = saliency_peaks(maps)
    assert peaks.shape == (0, 2) and peaks.dtype == np.int64
