"""Keras 3 front end: vicinal's mixing in a Keras training pipeline, on any backend.

A thin adapter over the core. Every random decision is drawn on the host by
:func:`vicinal.sampling.sample_plan` (NumPy, a pure function of
``(seed, epoch, step, rank)``), so the same seed gives the same plans here as on the
PyTorch path; only the arithmetic is done here, with ``keras.ops``.

* :class:`MixLayer`: a Keras layer that mixes a batch ``{"images": x, "labels": y}``
  (or ``(x, y)``); it counts its calls to know which plan to draw. Call it eagerly,
  on concrete batches (a Python loop or generator, a ``PyDataset``). Saved with a
  model in the ``.keras`` format, config and counters included.
* :class:`MixedBatches`: a ``keras.utils.PyDataset`` of shuffled, mixed batches of
  in-memory NumPy arrays for ``model.fit``; batch ``i`` of epoch ``e`` is the same
  whichever worker makes it, in whatever order (the core loader's batches, NHWC).
* :func:`mix_with_plan` and :func:`plan_tensors`: the mixing as a pure ``keras.ops``
  function of the batch and a plan given as arrays, for use inside a traced function
  (``jax.jit``, ``tf.function``, a ``tf.data`` map on the TensorFlow backend) where
  no host plan can be drawn.

Keras is an optional dependency (``pip install 'vicinal[keras]'``); this module
imports it at import time and works with the torch, JAX and TensorFlow backends.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
from array_api_compat import array_namespace
from keras import ops

from vicinal._checks import check_choice, check_int, check_probability
from vicinal.labels import batch_size_of, check_labels, to_soft
from vicinal.mixing import apply_plan, check_plan_inputs
from vicinal.sampling import MixConfig, MixPlan, epoch_order, sample_plan

__all__ = ["MixLayer", "MixedBatches", "SetEpoch", "mix_with_plan", "plan_tensors"]

DATA_FORMATS: tuple[str, ...] = ("channels_last", "channels_first")


# --------------------------------------------------------------------------- helpers


def _as_mix_config(name: str, value: Any, *, allow_none: bool) -> MixConfig | None:
    if value is None:
        if allow_none:
            return None
        return MixConfig()
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


def _data_format(value: str | None) -> str:
    if value is None:
        return keras.config.image_data_format()
    return check_choice("data_format", value, DATA_FORMATS)


def _image_size(shape: tuple[Any, ...], channels_last: bool) -> tuple[int, int]:
    if len(shape) < 3 or (channels_last and len(shape) < 4):
        want = "(B, H, W, C)" if channels_last else "(B, [C,] H, W)"
        raise ValueError(f"CutMix needs images of shape {want}, got shape {tuple(shape)}")
    h, w = (shape[-3], shape[-2]) if channels_last else (shape[-2], shape[-1])
    if h is None or w is None:
        raise ValueError(f"CutMix needs images with a known height and width, got shape {tuple(shape)}")
    return int(h), int(w)


def _is_traced(x: Any) -> bool:
    """True for a JAX tracer or a symbolic TensorFlow tensor: values unknown until run."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return isinstance(x, jax.core.Tracer)
    if backend == "tensorflow":
        import tensorflow as tf

        return isinstance(x, tf.Tensor) and not hasattr(x, "numpy")
    return False


def _check_label_values(name: str, y: Any, num_classes: int | None) -> int:
    """The core's label checks (shape, dtype, class-id range) on a concrete batch."""
    if _is_traced(y):
        raise TypeError(
            f"{name} is a traced tensor: a MixPlan is drawn on the host for concrete batches; "
            "inside a traced function pass plan_tensors(plan) to mix_with_plan instead"
        )
    try:
        array_namespace(y)
    except TypeError:  # not an array-API array (a TensorFlow tensor): check a NumPy copy
        y = np.asarray(y)
    return check_labels(y, num_classes)


def _is_integer_dtype(x: Any) -> bool:
    dtype = keras.backend.standardize_dtype(x.dtype)
    return dtype.startswith(("int", "uint")) or dtype == "bool"


# --------------------------------------------------------------------------- pure mixing


def plan_tensors(plan: MixPlan) -> dict[str, np.ndarray]:
    """A :class:`~vicinal.sampling.MixPlan` as plain arrays for :func:`mix_with_plan`.

    Returns:
        ``"weights"``: float32 (B, K), the weight of each sample (column 0) and its
        partners in the mixed label; rows sum to 1.
        ``"image_weights"``: float32 (B, K), the same for the image, except that CutMix'ed
        rows are ``(1, 0, ...)`` (their box is pasted instead).
        ``"partners"``: int32 (B, K-1), partner rows in the batch (for a stream plan,
        ``arange(B)``: row ``i`` of the partner batch).
        ``"boxes"``: int32 (B, 4) ``(top, left, bottom, right)`` (bottom/right exclusive),
        empty (all 0) where nothing is pasted; present only for CutMix and switch plans.

    The key set and the shapes depend only on the config and the batch size, so the
    arrays can be fed to a traced function without retracing.
    """
    if not isinstance(plan, MixPlan):
        raise TypeError(f"plan must be a MixPlan, got {type(plan).__name__}")
    image_weights = plan.weights
    if plan.cut is not None and plan.cut.any():
        image_weights = image_weights.copy()
        image_weights[plan.cut] = 0.0
        image_weights[plan.cut, 0] = 1.0
    out = {
        "weights": plan.weights.astype(np.float32),
        "image_weights": image_weights.astype(np.float32),
        "partners": plan.partners.astype(np.int32),
    }
    if plan.boxes is not None:
        out["boxes"] = plan.boxes.astype(np.int32)
    return out


def _soft_labels(labels: Any, num_classes: int | None, label_smoothing: float) -> Any:
    """float32 (B, C) targets from int ids (B,) or soft labels (B, C), in keras.ops."""
    if _is_integer_dtype(labels):
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


def _combine(weights: Any, own: Any, partners: list[Any]) -> Any:
    """Σ_j w[:, j]·source_j with w broadcast over the trailing axes (K=2: x·λ + x'·(1-λ))."""
    w = ops.cast(weights, own.dtype)
    expand = (None,) * (len(own.shape) - 1)  # indexing, not ops.reshape: ~0.2 ms less a column on torch
    cols = [w[(slice(None), j) + expand] for j in range(len(partners) + 1)]
    if len(partners) == 1:
        cols[1] = 1 - cols[0]  # as the core writes it: 1-λ in the data's dtype
    out = own * cols[0]
    for p, c in zip(partners, cols[1:]):
        out = out + p * c
    return out


def _box_mask(boxes: Any, height: int, width: int, ndim: int, channels_last: bool) -> Any:
    """bool (B, H, W) mask from (B, 4) boxes, reshaped to broadcast against the images."""
    boxes = ops.cast(boxes, "int32")
    rows = ops.arange(height, dtype="int32")[None, :]
    cols = ops.arange(width, dtype="int32")[None, :]
    in_rows = ops.logical_and(rows >= boxes[:, 0:1], rows < boxes[:, 2:3])  # (B, H)
    in_cols = ops.logical_and(cols >= boxes[:, 1:2], cols < boxes[:, 3:4])  # (B, W)
    mask = ops.logical_and(in_rows[:, :, None], in_cols[:, None, :])  # (B, H, W)
    if channels_last:
        shape = (-1,) + (1,) * (ndim - 4) + (height, width, 1)  # spatial axes -3, -2
    else:
        shape = (-1,) + (1,) * (ndim - 3) + (height, width)
    return ops.reshape(mask, shape)


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
            the inputs: eager only), or :func:`plan_tensors` of one (NumPy arrays or
            backend tensors; not checked, so it can be traced).
        x: images (B, H, W, C) for ``"channels_last"`` (the Keras default), or
            (B, [C,] H, W) for ``"channels_first"``; any (B, ...) array when the plan
            pastes no CutMix boxes. Floating ``x`` keeps its dtype; integer ``x``
            (uint8) is mixed and returned in ``dtype``, not rescaled or rounded.
        y: optional int class ids (B,) in [0, num_classes) or float soft labels (B, C).
        num_classes: required for int class ids.
        label_smoothing: ε in [0, 1], applied before mixing: ``y·(1-ε) + ε/C``.
        data_format: ``"channels_last"`` or ``"channels_first"``; default
            ``keras.config.image_data_format()``.
        x_partner, y_partner: the second batch, for plans drawn with
            ``pairing="stream"`` (same shapes as ``x`` and ``y``).
        dtype: the float dtype integer images are mixed in.

    Returns:
        ``(x_mixed, y_mixed)`` as backend tensors: ``x_mixed`` has ``x``'s shape;
        ``y_mixed`` is float32 (B, C), or None when ``y`` is None.
    """
    channels_last = _data_format(data_format) == "channels_last"
    eps = check_probability("label_smoothing", label_smoothing)
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes, minimum=1)
    if isinstance(plan, MixPlan):
        check_plan_inputs(
            plan,
            x,
            y,
            x_partner=x_partner,
            y_partner=y_partner,
            data_format="channels_last" if channels_last else "channels_first",
        )
        if y is not None:
            _check_label_values("y", y, num_classes)
            if y_partner is not None:
                _check_label_values("y_partner", y_partner, num_classes)
        tensors: Mapping[str, Any] = plan_tensors(plan)
    elif isinstance(plan, Mapping):
        missing = sorted({"weights", "image_weights", "partners"} - set(plan))
        if missing:
            raise ValueError(f"plan is missing {missing}: pass a MixPlan or plan_tensors(plan)")
        tensors = plan
    else:
        raise TypeError(f"plan must be a MixPlan or plan_tensors(plan), got {type(plan).__name__}")
    if y is not None and (x_partner is None) != (y_partner is None):
        raise ValueError("x_partner and y_partner must be given together")

    x = ops.convert_to_tensor(x)
    if _is_integer_dtype(x):
        x = ops.cast(x, dtype)
    k1 = tensors["partners"].shape[-1]
    partners = ops.convert_to_tensor(tensors["partners"], "int32")

    def sources(own: Any, second: Any) -> list[Any]:
        if second is not None:  # a stream plan: row i of the second batch
            return [second]
        return [ops.take(own, partners[:, j], axis=0) for j in range(k1)]

    if x_partner is not None:
        x_partner = ops.cast(ops.convert_to_tensor(x_partner), x.dtype)
    x_sources = sources(x, x_partner)
    if isinstance(plan, MixPlan) and bool(np.all(tensors["image_weights"][:, 0] == 1.0)):
        x_mixed = x  # every row keeps its own image (CutMix, or nothing applied): x·1 + x'·0 = x
    else:
        x_mixed = _combine(ops.convert_to_tensor(tensors["image_weights"]), x, x_sources)
    if "boxes" in tensors:
        h, w = _image_size(tuple(x.shape), channels_last)
        mask = _box_mask(ops.convert_to_tensor(tensors["boxes"]), h, w, len(x.shape), channels_last)
        x_mixed = ops.where(mask, x_sources[0], x_mixed)

    y_mixed = None
    if y is not None:
        soft = _soft_labels(ops.convert_to_tensor(y), num_classes, eps)
        soft_partner = None
        if y_partner is not None:
            soft_partner = _soft_labels(ops.convert_to_tensor(y_partner), num_classes, eps)
        y_mixed = _combine(ops.convert_to_tensor(tensors["weights"]), soft, sources(soft, soft_partner))
    return x_mixed, y_mixed


# --------------------------------------------------------------------------- layer


@keras.saving.register_keras_serializable(package="vicinal")
class MixLayer(keras.layers.Layer):
    """Mixes a batch of images and labels: MixUp, CutMix, their switch or k-way mixing.

    Call it on ``{"images": x, "labels": y}`` (or ``(x, y)``; for a
    ``pairing="stream"`` config also ``"partner_images"`` and ``"partner_labels"``, or
    the tuple ``(x, y, x_partner, y_partner)``). Errors about the batch name these
    ``x``, ``y``, ``x_partner`` and ``y_partner``, as :func:`vicinal.apply_plan` does.
    It returns the same structure (dict or tuple) with:

    * ``images``: ``x``'s shape; floating ``x`` keeps its dtype, integer ``x`` comes
      back in the layer's compute dtype (float32 by default), values not rescaled.
    * ``labels``: float32 (B, C) targets, from int class ids (B,) in
      ``[0, num_classes)`` or float soft labels (B, C).

    The ``n``-th call since :meth:`set_epoch` mixes by
    ``sample_plan(config, B, seed=seed, epoch=epoch, step=n, rank=rank,
    image_size=(H, W))``, drawn on the host: exactly the plan the PyTorch path
    (:class:`vicinal.Mixer`) draws at that step. ``training=False`` only converts the
    labels to float32 (B, C) one-hot (and integer images to float), so the output
    has the same structure either way.

    The plan is drawn on the host from the batch's shape and the call counter, so
    call this layer on concrete batches (a Python loop or generator, a
    ``PyDataset``). Inside a traced function (``jax.jit``, ``tf.function``, a
    ``tf.data`` map) it raises a TypeError; there, draw the plans yourself and use
    :func:`mix_with_plan` on :func:`plan_tensors` (see docs/keras.md). Inside a model
    it needs the labels as a model input: called on images alone it passes them
    through at inference and raises a ValueError in training, rather than mix the
    images and leave their targets unmixed.

    Args:
        config: a :class:`~vicinal.sampling.MixConfig` or a dict of its fields;
            default ``MixConfig()`` (MixUp, α = 0.2, one λ per sample).
        num_classes: number of classes; required for int class ids.
        label_smoothing: ε in [0, 1] applied to the labels before mixing.
        seed: the plan stream's seed (int in [0, 2**63)).
        rank: the process index in a distributed run (a separate plan stream).
        data_format: ``"channels_last"`` (B, H, W, C) or ``"channels_first"``
            (B, C, H, W); default ``keras.config.image_data_format()``.
        **kwargs: :class:`keras.layers.Layer` arguments (``name``, ``dtype``...).
    """

    def __init__(
        self,
        config: MixConfig | Mapping[str, Any] | None = None,
        *,
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
        seed: int = 0,
        rank: int = 0,
        data_format: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.mix_config: MixConfig = _as_mix_config("config", config, allow_none=False)  # type: ignore[assignment]
        self.num_classes = None if num_classes is None else check_int("num_classes", num_classes, minimum=1)
        self.label_smoothing = check_probability("label_smoothing", label_smoothing)
        self.seed = check_int("seed", seed, minimum=0)
        if self.seed >= 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {seed}")
        self.rank = check_int("rank", rank, minimum=0)
        if self.rank >= 2**32:
            raise ValueError(f"rank must be < 2**32, got {rank}")
        self.data_format = _data_format(data_format)
        self._epoch = 0
        self._step = 0
        self.built = True

    # -- plan stream ------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The epoch of the next plan (set by :meth:`set_epoch`)."""
        return self._epoch

    @property
    def step(self) -> int:
        """The step of the next plan: calls in training mode since :meth:`set_epoch`."""
        return self._step

    def set_epoch(self, epoch: int, step: int = 0) -> None:
        """Move the plan stream to ``(epoch, step)``; call before each epoch (or to resume)."""
        self._epoch = check_int("epoch", epoch, minimum=0)
        self._step = check_int("step", step, minimum=0)

    def plan_for(self, images: Any, *, step: int | None = None, epoch: int | None = None) -> MixPlan:
        """The plan for a batch ``images`` at ``(epoch, step)`` (default: the next one),
        without advancing the counter."""
        shape = tuple(images.shape)
        batch = batch_size_of("images", images)
        image_size = None
        if self.mix_config.needs_image_size:
            image_size = _image_size(shape, self.data_format == "channels_last")
        return sample_plan(
            self.mix_config,
            batch,
            seed=self.seed,
            epoch=self._epoch if epoch is None else epoch,
            step=self._step if step is None else step,
            rank=self.rank,
            image_size=image_size,
        )

    # -- calling ------------------------------------------------------------------------

    def _unpack(self, inputs: Any) -> tuple[dict[str, Any], str]:
        """The parts of ``inputs`` and its form: ``"dict"``, ``"tuple"`` or ``"bare"``."""
        if isinstance(inputs, Mapping):
            allowed = {"images", "labels", "partner_images", "partner_labels"}
            unknown = sorted(set(inputs) - allowed)
            if unknown:
                raise ValueError(f"inputs has unknown keys {unknown}; expected keys among {sorted(allowed)}")
            if "images" not in inputs:
                raise ValueError("inputs must have an 'images' entry")
            return dict(inputs), "dict"
        if isinstance(inputs, (tuple, list)):
            if len(inputs) == 2:
                return {"images": inputs[0], "labels": inputs[1]}, "tuple"
            if len(inputs) == 4:
                keys = ("images", "labels", "partner_images", "partner_labels")
                return dict(zip(keys, inputs)), "tuple"
            raise ValueError(
                "inputs as a tuple must be (images, labels) or "
                f"(images, labels, partner_images, partner_labels), got {len(inputs)} items"
            )
        return {"images": inputs}, "bare"

    def call(self, inputs: Any, training: bool = True) -> Any:
        parts, form = self._unpack(inputs)
        images, labels = parts["images"], parts.get("labels")
        if training and _is_traced(images):
            raise TypeError(
                "images is a traced tensor: MixLayer draws each plan on the host for a concrete batch; "
                "inside a traced function (jax.jit, tf.function, tf.data.Dataset.map) draw plans with "
                "vicinal.sample_plan and pass plan_tensors(plan) to mix_with_plan"
            )
        if labels is None:
            if not training:
                return inputs
            raise ValueError(
                "inputs must include the labels ({'images': x, 'labels': y} or (x, y)): "
                "mixing the images alone would leave their targets unmixed"
            )
        if not training:
            if _is_integer_dtype(images):
                images = ops.cast(images, self.compute_dtype)
            out = (images, _soft_labels(labels, self.num_classes, 0.0))
        else:
            plan = self.plan_for(images)
            out = mix_with_plan(
                plan,
                images,
                labels,
                num_classes=self.num_classes,
                label_smoothing=self.label_smoothing,
                data_format=self.data_format,
                x_partner=parts.get("partner_images"),
                y_partner=parts.get("partner_labels"),
                dtype=self.compute_dtype,
            )
            self._step += 1
        return {"images": out[0], "labels": out[1]} if form == "dict" else out

    def compute_output_spec(self, inputs: Any, training: bool = True) -> Any:
        parts, form = self._unpack(inputs)
        images, labels = parts["images"], parts.get("labels")
        if labels is None:  # images pass through at inference (training raises)
            spec = keras.KerasTensor(images.shape, dtype=images.dtype)  # a new node, not the input
            return {"images": spec} if form == "dict" else spec
        if _is_integer_dtype(labels):
            classes = self.num_classes
        else:
            classes = labels.shape[-1]
        dtype = self.compute_dtype if _is_integer_dtype(images) else images.dtype
        images_spec = keras.KerasTensor(images.shape, dtype=dtype)
        labels_spec = keras.KerasTensor((labels.shape[0], classes), dtype="float32")
        if form == "dict":
            return {"images": images_spec, "labels": labels_spec}
        return images_spec, labels_spec

    # -- saving -------------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            config=dataclasses.asdict(self.mix_config),
            num_classes=self.num_classes,
            label_smoothing=self.label_smoothing,
            seed=self.seed,
            rank=self.rank,
            data_format=self.data_format,
        )
        return config

    def save_own_variables(self, store: Any) -> None:
        # The plan counter (not a Keras variable: reading one would sync the device).
        store["epoch_step"] = np.array([self._epoch, self._step], dtype=np.int64)

    def load_own_variables(self, store: Any) -> None:
        if "epoch_step" in store:  # older Keras stores have no __contains__
            epoch, step = (int(v) for v in np.asarray(store["epoch_step"]))
            self.set_epoch(epoch, step)


# --------------------------------------------------------------------------- dataset


class MixedBatches(keras.utils.PyDataset):
    """Shuffled, mixed batches of in-memory arrays, for ``model.fit``.

    Batch ``i`` of epoch ``e`` holds the rows ``epoch_order(seed, e, N)[i·B:(i+1)·B]``
    mixed by ``sample_plan(mix, len, seed=seed, epoch=e, step=i, image_size=(H, W),
    dataset_size=N, stream_offset=i·B)``: the batches of the PyTorch path
    (:class:`vicinal.experiments.loader.InMemoryLoader`) with the same seed, whichever worker
    makes them and in whatever order Keras asks for them.

    For a reproducible ``model.fit``, pass ``callbacks=[SetEpoch(dataset)]`` (it tells
    the dataset fit's epoch number, ``initial_epoch`` included) and ``shuffle=False``
    (the batches are shuffled here; Keras would also permute their order, unseeded),
    and leave ``steps_per_epoch`` unset. Without the callback the epoch still moves
    on after each epoch, but Keras may also start and end an extra "epoch" to build
    the model, so the numbering can start at 1.

    Mixing runs on the host in NumPy (:func:`vicinal.apply_plan`), so batches are
    NumPy arrays that any backend accepts and workers can make in parallel.

    Args:
        x: (N, ...) images, NHWC for ``"channels_last"`` (e.g. uint8 (N, 28, 28, 1)).
        y: int class ids (N,) in [0, num_classes) or float soft labels (N, C).
        batch_size: samples per batch B.
        mix: what to mix (:class:`~vicinal.sampling.MixConfig` or a dict of its
            fields), or None for plain batches (same order, one-hot targets).
            ``pairing="stream"`` is the keras.io reference: partners come from a
            second, independently shuffled pass over the data.
        num_classes: required for int class ids.
        label_smoothing: ε in [0, 1] applied to the targets.
        seed: the run's seed (epoch orders and plans).
        shuffle: a new order every epoch (else dataset order).
        drop_remainder: drop the last, smaller batch.
        rescale: if given, images are cast to float32 and multiplied by it before
            mixing (``1/255`` maps uint8 to [0, 1]); else integer images are mixed in
            float and rounded back to their dtype.
        data_format: layout of ``x`` (matters for CutMix); default
            ``keras.config.image_data_format()``.
        workers, use_multiprocessing, max_queue_size: :class:`keras.utils.PyDataset`'s.

    Each item is ``(images, targets)``: (B, ...) images (float32 when ``rescale`` is
    given) and float32 (B, C) targets.
    """

    def __init__(
        self,
        x: Any,
        y: Any,
        *,
        batch_size: int = 64,
        mix: MixConfig | Mapping[str, Any] | None = None,
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
        seed: int = 0,
        shuffle: bool = True,
        drop_remainder: bool = False,
        rescale: float | None = None,
        data_format: str | None = None,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
    ) -> None:
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        self.x = np.asarray(x)
        self.y = np.asarray(y)
        n = batch_size_of("x", self.x)
        if batch_size_of("y", self.y) != n:
            raise ValueError(f"x and y must have the same number of samples, got {n} and {self.y.shape[0]}")
        self.num_classes = check_labels(self.y, num_classes)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.mix = _as_mix_config("mix", mix, allow_none=True)
        self.label_smoothing = check_probability("label_smoothing", label_smoothing)
        self.seed = check_int("seed", seed, minimum=0)
        self.shuffle = bool(shuffle)
        self.drop_remainder = bool(drop_remainder)
        if drop_remainder and n < self.batch_size:
            raise ValueError(f"drop_remainder=True with batch_size={batch_size} > {n} samples leaves no batch")
        if rescale is not None:
            if isinstance(rescale, bool) or not isinstance(rescale, (int, float)) or not math.isfinite(rescale):
                raise TypeError(f"rescale must be a finite real number or None, got {rescale!r}")
            rescale = float(rescale)
        self.rescale = rescale
        self.data_format = _data_format(data_format)
        self._channels_last = self.data_format == "channels_last"
        self.image_size = None
        if self.mix is not None and self.mix.needs_image_size:
            self.image_size = _image_size(self.x.shape, self._channels_last)
        self.epoch = 0
        self._in_epoch = False

    @property
    def num_samples(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_batches(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_remainder else -(-n // b)

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Make the next batches those of ``epoch``."""
        self.epoch = check_int("epoch", epoch, minimum=0)

    def on_epoch_begin(self) -> None:
        self._in_epoch = True

    def on_epoch_end(self) -> None:
        # Keras also calls this once before the first epoch (when it resets its
        # iterator): only an epoch that began moves the counter on. SetEpoch, if
        # used, then sets the exact number before the next epoch begins.
        if self._in_epoch:
            self.epoch += 1
        self._in_epoch = False

    def order(self, epoch: int) -> np.ndarray:
        """Dataset indices, in the order epoch ``epoch`` visits them (int64 (N,))."""
        if not self.shuffle:
            return np.arange(self.num_samples)
        return epoch_order(self.seed, epoch, self.num_samples)

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        x = self.x[idx]
        if self.rescale is not None:
            x = x.astype(np.float32) * np.float32(self.rescale)
        return x

    def batch(self, index: int, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``index`` of ``epoch`` (default: the current epoch)."""
        epoch = self.epoch if epoch is None else check_int("epoch", epoch, minimum=0)
        index = check_int("index", index, minimum=0)
        if index >= self.num_batches:
            raise IndexError(f"index {index} is out of range for {self.num_batches} batches")
        b = self.batch_size
        idx = self.order(epoch)[index * b : (index + 1) * b]
        x, y = self._rows(idx), self.y[idx]
        if self.mix is None:
            return x, np.asarray(to_soft(y, self.num_classes, label_smoothing=self.label_smoothing))
        plan = sample_plan(
            self.mix,
            len(idx),
            seed=self.seed,
            epoch=epoch,
            step=index,
            image_size=self.image_size,
            dataset_size=self.num_samples,
            stream_offset=index * b,
        )
        x_partner = y_partner = None
        if plan.stream_indices is not None:
            x_partner, y_partner = self._rows(plan.stream_indices), self.y[plan.stream_indices]
        x_mixed, targets = apply_plan(
            plan,
            x,
            y,
            num_classes=self.num_classes,
            label_smoothing=self.label_smoothing,
            x_partner=x_partner,
            y_partner=y_partner,
            data_format="channels_last" if self._channels_last else "channels_first",
        )
        return x_mixed, targets

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.batch(index)


# --------------------------------------------------------------------------- callback


class SetEpoch(keras.callbacks.Callback):
    """Tells :class:`MixedBatches` and :class:`MixLayer` objects fit's epoch number.

    At the start of each epoch of ``model.fit`` (``initial_epoch`` included) it calls
    ``target.set_epoch(epoch)`` on every target, before Keras asks for a batch, so
    batch ``i`` of epoch ``e`` is mixed by the plan of ``(seed, e, i)``.

    Args:
        *targets: objects with a ``set_epoch(epoch: int)`` method.
    """

    def __init__(self, *targets: Any) -> None:
        super().__init__()
        for t in targets:
            if not callable(getattr(t, "set_epoch", None)):
                raise TypeError(f"targets must have a set_epoch(epoch) method, got {type(t).__name__}")
        self.targets = targets

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        for t in self.targets:
            t.set_epoch(epoch)
