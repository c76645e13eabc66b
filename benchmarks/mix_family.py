"""Every static method side by side with the batch-level formulas timm writes.

For each batch shape, one thread, float32, the median time of one call *including the
plan and the labels* (class ids in, float32 (B, C) targets out):

* reference rows, re-implemented here the way timm's ``Mixup`` writes them (one λ and
  one box per batch, flipped partners, mixed in place) on a copy of the input, since
  vicinal leaves its input alone: ``ref MixUp (1 λ, in place)``, ``ref CutMix (1 box)``;
* vicinal's transforms with per-sample parameters: MixUp, CutMix, FMix, ResizeMix,
  GridMix, SmoothMix, SaliencyMix, and a choice of MixUp/CutMix/FMix; and the mask
  methods with one λ per batch (``granularity="batch"``: one mask, or one box size
  placed per partner), as the reference rows and the official FMix code draw them;
* ratios: MixUp and CutMix against their reference rows, every mask method against
  the reference CutMix row, and (224² only) uint8 against float32.

Nothing is asserted: compare the rows of one run only.

    python benchmarks/mix_family.py [--repeats 50] [--sizes 64x3x32x32 64x1x28x28 64x3x224x224]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch
from mix_throughput import _median_seconds  # the benchmarks' one timer (this script's folder is on sys.path)

from vicinal import CutMix, MixUp
from vicinal.transforms import FMix, GridMix, RandomMethod, ResizeMix, SaliencyMix, SmoothMix

NUM_CLASSES = 10


def _one_hot(y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(y, NUM_CLASSES).float()


def reference_mixup(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's batch MixUp: one λ, the flipped batch, in place (here on a copy)."""
    lam = float(rng.beta(0.2, 0.2))
    out = x.clone()
    out.mul_(lam).add_(x.flip(0).mul_(1.0 - lam))
    target = _one_hot(y) * lam + _one_hot(y.flip(0)) * (1.0 - lam)
    return out, target


def reference_cutmix(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's batch CutMix: one box for the batch, pasted from the flipped batch."""
    h, w = x.shape[-2:]
    lam = float(rng.beta(1.0, 1.0))
    ratio = np.sqrt(1 - lam)
    ch, cw = int(h * ratio), int(w * ratio)
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    t, b = np.clip(cy - ch // 2, 0, h), np.clip(cy + ch // 2, 0, h)
    left, r = np.clip(cx - cw // 2, 0, w), np.clip(cx + cw // 2, 0, w)
    out = x.clone()
    out[..., t:b, left:r] = x.flip(0)[..., t:b, left:r]
    lam = 1 - (b - t) * (r - left) / (h * w)
    return out, _one_hot(y) * lam + _one_hot(y.flip(0)) * (1.0 - lam)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--sizes", nargs="+", default=["64x3x32x32", "64x1x28x28", "64x3x224x224"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, median of {args.repeats} calls (plan + labels included)")
    options = {"num_classes": NUM_CLASSES, "seed": 0}
    for size in args.sizes:
        shape = tuple(int(v) for v in size.split("x"))
        x = torch.rand(shape)
        y = torch.randint(0, NUM_CLASSES, (shape[0],))
        rng = np.random.default_rng(0)
        repeats = max(5, args.repeats // (10 if shape[-1] >= 128 else 1))
        rows: dict[str, Callable[[], object]] = {
            "ref MixUp (1 λ, in place)": lambda: reference_mixup(x, y, rng),
            "ref CutMix (1 box)": lambda: reference_cutmix(x, y, rng),
        }
        mixers = {
            "MixUp (per sample)": MixUp(**options),
            "CutMix (per sample)": CutMix(**options),
            "FMix": FMix(**options),
            "ResizeMix": ResizeMix(**options),
            "GridMix": GridMix(**options),
            "SmoothMix": SmoothMix(**options),
            "SaliencyMix": SaliencyMix(**options),
            "choice MixUp/CutMix/FMix": RandomMethod({"mixup": 1 / 3, "cutmix": 1 / 3, "fmix": 1 / 3}, **options),
            # One λ and one mask or box per batch, as the reference rows (and the official
            # FMix and SaliencyMix code) draw them: the like-for-like comparison.
            "FMix (1 mask)": FMix(granularity="batch", **options),
            "GridMix (1 mask)": GridMix(granularity="batch", **options),
            "SmoothMix (1 mask)": SmoothMix(granularity="batch", **options),
            "SaliencyMix (1 box size)": SaliencyMix(granularity="batch", **options),
        }
        for name, mixer in mixers.items():
            rows[name] = lambda mixer=mixer: mixer(x, y)
        if shape[-1] >= 128:
            x8 = (x * 255).to(torch.uint8)
            rows["MixUp uint8"] = lambda: mixers["MixUp (per sample)"](x8, y)
            rows["CutMix uint8"] = lambda: mixers["CutMix (per sample)"](x8, y)
        times = {name: _median_seconds(fn, repeats) for name, fn in rows.items()}
        print(f"\n{size}")
        ref_mix, ref_cut = times["ref MixUp (1 λ, in place)"], times["ref CutMix (1 box)"]
        for name, t in times.items():
            if name.startswith("MixUp (") or name == "MixUp uint8":
                ratio = f"{t / ref_mix:5.2f}x ref MixUp"
            elif name.startswith("ref"):
                ratio = ""
            else:
                ratio = f"{t / ref_cut:5.2f}x ref CutMix"
            print(f"  {name:28s} {t * 1e6:10.1f} us   {ratio}")
        if "MixUp uint8" in times:
            print(
                f"  uint8 / float32: MixUp {times['MixUp uint8'] / times['MixUp (per sample)']:.2f}x, "
                f"CutMix {times['CutMix uint8'] / times['CutMix (per sample)']:.2f}x (time ratio; < 1 is faster)"
            )


if __name__ == "__main__":
    main()
