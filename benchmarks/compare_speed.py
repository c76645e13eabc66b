"""Speed of the reference experiment (`vicinal compare`): seconds per epoch, images/s, wall time.

Runs both arms (batch 64, 10 epochs by default, the reference's hyperparameters) the
way `vicinal compare` does, and prints per-arm throughput from the saved metrics.

Then, side by side, the keras.io MixUp program itself on Keras 3 + TensorFlow (same
epochs, batch, validation split and training-set limit; its network, its ``tf.data``
pipeline with λ from ``tf.random.gamma``, Adam, both arms one after the other from the
same initial weights, then the test set; rewritten here, not vicinal code), in a
subprocess with ``KERAS_BACKEND=tensorflow``, and the ratio of the two wall times.
TensorFlow is an optional extra, not a dependency: it runs under ``--keras-python``
(an interpreter with TensorFlow and Keras 3, e.g. a separate virtual environment;
default: this one). Without one the script prints the ratio to the last *recorded*
figure instead (571 s for both arms on the issue's 2-core AVX2 machine, Keras 3.15.1 /
TensorFlow 2.21) and says that it was not measured in this run.

    python benchmarks/compare_speed.py --data-dir ../shared/data [--epochs 10] [--sequential] \
        [--keras-python /path/to/tf-venv/bin/python | --no-keras]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vicinal.experiments.spec import CompareConfig

# The keras.io program as measured on the 2-core AVX2 machine (both arms, 10
# epochs, Keras 3.15.1 + TensorFlow 2.21), against 166-170 s for `vicinal compare`.
REFERENCE_KERAS_S = 571.0


def loader_cost(cfg: CompareConfig, steps: int = 300) -> None:
    """ms per batch of the in-memory loader with and without mixing, vs a training step."""
    import torch

    from vicinal.experiments.models import build_model
    from vicinal.experiments.runs.compare import make_loader
    from vicinal.experiments.splits import load_any, make_splits
    from vicinal.torch.losses import soft_target_cross_entropy

    torch.set_num_threads(1)
    splits = make_splits(load_any(cfg.dataset, cfg.data_dir), cfg)
    per = {}
    for arm in ("none", "mixup"):
        it = make_loader(cfg, splits, arm).epoch(0)
        for _ in range(20):
            next(it)
        t0 = time.perf_counter()
        for _ in range(steps):
            next(it)
        per[arm] = (time.perf_counter() - t0) / steps
    model = build_model(cfg.for_data(splits.input_shape).model, splits.input_shape, len(splits.class_names))  # type: ignore[arg-type].to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), eps=1e-7, fused=True)
    it = make_loader(cfg, splits, "mixup").epoch(1)
    batches = [next(it) for _ in range(120)]
    for i, (x, y) in enumerate(batches):
        if i == 20:
            t0 = time.perf_counter()
        loss = soft_target_cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    step = (time.perf_counter() - t0) / 100
    mix = per["mixup"] - per["none"]
    print(
        f"loader, 1 thread: plain batch {1e3 * per['none']:.3f} ms, mixed batch {1e3 * per['mixup']:.3f} ms; "
        f"training step {1e3 * step:.2f} ms -> mixing costs {100 * mix / (step + per['mixup']):.1f}% of a step"
    )


# --------------------------------------------------------------------------- the keras.io program


def keras_io_program(data_dir: str | None, epochs: int, train_limit: int | None, val_size: int = 2000) -> dict:
    """The keras.io MixUp example's experiment on Keras 3 + TensorFlow, timed (run in a
    subprocess with KERAS_BACKEND=tensorflow). Returns wall seconds and test accuracies."""
    t_start = time.perf_counter()
    import keras
    import numpy as np
    import tensorflow as tf

    from vicinal.experiments.data import load_dataset  # IDX files only: no torch

    batch, alpha, classes = 64, 0.2, 10
    data = load_dataset("fashion-mnist", data_dir)
    x = data.x_train.transpose(0, 2, 3, 1).astype("float32") / 255.0
    y = np.eye(classes, dtype="float32")[data.y_train]
    x_test = data.x_test.transpose(0, 2, 3, 1).astype("float32") / 255.0
    y_test = np.eye(classes, dtype="float32")[data.y_test]
    x_val, y_val, x_train, y_train = x[:val_size], y[:val_size], x[val_size:], y[val_size:]
    if train_limit is not None:
        x_train, y_train = x_train[:train_limit], y_train[:train_limit]

    def shuffled() -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(batch * 100).batch(batch)

    def beta(n: tf.Tensor) -> tf.Tensor:
        g1, g2 = tf.random.gamma([n], alpha), tf.random.gamma([n], alpha)
        return g1 / (g1 + g2)

    def mixed(first: tuple, second: tuple) -> tuple:
        (xa, ya), (xb, yb) = first, second
        lam = beta(tf.shape(xa)[0])
        lx, ly = tf.reshape(lam, (-1, 1, 1, 1)), tf.reshape(lam, (-1, 1))
        return xa * lx + xb * (1 - lx), ya * ly + yb * (1 - ly)

    train_one = shuffled()
    train_mixed = tf.data.Dataset.zip((train_one, shuffled())).map(mixed, num_parallel_calls=tf.data.AUTOTUNE)
    val = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(batch)
    test = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(batch)

    from keras_throughput import reference_cnn  # this folder's script: the same network

    def network() -> keras.Model:
        return reference_cnn(classes)

    initial = network().get_weights()
    out: dict = {"tensorflow": tf.__version__, "keras": keras.__version__}
    for arm, train in (("mixup", train_mixed), ("none", train_one)):
        model = network()
        model.set_weights(initial)
        model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
        t0 = time.perf_counter()
        model.fit(train, validation_data=val, epochs=epochs, verbose=0)
        _, acc = model.evaluate(test, verbose=0)
        out[arm] = {"wall_s": time.perf_counter() - t0, "test_acc": float(acc)}
    out["wall_s"] = time.perf_counter() - t_start
    return out


def run_keras_io(python: str, args: argparse.Namespace) -> dict | None:
    """The keras.io program in a subprocess under ``python``; None when it has no TensorFlow."""
    try:
        probe = subprocess.run([python, "-c", "import tensorflow, keras"], capture_output=True, env=_tf_env())
    except OSError:  # no such interpreter
        return None
    if probe.returncode != 0:
        return None
    cmd = [python, os.path.abspath(__file__), "--keras-io-only", "--epochs", str(args.epochs)]
    if args.data_dir is not None:
        cmd += ["--data-dir", args.data_dir]
    if args.train_limit is not None:
        cmd += ["--train-limit", str(args.train_limit)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_tf_env())
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        raise RuntimeError(f"the keras.io program failed under {python} (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _tf_env() -> dict:
    return {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}


# --------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--sequential", action="store_true", help="arms one after another (all threads each)")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument(
        "--keras-python",
        default=sys.executable,
        help="an interpreter with TensorFlow + Keras 3 for the keras.io program (default: this one)",
    )
    p.add_argument("--no-keras", action="store_true", help="skip the keras.io program (print the recorded figure)")
    p.add_argument("--keras-io-only", action="store_true", help=argparse.SUPPRESS)  # the subprocess
    args = p.parse_args()
    if args.keras_io_only:
        print(json.dumps(keras_io_program(args.data_dir, args.epochs, args.train_limit)))
        return

    import torch

    from vicinal.experiments.runs.compare import run_compare
    from vicinal.experiments.spec import CompareConfig

    cfg = CompareConfig(
        data_dir=args.data_dir, epochs=args.epochs, parallel=not args.sequential, train_limit=args.train_limit
    )
    loader_cost(cfg)
    torch.set_num_threads(torch.get_num_threads() if args.sequential else 2)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        results = run_compare(cfg, f"{tmp}/run", progress=False)
        wall = time.perf_counter() - t0
    print(f"threads available: {torch.get_num_threads()}, arms {'sequential' if args.sequential else 'in parallel'}")
    for r in results:
        epochs = len(r.history)
        per_epoch = r.wall_s / epochs
        n_train = 60000 - cfg.val_size if cfg.train_limit is None else cfg.train_limit
        print(
            f"{r.name:>6}: {per_epoch:6.2f} s/epoch (train + val), {n_train * epochs / r.wall_s:8.0f} train images/s, "
            f"test acc {100 * r.test_acc:.2f}%"
        )
    print(f"total wall time, both arms (data loading, spawn, plots included): {wall:.1f} s")
    keras_io = None if args.no_keras else run_keras_io(args.keras_python, args)
    if keras_io is not None:
        arms = ", ".join(
            f"{arm} {keras_io[arm]['wall_s']:.1f} s (test acc {100 * keras_io[arm]['test_acc']:.2f}%)"
            for arm in ("mixup", "none")
        )
        print(
            f"keras.io program, measured in this run (Keras {keras_io['keras']} + TensorFlow {keras_io['tensorflow']}, "
            f"same epochs/batch/split, arms one after the other): {keras_io['wall_s']:.1f} s ({arms})"
        )
        print(f"ratio keras.io / vicinal compare: {keras_io['wall_s'] / wall:.2f}x (measured side by side)")
    else:
        why = "skipped (--no-keras)" if args.no_keras else f"no TensorFlow under {args.keras_python}"
        note = (
            "" if args.epochs == 10 and cfg.train_limit is None else "; NOT comparable: this run is not 10 full epochs"
        )
        print(
            f"keras.io program: {why}. Recorded figure, NOT measured in this run: {REFERENCE_KERAS_S:.0f} s "
            f"(both arms, 10 epochs, on the issue's 2-core AVX2 machine) -> ratio {REFERENCE_KERAS_S / wall:.2f}x{note}"
        )


if __name__ == "__main__":
    main()
