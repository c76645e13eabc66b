"""The keras.io MixUp example's experiment in Keras 3, with vicinal doing the mixing.

Fashion-MNIST; the first ``--val-size`` training images are held out for validation;
the reference CNN is trained twice from the same initial weights: once on mixed
batches (MixUp, α = 0.2, one λ per sample, partners from a second shuffled pass over
the data, as in the reference) and once on plain batches in the same order. Both arms
get their batches from :class:`vicinal.keras.MixedBatches`, whose plans are those of
the PyTorch path (``vicinal compare``) for the same seed.

    KERAS_BACKEND=torch python examples/keras_reference.py --data-dir ../shared/data
    python examples/keras_reference.py --epochs 1 --train-limit 2000   # a quick smoke run

The backend defaults to torch when ``KERAS_BACKEND`` is unset. Needs ``keras`` (the
``keras`` extra) and the data (see README: ``--data-dir``, ``$VICINAL_DATA_DIR``, ...).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np
from keras import layers

from vicinal.experiments.data import load_dataset
from vicinal.keras import MixedBatches, SetEpoch
from vicinal.sampling import MixConfig


def reference_cnn(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """The reference network: two 5×5 conv + max-pool stages, dropout, GAP, two dense layers."""
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Conv2D(16, (5, 5), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Conv2D(32, (5, 5), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Dropout(0.2),
            layers.GlobalAveragePooling2D(),
            layers.Dense(128, activation="relu"),
            layers.Dense(num_classes, activation="softmax"),
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files (or its parent)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=0.2, help="MixUp's Beta(α, α) concentration")
    parser.add_argument("--pairing", default="stream", help="partner choice (stream: the reference's second pass)")
    parser.add_argument("--val-size", type=int, default=2000)
    parser.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=2, help="model.fit's verbosity (0, 1 or 2)")
    args = parser.parse_args(argv)
    mix = MixConfig(alpha=args.alpha, pairing=args.pairing)  # validates alpha and pairing

    data = load_dataset("fashion-mnist", args.data_dir)
    x_all = data.x_train.transpose(0, 2, 3, 1)  # uint8 (N, 1, 28, 28) -> NHWC for Keras
    y_all = data.y_train
    x_val = x_all[: args.val_size].astype("float32") / 255.0
    y_val = np.eye(data.num_classes, dtype="float32")[y_all[: args.val_size]]
    x_train, y_train = x_all[args.val_size :], y_all[args.val_size :]
    if args.train_limit is not None:
        x_train, y_train = x_train[: args.train_limit], y_train[: args.train_limit]
    x_test = data.x_test.transpose(0, 2, 3, 1)[: args.test_limit].astype("float32") / 255.0
    y_test = np.eye(data.num_classes, dtype="float32")[data.y_test[: args.test_limit]]
    print(
        f"backend {keras.backend.backend()}, {data.name}: train {len(x_train)}, val {len(x_val)}, "
        f"test {len(x_test)}; {args.epochs} epochs of batch {args.batch_size}"
    )

    keras.utils.set_random_seed(args.seed)
    initial_weights = reference_cnn(x_train.shape[1:], data.num_classes).get_weights()

    results: dict[str, dict[str, float]] = {}
    for arm, arm_mix in (("mixup", mix), ("none", None)):
        batches = MixedBatches(
            x_train,
            y_train,
            batch_size=args.batch_size,
            mix=arm_mix,
            num_classes=data.num_classes,
            seed=args.seed,
            rescale=1 / 255,
        )
        keras.utils.set_random_seed(args.seed)  # the same dropout draws in both arms
        model = reference_cnn(x_train.shape[1:], data.num_classes)
        model.set_weights(initial_weights)
        model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
        print(f"\n== {arm}: {arm_mix if arm_mix is not None else 'plain batches'}")
        start = time.perf_counter()
        model.fit(
            batches,
            validation_data=(x_val, y_val),
            epochs=args.epochs,
            shuffle=False,
            callbacks=[SetEpoch(batches)],
            verbose=args.verbose,
        )
        seconds = time.perf_counter() - start
        test_loss, test_acc = model.evaluate(x_test, y_test, batch_size=args.batch_size, verbose=0)
        results[arm] = {"test_accuracy": float(test_acc), "test_loss": float(test_loss), "train_seconds": seconds}

    print("\narm     test accuracy  test loss  train time")
    for arm, r in results.items():
        print(f"{arm:<7} {r['test_accuracy']:>12.2%}  {r['test_loss']:>9.4f}  {r['train_seconds']:>8.1f} s")
    return results


if __name__ == "__main__":
    main()
