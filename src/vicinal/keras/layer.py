"""The Keras layer :class:`MixLayer`: mixes concrete batches by host-drawn plans."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
from keras import ops

from vicinal._checks import check_int, check_probability
from vicinal._stepper import StepCounter
from vicinal.keras.ops import (
    as_mix_config,
    is_integer_dtype,
    is_traced,
    mix_with_plan,
    resolve_data_format,
    soft_labels,
)
from vicinal.labels import batch_size_of
from vicinal.mixing import place_boxes, spatial_size
from vicinal.sampling import MixConfig, MixPlan, sample_plan

# MixConfig fields, accepted as MixLayer keywords.
_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(MixConfig))

__all__ = ["MixLayer"]


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
    :func:`mix_with_plan` on :func:`plan_to_tensors` (see docs/keras.md). Inside a model
    it needs the labels as a model input: called on images alone it passes them
    through at inference and raises a ValueError in training, rather than mix the
    images and leave their targets unmixed.

    Args:
        config: a :class:`~vicinal.sampling.MixConfig` or a dict of its fields;
            default ``MixConfig()`` (MixUp, α = 0.2, one λ per sample). Instead of a
            config, its fields may be given as keywords, as ``keras.layers.MixUp`` is
            called: ``MixLayer(alpha=0.2, num_classes=10)``,
            ``MixLayer(method="fmix", mask_alpha=1.0, num_classes=10)``.
        num_classes: number of classes; required for int class ids.
        label_smoothing: ε in [0, 1] applied to the labels before mixing.
        seed: the plan stream's seed (int in [0, 2**63)).
        rank: the process index in a distributed run (a separate plan stream).
        data_format: ``"channels_last"`` (B, H, W, C) or ``"channels_first"``
            (B, C, H, W); default ``keras.config.image_data_format()``.
        **kwargs: :class:`~vicinal.sampling.MixConfig` fields, and
            :class:`keras.layers.Layer` arguments (``name``, ``dtype``...).
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
        fields = {key: kwargs.pop(key) for key in list(kwargs) if key in _CONFIG_FIELDS}
        super().__init__(**kwargs)
        if fields:
            if config is not None:
                raise ValueError(
                    f"pass either config or MixConfig fields as keywords, not both: got config and {sorted(fields)}"
                )
            config = fields
        self.config: MixConfig = as_mix_config("config", config, allow_none=False)  # type: ignore[assignment]
        self.num_classes = None if num_classes is None else check_int("num_classes", num_classes, minimum=1)
        self.label_smoothing = check_probability("label_smoothing", label_smoothing)
        self.seed = check_int("seed", seed, minimum=0)
        if self.seed >= 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {seed}")
        self.rank = check_int("rank", rank, minimum=0)
        if self.rank >= 2**32:
            raise ValueError(f"rank must be < 2**32, got {rank}")
        self.data_format = resolve_data_format(data_format)
        self.counter = StepCounter()
        self.built = True

    # -- plan stream ------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The epoch of the next plan, an int >= 0 (set by :meth:`set_epoch`)."""
        return self.counter.epoch

    @property
    def mix_config(self) -> MixConfig:
        """Deprecated name of :attr:`config` (the config is ``config`` everywhere); goes in vicinal 0.4."""
        warnings.warn("MixLayer.mix_config is now MixLayer.config", DeprecationWarning, stacklevel=2)
        return self.config

    @property
    def step(self) -> int:
        """The step of the next plan, an int >= 0: calls in training mode since :meth:`set_epoch`."""
        return self.counter.step

    def set_epoch(self, epoch: int, step: int = 0) -> None:
        """Move the plan stream to ``(epoch, step)`` (ints >= 0); call before each epoch
        (or with ``step`` to resume mid-epoch)."""
        self.counter.set_epoch(epoch, step)

    def plan_for(
        self, images: Any, *, step: int | None = None, epoch: int | None = None, partner_images: Any = None
    ) -> MixPlan:
        """The plan for a batch ``images`` at ``(epoch, step)`` (default: the next one),
        without advancing the counter.

        Args:
            images: (B, ...) images, laid out as ``data_format`` says (only CutMix and
                switch configs read their (H, W)); a concrete array or tensor.
            step, epoch: ints >= 0; default: the layer's counter and epoch.

        Returns:
            The :class:`~vicinal.sampling.MixPlan` for B samples that :meth:`call`
            would use.
        """
        batch = batch_size_of("images", images)
        image_size = None
        if self.config.needs_image_size:
            image_size = spatial_size(images, self.data_format)
        e, s, _ = self.counter.resolve(step, epoch)
        plan = sample_plan(self.config, batch, seed=self.seed, epoch=e, step=s, rank=self.rank, image_size=image_size)
        if not plan.is_placed:  # SaliencyMix: boxes placed from the images
            host = np.asarray(images)
            partner = None if partner_images is None else np.asarray(partner_images)
            plan = place_boxes(plan, host, x_partner=partner, data_format=self.data_format)
        return plan

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
        """Mix ``inputs`` (see the class docstring for the accepted forms and shapes).

        Returns the same structure: images of ``x``'s shape (float), float32 (B, C)
        labels. ``training=False`` leaves the counter and the images' values as they are.
        """
        parts, form = self._unpack(inputs)
        images, labels = parts["images"], parts.get("labels")
        if training and is_traced(images):
            raise TypeError(
                "images is a traced tensor: MixLayer draws each plan on the host for a concrete batch; "
                "inside a traced function (jax.jit, tf.function, tf.data.Dataset.map) draw plans with "
                "vicinal.sample_plan and pass plan_to_tensors(plan) to mix_with_plan"
            )
        if labels is None:
            if not training:
                return inputs
            raise ValueError(
                "inputs must include the labels ({'images': x, 'labels': y} or (x, y)): "
                "mixing the images alone would leave their targets unmixed"
            )
        partner_images = parts.get("partner_images")
        if is_integer_dtype(images):  # a layer's output is in its compute dtype (not rescaled)
            images = ops.cast(images, self.compute_dtype)
            if partner_images is not None:
                partner_images = ops.cast(partner_images, self.compute_dtype)
        if not training:
            out = (images, soft_labels(labels, self.num_classes, 0.0))
        else:
            plan = self.plan_for(images, partner_images=partner_images)
            out = mix_with_plan(
                plan,
                images,
                labels,
                num_classes=self.num_classes,
                label_smoothing=self.label_smoothing,
                data_format=self.data_format,
                x_partner=partner_images,
                y_partner=parts.get("partner_labels"),
            )
            self.counter.advance()
        return {"images": out[0], "labels": out[1]} if form == "dict" else out

    def compute_output_spec(self, inputs: Any, training: bool = True) -> Any:
        """The output's ``KerasTensor`` specs: images of ``x``'s shape, float32 (B, C) labels."""
        parts, form = self._unpack(inputs)
        images, labels = parts["images"], parts.get("labels")
        if labels is None:  # images pass through at inference (training raises)
            spec = keras.KerasTensor(images.shape, dtype=images.dtype)  # a new node, not the input
            return {"images": spec} if form == "dict" else spec
        if is_integer_dtype(labels):
            classes = self.num_classes
        else:
            classes = labels.shape[-1]
        dtype = self.compute_dtype if is_integer_dtype(images) else images.dtype
        images_spec = keras.KerasTensor(images.shape, dtype=dtype)
        labels_spec = keras.KerasTensor((labels.shape[0], classes), dtype="float32")
        if form == "dict":
            return {"images": images_spec, "labels": labels_spec}
        return images_spec, labels_spec

    # -- saving -------------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        """The layer's arguments, the config as a dict of its fields (for ``.keras`` saving)."""
        config = super().get_config()
        config.update(
            config=dataclasses.asdict(self.config),
            num_classes=self.num_classes,
            label_smoothing=self.label_smoothing,
            seed=self.seed,
            rank=self.rank,
            data_format=self.data_format,
        )
        return config

    def save_own_variables(self, store: Any) -> None:
        """Saves the plan counter: int64 ``[epoch, step]`` (not a Keras variable: reading
        one would sync the device)."""
        store["epoch_step"] = np.array([self.counter.epoch, self.counter.step], dtype=np.int64)

    def load_own_variables(self, store: Any) -> None:
        """Restores the plan counter saved by :meth:`save_own_variables`."""
        if "epoch_step" in store:  # older Keras stores have no __contains__
            epoch, step = (int(v) for v in np.asarray(store["epoch_step"]))
            self.set_epoch(epoch, step)
