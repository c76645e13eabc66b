"""Small-sample statistics for comparing arms over seeds.

Values that cannot be computed (a standard deviation from one seed, a p-value from
fewer than two pairs) are ``None``, never NaN, so they survive JSON and a report can
print "n/a" for them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: The sign-flip test is exact (every one of the 2**n sign patterns) up to this many
#: patterns, i.e. up to 16 seeds; beyond it, it is a Monte Carlo test.
EXACT_MAX_PATTERNS = 2**16
#: Random sign patterns drawn by the Monte Carlo sign-flip test (p resolution 1e-5).
MONTE_CARLO_RESAMPLES = 99_999
#: Seed of the Monte Carlo test's generator: the same data always give the same p.
MONTE_CARLO_SEED = 0
# Sign patterns evaluated at once: bounds the memory of the null distribution.
_BATCH = 10_000

__all__ = [
    "EXACT_MAX_PATTERNS",
    "MONTE_CARLO_RESAMPLES",
    "MONTE_CARLO_SEED",
    "paired_test",
    "sign_flip_test",
    "summarize",
]


def _scipy_stats() -> Any:
    """:mod:`scipy.stats`, imported on first use: it takes seconds to import, and only the
    statistics of a report need it (``vicinal compare`` and its workers do not)."""
    from scipy import stats

    return stats


def summarize(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean, sample std and a Student-t confidence interval of the mean.

    ``None`` and NaN values are left out.

    Returns:
        ``{"n", "mean", "std", "ci_low", "ci_high"}``; ``mean`` is ``None`` for n = 0,
        ``std`` and the interval are ``None`` for n < 2.
    """
    stats = _scipy_stats()

    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    n = int(v.size)
    out: dict[str, Any] = {"n": n, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    if n == 0:
        return out
    mean = float(v.mean())
    out["mean"] = mean
    if n < 2:
        return out
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    out.update(std=std, ci_low=mean - half, ci_high=mean + half)
    return out


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x - y, axis=axis)


def sign_flip_test(
    a: np.ndarray,
    b: np.ndarray,
    *,
    max_exact: int = EXACT_MAX_PATTERNS,
    n_resamples: int = MONTE_CARLO_RESAMPLES,
    seed: int = MONTE_CARLO_SEED,
) -> tuple[float, bool, int]:
    """Two-sided paired permutation test of the mean difference ``mean(a - b)``.

    Under the null hypothesis each pair is exchangeable, so the sign of each difference
    is a fair coin (:func:`scipy.stats.permutation_test` with ``permutation_type="samples"``).
    The test enumerates all ``2**n`` sign patterns when there are at most ``max_exact``,
    and otherwise draws ``n_resamples`` random ones from a generator seeded with ``seed``
    (p = (hits + 1) / (n_resamples + 1), never 0).

    Returns:
        ``(p, exact, resamples)``: the p-value, whether it is exact, and how many sign
        patterns it is computed from.
    """
    stats = _scipy_stats()

    n = int(a.size)
    exact = 2**n <= max_exact
    resamples = 2**n if exact else int(n_resamples)
    rng = np.random.default_rng(seed)
    # scipy >= 1.15 takes ``rng``; older releases call the same argument ``random_state``.
    rng_kw = "rng" if "rng" in inspect.signature(stats.permutation_test).parameters else "random_state"
    res = stats.permutation_test(
        (a, b),
        _mean_difference,
        permutation_type="samples",
        vectorized=True,
        n_resamples=resamples,
        batch=_BATCH,
        alternative="two-sided",
        **{rng_kw: rng},
    )
    return min(1.0, float(res.pvalue)), exact, resamples


def paired_test(
    a: Sequence[float],
    b: Sequence[float],
    confidence: float = 0.95,
    *,
    max_exact: int = EXACT_MAX_PATTERNS,
    n_resamples: int = MONTE_CARLO_RESAMPLES,
    seed: int = MONTE_CARLO_SEED,
) -> dict[str, Any]:
    """Paired comparison of ``a`` vs ``b`` (same seeds, same initial weights).

    Returns :func:`summarize` of the differences ``a - b`` (``n``, ``mean``, ``std``,
    ``ci_low``, ``ci_high``) and:

    * ``wins``: how many seeds ``a`` won (``a > b``);
    * ``t_p``: the two-sided paired t-test p-value (:func:`scipy.stats.ttest_rel`); when
      every difference is the same it is 1 if they are all 0, else 0;
    * ``perm_p``: the two-sided sign-flip (permutation) p-value of :func:`sign_flip_test`,
      which needs no normality assumption;
    * ``perm_exact``: whether ``perm_p`` is exact (all ``2**n`` sign patterns) or Monte Carlo;
    * ``perm_resamples``: how many sign patterns ``perm_p`` is computed from.

    With fewer than two pairs nothing can be tested: ``t_p``, ``perm_p``, ``perm_exact`` and
    ``perm_resamples`` are ``None``, as are ``std`` and the interval.

    Raises:
        ValueError: the two samples differ in length, are not 1-D, or hold a non-finite value.
    """
    stats = _scipy_stats()

    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_arr.ndim != 1 or b_arr.ndim != 1:
        raise ValueError(f"paired samples must be 1-D sequences, got shapes {a_arr.shape} and {b_arr.shape}")
    if a_arr.size != b_arr.size:
        raise ValueError(
            f"paired samples must have the same length (one value per seed in each), got {a_arr.size} and {b_arr.size}"
        )
    if not (np.isfinite(a_arr).all() and np.isfinite(b_arr).all()):
        raise ValueError("paired samples must be finite numbers (drop the seeds with a missing value first)")
    d = a_arr - b_arr
    out = summarize(d.tolist(), confidence)
    out.update(wins=int((d > 0).sum()), t_p=None, perm_p=None, perm_exact=None, perm_resamples=None)
    if d.size < 2:
        return out
    if np.all(d == d[0]):
        out["t_p"] = 1.0 if d[0] == 0 else 0.0  # the t statistic is 0/0 or ±inf
    else:
        out["t_p"] = float(stats.ttest_rel(a_arr, b_arr).pvalue)
    p, exact, resamples = sign_flip_test(a_arr, b_arr, max_exact=max_exact, n_resamples=n_resamples, seed=seed)
    out.update(perm_p=p, perm_exact=exact, perm_resamples=resamples)
    return out
