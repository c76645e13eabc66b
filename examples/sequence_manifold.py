"""Manifold Mixup on sequences: a GRU reads Fashion-MNIST one image row per step.

"Sequential Fashion-MNIST": each 28×28 image becomes a sequence of T = 28 steps of
F = 28 features (its rows, top to bottom), and a small GRU classifier
(:class:`vicinal.experiments.models.GRUClassifier`: a per-step ``embed`` layer, a
one-layer ``gru``, a ``head`` on the last step's output) reads it. The mixed arm uses
:class:`vicinal.torch.manifold.ManifoldMixup`: each step one of ``--layers`` is drawn and
its output (the per-step embeddings, or the GRU's output sequence) is mixed with
MixUp, together with the labels. ``input`` may be listed too: mixing there is input
mixup. Every arm starts from the same initial weights and sees the same batches.

    python examples/sequence_manifold.py --data-dir ../shared/data          # 10,000 sequences, 10 epochs
    python examples/sequence_manifold.py --arms none,input,manifold --layers embed,gru
    python examples/sequence_manifold.py --synthetic --epochs 1 --limit 256  # no data needed

Pixels are scaled to [0, 1] and standardised with the training set's mean and
standard deviation. ``--synthetic`` replaces Fashion-MNIST by a small generated
stand-in (the class is a pattern hidden in noise at a few steps), for smoke tests.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from vicinal import MixConfig, soft_target_cross_entropy
from vicinal.experiments.data import load_dataset
from vicinal.experiments.models import GRUClassifier
from vicinal.torch.manifold import ManifoldMixup

ARMS = ("none", "input", "manifold")


def sequences_from_images(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, 1, H, W) -> float32 sequences (N, T=H, F=W) in [0, 1], one row per step."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be one-channel (N, 1, H, W), got {images.shape}")
    return images[:, 0].astype(np.float32) / 255.0


def synthetic_sequences(n: int, *, steps: int = 12, features: int = 8, classes: int = 4, seed: int = 0):
    """A learnable stand-in: Gaussian noise (N, T, F) plus the class's pattern at three steps.

    Returns:
        ``(x, y)``: float32 (N, T, F) and int64 (N,) class ids in ``[0, classes)``.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    patterns = rng.normal(size=(classes, 3, features))
    x = rng.normal(size=(n, steps, features))
    x[:, [2, steps // 2, steps - 2]] += 1.5 * patterns[y]
    return x.astype(np.float32), y.astype(np.int64)


def load_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """``(x_train, y_train, x_test, y_test, num_classes)``: float32 (N, T, F) standardised, int64 labels."""
    if args.synthetic:
        x, y = synthetic_sequences(args.limit + args.test_limit, seed=1234)
        x_train, y_train, x_test, y_test = x[: args.limit], y[: args.limit], x[args.limit :], y[args.limit :]
        num_classes = int(max(y.max() + 1, 4))
    else:
        ds = load_dataset("fashion-mnist", args.data_dir)
        x_train, y_train = sequences_from_images(ds.x_train[: args.limit]), ds.y_train[: args.limit]
        x_test, y_test = sequences_from_images(ds.x_test[: args.test_limit]), ds.y_test[: args.test_limit]
        num_classes = ds.num_classes
    mean, std = float(x_train.mean()), float(x_train.std()) or 1.0
    return (x_train - mean) / std, y_train, (x_test - mean) / std, y_test, num_classes


def train_arm(
    arm: str,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    initial: dict[str, torch.Tensor],
    num_classes: int,
    layers: list[str],
    alpha: float,
    epochs: int,
    batch_size: int,
    seed: int,
    lr: float = 1e-3,
) -> GRUClassifier:
    """Train a GRU from ``initial`` on float32 (N, T, F) sequences and int64 (N,) labels.

    ``arm``: ``"none"`` (plain batches), ``"input"`` (input mixup: ManifoldMixup at
    ``"input"`` only) or ``"manifold"`` (ManifoldMixup at one of ``layers`` per step).
    """
    model = GRUClassifier(x.shape[2], num_classes)
    model.load_state_dict(initial)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    mix = None
    if arm != "none":
        where = ["input"] if arm == "input" else layers
        mix = ManifoldMixup(model, where, MixConfig(alpha=alpha, pairing="permute"), num_classes=num_classes, seed=seed)
    order_rng = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        if mix is not None:
            mix.set_epoch(epoch)
        order = torch.randperm(len(y), generator=order_rng)
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[idx]
            if mix is None:
                logits, target = model(xb), torch.nn.functional.one_hot(yb, num_classes).float()
            else:
                logits, target = mix(xb, yb)  # mixed at this step's layer; (B, C) soft targets
            loss = soft_target_cross_entropy(logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    hits = sum(
        int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
        for i in range(0, len(y), batch_size)
    )
    return hits / len(y)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the comparison; returns ``{arm: test accuracy}``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files (or its parent)")
    parser.add_argument("--synthetic", action="store_true", help="a generated stand-in instead of Fashion-MNIST")
    parser.add_argument("--limit", type=int, default=10_000, help="training sequences (the first N)")
    parser.add_argument("--test-limit", type=int, default=10_000, help="test sequences (the first N)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=2.0, help="MixUp's Beta(α, α) (Verma et al. use 2)")
    parser.add_argument("--layers", default="embed,gru", help="comma-separated mixing layers of the manifold arm")
    parser.add_argument("--arms", default="none,manifold", help=f"comma-separated, from {', '.join(ARMS)}")
    parser.add_argument("--seed", type=int, default=0, help="initial weights, batch order and mixing")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    if not arms or any(a not in ARMS for a in arms):
        parser.error(f"--arms must be a comma-separated list from {', '.join(ARMS)}, got {args.arms!r}")
    for name in ("limit", "test_limit", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    x_train, y_train, x_test, y_test, num_classes = load_data(args)
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    xt, yt = torch.from_numpy(x_test), torch.from_numpy(y_test)
    layers = [name for name in args.layers.split(",") if name]
    source = "synthetic" if args.synthetic else "sequential Fashion-MNIST"
    print(
        f"{source}: {len(y)} training and {len(yt)} test sequences of {x.shape[1]} steps x {x.shape[2]} features; "
        f"GRU, {args.epochs} epochs, batch {args.batch_size}, alpha {args.alpha}, manifold layers {layers}"
    )
    torch.manual_seed(args.seed)
    initial = GRUClassifier(x.shape[2], num_classes).state_dict()
    results: dict[str, float] = {}
    for arm in arms:
        t0 = time.perf_counter()
        model = train_arm(
            arm,
            x,
            y,
            initial=initial,
            num_classes=num_classes,
            layers=layers,
            alpha=args.alpha,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
        )
        results[arm] = accuracy(model, xt, yt)
        print(f"{arm:>8}: test accuracy {100 * results[arm]:.2f}% ({time.perf_counter() - t0:.1f} s)")
    return results


if __name__ == "__main__":
    main()
