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

Rows whose image mixing is one blend pass (MixUp, FMix, GridMix, SmoothMix: under a
millisecond here) leave little room: the boxes' fixed cost (concatenating B arrays,
NumPy over the batch's boxes, splitting four outputs into B arrays) is about a
millisecond whatever the images cost.

The median time per call of ``--repeats`` calls, the columns interleaved call by call
so that the machine's load falls on all alike. With ``--baseline-ref REF`` the dense
columns also run on the library as of that git commit (``base`` rows; the images
column is the working tree's ``apply_plan`` for both), interleaved with the working
tree's (``now``): before/after from one run. Nothing is asserted: compare the rows of
one run only.

    python benchmarks/dense_mix.py [--repeats 200] [--batch 64] [--size 64] [--baseline-ref main]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import statistics
import time
from collections.abc import Callable
from types import ModuleType

import numpy as np
import torch
from mix_throughput import _baseline  # a git ref's library as vicinal_base (this script's folder is on sys.path)

import vicinal
from vicinal import MixConfig, apply_plan, sample_plan
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


def _calls(lib: ModuleType, name: str, batch: dict[str, object], size: int, n: int) -> list[Callable[[], object]]:
    """The dense columns' calls (uint8 ids, int64 ids, soft) made with library ``lib``."""
    dense = importlib.import_module(f"{lib.__name__}.dense")
    mixing = importlib.import_module(f"{lib.__name__}.mixing")
    method, mode = METHODS[name]
    config = lib.MixConfig(**{f.name: getattr(method, f.name) for f in dataclasses.fields(method)})
    plan = mixing.place_boxes(lib.sample_plan(config, n, seed=1, image_size=(size, size)), batch["image"])
    kw = {"num_classes": NUM_CLASSES, "mask_boxes": "mask_weighted"}
    batch8 = {**batch, "mask": batch["mask"].to(torch.uint8)}  # type: ignore[attr-defined]
    return [
        lambda: dense.mix_dense(plan, batch8, segmentation=mode, **kw),
        lambda: dense.mix_dense(plan, batch, segmentation=mode, **kw),
        lambda: dense.mix_dense(plan, batch, segmentation="soft", **kw),
    ]


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--baseline-ref", default=None, help="also time the dense columns with the library of this git ref"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    batch = make_batch(args.batch, args.size)
    libs = {"now": vicinal}
    if args.baseline_ref is not None:
        libs = {"base": _baseline(args.baseline_ref), "now": vicinal}
    print(
        f"{args.batch}x3x{args.size}x{args.size} float32 images, class-id masks, {BOXES_PER_IMAGE} boxes per image, "
        f"1 thread, median of {args.repeats} interleaved calls, ms per call (ratio: / images)"
    )
    head = ("images", "+ uint8 ids + boxes", "ratio", "+ int64 ids + boxes", "ratio", "+ soft + boxes", "ratio")
    print(f"{'method':<12} {'lib':<5}" + " ".join(f"{h:>{max(len(h), 6)}}" for h in head))
    rows: dict[str, dict[str, float]] = {}
    for name in args.methods.split(","):
        config, _ = METHODS[name]
        plan = place_boxes(sample_plan(config, args.batch, seed=1, image_size=(args.size, args.size)), batch["image"])
        fns: list[Callable[[], object]] = [lambda: apply_plan(plan, batch["image"])]
        for lib in libs.values():
            fns += _calls(lib, name, batch, args.size, args.batch)
        times = interleaved_medians(fns, args.repeats)
        images = times[0]
        rows[name] = {"images": images}
        for k, tag in enumerate(libs):
            u8, i64, soft = times[1 + 3 * k : 4 + 3 * k]
            rows[name].update({f"{tag} uint8": u8, f"{tag} int64": i64, f"{tag} soft": soft})
            ms = [images, u8, u8 / images, i64, i64 / images, soft, soft / images]
            widths = [6, 19, 6, 19, 6, 14, 6]
            cells = [
                f"{v * 1e3:{w}.2f}" if j in (0, 1, 3, 5) else f"{v:{w}.2f}" for j, (v, w) in enumerate(zip(ms, widths))
            ]
            print(f"{name:<12} {tag:<5}" + " ".join(cells) + f"   ({METHODS[name][1]})")
    return rows


if __name__ == "__main__":
    main()
