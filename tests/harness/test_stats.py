"""Small-sample statistics: summaries and the paired (t and sign-flip) tests."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from vicinal.experiments.report.stats import EXACT_MAX_PATTERNS, MONTE_CARLO_RESAMPLES, paired_test, summarize


def brute_force_sign_flip_p(a: list[float], b: list[float]) -> float:
    """P(|mean(s·d)| >= |mean(d)|) over every sign pattern s in {-1, 1}^n, d = a - b."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    observed = abs(d.mean())
    hits = sum(
        abs((np.array(signs) * d).mean()) >= observed * (1 - 1e-9)
        for signs in itertools.product((-1, 1), repeat=d.size)
    )
    return hits / 2**d.size


def test_summarize() -> None:
    s = summarize([1.0, 2.0, 3.0])
    assert s["n"] == 3 and s["mean"] == 2.0 and s["std"] == 1.0
    assert s["ci_low"] == pytest.approx(2 - 4.302653 / math.sqrt(3), rel=1e-5)
    assert s["ci_high"] == pytest.approx(2 + 4.302653 / math.sqrt(3), rel=1e-5)
    one = summarize([1.0, math.nan])  # NaN (not recorded) is left out
    assert one == {"n": 1, "mean": 1.0, "std": None, "ci_low": None, "ci_high": None}
    assert summarize([]) == {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None}


@pytest.mark.parametrize("n", [2, 3, 5, 8, 11])
def test_exact_p_equals_brute_force_enumeration(n: int) -> None:
    rng = np.random.default_rng(n)
    a = rng.normal(0.8, 0.02, n).tolist()
    b = (np.asarray(a) - rng.normal(0.005, 0.01, n)).tolist()
    t = paired_test(a, b)
    assert t["perm_exact"] is True and t["perm_resamples"] == 2**n
    assert t["perm_p"] == pytest.approx(brute_force_sign_flip_p(a, b), abs=1e-12)


def test_exact_p_with_ties_equals_brute_force() -> None:
    # Integer differences with ties and a zero: |mean| ties between sign patterns are common.
    a, b = [3.0, 1.0, 2.0, 5.0, 4.0, 4.0], [2.0, 2.0, 0.0, 4.0, 4.0, 3.0]
    t = paired_test(a, b)
    assert t["perm_p"] == pytest.approx(brute_force_sign_flip_p(a, b), abs=1e-12)
    assert t["wins"] == 4 and t["n"] == 6


def test_known_values() -> None:
    a = [0.86, 0.87, 0.88, 0.865, 0.875]
    b = [x - 0.01 for x in a]
    t = paired_test(a, b)
    assert t["mean"] == pytest.approx(0.01) and t["wins"] == 5
    assert t["t_p"] < 1e-6
    assert t["perm_p"] == pytest.approx(2 / 32)  # all-positive is 1 of 32 sign patterns, all-negative another
    noisy = paired_test([1, 2, 3, 4], [1.1, 1.9, 3.2, 3.9])
    assert 0.5 < noisy["t_p"] <= 1 and 0.5 < noisy["perm_p"] <= 1


def test_forty_seeds_is_monte_carlo_fast_and_deterministic() -> None:
    # 2**40 sign patterns cannot be enumerated: the test samples them with a seeded generator.
    rng = np.random.default_rng(40)
    a = rng.normal(0.85, 0.01, 40).tolist()
    b = (np.asarray(a) - rng.normal(0.002, 0.01, 40)).tolist()
    t = paired_test(a, b)
    assert t["n"] == 40
    assert t["perm_exact"] is False and t["perm_resamples"] == MONTE_CARLO_RESAMPLES
    assert 0 < t["perm_p"] <= 1 and 0 < t["t_p"] <= 1
    assert paired_test(a, b) == t  # same data, same p: the generator is seeded
    # The Monte Carlo p agrees with the t-test's to within a few percent here (40 roughly normal pairs).
    assert t["perm_p"] == pytest.approx(t["t_p"], abs=0.03)


def test_exact_bound() -> None:
    n_exact = int(math.log2(EXACT_MAX_PATTERNS))
    assert paired_test([1.0] * n_exact, [0.0] * n_exact)["perm_exact"] is True
    over = paired_test([1.0] * (n_exact + 1), [0.0] * (n_exact + 1))
    assert over["perm_exact"] is False and over["perm_resamples"] == MONTE_CARLO_RESAMPLES
    # A smaller bound switches to Monte Carlo earlier; p stays a valid p-value.
    small = paired_test([1.0, 2.0, 3.5, 2.0], [0.5, 2.5, 3.0, 1.0], max_exact=8, n_resamples=999)
    assert small["perm_exact"] is False and small["perm_resamples"] == 999 and 0 < small["perm_p"] <= 1


def test_all_equal_differences() -> None:
    same = paired_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same["mean"] == 0 and same["std"] == 0 and same["wins"] == 0
    assert same["t_p"] == 1.0 and same["perm_p"] == 1.0
    shifted = paired_test([2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 4.0])  # every difference exactly 1
    assert shifted["t_p"] == 0.0  # the t statistic is infinite
    assert shifted["perm_p"] == pytest.approx(2 / 16)  # only all-+ and all-- are as extreme
    assert shifted["ci_low"] == shifted["ci_high"] == 1.0


@pytest.mark.parametrize(("a", "b"), [([0.9], [0.8]), ([], [])])
def test_fewer_than_two_pairs_gives_none_not_nan(a: list[float], b: list[float]) -> None:
    t = paired_test(a, b)
    for key in ("std", "ci_low", "ci_high", "t_p", "perm_p", "perm_exact", "perm_resamples"):
        assert t[key] is None, key
    assert t["n"] == len(a) and t["wins"] == len(a)
    json.dumps(t, allow_nan=False)  # valid JSON: no NaN anywhere


def test_bad_input_raises_clearly() -> None:
    with pytest.raises(ValueError, match=r"same length .* got 2 and 1"):
        paired_test([1, 2], [1])
    with pytest.raises(ValueError, match="1-D"):
        paired_test([[1, 2]], [[1, 2]])
    with pytest.raises(ValueError, match="finite"):
        paired_test([1.0, math.nan], [1.0, 2.0])
