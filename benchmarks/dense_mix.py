"""Mixing dense targets with their images against mixing the images alone (issue 21).

For each method, one thread, a fixed plan per row (drawn once: both columns share it,
so the plan's cost is in neither), torch tensors as a DataLoader would give them:

* ``images``: ``apply_plan(plan, image)``, 64×3×64² float32;
* ``+ uint8 ids + boxes``: ``mix_dense(plan, batch)`` with the class-id mask (B, H, W)
  uint8 (as PNG masks and ``tv_tensors.Mask`` from PIL come) kept as ids
  (``segmentation="hard"``; ``"pair"`` for the methods that blend or paste soft masks,
  where ids cannot stay ids) and 4 boxes per image (a list of (4, 4) float32 tensors
  with their int64 class ids); FMix, GridMix and SmoothMix with
  ``mask_boxes="mask_weighted"``; and its ratio to ``images`` (the issue's goal: at
  most 2);
* ``+ int64 ids + boxes``: the same with an int64 mask (8 times the bytes: 2/3 of the
  images'), and its ratio;
* ``+ soft + boxes``: int64 ids in, ``segmentation="soft"``, which writes a
  (B, 11, H, W) float32 target, 11/3 times the images' bytes (for scale), and its ratio.

The median time per call of ``--repeats`` calls, the columns interleaved call by call
so that the machine's load falls on both alike. Nothing is asserted: compare the rows
of one run only.

    python benchmarks/dense_mix.py [--repeats 200] [--batch 64] [--size 64]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from vicinal import MixConfig, apply_plan, sample_plan
from vicinal.dense import mix_dense
from vicinal.mixing import place_boxes

NUM_CLASSES = 11  # background and 10 item classes, as the canvas data set
BOXES_PER_IMAGE = 4
METHODS = {
    "cutmix": (MixConfig("cutmix"), "hard"),
    "resizemix": (MixConfig("resizemix"), "hard"),
    "saliencymix": (MixConfig("saliencymix"), "hard"),
    "gridmix": (MixConfig("gridmix"), "hard"),
    "fmix": (MixConfig("fmix"), "hard"),
    "mixup": (MixConfig("mixup", alpha=1.0), "pair"),
    "smoothmix": (MixConfig("smoothmix"), "pair"),
}


def make_batch(b: int, side: int, seed: int = 0) -> dict[str, object]:
    """Random images, a mask of boxes filled with their class, 4 boxes per image."""
    rng = np.random.default_rng(seed)
    image = torch.from_numpy(rng.random((b, 3, side, side), dtype=np.float32))
    mask = np.zeros((b, side, side), np.int64)
    boxes, labels = [], []
    for i in range(b):
        xy = rng.integers(0, side - side // 4, (BOXES_PER_IMAGE, 2))
        wh = rng.integers(side // 8, side // 4 + 1, (BOXES_PER_IMAGE, 2))
        rows = np.concatenate([xy, xy + wh], axis=1)
        ids = rng.integers(1, NUM_CLASSES, BOXES_PER_IMAGE)
        for (x1, y1, x2, y2), c in zip(rows.tolist(), ids.tolist()):
            mask[i, y1:y2, x1:x2] = c
        boxes.append(torch.from_numpy(rows.astype(np.float32)))
        labels.append(torch.from_numpy(ids))
    return {"image": image, "mask": torch.from_numpy(mask), "boxes": boxes, "box_labels": labels}


def interleaved_medians(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median seconds per call of each function, calls interleaved (after 3 warm-ups each)."""
    for fn in fns:
        for _ in range(3):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def main(argv: list[str] | None = None) -> list[tuple[str, float, float, float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    batch = make_batch(args.batch, args.size)
    hw = (args.size, args.size)
    print(
        f"{args.batch}x3x{args.size}x{args.size} float32, int64 class-id masks, {BOXES_PER_IMAGE} boxes per image, "
        f"1 thread, median of {args.repeats} (ms per call)"
    )
    head = ("images", "+ uint8 ids + boxes", "ratio", "+ int64 ids + boxes", "ratio", "+ soft + boxes", "ratio")
    print(f"{'method':<12} " + " ".join(f"{h:>{max(len(h), 6)}}" for h in head))
    rows = []
    batch8 = {**batch, "mask": batch["mask"].to(torch.uint8)}
    for name in args.methods.split(","):
        config, mode = METHODS[name]
        plan = place_boxes(sample_plan(config, args.batch, seed=1, image_size=hw), batch["image"])
        kw = {"num_classes": NUM_CLASSES, "mask_boxes": "mask_weighted"}
        images, dense8, dense, soft = interleaved_medians(
            [
                lambda: apply_plan(plan, batch["image"]),
                lambda: mix_dense(plan, batch8, segmentation=mode, **kw),
                lambda: mix_dense(plan, batch, segmentation=mode, **kw),
                lambda: mix_dense(plan, batch, segmentation="soft", **kw),
            ],
            args.repeats,
        )
        print(
            f"{name:<12} {images * 1e3:6.2f} {dense8 * 1e3:19.2f} {dense8 / images:6.2f} {dense * 1e3:19.2f} "
            f"{dense / images:6.2f} {soft * 1e3:14.2f} {soft / images:6.2f}   ({mode})"
        )
        rows.append((name, images, dense8, dense, soft))
    return rows


if __name__ == "__main__":
    main()
