"""Plans: distributions, determinism, pairings, CutMix boxes, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from vicinal import MixConfig, epoch_order, sample_plan
from vicinal.sampling import plan_generator, sample_beta, sample_dirichlet


@pytest.mark.parametrize("alpha", [0.05, 0.2, 1.0, 4.0])
def test_beta_draws_follow_beta_distribution(alpha: float) -> None:
    # KS test at n = 20,000 (fixed seed, 1% level: critical distance ~0.016 on the
    # ~10,000 lower-half draws). Draws within 1e-16 of 1 round to 1.0 in float64 (8% of
    # the mass for α = 0.05), so the test looks at the exactly representable lower half
    # and checks the symmetry Beta(α, α) implies with a binomial test.
    rng = plan_generator(1234, step=int(alpha * 100))
    lam = sample_beta(rng, alpha, alpha, 20_000)
    lower = lam[lam < 0.5]
    dist = stats.beta(alpha, alpha)
    result = stats.kstest(lower, lambda t: dist.cdf(t) / 0.5)
    assert result.pvalue > 0.01, (alpha, result)
    assert stats.binomtest(lower.size, lam.size, 0.5).pvalue > 0.01


def test_asymmetric_beta_matches_reference_orientation() -> None:
    # The reference computes g1 / (g1 + g2) with g1 ~ Gamma(concentration_1): λ ~ Beta(c1, c0).
    lam = sample_beta(plan_generator(7), 2.0, 5.0, 20_000)
    assert stats.kstest(lam, stats.beta(2.0, 5.0).cdf).pvalue > 0.01
    assert abs(lam.mean() - 2 / 7) < 0.01


@pytest.mark.parametrize("alpha", [0.01, 0.001])
def test_tiny_alpha_never_nan_and_not_clamped(alpha: float) -> None:
    lam = sample_beta(plan_generator(3), alpha, alpha, 50_000)
    assert np.all(np.isfinite(lam))
    assert lam.min() >= 0.0 and lam.max() <= 1.0
    # Beta(0.01, 0.01) is almost a fair coin between 0 and 1; a "0/0 -> 0.5" fallback
    # would pile mass at 0.5.
    assert np.mean(np.abs(lam - 0.5) < 0.25) < 0.02
    assert abs(np.mean(lam > 0.5) - 0.5) < 0.02


def test_dirichlet_rows_and_mean() -> None:
    w = sample_dirichlet(plan_generator(5), 0.5, 3, 30_000)
    assert w.shape == (30_000, 3)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(w.mean(axis=0), 1 / 3, atol=0.01)
    # Marginal of Dirichlet(α·1_3) is Beta(α, 2α).
    assert stats.kstest(w[:, 0], stats.beta(0.5, 1.0).cdf).pvalue > 0.01
    tiny = sample_dirichlet(plan_generator(6), 0.01, 4, 1000)
    assert np.all(np.isfinite(tiny))


def test_plan_is_pure_function_of_counter() -> None:
    cfg = MixConfig("switch", alpha=0.4, pairing="permute")
    a = sample_plan(cfg, 32, seed=9, epoch=2, step=5, rank=1, image_size=(28, 28))
    # Interleave other requests: the plan must not depend on call order.
    sample_plan(cfg, 32, seed=9, epoch=2, step=6, rank=1, image_size=(28, 28))
    epoch_order(9, 2, 1000)
    b = sample_plan(cfg, 32, seed=9, epoch=2, step=5, rank=1, image_size=(28, 28))
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.partners, b.partners)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    for other in [dict(step=6), dict(epoch=3), dict(rank=0), dict(seed=10)]:
        kw = dict(seed=9, epoch=2, step=5, rank=1) | other
        c = sample_plan(cfg, 32, image_size=(28, 28), **kw)
        assert not np.array_equal(a.weights, c.weights), other


def test_epoch_order_is_permutation_and_streams_differ() -> None:
    o0 = epoch_order(1, 0, 1000)
    o1 = epoch_order(1, 0, 1000, stream=1)
    assert sorted(o0.tolist()) == list(range(1000))
    assert not np.array_equal(o0, o1)
    assert not np.array_equal(o0, epoch_order(1, 1, 1000))
    np.testing.assert_array_equal(o0, epoch_order(1, 0, 1000))
    with pytest.raises(ValueError):
        o0[0] = 3  # cached result is read-only


@pytest.mark.parametrize("granularity", ["batch", "elem"])
def test_weights_rows_sum_to_one(granularity: str) -> None:
    plan = sample_plan(MixConfig(alpha=1.0, granularity=granularity), 64, seed=0)
    np.testing.assert_allclose(plan.weights.sum(axis=1), 1.0)
    assert np.all(plan.weights >= 0)
    if granularity == "batch":
        assert np.unique(plan.lam).size == 1
    else:
        assert np.unique(plan.lam).size == 64


def test_pairings() -> None:
    b = 9
    ar = np.arange(b)
    roll = sample_plan(MixConfig(pairing="roll"), b, seed=0)
    np.testing.assert_array_equal(roll.partners[:, 0], (ar - 1) % b)
    flip = sample_plan(MixConfig(pairing="flip"), b, seed=0)
    np.testing.assert_array_equal(flip.partners[:, 0], b - 1 - ar)
    perm = sample_plan(MixConfig(pairing="permute"), b, seed=0)
    assert sorted(perm.partners[:, 0].tolist()) == ar.tolist()
    for step in range(50):
        der = sample_plan(MixConfig(pairing="derange"), b, seed=0, step=step)
        assert sorted(der.partners[:, 0].tolist()) == ar.tolist()
        assert not np.any(der.partners[:, 0] == ar)


@pytest.mark.parametrize("pairing", ["flip", "permute"])
@pytest.mark.parametrize("b", [1, 2, 7, 16])
def test_pair_granularity_shares_lambda(pairing: str, b: int) -> None:
    plan = sample_plan(MixConfig(alpha=1.0, granularity="pair", pairing=pairing), b, seed=4)
    partner = plan.partners[:, 0]
    np.testing.assert_array_equal(partner[partner], np.arange(b))  # an involution
    np.testing.assert_array_equal(plan.lam, plan.lam[partner])
    fixed = partner == np.arange(b)
    # A sample paired with itself stays itself whatever λ is; there is at most one.
    assert fixed.sum() == b % 2


def test_stream_plan_holds_dataset_indices() -> None:
    n, b = 1000, 64
    cfg = MixConfig(pairing="stream")
    plans = [sample_plan(cfg, b, seed=3, step=s, dataset_size=n) for s in range(n // b)]
    idx = np.concatenate([p.stream_indices for p in plans])
    assert len(set(idx.tolist())) == len(idx)  # one pass over an epoch order: no repeats
    np.testing.assert_array_equal(idx, epoch_order(3, 0, n, stream=1)[: len(idx)])
    # the second stream is independent of the first (stream 0) order
    assert not np.array_equal(idx, epoch_order(3, 0, n)[: len(idx)])


def test_probability_p() -> None:
    cfg = MixConfig(alpha=1.0, p=0.3, p_mode="elem")
    plan = sample_plan(cfg, 10_000, seed=1)
    mixed = plan.lam < 1.0
    assert abs(mixed.mean() - 0.3) < 0.02
    batches = [sample_plan(MixConfig(alpha=1.0, p=0.3), 8, seed=1, step=s) for s in range(2000)]
    frac = np.mean([not p.is_identity for p in batches])
    assert abs(frac - 0.3) < 0.04
    assert sample_plan(MixConfig(alpha=1.0, p=0.0), 8, seed=1).is_identity
    assert sample_plan(MixConfig(alpha=0.0), 8, seed=1).is_identity


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    b=st.integers(1, 16),
    alpha=st.sampled_from([0.2, 1.0, 5.0]),
    seed=st.integers(0, 2**31),
)
def test_cutmix_boxes_inside_image_and_lambda_exact(h: int, w: int, b: int, alpha: float, seed: int) -> None:
    plan = sample_plan(MixConfig("cutmix", cutmix_alpha=alpha), b, seed=seed, image_size=(h, w))
    top, left, bottom, right = plan.boxes.T
    assert np.all((top >= 0) & (top <= bottom) & (bottom <= h))
    assert np.all((left >= 0) & (left <= right) & (right <= w))
    area = (bottom - top) * (right - left) / (h * w)
    np.testing.assert_allclose(plan.weights[:, 1], area, atol=1e-12)


def test_switch_probability() -> None:
    plan = sample_plan(MixConfig("switch", switch_prob=0.25), 20_000, seed=2, image_size=(8, 8))
    assert abs(plan.cut.mean() - 0.25) < 0.015


def test_plan_for_a_large_batch_is_a_valid_per_sample_roll_plan() -> None:
    # Timing lives in benchmarks/mix_throughput.py; this checks the plan's contents.
    b = 256
    plan = sample_plan(MixConfig(), b, seed=0)
    assert plan.weights.shape == (b, 2) and plan.partners.shape == (b, 1)
    np.testing.assert_array_equal(plan.partners[:, 0], (np.arange(b) - 1) % b)
    assert plan.shift == (1,)
    np.testing.assert_allclose(plan.weights.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    assert (plan.weights >= 0).all() and (plan.weights <= 1).all()
    # one λ per sample: 256 draws from a continuous law are (almost surely) distinct
    assert len(np.unique(plan.lam)) > b - 5
    assert plan.cut is None and plan.boxes is None and plan.stream_indices is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(alpha=-0.1), "alpha"),
        (dict(alpha=0.2, beta=-1.0), "beta"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(alpha=float("inf")), "alpha"),
        (dict(cutmix_alpha=float("nan")), "cutmix_alpha"),
        (dict(p=1.5), "p must"),
        (dict(p=-0.1), "p must"),
        (dict(p=float("nan")), "p must"),
        (dict(method="kway", k=1), "k must"),
        (dict(method="mixups"), "method"),
        (dict(granularity="sample"), "granularity"),
        (dict(pairing="shuffle"), "pairing"),
        (dict(granularity="pair", pairing="roll"), "granularity='pair'"),
        (dict(switch_prob=2.0), "switch_prob"),
        (dict(method="mixup", k=3), "k is only used"),
    ],
)
def test_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        MixConfig(**kwargs)


def test_bad_plan_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        sample_plan(MixConfig(), 0, seed=0)
    with pytest.raises(ValueError, match="image_size"):
        sample_plan(MixConfig("cutmix"), 4, seed=0)
    with pytest.raises(ValueError, match="seed"):
        sample_plan(MixConfig(), 4, seed=-1)
    with pytest.raises(TypeError, match="seed"):
        sample_plan(MixConfig(), 4, seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="alpha"):
        MixConfig(alpha="0.2")  # type: ignore[arg-type]


# Digests of plans drawn by the library before its speed work (issue 15) and before the
# one-core redesign (issue 19): the draws of a (config, seed, epoch, step, rank) are a
# promise, whatever is done to draw them faster or to fit more methods in. The float64
# weights are hashed rounded to float32: NumPy's vectorised log and exp differ in the last
# bit between CPU instruction sets (the exact digests recorded at 8f02c54 on an AVX-512
# machine do not hold on an AVX2 one), and that is not a change of the draws.
PINNED_PLANS = [
    (MixConfig(), "1dbe630c7f28692b"),
    (MixConfig(granularity="batch", pairing="flip"), "4412eb9f9f5a1489"),
    (MixConfig("switch", pairing="permute", p=0.7, p_mode="elem"), "f6145130bfa42c45"),
    (MixConfig("cutmix", granularity="pair", pairing="flip"), "1f74bdd63e887eff"),
    (MixConfig("kway", k=3, pairing="derange"), "345e51d3d8a00121"),
]


@pytest.mark.parametrize(("config", "expected"), PINNED_PLANS)
def test_plans_are_the_pinned_draws(config: MixConfig, expected: str) -> None:
    import hashlib

    h = hashlib.sha256()
    for step in range(3):
        plan = sample_plan(config, 37, seed=11, epoch=1, step=step, rank=2, image_size=(32, 30))
        for a in (plan.weights.astype(np.float32), plan.partners, plan.cut, plan.boxes):
            if a is not None:
                h.update(np.ascontiguousarray(a).tobytes())
    assert h.hexdigest()[:16] == expected


def test_cached_pairings_are_not_shared_between_plans() -> None:
    a = sample_plan(MixConfig(), 8, seed=0)
    a.partners[:] = 0  # a caller may write into its plan
    b = sample_plan(MixConfig(), 8, seed=0, step=1)
    np.testing.assert_array_equal(b.partners[:, 0], (np.arange(8) - 1) % 8)
