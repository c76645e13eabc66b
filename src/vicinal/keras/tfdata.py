"""A ``tf.data`` pipeline of :class:`~vicinal.keras.MixedBatches`' batches: :func:`tf_dataset`.

``model.fit`` on a ``keras.utils.PyDataset`` with the TensorFlow backend wraps it in
``tf.data.Dataset.from_generator``: every batch is made in Python and crosses into
TensorFlow under the GIL, which made the keras.io MixUp experiment 1.6× slower per
epoch than its own ``tf.data`` pipeline. :func:`tf_dataset` makes the same batches
inside a ``tf.data`` graph instead:

* on the host, a chunk of batches at a time (a NumPy call per 32 batches, ahead of
  the training step): the epoch's order and each batch's plan
  (:meth:`MixedBatches.plan <vicinal.keras.MixedBatches.plan>`), packed by
  :func:`vicinal.mixing.plan_arrays` (the one packed format) and stacked;
* in the graph, per batch, on TensorFlow's threads (``num_parallel_calls``): gather
  the rows from the in-memory arrays, rescale, and mix by
  :func:`vicinal.keras.ops.mix_tensors`, the same code ``keras.ops.mix_with_plan``
  runs, here on plain TensorFlow ops.

So batch ``i`` of epoch ``e`` equals ``batches.batch(i, e)`` within float rounding
(integer images: up to ties; tested), on every pass, for every method. Each pass (each
``iter()``, which ``model.fit`` makes at the start of an epoch) reads
``batches.epoch`` when it starts: use ``SetEpoch(batches)`` as with the ``PyDataset``
itself.

It needs TensorFlow (``pip install tensorflow``), not the TensorFlow *backend*: the
pipeline is plain ``tf`` ops, so a ``tf.data.Dataset`` made here feeds ``model.fit`` on
the torch and JAX backends too (Keras converts each batch), though on those backends
:class:`MixedBatches` itself is as fast or faster (docs/keras.md has the numbers).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vicinal.keras.ops import mix_tensors, plan_to_tensors
from vicinal.labels import to_soft
from vicinal.mixing import place_boxes
from vicinal.sampling import MixPlan, sample_plan

__all__ = ["epoch_arrays", "tf_dataset"]

# Batches whose plans are drawn in one host call: a pass starts after the first chunk's
# draw (~2 ms), not the whole epoch's (~70 ms for the reference's 907 batches).
_CHUNK = 32


def _tf() -> Any:
    try:
        import tensorflow as tf
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "vicinal.keras.tf_dataset needs TensorFlow (pip install tensorflow); "
            "without it, pass the MixedBatches itself to model.fit"
        ) from err
    return tf


class _TfOps:
    """Plain TensorFlow as the namespace of :func:`vicinal.keras.ops.mix_tensors`
    (the ``keras.ops`` names it uses), so the pipeline runs in a ``tf.data`` graph on any
    Keras backend."""

    def __init__(self, tf: Any) -> None:
        tnp = tf.experimental.numpy
        self.arange = lambda n, dtype: tf.range(n, dtype=dtype)
        self.cast = tf.cast
        self.clip = tf.clip_by_value
        self.convert_to_tensor = tf.convert_to_tensor
        self.logical_and = tf.logical_and
        self.logical_or = tf.logical_or
        self.moveaxis = tnp.moveaxis
        self.ones_like = tf.ones_like
        self.reshape = tf.reshape
        self.round = tf.round  # half to even, as the core
        self.take = lambda a, index, axis: tf.gather(a, index, axis=axis)
        self.take_along_axis = tnp.take_along_axis
        self.where = tf.where

    @staticmethod
    def dtype_of(t: Any) -> str:
        return str(t.dtype.name)


def _packed(plan: MixPlan) -> dict[str, np.ndarray]:
    """One batch's arrays in a chunk: :func:`plan_to_tensors`, and the stream's rows."""
    packed = plan_to_tensors(plan)
    # float64, as the plan holds them: cast in the graph to the images' dtype, so
    # float64 images blend exactly as the core blends them (float32: the same).
    packed["image_weights"] = plan.input_weights
    if plan.stream_indices is not None:
        packed["stream_rows"] = plan.stream_indices.astype(np.int32)
    return packed


def _chunk_layout(batches: Any) -> dict[str, tuple[np.dtype[Any], tuple[int, ...]]]:
    """``name -> (dtype, shape of one batch's array)`` of :func:`epoch_arrays`' output.

    The key set, dtypes and shapes depend only on the config, the batch size and the
    image size, so they are read off a stand-in plan (placed on blank images), without
    drawing an epoch's order.
    """
    b = batches.batch_size
    layout: dict[str, tuple[np.dtype[Any], tuple[int, ...]]] = {
        "size": (np.dtype(np.int32), ()),
        "rows": (np.dtype(np.int32), (b,)),
    }
    if batches.mix is None:
        return layout
    plan = sample_plan(
        batches.mix, b, seed=0, image_size=batches.image_size, dataset_size=batches.num_samples, stream_offset=0
    )
    if not plan.is_placed:
        blank = np.zeros((b, *batches.x.shape[1:]), dtype=np.float32)
        plan = place_boxes(plan, blank, x_partner=blank, data_format=batches.data_format)
    layout.update({key: (value.dtype, value.shape) for key, value in _packed(plan).items()})
    return layout


def epoch_arrays(batches: Any, epoch: int, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
    """Batches ``start`` to ``stop`` (default: all) of ``epoch`` of ``batches`` (a
    :class:`MixedBatches`) as stacked arrays.

    Returns (``nb`` batches, ``B`` the batch size, the last batch padded to ``B`` with
    zeros):
        ``"size"``: int32 (nb,), the rows of each batch.
        ``"rows"``: int32 (nb, B), the dataset rows of each batch.
        ``"stream_rows"``: int32 (nb, B), the second stream's rows (``pairing="stream"``).
        With a ``mix``, each batch's plan packed by :func:`vicinal.keras.ops.plan_to_tensors`
        (:func:`vicinal.mixing.plan_arrays` with Keras' names), stacked: ``"weights"``,
        ``"image_weights"`` (float64 here), ``"partners"`` (in-batch rows), and for plans that paste
        ``"boxes"``, ``"masks"``, ``"source_rows"``/``"source_cols"``.
    """
    b = batches.batch_size
    stop = batches.num_batches if stop is None else min(stop, batches.num_batches)
    nb = max(stop - start, 0)
    order = batches.order(epoch)
    out: dict[str, np.ndarray] = {
        "size": np.empty(nb, dtype=np.int32),
        "rows": np.zeros((nb, b), dtype=np.int32),
    }
    for i in range(nb):
        step = start + i
        idx = order[step * b : (step + 1) * b]
        m = len(idx)
        out["size"][i] = m
        out["rows"][i, :m] = idx
        if batches.mix is None:
            continue
        for key, value in _packed(batches.plan(step, epoch)).items():
            if key not in out:
                out[key] = np.zeros((nb, b, *value.shape[1:]), dtype=value.dtype)
            out[key][i, :m] = value
    return out


def tf_dataset(batches: Any, *, num_parallel_calls: int | None = None, prefetch: int | None = None) -> Any:
    """The batches of ``batches`` (a :class:`~vicinal.keras.MixedBatches`) as a ``tf.data.Dataset``.

    Each pass over the dataset yields the ``len(batches)`` batches of epoch
    ``batches.epoch`` (read when the pass starts), equal to ``batches.batch(i)`` within
    float rounding (integers: up to ties): same order, plans, rescaling, label
    smoothing, layout and dtypes, for every method.

    Args:
        batches: the :class:`~vicinal.keras.MixedBatches` to mirror (its arrays are
            copied into TensorFlow tensors once, here).
        num_parallel_calls: batches made in parallel (default ``tf.data.AUTOTUNE``).
        prefetch: batches made ahead (default ``tf.data.AUTOTUNE``).

    Returns:
        A ``tf.data.Dataset`` of ``(images, targets)`` with a known cardinality;
        pass it to ``model.fit`` with ``callbacks=[SetEpoch(batches)]``.
    """
    from vicinal.keras.data import MixedBatches

    if not isinstance(batches, MixedBatches):
        raise TypeError(f"batches must be a MixedBatches, got {type(batches).__name__}")
    tf = _tf()
    xp = _TfOps(tf)
    auto = tf.data.AUTOTUNE
    mix = batches.mix
    nb = batches.num_batches
    layout = _chunk_layout(batches)
    names = list(layout)
    dtypes = [tf.as_dtype(dtype) for dtype, _ in layout.values()]
    shapes = {name: shape for name, (_, shape) in layout.items()}

    x_np, rescale = batches.x, batches.rescale
    with tf.device("/cpu:0"):
        x_all = tf.convert_to_tensor(x_np)
        y_all = tf.convert_to_tensor(
            np.asarray(to_soft(batches.y, batches.num_classes, label_smoothing=batches.label_smoothing))
        )
    image_size = batches.image_size
    # CutMix alone keeps every row's own image under its box: nothing to blend.
    blend = mix is not None and set(mix.methods) != {"cutmix"}

    def read_epoch(_: Any) -> np.ndarray:  # once per pass, when it starts
        return np.asarray(batches.epoch, dtype=np.int64)

    def draw(epoch: Any, chunk: Any) -> list[np.ndarray]:  # on the host, a chunk of batches at a time
        start = int(chunk) * _CHUNK
        arrays = epoch_arrays(batches, int(epoch), start, start + _CHUNK)
        return [arrays[name] for name in names]

    def plans(epoch: Any, chunk: Any) -> dict[str, Any]:
        out = tf.numpy_function(draw, [epoch, chunk], dtypes, stateful=True)
        return {name: tf.ensure_shape(t, (None, *shapes[name])) for name, t in zip(names, out)}

    def one_pass(_: Any) -> Any:
        epoch = tf.ensure_shape(tf.numpy_function(read_epoch, [_], tf.int64, stateful=True), ())
        chunks = tf.data.Dataset.range(-(-nb // _CHUNK)).map(lambda c: plans(epoch, c))
        return chunks.flat_map(tf.data.Dataset.from_tensor_slices)

    def fetch(rows: Any) -> Any:
        x = tf.gather(x_all, rows)
        if rescale is not None:
            return tf.cast(x, tf.float32) * tf.constant(rescale, tf.float32)
        return x

    def make(plan: dict[str, Any]) -> tuple[Any, Any]:
        m = plan["size"]
        rows = plan["rows"][:m]
        x, y = fetch(rows), tf.gather(y_all, rows)
        if mix is None:
            return x, y
        x_partner = y_partner = None
        if "stream_rows" in plan:
            stream = plan["stream_rows"][:m]
            x_partner, y_partner = fetch(stream), tf.gather(y_all, stream)
        tensors = {name: plan[name][:m] for name in names if name not in ("size", "rows", "stream_rows")}
        return mix_tensors(
            xp,
            tensors,
            x,
            y,
            x_partner=x_partner,
            soft_partner=y_partner,
            image_size=image_size,
            data_format=batches.data_format,
            blend=blend,
        )

    ds = tf.data.Dataset.range(1).flat_map(one_pass)
    ds = ds.map(make, num_parallel_calls=auto if num_parallel_calls is None else num_parallel_calls, deterministic=True)
    ds = ds.apply(tf.data.experimental.assert_cardinality(nb))
    return ds.prefetch(auto if prefetch is None else prefetch)
