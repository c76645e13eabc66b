"""Dense targets mixed with their images: segmentation masks and detection boxes.

One :class:`~vicinal.sampling.MixPlan` holds every random decision of a batch, so the
same plan that mixes the images transforms their dense targets: :func:`mix_dense`
takes a batch as a dict (``image``, ``mask``, ``boxes``, ``box_labels``, ``labels``) or
a tuple in that order, and returns a dict with the same keys mixed by the plan.

* The image (and the image-level ``labels``) are mixed by
  :func:`vicinal.mixing.apply_plan` itself.
* Class-id masks are never blended as numbers. They become per-pixel soft targets: the
  one-hot masks mixed by ``apply_plan`` (``Σ_j w_j·onehot(m_j)`` on blended rows,
  ``onehot(own)·(1 - m) + onehot(P)·m`` on pasted rows, with the very ``m`` and ``P``
  of the image, ResizeMix's nearest-neighbour maps included), or on request the
  class-id mask itself (binary pastes: the reference's select ``where(m, P, own)`` on
  :func:`vicinal.mixing.paste_weights` and :func:`~vicinal.mixing.pasted_sources`) or
  the pair of masks with a per-pixel weight.
* :func:`collate_dense` batches dense samples for a DataLoader (boxes stay lists).
* Boxes follow the geometry of the paste: on blended rows the union of the sources'
  boxes, each with its source's weight; on box pastes the sample's own boxes weighted
  by their visible fraction and the partner's clipped to (ResizeMix: scaled into) the
  pasted box; on mask pastes (FMix, GridMix, SmoothMix) refused unless asked to weigh
  each box by the mask over it.

``docs/dense.md`` states every rule; ``tests/test_dense.py`` tests them against the
mixed images.

>>> import numpy as np
>>> from vicinal import MixConfig, sample_plan
>>> plan = sample_plan(MixConfig("cutmix"), 2, seed=0, image_size=(8, 8))
>>> batch = {
...     "image": np.zeros((2, 3, 8, 8), np.float32),
...     "mask": np.zeros((2, 8, 8), np.int64),
...     "boxes": [np.array([[0.0, 0.0, 4.0, 4.0]]), np.zeros((0, 4))],
...     "box_labels": [np.array([1]), np.zeros(0, np.int64)],
... }
>>> out = mix_dense(plan, batch, num_classes=3)
>>> out["mask"].shape, [len(b) for b in out["boxes"]] == [len(w) for w in out["box_weights"]]
((2, 3, 8, 8), True)
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import numpy as np

from vicinal._checks import check_choice, check_int, check_probability
from vicinal.labels import is_torch_tensor
from vicinal.mixing import (
    DATA_FORMATS,
    DataFormat,
    MixedTargets,
    apply_plan,
    check_plan_inputs,
    paste_weights,
    pasted_sources,
    place_boxes,
    spatial_size,
)
from vicinal.sampling import MixPlan

__all__ = [
    "BOX_FORMATS",
    "DENSE_KEYS",
    "MASK_BOX_RULES",
    "SEGMENTATIONS",
    "BoxFormat",
    "MaskBoxRule",
    "Segmentation",
    "collate_dense",
    "mix_dense",
]

BoxFormat = Literal["xyxy", "xywh", "cxcywh"]
Segmentation = Literal["soft", "hard", "pair"]
MaskBoxRule = Literal["refuse", "mask_weighted"]
BOX_FORMATS: tuple[str, ...] = get_args(BoxFormat)
SEGMENTATIONS: tuple[str, ...] = get_args(Segmentation)
MASK_BOX_RULES: tuple[str, ...] = get_args(MaskBoxRule)

DENSE_KEYS: tuple[str, ...] = ("image", "mask", "boxes", "box_labels", "labels")
"""The keys :func:`mix_dense` reads, in the order of its tuple form."""
_OUTPUT_KEYS = ("box_weights", "box_sources")
_STACKED_KEYS = ("image", "mask", "labels")  # one array per sample, of one shape
_LISTED_KEYS = ("boxes", "box_labels")  # one array per sample, of its own length


def _torch() -> Any:
    return sys.modules["torch"]  # only called for torch tensors: torch is imported


def _shape(a: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in getattr(a, "shape", ()))


# --------------------------------------------------------------------------- the batch


def _as_dict(batch: Any) -> dict[str, Any]:
    """The batch as a dict: a mapping as it is, a tuple read in :data:`DENSE_KEYS` order."""
    if isinstance(batch, Mapping):
        items = dict(batch)
    elif isinstance(batch, (tuple, list)):
        if not 1 <= len(batch) <= len(DENSE_KEYS):
            raise ValueError(
                f"a tuple batch is (image[, mask[, boxes[, box_labels[, labels]]]]) (None for an absent entry), "
                f"got {len(batch)} entries"
            )
        items = {key: value for key, value in zip(DENSE_KEYS, batch) if value is not None}
    else:
        raise TypeError(
            f"batch must be a dict with keys {list(DENSE_KEYS)} (image required) or a tuple in that order, "
            f"got {type(batch).__name__}"
        )
    for key in _OUTPUT_KEYS:
        if key in items:
            raise ValueError(f"batch[{key!r}] is an output of mix_dense; a batch to mix cannot hold it")
    if items.get("image") is None:
        raise ValueError("batch['image'] is required: the images (B, C, H, W), (B, H, W, C) or (B, H, W)")
    return items


def _check_image(plan: MixPlan, image: Any, data_format: str) -> tuple[int, int]:
    """Refuse an image batch that ``apply_plan`` would refuse, naming the key."""
    if is_torch_tensor(image):
        ok = image.is_floating_point() or image.dtype == _torch().uint8
    else:
        kind = getattr(getattr(image, "dtype", None), "kind", "")
        ok = kind in ("f", "i", "u")
    if not ok:
        raise ValueError(
            f"batch['image'] must be a floating-point or integer (torch: uint8) array, "
            f"got {type(image).__name__} of dtype {getattr(image, 'dtype', None)}"
        )
    try:
        check_plan_inputs(plan, image, data_format=data_format, placed=False)  # type: ignore[arg-type]
        return spatial_size(image, data_format)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"batch['image']: {exc}") from exc


# --------------------------------------------------------------------------- masks


def _is_int_mask(mask: Any) -> bool:
    if is_torch_tensor(mask):
        torch = _torch()
        return not mask.is_floating_point() and not mask.is_complex() and mask.dtype != torch.bool
    return getattr(getattr(mask, "dtype", None), "kind", "") in ("i", "u")


def _is_float_mask(mask: Any) -> bool:
    if is_torch_tensor(mask):
        return bool(mask.is_floating_point())
    return getattr(getattr(mask, "dtype", None), "kind", "") == "f"


def _check_ids(mask: Any, num_classes: int | None, ignore_index: int | None) -> None:
    """Class ids in ``[0, num_classes)`` (``>= 0`` without it), or ``ignore_index``."""
    # One min/max pass settles the common case (every id a class); only a batch with
    # other values (ignore_index, or bad ids) pays for the elementwise test below.
    if is_torch_tensor(mask):
        lo, hi = _torch().aminmax(mask)
        ok = lo >= 0 if num_classes is None else (lo >= 0) & (hi < num_classes)
    else:
        a = np.asarray(mask)
        ok = a.min() >= 0 and (num_classes is None or a.max() < num_classes)
    if bool(ok):  # one host read for a tensor on an accelerator
        return
    bad = mask < 0
    if num_classes is not None:
        bad = bad | (mask >= num_classes)
    if ignore_index is not None:
        bad = bad & (mask != ignore_index)
    if bool(bad.any()):
        values = mask[bad]
        lo, hi = int(values.min()), int(values.max())
        allowed = f"[0, num_classes={num_classes})" if num_classes is not None else ">= 0"
        extra = "" if ignore_index is None else f" or ignore_index={ignore_index}"
        raise ValueError(f"batch['mask'] holds class ids in [{lo}, {hi}] that are not {allowed}{extra}")


def _one_hot(mask: Any, c: int, ignore_index: int | None) -> Any:
    """float32 (B, C, H, W): 1 at each pixel's class; all 0 at ``ignore_index`` pixels
    (and at ids outside ``[0, C)``, which only ``validate=False`` lets through)."""
    if is_torch_tensor(mask):
        torch = _torch()
        keep = (mask >= 0) & (mask < c)
        if ignore_index is not None:
            keep &= mask != ignore_index
        index = torch.where(keep, mask, 0).to(torch.int64).unsqueeze(1)
        hot = torch.zeros((mask.shape[0], c, *mask.shape[1:]), dtype=torch.float32, device=mask.device)
        return hot.scatter_(1, index, keep.unsqueeze(1).to(torch.float32))
    a = np.asarray(mask)
    hot_np = a[:, None] == np.arange(c)[None, :, None, None]
    if ignore_index is not None and 0 <= ignore_index < c:
        hot_np &= (a != ignore_index)[:, None]
    return hot_np.astype(np.float32)


def _renormalise(num: Any) -> Any:
    """Divide each pixel's class weights by their sum; pixels whose sum is 0 stay 0."""
    if is_torch_tensor(num):
        den = num.sum(dim=1, keepdim=True)
        return num / _torch().where(den > 0, den, 1.0)
    den_np = num.sum(axis=1, keepdims=True)
    return num / np.where(den_np > 0, den_np, np.float32(1.0))


def _paste_weight_of(plan: MixPlan, like: Any, dtype: str = "float32") -> Any:
    """(B, H, W): the plan's partner pixel weight ``m``
    (:func:`vicinal.mixing.paste_weights`; 0 everywhere for plans that paste nothing,
    MixUp and k-way), in ``like``'s library and device, in ``dtype`` (a NumPy and torch
    dtype name)."""
    b = plan.batch_size
    if is_torch_tensor(like):
        torch = _torch()
        if plan.image_size is None:
            return torch.zeros((b, *like.shape[-2:]), dtype=getattr(torch, dtype), device=like.device)
        if like.device.type == "cpu":  # rendered and cast in NumPy: cheaper here than small torch ops
            return torch.from_numpy(paste_weights(plan).astype(dtype, copy=False))
        return paste_weights(plan, like).to(getattr(torch, dtype))
    if plan.image_size is None:
        return np.zeros((b, *np.shape(like)[-2:]), dtype=dtype)
    return paste_weights(plan).astype(dtype, copy=False)


def _pasted_of(plan: MixPlan, mask: Any) -> Any:
    """The pasted partner masks ``P`` (:func:`vicinal.mixing.pasted_sources`), a new
    array in ``mask``'s library and device. Class ids in CPU tensors go through NumPy (a
    view each way), whose gathers and ResizeMix resampling are faster here."""
    if is_torch_tensor(mask) and mask.device.type == "cpu" and _is_int_mask(mask):
        return _torch().from_numpy(np.asarray(pasted_sources(plan, mask.numpy())))
    return pasted_sources(plan, mask)


def _non_binary_rows(plan: MixPlan) -> list[int]:
    """The rows whose pixels are not each taken from one source: rows that blend
    (MixUp, k-way) or paste a soft mask (SmoothMix, soft FMix)."""
    rows = set(np.flatnonzero(plan.input_weights[:, 0] != 1.0).tolist())
    if plan.masks is not None and plan.masks.dtype != np.bool_:
        soft = ((plan.masks > 0) & (plan.masks < 1)).reshape(plan.batch_size, -1).any(axis=1)
        rows.update(np.flatnonzero(soft).tolist())
    return sorted(rows)


def _mix_ids_hard(plan: MixPlan, mask: Any) -> Any:
    """A class-id mask mixed by a plan whose every row is binary (no blend, no soft
    mask): the reference's select ``where(m, P, own)`` with the image's very ``m`` and
    ``P`` (:func:`vicinal.mixing.paste_weights`, :func:`~vicinal.mixing.pasted_sources`),
    in the mask's own dtype, so the ids are exact."""
    if plan.image_size is None:  # nothing pasted, nothing blended: every row is its own
        return mask.clone() if is_torch_tensor(mask) else np.array(mask, copy=True)
    pasted = _pasted_of(plan, mask)
    if not is_torch_tensor(mask):
        return np.where(_paste_weight_of(plan, mask, "bool"), pasted, np.asarray(mask))
    torch = _torch()
    if mask.dtype == torch.uint8:
        # own + (P - own)·m, exact in uint8's modular arithmetic for m in {0, 1} (the
        # rows are binary), and several times faster than torch.where's select on the
        # CPU (vectorised, no branch per pixel); written into the gathered copy.
        return pasted.sub_(mask).mul_(_paste_weight_of(plan, mask, "uint8")).add_(mask)
    return torch.where(_paste_weight_of(plan, mask, "bool"), pasted, mask, out=pasted)


def _mix_mask(
    plan: MixPlan,
    mask: Any,
    hw: tuple[int, int],
    num_classes: int | None,
    ignore_index: int | None,
    segmentation: str,
    validate: bool,
) -> Any:
    b = plan.batch_size
    shape = _shape(mask)
    h, w = hw
    ids = _is_int_mask(mask)
    if ids and len(shape) == 3 and shape == (b, h, w):
        if validate:
            _check_ids(mask, num_classes, ignore_index)
    elif _is_float_mask(mask) and len(shape) == 4 and shape[0] == b and shape[2:] == (h, w):
        ids = False
        if ignore_index is not None:
            raise ValueError(
                "ignore_index applies to class-id masks; batch['mask'] holds soft masks (B, K, H, W) "
                "(give ignored pixels all-zero class weights instead)"
            )
    else:
        raise ValueError(
            f"batch['mask'] must be class ids (B, H, W) = ({b}, {h}, {w}) of an integer dtype, or soft "
            f"masks (B, K, H, W) = ({b}, K, {h}, {w}) of a floating dtype; got shape {shape} of dtype "
            f"{getattr(mask, 'dtype', type(mask).__name__)}"
        )

    if segmentation == "hard":
        if not ids:
            raise ValueError("segmentation='hard' returns class ids: batch['mask'] must be class ids (B, H, W)")
        rows = _non_binary_rows(plan)
        if rows:
            raise ValueError(
                f"segmentation='hard' keeps class ids, which only binary pastes (CutMix, ResizeMix, SaliencyMix, "
                f"GridMix, hard FMix) preserve; rows {rows[:8]} blend or paste a soft mask: use 'soft' or 'pair'"
            )
        return _mix_ids_hard(plan, mask)

    if segmentation == "pair":
        if plan.num_sources != 2:
            raise ValueError("segmentation='pair' needs a two-source plan (not method='kway')")
        y_b = _pasted_of(plan, mask)
        # lam = w_0·(1 - m): λ on blended rows, 1 - m on pasted rows (whose w_0 is 1).
        w0 = plan.input_weights[:, 0].astype(np.float32)[:, None, None]
        if is_torch_tensor(mask):
            torch = _torch()
            w0_t = torch.from_numpy(w0).to(mask.device)
            if plan.image_size is None:  # nothing pasted: λ per row
                lam = w0_t.expand(b, h, w).contiguous()
            else:
                lam = _paste_weight_of(plan, mask).neg_().add_(1.0).mul_(w0_t)
            if ids and ignore_index is not None:
                va, vb = mask != ignore_index, y_b != ignore_index
                lam = torch.where(va & ~vb, 1.0, torch.where(~va & vb, 0.0, lam))
        else:
            lam = np.broadcast_to(w0, (b, h, w)).copy() if plan.image_size is None else w0 * (1 - paste_weights(plan))
            if ids and ignore_index is not None:
                va_np, vb_np = np.asarray(mask) != ignore_index, y_b != ignore_index
                lam = np.where(va_np & ~vb_np, 1.0, np.where(~va_np & vb_np, 0.0, lam)).astype(np.float32)
        return MixedTargets(y_a=mask, y_b=y_b, lam=lam)

    # soft
    if not ids:
        return apply_plan(plan, mask)[0]
    if num_classes is None:
        raise ValueError(
            "segmentation='soft' turns class-id masks into (B, num_classes, H, W) soft targets: pass num_classes"
        )
    if not _non_binary_rows(plan):
        # Every pixel comes from one source: the one-hot of the mixed ids is the mixed
        # one-hot (and cheaper: one (B, H, W) paste instead of C).
        return _one_hot(_mix_ids_hard(plan, mask), num_classes, ignore_index)
    mixed = apply_plan(plan, _one_hot(mask, num_classes, ignore_index))[0]
    return mixed if ignore_index is None else _renormalise(mixed)


# --------------------------------------------------------------------------- boxes


def _host(a: Any) -> np.ndarray:
    if is_torch_tensor(a):
        return np.asarray(a.detach().cpu().numpy())
    return np.asarray(a)


def _to_xyxy(b: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "xyxy":
        return b
    if fmt == "xywh":
        return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)
    half = b[:, 2:] / 2  # cxcywh
    return np.concatenate([b[:, :2] - half, b[:, :2] + half], axis=1)


def _from_xyxy(b: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "xyxy":
        return b
    size = b[:, 2:] - b[:, :2]
    if fmt == "xywh":
        return np.concatenate([b[:, :2], size], axis=1)
    return np.concatenate([b[:, :2] + size / 2, size], axis=1)


def _real_kind(a: Any) -> bool:
    if is_torch_tensor(a):
        return not a.is_complex() and a.dtype != _torch().bool
    return bool(a.dtype.kind in "fiu")


def _flat(entries: Any, key: str, b: int, per_row: str) -> tuple[np.ndarray, np.ndarray]:
    """A list of B arrays (NumPy, torch or nested lists) as one host array (tensors: one
    transfer) and the rows' offsets into it (B + 1,)."""
    if not isinstance(entries, (list, tuple)) or len(entries) != b:
        got = f"a {type(entries).__name__}" + (
            f" of length {len(entries)}" if isinstance(entries, (list, tuple)) else ""
        )
        raise ValueError(f"batch[{key!r}] must be a list of B={b} arrays {per_row} (one per image), got {got}")
    fast = _flat_fast(entries, key)
    if fast is not None:
        return fast
    rows = [e if is_torch_tensor(e) else np.asarray(e) for e in entries]
    if key == "boxes":  # an empty list or array is an image without boxes
        rows = [r.reshape(0, 4) if r.ndim == 1 and r.shape[0] == 0 else r for r in rows]
    for i, r in enumerate(rows):
        ok = (r.ndim == 2 and r.shape[1] == 4) if key == "boxes" else r.ndim == 1
        if not ok or not _real_kind(r):
            raise ValueError(
                f"batch[{key!r}][{i}] must be a real array {per_row}, got shape {_shape(r)} of dtype {r.dtype}"
            )
    offsets = np.concatenate([[0], np.cumsum([int(r.shape[0]) for r in rows])]).astype(np.int64)
    if all(is_torch_tensor(r) for r in rows):
        return _host(_torch().cat(rows)), offsets
    return np.concatenate([_host(r) for r in rows]), offsets


def _flat_fast(entries: Sequence[Any], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`_flat` for the common batch, all torch tensors or all NumPy arrays of one
    real dtype, without per-row checks: one concatenation, whose shape tells whether
    every row was well formed (a row of another shape makes it fail, or gives a shape
    other than (N, 4) / (N,)). None: take the checking path (its messages name the row)."""
    first = entries[0]
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(first, torch.Tensor):
        kind: Any = torch.Tensor
    elif isinstance(first, np.ndarray):
        kind = np.ndarray
    else:
        return None
    dtype = first.dtype
    try:  # one pass over the rows (per-row Python is most of this function's cost)
        lengths = [e.shape[0] if isinstance(e, kind) and e.dtype == dtype else -1 for e in entries]
    except IndexError:  # a 0-d row
        return None
    if -1 in lengths or not _real_kind(first):
        return None
    try:
        flat = np.concatenate(entries) if kind is np.ndarray else _torch().cat(list(entries))
    except (RuntimeError, ValueError):
        return None
    # (torch.cat skips 1-D empty tensors, an image without boxes: the lengths still add up.)
    if (flat.ndim, flat.shape[1:]) != ((2, (4,)) if key == "boxes" else (1, ())) or sum(lengths) != flat.shape[0]:
        return None
    offsets = np.zeros(len(entries) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return _host(flat), offsets


def _host_boxes(boxes: Any, b: int, hw: tuple[int, int], fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """All the batch's boxes as one float64 (N, 4) xyxy host array, checked, and the
    rows' offsets (B + 1,)."""
    h, w = hw
    flat, offsets = _flat(boxes, "boxes", b, f"(Ni, 4) of {fmt} pixel boxes")
    xyxy = _to_xyxy(flat.astype(np.float64), fmt)
    lo, hi = xyxy[:, :2], xyxy[:, 2:]
    # (NaN fails every comparison, so only finite boxes pass; inf fails hi <= (W, H).)
    bad = ~((lo >= 0) & (hi > lo) & (hi <= (w, h))).all(axis=1)
    if bad.any():
        n = int(np.flatnonzero(bad)[0])
        i = int(np.searchsorted(offsets, n, side="right") - 1)
        raise ValueError(
            f"batch['boxes'][{i}][{n - offsets[i]}] = {flat[n].tolist()} ({fmt}) is not a box inside the image: "
            f"need 0 <= x1 < x2 <= W={w} and 0 <= y1 < y2 <= H={h} (clip boxes to the image and drop "
            "empty ones first, e.g. torchvision.ops.clip_boxes_to_image and remove_small_boxes)"
        )
    return xyxy, offsets


def _host_box_labels(box_labels: Any, offsets: np.ndarray) -> np.ndarray:
    b = offsets.shape[0] - 1
    flat, label_offsets = _flat(box_labels, "box_labels", b, "(Ni,) of class ids")
    counts, got = np.diff(offsets), np.diff(label_offsets)
    if (counts != got).any():
        i = int(np.flatnonzero(counts != got)[0])
        raise ValueError(
            f"batch['box_labels'][{i}] must have shape (Ni,) = ({counts[i]},) like batch['boxes'][{i}], got ({got[i]},)"
        )
    return flat


def _area(b: np.ndarray) -> np.ndarray:
    size = np.maximum(b[:, 2:] - b[:, :2], 0.0)  # (np.maximum: np.clip's Python wrapper costs more here)
    return np.asarray(size[:, 0] * size[:, 1])


def _clip(b: np.ndarray, rect: np.ndarray) -> np.ndarray:
    """Boxes ``b`` (n, 4) intersected with rectangles ``rect`` (n, 4), xyxy (empty: zero area)."""
    lo = np.maximum(b[:, :2], rect[:, :2])
    hi = np.minimum(b[:, 2:], rect[:, 2:])
    return np.concatenate([lo, np.maximum(hi, lo)], axis=1)


def _box_sums(weight: np.ndarray, which: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 (n,): the integral of the pixel weights ``weight[which[k]]`` ((M, H, W);
    pixel (y, x) covers [x, x+1) × [y, y+1)) over box ``b[k]`` (xyxy inside the image):
    the box's overlap with each pixel row ``oy`` (H,) and column ``ox`` (W,) give it as
    ``oy · weight · ox`` (exact for fractional boxes), one matrix product per mask for
    all its boxes."""
    m, h, w = weight.shape
    n = b.shape[0]
    ys, xs = np.arange(h), np.arange(w)
    if bool((b == np.floor(b)).all()):  # whole-pixel boxes: the overlaps are indicators
        oy = ((ys >= b[:, 1:2]) & (ys < b[:, 3:4])).astype(np.float32)  # (n, H)
        ox = ((xs >= b[:, 0:1]) & (xs < b[:, 2:3])).astype(np.float32)  # (n, W)
    else:
        oy = np.maximum(np.minimum(b[:, 3:4], ys + 1) - np.maximum(b[:, 1:2], ys), 0)
        ox = np.maximum(np.minimum(b[:, 2:3], xs + 1) - np.maximum(b[:, 0:1], xs), 0)
    # Binary masks and whole-pixel boxes: every product and sum is a small integer, exact
    # in float32 (twice as fast as float64); otherwise float64, whose rounding stays far
    # below the share threshold _SHARE_EPS.
    dtype = np.float32 if weight.dtype == np.bool_ and oy.dtype == np.float32 else np.float64
    # The k-th box of a mask is column ``slot[k]`` of that mask's right-hand side.
    order = np.argsort(which, kind="stable")
    counts = np.bincount(which, minlength=m)
    slot = np.empty(n, dtype=np.int64)
    slot[order] = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    rhs = np.zeros((m, int(counts.max()), w), dtype=dtype)
    rhs[which, slot] = ox
    rows = np.matmul(weight.astype(dtype), rhs.transpose(0, 2, 1))  # (M, H, K): per box, its column sums
    return np.asarray(np.einsum("nh,nh->n", oy.astype(dtype, copy=False), rows[which, :, slot]), dtype=np.float64)


# Modes of a (row, source) pair: how that source's boxes reach the row. The box pastes
# are the range [_OWN_RECT, _PARTNER_RESIZED], the mask pastes [_OWN_MASK, _PARTNER_MASK].
_BLEND, _OWN_RECT, _PARTNER_RECT, _PARTNER_RESIZED, _OWN_MASK, _PARTNER_MASK = range(6)
# A mask-weighted share this close to 0 is 0 (float rounding of the box sums).
_SHARE_EPS = 1e-9


def _pairs(plan: MixPlan, hw: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """The (output row, plan column, source row, mode, weight) of every source whose
    boxes can appear in a row, row-major (so boxes come out in row, column order)."""
    b, k = plan.batch_size, plan.num_sources
    h, w = hw
    ar = np.arange(b)
    rows = np.concatenate([ar[:, None], plan.partners], axis=1)  # (B, K)
    weights = plan.input_weights.astype(np.float64).copy()
    # A source that is the same sample as an earlier column of the row is merged into it.
    for j in range(1, k):
        for jj in range(j):
            same = rows[:, j] == rows[:, jj]
            weights[same, jj] += weights[same, j]
            weights[same, j] = 0.0
    active = weights > 0
    mode = np.full((b, k), _BLEND)
    cut = np.zeros(b, dtype=bool) if plan.cut is None else plan.cut
    if cut.any():
        partner = plan.partners[:, 0]
        resized = np.zeros(b, dtype=bool)
        if plan.source_rows is not None and plan.source_cols is not None:
            resized = (plan.source_rows != np.arange(h)).any(axis=1) | (plan.source_cols != np.arange(w)).any(axis=1)
        boxed = np.ones(b, dtype=bool) if plan.masks is None else np.zeros(b, dtype=bool)
        if plan.boxes is not None:
            boxed |= (plan.boxes[:, 2] > plan.boxes[:, 0]) & (plan.boxes[:, 3] > plan.boxes[:, 1])
        unchanged = cut & (partner == ar) & ~resized  # pasted over itself: the image is unchanged
        pasted = cut & ~unchanged
        weights[unchanged, 0], active[unchanged, 1:] = 1.0, False
        active[pasted, :2] = True
        mode[pasted & boxed, 0] = _OWN_RECT
        mode[pasted & boxed, 1] = np.where(resized[pasted & boxed], _PARTNER_RESIZED, _PARTNER_RECT)
        mode[pasted & ~boxed, 0] = _OWN_MASK
        mode[pasted & ~boxed, 1] = _PARTNER_MASK
    i_of, col_of = np.nonzero(active)
    return i_of, col_of, rows[i_of, col_of], mode[i_of, col_of], weights[i_of, col_of]


def _mix_boxes(
    plan: MixPlan,
    boxes: Any,
    box_labels: Any,
    hw: tuple[int, int],
    fmt: str,
    tau: float,
    mask_boxes: str,
) -> dict[str, list[Any]]:
    if plan.masks is not None and mask_boxes == "refuse":
        raise ValueError(
            "this plan pastes non-rectangular masks (FMix, GridMix, SmoothMix): a box cannot be clipped to them, "
            "and keeping it at full weight would be wrong. Pass mask_boxes='mask_weighted' to weigh each box by "
            "the share of the mask over it (own boxes: mean of 1-m; the partner's: mean of m), or drop 'boxes'"
        )
    b = plan.batch_size
    h, w = hw
    flat, offsets = _host_boxes(boxes, b, hw, fmt)
    labels = None if box_labels is None else _host_box_labels(box_labels, offsets)

    # Every (pair, box of the pair's source row), in output order.
    i_of, col_of, row_of, mode_of, weight_of = _pairs(plan, hw)
    counts = offsets[row_of + 1] - offsets[row_of]
    pair = np.repeat(np.arange(i_of.shape[0]), counts)
    starts = np.cumsum(counts) - counts
    index = offsets[row_of][pair] + np.arange(pair.shape[0]) - starts[pair]
    geometry, weight, i, mode = flat[index], weight_of[pair], i_of[pair], mode_of[pair]
    keep = np.ones(index.shape[0], dtype=bool)

    rect_modes = (mode >= _OWN_RECT) & (mode <= _PARTNER_RESIZED)
    if rect_modes.any():
        assert plan.boxes is not None
        # All pairs of a CutMix batch are box pastes: then whole arrays, not masked copies.
        sel = slice(None) if rect_modes.all() else np.flatnonzero(rect_modes)
        rect = plan.boxes[i[sel]][:, [1, 0, 3, 2]].astype(np.float64)  # (top, left, bottom, right) -> xyxy
        box = geometry[sel]
        sub_mode = mode[sel]
        resized = sub_mode == _PARTNER_RESIZED  # the whole partner scaled into R (then clipped as below)
        shown = None
        if resized.any():
            assert plan.source_rows is not None and plan.source_cols is not None
            size = rect[resized, 2:] - rect[resized, :2]  # (bw, bh)
            source = box[resized]
            box = box.copy()  # (geometry[sel] is a view when sel is a slice)
            box[resized] = source * np.tile(size / (w, h), 2) + np.tile(rect[resized, :2], 2)
            shown = np.ones(box.shape[0], dtype=bool)
            shown[resized] = _shown(plan, i[sel][resized], source, hw)
        # One intersection with the pasted box R for both sources: the sample's own box
        # keeps its geometry and its visible fraction 1 - area(b ∩ R) / area(b); the
        # partner's is clipped to R and keeps area(b ∩ R) / area(b).
        clipped = _clip(box, rect)
        inside = _area(clipped) / _area(box)
        own = sub_mode == _OWN_RECT
        weight[sel] = np.where(own, 1.0 - inside, inside)
        keep[sel] = own | (inside > 0) if shown is None else own | (shown & (inside > 0))
        geometry[sel] = np.where(own[:, None], box, clipped)
    masked = mode >= _OWN_MASK
    if masked.any():  # the mean of the source's mask weight over the box; geometry kept
        assert plan.masks is not None
        share = _box_sums(plan.masks, i[masked], geometry[masked]) / _area(geometry[masked])
        share = np.where(mode[masked] == _OWN_MASK, 1.0 - share, share)
        weight[masked] = np.where(share < _SHARE_EPS, 0.0, np.minimum(share, 1.0))
    pasted = mode != _BLEND
    keep &= (weight > 0) & (~pasted | (weight >= tau))

    geometry, weight, sources, index, i = geometry[keep], weight[keep], col_of[pair][keep], index[keep], i[keep]
    sizes = np.bincount(i, minlength=b).tolist()
    ref_boxes = boxes[0]
    out = {
        "boxes": _split(_from_xyxy(geometry, fmt), sizes, ref_boxes, _box_dtype(ref_boxes)),
        "box_weights": _split(weight.astype(np.float32), sizes, ref_boxes, "float32"),
        "box_sources": _split(sources.astype(np.int64), sizes, ref_boxes, "int64"),
    }
    if labels is not None:
        out["box_labels"] = _split(labels[index], sizes, box_labels[0], None)
    return out


def _shown(plan: MixPlan, rows: np.ndarray, source: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """bool (n,): whether some pixel of row ``rows[k]``'s pasted box reads (through the
    plan's nearest-neighbour maps) a source pixel that box ``source[k]`` overlaps."""
    assert plan.boxes is not None and plan.source_rows is not None and plan.source_cols is not None
    h, w = hw
    # Which source pixels a row reads depends on the row only: counted once per plan row.
    uniq, which = np.unique(rows, return_inverse=True)
    box = plan.boxes[uniq]
    shown = np.ones(rows.shape[0], dtype=bool)
    for maps, size, (lo, hi), (a, c) in (
        (plan.source_rows[uniq], h, (box[:, 0], box[:, 2]), (1, 3)),
        (plan.source_cols[uniq], w, (box[:, 1], box[:, 3]), (0, 2)),
    ):
        ar = np.arange(size)
        inside = (ar >= lo[:, None]) & (ar < hi[:, None])  # output pixels in the pasted box
        read = np.zeros((uniq.shape[0], size + 1), dtype=np.int64)
        u, pos = np.nonzero(inside)
        read[u, maps[u, pos] + 1] = 1  # source pixels read at least once
        count = np.cumsum(read, axis=1)  # count[:, r]: read source pixels below r
        first = np.floor(source[:, a]).astype(np.int64)  # source pixels the box overlaps
        last = np.ceil(source[:, c]).astype(np.int64)
        shown &= count[which, last] > count[which, first]
    return shown


def _split(flat: np.ndarray, sizes: list[int], ref: Any, dtype: str | None) -> list[Any]:
    """``flat`` cut into the rows' pieces, as the type of ``ref`` (torch: on its device),
    in ``dtype`` (a dtype name, e.g. ``"float32"``; None: ``ref``'s own for a tensor,
    ``flat``'s for NumPy)."""
    if is_torch_tensor(ref):
        torch = _torch()
        t = torch.from_numpy(np.ascontiguousarray(flat))  # a view of the host array
        # (.to returns the tensor itself when it already is on that device in that dtype)
        t = t.to(device=ref.device, dtype=ref.dtype if dtype is None else getattr(torch, dtype))
        return list(torch.split_with_sizes(t, sizes))
    if dtype is not None:
        flat = flat.astype(dtype, copy=False)
    return np.split(flat, np.cumsum(sizes)[:-1])


def _box_dtype(ref: Any) -> str:
    """The output dtype of boxes given as ``ref``: its own if floating, else float32."""
    if is_torch_tensor(ref):
        return str(ref.dtype).removeprefix("torch.") if ref.is_floating_point() else "float32"
    kind = np.asarray(ref).dtype
    return kind.name if kind.kind == "f" else "float32"


# --------------------------------------------------------------------------- collate


def _stack(values: list[Any], key: str, as_torch: bool) -> Any:
    """``values`` stacked along a new first axis: torch tensors by ``torch.stack``,
    anything else (NumPy arrays, numbers) by ``np.stack`` (then as a tensor with
    ``as_torch``)."""
    torch = sys.modules.get("torch")
    tensors = torch is not None and isinstance(values[0], torch.Tensor)
    try:
        if tensors:
            return torch.stack(values)  # type: ignore[union-attr]
        stacked = np.stack([np.asarray(v) for v in values])
    except (RuntimeError, ValueError, TypeError) as exc:
        shapes = sorted({str(_shape(v)) for v in values})
        raise ValueError(
            f"samples[*][{key!r}] must have one shape (and type) to stack into a batch, got shapes {shapes} ({exc})"
        ) from exc
    return _torch().from_numpy(stacked) if as_torch else stacked


def collate_dense(samples: Sequence[Mapping[str, Any] | Sequence[Any]], *, as_torch: bool = False) -> dict[str, Any]:
    """A DataLoader ``collate_fn`` for dense samples: the batch :func:`mix_dense` takes.

    PyTorch's default collate cannot batch boxes (their number differs per image);
    this one stacks what has one shape per sample and lists the rest:

    * ``image`` (C, H, W), ``mask`` (H, W) or (K, H, W), ``labels`` (a class id or a
      (C,) row): stacked into (B, ...) arrays, torch tensors by ``torch.stack``, NumPy
      arrays and numbers by ``np.stack`` (as torch tensors with ``as_torch``, e.g.
      ``functools.partial(collate_dense, as_torch=True)``);
    * ``boxes`` (Ni, 4) and ``box_labels`` (Ni,): lists of the B samples' arrays, as
      they are (boxes of a NumPy sample become tensors with ``as_torch``);
    * any other key: the list of the samples' values.

    Args:
        samples: dicts with the keys of :data:`DENSE_KEYS` (``image`` required) and any
            others, or tuples ``(image, mask, boxes, box_labels, labels)`` (a prefix).
            Every sample must have the same keys.
        as_torch: turn NumPy arrays into torch tensors (``torch.from_numpy``: no copy).

    Returns:
        A dict with the samples' keys.

    >>> import numpy as np
    >>> samples = [
    ...     {"image": np.zeros((3, 8, 8), np.float32), "mask": np.zeros((8, 8), np.uint8),
    ...      "boxes": np.zeros((n, 4), np.float32), "box_labels": np.ones(n, np.int64), "id": n}
    ...     for n in (2, 0, 1)
    ... ]
    >>> batch = collate_dense(samples)
    >>> batch["image"].shape, batch["mask"].shape, [len(b) for b in batch["boxes"]], batch["id"]
    ((3, 3, 8, 8), (3, 8, 8), [2, 0, 1], [2, 0, 1])
    """
    if not isinstance(samples, Sequence) or isinstance(samples, (str, bytes)) or not samples:
        raise ValueError(f"samples must be a non-empty list of dense samples, got {type(samples).__name__}")
    if not isinstance(as_torch, bool):
        raise TypeError(f"as_torch must be a bool, got {type(as_torch).__name__}")
    if as_torch and "torch" not in sys.modules:
        raise ValueError("as_torch=True makes torch tensors: import torch first")
    dicts = []
    for n, sample in enumerate(samples):
        if isinstance(sample, Mapping):
            dicts.append(sample)
        elif isinstance(sample, (tuple, list)) and 1 <= len(sample) <= len(DENSE_KEYS):
            dicts.append({k: v for k, v in zip(DENSE_KEYS, sample) if v is not None})
        else:
            raise ValueError(
                f"samples[{n}] must be a dict with keys {list(DENSE_KEYS)} or a tuple "
                f"(image[, mask[, boxes[, box_labels[, labels]]]]), got {type(sample).__name__}"
            )
    keys = list(dicts[0])
    for n, d in enumerate(dicts):
        if set(d) != set(keys):
            raise ValueError(f"samples[{n}] has keys {sorted(d)}, but samples[0] has {sorted(keys)}: they must match")
    if "image" not in keys:
        raise ValueError("samples[*]['image'] is required: one image (C, H, W) per sample")
    out: dict[str, Any] = {}
    for key in keys:
        values = [d[key] for d in dicts]
        if key in _STACKED_KEYS:
            out[key] = _stack(values, key, as_torch)
        elif key in _LISTED_KEYS and as_torch:
            out[key] = [v if is_torch_tensor(v) else _torch().from_numpy(np.asarray(v)) for v in values]
        else:
            out[key] = values
    return out


# --------------------------------------------------------------------------- public


def mix_dense(
    plan: MixPlan,
    batch: Mapping[str, Any] | Sequence[Any],
    *,
    num_classes: int | None = None,
    label_classes: int | None = None,
    ignore_index: int | None = None,
    segmentation: Segmentation = "soft",
    box_format: BoxFormat = "xyxy",
    min_visibility: float = 0.0,
    mask_boxes: MaskBoxRule = "refuse",
    data_format: DataFormat = "channels_first",
    validate: bool = True,
) -> dict[str, Any]:
    """Mix images and their dense targets by one plan.

    Args:
        plan: the batch's plan, e.g. ``mixer.plan(batch["image"], step=step)``. A
            SaliencyMix plan that is not placed yet is placed from ``batch["image"]``
            (:func:`vicinal.mixing.place_boxes`). Plans with a second stream
            (``pairing="stream"``) are refused: the partners must be rows of the batch.
        batch: a dict, or a tuple ``(image, mask, boxes, box_labels, labels)`` (a prefix;
            None for an absent entry):

            * ``image`` (required): (B, C, H, W), (B, H, W, C) (``data_format``) or
              (B, H, W), NumPy or torch, as :func:`vicinal.mixing.apply_plan` takes.
            * ``mask``: class ids (B, H, W) of an integer dtype, or soft masks
              (B, K, H, W) floating (per-pixel class weights).
            * ``boxes``: a list of B arrays (Ni, 4), pixels in ``box_format``, inside the
              image with positive extent (NumPy, torch, or nested lists).
            * ``box_labels``: a list of B arrays (Ni,), the boxes' class ids.
            * ``labels``: image-level labels as ``apply_plan`` takes them (class ids
              with ``label_classes``, or soft labels).
            * any other key passes through untouched.

        num_classes: the masks' classes (needed to turn class ids into soft targets).
        label_classes: the image-level labels' classes (needed when ``labels`` are class
            ids; ``num_classes`` is the masks', which often differ).
        ignore_index: a mask value that marks pixels without a target. A mixed pixel is
            ignored only where every source with a positive weight there ignores it;
            elsewhere the weights renormalise over the valid sources.
        segmentation: what class-id masks become: ``"soft"`` float32 (B, C, H, W)
            per-pixel targets (rows sum to 1, all 0 at ignored pixels); ``"hard"`` class
            ids (B, H, W) (binary pastes only: refused for rows that blend or paste a
            soft mask); ``"pair"``: :class:`~vicinal.mixing.MixedTargets` ``(y_a, y_b,
            lam)`` with the sample's and the pasted partner's masks and ``lam`` float32
            (B, H, W), the per-pixel weight of ``y_a`` (two-source plans). Soft masks
            give soft (B, K, H, W) targets (``"soft"``) or a pair.
        box_format: ``"xyxy"``, ``"xywh"`` or ``"cxcywh"`` (torchvision's names), in pixels;
            output boxes are in the same format.
        min_visibility: τ in [0, 1]: a box of a pasted row is kept when its visible
            fraction is >= τ and positive (albumentations' ``min_visibility``).
        mask_boxes: boxes on plans that paste non-rectangular masks (FMix, GridMix,
            SmoothMix): ``"refuse"`` (a ValueError) or ``"mask_weighted"`` (each box
            weighted by the mean of the mask's weight for its source over the box).
        data_format: the axis order of ``image`` (masks are always (B[, K], H, W)).
        validate: check the mask's class ids (one host read for tensors on an
            accelerator).

    Returns:
        A dict with the batch's keys: ``image`` and ``labels`` as ``apply_plan`` mixes
        them; ``mask`` as ``segmentation`` says; ``boxes`` and ``box_labels`` lists of B
        arrays (Mi, 4) and (Mi,) of the kept boxes (the row's own first, then its
        partners', each in input order), with ``box_weights`` (Mi,) float32 and
        ``box_sources`` (Mi,) int64 (the plan column the box comes from: 0 the sample,
        j its partner ``plan.partners[:, j-1]``). Box arrays have the type and device
        of the row's input (torch or NumPy); integer boxes come back float32.
    """
    if not isinstance(plan, MixPlan):
        raise TypeError(f"plan must be a MixPlan (box geometry is computed on the host), got {type(plan).__name__}")
    if plan.source == "stream":
        raise ValueError("mix_dense needs partners from the same batch: plans with pairing='stream' are refused")
    check_choice("segmentation", segmentation, SEGMENTATIONS)
    check_choice("box_format", box_format, BOX_FORMATS)
    check_choice("mask_boxes", mask_boxes, MASK_BOX_RULES)
    check_choice("data_format", data_format, DATA_FORMATS)
    tau = check_probability("min_visibility", min_visibility)
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes, minimum=1)
    if label_classes is not None:
        label_classes = check_int("label_classes", label_classes, minimum=1)
    if ignore_index is not None and (not isinstance(ignore_index, (int, np.integer)) or isinstance(ignore_index, bool)):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    if not isinstance(validate, bool):
        raise TypeError(f"validate must be a bool, got {type(validate).__name__}")

    items = _as_dict(batch)
    image = items["image"]
    hw = _check_image(plan, image, data_format)
    if not plan.is_placed:
        plan = place_boxes(plan, image, data_format=data_format)
    if items.get("box_labels") is not None and items.get("boxes") is None:
        raise ValueError("batch['box_labels'] needs batch['boxes']: a list of B arrays (Ni, 4)")

    out = dict(items)
    labels = items.get("labels")
    try:
        out["image"], mixed_labels = apply_plan(plan, image, labels, num_classes=label_classes, data_format=data_format)
    except (ValueError, TypeError) as exc:  # the image was checked: it is the labels
        raise ValueError(f"batch['labels']: {exc}") from exc
    if labels is not None:
        out["labels"] = mixed_labels
    if items.get("mask") is not None:
        out["mask"] = _mix_mask(plan, items["mask"], hw, num_classes, ignore_index, segmentation, validate)
    if items.get("boxes") is not None:
        out.update(_mix_boxes(plan, items["boxes"], items.get("box_labels"), hw, box_format, tau, mask_boxes))
    return out
