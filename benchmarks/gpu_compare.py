"""Training time of the default `vicinal compare` on a CUDA GPU (issue 15's goal: both arms <= 5 s).

Runs the reference comparison (Fashion-MNIST, reference CNN, batch 64, 10 epochs, both
arms) with ``device="cuda"`` for each arm mode (two processes sharing the GPU, or one
after the other) and precision (fp32, bf16 autocast), and prints per arm the training
time (the sum of its epochs' times as ``train_arm`` records them: steps and the
per-epoch validation; data loading, process and CUDA start-up excluded), the first
epoch apart (cuDNN and allocator warm-up) and the steady median epoch, the steps per
second, and the total for both arms (the slower arm when they run side by side, the sum
when one after the other). It also times the data path alone: one epoch of the loader's
batches on the device (gather, scale, mix), with no model.

    python benchmarks/gpu_compare.py [--data-dir ../shared/data] [--epochs 10]
        [--modes parallel,sequential] [--precisions fp32,bf16] [--json results.json]

Without the Fashion-MNIST files it trains on random data of the same shapes and says
so (the time does not depend on the pixels). Without a GPU it exits with status 2 and
a one-line message.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 5.0


def _fail(message: str) -> None:
    print(f"gpu_compare.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def _splits(data_dir: str | None, cfg: Any) -> tuple[Any, str]:
    """Fashion-MNIST's splits if its files are found, else random data of the same shapes."""
    from vicinal.experiments.splits import Splits, load_any, make_splits

    candidates = [data_dir] if data_dir else [str(ROOT / "shared" / "data"), str(ROOT.parent / "shared" / "data")]
    errors = []
    for d in candidates:
        try:
            return make_splits(load_any("fashion-mnist", d), cfg), f"Fashion-MNIST from {d}"
        except Exception as exc:  # missing or unreadable files: try the next place
            errors.append(f"{d}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    rng = np.random.default_rng(0)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
        return torch.from_numpy(x), torch.from_numpy(y)

    names = tuple(f"class{i}" for i in range(10))
    splits = Splits(split(60000 - cfg.val_size), split(cfg.val_size), split(10000), names, "synthetic", "random")
    return splits, "RANDOM data of Fashion-MNIST's shapes (files not found: " + "; ".join(errors) + ")"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _loader_epoch_s(cfg: Any, splits: Any) -> dict[str, float]:
    """Seconds for one epoch of batches on the device, per arm (no model)."""
    from vicinal.experiments.runs.compare import make_loader

    device = torch.device(cfg.device)
    out = {}
    for arm in cfg.arms:
        loader = make_loader(cfg, splits, arm)
        for _ in loader.epoch(0):  # warm-up: kernels loaded, allocator filled
            pass
        _sync(device)
        t0 = time.perf_counter()
        for _ in loader.epoch(1):
            pass
        _sync(device)
        out[arm] = time.perf_counter() - t0
    return out


def _one_run(cfg: Any, splits: Any) -> dict[str, Any]:
    from vicinal.experiments.runs.compare import run_compare

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        results = run_compare(cfg, Path(tmp) / "run", progress=False, splits=splits)
        wall = time.perf_counter() - t0
    arms = {}
    for r in results:
        epochs = [r.history[0]["elapsed_s"]] + [
            b["elapsed_s"] - a["elapsed_s"] for a, b in zip(r.history, r.history[1:])
        ]
        arms[r.name] = {
            "train_s": r.wall_s,
            "first_epoch_s": epochs[0],
            "median_epoch_s": statistics.median(epochs[1:] or epochs),
            "test_acc": r.test_acc,
        }
    times = [a["train_s"] for a in arms.values()]
    total = max(times) if cfg.parallel else sum(times)
    return {"arms": arms, "train_total_s": total, "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--data-dir", default=None, help="folder holding fashion-mnist/ (default: shared/data, ../shared/data)"
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--modes", default="parallel,sequential", help="arm modes: parallel, sequential")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--device", default="cuda", help="cuda[:N]; cpu: a dry run of this script, not a GPU figure")
    p.add_argument("--train-limit", type=int, default=None, help="fewer training images (a quick check)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        _fail(
            f"needs a CUDA GPU, and torch {torch.__version__} sees none (torch.cuda.is_available() is False); "
            "run it on a machine with one"
        )
    from vicinal.experiments.spec import CompareConfig

    modes = [m for m in args.modes.split(",") if m]
    precisions = [q for q in args.precisions.split(",") if q]
    if bad := set(modes) - {"parallel", "sequential"}:
        _fail(f"--modes takes parallel and/or sequential, got {sorted(bad)}")
    common = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "device": args.device,
        "train_limit": args.train_limit,
    }
    base = CompareConfig(**common)
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (a dry run, not a GPU measurement)"
    t0 = time.perf_counter()
    splits, source = _splits(args.data_dir, base)
    print(f"GPU: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    print(f"data: {source} (loaded in {time.perf_counter() - t0:.1f} s, not timed below)")
    n_train = int(splits.train[1].shape[0])
    steps = -(-n_train // args.batch_size)
    print(
        f"{n_train} training images, {steps} steps per epoch per arm, {args.epochs} epochs; "
        f"goal: both arms <= {GOAL_S:g} s"
    )

    report: dict[str, Any] = {"gpu": name, "torch": torch.__version__, "data": source, "runs": []}
    try:
        loader_s = _loader_epoch_s(base.validate(), splits)
        report["loader_epoch_s"] = loader_s
        print("data path alone, one epoch on the device: " + ", ".join(f"{a} {s:.3f} s" for a, s in loader_s.items()))
    except Exception:
        print("data path timing FAILED:\n" + traceback.format_exc(), file=sys.stderr)

    print("\n| mode | precision | arm | train s | first epoch s | median epoch s | steps/s | test acc |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for mode in modes:
        for precision in precisions:
            cfg = CompareConfig(**common, precision=precision, parallel=mode == "parallel")
            try:
                run = _one_run(cfg, splits)
            except Exception:
                print(f"| {mode} | {precision} | FAILED | | | | | |")
                print(traceback.format_exc(), file=sys.stderr)
                report["runs"].append({"mode": mode, "precision": precision, "error": traceback.format_exc()})
                continue
            for arm, a in run["arms"].items():
                rate = steps * args.epochs / a["train_s"]
                print(
                    f"| {mode} | {precision} | {arm} | {a['train_s']:.2f} | {a['first_epoch_s']:.2f} | "
                    f"{a['median_epoch_s']:.3f} | {rate:.0f} | {100 * a['test_acc']:.2f}% |"
                )
            print(
                f"| {mode} | {precision} | **both** | **{run['train_total_s']:.2f}** | | | | "
                f"(run_compare wall {run['wall_s']:.1f} s) |"
            )
            report["runs"].append({"mode": mode, "precision": precision, **run})
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    ok = [r for r in report["runs"] if "error" not in r]
    if ok:
        best = min(ok, key=lambda r: r["train_total_s"])
        verdict = "meets" if best["train_total_s"] <= GOAL_S else "misses"
        print(
            f"\nbest: {best['mode']} {best['precision']}, both arms {best['train_total_s']:.2f} s on {name} "
            f"({verdict} the <= {GOAL_S:g} s goal)"
        )
    return 0 if len(ok) == len(report["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
