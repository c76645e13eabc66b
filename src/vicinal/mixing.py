"""Applying a :class:`~vicinal.sampling.MixPlan` to a batch of inputs and labels.

Inputs are any ``(B, ...)`` array: images NCHW or NHWC, or features such as
``(B, T, F)``. NumPy (and any array-API library) goes through a generic path that
evaluates the textbook formula ``x·λ + x_partner·(1-λ)``; PyTorch tensors take fast
paths that stay on the input's device and dtype:

* floating tensors are mixed with one fused ``lerp`` pass. With ``pairing="roll"`` or a
  second stream the partner is read as a view, so no gather is needed; in place
  (``out=x``) costs at most one scratch batch. ``lerp`` rounds once, so it can differ
  from the two-product formula by about one float ulp.
* ``uint8`` tensors (for a DataLoader ``collate_fn``) are mixed in float32 with the
  very same ops, a few samples at a time to stay in cache, then rounded half-to-even
  and stored as ``uint8``: the result equals the float path rounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args

import numpy as np
from array_api_compat import array_namespace, is_torch_array

from vicinal._checks import check_choice, check_probability
from vicinal.labels import batch_size_of, check_labels, is_class_ids, soft_unchecked
from vicinal.sampling import MixPlan

TargetFormat = Literal["dense", "pair"]
DataFormat = Literal["channels_first", "channels_last"]
TARGET_FORMATS: tuple[str, ...] = get_args(TargetFormat)
# Any (B, ...) array: a NumPy array, a torch tensor, another array-API array. The mixed
# output is of the same type as the input.
ArrayT = TypeVar("ArrayT")
DATA_FORMATS: tuple[str, ...] = get_args(DataFormat)

# uint8 batches are mixed in blocks of whole samples of about this many input bytes:
# vectorized over the samples of a block (a 64 x 1x28x28 batch is one block, 64 x
# 3x224x224 is 11), and the float32 temporaries stay small; whole-batch float copies
# measured ~10x slower here (page faults of fresh 38 MB buffers).
_UINT8_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class MixedTargets:
    """The ``(y_a, y_b, lam)`` form of two-source mixed targets.

    For a loss ``L`` that is not linear in its target, train on
    ``lam·L(out, y_a) + (1-lam)·L(out, y_b)`` per sample
    (see :func:`vicinal.losses.mixed_loss`).

    Attributes:
        y_a: the samples' own targets: int class ids (B,) when the input labels were
            ids and no smoothing was asked for, else float32 (B, C).
        y_b: the partners' targets, same form as ``y_a``.
        lam: float32 (B,), the weight of ``y_a``.
    """

    y_a: Any
    y_b: Any
    lam: Any


# --------------------------------------------------------------------------- validation


def _is_channels_last(data_format: str, x: Any) -> bool:
    """Whether ``x``'s channel axis is its last one, checked against torch's memory format.

    A torch tensor in ``torch.channels_last`` *memory format* is still shaped
    (B, C, H, W): its layout in memory says nothing about the order of its axes. Taking
    its last axis as the channels would paste CutMix boxes across the channel axis, so a
    4-d tensor in that memory format with ``data_format="channels_last"`` is refused.
    """
    check_choice("data_format", data_format, DATA_FORMATS)
    if data_format == "channels_first":
        return False
    if (
        is_torch_array(x)
        and x.ndim == 4
        and x.shape[1] > 1
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=_torch().channels_last)
    ):
        raise ValueError(
            "data_format='channels_last' means x is shaped (B, H, W, C), but x is an NCHW tensor in "
            f"torch.channels_last memory format (shape {tuple(x.shape)}); pass data_format='channels_first' "
            "(the memory format is kept either way)"
        )
    return True


def _torch() -> Any:
    import torch

    return torch


def _spatial_axes(ndim: int, channels_last: bool) -> tuple[int, int]:
    if channels_last:
        if ndim < 4:
            raise ValueError(f"data_format='channels_last' needs x of shape (B, H, W, C), got {ndim} dims")
        return ndim - 3, ndim - 2
    return ndim - 2, ndim - 1


def spatial_size(x: Any, data_format: DataFormat = "channels_first") -> tuple[int, int]:
    """(H, W) of a batch of images ``x`` ((B, C, H, W) or (B, H, W, C), or (B, H, W))."""
    if getattr(x, "ndim", 0) < 3:
        raise ValueError(
            f"CutMix needs x with at least 2 spatial dims (B, H, W[, ...]), got shape {tuple(getattr(x, 'shape', ()))}"
        )
    ah, aw = _spatial_axes(x.ndim, _is_channels_last(data_format, x))
    return int(x.shape[ah]), int(x.shape[aw])


def check_plan_inputs(
    plan: MixPlan,
    x: Any,
    y: Any = None,
    *,
    x_partner: Any = None,
    y_partner: Any = None,
    data_format: DataFormat = "channels_first",
) -> None:
    """Raise a clear error unless ``x``, ``y`` and the partners fit ``plan``.

    The checks :func:`apply_plan` makes before it mixes; front ends that apply a plan
    with other ops (:mod:`vicinal.keras`) call it to refuse the same inputs.
    """
    if not isinstance(plan, MixPlan):
        raise TypeError(f"plan must be a MixPlan, got {type(plan).__name__}")
    b = batch_size_of("x", x)
    if b != plan.batch_size:
        raise ValueError(f"x has batch size {b} but the plan was drawn for batch_size={plan.batch_size}")
    if y is not None and batch_size_of("y", y) != b:
        raise ValueError(f"x and y must have the same batch size, got {b} and {y.shape[0]}")
    if plan.source == "stream":
        if x_partner is None:
            raise ValueError("x_partner is required: the plan pairs with a second stream (pairing='stream')")
        if tuple(x_partner.shape) != tuple(x.shape) or x_partner.dtype != x.dtype:
            raise ValueError(
                f"x_partner must match x's shape {tuple(x.shape)} and dtype {x.dtype}, "
                f"got {tuple(x_partner.shape)} and {x_partner.dtype}"
            )
        if y is not None and y_partner is None:
            raise ValueError("y_partner is required with y when the plan pairs with a second stream")
        if y_partner is not None and (y is None or tuple(y_partner.shape) != tuple(y.shape)):
            raise ValueError("y_partner must have the same shape as y")
    elif x_partner is not None or y_partner is not None:
        raise ValueError("x_partner/y_partner are only used by plans with pairing='stream'")
    if plan.cut is not None:
        size = spatial_size(x, data_format)
        if size != plan.image_size:
            raise ValueError(f"x has spatial size {size} but the plan was drawn for image_size={plan.image_size}")


def _box_mask_np(plan: MixPlan, ndim: int, channels_last: bool) -> np.ndarray:
    """bool mask, broadcastable to x, True where the partner's box is pasted.

    Rows without CutMix have an empty box (all four coordinates 0), so their mask is
    all False.
    """
    assert plan.boxes is not None and plan.image_size is not None
    h, w = plan.image_size
    top, left, bottom, right = (plan.boxes[:, i, None] for i in range(4))
    rows = (np.arange(h) >= top) & (np.arange(h) < bottom)  # (B, H)
    cols = (np.arange(w) >= left) & (np.arange(w) < right)  # (B, W)
    mask = rows[:, :, None] & cols[:, None, :]  # (B, H, W)
    ah, _ = _spatial_axes(ndim, channels_last)
    shape = [plan.batch_size] + [1] * (ndim - 1)
    shape[ah], shape[ah + 1] = h, w
    return mask.reshape(shape)


# --------------------------------------------------------------------------- torch paths


def _weight_columns(plan: MixPlan, dtype: Any, device: Any, ndim: int) -> list[Any]:
    """K tensors (B, 1, ..., 1): the weight of each source. CutMix rows get (1, 0, ...)
    here; their box is pasted afterwards."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(plan.input_weights.T, dtype=np.float32)).to(dtype=dtype)
    if t.device != device:
        t = t.to(device, non_blocking=True)
    t = t.reshape((plan.num_sources, -1) + (1,) * (ndim - 1))
    return list(t.unbind(0))


def _cut_mask(plan: MixPlan, ndim: int, channels_last: bool, device: Any) -> Any:
    import torch

    if not plan.has_cut:
        return None
    return torch.from_numpy(_box_mask_np(plan, ndim, channels_last)).to(device)


def _combine_into(out: Any, x: Any, partners: list[Any], cols: list[Any], mask: Any) -> Any:
    """out = Σ_j cols[j]·source_j, then paste CutMix boxes from partner 0."""
    import torch

    if len(partners) == 1:
        torch.lerp(x, partners[0], cols[1], out=out)
    else:
        torch.mul(x, cols[0], out=out)
        for p, c in zip(partners, cols[1:]):
            out.addcmul_(p, c)
    if mask is not None:
        torch.where(mask, partners[0], out, out=out)
    return out


def _gather_partners(plan: MixPlan, x: Any, x_partner: Any, rows: slice = slice(None)) -> list[Any]:
    import torch

    if plan.source == "stream":
        return [x_partner[rows]]
    idx = torch.from_numpy(plan.partners[rows]).to(x.device)
    return [x.index_select(0, idx[:, j]) for j in range(idx.shape[1])]


def _mix_float_torch(plan: MixPlan, x: Any, x_partner: Any, out: Any, channels_last: bool) -> Any:
    """Mix a floating tensor; ``out`` may be ``x`` itself (in place) or another buffer."""
    import torch

    if plan.shift is not None and plan.num_sources == 2 and not plan.has_cut:
        # Roll pairing: the partner of rows [s:] is rows [:-s], a view; no gather pass.
        b, s = plan.batch_size, plan.shift[0] % plan.batch_size
        src = x.clone() if out.data_ptr() == x.data_ptr() else x  # in place would read rows it wrote
        w = torch.from_numpy(plan.weights[:, 1].astype(np.float32)).to(device=x.device, dtype=x.dtype)
        w = w.view((-1,) + (1,) * (x.ndim - 1))
        if s == 0:
            out.copy_(src)
        else:
            torch.lerp(src[s:], src[:-s], w[s:], out=out[s:])
            torch.lerp(src[:s], src[b - s :], w[:s], out=out[:s])
        return out
    cols = _weight_columns(plan, x.dtype, x.device, x.ndim)
    partners = _gather_partners(plan, x, x_partner)  # gathered copies: safe when out is x
    return _combine_into(out, x, partners, cols, _cut_mask(plan, x.ndim, channels_last, x.device))


def _mix_uint8_torch(plan: MixPlan, x: Any, x_partner: Any, out: Any, channels_last: bool) -> Any:
    """Same float32 ops as the float path, a few rows at a time, then rounded."""
    import torch

    cols = _weight_columns(plan, torch.float32, x.device, x.ndim)
    mask = _cut_mask(plan, x.ndim, channels_last, x.device)
    src = x.clone() if out.data_ptr() == x.data_ptr() else x
    rows_per_chunk = max(1, _UINT8_CHUNK_BYTES // max(1, x[0].numel()))
    for start in range(0, plan.batch_size, rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        partners = [p.to(torch.float32) for p in _gather_partners(plan, src, x_partner, rows)]
        xf = src[rows].to(torch.float32)
        _combine_into(xf, xf, partners, [c[rows] for c in cols], None if mask is None else mask[rows])
        out[rows].copy_(xf.round_())  # integral values in [0, 255]: the cast is exact
    return out


# --------------------------------------------------------------------------- generic path


def _mix_generic(plan: MixPlan, x: Any, x_partner: Any, channels_last: bool) -> Any:
    xp = array_namespace(x)
    integral = xp.isdtype(x.dtype, "integral")
    work = xp.astype(x, xp.float64) if integral else x
    shape = (-1,) + (1,) * (x.ndim - 1)

    def partner(j: int) -> Any:
        p = x_partner if plan.source == "stream" else xp.take(x, xp.asarray(plan.partners[:, j]), axis=0)
        return xp.astype(p, work.dtype) if integral else p

    w = plan.input_weights
    cols = [xp.astype(xp.reshape(xp.asarray(w[:, j]), shape), work.dtype) for j in range(plan.num_sources)]
    if plan.num_sources == 2:
        cols[1] = 1 - cols[0]  # as the reference writes it: x1·λ + x2·(1-λ), 1-λ in x's dtype
    out = work * cols[0]
    for j in range(plan.num_sources - 1):
        out = out + partner(j) * cols[j + 1]
    if plan.has_cut:
        out = xp.where(xp.asarray(_box_mask_np(plan, x.ndim, channels_last)), partner(0), out)
    if integral:
        info = xp.iinfo(x.dtype)
        out = xp.astype(xp.clip(xp.round(out), info.min, info.max), x.dtype)
    return out


# --------------------------------------------------------------------------- labels


def _mix_labels(
    plan: MixPlan, y: Any, y_partner: Any, num_classes: int | None, label_smoothing: float, targets: str
) -> Any:
    xp = array_namespace(y)
    eps = check_probability("label_smoothing", label_smoothing)
    c = check_labels(y, num_classes)
    if y_partner is not None:
        check_labels(y_partner, c)

    torch_labels = is_torch_array(y)

    def partner(form: Any, form_partner: Any, j: int) -> Any:
        if plan.source == "stream":
            return form_partner
        if torch_labels:  # direct call: the array-API wrappers cost more than the gather here
            import torch

            return form.index_select(0, torch.from_numpy(plan.partners[:, j]).to(form.device))
        return xp.take(form, xp.asarray(plan.partners[:, j], device=_device(y)), axis=0)

    if targets == "pair":
        if plan.num_sources != 2:
            raise ValueError("targets='pair' needs a two-source plan (not method='kway')")
        if is_class_ids(y) and eps == 0:
            ya, yp = y, y_partner
        else:
            ya = soft_unchecked(y, c, eps)
            yp = None if y_partner is None else soft_unchecked(y_partner, c, eps)
        lam = xp.asarray(plan.weights[:, 0].astype(np.float32), device=_device(y))
        return MixedTargets(y_a=ya, y_b=partner(ya, yp, 0), lam=lam)

    soft = soft_unchecked(y, c, eps)
    soft_p = None if y_partner is None else soft_unchecked(y_partner, c, eps)
    if torch_labels:
        import torch

        w = torch.from_numpy(plan.weights.astype(np.float32)).to(y.device)
    else:
        w = xp.asarray(plan.weights.astype(np.float32), device=_device(y))
    cols = [w[:, j : j + 1] for j in range(plan.num_sources)]
    if plan.num_sources == 2:
        cols[1] = 1 - cols[0]
    mixed = soft * cols[0]
    for j in range(plan.num_sources - 1):
        mixed = mixed + partner(soft, soft_p, j) * cols[j + 1]
    return mixed


def _device(a: Any) -> Any:
    from array_api_compat import device

    return device(a)


# --------------------------------------------------------------------------- public


def apply_plan(
    plan: MixPlan,
    x: ArrayT,
    y: Any = None,
    *,
    num_classes: int | None = None,
    label_smoothing: float = 0.0,
    x_partner: Any = None,
    y_partner: Any = None,
    out: Any = None,
    data_format: DataFormat = "channels_first",
    targets: TargetFormat = "dense",
) -> tuple[ArrayT, Any]:
    """Mix a batch according to ``plan``.

    Args:
        plan: from :func:`vicinal.sampling.sample_plan`, for this batch size.
        x: (B, ...) inputs: NumPy array or torch tensor, floating or integer (uint8
            images are mixed in float and rounded half-to-even back to uint8).
        y: optional labels: int class ids (B,) with ``num_classes``, or floating soft
            labels (B, C).
        label_smoothing: ε applied to the labels before mixing (see :mod:`vicinal.labels`).
        x_partner, y_partner: the second batch, for plans drawn with ``pairing="stream"``.
        out: torch only: a preallocated tensor like ``x`` to write into; pass ``x``
            itself to mix in place. Reusing a buffer avoids page-faulting a fresh batch
            every step.
        data_format: ``"channels_first"``: images are (B, C, H, W) (or (B, H, W));
            ``"channels_last"``: (B, H, W, C). Only CutMix needs to know. This is the
            order of the axes, not torch's memory format: an NCHW tensor in
            ``torch.channels_last`` memory format is ``"channels_first"``, and the
            output keeps the input's memory format.
        targets: ``"dense"`` returns float32 (B, C) soft targets; ``"pair"`` returns
            :class:`MixedTargets` ``(y_a, y_b, lam)``.

    Returns:
        ``(x_mixed, y_mixed)``; ``x_mixed`` has ``x``'s shape, dtype and device;
        ``y_mixed`` is None when ``y`` is None. The inputs are not modified unless
        ``out`` aliases them.
    """
    check_choice("targets", targets, TARGET_FORMATS)
    check_plan_inputs(plan, x, y, x_partner=x_partner, y_partner=y_partner, data_format=data_format)
    channels_last = _is_channels_last(data_format, x)
    y_mixed = None if y is None else _mix_labels(plan, y, y_partner, num_classes, label_smoothing, targets)

    if is_torch_array(x):
        import torch

        if out is None:
            out = torch.empty_like(x)
        elif tuple(out.shape) != tuple(x.shape) or out.dtype != x.dtype or out.device != x.device:
            raise ValueError(
                f"out must match x's shape, dtype and device {tuple(x.shape)}/{x.dtype}/{x.device}, "
                f"got {tuple(out.shape)}/{out.dtype}/{out.device}"
            )
        if plan.is_identity:
            if out.data_ptr() != x.data_ptr():
                out.copy_(x)
            return out, y_mixed
        if x.is_floating_point():
            return _mix_float_torch(plan, x, x_partner, out, channels_last), y_mixed
        if x.dtype == torch.uint8:
            return _mix_uint8_torch(plan, x, x_partner, out, channels_last), y_mixed
        raise TypeError(f"x must be a floating-point or uint8 tensor, got dtype {x.dtype}")
    if out is not None:
        raise ValueError("out is only supported for torch tensors")
    return _mix_generic(plan, x, x_partner, channels_last), y_mixed
