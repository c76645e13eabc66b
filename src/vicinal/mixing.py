"""Applying a :class:`~vicinal.sampling.MixPlan` to a batch of inputs and labels.

Inputs are any ``(B, ...)`` array: images NCHW or NHWC, or features such as
``(B, T, F)``. NumPy (and any array-API library) goes through a generic path that
evaluates the textbook formula ``x·λ + x_partner·(1-λ)``; PyTorch tensors take torch
paths that stay on the input's device and dtype:

* the plan enters as a few small tensors (:class:`PlanTensors`), copied to the device
  in one non-blocking transfer; CutMix masks are built on the device from the (B, 4)
  boxes. With ``validate=False`` a call makes no device→host read at all.
* floating tensors are mixed with one fused ``lerp`` pass. With ``pairing="roll"`` or a
  second stream the partner is read as a view, so no gather is needed; in place
  (``out=x``) costs at most one scratch batch. ``lerp`` rounds once, so it can differ
  from the two-product formula by about one float ulp.
* ``uint8`` tensors (for a DataLoader ``collate_fn``) are mixed in float32 with the
  very same ops, a few samples at a time to stay in cache, then rounded half-to-even
  and stored as ``uint8``: the result equals the float path rounded.
* when autograd records (grad mode on and ``x`` or ``x_partner`` requires grad: hidden
  states, embeddings) and inside ``torch.compile``, the same ops run out of place, so
  gradients flow to ``x`` and ``x_partner``, and the graph has no ``out=`` ops. The
  values are the same as the in-place path's.

Inside ``torch.compile(fullgraph=True)`` pass the plan as tensors, built outside the
compiled function (NumPy is not traced)::

    tensors = plan_to_tensors(mixer.plan(x, step=step), x.device)
    x_mixed, y_mixed = compiled_step(x, y, tensors)  # calls apply_plan(tensors, x, y, ...)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

import numpy as np
from array_api_compat import array_namespace

from vicinal._checks import check_choice, check_int, check_probability
from vicinal.labels import batch_size_of, check_labels, is_class_ids, is_torch_tensor, soft_unchecked, torch_compiling
from vicinal.sampling import MixPlan

if TYPE_CHECKING:
    import torch

TargetFormat = Literal["dense", "pair"]
DataFormat = Literal["channels_first", "channels_last"]
TARGET_FORMATS: tuple[str, ...] = get_args(TargetFormat)
# Any (B, ...) array: a NumPy array, a torch tensor, another array-API array. The mixed
# output is of the same type as the input.
ArrayT = TypeVar("ArrayT")
DATA_FORMATS: tuple[str, ...] = get_args(DataFormat)

# uint8 batches are mixed in blocks of whole samples of about this many input bytes:
# vectorized over the samples of a block (a 64 x 1x28x28 batch is one block, 64 x
# 3x224x224 is 64 blocks of one sample), and the float32 workspace stays near the
# cache; whole-batch float copies measured ~10x slower here (page faults of fresh 38 MB
# buffers), and 1 MiB blocks ~15% slower than 256 KiB ones.
_UINT8_CHUNK_BYTES = 1 << 18
_ROUND_MAGIC = 12582912.0  # 1.5 * 2**23
# On the CPU, CutMix boxes of samples at least this big are pasted one sample at a time
# (a copy of the box region, ~B small calls), instead of a blend and a select over the
# whole batch through a (B, H, W) mask, which reads and writes every pixel ~3 more times.
_BOX_LOOP_MIN_BYTES = 16 << 10


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


@dataclass(frozen=True, eq=False)
class PlanTensors:
    """A :class:`~vicinal.sampling.MixPlan` as torch tensors on one device.

    Built by :func:`plan_to_tensors`; :func:`apply_plan` takes it in place of the plan
    and then runs torch ops only (no NumPy, no array-API wrappers), so a call traces
    into ``torch.compile(fullgraph=True)``. The tensors' shapes and the other fields
    depend only on the config, the batch size and the image size, so a compiled
    function is not recompiled from one step's plan to the next.

    Attributes:
        weights: float32 (B, K): the label weights (:attr:`MixPlan.weights`).
        input_weights: float32 (B, K): the weights that blend the inputs
            (:attr:`MixPlan.input_weights`: ``(1, 0, ...)`` on CutMix'ed rows).
        partners: int64 (B, K-1): partner rows (:attr:`MixPlan.partners`).
        boxes: int64 (B, 4) ``(top, left, bottom, right)``, all 0 on rows without a
            box; present for every CutMix and switch plan, else None.
        source: ``"batch"`` or ``"stream"`` (partners from ``x_partner``).
        shift: the roll shifts (:attr:`MixPlan.shift`), or None.
        image_size: (H, W) for plans with boxes, else None.
    """

    weights: torch.Tensor
    input_weights: torch.Tensor
    partners: torch.Tensor
    boxes: torch.Tensor | None
    source: Literal["batch", "stream"]
    shift: tuple[int, ...] | None
    image_size: tuple[int, int] | None

    @property
    def batch_size(self) -> int:
        return int(self.weights.shape[0])

    @property
    def num_sources(self) -> int:
        return int(self.weights.shape[1])

    @property
    def device(self) -> torch.device:
        return self.weights.device


def plan_to_tensors(plan: MixPlan, device: Any = None) -> PlanTensors:
    """``plan``'s numbers as torch tensors on ``device`` (default: the CPU).

    For an accelerator: one host→device transfer, non-blocking (from pinned memory on
    CUDA), so no sync. On the CPU the integer tensors share memory with the plan's
    arrays. Call it outside a compiled function and pass the result to
    :func:`apply_plan` inside it.

    >>> import torch
    >>> from vicinal import MixConfig, sample_plan
    >>> plan = sample_plan(MixConfig("cutmix"), 4, seed=0, image_size=(8, 8))
    >>> t = plan_to_tensors(plan)
    >>> tuple(t.weights.shape), tuple(t.partners.shape), tuple(t.boxes.shape), t.image_size
    ((4, 2), (4, 1), (4, 4), (8, 8))
    """
    if not isinstance(plan, MixPlan):
        raise TypeError(f"plan must be a MixPlan, got {type(plan).__name__}")
    return _to_tensors(plan, device, keep_boxes=True)


def _to_tensors(plan: MixPlan, device: Any, *, keep_boxes: bool) -> PlanTensors:
    """:func:`plan_to_tensors`; ``keep_boxes=False`` drops boxes when no row has one
    (eager calls then skip the mask)."""
    import torch

    b, k = plan.batch_size, plan.num_sources
    boxes = plan.boxes if plan.boxes is not None and (keep_boxes or plan.has_cut) else None
    dev = torch.device("cpu") if device is None else torch.device(device)
    if dev.type == "cpu":  # no transfer: wrap the plan's arrays (~3x less overhead than packing)
        weights = torch.from_numpy(plan.weights.astype(np.float32))
        input_weights = torch.from_numpy(plan.input_weights.astype(np.float32)) if plan.has_cut else weights
        partners = torch.from_numpy(np.ascontiguousarray(plan.partners, dtype=np.int64))
        t_boxes = None if boxes is None else torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.int64))
    else:
        # One byte buffer, one transfer: int64 (B, n_int) [partners | boxes], then float32
        # (B, 2K) [weights | input_weights]; the int64 block first keeps both aligned.
        n_int = k - 1 + (0 if boxes is None else 4)
        int_bytes = b * n_int * 8
        raw = np.empty(int_bytes + b * 2 * k * 4, dtype=np.uint8)
        ints = raw[:int_bytes].view(np.int64).reshape(b, n_int)
        floats = raw[int_bytes:].view(np.float32).reshape(b, 2 * k)
        ints[:, : k - 1] = plan.partners
        if boxes is not None:
            ints[:, k - 1 :] = boxes
        floats[:, :k] = plan.weights
        floats[:, k:] = plan.input_weights
        buf = torch.from_numpy(raw)
        # From pinned memory the copy is asynchronous: no sync (pageable memory may sync).
        buf = (buf.pin_memory() if dev.type == "cuda" else buf).to(dev, non_blocking=True)
        t_int = buf[:int_bytes].view(torch.int64).view(b, n_int)
        t_float = buf[int_bytes:].view(torch.float32).view(b, 2 * k)
        weights, input_weights = t_float[:, :k], t_float[:, k:]
        partners = t_int[:, : k - 1]
        t_boxes = None if boxes is None else t_int[:, k - 1 :]
    return PlanTensors(
        weights=weights,
        input_weights=input_weights,
        partners=partners,
        boxes=t_boxes,
        source=plan.source,
        shift=plan.shift,
        image_size=plan.image_size if boxes is not None else None,
    )


def _tensors_on(t: PlanTensors, device: Any) -> PlanTensors:
    if t.device == device:
        return t
    boxes = None if t.boxes is None else t.boxes.to(device)
    return replace(
        t,
        weights=t.weights.to(device),
        input_weights=t.input_weights.to(device),
        partners=t.partners.to(device),
        boxes=boxes,
    )


# --------------------------------------------------------------------------- validation


def _torch() -> Any:
    return sys.modules["torch"]  # only called for torch tensors: torch is imported


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
        is_torch_tensor(x)
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
    plan: MixPlan | PlanTensors,
    x: Any,
    y: Any = None,
    *,
    x_partner: Any = None,
    y_partner: Any = None,
    data_format: DataFormat = "channels_first",
) -> None:
    """Raise a clear error unless ``x``, ``y`` and the partners fit ``plan``.

    The checks :func:`apply_plan` makes before it mixes (shapes only: no values are
    read); front ends that apply a plan with other ops (:mod:`vicinal.keras`) call it to
    refuse the same inputs.
    """
    if not isinstance(plan, (MixPlan, PlanTensors)):
        raise TypeError(f"plan must be a MixPlan or PlanTensors, got {type(plan).__name__}")
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
    has_boxes = plan.cut is not None if isinstance(plan, MixPlan) else plan.boxes is not None
    if has_boxes:
        size = spatial_size(x, data_format)
        if size != plan.image_size:
            raise ValueError(f"x has spatial size {size} but the plan was drawn for image_size={plan.image_size}")


def _check_finite(name: str, a: Any) -> None:
    """Raise naming the samples of ``a`` that hold NaN or inf (``check_finite=True``)."""
    if is_torch_tensor(a):
        torch = _torch()
        if not a.is_floating_point() or a.device.type == "meta":
            return
        if torch_compiling():
            torch._assert_async(torch.isfinite(a).all(), f"{name} holds NaN or inf")
            return
        lo, hi = torch.aminmax(a.detach().reshape(a.shape[0], -1), dim=1)  # one read; NaN propagates
        bad = ~(torch.isfinite(lo) & torch.isfinite(hi))
        if not bool(bad.any()):
            return
        rows: list[int] = bad.nonzero().flatten().tolist()
    else:
        xp = array_namespace(a)
        if not xp.isdtype(a.dtype, "real floating"):
            return
        bad = ~xp.all(xp.isfinite(xp.reshape(a, (a.shape[0], -1))), axis=1)
        rows = [int(i) for i in np.flatnonzero(np.asarray(bad))]
        if not rows:
            return
    shown = f"{rows[:8]}" + (f" and {len(rows) - 8} more" if len(rows) > 8 else "")
    raise ValueError(
        f"{name} holds NaN or inf in samples {shown}: mixing would spread them into the samples "
        "paired with them (check_finite=True)"
    )


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


def _box_mask(t: PlanTensors, ndim: int, channels_last: bool, device: Any) -> Any:
    """:func:`_box_mask_np` on the device, from the (B, 4) boxes: no host copy."""
    torch = _torch()
    assert t.boxes is not None and t.image_size is not None
    h, w = t.image_size
    b = t.batch_size
    corners = t.boxes.reshape(b, 2, 2, 1)  # [[top, left], [bottom, right]]
    ar = torch.arange(max(h, w), device=device)
    inside = (ar >= corners[:, 0]) & (ar < corners[:, 1])  # (B, 2, max(H, W)): row i / column j in the box
    if torch_compiling():  # the compiler fuses the ops (and Inductor's C++ cannot bitcast bool)
        return torch.reshape(inside[:, 0, :h, None] & inside[:, 1, None, :w], _mask_shape(b, h, w, ndim, channels_last))
    # Eager: & on uint8 viewed as bool is ~4x faster than & on bool on the CPU.
    inside = inside.view(torch.uint8)
    mask = (inside[:, 0, :h, None] & inside[:, 1, None, :w]).view(torch.bool)  # (B, H, W)
    return mask.reshape(_mask_shape(b, h, w, ndim, channels_last))


def _mask_shape(b: int, h: int, w: int, ndim: int, channels_last: bool) -> list[int]:
    """The shape that broadcasts a (B, H, W) mask against x."""
    ah, _ = _spatial_axes(ndim, channels_last)
    shape = [b] + [1] * (ndim - 1)
    shape[ah], shape[ah + 1] = h, w
    return shape


def _weight_columns(t: PlanTensors, dtype: Any, ndim: int) -> list[Any]:
    """K tensors (B, 1, ..., 1): the weight of each source. CutMix rows get (1, 0, ...)
    here; their box is pasted afterwards."""
    return list(t.input_weights.to(dtype).T.reshape((t.num_sources, -1) + (1,) * (ndim - 1)).unbind(0))


def _combine_into(out: Any, x: Any, partners: list[Any], cols: list[Any], mask: Any) -> Any:
    """out = Σ_j cols[j]·source_j, then paste CutMix boxes from partner 0."""
    torch = _torch()
    if len(partners) == 1:
        torch.lerp(x, partners[0], cols[1], out=out)
    else:
        torch.mul(x, cols[0], out=out)
        for p, c in zip(partners, cols[1:]):
            out.addcmul_(p, c)
    if mask is not None:
        torch.where(mask, partners[0], out, out=out)
    return out


def _gather_partners(t: PlanTensors, x: Any, x_partner: Any, rows: slice = slice(None)) -> list[Any]:
    if t.source == "stream":
        return [x_partner[rows]]
    idx = t.partners[rows]
    return [x.index_select(0, idx[:, j]) for j in range(t.num_sources - 1)]


def _mix_roll(x: Any, out: Any, w: Any, shift: int) -> Any:
    """Two-source roll pairing: the partner of rows [s:] is rows [:-s], a view, so no
    gather pass; ``w`` (B, 1, ...) is the partner's input weight in x's dtype."""
    torch = _torch()
    b, s = x.shape[0], shift % x.shape[0]
    src = x.clone() if out.data_ptr() == x.data_ptr() else x  # in place would read rows it wrote
    if s == 0:
        out.copy_(src)
    else:
        torch.lerp(src[s:], src[:-s], w[s:], out=out[s:])
        torch.lerp(src[:s], src[b - s :], w[:s], out=out[:s])
    return out


def _mix_float_torch(t: PlanTensors, x: Any, x_partner: Any, out: Any, channels_last: bool) -> Any:
    """Mix a floating tensor; ``out`` may be ``x`` itself (in place) or another buffer."""
    if t.shift is not None and t.num_sources == 2 and t.boxes is None:
        w = t.input_weights[:, 1].to(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        return _mix_roll(x, out, w, t.shift[0])
    cols = _weight_columns(t, x.dtype, x.ndim)
    partners = _gather_partners(t, x, x_partner)  # gathered copies: safe when out is x
    mask = None if t.boxes is None else _box_mask(t, x.ndim, channels_last, x.device)
    return _combine_into(out, x, partners, cols, mask)


def _mix_uint8_torch(t: PlanTensors, x: Any, x_partner: Any, out: Any, channels_last: bool) -> Any:
    """Same float32 ops as the float path, a few rows at a time, then rounded.

    One float32 workspace serves every block. With the roll pairing a block's partner
    rows are its own rows shifted by ``s``: rows ``[start - s, stop)`` are converted to
    float once and read as both sources (no gather, one conversion instead of two).
    """
    torch = _torch()
    cols = _weight_columns(t, torch.float32, x.ndim)
    mask = None if t.boxes is None else _box_mask(t, x.ndim, channels_last, x.device)
    src = x.clone() if out.data_ptr() == x.data_ptr() else x
    b = t.batch_size
    rows_per_chunk = max(1, _UINT8_CHUNK_BYTES // max(1, x[0].numel()))
    n = min(rows_per_chunk, b)
    roll = t.shift is not None and t.num_sources == 2
    s = t.shift[0] % b if roll else 0  # type: ignore[index]
    tail = tuple(x.shape[1:])
    ext_buf = torch.empty((n + s,) + tail, dtype=torch.float32, device=x.device)
    res_buf = torch.empty((n,) + tail, dtype=torch.float32, device=x.device) if roll else None
    for start in range(0, b, rows_per_chunk):
        stop = min(start + rows_per_chunk, b)
        m = stop - start
        if roll:
            assert res_buf is not None
            ext, xf = ext_buf[: m + s], res_buf[:m]
            lo = start - s  # ext row r holds sample (lo + r) % B
            if lo >= 0:
                ext.copy_(src[lo:stop])
            else:
                ext[:-lo].copy_(src[b + lo :])
                ext[-lo:].copy_(src[:stop])
            partners, own = [ext[:m]], ext[s:]
        else:
            xf = own = ext_buf[:m]
            own.copy_(src[start:stop])
            partners = [p.to(torch.float32) for p in _gather_partners(t, src, x_partner, slice(start, stop))]
        _combine_into(xf, own, partners, [c[start:stop] for c in cols], None if mask is None else mask[start:stop])
        # Round half to even and cast in two passes instead of round_ + a float->uint8
        # cast: v + 1.5·2^23 (v in [0, 255]) rounds v to an integer in the float's low
        # mantissa bits (float32's ulp is 1 there), which the int32 -> uint8 cast keeps.
        xf.add_(_ROUND_MAGIC)
        out[start:stop].copy_(xf.view(torch.int32))
    return out


def _box_region(a: Any, i: int, box: Any, ah: int) -> Any:
    """The view of sample ``i`` of ``a`` inside ``box`` = (top, left, bottom, right)."""
    index: list[Any] = [i] + [slice(None)] * (a.ndim - 1)
    index[ah] = slice(box[0], box[2])
    index[ah + 1] = slice(box[1], box[3])
    return a[tuple(index)]


def _mix_boxes_cpu(
    plan: MixPlan | PlanTensors, t: PlanTensors | None, x: Any, x_partner: Any, out: Any, channels_last: bool
) -> Any:
    """CutMix (and switch) plans on the CPU for big samples: blend only the rows that
    blend, copy the others, then paste each box with one copy of its region.

    The same values as the mask path (whose cut rows are ``lerp(x, partner, 0) == x``
    outside the box), with the memory traffic of about one copy of the batch plus one of
    the pasted areas. ``out`` may be ``x`` (in place): the pasted regions are then read
    before anything is written.
    """
    if isinstance(plan, MixPlan):
        assert plan.boxes is not None
        boxes, partners, w1 = plan.boxes, plan.partners[:, 0], plan.input_weights[:, 1]
    else:
        assert plan.boxes is not None
        boxes, partners, w1 = plan.boxes.numpy(), plan.partners[:, 0].numpy(), plan.input_weights[:, 1].numpy()
    rows = np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).tolist()
    box_list, partner_list = boxes.tolist(), partners.tolist()
    ah, _ = _spatial_axes(x.ndim, channels_last)
    source = x_partner if plan.source == "stream" else x
    in_place = out.data_ptr() == x.data_ptr()
    patches = None
    if in_place and source is x:
        patches = [_box_region(x, partner_list[i], box_list[i], ah).clone() for i in rows]
    if bool(np.any(w1 != 0)):  # some rows blend (switch): mix the batch without boxes
        tb = t if t is not None else _to_tensors(plan, x.device, keep_boxes=False)  # type: ignore[arg-type]
        tb = replace(tb, boxes=None, image_size=None)
        if x.is_floating_point():
            _mix_float_torch(tb, x, x_partner, out, channels_last)
        else:
            _mix_uint8_torch(tb, x, x_partner, out, channels_last)
    elif not in_place:
        out.copy_(x)
    for n, i in enumerate(rows):
        box = box_list[i]
        patch = patches[n] if patches is not None else _box_region(source, partner_list[i], box, ah)
        _box_region(out, i, box, ah).copy_(patch)
    return out


def _mix_functional(t: PlanTensors, x: Any, x_partner: Any, channels_last: bool) -> Any:
    """The torch mixing out of place: differentiable, and free of ``out=`` ops for
    ``torch.compile``. Same ops as the in-place paths, so the same values."""
    torch = _torch()
    uint8 = x.dtype == torch.uint8
    work = x.to(torch.float32) if uint8 else x
    work_partner = x_partner.to(torch.float32) if uint8 and x_partner is not None else x_partner
    k = t.num_sources

    def partner(j: int) -> Any:
        if t.source == "stream":
            return work_partner
        if t.shift is not None:  # partners[:, j] == (i - shift[j]) % B: a roll
            return torch.roll(work, t.shift[j], 0)
        return work.index_select(0, t.partners[:, j])

    partners = [partner(j) for j in range(k - 1)]
    cols = _weight_columns(t, work.dtype, x.ndim)
    if k == 2:
        mixed = torch.lerp(work, partners[0], cols[1])
    else:
        mixed = torch.mul(work, cols[0])
        for p, c in zip(partners, cols[1:]):
            mixed = torch.addcmul(mixed, p, c)
    if t.boxes is not None:
        mixed = torch.where(_box_mask(t, x.ndim, channels_last, x.device), partners[0], mixed)
    if uint8:
        mixed = mixed.round().to(torch.uint8)
    # Keep x's memory format (gathers and masks return NCHW-contiguous tensors).
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        mixed = mixed.contiguous(memory_format=torch.channels_last)
    return mixed


def _mix_torch(
    plan: MixPlan | PlanTensors, x: Any, x_partner: Any, out: Any, channels_last: bool, tensors: PlanTensors | None
) -> Any:
    """Dispatch among the torch paths; ``tensors`` is ``plan`` as tensors on x's device
    when already built."""
    torch = _torch()
    grad = torch.is_grad_enabled() and (x.requires_grad or (x_partner is not None and x_partner.requires_grad))
    functional = grad or torch_compiling() or x.device.type == "meta"
    if isinstance(plan, MixPlan) and plan.is_identity:
        if out is None:
            return x.clone()
        if functional or out.data_ptr() != x.data_ptr():
            out.copy_(x)
        return out
    if functional:
        t = tensors if tensors is not None else _to_tensors(plan, x.device, keep_boxes=False)  # type: ignore[arg-type]
        mixed = _mix_functional(t, x, x_partner, channels_last)
        return mixed if out is None else out.copy_(mixed)  # out: only under torch.compile
    if out is None:
        out = torch.empty_like(x)
    host = isinstance(plan, MixPlan)
    has_boxes = plan.has_cut if host else plan.boxes is not None  # type: ignore[union-attr]
    if has_boxes and x.device.type == "cpu" and x[0].numel() * x.element_size() >= _BOX_LOOP_MIN_BYTES:
        return _mix_boxes_cpu(plan, tensors, x, x_partner, out, channels_last)
    roll = host and tensors is None and plan.shift is not None and plan.num_sources == 2 and not has_boxes
    if roll and x.is_floating_point():  # the weight column straight from the host plan: no PlanTensors
        w = torch.from_numpy(plan.input_weights[:, 1].astype(np.float32).reshape((-1,) + (1,) * (x.ndim - 1)))  # type: ignore[union-attr]
        return _mix_roll(x, out, w if x.dtype == torch.float32 else w.to(x.dtype), plan.shift[0])  # type: ignore[index]
    t = tensors if tensors is not None else _to_tensors(plan, x.device, keep_boxes=False)  # type: ignore[arg-type]
    if x.is_floating_point():
        return _mix_float_torch(t, x, x_partner, out, channels_last)
    return _mix_uint8_torch(t, x, x_partner, out, channels_last)


def _check_torch_x(x: Any, x_partner: Any, out: Any, plan: MixPlan | PlanTensors) -> None:
    torch = _torch()
    if not (x.is_floating_point() or x.dtype == torch.uint8):
        raise TypeError(f"x must be a floating-point or uint8 tensor, got dtype {x.dtype}")
    if isinstance(plan, PlanTensors) and plan.device != x.device:
        raise ValueError(
            f"the plan's tensors are on {plan.device} but x is on {x.device}: build them with "
            "plan_to_tensors(plan, x.device)"
        )
    if out is None:
        return
    if tuple(out.shape) != tuple(x.shape) or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(
            f"out must match x's shape, dtype and device {tuple(x.shape)}/{x.dtype}/{x.device}, "
            f"got {tuple(out.shape)}/{out.dtype}/{out.device}"
        )
    grad = x.requires_grad or out.requires_grad or (x_partner is not None and x_partner.requires_grad)
    if torch.is_grad_enabled() and grad:
        raise ValueError(
            "out= mixes in place, which autograd cannot differentiate, but x, x_partner or out requires grad: "
            "pass out=None (the result is then a new tensor in the graph), or mix under torch.no_grad()"
        )


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


def _check_generic_x(x: Any) -> None:
    xp = array_namespace(x)
    if not (xp.isdtype(x.dtype, "real floating") or xp.isdtype(x.dtype, "integral")):
        raise TypeError(f"x must be a floating-point or integer array, got dtype {x.dtype}")


# --------------------------------------------------------------------------- labels


def _combine_labels(
    y: Any,
    y_partner: Any,
    c: int,
    eps: float,
    targets: str,
    weights: Any,
    partner: Callable[[Any, Any, int], Any],
) -> Any:
    """The label recipe of both backends: smooth, then weigh each source's targets.

    ``weights`` is the plan's float32 (B, K) weights in ``y``'s library and device;
    ``partner(form, form_partner, j)`` fetches partner ``j``'s rows of ``form`` (or the
    second stream's ``form_partner``). Only those two differ between the torch path
    (torch ops only, so it traces under torch.compile) and the array-API path.
    """
    if targets == "pair":
        if is_class_ids(y) and eps == 0:
            ya, yp = y, y_partner
        else:
            ya = soft_unchecked(y, c, eps)
            yp = None if y_partner is None else soft_unchecked(y_partner, c, eps)
        return MixedTargets(y_a=ya, y_b=partner(ya, yp, 0), lam=weights[:, 0])
    soft = soft_unchecked(y, c, eps)
    soft_p = None if y_partner is None else soft_unchecked(y_partner, c, eps)
    return _weigh_targets(soft, soft_p, weights, partner)


def _weigh_targets(soft: Any, soft_p: Any, weights: Any, partner: Callable[[Any, Any, int], Any]) -> Any:
    """Σ_j weights[:, j] · (source j's soft targets), in any array library (see :func:`_combine_labels`)."""
    k = int(weights.shape[1])
    cols: list[Any] = [weights[:, j : j + 1] for j in range(k)]
    if k == 2:
        cols[1] = 1 - cols[0]  # as the reference writes it: y1·λ + y2·(1-λ)
    mixed = soft * cols[0]
    for j in range(k - 1):
        mixed = mixed + partner(soft, soft_p, j) * cols[j + 1]
    return mixed


def _mix_labels_torch(
    t: PlanTensors,
    y: Any,
    y_partner: Any,
    num_classes: int | None,
    eps: float,
    targets: str,
    multi_label: bool,
    validate: bool,
) -> Any:
    """Torch labels mixed by plan tensors ``t`` on ``y``'s device; torch ops only."""
    c = check_labels(y, num_classes, multi_label=multi_label, validate=validate)
    if y_partner is not None:
        check_labels(y_partner, c, multi_label=multi_label, validate=validate, name="y_partner")

    def partner(form: Any, form_partner: Any, j: int) -> Any:
        return form_partner if t.source == "stream" else form.index_select(0, t.partners[:, j])

    return _combine_labels(y, y_partner, c, eps, targets, t.weights, partner)


def _mix_labels(
    plan: MixPlan,
    y: Any,
    y_partner: Any,
    num_classes: int | None,
    eps: float,
    targets: str,
    multi_label: bool,
    validate: bool,
) -> Any:
    """Array-API (non-torch) labels mixed by a host plan."""
    xp = array_namespace(y)
    c = check_labels(y, num_classes, multi_label=multi_label, validate=validate)
    if y_partner is not None:
        check_labels(y_partner, c, multi_label=multi_label, validate=validate, name="y_partner")

    def partner(form: Any, form_partner: Any, j: int) -> Any:
        if plan.source == "stream":
            return form_partner
        return xp.take(form, xp.asarray(plan.partners[:, j], device=_device(y)), axis=0)

    weights = xp.asarray(plan.weights.astype(np.float32), device=_device(y))
    return _combine_labels(y, y_partner, c, eps, targets, weights, partner)


_host_id_dtypes: frozenset[Any] = frozenset()


def _host_dtypes() -> frozenset[Any]:
    """Torch dtypes of class ids that NumPy reads without a copy (built on first use:
    torch is imported by then)."""
    global _host_id_dtypes
    if not _host_id_dtypes:
        torch = _torch()
        _host_id_dtypes = frozenset({torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8})
    return _host_id_dtypes


def _host_ids(y: Any) -> bool:
    """Whether torch labels ``y`` can take :func:`_mix_labels_host`: class ids (B,) in
    host memory, outside autograd and ``torch.compile``."""
    torch = _torch()
    return (
        type(y) is torch.Tensor  # not a subclass (fake, functional tensors...)
        and y.ndim == 1
        and y.device.type == "cpu"
        and y.dtype in _host_dtypes()
        and not torch_compiling()
        and not torch._C._functorch.is_functorch_wrapped_tensor(y)  # vmap, grad: no storage
    )


def _soft_np(y: np.ndarray, c: int, eps: float) -> np.ndarray:
    """:func:`vicinal.labels.soft_unchecked` of class ids in NumPy: the same float32 ops."""
    soft: np.ndarray = (y[:, None] == np.arange(c)).astype(np.float32)
    if eps > 0:
        soft = soft * (1.0 - eps) + eps / c
    return soft


def _mix_labels_host(plan: MixPlan, y: Any, y_partner: Any, num_classes: int | None, eps: float, targets: str) -> Any:
    """Torch class ids on the CPU, checked and mixed in NumPy on the tensors' memory.

    Used when the ids are validated, which reads them on the host once anyway. The
    torch recipe of :func:`_combine_labels` costs ~10 torch calls of a few µs each on
    (B, C) arrays; the same float32 operations in NumPy give the same values (each
    product and sum is rounded once to float32 either way) in a fraction of the time.
    """
    torch = _torch()
    if num_classes is None:  # the general path raises the usual error
        check_labels(y, num_classes)
    c = check_int("num_classes", num_classes, minimum=1)
    ids = y.numpy()
    ids_p = None if y_partner is None else y_partner.numpy()
    for name, a in (("y", ids), ("y_partner", ids_p)):
        if a is not None:
            lo, hi = int(a.min()), int(a.max())
            if lo < 0 or hi >= c:
                raise ValueError(f"{name} holds class ids in [{lo}, {hi}], expected ids in [0, num_classes={c})")
    weights = plan.weights.astype(np.float32)
    stream = plan.source == "stream"
    idx = plan.partners

    def partner(form: np.ndarray, form_partner: Any, j: int) -> np.ndarray:
        return form_partner if stream else form[idx[:, j]]  # type: ignore[no-any-return]

    if targets == "pair":
        if eps == 0:
            y_b = y_partner if stream else torch.from_numpy(partner(ids, None, 0))
            return MixedTargets(y_a=y, y_b=y_b, lam=torch.from_numpy(weights[:, 0]))
        soft = _soft_np(ids, c, eps)
        soft_b = partner(soft, None if ids_p is None else _soft_np(ids_p, c, eps), 0)
        return MixedTargets(
            y_a=torch.from_numpy(soft), y_b=torch.from_numpy(soft_b), lam=torch.from_numpy(weights[:, 0])
        )
    soft = _soft_np(ids, c, eps)
    soft_p = None if ids_p is None else _soft_np(ids_p, c, eps)
    return torch.from_numpy(_weigh_targets(soft, soft_p, weights, partner))


def _device(a: Any) -> Any:
    from array_api_compat import device

    return device(a)


# --------------------------------------------------------------------------- public


def apply_plan(
    plan: MixPlan | PlanTensors,
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
    validate: bool = True,
    check_finite: bool = False,
    multi_label: bool = False,
) -> tuple[ArrayT, Any]:
    """Mix a batch according to ``plan``.

    Args:
        plan: from :func:`vicinal.sampling.sample_plan`, for this batch size; or, for
            torch tensors, the same plan as tensors on x's device
            (:func:`plan_to_tensors`), e.g. inside ``torch.compile``.
        x: (B, ...) inputs: NumPy array or torch tensor, floating or integer (uint8
            images are mixed in float and rounded half-to-even back to uint8; bool is
            refused). Tensors that require grad are mixed out of place, so gradients
            flow to ``x`` and ``x_partner``.
        y: optional labels: int class ids (B,) with ``num_classes``, floating soft
            labels (B, C) (rows: distributions), or with ``multi_label`` multi-label
            targets (B, C) (see :mod:`vicinal.labels`).
        label_smoothing: ε applied to the labels before mixing (see :mod:`vicinal.labels`).
        x_partner, y_partner: the second batch, for plans drawn with ``pairing="stream"``.
        out: torch only: a preallocated tensor like ``x`` to write into; pass ``x``
            itself to mix in place. Reusing a buffer avoids page-faulting a fresh batch
            every step. In-place writes cannot be differentiated: ``out`` raises a
            ValueError when grad mode is on and ``x``, ``x_partner`` or ``out`` requires
            grad (pass ``out=None`` there).
        data_format: ``"channels_first"``: images are (B, C, H, W) (or (B, H, W));
            ``"channels_last"``: (B, H, W, C). Only CutMix needs to know. This is the
            order of the axes, not torch's memory format: an NCHW tensor in
            ``torch.channels_last`` memory format is ``"channels_first"``, and the
            output keeps the input's memory format.
        targets: ``"dense"`` returns float32 (B, C) soft targets; ``"pair"`` returns
            :class:`MixedTargets` ``(y_a, y_b, lam)``.
        validate: check the label *values* (class ids in ``[0, num_classes)``; soft
            labels finite, >= 0, rows summing to 1 within
            :data:`vicinal.labels.SOFT_LABEL_TOLERANCE`; multi-label targets in
            [0, 1]). For tensors on an accelerator this is one device→host sync per
            call; ``validate=False`` skips it (shapes and dtypes are still checked), and
            the call then makes no host read at all (out-of-range class ids give
            all-zero one-hot rows). Inside ``torch.compile`` the checks are
            ``torch._assert_async`` calls instead (no sync, no graph break).
        check_finite: raise a ValueError naming the samples of ``x`` (and
            ``x_partner``) that hold NaN or inf, which mixing would otherwise spread
            silently into their partners. Costs one extra read of the inputs and one
            device→host sync per call; off by default.
        multi_label: ``y`` (B, C) holds independent per-class probabilities in [0, 1]
            (multi-hot targets; float, int or bool), not distributions: no row-sum check
            and no renormalisation (timm's ``multi_label``).

    Returns:
        ``(x_mixed, y_mixed)``; ``x_mixed`` has ``x``'s shape, dtype and device;
        ``y_mixed`` is None when ``y`` is None. The inputs are not modified unless
        ``out`` aliases them. A ``meta`` tensor gives a ``meta`` result of the right
        shape (its values are not checked).
    """
    check_choice("targets", targets, TARGET_FORMATS)
    eps = check_probability("label_smoothing", label_smoothing)
    check_plan_inputs(plan, x, y, x_partner=x_partner, y_partner=y_partner, data_format=data_format)
    if targets == "pair" and plan.num_sources != 2:
        raise ValueError("targets='pair' needs a two-source plan (not method='kway')")
    channels_last = _is_channels_last(data_format, x)
    torch_x = is_torch_tensor(x)
    tensors = plan if isinstance(plan, PlanTensors) else None
    if torch_x:
        _check_torch_x(x, x_partner, out, plan)
    else:
        if tensors is not None:
            raise TypeError(
                f"a PlanTensors plan mixes torch tensors, got x of type {type(x).__name__}: pass the MixPlan itself"
            )
        if out is not None:
            raise ValueError("out is only supported for torch tensors")
        _check_generic_x(x)
    if check_finite:
        _check_finite("x", x)
        if x_partner is not None:
            _check_finite("x_partner", x_partner)

    y_mixed = None
    if y is not None:
        args = (num_classes, eps, targets, multi_label, validate)
        if is_torch_tensor(y):
            if (  # validate=True reads the ids on the host anyway: mix them there too
                validate
                and tensors is None
                and _host_ids(y)
                and (y_partner is None or (is_torch_tensor(y_partner) and _host_ids(y_partner)))
            ):
                y_mixed = _mix_labels_host(plan, y, y_partner, num_classes, eps, targets)  # type: ignore[arg-type]
            else:
                if tensors is not None:
                    ty = _tensors_on(tensors, y.device)
                else:
                    assert isinstance(plan, MixPlan)
                    ty = _to_tensors(plan, y.device, keep_boxes=False)
                    if torch_x and y.device == getattr(x, "device", None):
                        tensors = ty  # one transfer serves x too
                y_mixed = _mix_labels_torch(ty, y, y_partner, *args)
        elif isinstance(plan, PlanTensors):
            raise TypeError(f"a PlanTensors plan mixes torch labels, got y of type {type(y).__name__}")
        else:
            y_mixed = _mix_labels(plan, y, y_partner, *args)

    if torch_x:
        return _mix_torch(plan, x, x_partner, out, channels_last, tensors), y_mixed
    assert isinstance(plan, MixPlan)
    return _mix_generic(plan, x, x_partner, channels_last), y_mixed
