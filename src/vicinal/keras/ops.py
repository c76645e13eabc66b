"""The mixing in ``keras.ops``: a :class:`~vicinal.sampling.MixPlan` applied to backend tensors.

:func:`plan_to_tensors` turns a plan into fixed-shape arrays and :func:`mix_with_plan`
mixes a batch by them, so the mixing also runs inside a traced function (``jax.jit``,
``tf.function``, a ``tf.data`` map on the TensorFlow backend). The plans themselves are
drawn on the host by the core (:func:`vicinal.sampling.sample_plan`); the argument
helpers here are shared by :class:`~vicinal.keras.MixLayer` and
:class:`~vicinal.keras.MixedBatches`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any, cast

import keras
import numpy as np
from array_api_compat import array_namespace
from keras import ops

from vicinal._checks import check_choice, check_int, check_probability
from vicinal.labels import check_labels
from vicinal.mixing import DATA_FORMATS, DataFormat, check_plan_inputs, plan_arrays, spatial_size
from vicinal.sampling import MixConfig, MixPlan

__all__ = [
    "as_mix_config",
    "is_integer_dtype",
    "is_traced",
    "mix_tensors",
    "mix_with_plan",
    "plan_tensors",
    "plan_to_tensors",
    "resolve_data_format",
    "soft_labels",
]


# --------------------------------------------------------------------------- arguments


def as_mix_config(name: str, value: Any, *, allow_none: bool) -> MixConfig | None:
    """A :class:`~vicinal.sampling.MixConfig` from ``value``, checked.

    Args:
        name: the argument's name, for errors.
        value: a ``MixConfig``, a dict of its fields (unknown keys raise a ValueError),
            or None.
        allow_none: whether None stays None (else it means ``MixConfig()``).

    Returns:
        The config, or None when ``value`` is None and ``allow_none`` is true.
    """
    if value is None:
        return None if allow_none else MixConfig()
    if isinstance(value, MixConfig):
        return value
    if isinstance(value, Mapping):
        known = {f.name for f in dataclasses.fields(MixConfig)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"{name} has unknown MixConfig fields {unknown}; known: {sorted(known)}")
        return MixConfig(**value)
    expected = "a MixConfig, a dict of its fields, or None"
    raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")


def resolve_data_format(data_format: str | None) -> DataFormat:
    """``"channels_last"`` or ``"channels_first"``: ``data_format`` checked, or
    ``keras.config.image_data_format()`` when it is None."""
    if data_format is None:
        data_format = keras.config.image_data_format()
    return cast(DataFormat, check_choice("data_format", data_format, DATA_FORMATS))


def is_traced(x: Any) -> bool:
    """True for a JAX tracer or a symbolic TensorFlow tensor, whose values are unknown
    until the traced function runs; False for concrete arrays and tensors."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return isinstance(x, jax.core.Tracer)
    if backend == "tensorflow":
        import tensorflow as tf

        return isinstance(x, tf.Tensor) and not hasattr(x, "numpy")
    return False


def is_integer_dtype(x: Any) -> bool:
    """True when ``x`` (any array, tensor or ``KerasTensor``) holds integers or bools."""
    dtype: str = keras.backend.standardize_dtype(x.dtype)
    return dtype.startswith(("int", "uint")) or dtype == "bool"


def _check_label_values(name: str, y: Any, num_classes: int | None) -> int:
    """The core's label checks (shape, dtype, class-id range) on a concrete batch."""
    if is_traced(y):
        raise TypeError(
            f"{name} is a traced tensor: a MixPlan is drawn on the host for concrete batches; "
            "inside a traced function pass plan_to_tensors(plan) to mix_with_plan instead"
        )
    try:
        array_namespace(y)
    except TypeError:  # not an array-API array (a TensorFlow tensor): check a NumPy copy
        y = np.asarray(y)
    return check_labels(y, num_classes)


def _image_size(x: Any, data_format: DataFormat) -> tuple[int, int]:
    """(H, W) of images ``x``, concrete or traced (then H and W must be static)."""
    try:
        return spatial_size(x, data_format)
    except TypeError:  # int(None): a traced TensorFlow tensor of unknown height or width
        raise ValueError(f"CutMix needs images with a known height and width, got shape {tuple(x.shape)}") from None


# --------------------------------------------------------------------------- plans


def plan_to_tensors(plan: MixPlan) -> dict[str, np.ndarray]:
    """A :class:`~vicinal.sampling.MixPlan` as plain arrays for :func:`mix_with_plan`:
    :func:`vicinal.mixing.plan_arrays`, the one packed format, with Keras' names.

    Returns:
        ``"weights"``: float32 (B, K) in [0, 1], the weight of each sample (column 0)
        and its partners in the mixed label; rows sum to 1.
        ``"image_weights"``: float32 (B, K), the same for the image
        (:attr:`MixPlan.input_weights <vicinal.sampling.MixPlan.input_weights>`):
        pasted rows are ``(1, 0, ...)``, their box or mask is pasted instead.
        ``"partners"``: int32 (B, K-1), partner rows in [0, B) (for a stream plan,
        ``arange(B)``: row ``i`` of the partner batch).
        For plans that paste: ``"boxes"`` int32 (B, 4) ``(top, left, bottom, right)``
        in pixels (bottom/right exclusive), all 0 where nothing is pasted; ``"masks"``
        bool or float32 (B, H, W), the partner's pixel weights; ``"source_rows"`` and
        ``"source_cols"`` int32 (B, H) and (B, W), ResizeMix's resampling.

    The key set and the shapes depend only on the config and the batch size, so the
    arrays can be fed to a traced function without retracing.
    """
    arrays = plan_arrays(plan)
    out = {"weights": arrays.pop("weights"), "image_weights": arrays.pop("input_weights")}
    for key, value in arrays.items():
        out[key] = value.astype(np.int32) if value.dtype == np.int64 else value
    return out


def plan_tensors(plan: MixPlan) -> dict[str, np.ndarray]:
    """Deprecated name of :func:`plan_to_tensors` (one name for the concept, as in
    :func:`vicinal.mixing.plan_to_tensors`); it will be removed in vicinal 0.4."""
    warnings.warn(
        "vicinal.keras.ops.plan_tensors is now plan_to_tensors; the old name goes in vicinal 0.4",
        DeprecationWarning,
        stacklevel=2,
    )
    return plan_to_tensors(plan)


# --------------------------------------------------------------------------- keras.ops mixing


# keras.ops counterpart of vicinal.labels.soft_unchecked, which needs array-API arrays and
# cannot take a traced backend tensor; test_layer_output_equals_core checks they agree.
def soft_labels(labels: Any, num_classes: int | None, label_smoothing: float) -> Any:
    """float32 (B, C) targets, in ``keras.ops``. The labels are not checked here (traced
    ones cannot be); :func:`mix_with_plan` checks concrete ones.

    Args:
        labels: int class ids (B,) in [0, num_classes) or float soft labels (B, C).
        num_classes: C; required for class ids.
        label_smoothing: ε in [0, 1]; targets become ``y·(1-ε) + ε/C``.

    Returns:
        A float32 (B, C) backend tensor.
    """
    if is_integer_dtype(labels):
        if num_classes is None:
            raise ValueError("num_classes is required when labels are integer class ids")
        soft = ops.one_hot(ops.cast(labels, "int32"), num_classes, dtype="float32")
        c = num_classes
    else:
        soft = ops.cast(labels, "float32")
        c = soft.shape[-1]
    if label_smoothing > 0:
        soft = soft * (1.0 - label_smoothing) + label_smoothing / c
    return soft


# The mixing below is written once, against a small NumPy-like namespace ``xp`` (the
# functions of ``keras.ops`` it uses, plus ``dtype_of``): ``keras.ops`` itself for
# mix_with_plan, and plain TensorFlow for the tf.data pipeline (vicinal.keras.tfdata),
# which must run in a tf.data graph whatever the Keras backend. It is the keras-side
# optimisation of the core's reference (vicinal.mixing's generic path);
# test_keras_ops_paste_equals_the_core, test_layer_output_equals_core and the tf.data
# tests check that they agree.
_OPS_NAMES = (
    "arange", "cast", "clip", "convert_to_tensor", "logical_and", "logical_or", "moveaxis", "ones_like",
    "reshape", "round", "take", "take_along_axis", "where",
)  # fmt: skip


class _KerasOps:
    """``keras.ops`` as the namespace of the shared mixing code."""

    def __getattr__(self, name: str) -> Any:
        return getattr(ops, name)

    @staticmethod
    def dtype_of(t: Any) -> str:
        return cast(str, keras.backend.standardize_dtype(t.dtype))


_KERAS_OPS = _KerasOps()


def _combine(xp: Any, weights: Any, own: Any, partners: list[Any]) -> Any:
    """Σ_j w[:, j]·source_j with w broadcast over the trailing axes (K=2: x·λ + x'·(1-λ))."""
    w = xp.cast(weights, xp.dtype_of(own))
    expand = (None,) * (len(own.shape) - 1)  # indexing, not reshape: ~0.2 ms less a column on torch
    cols = [w[(slice(None), j) + expand] for j in range(len(partners) + 1)]
    if len(partners) == 1:
        cols[1] = 1 - cols[0]  # as the core writes it: 1-λ in the data's dtype
    out = own * cols[0]
    for p, c in zip(partners, cols[1:]):
        out = out + p * c
    return out


def _spatial_shape(ndim: int, size: tuple[int, int], fmt: DataFormat) -> tuple[int, ...]:
    """The shape a (B, H, W) mask takes to broadcast against (B, ...) images."""
    h, w = size
    if fmt == "channels_last":
        return (-1,) + (1,) * (ndim - 4) + (h, w, 1)  # spatial axes -3, -2
    return (-1,) + (1,) * (ndim - 3) + (h, w)


def _box_mask(xp: Any, boxes: Any, size: tuple[int, int]) -> Any:
    """bool (B, H, W): True inside each row's box (the core's ``_box_indicator``, from
    boxes that may be traced tensors)."""
    h, w = size
    boxes = xp.cast(boxes, "int32")
    rows = xp.arange(h, dtype="int32")[None, :]
    cols = xp.arange(w, dtype="int32")[None, :]
    in_rows = xp.logical_and(rows >= boxes[:, 0:1], rows < boxes[:, 2:3])  # (B, H)
    in_cols = xp.logical_and(cols >= boxes[:, 1:2], cols < boxes[:, 3:4])  # (B, W)
    return xp.logical_and(in_rows[:, :, None], in_cols[:, None, :])


def _paste(
    xp: Any, tensors: Mapping[str, Any], blend: Any, partner: Any, size: tuple[int, int], fmt: DataFormat
) -> Any:
    """The core's reference paste (``_paste_np``): ``blend·(1-m) + P·m``, a select where
    the partner's pixel weight ``m`` is binary; ``P`` the (resampled) partner."""
    m = None
    if "boxes" in tensors:
        m = _box_mask(xp, xp.convert_to_tensor(tensors["boxes"]), size)
    if "masks" in tensors:
        masks = xp.convert_to_tensor(tensors["masks"])
        if xp.dtype_of(masks) == "bool":
            m = masks if m is None else xp.logical_or(m, masks)
        else:
            m = masks if m is None else xp.where(m, xp.ones_like(masks), masks)
    assert m is not None
    m = xp.reshape(m, _spatial_shape(len(blend.shape), size, fmt))
    pasted = partner
    if "source_rows" in tensors:
        pasted = _resample(xp, partner, tensors["source_rows"], tensors["source_cols"], size, fmt)
    if xp.dtype_of(m) == "bool":
        return xp.where(m, pasted, blend)
    m = xp.cast(m, xp.dtype_of(blend))
    return blend * (1 - m) + pasted * m


def _resample(xp: Any, a: Any, rows: Any, cols: Any, size: tuple[int, int], fmt: DataFormat) -> Any:
    """``a[i, ..., rows[i, h], cols[i, w], ...]`` per sample (ResizeMix's nearest maps)."""
    h, w = size
    rows = xp.cast(xp.convert_to_tensor(rows), "int32")
    cols = xp.cast(xp.convert_to_tensor(cols), "int32")
    flat_index = xp.reshape(rows[:, :, None] * w + cols[:, None, :], (-1, h * w))  # (B, H*W)
    spatial = (-3, -2) if fmt == "channels_last" else (-2, -1)
    moved = xp.moveaxis(a, spatial, (1, 2))  # (B, H, W, ...)
    shape = tuple(moved.shape)
    flat = xp.reshape(moved, (-1, h * w, _prod(shape[3:])))
    picked = xp.take_along_axis(flat, flat_index[:, :, None], axis=1)
    return xp.moveaxis(xp.reshape(picked, (-1, *shape[1:])), (1, 2), spatial)


def _prod(dims: tuple[Any, ...]) -> int:
    out = 1
    for d in dims:
        out *= int(d)
    return out


def mix_tensors(
    xp: Any,
    tensors: Mapping[str, Any],
    x: Any,
    soft: Any,
    *,
    x_partner: Any = None,
    soft_partner: Any = None,
    image_size: tuple[int, int] | None,
    data_format: DataFormat,
    work_dtype: str = "float32",
    blend: bool = True,
) -> tuple[Any, Any]:
    """Mix images and soft targets by packed plan ``tensors``, in namespace ``xp``.

    The one keras-side implementation of the plan's formula (no checks: inputs may be
    traced). ``x`` (B, ...) floating or integer (mixed in ``work_dtype``, rounded
    half-to-even back, as the core); ``soft`` float32 (B, C) or None; ``x_partner`` /
    ``soft_partner``: the second stream of a stream plan; ``image_size``: (H, W), needed
    when ``tensors`` paste; ``blend=False`` when every row's image weights are
    ``(1, 0, ...)`` (nothing to blend, only pastes).
    """
    dtype = xp.dtype_of(x)
    integer = dtype.startswith(("int", "uint"))
    if dtype == "bool":
        raise TypeError("x must be floating or integer, got dtype bool")
    if integer:
        x = xp.cast(x, work_dtype)
        if x_partner is not None:
            x_partner = xp.cast(x_partner, work_dtype)
    elif x_partner is not None:
        x_partner = xp.cast(x_partner, dtype)
    partners = xp.cast(xp.convert_to_tensor(tensors["partners"]), "int32")
    k1 = int(partners.shape[-1])

    def sources(own: Any, second: Any) -> list[Any]:
        if second is not None:  # a stream plan: row i of the second batch
            return [second]
        return [xp.take(own, partners[:, j], axis=0) for j in range(k1)]

    x_sources = sources(x, x_partner)
    x_mixed = _combine(xp, xp.convert_to_tensor(tensors["image_weights"]), x, x_sources) if blend else x
    if "boxes" in tensors or "masks" in tensors:
        if image_size is None:
            raise ValueError("a plan that pastes needs image_size")
        x_mixed = _paste(xp, tensors, x_mixed, x_sources[0], image_size, data_format)
    if integer:  # as the core: round half-to-even, saturate, cast back
        info = np.iinfo(dtype)
        x_mixed = xp.cast(xp.clip(xp.round(x_mixed), int(info.min), int(info.max)), dtype)
    y_mixed = None
    if soft is not None:
        y_mixed = _combine(xp, xp.convert_to_tensor(tensors["weights"]), soft, sources(soft, soft_partner))
    return x_mixed, y_mixed


def mix_with_plan(
    plan: MixPlan | Mapping[str, Any],
    x: Any,
    y: Any = None,
    *,
    num_classes: int | None = None,
    label_smoothing: float = 0.0,
    data_format: str | None = None,
    x_partner: Any = None,
    y_partner: Any = None,
    dtype: str = "float32",
) -> tuple[Any, Any]:
    """Mix a batch by a plan with ``keras.ops``: the Keras counterpart of
    :func:`vicinal.apply_plan`, same arguments and formula (``x·λ + x_partner·(1-λ)``).

    Args:
        plan: a :class:`~vicinal.sampling.MixPlan` drawn for this batch (checked against
            the inputs: eager only), or :func:`plan_to_tensors` of one (NumPy arrays or
            backend tensors; not checked, so it can be traced).
        x: images (B, H, W, C) for ``"channels_last"`` (the Keras default), or
            (B, [C,] H, W) for ``"channels_first"``; any (B, ...) array when the plan
            pastes nothing. Floating ``x`` keeps its dtype; integer ``x`` (uint8) is
            mixed in ``dtype`` and rounded half-to-even back to its own dtype, as
            :func:`vicinal.apply_plan` does (equal to it up to ties; bool is refused).
        y: optional int class ids (B,) in [0, num_classes) or float soft labels (B, C).
        num_classes: C, an int >= 1; required for int class ids.
        label_smoothing: ε in [0, 1], applied before mixing: ``y·(1-ε) + ε/C``.
        data_format: ``"channels_last"`` or ``"channels_first"``; default
            ``keras.config.image_data_format()``.
        x_partner, y_partner: the second batch, for plans drawn with
            ``pairing="stream"`` (same shapes as ``x`` and ``y``).
        dtype: the float dtype integer images are mixed in (then rounded back).

    Returns:
        ``(x_mixed, y_mixed)`` as backend tensors: ``x_mixed`` has ``x``'s shape;
        ``y_mixed`` is float32 (B, C) with rows summing to 1 (for one-hot or smoothed
        labels), or None when ``y`` is None.
    """
    fmt = resolve_data_format(data_format)
    eps = check_probability("label_smoothing", label_smoothing)
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes, minimum=1)
    if isinstance(plan, MixPlan):
        check_plan_inputs(plan, x, y, x_partner=x_partner, y_partner=y_partner, data_format=fmt)
        if y is not None:
            _check_label_values("y", y, num_classes)
            if y_partner is not None:
                _check_label_values("y_partner", y_partner, num_classes)
        tensors: Mapping[str, Any] = plan_to_tensors(plan)
    elif isinstance(plan, Mapping):
        missing = sorted({"weights", "image_weights", "partners"} - set(plan))
        if missing:
            raise ValueError(f"plan is missing {missing}: pass a MixPlan or plan_to_tensors(plan)")
        tensors = plan
    else:
        raise TypeError(f"plan must be a MixPlan or plan_to_tensors(plan), got {type(plan).__name__}")
    if y is not None and (x_partner is None) != (y_partner is None):
        raise ValueError("x_partner and y_partner must be given together")

    x = ops.convert_to_tensor(x)
    soft = soft_partner = None
    if y is not None:
        soft = soft_labels(ops.convert_to_tensor(y), num_classes, eps)
        if y_partner is not None:
            soft_partner = soft_labels(ops.convert_to_tensor(y_partner), num_classes, eps)
    pastes = "boxes" in tensors or "masks" in tensors
    return mix_tensors(
        _KERAS_OPS,
        tensors,
        x,
        soft,
        x_partner=None if x_partner is None else ops.convert_to_tensor(x_partner),
        soft_partner=soft_partner,
        image_size=_image_size(x, fmt) if pastes else None,
        data_format=fmt,
        work_dtype=dtype,
        # every row keeps its own image (CutMix, or nothing applied): x·1 + x'·0 = x
        blend=not (isinstance(plan, MixPlan) and bool(np.all(tensors["image_weights"][:, 0] == 1.0))),
    )
