"""Speed of the reference experiment (`vicinal compare`): seconds per epoch, images/s, wall time.

Runs both arms (batch 64, 10 epochs by default, the reference's hyperparameters) the
way `vicinal compare` does, and prints per-arm throughput from the saved metrics. For
context it also prints the keras.io reference's time measured by the issue's author on
a 2-core machine (166 s for both arms, Keras 3.15 / TensorFlow 2.21), which this
script does not rerun: TensorFlow is not a dependency.

    python benchmarks/compare_speed.py --data-dir ../shared/data [--epochs 10] [--sequential]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from vicinal.experiments.compare import CompareConfig, run_compare

REFERENCE_KERAS_S = 166.0


def loader_cost(cfg: CompareConfig, steps: int = 300) -> None:
    """ms per batch of the in-memory loader with and without mixing, vs a training step."""
    from vicinal.experiments.compare import load_any, make_loader, make_splits
    from vicinal.experiments.models import build_model
    from vicinal.losses import soft_target_cross_entropy

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
    model = build_model(cfg.model, splits.input_shape, len(splits.class_names)).to(memory_format=torch.channels_last)
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--sequential", action="store_true", help="arms one after another (all threads each)")
    p.add_argument("--train-limit", type=int, default=None)
    args = p.parse_args()
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
    if args.epochs == 10 and cfg.train_limit is None:
        print(
            f"keras.io reference as measured by the issue (not rerun here): {REFERENCE_KERAS_S:.0f} s "
            f"-> ratio {REFERENCE_KERAS_S / wall:.2f}x"
        )


if __name__ == "__main__":
    main()
