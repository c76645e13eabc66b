"""Argument validation shared by the library. Every error names the argument.

Real and integer arguments accept Python numbers and NumPy scalars (``np.float32(0.2)``,
``np.int64(3)``); booleans are refused even though Python counts them as integers.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any

import numpy as np

__all__ = [
    "MIN_POSITIVE_CONCENTRATION",
    "check_choice",
    "check_concentration",
    "check_int",
    "check_probability",
    "check_real_range",
]

# Below this a Gamma(α) draw's log, log(U)/α, overflows to -inf for some U and the Beta
# ratio becomes -inf - (-inf) = NaN; 1e-300 leaves a margin of ~1e7 (|log U| <= 37).
MIN_POSITIVE_CONCENTRATION = 1e-300


def _is_real(value: Any) -> bool:
    if type(value) is float or type(value) is int:  # the common case, without the ABC check
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_choice(name: str, value: Any, choices: Collection[str]) -> str:
    """``value`` if it is one of ``choices``, else a ValueError listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_concentration(name: str, value: Any) -> float:
    """A Beta/Dirichlet concentration: 0 (do not mix) or a finite real >= 1e-300."""
    if not _is_real(value):
        raise TypeError(f"{name} must be a real number >= 0, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or math.isinf(v) or v < 0:
        raise ValueError(f"{name} must be a finite real number >= 0, got {v}")
    if 0 < v < MIN_POSITIVE_CONCENTRATION:
        raise ValueError(
            f"{name} must be 0 (no mixing) or >= {MIN_POSITIVE_CONCENTRATION:g}, got {v:g}: smaller "
            "concentrations underflow the Gamma draws"
        )
    return v


def check_probability(name: str, value: Any) -> float:
    """A probability: a real number in [0, 1]."""
    if not _is_real(value):
        raise TypeError(f"{name} must be a probability in [0, 1], got {type(value).__name__}")
    v = float(value)
    if not 0.0 <= v <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be a probability in [0, 1], got {v}")
    return v


def check_int(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    """An integer (Python or NumPy) in ``[minimum, maximum]``."""
    if type(value) is int:  # the common case, without the (slow) ABC check; bool is not int here
        v = value
    elif not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}")
    else:
        v = int(value)
    if v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be an int <= {maximum}, got {v}")
    return v


def check_real_range(name: str, value: Any, *, low: float, high: float | None, low_open: bool = False) -> float:
    """A finite real number in ``[low, high]`` (``(low, high]`` with ``low_open``; no upper
    bound when ``high`` is None)."""
    if not _is_real(value):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    below = v <= low if low_open else v < low
    if math.isnan(v) or math.isinf(v) or below or (high is not None and v > high):
        interval = ("(" if low_open else "[") + f"{low}, " + ("inf)" if high is None else f"{high}]")
        raise ValueError(f"{name} must be a finite real number in {interval}, got {v}")
    return v
