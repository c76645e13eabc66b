"""A ``tf.data`` pipeline of :class:`~vicinal.keras.MixedBatches`' batches: :func:`tf_dataset`.

``model.fit`` on a ``keras.utils.PyDataset`` with the TensorFlow backend wraps it in
``tf.data.Dataset.from_generator``: every batch is made in Python and crosses into
TensorFlow under the GIL, which made the keras.io MixUp experiment 1.6× slower per
epoch than its own ``tf.data`` pipeline. :func:`tf_dataset` makes the same batches
inside a ``tf.data`` graph instead:

* on the host, a chunk of batches at a time (a NumPy call per 32 batches, ahead of
  the training step): the epoch's order and each batch's :class:`~vicinal.sampling.MixPlan`, drawn by
  :func:`vicinal.sampling.sample_plan` exactly as :class:`MixedBatches` draws them,
  flattened into fixed-shape arrays: the dataset rows of each source (own rows,
  partner rows or the second stream's rows), the label and image weights, the CutMix
  boxes;
* in the graph, per batch, on TensorFlow's threads (``num_parallel_calls``): gather
  the rows from the in-memory arrays, rescale, the weighted sum, the box paste, the
  soft labels.

So batch ``i`` of epoch ``e`` equals ``batches.batch(i, e)`` within float rounding
(tested), on every pass. Each pass (each ``iter()``, which ``model.fit`` makes at the
start of an epoch) reads ``batches.epoch`` when it starts: use ``SetEpoch(batches)``
as with the ``PyDataset`` itself.

It needs TensorFlow (``pip install tensorflow``), not the TensorFlow *backend*: the
pipeline is plain ``tf`` ops, so a ``tf.data.Dataset`` made here feeds ``model.fit`` on
the torch and JAX backends too (Keras converts each batch), though on those backends
:class:`MixedBatches` itself is as fast or faster (docs/keras.md has the numbers).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vicinal.labels import to_soft
from vicinal.sampling import sample_plan

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


def epoch_arrays(batches: Any, epoch: int, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
    """Batches ``start`` to ``stop`` (default: all) of ``epoch`` of ``batches`` (a
    :class:`MixedBatches`) as stacked arrays.

    Returns (``nb`` batches, ``B`` the batch size, the last batch padded to ``B``):
        ``"size"``: int32 (nb,), the rows of each batch.
        ``"rows"``: int32 (nb, B, K), the dataset rows of each source: column 0 the
        batch's own rows, columns 1.. its partners' (in-batch partners mapped to their
        dataset rows, or the second stream's rows for ``pairing="stream"``).
        ``"weights"``: float32 (nb, B, K), the plans' label weights, and
        ``"image_weights"``: float64 (nb, B, K), their image weights (only with a ``mix``).
        ``"boxes"``: int32 (nb, B, 4), the CutMix boxes (CutMix and switch only).
    """
    n, b = batches.num_samples, batches.batch_size
    stop = batches.num_batches if stop is None else min(stop, batches.num_batches)
    nb = max(stop - start, 0)
    order = batches.order(epoch)
    mix = batches.mix
    k = 1 if mix is None else mix.num_sources
    out: dict[str, np.ndarray] = {
        "size": np.empty(nb, dtype=np.int32),
        "rows": np.zeros((nb, b, k), dtype=np.int32),
    }
    if mix is not None:
        out["weights"] = np.zeros((nb, b, k), dtype=np.float32)
        out["image_weights"] = np.zeros((nb, b, k), dtype=np.float64)  # cast in the graph, as the core
        if mix.needs_image_size:
            out["boxes"] = np.zeros((nb, b, 4), dtype=np.int32)
    for i in range(nb):
        step = start + i
        idx = order[step * b : (step + 1) * b]
        m = len(idx)
        out["size"][i] = m
        out["rows"][i, :m, 0] = idx
        if mix is None:
            continue
        plan = sample_plan(
            mix,
            m,
            seed=batches.seed,
            epoch=epoch,
            step=step,
            image_size=batches.image_size,
            dataset_size=n,
            stream_offset=step * b,
        )
        if plan.stream_indices is not None:
            out["rows"][i, :m, 1] = plan.stream_indices
        else:
            out["rows"][i, :m, 1:] = idx[plan.partners]
        out["weights"][i, :m] = plan.weights
        out["image_weights"][i, :m] = plan.input_weights
        if plan.boxes is not None:
            out["boxes"][i, :m] = plan.boxes
    return out


def tf_dataset(batches: Any, *, num_parallel_calls: int | None = None, prefetch: int | None = None) -> Any:
    """The batches of ``batches`` (a :class:`~vicinal.keras.MixedBatches`) as a ``tf.data.Dataset``.

    Each pass over the dataset yields the ``len(batches)`` batches of epoch
    ``batches.epoch`` (read when the pass starts), equal to ``batches.batch(i)`` within
    float rounding: same order, plans, rescaling, label smoothing, layout and dtypes.

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
    mix = batches.mix
    if mix is not None and not set(mix.methods) <= {"mixup", "cutmix", "kway"}:
        raise ValueError(
            f"tf_dataset makes MixUp, CutMix, their switch and k-way batches in the graph; "
            f"method={mix.method!r} (masks, resized or saliency-placed pastes) is not built there yet: "
            "pass the MixedBatches itself to model.fit"
        )
    tf = _tf()
    auto = tf.data.AUTOTUNE
    nb, b = batches.num_batches, batches.batch_size
    k = 1 if mix is None else mix.num_sources
    names = ["size", "rows"] + ([] if mix is None else ["weights", "image_weights"])
    if mix is not None and mix.needs_image_size:
        names.append("boxes")
    dtypes = {"size": tf.int32, "rows": tf.int32, "weights": tf.float32, "image_weights": tf.float64, "boxes": tf.int32}
    shapes = {"size": (), "rows": (b, k), "weights": (b, k), "image_weights": (b, k), "boxes": (b, 4)}  # a batch's

    x_np, rescale = batches.x, batches.rescale
    with tf.device("/cpu:0"):
        x_all = tf.convert_to_tensor(x_np)
        y_all = tf.convert_to_tensor(
            np.asarray(to_soft(batches.y, batches.num_classes, label_smoothing=batches.label_smoothing))
        )
    integer = rescale is None and np.issubdtype(x_np.dtype, np.integer)
    # The dtype images are mixed in: float32 after rescaling, a float x's own, float64
    # for integer images (the core's), then rounded back.
    work = tf.float64 if integer else (tf.float32 if rescale is not None else tf.as_dtype(x_np.dtype))
    channels_last = batches.data_format == "channels_last"
    ndim = x_np.ndim
    height, width = batches.image_size if batches.image_size is not None else (0, 0)

    def read_epoch(_: Any) -> np.ndarray:  # once per pass, when it starts
        return np.asarray(batches.epoch, dtype=np.int64)

    def draw(epoch: Any, chunk: Any) -> list[np.ndarray]:  # on the host, a chunk of batches at a time
        start = int(chunk) * _CHUNK
        arrays = epoch_arrays(batches, int(epoch), start, start + _CHUNK)
        return [arrays[name] for name in names]

    def plans(epoch: Any, chunk: Any) -> dict[str, Any]:
        out = tf.numpy_function(draw, [epoch, chunk], [dtypes[name] for name in names], stateful=True)
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
        x = fetch(rows[:, 0])
        y = tf.gather(y_all, rows[:, 0])
        if mix is None:
            return x, y
        sources = [fetch(rows[:, j]) for j in range(1, k)]
        # Labels, as the core: soft·λ + soft'·(1-λ) (K = 2), Σ_j w_j·soft_j otherwise.
        w = plan["weights"][:m]
        cols = [w[:, j : j + 1] for j in range(k)]
        if k == 2:
            cols[1] = 1 - cols[0]
        y_mixed = y * cols[0]
        for j in range(1, k):
            y_mixed = y_mixed + tf.gather(y_all, rows[:, j]) * cols[j]
        # Images: the same sum with the image weights (CutMix'ed rows keep their own image).
        xw = tf.cast(x, work) if work != x.dtype else x
        sw = [tf.cast(s, work) if work != s.dtype else s for s in sources]
        if mix.method == "cutmix":  # every image weight row is (1, 0): x·1 + x'·0 = x
            x_mixed = xw
        else:
            iw = tf.cast(plan["image_weights"][:m], work)
            icols = [tf.reshape(iw[:, j], (-1,) + (1,) * (ndim - 1)) for j in range(k)]
            if k == 2:
                icols[1] = 1 - icols[0]
            x_mixed = xw * icols[0]
            for j in range(1, k):
                x_mixed = x_mixed + sw[j - 1] * icols[j]
        if "boxes" in plan:
            boxes = plan["boxes"][:m]
            hh = tf.range(height, dtype=tf.int32)[None, :]
            ww = tf.range(width, dtype=tf.int32)[None, :]
            in_rows = tf.logical_and(hh >= boxes[:, 0:1], hh < boxes[:, 2:3])
            in_cols = tf.logical_and(ww >= boxes[:, 1:2], ww < boxes[:, 3:4])
            mask = tf.logical_and(in_rows[:, :, None], in_cols[:, None, :])
            if channels_last:
                mask = tf.reshape(mask, [-1] + [1] * (ndim - 4) + [height, width, 1])
            else:
                mask = tf.reshape(mask, [-1] + [1] * (ndim - 3) + [height, width])
            x_mixed = tf.where(mask, sw[0], x_mixed)
        if work != x.dtype:  # integer images without rescale: rounded half to even, as the core
            info = np.iinfo(x_np.dtype)
            x_mixed = tf.cast(tf.clip_by_value(tf.round(x_mixed), float(info.min), float(info.max)), x.dtype)
        return x_mixed, y_mixed

    ds = tf.data.Dataset.range(1).flat_map(one_pass)
    ds = ds.map(make, num_parallel_calls=auto if num_parallel_calls is None else num_parallel_calls, deterministic=True)
    ds = ds.apply(tf.data.experimental.assert_cardinality(nb))
    return ds.prefetch(auto if prefetch is None else prefetch)
