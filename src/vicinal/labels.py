"""Label handling: class ids or soft labels in, dense float32 soft targets out.

Works on any array-API array (NumPy, PyTorch, ...) through ``array_api_compat``.

Label smoothing and mixing commute: both are affine maps that keep rows summing to 1,
so ``mix(smooth(y)) == smooth(mix(y))`` for dense targets. Smoothing is applied first
here so that the ``(y_a, y_b, lam)`` form carries smoothed targets too. Note that the
two regularisers push in the same direction (softer targets); the keras.io reference
warns they do not combine well, which ``vicinal study`` measures.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace, device, is_torch_array

from vicinal._checks import check_int, check_probability


def batch_size_of(name: str, a: Any) -> int:
    shape = getattr(a, "shape", None)
    if shape is None or len(shape) == 0:
        raise TypeError(f"{name} must be an array with a leading batch dimension, got {type(a).__name__}")
    if shape[0] == 0:
        raise ValueError(f"{name} is an empty batch: expected at least 1 sample")
    return int(shape[0])


def is_class_ids(y: Any) -> bool:
    xp = array_namespace(y)
    return bool(xp.isdtype(y.dtype, "integral"))


def check_labels(y: Any, num_classes: int | None) -> int:
    """Validate ``y`` (int class ids (B,) or float soft labels (B, C)); return C."""
    xp = array_namespace(y)
    batch_size_of("y", y)
    if xp.isdtype(y.dtype, "integral"):
        if y.ndim != 1:
            raise ValueError(f"y as class ids must have shape (B,), got shape {tuple(y.shape)}")
        if num_classes is None:
            raise ValueError("num_classes is required when y holds integer class ids")
        c = check_int("num_classes", num_classes, minimum=1)
        if is_torch_array(y):
            lo_t, hi_t = y.aminmax()  # one reduction (and one device sync) instead of two
            lo, hi = int(lo_t), int(hi_t)
        else:
            lo, hi = int(xp.min(y)), int(xp.max(y))
        if lo < 0 or hi >= c:
            raise ValueError(f"y holds class ids in [{lo}, {hi}], expected ids in [0, num_classes={c})")
        return c
    if not xp.isdtype(y.dtype, "real floating"):
        raise TypeError(f"y must hold integer class ids or floating-point soft labels, got dtype {y.dtype}")
    if y.ndim != 2:
        raise ValueError(f"y as soft labels must have shape (B, C), got shape {tuple(y.shape)}")
    c = int(y.shape[1])
    if num_classes is not None and num_classes != c:
        raise ValueError(f"y has {c} classes but num_classes={num_classes}")
    return c


def to_soft(y: Any, num_classes: int | None = None, *, label_smoothing: float = 0.0) -> Any:
    """Dense float32 targets (B, C) from class ids (B,) or soft labels (B, C).

    Args:
        y: int class ids in [0, num_classes), or floating soft labels (B, C).
        num_classes: required for class ids.
        label_smoothing: ε in [0, 1]; targets become ``y·(1-ε) + ε/C``.

    Returns:
        float32 (B, C) on ``y``'s device.
    """
    eps = check_probability("label_smoothing", label_smoothing)
    return soft_unchecked(y, check_labels(y, num_classes), eps)


def soft_unchecked(y: Any, c: int, eps: float) -> Any:
    """:func:`to_soft` for labels already validated by :func:`check_labels` (C = ``c``)."""
    xp = array_namespace(y)
    if is_torch_array(y) and not y.is_floating_point():
        import torch
        import torch.nn.functional as F

        soft = F.one_hot(y.long(), c).to(torch.float32)
    elif xp.isdtype(y.dtype, "integral"):
        classes = xp.arange(c, dtype=y.dtype, device=device(y))
        soft = xp.astype(y[:, None] == classes[None, :], xp.float32)
    else:
        soft = xp.astype(y, xp.float32)
    if eps > 0:
        soft = soft * (1.0 - eps) + eps / c
    return soft
