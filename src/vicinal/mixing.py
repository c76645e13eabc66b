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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

import numpy as np
from array_api_compat import array_namespace

from vicinal import masks
from vicinal._checks import check_choice, check_int, check_probability
from vicinal.labels import batch_size_of, check_labels, is_class_ids, is_torch_tensor, soft_unchecked, torch_compiling
from vicinal.sampling import MixPlan, boxes_at, replace_boxes

if TYPE_CHECKING:
    import torch

__all__ = [
    "DATA_FORMATS",
    "DEFAULT_POLICY",
    "PLAN_ARRAY_KEYS",
    "TARGET_FORMATS",
    "DataFormat",
    "KernelPolicy",
    "MixedTargets",
    "PackedArrays",
    "PlanTensors",
    "TargetFormat",
    "apply_plan",
    "check_plan_inputs",
    "nonfinite_samples",
    "pack_arrays",
    "paste_weights",
    "pasted_sources",
    "place_boxes",
    "plan_arrays",
    "plan_to_tensors",
    "require_finite",
    "spatial_size",
]

TargetFormat = Literal["dense", "pair"]
DataFormat = Literal["channels_first", "channels_last"]
TARGET_FORMATS: tuple[str, ...] = get_args(TargetFormat)
# Any (B, ...) array: a NumPy array, a torch tensor, another array-API array. The mixed
# output is of the same type as the input.
ArrayT = TypeVar("ArrayT")
DATA_FORMATS: tuple[str, ...] = get_args(DataFormat)

_ROUND_MAGIC = 12582912.0  # 1.5 * 2**23


@dataclass(frozen=True)
class KernelPolicy:
    """Which torch kernel mixes a batch: every kernel gives the reference's values
    (:func:`apply_plan` documents the tolerances), so this only trades speed.

    Args:
        region_copy_min_bytes: on the CPU, plans whose pastes are all boxes (CutMix,
            ResizeMix, SaliencyMix) paste each box with one copy of its region when a
            sample holds at least this many bytes; smaller samples are mixed through a
            (B, H, W) mask over the whole batch, which reads every pixel a few more
            times but makes a few batched calls instead of ~B small ones. 0: always
            copy regions; a huge value: always the mask.
        uint8_block_bytes: uint8 batches are mixed in float32 a block of whole samples
            of about this many input bytes at a time, so the float workspace stays in
            cache instead of page-faulting a float copy of the whole batch.
    """

    region_copy_min_bytes: int = 16 << 10
    uint8_block_bytes: int = 1 << 18

    def __post_init__(self) -> None:
        check_int("region_copy_min_bytes", self.region_copy_min_bytes, minimum=0)
        check_int("uint8_block_bytes", self.uint8_block_bytes, minimum=1)


DEFAULT_POLICY = KernelPolicy()
"""The policy :func:`apply_plan` uses unless told otherwise."""


@dataclass(frozen=True)
class MixedTargets:
    """The ``(y_a, y_b, lam)`` form of two-source mixed targets.

    For a loss ``L`` that is not linear in its target, train on
    ``lam·L(out, y_a) + (1-lam)·L(out, y_b)`` per sample
    (see :func:`vicinal.torch.losses.mixed_loss`).

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
        image_size: (H, W) for plans that paste, else None.
        masks: bool or float32 (B, H, W), the partner's pixel weights
            (:attr:`MixPlan.masks`), or None.
        source_rows, source_cols: int64 (B, H) and (B, W), the resampling of the pasted
            partner (:attr:`MixPlan.source_rows`), or None.
    """

    weights: torch.Tensor
    input_weights: torch.Tensor
    partners: torch.Tensor
    boxes: torch.Tensor | None
    source: Literal["batch", "stream"]
    shift: tuple[int, ...] | None
    image_size: tuple[int, int] | None
    masks: torch.Tensor | None = None
    source_rows: torch.Tensor | None = None
    source_cols: torch.Tensor | None = None

    @property
    def pastes(self) -> bool:
        """Whether the plan pastes boxes or masks (its structure, not this batch's rows)."""
        return self.boxes is not None or self.masks is not None

    @property
    def batch_size(self) -> int:
        return int(self.weights.shape[0])

    @property
    def num_sources(self) -> int:
        return int(self.weights.shape[1])

    @property
    def device(self) -> torch.device:
        return self.weights.device


PLAN_ARRAY_KEYS: tuple[str, ...] = (
    "weights",
    "input_weights",
    "partners",
    "boxes",
    "masks",
    "source_rows",
    "source_cols",
)
"""The keys :func:`plan_arrays` can return, in the order they are packed."""


def plan_arrays(plan: MixPlan) -> dict[str, np.ndarray]:
    """The one "plan as arrays" format: ``plan``'s numbers as plain NumPy arrays.

    Every front end that moves a plan into another library or onto a device packs it
    through this function: :func:`plan_to_tensors` (torch, ``torch.compile``),
    :func:`vicinal.keras.ops.plan_to_tensors` (``keras.ops``), the ``tf.data`` pipeline and
    the harness's epoch buffers.

    Returns:
        ``"weights"``: float32 (B, K), the label weights; ``"input_weights"``: float32
        (B, K), the weights that blend the inputs; ``"partners"``: int64 (B, K-1);
        and, for plans that paste (present whatever this batch's rows got, so the key
        set depends only on the config): ``"boxes"`` int64 (B, 4), ``"masks"`` bool or
        float32 (B, H, W), ``"source_rows"``/``"source_cols"`` int64 (B, H)/(B, W).
        See :class:`~vicinal.sampling.MixPlan` for their meaning.
    """
    if not isinstance(plan, MixPlan):
        raise TypeError(f"plan must be a MixPlan, got {type(plan).__name__}")
    if not plan.is_placed:
        raise ValueError(_UNPLACED)
    weights = plan.weights.astype(np.float32)
    out: dict[str, np.ndarray] = {
        "weights": weights,
        "input_weights": plan.input_weights.astype(np.float32) if plan.has_cut else weights,
        "partners": np.ascontiguousarray(plan.partners, dtype=np.int64),
    }
    for key in ("boxes", "masks", "source_rows", "source_cols"):
        value = getattr(plan, key)
        if value is not None:
            out[key] = np.ascontiguousarray(value)
    return out


_UNPLACED = (
    "the plan's boxes have their size but not their place (SaliencyMix): pass it to "
    "vicinal.mixing.place_boxes(plan, x) first (the transforms do)"
)


def plan_to_tensors(plan: MixPlan, device: Any = None) -> PlanTensors:
    """``plan``'s numbers as torch tensors on ``device`` (default: the CPU).

    For an accelerator: one host→device transfer, non-blocking (from pinned memory on
    CUDA), so no sync. On the CPU the tensors share memory with :func:`plan_arrays`'
    arrays. Call it outside a compiled function and pass the result to
    :func:`apply_plan` inside it.

    >>> import torch
    >>> from vicinal import MixConfig, sample_plan
    >>> plan = sample_plan(MixConfig("cutmix"), 4, seed=0, image_size=(8, 8))
    >>> t = plan_to_tensors(plan)
    >>> tuple(t.weights.shape), tuple(t.partners.shape), tuple(t.boxes.shape), t.image_size
    ((4, 2), (4, 1), (4, 4), (8, 8))
    """
    return _to_tensors(plan, device, keep_paste=True)


def _to_tensors(plan: MixPlan, device: Any, *, keep_paste: bool) -> PlanTensors:
    """:func:`plan_to_tensors`; ``keep_paste=False`` drops boxes and masks when no row
    pastes (eager calls then skip the paste)."""
    import torch

    arrays = plan_arrays(plan)
    if not (keep_paste or plan.has_cut):
        for key in ("boxes", "masks", "source_rows", "source_cols"):
            arrays.pop(key, None)
    dev = torch.device("cpu") if device is None else torch.device(device)
    if dev.type == "cpu":  # no transfer: wrap the arrays
        tensors = {key: torch.from_numpy(value) for key, value in arrays.items()}
    else:
        tensors = pack_arrays(arrays, dev).tensors
    return PlanTensors(
        weights=tensors["weights"],
        input_weights=tensors["input_weights"],
        partners=tensors["partners"],
        boxes=tensors.get("boxes"),
        source=plan.source,
        shift=plan.shift,
        image_size=plan.image_size if ("boxes" in tensors or "masks" in tensors) else None,
        masks=tensors.get("masks"),
        source_rows=tensors.get("source_rows"),
        source_cols=tensors.get("source_cols"),
    )


@dataclass(frozen=True, eq=False)
class PackedArrays:
    """Arrays packed into one byte buffer and copied to a device in one transfer.

    Attributes:
        tensors: name -> tensor on the device, a view of ``buffer`` with the array's
            dtype and shape.
        buffer: uint8, the device buffer the tensors view.
        host: uint8, the host buffer it was copied from (pinned for CUDA); keep it
            alive until the (non-blocking) copy is done, e.g. as long as ``buffer``.
    """

    tensors: dict[str, Any]
    buffer: Any
    host: Any


_TORCH_DTYPES = {"float32": "float32", "int64": "int64", "bool": "bool"}


def pack_arrays(arrays: Mapping[str, np.ndarray], device: Any) -> PackedArrays:
    """Copy NumPy arrays (float32, int64 or bool) to ``device`` in one buffer and one
    non-blocking transfer (from pinned memory on CUDA: no sync).

    The one packer of plans: :func:`plan_to_tensors` packs a step's
    :func:`plan_arrays` with it, and the harness packs a whole epoch's. Arrays are laid
    out widest dtype first, so each view stays aligned.
    """
    import torch

    dev = torch.device(device)
    keys = sorted(arrays, key=lambda key: -arrays[key].dtype.itemsize)
    for key in keys:
        if arrays[key].dtype.name not in _TORCH_DTYPES:
            raise TypeError(f"pack_arrays takes float32, int64 or bool arrays, got {key!r} of {arrays[key].dtype}")
    sizes = [arrays[key].nbytes for key in keys]
    offsets = [0, *np.cumsum(sizes).tolist()]
    host = torch.empty(offsets[-1], dtype=torch.uint8, pin_memory=dev.type == "cuda")
    raw = host.numpy()
    for key, start, stop in zip(keys, offsets, offsets[1:]):
        raw[start:stop] = np.ascontiguousarray(arrays[key]).reshape(-1).view(np.uint8)
    buffer = host if dev.type == "cpu" else host.to(dev, non_blocking=True)
    tensors = {}
    for key, start, stop in zip(keys, offsets, offsets[1:]):
        a = arrays[key]
        dtype = getattr(torch, _TORCH_DTYPES[a.dtype.name])
        tensors[key] = buffer[start:stop].view(dtype).view(a.shape)
    return PackedArrays(tensors=tensors, buffer=buffer, host=host)


def _tensors_on(t: PlanTensors, device: Any) -> PlanTensors:
    if t.device == device:
        return t

    def move(a: Any) -> Any:
        return None if a is None else a.to(device)

    return replace(
        t,
        weights=t.weights.to(device),
        input_weights=t.input_weights.to(device),
        partners=t.partners.to(device),
        boxes=move(t.boxes),
        masks=move(t.masks),
        source_rows=move(t.source_rows),
        source_cols=move(t.source_cols),
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
    placed: bool = True,
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
    if placed and isinstance(plan, MixPlan) and not plan.is_placed:
        raise ValueError(_UNPLACED)
    pastes = plan.cut is not None if isinstance(plan, MixPlan) else plan.pastes
    if pastes:
        size = spatial_size(x, data_format)
        if size != plan.image_size:
            raise ValueError(f"x has spatial size {size} but the plan was drawn for image_size={plan.image_size}")


def nonfinite_samples(a: Any) -> list[int]:
    """The sample indices (axis 0) of ``a`` that hold NaN or inf, ascending.

    ``a``: a NumPy/array-API array or a torch tensor of any shape (B, ...); integer
    arrays have none. One read per sample row (its min and max, through which NaN
    propagates). Inside ``torch.compile`` nothing can be read back: it returns ``[]``
    after queueing an on-device assertion that all of ``a`` is finite.
    """
    if is_torch_tensor(a):
        torch = _torch()
        if not a.is_floating_point() or a.device.type == "meta":
            return []
        if torch_compiling():
            torch._assert_async(torch.isfinite(a).all(), "a tensor holds NaN or inf")
            return []
        lo, hi = torch.aminmax(a.detach().reshape(a.shape[0], -1), dim=1)
        bad = ~(torch.isfinite(lo) & torch.isfinite(hi))
        if not bool(bad.any()):
            return []
        rows: list[int] = bad.nonzero().flatten().tolist()
        return rows
    xp = array_namespace(a)
    if not xp.isdtype(a.dtype, "real floating"):
        return []
    bad = ~xp.all(xp.isfinite(xp.reshape(a, (a.shape[0], -1))), axis=1)
    return [int(i) for i in np.flatnonzero(np.asarray(bad))]


_SPREADS_NAN = "mixing would spread them into the samples paired with them (check_finite=True)"


def require_finite(name: str, a: Any, why: str) -> None:
    """Raise a ValueError naming the samples of ``a`` that hold NaN or inf.

    ``why`` ends the message: what the NaN would do there. Inside ``torch.compile``
    it only queues an on-device assertion (see :func:`nonfinite_samples`).
    """
    rows = nonfinite_samples(a)
    if rows:
        shown = f"{rows[:8]}" + (f" and {len(rows) - 8} more" if len(rows) > 8 else "")
        raise ValueError(f"{name} holds NaN or inf in samples {shown}: {why}")


def _box_indicator(xp: Any, boxes: Any, h: int, w: int, device: Any = None) -> Any:
    """bool (B, H, W): True inside each row's box ``(top, left, bottom, right)``;
    all False for an empty box (all four coordinates 0)."""
    ys = xp.arange(h, device=device)[None, :]
    xs = xp.arange(w, device=device)[None, :]
    rows = (ys >= boxes[:, 0:1]) & (ys < boxes[:, 2:3])  # (B, H)
    cols = (xs >= boxes[:, 1:2]) & (xs < boxes[:, 3:4])  # (B, W)
    return rows[:, :, None] & cols[:, None, :]


def _resample(xp: Any, a: Any, rows: Any, cols: Any, ah: int) -> Any:
    """``a`` (B, ..., H, W, ...) with spatial axes ``ah, ah+1`` resampled per sample:
    ``out[i, ..., h, w, ...] = a[i, ..., rows[i, h], cols[i, w], ...]``."""
    moved = xp.moveaxis(a, (ah, ah + 1), (1, 2)) if ah != 1 else a
    batch = xp.arange(a.shape[0], device=getattr(rows, "device", None))
    picked = moved[batch[:, None, None], rows[:, :, None], cols[:, None, :]]
    return xp.moveaxis(picked, (1, 2), (ah, ah + 1)) if ah != 1 else picked


def _paste_np(plan: MixPlan, x: Any, partner0: Any, channels_last: bool) -> tuple[Any, Any]:
    """The reference paste of ``plan``: ``(m, P)``, the partner's pixel weight ``m``
    (bool for box and binary masks, float for soft masks; shaped to broadcast against
    x) and the pasted image ``P`` (partner 0, resampled by ResizeMix's maps)."""
    xp = array_namespace(x)
    ah, _ = _spatial_axes(x.ndim, channels_last)
    pasted = partner0
    if plan.source_rows is not None:
        assert plan.source_cols is not None
        rows = xp.asarray(plan.source_rows, device=_device(x))
        cols = xp.asarray(plan.source_cols, device=_device(x))
        pasted = _resample(xp, partner0, rows, cols, ah)
    return _paste_weight(xp, plan, x.ndim, channels_last, _device(x)), pasted


def _paste_weight(xp: Any, plan: MixPlan, ndim: int, channels_last: bool, dev: Any) -> Any:
    """The partner's pixel weight ``m`` of :func:`_paste_np`, shaped to broadcast
    against a batch of ``ndim`` dims."""
    assert plan.image_size is not None
    h, w = plan.image_size
    m = None
    if plan.boxes is not None:
        m = _box_indicator(xp, xp.asarray(plan.boxes, device=dev), h, w, dev)
    if plan.masks is not None:
        masks = xp.asarray(plan.masks, device=dev)
        if masks.dtype == xp.bool:
            m = masks if m is None else (m | masks)
        else:
            m = masks if m is None else xp.where(m, xp.asarray(1.0, dtype=masks.dtype), masks)
    assert m is not None
    return xp.reshape(m, _mask_shape(plan.batch_size, h, w, ndim, channels_last))


def paste_weights(plan: MixPlan, like: Any = None) -> Any:
    """float32 (B, H, W): the partner's pixel weight ``m`` of ``plan``'s pastes (the
    reference's: box indicators and ``plan.masks``; 0 on rows that do not paste), in
    ``like``'s library and device (default NumPy). For targets that must follow the
    images pixel for pixel (:mod:`vicinal.dense`)."""
    if plan.image_size is None:
        raise ValueError("the plan pastes nothing: it has no image size")
    xp = array_namespace(plan.weights if like is None else like)
    dev = None if like is None else _device(like)
    m = _paste_weight(xp, plan, 3, False, dev)
    return xp.astype(m, xp.float32)


def pasted_sources(plan: MixPlan, a: Any) -> Any:
    """Partner 0's rows of ``a`` (B, ..., H, W) as the paste reads them: gathered, and on
    ResizeMix rows resampled through ``plan.source_rows``/``source_cols`` (the
    reference's ``P``), in ``a``'s library and device."""
    xp = array_namespace(a)
    partner = xp.take(a, xp.asarray(plan.partners[:, 0], device=_device(a)), axis=0)
    if plan.source_rows is None:
        return partner
    assert plan.source_cols is not None
    rows = xp.asarray(plan.source_rows, device=_device(a))
    cols = xp.asarray(plan.source_cols, device=_device(a))
    return _resample(xp, partner, rows, cols, a.ndim - 2)


# --------------------------------------------------------------------------- torch paths


def _paste_mask(t: PlanTensors, ndim: int, channels_last: bool, device: Any, dtype: Any) -> Any:
    """The partner's pixel weight of :func:`_paste_np` on the device, in ``dtype`` (0/1
    for boxes and binary masks), from the (B, 4) boxes and the masks: no host copy.

    Floating, not bool: the kernels paste with one ``lerp(blend, pasted, m)``, which is
    exact for m in {0, 1} on finite values, and a few times faster on the CPU than a
    broadcast ``torch.where``.
    """
    torch = _torch()
    assert t.image_size is not None
    h, w = t.image_size
    b = t.batch_size
    m = None
    if t.boxes is not None:
        corners = t.boxes.reshape(b, 2, 2, 1)  # [[top, left], [bottom, right]]
        ar = torch.arange(max(h, w), device=device)
        inside = ((ar >= corners[:, 0]) & (ar < corners[:, 1])).to(dtype)  # (B, 2, max(H, W))
        m = inside[:, 0, :h, None] * inside[:, 1, None, :w]  # (B, H, W)
    if t.masks is not None:
        masks = t.masks.to(dtype)
        m = masks if m is None else torch.maximum(m, masks)  # rows have a box or a mask, not both
    assert m is not None
    return m.reshape(_mask_shape(b, h, w, ndim, channels_last))


def _pasted(t: PlanTensors, partner0: Any, channels_last: bool, rows: slice = slice(None)) -> Any:
    """The pasted image: partner 0, resampled through the plan's maps (ResizeMix).

    :func:`_resample`'s values with one ``gather`` over the flattened (H·W) axis
    instead of advanced indexing, which is several times slower on the CPU.
    """
    if t.source_rows is None:
        return partner0
    assert t.source_cols is not None and t.image_size is not None
    torch = _torch()
    h, w = t.image_size
    ah, _ = _spatial_axes(partner0.ndim, channels_last)
    flat_index = (t.source_rows[rows][:, :, None] * w + t.source_cols[rows][:, None, :]).reshape(-1, h * w)
    moved = partner0.movedim((ah, ah + 1), (-2, -1)) if ah != partner0.ndim - 2 else partner0
    lead = moved.shape[:-2]
    flat = moved.reshape(lead[0], -1, h * w)
    picked = torch.gather(flat, 2, flat_index[:, None, :].expand(-1, flat.shape[1], -1)).reshape(*lead, h, w)
    return picked.movedim((-2, -1), (ah, ah + 1)) if ah != partner0.ndim - 2 else picked


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


def _combine_into(
    out: Any, x: Any, partners: list[Any], cols: list[Any], mask: Any, pasted: Any, blends: bool = True
) -> Any:
    """out = Σ_j cols[j]·source_j, then the paste ``lerp(out, pasted, mask)``; with
    ``blends=False`` (every row pastes: its blend is x itself) the paste reads x
    directly, one pass instead of two."""
    torch = _torch()
    if mask is not None and not blends:
        return torch.lerp(x, pasted, mask, out=out)
    if len(partners) == 1:
        torch.lerp(x, partners[0], cols[1], out=out)
    else:
        torch.mul(x, cols[0], out=out)
        for p, c in zip(partners, cols[1:]):
            out.addcmul_(p, c)
    if mask is not None:
        torch.lerp(out, pasted, mask, out=out)
    return out


def _blends(plan: MixPlan | PlanTensors) -> bool:
    """Whether some row may blend; False when every row of a host plan pastes over
    itself (input weights (1, 0)). Tensor plans are not read (no host sync): True."""
    return not isinstance(plan, MixPlan) or bool((plan.input_weights[:, 0] != 1).any())


def _gather_partners(t: PlanTensors, x: Any, x_partner: Any, rows: slice = slice(None)) -> list[Any]:
    if t.source == "stream":
        return [x_partner[rows]]
    idx = t.partners[rows]
    return [x.index_select(0, idx[:, j]) for j in range(t.num_sources - 1)]


def _mix_roll(x: Any, out: Any, w: Any, shift: int, mask: Any = None) -> Any:
    """Two-source roll pairing: the partner of rows [s:] is rows [:-s], a view, so no
    gather pass; ``w`` (B, 1, ...) is the partner's input weight in x's dtype, or None
    when no row blends; ``mask`` the paste's partner weights (:func:`_paste_mask`)."""
    torch = _torch()
    b, s = x.shape[0], shift % x.shape[0]
    src = x.clone() if out.data_ptr() == x.data_ptr() else x  # in place would read rows it wrote
    if s == 0:  # every partner is the sample itself
        return out.copy_(src)
    for rows, partner_rows in ((slice(s, None), slice(None, b - s)), (slice(None, s), slice(b - s, None))):
        own, partner, dst = src[rows], src[partner_rows], out[rows]
        if w is not None:
            torch.lerp(own, partner, w[rows], out=dst)
            own = dst
        if mask is not None:
            torch.lerp(own, partner, mask[rows], out=dst)
    return out


def _mix_float_torch(
    t: PlanTensors, x: Any, x_partner: Any, out: Any, channels_last: bool, blends: bool = True, mask: Any = None
) -> Any:
    """Mix a floating tensor; ``out`` may be ``x`` itself (in place) or another buffer."""
    if t.shift is not None and t.num_sources == 2 and t.source_rows is None:
        w = t.input_weights[:, 1].to(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1)) if blends else None
        if mask is None and t.pastes:
            mask = _paste_mask(t, x.ndim, channels_last, x.device, x.dtype)
        return _mix_roll(x, out, w, t.shift[0], mask)
    cols = _weight_columns(t, x.dtype, x.ndim)
    partners = _gather_partners(t, x, x_partner)  # gathered copies: safe when out is x
    pasted = None
    if t.pastes:
        if mask is None:
            mask = _paste_mask(t, x.ndim, channels_last, x.device, x.dtype)
        pasted = _pasted(t, partners[0], channels_last)
    return _combine_into(out, x, partners, cols, mask, pasted, blends)


def _mix_uint8_torch(
    t: PlanTensors, x: Any, x_partner: Any, out: Any, channels_last: bool, policy: KernelPolicy, mask: Any = None
) -> Any:
    """Same float32 ops as the float path, a few rows at a time, then rounded.

    One float32 workspace serves every block. With the roll pairing a block's partner
    rows are its own rows shifted by ``s``: rows ``[start - s, stop)`` are converted to
    float once and read as both sources (no gather, one conversion instead of two).
    """
    torch = _torch()
    cols = _weight_columns(t, torch.float32, x.ndim)
    if mask is None and t.pastes:
        mask = _paste_mask(t, x.ndim, channels_last, x.device, torch.float32)
    src = x.clone() if out.data_ptr() == x.data_ptr() else x
    b = t.batch_size
    rows_per_chunk = max(1, policy.uint8_block_bytes // max(1, x[0].numel()))
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
        block_mask = pasted = None
        if mask is not None:
            block_mask = mask[start:stop]
            pasted = _pasted(t, partners[0], channels_last, slice(start, stop))
        _combine_into(xf, own, partners, [c[start:stop] for c in cols], block_mask, pasted)
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
    plan: MixPlan | PlanTensors,
    t: PlanTensors | None,
    x: Any,
    x_partner: Any,
    out: Any,
    channels_last: bool,
    policy: KernelPolicy,
) -> Any:
    """Plans whose pastes are all boxes (CutMix, ResizeMix, SaliencyMix, their switch
    with MixUp) on the CPU for big samples: blend only the rows that blend, copy the
    others, then paste each box with one copy of its region (ResizeMix: of the
    resampled partner).

    The same values as the mask path (whose cut rows are ``lerp(x, partner, 0) == x``
    outside the box), with the memory traffic of about one copy of the batch plus one of
    the pasted areas. ``out`` may be ``x`` (in place): the pasted regions are then read
    before anything is written.
    """

    def host(a: Any) -> Any:
        return a if a is None or isinstance(a, np.ndarray) else a.numpy()

    assert plan.boxes is not None
    boxes, partners, w1 = host(plan.boxes), host(plan.partners[:, 0]), host(plan.input_weights[:, 1])
    maps = None if plan.source_rows is None else (host(plan.source_rows).tolist(), host(plan.source_cols).tolist())
    rows = np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).tolist()
    box_list, partner_list = boxes.tolist(), partners.tolist()
    ah, _ = _spatial_axes(x.ndim, channels_last)
    source = x_partner if plan.source == "stream" else x
    in_place = out.data_ptr() == x.data_ptr()

    def patch_of(i: int) -> Any:
        box = box_list[i]
        if maps is None:
            return _box_region(source, partner_list[i], box, ah)
        # ResizeMix: the whole partner, resampled into the box by the plan's maps.
        torch = _torch()
        r = torch.tensor(maps[0][i][box[0] : box[2]])
        c = torch.tensor(maps[1][i][box[1] : box[3]])
        return source[partner_list[i]].index_select(ah - 1, r).index_select(ah, c)

    patches = None
    if in_place and source is x:
        patches = [patch_of(i).clone() for i in rows]
    if bool(np.any(w1 != 0)):  # some rows blend (switch): mix the batch without boxes
        tb = t if t is not None else _to_tensors(plan, x.device, keep_paste=False)  # type: ignore[arg-type]
        tb = replace(tb, boxes=None, image_size=None, source_rows=None, source_cols=None)
        if x.is_floating_point():
            _mix_float_torch(tb, x, x_partner, out, channels_last)
        else:
            _mix_uint8_torch(tb, x, x_partner, out, channels_last, policy)
    elif not in_place:
        out.copy_(x)
    for n, i in enumerate(rows):
        patch = patches[n] if patches is not None else patch_of(i)
        _box_region(out, i, box_list[i], ah).copy_(patch)
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
    if t.pastes:  # differentiable in the images (the mask is data)
        mask = _paste_mask(t, x.ndim, channels_last, x.device, work.dtype)
        mixed = torch.lerp(mixed, _pasted(t, partners[0], channels_last), mask)
    if uint8:
        mixed = mixed.round().to(torch.uint8)
    # Keep x's memory format (gathers and masks return NCHW-contiguous tensors).
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        mixed = mixed.contiguous(memory_format=torch.channels_last)
    return mixed


def _mix_torch(
    plan: MixPlan | PlanTensors,
    x: Any,
    x_partner: Any,
    out: Any,
    channels_last: bool,
    tensors: PlanTensors | None,
    policy: KernelPolicy,
) -> Any:
    """Dispatch among the torch kernels (:class:`KernelPolicy`); ``tensors`` is ``plan``
    as tensors on x's device when already built.

    The rule: autograd, ``torch.compile`` and meta tensors take the out-of-place kernel;
    otherwise plans whose pastes are all boxes, on the CPU, with samples of at least
    ``policy.region_copy_min_bytes``, take the region copies; two-source roll plans
    without pastes take the shifted views; the rest the batched mask kernel (floats),
    or its blocked uint8 form."""
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
        t = tensors if tensors is not None else _to_tensors(plan, x.device, keep_paste=False)  # type: ignore[arg-type]
        mixed = _mix_functional(t, x, x_partner, channels_last)
        return mixed if out is None else out.copy_(mixed)  # out: only under torch.compile
    if out is None:
        out = torch.empty_like(x)
    host = isinstance(plan, MixPlan)
    pastes = plan.has_cut if host else plan.pastes  # type: ignore[union-attr]
    if (
        pastes
        and plan.masks is None
        and x.device.type == "cpu"
        and x[0].numel() * x.element_size() >= policy.region_copy_min_bytes
    ):
        return _mix_boxes_cpu(plan, tensors, x, x_partner, out, channels_last, policy)
    roll = host and tensors is None and plan.shift is not None and plan.num_sources == 2 and not pastes
    if roll and x.is_floating_point():  # the weight column straight from the host plan: no PlanTensors
        w = torch.from_numpy(plan.input_weights[:, 1].astype(np.float32).reshape((-1,) + (1,) * (x.ndim - 1)))  # type: ignore[union-attr]
        return _mix_roll(x, out, w if x.dtype == torch.float32 else w.to(x.dtype), plan.shift[0])  # type: ignore[index]
    t = tensors if tensors is not None else _to_tensors(plan, x.device, keep_paste=False)  # type: ignore[arg-type]
    mask = None
    if host and pastes and x.device.type == "cpu":
        # The paste weights straight from the host plan, in NumPy: a handful of small
        # torch ops (comparisons, an outer product) cost more than the paste itself here.
        weight = _paste_weight(array_namespace(plan.weights), plan, x.ndim, channels_last, None)  # type: ignore[arg-type]
        mask = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
        if x.is_floating_point() and x.dtype != torch.float32:
            mask = mask.to(x.dtype)
    if x.is_floating_point():
        return _mix_float_torch(t, x, x_partner, out, channels_last, _blends(plan), mask)
    return _mix_uint8_torch(t, x, x_partner, out, channels_last, policy, mask)


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
        m, pasted = _paste_np(plan, x, partner(0), channels_last)
        if m.dtype == xp.bool:  # a binary mask: blend·(1 - m) + P·m is a select (and keeps inf/NaN out)
            out = xp.where(m, pasted, out)
        else:
            m = xp.astype(m, out.dtype)
            out = out * (1 - m) + pasted * m
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
    policy: KernelPolicy = DEFAULT_POLICY,
) -> tuple[ArrayT, Any]:
    """Mix a batch according to ``plan``.

    The reference is the generic (NumPy / array-API) path: per sample, the blend
    ``Σ_j input_weights[i, j]·source_j`` (``x·λ + x_partner·(1-λ)`` for two sources),
    then on pasted rows ``blend·(1-m) + P·m`` with the partner's pixel weight ``m`` (a
    select where ``m`` is binary) and the pasted image ``P``
    (:class:`~vicinal.sampling.MixPlan`); integers are computed in float64 and rounded
    half-to-even. The torch kernels are optimisations of it: equal for binary pastes
    and integers up to ties; floats within about one ulp (``lerp`` rounds once).

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
        policy: which torch kernel runs (:class:`KernelPolicy`); values do not depend on it.

    Returns:
        ``(x_mixed, y_mixed)``; ``x_mixed`` has ``x``'s shape, dtype and device;
        ``y_mixed`` is None when ``y`` is None. The inputs are not modified unless
        ``out`` aliases them. A ``meta`` tensor gives a ``meta`` result of the right
        shape (its values are not checked).
    """
    check_choice("targets", targets, TARGET_FORMATS)
    if not isinstance(policy, KernelPolicy):
        raise TypeError(f"policy must be a KernelPolicy, got {type(policy).__name__}")
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
        require_finite("x", x, _SPREADS_NAN)
        if x_partner is not None:
            require_finite("x_partner", x_partner, _SPREADS_NAN)

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
                    ty = _to_tensors(plan, y.device, keep_paste=False)
                    if torch_x and y.device == getattr(x, "device", None):
                        tensors = ty  # one transfer serves x too
                y_mixed = _mix_labels_torch(ty, y, y_partner, *args)
        elif isinstance(plan, PlanTensors):
            raise TypeError(f"a PlanTensors plan mixes torch labels, got y of type {type(y).__name__}")
        else:
            y_mixed = _mix_labels(plan, y, y_partner, *args)

    if torch_x:
        return _mix_torch(plan, x, x_partner, out, channels_last, tensors, policy), y_mixed
    assert isinstance(plan, MixPlan)
    return _mix_generic(plan, x, x_partner, channels_last), y_mixed


def place_boxes(plan: MixPlan, x: Any, *, x_partner: Any = None, data_format: DataFormat = "channels_first") -> MixPlan:
    """The second, data-dependent stage of SaliencyMix: centre each unplaced box on its
    partner's saliency peak.

    :func:`~vicinal.sampling.sample_plan` draws each box's size (a pure function of the
    seed); this places it from the images: box ``(cut_h, cut_w)`` of row ``i`` is
    centred on the argmax of the spectral-residual saliency of the image it is taken
    from (partner 0 of row ``i``), clipped to the image as CutMix clips, and the row's
    label weights become the clipped box's exact area. Plans without unplaced boxes are
    returned as they are.

    Args:
        plan: a plan drawn for ``x``.
        x: (B, C, H, W) or (B, H, W, C) (``data_format``) or (B, H, W) images, NumPy or
            torch (read on the host once: saliency needs the pixels).
        x_partner: the second batch of a stream plan.

    Returns:
        A placed :class:`~vicinal.sampling.MixPlan`.
    """
    if not isinstance(plan, MixPlan):
        raise TypeError(f"plan must be a MixPlan, got {type(plan).__name__}")
    if plan.is_placed:
        return plan
    check_plan_inputs(plan, x, x_partner=x_partner, data_format=data_format, placed=False)
    rows = plan.unplaced
    assert rows is not None and plan.boxes is not None and plan.image_size is not None
    idx = np.flatnonzero(rows)
    source = x_partner if plan.source == "stream" else x
    partner_rows = plan.partners[idx, 0]
    if is_torch_tensor(source):
        images = source.detach()[_torch().from_numpy(partner_rows)].to("cpu", _torch().float32).numpy()
    else:
        images = np.asarray(source)[partner_rows]
    channels_last = _is_channels_last(data_format, x)
    saliency = masks.spectral_residual_saliency(images, channels_last=channels_last and images.ndim == 4)
    peaks = masks.saliency_peaks(saliency)
    cut_h, cut_w = plan.boxes[idx, 2], plan.boxes[idx, 3]
    placed, _ = boxes_at(peaks[:, 0], peaks[:, 1], cut_h, cut_w, plan.image_size)
    boxes = np.zeros_like(plan.boxes)
    boxes[idx] = placed
    return replace_boxes(plan, rows, boxes)
