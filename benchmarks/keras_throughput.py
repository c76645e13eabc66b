"""Throughput of vicinal's Keras front end: input pipelines for ``model.fit``, and mixing layers.

Two parts (``--what pipelines``, ``--what layers``, default both), on the active Keras
backend (``KERAS_BACKEND``, default torch).

**Pipelines**: the keras.io MixUp experiment's first epoch, cut to ``--steps`` steps:
its CNN trained by ``model.fit`` (batch 64, Adam, categorical cross-entropy) on
uint8-sized 28×28×1 synthetic images (speed does not depend on the pixels), each
input pipeline in turn, mixed (MixUp α = 0.2, a second shuffled stream as partners)
and plain. Rows:

* ``reference tf.data``: the keras.io program's own pipeline (two shuffled
  ``from_tensor_slices`` streams zipped, mixed in a ``tf.data`` map with λ from
  ``tf.random.gamma``), rewritten here; needs TensorFlow (an optional extra);
* ``MixedBatches (PyDataset)``: ``MixedBatches`` passed to ``fit`` as it is, with
  ``workers``/``use_multiprocessing`` variants;
* ``MixedBatches.tf_dataset()``: the same batches made in a ``tf.data`` graph
  (needs TensorFlow);
* ``arrays, no mixing``: ``fit(x, y, batch_size=64)`` on float arrays in memory,
  Keras' own slicing: the floor for a plain epoch.

Each row reports ms per training step (after a warm-up ``fit`` that builds and traces
the model) and the ratio to the reference pipeline's row for the same arm (> 1: slower
than the reference). The rows take turns over ``--rounds`` rounds and the median is
kept, so load from other processes hits them alike. Without TensorFlow the reference
rows are skipped and the ratio is to ``arrays, no mixing``.

**Layers**: every row mixes the same batch of backend tensors (images and labels) and
reports the median time of one call (the rows take turns, one call per round),
images/s and the speed relative to ``keras.layers.MixUp``. Rows:

* ``keras.layers.MixUp`` / ``keras.layers.CutMix``: one-hot labels (they need floats);
* ``vicinal MixLayer ...``: the layer, host plan draw included, with one-hot or int labels;
* ``vicinal mix_with_plan``: the ``keras.ops`` mixing alone, on a plan drawn beforehand;
* ``vicinal sample_plan``: the host plan draw alone (NumPy);
* ``vicinal.apply_plan (torch)``: the core's fused PyTorch path on the same tensors
  (torch backend only), for reference.

Nothing is asserted; compare rows of one run only (a shared machine is noisy).

    KERAS_BACKEND=tensorflow python benchmarks/keras_throughput.py --what pipelines [--steps 300] [--rounds 3]
    KERAS_BACKEND=torch python benchmarks/keras_throughput.py --what layers [--batch 128] [--shape 32 32 3] \
        [--repeats 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np

from vicinal import MixConfig, sample_plan
from vicinal.keras import MixLayer, mix_with_plan, plan_to_tensors


def _sync(out: object) -> None:
    """Wait for asynchronous backends so that the time covers the work."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        jax.block_until_ready(out)
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


def _median_seconds(table: dict[str, Callable[[], object]], repeats: int, warmup: int = 5) -> dict[str, float]:
    """Median seconds of one call of each row; the rows take turns, one call each per
    round, so that a burst of load from other processes hits them all alike."""
    for fn in table.values():
        for _ in range(warmup):
            _sync(fn())
    times: dict[str, list[float]] = {name: [] for name in table}
    for _ in range(repeats):
        for name, fn in table.items():
            t0 = time.perf_counter()
            _sync(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def rows(batch: int, shape: tuple[int, int, int], num_classes: int) -> dict[str, Callable[[], object]]:
    rng = np.random.default_rng(0)
    x_np = rng.random((batch, *shape), dtype=np.float32)
    ids_np = rng.integers(0, num_classes, batch)
    x = keras.ops.convert_to_tensor(x_np)
    ids = keras.ops.convert_to_tensor(ids_np)
    onehot = keras.ops.convert_to_tensor(np.eye(num_classes, dtype=np.float32)[ids_np])
    data = {"images": x, "labels": onehot}
    data_ids = {"images": x, "labels": ids}
    image_size = shape[:2]

    mixup_cfg = MixConfig(alpha=0.2)
    cutmix_cfg = MixConfig("cutmix", cutmix_alpha=1.0)
    k_mixup, k_cutmix = keras.layers.MixUp(alpha=0.2, seed=0), keras.layers.CutMix(factor=1.0, seed=0)
    v_mixup = MixLayer(mixup_cfg, num_classes=num_classes)
    v_mixup_perm = MixLayer(MixConfig(alpha=0.2, pairing="permute"), num_classes=num_classes)
    v_cutmix = MixLayer(cutmix_cfg, num_classes=num_classes)
    v_switch = MixLayer(MixConfig("switch", alpha=0.2, cutmix_alpha=1.0), num_classes=num_classes)
    v_kway = MixLayer(MixConfig("kway", alpha=0.2, k=3), num_classes=num_classes)
    mixup_plan = plan_to_tensors(sample_plan(mixup_cfg, batch, seed=0))
    mixup_plan = {k: keras.ops.convert_to_tensor(v) for k, v in mixup_plan.items()}
    cutmix_plan = plan_to_tensors(sample_plan(cutmix_cfg, batch, seed=0, image_size=image_size))
    cutmix_plan = {k: keras.ops.convert_to_tensor(v) for k, v in cutmix_plan.items()}

    out: dict[str, Callable[[], object]] = {
        "keras.layers.MixUp (one-hot)": lambda: k_mixup(data, training=True),
        "vicinal MixLayer mixup (one-hot)": lambda: v_mixup(data),
        "vicinal MixLayer mixup (int ids)": lambda: v_mixup(data_ids),
        "vicinal MixLayer mixup permute (one-hot)": lambda: v_mixup_perm(data),
        "vicinal mix_with_plan mixup (one-hot)": lambda: mix_with_plan(mixup_plan, x, onehot),
        "vicinal sample_plan mixup (host only)": lambda: sample_plan(mixup_cfg, batch, seed=0, step=1),
        "keras.layers.CutMix (one-hot)": lambda: k_cutmix(data, training=True),
        "vicinal MixLayer cutmix (one-hot)": lambda: v_cutmix(data),
        "vicinal mix_with_plan cutmix (one-hot)": lambda: mix_with_plan(cutmix_plan, x, onehot),
        "vicinal MixLayer switch (one-hot)": lambda: v_switch(data),
        "vicinal MixLayer kway k=3 (one-hot)": lambda: v_kway(data),
    }
    if keras.backend.backend() == "torch":
        from vicinal import apply_plan

        plan = sample_plan(mixup_cfg, batch, seed=0)
        out["vicinal.apply_plan (torch, core)"] = lambda: apply_plan(
            plan, x, ids, num_classes=num_classes, data_format="channels_last"
        )
    return out


# --------------------------------------------------------------------------- pipelines


def _have_tensorflow() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def reference_cnn(num_classes: int = 10) -> keras.Model:
    """The keras.io example's network (two 5×5 conv + pool stages, dropout, GAP, two dense layers)."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(16, 5, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(32, 5, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Dropout(0.2),
            layers.GlobalAveragePooling2D(),
            layers.Dense(128, activation="relu"),
            layers.Dense(num_classes, activation="softmax"),
        ]
    )


def reference_tf_data(x01: np.ndarray, onehot: np.ndarray, batch: int, mixed: bool, alpha: float = 0.2) -> object:
    """The keras.io program's input pipeline, rewritten: two independently shuffled
    streams (shuffle buffer 100 batches) zipped, λ ~ Beta(α, α) per sample from two
    gamma draws, ``x1·λ + x2·(1-λ)`` and the same for the one-hot labels, in a parallel map."""
    import tensorflow as tf

    def stream() -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices((x01, onehot)).shuffle(batch * 100).batch(batch)

    if not mixed:
        return stream()

    def blend(first: tuple, second: tuple) -> tuple:
        (xa, ya), (xb, yb) = first, second
        n = tf.shape(xa)[0]
        g1, g2 = tf.random.gamma([n], alpha), tf.random.gamma([n], alpha)
        lam = g1 / (g1 + g2)
        lx, ly = tf.reshape(lam, (-1, 1, 1, 1)), tf.reshape(lam, (-1, 1))
        return xa * lx + xb * (1 - lx), ya * ly + yb * (1 - ly)

    return tf.data.Dataset.zip((stream(), stream())).map(blend, num_parallel_calls=tf.data.AUTOTUNE)


def pipeline_rows(n: int, batch: int, mixed: bool, tf_ok: bool) -> dict[str, Callable[[], tuple[object, dict]]]:
    """name -> a function giving (data for fit, extra fit kwargs) for one arm."""
    from vicinal.keras import MixedBatches, SetEpoch

    rng = np.random.default_rng(0)
    x8 = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    x01 = x8.astype(np.float32) / 255
    onehot = np.eye(10, dtype=np.float32)[y]
    mix = MixConfig(alpha=0.2, pairing="stream") if mixed else None

    def batches(**kw: object) -> MixedBatches:
        return MixedBatches(x8, y, batch_size=batch, mix=mix, num_classes=10, rescale=1 / 255, seed=0, **kw)

    def py_dataset(**kw: object) -> Callable[[], tuple[object, dict]]:
        def make() -> tuple[object, dict]:
            ds = batches(**kw)
            return ds, {"callbacks": [SetEpoch(ds)]}

        return make

    def tf_native() -> tuple[object, dict]:
        ds = batches()
        return ds.tf_dataset(), {"callbacks": [SetEpoch(ds)]}

    out: dict[str, Callable[[], tuple[object, dict]]] = {}
    if tf_ok:
        out["reference tf.data"] = lambda: (reference_tf_data(x01, onehot, batch, mixed), {})
        out["MixedBatches.tf_dataset()"] = tf_native
    out["MixedBatches (PyDataset), workers=1"] = py_dataset()
    out["MixedBatches, workers=2 threads"] = py_dataset(workers=2)
    out["MixedBatches, workers=2 processes"] = py_dataset(workers=2, use_multiprocessing=True)
    if not mixed:
        out["arrays, no mixing (fit(x, y))"] = lambda: ((x01, onehot), {"batch_size": batch})
    return out


def _fit_seconds(model: keras.Model, data: object, kwargs: dict, steps: int) -> tuple[float, float]:
    """Wall and process CPU seconds (all threads) of one ``model.fit`` epoch of ``steps`` steps."""
    t0, c0 = time.perf_counter(), time.process_time()
    if isinstance(data, tuple):  # in-memory arrays: `steps` batches' worth of rows, sliced by Keras
        x, y = data
        rows = steps * kwargs["batch_size"]
        model.fit(x[:rows], y[:rows], batch_size=kwargs["batch_size"], epochs=1, verbose=0)
    else:
        model.fit(data, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0, **kwargs)
    return time.perf_counter() - t0, time.process_time() - c0


def run_pipelines(steps: int, rounds: int, n: int, batch: int) -> None:
    tf_ok = _have_tensorflow()
    print(
        f"keras {keras.__version__}, backend {keras.backend.backend()}"
        + (f", tensorflow {__import__('tensorflow').__version__}" if tf_ok else ", TensorFlow not installed")
        + f"; keras.io CNN, batch {batch}, {n} 28x28x1 images, {steps} steps per fit, median of {rounds} rounds"
    )
    if not tf_ok:
        print("(no TensorFlow: the reference tf.data rows are skipped; ratios are to `arrays, no mixing`)")
    for mixed in (True, False):
        arm = "mixup" if mixed else "plain"
        table = pipeline_rows(n, batch, mixed, tf_ok)
        models = {}
        for name, make in table.items():  # a model per row (each its own traced step), built and warmed up
            keras.utils.set_random_seed(0)
            model = reference_cnn()
            model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
            data, kwargs = make()
            _fit_seconds(model, data, kwargs, 10)
            models[name] = model
        times: dict[str, list[float]] = {name: [] for name in table}
        cpu: dict[str, list[float]] = {name: [] for name in table}
        for _ in range(rounds):
            for name, make in table.items():
                data, kwargs = make()
                wall, used = _fit_seconds(models[name], data, kwargs, steps)
                times[name].append(wall / steps)
                cpu[name].append(used / steps)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        med_cpu = {name: statistics.median(ts) for name, ts in cpu.items()}
        base_name = "reference tf.data" if tf_ok else ("arrays, no mixing (fit(x, y))" if not mixed else None)
        base = med.get(base_name) if base_name else None
        base_cpu = med_cpu.get(base_name) if base_name else None
        print(f"[{arm}] {'':38s} {'ms/step':>8s} {'ratio':>6s} {'CPU ms/step':>12s} {'ratio':>6s}")
        for name, t in med.items():
            c = med_cpu[name]
            ratio = f"{t / base:5.2f}x" if base else f"{'n/a':>6s}"
            ratio_cpu = f"{c / base_cpu:5.2f}x" if base_cpu else f"{'n/a':>6s}"
            print(f"[{arm}] {name:38s} {t * 1e3:8.2f} {ratio} {c * 1e3:12.2f} {ratio_cpu}")
    print(
        f"ratio: to the {'reference tf.data' if tf_ok else 'arrays, no mixing'} row of the same arm "
        "(> 1: slower); CPU: process CPU time, all threads (what the pipeline takes from training on a busy machine)"
    )


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--what", choices=("pipelines", "layers", "all"), default="all")
    parser.add_argument("--steps", type=int, default=300, help="pipelines: training steps per timed fit")
    parser.add_argument("--rounds", type=int, default=3, help="pipelines: timed fits per row")
    parser.add_argument("--samples", type=int, default=58000, help="pipelines: training images (keras.io: 58000)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 32, 3), metavar=("H", "W", "C"))
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (torch backend)")
    args = parser.parse_args(argv)
    if args.what in ("pipelines", "all"):
        run_pipelines(args.steps, args.rounds, args.samples, 64)
    if args.what in ("layers", "all"):
        run_layers(args)


def run_layers(args: argparse.Namespace) -> None:
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        if args.threads is not None:
            torch.set_num_threads(args.threads)
        threads = f", torch threads {torch.get_num_threads()}"
    else:
        threads = ""
    shape = tuple(args.shape)
    print(
        f"keras {keras.__version__}, backend {backend}{threads}; batch {args.batch}x{shape[0]}x{shape[1]}x{shape[2]} "
        f"float32, {args.classes} classes; median of {args.repeats} calls"
    )
    medians = _median_seconds(rows(args.batch, shape, args.classes), args.repeats)
    base = medians["keras.layers.MixUp (one-hot)"]
    print(f"{'':44s} {'ms/batch':>9s} {'images/s':>10s} {'vs keras MixUp':>15s}")
    for name, t in medians.items():
        print(f"{name:44s} {t * 1e3:9.3f} {args.batch / t:10.0f} {base / t:14.2f}x")


if __name__ == "__main__":
    main()
