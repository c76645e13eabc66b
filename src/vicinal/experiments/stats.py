"""Small-sample statistics for comparing arms over seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def summarize(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean, sample std and a Student-t confidence interval of the mean.

    Returns:
        ``{"n", "mean", "std", "ci_low", "ci_high"}``; std and the interval are NaN for n < 2.
    """
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    n = int(v.size)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    mean = float(v.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def paired_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Paired comparison of ``a`` vs ``b`` (same seeds, same initial weights).

    Returns the mean difference ``a - b`` with its t confidence interval, the two-sided
    paired t-test p-value, the exact two-sided sign-flip (permutation) p-value, which
    needs no normality assumption, and how many seeds ``a`` won.
    """
    from scipy import stats

    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired samples must have the same length, got {a_arr.size} and {b_arr.size}")
    d = a_arr - b_arr
    out = summarize(d, confidence)
    out["wins"] = int((d > 0).sum())
    out["t_p"] = math.nan
    out["perm_p"] = math.nan
    if d.size >= 2:
        if np.all(d == d[0]):
            out["t_p"] = 1.0 if d[0] == 0 else 0.0
        else:
            out["t_p"] = float(stats.ttest_rel(a_arr, b_arr).pvalue)
        # Exact sign-flip test: under H0 each difference's sign is a fair coin.
        signs = np.array(np.meshgrid(*[[-1, 1]] * d.size)).reshape(d.size, -1).T
        null = np.abs((signs * d).mean(axis=1))
        out["perm_p"] = float(np.mean(null >= abs(d.mean()) - 1e-12))
    return out
