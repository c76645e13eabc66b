"""Write the two non-image tasks as ``.npz`` files for ``vicinal compare`` and ``vicinal study``.

* ``breast-cancer.npz``: scikit-learn's breast cancer table (569 rows × 30
  features, 2 classes), split by a seeded stratified split (``--test-fraction``
  held out as ``x_test``) and standardised with the training rows' mean and standard
  deviation per feature: float32 ``x`` (N, 30);
* ``seq-fashion-mnist.npz``: "sequential Fashion-MNIST": the first
  ``--seq-train`` training and ``--seq-test`` test images, each a sequence of 28
  rows (steps) of 28 pixels (features), scaled to [0, 1] and standardised with the
  training pixels' mean and standard deviation: float32 ``x`` (N, 28, 28).

Both store ``kind="features"`` (so that a loader never reads a sequence as an image),
``class_names``, and a given test split. Then, from the output folder::

    python examples/make_modalities_data.py --out data/modalities --data-dir ../shared/data
    cd data/modalities
    vicinal compare --dataset breast-cancer.npz --model mlp --val-size 91 --batch-size 32 --epochs 60
    vicinal study modalities-tabular --out runs/tabular      # dataset = "breast-cancer.npz"
    vicinal study modalities-sequence --out runs/sequence    # dataset = "seq-fashion-mnist.npz"

``--only`` writes one of the two. Needs scikit-learn for the table and the
Fashion-MNIST IDX files for the sequences (``--data-dir``, ``$VICINAL_DATA_DIR``, ...).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

TASKS = ("breast-cancer", "seq-fashion-mnist")


def breast_cancer(*, test_fraction: float = 0.2, seed: int = 0) -> dict[str, np.ndarray]:
    """The breast cancer table as npz arrays: float32 ``x`` (N, 30), ``x_test`` (M, 30), int64 labels."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    bunch = load_breast_cancer()
    x, y = np.asarray(bunch.data, np.float64), np.asarray(bunch.target, np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0
    return {
        "x": ((x_train - mean) / std).astype(np.float32),
        "y": y_train,
        "x_test": ((x_test - mean) / std).astype(np.float32),
        "y_test": y_test,
        "class_names": np.array([str(c) for c in bunch.target_names]),
        "kind": np.array("features"),
    }


def seq_fashion_mnist(data_dir: str | None, *, train: int = 12_000, test: int = 10_000) -> dict[str, np.ndarray]:
    """Sequential Fashion-MNIST as npz arrays: float32 ``x`` (train, 28, 28), ``x_test`` (test, 28, 28)."""
    from vicinal.experiments.data import load_dataset

    ds = load_dataset("fashion-mnist", data_dir)
    x_train = ds.x_train[:train, 0].astype(np.float32) / 255.0
    x_test = ds.x_test[:test, 0].astype(np.float32) / 255.0
    mean, std = float(x_train.mean()), float(x_train.std())
    return {
        "x": (x_train - mean) / std,
        "y": ds.y_train[:train],
        "x_test": (x_test - mean) / std,
        "y_test": ds.y_test[:test],
        "class_names": np.array(ds.class_names),
        "kind": np.array("features"),
    }


def main(argv: list[str] | None = None) -> list[Path]:
    """Write the files; returns their paths."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the .npz files (created)")
    parser.add_argument("--only", choices=TASKS, default=None, help="write only this task")
    parser.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files (or its parent)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="breast cancer rows held out for testing")
    parser.add_argument("--seed", type=int, default=0, help="seed of the breast cancer split")
    parser.add_argument("--seq-train", type=int, default=12_000, help="training sequences (the first N images)")
    parser.add_argument("--seq-test", type=int, default=10_000, help="test sequences (the first N test images)")
    args = parser.parse_args(argv)
    if not 0 < args.test_fraction < 1:
        parser.error(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    for name in ("seq_train", "seq_test"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for task in TASKS:
        if args.only not in (None, task):
            continue
        if task == "breast-cancer":
            arrays = breast_cancer(test_fraction=args.test_fraction, seed=args.seed)
        else:
            arrays = seq_fashion_mnist(args.data_dir, train=args.seq_train, test=args.seq_test)
        path = out / f"{task}.npz"
        np.savez(
            path,
            x=arrays["x"],
            y=arrays["y"],
            x_test=arrays["x_test"],
            y_test=arrays["y_test"],
            class_names=arrays["class_names"],
            kind=arrays["kind"],
        )
        written.append(path)
        shapes = f"x {arrays['x'].shape}, x_test {arrays['x_test'].shape}"
        print(f"wrote {path}: {shapes}, {len(arrays['class_names'])} classes")
    return written


if __name__ == "__main__":
    main()
