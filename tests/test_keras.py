"""The Keras 3 front end (vicinal.keras), on the torch backend unless KERAS_BACKEND says otherwise."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported anywhere

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from vicinal import MixConfig, apply_plan, sample_plan  # noqa: E402
from vicinal.keras import MixedBatches, MixLayer, SetEpoch, mix_with_plan, plan_to_tensors, tf_dataset  # noqa: E402

# keras.ops.convert_to_numpy on torch tensors (keras 3.15 + numpy 2) warns; not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

B, H, W, C, NUM_CLASSES = 8, 6, 5, 3, 4


def test_package_layout():
    import vicinal.keras
    from vicinal.keras import data, layer, ops, tfdata

    assert sorted(vicinal.keras.__all__) == sorted(
        ["MixLayer", "MixedBatches", "SetEpoch", "mix_with_plan", "plan_to_tensors", "tf_dataset"]
    )
    assert tf_dataset is tfdata.tf_dataset
    assert (MixLayer, MixedBatches, SetEpoch) == (layer.MixLayer, data.MixedBatches, data.SetEpoch)
    assert (mix_with_plan, plan_to_tensors) == (ops.mix_with_plan, ops.plan_to_tensors)
    assert set(vicinal.keras.DATA_FORMATS) == {"channels_last", "channels_first"}  # importable as before the split
    assert keras.saving.get_registered_object("vicinal>MixLayer") is MixLayer


def _np(t):
    return np.asarray(keras.ops.convert_to_numpy(t))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x = rng.random((B, H, W, C), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, B)
    return x, y


CONFIGS = {
    "mixup-elem-roll": MixConfig(alpha=0.2),
    "mixup-batch-permute": MixConfig(alpha=1.0, granularity="batch", pairing="permute"),
    "mixup-pair-flip": MixConfig(alpha=0.4, granularity="pair", pairing="flip"),
    "mixup-p-elem": MixConfig(alpha=1.0, p=0.5, p_mode="elem", pairing="derange"),
    "cutmix": MixConfig("cutmix"),
    "switch": MixConfig("switch", alpha=1.0, pairing="permute"),
    "kway": MixConfig("kway", alpha=0.5, k=3, pairing="derange"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("one_hot", [False, True], ids=["ids", "onehot"])
def test_layer_output_equals_core(batch, name, one_hot):
    x, y = batch
    config = CONFIGS[name]
    labels = np.eye(NUM_CLASSES, dtype=np.float32)[y] if one_hot else y
    layer = MixLayer(config, num_classes=None if one_hot else NUM_CLASSES, label_smoothing=0.1, seed=7)
    for step in range(2):
        out = layer({"images": x, "labels": labels})
        plan = sample_plan(config, B, seed=7, step=step, image_size=(H, W))
        x_ref, y_ref = apply_plan(
            plan, x, labels, num_classes=NUM_CLASSES, label_smoothing=0.1, data_format="channels_last"
        )
        np.testing.assert_allclose(_np(out["images"]), x_ref, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(_np(out["labels"]), y_ref, rtol=1e-6, atol=1e-7)
        assert _np(out["labels"]).dtype == np.float32
    assert layer.step == 2


def test_stream_partner_and_tuple_inputs(batch):
    x, y = batch
    x2, y2 = x[::-1].copy(), y[::-1].copy()
    config = MixConfig(pairing="stream")
    layer = MixLayer(config, num_classes=NUM_CLASSES, seed=1)
    xm, ym = layer((x, y, x2, y2))
    plan = sample_plan(config, B, seed=1)
    x_ref, y_ref = apply_plan(plan, x, y, num_classes=NUM_CLASSES, x_partner=x2, y_partner=y2)
    np.testing.assert_allclose(_np(xm), x_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(_np(ym), y_ref, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="x_partner"):
        layer((x, y))


def test_cutmix_channels_first(batch):
    x, y = batch
    xc = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    config = MixConfig("cutmix")
    out = MixLayer(config, num_classes=NUM_CLASSES, data_format="channels_first")({"images": xc, "labels": y})
    x_ref, _ = apply_plan(sample_plan(config, B, seed=0, image_size=(H, W)), xc, y, num_classes=NUM_CLASSES)
    np.testing.assert_array_equal(_np(out["images"]), x_ref)


def test_uint8_images_come_back_float(batch):
    x, y = batch
    xu = (x * 255).astype(np.uint8)
    out = MixLayer(num_classes=NUM_CLASSES)({"images": xu, "labels": y})
    x_ref, _ = apply_plan(sample_plan(MixConfig(), B, seed=0), xu.astype(np.float32), y, num_classes=NUM_CLASSES)
    assert _np(out["images"]).dtype == np.float32
    np.testing.assert_allclose(_np(out["images"]), x_ref, rtol=1e-6)


def test_counter_epochs_and_inference(batch):
    x, y = batch
    a, b = MixLayer(num_classes=NUM_CLASSES, seed=3), MixLayer(num_classes=NUM_CLASSES, seed=3)
    first, second = _np(a((x, y))[0]), _np(a((x, y))[0])
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(_np(b((x, y))[0]), first)  # same seed, same plans
    a.set_epoch(1)
    assert (a.epoch, a.step) == (1, 0)
    ref = apply_plan(sample_plan(MixConfig(), B, seed=3, epoch=1), x, y, num_classes=NUM_CLASSES)[0]
    np.testing.assert_allclose(_np(a((x, y))[0]), ref, rtol=1e-6, atol=1e-7)
    # Inference: images as they are, labels one-hot float32, counter untouched.
    xi, yi = a((x, y), training=False)
    np.testing.assert_array_equal(_np(xi), x)
    np.testing.assert_array_equal(_np(yi), np.eye(NUM_CLASSES, dtype=np.float32)[y])
    assert a.step == 1


def test_plan_tensors_path_equals_plan_path(batch):
    x, y = batch
    for config in (MixConfig("switch", alpha=1.0), MixConfig("kway", k=3)):
        plan = sample_plan(config, B, seed=5, step=3, image_size=(H, W))
        tensors = {k: keras.ops.convert_to_tensor(v) for k, v in plan_to_tensors(plan).items()}
        got = mix_with_plan(tensors, x, y, num_classes=NUM_CLASSES)
        want = mix_with_plan(plan, x, y, num_classes=NUM_CLASSES)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(_np(g), _np(w))


def test_mixed_batches_match_the_torch_loader():
    pytest.importorskip("torch")
    from vicinal.experiments.loader import InMemoryLoader

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (50, 1, 12, 12), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, 50)
    for mix in (MixConfig(pairing="stream"), MixConfig("cutmix"), None):
        loader = InMemoryLoader(images, labels, num_classes=NUM_CLASSES, batch_size=16, seed=2, mix=mix)
        ds = MixedBatches(
            images.transpose(0, 2, 3, 1),
            labels,
            batch_size=16,
            mix=mix,
            num_classes=NUM_CLASSES,
            seed=2,
            rescale=1 / 255,
        )
        assert len(ds) == len(loader) == 4
        for epoch in (0, 1):
            for i, (xt, yt) in enumerate(loader.epoch(epoch)):
                xk, yk = ds.batch(i, epoch)
                np.testing.assert_allclose(xk, xt.permute(0, 2, 3, 1).numpy(), atol=1e-6)
                np.testing.assert_allclose(yk, yt.numpy(), atol=1e-6)


def test_mixed_batches_do_not_depend_on_request_order():
    rng = np.random.default_rng(2)
    x = rng.random((40, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, 40)
    ds = MixedBatches(x, y, batch_size=16, mix=MixConfig("switch"), num_classes=NUM_CLASSES, seed=4)
    forward = [ds[i] for i in range(len(ds))]
    backward = [ds[i] for i in reversed(range(len(ds)))][::-1]
    for (xa, ya), (xb, yb) in zip(forward, backward):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert [a.shape[0] for a, _ in forward] == [16, 16, 8]
    ds.on_epoch_end()  # Keras calls this once before the first epoch too: no effect
    assert ds.epoch == 0
    ds.on_epoch_begin()
    ds.on_epoch_end()
    assert ds.epoch == 1 and not np.array_equal(ds[0][0], forward[0][0])
    with pytest.raises(IndexError):
        ds[3]


def _tiny_model(num_classes: int = NUM_CLASSES):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(num_classes, activation="softmax")]
    )
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    return model


@pytest.mark.parametrize("one_hot", [False, True], ids=["ids", "onehot"])
def test_fit_runs_on_mixed_batches(one_hot):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (48, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, NUM_CLASSES, 48)
    labels = np.eye(NUM_CLASSES, dtype=np.float32)[y] if one_hot else y
    ds = MixedBatches(
        x,
        labels,
        batch_size=16,
        mix=MixConfig("switch"),
        num_classes=None if one_hot else NUM_CLASSES,
        label_smoothing=0.1,
        rescale=1 / 255,
    )
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(ds.epoch)

    history = _tiny_model().fit(
        ds, initial_epoch=1, epochs=3, shuffle=False, verbose=0, callbacks=[SetEpoch(ds), Record()]
    )
    assert len(history.history["loss"]) == 2 and np.all(np.isfinite(history.history["loss"]))
    assert seen == [1, 1, 1, 2, 2, 2]

    # The layer on batches from a Python generator.
    layer = MixLayer(MixConfig(alpha=0.4), num_classes=None if one_hot else NUM_CLASSES)

    def batches():
        while True:
            for i in range(0, 48, 16):
                yield layer((x[i : i + 16].astype("float32") / 255, labels[i : i + 16]))

    _tiny_model().fit(batches(), steps_per_epoch=3, epochs=1, shuffle=False, verbose=0)
    assert layer.step >= 3


@pytest.mark.parametrize(
    "loss",
    [
        "sparse_categorical_crossentropy",
        lambda: keras.losses.SparseCategoricalCrossentropy(),
        lambda: keras.losses.sparse_categorical_crossentropy,
        lambda: {"probs": "sparse_categorical_crossentropy"},
    ],
    ids=["name", "class", "function", "dict"],
)
def test_set_epoch_refuses_a_class_id_loss(loss):
    """Issue: MixedBatches yields soft (B, C) targets, so a sparse loss fails with Keras'
    "target.shape=[16, 4], output.shape=[16, 4]"; SetEpoch says what to compile instead."""
    rng = np.random.default_rng(6)
    x = rng.random((32, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, 32)
    ds = MixedBatches(x, y, batch_size=16, mix=MixConfig(), num_classes=NUM_CLASSES)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(
        inputs, keras.layers.Dense(NUM_CLASSES, "softmax", name="probs")(keras.layers.Flatten()(inputs))
    )
    model.compile(optimizer="adam", loss=loss if isinstance(loss, str) else loss())
    # Keras builds the loss on the first batch before any callback runs; a model already
    # evaluated on class ids has its loss built, so fit reaches SetEpoch's check first.
    model.evaluate(x, y, verbose=0)
    with pytest.raises(ValueError, match=r"soft labels, float32 \(B, C\).*loss='categorical_crossentropy'"):
        model.fit(ds, epochs=1, shuffle=False, verbose=0, callbacks=[SetEpoch(ds)])
    # Only a MixedBatches target triggers the check; other losses pass.
    SetEpoch(MixLayer()).on_train_begin()
    check = SetEpoch(ds)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    check.set_model(model)
    check.on_train_begin()


def test_save_and_load_a_model_containing_the_layer(tmp_path, batch):
    x, y = batch
    layer = MixLayer(
        {"method": "switch", "alpha": 0.5, "pairing": "permute"},
        num_classes=NUM_CLASSES,
        label_smoothing=0.05,
        seed=11,
        name="mix",
    )
    inputs = {"images": keras.Input((H, W, C), name="images"), "labels": keras.Input((), dtype="int32", name="labels")}
    model = keras.Model(inputs, layer(inputs))
    layer.set_epoch(2, step=5)
    path = tmp_path / "mix.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    restored = loaded.get_layer("mix")
    assert isinstance(restored, MixLayer)
    assert restored.get_config() == layer.get_config()
    assert restored.config == layer.config
    assert (restored.epoch, restored.step) == (2, 5)
    data = {"images": x, "labels": y.astype("int32")}
    want, got = model(data, training=True), loaded(data, training=True)
    for key in ("images", "labels"):
        np.testing.assert_array_equal(_np(got[key]), _np(want[key]))
    assert _np(loaded(data, training=False)["labels"]).shape == (B, NUM_CLASSES)


def test_layer_inside_a_classifier_needs_labels(batch, tmp_path):
    x, _ = batch
    model = keras.Sequential([keras.Input((H, W, C)), MixLayer(), keras.layers.Flatten(), keras.layers.Dense(2)])
    assert _np(model.predict(x, verbose=0)).shape == (B, 2)  # inference: the layer passes images through
    with pytest.raises(ValueError, match="labels"):
        model(x, training=True)
    model.save(tmp_path / "clf.keras")
    keras.saving.load_model(tmp_path / "clf.keras")


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: MixLayer("mixup"), TypeError, "config"),
        (lambda: MixLayer({"alpha": -1.0}), ValueError, "alpha"),
        (lambda: MixLayer({"methd": "cutmix"}), ValueError, "methd"),
        (lambda: MixLayer(seed=-1), ValueError, "seed"),
        (lambda: MixLayer(num_classes=0), ValueError, "num_classes"),
        (lambda: MixLayer(label_smoothing=2.0), ValueError, "label_smoothing"),
        (lambda: MixLayer(data_format="NHWC"), ValueError, "data_format"),
        (lambda: MixedBatches(np.zeros((4, 2, 2, 1)), np.zeros(3, int), num_classes=2), ValueError, "same number"),
        (lambda: MixedBatches(np.zeros((4, 2, 2, 1)), np.zeros(4, int)), ValueError, "num_classes"),
        (lambda: MixedBatches(np.zeros((4, 2, 2, 1)), np.array([0, 1, 2, 5]), num_classes=3), ValueError, "class ids"),
        (
            lambda: MixedBatches(np.zeros((4, 2, 2, 1)), np.zeros(4, int), num_classes=2, batch_size=0),
            ValueError,
            "batch_size",
        ),
        (
            lambda: MixedBatches(np.zeros((4, 2, 2, 1)), np.zeros(4, int), num_classes=2, rescale="1/255"),
            TypeError,
            "rescale",
        ),
        (lambda: MixedBatches(np.zeros((4, 2, 2, 1)), np.zeros(4, int), num_classes=2, mix=0.2), TypeError, "mix"),
        (
            lambda: MixedBatches(np.zeros((4, 5)), np.zeros(4, int), num_classes=2, mix=MixConfig("cutmix")),
            ValueError,
            "CutMix",
        ),
    ],
)
def test_bad_arguments_name_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize(
    ("inputs", "error", "match"),
    [
        (lambda x, y: {"images": x, "labels": y}, ValueError, "num_classes"),  # int ids without num_classes
        (lambda x, y: {"images": x, "labels": y[:4]}, ValueError, "batch size"),
        (lambda x, y: {"images": x, "labels": y.astype("float32")}, ValueError, r"\(B, C\)"),
        (lambda x, y: {"images": x, "labels": y, "weights": y}, ValueError, "unknown keys"),
        (lambda x, y: (x, y, x), ValueError, "tuple"),
        (lambda x, y: x, ValueError, "labels"),
    ],
)
def test_bad_inputs_give_the_core_errors(batch, inputs, error, match):
    x, y = batch
    with pytest.raises(error, match=match):
        MixLayer()(inputs(x, y))


def test_bad_label_values_and_plan(batch):
    x, y = batch
    with pytest.raises(ValueError, match="num_classes=3"):
        MixLayer(num_classes=3)((x, y + 1))
    with pytest.raises(ValueError, match="image_size"):
        mix_with_plan(sample_plan(MixConfig("cutmix"), B, seed=0, image_size=(5, 5)), x, y, num_classes=NUM_CLASSES)
    with pytest.raises(TypeError, match="plan"):
        mix_with_plan("plan", x)
    with pytest.raises(ValueError, match="missing"):
        mix_with_plan({"weights": np.ones((B, 2))}, x)


def test_mix_with_plan_traces_and_the_layer_refuses_tracers(batch):
    """jax.jit / tf.function (when that is the backend); torch.compile is too slow for CI."""
    x, y = batch
    backend = keras.backend.backend()
    config = MixConfig("switch", alpha=1.0)
    plan = sample_plan(config, B, seed=2, image_size=(H, W))
    tensors = plan_to_tensors(plan)

    def mixed(t, xs, ys):
        return mix_with_plan(t, xs, ys, num_classes=NUM_CLASSES, label_smoothing=0.1)

    def layer_call(xs, ys):
        return MixLayer(config, num_classes=NUM_CLASSES)((xs, ys))

    if backend == "jax":
        import jax

        traced, traced_layer = jax.jit(mixed), jax.jit(layer_call)
    elif backend == "tensorflow":
        import tensorflow as tf

        traced, traced_layer = tf.function(mixed), tf.function(layer_call)
    else:
        pytest.skip(f"no cheap tracer for the {backend} backend")
    got = traced(tensors, x, y)
    want = apply_plan(plan, x, y, num_classes=NUM_CLASSES, label_smoothing=0.1, data_format="channels_last")
    for g, w in zip(got, want):
        np.testing.assert_allclose(_np(g), w, rtol=1e-6, atol=1e-7)
    with pytest.raises(TypeError, match="traced"):
        traced_layer(x, y)


def test_tf_data_recipe_from_the_docs():
    """docs/keras.md's tf.data recipe (TensorFlow backend only): plans drawn by tf.numpy_function."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the tf.data recipe needs the TensorFlow backend")
    import tensorflow as tf

    config, b, steps = MixConfig("switch"), 16, 4
    rng = np.random.default_rng(5)
    x = rng.random((64, 12, 12, 1), dtype=np.float32)
    y = rng.integers(0, 10, 64)

    def draw(step):
        epoch, step = divmod(int(step), steps)
        t = plan_to_tensors(sample_plan(config, b, seed=0, epoch=epoch, step=step, image_size=(12, 12)))
        return t["weights"], t["image_weights"], t["partners"], t["boxes"]

    def mix(step, batch):
        images, labels = batch
        w, iw, p, boxes = tf.numpy_function(draw, [step], [tf.float32, tf.float32, tf.int32, tf.int32])
        plan = {
            "weights": tf.ensure_shape(w, (b, 2)),
            "image_weights": tf.ensure_shape(iw, (b, 2)),
            "partners": tf.ensure_shape(p, (b, 1)),
            "boxes": tf.ensure_shape(boxes, (b, 4)),
        }
        return mix_with_plan(plan, images, labels, num_classes=10)

    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(b, drop_remainder=True).repeat(2).enumerate().map(mix)
    got = list(ds)[5]  # epoch 1, step 1
    plan = sample_plan(config, b, seed=0, epoch=1, step=1, image_size=(12, 12))
    want = apply_plan(plan, x[16:32], y[16:32], num_classes=10, data_format="channels_last")
    np.testing.assert_allclose(got[0].numpy(), want[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got[1].numpy(), want[1], rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- tf.data path

TF_DATA_CASES = {
    "plain": None,
    "mixup-stream": MixConfig(pairing="stream"),
    "mixup-p-elem": MixConfig(alpha=1.0, p=0.5, p_mode="elem", pairing="derange"),
    "cutmix": MixConfig("cutmix"),
    "switch-batch": MixConfig("switch", alpha=1.0, granularity="batch", pairing="permute"),
    "kway": MixConfig("kway", alpha=0.5, k=3, pairing="derange"),
    "fmix": MixConfig("fmix", fmix_max_soft=0.2),
    "resizemix": MixConfig("resizemix"),
    "gridmix": MixConfig("gridmix"),
    "smoothmix": MixConfig("smoothmix"),
    "saliencymix-stream": MixConfig("saliencymix", pairing="stream"),
    "choice": MixConfig("choice", choices={"fmix": 0.5, "mixup": 0.25, "resizemix": 0.25}),
}


def _tf_data_batches(mix, dtype=np.uint8, rescale=1 / 255, data_format="channels_last", **kw):
    rng = np.random.default_rng(8)
    shape = (50, 9, 7, 2) if data_format == "channels_last" else (50, 2, 9, 7)
    x = rng.integers(0, 256, shape).astype(dtype)
    y = rng.integers(0, NUM_CLASSES, 50)
    return MixedBatches(
        x,
        y,
        batch_size=16,
        mix=mix,
        num_classes=NUM_CLASSES,
        seed=3,
        rescale=rescale,
        label_smoothing=0.1,
        data_format=data_format,
        **kw,
    )


@pytest.mark.parametrize("name", sorted(TF_DATA_CASES))
def test_epoch_arrays_rebuild_the_batches(name):
    """The host half of the tf.data path (NumPy, any backend): each batch's packed plan,
    mixed by the shared keras-side code, gives MixedBatches' batch."""
    from vicinal.keras.ops import mix_with_plan
    from vicinal.keras.tfdata import epoch_arrays

    ds = _tf_data_batches(TF_DATA_CASES[name])
    arrays = epoch_arrays(ds, 2)
    assert arrays["rows"].dtype == np.int32 and arrays["rows"].shape == (4, 16)
    assert list(arrays["size"]) == [16, 16, 16, 2]
    x = ds.x.astype(np.float32) / 255
    soft = np.eye(NUM_CLASSES, dtype=np.float32)[ds.y] * 0.9 + 0.1 / NUM_CLASSES
    for i in range(len(ds)):
        m = arrays["size"][i]
        rows = arrays["rows"][i, :m]
        want_x, want_y = ds.batch(i, 2)
        np.testing.assert_array_equal(rows, ds.order(2)[i * 16 : (i + 1) * 16])
        if ds.mix is None:
            assert set(arrays) == {"size", "rows"}
            continue
        tensors = {k: v[i, :m] for k, v in arrays.items() if k not in ("size", "rows", "stream_rows")}
        partner = {}
        if "stream_rows" in arrays:
            stream = arrays["stream_rows"][i, :m]
            partner = {"x_partner": x[stream], "y_partner": soft[stream]}
        got_x, got_y = mix_with_plan(tensors, x[rows], soft[rows], data_format=ds.data_format, **partner)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got_y), want_y, atol=1e-6)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got_x), want_x, atol=1e-6)


def test_tf_dataset_needs_mixed_batches():
    with pytest.raises(TypeError, match="MixedBatches"):
        tf_dataset([1, 2, 3])


@pytest.mark.parametrize("name", sorted(TF_DATA_CASES))
@pytest.mark.parametrize(
    ("dtype", "rescale", "data_format"),
    [(np.uint8, 1 / 255, "channels_last"), (np.uint8, None, "channels_last"), (np.float64, None, "channels_first")],
    ids=["uint8-rescaled", "uint8", "float64-channels-first"],
)
def test_tf_dataset_equals_mixed_batches(name, dtype, rescale, data_format):
    """tf_dataset's batches are MixedBatches' (same epoch, dtypes, shapes), on every pass."""
    pytest.importorskip("tensorflow")
    ds = _tf_data_batches(TF_DATA_CASES[name], dtype=dtype, rescale=rescale, data_format=data_format)
    pipeline = ds.tf_dataset()
    assert int(pipeline.cardinality()) == len(ds)
    for epoch in (1, 0):
        ds.set_epoch(epoch)
        got = list(pipeline)
        assert len(got) == len(ds)
        for i, (gx, gy) in enumerate(got):
            wx, wy = ds.batch(i, epoch)
            assert gx.dtype.as_numpy_dtype == wx.dtype and gx.shape == wx.shape
            if np.issubdtype(wx.dtype, np.integer):  # rounded half to even, as the core: ties apart
                diff = np.abs(gx.numpy().astype(int) - wx.astype(int))
                assert diff.max() <= 1 and (diff > 0).mean() < 0.01
            else:
                np.testing.assert_allclose(gx.numpy(), wx, rtol=1e-6, atol=1e-7)
            assert gy.dtype.as_numpy_dtype == np.float32
            np.testing.assert_allclose(gy.numpy(), wy, rtol=1e-6, atol=1e-7)


def test_fit_on_the_tf_dataset_follows_set_epoch():
    """model.fit makes a pass per epoch; each reads the epoch SetEpoch set."""
    pytest.importorskip("tensorflow")
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (48, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, NUM_CLASSES, 48)
    ds = MixedBatches(x, y, batch_size=16, mix=MixConfig("switch"), num_classes=NUM_CLASSES, rescale=1 / 255)
    drawn = []
    real = ds.order

    def order(epoch):
        drawn.append(epoch)
        return real(epoch)

    ds.order = order  # records the epoch of each pass's plans
    history = _tiny_model().fit(
        ds.tf_dataset(), initial_epoch=1, epochs=4, shuffle=False, verbose=0, callbacks=[SetEpoch(ds)]
    )
    assert len(history.history["loss"]) == 3 and np.all(np.isfinite(history.history["loss"]))
    # Keras (3.15, torch backend) peeks at a batch before the first epoch begins, a pass
    # at the epoch the dataset had; the training passes read the epochs SetEpoch set.
    assert set(drawn) - {0} == {1, 2, 3} and drawn[-1] == 3
