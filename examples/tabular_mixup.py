"""Input mixup on a table: an MLP on scikit-learn's breast cancer (or wine) data.

Each row is a vector of ``F`` real-valued measurements; MixUp interpolates rows and
their one-hot labels exactly as it interpolates images, so :class:`vicinal.MixUp` is
used unchanged on the float32 (B, F) batches. The features are standardised with the
training set's mean and standard deviation (interpolating raw features with very
different scales would mostly mix the largest one). A seeded stratified split holds
out ``--test-size`` of the rows; the MLP is trained twice from the same initial
weights and on the same batches, once mixed and once plain, for each of ``--seeds``
seeds, and the test accuracies are printed.

    python examples/tabular_mixup.py                       # breast cancer, 3 seeds
    python examples/tabular_mixup.py --dataset wine --alpha 0.4
    python examples/tabular_mixup.py --epochs 1 --limit 64  # a smoke run

Needs scikit-learn (its small datasets ship inside the wheel: no download) and torch.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.model_selection import train_test_split

from vicinal import MixUp, soft_target_cross_entropy
from vicinal.experiments.models import MLP

DATASETS = {"breast-cancer": load_breast_cancer, "wine": load_wine}


def load_table(
    name: str, *, test_size: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """A seeded stratified split of a scikit-learn dataset, standardised with training statistics.

    Returns:
        ``(x_train, y_train, x_test, y_test, class_names)``: float32 (N, F) and (M, F)
        features, int64 (N,) and (M,) class ids.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    bunch = DATASETS[name]()
    x, y = np.asarray(bunch.data, np.float64), np.asarray(bunch.target, np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0  # a constant feature stays 0
    standardise = lambda a: ((a - mean) / std).astype(np.float32)
    names = tuple(str(c) for c in bunch.target_names)
    return standardise(x_train), y_train, standardise(x_test), y_test, names


def train_mlp(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    initial: dict[str, torch.Tensor],
    num_classes: int,
    epochs: int,
    batch_size: int,
    seed: int,
    alpha: float | None,
    lr: float = 1e-3,
) -> torch.nn.Module:
    """Train an MLP from ``initial`` on float32 (N, F) rows and int64 (N,) labels.

    The batch order and dropout masks depend on ``seed`` only, so both arms see the
    same batches; ``alpha=None`` trains on plain batches, else on MixUp(``alpha``).
    """
    model = MLP(x.shape[1], num_classes)
    model.load_state_dict(initial)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    mix = None if alpha is None else MixUp(alpha=alpha, num_classes=num_classes, seed=seed)
    order_rng = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        if mix is not None:
            mix.set_epoch(epoch)
        order = torch.randperm(len(y), generator=order_rng)
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[idx]
            if mix is None:
                target = torch.nn.functional.one_hot(yb, num_classes).float()
            else:
                xb, target = mix(xb, yb)  # float32 (B, F) rows and (B, C) soft targets
            loss = soft_target_cross_entropy(model(xb), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).double().mean())


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    """Run the comparison; returns ``{"none": [test accuracy per seed], "mixup": [...]}``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="breast-cancer")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=0.2, help="MixUp's Beta(α, α) concentration")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (initial weights, order, mixing)")
    parser.add_argument("--test-size", type=float, default=0.2, help="fraction of rows held out for testing")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training rows")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (a small MLP: 1 is fastest)")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "seeds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.limit is not None and args.limit < 2:
        parser.error(f"--limit must be >= 2, got {args.limit}")
    torch.set_num_threads(args.threads)

    x_train, y_train, x_test, y_test, names = load_table(args.dataset, test_size=args.test_size)
    if args.limit is not None:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    xt, yt = torch.from_numpy(x_test), torch.from_numpy(y_test)
    print(
        f"{args.dataset}: {len(y)} training rows, {len(yt)} test rows, {x.shape[1]} features, "
        f"{len(names)} classes; MLP, {args.epochs} epochs, batch {args.batch_size}, MixUp alpha {args.alpha}"
    )
    results: dict[str, list[float]] = {"none": [], "mixup": []}
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        initial = MLP(x.shape[1], len(names)).state_dict()
        for arm, alpha in (("none", None), ("mixup", args.alpha)):
            model = train_mlp(
                x,
                y,
                initial=initial,
                num_classes=len(names),
                epochs=args.epochs,
                batch_size=args.batch_size,
                seed=seed,
                alpha=alpha,
            )
            results[arm].append(accuracy(model, xt, yt))
        print(f"seed {seed}: " + ", ".join(f"{arm} {100 * accs[-1]:.2f}%" for arm, accs in results.items()))
    for arm, accs in results.items():
        print(f"{arm:>6}: test accuracy {100 * np.mean(accs):.2f}% (mean of {len(accs)} seeds)")
    print(f"wall time {time.perf_counter() - t0:.1f} s")
    return results


if __name__ == "__main__":
    main()
