"""Batches for ``model.fit``: :class:`MixedBatches`, and the :class:`SetEpoch` callback."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from vicinal._checks import check_int, check_probability
from vicinal._stepper import StepCounter
from vicinal.keras.ops import as_mix_config, resolve_data_format
from vicinal.labels import batch_size_of, check_labels, to_soft
from vicinal.mixing import spatial_size
from vicinal.sampling import MixConfig, MixPlan, epoch_order
from vicinal.transforms import indexed_batch_plan, mix_indexed_batch

__all__ = ["MixedBatches", "SetEpoch"]


class MixedBatches(keras.utils.PyDataset):
    """Shuffled, mixed batches of in-memory arrays, for ``model.fit``.

    Batch ``i`` of epoch ``e`` holds the rows ``epoch_order(seed, e, N)[i·B:(i+1)·B]``
    mixed by ``sample_plan(mix, len, seed=seed, epoch=e, step=i, image_size=(H, W),
    dataset_size=N, stream_offset=i·B)`` (:func:`vicinal.transforms.mix_indexed_batch`):
    the batches of the PyTorch path (:class:`vicinal.experiments.loader.InMemoryLoader`)
    with the same seed, whichever worker makes them and in whatever order Keras asks
    for them.

    The targets are always soft labels, float32 (B, C), even from int class ids and
    with ``mix=None``: compile the model with ``loss="categorical_crossentropy"`` (or
    another loss that takes (B, C) targets), not ``"sparse_categorical_crossentropy"``,
    which wants class ids (B,). Keras' own error for that mistake reads
    ``target.shape=[B, C], output.shape=[B, C]``; :class:`SetEpoch` raises a clearer one
    where it can (see its docstring).

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
        batch_size: samples per batch B, an int >= 1.
        mix: what to mix (:class:`~vicinal.sampling.MixConfig` or a dict of its
            fields), or None for plain batches (same order, one-hot targets).
            ``pairing="stream"`` is the keras.io reference: partners come from a
            second, independently shuffled pass over the data.
        num_classes: C, an int >= 1; required for int class ids.
        label_smoothing: ε in [0, 1] applied to the targets.
        seed: the run's seed (epoch orders and plans), an int in [0, 2**63).
        shuffle: a new order every epoch (else dataset order).
        drop_remainder: drop the last, smaller batch.
        rescale: if given, a finite real: images are cast to float32 and multiplied by
            it before mixing (``1/255`` maps uint8 to [0, 1]); else integer images are
            mixed in float and rounded back to their dtype.
        data_format: ``"channels_last"`` or ``"channels_first"``, the layout of ``x``
            (matters for CutMix); default ``keras.config.image_data_format()``.
        workers, use_multiprocessing, max_queue_size: :class:`keras.utils.PyDataset`'s.

    Each item is ``(images, targets)``: (B, ...) images (float32 when ``rescale`` is
    given, else ``x``'s dtype) and float32 (B, C) targets whose rows sum to 1 (for
    one-hot or smoothed labels).
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
        self.mix = as_mix_config("mix", mix, allow_none=True)
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
        self.data_format = resolve_data_format(data_format)
        self.image_size = None
        if self.mix is not None and self.mix.needs_image_size:  # checked here, not at the first batch
            self.image_size = spatial_size(self.x, self.data_format)
        self.counter = StepCounter()  # epochs only: a batch is found by its index
        self._in_epoch = False

    @property
    def num_samples(self) -> int:
        """N, the number of rows of ``x``."""
        return int(self.x.shape[0])

    @property
    def num_batches(self) -> int:
        """Batches an epoch, ``ceil(N / B)`` (``floor`` with ``drop_remainder``)."""
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_remainder else -(-n // b)

    def __len__(self) -> int:
        return self.num_batches

    @property
    def epoch(self) -> int:
        """The epoch of the next batches, an int >= 0."""
        return self.counter.epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next batches those of ``epoch`` (an int >= 0)."""
        self.counter.set_epoch(epoch)

    def on_epoch_begin(self) -> None:
        """Called by Keras when an epoch starts."""
        self._in_epoch = True

    def on_epoch_end(self) -> None:
        """Called by Keras when an epoch ends: moves on to the next epoch."""
        # Keras also calls this once before the first epoch (when it resets its
        # iterator): only an epoch that began moves the counter on. SetEpoch, if
        # used, then sets the exact number before the next epoch begins.
        if self._in_epoch:
            self.counter.next_epoch()
        self._in_epoch = False

    def order(self, epoch: int) -> np.ndarray:
        """Dataset indices, in the order epoch ``epoch`` visits them (int64 (N,))."""
        if not self.shuffle:
            return np.arange(self.num_samples)
        return epoch_order(self.seed, epoch, self.num_samples)

    def _fetch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``idx`` of ``x`` (rescaled) and ``y``."""
        x = self.x[idx]
        if self.rescale is not None:
            x = x.astype(np.float32) * np.float32(self.rescale)
        return x, self.y[idx]

    def _rows(self, index: int, epoch: int | None) -> tuple[int, int, np.ndarray]:
        """``(epoch, index, dataset rows)`` of batch ``index`` of ``epoch``, checked."""
        epoch = self.epoch if epoch is None else check_int("epoch", epoch, minimum=0)
        index = check_int("index", index, minimum=0)
        if index >= self.num_batches:
            raise IndexError(f"index {index} is out of range for {self.num_batches} batches")
        b = self.batch_size
        return epoch, index, self.order(epoch)[index * b : (index + 1) * b]

    def batch(self, index: int, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``index`` (in [0, num_batches)) of ``epoch`` (default: the current epoch).

        Returns:
            ``(images, targets)``: (B, ...) images and float32 (B, C) targets.
        """
        epoch, index, idx = self._rows(index, epoch)
        b = self.batch_size
        if self.mix is None:
            x, y = self._fetch(idx)
            return x, np.asarray(to_soft(y, self.num_classes, label_smoothing=self.label_smoothing))
        return mix_indexed_batch(
            self.mix,
            self._fetch,
            idx,
            dataset_size=self.num_samples,
            stream_offset=index * b,
            seed=self.seed,
            epoch=epoch,
            step=index,
            num_classes=self.num_classes,
            label_smoothing=self.label_smoothing,
            data_format=self.data_format,
        )

    def plan(self, index: int, epoch: int | None = None) -> MixPlan:
        """The plan :meth:`batch` mixes batch ``index`` of ``epoch`` by (default: the
        current epoch), its boxes placed (SaliencyMix reads the images to place them).

        ``mix`` must be set. Drawn with :func:`vicinal.transforms.indexed_batch_plan`,
        the recipe :meth:`batch` follows, so the ``tf.data`` pipeline mixes the same.
        """
        if self.mix is None:
            raise ValueError("these batches are not mixed (mix=None): they have no plan")
        epoch, index, idx = self._rows(index, epoch)
        b = self.batch_size
        plan, _, _ = indexed_batch_plan(
            self.mix,
            self._fetch,
            idx,
            image_size=self.image_size,
            dataset_size=self.num_samples,
            stream_offset=index * b,
            seed=self.seed,
            epoch=epoch,
            step=index,
            data_format=self.data_format,
        )
        return plan

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.batch(index)

    def tf_dataset(self, *, num_parallel_calls: int | None = None, prefetch: int | None = None) -> Any:
        """These batches as a ``tf.data.Dataset`` made in TensorFlow's graph (needs TensorFlow).

        The fast way to feed ``model.fit`` on the TensorFlow backend, where Keras wraps a
        ``PyDataset`` in a Python generator: each pass yields the batches of
        :attr:`epoch` (read when the pass starts; use ``SetEpoch(self)``), equal to
        :meth:`batch` within float rounding. See :func:`vicinal.keras.tfdata.tf_dataset`.
        """
        from vicinal.keras.tfdata import tf_dataset

        return tf_dataset(self, num_parallel_calls=num_parallel_calls, prefetch=prefetch)


# Keras losses that take int class ids (B,), not the soft (B, C) targets of MixedBatches.
_CLASS_ID_LOSSES = ("sparse_categorical_crossentropy", "categorical_generalized_cross_entropy")


def _class_id_losses(loss: Any) -> list[str]:
    """Names of the class-id losses in a model's ``loss`` (a name, a ``Loss``, a function,
    or a list or dict of them, one a model output)."""
    if isinstance(loss, Mapping):
        items = list(loss.values())
    elif isinstance(loss, (list, tuple)):
        items = list(loss)
    else:
        items = [loss]
    wanted = [(getattr(keras.losses, name, None), name) for name in _CLASS_ID_LOSSES]  # None: not in this Keras
    found = []
    for item in items:
        if isinstance(item, str):
            try:
                item = keras.losses.get(item)
            except ValueError:  # not a Keras loss name: Keras raises its own error
                continue
        fn = getattr(item, "fn", item)  # a LossFunctionWrapper (SparseCategoricalCrossentropy()) wraps its function
        found += [name for f, name in wanted if f is not None and fn is f]
    return found


class SetEpoch(keras.callbacks.Callback):
    """Tells :class:`MixedBatches` and :class:`~vicinal.keras.MixLayer` objects fit's
    epoch number.

    At the start of each epoch of ``model.fit`` (``initial_epoch`` included) it calls
    ``target.set_epoch(epoch)`` on every target, before Keras asks for a batch, so
    batch ``i`` of epoch ``e`` is mixed by the plan of ``(seed, e, i)``.

    When a target is a :class:`MixedBatches`, it also checks the model's loss at the
    start of ``fit`` (``on_train_begin``) and raises a ValueError if the loss takes int
    class ids (``sparse_categorical_crossentropy``) rather than the dataset's soft
    float32 (B, C) targets. Keras builds the loss on the first batch before any callback
    runs, so on a freshly compiled model Keras' own shape error comes first; the check
    catches a model whose loss Keras has already built (one trained before on class ids).

    Args:
        *targets: objects with a ``set_epoch(epoch: int)`` method.
    """

    def __init__(self, *targets: Any) -> None:
        super().__init__()
        for t in targets:
            if not callable(getattr(t, "set_epoch", None)):
                raise TypeError(f"targets must have a set_epoch(epoch) method, got {type(t).__name__}")
        self.targets = targets

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """Refuses a class-id loss when a target is a :class:`MixedBatches`."""
        if not any(isinstance(t, MixedBatches) for t in self.targets):
            return
        names = _class_id_losses(getattr(self.model, "loss", None))
        if names:
            raise ValueError(
                f"the model's loss is {names[0]}, which takes int class ids (B,), but MixedBatches yields "
                "mixed targets as soft labels, float32 (B, C): compile with loss='categorical_crossentropy' "
                "(or a callable that takes soft (B, C) targets)"
            )

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Calls ``set_epoch(epoch)`` on every target (``epoch``: fit's 0-based epoch)."""
        for t in self.targets:
            t.set_epoch(epoch)
