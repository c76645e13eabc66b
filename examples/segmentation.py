"""Semantic segmentation with mixed masks: no mixing vs CutMix vs FMix, mean IoU over seeds.

A tiny U-Net-like network (plain PyTorch, 86 k parameters) learns to segment the
canvas dataset of :mod:`vicinal.experiments.data.canvas`: 64×64 canvases with 1-4
Fashion-MNIST items each, 11 classes (background and the 10 item classes). Each arm
trains from the same initial weights on the same batch order per seed; the mixed arms
mix each batch's images and masks with one plan through :func:`vicinal.dense.mix_dense`
(``segmentation="soft"``: per-pixel soft targets ``onehot(own)·(1 − m) + onehot(P)·m``
with the image's very ``m``), and every arm is trained on the per-pixel soft-target
cross entropy (the unmixed arm's targets are one-hot). The metric is the mean IoU over
the 11 classes on the held-out test canvases (made of Fashion-MNIST's test items only),
from the confusion matrix over all their pixels, after the last epoch.

    python examples/segmentation.py --data-dir ../shared/data/fashion-mnist   # the full run
    python examples/segmentation.py --tiny --synthetic                       # seconds, no data needed

``--synthetic`` draws the items (rectangles, discs, triangles) instead of reading
Fashion-MNIST. Prints each run's mean IoU, then per arm the mean ± standard deviation
over the seeds and the paired differences against ``none``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vicinal import MixConfig
from vicinal.dense import mix_dense
from vicinal.experiments.data.canvas import CanvasConfig, CanvasData, build_canvas, load_canvas
from vicinal.transforms import Mixer

ARMS = {
    "none": None,
    "cutmix": MixConfig("cutmix"),
    "fmix": MixConfig("fmix"),
    "gridmix": MixConfig("gridmix"),
}
ROOT = Path(__file__).resolve().parents[1]
FASHION_DIR = ROOT.parent / "shared" / "data" / "fashion-mnist"  # the checkout's sibling shared/ folder


# --------------------------------------------------------------------------- data


def synthetic_items(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 1, 28, 28) items of 3 classes (0 rectangle, 1 disc, 2 triangle) of
    random size and brightness, and their class ids (n,)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:28, 0:28]
    x = np.zeros((n, 1, 28, 28), np.uint8)
    y = rng.integers(0, 3, n)
    for k in range(n):
        r = rng.uniform(7, 13)
        cy, cx = rng.uniform(13, 15, 2)
        if y[k] == 0:
            shape = (np.abs(ys - cy) <= r) & (np.abs(xs - cx) <= r * 0.6)
        elif y[k] == 1:
            shape = (ys - cy) ** 2 + (xs - cx) ** 2 <= r**2
        else:
            shape = (ys >= cy - r) & (ys <= cy + r) & (np.abs(xs - cx) <= (ys - cy + r) / 2)
        x[k, 0][shape] = rng.integers(90, 256)
    return x, y.astype(np.int64)


def load_data(args: argparse.Namespace) -> CanvasData:
    config = CanvasConfig(n_train=args.train, n_test=args.test, seed=args.data_seed)
    if args.synthetic:
        x_train, y_train = synthetic_items(600, seed=1)
        x_test, y_test = synthetic_items(200, seed=2)
        names = ("rectangle", "disc", "triangle")
        return build_canvas(x_train, y_train, x_test, y_test, config, class_names=names, source="synthetic")
    data_dir = args.data_dir if args.data_dir is not None else FASHION_DIR
    return load_canvas(config, data_dir=data_dir, cache_dir=args.cache_dir)


# --------------------------------------------------------------------------- the network


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyUNet(nn.Module):
    """A three-level encoder-decoder with additive skip connections: (B, 1, 64, 64) ->
    logits (B, classes, 64, 64). The stem halves the resolution (the items are ~10-25 px
    wide, and the CPU budget is small), the decoder works up to 32×32, and the logits
    are upsampled bilinearly to the canvas."""

    def __init__(self, classes: int, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(_conv(1, w, 2), _conv(w, w))  # 32×32
        self.down1 = nn.Sequential(_conv(w, 2 * w, 2), _conv(2 * w, 2 * w))  # 16×16
        self.down2 = nn.Sequential(_conv(2 * w, 4 * w, 2), _conv(4 * w, 4 * w))  # 8×8
        self.proj1, self.up1 = nn.Conv2d(4 * w, 2 * w, 1), _conv(2 * w, 2 * w)  # 16×16, + down1's features
        self.proj0, self.up0 = nn.Conv2d(2 * w, w, 1), _conv(w, w)  # 32×32, + the stem's
        self.head = nn.Conv2d(w, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        d1 = self.down1(s)
        d2 = self.down2(d1)
        u1 = self.up1(F.interpolate(self.proj1(d2), scale_factor=2.0) + d1)
        u0 = self.up0(F.interpolate(self.proj0(u1), scale_factor=2.0) + s)
        return F.interpolate(self.head(u0), scale_factor=2.0, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- training


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean over pixels of ``-Σ_c target·log softmax(logits)``; target (B, C, H, W)."""
    return -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()


def mean_iou(model: nn.Module, data: CanvasData, batch_size: int = 250) -> float:
    """The mean over classes of TP / (TP + FP + FN), counted over every test pixel."""
    k = data.num_classes
    confusion = torch.zeros(k * k, dtype=torch.int64)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(data.test), batch_size):
            idx = range(start, min(start + batch_size, len(data.test)))
            image = torch.from_numpy(data.test.images[idx.start : idx.stop]).float().div_(255)
            truth = torch.from_numpy(data.test.masks[idx.start : idx.stop]).long()
            pred = model(image).argmax(dim=1)
            confusion += torch.bincount((truth * k + pred).flatten(), minlength=k * k)
    c = confusion.reshape(k, k).double()
    tp = c.diag()
    union = c.sum(0) + c.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean())


def train_one(arm: str, data: CanvasData, seed: int, args: argparse.Namespace) -> float:
    """One arm for one seed: the test mean IoU after the last epoch."""
    torch.manual_seed(seed)  # the same initial weights for every arm of a seed
    model = TinyUNet(data.num_classes, args.width)
    steps_per_epoch = math.ceil(len(data.train) / args.batch_size)
    total = args.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=0.15)
    config = ARMS[arm]
    mixer = None if config is None else Mixer(config, seed=seed)
    order = np.random.default_rng(seed)  # the same batch order for every arm of a seed
    k = data.num_classes
    for epoch in range(args.epochs):
        model.train()
        if mixer is not None:
            mixer.set_epoch(epoch)
        perm = order.permutation(len(data.train))
        for step in range(steps_per_epoch):
            batch = data.train.batch(perm[step * args.batch_size : (step + 1) * args.batch_size])
            image = torch.from_numpy(batch["image"]).float().div_(255)
            mask = torch.from_numpy(batch["mask"])
            if mixer is None:
                target = F.one_hot(mask.long(), k).permute(0, 3, 1, 2).float()
            else:
                plan = mixer.plan(image, step=step)
                mixed = mix_dense(plan, {"image": image, "mask": mask}, num_classes=k)
                image, target = mixed["image"], mixed["mask"]
            loss = soft_cross_entropy(model(image), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return mean_iou(model, data)


def _row(name: str, values: list[float]) -> str:
    v = np.asarray(values)
    spread = f" ± {v.std(ddof=1):.4f}" if v.size > 1 else ""
    return f"{name:<8} mean IoU {v.mean():.4f}{spread}  (min {v.min():.4f}, max {v.max():.4f})"


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", type=Path, default=None, help=f"Fashion-MNIST's IDX files (default {FASHION_DIR})"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="canvas cache root (default: the user cache)")
    parser.add_argument("--synthetic", action="store_true", help="draw the items instead of reading Fashion-MNIST")
    parser.add_argument("--tiny", action="store_true", help="seconds: 64/32 canvases, 1 epoch, width 8, 2 seeds")
    parser.add_argument("--arms", default="none,cutmix,fmix", help=f"comma-separated, of {list(ARMS)}")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train", type=int, default=2000, help="training canvases")
    parser.add_argument("--test", type=int, default=500, help="test canvases")
    parser.add_argument("--data-seed", type=int, default=0, help="the canvases' seed (the same for every run)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=16, help="the network's first channel count")
    parser.add_argument("--lr", type=float, default=5e-3, help="AdamW's peak rate (one-cycle schedule)")
    # One thread: on two cores shared with other jobs, a second thread made each step ~3x
    # slower here (its barriers wait for a preempted core).
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.train, args.test, args.epochs, args.width, args.seeds = 64, 32, 1, 8, min(args.seeds, 2)
        args.batch_size = min(args.batch_size, 32)
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or not arms:
        parser.error(f"unknown arms {unknown}; choose from {list(ARMS)}")
    for name in ("seeds", "train", "test", "epochs", "batch_size", "width"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    data = load_data(args)
    print(f"data: {data!r} ({time.perf_counter() - t0:.1f} s)", flush=True)
    results: dict[str, list[float]] = {arm: [] for arm in arms}
    for seed in range(args.seeds):
        for arm in arms:
            t1 = time.perf_counter()
            results[arm].append(train_one(arm, data, seed, args))
            print(
                f"seed {seed} {arm:<8} mean IoU {results[arm][-1]:.4f} ({time.perf_counter() - t1:.0f} s)", flush=True
            )
    print(f"\nmean IoU over {args.seeds} seed(s) ({data.num_classes} classes, {len(data.test)} test canvases):")
    for arm in arms:
        print(_row(arm, results[arm]))
    if "none" in results and len(arms) > 1:
        print("paired differences against none (same seeds: same initial weights and batch order):")
        for arm in arms:
            if arm != "none":
                diff = np.asarray(results[arm]) - np.asarray(results["none"])
                per_seed = ", ".join(f"{d:+.4f}" for d in diff)
                spread = f" ± {diff.std(ddof=1):.4f}" if diff.size > 1 else ""
                wins = int((diff > 0).sum())
                print(f"{arm:<8} {diff.mean():+.4f}{spread} (per seed: {per_seed}; better on {wins}/{diff.size})")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return results


if __name__ == "__main__":
    main()
