"""Label handling: class ids or soft labels in, dense float32 soft targets out.

Works on any array-API array (NumPy, PyTorch, ...) through ``array_api_compat``;
torch tensors are handled with torch ops only, so the same code runs eagerly, under
autograd and inside ``torch.compile``.

Labels come in three forms:

* class ids: integers (B,) in ``[0, num_classes)``;
* soft labels: floats (B, C), each row a distribution: finite, >= 0, summing to 1
  within :data:`SOFT_LABEL_TOLERANCE`;
* with ``multi_label=True``, multi-label targets: floats, integers or bools (B, C), each
  entry an independent probability in [0, 1] (multi-hot rows, as timm's
  ``multi_label``); rows are neither checked for their sum nor renormalised.

Label smoothing and mixing commute: both are affine maps that keep rows summing to 1,
so ``mix(smooth(y)) == smooth(mix(y))`` for dense targets. Smoothing is applied first
here so that the ``(y_a, y_b, lam)`` form carries smoothed targets too. Note that the
two regularisers push in the same direction (softer targets); the keras.io reference
warns they do not combine well, which ``vicinal study`` measures.
"""

from __future__ import annotations

import sys
from typing import Any

from array_api_compat import array_namespace, device

from vicinal._checks import check_int, check_probability

__all__ = [
    "SOFT_LABEL_TOLERANCE",
    "batch_size_of",
    "check_labels",
    "is_class_ids",
    "is_torch_tensor",
    "soft_unchecked",
    "to_soft",
    "torch_compiling",
]

# Soft-label rows must sum to 1 within this (absolute, i.e. relative to the sum 1):
# loose enough for float16 labels or rows renormalised in float32 over 10^4 classes.
SOFT_LABEL_TOLERANCE = 1e-3
# Rows named in an error message, at most.
_MAX_ROWS_SHOWN = 8


def is_torch_tensor(a: Any) -> bool:
    """True for a ``torch.Tensor``, without importing torch (nor array-API wrappers, so
    that ``torch.compile`` traces it)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(a, torch.Tensor)


def torch_compiling() -> bool:
    """True while ``torch.compile`` traces the caller (False without torch, or before
    torch 2.3, which has no ``torch.compiler.is_compiling``)."""
    torch = sys.modules.get("torch")
    is_compiling = None if torch is None else getattr(torch.compiler, "is_compiling", None)
    return is_compiling is not None and bool(is_compiling())


def batch_size_of(name: str, a: Any) -> int:
    shape = getattr(a, "shape", None)
    if shape is None or len(shape) == 0:
        raise TypeError(f"{name} must be an array with a leading batch dimension, got {type(a).__name__}")
    if shape[0] == 0:
        raise ValueError(f"{name} is an empty batch: expected at least 1 sample")
    return int(shape[0])


def _kind(y: Any) -> str:
    """``"int"``, ``"bool"``, ``"float"`` or ``"other"``: the kind of ``y``'s dtype."""
    if is_torch_tensor(y):
        if y.is_floating_point():
            return "float"
        if y.dtype is sys.modules["torch"].bool:
            return "bool"
        return "other" if y.is_complex() else "int"
    xp = array_namespace(y)
    if xp.isdtype(y.dtype, "real floating"):
        return "float"
    if xp.isdtype(y.dtype, "bool"):
        return "bool"
    return "int" if xp.isdtype(y.dtype, "integral") else "other"


def is_class_ids(y: Any) -> bool:
    """True when ``y`` holds integer class ids (B,) (not soft or multi-hot (B, C) labels)."""
    return _kind(y) == "int" and y.ndim == 1


def _rows(mask: Any) -> list[int]:
    """Indices of the True entries of a (B,) mask (NumPy or torch), for messages."""
    if is_torch_tensor(mask):
        found: list[int] = mask.nonzero().flatten().tolist()
        return found
    return [int(i) for i in array_namespace(mask).nonzero(mask)[0]]


def _shown(rows: list[int]) -> str:
    more = f" and {len(rows) - _MAX_ROWS_SHOWN} more" if len(rows) > _MAX_ROWS_SHOWN else ""
    return f"{rows[:_MAX_ROWS_SHOWN]}{more}"


def _check_values(name: str, y: Any, kind: str, c: int | None, multi_label: bool) -> None:
    """Raise unless ``y``'s values fit its form; one device→host read for a tensor on an
    accelerator, a ``torch._assert_async`` inside ``torch.compile``."""
    torch_y = is_torch_tensor(y)
    if torch_y:
        if y.device.type == "meta":
            return  # no values to check: shape inference only
        y = y.detach()  # the checks are not part of the autograd graph
    if kind == "bool":
        return  # multi-hot bools are in {0, 1} by construction
    if kind == "int" and c is not None:  # class ids (B,)
        if torch_y:
            if torch_compiling():
                torch = sys.modules["torch"]
                torch._assert_async(((y >= 0) & (y < c)).all(), f"{name} holds class ids outside [0, {c})")
                return
            lo, hi = (int(v) for v in sys.modules["torch"].stack(y.aminmax()).tolist())  # one host read
        else:
            xp = array_namespace(y)
            lo, hi = int(xp.min(y)), int(xp.max(y))
        if lo < 0 or hi >= c:
            raise ValueError(f"{name} holds class ids in [{lo}, {hi}], expected ids in [0, num_classes={c})")
        return
    if kind == "int":  # multi-hot integers (B, C)
        bad_entries = (y < 0) | (y > 1)
        what = "multi-label targets outside [0, 1]"
        if torch_y:
            bad = bad_entries.any(dim=1)
        else:
            bad = array_namespace(y).any(bad_entries, axis=1)
        sums = None
    elif multi_label:  # floats, each an independent probability
        what = "multi-label targets outside [0, 1] (or NaN)"
        ok = (y >= 0) & (y <= 1)  # False for NaN
        bad = ~ok.all(dim=1) if torch_y else ~array_namespace(y).all(ok, axis=1)
        sums = None
    else:  # soft labels: distributions
        what = "soft labels that are negative, NaN or inf"
        if torch_y:
            torch = sys.modules["torch"]
            invalid = ~(torch.isfinite(y) & (y >= 0)).all(dim=1)
            sums = y.sum(dim=1, dtype=torch.float64 if y.dtype == torch.float64 else torch.float32)
            bad = invalid | ((sums - 1).abs() > SOFT_LABEL_TOLERANCE)  # NaN sums are caught by `invalid`
        else:
            xp = array_namespace(y)
            invalid = ~xp.all(xp.isfinite(y) & (y >= 0), axis=1)
            sums = xp.sum(xp.astype(y, xp.float64), axis=1)
            bad = invalid | (xp.abs(sums - 1) > SOFT_LABEL_TOLERANCE)
    if torch_y and torch_compiling():
        sys.modules["torch"]._assert_async(~bad.any(), f"{name} holds {what}, or rows not summing to 1")
        return
    if not bool(bad.any()):  # the one host read of the happy path
        return
    if sums is None:
        raise ValueError(f"{name} holds {what} in rows {_shown(_rows(bad))}")
    invalid_rows = _rows(invalid)
    if invalid_rows:
        raise ValueError(f"{name} holds {what} in rows {_shown(invalid_rows)}: soft labels must be finite and >= 0")
    rows = _rows(bad)
    row_sums = [round(float(sums[i]), 6) for i in rows[:_MAX_ROWS_SHOWN]]
    raise ValueError(
        f"{name} holds soft labels whose rows must sum to 1 (within {SOFT_LABEL_TOLERANCE:g}); rows "
        f"{_shown(rows)} sum to {row_sums}. For multi-hot or independent per-class targets pass multi_label=True"
    )


def check_labels(
    y: Any,
    num_classes: int | None,
    *,
    multi_label: bool = False,
    validate: bool = True,
    name: str = "y",
) -> int:
    """Validate labels ``y`` and return the number of classes C.

    Args:
        y: int class ids (B,), float soft labels (B, C), or with ``multi_label`` float,
            int or bool multi-label targets (B, C) (see the module docstring).
        num_classes: required for class ids; else, when given, must equal C.
        multi_label: (B, C) targets are independent per-class probabilities in [0, 1]
            (no row-sum check) rather than distributions.
        validate: also check the values: class ids in range; soft labels finite, >= 0,
            rows summing to 1 within :data:`SOFT_LABEL_TOLERANCE`; multi-label targets
            in [0, 1]. For a torch tensor on an accelerator this costs one device→host
            read; inside ``torch.compile`` it is a ``torch._assert_async`` instead (no
            sync; a failure raises a RuntimeError, on CUDA a device-side assert). The
            values of ``meta`` tensors are never checked. Shapes and dtypes are always
            checked.
        name: the argument's name in error messages.

    Returns:
        C.
    """
    batch_size_of(name, y)
    kind = _kind(y)
    if kind in ("int", "bool") and y.ndim == 2 and multi_label:
        c = int(y.shape[1])
        if num_classes is not None and num_classes != c:
            raise ValueError(f"{name} has {c} classes but num_classes={num_classes}")
        if validate:
            _check_values(name, y, kind, None, multi_label)
        return c
    if kind == "int":
        if y.ndim != 1:
            hint = "" if multi_label else "; for multi-hot (B, C) targets pass multi_label=True"
            raise ValueError(f"{name} as class ids must have shape (B,), got shape {tuple(y.shape)}{hint}")
        if num_classes is None:
            raise ValueError(f"num_classes is required when {name} holds integer class ids")
        c = check_int("num_classes", num_classes, minimum=1)
        if validate:
            _check_values(name, y, kind, c, multi_label)
        return c
    if kind != "float":
        hint = " (bool (B, C) multi-hot targets need multi_label=True)" if kind == "bool" else ""
        raise TypeError(f"{name} must hold integer class ids or floating-point soft labels, got dtype {y.dtype}{hint}")
    if y.ndim != 2:
        raise ValueError(f"{name} as soft labels must have shape (B, C), got shape {tuple(y.shape)}")
    c = int(y.shape[1])
    if num_classes is not None and num_classes != c:
        raise ValueError(f"{name} has {c} classes but num_classes={num_classes}")
    if validate:
        _check_values(name, y, kind, None, multi_label)
    return c


def to_soft(y: Any, num_classes: int | None = None, *, label_smoothing: float = 0.0, multi_label: bool = False) -> Any:
    """Dense float32 targets (B, C) from class ids (B,) or soft labels (B, C).

    Args:
        y: int class ids in [0, num_classes), or floating soft labels (B, C), or with
            ``multi_label`` multi-label targets (B, C) in [0, 1].
        num_classes: required for class ids.
        label_smoothing: ε in [0, 1]; targets become ``y·(1-ε) + ε/C`` (for multi-label
            targets too, as timm smooths them).
        multi_label: see :func:`check_labels`.

    Returns:
        float32 (B, C) on ``y``'s device.
    """
    eps = check_probability("label_smoothing", label_smoothing)
    return soft_unchecked(y, check_labels(y, num_classes, multi_label=multi_label), eps)


def soft_unchecked(y: Any, c: int, eps: float) -> Any:
    """:func:`to_soft` for labels already validated by :func:`check_labels` (C = ``c``).

    Class ids outside [0, c) (possible when their values were not checked) give
    all-zero rows.
    """
    if is_torch_tensor(y):
        torch = sys.modules["torch"]
        if y.ndim == 1:
            # A comparison, not F.one_hot: no value checks (host reads on CPU), and it
            # traces into torch.compile.
            soft = (y[:, None] == torch.arange(c, device=y.device)).to(torch.float32)
        else:
            soft = y.to(torch.float32)
    else:
        xp = array_namespace(y)
        if y.ndim == 1:
            classes = xp.arange(c, dtype=y.dtype, device=device(y))
            soft = xp.astype(y[:, None] == classes[None, :], xp.float32)
        else:
            soft = xp.astype(y, xp.float32)
    if eps > 0:
        soft = soft * (1.0 - eps) + eps / c
    return soft
