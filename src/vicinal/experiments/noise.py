"""Symmetric label noise for robustness studies (training labels only)."""

from __future__ import annotations

import numpy as np

from vicinal._checks import check_int, check_probability
from vicinal.experiments.spec import check_class_ids, check_seed

__all__ = ["symmetric_label_noise"]


def symmetric_label_noise(labels: np.ndarray, rate: float, num_classes: int, *, seed: int) -> np.ndarray:
    """Corrupt exactly ``round(rate · N)`` labels, each to a uniformly drawn *other* class.

    The corrupted samples are a seeded uniform subset; the result is a pure function of
    ``(labels, rate, num_classes, seed)``. With ``rate = 0.8`` and 10 classes a label is
    wrong for 80% of the samples, so the true class is still the most frequent one
    (20% vs 80%/9 ≈ 8.9% for each wrong class): the setting of the mixup paper's Table 2.

    Args:
        labels: int class ids (N,) in [0, num_classes).
        rate: fraction in [0, 1] of labels to corrupt.

    Returns:
        int64 (N,), a new array.
    """
    rate = check_probability("rate", rate)
    c = check_int("num_classes", num_classes, minimum=2)
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be int class ids (N,), got {labels.dtype} {labels.shape}")
    check_class_ids(labels, c)
    rng = np.random.Generator(np.random.Philox(key=[check_seed("seed", seed), 0x6E6F697365]))
    n = labels.size
    flip = rng.permutation(n)[: round(rate * n)]
    out = labels.astype(np.int64, copy=True)
    # An offset in [1, C-1] added modulo C gives a uniform class other than the true one.
    out[flip] = (out[flip] + rng.integers(1, c, size=flip.size)) % c
    return out
